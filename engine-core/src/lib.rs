//! Shared types for the multi-backend storage I/O engine.
//!
//! This crate holds what every backend shares: the aligned buffer ([`AlignedBuf`]) and the
//! traits for callers' own memory ([`IoBuf`], [`IoBufMut`]); the page allocator
//! ([`PageAllocator`], [`PagePool`]); per-file [`Geometry`] probing; the [`Request`] enum and
//! its [`Completion`]; the [`Backend`] trait and its conveniences ([`BackendExt`]); the
//! per-thread [`Queue`] trait; the one [`Error`] type; metrics; and the plugin [`registry`].
//! Backends build on [`raw`], where the request lifecycle lives. It depends on no backend.
//!
//! # The contract every backend keeps
//!
//! 1. Geometry is probed and identical across backends; misaligned memory, offset or length
//!    under O_DIRECT is rejected before submission with [`ErrorKind::Misaligned`].
//! 2. A read at or past end of file returns 0; across it, the bytes up to it;
//!    `read_exact_at` reports [`ErrorKind::UnexpectedEof`] with the count; `write_all_at`
//!    resumes short writes and reports [`ErrorKind::WriteZero`] when a write makes no
//!    progress.
//! 3. EINTR and EAGAIN are retried inside the engine; other OS errors surface once, typed,
//!    with op, file, offset and length.
//! 4. `sync_data` is fdatasync and `sync_all` is fsync; a sync covers every write that
//!    completed before it was submitted.
//! 5. After a failed sync every later sync on that file fails ([`ErrorKind::Poisoned`]) until
//!    it is reopened.
//! 6. Requests in flight have no order among themselves; strict mode rejects overlapping
//!    writes in flight ([`ErrorKind::Overlap`]).
//! 7. A full queue makes submitters wait, with bounded memory.
//! 8. Dropping a future never frees or reuses its buffer before the kernel is done with it.
//! 9. Dropping the engine completes everything in flight and joins its threads; later
//!    requests fail with [`ErrorKind::Shutdown`]; nothing hangs.
//! 10. Lengths above the kernel's single-I/O maximum are split; overflowing offsets, closed
//!     or foreign files and writes to read-only files are typed errors.
//!
//! # Examples
//!
//! ```
//! use engine_core::{AlignedBuf, PageAllocator, PagePool, PoolConfig};
//!
//! let pool = PagePool::new(PoolConfig::default())?;
//! let mut buf = pool.alloc(4096)?;
//! buf[..5].copy_from_slice(b"hello");
//! assert_eq!(buf.as_ptr() as usize % 4096, 0);
//! let copy = AlignedBuf::from_slice(&buf[..5], 512)?;
//! assert_eq!(copy.as_slice(), b"hello");
//! # Ok::<(), engine_core::Error>(())
//! ```

mod backend;
mod buf;
mod config;
mod counting;
mod error;
mod executor;
mod file;
mod geometry;
mod metadata;
mod metrics;
mod pool;
mod queue;
pub mod raw;
pub mod registry;
mod request;
#[cfg(feature = "testing")]
pub mod testing;

pub use backend::{Backend, BackendExt, Capabilities, DynBackend};
pub use buf::{AlignedBuf, IoBuf, IoBufMut};
pub use config::EngineConfig;
pub use error::{AlignTarget, Error, ErrorKind, FileRef, Misalignment, Op, Result};
pub use executor::{block_on, join_all, JoinAll};
pub use file::{File, OpenOptions};
pub use geometry::{Geometry, GeometrySource, Support, IO_BYTES_MAX};
pub use metadata::{AllocateMode, Metadata};
pub use metrics::{MetricsSnapshot, OpMetrics, LATENCY_BUCKETS};
pub use pool::{PageAllocator, PagePool, PoolConfig, PoolStats};
pub use queue::Queue;
pub use request::{Completion, Request, WriteFlags};
