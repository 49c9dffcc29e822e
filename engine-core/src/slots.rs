//! A fixed table of completion slots: how an async request waits for its result without a
//! runtime's reactor and without allocating.
//!
//! A request takes a slot (waiting, not failing, when all are taken: contract point 7), the
//! backend writes the result into it from any thread and wakes the waker, and the future takes
//! the result out. When a future is dropped before its result arrives, the slot is marked
//! abandoned and the result, buffer included, is dropped when the backend delivers it: never
//! before the kernel is done with the buffer (contract point 8).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

enum Slot<T> {
    Free,
    Pending(Option<Waker>),
    Done(T),
    Abandoned,
}

struct State<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// Tasks waiting for a free slot.
    waiters: Vec<Waker>,
    closed: bool,
}

/// A fixed number of completion slots.
pub struct Slots<T> {
    state: Mutex<State<T>>,
}

/// The table was closed: the engine is shutting down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed;

impl<T> Slots<T> {
    /// A table of `count` slots (at least one).
    pub fn new(count: usize) -> Slots<T> {
        let count = count.clamp(1, u32::MAX as usize);
        Slots {
            state: Mutex::new(State {
                slots: (0..count).map(|_| Slot::Free).collect(),
                free: (0..count as u32).rev().collect(),
                waiters: Vec::with_capacity(16),
                closed: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding the lock cannot leave a slot half-updated: every update is a
        // single assignment. So a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.lock().slots.len()
    }

    /// Slots taken (pending, done but not yet taken, or abandoned but not yet completed).
    pub fn in_use(&self) -> usize {
        let state = self.lock();
        state.slots.len() - state.free.len()
    }

    /// Waits for a free slot and takes it.
    pub fn acquire(&self) -> Acquire<'_, T> {
        Acquire { slots: self }
    }

    /// Takes a free slot if there is one.
    ///
    /// # Errors
    ///
    /// [`Closed`] after [`Slots::close`].
    pub fn try_acquire(&self) -> Result<Option<u32>, Closed> {
        let mut state = self.lock();
        if state.closed {
            return Err(Closed);
        }
        Ok(state.free.pop().inspect(|&id| {
            state.slots[id as usize] = Slot::Pending(None);
        }))
    }

    /// Stores the result of slot `id` and wakes its task, or drops the result when the task
    /// has gone.
    pub fn complete(&self, id: u32, value: T) {
        let mut state = self.lock();
        let slot = &mut state.slots[id as usize];
        match std::mem::replace(slot, Slot::Free) {
            Slot::Pending(waker) => {
                *slot = Slot::Done(value);
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            Slot::Abandoned => {
                let waiters = release(&mut state, id);
                drop(state);
                drop(value);
                wake_all(waiters);
            }
            other => {
                // Completing a free or already completed slot would be a backend bug.
                debug_assert!(false, "slot {id} completed twice");
                *slot = other;
            }
        }
    }

    /// Polls slot `id` for its result, registering the task's waker.
    pub fn poll_result(&self, id: u32, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = self.lock();
        let slot = &mut state.slots[id as usize];
        match slot {
            Slot::Pending(waker) => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Slot::Done(_) => {
                let Slot::Done(value) = std::mem::replace(slot, Slot::Free) else {
                    unreachable!("matched Done above");
                };
                let waiters = release(&mut state, id);
                drop(state);
                wake_all(waiters);
                Poll::Ready(value)
            }
            Slot::Free | Slot::Abandoned => {
                debug_assert!(false, "slot {id} polled after it was released");
                Poll::Pending
            }
        }
    }

    /// Gives up slot `id` (its future was dropped): the result is dropped when it arrives.
    pub fn abandon(&self, id: u32) {
        let mut state = self.lock();
        let slot = &mut state.slots[id as usize];
        match std::mem::replace(slot, Slot::Abandoned) {
            Slot::Pending(_) => {}
            Slot::Done(value) => {
                let waiters = release(&mut state, id);
                drop(state);
                drop(value);
                wake_all(waiters);
            }
            other => *slot = other,
        }
    }

    /// Refuses new acquisitions and wakes every waiting task, which then sees [`Closed`].
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let waiters = std::mem::take(&mut state.waiters);
        drop(state);
        wake_all(waiters);
    }
}

/// Frees slot `id` and hands back the tasks waiting for a slot, to wake outside the lock.
fn release<T>(state: &mut State<T>, id: u32) -> Vec<Waker> {
    state.slots[id as usize] = Slot::Free;
    state.free.push(id);
    if state.waiters.is_empty() {
        Vec::new()
    } else {
        // Wake every waiter: one that was woken and then dropped must not strand the others.
        std::mem::take(&mut state.waiters)
    }
}

fn wake_all(waiters: Vec<Waker>) {
    for waker in waiters {
        waker.wake();
    }
}

/// The future returned by [`Slots::acquire`].
pub struct Acquire<'a, T> {
    slots: &'a Slots<T>,
}

impl<T> Future for Acquire<'_, T> {
    type Output = Result<u32, Closed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.slots.lock();
        if state.closed {
            return Poll::Ready(Err(Closed));
        }
        if let Some(id) = state.free.pop() {
            state.slots[id as usize] = Slot::Pending(None);
            return Poll::Ready(Ok(id));
        }
        if !state.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            state.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Waits for slot `id`'s result; abandons the slot if dropped first.
pub struct SlotFuture<'a, T> {
    slots: &'a Slots<T>,
    id: u32,
    done: bool,
}

