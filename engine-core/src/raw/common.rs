//! What every engine carries, whatever its backend: its id, settings, counters and shutdown
//! state, and the part of `open`/`close` that every backend shares.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::EngineConfig;
use crate::error::{Error, Op, Result};
use crate::file::{File, FileDropped, OpenOptions};
use crate::geometry::Geometry;
use crate::metrics::Metrics;

/// A process-unique number for a new engine, so files can be checked against the engine that
/// opened them.
pub fn next_engine_id() -> u64 {
    static IDS: AtomicU64 = AtomicU64::new(1);
    IDS.fetch_add(1, Ordering::Relaxed)
}

/// Opens `path` with `options` and probes its geometry: the part of `open` every backend
/// shares (also for tests that compare an engine's answer with the shared probe's).
///
/// # Errors
///
/// [`crate::ErrorKind::InvalidInput`] for contradictory options;
/// [`crate::ErrorKind::Unsupported`] for O_DIRECT on a filesystem without it, and for files that
/// cannot seek; the OS error otherwise.
pub fn open_std(path: &Path, options: &OpenOptions) -> Result<(std::fs::File, Geometry)> {
    options.open_std(path)
}

/// The errno a backend's setup must pretend the kernel refused it with, for tests of the
/// fallback path (`testing` feature: [`crate::testing::Testing::setup_errno`]); always `None`
/// without the feature.
pub fn simulated_setup_errno(config: &EngineConfig, backend: &str) -> Option<i32> {
    #[cfg(feature = "testing")]
    {
        config.testing.setup_errno(backend)
    }
    #[cfg(not(feature = "testing"))]
    {
        let _ = (config, backend);
        None
    }
}

/// True when backends with a kernel fsync must run syncs on their thread fallback instead,
/// for tests (`testing` feature: [`crate::testing::Testing::force_thread_sync`]).
pub fn force_thread_sync(config: &EngineConfig) -> bool {
    #[cfg(feature = "testing")]
    {
        config.testing.force_thread_sync
    }
    #[cfg(not(feature = "testing"))]
    {
        let _ = config;
        false
    }
}

/// The size a backend gives its submission ring or context: `wanted`, unless the test switches
/// ([`crate::testing::Testing::submission_entries`]) ask for a smaller one.
pub fn submission_entries(config: &EngineConfig, wanted: u32) -> u32 {
    #[cfg(feature = "testing")]
    if let Some(entries) = config.testing.submission_entries {
        return entries.max(1);
    }
    let _ = config;
    wanted
}

/// The state every engine shares with its queues and threads.
#[derive(Debug)]
pub struct Common {
    engine_id: u64,
    config: EngineConfig,
    metrics: Metrics,
    shut_down: AtomicBool,
}

impl Common {
    /// The common state of a new engine with `config` and a fresh engine id.
    pub fn new(config: EngineConfig) -> Common {
        Common {
            engine_id: next_engine_id(),
            config,
            metrics: Metrics::default(),
            shut_down: AtomicBool::new(false),
        }
    }

    /// The engine's id, which its files carry.
    pub fn engine_id(&self) -> u64 {
        self.engine_id
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The engine's live counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// True once shutdown has begun: nothing new is admitted.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }

    /// Begins shutdown; true the first time.
    pub fn begin_shutdown(&self) -> bool {
        !self.shut_down.swap(true, Ordering::AcqRel)
    }

    /// The fault hook, with the `testing` feature.
    #[cfg(feature = "testing")]
    pub fn fault_hook(&self) -> Option<&dyn crate::testing::FaultHook> {
        self.config.testing.fault_hook.as_deref()
    }

    /// True when a fault hook sees every submission (`testing` feature): a write and its
    /// sync are then submitted apart, so the hook decides each of the two syscalls.
    pub fn hooks_faults(&self) -> bool {
        #[cfg(feature = "testing")]
        {
            self.fault_hook().is_some()
        }
        #[cfg(not(feature = "testing"))]
        {
            false
        }
    }

    /// The seeded bookkeeping bug, with the `testing` feature.
    #[cfg(feature = "testing")]
    pub(crate) fn mutation(&self) -> Option<crate::testing::Mutation> {
        self.config.testing.mutation
    }

    /// The shared first half of `open`: refuses after shutdown, then opens `path` and probes
    /// its geometry ([`open_std`](crate::raw::open_std)).
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Shutdown`] after shutdown; as [`open_std`](crate::raw::open_std).
    pub fn open_std(
        &self,
        path: &Path,
        options: &OpenOptions,
    ) -> Result<(std::fs::File, Geometry)> {
        if self.is_shut_down() {
            return Err(Error::shutdown(Op::Open));
        }
        options.open_std(path)
    }

    /// The shared first half of `adopt`: refuses after shutdown, then checks the descriptor
    /// against the options and probes its geometry. Returns the file, the path it names, the
    /// options it really has (`dsync` as the descriptor says) and the geometry, for
    /// [`Common::file`].
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Shutdown`] after shutdown; as [`crate::Backend::adopt`].
    pub fn adopt_std(
        &self,
        fd: std::os::fd::OwnedFd,
        options: &OpenOptions,
    ) -> Result<(std::fs::File, std::path::PathBuf, OpenOptions, Geometry)> {
        if self.is_shut_down() {
            return Err(Error::shutdown(Op::Open));
        }
        options.adopt_std(fd)
    }

    /// The shared second half of `open`: the handle for an opened file. `backend_index` is the
    /// backend's own number for it (for example a registered-file slot), 0 when it has none;
    /// `dropped`, if given, is told when the last handle of the file goes (so a backend can let
    /// go of what it registered for it).
    pub fn file(
        &self,
        std: std::fs::File,
        path: &Path,
        options: OpenOptions,
        geometry: Geometry,
        backend_index: u32,
        dropped: Option<Arc<dyn FileDropped>>,
    ) -> File {
        File::new(
            self.engine_id,
            std,
            path,
            options,
            geometry,
            self.config.strict,
            backend_index,
            dropped,
        )
    }

    /// The shared part of `close`: marks the handle closed for this engine.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::BadFile`] when another engine opened the file, or it was already
    /// closed.
    pub fn close(&self, file: &File) -> Result<()> {
        file.mark_closed(self.engine_id)
    }
}
