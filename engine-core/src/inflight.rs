//! Requests the kernel holds, for backends where the kernel completes requests
//! asynchronously (io_uring, Linux AIO): what such a request owns while in flight, how its raw
//! result becomes a completion (or a resubmission on EINTR/EAGAIN), and the table the async
//! API keeps them in until their completion is reaped.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::config::FaultHook;
use crate::error::{Error, ErrorKind};
use crate::metrics::Metrics;
use crate::request::{finish, prepare, reject, Completion, Prepared, RawResult, Request};
use crate::retry::{hook_gate, HookGate, RETRIES_MAX};
use crate::slots::{SlotFuture, Slots};

/// A request the kernel holds: it owns its buffer until its completion is reaped.
#[derive(Debug)]
pub struct InFlight {
    /// The request, buffer included.
    pub request: Request,
    /// What validation decided.
    pub prepared: Prepared,
    /// The length submitted (after the fault hook).
    pub len: usize,
    /// EINTR/EAGAIN retries so far.
    pub retries: u32,
    /// A torn write injected by the fault hook: the errno to report once the (shortened)
    /// transfer is done.
    pub fail_after: Option<i32>,
}

impl InFlight {
    /// A request about to be submitted as the fault hook's `gate` decided.
    pub fn new(request: Request, prepared: Prepared, gate: (usize, u32, Option<i32>)) -> InFlight {
        let (len, retries, fail_after) = gate;
        InFlight {
            request,
            prepared,
            len,
            retries,
            fail_after,
        }
    }
}

impl InFlight {
    /// Admits a request pushed to a queue the caller reaps on its own thread: `refuse` (a
    /// backend's own up-front refusal), validation, shutdown, then the fault hook. A request
    /// that will not reach the kernel comes back as its completion, so every push still has
    /// exactly one.
    ///
    /// # Errors
    ///
    /// The request's completion, carrying the typed error, when it is not to be submitted.
    pub fn admit(
        engine_id: u64,
        request: Request,
        refuse: Option<Error>,
        shut_down: bool,
        hook: Option<&dyn FaultHook>,
        metrics: &Metrics,
    ) -> std::result::Result<InFlight, Completion> {
        if let Some(error) = refuse {
            return Err(reject(request, None, error, metrics));
        }
        let prepared = match prepare(engine_id, &request) {
            Ok(prepared) => prepared,
            Err(error) => return Err(reject(request, None, error, metrics)),
        };
        if shut_down {
            let error = request.file.error(ErrorKind::Shutdown, request.kind.op());
            return Err(reject(request, Some(&prepared), error, metrics));
        }
        match hook_gate(hook, &request, prepared.len, 0) {
            HookGate::Submit {
                len,
                retries,
                fail_after,
            } => Ok(InFlight::new(request, prepared, (len, retries, fail_after))),
            HookGate::Fail { errno, retries } => Err(InFlight::new(
                request,
                prepared,
                (0, retries, None),
            )
            .complete(Err(errno), retries, metrics)),
        }
    }
}

/// What to do with a request whose kernel completion arrived.
#[derive(Debug)]
pub enum Settled {
    /// EINTR/EAGAIN: submit it again, with the length in [`InFlight::len`].
    Resubmit(InFlight),
    /// Finished.
    Done(Completion),
}

impl InFlight {
    /// Maps the kernel's result (bytes, or a negated errno) into the completion, or a
    /// resubmission on EINTR/EAGAIN (contract point 3), at most [`RETRIES_MAX`] times.
    pub fn settle(mut self, res: i64, hook: Option<&dyn FaultHook>, metrics: &Metrics) -> Settled {
        let errno = i32::try_from(-res).unwrap_or(libc::EIO);
        if res < 0 && ErrorKind::errno_is_transient(errno) && self.retries < RETRIES_MAX {
            self.retries += 1;
            return match hook_gate(hook, &self.request, self.prepared.len, self.retries) {
                HookGate::Submit {
                    len,
                    retries,
                    fail_after,
                } => {
                    self.len = len;
                    self.retries = retries;
                    self.fail_after = fail_after;
                    Settled::Resubmit(self)
                }
                HookGate::Fail { errno, retries } => {
                    Settled::Done(self.complete(Err(errno), retries, metrics))
                }
            };
        }
        let raw = match (res < 0, self.fail_after) {
            (true, _) => Err(errno),
            // A torn write: the shortened transfer happened, and still reports its error.
            (false, Some(torn)) => Err(torn),
            (false, None) => Ok(usize::try_from(res).unwrap_or(usize::MAX)),
        };
        let retries = self.retries;
        Settled::Done(self.complete(raw, retries, metrics))
    }

    /// Finishes the request through the shared layer ([`finish`]) and builds its completion.
    pub fn complete(self, raw: RawResult, retries: u32, metrics: &Metrics) -> Completion {
        let InFlight {
            mut request,
            prepared,
            ..
        } = self;
        let result = finish(&mut request, &prepared, raw, retries, metrics);
        Completion {
            user_data: request.user_data,
            kind: request.kind,
            result,
            buf: request.buf,
        }
    }

    /// Fails the request without it ever having reached the kernel.
    pub fn reject(self, error: Error, metrics: &Metrics) -> Completion {
        reject(self.request, Some(&self.prepared), error, metrics)
    }
}

/// What [`InFlightTable::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// Submit `inflight` with user data `slot`, store it with [`InFlightTable::store`] first,
    /// then await [`InFlightTable::wait`].
    Submit {
        /// The slot, also the request's user data for the kernel.
        slot: u32,
        /// The request.
        inflight: InFlight,
    },
    /// Finished without submission (validation, the fault hook, shutdown).
    Done(Completion),
}

