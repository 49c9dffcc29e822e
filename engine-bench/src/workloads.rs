//! `--workload blob|wal|snapshot`: the origins' jobs, as the examples build them on the engine
//! (`engine/examples/{blob,wal,snapshot}`, compiled in here from the same files), against the
//! same job written by hand the way the origin did it. The engine name `baseline` is the
//! hand-written version; the others are this library's engines. Each run is one record, so
//! the table's ratios (against the first engine, `baseline` by default) and the JSON are the
//! usual ones: `iops` counts records (wal), objects (blob) or buffers (snapshot), `bw_bytes`
//! their bytes, and the latency is each record's or object's commit (until it is durable).
//!
//! - **wal**: `--writers` writers (default 16) append `--bs`-byte records (default 128) for
//!   `--runtime`, each awaiting its commit before its next; the engine's log commits a group
//!   with one sync, the baseline makes a `pwrite` and an `fdatasync` per record.
//! - **blob**: `--writers` writers put `--bs`-byte objects (default 64 KiB) into a
//!   `--size` store (default 1 GiB) for `--runtime`, each put durable before the next, each
//!   writer deleting its oldest object once it holds its share; the engine's side is one
//!   store on one thread, its engine at depth `--writers` (one durable write per writer);
//!   the baseline writes each object (the same header block, CRCs included, and data) with
//!   an O_DIRECT `pwrite` and an `fdatasync` from a thread per writer, and each delete (its
//!   header zeroed) the same way, as blobd's file store did.
//! - **snapshot**: a `--size`-byte stream (default 1 GiB) written in `--bs` writes (default
//!   8 MiB) to a preallocated file with `--iodepth` buffers (default 2) in the engine's
//!   pipeline, then synced; the baseline fills one buffer, `pwrite`s it, and so on, then
//!   `fsync`s, as Firedancer's snapwr did.

use std::collections::VecDeque;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use engine::{block_on, join_all, AlignedBuf, Engine, ErrorKind, OpenOptions};

use crate::args::{Api, Args, Job, Rw, Workload};
use crate::report::{Latency, RunResult};
use crate::run::cpu_seconds_of;

#[path = "../../engine/examples/wal/log.rs"]
#[allow(dead_code)]
mod log;
#[path = "../../engine/examples/snapshot/pipeline.rs"]
#[allow(dead_code)]
mod pipeline;
#[path = "../../engine/examples/blob/store.rs"]
#[allow(dead_code)]
mod store;

/// What one run measured.
struct Measured {
    ops: u64,
    bytes: u64,
    secs: f64,
    /// Commit latencies, nanoseconds.
    latencies: Vec<u64>,
    cpu: (f64, f64),
}

