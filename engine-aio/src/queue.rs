//! The per-thread queue: one AIO context per queue; the owning thread submits with
//! `io_submit` and reaps with `io_getevents`. No lock, no allocation per request.

use std::collections::VecDeque;
use std::sync::Arc;

use engine_core::{Completion, Error, ErrorKind, InFlight, Op, Queue, Request, Result, Settled};

use crate::abi::{io_getevents, io_submit, IoEvent, Iocb};
use crate::context::{iocb, Context};
use crate::engine::{sync_on_thread, Shared};

/// Pointers into `AioQueue::pending`, rebuilt before every `io_submit`.
struct Pointers(Vec<*mut Iocb>);

// SAFETY: the pointers only ever point into the owning queue's `pending`, are rebuilt right
// before each use, and move with the queue, so sending the queue sends what they point to.
unsafe impl Send for Pointers {}

/// A per-thread Linux AIO queue. See [`Queue`].
///
/// With buffered (non-O_DIRECT) files, `submit` runs the requests synchronously inside
/// `io_submit`; results still arrive as completions.
pub struct AioQueue {
    shared: Arc<Shared>,
    ctx: Context,
    /// The request of each slot (the iocb's `aio_data`).
    inflight: Vec<Option<InFlight>>,
    free: Vec<u32>,
    /// Built iocbs the kernel has not accepted yet, front first.
    pending: Vec<Iocb>,
    pointers: Pointers,
    events: Vec<IoEvent>,
    /// Requests completed without reaching the kernel, not yet reaped.
    rejected: VecDeque<Completion>,
    depth: usize,
    /// Pushed and not yet reaped.
    in_flight: usize,
    /// Accepted by `io_submit` and not yet reaped.
    in_kernel: usize,
}

impl AioQueue {
    pub(crate) fn new(shared: Arc<Shared>) -> Result<AioQueue> {
        let depth = shared.config.queue_depth;
        let ctx = Context::new(depth)?;
        Ok(AioQueue {
            ctx,
            inflight: (0..depth).map(|_| None).collect(),
            free: (0..depth as u32).rev().collect(),
            pending: Vec::with_capacity(depth),
            pointers: Pointers(Vec::with_capacity(depth)),
            events: vec![IoEvent::default(); depth],
            rejected: VecDeque::with_capacity(depth),
            depth,
            in_flight: 0,
            in_kernel: 0,
            shared,
        })
    }

    /// Queues the iocb of the request in `slot`.
    fn stage(&mut self, slot: u32) {
        if let Some(inflight) = self.inflight[slot as usize].as_mut() {
            let cb = iocb(inflight, u64::from(slot), None);
            self.pending.push(cb);
        }
    }

    /// Completes the request in `slot` with `errno` without it reaching the kernel.
    fn refuse(&mut self, slot: u32, errno: i32) {
        if let Some(inflight) = self.inflight[slot as usize].take() {
            self.free.push(slot);
            let retries = inflight.retries;
            let completion = inflight.complete(Err(errno), retries, &self.shared.metrics);
            self.rejected.push_back(completion);
        }
    }

    /// `io_submit`s what is staged. A partial submit keeps the rest staged and tries again;
    /// EAGAIN (the context is full) keeps it staged until completions free room; a refused
    /// first iocb completes with its errno. Bounded by the number staged.
    fn flush(&mut self) -> usize {
        let mut accepted = 0;
        let mut rounds = self.pending.len() + 1;
        while !self.pending.is_empty() && rounds > 0 {
            rounds -= 1;
            self.pointers.0.clear();
            for cb in &mut self.pending {
                self.pointers.0.push(cb as *mut Iocb);
            }
            // SAFETY: the pointers point into `pending`, untouched during the call; each
            // iocb's buffer belongs to a request held in `inflight` until its event is reaped.
            match unsafe { io_submit(self.ctx.id, &mut self.pointers.0) } {
                Ok(0) => break,
                Ok(n) => {
                    self.pending.drain(..n);
                    accepted += n;
                    self.in_kernel += n;
                }
                Err(e) => match e.raw_os_error().unwrap_or(libc::EIO) {
                    libc::EINTR => {}
                    libc::EAGAIN => break,
                    errno => {
                        let refused = self.pending.remove(0);
                        self.refuse(refused.aio_data as u32, errno);
                    }
                },
            }
        }
        accepted
    }

