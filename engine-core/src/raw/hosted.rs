//! What a backend hosted on another runtime (monoio, glommio) shares: the [`Inbox`] its
//! kernels hand [`Job`]s to from any thread, and [`Inbox::serve`], the executor-side loop that
//! hands each job to a pool of long-lived worker tasks on the runtime's own thread.
//!
//! ```text
//!   submitting threads                        executor thread (the hosted runtime)
//!   ThreadKernel::submit ─► Inbox::enqueue ─wake─►  Inbox::serve ─► worker tasks ─► run(job)
//!   Driver / QueueDriver ◄────────── Done ◄───────────────── Job::finish / Job::run
//! ```
//!
//! Nothing here depends on a runtime: the backend passes how to spawn a local task and how to
//! run one job, and the executor's waker is all the inbox needs to wake it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use super::driver::lock;
use super::pool::Job;

/// Jobs on their way to a hosted runtime's executor thread, from any thread.
///
/// A backend's [`super::Runner::enqueue`] is [`Inbox::enqueue`]; the executor thread runs
/// [`Inbox::serve`]. After [`Inbox::close`], jobs run as blocking syscalls on the thread that
/// enqueues them, so each still completes.
#[derive(Debug, Default)]
pub struct Inbox {
    state: Mutex<InboxState>,
}

#[derive(Debug, Default)]
struct InboxState {
    jobs: Vec<Job>,
    /// The executor's waker while it waits for jobs.
    waker: Option<Waker>,
    /// Set by [`Inbox::nudge`]: the executor runs its housekeeping once more.
    nudged: bool,
    /// Set once: the executor takes no more jobs, finishes its tasks and exits.
    closed: bool,
}

impl Inbox {
    /// An empty inbox.
    pub fn new() -> Inbox {
        Inbox::default()
    }

