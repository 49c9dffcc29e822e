#![doc = include_str!("../../README.md")]

mod env;
pub mod sandbox;

use std::future::Future;
use std::path::Path;
use std::sync::Mutex;

pub use engine_core::{
    block_on, join_all, registry, AlignTarget, AlignedBuf, AllocateMode, Backend, BackendExt,
    Capabilities, Completion, DynBackend, EngineConfig, Error, ErrorKind, File, FileRef, Geometry,
    GeometrySource, IoBuf, IoBufMut, Metadata, MetricsSnapshot, Misalignment, Op, OpMetrics,
    OpenOptions, PageAllocator, PagePool, PoolConfig, PoolStats, Queue, Request, Result, Support,
    WriteFlags, IO_BYTES_MAX,
};
pub use env::{Choice, Settings, VARIABLES};

/// Test switches (the fault hook, simulated setup failures, the counting allocator).
#[cfg(feature = "testing")]
pub use engine_core::testing;

/// The Linux AIO backend's crate, for its own types.
#[cfg(feature = "aio")]
pub use engine_aio as aio;
/// The glommio backend's crate, for its own types.
#[cfg(feature = "glommio")]
pub use engine_glommio as glommio;
/// The monoio backend's crate, for its own types.
#[cfg(feature = "monoio")]
pub use engine_monoio as monoio;
/// The sync backend's crate, for its own types.
#[cfg(feature = "sync")]
pub use engine_sync as sync;
/// The io_uring backend's crate, for its own types.
#[cfg(feature = "uring")]
pub use engine_uring as uring;

use engine_core::raw::sandbox::SteadyState;
use engine_core::registry::{Diagnosis, Outcome, Plugin, Probe, SelectionReport};

/// The built-in backends, in the order `auto` tries them. `sync` runs everywhere, so `auto`
/// reaches `monoio` and `glommio` only in a build without `sync`; name one to choose it.
pub const BUILTIN_BACKENDS: [&str; 5] = ["uring", "aio", "sync", "monoio", "glommio"];

/// The backend behind an [`Engine`]: one variant per compiled-in backend, so the built-in
/// path dispatches with a match and allocates nothing, plus one for registered plugins.
enum Inner {
    #[cfg(feature = "uring")]
    Uring(engine_uring::UringEngine),
    #[cfg(feature = "aio")]
    Aio(engine_aio::AioEngine),
    #[cfg(feature = "sync")]
    Sync(engine_sync::SyncEngine),
    #[cfg(feature = "monoio")]
    Monoio(engine_monoio::MonoioEngine),
    #[cfg(feature = "glommio")]
    Glommio(engine_glommio::GlommioEngine),
    Plugin(Box<dyn DynBackend>),
}

/// Runs `$body` with `$e` bound to the backend engine, whatever its type.
macro_rules! dispatch {
    ($inner:expr, $e:ident => $body:expr) => {
        match $inner {
            #[cfg(feature = "uring")]
            Inner::Uring($e) => $body,
            #[cfg(feature = "aio")]
            Inner::Aio($e) => $body,
            #[cfg(feature = "sync")]
            Inner::Sync($e) => $body,
            #[cfg(feature = "monoio")]
            Inner::Monoio($e) => $body,
            #[cfg(feature = "glommio")]
            Inner::Glommio($e) => $body,
            Inner::Plugin($e) => $body,
        }
    };
}

/// An engine chosen at build time or run time, with the report of how it was chosen.
///
/// Everything a caller needs is an inherent method: open files, read and write them (async,
/// or through a per-thread [`Engine::queue`]), sync them. Generic code can take any
/// [`Backend`] instead; this type is one.
pub struct Engine {
    inner: Inner,
    report: SelectionReport,
    /// Devices already noted in the report for lacking NOWAIT support.
    nowait_noted: Mutex<Vec<u64>>,
    observations: Mutex<Vec<String>>,
}

/// The per-thread queue of an [`Engine`]'s backend. See [`Queue`].
pub struct EngineQueue(QueueInner);

