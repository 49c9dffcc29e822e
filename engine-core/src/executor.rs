//! A minimal `block_on` and `join_all`, so the async API works without any runtime.
//!
//! Engine futures are woken by the backend's own threads, never by a runtime's reactor, so
//! they complete under tokio, under any other executor, and under this `block_on`.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the current thread, parking between polls.
///
/// # Examples
///
/// ```
/// assert_eq!(engine_core::block_on(async { 7 }), 7);
/// ```
pub fn block_on<F: Future>(future: F) -> F::Output {
    thread_local! {
        // Made once per thread, so `block_on` itself allocates nothing per call.
        static WAKER: Waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    }
    let mut future = pin!(future);
    let waker = WAKER.with(Waker::clone);
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        // A spurious unpark only costs one extra poll.
        std::thread::park();
    }
}

/// Runs every future concurrently and returns their outputs in the order given.
///
/// Allocates when called (once for the futures, once for the outputs), not when polled;
/// every future is polled on each wake-up, which suits batches of requests whose
/// completions arrive close together.
pub fn join_all<F: Future>(futures: Vec<F>) -> JoinAll<F> {
    let pending: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let outputs = pending.iter().map(|_| None).collect();
    JoinAll { pending, outputs }
}

/// The future of [`join_all`].
pub struct JoinAll<F: Future> {
    pending: Vec<Option<Pin<Box<F>>>>,
    outputs: Vec<Option<F::Output>>,
}

// Every field is `Unpin` (the futures are boxed), so the future is too.
impl<F: Future> Unpin for JoinAll<F> {}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<F::Output>> {
        let this = &mut *self;
        let mut all_done = true;
        for (slot, output) in this.pending.iter_mut().zip(this.outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
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

    #[test]
    fn join_all_keeps_order() {
        let futures: Vec<_> = (0..5).map(|i| async move { i * 2 }).collect();
        assert_eq!(block_on(join_all(futures)), vec![0, 2, 4, 6, 8]);
    }
}
