//! The crash simulator: `CrashSim<E>` wraps any engine, keeps a durable image of every file
//! (what a successful sync found in the file), the writes that completed after it, and a
//! ledger of acknowledged writes (contract point 4: a sync acknowledges the writes that
//! completed before it was submitted; a write to an `O_DSYNC` file is acknowledged when it
//! completes). `crash(policy)` throws the engine away and rewrites each file as power loss
//! could have left it; `verify()` then checks that every sector holds its last acknowledged
//! write or a write that came after it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use engine_core::{
    AllocateMode, Backend, Capabilities, Completion, EngineConfig, File, MetricsSnapshot, Op,
    OpenOptions, PagePool, Queue, Request, Result, WriteFlags,
};

/// How much of the unsynced state survives a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPolicy {
    /// Nothing written since the last sync survives.
    DropAll,
    /// A random prefix (in completion order) of the unsynced writes survives.
    RandomPrefix,
    /// Each unsynced write survives as a random subset of its sectors.
    TornSectors,
    /// A random subset of the unsynced writes survives, applied in a random order.
    Reorder,
}

impl CrashPolicy {
    /// Every policy.
    pub const ALL: [CrashPolicy; 4] = [
        CrashPolicy::DropAll,
        CrashPolicy::RandomPrefix,
        CrashPolicy::TornSectors,
        CrashPolicy::Reorder,
    ];
}

/// A completed write the simulator remembers. A punched hole or zeroed range is a write of
/// zeros; a length change (`set_len`) is a cut: every byte from `offset` on reads as zero or
/// is gone.
#[derive(Clone, Debug)]
struct WriteRecord {
    /// Completion order, over the whole simulator.
    done_at: u64,
    offset: usize,
    data: Vec<u8>,
    /// True for a cut at `offset` (`data` is empty).
    cut: bool,
    /// True for an untorn write ([`engine_core::WriteFlags::ATOMIC`]): a crash keeps all of
    /// it or none of it.
    atomic: bool,
    /// An untorn write's range as it was before it (what a crash that drops it leaves).
    pre: Vec<u8>,
}

impl WriteRecord {
    /// True when the record decides byte `b`.
    fn covers(&self, b: usize) -> bool {
        self.offset <= b && (self.cut || b < self.offset + self.data.len())
    }

    /// The value the record leaves at byte `b` (which it covers).
    fn byte(&self, b: usize) -> u8 {
        if self.cut {
            0
        } else {
            self.data[b - self.offset]
        }
    }

    /// Applies the record to a crash image.
    fn apply(&self, image: &mut Vec<u8>) {
        if self.cut {
            image.resize(self.offset, 0);
            return;
        }
        let end = self.offset + self.data.len();
        if image.len() < end {
            image.resize(end, 0);
        }
        image[self.offset..end].copy_from_slice(&self.data);
    }
}

#[derive(Default)]
struct FileState {
    /// The file as the last successful sync left it (or as first opened).
    durable: Vec<u8>,
    /// Writes completed after `durable` was taken, in completion order.
    unsynced: Vec<WriteRecord>,
    /// Every completed write, for the ledger.
    writes: Vec<WriteRecord>,
    /// Per sector: the completion time of the last acknowledged write covering it.
    acked: Vec<Option<u64>>,
    /// The clock at the last crash: writes that completed before it and were not yet
    /// acknowledged died with it (or survived by chance), and no later sync acknowledges them.
    crashed_at: u64,
}

struct Ledger {
    sector: usize,
    clock: u64,
    files: HashMap<PathBuf, FileState>,
    /// The mutant of the negative control: `TornSectors` tears atomic writes too.
    tear_atomic: bool,
}

/// What a completed change is, for [`Ledger::change_done`].
#[derive(Clone, Copy, Debug, Default)]
struct ChangeKind {
    cut: bool,
    /// Durable at completion (O_DSYNC file, `WriteFlags::DSYNC`).
    dsync: bool,
    atomic: bool,
}

fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Ledger {
    fn state(&mut self, path: &Path) -> &mut FileState {
        self.files
            .entry(path.to_path_buf())
            .or_insert_with(|| FileState {
                durable: std::fs::read(path).unwrap_or_default(),
                ..FileState::default()
            })
    }

    /// Records a completed write; acknowledges it at once on an O_DSYNC file.
    /// Records a completed write; `pre`, for an untorn write, is its range before it.
    fn write_done(
        &mut self,
        path: &Path,
        offset: u64,
        data: &[u8],
        dsync: bool,
        pre: Option<Vec<u8>>,
    ) {
        let kind = ChangeKind {
            dsync,
            atomic: pre.is_some(),
            ..ChangeKind::default()
        };
        self.change_done(path, offset, data.to_vec(), kind);
        if let Some(pre) = pre {
            let done_at = self.clock;
            if let Some(record) = self
                .state(path)
                .writes
                .last_mut()
                .filter(|w| w.done_at == done_at)
            {
                record.pre = pre;
            }
        }
    }

    /// Records a completed change of the contents: a write (or zeroing) of `data` at
    /// `offset`, or a cut there.
    fn change_done(&mut self, path: &Path, offset: u64, data: Vec<u8>, kind: ChangeKind) {
        let ChangeKind { cut, dsync, atomic } = kind;
        self.clock += 1;
        let done_at = self.clock;
        let sector = self.sector;
        let state = self.state(path);
        let record = WriteRecord {
            done_at,
            offset: offset as usize,
            data,
            cut,
            atomic,
            pre: Vec::new(),
        };
        if dsync && !cut {
            record.apply(&mut state.durable);
            // An older change still unsynced (a punched hole, a cut) must not land on top of
            // this durable write in a crash image: where it overlaps, it now carries this
            // write's bytes, and an older cut into it cannot survive at all.
            let end = record.offset + record.data.len();
            state
                .unsynced
                .retain(|older| !(older.cut && older.offset < end));
            for older in &mut state.unsynced {
                let lo = older.offset.max(record.offset);
                let hi = (older.offset + older.data.len()).min(end);
                if lo < hi {
                    older.data[lo - older.offset..hi - older.offset]
                        .copy_from_slice(&record.data[lo - record.offset..hi - record.offset]);
                }
            }
            acknowledge(state, &record, sector);
        } else {
            state.unsynced.push(record.clone());
        }
        state.writes.push(record);
    }

    /// Acknowledges the write that completed at `done_at` (a write with its own sync).
    fn acknowledge_write(&mut self, path: &Path, done_at: u64) {
        let sector = self.sector;
        let state = self.state(path);
        if let Some(write) = state
            .writes
            .iter()
            .rev()
            .find(|w| w.done_at == done_at)
            .cloned()
        {
            acknowledge(state, &write, sector);
        }
    }

    /// A successful sync submitted at `submitted_at`: acknowledges what completed before,
    /// and takes the file's present contents as durable.
    fn sync_done(&mut self, path: &Path, submitted_at: u64) {
        let sector = self.sector;
        let state = self.state(path);
        let covered: Vec<WriteRecord> = state
            .writes
            .iter()
            .filter(|w| w.done_at <= submitted_at && w.done_at > state.crashed_at)
            .cloned()
            .collect();
        for w in covered.iter().filter(|w| !w.cut) {
            // A cut acknowledges no bytes: the ones it removed are checked against it.
            acknowledge(state, w, sector);
        }
        state.durable = std::fs::read(path).unwrap_or_default();
        state.unsynced.clear();
    }

    /// Rewrites every file as power loss under `policy` could have left it, from the
    /// durable image and the unsynced changes, with `seed` for the random choices.
    fn crash(&mut self, policy: CrashPolicy, seed: u64) {
        let mut rng = seed | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        {
            let sector = self.sector;
            let now = self.clock;
            let tear_atomic = self.tear_atomic;
            for (path, state) in &mut self.files {
                state.crashed_at = now;
                let mut image = state.durable.clone();
                let mut survivors: Vec<WriteRecord> = match policy {
                    CrashPolicy::DropAll => Vec::new(),
                    CrashPolicy::RandomPrefix => {
                        let keep = (next() % (state.unsynced.len() as u64 + 1)) as usize;
                        state.unsynced[..keep].to_vec()
                    }
                    CrashPolicy::TornSectors => state
                        .unsynced
                        .iter()
                        .flat_map(|w| {
                            if w.atomic && !tear_atomic {
                                // Untorn: all of it survives, or none.
                                return if next() % 2 == 0 {
                                    vec![w.clone()]
                                } else {
                                    Vec::new()
                                };
                            }
                            let pieces: Vec<WriteRecord> = w
                                .data
                                .chunks(sector)
                                .enumerate()
                                .filter(|_| next() % 2 == 0)
                                .map(|(i, chunk)| WriteRecord {
                                    done_at: w.done_at,
                                    offset: w.offset + i * sector,
                                    data: chunk.to_vec(),
                                    cut: false,
                                    atomic: w.atomic,
                                    pre: Vec::new(),
                                })
                                .collect();
                            pieces
                        })
                        .collect(),
                    CrashPolicy::Reorder => {
                        let mut chosen: Vec<WriteRecord> = state
                            .unsynced
                            .iter()
                            .filter(|_| next() % 2 == 0)
                            .cloned()
                            .collect();
                        for i in (1..chosen.len()).rev() {
                            let j = (next() % (i as u64 + 1)) as usize;
                            chosen.swap(i, j);
                        }
                        chosen
                    }
                };
                // A cut survives whole or not at all (TornSectors tears it away: it has no
                // sectors), like the length change it stands for.
                for w in survivors.drain(..) {
                    w.apply(&mut image);
                }
                let _ = std::fs::write(path, &image);
                state.durable = image;
                state.unsynced.clear();
            }
        }
    }
}

