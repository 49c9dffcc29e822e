//! `FaultyEngine<E>`: any engine with faults injected deterministically, from a seed and each
//! operation's identity (never thread timing), by rates or by an explicit plan; every
//! injected fault is logged for the oracle ([`crate::oracle`]).
//!
//! Faults go in through the backend's own fault hook, so they travel the backend's real error
//! paths (retries, the short-transfer loop, sync poisoning); completion reordering is added by
//! the wrapper's queue.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::mix;
use engine_core::testing::{FaultAction, FaultHook};
use engine_core::{
    Backend, Capabilities, Completion, EngineConfig, File, MetricsSnapshot, Op, OpenOptions,
    PagePool, Queue, Request, Result,
};

/// The faults the injector can cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// `EIO` on a read, write or sync.
    Eio,
    /// `ENOSPC` on a write or sync.
    Enospc,
    /// `EINTR`, which the engine must retry.
    Eintr,
    /// `EAGAIN`, which the engine must retry.
    Eagain,
    /// A short read or write: half the request, in whole sectors.
    Short,
    /// A torn write: a sector-granular prefix reaches the file, then `EIO`.
    Torn,
    /// Extra latency before the request reaches the OS (0.1 to 2 ms).
    Latency,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 7] = [
        Fault::Eio,
        Fault::Enospc,
        Fault::Eintr,
        Fault::Eagain,
        Fault::Short,
        Fault::Torn,
        Fault::Latency,
    ];

    /// True when the fault can hit `op` (for example: no short sync, no torn read).
    pub fn applies_to(self, op: Op) -> bool {
        match self {
            Fault::Eio | Fault::Eintr | Fault::Eagain | Fault::Latency => true,
            Fault::Enospc => !matches!(op, Op::Read | Op::Metadata),
            Fault::Short => matches!(op, Op::Read | Op::Write),
            Fault::Torn => op == Op::Write,
        }
    }

    /// True for faults the engine must hide (retried or completed by the exact loops).
    pub fn maskable(self) -> bool {
        matches!(
            self,
            Fault::Eintr | Fault::Eagain | Fault::Latency | Fault::Short
        )
    }

    /// The errno the fault reports, for error faults.
    pub fn errno(self) -> Option<i32> {
        match self {
            Fault::Eio | Fault::Torn => Some(libc::EIO),
            Fault::Enospc => Some(libc::ENOSPC),
            Fault::Eintr => Some(libc::EINTR),
            Fault::Eagain => Some(libc::EAGAIN),
            Fault::Short | Fault::Latency => None,
        }
    }

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Eio => "EIO",
            Fault::Enospc => "ENOSPC",
            Fault::Eintr => "EINTR",
            Fault::Eagain => "EAGAIN",
            Fault::Short => "short",
            Fault::Torn => "torn",
            Fault::Latency => "latency",
        }
    }
}

/// One entry of an explicit plan: the `occurrence`-th request of `op` (counted from 0, over
/// the whole engine) gets `fault`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanEntry {
    /// The request operation.
    pub op: Op,
    /// Which request of that operation.
    pub occurrence: u64,
    /// What happens to it.
    pub fault: Fault,
}

/// How faults are chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Each request gets each applicable fault with this probability, decided by hashing the
    /// seed with the request's identity and occurrence.
    Rates(Vec<(Fault, f64)>),
    /// Exactly these.
    Explicit(Vec<PlanEntry>),
}

/// What identifies a request to the injector: file (by path, numbered in order of first
/// sight), operation, offset and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// The file's number.
    pub file: u32,
    /// The request operation.
    pub op: Op,
    /// Its offset (0 for syncs).
    pub offset: u64,
    /// Its length as submitted (0 for syncs).
    pub len: usize,
}

/// One injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    /// Order of injection.
    pub sequence: u64,
    /// The request.
    pub identity: Identity,
    /// Which time this identity was seen.
    pub occurrence: u32,
    /// The fault.
    pub fault: Fault,
    /// For short and torn faults, the bytes let through.
    pub bytes: usize,
}

#[derive(Default)]
struct State {
    files: HashMap<PathBuf, u32>,
    occurrences: HashMap<Identity, u32>,
    per_kind: [u64; Op::IO.len()],
    log: Vec<Injection>,
}

/// The fault hook of a [`FaultyEngine`]: decides, logs and applies faults.
pub struct Injector {
    seed: u64,
    plan: Plan,
    state: Mutex<State>,
}

