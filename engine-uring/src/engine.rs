//! The async engine: submitting tasks push SQEs and enter the kernel themselves (no thread
//! hop on submission); one reaper thread waits for completions, reaps every CQE that is ready
//! per wake-up, and wakes the waiting tasks through their completion slots.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use engine_core::{
    hook_gate, next_engine_id, prepare, reject, Capabilities, Completion, Engine, EngineConfig,
    Error, ErrorKind, File, HookGate, Metrics, MetricsSnapshot, Op, OpenOptions, PagePool, Request,
    Result, SlotFuture, Slots,
};
use io_uring::squeue;

use crate::queue::UringQueue;
use crate::ring::{
    self, complete, entry, errno, Fixed, Inflight, Reaped, Ring, Use, FILES_MAX, WAKE,
};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a take, a store or a push: consistent even after a panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the engine, its reaper and its queues.
pub(crate) struct Shared {
    pub(crate) engine_id: u64,
    pub(crate) config: EngineConfig,
    pub(crate) metrics: Metrics,
    pub(crate) pool: Option<PagePool>,
    /// Set once, by `shutdown`: no request is accepted after it.
    pub(crate) shutdown: AtomicBool,
    slots: Slots<Completion>,
    ring: Ring,
    /// Serialises writers of the submission queue (the reaper resubmits too).
    sq: Mutex<()>,
    /// The request each slot's SQE belongs to, owned here until its CQE is reaped.
    inflight: Mutex<Vec<Option<Inflight>>>,
    /// Requests accepted and not yet completed; the reaper exits at shutdown once it is 0.
    pending: AtomicUsize,
    /// Set when the reaper died: every later request fails.
    dead: AtomicBool,
    /// Free registered-file slots.
    file_slots: Mutex<Vec<u32>>,
}

/// The io_uring engine.
pub struct UringEngine {
    shared: Arc<Shared>,
    reaper: Mutex<Option<JoinHandle<()>>>,
    capabilities: Capabilities,
}

impl UringEngine {
    /// Creates the engine: a ring of the queue depth, the registered pool, and the reaper.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a bad depth or pool size; the setup error (typed by
    /// errno, with the probe's diagnosis in the message) when the ring cannot be created.
    pub fn new(config: EngineConfig) -> Result<UringEngine> {
        if config.queue_depth == 0 || config.queue_depth > EngineConfig::QUEUE_DEPTH_MAX {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                Op::Setup,
                format!(
                    "queue depth {} is outside 1..={}",
                    config.queue_depth,
                    EngineConfig::QUEUE_DEPTH_MAX
                ),
            ));
        }
        if let Some(errno) = crate::probe::simulated_errno() {
            let diagnosis = crate::probe::diagnose(errno, None, None);
            return Err(Error::from_errno(errno, Op::Setup).with_message(diagnosis.to_string()));
        }
        let pool = ring::pool_for(&config)?;
        // Twice the depth: room for the reaper's wake-up NOPs and resubmissions while the kernel
        // has not yet moved the SQ head past entries it already took.
        let entries = (2 * config.queue_depth).next_power_of_two() as u32;
        let (mut ring, pool_note) = Ring::new(entries, &config, Use::Shared, pool.as_ref())?;
        ring.enable()
            .map_err(|e| Error::from_io(&e, Op::Setup).with_message("enabling the ring"))?;
        let registered = match (&pool, &pool_note) {
            (Some(pool), None) => format!(
                "registered: a {}-byte pool as fixed buffer 0; buffers from engine.pool() use READ_FIXED/WRITE_FIXED",
                pool.config().limit_bytes
            ),
            (_, Some(why)) => format!("not registered: {why}"),
            (None, None) => "not registered: ENGINE_REGISTER_BUFFERS=0".to_string(),
        };
        if let Some(why) = &pool_note {
            tracing::warn!(reason = %why, "io_uring fixed buffers not registered");
        }
        let mut notes = vec![format!("ring flags: {}", ring.flags.join(" | "))];
        notes.push(if ring.fixed_files {
            format!("files registered (up to {FILES_MAX})")
        } else {
            "files not registered: the kernel refused a sparse file table".to_string()
        });
        let capabilities = Capabilities {
            backend: crate::NAME,
            queue_depth: config.queue_depth,
            threads: 1,
            op_occupies_thread: false,
            submit_may_block: false,
            direct_io: true,
            dsync: true,
            fault_hook: true,
            strict_mode: true,
            registered_buffers: Some(registered),
            notes,
        };
        let file_slots = if ring.fixed_files {
            (0..FILES_MAX).rev().collect()
        } else {
            Vec::new()
        };
        let shared = Arc::new(Shared {
            engine_id: next_engine_id(),
            metrics: Metrics::default(),
            pool,
            shutdown: AtomicBool::new(false),
            slots: Slots::new(config.queue_depth),
            inflight: Mutex::new((0..config.queue_depth).map(|_| None).collect()),
            pending: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
            file_slots: Mutex::new(file_slots),
            sq: Mutex::new(()),
            ring,
            config,
        });
        let reaper = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("engine-uring-reaper".into())
            .spawn(move || reaper.reap_loop())
            .map_err(|e| {
                Error::from_io(&e, Op::Setup).with_message("spawning the reaper thread")
            })?;
        Ok(UringEngine {
            shared,
            reaper: Mutex::new(Some(handle)),
            capabilities,
        })
    }

    fn shutdown_error(op: Op) -> Error {
        Error::new(ErrorKind::Shutdown, op, "the engine has shut down")
    }
}

