//! The catalogue of seeded bugs. Two kinds:
//! - `Mutant<E>` wraps a real engine and breaks exactly one rule of the contract on its way in
//!   or out ([`Bug`]); [`Bug::None`] is the control, which breaks nothing and must pass.
//! - [`engine_core::testing::Mutation`] seeds a bug inside the engine's own request
//!   bookkeeping (a lost submission, a slot mix-up, a buffer handed back before its data), on
//!   the kernel backends themselves.
//!
//! The suite must catch every one (`cargo test -p conformance --test mutants`); a mutant that
//! slips through shows a hole in the checks.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use engine_core::raw::FileRaw;
use engine_core::{
    AlignedBuf, Backend, Capabilities, Completion, Error, ErrorKind, File, MetricsSnapshot, Op,
    OpenOptions, PagePool, Queue, Request, Result,
};

/// One deliberate bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bug {
    /// No bug: the control, which must pass every check (a wrapper whose own bookkeeping were
    /// wrong would "catch" every mutant).
    None,
    /// Acknowledges a write at once and performs it only when the next write comes.
    AckOnSubmit,
    /// Acknowledges a write at once and performs it on a background thread a little later,
    /// so a sync that follows does not cover it.
    SyncCoversInFlight,
    /// Retries a failed fsync itself (bypassing the poison) and reports success.
    RetryFsyncAfterEio,
    /// Reports the first sync failure, then lets later syncs succeed.
    UnpoisonAfterReport,
    /// Reports a short write as complete.
    IgnoreShortWrite,
    /// Pads reads at end of file with zeros up to the length asked.
    PadReadsAtEof,
    /// Sends misaligned O_DIRECT requests to the kernel instead of rejecting them.
    SkipAlignmentCheck,
    /// Hands a read's buffer back before the data arrives in it.
    ReuseBufferBeforeCompletion,
    /// Drops the requests of a submit beyond the first two, without completing them.
    DropPartialSubmitRemainder,
    /// Loses every fifth completion.
    LoseCompletion,
    /// Delivers a completion twice.
    DuplicateCompletion,
    /// Turns EIO into success.
    SwallowEio,
    /// Treats an O_DIRECT completion as durable: syncs of O_DIRECT files do nothing.
    DirectCompletionIsDurable,
    /// Splits writes into 4 KiB pieces and writes all but the first one piece too early.
    WrongOffsetOnSplit,
    /// Runs requests on closed handles anyway.
    AcceptClosedHandle,
    /// Truncates lengths to 32 bits.
    TruncateLengthTo32Bits,
    /// Sends writes on read-only handles to the kernel instead of refusing them.
    IgnoreReadOnly,
    /// Sends offsets past the largest file offset to the kernel unchecked.
    UncheckedOffsetOverflow,
    /// Reports success for requests made after shutdown.
    SucceedAfterShutdown,
}

impl Bug {
    /// Every bug in the catalogue.
    pub const ALL: [Bug; 19] = [
        Bug::AckOnSubmit,
        Bug::SyncCoversInFlight,
        Bug::RetryFsyncAfterEio,
        Bug::UnpoisonAfterReport,
        Bug::IgnoreShortWrite,
        Bug::PadReadsAtEof,
        Bug::SkipAlignmentCheck,
        Bug::ReuseBufferBeforeCompletion,
        Bug::DropPartialSubmitRemainder,
        Bug::LoseCompletion,
        Bug::DuplicateCompletion,
        Bug::SwallowEio,
        Bug::DirectCompletionIsDurable,
        Bug::WrongOffsetOnSplit,
        Bug::AcceptClosedHandle,
        Bug::TruncateLengthTo32Bits,
        Bug::IgnoreReadOnly,
        Bug::UncheckedOffsetOverflow,
        Bug::SucceedAfterShutdown,
    ];
}

/// What the mutant remembers of a request until its completion.
#[derive(Clone)]
struct Facts {
    op: Op,
    file: File,
    len: usize,
}

impl Facts {
    fn of(request: &Request) -> Facts {
        Facts {
            op: request.op(),
            file: request.file().clone(),
            len: request.len(),
        }
    }
}

struct State {
    /// A write kept back by [`Bug::AckOnSubmit`].
    deferred: Option<Request>,
    /// Files whose sync failure was reported once ([`Bug::UnpoisonAfterReport`]).
    reported: Vec<u64>,
    shut_down: bool,
}

/// A real engine with one bug.
pub struct Mutant<E: Backend> {
    inner: Arc<E>,
    bug: Bug,
    state: Arc<Mutex<State>>,
    /// True for the engine handle (dropping it shuts the engine down, as dropping any engine
    /// does); false for the copies queues keep.
    owner: bool,
}

