//! The async API of every backend: one lock around one slot table and the kernel's
//! submission and completion queues, and a future per request.
//!
//! A request's future does everything it can on the thread that polls it: admits the request,
//! pushes it, submits, and reaps every completion that is ready (its own and others') before it
//! returns `Pending`, so an answer that is already there (a cached read, a synchronous device)
//! costs no thread hop at all. When it must wait:
//!
//! - under [`crate::block_on`], the thread lends itself to the engine ([`Park`]): it takes the
//!   *lease* (one thread at a time waits in the kernel), waits there, and reaps;
//! - under any other executor, the slot counts as *unattended*, and the engine's reaper thread
//!   takes the lease and reaps for it. The reaper sleeps while nothing is unattended.
//!
//! Backends whose kernel completes requests on threads of its own (a worker pool) reap on
//! those threads instead and run no reaper ([`Kernel::notify_with`]).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use crate::error::{Error, ErrorKind, Op, Result};
use crate::raw::common::Common;
use crate::raw::inflight::{reject, validate, InFlight};
use crate::raw::kernel::{Kernel, Reaped, Wait};
use crate::raw::park::{self, Park, ParkToken};
use crate::raw::table::{Mode, SlotTable, Ticket};
use crate::request::{Completion, Request};

/// Locks a mutex whose critical sections leave it consistent even if they panic (each is a
/// sequence of field updates with no invariant spanning a panic point), so a poisoned lock
/// is still usable.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    // The wakers to call once a lock is released; kept per thread so waking allocates nothing.
    static WAKES: Cell<Vec<Waker>> = const { Cell::new(Vec::new()) };
}

/// Gives the calling thread's waker list room up front, so a thread the engine starts (a
/// worker, the reaper) allocates it at start and not on its first completion.
pub(crate) fn reserve_wakes() {
    let mut wakes = WAKES.take();
    wakes.reserve(REAP_BATCH);
    WAKES.set(wakes);
}

/// Runs `body` with a list to collect wakers into, then wakes them: `body` must release every
/// lock before it returns.
fn with_wakes<R>(body: impl FnOnce(&mut Vec<Waker>) -> R) -> R {
    let mut wakes = WAKES.take();
    let result = body(&mut wakes);
    for waker in wakes.drain(..) {
        waker.wake();
    }
    WAKES.set(wakes);
    result
}

/// Completions reaped per round.
const REAP_BATCH: usize = 64;

/// The most push-submit-reap rounds one call of progress makes.
const PROGRESS_ROUNDS_MAX: usize = 64;

struct Core<K> {
    table: SlotTable,
    kernel: K,
    /// A thread is waiting in the kernel (the reaper, or a `block_on` thread).
    lease: bool,
    /// `block_on` threads that found the lease taken and parked: woken when it is released.
    behind_lease: Vec<Arc<ParkToken>>,
    /// The reaper is asleep on its condition variable.
    reaper_asleep: bool,
    /// Why the completion path died, once it has: every request then fails.
    dead: Option<Arc<str>>,
}

/// The async API's engine core, generic over the backend's [`Kernel`] and [`Wait`].
pub struct Driver<K: Kernel, W: Wait> {
    common: Arc<Common>,
    core: Mutex<Core<K>>,
    waiter: W,
    /// Where the reaper sleeps while nothing is unattended; also where `shutdown` waits for
    /// a kernel that completes on its own threads to drain.
    idle: Condvar,
    reaper: Mutex<Option<JoinHandle<()>>>,
    /// The kernel completes requests on its own threads and reaps through `notify`.
    self_completing: bool,
}

impl<K: Kernel, W: Wait> std::fmt::Debug for Driver<K, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("engine_id", &self.common.engine_id())
            .field("self_completing", &self.self_completing)
            .finish()
    }
}

