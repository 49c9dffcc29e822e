//! Soak and cancellation storm, on every backend compiled into the facade.
//!
//! Two threads with a queue each and two threads of the async API share one engine of depth
//! 256 and run a seeded mix of 4 KiB reads and writes and some syncs over blocks each thread
//! owns, checked against the thread's model of its blocks. Every block holds a canary: its own
//! index, the version of the write that put it there and a body computed from both. Data
//! written from a buffer reused before its request completed, a read answered with another
//! request's result, a torn write or a stale read each show as a wrong canary.
//!
//! - `soak:<backend>::mixed_seed_<n>`: no future is dropped. Every completion must be one the
//!   thread is waiting for, and every read must return exactly the last acknowledged write.
//! - `soak:<backend>::storm_seed_<n>` and `storm_strict_seed_<n>` (strict mode): the same, with a
//!   seeded sixteenth of the async API's futures dropped at a chosen poll of their round:
//!   before the first, at the second (in line for one of the engine's slots, which 512 futures
//!   share, staged behind a 16-entry kernel queue, or in the kernel) or later. A dropped write
//!   is never counted as acknowledged: the block may then hold the dropped version or the
//!   acknowledged one, and nothing else.
//!
//! The work runs in epochs. At the end of each, once every thread has joined, the pool's bytes
//! in use must fall to zero: every buffer came back, including those of dropped futures that
//! the engine held until the kernel was done with them. The blocks a dropped future touched
//! are then settled: each must hold a canary of the versions the model allows, and in strict
//! mode a write to each must be accepted (no claimed range was left behind). Throughout, the
//! pool's bound (every buffer the threads and the engine's slots can hold at once) must never
//! refuse a buffer, and resident memory must stay within [`RSS_SLACK`] of where it started.
//! At the end every block is checked, the engine's counts must match the threads' (the soak),
//! no file stays registered with an io_uring instance once its handles are dropped, and after
//! the engine drops, descriptors and threads are back to their baseline.
//!
//! `CONFORMANCE_SOAK_OPS` sets the soak's operations per backend (default 1,000,000); each
//! storm runs a tenth as many.

use std::future::Future;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use conformance::process;
use conformance::runner::{self, Outcome, Trial};
use engine::{Engine, EngineConfig, ErrorKind, BUILTIN_BACKENDS};
use engine_core::{
    block_on, join_all, AlignedBuf, Completion, File, OpenOptions, PageAllocator, PagePool,
    PoolConfig, Queue, Request,
};

const DEPTH: usize = 256;
const BLOCK: usize = 4096;
/// Blocks each thread owns.
const THREAD_BLOCKS: u64 = 2048;
const QUEUE_THREADS: u64 = 2;
const ASYNC_THREADS: u64 = 2;
const THREADS: u64 = QUEUE_THREADS + ASYNC_THREADS;
/// Futures an async thread joins at once: all of them wait for one of the engine's `DEPTH`
/// slots, which the other async thread's futures share.
const ROUND: usize = DEPTH;
/// Operations per thread per epoch; at a sixteenth dropped, about a quarter of an async
/// thread's blocks are left to settle at the epoch's end.
const EPOCH_THREAD_OPS: u64 = 8192;
/// The kernel queue's entries in the storms.
const SMALL_SUBMISSION_QUEUE: u32 = 16;
/// Operations of the soak unless `CONFORMANCE_SOAK_OPS` says otherwise; each storm runs a
/// tenth as many.
const OPS_DEFAULT: u64 = 1_000_000;
/// How far resident memory may grow over the trial's start. The trial's own memory (model,
/// buffers, the engine's rings and threads) is a few MiB; a leak of one byte per operation
/// over a million operations would pass it, one of a buffer every few thousand would not.
const RSS_SLACK: u64 = 96 << 20;

/// The most pool memory the trial can hold at once: every queue full, every async thread's
/// round of futures, and the engine's slots holding buffers of dropped futures.
const POOL_BOUND: usize =
    (QUEUE_THREADS as usize * DEPTH + ASYNC_THREADS as usize * ROUND + DEPTH) * BLOCK;

