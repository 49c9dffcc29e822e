//! A minimal `block_on` and `join_all`, so the async API works without any runtime.
//!
//! Engine futures are woken by the engine itself, never by a runtime's reactor, so they
//! complete under tokio, under any other executor, and under this `block_on`. Under this one
//! they complete faster: when the future waits for an engine, `block_on` lends its thread to
//! that engine (it waits in the kernel and reaps the completion itself) instead of sleeping
//! until another thread wakes it. See [`crate::raw::Park`].

use std::cell::Cell;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use crate::raw::park::{self, ParkToken};

thread_local! {
    // Made once per thread, so `block_on` itself allocates nothing per call.
    static TOKEN: Arc<ParkToken> = ParkToken::for_current_thread();
    static WAKER: Waker = TOKEN.with(|token| Waker::from(Arc::clone(token)));
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Restores the thread's `block_on` state when a poll ends, even by a panic.
struct PollGuard(Option<park::Saved>);

impl PollGuard {
    fn end(mut self) -> Option<Arc<dyn park::Park>> {
        self.0.take().and_then(park::end_poll)
    }
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        if let Some(saved) = self.0.take() {
            park::end_poll(saved);
        }
    }
}

/// Undoes the nesting count when `block_on` returns or unwinds.
struct DepthGuard;

impl Drop for DepthGuard {
    fn drop(&mut self) {
        DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// The engine a `block_on` call parks in, once a future offered one. When the call returns
/// (or unwinds) the engine submits what it deferred ([`park::Park::flush`]) and the token
/// forgets it.
struct Target<'a> {
    token: &'a ParkToken,
    engine: Option<Arc<dyn park::Park>>,
}

impl Target<'_> {
    /// Takes the engine the last poll left as the call's target; it stays for the whole call.
    fn set(&mut self, engine: Option<Arc<dyn park::Park>>) {
        if self.engine.is_none() {
            if let Some(engine) = &engine {
                self.token.set_engine(Some(Arc::clone(engine)));
            }
        }
        self.engine = engine;
    }
}

impl Drop for Target<'_> {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            self.token.set_engine(None);
            engine.flush();
        }
    }
}

/// Runs a future to completion on the current thread.
///
/// Between polls the thread waits in the engine the future waits on (if it is one of this
/// crate's engines), or parks until woken. That engine submits the requests a poll made when
/// the poll ends, all at once.
///
/// # Examples
///
/// ```
/// assert_eq!(engine_core::block_on(async { 7 }), 7);
/// ```
pub fn block_on<F: Future>(future: F) -> F::Output {
    let nested = DEPTH.with(|depth| {
        depth.set(depth.get() + 1);
        depth.get() > 1
    });
    let _depth = DepthGuard;
    if nested {
        // The outer call's poll may have pushed requests it would submit when it parks;
        // this call may block for a while first.
        park::flush_outer();
    }
    // A nested call (block_on inside a future that block_on polls) gets a token of its own,
    // so the two loops never share a wake flag.
    let (token, waker) = if nested {
        let token = ParkToken::for_current_thread();
        let waker = Waker::from(Arc::clone(&token));
        (token, waker)
    } else {
        (TOKEN.with(Arc::clone), WAKER.with(Waker::clone))
    };
    let mut future = pin!(future);
    let mut cx = Context::from_waker(&waker);
    let mut target = Target {
        token: &token,
        engine: None,
    };
    loop {
        token.begin_poll();
        let guard = PollGuard(Some(park::begin_poll(target.engine.clone())));
        let polled = future.as_mut().poll(&mut cx);
        target.set(guard.end());
        if let Poll::Ready(output) = polled {
            return output;
        }
        match &target.engine {
            // The engine submits what the poll pushed, reaps, and returns at once when that
            // (or anything else) woke the future; otherwise it waits for completions.
            Some(engine) => engine.park(&token),
            None => {
                if !token.take_notified() {
                    token.park_thread();
                }
            }
        }
    }
}

