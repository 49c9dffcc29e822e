//! The in-memory reference engine: the obviously-correct model the randomized test compares
//! every backend against.
//!
//! Files are opened for real (so open errors, permissions and geometry are the real ones) and
//! their existing contents are loaded into memory. From then on reads are served from the
//! in-memory image, and writes update the image and are mirrored to the file (so the checks
//! that read a file back with std apply to the model too). It shares the validation and result mapping of every backend
//! (`engine_core::prepare` and `finish`) and honours the fault hook, so it keeps the contract
//! too and runs the whole suite as backend `mem`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use engine_core::{
    finish, next_engine_id, prepare, reject, run_with_retries, Capabilities, Completion, Engine,
    EngineConfig, Error, ErrorKind, File, Metrics, MetricsSnapshot, Op, OpKind, OpenOptions,
    Prepared, Queue, RawResult, Request, Result,
};

/// The registry name of the reference engine.
pub const NAME: &str = "mem";

type Image = Arc<Mutex<Vec<u8>>>;

struct Inner {
    id: u64,
    config: EngineConfig,
    metrics: Metrics,
    /// One image per path; `File::backend_index` indexes `images`.
    paths: Mutex<HashMap<PathBuf, u32>>,
    images: Mutex<Vec<Image>>,
    shut: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The in-memory reference engine.
pub struct MemEngine {
    inner: Arc<Inner>,
    capabilities: Capabilities,
}

impl MemEngine {
    /// Creates an engine; only `queue_depth`, `strict` and `fault_hook` matter.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a queue depth of 0.
    pub fn new(config: EngineConfig) -> Result<MemEngine> {
        if config.queue_depth == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                Op::Setup,
                "queue depth 0",
            ));
        }
        let capabilities = Capabilities {
            backend: NAME,
            queue_depth: config.queue_depth,
            threads: 0,
            op_occupies_thread: false,
            submit_may_block: true,
            direct_io: true,
            dsync: true,
            fault_hook: true,
            strict_mode: true,
            registered_buffers: Some("not applicable: no kernel I/O".into()),
            notes: vec!["reference model: requests complete in submission order, on submit".into()],
        };
        Ok(MemEngine {
            inner: Arc::new(Inner {
                id: next_engine_id(),
                config,
                metrics: Metrics::default(),
                paths: Mutex::new(HashMap::new()),
                images: Mutex::new(Vec::new()),
                shut: AtomicBool::new(false),
            }),
            capabilities,
        })
    }
}

impl Inner {
    fn image(&self, file: &File) -> Image {
        let images = lock(&self.images);
        Arc::clone(&images[file.backend_index() as usize])
    }

    /// Validates a request, as every backend does before submission.
    fn admit(&self, request: Request) -> Result<(Request, Prepared), Completion> {
        if self.shut.load(Ordering::Acquire) {
            let error = request.file.error(ErrorKind::Shutdown, request.kind.op());
            return Err(reject(request, None, error, &self.metrics));
        }
        match prepare(self.id, &request) {
            Ok(prepared) => Ok((request, prepared)),
            Err(error) => Err(reject(request, None, error, &self.metrics)),
        }
    }

    fn execute(&self, mut request: Request, prepared: Prepared) -> Completion {
        let image = self.image(&request.file);
        let hook = self.config.fault_hook.as_deref();
        let (kind, offset, start) = (request.kind, request.offset, request.buf_start);
        let mut buf = request.buf.take();
        let (raw, retries) =
            run_with_retries(hook, kind, &request.file, offset, prepared.len, |len| {
                let mut data = lock(&image);
                let target = buf.as_mut().map(|b| &mut b[start..start + len]);
                transfer(&mut data, request.file.std(), kind, offset, target)
            });
        request.buf = buf;
        let result = finish(&mut request, &prepared, raw, retries, &self.metrics);
        Completion {
            user_data: request.user_data,
            kind,
            result,
            buf: request.buf,
        }
    }
}

