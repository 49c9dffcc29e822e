//! The per-thread queue: pushes are validated and kept locally, `submit` hands them to the
//! worker pool in one critical section, and completions come back on the queue's own list.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use engine_core::{prepare, reject, Completion, ErrorKind, Queue, Request, Result};

use crate::worker::{Job, Reply, Shared};

/// Completions delivered by workers to one queue, and whether its owner sleeps waiting.
struct Delivered {
    list: VecDeque<Completion>,
    /// The owner is asleep in `wait`: only then does a delivery need a wake-up (a futex call).
    waiting: bool,
}

/// Completions delivered by workers to one queue.
pub(crate) struct Completions {
    delivered: Mutex<Delivered>,
    ready: Condvar,
}

impl Completions {
    pub(crate) fn push(&self, completion: Completion) {
        let mut delivered = self
            .delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        delivered.list.push_back(completion);
        let wake = delivered.waiting;
        drop(delivered);
        if wake {
            self.ready.notify_one();
        }
    }
}

/// A per-thread queue on the sync backend. See [`Queue`].
///
/// Each request in flight occupies a worker thread of the engine's pool while it runs.
pub struct SyncQueue {
    shared: Arc<Shared>,
    completions: Arc<Completions>,
    /// Pushed, validated, not yet submitted.
    pending: Vec<Job>,
    /// Completed without running (failed validation), not yet reaped.
    rejected: VecDeque<Completion>,
    depth: usize,
    /// Pushed and not yet reaped.
    in_flight: usize,
}

impl SyncQueue {
    pub(crate) fn new(shared: Arc<Shared>, depth: usize) -> SyncQueue {
        SyncQueue {
            shared,
            completions: Arc::new(Completions {
                delivered: Mutex::new(Delivered {
                    list: VecDeque::with_capacity(depth),
                    waiting: false,
                }),
                ready: Condvar::new(),
            }),
            pending: Vec::with_capacity(depth),
            rejected: VecDeque::with_capacity(depth),
            depth,
            in_flight: 0,
        }
    }

    fn drain(&mut self, out: &mut Vec<Completion>) -> usize {
        let mut count = self.rejected.len();
        out.extend(self.rejected.drain(..));
        let mut delivered = self
            .completions
            .delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        count += delivered.list.len();
        out.extend(delivered.list.drain(..));
        drop(delivered);
        debug_assert!(
            count <= self.in_flight,
            "reaped {count} > in flight {}",
            self.in_flight
        );
        self.in_flight -= count;
        count
    }
}

impl Queue for SyncQueue {
    fn depth(&self) -> usize {
        self.depth
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn push(&mut self, request: Request) -> std::result::Result<(), Request> {
        if self.in_flight >= self.depth {
            return Err(request);
        }
        self.in_flight += 1;
        match prepare(self.shared.engine_id, &request) {
            Ok(prepared) => self.pending.push(Job {
                request,
                prepared,
                reply: Reply::Queue(Arc::clone(&self.completions)),
            }),
            Err(error) => {
                let completion = reject(request, None, error, &self.shared.metrics);
                self.rejected.push_back(completion);
            }
        }
        Ok(())
    }

    fn submit(&mut self) -> Result<usize> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let shut_down = self.shared.is_shut_down();
        let count = self.shared.enqueue(self.pending.drain(..));
        if shut_down {
            let error = engine_core::Error::new(
                ErrorKind::Shutdown,
                engine_core::Op::Setup,
                "the engine has shut down; the requests completed with errors",
            );
            return Err(error);
        }
        Ok(count)
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        self.drain(out)
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) -> Result<usize> {
        // A shutdown here still delivers every request as a completion, so keep going.
        let _ = self.submit();
        let target = min.min(self.in_flight);
        let mut got = self.drain(out);
        // Workers complete every accepted job, even during shutdown, so each wait below ends
        // with at least one more completion; the loop runs at most `target` times.
        while got < target {
            let mut delivered = self
                .completions
                .delivered
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            delivered.waiting = true;
            let mut delivered = self
                .completions
                .ready
                .wait_while(delivered, |d| d.list.is_empty())
                .unwrap_or_else(PoisonError::into_inner);
            delivered.waiting = false;
            drop(delivered);
            got += self.drain(out);
        }
        Ok(got)
    }
}
