//! The bounded worker pool: threads that take jobs from one queue, run the blocking syscall
//! and deliver the completion to the async slot or the per-thread queue that asked for it.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use engine_core::{
    finish, reject, run_with_retries, Completion, EngineConfig, Error, ErrorKind, Metrics, Op,
    OpKind, Prepared, RawResult, Request, Slots,
};

use crate::queue::Completions;

/// Where a job's completion goes.
pub(crate) enum Reply {
    /// An async request's slot.
    Slot(u32),
    /// A per-thread queue's completion list.
    Queue(Arc<Completions>),
}

/// A validated request on its way to a worker.
pub(crate) struct Job {
    pub(crate) request: Request,
    pub(crate) prepared: Prepared,
    pub(crate) reply: Reply,
}

struct Jobs {
    queue: VecDeque<Job>,
    /// Set once, under the lock: no job is accepted after it, and workers exit when the
    /// queue is empty.
    shutdown: bool,
    /// Workers asleep on the condition variable: only they need a wake-up (a futex call),
    /// busy workers find new jobs when they come back for the next one.
    idle: usize,
}

/// State shared by the engine handle, its queues and its workers.
pub(crate) struct Shared {
    pub(crate) engine_id: u64,
    pub(crate) config: EngineConfig,
    pub(crate) metrics: Metrics,
    pub(crate) slots: Slots<Completion>,
    jobs: Mutex<Jobs>,
    work: Condvar,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a push, a pop or a flag store, so state is consistent
    // even if a thread panicked while holding the lock.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Creates the shared state and starts `threads` workers.
    pub(crate) fn start(
        engine_id: u64,
        config: EngineConfig,
        threads: usize,
    ) -> Result<Arc<Shared>, Error> {
        let shared = Arc::new(Shared {
            engine_id,
            metrics: Metrics::default(),
            slots: Slots::new(config.queue_depth),
            jobs: Mutex::new(Jobs {
                queue: VecDeque::with_capacity(config.queue_depth),
                shutdown: false,
                idle: 0,
            }),
            work: Condvar::new(),
            workers: Mutex::new(Vec::with_capacity(threads)),
            config,
        });
        for index in 0..threads {
            let worker = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("engine-sync-{index}"))
                .spawn(move || worker.run());
            match spawned {
                Ok(handle) => lock(&shared.workers).push(handle),
                Err(e) => {
                    shared.shutdown();
                    return Err(Error::from_io(&e, Op::Setup)
                        .with_message(format!("spawning worker thread {index} of {threads}")));
                }
            }
        }
        Ok(shared)
    }

    /// Hands jobs to the workers (or, inline, runs them here); after shutdown they complete
    /// with [`ErrorKind::Shutdown`] instead, through their reply.
    pub(crate) fn enqueue(&self, jobs: impl Iterator<Item = Job>) -> usize {
        if self.config.inline && !self.is_shut_down() {
            let mut count = 0;
            for job in jobs {
                count += 1;
                self.run_job(job);
            }
            return count;
        }
        let mut guard = lock(&self.jobs);
        if guard.shutdown {
            drop(guard);
            let mut count = 0;
            for job in jobs {
                count += 1;
                let error = job
                    .request
                    .file
                    .error(ErrorKind::Shutdown, job.request.kind.op());
                let completion = reject(job.request, Some(&job.prepared), error, &self.metrics);
                self.deliver(job.reply, completion);
            }
            return count;
        }
        let before = guard.queue.len();
        guard.queue.extend(jobs);
        let added = guard.queue.len() - before;
        let wake = added.min(guard.idle);
        drop(guard);
        if wake == 1 {
            self.work.notify_one();
        } else if wake > 1 {
            self.work.notify_all();
        }
        added
    }

    /// True once shutdown has begun.
    pub(crate) fn is_shut_down(&self) -> bool {
        lock(&self.jobs).shutdown
    }

    /// Stops accepting jobs, lets the workers finish the ones queued, joins them and fails
    /// every task still waiting for a slot. Idempotent.
    pub(crate) fn shutdown(&self) {
        lock(&self.jobs).shutdown = true;
        self.work.notify_all();
        self.slots.close();
        let handles = std::mem::take(&mut *lock(&self.workers));
        let current = std::thread::current().id();
        for handle in handles {
            // A worker cannot join itself; that only happens when the last engine handle is
            // dropped from inside a completion, and then the worker exits on its own.
            if handle.thread().id() != current {
                let _ = handle.join();
            }
        }
    }

    fn next_job(&self) -> Option<Job> {
        let mut guard = lock(&self.jobs);
        loop {
            if let Some(job) = guard.queue.pop_front() {
                return Some(job);
            }
            if guard.shutdown {
                return None;
            }
            guard.idle += 1;
            guard = self
                .work
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
            guard.idle -= 1;
        }
    }

    fn run(&self) {
        while let Some(job) = self.next_job() {
            self.run_job(job);
        }
    }

    fn run_job(&self, job: Job) {
        let Job {
            request,
            prepared,
            reply,
        } = job;
        let (user_data, kind) = (request.user_data, request.kind);
        // A panic in the syscall path must not strand the waiter: it gets an error.
        let completion = catch_unwind(AssertUnwindSafe(|| self.execute(request, &prepared)))
            .unwrap_or_else(|_| Completion {
                user_data,
                kind,
                result: Err(Error::new(
                    ErrorKind::Shutdown,
                    kind.op(),
                    "the worker panicked while running this request",
                )),
                buf: None,
            });
        self.deliver(reply, completion);
    }

    fn execute(&self, mut request: Request, prepared: &Prepared) -> Completion {
        let hook = self.config.fault_hook.as_deref();
        let (kind, offset, start) = (request.kind, request.offset, request.buf_start);
        let mut buf = request.buf.take();
        let file = &request.file;
        let (raw, retries) = run_with_retries(hook, kind, file, offset, prepared.len, |len| {
            let std = file.std();
            let result = match (kind, buf.as_mut()) {
                (OpKind::Read, Some(buf)) => std.read_at(&mut buf[start..start + len], offset),
                (OpKind::Write, Some(buf)) => std.write_at(&buf[start..start + len], offset),
                (OpKind::SyncData, _) => std.sync_data().map(|()| 0),
                (OpKind::SyncAll, _) => std.sync_all().map(|()| 0),
                // `prepare` refuses reads and writes without a buffer.
                (OpKind::Read | OpKind::Write, None) => return Err(libc::EINVAL),
            };
            raw(result)
        });
        request.buf = buf;
        let result = finish(&mut request, prepared, raw, retries, &self.metrics);
        Completion {
            user_data: request.user_data,
            kind,
            result,
            buf: request.buf,
        }
    }

    pub(crate) fn deliver(&self, reply: Reply, completion: Completion) {
        match reply {
            Reply::Slot(id) => self.slots.complete(id, completion),
            Reply::Queue(completions) => completions.push(completion),
        }
    }
}

fn raw(result: std::io::Result<usize>) -> RawResult {
    result.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}
