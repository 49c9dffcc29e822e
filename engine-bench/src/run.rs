//! Driving one engine with one job: `numjobs` threads, each keeping `iodepth` requests in
//! flight through the queue API or the async API, until the run time is over.

use std::path::Path;
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use engine::{
    AlignedBuf, Completion, Engine, File, OpenOptions, PageAllocator, Queue, Request, WriteFlags,
};
use engine_core::{block_on, join_all};
use hdrhistogram::Histogram;

use crate::args::{Api, Job, Rw};

/// What a run measured.
pub struct Measured {
    /// Requests completed.
    pub ops: u64,
    /// Bytes transferred.
    pub bytes: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Completion latencies in nanoseconds.
    pub latency_ns: Histogram<u64>,
    /// User CPU seconds of the whole process during the run.
    pub cpu_user_s: f64,
    /// System CPU seconds of the whole process during the run.
    pub cpu_sys_s: f64,
    /// Heap allocations in the whole process during the run, when counted.
    pub allocations: Option<u64>,
}

/// Per-thread counts, merged at the end.
struct Stats {
    ops: u64,
    bytes: u64,
    latency_ns: Histogram<u64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            ops: 0,
            bytes: 0,
            // 3 significant digits, up to an hour: allocated once, before the measured loop.
            latency_ns: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("constant histogram bounds are valid"),
        }
    }

    fn record(&mut self, started: Instant, now: Instant, bytes: usize) {
        self.ops += 1;
        self.bytes += bytes as u64;
        let ns = u64::try_from(now.duration_since(started).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.latency_ns.saturating_record(ns);
    }

    fn merge(&mut self, other: &Stats) {
        self.ops += other.ops;
        self.bytes += other.bytes;
        let _ = self.latency_ns.add(&other.latency_ns);
    }
}

/// Offsets and directions for one job thread: a xorshift generator for random patterns, a
/// cursor over the thread's own region for sequential ones.
pub struct Pattern {
    rng: u64,
    rw: Rw,
    rwmixread: u8,
    bs: u64,
    first_block: u64,
    blocks: u64,
    cursor: u64,
}