impl Shared {
    fn fixed(&self, file: &File) -> Fixed {
        let index = file.backend_index();
        Fixed {
            file: (index > 0 && self.ring.fixed_files).then(|| index - 1),
            pool: self.ring.fixed_pool,
        }
    }

    /// Pushes one SQE and enters the kernel.
    fn push(&self, sqe: &squeue::Entry) {
        {
            let _guard = lock(&self.sq);
            // SAFETY: the submission queue is only touched under `sq`, so this is the only
            // live handle to it. The SQE's buffer and file belong to a request held in
            // `inflight` until its CQE is reaped.
            let mut sq = unsafe { self.ring.ring.submission_shared() };
            // The SQ has twice as many entries as requests can be in flight, but under SQPOLL
            // the kernel may not have moved its head yet: wait for room, a bounded number of
            // times.
            let mut attempts = 0;
            // SAFETY: as above.
            while unsafe { sq.push(sqe) }.is_err() && attempts < ring::PUSH_ATTEMPTS_MAX {
                attempts += 1;
                sq.sync();
                drop(sq);
                ring::make_room(&self.ring.ring);
                // SAFETY: as above.
                sq = unsafe { self.ring.ring.submission_shared() };
            }
            sq.sync();
        }
        self.enter();
    }

    /// Submits what is queued. A refused enter leaves the SQEs in the ring, where the next
    /// enter (any submitter's, or the reaper's) picks them up, so it is retried briefly and
    /// never reported as the request's failure.
    fn enter(&self) {
        for _ in 0..64 {
            match self.ring.ring.submit() {
                Ok(_) => return,
                Err(e) if matches!(errno(&e), libc::EINTR | libc::EAGAIN | libc::EBUSY) => {
                    std::thread::yield_now();
                }
                Err(e) => {
                    tracing::error!(error = %e, "io_uring_enter failed");
                    return;
                }
            }
        }
    }

    fn hook(&self) -> Option<&dyn engine_core::FaultHook> {
        self.config.fault_hook.as_deref()
    }

    /// Runs on the reaper thread until shutdown has drained every request.
    fn reap_loop(&self) {
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.reap_until_drained()));
        let reason = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("io_uring_enter failed in the reaper: {e}"),
            Err(_) => "the reaper thread panicked".to_string(),
        };
        self.die(&reason);
    }

    fn reap_until_drained(&self) -> std::io::Result<()> {
        loop {
            if self.shutdown.load(Ordering::SeqCst) && self.pending.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            match self.ring.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        errno(&e),
                        libc::EINTR | libc::EAGAIN | libc::EBUSY | libc::ETIME
                    ) => {}
                Err(e) => return Err(e),
            }
            // SAFETY: only this thread reads the completion queue.
            let cq = unsafe { self.ring.ring.completion_shared() };
            for cqe in cq {
                if cqe.user_data() != WAKE {
                    self.on_cqe(cqe.user_data() as u32, cqe.result());
                }
            }
        }
    }

    fn on_cqe(&self, slot: u32, res: i32) {
        let taken = lock(&self.inflight)[slot as usize].take();
        let Some(inflight) = taken else {
            debug_assert!(false, "CQE for empty slot {slot}");
            return;
        };
        match ring::reap(inflight, res, self.hook(), &self.metrics) {
            Reaped::Resubmit(mut inflight) => {
                let fixed = self.fixed(&inflight.request.file);
                let sqe = entry(&mut inflight, fixed, u64::from(slot));
                lock(&self.inflight)[slot as usize] = Some(inflight);
                self.push(&sqe);
            }
            Reaped::Done(completion) => self.finish_slot(slot, completion),
        }
    }

    fn finish_slot(&self, slot: u32, completion: Completion) {
        let before = self.pending.fetch_sub(1, Ordering::SeqCst);
        self.slots.complete(slot, completion);
        if before == 1 && self.shutdown.load(Ordering::SeqCst) {
            // The reaper may be waiting for this request; the last one out wakes it to exit.
            self.push(&ring::wake_entry());
        }
    }

    /// The reaper cannot go on: fail every waiter instead of leaving it hanging. Buffers the
    /// kernel may still hold are leaked rather than freed.
    fn die(&self, reason: &str) {
        tracing::error!(
            reason,
            "io_uring reaper died; failing every request in flight"
        );
        self.dead.store(true, Ordering::SeqCst);
        self.slots.close();
        let mut inflight = lock(&self.inflight);
        for (slot, entry) in inflight.iter_mut().enumerate() {
            if let Some(mut held) = entry.take() {
                if let Some(buf) = held.request.buf.take() {
                    std::mem::forget(buf);
                }
                let error = held
                    .request
                    .file
                    .error(ErrorKind::Shutdown, held.request.kind.op())
                    .with_message(format!("the completion path died: {reason}"));
                let completion = reject(held.request, Some(&held.prepared), error, &self.metrics);
                self.finish_slot(slot as u32, completion);
            }
        }
    }
}

