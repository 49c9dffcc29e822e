//! How a thread running [`crate::block_on`] waits: instead of sleeping until another thread
//! reaps its completion and wakes it (two cross-thread hops per request), it lends itself to the
//! engine its future is waiting on, waits in that engine's kernel, and reaps the completion
//! itself (one hop, the kernel's own).
//!
//! A future that returns `Pending` while polled by `block_on` offers its engine ([`offer`]);
//! `block_on` then calls [`Park::park`] with the thread's [`ParkToken`]. A wake from anywhere
//! else (another engine, a channel) interrupts that wait through [`Park::interrupt`]. Futures
//! polled by any other executor never offer, and their engine's own reaper wakes them.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Wake;
use std::thread::Thread;

/// An engine a `block_on` thread can wait in.
pub trait Park: Send + Sync {
    /// Lends the calling thread to the engine until progress may have been made for it: it
    /// waits in the kernel (after [`ParkToken::enter_engine`]) or parks the thread
    /// ([`ParkToken::park_thread`]), and returns soon after `token` is notified.
    fn park(&self, token: &Arc<ParkToken>);

    /// Makes a thread waiting in this engine's kernel return. Must not block for long, and
    /// is never called with the engine's lock held.
    fn interrupt(&self);

    /// Hands the kernel every request a poll left pushed but not yet submitted: an engine may
    /// leave its submission to [`Park::park`], so that a whole poll's requests go in at once.
    /// `block_on` calls it before a nested `block_on` takes over the thread and when it
    /// returns, so a request whose future outlives the call (moved out of it unfinished) is
    /// not left unsubmitted. An engine that defers nothing need not override it.
    fn flush(&self) {}
}

const RUNNING: u8 = 0;
const NOTIFIED: u8 = 1;
const PARKED_THREAD: u8 = 2;
const PARKED_ENGINE: u8 = 3;

/// The waker state of one `block_on` thread.
pub struct ParkToken {
    state: AtomicU8,
    thread: Thread,
    /// The engine the thread waits in while parked there.
    engine: Mutex<Option<Arc<dyn Park>>>,
}

impl std::fmt::Debug for ParkToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkToken")
            .field("state", &self.state.load(Ordering::Relaxed))
            .field("thread", &self.thread.id())
            .finish()
    }
}

impl ParkToken {
    /// A token for the current thread.
    pub(crate) fn for_current_thread() -> Arc<ParkToken> {
        Arc::new(ParkToken {
            state: AtomicU8::new(RUNNING),
            thread: std::thread::current(),
            engine: Mutex::new(None),
        })
    }

    /// Before a poll: wakes from before it are covered by the poll itself.
    pub(crate) fn begin_poll(&self) {
        self.state.store(RUNNING, Ordering::Release);
    }

    /// True when the future was woken since the last poll began.
    pub fn is_notified(&self) -> bool {
        self.state.load(Ordering::Acquire) == NOTIFIED
    }