/// A small deterministic generator (splitmix64), so a seed names one schedule.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    conformance::mix(*state)
}

/// Fills `data` with the canary of `version` at `block`.
fn fill(data: &mut [u8], block: u64, version: u64) {
    let (head, body) = data.split_at_mut(16);
    head[..8].copy_from_slice(&block.to_le_bytes());
    head[8..].copy_from_slice(&version.to_le_bytes());
    let seed = conformance::mix(block ^ version.rotate_left(29));
    for (i, word) in body.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&conformance::mix(seed.wrapping_add(i as u64)).to_le_bytes());
    }
}

/// The block and version a canary names, if `data` is a whole, intact canary.
fn decode(data: &[u8]) -> Result<(u64, u64), String> {
    if data.len() != BLOCK {
        return Err(format!("{} bytes instead of {BLOCK}", data.len()));
    }
    let word = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or([0; 8]));
    let (block, version) = (word(0), word(8));
    let seed = conformance::mix(block ^ version.rotate_left(29));
    for i in 0..(BLOCK - 16) / 8 {
        if word(16 + 8 * i) != conformance::mix(seed.wrapping_add(i as u64)) {
            return Err(format!(
                "not an intact canary (header: block {block} version {version:#x}; body word {i} \
                 differs)"
            ));
        }
    }
    Ok((block, version))
}

/// One trial's settings.
#[derive(Clone, Copy)]
struct Plan {
    seed: u64,
    /// Drop one future in `drop_one_in` of the async API's (0: none).
    drop_one_in: u64,
    strict: bool,
    ops: u64,
}

/// What a thread did.
#[derive(Clone, Copy, Default)]
struct Tally {
    reads: u64,
    writes: u64,
    syncs: u64,
    /// Futures dropped at the round's second poll, at a later one, and before any.
    dropped_at: [u64; 3],
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.syncs += other.syncs;
        for (mine, theirs) in self.dropped_at.iter_mut().zip(other.dropped_at) {
            *mine += theirs;
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped_at.iter().sum()
    }
}

/// What may be in a block a dropped future touched, until the epoch's end settles it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unsettled {
    /// Nothing: the block holds its acknowledged version.
    No,
    /// A dropped read: the block holds its acknowledged version, and in strict mode the read
    /// claims it until the kernel is done.
    Read,
    /// A dropped write of this version, which may or may not have landed.
    Write(u64),
}

/// A thread's model of the blocks it owns.
struct Model {
    thread: u64,
    /// The version each block holds: the last acknowledged write (0: the initial canary).
    acked: Vec<u64>,
    unsettled: Vec<Unsettled>,
    /// The thread's next write version; versions name their thread in the top 16 bits.
    version: u64,
}

impl Model {
    fn new(thread: u64) -> Model {
        Model {
            thread,
            acked: vec![0; THREAD_BLOCKS as usize],
            unsettled: vec![Unsettled::No; THREAD_BLOCKS as usize],
            version: 0,
        }
    }

    fn first_block(&self) -> u64 {
        self.thread * THREAD_BLOCKS
    }

    fn next_version(&mut self) -> u64 {
        self.version += 1;
        (self.thread + 1) << 48 | self.version
    }

    /// Checks a read of block `index` (of this thread's) against the model.
    fn check_read(&self, index: usize, data: &[u8]) -> Result<(), String> {
        let block = self.first_block() + index as u64;
        let found = decode(data).map_err(|e| format!("read of block {block}: {e}"))?;
        if found != (block, self.acked[index]) {
            return Err(format!(
                "read of block {block}: found block {} version {:#x}, expected version {:#x}",
                found.0, found.1, self.acked[index]
            ));
        }
        Ok(())
    }
}

/// A choice of operation for one request.
#[derive(Clone, Copy)]
enum Kind {
    Read,
    Write,
    Sync,
}

fn kind(rng: &mut u64) -> Kind {
    match next(rng) % 256 {
        0..=1 => Kind::Sync,
        2..=127 => Kind::Write,
        _ => Kind::Read,
    }
}