impl<E: Backend> Drop for Mutant<E> {
    fn drop(&mut self) {
        if self.owner {
            lock(&self.state).shut_down = true;
            self.inner.shutdown();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs a read or write directly on the descriptor, as an engine without checks would.
fn raw_io(request: &mut Request) -> Result<usize> {
    let op = request.op();
    let offset = request.offset().unwrap_or(0);
    let file = request.file().clone();
    let std = file.std();
    let result = match (op, request.buf_mut()) {
        (Op::Read, Some(buf)) => std.read_at(buf, offset),
        (Op::Write, Some(buf)) => std.write_at(buf, offset),
        (Op::SyncData, _) => std.sync_data().map(|()| 0),
        (Op::SyncAll, _) => std.sync_all().map(|()| 0),
        _ => Ok(0),
    };
    result.map_err(|e| Error::from_io(&e, op))
}

fn misaligned(request: &Request) -> bool {
    let file = request.file();
    let g = file.geometry();
    let (Some(offset), Some(buf)) = (request.offset(), request.buf()) else {
        return false;
    };
    if !file.options().is_direct() {
        return false;
    }
    buf.as_ptr() as u64 % u64::from(g.mem_align) != 0
        || offset % u64::from(g.offset_align) != 0
        || request.len() as u64 % u64::from(g.offset_align) != 0
}

impl<E: Backend + 'static> Mutant<E> {
    /// Wraps `inner` with `bug`.
    pub fn new(inner: E, bug: Bug) -> Mutant<E> {
        Mutant {
            inner: Arc::new(inner),
            bug,
            state: Arc::new(Mutex::new(State {
                deferred: None,
                reported: Vec::new(),
                shut_down: false,
            })),
            owner: true,
        }
    }

    /// The bug.
    pub fn bug(&self) -> Bug {
        self.bug
    }

    /// True when the request is valid: the request-level bugs only touch requests the
    /// engine would accept (a bug that changed the answer to an invalid request would be
    /// caught as a validation bug, which it is not).
    fn valid(request: &Request) -> bool {
        engine_core::raw::validate(request.file().engine_id(), request).is_ok()
    }

    /// Whether the bug takes this request over instead of passing it to the inner engine.
    fn intercepts(&self, request: &Request) -> bool {
        if request.is_vectored() {
            // Each bug is written over one buffer; a vectored request passes through as it is.
            return false;
        }
        let write = request.op() == Op::Write;
        let file = request.file();
        match self.bug {
            Bug::AckOnSubmit | Bug::SyncCoversInFlight => write && Self::valid(request),
            Bug::SkipAlignmentCheck => misaligned(request),
            Bug::DirectCompletionIsDurable => {
                request.op().is_sync() && file.options().is_direct() && Self::valid(request)
            }
            Bug::AcceptClosedHandle => file.is_closed(),
            Bug::IgnoreReadOnly => write && !file.options().is_write(),
            Bug::UncheckedOffsetOverflow => request.offset().is_some_and(|offset| {
                offset
                    .checked_add(request.len() as u64)
                    .is_none_or(|e| e > i64::MAX as u64)
            }),
            Bug::WrongOffsetOnSplit => write && request.len() > 4096 && Self::valid(request),
            Bug::ReuseBufferBeforeCompletion => request.op() == Op::Read && Self::valid(request),
            Bug::SucceedAfterShutdown => lock(&self.state).shut_down,
            _ => false,
        }
    }

    /// Changes a request on its way in.
    fn rewrite(&self, request: &mut Request) {
        if self.bug == Bug::TruncateLengthTo32Bits {
            if let Some(buf) = request.buf_mut() {
                let len = buf.len();
                buf.truncate(len as u32 as usize);
            }
        }
    }

    /// Runs an intercepted request the buggy way.
    async fn intercept(&self, mut request: Request) -> Completion {
        match self.bug {
            Bug::AckOnSubmit => {
                let data = request.buf().map(|b| b.to_vec()).unwrap_or_default();
                let align = request.buf().map_or(1, |b| b.align());
                let offset = request.offset().unwrap_or(0);
                let held = AlignedBuf::from_slice(&data, align)
                    .ok()
                    .map(|buf| Request::write(request.file(), offset, buf, 0));
                let previous = std::mem::replace(&mut lock(&self.state).deferred, held);
                if let Some(previous) = previous {
                    let _ = self.inner.submit(previous).await;
                }
                let len = request.len();
                request.into_completion(Ok(len))
            }
            Bug::SyncCoversInFlight => {
                let data = request.buf().map(|b| b.to_vec()).unwrap_or_default();
                let (file, offset, len) = (
                    request.file().clone(),
                    request.offset().unwrap_or(0),
                    request.len(),
                );
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    let _ = file.std().write_all_at(&data, offset);
                });
                request.into_completion(Ok(len))
            }
            Bug::WrongOffsetOnSplit => {
                let align = request.buf().map_or(1, |b| b.align());
                let data = request.buf().map(|b| b.to_vec()).unwrap_or_default();
                let offset = request.offset().unwrap_or(0);
                for (i, chunk) in data.chunks(4096).enumerate() {
                    // The bug: every piece after the first lands one piece early.
                    let at = offset + (i.saturating_sub(1) * 4096) as u64;
                    if let Ok(piece) = AlignedBuf::from_slice(chunk, align.max(1)) {
                        let completion = self
                            .inner
                            .submit(Request::write(request.file(), at, piece, 0))
                            .await;
                        if let Err(e) = completion.result {
                            return request.into_completion(Err(e));
                        }
                    }
                }
                let len = request.len();
                request.into_completion(Ok(len))
            }
            Bug::ReuseBufferBeforeCompletion => {
                // The read lands in a scratch buffer; the caller's comes back untouched.
                let align = request.buf().map_or(1, |b| b.align());
                match AlignedBuf::zeroed(request.len(), align) {
                    Ok(scratch) => {
                        let offset = request.offset().unwrap_or(0);
                        let completion = self
                            .inner
                            .submit(Request::read(request.file(), offset, scratch, 0))
                            .await;
                        request.into_completion(completion.result)
                    }
                    Err(e) => request.into_completion(Err(e)),
                }
            }
            Bug::DirectCompletionIsDurable => request.into_completion(Ok(0)),
            Bug::SucceedAfterShutdown => {
                let len = request.len();
                request.into_completion(Ok(len))
            }
            _ => {
                let result = raw_io(&mut request);
                request.into_completion(result)
            }
        }
    }

