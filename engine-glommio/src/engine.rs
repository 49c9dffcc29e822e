//! The glommio engine: the shared request lifecycle ([`Driver`], [`QueueDriver`]) over a
//! [`ThreadKernel`] whose runner is a glommio executor thread ([`Host`]).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use engine_core::raw::{Common, Driver, FileDropped, PoolWait, QueueDriver, ThreadKernel};
use engine_core::{
    Backend, Capabilities, Completion, EngineConfig, Error, File, MetricsSnapshot, Op, OpenOptions,
    Request, Result,
};

use crate::host::{CloseHook, Host};

/// The per-thread queue of the glommio backend: its requests run on the engine's executor
/// thread, like those of the async API.
pub type GlommioQueue = QueueDriver<ThreadKernel<Host>>;

/// Reads, writes and syncs as glommio file operations, on one executor thread the engine owns
/// and that accepts requests from any thread.
///
/// Plain reads and writes are glommio's `read_at` and `write_at` on a `DmaFile` (the engine's
/// O_DIRECT files) or a `BufferedFile` (the others), and `sync_data` is glommio's
/// `fdatasync`. glommio's file operations take only glommio's own buffers, so each read and
/// write copies its bytes once between the request's buffer and glommio's (counted in
/// [`MetricsSnapshot::copies`]). glommio has no fsync: `sync_all` runs as a blocking `fsync`
/// on the executor thread, as do vectored or flagged transfers, allocate, set_len and
/// metadata. A buffered read is first tried on the submitting thread with
/// `preadv2(RWF_NOWAIT)`, as on the sync backend.
pub struct GlommioEngine {
    driver: Arc<Driver<ThreadKernel<Host>, PoolWait<Host>>>,
    host: Arc<Host>,
    /// Frees a file's descriptor slot when its last handle goes.
    hook: Arc<dyn FileDropped>,
    capabilities: Capabilities,
}

impl GlommioEngine {
    /// Starts an engine with `config`: one executor thread with a glommio `LocalExecutor`.
    ///
    /// # Errors
    ///
    /// [`engine_core::ErrorKind::InvalidInput`] for a queue depth of 0 or above
    /// [`EngineConfig::QUEUE_DEPTH_MAX`]; [`engine_core::ErrorKind::Unsupported`] when glommio
    /// cannot build its executor here (its reason in the message: see [`crate::GlommioPlugin`]
    /// for what it needs); the OS error when the thread cannot be spawned.
    pub fn new(config: EngineConfig) -> Result<GlommioEngine> {
        config.validate()?;
        if let Some(errno) = engine_core::raw::simulated_setup_errno(&config, crate::NAME) {
            return Err(
                Error::from_io(&std::io::Error::from_raw_os_error(errno), Op::Setup)
                    .with_message("glommio's io_uring setup (simulated)"),
            );
        }
        let depth = config.queue_depth;
        let common = Arc::new(Common::new(config));
        // Room for every request of the async API and a queue or two beside it; glommio keeps
        // what does not fit in its own submission queue.
        let host = Host::start(depth.saturating_mul(2).min(4096), Arc::clone(&common))?;
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
                "glommio LocalExecutor on one executor thread; plain reads and writes are \
                 glommio DmaFile (O_DIRECT files) or BufferedFile operations, and sync_data \
                 is glommio's fdatasync"
                    .to_string(),
                "glommio's file operations take only its own buffers: each read and write \
                 copies its bytes once between the request's buffer and glommio's, counted in \
                 the metrics' copies and copied_bytes"
                    .to_string(),
                "glommio has no fsync: sync_all runs as a blocking fsync on the executor \
                 thread (the stronger of the two syncs is never weakened), and so do vectored \
                 and flagged (DSYNC, ATOMIC) transfers, allocate, set_len and metadata"
                    .to_string(),
                "each open file holds one more descriptor, glommio's own, opened through \
                 /proc/self/fd when the engine opens or adopts the file and closed when its \
                 last handle goes"
                    .to_string(),
                "glommio's IOPOLL ring is not used: its per-device probe takes an empty file \
                 for a pollable device, so the first DmaFile of each device is opened \
                 write-only first, which keeps the device on glommio's interrupt-driven ring \
                 (as the uring backend runs unless ENGINE_IOPOLL is set)"
                    .to_string(),
            ],
            ..Capabilities::default()
        };
        let kernel = ThreadKernel::new(Some(Arc::clone(&host)), depth, true);
        let waiter = kernel.waiter();
        let driver = Driver::start(common, kernel, waiter, "engine-glommio-reaper")?;
        let hook: Arc<dyn FileDropped> = Arc::new(CloseHook(Arc::downgrade(&host)));
        Ok(GlommioEngine {
            driver,
            host,
            hook,
            capabilities,
        })
    }

    fn common(&self) -> &Common {
        self.driver.common()
    }
}

