//! The io_uring engine: the shared request lifecycle ([`engine_core::raw::Driver`],
//! [`engine_core::raw::QueueDriver`]) over the engine's shared ring and over one ring per
//! queue.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use engine_core::raw::sandbox::{Pin, SteadyState, Syscall};
use engine_core::raw::{
    simulated_setup_errno, submission_entries, Common, Driver, FileRaw, Kernel, QueueDriver,
};
use engine_core::{
    Backend, Capabilities, Completion, EngineConfig, Error, ErrorKind, File, MetricsSnapshot, Op,
    OpenOptions, PagePool, Request, Result,
};

use crate::kernel::{FileHook, QueueKernel, Shared, SharedKernel, SharedWait};
use crate::ring::{self, Ring, Use, FILES_MAX};

/// A per-thread io_uring queue: a ring of its own, submitted and reaped by the thread that
/// uses it (SINGLE_ISSUER and DEFER_TASKRUN where the kernel has them). See
/// [`engine_core::Queue`].
///
/// The ring binds to the thread that first submits on it. Moved to another thread with
/// nothing in flight, the queue makes itself a new ring there; moved with requests in flight,
/// its calls fail with [`ErrorKind::InvalidInput`] until it is used from its thread again.
pub type UringQueue = QueueDriver<QueueKernel>;

/// The io_uring engine.
pub struct UringEngine {
    driver: Arc<Driver<SharedKernel, SharedWait>>,
    shared: Arc<Shared>,
    capabilities: Capabilities,
}

impl UringEngine {
    /// Creates the engine: a ring of the queue depth, the registered pool and the driver.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a bad depth or pool size; the setup error (typed by
    /// errno, with the probe's diagnosis in the message) when the ring cannot be created.
    pub fn new(config: EngineConfig) -> Result<UringEngine> {
        config.validate()?;
        if let Some(errno) = simulated_setup_errno(&config, crate::NAME) {
            let diagnosis = crate::probe::diagnose(errno, None, None);
            return Err(Error::from_errno(errno, Op::Setup).with_message(diagnosis.to_string()));
        }
        let pool = ring::pool_for(&config)?;
        // Twice the depth, and room to spare: wake-up NOPs and resubmissions must fit while
        // the kernel has not yet moved the SQ head past entries it already took.
        let wanted = (2 * config.queue_depth + 8).next_power_of_two() as u32;
        let entries = submission_entries(&config, wanted);
        let (mut ring, pool_note) = Ring::new(entries, &config, Use::Shared, pool.as_ref())?;
        ring.enable()
            .map_err(|e| Error::from_io(&e, Op::Setup).with_message("enabling the ring"))?;
        let mut notes = vec![format!("ring flags: {}", ring.flags.join(" | "))];
        match (&pool, &pool_note) {
            (Some(pool), None) => notes.push(format!(
                "a {}-byte page pool is registered as fixed buffer 0: buffers from pool() use READ_FIXED/WRITE_FIXED",
                pool.config().limit_bytes
            )),
            (_, Some(why)) => {
                tracing::warn!(reason = %why, "io_uring fixed buffers not registered");
                notes.push(format!("buffers not registered: {why}"));
            }
            (None, None) => notes.push("buffers not registered: ENGINE_REGISTER_BUFFERS=0".into()),
        }
        notes.push(if ring.fixed_files {
            format!("files registered (up to {FILES_MAX})")
        } else {
            "files not registered: the kernel refused a sparse file table".to_string()
        });
        if config.iopoll {
            notes.push("IOPOLL: syncs are refused (fsync cannot be polled)".into());
        }
        if config.restricted {
            notes.push(
                "restricted (hardened) ring: created disabled, limited to reads, writes, \
                 syncs, fallocate, ftruncate and file-table updates on registered files, then \
                 enabled"
                    .into(),
            );
        }
        notes.extend(ring.hardening.iter().cloned());
        if config.inline || config.threads > 0 {
            notes.push(
                "ENGINE_THREADS has no effect on io_uring: the kernel runs requests, and a \
                 block_on thread waits in the ring itself"
                    .into(),
            );
        }
        notes.push(
            "on devices without NOWAIT support (zram, for one) io_uring hands every request to \
             kernel worker threads"
                .into(),
        );
        let capabilities = Capabilities {
            backend: crate::NAME,
            queue_depth_max: config.queue_depth,
            threads: 1,
            op_occupies_thread: false,
            submit_may_block: false,
            direct_io: true,
            dsync: true,
            fault_hook: true,
            strict_mode: true,
            registered_buffers: pool.is_some() && pool_note.is_none(),
            registered_files: ring.fixed_files,
            sqpoll: config.sqpoll_idle_ms.is_some(),
            iopoll: config.iopoll,
            restricted: config.restricted,
            notes,
        };
        let shared = Arc::new(Shared::new(ring, config.iopoll));
        let depth = config.queue_depth;
        let common = Arc::new(Common::new(config));
        let kernel = SharedKernel::new(Arc::clone(&shared), depth);
        let waiter = SharedWait(Arc::clone(&shared));
        let driver = Driver::start(common, kernel, waiter, "engine-uring-reaper")?;
        Ok(UringEngine {
            driver,
            shared,
            capabilities,
        })
    }

