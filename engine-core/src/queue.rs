//! The low-level per-thread queue: push requests that own their buffers, submit, then poll or
//! wait for completions. One thread owns a queue; it takes no lock of its own and allocates
//! nothing per operation (completions go into the caller's vector, which it can reserve once).

use crate::error::{Error, ErrorKind, Op, Result};
use crate::request::{Completion, Request};

/// A per-thread submission and completion queue.
///
/// At most [`Queue::depth`] requests are pushed and not yet reaped; [`Queue::push`] hands the
/// request back when the queue is full, and the caller reaps before pushing again (or uses
/// [`Queue::push_or_wait`]). Invalid requests are not refused at push: they complete with
/// their typed error like any other, so every pushed request yields exactly one completion.
/// After the engine shuts down, pushed requests complete with [`ErrorKind::Shutdown`]; those
/// already in flight finish normally.
pub trait Queue {
    /// The most requests pushed and not yet reaped.
    fn depth(&self) -> usize;

    /// Requests pushed and not yet reaped.
    fn in_flight(&self) -> usize;

    /// Queues a request for the next [`Queue::submit`].
    ///
    /// # Errors
    ///
    /// Hands the request back untouched when the queue is full.
    #[allow(clippy::result_large_err)]
    fn push(&mut self, request: Request) -> std::result::Result<(), Request>;

    /// Starts every pushed request; returns how many were started.
    ///
    /// # Errors
    ///
    /// The kernel interface failed; the requests stay queued.
    fn submit(&mut self) -> Result<usize>;

    /// Submits what is pushed and appends the completions that are ready, without blocking;
    /// returns how many.
    ///
    /// # Errors
    ///
    /// The kernel interface failed (for example an io_uring queue moved to another thread
    /// with requests in flight); nothing was appended.
    fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize>;

    /// Submits what is pushed, then blocks until at least `min` completions (no more than
    /// are in flight) have been appended to `out`; returns how many were appended.
    ///
    /// # Errors
    ///
    /// The kernel interface failed, or requests wait for a kernel that can take none.
    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) -> Result<usize>;

    /// The queue's own kernel objects (an io_uring ring's descriptor, an AIO context), for a
    /// sandbox that pins the calls on them ([`crate::raw::sandbox`]); empty for a queue with none.
    fn kernel_ids(&self) -> Vec<u64> {
        Vec::new()
    }

    /// Pushes `request`, first reaping completions into `out` while the queue is full.
    ///
    /// # Errors
    ///
    /// As [`Queue::wait`].
    fn push_or_wait(&mut self, request: Request, out: &mut Vec<Completion>) -> Result<()> {
        let mut request = request;
        // Each round either pushes or reaps at least one completion, which frees a place, so
        // the loop ends within `depth + 1` rounds.
        for _ in 0..=self.depth() {
            match self.push(request) {
                Ok(()) => return Ok(()),
                Err(back) => request = back,
            }
            if self.wait(1, out)? == 0 {
                break;
            }
        }
        Err(Error::new(
            ErrorKind::Other,
            Op::Wait,
            "the queue is full and nothing completes",
        ))
    }
}

impl<Q: Queue + ?Sized> Queue for Box<Q> {
    fn depth(&self) -> usize {
        (**self).depth()
    }
    fn in_flight(&self) -> usize {
        (**self).in_flight()
    }
    fn push(&mut self, request: Request) -> std::result::Result<(), Request> {
        (**self).push(request)
    }
    fn submit(&mut self) -> Result<usize> {
        (**self).submit()
    }
    fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        (**self).poll(out)
    }
    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) -> Result<usize> {
        (**self).wait(min, out)
    }
    fn kernel_ids(&self) -> Vec<u64> {
        (**self).kernel_ids()
    }
}
