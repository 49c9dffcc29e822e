//! The one table of requests in flight, used by both APIs on every backend: one slot per
//! request, holding the request (buffer included), its waker and its result, in one of the
//! states free, reserved, staged (admitted, waiting for room in the kernel), in the kernel, or
//! done. A request whose future was dropped is marked abandoned: its completion, buffer
//! included, is dropped only when the kernel has finished with it (contract point 8).
//!
//! The async API's table also keeps the tasks waiting for a free slot, and hands each freed
//! slot to exactly one of them, in arrival order; the queue API's table keeps the completions
//! ready to be reaped.

use std::collections::VecDeque;
use std::task::Waker;

use crate::raw::common::Common;
use crate::raw::inflight::{InFlight, Next};
use crate::raw::kernel::Kernel;
use crate::request::Completion;

/// Which API the table serves: where completions go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The async API: a completion waits in its slot for its future.
    Async,
    /// The queue API: a completion goes to the ready list and its slot is freed at once.
    Queue,
}

#[derive(Debug)]
enum State {
    Free,
    /// Given to a task that waited for it, not yet filled.
    Reserved,
    Staged(InFlight),
    InKernel(InFlight),
    Done(Completion),
}

#[derive(Debug)]
struct Slot {
    state: State,
    waker: Option<Waker>,
    /// The future was dropped: the completion is dropped when it arrives.
    abandoned: bool,
    /// Counted in [`SlotTable::unattended`]: nobody who will reap is waiting for this slot.
    unattended: bool,
}

/// A task waiting for a free slot.
#[derive(Debug, Default)]
struct Waiter {
    waker: Option<Waker>,
    granted: Option<u32>,
    generation: u32,
    queued: bool,
}

/// A task's place in the line for a free slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    index: u32,
    generation: u32,
}

/// The slots of one engine (async API) or one queue.
#[derive(Debug)]
pub(crate) struct SlotTable {
    mode: Mode,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Admitted requests the kernel has not taken yet, oldest first (TigerBeetle's
    /// `unqueued`): pushed again as completions free room, never dropped.
    staged: VecDeque<u32>,
    in_kernel: usize,
    /// Slots in flight that nobody will reap on their own: their futures were polled by
    /// threads that do not drive this engine, or dropped. The async engine's reaper works
    /// while this is above zero.
    unattended: usize,
    /// Queue API: completions not yet reaped by the caller.
    ready: VecDeque<Completion>,
    /// Submissions pushed so far (for the `testing` feature's seeded bugs).
    #[cfg(feature = "testing")]
    pushes: u32,
    waiters: Vec<Waiter>,
    waiters_free: Vec<u32>,
    line: VecDeque<u32>,
}

impl SlotTable {
    /// A table of `depth` slots (at least one).
    pub(crate) fn new(depth: usize, mode: Mode) -> SlotTable {
        let depth = depth.clamp(1, u32::MAX as usize);
        SlotTable {
            mode,
            slots: (0..depth)
                .map(|_| Slot {
                    state: State::Free,
                    waker: None,
                    abandoned: false,
                    unattended: false,
                })
                .collect(),
            free: (0..depth as u32).rev().collect(),
            staged: VecDeque::with_capacity(depth),
            in_kernel: 0,
            unattended: 0,
            ready: VecDeque::with_capacity(if mode == Mode::Queue { depth } else { 0 }),
            #[cfg(feature = "testing")]
            pushes: 0,
            waiters: Vec::new(),
            waiters_free: Vec::new(),
            line: VecDeque::new(),
        }
    }

    /// The number of slots.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots taken: reserved, staged, in the kernel, or done and not yet taken.
    pub(crate) fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Requests the kernel holds.
    pub(crate) fn in_kernel(&self) -> usize {
        self.in_kernel
    }

    /// Requests admitted and not yet taken by the kernel.
    pub(crate) fn staged(&self) -> usize {
        self.staged.len()
    }

    /// Slots in flight that only a reaper will complete.
    pub(crate) fn unattended(&self) -> usize {
        self.unattended
    }

    /// Takes a free slot for `inflight`, unless none is free or tasks are waiting for one
    /// (they come first).
    #[allow(clippy::result_large_err)]
    pub(crate) fn try_insert(&mut self, inflight: InFlight) -> Result<u32, InFlight> {
        if !self.line.is_empty() {
            return Err(inflight);
        }
        match self.free.pop() {
            Some(slot) => {
                self.fill(slot, inflight);
                Ok(slot)
            }
            None => Err(inflight),
        }
    }

