//! The in-memory reference engine: the obviously-correct model the randomized test compares
//! every backend against.
//!
//! Files are opened for real (so open errors, permissions and geometry are the real ones) and
//! their existing contents are loaded into memory. From then on reads are served from the
//! in-memory image, and writes update the image and are mirrored to the file (so the checks
//! that read a file back with std apply to the model too). Its [`Kernel`] runs each request
//! at once, in submission order; everything around it (validation, retries, short transfers,
//! poisoning, the fault hook, both APIs) is the shared lifecycle every backend uses, so it
//! keeps the contract too and runs the whole suite as backend `mem`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use engine_core::raw::{lock, Common, Driver, FileRaw, Io, Kernel, QueueDriver, Reaped, Wait};
use engine_core::{
    AllocateMode, Backend, Capabilities, Completion, EngineConfig, Error, ErrorKind, File,
    MetricsSnapshot, Op, OpenOptions, Request, Result,
};

/// The registry name of the reference engine.
pub const NAME: &str = "mem";

type Image = Arc<Mutex<Vec<u8>>>;

/// One image per path; a file's backend index is its image's place in `images`.
#[derive(Default)]
struct Images {
    paths: Mutex<HashMap<PathBuf, u32>>,
    images: Mutex<Vec<Image>>,
}

impl Images {
    fn image(&self, file: &File) -> Image {
        Arc::clone(&lock(&self.images)[file.backend_index() as usize])
    }
}

/// Runs requests in memory, at once.
struct MemKernel {
    images: Arc<Images>,
    done: VecDeque<Reaped>,
}

impl MemKernel {
    fn run(&self, mut io: Io<'_>) -> std::result::Result<usize, i32> {
        let image = self.images.image(io.file());
        let mut data = lock(&image);
        match io {
            Io::Read { offset, buf, .. } => {
                let offset = usize::try_from(offset).map_err(|_| libc::EFBIG)?;
                let available = data.len().saturating_sub(offset).min(buf.len());
                if available > 0 {
                    buf[..available].copy_from_slice(&data[offset..offset + available]);
                }
                Ok(available)
            }
            Io::Write {
                file, offset, buf, ..
            } => write(&mut data, file, offset, buf),
            // The kernel refuses more than IOV_MAX entries; so does the model, so a lifecycle
            // that forgot to split would fail here too.
            Io::ReadVectored { bufs, .. } if bufs.len() > Request::IOV_MAX => Err(libc::EINVAL),
            Io::WriteVectored { bufs, .. } if bufs.len() > Request::IOV_MAX => Err(libc::EINVAL),
            Io::ReadVectored { offset, bufs, .. } => {
                let mut at = usize::try_from(offset).map_err(|_| libc::EFBIG)?;
                let mut total = 0;
                for part in bufs.iter_mut() {
                    let available = data.len().saturating_sub(at).min(part.len());
                    if available == 0 {
                        break;
                    }
                    part[..available].copy_from_slice(&data[at..at + available]);
                    (at, total) = (at + available, total + available);
                    if available < part.len() {
                        break;
                    }
                }
                Ok(total)
            }
            Io::WriteVectored {
                file, offset, bufs, ..
            } => {
                // Part by part: each is aligned for an O_DIRECT file, a copy of all might not be.
                // A part that fails after others were written makes the count short, as
                // the kernel reports it.
                let mut at = offset;
                for part in bufs {
                    match write(&mut data, file, at, part) {
                        Ok(n) => at += n as u64,
                        Err(errno) if at == offset => return Err(errno),
                        Err(_) => break,
                    }
                }
                Ok((at - offset) as usize)
            }
            // Durability is not modelled: a sync of the in-memory image always succeeds.
            Io::SyncData { .. } | Io::SyncAll { .. } => Ok(0),
            // Space management and metadata run on the real file too (the filesystem decides
            // what it supports), and the image follows what they do to the contents.
            Io::Allocate {
                offset, len, mode, ..
            } => {
                let rc = io.run_blocking();
                if rc < 0 {
                    return Err(i32::try_from(-rc).unwrap_or(libc::EIO));
                }
                let start = usize::try_from(offset).map_err(|_| libc::EFBIG)?;
                let end = start
                    .checked_add(usize::try_from(len).map_err(|_| libc::EFBIG)?)
                    .ok_or(libc::EFBIG)?;
                let extends = matches!(mode, AllocateMode::Allocate | AllocateMode::ZeroRange);
                if extends && end > data.len() {
                    data.resize(end, 0);
                }
                if mode.zeroes() && start < data.len() {
                    let end = end.min(data.len());
                    data[start..end].fill(0);
                }
                Ok(0)
            }
            Io::SetLen { len, .. } => {
                let rc = io.run_blocking();
                if rc < 0 {
                    return Err(i32::try_from(-rc).unwrap_or(libc::EIO));
                }
                data.resize(usize::try_from(len).map_err(|_| libc::EFBIG)?, 0);
                Ok(0)
            }
            Io::Metadata { .. } => {
                let rc = io.run_blocking();
                if rc < 0 {
                    return Err(i32::try_from(-rc).unwrap_or(libc::EIO));
                }
                Ok(0)
            }
        }
    }
}

