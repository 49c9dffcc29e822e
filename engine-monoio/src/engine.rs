//! The monoio engine: the shared request lifecycle ([`Driver`], [`QueueDriver`]) over a
//! [`ThreadKernel`] whose runner is a monoio executor thread ([`Host`]).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use engine_core::raw::{Common, Driver, FileDropped, PoolWait, QueueDriver, ThreadKernel};
use engine_core::{
    Backend, Capabilities, Completion, EngineConfig, Error, File, MetricsSnapshot, Op, OpenOptions,
    Request, Result,
};

use crate::host::{DriverChoice, DriverKind, Host, SlotHook};

/// The per-thread queue of the monoio backend: its requests run on the engine's executor
/// thread, like those of the async API.
pub type MonoioQueue = QueueDriver<ThreadKernel<Host>>;

/// Reads, writes and syncs as monoio file operations, on one executor thread the engine owns
/// and that accepts requests from any thread.
///
/// Plain reads and writes and both syncs are monoio's `read_at`, `write_at`, `sync_data` and
/// `sync_all` (on its io_uring driver, or its legacy driver when io_uring is unavailable), with
/// no copy: monoio reads into and writes from the request's own buffer. A buffered read is
/// first tried on the submitting thread with `preadv2(RWF_NOWAIT)`, as on the sync backend.
/// What monoio has no operation for (vectored or flagged transfers, allocate, set_len,
/// metadata) runs as its blocking syscall on the executor thread.
pub struct MonoioEngine {
    driver: Arc<Driver<ThreadKernel<Host>, PoolWait<Host>>>,
    host: Arc<Host>,
    /// Frees a file's descriptor slot when its last handle goes.
    hook: Arc<dyn FileDropped>,
    capabilities: Capabilities,
}

impl MonoioEngine {
    /// Starts an engine with `config`: one executor thread with a monoio runtime.
    ///
    /// # Errors
    ///
    /// [`engine_core::ErrorKind::InvalidInput`] for a queue depth of 0 or above
    /// [`EngineConfig::QUEUE_DEPTH_MAX`]; the OS error when the thread cannot be spawned or the
    /// runtime cannot be built.
    pub fn new(config: EngineConfig) -> Result<MonoioEngine> {
        MonoioEngine::with_driver(config, DriverChoice::Auto)
    }

    /// As [`MonoioEngine::new`], with the monoio driver `choice` asks for.
    ///
    /// # Errors
    ///
    /// As [`MonoioEngine::new`]; also the OS error when the io_uring driver is asked for and
    /// cannot be built.
    pub fn with_driver(config: EngineConfig, choice: DriverChoice) -> Result<MonoioEngine> {
        config.validate()?;
        let depth = config.queue_depth;
        // Room for every request of the async API and a queue or two beside it.
        let entries = u32::try_from(depth.saturating_mul(2)).unwrap_or(u32::MAX);
        let host = Host::start(entries, choice)?;
        let capabilities = Capabilities {
            backend: crate::NAME,
            queue_depth_max: depth,
            threads: 1,
            op_occupies_thread: false,
            submit_may_block: false,
            direct_io: true,
            dsync: true,
            fault_hook: true,
            strict_mode: true,
            notes: vec![
                format!(
                    "monoio {} driver on one executor thread; plain reads, writes and both \
                     syncs are monoio operations on the request's own buffer (no copy), and \
                     buffered reads are first tried on the submitting thread with RWF_NOWAIT",
                    host.driver().name()
                ),
                "vectored and flagged (DSYNC, ATOMIC) transfers, allocate, set_len and metadata \
                 have no monoio operation: they run as blocking syscalls on the executor thread"
                    .to_string(),
                "each open file holds one more descriptor, a slot for monoio's File (which \
                 closes what it holds); slots are reused, and a dropped file's slot lets go of \
                 it at once"
                    .to_string(),
            ],
            ..Capabilities::default()
        };
        let common = Arc::new(Common::new(config));
        let kernel = ThreadKernel::new(Some(Arc::clone(&host)), depth, true);
        let waiter = kernel.waiter();
        let driver = Driver::start(common, kernel, waiter, "engine-monoio-reaper")?;
        let hook: Arc<dyn FileDropped> = Arc::new(SlotHook(Arc::downgrade(&host)));
        Ok(MonoioEngine {
            driver,
            host,
            hook,
            capabilities,
        })
    }