// Queues are made once per thread and used on the hot path: an inline variant saves a pointer
// chase per request, which matters more than the enum's size.
#[allow(clippy::large_enum_variant)]
enum QueueInner {
    #[cfg(feature = "uring")]
    Uring(engine_uring::UringQueue),
    #[cfg(feature = "aio")]
    Aio(engine_aio::AioQueue),
    #[cfg(feature = "sync")]
    Sync(engine_sync::SyncQueue),
    #[cfg(feature = "monoio")]
    Monoio(engine_monoio::MonoioQueue),
    #[cfg(feature = "glommio")]
    Glommio(engine_glommio::GlommioQueue),
    Plugin(Box<dyn Queue + Send>),
}

/// What one attempt to use a backend came to.
enum Attempted {
    Built(Inner, String),
    Unavailable(Diagnosis),
    Failed(Error),
    NotCompiled(String),
}

/// Probes `plugin`, then builds it with `build`.
fn probe_then(
    plugin: &dyn Plugin,
    config: &EngineConfig,
    build: impl FnOnce() -> Result<Inner>,
) -> Attempted {
    match plugin.probe(config) {
        Probe::Available(detail) => match build() {
            Ok(inner) => Attempted::Built(inner, detail),
            Err(error) => Attempted::Failed(error),
        },
        Probe::Unavailable(diagnosis) => Attempted::Unavailable(diagnosis),
    }
}

fn attempt(name: &str, config: &EngineConfig) -> Attempted {
    match name {
        #[cfg(feature = "uring")]
        "uring" => probe_then(&engine_uring::UringPlugin, config, || {
            engine_uring::UringEngine::new(config.clone()).map(Inner::Uring)
        }),
        #[cfg(feature = "aio")]
        "aio" => probe_then(&engine_aio::AioPlugin, config, || {
            engine_aio::AioEngine::new(config.clone()).map(Inner::Aio)
        }),
        #[cfg(feature = "sync")]
        "sync" => probe_then(&engine_sync::SyncPlugin, config, || {
            engine_sync::SyncEngine::new(config.clone()).map(Inner::Sync)
        }),
        #[cfg(feature = "monoio")]
        "monoio" => probe_then(&engine_monoio::MonoioPlugin, config, || {
            engine_monoio::MonoioEngine::new(config.clone()).map(Inner::Monoio)
        }),
        #[cfg(feature = "glommio")]
        "glommio" => probe_then(&engine_glommio::GlommioPlugin, config, || {
            engine_glommio::GlommioEngine::new(config.clone()).map(Inner::Glommio)
        }),
        builtin if BUILTIN_BACKENDS.contains(&builtin) => Attempted::NotCompiled(format!(
            "this build has no `{builtin}` backend (cargo feature `{builtin}`)"
        )),
        other => match registry::plugin(other) {
            Some(plugin) => probe_then(&*plugin, config, || {
                plugin.create(config).map(Inner::Plugin)
            }),
            None => Attempted::Failed(Error::new(
                ErrorKind::NotFound,
                Op::Setup,
                format!("no plugin named {other:?} is registered"),
            )),
        },
    }
}

/// True for setup errors that mean "cannot run here" rather than "broken": the only ones
/// `auto` falls back on.
fn is_refusal(error: &Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::PermissionDenied | ErrorKind::Unsupported | ErrorKind::NoMemory
    )
}