impl Pattern {
    /// The pattern of job thread `index` of `job`.
    pub fn new(job: &Job, index: u32, seed: u64) -> Pattern {
        let total = (job.size / job.bs).max(1);
        let (first_block, blocks) = if job.rw.sequential() {
            let share = (total / u64::from(job.numjobs)).max(1);
            ((u64::from(index) * share) % total, share)
        } else {
            (0, total)
        };
        Pattern {
            rng: (seed ^ (u64::from(index) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
            rw: job.rw,
            rwmixread: job.rwmixread,
            bs: job.bs,
            first_block,
            blocks,
            cursor: 0,
        }
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// The next request: (read?, offset).
    pub fn next_request(&mut self) -> (bool, u64) {
        let read = match self.rw {
            Rw::Read | Rw::Randread => true,
            Rw::Write | Rw::Randwrite => false,
            Rw::Randrw => self.random() % 100 < u64::from(self.rwmixread),
        };
        let block = if self.rw.sequential() {
            let block = self.first_block + self.cursor % self.blocks;
            self.cursor += 1;
            block
        } else {
            self.random() % self.blocks
        };
        (read, block * self.bs)
    }
}

/// The options a job opens its file with.
pub fn open_options(job: &Job) -> OpenOptions {
    // Read-only jobs open read-only, as fio does.
    let reads_only = matches!(job.rw, Rw::Read | Rw::Randread);
    OpenOptions::new()
        .read(true)
        .write(!reads_only)
        .direct(job.direct)
}

/// A buffer of `len` bytes: from the engine's registered pool when it can serve it.
pub fn buffer(engine: &Engine, len: usize) -> Result<AlignedBuf, String> {
    if let Some(pool) = engine.pool() {
        if let Ok(buf) = pool.alloc(len) {
            return Ok(buf);
        }
    }
    AlignedBuf::zeroed(len, 4096).map_err(|e| e.to_string())
}

fn fill(buf: &mut AlignedBuf, seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// User and system CPU seconds of `who` (`RUSAGE_SELF` or `RUSAGE_CHILDREN`).
pub fn cpu_seconds_of(who: i32) -> (f64, f64) {
    // SAFETY: rusage is plain data; getrusage fills it through the valid pointer.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(who, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// Runs `job` on `engine` against the file at `path`.
///
/// # Errors
///
/// The first I/O error, or a setup error, as text.
pub fn run(
    engine: &Engine,
    path: &Path,
    job: &Job,
    api: Api,
    allocations: Option<fn() -> u64>,
    seed: u64,
) -> Result<Measured, String> {
    let file = engine
        .open(path, &open_options(job))
        .map_err(|e| format!("opening {} through {}: {e}", path.display(), engine.name()))?;
    // Every job sets up (queue, buffers) before the barrier; the measured window, for time,
    // CPU and allocations, starts when all are ready and ends when the last is done.
    let barrier = Barrier::new(job.numjobs as usize + 1);
    let deadline = OnceLock::new();
    let mut results: Vec<Result<Stats, String>> = Vec::with_capacity(job.numjobs as usize);
    let mut window = (Instant::now(), (0.0, 0.0), None);
    let mut end = window;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..job.numjobs)
            .map(|index| {
                let (file, barrier, deadline) = (file.clone(), &barrier, &deadline);
                let start = Start { barrier, deadline };
                scope.spawn(move || match api {
                    Api::Queue => queue_job(engine, &file, job, index, start, seed),
                    Api::Async => async_job(engine, &file, job, index, start, seed),
                })
            })
            .collect();
        let _ = deadline.set(Instant::now() + job.runtime);
        // Past the barrier every job has finished its setup (and its thread its start-up).
        barrier.wait();
        window = (
            Instant::now(),
            cpu_seconds_of(libc::RUSAGE_SELF),
            allocations.map(|f| f()),
        );
        for handle in handles {
            results.push(
                handle
                    .join()
                    .unwrap_or_else(|_| Err("a job thread panicked".into())),
            );
        }
        end = (
            Instant::now(),
            cpu_seconds_of(libc::RUSAGE_SELF),
            allocations.map(|f| f()),
        );
    });
    let (started, (user0, sys0), allocs0) = window;
    let (finished, (user1, sys1), allocs1) = end;
    let mut total = Stats::new();
    for result in results {
        total.merge(&result?);
    }
    let _ = engine.close(&file);
    crate::warn_on_slot_waits(engine, &job.label());
    Ok(Measured {
        ops: total.ops,
        bytes: total.bytes,
        elapsed: finished - started,
        latency_ns: total.latency_ns,
        cpu_user_s: user1 - user0,
        cpu_sys_s: sys1 - sys0,
        allocations: allocs0.zip(allocs1).map(|(a, b)| b - a),
    })
}

/// The start line every job thread waits at, and the deadline set when all are there.
#[derive(Clone, Copy)]
struct Start<'a> {
    barrier: &'a Barrier,
    deadline: &'a OnceLock<Instant>,
}

impl Start<'_> {
    /// Waits for every job to be ready; returns the deadline.
    fn wait(self) -> Instant {
        self.barrier.wait();
        self.deadline.get().copied().unwrap_or_else(Instant::now)
    }
}

fn request(
    file: &File,
    pattern: &mut Pattern,
    slot: usize,
    buf: AlignedBuf,
    flags: WriteFlags,
) -> Request {
    let (read, offset) = pattern.next_request();
    if read {
        Request::read(file, offset, buf, slot as u64)
    } else {
        Request::write(file, offset, buf, slot as u64).with_flags(flags)
    }
}

/// The per-write flags a job asks for.
fn write_flags(job: &Job) -> WriteFlags {
    let mut flags = WriteFlags::NONE;
    if job.dsync {
        flags = flags | WriteFlags::DSYNC;
    }
    if job.atomic {
        flags = flags | WriteFlags::ATOMIC;
    }
    flags
}

/// The sync a job runs after every so many writes (fio's `fdatasync`/`fsync`): how many,
/// and whether it is an fsync. `None` without one.
fn sync_every(job: &Job) -> Option<(u32, bool)> {
    match (job.fdatasync, job.fsync) {
        (0, 0) => None,
        (0, n) => Some((n, true)),
        (n, _) => Some((n, false)),
    }
}

/// Runs one sync through `queue`, which holds nothing else (the writes it covers have
/// completed), and waits for it.
fn queue_sync(
    queue: &mut engine::EngineQueue,
    file: &File,
    full: bool,
    out: &mut Vec<Completion>,
) -> Result<(), String> {
    let request = if full {
        Request::sync_all(file, u64::MAX)
    } else {
        Request::sync_data(file, u64::MAX)
    };
    queue
        .push(request)
        .map_err(|_| "queue full at a sync".to_string())?;
    let start = out.len();
    while out[start..].iter().all(|c| c.user_data != u64::MAX) {
        queue.wait(1, out).map_err(|e| e.to_string())?;
    }
    let index = out[start..]
        .iter()
        .position(|c| c.user_data == u64::MAX)
        .map(|i| start + i)
        .ok_or("the sync's completion went missing")?;
    let synced = out.remove(index);
    synced.result.map(drop).map_err(|e| e.to_string())
}

