//! The pread/pwrite backend of the storage I/O engine, on a bounded worker pool.
//!
//! Every request runs as one blocking syscall (`pread`, `pwrite`, `fdatasync`, `fsync`): a
//! buffered read first on the submitting thread with `RWF_NOWAIT` (a cached read costs what
//! `pread` costs), everything that would block on one of a fixed number of worker threads
//! (queue depth gives real parallelism up to the number of threads). It keeps the whole engine
//! contract (see `engine-core`) and runs everywhere Linux does, so it is the last fallback of
//! `Engine::from_env()`.
//!
//! # Examples
//!
//! ```
//! use engine_core::{block_on, AlignedBuf, Backend, BackendExt, EngineConfig, OpenOptions};
//! use engine_sync::SyncEngine;
//!
//! let dir = tempfile::tempdir()?;
//! let engine = SyncEngine::new(EngineConfig::default())?;
//! let options = OpenOptions::new().read(true).write(true).create(true);
//! let file = engine.open(&dir.path().join("data"), &options)?;
//! block_on(async {
//!     let (written, _) = engine.write_all_at(&file, 0, AlignedBuf::from_slice(b"hello", 1)?).await;
//!     written?;
//!     engine.sync_data(&file).await?;
//!     let (read, buf) = engine.read_exact_at(&file, 0, AlignedBuf::zeroed(5, 1)?).await;
//!     read?;
//!     assert_eq!(buf.as_slice(), b"hello");
//!     Ok::<(), engine_core::Error>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod engine;

pub use engine::{SyncEngine, SyncQueue, THREADS_DEFAULT_MAX};

use engine_core::registry::{Plugin, Probe};
use engine_core::{DynBackend, EngineConfig, Result};

/// The backend's registry name.
pub const NAME: &str = "sync";

/// The registry plugin for the sync backend. It is always available: it needs nothing but
/// threads and the basic file syscalls.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncPlugin;

impl Plugin for SyncPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn probe(&self, config: &EngineConfig) -> Probe {
        if config.inline {
            return Probe::Available("pread/pwrite inline on the submitting thread".into());
        }
        let threads = engine::threads_for(config);
        Probe::Available(format!(
            "pread/pwrite on {threads} worker threads, queue depth {}",
            config.queue_depth
        ))
    }

    fn create(&self, config: &EngineConfig) -> Result<Box<dyn DynBackend>> {
        Ok(Box::new(SyncEngine::new(config.clone())?))
    }
}