impl<K: Kernel, W: Wait> Driver<K, W> {
    /// Builds the driver over `kernel` (with `waiter` for its lock-free waits) and starts its
    /// reaper thread, named `thread_name`, unless the kernel completes on its own threads.
    ///
    /// # Errors
    ///
    /// The OS error when the reaper thread cannot be spawned.
    pub fn start(
        common: Arc<Common>,
        kernel: K,
        waiter: W,
        thread_name: &str,
    ) -> Result<Arc<Driver<K, W>>> {
        let depth = common.config().queue_depth;
        let driver = Arc::new_cyclic(|weak: &Weak<Driver<K, W>>| {
            let mut kernel = kernel;
            let weak = weak.clone();
            let self_completing = kernel.notify_with(Arc::new(move || {
                if let Some(driver) = weak.upgrade() {
                    driver.on_notify();
                }
            }));
            Driver {
                common,
                core: Mutex::new(Core {
                    table: SlotTable::new(depth, Mode::Async),
                    kernel,
                    lease: false,
                    behind_lease: Vec::new(),
                    reaper_asleep: false,
                    dead: None,
                }),
                waiter,
                idle: Condvar::new(),
                reaper: Mutex::new(None),
                self_completing,
            }
        });
        if !driver.self_completing {
            let reaper = Arc::clone(&driver);
            let handle = std::thread::Builder::new()
                .name(thread_name.into())
                .spawn(move || reaper.reap_loop())
                .map_err(|e| {
                    Error::from_io(&e, Op::Setup).with_message(format!("spawning {thread_name}"))
                })?;
            *lock(&driver.reaper) = Some(handle);
        }
        Ok(driver)
    }

    /// The engine's common state.
    pub fn common(&self) -> &Arc<Common> {
        &self.common
    }

    /// Runs `body` with the kernel, under the lock (for backend housekeeping such as
    /// registering a file).
    pub fn with_kernel<R>(&self, body: impl FnOnce(&mut K) -> R) -> R {
        body(&mut lock(&self.core).kernel)
    }