/// A buffer from the pool: a canary to write, or poison to read into.
fn pool_buf(pool: &PagePool, canary: Option<(u64, u64)>) -> Result<AlignedBuf, String> {
    let mut buf = pool
        .alloc_for_overwrite(BLOCK)
        .map_err(|e| format!("the pool refused a buffer within its bound: {e}"))?;
    match canary {
        Some((block, version)) => fill(&mut buf, block, version),
        None => buf.fill(0xDB),
    }
    Ok(buf)
}

/// A block of the thread's that neither a request in flight nor a dropped future touches.
fn free_block(model: &Model, busy: &[bool], rng: &mut u64) -> usize {
    loop {
        let index = (next(rng) % THREAD_BLOCKS) as usize;
        if !busy[index] && model.unsettled[index] == Unsettled::No {
            return index;
        }
    }
}

/// A queue's thread: keeps the queue full for `ops` requests and checks every completion.
fn queue_thread(
    mut queue: impl Queue,
    file: &File,
    pool: &PagePool,
    model: &mut Model,
    ops: u64,
    rng: &mut u64,
) -> Result<Tally, String> {
    let mut tally = Tally::default();
    let mut busy = vec![false; THREAD_BLOCKS as usize];
    // By user data (the request's number): its kind, its block and the version it writes.
    let mut pending = std::collections::HashMap::with_capacity(DEPTH);
    let mut out = Vec::with_capacity(DEPTH);
    let mut pushed = 0;
    while pushed < ops || !pending.is_empty() {
        while pushed < ops && queue.in_flight() < queue.depth() {
            let index = free_block(model, &busy, rng);
            let offset = (model.first_block() + index as u64) * BLOCK as u64;
            let (request, expect) = match kind(rng) {
                Kind::Sync => (Request::sync_data(file, pushed), (Kind::Sync, index, 0)),
                Kind::Write => {
                    let version = model.next_version();
                    let buf = pool_buf(pool, Some((model.first_block() + index as u64, version)))?;
                    let request = Request::write(file, offset, buf, pushed);
                    (request, (Kind::Write, index, version))
                }
                Kind::Read => {
                    let buf = pool_buf(pool, None)?;
                    (
                        Request::read(file, offset, buf, pushed),
                        (Kind::Read, index, 0),
                    )
                }
            };
            if !matches!(expect.0, Kind::Sync) {
                busy[index] = true;
            }
            if queue.push(request).is_err() {
                return Err(format!(
                    "push refused with {} of {} in flight",
                    queue.in_flight(),
                    queue.depth()
                ));
            }
            pending.insert(pushed, expect);
            pushed += 1;
        }
        queue.wait(1, &mut out).map_err(|e| format!("wait: {e}"))?;
        for completion in out.drain(..) {
            settle_completion(completion, &mut pending, &mut busy, model, &mut tally)?;
        }
    }
    Ok(tally)
}

fn settle_completion(
    completion: Completion,
    pending: &mut std::collections::HashMap<u64, (Kind, usize, u64)>,
    busy: &mut [bool],
    model: &mut Model,
    tally: &mut Tally,
) -> Result<(), String> {
    let Some((kind, index, version)) = pending.remove(&completion.user_data) else {
        return Err(format!(
            "a completion for request {} that is not in flight (duplicated or unknown)",
            completion.user_data
        ));
    };
    let result = completion
        .result
        .map_err(|e| format!("request {}: {e}", completion.user_data))?;
    match kind {
        Kind::Sync => tally.syncs += 1,
        Kind::Write => {
            if result != BLOCK {
                return Err(format!("a write reported {result} bytes"));
            }
            model.acked[index] = version;
            tally.writes += 1;
        }
        Kind::Read => {
            let buf = completion
                .buf
                .ok_or("a read came back without its buffer")?;
            model.check_read(index, &buf[..result])?;
            tally.reads += 1;
        }
    }
    if !matches!(kind, Kind::Sync) {
        busy[index] = false;
    }
    Ok(())
}