    /// Puts an admitted request in a free or reserved slot, staged for the kernel.
    pub(crate) fn fill(&mut self, slot: u32, inflight: InFlight) {
        let entry = &mut self.slots[slot as usize];
        debug_assert!(
            matches!(entry.state, State::Free | State::Reserved),
            "slot {slot} filled while {:?}",
            entry.state
        );
        entry.state = State::Staged(inflight);
        entry.abandoned = false;
        entry.unattended = false;
        entry.waker = None;
        self.staged.push_back(slot);
    }

    /// Waits in line for a slot: returns a reserved slot when one is free (now, or granted to
    /// this ticket since the last call), or records `waker` to be woken when one is.
    pub(crate) fn wait_for_slot(
        &mut self,
        ticket: &mut Option<Ticket>,
        waker: &Waker,
    ) -> Option<u32> {
        match *ticket {
            None => {
                if self.line.is_empty() {
                    if let Some(slot) = self.free.pop() {
                        self.slots[slot as usize].state = State::Reserved;
                        return Some(slot);
                    }
                }
                let index = match self.waiters_free.pop() {
                    Some(index) => index,
                    None => {
                        self.waiters.push(Waiter::default());
                        (self.waiters.len() - 1) as u32
                    }
                };
                let waiter = &mut self.waiters[index as usize];
                waiter.waker = Some(waker.clone());
                waiter.granted = None;
                waiter.queued = true;
                self.line.push_back(index);
                *ticket = Some(Ticket {
                    index,
                    generation: waiter.generation,
                });
                None
            }
            Some(t) => {
                let waiter = &mut self.waiters[t.index as usize];
                debug_assert_eq!(waiter.generation, t.generation, "stale ticket");
                if let Some(slot) = waiter.granted.take() {
                    self.retire(t);
                    *ticket = None;
                    return Some(slot);
                }
                match &mut waiter.waker {
                    Some(w) if w.will_wake(waker) => {}
                    other => *other = Some(waker.clone()),
                }
                None
            }
        }
    }

    /// Leaves the line (the task's future was dropped); a slot already granted to it goes to
    /// the next in line, or back to the free list.
    pub(crate) fn cancel_wait(&mut self, ticket: Ticket, wakes: &mut Vec<Waker>) {
        let waiter = &mut self.waiters[ticket.index as usize];
        debug_assert_eq!(waiter.generation, ticket.generation, "stale ticket");
        let granted = waiter.granted.take();
        if waiter.queued {
            if let Some(at) = self.line.iter().position(|&i| i == ticket.index) {
                self.line.remove(at);
            }
        }
        self.retire(ticket);
        if let Some(slot) = granted {
            self.free_slot(slot, wakes);
        }
    }

    fn retire(&mut self, ticket: Ticket) {
        let waiter = &mut self.waiters[ticket.index as usize];
        waiter.waker = None;
        waiter.granted = None;
        waiter.queued = false;
        waiter.generation = waiter.generation.wrapping_add(1);
        self.waiters_free.push(ticket.index);
    }

    /// Frees `slot`: it goes to the first task in line (woken, exactly one), or to the free
    /// list.
    pub(crate) fn free_slot(&mut self, slot: u32, wakes: &mut Vec<Waker>) {
        let entry = &mut self.slots[slot as usize];
        debug_assert!(
            !matches!(entry.state, State::Staged(_) | State::InKernel(_)),
            "slot {slot} freed while in flight"
        );
        entry.waker = None;
        entry.abandoned = false;
        entry.unattended = false;
        match self.line.pop_front() {
            Some(index) => {
                entry.state = State::Reserved;
                let waiter = &mut self.waiters[index as usize];
                waiter.queued = false;
                waiter.granted = Some(slot);
                if let Some(waker) = waiter.waker.take() {
                    wakes.push(waker);
                }
            }
            None => {
                entry.state = State::Free;
                self.free.push(slot);
            }
        }
    }

