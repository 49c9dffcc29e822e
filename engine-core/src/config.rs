//! Engine settings shared by every backend.

use std::fmt;

use crate::error::{Error, ErrorKind, Op, Result};

/// Settings every backend accepts. Backends may read more from their own options.
#[derive(Clone)]
pub struct EngineConfig {
    /// The most requests in flight at once through the async API (and the default depth of a
    /// queue from [`crate::Backend::queue`]). Submitters wait when it is reached.
    pub queue_depth: usize,
    /// Worker threads, for backends that use them; 0 lets the backend decide.
    pub threads: usize,
    /// Strict mode: reject a write overlapping another request in flight, and a read
    /// overlapping a write in flight, with [`crate::ErrorKind::Overlap`] (contract point 6).
    pub strict: bool,
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
    /// Test switches (the fault hook, simulated setup failures), with the `testing` feature.
    #[cfg(feature = "testing")]
    pub testing: crate::testing::Testing,
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
            sqpoll_idle_ms: None,
            iopoll: false,
            register_buffers_bytes: EngineConfig::REGISTER_BUFFERS_DEFAULT,
            restricted: false,
            inline: false,
            #[cfg(feature = "testing")]
            testing: crate::testing::Testing::default(),
        }
    }
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("queue_depth", &self.queue_depth)
            .field("threads", &self.threads)
            .field("strict", &self.strict)
            .field("sqpoll_idle_ms", &self.sqpoll_idle_ms)
            .field("iopoll", &self.iopoll)
            .field("register_buffers_bytes", &self.register_buffers_bytes)
            .field("restricted", &self.restricted)
            .field("inline", &self.inline)
            .finish_non_exhaustive()
    }
}