fn acknowledge(state: &mut FileState, write: &WriteRecord, sector: usize) {
    let first = write.offset / sector;
    let last = (write.offset + write.data.len()).div_ceil(sector);
    if state.acked.len() < last {
        state.acked.resize(last, None);
    }
    for s in first..last {
        if state.acked[s].is_none_or(|t| t < write.done_at) {
            state.acked[s] = Some(write.done_at);
        }
    }
}

/// Any engine, with the crash simulator's bookkeeping around it.
pub struct CrashSim<E> {
    inner: E,
    ledger: Arc<Mutex<Ledger>>,
}

impl<E: Backend> CrashSim<E> {
    /// Wraps `inner`; `sector` is the granularity of torn writes and of the check (the
    /// logical block size).
    pub fn new(inner: E, sector: usize) -> CrashSim<E> {
        CrashSim {
            inner,
            ledger: Arc::new(Mutex::new(Ledger {
                sector: sector.max(1),
                clock: 0,
                files: HashMap::new(),
                tear_atomic: false,
            })),
        }
    }

    /// The mutant of the negative control for untorn writes: from now on `TornSectors`
    /// tears atomic writes like any other, which [`CrashLedger::verify`] must report.
    pub fn tear_atomic_writes(self) -> CrashSim<E> {
        lock(&self.ledger).tear_atomic = true;
        self
    }

    /// Simulates power loss: drops the engine (closing never syncs), and rewrites every file
    /// the simulator knows as `policy` decides from the durable image and the unsynced
    /// writes, using `seed` for the random choices. Returns the ledger, for a new engine.
    pub fn crash(self, policy: CrashPolicy, seed: u64) -> CrashLedger {
        let CrashSim { inner, ledger } = self;
        drop(inner);
        lock(&ledger).crash(policy, seed);
        CrashLedger { ledger }
    }

    /// The wrapped engine.
    pub fn inner(&self) -> &E {
        &self.inner
    }
}

/// The simulator's memory across a crash: the ledger to check, and to keep using with a new
/// engine.
pub struct CrashLedger {
    ledger: Arc<Mutex<Ledger>>,
}

