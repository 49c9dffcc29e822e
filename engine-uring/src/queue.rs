//! The per-thread queue: one ring per queue, owned by the one thread that submits and reaps
//! (SINGLE_ISSUER and DEFER_TASKRUN where the kernel has them). No lock, no allocation per
//! request: in-flight requests live in a table sized to the depth, indexed by user data.

use std::collections::VecDeque;
use std::sync::Arc;

use engine_core::{
    Completion, Error, ErrorKind, File, InFlight, Op, Queue, Request, Result, Settled,
};

use crate::engine::Shared;
use crate::ring::{self, entry, errno, Fixed, Ring, Use, FILES_MAX};

/// A per-thread io_uring queue. See [`Queue`].
///
/// Its ring is bound to the thread that first submits on it; use it from that thread only
/// (the kernel refuses other threads with `EEXIST` when SINGLE_ISSUER is in effect).
pub struct UringQueue {
    shared: Arc<Shared>,
    ring: Ring,
    /// The request of each in-flight slot.
    inflight: Vec<Option<InFlight>>,
    free: Vec<u32>,
    /// Requests completed without reaching the kernel, not yet reaped.
    rejected: VecDeque<Completion>,
    /// For each registered-file slot, the id of the file registered there (0: none).
    files: Vec<u64>,
    depth: usize,
    /// Pushed and not yet reaped.
    in_flight: usize,
    /// SQEs pushed and not yet submitted.
    unsubmitted: usize,
}

impl UringQueue {
    pub(crate) fn new(shared: Arc<Shared>) -> Result<UringQueue> {
        let depth = shared.config.queue_depth;
        // Twice the depth: under SQPOLL the kernel moves the SQ head only after a batch, so
        // entries of completed requests can still occupy the ring.
        let entries = (2 * depth).next_power_of_two() as u32;
        let (ring, _) = Ring::new(
            entries,
            &shared.config,
            Use::PerThread,
            shared.pool.as_ref(),
        )?;
        let files = if ring.fixed_files {
            vec![0; FILES_MAX as usize]
        } else {
            Vec::new()
        };
        Ok(UringQueue {
            ring,
            inflight: (0..depth).map(|_| None).collect(),
            free: (0..depth as u32).rev().collect(),
            rejected: VecDeque::with_capacity(depth),
            files,
            depth,
            in_flight: 0,
            unsubmitted: 0,
            shared,
        })
    }

    /// The ring flags the kernel accepted for this queue.
    pub fn flags(&self) -> &[&'static str] {
        &self.ring.flags
    }

    /// The fixed-file slot of `file` in this ring, registering it on first use.
    fn fixed_file(&mut self, file: &File) -> Option<u32> {
        let index = file.backend_index();
        if index == 0 || file.engine_id() != self.shared.engine_id {
            return None;
        }
        let slot = index - 1;
        let registered = self.files.get_mut(slot as usize)?;
        if *registered != file.id() {
            self.ring.register_fd(slot, file.raw_fd()).ok()?;
            *registered = file.id();
        }
        Some(slot)
    }

    /// Pushes the SQE of the request in `slot`. Returns false, leaving the request in its
    /// slot, when no room appears in the submission queue.
    fn push_sqe(&mut self, slot: u32) -> bool {
        let Some(inflight) = self.inflight[slot as usize].as_mut() else {
            return false;
        };
        let file = inflight.request.file.clone();
        let fixed = Fixed {
            file: self.fixed_file(&file),
            pool: self.ring.fixed_pool,
        };
        let Some(inflight) = self.inflight[slot as usize].as_mut() else {
            return false;
        };
        let sqe = entry(inflight, fixed, u64::from(slot));
        for _ in 0..ring::PUSH_ATTEMPTS_MAX {
            let mut sq = self.ring.ring.submission();
            // SAFETY: the SQE's buffer and file belong to the request held in `inflight` until
            // its CQE is reaped.
            if unsafe { sq.push(&sqe) }.is_ok() {
                self.unsubmitted += 1;
                return true;
            }
            drop(sq);
            let _ = self.ring.enable();
            ring::make_room(&self.ring.ring);
        }
        false
    }

    /// Fails the request in `slot` that could not be pushed, as a completion.
    fn fail_unpushed(&mut self, slot: u32) {
        if let Some(held) = self.inflight[slot as usize].take() {
            self.free.push(slot);
            let error = held
                .request
                .file
                .error(ErrorKind::Other, held.request.kind.op())
                .with_errno(libc::EBUSY)
                .with_message("the submission queue stayed full");
            self.rejected
                .push_back(held.reject(error, &self.shared.metrics));
        }
    }