/// Runs every future concurrently and returns their outputs in the order given.
///
/// Allocates when called (once per future), never when polled; a wake-up polls only the
/// futures that were woken.
pub fn join_all<F: Future>(futures: Vec<F>) -> JoinAll<F> {
    let parent = Arc::new(Parent {
        waker: Mutex::new(None),
    });
    let children = futures
        .into_iter()
        .map(|future| {
            let wake = Arc::new(ChildWake {
                woken: AtomicBool::new(true),
                parent: Arc::clone(&parent),
            });
            Child {
                future: Some(Box::pin(future)),
                waker: Waker::from(Arc::clone(&wake)),
                wake,
            }
        })
        .collect::<Vec<_>>();
    let outputs = children.iter().map(|_| None).collect();
    let remaining = children.len();
    JoinAll {
        children,
        outputs,
        parent,
        remaining,
    }
}

struct Parent {
    waker: Mutex<Option<Waker>>,
}

struct ChildWake {
    woken: AtomicBool,
    parent: Arc<Parent>,
}

impl Wake for ChildWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            let parent = self
                .parent
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(parent) = parent {
                parent.wake();
            }
        }
    }
}

struct Child<F> {
    future: Option<Pin<Box<F>>>,
    waker: Waker,
    wake: Arc<ChildWake>,
}

/// The future of [`join_all`].
pub struct JoinAll<F: Future> {
    children: Vec<Child<F>>,
    outputs: Vec<Option<F::Output>>,
    parent: Arc<Parent>,
    remaining: usize,
}

// Every field is `Unpin` (the futures are boxed), so the future is too.
impl<F: Future> Unpin for JoinAll<F> {}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<F::Output>> {
        let this = &mut *self;
        {
            let mut parent = this
                .parent
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match &*parent {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *parent = Some(cx.waker().clone()),
            }
        }
        for (child, output) in this.children.iter_mut().zip(this.outputs.iter_mut()) {
            let Some(future) = &mut child.future else {
                continue;
            };
            if !child.wake.woken.swap(false, Ordering::AcqRel) {
                continue;
            }
            if let Poll::Ready(value) = future.as_mut().poll(&mut Context::from_waker(&child.waker))
            {
                *output = Some(value);
                child.future = None;
                this.remaining -= 1;
            }
        }
        if this.remaining == 0 {
            Poll::Ready(
                std::mem::take(&mut this.outputs)
                    .into_iter()
                    .flatten()
                    .collect(),
            )
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn join_all_keeps_order() {
        let futures: Vec<_> = (0..5).map(|i| async move { i * 2 }).collect();
        assert_eq!(block_on(join_all(futures)), vec![0, 2, 4, 6, 8]);
    }

    /// Pending until `ready` is set; counts its polls.
    struct Gate {
        ready: Arc<AtomicBool>,
        polls: Arc<AtomicUsize>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Gate {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn join_all_polls_only_the_woken_future() {
        let gates: Vec<_> = (0..8)
            .map(|_| Gate {
                ready: Arc::new(AtomicBool::new(false)),
                polls: Arc::new(AtomicUsize::new(0)),
                waker: Arc::new(Mutex::new(None)),
            })
            .collect();
        let handles: Vec<_> = gates
            .iter()
            .map(|g| {
                (
                    Arc::clone(&g.ready),
                    Arc::clone(&g.polls),
                    Arc::clone(&g.waker),
                )
            })
            .collect();
        let opener = std::thread::spawn(move || {
            for (ready, _, waker) in &handles {
                // Wait for the first poll, then open this gate alone.
                let waker = loop {
                    if let Some(w) = waker.lock().unwrap_or_else(PoisonError::into_inner).clone() {
                        break w;
                    }
                    std::thread::yield_now();
                };
                ready.store(true, Ordering::SeqCst);
                waker.wake();
            }
            handles
        });
        block_on(join_all(gates));
        let handles = opener.join().expect("opener");
        let polls: Vec<usize> = handles
            .iter()
            .map(|(_, p, _)| p.load(Ordering::SeqCst))
            .collect();
        // Each gate: its first poll and the one after its own wake; never one per wake of
        // another gate.
        assert!(polls.iter().all(|&p| p <= 2), "polls per gate: {polls:?}");
    }

    #[test]
    fn nested_block_on_works() {
        let value = block_on(async { block_on(async { 3 }) + 1 });
        assert_eq!(value, 4);
    }
}