/// The async API's bookkeeping for a backend whose kernel completes requests: a slot per
/// request in flight (at most the queue depth, waiting when full), the request each slot's
/// kernel submission belongs to, the count the reaper drains at shutdown, and the failure path
/// when the reaper dies.
pub struct InFlightTable {
    slots: Slots<Completion>,
    entries: Mutex<Vec<Option<InFlight>>>,
    /// Requests admitted and not yet completed.
    pending: AtomicUsize,
    shutdown: AtomicBool,
    dead: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a take or a store: consistent even after a panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl InFlightTable {
    /// A table of `depth` slots.
    pub fn new(depth: usize) -> InFlightTable {
        InFlightTable {
            slots: Slots::new(depth),
            entries: Mutex::new((0..depth.max(1)).map(|_| None).collect()),
            pending: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            dead: AtomicBool::new(false),
        }
    }

    /// Validates the request, waits for a slot, consults the fault hook and the shutdown
    /// flag. `refuse` is a backend-specific refusal checked before validation.
    pub async fn admit(
        &self,
        engine_id: u64,
        request: Request,
        refuse: Option<Error>,
        hook: Option<&dyn FaultHook>,
        metrics: &Metrics,
    ) -> Admission {
        if let Some(error) = refuse {
            return Admission::Done(reject(request, None, error, metrics));
        }
        let prepared = match prepare(engine_id, &request) {
            Ok(prepared) => prepared,
            Err(error) => return Admission::Done(reject(request, None, error, metrics)),
        };
        let Ok(slot) = self.slots.acquire().await else {
            let error = request.file.error(ErrorKind::Shutdown, request.kind.op());
            return Admission::Done(reject(request, Some(&prepared), error, metrics));
        };
        // Count the request before looking at the flags, so a reaper draining for shutdown
        // cannot exit between the two: it exits only once the flag is set and nothing is
        // pending.
        self.pending.fetch_add(1, Ordering::SeqCst);
        let completion = match hook_gate(hook, &request, prepared.len, 0) {
            HookGate::Submit {
                len,
                retries,
                fail_after,
            } => {
                if !self.is_shut_down() {
                    let inflight = InFlight::new(request, prepared, (len, retries, fail_after));
                    return Admission::Submit { slot, inflight };
                }
                let error = request.file.error(ErrorKind::Shutdown, request.kind.op());
                reject(request, Some(&prepared), error, metrics)
            }
            HookGate::Fail { errno, retries } => InFlight::new(
                request,
                prepared,
                (0, retries, None),
            )
            .complete(Err(errno), retries, metrics),
        };
        // The slot was taken and counted: hand the completion through it like any other.
        self.finish(slot, completion);
        Admission::Done(self.wait(slot).await)
    }

    /// Records the request of `slot` before its submission reaches the kernel (the reaper may
    /// see its completion at once).
    pub fn store(&self, slot: u32, inflight: InFlight) {
        lock(&self.entries)[slot as usize] = Some(inflight);
    }

    /// Takes the request of `slot`, when its kernel completion arrived.
    pub fn take(&self, slot: u32) -> Option<InFlight> {
        lock(&self.entries)
            .get_mut(slot as usize)
            .and_then(Option::take)
    }

    /// Delivers the completion of `slot`. Returns true when this was the last request pending
    /// during shutdown: the caller then wakes its reaper so it can exit.
    pub fn finish(&self, slot: u32, completion: Completion) -> bool {
        let before = self.pending.fetch_sub(1, Ordering::SeqCst);
        self.slots.complete(slot, completion);
        before == 1 && self.shutdown.load(Ordering::SeqCst)
    }

    /// Waits for the completion of `slot`.
    pub fn wait(&self, slot: u32) -> SlotFuture<'_, Completion> {
        SlotFuture::new(&self.slots, slot)
    }

    /// Starts shutdown: no request is admitted from now on. Returns true the first time.
    pub fn begin_shutdown(&self) -> bool {
        let first = !self.shutdown.swap(true, Ordering::SeqCst);
        self.slots.close();
        first
    }

    /// True once shutdown began or the reaper died.
    pub fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst) || self.dead.load(Ordering::SeqCst)
    }

    /// True when the reaper may exit: shutdown began and nothing is pending.
    pub fn drained(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst) && self.pending.load(Ordering::SeqCst) == 0
    }

    /// The reaper cannot go on: fails every request in flight with [`ErrorKind::Shutdown`]
    /// instead of leaving its task hanging (contract point 9). Their buffers may still be in
    /// the kernel's hands, so they are leaked rather than freed.
    pub fn die(&self, reason: &str, metrics: &Metrics) {
        self.dead.store(true, Ordering::SeqCst);
        self.slots.close();
        let held: Vec<(u32, InFlight)> = lock(&self.entries)
            .iter_mut()
            .enumerate()
            .filter_map(|(slot, entry)| entry.take().map(|e| (slot as u32, e)))
            .collect();
        for (slot, mut inflight) in held {
            if let Some(buf) = inflight.request.buf.take() {
                std::mem::forget(buf);
            }
            let error = inflight
                .request
                .file
                .error(ErrorKind::Shutdown, inflight.request.kind.op())
                .with_message(format!("the completion path died: {reason}"));
            let completion = inflight.reject(error, metrics);
            self.finish(slot, completion);
        }
    }
}