/// Writes `buf` at `offset` into the image, and mirrors it to the file.
fn write(
    data: &mut Vec<u8>,
    file: &File,
    offset: u64,
    buf: &[u8],
) -> std::result::Result<usize, i32> {
    let start = usize::try_from(offset).map_err(|_| libc::EFBIG)?;
    let end = start.checked_add(buf.len()).ok_or(libc::EFBIG)?;
    if end > data.len() {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(buf);
    std::os::unix::fs::FileExt::write_all_at(file.std(), buf, offset)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    Ok(buf.len())
}

impl Kernel for MemKernel {
    fn push(&mut self, slot: u32, io: Io<'_>) -> bool {
        let result = match self.run(io) {
            Ok(n) => n as i64,
            Err(errno) => -i64::from(errno),
        };
        self.done.push_back(Reaped { slot, result });
        true
    }
    fn submit(&mut self) -> Result<()> {
        Ok(())
    }
    fn reap(&mut self, out: &mut [Reaped]) -> usize {
        let n = self.done.len().min(out.len());
        for (slot, reaped) in out.iter_mut().zip(self.done.drain(..n)) {
            *slot = reaped;
        }
        n
    }
    fn wait(&mut self, _min: usize) -> Result<()> {
        // Everything completes at push.
        Ok(())
    }
    fn wake(&mut self) {}
    fn in_flight(&self) -> usize {
        self.done.len()
    }
    fn notify_with(&mut self, _notify: engine_core::raw::Notify) -> bool {
        // Completions are ready at push, on the polling thread: no reaper needed.
        true
    }
}

/// Nothing to wait for: every request completes at push.
struct MemWait;

impl Wait for MemWait {
    fn wait(&self) -> Result<()> {
        Ok(())
    }
}

/// The in-memory reference engine.
pub struct MemEngine {
    driver: Arc<Driver<MemKernel, MemWait>>,
    images: Arc<Images>,
    capabilities: Capabilities,
}

/// The reference engine's queue: the shared queue over the in-memory kernel.
pub struct MemQueue(QueueDriver<MemKernel>);

impl MemEngine {
    /// Creates an engine; only `queue_depth`, `strict` and the fault hook matter.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a bad queue depth.
    pub fn new(config: EngineConfig) -> Result<MemEngine> {
        config.validate()?;
        let capabilities = Capabilities {
            backend: NAME,
            queue_depth_max: config.queue_depth,
            threads: 0,
            op_occupies_thread: false,
            submit_may_block: true,
            direct_io: true,
            dsync: true,
            fault_hook: true,
            strict_mode: true,
            notes: vec!["reference model: requests complete in submission order, on submit".into()],
            ..Capabilities::default()
        };
        let images = Arc::new(Images::default());
        let kernel = MemKernel {
            images: Arc::clone(&images),
            done: VecDeque::new(),
        };
        let common = Arc::new(Common::new(config));
        let driver = Driver::start(common, kernel, MemWait, "mem-reaper")?;
        Ok(MemEngine {
            driver,
            images,
            capabilities,
        })
    }
}

impl MemEngine {
    /// The in-memory part of opening or adopting: the file's image, loaded on first open.
    fn attach(
        &self,
        std: std::fs::File,
        path: &Path,
        options: OpenOptions,
        geometry: engine_core::Geometry,
    ) -> Result<File> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut paths = lock(&self.images.paths);
        let index = match paths.get(&key) {
            Some(&index) => {
                if options.is_truncate() {
                    let image = Arc::clone(&lock(&self.images.images)[index as usize]);
                    lock(&image).clear();
                }
                index
            }
            None => {
                // Read through a separate buffered descriptor: the engine's may be O_DIRECT or
                // write-only.
                let mut contents = Vec::new();
                // A directory (opened to be synced) has no contents to read.
                if let Ok(mut reader) = std::fs::File::open(path) {
                    if !std.metadata().is_ok_and(|meta| meta.is_dir()) {
                        reader
                            .read_to_end(&mut contents)
                            .map_err(|e| Error::from_io(&e, Op::Open))?;
                    }
                }
                let mut images = lock(&self.images.images);
                let index = images.len() as u32;
                images.push(Arc::new(Mutex::new(contents)));
                paths.insert(key, index);
                index
            }
        };
        Ok(self
            .driver
            .common()
            .file(std, path, options, geometry, index, None))
    }
}

impl Backend for MemEngine {
    type Queue = MemQueue;

    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        let (std, geometry) = self.driver.common().open_std(path, options)?;
        self.attach(std, path, options.clone(), geometry)
    }

    fn adopt(&self, fd: std::os::fd::OwnedFd, options: &OpenOptions) -> Result<File> {
        let (std, path, options, geometry) = self.driver.common().adopt_std(fd, options)?;
        self.attach(std, &path, options, geometry)
    }

    fn close(&self, file: &File) -> Result<()> {
        self.driver.common().close(file)
    }

    fn submit(&self, request: Request) -> impl Future<Output = Completion> + Send + '_ {
        self.driver.submit(request)
    }

    fn queue(&self) -> Result<MemQueue> {
        let common = self.driver.common();
        if common.is_shut_down() {
            return Err(Error::new(
                ErrorKind::Shutdown,
                Op::Setup,
                "the engine has shut down",
            ));
        }
        let kernel = MemKernel {
            images: Arc::clone(&self.images),
            done: VecDeque::new(),
        };
        Ok(MemQueue(QueueDriver::new(Arc::clone(common), kernel)))
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.driver.common().metrics().snapshot()
    }

    fn shutdown(&self) {
        self.driver.shutdown();
    }
}

impl Drop for MemEngine {
    fn drop(&mut self) {
        self.driver.shutdown();
    }
}

impl engine_core::Queue for MemQueue {
    fn depth(&self) -> usize {
        self.0.depth()
    }
    fn in_flight(&self) -> usize {
        self.0.in_flight()
    }
    fn push(&mut self, request: Request) -> std::result::Result<(), Request> {
        self.0.push(request)
    }
    fn submit(&mut self) -> Result<usize> {
        self.0.submit()
    }
    fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        self.0.poll(out)
    }
    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) -> Result<usize> {
        self.0.wait(min, out)
    }
}