    /// Pushes staged requests into the kernel, oldest first, until it is full. A request the
    /// fault hook completes without the kernel is settled here. Returns how many were pushed.
    pub(crate) fn flush<K: Kernel>(
        &mut self,
        common: &Common,
        kernel: &mut K,
        wakes: &mut Vec<Waker>,
    ) -> usize {
        let mut pushed = 0;
        // Each round pushes one request, finishes one, or stops: bounded by the staged count
        // plus the resubmissions of requests finished here (at most RETRIES_MAX each).
        while let Some(&slot) = self.staged.front() {
            let entry = &mut self.slots[slot as usize];
            #[allow(unused_mut)]
            let State::Staged(mut inflight) = std::mem::replace(&mut entry.state, State::Free) else {
                debug_assert!(false, "slot {slot} staged while {:?}", entry.state);
                self.staged.pop_front();
                continue;
            };
            match inflight.next(common) {
                Next::Complete(res) => {
                    // Settled without the kernel: retried (it stays at the front) or done.
                    match inflight.settle(common, res) {
                        Ok(again) => self.slots[slot as usize].state = State::Staged(again),
                        Err(completion) => {
                            self.staged.pop_front();
                            self.deliver(slot, completion, wakes);
                        }
                    }
                }
                Next::Submit => {
                    #[cfg(feature = "testing")]
                    let mut inflight = match self.seeded_push(common, slot, inflight, wakes) {
                        Ok(()) => {
                            pushed += 1;
                            continue;
                        }
                        Err(inflight) => inflight,
                    };
                    let links = kernel.links_sync() && !common.hooks_faults();
                    if kernel.push(slot, inflight.io_for(links)) {
                        self.staged.pop_front();
                        self.slots[slot as usize].state = State::InKernel(inflight);
                        self.in_kernel += 1;
                        pushed += 1;
                    } else {
                        self.slots[slot as usize].state = State::Staged(inflight);
                        break;
                    }
                }
            }
        }
        pushed
    }

    /// The `testing` feature's seeded bugs at push: takes the request (lost, or completed
    /// early) and returns `Ok`, or hands it back when no seeded bug applies.
    #[cfg(feature = "testing")]
    #[allow(clippy::result_large_err)]
    fn seeded_push(
        &mut self,
        common: &Common,
        slot: u32,
        inflight: InFlight,
        wakes: &mut Vec<Waker>,
    ) -> Result<(), InFlight> {
        use crate::testing::Mutation;
        let Some(mutation) = common.mutation() else {
            return Err(inflight);
        };
        self.pushes = self.pushes.wrapping_add(1);
        let taken = match mutation {
            Mutation::LoseSubmission(every) => every > 0 && self.pushes % every == 0,
            Mutation::CompleteReadsAtPush => inflight.op() == crate::error::Op::Read,
            Mutation::SwapCompletions => false,
        };
        if !taken {
            return Err(inflight);
        }
        self.staged.pop_front();
        if let Mutation::LoseSubmission(_) = mutation {
            // In the kernel, as far as the table knows: it will never complete.
            self.slots[slot as usize].state = State::InKernel(inflight);
            self.in_kernel += 1;
            return Ok(());
        }
        let len = inflight.len() as i64;
        match inflight.settle(common, len) {
            Ok(again) => {
                self.slots[slot as usize].state = State::Staged(again);
                self.staged.push_front(slot);
            }
            Err(completion) => self.deliver(slot, completion, wakes),
        }
        Ok(())
    }

    /// The `testing` feature's slot mix-up: swaps the slots of reaped completions in pairs.
    #[cfg(feature = "testing")]
    pub(crate) fn seeded_reap(common: &Common, reaped: &mut [crate::raw::kernel::Reaped]) {
        if common.mutation() == Some(crate::testing::Mutation::SwapCompletions) {
            for pair in reaped.chunks_exact_mut(2) {
                let slot = pair[0].slot;
                pair[0].slot = pair[1].slot;
                pair[1].slot = slot;
            }
        }
    }

    /// Settles the kernel's result for `slot`: a resubmission goes to the front of the staged
    /// line, a completion is delivered.
    pub(crate) fn settle(
        &mut self,
        common: &Common,
        slot: u32,
        result: i64,
        wakes: &mut Vec<Waker>,
    ) {
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            debug_assert!(false, "completion for slot {slot} past the table");
            return;
        };
        let State::InKernel(inflight) = std::mem::replace(&mut entry.state, State::Free) else {
            debug_assert!(false, "completion for slot {slot} while {:?}", entry.state);
            return;
        };
        self.in_kernel -= 1;
        match inflight.settle(common, result) {
            Ok(again) => {
                self.slots[slot as usize].state = State::Staged(again);
                self.staged.push_front(slot);
            }
            Err(completion) => self.deliver(slot, completion, wakes),
        }
    }

    fn deliver(&mut self, slot: u32, completion: Completion, wakes: &mut Vec<Waker>) {
        let entry = &mut self.slots[slot as usize];
        if entry.unattended {
            entry.unattended = false;
            self.unattended -= 1;
        }
        match self.mode {
            Mode::Queue => {
                self.ready.push_back(completion);
                self.free_slot(slot, wakes);
            }
            Mode::Async if entry.abandoned => {
                // The kernel is done with the buffer: now it may go.
                drop(completion);
                self.free_slot(slot, wakes);
            }
            Mode::Async => {
                entry.state = State::Done(completion);
                if let Some(waker) = entry.waker.take() {
                    wakes.push(waker);
                }
            }
        }
    }