fn queue_job(
    engine: &Engine,
    file: &File,
    job: &Job,
    index: u32,
    start: Start<'_>,
    seed: u64,
) -> Result<Stats, String> {
    let mut queue = engine.queue().map_err(|e| e.to_string())?;
    let depth = (job.iodepth as usize).min(queue.depth());
    let flags = write_flags(job);
    let sync = sync_every(job);
    let mut pattern = Pattern::new(job, index, seed);
    let mut stats = Stats::new();
    let mut out: Vec<Completion> = Vec::with_capacity(depth);
    let mut bufs = Vec::with_capacity(depth);
    for slot in 0..depth {
        let mut buf = buffer(engine, job.bs as usize)?;
        fill(&mut buf, seed + slot as u64);
        bufs.push(buf);
    }
    let mut started = vec![Instant::now(); depth];
    let deadline = start.wait();
    for (slot, (begun, buf)) in started.iter_mut().zip(bufs).enumerate() {
        *begun = Instant::now();
        queue
            .push(request(file, &mut pattern, slot, buf, flags))
            .map_err(|_| "queue full at start".to_string())?;
    }
    let mut unsubmitted = 0;
    let mut writes_since_sync = 0;
    // The buffers of the completions of one round, to reuse (allocated once).
    let mut ready: Vec<(usize, AlignedBuf)> = Vec::with_capacity(depth);
    // Each round reaps at least one completion; the loop ends when the run time is over and
    // everything in flight has been reaped.
    while queue.in_flight() > 0 {
        queue.wait(1, &mut out).map_err(|e| e.to_string())?;
        let now = Instant::now();
        for completion in out.drain(..) {
            let slot = completion.user_data as usize;
            let write = completion.op == engine::Op::Write;
            let n = completion.result.map_err(|e| e.to_string())?;
            stats.record(started[slot], now, n);
            let Some(buf) = completion.buf else {
                return Err("a completion came back without its buffer".into());
            };
            writes_since_sync += u32::from(write);
            ready.push((slot, buf));
        }
        if let Some((every, full)) = sync {
            if writes_since_sync >= every {
                // fio's fdatasync=N: the sync covers the writes before it, so those still in
                // flight complete first; their buffers wait with the rest.
                while queue.in_flight() > 0 {
                    queue
                        .wait(queue.in_flight(), &mut out)
                        .map_err(|e| e.to_string())?;
                    let now = Instant::now();
                    for completion in out.drain(..) {
                        let slot = completion.user_data as usize;
                        let n = completion.result.map_err(|e| e.to_string())?;
                        stats.record(started[slot], now, n);
                        let buf = completion.buf.ok_or("a completion without its buffer")?;
                        ready.push((slot, buf));
                    }
                }
                queue_sync(&mut queue, file, full, &mut out)?;
                writes_since_sync = 0;
            }
        }
        let now = Instant::now();
        for (slot, mut buf) in ready.drain(..) {
            if now < deadline {
                buf.resize(job.bs as usize).map_err(|e| e.to_string())?;
                started[slot] = now;
                queue
                    .push(request(file, &mut pattern, slot, buf, flags))
                    .map_err(|_| "queue full".to_string())?;
                unsubmitted += 1;
                // fio's iodepth_batch_submit: hand requests to the kernel once this many are
                // queued (1: each at once, which keeps the device busiest).
                if unsubmitted >= job.iodepth_batch_submit {
                    queue.submit().map_err(|e| e.to_string())?;
                    unsubmitted = 0;
                }
            }
        }
    }
    Ok(stats)
}

