//! The implementer's API: what a backend (or a wrapper engine) builds on. People who only
//! call an engine never need it, and it is less stable than the crate root.
//!
//! A request's whole life has one home here:
//!
//! ```text
//!   validate ── admit ─────────── flush ───────── submit ── reap ── settle ──┬── completion
//!   (pure)      (shutdown,        (fault hook,    (Kernel)  (Kernel)  (retry, │   (errno,
//!                strict span)      Kernel::push)                      resume) │    poison,
//!                                       ▲                                     │    metrics)
//!                                       └──────── resubmission ───────────────┘
//! ```
//!
//! - [`InFlight`] is one request between admission and completion: [`validate`],
//!   [`InFlight::admit`], the fault-hook gate [`InFlight::next`], the [`Io`] the kernel is
//!   asked to do, and the settle path [`InFlight::settle`] (EINTR/EAGAIN retries, the rest of an
//!   exact transfer resumed at an aligned point, errno mapping, poisoning, metrics).
//! - One slot table per engine (async API) and per queue holds every request in flight: request
//!   and buffer, waker, result and state (staged, in the kernel, done, abandoned). A request the
//!   kernel has no room for stays staged and is pushed again as room appears; nothing is
//!   dropped.
//! - A backend writes a [`Kernel`] (how a submission becomes a kernel entry; how the kernel is
//!   submitted to, reaped and waited on) and a [`Wait`] (how a thread waits without the lock);
//!   [`Driver`] runs the async API over them and [`QueueDriver`] the per-thread queue.
//!   [`ThreadKernel`] is the kernel of [`Job`]s that run elsewhere: blocking syscalls on a
//!   worker [`Pool`], or any other [`Runner`] (another runtime's executor thread).
//! - [`Park`] is how [`crate::block_on`] lends its thread to an engine instead of waiting for a
//!   wake-up from another thread. While the kernel answers in microseconds, a future that
//!   `block_on` polls only pushes its request when other requests hold slots; the park
//!   submits everything one poll pushed at once (one `io_uring_enter` or `io_submit` for a
//!   whole `join_all` round), and reaps.

mod common;
mod driver;
pub mod hosted;
mod inflight;
mod kernel;
pub(crate) mod park;
mod pool;
mod queue;
pub mod sandbox;
mod table;

pub use crate::counting::CountingAllocator;
pub use crate::file::{FileDropped, FileRaw, WeakFile};
pub use crate::metadata::StatxBuf;
pub use crate::metrics::Metrics;
pub use common::{
    force_thread_sync, next_engine_id, open_std, simulated_setup_errno, submission_entries, Common,
};
pub use driver::{lock, Driver, Submit};
pub use inflight::{errno_is_transient, reject, validate, InFlight, Io, Next, RETRIES_MAX};
pub use kernel::{Kernel, Notify, Reaped, Wait};
pub use park::{note_completed_at_once, offer, Attendance, Park, ParkToken};
pub use pool::{Done, Job, Pool, PoolWait, Runner, Syscall, ThreadKernel};
pub use queue::QueueDriver;