impl Backend for GlommioEngine {
    type Queue = GlommioQueue;

    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        let common = self.common();
        let (std, geometry) = common.open_std(path, options)?;
        let index = self.host.open(std::os::fd::AsFd::as_fd(&std))?;
        let hook = Arc::clone(&self.hook);
        Ok(common.file(std, path, options.clone(), geometry, index, Some(hook)))
    }

    fn adopt(&self, fd: std::os::fd::OwnedFd, options: &OpenOptions) -> Result<File> {
        let common = self.common();
        let (std, path, options, geometry) = common.adopt_std(fd, options)?;
        let index = self.host.open(std::os::fd::AsFd::as_fd(&std))?;
        let hook = Arc::clone(&self.hook);
        Ok(common.file(std, &path, options, geometry, index, Some(hook)))
    }

    fn close(&self, file: &File) -> Result<()> {
        self.common().close(file)
    }

    fn submit(&self, request: Request) -> impl Future<Output = Completion> + Send + '_ {
        self.driver.submit(request)
    }

    fn queue(&self) -> Result<GlommioQueue> {
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

impl Drop for GlommioEngine {
    fn drop(&mut self) {
        Backend::shutdown(self);
    }
}

impl std::fmt::Debug for GlommioEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlommioEngine")
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
    fn a_dropped_files_glommio_descriptor_is_closed_and_its_index_reused() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = GlommioEngine::new(EngineConfig::default()).expect("engine");
        let options = OpenOptions::new().read(true).write(true).create(true);
        let first = engine.open(&dir.path().join("a"), &options).expect("open");
        let index = engine_core::raw::FileRaw::backend_index(&first);
        assert!(index > 0, "every file has a glommio file");
        assert_eq!(
            open_under(dir.path()).len(),
            2,
            "the engine's and glommio's"
        );
        drop(first);
        for i in 0..20 {
            let file = engine
                .open(&dir.path().join(format!("f{i}")), &options)
                .expect("open");
            assert_eq!(
                engine_core::raw::FileRaw::backend_index(&file),
                index,
                "the freed index is taken again"
            );
            let (written, _) = block_on(engine.write_all_at(
                &file,
                0,
                AlignedBuf::from_slice(format!("{i}").as_bytes(), 1).expect("buf"),
            ));
            written.expect("write through glommio");
            let (read, back) =
                block_on(engine.read_exact_at(&file, 0, AlignedBuf::zeroed(1, 1).expect("buf")));
            read.expect("read through glommio");
            assert_eq!(back.as_slice()[0], format!("{i}").as_bytes()[0], "file {i}");
        }
        let left = open_under(dir.path());
        assert!(
            left.is_empty(),
            "descriptors left open on dropped files: {left:?}"
        );
    }

    #[test]
    fn direct_files_go_through_dma_files_and_every_copy_is_counted() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = GlommioEngine::new(EngineConfig::default()).expect("engine");
        let options = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .direct(true);
        let file = match engine.open(&dir.path().join("d"), &options) {
            Ok(file) => file,
            Err(e) if e.kind() == engine_core::ErrorKind::Unsupported => {
                eprintln!("skipped: this filesystem has no O_DIRECT ({e})");
                return;
            }
            Err(e) => panic!("open: {e}"),
        };
        let block = file.geometry().logical_block_size as usize;
        let mut data = AlignedBuf::zeroed(4 * block, block).expect("buf");
        for (i, b) in data.as_mut_slice().iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let expected = data.as_slice().to_vec();
        let (written, _) = block_on(engine.write_all_at(&file, 0, data));
        written.expect("direct write");
        block_on(engine.sync_all(&file)).expect("fsync on the executor");
        let (read, back) = block_on(engine.read_exact_at(
            &file,
            0,
            AlignedBuf::zeroed(4 * block, block).expect("buf"),
        ));
        read.expect("direct read");
        assert_eq!(back.as_slice(), &expected[..]);
        let metrics = engine.metrics();
        assert_eq!(metrics.copies, 2, "one copy per read and per write");
        assert_eq!(metrics.copied_bytes, 8 * block as u64);
        assert_eq!(metrics.sync_all.ops, 1);
    }
}