    fn common(&self) -> &Common {
        self.driver.common()
    }
}

impl UringEngine {
    /// What io_uring adds to an opened or adopted file: the IOPOLL check and the file's
    /// registration in the engine's ring.
    fn attach(
        &self,
        std: std::fs::File,
        path: &Path,
        options: OpenOptions,
        geometry: engine_core::Geometry,
    ) -> Result<File> {
        let common = self.common();
        if common.config().iopoll {
            crate::iopoll::check(&std, path, &options)?;
        }
        let index = self.shared.register(std::os::fd::AsRawFd::as_raw_fd(&std));
        if index == 0 && common.config().restricted {
            return Err(Error::new(
                ErrorKind::Unsupported,
                Op::Open,
                "restricted mode needs every file registered, and the file table is full",
            ));
        }
        let hook = Arc::new(FileHook(Arc::downgrade(&self.shared)));
        Ok(common.file(std, path, options, geometry, index, Some(hook)))
    }
}

impl Backend for UringEngine {
    type Queue = UringQueue;

    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        let (std, geometry) = self.common().open_std(path, options)?;
        self.attach(std, path, options.clone(), geometry)
    }

    fn adopt(&self, fd: std::os::fd::OwnedFd, options: &OpenOptions) -> Result<File> {
        let (std, path, options, geometry) = self.common().adopt_std(fd, options)?;
        self.attach(std, &path, options, geometry)
    }

    fn close(&self, file: &File) -> Result<()> {
        // The registered slot stays until the last handle goes (requests admitted before the
        // close may still use it); queues drop their registrations at their next call.
        self.common().close(file)?;
        debug_assert!(
            file.backend_index() <= FILES_MAX,
            "slot {}",
            file.backend_index()
        );
        Ok(())
    }

    fn submit(&self, request: Request) -> impl Future<Output = Completion> + Send + '_ {
        self.driver.submit(request)
    }

    fn queue(&self) -> Result<UringQueue> {
        let common = self.driver.common();
        if common.is_shut_down() {
            return Err(Error::shutdown(Op::Setup));
        }
        let kernel = QueueKernel::new(
            Arc::clone(&self.shared),
            common.config().queue_depth,
            common.config(),
        )?;
        Ok(QueueDriver::new(Arc::clone(common), kernel))
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.common().metrics().snapshot()
    }

    fn pool(&self) -> Option<&PagePool> {
        self.shared.ring.pool()
    }

    fn shutdown(&self) {
        self.driver.shutdown();
    }

    fn steady_state(&self) -> Result<SteadyState> {
        let own = self.driver.with_kernel(|kernel| kernel.kernel_ids());
        let ring = |name, nr, why| Syscall::new(name, nr, Pin::Own(own.clone()), why);
        let mut calls = vec![
            ring(
                "io_uring_enter",
                libc::SYS_io_uring_enter,
                "submits, and waits for completions: every request travels through the ring",
            ),
            ring(
                "io_uring_register",
                libc::SYS_io_uring_register,
                "a file's first use on a queue registers it in that queue's ring (a restricted \
                 ring takes no other registration)",
            ),
        ];
        // The file-management operations the ring's opcodes do not cover run on the
        // submitting thread.
        let ops = self.shared.ring.ops;
        let on_thread = [
            ("fallocate", !ops.fallocate),
            ("ftruncate", !ops.ftruncate),
            ("statx", !ops.statx),
            // A block device's size, for metadata, is an ioctl in any case.
            ("ioctl", true),
        ];
        for call in SteadyState::file_calls() {
            if on_thread.contains(&(call.name, true)) {
                calls.push(call);
            }
        }
        let mut state = SteadyState::new(crate::NAME, calls);
        state.notes.push(
            "make every queue, and run a request on each of them from its thread, before the \
             sandbox: a queue makes and enables its ring then, and again when moved to another \
             thread"
                .into(),
        );
        if !self.common().config().restricted {
            state.notes.push(
                "io_uring runs its operations in the kernel, where seccomp does not see them: \
                 in a sandbox use the restricted ring (ENGINE_RESTRICTED=1), which takes only \
                 reads, writes, syncs and file-table updates, on registered files only"
                    .into(),
            );
        }
        Ok(state)
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        Backend::shutdown(self);
    }
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("queue_depth_max", &self.capabilities.queue_depth_max)
            .field("flags", &self.shared.ring.flags)
            .finish()
    }
}