    /// Runs one request with the bug, through the inner engine's async API.
    async fn run(&self, mut request: Request) -> Completion {
        if self.intercepts(&request) {
            return self.intercept(request).await;
        }
        self.rewrite(&mut request);
        let facts = Facts::of(&request);
        let completion = self.inner.submit(request).await;
        self.after(completion, &facts)
    }

    /// The bug's effect on a completion.
    fn after(&self, mut completion: Completion, facts: &Facts) -> Completion {
        match (self.bug, &completion.result) {
            (Bug::IgnoreShortWrite, Ok(n)) if facts.op == Op::Write && *n < facts.len => {
                completion.result = Ok(facts.len);
            }
            (Bug::PadReadsAtEof, Ok(n)) if facts.op == Op::Read && *n < facts.len => {
                if let Some(buf) = completion.buf.as_mut() {
                    let _ = buf.resize(facts.len);
                    buf[*n..].fill(0);
                }
                completion.result = Ok(facts.len);
            }
            (Bug::SwallowEio, Err(e))
                if e.raw_os_error() == Some(libc::EIO) && e.kind() == ErrorKind::Io =>
            {
                completion.result = Ok(facts.len);
            }
            (Bug::RetryFsyncAfterEio, Err(e))
                if facts.op.is_sync() && e.kind() == ErrorKind::Io =>
            {
                let retried = if facts.op == Op::SyncData {
                    facts.file.std().sync_data()
                } else {
                    facts.file.std().sync_all()
                };
                if retried.is_ok() {
                    completion.result = Ok(0);
                }
            }
            (Bug::UnpoisonAfterReport, Err(e)) if facts.op.is_sync() => {
                let mut state = lock(&self.state);
                if e.kind() == ErrorKind::Poisoned && state.reported.contains(&facts.file.id()) {
                    completion.result = Ok(0);
                } else {
                    state.reported.push(facts.file.id());
                }
            }
            (Bug::SucceedAfterShutdown, Err(e)) if e.kind() == ErrorKind::Shutdown => {
                completion.result = Ok(facts.len);
            }
            _ => {}
        }
        completion
    }
}