impl Engine for UringEngine {
    type Queue = UringQueue;

    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        let s = &*self.shared;
        if s.shutdown.load(Ordering::SeqCst) || s.dead.load(Ordering::SeqCst) {
            return Err(UringEngine::shutdown_error(Op::Open));
        }
        let (std, geometry) = options.open_std(path)?;
        if s.config.iopoll {
            crate::iopoll::check(&std, path, options)?;
        }
        let mut index = 0;
        if s.ring.fixed_files {
            if let Some(slot) = lock(&s.file_slots).pop() {
                match s
                    .ring
                    .register_fd(slot, std::os::fd::AsRawFd::as_raw_fd(&std))
                {
                    Ok(()) => index = slot + 1,
                    Err(_) => lock(&s.file_slots).push(slot),
                }
            }
        }
        if index == 0 && s.config.restricted {
            return Err(Error::new(
                ErrorKind::Unsupported,
                Op::Open,
                "restricted mode needs every file registered, and the file table is full",
            ));
        }
        Ok(File::new(
            s.engine_id,
            std,
            path,
            options.clone(),
            geometry,
            s.config.strict,
            index,
        ))
    }

    fn close(&self, file: &File) -> Result<()> {
        if file.engine_id() != self.shared.engine_id {
            return Err(file
                .error(ErrorKind::BadFile, Op::Close)
                .with_message("the file was opened by another engine"));
        }
        file.mark_closed()?;
        let index = file.backend_index();
        if index > 0 {
            self.shared.ring.unregister_file(index - 1);
            lock(&self.shared.file_slots).push(index - 1);
        }
        Ok(())
    }

    async fn submit(&self, request: Request) -> Completion {
        let s = &*self.shared;
        if let Some(error) = ring::iopoll_refuses(&s.config, &request) {
            return reject(request, None, error, &s.metrics);
        }
        let prepared = match prepare(s.engine_id, &request) {
            Ok(prepared) => prepared,
            Err(error) => return reject(request, None, error, &s.metrics),
        };
        let Ok(slot) = s.slots.acquire().await else {
            let error = request.file.error(ErrorKind::Shutdown, request.kind.op());
            return reject(request, Some(&prepared), error, &s.metrics);
        };
        // Count the request before looking at the shutdown flag, so the reaper cannot exit
        // between the two (it exits only when the flag is set and nothing is pending).
        s.pending.fetch_add(1, Ordering::SeqCst);
        let (len, retries) = match hook_gate(s.hook(), &request, prepared.len, 0) {
            HookGate::Submit { len, retries } => (len, retries),
            HookGate::Fail { errno, retries } => {
                let inflight = Inflight {
                    request,
                    prepared,
                    len: 0,
                    retries,
                };
                s.finish_slot(slot, complete(inflight, Err(errno), retries, &s.metrics));
                return SlotFuture::new(&s.slots, slot).await;
            }
        };
        if s.shutdown.load(Ordering::SeqCst) || s.dead.load(Ordering::SeqCst) {
            let error = request.file.error(ErrorKind::Shutdown, request.kind.op());
            s.finish_slot(slot, reject(request, Some(&prepared), error, &s.metrics));
            return SlotFuture::new(&s.slots, slot).await;
        }
        let mut inflight = Inflight {
            request,
            prepared,
            len,
            retries,
        };
        let fixed = s.fixed(&inflight.request.file);
        let sqe = entry(&mut inflight, fixed, u64::from(slot));
        // Stored before the push: the reaper may see the CQE as soon as the kernel has it.
        lock(&s.inflight)[slot as usize] = Some(inflight);
        s.push(&sqe);
        SlotFuture::new(&s.slots, slot).await
    }

    fn queue(&self) -> Result<UringQueue> {
        if self.shared.shutdown.load(Ordering::SeqCst) {
            return Err(UringEngine::shutdown_error(Op::Setup));
        }
        UringQueue::new(Arc::clone(&self.shared))
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    fn pool(&self) -> Option<&PagePool> {
        self.shared.pool.as_ref()
    }

    fn shutdown(&self) {
        let s = &*self.shared;
        if !s.shutdown.swap(true, Ordering::SeqCst) {
            s.slots.close();
            // Wake the reaper so it sees the flag even with nothing in flight.
            s.push(&ring::wake_entry());
        }
        let handle = lock(&self.reaper).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        Engine::shutdown(self);
    }
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("queue_depth", &self.capabilities.queue_depth)
            .field("flags", &self.shared.ring.flags)
            .finish()
    }
}
