//! The async API of every backend: one lock around one slot table and the kernel's
//! submission and completion queues, and a future per request.
//!
//! A request's future does everything it can on the thread that polls it: admits the request,
//! pushes it, submits, and reaps every completion that is ready (its own and others') before it
//! returns `Pending`, so an answer that is already there (a cached read, a synchronous device)
//! costs no thread hop at all. When it must wait:
//!
//! - under [`crate::block_on`], the thread lends itself to the engine ([`Park`]): it takes the
//!   *lease* (one thread at a time waits in the kernel), waits there, and reaps. While the
//!   kernel answers in microseconds (the page cache, a RAM device) and other requests hold
//!   slots, such a future's poll only pushes its request, and `block_on` submits everything
//!   its poll pushed when it parks: the futures a `join_all` polls in one pass reach the
//!   kernel in one submission. A slow device gets each request as it is made;
//! - under any other executor, the slot counts as *unattended*, and the engine's reaper thread
//!   takes the lease and reaps for it. The reaper sleeps while nothing is unattended.
//!
//! Backends whose kernel completes requests on threads of its own (a worker pool) reap on
//! those threads instead and run no reaper ([`Kernel::notify_with`]).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use crate::error::{Error, ErrorKind, Op, Result};
use crate::raw::common::Common;
use crate::raw::inflight::{reject, validate, InFlight};
use crate::raw::kernel::{Kernel, Reaped, Wait};
use crate::raw::park::{self, Attendance, Park, ParkToken};
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

/// The requests a `block_on` poll may see complete at once (submitted as they are made)
/// before the rest of that poll's requests wait for its park: a future whose requests keep
/// completing at once (cached reads) would otherwise run alone, and its siblings' requests
/// never share a submission with its own.
const COMPLETED_AT_ONCE_MAX: u32 = 32;

/// Submissions are left to the park only while a park waits this long or less for
/// completions, on average (a moving average over parks, a park that found its completions
/// without waiting counting as zero). Below it the kernel answers in microseconds (the page
/// cache, a RAM-backed device, work done at submit): one syscall per request is then what
/// costs, and a round's requests share one. Above it a device takes its time: requests are
/// submitted as they are made, since a device handed requests in rounds tends to complete them
/// in rounds too (a virtio disk at depth 32 runs at two thirds of its rate that way).
const DEFER_PARK_WAIT_NS_MAX: u64 = 5_000;

