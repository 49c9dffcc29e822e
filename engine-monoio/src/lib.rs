//! The monoio backend of the storage I/O engine: requests run as monoio file operations on an
//! executor thread the engine owns.
//!
//! monoio is a thread-per-core runtime with its own io_uring. Its `File` takes buffers it
//! owns and runs only inside its runtime; this backend gives users of any executor (and the
//! queue API) the same trait, the same semantics and the same suite, by running one monoio
//! runtime on a thread of its own and handing it each request through the shared lifecycle
//! (validation, retries, short transfers, sync poisoning, metrics stay in `engine-core`):
//!
//! - plain reads and writes and both syncs are monoio's `read_at`, `write_at`, `sync_data` and
//!   `sync_all`, reading into and writing from the request's own buffer (no copy);
//! - a buffered read is first tried on the submitting thread with `preadv2(RWF_NOWAIT)`;
//! - what monoio has no operation for (vectored and flagged transfers, allocate, set_len,
//!   metadata) runs as its blocking syscall on the executor thread.
//!
//! monoio picks its io_uring driver when the kernel allows it and its legacy (epoll) driver
//! otherwise; [`MonoioEngine::with_driver`] forces one. The backend enables monoio's `sync`
//! feature: the executor is woken from the threads that submit.
//!
//! # Examples
//!
//! ```
//! use engine_core::{block_on, AlignedBuf, Backend, BackendExt, EngineConfig, OpenOptions};
//! use engine_monoio::MonoioEngine;
//!
//! let dir = tempfile::tempdir()?;
//! let engine = MonoioEngine::new(EngineConfig::default())?;
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

mod engine;
mod host;

pub use engine::{MonoioEngine, MonoioQueue};
pub use host::{DriverChoice, DriverKind};

use engine_core::registry::{Plugin, Probe};
use engine_core::{DynBackend, EngineConfig, Result};

/// The backend's registry name.
pub const NAME: &str = "monoio";

/// The registry plugin for the monoio backend. It runs wherever threads do: without io_uring,
/// monoio uses its legacy driver, and the probe says so.
#[derive(Clone, Copy, Debug, Default)]
pub struct MonoioPlugin;

impl Plugin for MonoioPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn probe(&self, config: &EngineConfig) -> Probe {
        let driver = if monoio::utils::detect_uring() {
            "its io_uring driver"
        } else {
            "its legacy (epoll) driver, as io_uring is unavailable here or \
             MONOIO_FORCE_LEGACY_DRIVER is set"
        };
        Probe::Available(format!(
            "monoio with {driver} on one executor thread, queue depth {}",
            config.queue_depth
        ))
    }

    fn create(&self, config: &EngineConfig) -> Result<Box<dyn DynBackend>> {
        Ok(Box::new(MonoioEngine::new(config.clone())?))
    }
}
