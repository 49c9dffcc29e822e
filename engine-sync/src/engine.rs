//! The sync engine: the async API and file handling over the worker pool.

use std::path::Path;
use std::sync::Arc;

use engine_core::{
    next_engine_id, prepare, reject, Capabilities, Completion, Engine, EngineConfig, Error,
    ErrorKind, File, MetricsSnapshot, Op, OpenOptions, Request, Result, SlotFuture,
};

use crate::queue::SyncQueue;
use crate::worker::{Job, Reply, Shared};

/// The largest default worker count; `ENGINE_THREADS` or [`EngineConfig::threads`] can go
/// higher.
pub const THREADS_DEFAULT_MAX: usize = 32;

/// pread/pwrite/fdatasync/fsync on a bounded pool of worker threads.
///
/// Every request in flight occupies one worker while its syscall runs, so queue depth gives
/// real parallelism up to the number of threads; its [`Capabilities`] say so.
pub struct SyncEngine {
    shared: Arc<Shared>,
    capabilities: Capabilities,
}

impl SyncEngine {
    /// Starts an engine with `config`. `threads == 0` means `min(queue_depth, 32)`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a queue depth of 0 or above
    /// [`EngineConfig::QUEUE_DEPTH_MAX`], or more than [`EngineConfig::THREADS_MAX`] threads;
    /// the OS error when a thread cannot be spawned.
    pub fn new(config: EngineConfig) -> Result<SyncEngine> {
        config.validate()?;
        let threads = match (config.inline, config.threads) {
            (true, _) => 0,
            (false, 0) => config.queue_depth.min(THREADS_DEFAULT_MAX),
            (false, n) => n,
        };
        let capabilities = Capabilities {
            backend: crate::NAME,
            queue_depth: config.queue_depth,
            threads,
            op_occupies_thread: true,
            submit_may_block: config.inline,
            direct_io: true,
            dsync: true,
            fault_hook: true,
            strict_mode: true,
            registered_buffers: Some("not applicable: pread and pwrite take plain pointers".into()),
            notes: vec![if config.inline {
                "inline: each request runs on the thread that submits it, inside submit; no \
                 parallelism within a queue"
                    .to_string()
            } else {
                format!(
                    "each request in flight occupies one of {threads} worker threads; \
                     depth beyond that only queues"
                )
            }],
        };
        let shared = Shared::start(next_engine_id(), config, threads)?;
        Ok(SyncEngine {
            shared,
            capabilities,
        })
    }
}

impl Engine for SyncEngine {
    type Queue = SyncQueue;

    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        if self.shared.is_shut_down() {
            return Err(Error::shutdown(Op::Open));
        }
        let (std, geometry) = options.open_std(path)?;
        Ok(File::new(
            self.shared.engine_id,
            std,
            path,
            options.clone(),
            geometry,
            self.shared.config.strict,
            0,
        ))
    }

    fn close(&self, file: &File) -> Result<()> {
        file.mark_closed(self.shared.engine_id)
    }

    async fn submit(&self, request: Request) -> Completion {
        let shared = &*self.shared;
        let prepared = match prepare(shared.engine_id, &request) {
            Ok(prepared) => prepared,
            Err(error) => return reject(request, None, error, &shared.metrics),
        };
        let Ok(slot) = shared.slots.acquire().await else {
            let error = request.file.error(ErrorKind::Shutdown, request.kind.op());
            return reject(request, Some(&prepared), error, &shared.metrics);
        };
        // From here the slot receives exactly one completion: from a worker, or from `enqueue`
        // itself when the engine shut down meanwhile.
        let job = Job {
            request,
            prepared,
            reply: Reply::Slot(slot),
        };
        shared.enqueue(std::iter::once(job));
        SlotFuture::new(&shared.slots, slot).await
    }

    fn queue(&self) -> Result<SyncQueue> {
        if self.shared.is_shut_down() {
            return Err(Error::shutdown(Op::Setup));
        }
        Ok(SyncQueue::new(
            Arc::clone(&self.shared),
            self.shared.config.queue_depth,
        ))
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    fn shutdown(&self) {
        self.shared.shutdown();
    }
}

impl Drop for SyncEngine {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine")
            .field("threads", &self.capabilities.threads)
            .field("queue_depth", &self.capabilities.queue_depth)
            .finish()
    }
}
