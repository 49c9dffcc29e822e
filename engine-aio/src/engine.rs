//! The Linux AIO engine: the shared request lifecycle ([`engine_core::raw::Driver`],
//! [`engine_core::raw::QueueDriver`]) over the engine's context and over one context per
//! queue.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use engine_core::raw::sandbox::{Pin, SteadyState, Syscall};
use engine_core::raw::{force_thread_sync, Common, Driver, Kernel, Pool, QueueDriver};
use engine_core::{
    Backend, Capabilities, Completion, EngineConfig, Error, File, MetricsSnapshot, Op, OpenOptions,
    Request, Result,
};

use crate::context::native_fsync;
use crate::kernel::{AioKernel, AioWait, EventFd};

/// A per-thread Linux AIO queue: a context of its own, submitted to and reaped by the thread
/// that uses it (`io_submit`, the mapped completion ring, `io_getevents`). A partial
/// `io_submit` keeps the rest queued; a full context waits for completions instead of
/// failing. Syncs without AIO fsync, and requests on files AIO refuses, run on the thread
/// that submits them. See [`engine_core::Queue`].
pub type AioQueue = QueueDriver<AioKernel>;

/// The Linux AIO engine.
pub struct AioEngine {
    driver: Arc<Driver<AioKernel, AioWait>>,
    /// The thread for what AIO cannot do.
    pool: Arc<Pool>,
    thread_syncs: bool,
    capabilities: Capabilities,
}

impl AioEngine {
    /// Creates the engine: a context of the queue depth, an eventfd, the driver, and the
    /// thread for syncs when the kernel has no AIO fsync (and for files AIO refuses).
    ///
    /// # Errors
    ///
    /// [`engine_core::ErrorKind::InvalidInput`] for a bad depth; the `io_setup` error with
    /// its diagnosis (`fs.aio-max-nr` exhausted is [`engine_core::ErrorKind::Unsupported`], so
    /// `auto` falls back).
    pub fn new(config: EngineConfig) -> Result<AioEngine> {
        config.validate()?;
        let depth = config.queue_depth;
        let thread_syncs = !native_fsync() || force_thread_sync(&config);
        let mut notes = vec![
            "Linux AIO is asynchronous only for O_DIRECT files: a buffered request runs \
             synchronously inside io_submit, on the submitting thread"
                .to_string(),
            "completions signal an eventfd; a block_on thread waits on it itself, and a reaper \
             thread serves futures polled by other executors"
                .to_string(),
        ];
        notes.push(if thread_syncs {
            "the kernel has no AIO fsync: syncs run on a thread (fdatasync / fsync)".to_string()
        } else {
            "syncs use IOCB_CMD_FDSYNC / IOCB_CMD_FSYNC (the kernel runs them on a kworker); a \
             queue's sync with nothing else in flight runs on the queue's thread instead, as \
             fio's libaio engine runs every sync"
                .to_string()
        });
        if config.inline || config.threads > 0 {
            notes.push("ENGINE_THREADS has no effect on Linux AIO".to_string());
        }
        let eventfd = Arc::new(EventFd::new()?);
        let pool = Pool::start(1, depth, "engine-aio-sync")?;
        let kernel = AioKernel::new(
            depth,
            &config,
            Some(Arc::clone(&eventfd)),
            Some(Arc::clone(&pool)),
            thread_syncs,
        )?;
        let capabilities = Capabilities {
            backend: crate::NAME,
            queue_depth_max: depth,
            threads: 2,
            op_occupies_thread: false,
            submit_may_block: true,
            direct_io: true,
            dsync: true,
            fault_hook: true,
            strict_mode: true,
            notes,
            ..Capabilities::default()
        };
        let common = Arc::new(Common::new(config));
        let driver = Driver::start(common, kernel, AioWait(eventfd), "engine-aio-reaper")?;
        Ok(AioEngine {
            driver,
            pool,
            thread_syncs,
            capabilities,
        })
    }

    fn common(&self) -> &Common {
        self.driver.common()
    }
}

impl Backend for AioEngine {
    type Queue = AioQueue;

    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        let common = self.common();
        let (std, geometry) = common.open_std(path, options)?;
        Ok(common.file(std, path, options.clone(), geometry, 0, None))
    }

    fn adopt(&self, fd: std::os::fd::OwnedFd, options: &OpenOptions) -> Result<File> {
        let common = self.common();
        let (std, path, options, geometry) = common.adopt_std(fd, options)?;
        Ok(common.file(std, &path, options, geometry, 0, None))
    }

    fn close(&self, file: &File) -> Result<()> {
        self.common().close(file)
    }

    fn submit(&self, request: Request) -> impl Future<Output = Completion> + Send + '_ {
        self.driver.submit(request)
    }

    fn queue(&self) -> Result<AioQueue> {
        let common = self.driver.common();
        if common.is_shut_down() {
            return Err(Error::shutdown(Op::Setup));
        }
        let config = common.config();
        let kernel = AioKernel::new(config.queue_depth, config, None, None, self.thread_syncs)?;
        Ok(QueueDriver::new(Arc::clone(common), kernel))
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.common().metrics().snapshot()
    }

    fn shutdown(&self) {
        self.driver.shutdown();
        self.pool.shutdown();
    }

    fn steady_state(&self) -> Result<SteadyState> {
        let own = self.driver.with_kernel(|kernel| kernel.kernel_ids());
        let on_own = |name, nr, why| Syscall::new(name, nr, Pin::Own(own.clone()), why);
        let mut calls = vec![
            on_own(
                "io_submit",
                libc::SYS_io_submit,
                "submits reads, writes and (where AIO has them) syncs",
            ),
            on_own(
                "io_getevents",
                libc::SYS_io_getevents,
                "reaps completions the mapped ring does not show, and a queue waits in it",
            ),
            on_own(
                "read",
                libc::SYS_read,
                "the async engine's waiter sleeps reading its eventfd",
            ),
            on_own(
                "write",
                libc::SYS_write,
                "a completion on the worker pool, or a wake-up, signals the eventfd",
            ),
        ];
        // What AIO cannot do (syncs where it has no fsync, allocate, set_len, metadata, a
        // file it refuses) runs on the worker pool or the queue's thread.
        calls.extend(SteadyState::file_calls());
        let mut state = SteadyState::new(crate::NAME, calls);
        state.notes.push(
            "make every queue before the sandbox: a queue makes its AIO context (io_setup) then"
                .into(),
        );
        Ok(state)
    }
}

impl Drop for AioEngine {
    fn drop(&mut self) {
        Backend::shutdown(self);
    }
}

impl std::fmt::Debug for AioEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AioEngine")
            .field("queue_depth_max", &self.capabilities.queue_depth_max)
            .field("thread_syncs", &self.thread_syncs)
            .finish()
    }
}