impl Engine {
    /// Chooses and builds a backend from the `ENGINE_*` environment variables (see
    /// [`VARIABLES`] and the README's table).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for an unknown variable or value, naming the valid ones;
    /// [`ErrorKind::Unsupported`] when no requested backend can run, with the selection report
    /// (every diagnosis and remedy) in the message.
    pub fn from_env() -> Result<Engine> {
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().filter(|n| n.starts_with("ENGINE_")) else {
                continue;
            };
            let Some(value) = value.to_str() else {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    Op::Setup,
                    format!("{name} is not valid UTF-8"),
                ));
            };
            vars.push((name.to_string(), value.to_string()));
        }
        let pairs = vars.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        Engine::from_settings(Settings::parse(pairs, &Engine::backend_names())?)
    }

    /// Chooses and builds a backend from parsed settings.
    ///
    /// # Errors
    ///
    /// As [`Engine::from_env`].
    pub fn from_settings(settings: Settings) -> Result<Engine> {
        let names: Vec<String> = match &settings.choice {
            Choice::Auto => BUILTIN_BACKENDS.iter().map(|s| s.to_string()).collect(),
            Choice::List(names) => names.clone(),
        };
        let mut report = SelectionReport::new(settings.requested.clone());
        for name in &names {
            match attempt(name, &settings.config) {
                Attempted::Built(inner, detail) => {
                    // What the backend set up (registered buffers, or why not), from its notes.
                    let notes = dispatch!(&inner, e => Backend::capabilities(e))
                        .notes
                        .join("; ");
                    report.push(name, Outcome::Chosen(format!("{detail}; {notes}")));
                    tracing::info!(backend = %name, "engine selected");
                    return Ok(Engine {
                        inner,
                        report,
                        nowait_noted: Mutex::new(Vec::new()),
                        observations: Mutex::new(Vec::new()),
                    });
                }
                Attempted::Unavailable(diagnosis) => {
                    tracing::warn!(backend = %name, %diagnosis, "backend unavailable, trying the next");
                    report.push(name, Outcome::Unavailable(diagnosis));
                }
                Attempted::NotCompiled(why) => report.push(name, Outcome::NotCompiled(why)),
                Attempted::Failed(error) => {
                    report.push(name, Outcome::Failed(error.to_string()));
                    if !is_refusal(&error) {
                        return Err(error
                            .with_message(format!("setting up backend {name} failed\n{report}")));
                    }
                }
            }
        }
        Err(Error::new(
            ErrorKind::Unsupported,
            Op::Setup,
            format!("no requested backend can run here\n{report}"),
        ))
    }

    /// Builds exactly the backend `name` with `config`.
    ///
    /// # Errors
    ///
    /// As [`Engine::from_env`].
    pub fn with_backend(name: &str, config: EngineConfig) -> Result<Engine> {
        Engine::from_settings(Settings {
            choice: Choice::List(vec![name.to_string()]),
            config,
            requested: format!("backend {name}"),
        })
    }

    /// Every name `ENGINE_BACKEND` accepts besides `auto`: the built-in backends, compiled in
    /// or not, then the registered plugins.
    pub fn backend_names() -> Vec<&'static str> {
        let mut names = BUILTIN_BACKENDS.to_vec();
        names.extend(registry::plugin_names());
        names
    }

    /// How the backend was chosen: every candidate, what its probe found, the choice, and
    /// what the engine noticed since (for example files on devices without NOWAIT support).
    /// Its `Display` form is for people.
    pub fn report(&self) -> SelectionReport {
        let mut report = self.report.clone();
        report.observations = lock(&self.observations).clone();
        report
    }

    /// The backend's name.
    pub fn name(&self) -> &'static str {
        dispatch!(&self.inner, e => Backend::name(e))
    }

    /// What the backend can do.
    pub fn capabilities(&self) -> &Capabilities {
        dispatch!(&self.inner, e => Backend::capabilities(e))
    }

    /// Opens a file; its geometry is probed and validation uses it from then on.
    ///
    /// # Errors
    ///
    /// As [`Backend::open`].
    pub fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        let file = dispatch!(&self.inner, e => Backend::open(e, path, options))?;
        if file.geometry().nowait == Support::Unsupported {
            self.note_no_nowait(&file);
        }
        Ok(file)
    }

    /// Takes over a descriptor opened elsewhere (before a sandbox, or a block device opened
    /// with `O_EXCL`), probing its geometry as [`Engine::open`] does. See [`Backend::adopt`].
    ///
    /// # Errors
    ///
    /// As [`Backend::adopt`].
    pub fn adopt(&self, fd: std::os::fd::OwnedFd, options: &OpenOptions) -> Result<File> {
        let file = dispatch!(&self.inner, e => Backend::adopt(e, fd, options))?;
        if file.geometry().nowait == Support::Unsupported {
            self.note_no_nowait(&file);
        }
        Ok(file)
    }

    /// Records, once per device, that files on it take no non-blocking reads.
    fn note_no_nowait(&self, file: &File) {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let Ok(meta) = std::fs::metadata(file.path()) else {
            return;
        };
        let device = if meta.file_type().is_block_device() {
            meta.rdev()
        } else {
            meta.dev()
        };
        let mut noted = lock(&self.nowait_noted);
        if noted.contains(&device) {
            return;
        }
        noted.push(device);
        drop(noted);
        let what = match self.name() {
            "uring" => "io_uring hands every request on it to kernel worker threads",
            "sync" | "monoio" | "glommio" => "reads cannot be tried on the submitting thread first, so each goes to the worker pool or executor",
            _ => "requests on it cannot be tried without blocking",
        };
        let note = format!(
            "device {}:{} (of {}) has no NOWAIT support: {what}",
            major(device),
            minor(device),
            file.path().display()
        );
        tracing::warn!(%note, "device without NOWAIT support");
        lock(&self.observations).push(note);
    }

    /// Closes a file handle: later requests on it fail with [`ErrorKind::BadFile`]. Closing
    /// never syncs.
    ///
    /// # Errors
    ///
    /// As [`Backend::close`].
    pub fn close(&self, file: &File) -> Result<()> {
        dispatch!(&self.inner, e => Backend::close(e, file))
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns the count (0 at or past end of file)
    /// and the buffer, whose length becomes the count.
    pub fn read_at<'a>(
        &'a self,
        file: &'a File,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (Result<usize>, AlignedBuf)> + Send + 'a {
        BackendExt::read_at(self, file, offset, buf)
    }

    /// Writes `buf` at `offset`; returns the count, which may be short, and the buffer.
    pub fn write_at<'a>(
        &'a self,
        file: &'a File,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (Result<usize>, AlignedBuf)> + Send + 'a {
        BackendExt::write_at(self, file, offset, buf)
    }

    /// Fills the whole buffer from `offset`. See [`BackendExt::read_exact_at`].
    pub fn read_exact_at<'a>(
        &'a self,
        file: &'a File,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (Result<()>, AlignedBuf)> + Send + 'a {
        BackendExt::read_exact_at(self, file, offset, buf)
    }

    /// Writes the whole buffer at `offset`. See [`BackendExt::write_all_at`].
    pub fn write_all_at<'a>(
        &'a self,
        file: &'a File,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (Result<()>, AlignedBuf)> + Send + 'a {
        BackendExt::write_all_at(self, file, offset, buf)
    }

    /// `fdatasync`: makes every write that completed before this call durable.
    pub fn sync_data<'a>(&'a self, file: &'a File) -> impl Future<Output = Result<()>> + Send + 'a {
        BackendExt::sync_data(self, file)
    }

    /// `fsync`: as [`Engine::sync_data`], plus all metadata.
    pub fn sync_all<'a>(&'a self, file: &'a File) -> impl Future<Output = Result<()>> + Send + 'a {
        BackendExt::sync_all(self, file)
    }

    /// `fsync` of the directory at `path`: what makes a file's creation, removal or rename in
    /// it durable. See [`BackendExt::sync_dir`].
    pub fn sync_dir<'a>(
        &'a self,
        path: &'a std::path::Path,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        BackendExt::sync_dir(self, path)
    }

    /// Writes the whole buffer with per-write durability or atomicity. See
    /// [`BackendExt::write_all_at_with`].
    pub fn write_all_at_with<'a>(
        &'a self,
        file: &'a File,
        offset: u64,
        buf: AlignedBuf,
        flags: WriteFlags,
    ) -> impl Future<Output = (Result<()>, AlignedBuf)> + Send + 'a {
        BackendExt::write_all_at_with(self, file, offset, buf, flags)
    }

    /// Writes the whole buffer untorn (`RWF_ATOMIC`). See [`BackendExt::write_atomic_at`].
    pub fn write_atomic_at<'a>(
        &'a self,
        file: &'a File,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (Result<()>, AlignedBuf)> + Send + 'a {
        BackendExt::write_atomic_at(self, file, offset, buf)
    }

    /// Fills every buffer in order from `offset`. See [`BackendExt::read_vectored_at`].
    pub fn read_vectored_at<'a>(
        &'a self,
        file: &'a File,
        offset: u64,
        bufs: Vec<AlignedBuf>,
    ) -> impl Future<Output = (Result<()>, Vec<AlignedBuf>)> + Send + 'a {
        BackendExt::read_vectored_at(self, file, offset, bufs)
    }

    /// Writes every buffer in order from `offset`. See [`BackendExt::write_vectored_at`].
    pub fn write_vectored_at<'a>(
        &'a self,
        file: &'a File,
        offset: u64,
        bufs: Vec<AlignedBuf>,
    ) -> impl Future<Output = (Result<()>, Vec<AlignedBuf>)> + Send + 'a {
        BackendExt::write_vectored_at(self, file, offset, bufs)
    }

    /// `fallocate`: preallocates, punches a hole or zeroes a range. See
    /// [`BackendExt::allocate`].
    pub fn allocate<'a>(
        &'a self,
        file: &'a File,
        offset: u64,
        len: u64,
        mode: AllocateMode,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        BackendExt::allocate(self, file, offset, len, mode)
    }

    /// `ftruncate`: sets the file's length. See [`BackendExt::set_len`].
    pub fn set_len<'a>(
        &'a self,
        file: &'a File,
        len: u64,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        BackendExt::set_len(self, file, len)
    }

    /// `statx`: length, blocks, kind and times. See [`BackendExt::metadata`].
    pub fn metadata<'a>(
        &'a self,
        file: &'a File,
    ) -> impl Future<Output = Result<Metadata>> + Send + 'a {
        BackendExt::metadata(self, file)
    }

    /// Submits one request; resolves to its completion. See [`Backend::submit`].
    pub fn submit(&self, request: Request) -> impl Future<Output = Completion> + Send + '_ {
        Backend::submit(self, request)
    }

    /// Submits every request at once; one completion per request, in order.
    pub fn submit_batch(
        &self,
        requests: Vec<Request>,
    ) -> impl Future<Output = Vec<Completion>> + Send + '_ {
        BackendExt::submit_batch(self, requests)
    }

    /// Creates a per-thread queue of the engine's queue depth.
    ///
    /// # Errors
    ///
    /// As [`Backend::queue`].
    pub fn queue(&self) -> Result<EngineQueue> {
        let inner = match &self.inner {
            #[cfg(feature = "uring")]
            Inner::Uring(e) => Backend::queue(e).map(QueueInner::Uring),
            #[cfg(feature = "aio")]
            Inner::Aio(e) => Backend::queue(e).map(QueueInner::Aio),
            #[cfg(feature = "sync")]
            Inner::Sync(e) => Backend::queue(e).map(QueueInner::Sync),
            #[cfg(feature = "monoio")]
            Inner::Monoio(e) => Backend::queue(e).map(QueueInner::Monoio),
            #[cfg(feature = "glommio")]
            Inner::Glommio(e) => Backend::queue(e).map(QueueInner::Glommio),
            Inner::Plugin(e) => Backend::queue(e).map(QueueInner::Plugin),
        };
        inner.map(EngineQueue)
    }

    /// A copy of the counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        dispatch!(&self.inner, e => Backend::metrics(e))
    }

    /// The page pool the backend registered with the kernel, if any. See [`Backend::pool`].
    pub fn pool(&self) -> Option<&PagePool> {
        dispatch!(&self.inner, e => Backend::pool(e))
    }

    /// Stops accepting requests, completes everything in flight and joins the backend's
    /// threads. Idempotent; dropping the engine does it too.
    pub fn shutdown(&self) {
        dispatch!(&self.inner, e => Backend::shutdown(e))
    }

    /// The system calls the engine makes once set up, with its own rings, contexts and
    /// eventfds filled in ([`engine_core::raw::sandbox`]; `sandbox::Sandbox` builds a seccomp
    /// filter from it, with the `sandbox` feature).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`] for a backend that publishes no list (monoio, glommio and
    /// plugins that do not).
    pub fn steady_state_syscalls(&self) -> Result<SteadyState> {
        dispatch!(&self.inner, e => Backend::steady_state(e))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    engine_core::raw::lock(mutex)
}

