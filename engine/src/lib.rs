#![doc = include_str!("../../README.md")]

mod env;

use std::path::Path;

pub use engine_core as core;
pub use engine_core::{
    block_on, registry, AlignedBuf, Capabilities, Completion, Diagnosis, DynEngine, EngineConfig,
    EngineExt, Error, ErrorKind, File, Geometry, IoBuf, IoBufMut, MetricsSnapshot, OpKind,
    OpenOptions, Outcome, PageAllocator, PagePool, Plugin, PoolConfig, Probe, Queue, Request,
    Result, SelectionReport,
};
pub use env::{Choice, Settings, VARIABLES};

/// The Linux AIO backend's crate, for its own types.
#[cfg(feature = "aio")]
pub use engine_aio as aio;
/// The sync backend's crate, for its own types.
#[cfg(feature = "sync")]
pub use engine_sync as sync;
/// The io_uring backend's crate, for its own types.
#[cfg(feature = "uring")]
pub use engine_uring as uring;

use engine_core::{Engine as CoreEngine, Op};

/// The built-in backends, in the order `auto` tries them.
pub const BUILTIN_BACKENDS: [&str; 3] = ["uring", "aio", "sync"];

/// The backend behind an [`Engine`]: one variant per compiled-in backend, so the built-in
/// path dispatches with a match and allocates nothing, plus one for registered plugins.
pub enum Backend {
    /// The io_uring backend.
    #[cfg(feature = "uring")]
    Uring(engine_uring::UringEngine),
    /// The Linux AIO backend.
    #[cfg(feature = "aio")]
    Aio(engine_aio::AioEngine),
    /// The pread/pwrite backend.
    #[cfg(feature = "sync")]
    Sync(engine_sync::SyncEngine),
    /// A third-party backend from the registry.
    Plugin(Box<dyn DynEngine>),
}

/// The queue of an [`Engine`]'s backend.
// Queues are made once per thread and used on the hot path: an inline variant saves a pointer
// chase per request, which matters more than the enum's size.
#[allow(clippy::large_enum_variant)]
pub enum EngineQueue {
    /// The io_uring backend's queue.
    #[cfg(feature = "uring")]
    Uring(engine_uring::UringQueue),
    /// The Linux AIO backend's queue.
    #[cfg(feature = "aio")]
    Aio(engine_aio::AioQueue),
    /// The sync backend's queue.
    #[cfg(feature = "sync")]
    Sync(engine_sync::SyncQueue),
    /// A plugin's queue.
    Plugin(Box<dyn Queue + Send>),
}

/// An engine chosen at build time or run time, with the report of how it was chosen.
///
/// It implements [`engine_core::Engine`], so everything in [`EngineExt`] works on it.
pub struct Engine {
    backend: Backend,
    report: SelectionReport,
}

/// Runs `$body` with `$e` bound to the backend engine, whatever its type.
macro_rules! dispatch {
    ($backend:expr, $e:ident => $body:expr) => {
        match $backend {
            #[cfg(feature = "uring")]
            Backend::Uring($e) => $body,
            #[cfg(feature = "aio")]
            Backend::Aio($e) => $body,
            #[cfg(feature = "sync")]
            Backend::Sync($e) => $body,
            Backend::Plugin($e) => $body,
        }
    };
}

/// What one attempt to use a backend came to.
enum Attempted {
    Built(Backend, String),
    Unavailable(Diagnosis),
    Failed(Error),
    NotCompiled(String),
}