/// A sector that lost acknowledged data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    /// The file.
    pub path: PathBuf,
    /// The sector number.
    pub sector: usize,
    /// When the acknowledged write that should be there completed (for a torn atomic write:
    /// when that write completed).
    pub acked_write_done_at: u64,
    /// True when the loss is an atomic write found torn: some of its sectors hold it and
    /// others do not.
    pub torn_atomic: bool,
}

impl CrashLedger {
    /// Checks every acknowledged sector of every file: it must hold the bytes of its last
    /// acknowledged write, or of a write that completed after it.
    pub fn verify(&self) -> Vec<Loss> {
        let ledger = lock(&self.ledger);
        let sector = ledger.sector;
        let mut losses = Vec::new();
        for (path, state) in &ledger.files {
            let content = std::fs::read(path).unwrap_or_default();
            for (s, acked) in state.acked.iter().enumerate() {
                let Some(acked_at) = *acked else { continue };
                let lo = s * sector;
                let hi = lo + sector;
                // Each candidate gives the bytes it wrote into this sector; bytes it did not
                // cover must match the acknowledged write's... which is checked byte by byte:
                // every byte must come from the acknowledged write or a later one.
                let ok = (lo..hi).all(|b| {
                    let got = content.get(b).copied();
                    let mut candidates = state
                        .writes
                        .iter()
                        .filter(|w| w.done_at >= acked_at && w.covers(b));
                    let covered_by_ack = state
                        .writes
                        .iter()
                        .any(|w| w.done_at == acked_at && !w.cut && w.covers(b));
                    let Some(got) = got else {
                        // Past the end of the file: only acceptable if no acknowledged write
                        // covers this byte, or a later cut removed it.
                        return !covered_by_ack || candidates.any(|w| w.cut);
                    };
                    !covered_by_ack || candidates.any(|w| w.byte(b) == got)
                });
                if !ok {
                    losses.push(Loss {
                        path: path.clone(),
                        sector: s,
                        acked_write_done_at: acked_at,
                        torn_atomic: false,
                    });
                }
            }
            losses.extend(torn_atomic_writes(path, state, &content, sector));
        }
        losses
    }

    /// Wraps a new engine (after the crash) with this ledger.
    pub fn resume<E: Backend>(self, inner: E) -> CrashSim<E> {
        CrashSim {
            inner,
            ledger: self.ledger,
        }
    }

    /// Acknowledged writes in the ledger, for reports.
    pub fn acknowledged(&self) -> usize {
        lock(&self.ledger)
            .files
            .values()
            .map(|s| s.acked.iter().flatten().count())
            .sum()
    }
}

/// Atomic writes found torn in `content`: among the sectors of one that it changed and no
/// other write touched (a crash may apply an older unsynced one after it), some hold its
/// bytes and others hold what was there before.
fn torn_atomic_writes(path: &Path, state: &FileState, content: &[u8], sector: usize) -> Vec<Loss> {
    let mut torn = Vec::new();
    for write in state.writes.iter().filter(|w| w.atomic) {
        let (mut kept, mut lost) = (None, None);
        for (i, expected) in write.data.chunks(sector).enumerate() {
            let lo = write.offset + i * sector;
            let hi = lo + expected.len();
            let before = write.pre.get(i * sector..i * sector + expected.len());
            let touched = state
                .writes
                .iter()
                .any(|other| other.done_at != write.done_at && (lo..hi).any(|b| other.covers(b)));
            if touched || before.is_none_or(|before| before == expected) {
                continue;
            }
            match content.get(lo..hi) {
                Some(now) if now == expected => kept = kept.or(Some(lo / sector)),
                now if now == before => lost = lost.or(Some(lo / sector)),
                // Neither: not this write's question (another check reports lost data).
                _ => {}
            }
        }
        if let (Some(_), Some(sector)) = (kept, lost) {
            torn.push(Loss {
                path: path.to_path_buf(),
                sector,
                acked_write_done_at: write.done_at,
                torn_atomic: true,
            });
        }
    }
    torn
}