/// Applies one read or write to an image, mirroring writes to `file`; syncs are no-ops in
/// memory.
fn transfer(
    data: &mut Vec<u8>,
    file: &std::fs::File,
    kind: OpKind,
    offset: u64,
    buf: Option<&mut [u8]>,
) -> RawResult {
    let Some(buf) = buf else {
        return if kind.is_sync() {
            Ok(0)
        } else {
            Err(libc::EINVAL)
        };
    };
    let offset = usize::try_from(offset).map_err(|_| libc::EFBIG)?;
    match kind {
        OpKind::Read => {
            let available = data.len().saturating_sub(offset).min(buf.len());
            if available > 0 {
                buf[..available].copy_from_slice(&data[offset..offset + available]);
            }
            Ok(available)
        }
        OpKind::Write => {
            let end = offset.checked_add(buf.len()).ok_or(libc::EFBIG)?;
            if end > data.len() {
                data.resize(end, 0);
            }
            data[offset..end].copy_from_slice(buf);
            std::os::unix::fs::FileExt::write_all_at(file, buf, offset as u64)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            Ok(buf.len())
        }
        OpKind::SyncData | OpKind::SyncAll => Ok(0),
    }
}

impl Engine for MemEngine {
    type Queue = MemQueue;

    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        if self.inner.shut.load(Ordering::Acquire) {
            return Err(Error::shutdown(Op::Open));
        }
        let (std, geometry) = options.open_std(path)?;
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut paths = lock(&self.inner.paths);
        let index = match paths.get(&key) {
            Some(&index) => {
                if options.is_truncate() {
                    let image = Arc::clone(&lock(&self.inner.images)[index as usize]);
                    lock(&image).clear();
                }
                index
            }
            None => {
                // Read through a separate buffered descriptor: the engine's may be O_DIRECT or
                // write-only.
                let mut contents = Vec::new();
                if let Ok(mut reader) = std::fs::File::open(path) {
                    reader
                        .read_to_end(&mut contents)
                        .map_err(|e| Error::from_io(&e, Op::Open))?;
                }
                let mut images = lock(&self.inner.images);
                let index = images.len() as u32;
                images.push(Arc::new(Mutex::new(contents)));
                paths.insert(key, index);
                index
            }
        };
        Ok(File::new(
            self.inner.id,
            std,
            path,
            options.clone(),
            geometry,
            self.inner.config.strict,
            index,
        ))
    }

    fn close(&self, file: &File) -> Result<()> {
        file.mark_closed(self.inner.id)
    }

    fn submit(&self, request: Request) -> impl Future<Output = Completion> + Send + '_ {
        let completion = match self.inner.admit(request) {
            Ok((request, prepared)) => self.inner.execute(request, prepared),
            Err(completion) => completion,
        };
        std::future::ready(completion)
    }

    fn queue(&self) -> Result<MemQueue> {
        if self.inner.shut.load(Ordering::Acquire) {
            return Err(Error::shutdown(Op::Setup));
        }
        Ok(MemQueue {
            inner: Arc::clone(&self.inner),
            depth: self.inner.config.queue_depth,
            pending: Vec::with_capacity(self.inner.config.queue_depth),
            done: VecDeque::with_capacity(self.inner.config.queue_depth),
        })
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    fn shutdown(&self) {
        self.inner.shut.store(true, Ordering::Release);
    }
}

impl Drop for MemEngine {
    fn drop(&mut self) {
        self.inner.shut.store(true, Ordering::Release);
    }
}

/// The reference engine's queue: requests are validated at push and run at submit, in
/// order.
pub struct MemQueue {
    inner: Arc<Inner>,
    depth: usize,
    pending: Vec<(Request, Prepared)>,
    done: VecDeque<Completion>,
}

impl Queue for MemQueue {
    fn depth(&self) -> usize {
        self.depth
    }
    fn in_flight(&self) -> usize {
        self.pending.len() + self.done.len()
    }
    fn push(&mut self, request: Request) -> std::result::Result<(), Request> {
        if self.in_flight() >= self.depth {
            return Err(request);
        }
        match self.inner.admit(request) {
            Ok(admitted) => self.pending.push(admitted),
            Err(completion) => self.done.push_back(completion),
        }
        Ok(())
    }
    fn submit(&mut self) -> Result<usize> {
        let count = self.pending.len();
        for (request, prepared) in self.pending.drain(..) {
            self.done.push_back(self.inner.execute(request, prepared));
        }
        Ok(count)
    }
    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let count = self.done.len();
        out.extend(self.done.drain(..));
        count
    }
    fn wait(&mut self, _min: usize, out: &mut Vec<Completion>) -> Result<usize> {
        self.submit()?;
        Ok(self.poll(out))
    }
}