    /// After a poll: true (and reset) when the future was woken while it ran.
    pub(crate) fn take_notified(&self) -> bool {
        self.state
            .compare_exchange(NOTIFIED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Marks the thread as waiting in `engine`'s kernel; false when it was notified already
    /// (then it must not wait).
    pub fn enter_engine(&self) -> bool {
        self.state
            .compare_exchange(RUNNING, PARKED_ENGINE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The thread's wait in the engine's kernel is over.
    pub fn leave_engine(&self) {
        // A notification that came meanwhile stays, so block_on polls again at once.
        let _ = self.state.compare_exchange(
            PARKED_ENGINE,
            RUNNING,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Parks the thread until the token is notified.
    pub fn park_thread(&self) {
        if self
            .state
            .compare_exchange(RUNNING, PARKED_THREAD, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        // `unpark` before `park` is remembered, so a notification between the exchange above
        // and this loop is not lost; spurious returns go round again.
        while self.state.load(Ordering::Acquire) == PARKED_THREAD {
            std::thread::park();
        }
    }

    /// Wakes the thread: a flag while it runs, an unpark while it sleeps, an interrupt of the
    /// engine's wait while it waits there.
    pub fn notify(&self) {
        match self.state.swap(NOTIFIED, Ordering::AcqRel) {
            PARKED_THREAD => self.thread.unpark(),
            PARKED_ENGINE => {
                let engine = self
                    .engine
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                if let Some(engine) = engine {
                    engine.interrupt();
                }
            }
            _ => {}
        }
    }

    pub(crate) fn set_engine(&self, engine: Option<Arc<dyn Park>>) {
        *self.engine.lock().unwrap_or_else(PoisonError::into_inner) = engine;
    }
}

impl Wake for ParkToken {
    fn wake(self: Arc<Self>) {
        self.notify();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.notify();
    }
}

/// What the current thread's `block_on` knows during a poll.
#[derive(Default)]
struct Offer {
    /// True while `block_on` polls its future on this thread.
    polling: bool,
    /// The engine the thread parks in between polls: the first one offered during this
    /// `block_on` call. It stays the target for the whole call, because the futures that
    /// counted on it may not be polled again before their completion arrives (a `join_all`
    /// polls only the futures that were woken).
    target: Option<Arc<dyn Park>>,
    /// Requests that completed within this poll, in the poll that made them.
    completed_at_once: u32,
}

/// What a nested `block_on` restores when its poll ends.
pub(crate) struct Saved {
    polling: bool,
    target: Option<Arc<dyn Park>>,
    completed_at_once: u32,
}

thread_local! {
    static OFFER: RefCell<Offer> = RefCell::new(Offer::default());
}

/// How a `block_on` thread attends a request it polls: see [`offer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attendance {
    /// Some other thread must reap the request and wake its future (no `block_on` polls it,
    /// or that `block_on` parks in another engine).
    Unattended,
    /// The polling thread parks in this engine after the poll, and reaps it itself.
    Attended {
        /// Requests that completed within this same poll, in the poll that made them: a
        /// future that keeps completing at once never lets its siblings run, so an engine
        /// stops submitting at once past a bound and leaves it to the park.
        completed_at_once: u32,
    },
}

/// Offers `engine` to the current thread's `block_on`, if one is polling: returns
/// [`Attendance::Attended`] when the thread parks in `engine` between polls from now until
/// `block_on` returns (and so reaps the engine's completions itself). `make` is called only
/// when the engine becomes the target.
pub fn offer(engine: *const (), make: impl FnOnce() -> Arc<dyn Park>) -> Attendance {
    OFFER.with(|offer| {
        let Ok(mut offer) = offer.try_borrow_mut() else {
            return Attendance::Unattended;
        };
        if !offer.polling {
            return Attendance::Unattended;
        }
        let attended = match &offer.target {
            None => {
                offer.target = Some(make());
                true
            }
            Some(target) => Arc::as_ptr(target).cast::<()>() == engine,
        };
        if attended {
            Attendance::Attended {
                completed_at_once: offer.completed_at_once,
            }
        } else {
            Attendance::Unattended
        }
    })
}

/// Counts a request that completed in the poll that made it (see [`Attendance`]).
pub fn note_completed_at_once() {
    OFFER.with(|offer| {
        if let Ok(mut offer) = offer.try_borrow_mut() {
            offer.completed_at_once = offer.completed_at_once.saturating_add(1);
        }
    });
}

/// Marks the start of a `block_on` poll on this thread, whose call parks in `target` so far;
/// returns what to restore after it (nested `block_on` calls each keep their own).
pub(crate) fn begin_poll(target: Option<Arc<dyn Park>>) -> Saved {
    OFFER.with(|offer| {
        let mut offer = offer.borrow_mut();
        let saved = Saved {
            polling: offer.polling,
            target: std::mem::replace(&mut offer.target, target),
            completed_at_once: offer.completed_at_once,
        };
        offer.polling = true;
        offer.completed_at_once = 0;
        saved
    })
}

/// Before a nested `block_on` takes over the thread: the outer call's engine submits what its
/// poll deferred, so those requests run while the inner call blocks.
pub(crate) fn flush_outer() {
    let target = OFFER.with(|offer| {
        offer
            .try_borrow()
            .ok()
            .filter(|offer| offer.polling)
            .and_then(|offer| offer.target.clone())
    });
    if let Some(target) = target {
        target.flush();
    }
}

/// Ends a `block_on` poll: returns the engine the call parks in (offered during this poll or
/// an earlier one), and restores the outer state.
pub(crate) fn end_poll(saved: Saved) -> Option<Arc<dyn Park>> {
    OFFER.with(|offer| {
        let mut offer = offer.borrow_mut();
        let target = offer.target.take();
        offer.polling = saved.polling;
        offer.target = saved.target;
        offer.completed_at_once = saved.completed_at_once;
        target
    })
}