    /// The async API: takes `slot`'s completion if it is done, freeing the slot.
    pub(crate) fn take_done(&mut self, slot: u32, wakes: &mut Vec<Waker>) -> Option<Completion> {
        let entry = &mut self.slots[slot as usize];
        if !matches!(entry.state, State::Done(_)) {
            return None;
        }
        let State::Done(completion) = std::mem::replace(&mut entry.state, State::Free) else {
            return None;
        };
        self.free_slot(slot, wakes);
        Some(completion)
    }

    /// The async API: records `waker` for `slot`, still in flight. `attended` says whether
    /// the polling thread will reap this engine itself; otherwise the slot counts as
    /// unattended, for the reaper.
    pub(crate) fn register(&mut self, slot: u32, waker: &Waker, attended: bool) {
        let entry = &mut self.slots[slot as usize];
        debug_assert!(
            matches!(entry.state, State::Staged(_) | State::InKernel(_)),
            "slot {slot} polled while {:?}",
            entry.state
        );
        match &mut entry.waker {
            Some(w) if w.will_wake(waker) => {}
            other => *other = Some(waker.clone()),
        }
        if entry.unattended == attended {
            entry.unattended = !attended;
            if attended {
                self.unattended -= 1;
            } else {
                self.unattended += 1;
            }
        }
    }

    /// The async API: the future of `slot` was dropped. A finished request is dropped now; one
    /// in flight runs to completion (it may already be writing) and is dropped then.
    pub(crate) fn abandon(&mut self, slot: u32, wakes: &mut Vec<Waker>) {
        let entry = &mut self.slots[slot as usize];
        match entry.state {
            State::Done(_) => {
                entry.state = State::Free;
                self.free_slot(slot, wakes);
            }
            State::Staged(_) | State::InKernel(_) => {
                entry.abandoned = true;
                entry.waker = None;
                if !entry.unattended {
                    entry.unattended = true;
                    self.unattended += 1;
                }
            }
            State::Free | State::Reserved => {
                debug_assert!(false, "slot {slot} abandoned while {:?}", entry.state);
            }
        }
    }

    /// The queue API: a completion that never needed a slot (refused at admission).
    pub(crate) fn push_ready(&mut self, completion: Completion) {
        self.ready.push_back(completion);
    }

    /// The queue API: moves the ready completions into `out`; returns how many.
    pub(crate) fn drain_ready(&mut self, out: &mut Vec<Completion>) -> usize {
        let count = self.ready.len();
        out.extend(self.ready.drain(..));
        count
    }

    /// Takes every request still staged or in the kernel, for a completion path that died:
    /// the caller fails them (leaking buffers the kernel may still hold).
    pub(crate) fn take_in_flight(&mut self, mut each: impl FnMut(u32, InFlight, bool)) {
        self.staged.clear();
        self.in_kernel = 0;
        for slot in 0..self.slots.len() {
            let entry = &mut self.slots[slot];
            let (inflight, in_kernel) = match std::mem::replace(&mut entry.state, State::Free) {
                State::Staged(inflight) => (inflight, false),
                State::InKernel(inflight) => (inflight, true),
                other => {
                    entry.state = other;
                    continue;
                }
            };
            // Park the slot as reserved until the caller delivers the failure into it.
            entry.state = State::Reserved;
            each(slot as u32, inflight, in_kernel);
        }
    }

