//! The executors the case list runs under: the engine's futures promise to complete under any
//! executor, so the suite runs every case once per executor and backend
//! (`conformance: runtime=<runtime> backend=<backend> ...`).
//!
//! A case is plain synchronous code that awaits each step with [`block_on`]. On a thread that
//! has entered a [`Runtime`] (see [`Runtime::enter`]), that step runs the way a user of that
//! runtime runs it:
//!
//! | runtime | how a step runs |
//! | --- | --- |
//! | `block_on` | [`engine_core::block_on`] on the case's thread |
//! | `tokio-mt` | spawned on a two-worker multi-thread runtime: polled on the workers, woken from the engine's threads, free to move between workers |
//! | `tokio-ct` | spawned on a current-thread runtime the case's thread drives |
//! | `glommio` | run by a `LocalExecutor` on the case's thread; the engine's wakes are foreign to it |
//! | `monoio-uring`, `monoio-legacy` | `block_on` of a monoio runtime on the case's thread, with its io_uring or epoll driver |
//! | `smol` | spawned on smol's global executor, awaited with `smol::block_on` |
//!
//! Nothing here lends the engine a reactor: the runtimes only poll and wake, so a case that
//! hangs under one of them is an engine that depended on something the runtime does not do.
//! A thread that entered no runtime (a case's own helper threads) uses the bundled `block_on`.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use smol::future::FutureExt as _;

/// One executor the suite runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// The engine's own [`engine_core::block_on`].
    BlockOn,
    /// tokio's multi-thread runtime, each step a spawned task.
    TokioMultiThread,
    /// tokio's current-thread runtime, each step a spawned task.
    TokioCurrentThread,
    /// glommio's `LocalExecutor`.
    Glommio,
    /// monoio with its io_uring driver.
    MonoioUring,
    /// monoio with its legacy (epoll) driver.
    MonoioLegacy,
    /// smol's global executor.
    Smol,
}

impl Runtime {
    /// Every runtime, in the order the suite runs them.
    pub const ALL: [Runtime; 7] = [
        Runtime::BlockOn,
        Runtime::TokioMultiThread,
        Runtime::TokioCurrentThread,
        Runtime::Glommio,
        Runtime::MonoioUring,
        Runtime::MonoioLegacy,
        Runtime::Smol,
    ];

    /// The name on the summary line.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::BlockOn => "block_on",
            Runtime::TokioMultiThread => "tokio-mt",
            Runtime::TokioCurrentThread => "tokio-ct",
            Runtime::Glommio => "glommio",
            Runtime::MonoioUring => "monoio-uring",
            Runtime::MonoioLegacy => "monoio-legacy",
            Runtime::Smol => "smol",
        }
    }

    /// Whether the runtime can be built here, on a scratch thread; the reason when not
    /// (glommio and monoio's io_uring driver need io_uring, glommio locked memory).
    pub fn probe(self) -> Result<(), String> {
        std::thread::spawn(move || Driver::build(self).map(drop))
            .join()
            .unwrap_or_else(|panic| Err(crate::runner::panic_message(&*panic)))
            .map_err(|e| format!("runtime {} cannot run here: {e}", self.name()))
    }

    /// Runs `body` with this runtime entered on the calling thread: every [`block_on`] in it
    /// runs its future under the runtime. The runtime is built now and dropped when `body`
    /// returns; a thread enters one runtime at a time.
    ///
    /// # Panics
    ///
    /// When the runtime cannot be built (see [`Runtime::probe`]), or this thread has already
    /// entered one.
    pub fn enter<R>(self, body: impl FnOnce() -> R) -> R {
        let driver = Driver::build(self)
            .unwrap_or_else(|e| panic!("runtime {} cannot be built: {e}", self.name()));
        CURRENT.with_borrow_mut(|current| {
            assert!(current.is_none(), "this thread already entered a runtime");
            *current = Some(driver);
        });
        struct Leave;
        impl Drop for Leave {
            fn drop(&mut self) {
                // Dropped here, not in the thread-local's destructor: a runtime's own
                // thread-locals may be gone by then.
                let driver = CURRENT.with_borrow_mut(Option::take);
                drop(driver);
            }
        }
        let _leave = Leave;
        body()
    }
}

/// The runtime a thread entered.
enum Driver {
    BlockOn,
    Tokio(tokio::runtime::Runtime),
    Glommio(glommio::LocalExecutor),
    MonoioUring(monoio::Runtime<monoio::IoUringDriver>),
    MonoioLegacy(monoio::Runtime<monoio::LegacyDriver>),
    Smol,
}