fn latency(mut ns: Vec<u64>) -> Latency {
    ns.sort_unstable();
    let at = |p: f64| {
        ns.get(((ns.len().saturating_sub(1)) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    Latency {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
    }
}

/// Times `body`, with the process's CPU time around it.
fn measure(
    body: impl FnOnce() -> Result<(u64, u64, Vec<u64>), String>,
) -> Result<Measured, String> {
    let cpu_before = cpu_seconds_of(libc::RUSAGE_SELF);
    let started = Instant::now();
    let (ops, bytes, latencies) = body()?;
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds_of(libc::RUSAGE_SELF);
    Ok(Measured {
        ops,
        bytes,
        secs,
        latencies,
        cpu: (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1),
    })
}

fn std_file(path: &Path, direct: bool) -> Result<std::fs::File, String> {
    let open = |direct: bool| {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(true);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        options.open(path)
    };
    open(direct)
        .or_else(|_| open(false))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `fallocate` of the first `len` bytes.
fn preallocate(file: &std::fs::File, len: u64) -> Result<(), String> {
    // SAFETY: fallocate takes a descriptor the caller owns and plain integers.
    let rc = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(file),
            0,
            0,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("fallocate: {}", std::io::Error::last_os_error()))
    }
}

fn aligned(len: usize, fill: u8) -> Result<AlignedBuf, String> {
    let mut buf =
        AlignedBuf::zeroed(len.next_multiple_of(4096), 4096).map_err(|e| e.to_string())?;
    buf[..len].fill(fill);
    Ok(buf)
}

/// Runs `writer(w)` on a thread each for `writers` writers; every commit latency they saw.
fn on_threads(
    writers: usize,
    writer: impl Fn(usize) -> Result<Vec<u64>, String> + Sync,
) -> Result<Vec<u64>, String> {
    std::thread::scope(|scope| {
        let writer = &writer;
        let handles: Vec<_> = (0..writers)
            .map(|w| scope.spawn(move || writer(w)))
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            all.extend(
                handle
                    .join()
                    .map_err(|_| "a baseline writer panicked".to_string())??,
            );
        }
        Ok(all)
    })
}

// ---- wal ----

fn wal_engine(
    engine: Engine,
    dir: &Path,
    writers: usize,
    record: usize,
    runtime: Duration,
) -> Result<Measured, String> {
    let (wal, _) = block_on(log::Wal::open(engine, &dir.join("wal"))).map_err(|e| e.to_string())?;
    let measured = measure(|| {
        let deadline = Instant::now() + runtime;
        let per_writer = block_on(join_all(
            (0..writers)
                .map(|w| {
                    let wal = &wal;
                    async move {
                        let mut latencies = Vec::new();
                        while Instant::now() < deadline {
                            let at = Instant::now();
                            wal.append(vec![w as u8; record]).await?;
                            latencies.push(at.elapsed().as_nanos() as u64);
                        }
                        Ok::<_, engine::Error>(latencies)
                    }
                })
                .collect(),
        ));
        let all = gather(per_writer)?;
        Ok((all.len() as u64, (all.len() * record) as u64, all))
    })?;
    let engine = wal.close().map_err(|e| e.to_string())?;
    crate::warn_on_slot_waits(&engine, "the wal workload");
    Ok(measured)
}

fn wal_baseline(
    dir: &Path,
    direct: bool,
    writers: usize,
    record: usize,
    runtime: Duration,
) -> Result<Measured, String> {
    let file = std_file(&dir.join("wal-baseline"), direct)?;
    let slot = record.next_multiple_of(4096) as u64;
    let tail = AtomicU64::new(0);
    measure(|| {
        let deadline = Instant::now() + runtime;
        let all = on_threads(writers, |w| {
            let buf = aligned(record, w as u8)?;
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let at = Instant::now();
                let offset = tail.fetch_add(slot, Ordering::Relaxed);
                file.write_all_at(&buf, offset).map_err(|e| e.to_string())?;
                file.sync_data().map_err(|e| e.to_string())?;
                latencies.push(at.elapsed().as_nanos() as u64);
            }
            Ok(latencies)
        })?;
        Ok((all.len() as u64, (all.len() * record) as u64, all))
    })
}

// ---- blob ----

fn blob_engine(
    engine: Engine,
    dir: &Path,
    writers: usize,
    object: usize,
    capacity: u64,
    runtime: Duration,
) -> Result<Measured, String> {
    let blobs = block_on(store::BlobStore::open(engine, &dir.join("blobs"), capacity))
        .map_err(|e| e.to_string())?;
    // Each writer keeps at most half its share of the store, deleting its oldest beyond it.
    let keep = ((capacity / writers as u64) / (object as u64 + 8192) / 2).max(1) as usize;
    let measured = measure(|| {
        let deadline = Instant::now() + runtime;
        let all = blob_writers(&blobs, writers, object, keep, deadline)?;
        Ok((all.len() as u64, (all.len() * object) as u64, all))
    })?;
    let engine = blobs.close().map_err(|e| e.to_string())?;
    crate::warn_on_slot_waits(&engine, "the blob workload");
    Ok(measured)
}