/// What the ledger needs of a request, taken as it is submitted (the clock then says which
/// writes a sync covers).
fn facts(ledger: &Mutex<Ledger>, request: &Request) -> RequestFacts {
    let mut ledger = lock(ledger);
    let file = request.file();
    let _ = ledger.state(file.path());
    let flags = request.write_flags();
    let change = match request {
        Request::SetLen { len, .. } => Some(Change::Cut(*len)),
        Request::Allocate {
            offset, len, mode, ..
        } if mode.zeroes() => Some(Change::Zero {
            offset: *offset,
            len: *len,
            extends: *mode == AllocateMode::ZeroRange,
        }),
        _ => None,
    };
    RequestFacts {
        op: request.op(),
        path: file.path().to_path_buf(),
        offset: request.offset().unwrap_or(0),
        dsync: file.options().is_dsync() || flags.contains(WriteFlags::DSYNC),
        sync_after: flags.contains(WriteFlags::SYNC_DATA_AFTER),
        atomic: flags.contains(WriteFlags::ATOMIC),
        pre: flags
            .contains(WriteFlags::ATOMIC)
            .then(|| read_range(file.path(), request.offset().unwrap_or(0), request.len())),
        change,
        submitted_at: ledger.clock,
    }
}

/// `len` bytes of the file at `path` from `offset`, zeros past its end.
fn read_range(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if let Ok(file) = std::fs::File::open(path) {
        let mut done = 0;
        while done < len {
            match std::os::unix::fs::FileExt::read_at(&file, &mut out[done..], offset + done as u64)
            {
                Ok(0) | Err(_) => break,
                Ok(n) => done += n,
            }
        }
    }
    out
}

/// What a space-management request does to the contents, for the ledger.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// `set_len(len)`: bytes from `len` on are gone, or read as zero once extended again.
    Cut(u64),
    /// A punched hole or zeroed range: zeros over the range, up to the file's end unless the
    /// mode `extends` the file.
    Zero {
        offset: u64,
        len: u64,
        extends: bool,
    },
}

/// Records a successful completion in the ledger: a write's data as done, a sync as covering
/// what completed before it was submitted.
///
/// A failed exact write that moved some bytes first ([`engine_core::Error::transferred`])
/// records those as written (not acknowledged): they may be on the file.
fn record(ledger: &Mutex<Ledger>, request: &RequestFacts, completion: &Completion) {
    let written = match &completion.result {
        Ok(n) => *n,
        Err(e) if request.op == Op::Write => e.transferred().unwrap_or(0) as usize,
        Err(_) => return,
    };
    let mut ledger = lock(ledger);
    match request.op {
        Op::Write => {
            // A single buffer, or a vectored write's buffers in order.
            let all: Vec<u8> = completion
                .buffers()
                .flat_map(|buf| buf.as_slice().iter().copied())
                .collect();
            let data = &all[..written.min(all.len())];
            if !data.is_empty() || completion.result.is_ok() {
                let (path, offset) = (&request.path, request.offset);
                let pre = request.pre.clone().filter(|_| request.atomic);
                ledger.write_done(path, offset, data, request.dsync, pre);
                if request.sync_after && completion.result.is_ok() {
                    // Its fdatasync ran after it completed: it covers the write itself and
                    // what completed before the request was submitted (writes that completed
                    // meanwhile may have finished after the sync began).
                    let written = ledger.clock;
                    ledger.sync_done(path, request.submitted_at);
                    ledger.acknowledge_write(path, written);
                }
            }
        }
        Op::SyncData | Op::SyncAll => ledger.sync_done(&request.path, request.submitted_at),
        Op::SetLen | Op::Allocate => match request.change {
            Some(Change::Cut(len)) => {
                let cut = ChangeKind {
                    cut: true,
                    ..ChangeKind::default()
                };
                ledger.change_done(&request.path, len, Vec::new(), cut)
            }
            Some(Change::Zero {
                offset,
                len,
                extends,
            }) => {
                let size = std::fs::metadata(&request.path).map_or(0, |m| m.len());
                let end = if extends {
                    offset + len
                } else {
                    (offset + len).min(size)
                };
                let zeros = vec![0u8; end.saturating_sub(offset) as usize];
                ledger.change_done(&request.path, offset, zeros, ChangeKind::default());
            }
            None => {}
        },
        _ => {}
    }
}

