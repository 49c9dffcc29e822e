//! The async engine: submitting tasks push SQEs and enter the kernel themselves (no thread
//! hop on submission); one reaper thread waits for completions, reaps every CQE that is ready
//! per wake-up, and wakes the waiting tasks through their completion slots.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use engine_core::{
    next_engine_id, Admission, Capabilities, Completion, Engine, EngineConfig, Error, ErrorKind,
    File, InFlightTable, Metrics, MetricsSnapshot, Op, OpenOptions, PagePool, Request, Result,
    Settled,
};
use io_uring::squeue;

use crate::queue::UringQueue;
use crate::ring::{self, entry, errno, Fixed, Ring, Use, FILES_MAX, WAKE};

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
    /// Requests in flight through the async API, by slot (the SQE's user data).
    pub(crate) table: InFlightTable,
    ring: Ring,
    /// Serialises writers of the submission queue (the reaper resubmits too).
    sq: Mutex<()>,
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
        config.validate()?;
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
            table: InFlightTable::new(config.queue_depth),
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
        tracing::error!(
            reason,
            "io_uring reaper died; failing every request in flight"
        );
        self.table.die(&reason, &self.metrics);
    }

    fn reap_until_drained(&self) -> std::io::Result<()> {
        loop {
            if self.table.drained() {
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
        let Some(inflight) = self.table.take(slot) else {
            debug_assert!(false, "CQE for empty slot {slot}");
            return;
        };
        match inflight.settle(i64::from(res), self.hook(), &self.metrics) {
            Settled::Resubmit(mut inflight) => {
                let fixed = self.fixed(&inflight.request.file);
                let sqe = entry(&mut inflight, fixed, u64::from(slot));
                self.table.store(slot, inflight);
                self.push(&sqe);
            }
            Settled::Done(completion) => self.finish(slot, completion),
        }
    }

    fn finish(&self, slot: u32, completion: Completion) {
        if self.table.finish(slot, completion) {
            // The reaper may be waiting for this request; the last one out wakes it to exit.
            self.push(&ring::wake_entry());
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
        if s.table.is_shut_down() {
            return Err(Error::shutdown(Op::Open));
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
        file.mark_closed(self.shared.engine_id)?;
        let index = file.backend_index();
        if index > 0 {
            self.shared.ring.unregister_file(index - 1);
            lock(&self.shared.file_slots).push(index - 1);
        }
        Ok(())
    }

    async fn submit(&self, request: Request) -> Completion {
        let s = &*self.shared;
        let refuse = ring::iopoll_refuses(&s.config, &request);
        let admission = s
            .table
            .admit(s.engine_id, request, refuse, s.hook(), &s.metrics)
            .await;
        let (slot, mut inflight) = match admission {
            Admission::Submit { slot, inflight } => (slot, inflight),
            Admission::Done(completion) => return completion,
        };
        let fixed = s.fixed(&inflight.request.file);
        let sqe = entry(&mut inflight, fixed, u64::from(slot));
        // Stored before the push: the reaper may see the CQE as soon as the kernel has it.
        s.table.store(slot, inflight);
        s.push(&sqe);
        s.table.wait(slot).await
    }

    fn queue(&self) -> Result<UringQueue> {
        if self.shared.table.is_shut_down() {
            return Err(Error::shutdown(Op::Setup));
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
        if s.table.begin_shutdown() {
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