/// Runs `writers` writers on the store until `deadline`; their put latencies.
fn blob_writers(
    blobs: &store::BlobStore<Engine>,
    writers: usize,
    object: usize,
    keep: usize,
    deadline: Instant,
) -> Result<Vec<u64>, String> {
    let per_writer = block_on(join_all(
        (0..writers)
            .map(|w| async move {
                let data = vec![w as u8; object];
                let mut mine = VecDeque::new();
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    if mine.len() >= keep {
                        if let Some(oldest) = mine.pop_front() {
                            blobs.delete(oldest).await?;
                        }
                    }
                    let at = Instant::now();
                    match blobs.put(&data).await {
                        Ok(id) => mine.push_back(id),
                        // Fragmented full: free one more and go on.
                        Err(e) if e.kind() == ErrorKind::NoSpace && !mine.is_empty() => {
                            if let Some(oldest) = mine.pop_front() {
                                blobs.delete(oldest).await?;
                            }
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    latencies.push(at.elapsed().as_nanos() as u64);
                }
                Ok::<_, engine::Error>(latencies)
            })
            .collect(),
    ));
    gather(per_writer)
}

/// Every writer's latencies, or the first writer's error.
fn gather(per_writer: Vec<engine::Result<Vec<u64>>>) -> Result<Vec<u64>, String> {
    let mut all = Vec::new();
    for writer in per_writer {
        all.extend(writer.map_err(|e| e.to_string())?);
    }
    Ok(all)
}

fn blob_baseline(
    dir: &Path,
    direct: bool,
    writers: usize,
    object: usize,
    capacity: u64,
    runtime: Duration,
) -> Result<Measured, String> {
    let file = std_file(&dir.join("blobs-baseline"), direct)?;
    // Preallocated, as the engine's store is (and as blobd's partitions were).
    preallocate(&file, capacity)?;
    // Each writer owns a region, written in turn as a ring of object slots; a slot is freed
    // (its header zeroed) before it is written again, as the engine's store deletes.
    let slot = 4096 + object.next_multiple_of(4096) as u64;
    let region = capacity / writers as u64;
    let slots = (region / slot).max(1);
    measure(|| {
        let deadline = Instant::now() + runtime;
        let all = on_threads(writers, |w| {
            // The same bytes as the engine's store writes: a header block (with the data's
            // CRC, computed per put as the store does), then the data.
            let data = vec![w as u8; object];
            let mut buf = aligned(4096 + object, 0)?;
            buf[4096..4096 + object].copy_from_slice(&data);
            let zeros = aligned(4096, 0)?;
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let offset = w as u64 * region + (n % slots) * slot;
                if n >= slots / 2 {
                    let oldest = w as u64 * region + ((n - slots / 2) % slots) * slot;
                    file.write_all_at(&zeros, oldest)
                        .map_err(|e| e.to_string())?;
                    file.sync_data().map_err(|e| e.to_string())?;
                }
                let at = Instant::now();
                let id = (w as u64) << 40 | n;
                buf[..store::HEADER].copy_from_slice(&store::header(id, &data));
                file.write_all_at(&buf, offset).map_err(|e| e.to_string())?;
                file.sync_data().map_err(|e| e.to_string())?;
                latencies.push(at.elapsed().as_nanos() as u64);
                n += 1;
            }
            Ok(latencies)
        })?;
        Ok((all.len() as u64, (all.len() * object) as u64, all))
    })
}

// ---- snapshot ----

fn snapshot_engine(
    engine: Engine,
    dir: &Path,
    direct: bool,
    len: u64,
    buf_len: usize,
    buffers: usize,
) -> Result<Measured, String> {
    let path = dir.join("snapshot");
    let options = OpenOptions::new().read(true).write(true).create(true);
    let file = match engine.open(&path, &options.clone().direct(direct)) {
        Ok(file) => file,
        Err(_) => engine.open(&path, &options).map_err(|e| e.to_string())?,
    };
    let measured = measure(|| {
        let mut stream = pipeline::Stream::new(len);
        pipeline::write(&engine, &file, &mut stream, len, buf_len, buffers)
            .map_err(|e| e.to_string())?;
        Ok((len.div_ceil(buf_len as u64), len, Vec::new()))
    })?;
    engine.close(&file).map_err(|e| e.to_string())?;
    Ok(measured)
}

fn snapshot_baseline(
    dir: &Path,
    direct: bool,
    len: u64,
    buf_len: usize,
) -> Result<Measured, String> {
    let file = std_file(&dir.join("snapshot-baseline"), direct)?;
    measure(|| {
        // Preallocated, as the engine's file is.
        // SAFETY: fallocate takes a descriptor this function owns and plain integers.
        let rc = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(format!("fallocate: {}", std::io::Error::last_os_error()));
        }
        let mut buf = aligned(buf_len, 0)?;
        let mut stream = pipeline::Stream::new(len);
        let mut offset = 0u64;
        loop {
            let n = stream.fill(&mut buf);
            if n == 0 {
                break;
            }
            let padded = n.next_multiple_of(4096);
            buf[n..padded].fill(0);
            file.write_all_at(&buf[..padded], offset)
                .map_err(|e| e.to_string())?;
            offset += n as u64;
        }
        file.set_len(len).map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        Ok((len.div_ceil(buf_len as u64), len, Vec::new()))
    })
}

