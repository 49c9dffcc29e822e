//! The async engine: submitting tasks call `io_submit` themselves; every iocb signals the
//! engine's eventfd (`IOCB_FLAG_RESFD`), and one reaper thread sleeps on that eventfd, reaps
//! every ready event with a non-blocking `io_getevents` and wakes the waiting tasks. Nothing
//! polls.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use engine_core::{
    next_engine_id, run_with_retries, Admission, Capabilities, Completion, Engine, EngineConfig,
    Error, File, InFlight, InFlightTable, Metrics, MetricsSnapshot, Op, OpKind, OpenOptions,
    RawResult, Request, Result, Settled,
};

use crate::abi::{io_getevents, io_submit, IoEvent, Iocb};
use crate::context::{iocb, native_fsync, Context};
use crate::queue::AioQueue;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a push, a pop or a flag store: consistent after a panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long `io_submit`'s EAGAIN (the context is full) is waited out, in total, before the
/// request fails: completions free room, so this only trips when nothing completes.
const EAGAIN_WAIT_MAX: Duration = Duration::from_secs(30);

/// Submits one iocb, retrying EINTR, and waiting out EAGAIN while completions free room.
/// Returns the errno when the kernel refuses the request itself.
pub(crate) fn submit_one(ctx: &Context, iocb: &mut Iocb) -> std::result::Result<(), i32> {
    let mut ptrs = [iocb as *mut Iocb];
    let mut waited = Duration::ZERO;
    loop {
        // SAFETY: the iocb is valid for this call, and its buffer belongs to a request kept in
        // flight (in a table) until its event is reaped.
        match unsafe { io_submit(ctx.id, &mut ptrs) } {
            Ok(1) => return Ok(()),
            Ok(_) => {}
            Err(e) => match e.raw_os_error().unwrap_or(libc::EIO) {
                libc::EINTR => {}
                libc::EAGAIN if waited < EAGAIN_WAIT_MAX => {
                    std::thread::sleep(Duration::from_micros(100));
                    waited += Duration::from_micros(100);
                }
                errno => return Err(errno),
            },
        }
    }
}

/// Runs a sync on the calling thread: the fallback when the kernel has no AIO fsync. The
/// fault hook was consulted when the request was admitted; its retries count too.
pub(crate) fn sync_on_thread(inflight: InFlight, metrics: &Metrics) -> Completion {
    let kind = inflight.request.kind;
    let file = &inflight.request.file;
    let (raw, retries): (RawResult, u32) = run_with_retries(None, kind, file, 0, 0, |_| {
        let result = if kind == OpKind::SyncData {
            file.std().sync_data()
        } else {
            file.std().sync_all()
        };
        result
            .map(|()| 0)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    });
    let retries = inflight.retries + retries;
    inflight.complete(raw, retries, metrics)
}

/// The thread that runs syncs when the kernel cannot (before Linux 4.18).
struct Syncer {
    jobs: Mutex<(VecDeque<(u32, InFlight)>, bool)>,
    ready: Condvar,
}

/// State shared by the engine, its reaper, its sync thread and its queues.
pub(crate) struct Shared {
    pub(crate) engine_id: u64,
    pub(crate) config: EngineConfig,
    pub(crate) metrics: Metrics,
    pub(crate) table: InFlightTable,
    pub(crate) native_fsync: bool,
    ctx: Context,
    eventfd: OwnedFd,
    syncer: Syncer,
}

/// The Linux AIO engine.
pub struct AioEngine {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    capabilities: Capabilities,
}

