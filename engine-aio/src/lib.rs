//! The Linux AIO backend of the storage I/O engine, on the kernel's own syscalls
//! (`io_setup`, `io_submit`, `io_getevents`, `io_destroy`); no C library is needed.
//!
//! Two layers, both keeping the whole engine contract:
//! - the async API ([`AioEngine`]): a task's future calls `io_submit` and reaps the mapped
//!   completion ring itself, so a request that completes inside `io_submit` (buffered, or a
//!   synchronous device) costs no thread hop; every iocb also signals an eventfd
//!   (`IOCB_FLAG_RESFD`), on which a `block_on` thread waits itself and a reaper thread waits
//!   for futures polled by other executors. Nothing polls.
//! - the queue API ([`AioQueue`]): one context per queue; the owning thread submits and reaps
//!   with `io_getevents`. A partial `io_submit` keeps the rest queued; EAGAIN waits for
//!   completions instead of failing.
//!
//! `sync_data` is `IOCB_CMD_FDSYNC` and `sync_all` `IOCB_CMD_FSYNC` where the kernel has them
//! (probed once); otherwise they run on a thread with the same meaning, as do requests on files
//! AIO refuses outright (procfs files, for one). Writes to `O_DSYNC`
//! files carry `RWF_DSYNC`. Linux AIO is asynchronous only for O_DIRECT files: buffered
//! requests work, correctly, but run synchronously inside `io_submit`, and the capabilities say
//! so. `fs.aio-max-nr` exhaustion is a probe diagnosis with its remedy.
//!
//! # Examples
//!
//! ```
//! use engine_aio::AioEngine;
//! use engine_core::{block_on, AlignedBuf, Backend, BackendExt, EngineConfig, OpenOptions};
//!
//! let engine = match AioEngine::new(EngineConfig::default()) {
//!     Ok(engine) => engine,
//!     Err(e) => { eprintln!("Linux AIO unavailable here: {e}"); return Ok(()); }
//! };
//! let dir = tempfile::tempdir()?;
//! let file = engine.open(&dir.path().join("data"), &OpenOptions::new().read(true).write(true).create(true))?;
//! block_on(async {
//!     let (written, _) = engine.write_all_at(&file, 0, AlignedBuf::from_slice(b"hello", 1)?).await;
//!     written?;
//!     engine.sync_data(&file).await?;
//!     let (read, back) = engine.read_exact_at(&file, 0, AlignedBuf::zeroed(5, 1)?).await;
//!     read?;
//!     assert_eq!(back.as_slice(), b"hello");
//!     Ok::<(), engine_core::Error>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod abi;
mod context;
mod engine;
mod kernel;
mod probe;

pub use engine::{AioEngine, AioQueue};
pub use kernel::AioKernel;
pub use probe::{diagnose, probe};

use engine_core::registry::{Plugin, Probe};
use engine_core::{DynBackend, EngineConfig, Result};

/// The backend's registry name.
pub const NAME: &str = "aio";

/// The registry plugin for the Linux AIO backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct AioPlugin;

impl Plugin for AioPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn probe(&self, config: &EngineConfig) -> Probe {
        probe::probe(config)
    }

    fn create(&self, config: &EngineConfig) -> Result<Box<dyn DynBackend>> {
        Ok(Box::new(AioEngine::new(config.clone())?))
    }
}
