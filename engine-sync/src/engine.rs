//! The sync engine: blocking syscalls through the shared request lifecycle
//! ([`engine_core::raw::Driver`], [`engine_core::raw::QueueDriver`]) over the shared worker
//! pool ([`ThreadKernel`]).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use engine_core::raw::sandbox::SteadyState;
use engine_core::raw::{Common, Driver, Pool, PoolWait, QueueDriver, ThreadKernel};
use engine_core::{
    Backend, Capabilities, Completion, EngineConfig, Error, File, MetricsSnapshot, Op, OpenOptions,
    Request, Result,
};

/// The largest default worker count; `ENGINE_THREADS` or [`EngineConfig::threads`] can go
/// higher.
pub const THREADS_DEFAULT_MAX: usize = 32;

/// The per-thread queue of the sync backend: requests run on the engine's worker pool (or on
/// the thread that submits, when a read would not block or the engine is inline), and the
/// thread that waits runs queued requests itself before it sleeps.
pub type SyncQueue = QueueDriver<ThreadKernel>;

/// pread/pwrite/fdatasync/fsync on a bounded pool of worker threads.
///
/// A buffered read is first tried on the submitting thread with `preadv2(RWF_NOWAIT)`, so a cached
/// read costs what `pread` costs; only requests that would block go to the pool, where each
/// occupies a worker while its syscall runs (queue depth gives real parallelism up to the
/// number of threads). A thread waiting for completions runs queued requests itself.
pub struct SyncEngine {
    driver: Arc<Driver<ThreadKernel, PoolWait>>,
    pool: Option<Arc<Pool>>,
    capabilities: Capabilities,
}

/// The worker count a configuration asks for: 0 inline, else `threads` or
/// `min(queue_depth, 32)`.
pub(crate) fn threads_for(config: &EngineConfig) -> usize {
    match (config.inline, config.threads) {
        (true, _) => 0,
        (false, 0) => config.queue_depth.min(THREADS_DEFAULT_MAX),
        (false, n) => n,
    }
}

impl SyncEngine {
    /// Starts an engine with `config`. `threads == 0` means `min(queue_depth, 32)`.
    ///
    /// # Errors
    ///
    /// [`engine_core::ErrorKind::InvalidInput`] for a queue depth of 0 or above
    /// [`EngineConfig::QUEUE_DEPTH_MAX`], or more than [`EngineConfig::THREADS_MAX`] threads;
    /// the OS error when a thread cannot be spawned.
    pub fn new(config: EngineConfig) -> Result<SyncEngine> {
        config.validate()?;
        let threads = threads_for(&config);
        let depth = config.queue_depth;
        let capabilities = Capabilities {
            backend: crate::NAME,
            queue_depth_max: depth,
            threads,
            op_occupies_thread: true,
            submit_may_block: config.inline,
            direct_io: true,
            dsync: true,
            fault_hook: true,
            strict_mode: true,
            notes: vec![if config.inline {
                "inline: each request runs on the thread that submits it, inside submit; no \
                 parallelism within a queue"
                    .to_string()
            } else {
                format!(
                    "buffered reads are first tried on the submitting thread with RWF_NOWAIT (a \
                     cached read runs there); the rest occupy one of {threads} worker threads \
                     each, and a thread waiting for completions runs queued requests itself"
                )
            }],
            ..Capabilities::default()
        };
        let pool = if threads == 0 {
            None
        } else {
            Some(Pool::start(threads, depth, "engine-sync")?)
        };
        let common = Arc::new(Common::new(config));
        let kernel = ThreadKernel::new(pool.clone(), depth, true);
        let waiter = kernel.waiter();
        let driver = Driver::start(common, kernel, waiter, "engine-sync-reaper")?;
        Ok(SyncEngine {
            driver,
            pool,
            capabilities,
        })
    }

    fn common(&self) -> &Common {
        self.driver.common()
    }
}

impl Backend for SyncEngine {
    type Queue = SyncQueue;

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

    fn queue(&self) -> Result<SyncQueue> {
        let common = self.driver.common();
        if common.is_shut_down() {
            return Err(Error::shutdown(Op::Setup));
        }
        let depth = common.config().queue_depth;
        let kernel = ThreadKernel::new(self.pool.clone(), depth, true);
        Ok(QueueDriver::new(Arc::clone(common), kernel))
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.common().metrics().snapshot()
    }

    fn shutdown(&self) {
        self.driver.shutdown();
        if let Some(pool) = &self.pool {
            pool.shutdown();
        }
    }

    fn steady_state(&self) -> Result<SteadyState> {
        let mut state = SteadyState::new(crate::NAME, SteadyState::file_calls());
        state.notes.push(match self.pool {
            Some(_) => "the worker threads start with the engine, so none is made later".into(),
            None => "inline: every call runs on the thread that submits it".into(),
        });
        Ok(state)
    }
}

impl Drop for SyncEngine {
    fn drop(&mut self) {
        Backend::shutdown(self);
    }
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine")
            .field("threads", &self.capabilities.threads)
            .field("queue_depth_max", &self.capabilities.queue_depth_max)
            .finish()
    }
}
