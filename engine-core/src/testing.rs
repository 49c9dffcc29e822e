//! Test switches, behind the `testing` feature: the fault hook every engine consults before
//! each submission, simulated setup failures and seeded bookkeeping bugs. Production builds
//! compile none of it.

use std::sync::Arc;

use crate::error::Op;
use crate::file::File;

/// What an installed [`FaultHook`] makes the engine do instead of the real submission.
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

/// A hook consulted before each submission of each request, on every backend, in the shared
/// lifecycle (`engine_core::raw::InFlight::next`), on the thread that submits.
///
/// It exists so the conformance suite can prove short-transfer loops, retries and sticky sync
/// failure against real backends; the fault-injecting wrapper engine builds on it.
pub trait FaultHook: Send + Sync {
    /// Decides the fate of one submission. `attempt` counts EINTR/EAGAIN retries of the same
    /// submission, from 0; `offset` and `len` are the submission's (the rest of an exact
    /// transfer has its own).
    fn before(
        &self,
        op: Op,
        file: &File,
        offset: u64,
        len: usize,
        attempt: u32,
    ) -> Option<FaultAction>;
}

/// A seeded bug in the engine's own request bookkeeping, for the conformance suite's mutant
/// catalogue: the suite must catch each one on every backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// Every `n`th submission is marked as in the kernel without reaching it: a lost SQE or
    /// iocb. Its request never completes.
    LoseSubmission(u32),
    /// Two completions reaped together are delivered to each other's slots.
    SwapCompletions,
    /// A read completes as soon as it is pushed, with the whole length, before the kernel
    /// has put the data in its buffer (the buffer handed back too early). The kernel is never
    /// given the read, so no memory is touched after the hand-back.
    CompleteReadsAtPush,
}

/// The test switches of an [`crate::EngineConfig`].
#[derive(Clone, Default)]
pub struct Testing {
    /// The fault hook, if any.
    pub fault_hook: Option<Arc<dyn FaultHook>>,
    /// Backends whose setup fails with this errno, as if the kernel refused it (by backend
    /// name): their probe reports the diagnosis of that errno.
    pub setup_errno: Vec<(&'static str, i32)>,
    /// Backends with a kernel fsync run syncs on their thread fallback instead, as on kernels
    /// without it (Linux AIO before 4.18).
    pub force_thread_sync: bool,
    /// A seeded bug in the request bookkeeping, if any.
    pub mutation: Option<Mutation>,
    /// Backends with a submission ring or context size it to this many entries instead of
    /// the queue depth (io_uring's SQ, the AIO context), so it fills up long before the slot
    /// table does.
    pub submission_entries: Option<u32>,
}

impl Testing {
    /// The simulated setup errno of `backend`, if any.
    pub fn setup_errno(&self, backend: &str) -> Option<i32> {
        self.setup_errno
            .iter()
            .find(|(name, _)| *name == backend)
            .map(|&(_, errno)| errno)
    }
}

impl std::fmt::Debug for Testing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Testing")
            .field("fault_hook", &self.fault_hook.is_some())
            .field("setup_errno", &self.setup_errno)
            .field("force_thread_sync", &self.force_thread_sync)
            .field("mutation", &self.mutation)
            .field("submission_entries", &self.submission_entries)
            .finish()
    }
}