impl<E: Backend + 'static> Backend for Mutant<E> {
    type Queue = MutantQueue<E>;

    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        self.inner.open(path, options)
    }
    fn adopt(&self, fd: std::os::fd::OwnedFd, options: &OpenOptions) -> Result<File> {
        self.inner.adopt(fd, options)
    }
    fn close(&self, file: &File) -> Result<()> {
        self.inner.close(file)
    }
    async fn submit(&self, request: Request) -> Completion {
        self.run(request).await
    }
    fn queue(&self) -> Result<MutantQueue<E>> {
        Ok(MutantQueue {
            engine: Mutant {
                inner: Arc::clone(&self.inner),
                bug: self.bug,
                state: Arc::clone(&self.state),
                owner: false,
            },
            inner: self.inner.queue()?,
            facts: HashMap::new(),
            ready: VecDeque::new(),
            in_flight: 0,
            pushed_since_submit: 0,
            completed: 0,
            next_tag: 0,
        })
    }
    fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics()
    }
    fn pool(&self) -> Option<&PagePool> {
        self.inner.pool()
    }
    fn shutdown(&self) {
        lock(&self.state).shut_down = true;
        self.inner.shutdown()
    }
}

/// The mutant's queue: the inner engine's queue, with the bug applied to what goes in and
/// what comes out, and the queue-level bugs on top.
pub struct MutantQueue<E: Backend> {
    engine: Mutant<E>,
    inner: E::Queue,
    /// The caller's user data and the facts of each request in the inner queue, by tag.
    facts: HashMap<u64, (u64, Facts)>,
    /// Completions of intercepted requests.
    ready: VecDeque<Completion>,
    in_flight: usize,
    pushed_since_submit: usize,
    completed: u64,
    next_tag: u64,
}

impl<E: Backend + 'static> MutantQueue<E> {
    fn take(&mut self, completions: Vec<Completion>, out: &mut Vec<Completion>) -> usize {
        let mut count = 0;
        for mut completion in completions {
            let Some((user_data, facts)) = self.facts.remove(&completion.user_data) else {
                continue;
            };
            completion.user_data = user_data;
            let completion = self.engine.after(completion, &facts);
            self.completed += 1;
            if self.engine.bug == Bug::LoseCompletion && self.completed % 5 == 0 {
                continue;
            }
            if self.engine.bug == Bug::DuplicateCompletion && self.completed % 3 == 0 {
                out.push(Completion {
                    user_data: completion.user_data,
                    op: completion.op,
                    result: Ok(0),
                    buf: None,
                    bufs: Vec::new(),
                    metadata: None,
                });
                count += 1;
            }
            out.push(completion);
            count += 1;
        }
        count
    }
}

impl<E: Backend + 'static> Queue for MutantQueue<E> {
    fn depth(&self) -> usize {
        self.inner.depth()
    }
    fn in_flight(&self) -> usize {
        self.in_flight
    }
    fn push(&mut self, mut request: Request) -> std::result::Result<(), Request> {
        if self.in_flight >= self.inner.depth() {
            return Err(request);
        }
        self.in_flight += 1;
        if self.engine.intercepts(&request) {
            let completion = engine_core::block_on(self.engine.intercept(request));
            self.ready.push_back(completion);
            return Ok(());
        }
        self.pushed_since_submit += 1;
        if self.engine.bug == Bug::DropPartialSubmitRemainder && self.pushed_since_submit > 2 {
            // Dropped on the floor, still counted in flight.
            return Ok(());
        }
        self.engine.rewrite(&mut request);
        let tag = self.next_tag;
        self.next_tag += 1;
        let user_data = request.replace_user_data(tag);
        self.facts.insert(tag, (user_data, Facts::of(&request)));
        match self.inner.push(request) {
            Ok(()) => Ok(()),
            Err(mut back) => {
                self.facts.remove(&tag);
                back.replace_user_data(user_data);
                self.in_flight -= 1;
                Err(back)
            }
        }
    }
    fn submit(&mut self) -> Result<usize> {
        self.pushed_since_submit = 0;
        self.inner.submit()
    }
    fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        let mut count = self.ready.len();
        out.extend(self.ready.drain(..));
        let mut inner = Vec::new();
        self.inner.poll(&mut inner)?;
        count += self.take(inner, out);
        self.in_flight = self.in_flight.saturating_sub(count);
        Ok(count)
    }
    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) -> Result<usize> {
        let target = min.min(self.in_flight);
        let mut got = self.poll(out)?;
        // A queue that lost requests waits for them forever, as the real bug would; the
        // suite's per-case time limit catches it.
        while got < target {
            let mut inner = Vec::new();
            if self.inner.in_flight() > 0 {
                self.inner.wait(1, &mut inner)?;
            } else {
                self.inner.submit()?;
                std::thread::sleep(Duration::from_millis(5));
            }
            let count = self.take(inner, out);
            self.in_flight = self.in_flight.saturating_sub(count);
            got += count + {
                let n = self.ready.len();
                out.extend(self.ready.drain(..));
                self.in_flight = self.in_flight.saturating_sub(n);
                n
            };
        }
        Ok(got)
    }
}