    /// A descriptor slot for a file being opened (see [`crate::host::Slots`]).
    fn claim(&self, std: &std::fs::File) -> Result<u32> {
        use std::os::fd::AsFd;
        self.host.slots.claim(std.as_fd()).map_err(|errno| {
            Error::from_io(&std::io::Error::from_raw_os_error(errno), Op::Open)
                .with_message("duplicating the descriptor for monoio")
        })
    }

    /// The driver monoio runs.
    pub fn driver(&self) -> DriverKind {
        self.host.driver()
    }

    fn common(&self) -> &Common {
        self.driver.common()
    }
}

impl Backend for MonoioEngine {
    type Queue = MonoioQueue;

    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        let common = self.common();
        let (std, geometry) = common.open_std(path, options)?;
        let index = self.claim(&std)?;
        let hook = Arc::clone(&self.hook);
        Ok(common.file(std, path, options.clone(), geometry, index, Some(hook)))
    }

    fn adopt(&self, fd: std::os::fd::OwnedFd, options: &OpenOptions) -> Result<File> {
        let common = self.common();
        let (std, path, options, geometry) = common.adopt_std(fd, options)?;
        let index = self.claim(&std)?;
        let hook = Arc::clone(&self.hook);
        Ok(common.file(std, &path, options, geometry, index, Some(hook)))
    }

    fn close(&self, file: &File) -> Result<()> {
        self.common().close(file)
    }

    fn submit(&self, request: Request) -> impl Future<Output = Completion> + Send + '_ {
        self.driver.submit(request)
    }

    fn queue(&self) -> Result<MonoioQueue> {
        let common = self.driver.common();
        if common.is_shut_down() {
            return Err(Error::shutdown(Op::Setup));
        }
        let depth = common.config().queue_depth;
        let kernel = ThreadKernel::new(Some(Arc::clone(&self.host)), depth, true);
        Ok(QueueDriver::new(Arc::clone(common), kernel))
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.common().metrics().snapshot()
    }

    fn shutdown(&self) {
        self.driver.shutdown();
        self.host.shutdown();
    }
}

impl Drop for MonoioEngine {
    fn drop(&mut self) {
        Backend::shutdown(self);
    }
}

impl std::fmt::Debug for MonoioEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonoioEngine")
            .field("driver", &self.host.driver())
            .field("queue_depth_max", &self.capabilities.queue_depth_max)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_core::{block_on, AlignedBuf, BackendExt};

    /// Descriptors of this process open on something under `dir`.
    fn open_under(dir: &Path) -> Vec<std::path::PathBuf> {
        let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
            return Vec::new();
        };
        fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir))
            .collect()
    }

    #[test]
    fn a_dropped_files_slot_is_reused_by_the_next_file() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = MonoioEngine::new(EngineConfig::default()).expect("engine");
        let options = OpenOptions::new().read(true).write(true).create(true);
        let first = engine.open(&dir.path().join("a"), &options).expect("open");
        let index = engine_core::raw::FileRaw::backend_index(&first);
        assert!(index > 0, "every file has a slot");
        drop(first);
        for i in 0..50 {
            let file = engine
                .open(&dir.path().join(format!("f{i}")), &options)
                .expect("open");
            assert_eq!(
                engine_core::raw::FileRaw::backend_index(&file),
                index,
                "the freed slot is taken again"
            );
            let (written, _) = block_on(engine.write_all_at(
                &file,
                0,
                AlignedBuf::from_slice(b"x", 1).expect("buf"),
            ));
            written.expect("write through the slot");
        }
        let left = open_under(dir.path());
        assert!(
            left.is_empty(),
            "descriptors left open on dropped files: {left:?}"
        );
    }

    #[test]
    fn the_legacy_driver_keeps_the_same_semantics() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = MonoioEngine::with_driver(EngineConfig::default(), DriverChoice::Legacy)
            .expect("engine");
        assert_eq!(engine.driver(), DriverKind::Legacy);
        let options = OpenOptions::new().read(true).write(true).create(true);
        let file = engine.open(&dir.path().join("a"), &options).expect("open");
        let data = AlignedBuf::from_slice(b"legacy", 1).expect("buf");
        let (written, _) = block_on(engine.write_all_at(&file, 0, data));
        written.expect("write");
        block_on(engine.sync_all(&file)).expect("sync");
        let (read, back) =
            block_on(engine.read_exact_at(&file, 0, AlignedBuf::zeroed(6, 1).expect("buf")));
        read.expect("read");
        assert_eq!(back.as_slice(), b"legacy");
    }
}