impl Injector {
    /// An injector with `seed` and `plan`.
    pub fn new(seed: u64, plan: Plan) -> Arc<Injector> {
        Arc::new(Injector {
            seed,
            plan,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Every fault injected so far, in order.
    pub fn log(&self) -> Vec<Injection> {
        self.state().log.clone()
    }

    /// How many injections so far; the log from this index on belongs to later requests.
    pub fn log_len(&self) -> usize {
        self.state().log.len()
    }

    /// A digest of the log, independent of timing between distinct identities: the same seed
    /// and workload give the same digest.
    pub fn trace_hash(&self) -> u64 {
        let mut entries: Vec<(Identity, u32, Fault, usize)> = self
            .state()
            .log
            .iter()
            .map(|i| (i.identity, i.occurrence, i.fault, i.bytes))
            .collect();
        entries.sort();
        entries
            .iter()
            .fold(self.seed, |h, (id, occ, fault, bytes)| {
                let word = u64::from(id.file)
                    ^ (id.op as u64) << 8
                    ^ id.offset << 16
                    ^ (id.len as u64) << 40
                    ^ u64::from(*occ) << 52
                    ^ (*fault as u64) << 60;
                mix(h ^ word ^ (*bytes as u64).rotate_left(17))
            })
    }

    fn decide(&self, identity: Identity, occurrence: u32, per_kind: u64) -> Option<Fault> {
        match &self.plan {
            Plan::Explicit(entries) => entries
                .iter()
                .find(|e| e.op == identity.op && e.occurrence == per_kind)
                .map(|e| e.fault),
            Plan::Rates(rates) => {
                let key = self.seed
                    ^ u64::from(identity.file).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ (identity.op as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
                    ^ identity.offset.wrapping_mul(0x1656_67B1_9E37_79F9)
                    ^ (identity.len as u64).rotate_left(29)
                    ^ u64::from(occurrence).rotate_left(47);
                let mut roll = (mix(key) >> 11) as f64 / (1u64 << 53) as f64;
                for &(fault, rate) in rates {
                    if !fault.applies_to(identity.op) {
                        continue;
                    }
                    if roll < rate {
                        return Some(fault);
                    }
                    roll -= rate;
                }
                None
            }
        }
    }
}

/// The position of a request operation in [`Op::IO`].
pub fn op_index(op: Op) -> usize {
    Op::IO.iter().position(|&o| o == op).unwrap_or(0)
}

/// Sector granularity of short and torn transfers.
const SECTOR: usize = 512;

impl FaultHook for Injector {
    fn before(
        &self,
        op: Op,
        file: &File,
        offset: u64,
        len: usize,
        attempt: u32,
    ) -> Option<FaultAction> {
        // Retries of an injected EINTR/EAGAIN see the device healthy again: that is the fault
        // being masked, which the oracle expects.
        if attempt > 0 {
            return None;
        }
        {
            let mut state = self.state();
            let next = state.files.len() as u32;
            let file_number = *state.files.entry(file.path().to_path_buf()).or_insert(next);
            let identity = Identity {
                file: file_number,
                op,
                offset,
                len,
            };
            let occurrence = {
                let counter = state.occurrences.entry(identity).or_insert(0);
                *counter += 1;
                *counter - 1
            };
            let index = op_index(op);
            let per_kind = state.per_kind[index];
            state.per_kind[index] += 1;
            let fault = self
                .decide(identity, occurrence, per_kind)
                .filter(|f| f.applies_to(op));
            let action = fault.and_then(|fault| {
                let half = (len / 2) / SECTOR * SECTOR;
                let (action, bytes) = match fault {
                    Fault::Short | Fault::Torn if half == 0 => return None,
                    Fault::Short => (Some(FaultAction::Short(half)), half),
                    Fault::Torn => (
                        Some(FaultAction::Torn {
                            persist: half,
                            errno: libc::EIO,
                        }),
                        half,
                    ),
                    Fault::Latency => (None, 0),
                    other => (other.errno().map(FaultAction::Fail), 0),
                };
                let sequence = state.log.len() as u64;
                state.log.push(Injection {
                    sequence,
                    identity,
                    occurrence,
                    fault,
                    bytes,
                });
                Some((fault, action))
            });
            match action {
                Some((Fault::Latency, _)) => {
                    drop(state);
                    let micros = 100 + mix(self.seed ^ offset ^ u64::from(occurrence)) % 1900;
                    std::thread::sleep(Duration::from_micros(micros));
                    None
                }
                Some((_, action)) => action,
                None => None,
            }
        }
    }
}

/// Any engine, with faults from an [`Injector`].
pub struct FaultyEngine<E> {
    inner: E,
    injector: Arc<Injector>,
    reorder: bool,
}

impl<E: Backend> FaultyEngine<E> {
    /// Builds the inner engine with `make(config)`, the injector installed as its fault hook
    /// (ahead of any hook `config` already had). With `reorder`, the queue hands completions
    /// back in a permuted order.
    ///
    /// # Errors
    ///
    /// The inner engine's setup error; [`engine_core::ErrorKind::Unsupported`] when it does not
    /// honour the fault hook.
    pub fn new(
        make: impl FnOnce(EngineConfig) -> Result<E>,
        mut config: EngineConfig,
        injector: &Arc<Injector>,
        reorder: bool,
    ) -> Result<FaultyEngine<E>> {
        config.testing.fault_hook = Some(Arc::new(Chain {
            injector: Arc::clone(injector),
            next: config.testing.fault_hook.take(),
        }));
        let inner = make(config)?;
        if !inner.capabilities().fault_hook {
            return Err(engine_core::Error::new(
                engine_core::ErrorKind::Unsupported,
                engine_core::Op::Setup,
                format!(
                    "backend {} has no fault hook to inject through",
                    inner.name()
                ),
            ));
        }
        Ok(FaultyEngine {
            inner,
            injector: Arc::clone(injector),
            reorder,
        })
    }

    /// The injector, with its log.
    pub fn injector(&self) -> &Arc<Injector> {
        &self.injector
    }

    /// The wrapped engine.
    pub fn inner(&self) -> &E {
        &self.inner
    }
}

/// The hook installed in the inner engine: the injector first, then the hook the
/// configuration already had.
struct Chain {
    injector: Arc<Injector>,
    next: Option<Arc<dyn FaultHook>>,
}

impl FaultHook for Chain {
    fn before(
        &self,
        op: Op,
        file: &File,
        offset: u64,
        len: usize,
        attempt: u32,
    ) -> Option<FaultAction> {
        self.injector
            .before(op, file, offset, len, attempt)
            .or_else(|| {
                self.next
                    .as_ref()
                    .and_then(|h| h.before(op, file, offset, len, attempt))
            })
    }
}

impl<E: Backend> Backend for FaultyEngine<E> {
    type Queue = FaultyQueue<E::Queue>;

    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    fn open(&self, path: &std::path::Path, options: &OpenOptions) -> Result<File> {
        self.inner.open(path, options)
    }
    fn adopt(&self, fd: std::os::fd::OwnedFd, options: &OpenOptions) -> Result<File> {
        self.inner.adopt(fd, options)
    }
    fn close(&self, file: &File) -> Result<()> {
        self.inner.close(file)
    }
    fn submit(
        &self,
        request: Request,
    ) -> impl std::future::Future<Output = Completion> + Send + '_ {
        self.inner.submit(request)
    }
    fn queue(&self) -> Result<FaultyQueue<E::Queue>> {
        Ok(FaultyQueue {
            inner: self.inner.queue()?,
            reorder: self.reorder,
            rounds: self.injector.seed,
        })
    }
    fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics()
    }
    fn pool(&self) -> Option<&PagePool> {
        self.inner.pool()
    }
    fn shutdown(&self) {
        self.inner.shutdown()
    }
}

/// A queue whose completions can come back permuted: completion order is never promised.
pub struct FaultyQueue<Q> {
    inner: Q,
    reorder: bool,
    rounds: u64,
}

impl<Q: Queue> FaultyQueue<Q> {
    fn permute(&mut self, out: &mut [Completion]) {
        if !self.reorder || out.len() < 2 {
            return;
        }
        self.rounds = mix(self.rounds);
        // A deterministic rotation plus, on odd rounds, a reversal.
        let by = (self.rounds % out.len() as u64) as usize;
        out.rotate_left(by);
        if self.rounds & 1 == 1 {
            out.reverse();
        }
    }
}

impl<Q: Queue> Queue for FaultyQueue<Q> {
    fn depth(&self) -> usize {
        self.inner.depth()
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn push(&mut self, request: Request) -> std::result::Result<(), Request> {
        self.inner.push(request)
    }
    fn submit(&mut self) -> Result<usize> {
        self.inner.submit()
    }
    fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        let start = out.len();
        let n = self.inner.poll(out)?;
        self.permute(&mut out[start..]);
        Ok(n)
    }
    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) -> Result<usize> {
        let start = out.len();
        let n = self.inner.wait(min, out)?;
        self.permute(&mut out[start..]);
        Ok(n)
    }
}