/// A future of a round, until it finishes or is dropped.
type Pending<F> = Option<Pin<Box<F>>>;

/// Joins a round of futures, dropping each one still pending at its chosen poll of the round
/// (0: before its first poll). Every pending future is polled at each of the round's polls, so
/// one is dropped while it waits in line for a slot or is in the kernel, not only once its
/// completion has woken it. A dropped future resolves to `Err(poll)`.
struct Storm<F: Future> {
    /// Each future (until it finishes or is dropped) and the poll to drop it at.
    futures: Vec<(Pending<F>, Option<u32>)>,
    outputs: Vec<Option<Result<F::Output, u32>>>,
    polls: u32,
}

impl<F: Future> Storm<F> {
    fn new(futures: Vec<(F, Option<u32>)>) -> Storm<F> {
        Storm {
            outputs: futures.iter().map(|_| None).collect(),
            futures: futures
                .into_iter()
                .map(|(future, at)| (Some(Box::pin(future)), at))
                .collect(),
            polls: 0,
        }
    }
}

impl<F: Future> Future for Storm<F>
where
    F::Output: Unpin,
{
    type Output = Vec<Result<F::Output, u32>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let poll = this.polls;
        this.polls += 1;
        let mut pending = false;
        for ((slot, at), output) in this.futures.iter_mut().zip(this.outputs.iter_mut()) {
            let Some(future) = slot else { continue };
            if *at == Some(poll) {
                *slot = None;
                *output = Some(Err(poll));
                continue;
            }
            match future.as_mut().poll(cx) {
                Poll::Ready(value) => {
                    *slot = None;
                    *output = Some(Ok(value));
                }
                Poll::Pending => pending = true,
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(this.outputs.iter_mut().filter_map(Option::take).collect())
    }
}

/// What an async request returned.
enum Done {
    Read(engine::Result<usize>, AlignedBuf),
    Write(engine::Result<usize>),
    Sync(engine::Result<()>),
}

/// An async API thread: rounds of `ROUND` futures joined, some dropped at a seeded poll.
fn async_thread(
    engine: &Engine,
    file: &File,
    pool: &PagePool,
    model: &mut Model,
    plan: Plan,
    ops: u64,
    rng: &mut u64,
) -> Result<Tally, String> {
    let mut tally = Tally::default();
    let mut done = 0;
    let mut busy = vec![false; THREAD_BLOCKS as usize];
    while done < ops {
        let mut round = Vec::with_capacity(ROUND);
        let mut chosen = Vec::with_capacity(ROUND);
        for _ in 0..ROUND.min((ops - done) as usize) {
            let index = free_block(model, &busy, rng);
            let block = model.first_block() + index as u64;
            let offset = block * BLOCK as u64;
            let kind = kind(rng);
            let version = match kind {
                Kind::Write => model.next_version(),
                _ => 0,
            };
            let buf = match kind {
                Kind::Write => Some(pool_buf(pool, Some((block, version)))?),
                Kind::Read => Some(pool_buf(pool, None)?),
                Kind::Sync => None,
            };
            if !matches!(kind, Kind::Sync) {
                busy[index] = true;
            }
            // Most dropped futures go at the round's second poll, when they are in the kernel
            // or in line for a slot; some before any poll, some later.
            let at =
                (plan.drop_one_in > 0 && next(rng) % plan.drop_one_in == 0).then(|| {
                    match next(rng) % 8 {
                        0 => 0,
                        1..=5 => 1,
                        6 => 2,
                        _ => 3,
                    }
                });
            let future = async move {
                match (kind, buf) {
                    (Kind::Read, Some(buf)) => {
                        let (result, buf) = engine.read_at(file, offset, buf).await;
                        Done::Read(result, buf)
                    }
                    (Kind::Write, Some(buf)) => {
                        Done::Write(engine.write_at(file, offset, buf).await.0)
                    }
                    _ => Done::Sync(engine.sync_data(file).await),
                }
            };
            round.push((future, at));
            chosen.push((kind, index, version));
        }
        done += round.len() as u64;
        let outcomes = if plan.drop_one_in == 0 {
            // The path users take.
            let futures = round.into_iter().map(|(future, _)| future).collect();
            block_on(join_all(futures)).into_iter().map(Ok).collect()
        } else {
            block_on(Storm::new(round))
        };
        for (outcome, (kind, index, version)) in outcomes.into_iter().zip(chosen) {
            busy[index] = false;
            match outcome {
                Err(polls) => {
                    tally.dropped_at[match polls {
                        0 => 2,
                        1 => 0,
                        _ => 1,
                    }] += 1;
                    // A future dropped before its first poll did nothing.
                    if polls > 0 {
                        model.unsettled[index] = match kind {
                            Kind::Write => Unsettled::Write(version),
                            Kind::Read => Unsettled::Read,
                            Kind::Sync => model.unsettled[index],
                        };
                    }
                }
                Ok(Done::Write(result)) => {
                    let n = result.map_err(|e| format!("async write: {e}"))?;
                    if n != BLOCK {
                        return Err(format!("an async write reported {n} bytes"));
                    }
                    model.acked[index] = version;
                    tally.writes += 1;
                }
                Ok(Done::Read(result, buf)) => {
                    let n = result.map_err(|e| format!("async read: {e}"))?;
                    model.check_read(index, &buf[..n])?;
                    tally.reads += 1;
                }
                Ok(Done::Sync(result)) => {
                    result.map_err(|e| format!("async sync: {e}"))?;
                    tally.syncs += 1;
                }
            }
        }
    }
    Ok(tally)
}

/// Samples resident memory until told to stop, keeping the peak.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start() -> RssSampler {
        let peak = Arc::new(AtomicU64::new(process::resident_bytes()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(process::resident_bytes(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        RssSampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Settles the blocks dropped futures touched, once every request of the epoch is done: each
/// holds a canary of a version the model allows; in strict mode, a write to each is accepted.
fn settle_dropped(
    engine: &Engine,
    file: &File,
    reader: &std::fs::File,
    pool: &PagePool,
    models: &mut [Model],
    strict: bool,
) -> Result<u64, String> {
    let mut settled = 0;
    let mut data = vec![0u8; BLOCK];
    for model in models.iter_mut() {
        let mut rewrites = Vec::new();
        for index in 0..THREAD_BLOCKS as usize {
            let dropped = match model.unsettled[index] {
                Unsettled::No => continue,
                Unsettled::Read => None,
                Unsettled::Write(version) => Some(version),
            };
            let block = model.first_block() + index as u64;
            reader
                .read_exact_at(&mut data, block * BLOCK as u64)
                .map_err(|e| format!("reading block {block} back: {e}"))?;
            let (found, version) = decode(&data).map_err(|e| format!("block {block}: {e}"))?;
            if found != block || (version != model.acked[index] && Some(version) != dropped) {
                return Err(format!(
                    "block {block} holds block {found} version {version:#x}; a dropped future left \
                     it at {:#x} (acknowledged) or {dropped:#x?} (the dropped write)",
                    model.acked[index]
                ));
            }
            model.acked[index] = version;
            model.unsettled[index] = Unsettled::No;
            settled += 1;
            if strict {
                rewrites.push(index);
            }
        }
        for chunk in rewrites.chunks(DEPTH) {
            let mut writes = Vec::with_capacity(chunk.len());
            for &index in chunk {
                let block = model.first_block() + index as u64;
                let version = model.next_version();
                let buf = pool_buf(pool, Some((block, version)))?;
                writes.push(async move {
                    let (result, _) = engine.write_at(file, block * BLOCK as u64, buf).await;
                    (result, block)
                });
                model.acked[index] = version;
            }
            for (result, block) in block_on(join_all(writes)) {
                match result {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::Overlap => {
                        return Err(format!(
                            "strict mode still holds a claim on block {block} after every request \
                             of a dropped future completed: {e}"
                        ))
                    }
                    Err(e) => return Err(format!("rewriting block {block}: {e}")),
                }
            }
        }
    }
    Ok(settled)
}

/// Waits up to ten seconds for every pool buffer to come back.
fn pool_drained(pool: &PagePool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = pool.stats();
        if stats.bytes_in_use == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} bytes of buffers still held 10 s after every thread of the epoch joined: a \
                 request or a dropped future's buffer was never given back",
                stats.bytes_in_use
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn soak(backend: &'static str, plan: Plan) -> Outcome {
    match run(backend, plan) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Failed(format!("seed {}: {e}", plan.seed)),
    }
}

fn run(backend: &'static str, plan: Plan) -> Result<Outcome, String> {
    let dir = match std::env::var_os("CONFORMANCE_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .map_err(|e| format!("scratch directory: {e}"))?;
    let path = dir.path().join("data");
    {
        let mut initial = vec![0u8; (THREADS * THREAD_BLOCKS) as usize * BLOCK];
        for (block, data) in initial.chunks_exact_mut(BLOCK).enumerate() {
            fill(data, block as u64, 0);
        }
        std::fs::write(&path, initial).map_err(|e| format!("initial file: {e}"))?;
    }
    let before = process::census();
    let eventfds_before = process::eventfds();
    let rss = RssSampler::start();
    let rss_before = rss.peak();
    let mut config = EngineConfig {
        queue_depth: DEPTH,
        strict: plan.strict,
        ..EngineConfig::default()
    };
    if plan.drop_one_in > 0 {
        // A kernel queue far smaller than the engine's, so requests also wait staged, or
        // refused by a full AIO context, and are dropped there (holding their claim, in
        // strict mode, before the kernel has them).
        config.testing.submission_entries = Some(SMALL_SUBMISSION_QUEUE);
    }
    let engine = match Engine::with_backend(backend, config) {
        Ok(engine) => engine,
        Err(e) => return Ok(Outcome::Skipped(format!("{backend} cannot run here: {e}"))),
    };
    let pool = PagePool::new(PoolConfig {
        limit_bytes: POOL_BOUND,
        ..PoolConfig::default()
    })
    .map_err(|e| format!("pool: {e}"))?;
    let registered_before = process::registered_files();
    let file = engine
        .open(&path, &OpenOptions::new().read(true).write(true))
        .map_err(|e| format!("open: {e}"))?;
    // The test's own view of the file, for checks outside the engine.
    let reader = std::fs::File::open(&path).map_err(|e| format!("open to check: {e}"))?;
    let mut models: Vec<Model> = (0..THREADS).map(Model::new).collect();
    let mut rngs: Vec<u64> = (0..THREADS)
        .map(|t| conformance::mix(plan.seed * 101 + t))
        .collect();
    let mut tally = Tally::default();
    let mut settled = 0;
    let epoch_ops = (plan.ops / THREADS).clamp(1, EPOCH_THREAD_OPS);
    let started = Instant::now();
    let mut remaining = plan.ops.div_ceil(THREADS);
    while remaining > 0 {
        let ops = remaining.min(epoch_ops);
        remaining -= ops;
        let results: Vec<Result<Tally, String>> = std::thread::scope(|scope| {
            let threads: Vec<_> = models
                .iter_mut()
                .zip(rngs.iter_mut())
                .map(|(model, rng)| {
                    let (engine, file, pool) = (&engine, &file, &pool);
                    scope.spawn(move || {
                        if model.thread < QUEUE_THREADS {
                            let queue = engine.queue().map_err(|e| format!("queue: {e}"))?;
                            queue_thread(queue, file, pool, model, ops, rng)
                        } else {
                            async_thread(engine, file, pool, model, plan, ops, rng)
                        }
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err("a load thread panicked".into()))
                })
                .collect()
        });
        for result in results {
            tally.add(result?);
        }
        pool_drained(&pool)?;
        settled += settle_dropped(&engine, &file, &reader, &pool, &mut models, plan.strict)?;
        pool_drained(&pool)?;
        if rss.peak() > rss_before + RSS_SLACK {
            return Err(format!(
                "resident memory grew from {} MiB to {} MiB, more than the {} MiB allowed",
                rss_before >> 20,
                rss.peak() >> 20,
                RSS_SLACK >> 20
            ));
        }
    }
    let elapsed = started.elapsed();
    // Every block holds what the model says.
    let mut data = vec![0u8; BLOCK];
    for model in &models {
        for index in 0..THREAD_BLOCKS as usize {
            let block = model.first_block() + index as u64;
            reader
                .read_exact_at(&mut data, block * BLOCK as u64)
                .map_err(|e| format!("reading block {block} back: {e}"))?;
            model
                .check_read(index, &data)
                .map_err(|e| format!("at the end, {e}"))?;
        }
    }
    let stats = pool.stats();
    if stats.failures > 0 {
        return Err(format!(
            "the pool refused {} buffers within its bound",
            stats.failures
        ));
    }
    if plan.drop_one_in == 0 {
        // No future was dropped, so the engine completed exactly what the threads saw.
        let metrics = engine.metrics();
        let counted = (metrics.read.ops, metrics.write.ops, metrics.sync_data.ops);
        let seen = (tally.reads, tally.writes, tally.syncs);
        // The strict-mode rewrites are writes too (none without drops).
        if counted != seen {
            return Err(format!(
                "the engine counted (reads, writes, syncs) {counted:?}, the threads saw {seen:?}"
            ));
        }
    } else if tally.dropped() == 0 {
        return Err("no future was dropped: the storm did not happen".into());
    }
    if engine.capabilities().registered_files && process::registered_files() <= registered_before {
        // Else the check below could not fail.
        return Err("the open file shows in no io_uring instance's registered files".into());
    }
    drop((file, reader));
    // A file's registration ends with its last handle (the engine's queues are gone already).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut registered = process::registered_files();
    while registered > registered_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        registered = process::registered_files();
    }
    if registered > registered_before {
        return Err(format!(
            "{registered} files registered with io_uring after every handle was dropped, \
             {registered_before} before the file was opened"
        ));
    }
    drop(engine);
    let rss_peak = rss.finish();
    let after = process::back_to_baseline(backend, before, eventfds_before).map_err(|after| {
        format!("descriptors and threads {before:?} before the engine, {after:?} after it dropped")
    })?;
    let ops = tally.reads + tally.writes + tally.syncs + tally.dropped();
    println!(
        "  {backend} seed {}: {ops} operations ({} reads, {} writes, {} syncs; {} futures dropped: \
         {} at the round's second poll, {} later, {} before any; {settled} blocks settled) in {:.1} s \
         ({:.0} ops/s); resident memory {} MiB at the start, {} MiB at the peak; pool peak {} KiB \
         of {} KiB; descriptors and threads {before:?} before, {after:?} after",
        plan.seed,
        tally.reads,
        tally.writes,
        tally.syncs,
        tally.dropped(),
        tally.dropped_at[0],
        tally.dropped_at[1],
        tally.dropped_at[2],
        elapsed.as_secs_f64(),
        ops as f64 / elapsed.as_secs_f64(),
        rss_before >> 20,
        rss_peak >> 20,
        stats.bytes_peak >> 10,
        POOL_BOUND >> 10,
    );
    Ok(Outcome::Passed)
}

fn main() {
    let ops: u64 = std::env::var("CONFORMANCE_SOAK_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(OPS_DEFAULT);
    // Generous: the slowest backend here runs some 50,000 operations a second.
    let limit = Duration::from_secs(60 + ops / 5_000);
    let mut all = Vec::new();
    for backend in BUILTIN_BACKENDS {
        for (case, seed, drop_one_in, strict) in [
            ("mixed", 1, 0, false),
            ("storm", 2, 16, false),
            ("storm_strict", 3, 16, true),
        ] {
            let plan = Plan {
                seed,
                drop_one_in,
                strict,
                ops: if drop_one_in == 0 { ops } else { ops / 10 },
            };
            all.push(Trial::new(
                &format!("soak:{backend}"),
                &format!("{case}_seed_{seed}"),
                limit,
                move || soak(backend, plan),
            ));
        }
    }
    runner::run(all);
}