    /// Takes every job in `jobs` (leaving it empty) for the executor, and wakes it. Once the
    /// inbox is closed, runs them on this thread instead.
    pub fn enqueue(&self, jobs: &mut Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let mut state = lock(&self.state);
        if state.closed {
            // The executor is gone or going: run the jobs here, so each still completes.
            drop(state);
            for job in jobs.drain(..) {
                job.run();
            }
            return;
        }
        state.jobs.append(jobs);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Wakes the executor to run the `housekeeping` of [`Inbox::serve`] (closing a dropped
    /// file, say) even when no job comes.
    pub fn nudge(&self) {
        let waker = {
            let mut state = lock(&self.state);
            state.nudged = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Stops taking jobs: [`Inbox::serve`] runs what it has to the end and returns. Idempotent.
    pub fn close(&self) {
        let waker = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Runs on the executor thread until [`Inbox::close`]: takes jobs from the inbox and hands
    /// each to a worker task that awaits `run(job)`, then waits for every worker to finish.
    /// `housekeeping` runs on the executor thread after each [`Inbox::nudge`] and at close,
    /// before the batch that came with it is handed out.
    ///
    /// Workers live as long as the executor, and a new one is spawned (with `spawn`, which
    /// must run it on this thread's executor) only when no parked worker can take a job: a
    /// steady workload spawns, and so allocates, nothing. `run` must deliver each job's result
    /// (see [`Job`]) and must not return before the runtime has let go of the job's buffer.
    ///
    /// Returns only when every worker has ended, so a runtime dropped after it holds no
    /// operation on a request buffer.
    pub async fn serve<S, R, F>(&self, mut spawn: S, run: R, mut housekeeping: impl FnMut())
    where
        S: FnMut(Pin<Box<dyn Future<Output = ()>>>),
        R: Fn(Job) -> F + Clone + 'static,
        F: Future<Output = ()> + 'static,
    {
        let local = Rc::new(Workers::default());
        let mut batch: Vec<Job> = Vec::new();
        // The wakers of the parked workers about to get a job, moved out of `Workers::parked`
        // so none is woken while it is borrowed; it keeps its capacity, so waking allocates
        // nothing once it has grown.
        let mut waking: Vec<Waker> = Vec::new();
        loop {
            let (closed, nudged) = poll_fn(|cx| {
                let mut state = lock(&self.state);
                if state.jobs.is_empty() && !state.nudged && !state.closed {
                    state.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                batch.append(&mut state.jobs);
                Poll::Ready((state.closed, std::mem::take(&mut state.nudged)))
            })
            .await;
            // Only when asked for: a batch of jobs alone costs the executor nothing more.
            if nudged || closed {
                housekeeping();
            }
            let queued = {
                let mut queue = local.queue.borrow_mut();
                queue.extend(batch.drain(..));
                queue.len()
            };
            // One parked worker per queued job, not all of them: a worker woken for nothing
            // polls for nothing. Busy workers take the rest as they finish; a new worker is
            // spawned only for a job no parked worker was woken for (so workers grow to the
            // peak concurrency once, and a steady workload spawns none).
            {
                let mut parked = local.parked.borrow_mut();
                let keep = parked.len().saturating_sub(queued);
                waking.extend(parked.drain(keep..));
            }
            let woken = waking.len();
            for waker in waking.drain(..) {
                waker.wake();
            }
            for _ in woken..queued {
                local.workers.set(local.workers.get() + 1);
                spawn(Box::pin(worker(Rc::clone(&local), run.clone())));
            }
            if closed {
                break;
            }
        }
        local.closed.set(true);
        for waker in std::mem::take(&mut *local.parked.borrow_mut()) {
            waker.wake();
        }
        // Every worker may hold addresses of request buffers until it delivers: the runtime
        // must not drop one before then.
        poll_fn(|cx| {
            if local.workers.get() == 0 {
                return Poll::Ready(());
            }
            local.last.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
    }
}

/// The executor thread a hosted backend owns, with its inbox: what shuts it down.
#[derive(Debug)]
pub struct ExecutorThread {
    inbox: Arc<Inbox>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ExecutorThread {
    /// The executor running on `thread`, serving `inbox`.
    pub fn new(inbox: Arc<Inbox>, thread: JoinHandle<()>) -> ExecutorThread {
        ExecutorThread {
            inbox,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Its inbox.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// True on the executor thread itself.
    pub fn is_current(&self) -> bool {
        lock(&self.thread)
            .as_ref()
            .is_some_and(|t| t.thread().id() == std::thread::current().id())
    }

    /// Closes the inbox, lets the executor finish every task it has, and joins its thread.
    /// Jobs enqueued later run as blocking syscalls on the thread that enqueues them.
    /// Idempotent.
    pub fn shutdown(&self) {
        self.inbox.close();
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            // The executor cannot join itself: that happens only when the last handle of the
            // engine goes from a completion it delivers, and then it exits on its own.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for ExecutorThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The executor's own view of its work: jobs taken from the inbox and not yet picked up, and
/// the worker tasks that run them.
#[derive(Default)]
struct Workers {
    queue: RefCell<VecDeque<Job>>,
    /// Wakers of workers waiting for a job.
    parked: RefCell<Vec<Waker>>,
    /// Workers alive.
    workers: Cell<usize>,
    /// Set at close: workers exit once the queue is empty.
    closed: Cell<bool>,
    /// The serving future's waker while it waits for the last worker at close.
    last: Cell<Option<Waker>>,
}

/// One worker: runs queued jobs one at a time, waiting for the next while there is none.
async fn worker<R, F>(local: Rc<Workers>, run: R)
where
    R: Fn(Job) -> F,
    F: Future<Output = ()>,
{
    loop {
        let job = poll_fn(|cx| {
            if let Some(job) = local.queue.borrow_mut().pop_front() {
                return Poll::Ready(Some(job));
            }
            if local.closed.get() {
                return Poll::Ready(None);
            }
            local.parked.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await;
        match job {
            Some(job) => run(job).await,
            None => break,
        }
    }
    local.workers.set(local.workers.get() - 1);
    if local.workers.get() == 0 {
        if let Some(waker) = local.last.take() {
            waker.wake();
        }
    }
}

/// Awaits `op`, a runtime's operation on `job`'s buffer, and delivers its result (bytes or
/// `-errno`). A panic in the runtime's path must not unwind through its executor (which would
/// drop tasks whose operations are in flight), nor may the request fail and free its buffer:
/// the operation that panicked may still have the buffer in the kernel. Only ending the
/// process is safe, and `runtime` names the culprit in the message.
pub async fn finish_or_abort(job: Job, op: impl Future<Output = i64>, runtime: &str) {
    let op = std::pin::pin!(op);
    match (CatchUnwind { inner: op }).await {
        Some(result) => job.finish(result),
        None => {
            eprintln!(
                "engine: a {runtime} operation panicked while it may hold a request buffer; \
                 aborting rather than let the kernel write into freed memory"
            );
            std::process::abort();
        }
    }
}

/// Polls the inner future, turning a panic into `None`.
struct CatchUnwind<'a, F> {
    inner: Pin<&'a mut F>,
}

impl<F: Future> Future for CatchUnwind<'_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(value)) => Poll::Ready(Some(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        }
    }
}

/// Polls `future` to its end, turning a panic into `None`: for runtime calls that hold no
/// request buffer (opening a file), whose panic can safely become an error.
pub async fn catch_panic<F: Future>(future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    CatchUnwind { inner: future }.await
}