    fn enter(&mut self, want: usize) -> std::io::Result<()> {
        self.ring.enable()?;
        loop {
            match self.ring.ring.submit_and_wait(want) {
                Ok(_) => {
                    self.unsubmitted = 0;
                    return Ok(());
                }
                Err(e) if errno(&e) == libc::EINTR => {}
                Err(e) if errno(&e) == libc::EBUSY || errno(&e) == libc::EAGAIN => {
                    // Completions are waiting to be reaped first; the caller reaps and retries.
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves ready CQEs into `out`, resubmitting EINTR/EAGAIN. Bounded by the CQ size.
    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let mut count = self.rejected.len();
        out.extend(self.rejected.drain(..));
        let mut resubmit = false;
        let cq = self.ring.ring.completion();
        let mut reaped: [(u32, i32); 64] = [(0, 0); 64];
        let mut n = 0;
        for cqe in cq.take(reaped.len()) {
            reaped[n] = (cqe.user_data() as u32, cqe.result());
            n += 1;
        }
        for &(slot, res) in &reaped[..n] {
            let Some(inflight) = self.inflight[slot as usize].take() else {
                debug_assert!(false, "CQE for empty slot {slot}");
                continue;
            };
            match inflight.settle(
                i64::from(res),
                self.shared.config.fault_hook.as_deref(),
                &self.shared.metrics,
            ) {
                Settled::Resubmit(inflight) => {
                    self.inflight[slot as usize] = Some(inflight);
                    if self.push_sqe(slot) {
                        resubmit = true;
                    } else {
                        self.fail_unpushed(slot);
                    }
                }
                Settled::Done(completion) => {
                    self.free.push(slot);
                    out.push(completion);
                    count += 1;
                }
            }
        }
        if resubmit {
            let _ = self.enter(0);
        }
        debug_assert!(
            count <= self.in_flight,
            "reaped {count} > in flight {}",
            self.in_flight
        );
        self.in_flight -= count;
        count
    }
}

impl Queue for UringQueue {
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
        let refused = ring::iopoll_refuses(&shared.config, &request);
        let inflight = match InFlight::admit(
            shared.engine_id,
            request,
            refused,
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
        let Some(slot) = self.free.pop() else {
            // `in_flight < depth` guarantees a free slot; refuse rather than panic if not.
            self.in_flight -= 1;
            return Err(inflight.request);
        };
        self.inflight[slot as usize] = Some(inflight);
        self.push_sqe(slot);
        Ok(())
    }

    fn submit(&mut self) -> Result<usize> {
        let count = self.unsubmitted;
        if count == 0 {
            return Ok(0);
        }
        self.enter(0)
            .map_err(|e| Error::from_io(&e, Op::Setup).with_message("io_uring_enter"))?;
        Ok(count)
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        // Deferred task work only runs inside an enter, so enter when the kernel says some is
        // waiting or SQEs are queued; otherwise just read the CQ.
        if self.unsubmitted > 0 || self.ring.ring.submission().taskrun() {
            let _ = self.enter(0);
        }
        self.reap(out)
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) -> Result<usize> {
        let target = min.min(self.in_flight);
        let mut got = self.reap(out);
        // Each round waits for at least one more completion of a request in flight, so the
        // loop ends within `target` rounds.
        while got < target {
            let in_kernel = self.in_flight - self.rejected.len();
            let want = (target - got).min(in_kernel);
            self.enter(want)
                .map_err(|e| Error::from_io(&e, Op::Setup).with_message("io_uring_enter"))?;
            got += self.reap(out);
        }
        Ok(got)
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // The kernel may still write into buffers of requests in flight: wait for them before
        // the ring and the buffers go. If waiting fails, leak the buffers rather than free
        // memory the kernel may still use.
        let mut out = Vec::new();
        let mut rounds = 0;
        while self.in_flight > self.rejected.len() && rounds < 1_000_000 {
            rounds += 1;
            if self.enter(1).is_err() {
                break;
            }
            self.reap(&mut out);
            out.clear();
        }
        for held in self.inflight.iter_mut().filter_map(Option::take) {
            if let Some(buf) = held.request.buf {
                std::mem::forget(buf);
            }
        }
    }
}