impl<'a, T> SlotFuture<'a, T> {
    /// Waits on slot `id`, which the caller acquired and handed to the backend.
    pub fn new(slots: &'a Slots<T>, id: u32) -> SlotFuture<'a, T> {
        SlotFuture {
            slots,
            id,
            done: false,
        }
    }
}

impl<T> Future for SlotFuture<'_, T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let result = self.slots.poll_result(self.id, cx);
        if result.is_ready() {
            self.done = true;
        }
        result
    }
}

impl<T> Drop for SlotFuture<'_, T> {
    fn drop(&mut self) {
        if !self.done {
            self.slots.abandon(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::block_on;
    use std::sync::Arc;

    #[test]
    fn result_crosses_threads() {
        let slots = Arc::new(Slots::<u64>::new(2));
        let id = block_on(slots.acquire()).expect("open");
        let s = Arc::clone(&slots);
        let t = std::thread::spawn(move || s.complete(id, 42));
        assert_eq!(block_on(SlotFuture::new(&slots, id)), 42);
        t.join().expect("thread");
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn abandoned_result_is_dropped_on_completion_and_slot_freed() {
        let slots = Slots::<Arc<()>>::new(1);
        let id = slots.try_acquire().expect("open").expect("free");
        drop(SlotFuture::new(&slots, id));
        assert_eq!(
            slots.in_use(),
            1,
            "slot stays taken until the backend delivers"
        );
        let value = Arc::new(());
        slots.complete(id, Arc::clone(&value));
        assert_eq!(Arc::strong_count(&value), 1, "delivered value dropped");
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn full_table_waits_then_proceeds_and_close_fails_waiters() {
        let slots = Arc::new(Slots::<u8>::new(1));
        let id = slots.try_acquire().expect("open").expect("free");
        assert_eq!(slots.try_acquire(), Ok(None));
        let s = Arc::clone(&slots);
        let waiter = std::thread::spawn(move || block_on(s.acquire()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        slots.complete(id, 1);
        assert_eq!(block_on(SlotFuture::new(&slots, id)), 1);
        let second = waiter.join().expect("thread").expect("got a slot");
        assert_eq!(second, id);
        slots.close();
        assert_eq!(block_on(slots.acquire()), Err(Closed));
    }
}