/// When the requests a call of progress pushes reach the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Submission {
    /// Submitted (and reaped) now.
    Now,
    /// Left in the submission queue for the polling thread's `block_on`, which submits them
    /// when its poll ends ([`Park::park`]); submitted now only if the kernel has no room.
    AtPark,
}

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
    /// Where a reap puts completions before settling them (kept here, so that a reap does
    /// not clear a buffer of its own each time).
    reaped: [Reaped; REAP_BATCH],
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
    /// [`Kernel::inline_idle_syncs`]: an attended sync with nothing in flight runs on the
    /// polling thread.
    inline_idle_syncs: bool,
    /// Requests were pushed and their submission left to a parking `block_on` thread
    /// ([`Submission::AtPark`]). Written under the lock; read without it only to skip taking
    /// the lock when nothing is deferred.
    deferred: AtomicBool,
    /// A moving average of how long a park waits in the kernel, in nanoseconds (see
    /// [`DEFER_PARK_WAIT_NS_MAX`]).
    park_wait_ns: AtomicU64,
    /// The slot table's unattended count, published for a self-completing kernel's threads,
    /// which skip the lock while it is zero (see [`Driver::on_notify`]).
    unattended: AtomicUsize,
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
            let inline_idle_syncs = kernel.inline_idle_syncs();
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
                    reaped: [Reaped::default(); REAP_BATCH],
                }),
                waiter,
                idle: Condvar::new(),
                reaper: Mutex::new(None),
                self_completing,
                inline_idle_syncs,
                deferred: AtomicBool::new(false),
                park_wait_ns: AtomicU64::new(0),
                unattended: AtomicUsize::new(0),
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

    /// Pushes, submits and reaps everything that is ready; delivers completions. With
    /// [`Submission::AtPark`] it only pushes, unless the kernel is full. Errors of the kernel
    /// interface itself are returned for the caller to kill the driver with. Returns how many
    /// submissions it pushed into the kernel.
    fn progress(
        &self,
        core: &mut Core<K>,
        wakes: &mut Vec<Waker>,
        submission: Submission,
    ) -> Result<usize> {
        if core.dead.is_some() {
            return Ok(0);
        }
        let common = &*self.common;
        let mut pushed_total = 0;
        if submission == Submission::AtPark {
            pushed_total = core.table.flush(common, &mut core.kernel, wakes);
            if core.table.staged() == 0 {
                if pushed_total > 0 {
                    self.deferred.store(true, Ordering::Relaxed);
                }
                // What completed at push (a read that did not block) is ready already.
                Driver::<K, W>::reap(common, core, wakes);
                return Ok(pushed_total);
            }
            // The kernel is full: submit now, so that completions make room.
        }
        // Whatever was pushed before is submitted below.
        self.deferred.store(false, Ordering::Relaxed);
        // Each round submits what is staged and reaps what is ready; a round that moves
        // nothing ends it. A kernel that completes at push (a read that did not block) can
        // keep a request going round for a while (an exact transfer in many pieces): the
        // bound keeps one caller from holding the lock for all of it, and `stalled` tells the
        // caller to come back.
        for _ in 0..PROGRESS_ROUNDS_MAX {
            let pushed = core.table.flush(common, &mut core.kernel, wakes);
            pushed_total += pushed;
            core.kernel.submit()?;
            let got = Driver::<K, W>::reap(common, core, wakes);
            if core.table.staged() == 0 || (pushed == 0 && got == 0) {
                break;
            }
        }
        Ok(pushed_total)
    }

    /// Reaps every completion that is ready, without waiting, and settles it; returns how
    /// many.
    fn reap(common: &Common, core: &mut Core<K>, wakes: &mut Vec<Waker>) -> usize {
        let reaped = &mut core.reaped;
        let mut got = 0;
        // Bounded by what can be in flight: every request, plus wake-up entries.
        for _ in 0..=(core.table.capacity() / REAP_BATCH + 1) {
            let n = core.kernel.reap(reaped);
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
        got
    }

    /// True when requests are staged and the kernel holds nothing: nobody waiting in the
    /// kernel would push them, so whoever saw it must run progress again.
    fn stalled(core: &Core<K>) -> bool {
        core.dead.is_none() && core.table.staged() > 0 && core.table.in_kernel() == 0
    }

    fn progress_or_die(
        &self,
        core: &mut Core<K>,
        wakes: &mut Vec<Waker>,
        submission: Submission,
    ) -> usize {
        let pushed = match self.progress(core, wakes, submission) {
            Ok(pushed) => pushed,
            Err(e) => {
                let reason = format!("the kernel interface failed: {e}");
                self.die_locked(core, &reason, wakes);
                0
            }
        };
        self.publish_unattended(core, wakes);
        pushed
    }

    /// Publishes the unattended count to a self-completing kernel's threads (under the lock,
    /// after every change that may raise it). When it rises, a completion delivered just
    /// before may have seen the old count and skipped reaping, so this thread reaps. The two
    /// cannot both miss: the kernel thread delivers a result (under its result list's lock)
    /// and then reads the count; this thread stores the count and then reaps (under that same
    /// lock), so whichever takes the result list's lock second sees the other's write.
    fn publish_unattended(&self, core: &mut Core<K>, wakes: &mut Vec<Waker>) {
        if !self.self_completing {
            return;
        }
        let now = core.table.unattended();
        // Written only under the lock, so a plain load sees the last value.
        if self.unattended.load(Ordering::Relaxed) == now {
            return;
        }
        let before = self.unattended.swap(now, Ordering::SeqCst);
        if now > before {
            Driver::<K, W>::reap(&self.common, core, wakes);
        }
    }

    /// Called by a self-completing kernel's threads after each completion. A completion for
    /// a slot some `block_on` thread attends is reaped by that thread (it is polling, will
    /// park and reap, or waits in [`Wait::wait`], which the delivery wakes), so the lock is
    /// taken only while some slot is unattended, or to drain at shutdown.
    fn on_notify(&self) {
        if self.unattended.load(Ordering::SeqCst) == 0 && !self.common.is_shut_down() {
            return;
        }
        with_wakes(|wakes| {
            let mut core = lock(&self.core);
            self.progress_or_die(&mut core, wakes, Submission::Now);
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
            if needed && !core.lease && self.deferred.load(Ordering::Relaxed) {
                // A `block_on` poll pushed requests it meant to submit when it parked, but
                // never parked (its future was dropped, or finished first): submit them.
                with_wakes(|wakes| {
                    self.progress_or_die(&mut core, wakes, Submission::Now);
                    drop(core);
                });
                continue;
            }
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
                    let pushed = self.progress_or_die(&mut core, wakes, Submission::Now);
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
                self.progress_or_die(&mut core, wakes, Submission::Now);
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
            // The kernel's own threads reap; wait until they have finished everything. The
            // wakers progress collects are woken only once the lock is let go: a `block_on`
            // thread's waker takes it (to interrupt the kernel), and woken under it would
            // deadlock this thread on its own lock.
            let finished = |core: &Core<K>| {
                core.dead.is_some() || core.table.in_kernel() + core.table.staged() == 0
            };
            loop {
                let drained = with_wakes(|wakes| {
                    let mut core = lock(&self.core);
                    if !finished(&core) {
                        self.progress_or_die(&mut core, wakes, Submission::Now);
                    }
                    finished(&core)
                });
                if drained {
                    break;
                }
                let core = lock(&self.core);
                // Checked again under the lock: a kernel thread that drains the table
                // notifies `idle` only after taking it.
                if finished(&core) {
                    break;
                }
                drop(self.idle.wait(core).unwrap_or_else(PoisonError::into_inner));
            }
        }
    }

    /// Counts one park's wait in the kernel (zero when it found its completions without one)
    /// into the moving average that decides whether polls defer their submissions.
    fn note_park_wait(&self, ns: u64) {
        // One thread parks at a time most of the time; a lost update between two only skews
        // an average.
        let average = self.park_wait_ns.load(Ordering::Relaxed);
        let next = (average * 7 + ns.min(1_000_000_000)) / 8;
        self.park_wait_ns.store(next, Ordering::Relaxed);
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
        // Submit what the poll pushed and reap what is ready (even when the future was woken
        // already: a future that keeps waking itself must not starve the completions).
        let stalled = with_wakes(|wakes| {
            let mut core = lock(&self.core);
            self.progress_or_die(&mut core, wakes, Submission::Now);
            let stalled = Driver::<K, W>::stalled(&core);
            drop(core);
            stalled
        });
        if stalled || token.is_notified() {
            // Woken, or requests still to push (the poll pushes them): back to the poll.
            self.note_park_wait(0);
            return;
        }
        let waiting = {
            let mut core = lock(&self.core);
            let wait = !core.lease && core.table.in_kernel() > 0 && core.dead.is_none();
            if wait {
                core.lease = true;
            } else if core.lease && !core.behind_lease.iter().any(|t| Arc::ptr_eq(t, token)) {
                // Another thread waits in the kernel: it wakes this one when it is done.
                core.behind_lease.push(Arc::clone(token));
            }
            wait
        };
        if !waiting {
            token.park_thread();
            return;
        }
        let waited = if token.enter_engine() {
            let began = std::time::Instant::now();
            let waited = self.waiter.wait();
            self.note_park_wait(u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX));
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

    fn flush(&self) {
        if self.deferred.load(Ordering::Relaxed) {
            with_wakes(|wakes| {
                let mut core = lock(&self.core);
                self.progress_or_die(&mut core, wakes, Submission::Now);
                drop(core);
            });
        }
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
    /// Whether the polling thread will reap this engine itself (it runs `block_on`, which
    /// parks in this engine after the poll).
    fn attended(&self) -> Attendance {
        let driver = self.driver;
        park::offer(Arc::as_ptr(driver).cast::<()>(), || {
            Arc::clone(driver) as Arc<dyn Park>
        })
    }

    /// True when the polling thread is a `block_on` that attends this engine and nothing is in
    /// flight in it: a request run here holds up nobody, and the thread would only wait.
    fn attended_and_idle(&self) -> bool {
        if !matches!(self.attended(), Attendance::Attended { .. }) {
            return false;
        }
        let core = lock(&self.driver.core);
        core.dead.is_none() && core.table.in_use() == 0 && core.kernel.in_flight() == 0
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
        let polled = self.progress_and_poll(core, slot, cx, wakes);
        if polled.is_ready() {
            park::note_completed_at_once();
        }
        polled
    }

    /// Runs the engine (only pushing, when the polling thread's `block_on` submits at its
    /// park), then takes `slot`'s completion or registers the waker.
    fn progress_and_poll(
        &mut self,
        core: &mut Core<K>,
        slot: u32,
        cx: &Context<'_>,
        wakes: &mut Vec<Waker>,
    ) -> Poll<Completion> {
        // Deferring pays when other requests hold slots (in flight, or done and about to be
        // followed by their futures' next requests in this same poll): the requests the poll
        // pushes share one submission when the thread parks. A lone request goes in at once,
        // and may complete before the poll ends (a cached read), up to a bound per poll.
        let (attended, submission) = match self.attended() {
            Attendance::Unattended => (false, Submission::Now),
            Attendance::Attended { completed_at_once } => {
                let fast =
                    self.driver.park_wait_ns.load(Ordering::Relaxed) <= DEFER_PARK_WAIT_NS_MAX;
                let defer =
                    fast && (core.table.in_use() > 1 || completed_at_once >= COMPLETED_AT_ONCE_MAX);
                (
                    true,
                    if defer {
                        Submission::AtPark
                    } else {
                        Submission::Now
                    },
                )
            }
        };
        self.driver.progress_or_die(core, wakes, submission);
        if let Some(completion) = core.table.take_done(slot, wakes) {
            self.state = State::Done;
            return Poll::Ready(completion);
        }
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
            if request.op().is_sync() && driver.inline_idle_syncs && this.attended_and_idle() {
                this.state = State::Done;
                return Poll::Ready(InFlight::run_here(&driver.common, request));
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
                        let joins_the_line = ticket.is_none();
                        match core.table.wait_for_slot(ticket, cx.waker()) {
                            Some(slot) => match request.take() {
                                Some(request) => this.start(&mut core, slot, request, cx, wakes),
                                None => {
                                    core.table.free_slot(slot, wakes);
                                    Poll::Pending
                                }
                            },
                            None => {
                                if joins_the_line {
                                    driver.common.metrics().record_slot_wait();
                                }
                                // In line for a slot: completions free them, so this thread
                                // may as well reap, and wait in the engine.
                                driver.progress_or_die(&mut core, wakes, Submission::Now);
                                let _ = this.attended();
                                Poll::Pending
                            }
                        }
                    }
                }
                State::InFlight(slot) => {
                    let slot = *slot;
                    this.progress_and_poll(&mut core, slot, cx, wakes)
                }
                State::Start(_) | State::Done => Poll::Pending,
            };
            driver.publish_unattended(&mut core, wakes);
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
                driver.publish_unattended(&mut core, wakes);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::AlignedBuf;
    use crate::config::EngineConfig;
    use crate::executor::{block_on, join_all};
    use crate::file::{File, OpenOptions};
    use crate::geometry::Geometry;
    use crate::raw::inflight::Io;
    use std::future::poll_fn;
    use std::time::{Duration, Instant};

    /// What the fake kernel and its waiter share.
    #[derive(Default)]
    struct Device {
        /// Pushed, not yet submitted.
        pushed: Vec<(u32, i64)>,
        /// Submitted (at the instant given), not yet complete.
        running: Vec<(u32, i64, Instant)>,
        /// Complete, not yet reaped.
        complete: Vec<(u32, i64)>,
        /// How long after its submission a request completes; `None`: at submit.
        latency: Option<Duration>,
        /// How many submit calls carried entries.
        submissions: usize,
        /// Requests submitted so far.
        submitted: usize,
        woken: bool,
    }

    /// A kernel whose requests complete at submit (a cached read), or a while later on their
    /// own (a device), as its [`Device::latency`] says.
    struct FakeKernel {
        device: Shared,
        /// What [`Kernel::inline_idle_syncs`] answers.
        inline_syncs: bool,
    }

    impl Kernel for FakeKernel {
        fn inline_idle_syncs(&self) -> bool {
            self.inline_syncs
        }
        fn push(&mut self, slot: u32, io: Io<'_>) -> bool {
            let len = match io {
                Io::Read { .. } => io.len() as i64,
                _ => 0,
            };
            lock(&self.device.0).pushed.push((slot, len));
            true
        }
        fn submit(&mut self) -> Result<()> {
            let mut device = lock(&self.device.0);
            if device.pushed.is_empty() {
                return Ok(());
            }
            device.submissions += 1;
            let pushed = std::mem::take(&mut device.pushed);
            device.submitted += pushed.len();
            if device.latency.is_none() {
                device.complete.extend(pushed);
            } else {
                let now = Instant::now();
                device
                    .running
                    .extend(pushed.into_iter().map(|(s, r)| (s, r, now)));
            }
            drop(device);
            self.device.1.notify_all();
            Ok(())
        }
        fn reap(&mut self, out: &mut [Reaped]) -> usize {
            let mut device = lock(&self.device.0);
            device.complete_due();
            let n = device.complete.len().min(out.len());
            for (slot, (s, result)) in out.iter_mut().zip(device.complete.drain(..n)) {
                *slot = Reaped { slot: s, result };
            }
            n
        }
        fn wait(&mut self, _min: usize) -> Result<()> {
            Ok(())
        }
        fn wake(&mut self) {
            lock(&self.device.0).woken = true;
            self.device.1.notify_all();
        }
        fn in_flight(&self) -> usize {
            let device = lock(&self.device.0);
            device.pushed.len() + device.running.len() + device.complete.len()
        }
    }

    impl Device {
        fn complete_due(&mut self) {
            let now = Instant::now();
            let latency = self.latency.unwrap_or_default();
            let (due, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
                .into_iter()
                .partition(|&(_, _, at)| now.duration_since(at) >= latency);
            self.running = running;
            self.complete
                .extend(due.into_iter().map(|(s, r, _)| (s, r)));
        }
    }

    /// Waits until a request is due (or a wake-up), as a thread waiting for a device would.
    struct FakeWait(Arc<(Mutex<Device>, Condvar)>);

    impl Wait for FakeWait {
        fn wait(&self) -> Result<()> {
            let mut device = lock(&self.0 .0);
            let deadline = Instant::now() + Duration::from_millis(50);
            loop {
                device.complete_due();
                let now = Instant::now();
                if !device.complete.is_empty() || device.woken || now >= deadline {
                    break;
                }
                let latency = device.latency.unwrap_or_default();
                let left = match device.running.iter().map(|&(_, _, at)| at).min() {
                    Some(oldest) => (oldest + latency).saturating_duration_since(now),
                    None => deadline - now,
                };
                device = match self
                    .0
                     .1
                    .wait_timeout(device, left.max(Duration::from_micros(50)))
                {
                    Ok((device, _)) => device,
                    Err(e) => e.into_inner().0,
                };
            }
            device.woken = false;
            Ok(())
        }
    }

    type FakeDriver = Driver<FakeKernel, FakeWait>;
    type Shared = Arc<(Mutex<Device>, Condvar)>;

    /// A device that completes each request a millisecond after its submission.
    const SLOW: Option<Duration> = Some(Duration::from_millis(1));
    /// A kernel that completes each request at submit (the page cache).
    const AT_SUBMIT: Option<Duration> = None;

    fn start(latency: Option<Duration>) -> (Arc<FakeDriver>, Shared, File) {
        start_with(latency, false, EngineConfig::default())
    }

    fn start_with(
        latency: Option<Duration>,
        inline_syncs: bool,
        config: EngineConfig,
    ) -> (Arc<FakeDriver>, Shared, File) {
        let device = Arc::new((
            Mutex::new(Device {
                latency,
                ..Device::default()
            }),
            Condvar::new(),
        ));
        let common = Arc::new(Common::new(config));
        let std = tempfile::tempfile().expect("tempfile");
        let options = OpenOptions::new().read(true).write(true);
        let path = std::path::Path::new("/fake");
        let file = common.file(std, path, options, Geometry::FALLBACK, 0, None);
        let kernel = FakeKernel {
            device: Arc::clone(&device),
            inline_syncs,
        };
        let driver = Driver::start(common, kernel, FakeWait(Arc::clone(&device)), "fake-reaper")
            .expect("driver");
        (driver, device, file)
    }

    fn read(file: &File, user_data: u64) -> Request {
        let buf = AlignedBuf::zeroed(8, 1).expect("alloc");
        Request::read(file, 0, buf, user_data)
    }

    /// Runs `body` on a thread of its own, failing the test instead of hanging it.
    fn within<T: Send + 'static>(what: &str, body: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(body());
        });
        rx.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{what}: no result within 20 s"))
    }

    /// Runs `tasks` futures of `reads` reads each under one `block_on`; returns the
    /// submissions that carried entries and the requests submitted.
    fn rounds(latency: Option<Duration>, tasks: u64, reads: u64) -> (usize, usize) {
        let (driver, device, file) = start(latency);
        let done = {
            let driver = Arc::clone(&driver);
            within("tasks of reads", move || {
                let futures = (0..tasks)
                    .map(|t| {
                        let (driver, file) = (Arc::clone(&driver), file.clone());
                        async move {
                            let mut ok = 0;
                            for r in 0..reads {
                                let request = read(&file, t * reads + r);
                                ok += usize::from(driver.submit(request).await.result.is_ok());
                            }
                            ok
                        }
                    })
                    .collect();
                block_on(join_all(futures)).into_iter().sum::<usize>()
            })
        };
        assert_eq!(done, (tasks * reads) as usize, "reads completed");
        driver.shutdown();
        let device = lock(&device.0);
        assert_eq!(
            device.submitted,
            (tasks * reads) as usize,
            "requests submitted"
        );
        (device.submissions, device.submitted)
    }

    #[test]
    fn the_requests_of_one_block_on_poll_share_a_submission_when_the_kernel_is_fast() {
        let (submissions, submitted) = rounds(AT_SUBMIT, 16, 32);
        // The first 32 complete at once, one by one; then each round of the 16 tasks goes in
        // as one submission.
        assert!(
            submissions * 4 <= submitted,
            "{submissions} submissions for {submitted} requests"
        );
    }

    #[test]
    fn requests_beyond_the_depth_wait_for_a_slot_and_are_counted() {
        for (depth, waits) in [(1, 3), (2, 2), (4, 0)] {
            let config = EngineConfig {
                queue_depth: depth,
                ..EngineConfig::default()
            };
            // All four are polled before any completes: the device takes 50 ms.
            let latency = Some(Duration::from_millis(50));
            let (driver, _device, file) = start_with(latency, false, config);
            let done = {
                let driver = Arc::clone(&driver);
                within("four reads at once", move || {
                    let futures = (0..4).map(|i| driver.submit(read(&file, i))).collect();
                    block_on(join_all(futures))
                })
            };
            assert!(
                done.iter().all(|c| c.result.is_ok()),
                "depth {depth}: all read"
            );
            let counted = driver.common().metrics().snapshot().slot_waits;
            assert_eq!(
                counted, waits,
                "depth {depth}: the requests that waited in line"
            );
            driver.shutdown();
        }
    }

    #[test]
    fn a_slow_device_gets_each_request_as_it_is_made() {
        let (submissions, submitted) = rounds(SLOW, 16, 8);
        // After the first long wait, no request waits for its round.
        assert!(
            submissions * 10 >= submitted * 8,
            "{submissions} submissions for {submitted} requests"
        );
    }

    /// Polls `future` once (under the caller's `block_on`), then hands it back unfinished.
    async fn poll_once<F: Future + Unpin>(mut future: F) -> F {
        poll_fn(|cx| {
            let _ = Pin::new(&mut future).poll(cx);
            Poll::Ready(())
        })
        .await;
        future
    }

    #[test]
    fn a_request_left_pushed_by_a_returning_block_on_is_submitted() {
        let (driver, device, file) = start(SLOW);
        let submitted = {
            let (driver, device) = (Arc::clone(&driver), Arc::clone(&device));
            within("a future moved out of block_on", move || {
                let first = Box::pin(driver.submit(read(&file, 1)));
                let second = Box::pin(driver.submit(read(&file, 2)));
                // With the first in flight, the second's push is left to the park; the
                // future leaves block_on unfinished, so that park never comes.
                let (first, second) = block_on(async {
                    let first = poll_once(first).await;
                    (first, poll_once(second).await)
                });
                let submitted = lock(&device.0).submitted;
                // Finished elsewhere, by the reaper.
                let done = block_on(join_all(vec![first, second]));
                assert!(
                    done.iter().all(|c| c.result.is_ok()),
                    "both reads completed"
                );
                submitted
            })
        };
        assert_eq!(
            submitted, 2,
            "both requests reached the kernel when block_on returned"
        );
        driver.shutdown();
    }

    #[test]
    fn a_dropped_future_left_pushed_still_reaches_the_kernel() {
        let (driver, device, file) = start(SLOW);
        {
            let driver = Arc::clone(&driver);
            within("a future dropped after one poll", move || {
                let _ = block_on(async {
                    let first = poll_once(Box::pin(driver.submit(read(&file, 1)))).await;
                    drop(poll_once(Box::pin(driver.submit(read(&file, 2)))).await);
                    first.await
                });
            });
        }
        let submitted = || lock(&device.0).submitted;
        let deadline = Instant::now() + Duration::from_secs(20);
        while submitted() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            submitted(),
            2,
            "the dropped future's request reached the kernel"
        );
        driver.shutdown();
    }

    #[test]
    fn a_future_that_wakes_itself_does_not_starve_completions() {
        let (driver, _device, file) = start(SLOW);
        let completed = {
            let driver = Arc::clone(&driver);
            within("reads beside a self-waking future", move || {
                let done = Arc::new(AtomicUsize::new(0));
                let mut futures: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = (0..8)
                    .map(|i| {
                        let (driver, file, done) = (&driver, file.clone(), Arc::clone(&done));
                        Box::pin(async move {
                            if driver.submit(read(&file, i)).await.result.is_ok() {
                                done.fetch_add(1, Ordering::SeqCst);
                            }
                        }) as Pin<Box<dyn Future<Output = ()>>>
                    })
                    .collect();
                // Wakes itself until the reads are done: `block_on` never sleeps, and
                // `join_all` polls only this future until a completion wakes a read.
                let spin = Arc::clone(&done);
                futures.push(Box::pin(poll_fn(move |cx| {
                    if spin.load(Ordering::SeqCst) == 8 {
                        return Poll::Ready(());
                    }
                    cx.waker().wake_by_ref();
                    Poll::Pending
                })));
                block_on(join_all(futures));
                done.load(Ordering::SeqCst)
            })
        };
        assert_eq!(completed, 8, "every read completed");
        driver.shutdown();
    }

    /// Polls `future` the way an executor other than `block_on` does, until it is ready.
    fn poll_unattended<F: Future>(future: F) -> F::Output {
        struct Nothing;
        impl std::task::Wake for Nothing {
            fn wake(self: Arc<Self>) {}
        }
        let waker = Waker::from(Arc::new(Nothing));
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    #[test]
    fn an_attended_sync_with_nothing_in_flight_runs_on_the_polling_thread() {
        let (driver, device, file) = start_with(SLOW, true, EngineConfig::default());
        let submitted = || lock(&device.0).submitted;
        let (d, f) = (Arc::clone(&driver), file.clone());
        let idle = within("idle sync", move || {
            block_on(d.submit(Request::sync_data(&f, 1)))
        });
        assert!(idle.result.is_ok(), "{:?}", idle.result);
        assert_eq!(submitted(), 0, "the block_on thread ran it itself");
        assert_eq!(
            driver.common().metrics().snapshot().sync_data.ops,
            1,
            "counted"
        );
        // Beside a read in flight it goes to the kernel, as it must not hold the read up.
        let (d, f) = (Arc::clone(&driver), file.clone());
        let both = within("sync beside a read", move || {
            block_on(join_all(vec![
                d.submit(read(&f, 2)),
                d.submit(Request::sync_data(&f, 3)),
            ]))
        });
        assert!(both.iter().all(|c| c.result.is_ok()), "{both:?}");
        assert_eq!(submitted(), 2, "the read and the sync");
        // Polled by another executor, whose thread must not block: to the kernel.
        let (d, f) = (Arc::clone(&driver), file.clone());
        let elsewhere = within("unattended sync", move || {
            poll_unattended(d.submit(Request::sync_all(&f, 4)))
        });
        assert!(elsewhere.result.is_ok(), "{:?}", elsewhere.result);
        assert_eq!(submitted(), 3);
        // A kernel that does not ask for it gets every sync.
        let (driver, device, file) = start_with(SLOW, false, EngineConfig::default());
        let plain = within("plain sync", move || {
            block_on(driver.submit(Request::sync_data(&file, 5)))
        });
        assert!(plain.result.is_ok());
        assert_eq!(lock(&device.0).submitted, 1);
    }
}