/// Runs `--workload` for every engine of `--engine` (default `baseline,auto`), `--repeat`
/// times interleaved.
///
/// # Errors
///
/// A message for a failed run.
pub fn run(args: &Args, workload: Workload) -> Result<Vec<RunResult>, String> {
    let engines: Vec<String> = if args.engine.is_empty() {
        vec!["baseline".into(), "auto".into()]
    } else {
        args.engine.clone()
    };
    let direct = args.direct.unwrap_or(1) == 1;
    let runtime = args.runtime.unwrap_or(Duration::from_secs(5));
    let writers = args.writers as usize;
    let (bs, size, depth) = match workload {
        // One request in flight per writer at most (the engine admits `--writers` at once):
        // a log writer leading its group's write or sync, a blob writer's durable write.
        Workload::Wal => (args.bs.unwrap_or(128), 0, 1),
        Workload::Blob => (args.bs.unwrap_or(64 << 10), args.size.unwrap_or(1 << 30), 1),
        Workload::Snapshot => (
            args.bs.unwrap_or(8 << 20),
            args.size.unwrap_or(1 << 30),
            args.iodepth.unwrap_or(2),
        ),
    };
    let job = Job {
        rw: Rw::Write,
        rwmixread: 0,
        bs,
        iodepth: depth,
        iodepth_batch_submit: 1,
        numjobs: if workload == Workload::Snapshot {
            1
        } else {
            args.writers
        },
        direct,
        size,
        runtime,
        invalidate: true,
        threads: args.threads,
        fdatasync: 0,
        fsync: 0,
        dsync: false,
        atomic: false,
    };
    let base = match &args.filename {
        Some(path) => path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| ".".into()),
        None => ".".into(),
    };
    let mut results = Vec::new();
    for repetition in 0..args.repeat {
        for name in crate::in_turn(&engines, repetition) {
            let dir = tempfile::Builder::new()
                .prefix(".engine-bench-")
                .tempdir_in(&base)
                .map_err(|e| format!("a scratch directory in {}: {e}", base.display()))?;
            let bs_usize = bs as usize;
            let measured = if name == "baseline" {
                match workload {
                    Workload::Wal => wal_baseline(dir.path(), direct, writers, bs_usize, runtime),
                    Workload::Blob => {
                        blob_baseline(dir.path(), direct, writers, bs_usize, size, runtime)
                    }
                    Workload::Snapshot => snapshot_baseline(dir.path(), direct, size, bs_usize),
                }
            } else {
                let engine = crate::build_engine(name, &job, Api::Async)?;
                match workload {
                    Workload::Wal => wal_engine(engine, dir.path(), writers, bs_usize, runtime),
                    Workload::Blob => {
                        blob_engine(engine, dir.path(), writers, bs_usize, size, runtime)
                    }
                    Workload::Snapshot => {
                        snapshot_engine(engine, dir.path(), direct, size, bs_usize, depth as usize)
                    }
                }
            }
            .map_err(|e| format!("{name}, {workload:?}: {e}"))?;
            let api = match (name.as_str(), workload) {
                ("baseline", Workload::Wal) => "pwrite+fdatasync per record",
                ("baseline", Workload::Blob) => "pwrite+fdatasync per object",
                ("baseline", Workload::Snapshot) => "blocking pwrite loop",
                (_, Workload::Wal) => "group commit",
                (_, Workload::Blob) => "blob store",
                (_, Workload::Snapshot) => "pipeline",
            };
            results.push(RunResult::new(
                name,
                api,
                &job,
                measured.ops,
                measured.bytes,
                measured.secs,
                latency(measured.latencies),
                measured.cpu,
                None,
                repetition,
            ));
        }
    }
    Ok(results)
}