/// What the simulator needs to remember of a request until it completes.
struct RequestFacts {
    op: Op,
    path: PathBuf,
    offset: u64,
    /// Durable at completion: an O_DSYNC file, or `WriteFlags::DSYNC`.
    dsync: bool,
    /// `WriteFlags::SYNC_DATA_AFTER`: acknowledged with everything before it.
    sync_after: bool,
    /// `WriteFlags::ATOMIC`: never torn.
    atomic: bool,
    /// An atomic write's range as the file held it at submission.
    pre: Option<Vec<u8>>,
    /// What a space-management request does to the contents.
    change: Option<Change>,
    /// The completion clock when the request was submitted: a sync covers writes completed
    /// up to here.
    submitted_at: u64,
}

impl<E: Backend> Backend for CrashSim<E> {
    type Queue = CrashQueue<E::Queue>;

    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        let file = self.inner.open(path, options)?;
        let _ = lock(&self.ledger).state(path);
        Ok(file)
    }
    fn adopt(&self, fd: std::os::fd::OwnedFd, options: &OpenOptions) -> Result<File> {
        let file = self.inner.adopt(fd, options)?;
        let _ = lock(&self.ledger).state(file.path());
        Ok(file)
    }
    fn close(&self, file: &File) -> Result<()> {
        // Closing never syncs: unsynced writes stay unsynced.
        self.inner.close(file)
    }
    async fn submit(&self, request: Request) -> Completion {
        let facts = facts(&self.ledger, &request);
        let completion = self.inner.submit(request).await;
        record(&self.ledger, &facts, &completion);
        completion
    }
    fn queue(&self) -> Result<CrashQueue<E::Queue>> {
        Ok(CrashQueue {
            inner: self.inner.queue()?,
            facts: HashMap::new(),
            ledger: Arc::clone(&self.ledger),
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
        self.inner.shutdown()
    }
}

/// The simulator's queue: it tags each request to find its facts when it completes.
pub struct CrashQueue<Q> {
    inner: Q,
    facts: HashMap<u64, (u64, RequestFacts)>,
    ledger: Arc<Mutex<Ledger>>,
    next_tag: u64,
}

impl<Q: Queue> CrashQueue<Q> {
    fn settle(&mut self, out: &mut [Completion]) {
        for completion in out.iter_mut() {
            let Some((user_data, facts)) = self.facts.remove(&completion.user_data) else {
                continue;
            };
            completion.user_data = user_data;
            record(&self.ledger, &facts, completion);
        }
    }
}

impl<Q: Queue> Queue for CrashQueue<Q> {
    fn depth(&self) -> usize {
        self.inner.depth()
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn push(&mut self, mut request: Request) -> std::result::Result<(), Request> {
        let tag = self.next_tag;
        let facts = facts(&self.ledger, &request);
        let user_data = request.replace_user_data(tag);
        match self.inner.push(request) {
            Ok(()) => {
                self.next_tag += 1;
                self.facts.insert(tag, (user_data, facts));
                Ok(())
            }
            Err(mut back) => {
                back.replace_user_data(user_data);
                Err(back)
            }
        }
    }
    fn submit(&mut self) -> Result<usize> {
        self.inner.submit()
    }
    fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        let start = out.len();
        let n = self.inner.poll(out)?;
        self.settle(&mut out[start..]);
        Ok(n)
    }
    fn wait(&mut self, min: usize, out: &mut Vec<Completion>) -> Result<usize> {
        let start = out.len();
        let n = self.inner.wait(min, out)?;
        self.settle(&mut out[start..]);
        Ok(n)
    }
}

/// A default sector size for the simulator when a file's geometry is not at hand.
pub const SECTOR_DEFAULT: usize = 512;

/// Builds an engine for the simulator from a factory, for restarts.
pub type Restart<E> = Box<dyn Fn() -> Result<E>>;

/// An engine configuration suited to crash runs: small and quick to restart.
pub fn crash_config() -> EngineConfig {
    EngineConfig {
        queue_depth: 16,
        threads: 4,
        register_buffers_bytes: 1 << 20,
        ..EngineConfig::default()
    }
}

/// What a crash workload found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Crashes simulated.
    pub crashes: usize,
    /// Acknowledged sectors checked after the last crash.
    pub acknowledged: usize,
    /// Lost acknowledged data, one sentence each, with the seed.
    pub losses: Vec<String>,
}