impl AioEngine {
    /// Creates the engine: a context of the queue depth, an eventfd, the reaper, and a sync
    /// thread when the kernel has no AIO fsync.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a bad depth; the `io_setup` error with its diagnosis
    /// (`fs.aio-max-nr` exhausted is [`ErrorKind::Unsupported`], so `auto` falls back).
    ///
    /// [`ErrorKind::InvalidInput`]: engine_core::ErrorKind::InvalidInput
    /// [`ErrorKind::Unsupported`]: engine_core::ErrorKind::Unsupported
    pub fn new(config: EngineConfig) -> Result<AioEngine> {
        config.validate()?;
        let ctx = Context::new(config.queue_depth)?;
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor that
        // nothing else owns.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::from_io(&e, Op::Setup).with_message("eventfd for AIO completions"));
        }
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        let native_fsync = native_fsync();
        let mut threads = 1;
        let mut notes = vec![
            "Linux AIO is asynchronous only for O_DIRECT files: a buffered request runs synchronously inside io_submit, on the submitting thread".to_string(),
            "completions are signalled through an eventfd; one reaper thread reaps them".to_string(),
        ];
        if native_fsync {
            notes.push("syncs use IOCB_CMD_FDSYNC / IOCB_CMD_FSYNC".to_string());
        } else {
            threads += 1;
            notes.push(
                "the kernel has no AIO fsync: syncs run on a thread (fdatasync / fsync)"
                    .to_string(),
            );
        }
        let capabilities = Capabilities {
            backend: crate::NAME,
            queue_depth: config.queue_depth,
            threads,
            op_occupies_thread: false,
            submit_may_block: true,
            direct_io: true,
            dsync: true,
            fault_hook: true,
            strict_mode: true,
            registered_buffers: Some("not applicable: Linux AIO has no registered buffers".into()),
            notes,
        };
        let shared = Arc::new(Shared {
            engine_id: next_engine_id(),
            metrics: Metrics::default(),
            table: InFlightTable::new(config.queue_depth),
            native_fsync,
            ctx,
            eventfd,
            syncer: Syncer {
                jobs: Mutex::new((VecDeque::with_capacity(config.queue_depth), false)),
                ready: Condvar::new(),
            },
            config,
        });
        let mut handles = Vec::new();
        let reaper = Arc::clone(&shared);
        handles.push(spawn("engine-aio-reaper", move || reaper.reap_loop())?);
        if !native_fsync {
            let syncer = Arc::clone(&shared);
            handles.push(spawn("engine-aio-sync", move || syncer.sync_loop())?);
        }
        Ok(AioEngine {
            shared,
            threads: Mutex::new(handles),
            capabilities,
        })
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map_err(|e| Error::from_io(&e, Op::Setup).with_message(format!("spawning {name}")))
}

impl Shared {
    fn hook(&self) -> Option<&dyn engine_core::FaultHook> {
        self.config.fault_hook.as_deref()
    }

    /// Wakes the reaper through the eventfd.
    fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live array to our eventfd.
        let _ = unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    fn finish(&self, slot: u32, completion: Completion) {
        if self.table.finish(slot, completion) {
            // The last request out during shutdown wakes the reaper so it can exit.
            self.wake();
        }
    }

    /// Sends a request to the kernel; on refusal, completes it with the errno.
    fn launch(&self, slot: u32, mut inflight: InFlight) {
        if inflight.request.kind.is_sync() && !self.native_fsync {
            let (jobs, _) = &mut *lock(&self.syncer.jobs);
            jobs.push_back((slot, inflight));
            self.syncer.ready.notify_one();
            return;
        }
        let mut cb = iocb(
            &mut inflight,
            u64::from(slot),
            Some(self.eventfd.as_raw_fd()),
        );
        let retries = inflight.retries;
        // Stored before submission: the reaper may reap the event before io_submit returns.
        self.table.store(slot, inflight);
        if let Err(errno) = submit_one(&self.ctx, &mut cb) {
            if let Some(inflight) = self.table.take(slot) {
                self.finish(slot, inflight.complete(Err(errno), retries, &self.metrics));
            }
        }
    }