    /// Reaps up to `events.len()` events, waiting for `min` of them; returns completions
    /// appended to `out`.
    fn reap(&mut self, min: usize, out: &mut Vec<Completion>) -> Result<usize> {
        let mut count = self.rejected.len();
        out.extend(self.rejected.drain(..));
        if self.in_kernel > 0 {
            let min = min.min(self.in_kernel);
            // First what the mapped ring already holds (no syscall); io_getevents only to wait.
            let mut got = self.ctx.reap_user(&mut self.events).unwrap_or(0);
            if got < min || (got == 0 && self.ctx.reap_user(&mut []).is_none()) {
                got += loop {
                    match io_getevents(
                        self.ctx.id,
                        min - got.min(min),
                        &mut self.events[got..],
                        min <= got,
                    ) {
                        Ok(n) => break n,
                        Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                        Err(e) => {
                            return Err(Error::from_io(&e, Op::Setup).with_message("io_getevents"))
                        }
                    }
                };
            }
            self.in_kernel -= got;
            for i in 0..got {
                let IoEvent { data, res, .. } = self.events[i];
                let slot = data as u32;
                let Some(inflight) = self.inflight[slot as usize].take() else {
                    debug_assert!(false, "event for empty slot {slot}");
                    continue;
                };
                match inflight.settle(
                    res,
                    self.shared.config.fault_hook.as_deref(),
                    &self.shared.metrics,
                ) {
                    Settled::Resubmit(inflight) => {
                        self.inflight[slot as usize] = Some(inflight);
                        self.stage(slot);
                    }
                    Settled::Done(completion) => {
                        self.free.push(slot);
                        out.push(completion);
                        count += 1;
                    }
                }
            }
            if !self.pending.is_empty() {
                self.flush();
            }
        }
        debug_assert!(
            count <= self.in_flight,
            "reaped {count} > in flight {}",
            self.in_flight
        );
        self.in_flight -= count;
        Ok(count)
    }
}

impl Queue for AioQueue {
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
        let shared = &*self.shared;
        let inflight = match InFlight::admit(
            shared.engine_id,
            request,
            None,
            shared.table.is_shut_down(),
            shared.config.fault_hook.as_deref(),
            &shared.metrics,
        ) {
            Ok(inflight) => inflight,
            Err(completion) => {
                self.rejected.push_back(completion);
                return Ok(());
            }
        };
        if inflight.request.kind.is_sync() && !shared.native_fsync {
            // No AIO fsync in this kernel: run it here, now, which covers exactly the writes
            // completed before it was pushed.
            self.rejected
                .push_back(sync_on_thread(inflight, &shared.metrics));
            return Ok(());
        }
        let Some(slot) = self.free.pop() else {
            // `in_flight < depth` guarantees a free slot; hand the request back if not.
            self.in_flight -= 1;
            return Err(inflight.request);
        };
        self.inflight[slot as usize] = Some(inflight);
        self.stage(slot);
        Ok(())
    }

    fn submit(&mut self) -> Result<usize> {
        Ok(self.flush())
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        self.flush();
        self.reap(0, out).unwrap_or(0)
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) -> Result<usize> {
        self.flush();
        let target = min.min(self.in_flight);
        let mut got = self.reap(0, out)?;
        // Each round waits for at least one event of a request in the kernel, so the loop
        // ends within `target` rounds; requests staged behind a full context go in as room
        // appears.
        while got < target {
            if self.in_kernel == 0 && self.rejected.is_empty() {
                if self.flush() == 0 {
                    return Err(Error::new(
                        ErrorKind::Shutdown,
                        Op::Setup,
                        "io_submit accepts nothing and nothing is in flight",
                    ));
                }
                continue;
            }
            got += self.reap(1, out)?;
        }
        Ok(got)
    }
}

impl Drop for AioQueue {
    fn drop(&mut self) {
        // Reap what the kernel holds before the buffers go; io_destroy (the context's drop)
        // would wait too, but reaping first keeps the buffers owned until their events.
        let mut out = Vec::new();
        self.pending.clear();
        while self.in_kernel > 0 {
            if self.reap(1, &mut out).is_err() {
                // Could not reap: leak the buffers rather than free memory the kernel may use.
                for held in self.inflight.iter_mut().filter_map(Option::take) {
                    if let Some(buf) = held.request.buf {
                        std::mem::forget(buf);
                    }
                }
                return;
            }
            out.clear();
        }
    }
}