fn attempt(name: &str, config: &EngineConfig) -> Attempted {
    match name {
        #[cfg(feature = "uring")]
        "uring" => match engine_uring::UringPlugin.probe(config) {
            Probe::Available(detail) => match engine_uring::UringEngine::new(config.clone()) {
                Ok(engine) => Attempted::Built(Backend::Uring(engine), detail),
                Err(error) => Attempted::Failed(error),
            },
            Probe::Unavailable(diagnosis) => Attempted::Unavailable(diagnosis),
        },
        #[cfg(feature = "aio")]
        "aio" => match engine_aio::AioPlugin.probe(config) {
            Probe::Available(detail) => match engine_aio::AioEngine::new(config.clone()) {
                Ok(engine) => Attempted::Built(Backend::Aio(engine), detail),
                Err(error) => Attempted::Failed(error),
            },
            Probe::Unavailable(diagnosis) => Attempted::Unavailable(diagnosis),
        },
        #[cfg(feature = "sync")]
        "sync" => match engine_sync::SyncPlugin.probe(config) {
            Probe::Available(detail) => match engine_sync::SyncEngine::new(config.clone()) {
                Ok(engine) => Attempted::Built(Backend::Sync(engine), detail),
                Err(error) => Attempted::Failed(error),
            },
            Probe::Unavailable(diagnosis) => Attempted::Unavailable(diagnosis),
        },
        builtin if BUILTIN_BACKENDS.contains(&builtin) => Attempted::NotCompiled(format!(
            "this build has no `{builtin}` backend (cargo feature `{builtin}`)"
        )),
        other => match registry::plugin(other) {
            Some(plugin) => match plugin.probe(config) {
                Probe::Available(detail) => match plugin.create(config) {
                    Ok(engine) => Attempted::Built(Backend::Plugin(engine), detail),
                    Err(error) => Attempted::Failed(error),
                },
                Probe::Unavailable(diagnosis) => Attempted::Unavailable(diagnosis),
            },
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
                Attempted::Built(backend, detail) => {
                    let engine = Engine {
                        backend,
                        report: SelectionReport::default(),
                    };
                    // What the backend set up, such as registered buffers (or why not).
                    let detail = match &engine.capabilities().registered_buffers {
                        Some(buffers) => format!("{detail}; buffers {buffers}"),
                        None => detail,
                    };
                    let backend = engine.into_backend();
                    report.push(name, Outcome::Chosen(detail));
                    tracing::info!(backend = %name, "engine selected");
                    return Ok(Engine { backend, report });
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

    /// How the backend was chosen: every candidate, what its probe found, and the choice.
    /// Its `Display` form is for people.
    pub fn report(&self) -> &SelectionReport {
        &self.report
    }

    fn into_backend(self) -> Backend {
        self.backend
    }

    /// The backend, for callers who want its own API.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The backend's name.
    pub fn name(&self) -> &'static str {
        dispatch!(&self.backend, e => CoreEngine::name(e))
    }

    /// See [`engine_core::Engine::capabilities`].
    pub fn capabilities(&self) -> &Capabilities {
        dispatch!(&self.backend, e => CoreEngine::capabilities(e))
    }

    /// See [`engine_core::Engine::open`].
    ///
    /// # Errors
    ///
    /// As [`engine_core::Engine::open`].
    pub fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        dispatch!(&self.backend, e => CoreEngine::open(e, path, options))
    }

    /// See [`engine_core::Engine::close`].
    ///
    /// # Errors
    ///
    /// As [`engine_core::Engine::close`].
    pub fn close(&self, file: &File) -> Result<()> {
        dispatch!(&self.backend, e => CoreEngine::close(e, file))
    }

    /// See [`engine_core::Engine::queue`].
    ///
    /// # Errors
    ///
    /// As [`engine_core::Engine::queue`].
    pub fn queue(&self) -> Result<EngineQueue> {
        match &self.backend {
            #[cfg(feature = "uring")]
            Backend::Uring(e) => CoreEngine::queue(e).map(EngineQueue::Uring),
            #[cfg(feature = "aio")]
            Backend::Aio(e) => CoreEngine::queue(e).map(EngineQueue::Aio),
            #[cfg(feature = "sync")]
            Backend::Sync(e) => CoreEngine::queue(e).map(EngineQueue::Sync),
            Backend::Plugin(e) => CoreEngine::queue(e).map(EngineQueue::Plugin),
        }
    }

    /// See [`engine_core::Engine::metrics`].
    pub fn metrics(&self) -> MetricsSnapshot {
        dispatch!(&self.backend, e => CoreEngine::metrics(e))
    }

    /// See [`engine_core::Engine::pool`].
    pub fn pool(&self) -> Option<&PagePool> {
        dispatch!(&self.backend, e => CoreEngine::pool(e))
    }

    /// See [`engine_core::Engine::shutdown`].
    pub fn shutdown(&self) {
        dispatch!(&self.backend, e => CoreEngine::shutdown(e))
    }
}

impl engine_core::Engine for Engine {
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
    fn close(&self, file: &File) -> Result<()> {
        Engine::close(self, file)
    }
    async fn submit(&self, request: Request) -> Completion {
        dispatch!(&self.backend, e => CoreEngine::submit(e, request).await)
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
}

/// Runs `$body` with `$q` bound to the backend queue.
macro_rules! dispatch_queue {
    ($queue:expr, $q:ident => $body:expr) => {
        match $queue {
            #[cfg(feature = "uring")]
            EngineQueue::Uring($q) => $body,
            #[cfg(feature = "aio")]
            EngineQueue::Aio($q) => $body,
            #[cfg(feature = "sync")]
            EngineQueue::Sync($q) => $body,
            EngineQueue::Plugin($q) => $body,
        }
    };
}

impl Queue for EngineQueue {
    fn depth(&self) -> usize {
        dispatch_queue!(self, q => q.depth())
    }
    fn in_flight(&self) -> usize {
        dispatch_queue!(self, q => q.in_flight())
    }
    fn push(&mut self, request: Request) -> std::result::Result<(), Request> {
        dispatch_queue!(self, q => q.push(request))
    }
    fn submit(&mut self) -> Result<usize> {
        dispatch_queue!(self, q => q.submit())
    }
    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        dispatch_queue!(self, q => q.poll(out))
    }
    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) -> Result<usize> {
        dispatch_queue!(self, q => q.wait(min, out))
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
