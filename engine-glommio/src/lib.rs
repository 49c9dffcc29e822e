//! The glommio backend of the storage I/O engine: requests run as glommio file operations on
//! an executor thread the engine owns.
//!
//! glommio is a thread-per-core runtime with its own io_uring rings. Its `DmaFile` (always
//! O_DIRECT) and `BufferedFile` take buffers of glommio's own type and run only inside its
//! executor; this backend gives users of any executor (and the queue API) the same trait, the
//! same semantics and the same suite, by running one glommio `LocalExecutor` on a thread of
//! its own and handing it each request through the shared lifecycle (validation, retries,
//! short transfers, sync poisoning, metrics stay in `engine-core`):
//!
//! - plain reads and writes are glommio's `read_at` and `write_at`, on a `DmaFile` for the
//!   engine's O_DIRECT files and a `BufferedFile` for the others. glommio's operations take
//!   only its own buffers, so each copies its bytes once between the request's buffer and
//!   glommio's; [`engine_core::MetricsSnapshot::copies`] counts them;
//! - `sync_data` is glommio's `fdatasync`. glommio has no fsync, so `sync_all` runs as a
//!   blocking `fsync` on the executor thread: the contract's stronger sync is kept, never
//!   weakened to fdatasync;
//! - a buffered read is first tried on the submitting thread with `preadv2(RWF_NOWAIT)`;
//! - what glommio has no operation for (vectored and flagged transfers, allocate, set_len,
//!   metadata) runs as its blocking syscall on the executor thread.
//!
//! glommio needs io_uring and a memlock limit of at least 512 KiB, and panics or fails on its
//! own without them; [`GlommioPlugin`]'s probe checks both first and says what to change.
//!
//! # Examples
//!
//! ```
//! use engine_core::{block_on, AlignedBuf, Backend, BackendExt, EngineConfig, OpenOptions};
//! use engine_glommio::GlommioEngine;
//!
//! let dir = tempfile::tempdir()?;
//! let engine = GlommioEngine::new(EngineConfig::default())?;
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
//! // The write was copied into glommio's buffer; the read most likely came from the page
//! // cache on this thread (RWF_NOWAIT), which copies nothing.
//! assert!(engine.metrics().copied_bytes >= 5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod engine;
mod host;

pub use engine::{GlommioEngine, GlommioQueue};

use engine_core::raw::simulated_setup_errno;
use engine_core::registry::uring::{diagnose, io_uring_disabled, memlock_limit};
use engine_core::registry::{Diagnosis, Plugin, Probe};
use engine_core::{DynBackend, EngineConfig, Result};

/// The backend's registry name.
pub const NAME: &str = "glommio";

/// The smallest `RLIMIT_MEMLOCK` glommio accepts (its reactor refuses to start below it).
pub const MEMLOCK_MIN: u64 = 512 * 1024;

/// The registry plugin for the glommio backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct GlommioPlugin;

impl Plugin for GlommioPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn probe(&self, config: &EngineConfig) -> Probe {
        probe(config, memlock_limit())
    }

    fn create(&self, config: &EngineConfig) -> Result<Box<dyn DynBackend>> {
        Ok(Box::new(GlommioEngine::new(config.clone())?))
    }
}

/// Whether glommio can run here, given the soft memlock limit: io_uring must be available
/// (a two-entry test ring is made and dropped) and the limit at least [`MEMLOCK_MIN`].
fn probe(config: &EngineConfig, memlock: Option<u64>) -> Probe {
    let setup = match simulated_setup_errno(config, NAME) {
        Some(errno) => Err(errno),
        None => io_uring::IoUring::new(2)
            .map(drop)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
    };
    if let Err(errno) = setup {
        let mut diagnosis = diagnose(errno, io_uring_disabled(), memlock);
        diagnosis.cause = format!("glommio needs io_uring: {}", diagnosis.cause);
        return Probe::Unavailable(diagnosis);
    }
    if let Some(limit) = memlock.filter(|&limit| limit < MEMLOCK_MIN) {
        return Probe::Unavailable(memlock_too_low(limit));
    }
    Probe::Available(format!(
        "glommio LocalExecutor on one executor thread (io_uring, memlock limit {}), queue \
         depth {}",
        memlock.map_or("unknown".to_string(), |m| if m == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            format!("{m} bytes")
        }),
        config.queue_depth
    ))
}

fn memlock_too_low(limit: u64) -> Diagnosis {
    Diagnosis {
        errno: Some(libc::ENOMEM),
        cause: format!(
            "glommio needs RLIMIT_MEMLOCK of at least {MEMLOCK_MIN} bytes and this process has \
             {limit}"
        ),
        remedy: "raise RLIMIT_MEMLOCK to 512 KiB or more (ulimit -l 512, systemd \
                 LimitMEMLOCK=, or memlock in /etc/security/limits.conf), or use another backend"
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memlock_limit_below_glommios_minimum_is_diagnosed_with_the_remedy() {
        let config = EngineConfig::default();
        match probe(&config, Some(64 * 1024)) {
            Probe::Unavailable(d) => {
                assert!(d.cause.contains("65536"), "{d}");
                assert!(d.remedy.contains("ulimit -l"), "{d}");
            }
            Probe::Available(detail) => panic!("64 KiB of memlock is too little: {detail}"),
        }
        assert!(
            matches!(probe(&config, Some(MEMLOCK_MIN)), Probe::Available(_)),
            "the minimum itself is enough"
        );
    }
}