/// A random workload of `steps` writes, syncs (some in flight together with writes, through a
/// queue) and crashes under every policy, on two files (one `O_DSYNC`), through `CrashSim`
/// over engines from `make`; after each crash the ledger is verified and a new engine resumes.
///
/// # Errors
///
/// Setup errors, and I/O errors the workload did not expect.
pub fn crash_workload<E: Backend>(
    make: &dyn Fn() -> Result<E>,
    dir: &Path,
    seed: u64,
    steps: usize,
) -> Result<CrashReport> {
    use engine_core::{block_on, AlignedBuf, BackendExt};
    const FILE: usize = 32 << 10;
    let paths = [dir.join("crash-0"), dir.join("crash-1")];
    for path in &paths {
        std::fs::write(path, vec![0u8; FILE])
            .map_err(|e| engine_core::Error::from_io(&e, engine_core::Op::Open))?;
    }
    let open = |sim: &CrashSim<E>| -> Result<Vec<File>> {
        let rw = OpenOptions::new().read(true).write(true);
        Ok(vec![
            sim.open(&paths[0], &rw)?,
            sim.open(&paths[1], &rw.clone().dsync(true))?,
        ])
    };
    let mut sim = CrashSim::new(make()?, SECTOR_DEFAULT);
    let mut files = open(&sim)?;
    let mut report = CrashReport::default();
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // A write inside quarter `region` of the file (0..4), or anywhere (region 4): writes in
    // flight together go to different quarters, since overlapping writes in flight have no
    // defined result (contract point 6).
    let write_request = |file: &File, r: u64, region: u64| -> Result<Request> {
        let sectors = 1 + (r % 8) as usize;
        let (base, span) = if region < 4 {
            (region as usize * FILE / 4, FILE / 4)
        } else {
            (0, FILE)
        };
        let offset =
            base + ((r >> 8) as usize % (span / SECTOR_DEFAULT - sectors)) * SECTOR_DEFAULT;
        let data = crate::pattern(sectors * SECTOR_DEFAULT, r);
        Ok(Request::write(
            file,
            offset as u64,
            AlignedBuf::from_slice(&data, SECTOR_DEFAULT)?,
            region,
        ))
    };
    for step in 0..=steps {
        let choice = if step == steps { 11 } else { next() % 12 };
        let f = (next() % 2) as usize;
        match choice {
            0..=4 => {
                let request = write_request(&files[f], next(), 4)?;
                let completion = block_on(sim.submit(request));
                completion.result?;
            }
            5..=6 => {
                if next() % 2 == 0 {
                    block_on(sim.sync_data(&files[f]))?;
                } else {
                    block_on(sim.sync_all(&files[f]))?;
                }
            }
            7..=8 => {
                // Writes and a sync in flight together: the sync covers none of them.
                let mut queue = sim.queue()?;
                let mut out = Vec::new();
                for tag in 0..4 {
                    queue.push_or_wait(write_request(&files[f], next(), tag)?, &mut out)?;
                }
                queue.push_or_wait(Request::sync_data(&files[f], 99), &mut out)?;
                while queue.in_flight() > 0 {
                    queue.wait(queue.in_flight(), &mut out)?;
                }
                for completion in out {
                    completion.result?;
                }
            }
            9 => {
                // A punched hole: zeros that may be lost before a sync, like a write.
                let r = next();
                let sectors = 1 + r % 8;
                let first = (r >> 8) % (FILE as u64 / SECTOR_DEFAULT as u64 - sectors);
                let punched = block_on(sim.allocate(
                    &files[f],
                    first * SECTOR_DEFAULT as u64,
                    sectors * SECTOR_DEFAULT as u64,
                    AllocateMode::PunchHole,
                ));
                match punched {
                    Err(e) if e.kind() == engine_core::ErrorKind::Unsupported => {}
                    other => other?,
                }
            }
            10 => {
                // Cut the file short and grow it back: the cut-off bytes read as zeros.
                let len = (next() % FILE as u64) / SECTOR_DEFAULT as u64 * SECTOR_DEFAULT as u64;
                block_on(sim.set_len(&files[f], len))?;
                block_on(sim.set_len(&files[f], FILE as u64))?;
            }
            _ => {
                let policy = CrashPolicy::ALL[(next() % 4) as usize];
                drop(files);
                let ledger = sim.crash(policy, next());
                report.crashes += 1;
                for loss in ledger.verify() {
                    let what = if loss.torn_atomic {
                        "tore the atomic write completed"
                    } else {
                        "lost the write acknowledged"
                    };
                    report.losses.push(format!(
                        "seed {seed:#x}, crash {} ({policy:?}) at step {step}: {} sector {} {what} at {}",
                        report.crashes,
                        loss.path.display(),
                        loss.sector,
                        loss.acked_write_done_at
                    ));
                }
                report.acknowledged = ledger.acknowledged();
                if step == steps {
                    break;
                }
                sim = ledger.resume(make()?);
                files = open(&sim)?;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger over one file of 16 sectors of old data, with an unsynced atomic write of 8
    /// sectors of new data, crashed under `TornSectors` with `seed`.
    fn crashed_atomic_write(dir: &Path, seed: u64, tear_atomic: bool) -> (Vec<Loss>, bool) {
        let path = dir.join("atomic");
        std::fs::write(&path, crate::pattern(16 * SECTOR_DEFAULT, 1)).expect("old data");
        let mut ledger = Ledger {
            sector: SECTOR_DEFAULT,
            clock: 0,
            files: HashMap::new(),
            tear_atomic,
        };
        let new = crate::pattern(8 * SECTOR_DEFAULT, 2);
        let old = crate::pattern(16 * SECTOR_DEFAULT, 1);
        let pre = old[4 * SECTOR_DEFAULT..12 * SECTOR_DEFAULT].to_vec();
        ledger.write_done(&path, 4 * SECTOR_DEFAULT as u64, &new, false, Some(pre));
        ledger.crash(
            CrashPolicy::TornSectors,
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let content = std::fs::read(&path).expect("read");
        let kept = content[4 * SECTOR_DEFAULT..12 * SECTOR_DEFAULT] == new[..];
        let ledger = CrashLedger {
            ledger: Arc::new(Mutex::new(ledger)),
        };
        (ledger.verify(), kept)
    }

    #[test]
    fn atomic_writes_survive_whole_or_not_at_all_and_a_tearing_mutant_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut kept, mut lost) = (0, 0);
        for seed in 0..64 {
            let (losses, whole) = crashed_atomic_write(dir.path(), seed, false);
            assert!(losses.is_empty(), "seed {seed}: {losses:?}");
            if whole {
                kept += 1;
            } else {
                lost += 1;
            }
        }
        assert!(
            kept > 0 && lost > 0,
            "both outcomes happen: {kept} kept, {lost} lost"
        );
        let caught = (0..64)
            .filter(|&seed| {
                let (losses, _) = crashed_atomic_write(dir.path(), seed, true);
                losses.iter().any(|loss| loss.torn_atomic)
            })
            .count();
        assert!(caught > 0, "the mutant tore no atomic write in 64 seeds");
    }
}
