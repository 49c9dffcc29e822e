//! The per-thread queue of every backend: the same slot table and lifecycle as the async API,
//! without a lock (one thread owns the queue) and without allocation per request.

use std::sync::Arc;
use std::task::Waker;

use crate::error::{Error, ErrorKind, Op, Result};
use crate::queue::Queue;
use crate::raw::common::Common;
use crate::raw::inflight::InFlight;
use crate::raw::kernel::{Kernel, Reaped};
use crate::raw::table::{Mode, SlotTable};
use crate::request::{Completion, Request};

/// Completions reaped per round.
const REAP_BATCH: usize = 64;

/// A per-thread queue over a backend's [`Kernel`]. See [`Queue`].
pub struct QueueDriver<K: Kernel> {
    common: Arc<Common>,
    table: SlotTable,
    kernel: K,
    depth: usize,
    /// Pushed and not yet reaped by the caller.
    in_flight: usize,
    /// Pushed into the kernel since the last submit.
    unsubmitted: usize,
    /// The queue API never wakes a task; the table's delivery path still wants a list.
    wakes: Vec<Waker>,
}

impl<K: Kernel> std::fmt::Debug for QueueDriver<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueDriver")
            .field("engine_id", &self.common.engine_id())
            .field("depth", &self.depth)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl<K: Kernel> QueueDriver<K> {
    /// A queue of the engine's queue depth over `kernel`.
    pub fn new(common: Arc<Common>, kernel: K) -> QueueDriver<K> {
        let depth = common.config().queue_depth.max(1);
        QueueDriver {
            table: SlotTable::new(depth, Mode::Queue),
            kernel,
            depth,
            in_flight: 0,
            unsubmitted: 0,
            wakes: Vec::new(),
            common,
        }
    }

    /// The kernel, for backend housekeeping.
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The kernel, writable, for backend housekeeping.
    pub fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }

    fn flush(&mut self) {
        self.unsubmitted += self
            .table
            .flush(&self.common, &mut self.kernel, &mut self.wakes);
        debug_assert!(self.wakes.is_empty(), "a queue woke a task");
    }

    /// Reaps every completion that is ready and pushes what that made room for.
    fn reap(&mut self) -> Result<()> {
        let mut reaped = [Reaped::default(); REAP_BATCH];
        // Bounded by what can be in flight.
        for _ in 0..=(self.depth / REAP_BATCH + 1) {
            let n = self.kernel.reap(&mut reaped);
            #[cfg(feature = "testing")]
            SlotTable::seeded_reap(&self.common, &mut reaped[..n]);
            for r in &reaped[..n] {
                self.table
                    .settle(&self.common, r.slot, r.result, &mut self.wakes);
            }
            if n < REAP_BATCH {
                break;
            }
        }
        if self.table.staged() > 0 {
            self.flush();
            self.submit_pushed()?;
        }
        Ok(())
    }

    fn submit_pushed(&mut self) -> Result<usize> {
        let count = self.unsubmitted;
        self.kernel.submit()?;
        self.unsubmitted = 0;
        Ok(count)
    }

    fn take_ready(&mut self, out: &mut Vec<Completion>) -> usize {
        let count = self.table.drain_ready(out);
        debug_assert!(
            count <= self.in_flight,
            "reaped {count} > in flight {}",
            self.in_flight
        );
        self.in_flight -= count;
        count
    }
}

impl<K: Kernel> Queue for QueueDriver<K> {
    fn depth(&self) -> usize {
        self.depth
    }

    fn kernel_ids(&self) -> Vec<u64> {
        self.kernel.kernel_ids()
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn push(&mut self, request: Request) -> std::result::Result<(), Request> {
        if self.in_flight >= self.depth {
            return Err(request);
        }
        self.in_flight += 1;
        match InFlight::admit(&self.common, request) {
            Err(completion) => self.table.push_ready(completion),
            Ok(inflight) => match self.table.try_insert(inflight) {
                Ok(_) => self.flush(),
                Err(inflight) => {
                    // Every request pushed and not reaped holds a slot or a ready completion,
                    // and fewer than `depth` are, so a slot is free: this cannot happen.
                    debug_assert!(false, "no free slot with {} in flight", self.in_flight);
                    let error = Error::new(ErrorKind::Other, Op::Submit, "no free slot");
                    let completion = inflight.fail(&self.common, error);
                    self.table.push_ready(completion);
                }
            },
        }
        Ok(())
    }

    fn submit(&mut self) -> Result<usize> {
        self.flush();
        if self.unsubmitted == 0 && self.table.staged() == 0 {
            return Ok(0);
        }
        self.submit_pushed()
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        self.submit()?;
        self.reap()?;
        Ok(self.take_ready(out))
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) -> Result<usize> {
        self.submit()?;
        let target = min.min(self.in_flight);
        self.reap()?;
        let mut got = self.take_ready(out);
        // Each round reaps at least one more kernel completion. One that does not finish its
        // request (an EINTR retried, the next piece of an exact transfer) resubmits it, a
        // bounded number of times, so the loop ends.
        while got < target {
            let in_kernel = self.kernel.in_flight();
            if in_kernel == 0 {
                // Nothing the kernel holds can complete: staged requests that no longer fit
                // a kernel with nothing in flight will never go in.
                return Err(Error::new(
                    ErrorKind::Other,
                    Op::Wait,
                    format!(
                        "{} requests wait for the kernel, which takes none with nothing in flight",
                        self.table.staged()
                    ),
                ));
            }
            self.kernel.wait((target - got).min(in_kernel))?;
            self.reap()?;
            got += self.take_ready(out);
        }
        Ok(got)
    }
}

impl<K: Kernel> Drop for QueueDriver<K> {
    fn drop(&mut self) {
        // The kernel may still use the buffers of requests it holds: wait for them before the
        // buffers go. If waiting fails, leak the buffers rather than free memory the kernel may
        // still write.
        let mut out = Vec::new();
        let mut healthy = true;
        // Each round reaps at least one kernel completion, or stops; a request resubmits a
        // bounded number of times, and past this bound the buffers are leaked instead.
        for _ in 0..=self.depth.saturating_mul(128) {
            if self.kernel.in_flight() == 0 {
                break;
            }
            if self.kernel.wait(1).is_err() || self.reap().is_err() {
                healthy = false;
                break;
            }
            out.clear();
            self.take_ready(&mut out);
        }
        if !healthy || self.kernel.in_flight() > 0 {
            self.table.take_in_flight(|_, mut inflight, in_kernel| {
                if in_kernel {
                    inflight.leak_buffer();
                }
                drop(inflight);
            });
        }
    }
}