impl Driver {
    fn build(runtime: Runtime) -> Result<Driver, String> {
        Ok(match runtime {
            Runtime::BlockOn => Driver::BlockOn,
            Runtime::TokioMultiThread => Driver::Tokio(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
            Runtime::TokioCurrentThread => Driver::Tokio(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
            Runtime::Glommio => Driver::Glommio(
                glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                    .make()
                    .map_err(|e| e.to_string())?,
            ),
            Runtime::MonoioUring => Driver::MonoioUring(
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
            Runtime::MonoioLegacy => Driver::MonoioLegacy(
                monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
            Runtime::Smol => Driver::Smol,
        })
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Driver>> = const { RefCell::new(None) };
}

/// Runs `future` to completion under the runtime this thread entered (the bundled
/// [`engine_core::block_on`] when none): how a case awaits each step.
///
/// # Panics
///
/// When the future panics (with its message), or when called from inside a future this
/// function is running.
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    let mut output = None;
    {
        // Only this wrapper is generic: every runtime runs the same `dyn` step, so none of
        // their machinery is compiled again for each of the suite's hundreds of futures.
        let step = std::pin::pin!(async {
            output = Some(future.await);
        });
        run_step(step);
    }
    match output {
        Some(value) => value,
        None => panic!("the runtime returned before the step completed"),
    }
}

/// One step of a case, its output stored by the step itself.
type Step<'a> = Pin<&'a mut (dyn Future<Output = ()> + Send + 'a)>;

/// Runs `step` to completion under this thread's runtime.
fn run_step(step: Step<'_>) {
    CURRENT.with_borrow_mut(|driver| match driver {
        None | Some(Driver::BlockOn) => engine_core::block_on(step),
        Some(Driver::Tokio(runtime)) => {
            run_as_task(step, |task| match runtime.block_on(runtime.spawn(task)) {
                Ok(outcome) => outcome,
                Err(e) => Err(Box::new(format!("the tokio task was cancelled: {e}"))),
            })
        }
        Some(Driver::Glommio(executor)) => executor.run(step),
        Some(Driver::MonoioUring(runtime)) => runtime.block_on(step),
        Some(Driver::MonoioLegacy(runtime)) => runtime.block_on(step),
        Some(Driver::Smol) => run_as_task(step, |task| smol::block_on(smol::spawn(task))),
    })
}

/// How a spawned step ended: normally, or with its panic.
type Outcome = Result<(), Box<dyn Any + Send>>;

/// A step handed to an executor that only takes `'static` tasks, with its panic caught.
type Task = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// Runs `step`, which borrows from the caller, as a task of an executor that only takes
/// `'static` tasks: `spawn_and_wait` spawns the task and returns its outcome once it has
/// finished.
///
/// # Panics
///
/// With the step's own panic, carried out of the task. Aborts the process if
/// `spawn_and_wait` unwinds, as the task might then still hold the step.
fn run_as_task(step: Step<'_>, spawn_and_wait: impl FnOnce(Task) -> Outcome) {
    // SAFETY: the step lives in the caller's frame, with everything it borrows. The lifetime
    // is erased only so `spawn_and_wait` can hand a task that points at it to an executor that
    // asks for `'static`; `spawn_and_wait` returns only once the task has finished, and both
    // tokio and smol (async-task) drop a task's future (here, the pointer to the step) before
    // they report it finished. Were `spawn_and_wait` to unwind instead, `AbortOnDrop` ends the
    // process before the step can go.
    let step = unsafe { std::mem::transmute::<Step<'_>, Step<'static>>(step) };
    let task: Task = Box::pin(AssertUnwindSafe(step).catch_unwind());
    let guard = AbortOnDrop;
    let outcome = spawn_and_wait(task);
    std::mem::forget(guard);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Aborts the process when dropped: armed while a task may hold a pointer into the frame.
struct AbortOnDrop;

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        eprintln!("a spawned step ended without finishing; aborting rather than free it");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Where a step ran: the thread's name and whether each runtime's context was current.
    #[derive(Debug)]
    struct Seen {
        thread: Option<String>,
        tokio: Option<tokio::runtime::RuntimeFlavor>,
    }

    /// A future that is woken once from another thread, as the engine's completions are.
    async fn woken_from_elsewhere() -> Seen {
        let (tx, rx) = mpsc::channel::<std::task::Waker>();
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&woken);
        let waker_thread = std::thread::spawn(move || {
            if let Ok(waker) = rx.recv() {
                std::thread::sleep(Duration::from_millis(20));
                flag.store(true, std::sync::atomic::Ordering::Release);
                waker.wake();
            }
        });
        let mut tx = Some(tx);
        std::future::poll_fn(|cx| {
            if woken.load(std::sync::atomic::Ordering::Acquire) {
                return std::task::Poll::Ready(());
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send(cx.waker().clone());
            }
            std::task::Poll::Pending
        })
        .await;
        let _ = waker_thread.join();
        Seen {
            thread: std::thread::current().name().map(str::to_string),
            tokio: tokio::runtime::Handle::try_current()
                .ok()
                .map(|h| h.runtime_flavor()),
        }
    }

    fn in_runtime<R: Send + 'static>(
        runtime: Runtime,
        body: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        std::thread::Builder::new()
            .name("case".into())
            .spawn(move || runtime.enter(body))
            .expect("thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    #[test]
    fn each_runtime_runs_the_step_itself() {
        for runtime in Runtime::ALL {
            if let Err(reason) = runtime.probe() {
                eprintln!("skipping {}: {reason}", runtime.name());
                continue;
            }
            let (seen, inside) = in_runtime(runtime, move || {
                let seen = block_on(woken_from_elsewhere());
                // Only inside its own runtime does each runtime's spawn work.
                let inside = match runtime {
                    Runtime::Glommio => {
                        block_on(AssertSend(async {
                            glommio::spawn_local(async { 7 }).await
                        })) == 7
                    }
                    Runtime::MonoioUring | Runtime::MonoioLegacy => {
                        block_on(AssertSend(async { monoio::spawn(async { 7 }).await })) == 7
                    }
                    _ => true,
                };
                (seen, inside)
            });
            let thread = seen.thread.as_deref();
            match runtime {
                Runtime::BlockOn
                | Runtime::Glommio
                | Runtime::MonoioUring
                | Runtime::MonoioLegacy => {
                    assert_eq!(
                        thread,
                        Some("case"),
                        "{runtime:?} polls on the case's thread"
                    );
                    assert_eq!(seen.tokio, None, "{runtime:?}");
                }
                Runtime::TokioMultiThread => {
                    assert_ne!(thread, Some("case"), "polled on a worker: {seen:?}");
                    assert_eq!(seen.tokio, Some(tokio::runtime::RuntimeFlavor::MultiThread));
                }
                Runtime::TokioCurrentThread => {
                    assert_eq!(thread, Some("case"), "{seen:?}");
                    assert_eq!(
                        seen.tokio,
                        Some(tokio::runtime::RuntimeFlavor::CurrentThread)
                    );
                }
                Runtime::Smol => {
                    assert!(thread.is_some_and(|t| t.starts_with("smol-")), "{seen:?}");
                }
            }
            assert!(inside, "{runtime:?} ran the step inside its runtime");
        }
    }

    #[test]
    fn a_panicking_step_panics_with_its_message_in_every_runtime() {
        for runtime in Runtime::ALL {
            if runtime.probe().is_err() {
                continue;
            }
            let caught = in_runtime(runtime, move || {
                std::panic::catch_unwind(|| block_on(async { panic!("step {}", 3) }))
                    .map_err(|panic| crate::runner::panic_message(&*panic))
            });
            let message = caught.expect_err("the step panicked");
            assert!(message.contains("step 3"), "{runtime:?}: {message}");
        }
    }

    #[test]
    fn a_thread_that_entered_nothing_uses_the_bundled_block_on() {
        assert_eq!(block_on(async { 5 }), 5);
        let nested =
            std::panic::catch_unwind(|| Runtime::BlockOn.enter(|| Runtime::BlockOn.enter(|| ())));
        assert!(nested.is_err(), "a thread enters one runtime at a time");
    }

    /// glommio's and monoio's join handles are not `Send`; these tests make and await them only
    /// inside the step, on the thread that runs it.
    struct AssertSend<F>(F);
    // SAFETY: only used above, where the future is created, polled and dropped on one thread
    // (glommio and monoio run `block_on`'s future on the calling thread).
    unsafe impl<F> Send for AssertSend<F> {}
    impl<F: Future> Future for AssertSend<F> {
        type Output = F::Output;
        fn poll(
            self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            // SAFETY: structural pinning of the only field; it is never moved out.
            unsafe { self.map_unchecked_mut(|s| &mut s.0) }.poll(cx)
        }
    }
}
