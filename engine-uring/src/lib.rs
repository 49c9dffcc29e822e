//! The io_uring backend of the storage I/O engine.
//!
//! Two layers, both keeping the whole engine contract:
//! - the async API ([`UringEngine`]): a task's future pushes its SQE, enters the kernel and
//!   reaps every ready CQE itself, so a request that completes at once (a cached read) costs no
//!   thread hop; under [`engine_core::block_on`] the waiting thread waits in the ring itself,
//!   and a reaper thread serves only futures polled by other executors.
//! - the queue API ([`UringQueue`]): one ring per queue, submitted and reaped by the one
//!   thread that owns it, with SINGLE_ISSUER and DEFER_TASKRUN where the kernel has them.
//!
//! Files are registered, and the engine's page pool ([`engine_core::Backend::pool`]) is
//! registered as a fixed buffer when `RLIMIT_MEMLOCK` allows, so buffers allocated from it use
//! READ_FIXED/WRITE_FIXED; when it is refused, the capabilities say why. `sync_data` is
//! `IORING_FSYNC_DATASYNC`, `sync_all` a full fsync; a sync covers what completed before it
//! was submitted, so no link or drain is needed. The [`UringPlugin`]'s probe explains why
//! io_uring cannot run (ENOSYS, `kernel.io_uring_disabled`, seccomp, memlock, opcodes).
//!
//! # Examples
//!
//! ```
//! use engine_core::{block_on, AlignedBuf, Backend, BackendExt, EngineConfig, OpenOptions, PageAllocator};
//! use engine_uring::UringEngine;
//!
//! let engine = match UringEngine::new(EngineConfig::default()) {
//!     Ok(engine) => engine,
//!     Err(e) => { eprintln!("io_uring unavailable here: {e}"); return Ok(()); }
//! };
//! let dir = tempfile::tempdir()?;
//! let file = engine.open(&dir.path().join("data"), &OpenOptions::new().read(true).write(true).create(true))?;
//! let mut buf = match engine.pool() {
//!     Some(pool) => pool.alloc(4096)?,
//!     None => AlignedBuf::zeroed(4096, 4096)?,
//! };
//! buf[..5].copy_from_slice(b"hello");
//! block_on(async {
//!     let (written, _) = engine.write_all_at(&file, 0, buf).await;
//!     written?;
//!     engine.sync_data(&file).await?;
//!     let (read, back) = engine.read_exact_at(&file, 0, AlignedBuf::zeroed(5, 1)?).await;
//!     read?;
//!     assert_eq!(back.as_slice(), b"hello");
//!     Ok::<(), engine_core::Error>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod engine;
mod iopoll;
mod kernel;
mod probe;
mod ring;

pub use engine::{UringEngine, UringQueue};
pub use kernel::QueueKernel;
pub use probe::{diagnose, probe};

use engine_core::registry::{Plugin, Probe};
use engine_core::{DynBackend, EngineConfig, Result};

/// The backend's registry name.
pub const NAME: &str = "uring";

/// The registry plugin for the io_uring backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct UringPlugin;

impl Plugin for UringPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn probe(&self, config: &EngineConfig) -> Probe {
        probe::probe(config)
    }

    fn create(&self, config: &EngineConfig) -> Result<Box<dyn DynBackend>> {
        Ok(Box::new(UringEngine::new(config.clone())?))
    }
}
