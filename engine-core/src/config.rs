//! Engine settings shared by every backend, and the test-only fault hook.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Op, Result};
use crate::file::File;
use crate::request::OpKind;

/// What an installed [`FaultHook`] makes the backend do instead of the real operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Fail with this errno without touching the file. `EINTR` and `EAGAIN` are retried by
    /// the engine like real ones.
    Fail(i32),
    /// Transfer at most this many bytes (a short read or write).
    Short(usize),
    /// A torn write: transfer at most `persist` bytes, then fail with `errno` anyway, as a
    /// device that lost power part-way would.
    Torn {
        /// Bytes that reach the file.
        persist: usize,
        /// The error reported.
        errno: i32,
    },
}

/// A test hook consulted before each operation reaches the OS.
///
/// It exists so the conformance suite can prove short-transfer loops, retries and sticky sync
/// failure against real backends; a deterministic fault-injecting wrapper engine builds on the
/// same idea. Production code leaves it unset, which costs one branch per operation.
pub trait FaultHook: Send + Sync {
    /// Decides the fate of one attempt of an operation. `attempt` counts retries of the same
    /// request, from 0.
    fn before(
        &self,
        kind: OpKind,
        file: &File,
        offset: u64,
        len: usize,
        attempt: u32,
    ) -> Option<FaultAction>;
}

/// Settings every backend accepts. Backends may read more from their own options.
#[derive(Clone)]
pub struct EngineConfig {
    /// The most requests in flight at once through the async API (and the default depth of a
    /// queue from [`crate::Engine::queue`]). Submitters wait when it is reached.
    pub queue_depth: usize,
    /// Worker threads, for backends that use them; 0 lets the backend decide.
    pub threads: usize,
    /// Strict mode: reject a write overlapping another request in flight, and a read
    /// overlapping a write in flight, with [`crate::ErrorKind::Overlap`] (contract point 6).
    pub strict: bool,
    /// The test-only fault hook.
    pub fault_hook: Option<Arc<dyn FaultHook>>,
    /// Kernel-side submission polling with this idle time in milliseconds (io_uring
    /// `SQPOLL`); `None` submits with a syscall.
    pub sqpoll_idle_ms: Option<u32>,
    /// Polled completions (io_uring `IOPOLL`): only for O_DIRECT files on devices whose queue
    /// supports polling; syncs cannot be polled and are refused.
    pub iopoll: bool,
    /// Size of the page pool a backend registers with the kernel (io_uring fixed buffers);
    /// 0 registers nothing.
    pub register_buffers_bytes: usize,
    /// Restricted mode (io_uring `R_DISABLED` + `REGISTER_RESTRICTIONS`): the ring accepts only
    /// reads, writes and fsyncs on registered files, for sandboxed processes.
    pub restricted: bool,
    /// Run each request on the thread that submits it, with no worker pool (the sync
    /// backend): no hand-off between threads, and no parallelism inside one queue, like fio's
    /// psync. For cached data, or one queue per thread.
    pub inline: bool,
}

impl EngineConfig {
    /// The default queue depth.
    pub const QUEUE_DEPTH_DEFAULT: usize = 128;
    /// The largest queue depth accepted.
    pub const QUEUE_DEPTH_MAX: usize = 32768;
    /// The largest number of worker threads accepted.
    pub const THREADS_MAX: usize = 1024;
    /// The default size of a registered page pool: 32 MiB.
    pub const REGISTER_BUFFERS_DEFAULT: usize = 32 << 20;

    /// Checks the limits every backend shares, before it builds anything.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a queue depth of 0 or above [`Self::QUEUE_DEPTH_MAX`], or
    /// more than [`Self::THREADS_MAX`] threads.
    pub fn validate(&self) -> Result<()> {
        if self.queue_depth == 0 || self.queue_depth > Self::QUEUE_DEPTH_MAX {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                Op::Setup,
                format!(
                    "queue depth {} is outside 1..={}",
                    self.queue_depth,
                    Self::QUEUE_DEPTH_MAX
                ),
            ));
        }
        if self.threads > Self::THREADS_MAX {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                Op::Setup,
                format!(
                    "{} threads is more than the maximum {}",
                    self.threads,
                    Self::THREADS_MAX
                ),
            ));
        }
        Ok(())
    }
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            queue_depth: EngineConfig::QUEUE_DEPTH_DEFAULT,
            threads: 0,
            strict: false,
            fault_hook: None,
            sqpoll_idle_ms: None,
            iopoll: false,
            register_buffers_bytes: EngineConfig::REGISTER_BUFFERS_DEFAULT,
            restricted: false,
            inline: false,
        }
    }
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("queue_depth", &self.queue_depth)
            .field("threads", &self.threads)
            .field("strict", &self.strict)
            .field("fault_hook", &self.fault_hook.is_some())
            .field("sqpoll_idle_ms", &self.sqpoll_idle_ms)
            .field("iopoll", &self.iopoll)
            .field("register_buffers_bytes", &self.register_buffers_bytes)
            .field("restricted", &self.restricted)
            .field("inline", &self.inline)
            .finish()
    }
}