    fn reap_loop(&self) {
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.reap_until_drained()));
        let reason = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("the AIO reaper failed: {e}"),
            Err(_) => "the AIO reaper panicked".to_string(),
        };
        tracing::error!(reason, "AIO reaper died; failing every request in flight");
        self.table.die(&reason, &self.metrics);
    }

    fn reap_until_drained(&self) -> std::io::Result<()> {
        let mut events = vec![IoEvent::default(); self.config.queue_depth.clamp(1, 256)];
        loop {
            if self.table.drained() {
                return Ok(());
            }
            let mut counter = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live 8-byte array from our eventfd.
            let n = unsafe {
                libc::read(
                    self.eventfd.as_raw_fd(),
                    counter.as_mut_ptr().cast(),
                    counter.len(),
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e);
            }
            // Reap everything ready; each round takes up to `events.len()`.
            loop {
                let count = match io_getevents(self.ctx.id, 0, &mut events, true) {
                    Ok(count) => count,
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => return Err(e),
                };
                for event in &events[..count] {
                    self.on_event(event.data as u32, event.res);
                }
                if count < events.len() {
                    break;
                }
            }
        }
    }

    fn on_event(&self, slot: u32, res: i64) {
        let Some(inflight) = self.table.take(slot) else {
            debug_assert!(false, "event for empty slot {slot}");
            return;
        };
        match inflight.settle(res, self.hook(), &self.metrics) {
            Settled::Resubmit(inflight) => self.launch(slot, inflight),
            Settled::Done(completion) => self.finish(slot, completion),
        }
    }

    fn sync_loop(&self) {
        loop {
            let job = {
                let mut guard = lock(&self.syncer.jobs);
                loop {
                    if let Some(job) = guard.0.pop_front() {
                        break Some(job);
                    }
                    if guard.1 {
                        break None;
                    }
                    guard = self
                        .syncer
                        .ready
                        .wait(guard)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            let Some((slot, inflight)) = job else { return };
            let completion = sync_on_thread(inflight, &self.metrics);
            self.finish(slot, completion);
        }
    }
}

impl Engine for AioEngine {
    type Queue = AioQueue;

    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        let s = &*self.shared;
        if s.table.is_shut_down() {
            return Err(Error::shutdown(Op::Open));
        }
        let (std, geometry) = options.open_std(path)?;
        Ok(File::new(
            s.engine_id,
            std,
            path,
            options.clone(),
            geometry,
            s.config.strict,
            0,
        ))
    }

    fn close(&self, file: &File) -> Result<()> {
        file.mark_closed(self.shared.engine_id)
    }

    async fn submit(&self, request: Request) -> Completion {
        let s = &*self.shared;
        let admission = s
            .table
            .admit(s.engine_id, request, None, s.hook(), &s.metrics)
            .await;
        let (slot, inflight) = match admission {
            Admission::Submit { slot, inflight } => (slot, inflight),
            Admission::Done(completion) => return completion,
        };
        s.launch(slot, inflight);
        s.table.wait(slot).await
    }

    fn queue(&self) -> Result<AioQueue> {
        if self.shared.table.is_shut_down() {
            return Err(Error::shutdown(Op::Setup));
        }
        AioQueue::new(Arc::clone(&self.shared))
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    fn shutdown(&self) {
        let s = &*self.shared;
        if s.table.begin_shutdown() {
            s.wake();
        }
        let handles = std::mem::take(&mut *lock(&self.threads));
        for (i, handle) in handles.into_iter().enumerate() {
            if i == 1 {
                // The sync thread: every sync admitted before shutdown is already queued.
                lock(&s.syncer.jobs).1 = true;
                s.syncer.ready.notify_all();
            }
            let _ = handle.join();
        }
    }
}

impl Drop for AioEngine {
    fn drop(&mut self) {
        Engine::shutdown(self);
    }
}

impl std::fmt::Debug for AioEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AioEngine")
            .field("queue_depth", &self.capabilities.queue_depth)
            .field("native_fsync", &self.shared.native_fsync)
            .finish()
    }
}