    /// Submits one request; the future resolves to its completion, which always carries the
    /// buffer back. Dropping the future does not cancel the request: it runs to completion,
    /// and its buffer is freed only then.
    pub fn submit(self: &Arc<Self>, request: Request) -> Submit<'_, K, W> {
        Submit {
            driver: self,
            state: State::Start(Some(request)),
        }
    }

    /// Pushes, submits and reaps everything that is ready; delivers completions. Errors of the
    /// kernel interface itself are returned for the caller to kill the driver with.
    /// Returns how many submissions it pushed into the kernel.
    fn progress(&self, core: &mut Core<K>, wakes: &mut Vec<Waker>) -> Result<usize> {
        if core.dead.is_some() {
            return Ok(0);
        }
        let mut pushed_total = 0;
        let common = &*self.common;
        let mut reaped = [Reaped::default(); REAP_BATCH];
        // Each round submits what is staged and reaps what is ready; a round that moves
        // nothing ends it. A kernel that completes at push (a read that did not block) can
        // keep a request going round for a while (an exact transfer in many pieces): the
        // bound keeps one caller from holding the lock for all of it, and `stalled` tells the
        // caller to come back.
        for _ in 0..PROGRESS_ROUNDS_MAX {
            let pushed = core.table.flush(common, &mut core.kernel, wakes);
            pushed_total += pushed;
            core.kernel.submit()?;
            let mut got = 0;
            // Bounded by what can be in flight: every request, plus wake-up entries.
            for _ in 0..=(core.table.capacity() / REAP_BATCH + 1) {
                let n = core.kernel.reap(&mut reaped);
                #[cfg(feature = "testing")]
                SlotTable::seeded_reap(common, &mut reaped[..n]);
                for r in &reaped[..n] {
                    core.table.settle(common, r.slot, r.result, wakes);
                }
                got += n;
                if n < REAP_BATCH {
                    break;
                }
            }
            if core.table.staged() == 0 || (pushed == 0 && got == 0) {
                break;
            }
        }
        Ok(pushed_total)
    }

    /// True when requests are staged and the kernel holds nothing: nobody waiting in the
    /// kernel would push them, so whoever saw it must run progress again.
    fn stalled(core: &Core<K>) -> bool {
        core.dead.is_none() && core.table.staged() > 0 && core.table.in_kernel() == 0
    }

    fn progress_or_die(&self, core: &mut Core<K>, wakes: &mut Vec<Waker>) -> usize {
        match self.progress(core, wakes) {
            Ok(pushed) => pushed,
            Err(e) => {
                let reason = format!("the kernel interface failed: {e}");
                self.die_locked(core, &reason, wakes);
                0
            }
        }
    }

    /// Called by a self-completing kernel's threads after each completion.
    fn on_notify(&self) {
        with_wakes(|wakes| {
            let mut core = lock(&self.core);
            self.progress_or_die(&mut core, wakes);
            // A kernel with threads of its own gets here once per completion, so requests left
            // staged are pushed by a later call (or by their polling thread).
            let drained = core.table.in_kernel() + core.table.staged() == 0;
            drop(core);
            if drained && self.common.is_shut_down() {
                self.idle.notify_all();
            }
        });
    }

    /// The reaper thread: reaps while some slot in flight is unattended (or shutdown drains
    /// everything), sleeps otherwise; exits once shutdown has drained every request.
    fn reap_loop(&self) {
        reserve_wakes();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.reap_until_drained()));
        let reason = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("the reaper's wait failed: {e}"),
            Err(_) => "the reaper thread panicked".to_string(),
        };
        tracing::error!(
            reason,
            "engine reaper died; failing every request in flight"
        );
        self.die(&reason);
    }

    fn reap_until_drained(&self) -> Result<()> {
        loop {
            let mut core = lock(&self.core);
            let draining = self.common.is_shut_down();
            let in_flight = core.table.in_kernel() + core.table.staged();
            if core.dead.is_some() || (draining && in_flight == 0) {
                return Ok(());
            }
            let needed = draining || core.table.unattended() > 0;
            if needed && !core.lease && core.table.in_kernel() > 0 {
                core.lease = true;
                drop(core);
                let waited = self.waiter.wait();
                self.release_lease(waited)?;
                continue;
            }
            if needed && !core.lease {
                // Staged with nothing in the kernel: push them now.
                with_wakes(|wakes| {
                    let pushed = self.progress_or_die(&mut core, wakes);
                    if pushed == 0 && Driver::<K, W>::stalled(&core) {
                        self.die_locked(
                            &mut core,
                            "the kernel takes no request while none is in flight",
                            wakes,
                        );
                    }
                    drop(core);
                });
                continue;
            }
            core.reaper_asleep = true;
            let mut core = self.idle.wait(core).unwrap_or_else(PoisonError::into_inner);
            core.reaper_asleep = false;
        }
    }

    /// After a wait in the kernel: gives the lease back, reaps, and hands the lease on to
    /// whoever queued for it (parked `block_on` threads, or the reaper).
    fn release_lease(&self, waited: Result<()>) -> Result<()> {
        let behind = with_wakes(|wakes| {
            let mut core = lock(&self.core);
            core.lease = false;
            if waited.is_ok() {
                self.progress_or_die(&mut core, wakes);
            }
            let behind = std::mem::take(&mut core.behind_lease);
            let wake_reaper =
                core.reaper_asleep && (core.table.unattended() > 0 || self.common.is_shut_down());
            drop(core);
            if wake_reaper {
                self.idle.notify_one();
            }
            behind
        });
        for token in behind {
            token.notify();
        }
        waited
    }

    /// Fails every request in flight with [`ErrorKind::Shutdown`] instead of leaving its
    /// future hanging (contract point 9). Their buffers may still be in the kernel's hands, so
    /// those are leaked rather than freed.
    fn die(&self, reason: &str) {
        with_wakes(|wakes| {
            let mut core = lock(&self.core);
            self.die_locked(&mut core, reason, wakes);
            drop(core);
        });
        self.idle.notify_all();
    }

    fn die_locked(&self, core: &mut Core<K>, reason: &str, wakes: &mut Vec<Waker>) {
        if core.dead.is_some() {
            return;
        }
        core.dead = Some(Arc::from(reason));
        let common = &*self.common;
        let mut failed = Vec::new();
        core.table.take_in_flight(|slot, mut inflight, in_kernel| {
            if in_kernel {
                inflight.leak_buffer();
            }
            let error = dead_error(inflight.op(), reason);
            failed.push((slot, inflight.fail(common, error)));
        });
        for (slot, completion) in failed {
            core.table.deliver_failed(slot, completion, wakes);
        }
        for token in core.behind_lease.drain(..) {
            token.notify();
        }
    }

    /// Stops admitting requests, completes everything in flight and joins the reaper.
    /// Idempotent.
    pub fn shutdown(&self) {
        self.common.begin_shutdown();
        {
            let core = lock(&self.core);
            let reaper_asleep = core.reaper_asleep;
            drop(core);
            if reaper_asleep {
                self.idle.notify_all();
            }
        }
        let handle = lock(&self.reaper).take();
        if let Some(handle) = handle {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
        if self.self_completing {
            // The kernel's own threads reap; wait until they have finished everything.
            let mut core = lock(&self.core);
            while core.dead.is_none() && core.table.in_kernel() + core.table.staged() > 0 {
                with_wakes(|wakes| self.progress_or_die(&mut core, wakes));
                if core.table.in_kernel() + core.table.staged() == 0 {
                    break;
                }
                core = self.idle.wait(core).unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    /// True when the reaper sleeps although a request in flight needs it.
    fn wake_reaper_if_needed(&self, core: &Core<K>) -> bool {
        core.reaper_asleep && !core.lease && core.table.unattended() > 0
    }
}

impl<K: Kernel, W: Wait> Drop for Driver<K, W> {
    fn drop(&mut self) {
        // Every engine shuts its driver down before dropping it; if something is still in
        // flight here (a dead reaper), the kernel may hold its buffers: leak them.
        let core = self.core.get_mut().unwrap_or_else(PoisonError::into_inner);
        core.table.take_in_flight(|_, mut inflight, in_kernel| {
            if in_kernel {
                inflight.leak_buffer();
            }
            drop(inflight);
        });
    }
}

impl<K: Kernel, W: Wait> Park for Driver<K, W> {
    fn park(&self, token: &Arc<ParkToken>) {
        let (waiting, stalled) = with_wakes(|wakes| {
            let mut core = lock(&self.core);
            self.progress_or_die(&mut core, wakes);
            let stalled = Driver::<K, W>::stalled(&core);
            let wait = !stalled && !core.lease && core.table.in_kernel() > 0 && core.dead.is_none();
            if wait {
                core.lease = true;
            } else if core.lease && !core.behind_lease.iter().any(|t| Arc::ptr_eq(t, token)) {
                // Another thread waits in the kernel: it wakes this one when it is done.
                core.behind_lease.push(Arc::clone(token));
            }
            drop(core);
            (wait, stalled)
        });
        if stalled {
            // Requests still to push: back to the poll, which pushes them.
            token.notify();
            return;
        }
        if !waiting {
            token.park_thread();
            return;
        }
        let waited = if token.enter_engine() {
            let waited = self.waiter.wait();
            token.leave_engine();
            waited
        } else {
            Ok(())
        };
        if let Err(e) = self.release_lease(waited) {
            self.die(&format!("waiting for completions failed: {e}"));
        }
    }

    fn interrupt(&self) {
        lock(&self.core).kernel.wake();
    }
}

/// Where a request's future is in its life.
enum State {
    /// Not yet polled.
    Start(Option<Request>),
    /// In line for a free slot.
    WaitingForSlot(Option<Request>, Option<Ticket>),
    /// In its slot.
    InFlight(u32),
    /// Completed and handed out.
    Done,
}

/// The future of [`Driver::submit`].
pub struct Submit<'a, K: Kernel, W: Wait> {
    driver: &'a Arc<Driver<K, W>>,
    state: State,
}

impl<K: Kernel, W: Wait> Submit<'_, K, W> {
    /// True when the polling thread will reap this engine itself (it runs `block_on`, which
    /// parks in this engine after the poll).
    fn attended(&self) -> bool {
        let driver = self.driver;
        park::offer(Arc::as_ptr(driver).cast::<()>(), || {
            Arc::clone(driver) as Arc<dyn Park>
        })
    }

    /// Admits the request into the reserved `slot` (or refuses it, freeing the slot) and runs
    /// it as far as it goes now.
    fn start(
        &mut self,
        core: &mut Core<K>,
        slot: u32,
        request: Request,
        cx: &Context<'_>,
        wakes: &mut Vec<Waker>,
    ) -> Poll<Completion> {
        let driver = self.driver;
        let inflight = match InFlight::admit_validated(&driver.common, request) {
            Ok(inflight) => inflight,
            Err(completion) => {
                core.table.free_slot(slot, wakes);
                return Poll::Ready(completion);
            }
        };
        core.table.fill(slot, inflight);
        self.state = State::InFlight(slot);
        driver.progress_or_die(core, wakes);
        self.poll_slot(core, slot, cx, wakes)
    }

    fn poll_slot(
        &mut self,
        core: &mut Core<K>,
        slot: u32,
        cx: &Context<'_>,
        wakes: &mut Vec<Waker>,
    ) -> Poll<Completion> {
        if let Some(completion) = core.table.take_done(slot, wakes) {
            self.state = State::Done;
            return Poll::Ready(completion);
        }
        let attended = self.attended();
        core.table.register(slot, cx.waker(), attended);
        Poll::Pending
    }
}

impl<K: Kernel, W: Wait> Future for Submit<'_, K, W> {
    type Output = Completion;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion> {
        let this = &mut *self;
        let driver = this.driver;
        // Validation needs no lock, and claims nothing, so it runs first.
        if let State::Start(request) = &mut this.state {
            let Some(request) = request.take() else {
                return Poll::Pending;
            };
            if let Err(error) = validate(driver.common.engine_id(), &request) {
                this.state = State::Done;
                return Poll::Ready(reject(&driver.common, request, error));
            }
            this.state = State::WaitingForSlot(Some(request), None);
        }
        let (result, wake_reaper) = with_wakes(|wakes| {
            let mut core = lock(&driver.core);
            let result = match &mut this.state {
                State::WaitingForSlot(request, ticket) => {
                    if let Some(reason) = core.dead.clone() {
                        if let Some(ticket) = ticket.take() {
                            core.table.cancel_wait(ticket, wakes);
                        }
                        match request.take() {
                            Some(request) => {
                                let error = dead_error(request.op(), &reason);
                                Poll::Ready(reject(&driver.common, request, error))
                            }
                            None => Poll::Pending,
                        }
                    } else {
                        match core.table.wait_for_slot(ticket, cx.waker()) {
                            Some(slot) => match request.take() {
                                Some(request) => this.start(&mut core, slot, request, cx, wakes),
                                None => {
                                    core.table.free_slot(slot, wakes);
                                    Poll::Pending
                                }
                            },
                            None => {
                                // In line for a slot: completions free them, so this thread
                                // may as well reap, and wait in the engine.
                                driver.progress_or_die(&mut core, wakes);
                                let _ = this.attended();
                                Poll::Pending
                            }
                        }
                    }
                }
                State::InFlight(slot) => {
                    let slot = *slot;
                    driver.progress_or_die(&mut core, wakes);
                    this.poll_slot(&mut core, slot, cx, wakes)
                }
                State::Start(_) | State::Done => Poll::Pending,
            };
            let wake_reaper = driver.wake_reaper_if_needed(&core);
            if result.is_pending() && Driver::<K, W>::stalled(&core) {
                // More to push than one poll does: be polled again at once.
                cx.waker().wake_by_ref();
            }
            drop(core);
            (result, wake_reaper)
        });
        if wake_reaper {
            driver.idle.notify_one();
        }
        if result.is_ready() {
            this.state = State::Done;
        }
        result
    }
}

impl<K: Kernel, W: Wait> Drop for Submit<'_, K, W> {
    fn drop(&mut self) {
        let driver = self.driver;
        let wake_reaper = match std::mem::replace(&mut self.state, State::Done) {
            State::WaitingForSlot(_, Some(ticket)) => with_wakes(|wakes| {
                let mut core = lock(&driver.core);
                core.table.cancel_wait(ticket, wakes);
                drop(core);
                false
            }),
            State::InFlight(slot) => with_wakes(|wakes| {
                let mut core = lock(&driver.core);
                core.table.abandon(slot, wakes);
                let wake = driver.wake_reaper_if_needed(&core);
                drop(core);
                wake
            }),
            _ => false,
        };
        if wake_reaper {
            driver.idle.notify_one();
        }
    }
}

/// The error of a request made after the completion path died.
fn dead_error(op: Op, reason: &str) -> Error {
    Error::new(
        ErrorKind::Shutdown,
        op,
        format!("the completion path died: {reason}"),
    )
}