/// The major number of a Linux device number (glibc's `gnu_dev_major`).
fn major(device: u64) -> u64 {
    ((device >> 8) & 0xfff) | ((device >> 32) & !0xfff)
}

/// The minor number of a Linux device number (glibc's `gnu_dev_minor`).
fn minor(device: u64) -> u64 {
    (device & 0xff) | ((device >> 12) & !0xff)
}

impl Backend for Engine {
    type Queue = EngineQueue;

    fn name(&self) -> &'static str {
        Engine::name(self)
    }
    fn capabilities(&self) -> &Capabilities {
        Engine::capabilities(self)
    }
    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        Engine::open(self, path, options)
    }
    fn adopt(&self, fd: std::os::fd::OwnedFd, options: &OpenOptions) -> Result<File> {
        Engine::adopt(self, fd, options)
    }
    fn close(&self, file: &File) -> Result<()> {
        Engine::close(self, file)
    }
    async fn submit(&self, request: Request) -> Completion {
        dispatch!(&self.inner, e => Backend::submit(e, request).await)
    }
    fn queue(&self) -> Result<EngineQueue> {
        Engine::queue(self)
    }
    fn metrics(&self) -> MetricsSnapshot {
        Engine::metrics(self)
    }
    fn pool(&self) -> Option<&PagePool> {
        Engine::pool(self)
    }
    fn shutdown(&self) {
        Engine::shutdown(self)
    }
    fn steady_state(&self) -> Result<SteadyState> {
        Engine::steady_state_syscalls(self)
    }
}