    /// Delivers a completion into a slot taken by [`SlotTable::take_in_flight`].
    pub(crate) fn deliver_failed(
        &mut self,
        slot: u32,
        completion: Completion,
        wakes: &mut Vec<Waker>,
    ) {
        self.deliver(slot, completion, wakes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::AlignedBuf;
    use crate::config::EngineConfig;
    use crate::file::OpenOptions;
    use crate::geometry::Geometry;
    use crate::raw::inflight::Io;
    use crate::request::Request;
    use std::sync::Arc;
    use std::task::Wake;

    /// A kernel with room for `room` entries that completes nothing on its own.
    struct Fake {
        room: usize,
        pushed: Vec<u32>,
    }

    impl Kernel for Fake {
        fn push(&mut self, slot: u32, _io: Io<'_>) -> bool {
            if self.pushed.len() == self.room {
                return false;
            }
            self.pushed.push(slot);
            true
        }
        fn submit(&mut self) -> crate::Result<()> {
            Ok(())
        }
        fn reap(&mut self, _out: &mut [crate::raw::kernel::Reaped]) -> usize {
            0
        }
        fn wait(&mut self, _min: usize) -> crate::Result<()> {
            Ok(())
        }
        fn wake(&mut self) {}
        fn in_flight(&self) -> usize {
            self.pushed.len()
        }
    }

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn setup() -> (Common, crate::file::File) {
        let common = Common::new(EngineConfig::default());
        let std = tempfile::tempfile().expect("tempfile");
        let options = OpenOptions::new().read(true).write(true);
        let file = common.file(
            std,
            std::path::Path::new("/t"),
            options,
            Geometry::FALLBACK,
            0,
            None,
        );
        (common, file)
    }

    fn read(common: &Common, file: &crate::file::File, user_data: u64) -> InFlight {
        let buf = AlignedBuf::zeroed(8, 1).expect("alloc");
        InFlight::admit(common, Request::read(file, 0, buf, user_data)).expect("admitted")
    }

    #[test]
    fn a_full_kernel_keeps_requests_staged_and_nothing_is_dropped() {
        let (common, file) = setup();
        let mut table = SlotTable::new(4, Mode::Queue);
        let mut kernel = Fake {
            room: 1,
            pushed: Vec::new(),
        };
        let mut wakes = Vec::new();
        for i in 0..3 {
            table.try_insert(read(&common, &file, i)).expect("room");
        }
        assert_eq!(table.flush(&common, &mut kernel, &mut wakes), 1);
        assert_eq!(
            (table.in_kernel(), table.staged()),
            (1, 2),
            "two wait for room"
        );
        let first = kernel.pushed.remove(0);
        table.settle(&common, first, 8, &mut wakes);
        assert_eq!(
            table.flush(&common, &mut kernel, &mut wakes),
            1,
            "room again"
        );
        let mut out = Vec::new();
        assert_eq!(table.drain_ready(&mut out), 1);
        assert_eq!(out[0].user_data, 0, "oldest first");
        assert_eq!(
            (table.in_kernel(), table.staged(), table.in_use()),
            (1, 1, 2)
        );
    }

    #[test]
    fn each_freed_slot_wakes_exactly_one_waiter_in_order() {
        let (common, file) = setup();
        let mut table = SlotTable::new(1, Mode::Async);
        let mut wakes = Vec::new();
        let slot = table.try_insert(read(&common, &file, 0)).expect("room");
        let counts: Vec<Arc<Count>> = (0..3).map(|_| Arc::new(Count(0.into()))).collect();
        let mut tickets: Vec<Option<Ticket>> = vec![None; 3];
        for (ticket, count) in tickets.iter_mut().zip(&counts) {
            let waker = Waker::from(Arc::clone(count));
            assert_eq!(table.wait_for_slot(ticket, &waker), None, "full");
        }
        let mut kernel = Fake {
            room: 8,
            pushed: Vec::new(),
        };
        table.flush(&common, &mut kernel, &mut wakes);
        table.settle(&common, slot, 8, &mut wakes);
        let done = table.take_done(slot, &mut wakes).expect("done");
        assert_eq!(done.user_data, 0);
        assert_eq!(wakes.len(), 1, "one waiter woken per freed slot");
        wakes.drain(..).for_each(Waker::wake);
        let woken: Vec<usize> = counts
            .iter()
            .map(|c| c.0.load(std::sync::atomic::Ordering::SeqCst))
            .collect();
        assert_eq!(woken, [1, 0, 0], "the first in line");
        // The first waiter gives up: its slot passes to the second.
        let first = tickets[0].take().expect("ticket");
        table.cancel_wait(first, &mut wakes);
        assert_eq!(wakes.len(), 1, "handed on");
        let waker = Waker::from(Arc::clone(&counts[1]));
        assert_eq!(table.wait_for_slot(&mut tickets[1], &waker), Some(slot));
    }

    #[test]
    fn abandoned_requests_keep_their_slot_until_the_kernel_is_done() {
        let (common, file) = setup();
        let mut table = SlotTable::new(2, Mode::Async);
        let mut kernel = Fake {
            room: 8,
            pushed: Vec::new(),
        };
        let mut wakes = Vec::new();
        let slot = table.try_insert(read(&common, &file, 0)).expect("room");
        table.flush(&common, &mut kernel, &mut wakes);
        table.abandon(slot, &mut wakes);
        assert_eq!(
            (table.in_use(), table.unattended()),
            (1, 1),
            "held for the kernel"
        );
        table.settle(&common, slot, 8, &mut wakes);
        assert_eq!(
            (table.in_use(), table.unattended()),
            (0, 0),
            "freed at completion"
        );
    }
}