fn async_job(
    engine: &Engine,
    file: &File,
    job: &Job,
    index: u32,
    start: Start<'_>,
    seed: u64,
) -> Result<Stats, String> {
    let mut workers = Vec::with_capacity(job.iodepth as usize);
    let (flags, sync) = (write_flags(job), sync_every(job));
    for w in 0..job.iodepth {
        let mut buf = buffer(engine, job.bs as usize)?;
        fill(&mut buf, seed + u64::from(w));
        let mut pattern = Pattern::new(job, index * job.iodepth + w, seed);
        let mut stats = Stats::new();
        let deadline = start.deadline;
        workers.push(async move {
            let deadline = deadline.get().copied().unwrap_or_else(Instant::now);
            let mut buf = buf;
            let mut writes = 0;
            // One clock read per operation, as the queue job takes one per round: a
            // completion's time is the next request's start, and the deadline check.
            let mut now = Instant::now();
            while now < deadline {
                let (read, offset) = pattern.next_request();
                let begun = now;
                let (result, back) = if read {
                    engine.read_at(file, offset, buf).await
                } else {
                    let request = Request::write(file, offset, buf, 0).with_flags(flags);
                    let completion = engine.submit(request).await;
                    let back = completion
                        .buf
                        .ok_or("a write came back without its buffer")?;
                    (completion.result, back)
                };
                let n = result.map_err(|e| e.to_string())?;
                now = Instant::now();
                stats.record(begun, now, n);
                writes += u32::from(!read);
                if let Some((_, full)) = sync.filter(|&(every, _)| writes >= every) {
                    // Each worker syncs after its own writes (at depth 1: every N writes); the
                    // next write starts after the sync, as in the queue job.
                    let synced = if full {
                        engine.sync_all(file).await
                    } else {
                        engine.sync_data(file).await
                    };
                    synced.map_err(|e| e.to_string())?;
                    writes = 0;
                    now = Instant::now();
                }
                buf = back;
                buf.resize(job.bs as usize).map_err(|e| e.to_string())?;
            }
            Ok::<Stats, String>(stats)
        });
    }
    let joined = join_all(workers);
    start.wait();
    let mut total = Stats::new();
    for result in block_on(joined) {
        total.merge(&result?);
    }
    Ok(total)
}

/// Writes a seeded pattern over the whole file through `engine`, syncs, reads it back and
/// checks every byte. Returns the number of bytes verified.
///
/// # Errors
///
/// The first I/O error or mismatch, as text.
pub fn verify(
    engine: &Engine,
    path: &Path,
    size: u64,
    direct: bool,
    seed: u64,
) -> Result<u64, String> {
    const CHUNK: u64 = 1 << 20;
    let options = OpenOptions::new().read(true).write(true).direct(direct);
    let file = engine.open(path, &options).map_err(|e| e.to_string())?;
    let chunks = size.div_ceil(CHUNK);
    let len_of = |i: u64| (size - i * CHUNK).min(CHUNK) as usize;
    block_on(async {
        for i in 0..chunks {
            let mut buf = buffer(engine, len_of(i))?;
            fill(&mut buf, seed ^ i);
            let (written, _) = engine.write_all_at(&file, i * CHUNK, buf).await;
            written.map_err(|e| e.to_string())?;
        }
        engine.sync_data(&file).await.map_err(|e| e.to_string())?;
        for i in 0..chunks {
            let mut expected = buffer(engine, len_of(i))?;
            fill(&mut expected, seed ^ i);
            let (read, got) = engine
                .read_exact_at(&file, i * CHUNK, buffer(engine, len_of(i))?)
                .await;
            read.map_err(|e| e.to_string())?;
            if got.as_slice() != expected.as_slice() {
                return Err(format!(
                    "verify: chunk {i} at offset {} differs from what was written",
                    i * CHUNK
                ));
            }
        }
        Ok::<(), String>(())
    })?;
    let _ = engine.close(&file);
    Ok(size)
}

/// Creates (or extends) the file at `path` to `size` bytes of non-zero data, so reads hit
/// written blocks, and syncs it. A block device is left as it is (fill it beforehand with
/// the data you want read; a same-filled device, such as zram with one repeated byte, reads
/// unrealistically fast): it only has to be large enough.
///
/// # Errors
///
/// The I/O error, or a block device smaller than `size`, as text.
pub fn prepare_file(path: &Path, size: u64) -> Result<(), String> {
    use std::io::Seek;
    use std::os::unix::fs::{FileExt, FileTypeExt};
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.file_type().is_block_device() {
            let mut device = std::fs::File::open(path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            let device_bytes = device
                .seek(std::io::SeekFrom::End(0))
                .map_err(|e| format!("sizing {}: {e}", path.display()))?;
            if device_bytes < size {
                return Err(format!(
                    "{} holds {device_bytes} bytes, less than --size {size}",
                    path.display()
                ));
            }
            return Ok(());
        }
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let have = file.metadata().map_err(|e| e.to_string())?.len();
    if have >= size {
        return Ok(());
    }
    let chunk = vec![0x5Au8; 4 << 20];
    let mut offset = have - have % chunk.len() as u64;
    while offset < size {
        let len = (size - offset).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..len], offset)
            .map_err(|e| format!("filling {}: {e}", path.display()))?;
        offset += len as u64;
    }
    file.sync_all().map_err(|e| e.to_string())
}
