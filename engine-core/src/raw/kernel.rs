//! What a backend still writes once the request lifecycle is shared: how a submission becomes
//! a kernel entry ([`Kernel::push`]), how the kernel is driven ([`Kernel::submit`],
//! [`Kernel::reap`], [`Kernel::wait`]), and how a thread waits for it without the engine's lock
//! ([`Wait`]).

use std::sync::Arc;

use crate::error::Result;
use crate::raw::inflight::Io;

/// What a kernel that completes requests on threads of its own calls after each completion it
/// makes ready to reap (see [`Kernel::notify_with`]).
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// One completion the kernel handed back: the slot of the request (the user data it was
/// submitted with) and the result, bytes transferred or a negated errno.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// The request's slot.
    pub slot: u32,
    /// Bytes transferred, or `-errno`.
    pub result: i64,
}

impl Reaped {
    /// Moves results from the front of `queue` into `out` (for a kernel that completes some
    /// requests at push, on the calling thread); returns how many.
    pub fn drain(queue: &mut std::collections::VecDeque<Reaped>, out: &mut [Reaped]) -> usize {
        let n = queue.len().min(out.len());
        for (slot, result) in out.iter_mut().zip(queue.drain(..n)) {
            *slot = result;
        }
        n
    }
}

/// A backend's kernel interface, driven by [`crate::raw::Driver`] (the async API) and
/// [`crate::raw::QueueDriver`] (the per-thread queue). Both call every method with exclusive
/// access: under the driver's lock, or from the queue's one thread.
pub trait Kernel: Send + 'static {
    /// Puts `io`, the next submission of the request in `slot`, into the submission queue.
    ///
    /// Returns false, keeping nothing, when there is no room: the request stays staged in the
    /// driver and is pushed again once completions free room. Nothing is ever dropped. A
    /// backend that runs `io` at once (a non-blocking read on the caller's thread) reports the
    /// result through [`Kernel::reap`] like any other.
    ///
    /// The buffers `io` points into (and a vectored submission's `iovec` array) stay owned by
    /// the request's slot until `slot`'s result has been reaped; the kernel may use the
    /// memory for exactly that long.
    fn push(&mut self, slot: u32, io: Io<'_>) -> bool;

    /// Hands what was pushed to the kernel. A request the kernel refuses outright comes back
    /// through [`Kernel::reap`] with its errno; one it cannot take yet (a full context) stays
    /// with the backend and goes in on a later call.
    ///
    /// # Errors
    ///
    /// The kernel interface itself failed (not one request): the driver fails every request
    /// it can no longer complete.
    fn submit(&mut self) -> Result<()>;

    /// Moves completions that are ready into `out`, without blocking; returns how many. The
    /// driver calls it again while it fills `out`.
    fn reap(&mut self, out: &mut [Reaped]) -> usize;

    /// Blocks until at least `min` completions can be reaped (fewer when fewer are in
    /// flight). Only the per-thread queue calls it, from its one thread.
    ///
    /// # Errors
    ///
    /// As [`Kernel::submit`].
    fn wait(&mut self, min: usize) -> Result<()>;

    /// Makes a thread blocked in this kernel's [`Wait::wait`] return (the async API calls it
    /// under its lock, to hand a waiting thread something else to do).
    fn wake(&mut self);

    /// Requests pushed and not yet reaped.
    fn in_flight(&self) -> usize;

    /// The kernel objects the calls of this kernel take as their first argument (an io_uring
    /// ring's descriptor, an AIO context and its eventfd), for a sandbox that pins them
    /// ([`crate::raw::sandbox`]). The default is none.
    fn kernel_ids(&self) -> Vec<u64> {
        Vec::new()
    }

    /// True when the kernel runs the `then_sync` of an [`Io::Write`] or [`Io::WriteVectored`]
    /// itself: an `fdatasync`
    /// ordered after the write (io_uring's `IOSQE_IO_LINK`; a worker's two syscalls in a row),
    /// so a [`crate::WriteFlags::SYNC_DATA_AFTER`] write is one submission. It must then
    /// report one result for the pair: the write's when it failed or was short (the sync did
    /// not run), the sync's errno when the sync failed, and otherwise the write's byte count.
    /// Kernels that return false (the default) never see `then_sync` set; the lifecycle
    /// submits the sync itself once the write has completed.
    fn links_sync(&self) -> bool {
        false
    }

    /// True when a sync made while nothing is in flight is better run as a blocking
    /// `fdatasync`/`fsync` on the thread that would wait for it: Linux AIO runs its fsync on a
    /// kernel worker, one more wake-up per sync than the syscall itself, which is how fio's
    /// libaio engine runs every sync. The async driver then runs such a sync on the
    /// [`crate::block_on`] thread that attends it, outside its lock (never on another
    /// executor's thread, whose poll must not block); a queue's kernel decides at
    /// [`Kernel::push`] on its own. The default is false.
    fn inline_idle_syncs(&self) -> bool {
        false
    }

    /// For a kernel that completes requests on threads of its own (a worker pool): keeps
    /// `notify`, to call after each completion it makes ready, and returns true. The async
    /// driver then runs no reaper thread of its own: `notify` reaps on the calling thread
    /// while some request is unattended, and otherwise returns at once (the `block_on`
    /// thread attending the request reaps it, woken from [`Wait::wait`]). For that to lose
    /// nothing, a result must be reapable before `notify` is called, and [`Kernel::reap`]
    /// must synchronize with its delivery (the pool's result list is one mutex for both).
    /// Kernels the operating system completes return false (the default).
    fn notify_with(&mut self, notify: Notify) -> bool {
        drop(notify);
        false
    }
}

/// How a thread lends itself to the kernel without the engine's lock: one thread at a time
/// (the one holding the driver's lease) waits here for completions, then reaps them under the
/// lock.
pub trait Wait: Send + Sync + 'static {
    /// Blocks until completions may be ready or [`Kernel::wake`] was called; spurious returns
    /// are fine. A kernel that completes requests on threads of its own may instead run one
    /// queued request on the calling thread.
    ///
    /// # Errors
    ///
    /// The kernel interface failed; the driver fails every request in flight.
    fn wait(&self) -> Result<()>;
}