/// Runs `$body` with `$q` bound to the backend queue.
macro_rules! dispatch_queue {
    ($queue:expr, $q:ident => $body:expr) => {
        match $queue {
            #[cfg(feature = "uring")]
            QueueInner::Uring($q) => $body,
            #[cfg(feature = "aio")]
            QueueInner::Aio($q) => $body,
            #[cfg(feature = "sync")]
            QueueInner::Sync($q) => $body,
            #[cfg(feature = "monoio")]
            QueueInner::Monoio($q) => $body,
            #[cfg(feature = "glommio")]
            QueueInner::Glommio($q) => $body,
            QueueInner::Plugin($q) => $body,
        }
    };
}

impl Queue for EngineQueue {
    fn depth(&self) -> usize {
        dispatch_queue!(&self.0, q => q.depth())
    }
    fn in_flight(&self) -> usize {
        dispatch_queue!(&self.0, q => q.in_flight())
    }
    fn push(&mut self, request: Request) -> std::result::Result<(), Request> {
        dispatch_queue!(&mut self.0, q => q.push(request))
    }
    fn submit(&mut self) -> Result<usize> {
        dispatch_queue!(&mut self.0, q => q.submit())
    }
    fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        dispatch_queue!(&mut self.0, q => q.poll(out))
    }
    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) -> Result<usize> {
        dispatch_queue!(&mut self.0, q => q.wait(min, out))
    }
    fn kernel_ids(&self) -> Vec<u64> {
        dispatch_queue!(&self.0, q => q.kernel_ids())
    }
}

impl std::fmt::Debug for EngineQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineQueue")
            .field("depth", &self.depth())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.name())
            .field("chosen", &self.report.chosen)
            .finish()
    }
}
