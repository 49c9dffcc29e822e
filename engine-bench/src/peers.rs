//! Peer libraries run with the identical workload, for side-by-side ratios.
//!
//! `tokio-fs` is tokio's file I/O model: every operation runs on tokio's blocking pool
//! (`spawn_blocking`), which is what `tokio::fs` does inside; `iodepth` tasks per job keep that
//! many operations in flight.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::args::Job;
use crate::run::{Measured, Pattern};

/// One task's count of operations, bytes and latencies.
type TaskResult = Result<(u64, u64, Histogram<u64>), String>;

/// Runs `job` through tokio's blocking-pool file I/O.
///
/// # Errors
///
/// The first I/O error, as text.
pub fn tokio_fs(job: &Job, path: &Path, seed: u64) -> Result<Measured, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(job.numjobs as usize)
        .max_blocking_threads((job.iodepth * job.numjobs).max(1) as usize)
        .build()
        .map_err(|e| e.to_string())?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true);
    if job.direct {
        options.custom_flags(libc::O_DIRECT);
    }
    let file = Arc::new(
        options
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?,
    );
    let (user0, sys0) = crate::run::cpu_seconds_of(libc::RUSAGE_SELF);
    let started = Instant::now();
    let deadline = started + job.runtime;
    let tasks = (job.iodepth * job.numjobs) as u64;
    let results: Vec<TaskResult> = runtime.block_on(async {
        let mut handles = Vec::new();
        for t in 0..tasks {
            let file = Arc::clone(&file);
            let job = job.clone();
            handles.push(tokio::spawn(async move {
                let mut pattern = Pattern::new(&job, t as u32, seed);
                let mut histogram = histogram()?;
                let (mut ops, mut bytes) = (0u64, 0u64);
                let mut buf =
                    engine::AlignedBuf::zeroed(job.bs as usize, 4096).map_err(|e| e.to_string())?;
                while Instant::now() < deadline {
                    let (read, offset) = pattern.next_request();
                    let begin = Instant::now();
                    let file = Arc::clone(&file);
                    let (result, back) = tokio::task::spawn_blocking(move || {
                        let result = if read {
                            file.read_at(&mut buf, offset)
                        } else {
                            file.write_at(&buf, offset)
                        };
                        (result, buf)
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                    buf = back;
                    let n = result.map_err(|e| e.to_string())?;
                    ops += 1;
                    bytes += n as u64;
                    histogram.saturating_record(
                        u64::try_from(begin.elapsed().as_nanos())
                            .unwrap_or(u64::MAX)
                            .max(1),
                    );
                }
                Ok((ops, bytes, histogram))
            }));
        }
        let mut out = Vec::new();
        for handle in handles {
            out.push(handle.await.map_err(|e| e.to_string()).and_then(|r| r));
        }
        out
    });
    measured(results, started, (user0, sys0))
}

/// Runs `threads` copies of `body` (one per job), timing the whole and merging the counts.
#[cfg(feature = "peers")]
fn per_job(job: &Job, body: impl Fn(u32) -> TaskResult + Sync) -> Result<Measured, String> {
    let (user0, sys0) = crate::run::cpu_seconds_of(libc::RUSAGE_SELF);
    let started = Instant::now();
    let results: Vec<TaskResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..job.numjobs)
            .map(|index| {
                let body = &body;
                scope.spawn(move || body(index))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a job thread panicked".into()))
            })
            .collect()
    });
    measured(results, started, (user0, sys0))
}

/// A latency histogram from 1 ns to an hour.
fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).map_err(|e| e.to_string())
}

/// Adds up what tasks counted; the first error wins.
fn sum(results: impl IntoIterator<Item = TaskResult>) -> TaskResult {
    let mut total = histogram()?;
    let (mut ops, mut bytes) = (0, 0);
    for result in results {
        let (o, b, h) = result?;
        ops += o;
        bytes += b;
        let _ = total.add(&h);
    }
    Ok((ops, bytes, total))
}

/// The measurement of a run that started at `started`, with the process's CPU seconds then.
fn measured(
    results: Vec<TaskResult>,
    started: Instant,
    (user0, sys0): (f64, f64),
) -> Result<Measured, String> {
    let elapsed = started.elapsed();
    let (user1, sys1) = crate::run::cpu_seconds_of(libc::RUSAGE_SELF);
    let (ops, bytes, latency_ns) = sum(results)?;
    Ok(Measured {
        ops,
        bytes,
        elapsed,
        latency_ns,
        cpu_user_s: user1 - user0,
        cpu_sys_s: sys1 - sys0,
        allocations: None,
    })
}

/// An aligned buffer lent to monoio: O_DIRECT needs aligned memory, which `Vec` is not.
#[cfg(feature = "peers")]
struct MonoBuf(engine::AlignedBuf);

// SAFETY: the AlignedBuf owns its memory, which does not move when the wrapper moves; its
// first `len` bytes are initialised.
#[cfg(feature = "peers")]
unsafe impl monoio::buf::IoBuf for MonoBuf {
    fn read_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.0.len()
    }
}

// SAFETY: as above; every byte up to the capacity is initialised (zeroed at allocation).
#[cfg(feature = "peers")]
unsafe impl monoio::buf::IoBufMut for MonoBuf {
    fn write_ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr()
    }
    fn bytes_total(&mut self) -> usize {
        self.0.capacity()
    }
    unsafe fn set_init(&mut self, pos: usize) {
        let _ = self.0.resize(pos);
    }
}

/// Runs `job` through monoio's File (io_uring driver), `iodepth` tasks per job thread.
///
/// # Errors
///
/// The first setup or I/O error, as text.
#[cfg(feature = "peers")]
pub fn monoio(job: &Job, path: &Path, seed: u64) -> Result<Measured, String> {
    per_job(job, |index| {
        let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(1024)
            .build()
            .map_err(|e| format!("monoio runtime: {e}"))?;
        runtime.block_on(async {
            let mut options = std::fs::OpenOptions::new();
            options.read(true).write(true);
            if job.direct {
                options.custom_flags(libc::O_DIRECT);
            }
            let std = options.open(path).map_err(|e| e.to_string())?;
            let file =
                std::rc::Rc::new(monoio::fs::File::from_std(std).map_err(|e| e.to_string())?);
            let deadline = Instant::now() + job.runtime;
            let mut tasks = Vec::new();
            for w in 0..job.iodepth {
                let (file, job) = (std::rc::Rc::clone(&file), job.clone());
                tasks.push(monoio::spawn(async move {
                    let mut pattern = Pattern::new(&job, index * job.iodepth + w, seed);
                    let mut histogram = histogram()?;
                    let (mut ops, mut bytes) = (0u64, 0u64);
                    let mut buf = MonoBuf(
                        engine::AlignedBuf::zeroed(job.bs as usize, 4096)
                            .map_err(|e| e.to_string())?,
                    );
                    while Instant::now() < deadline {
                        let (read, offset) = pattern.next_request();
                        let begin = Instant::now();
                        let (result, back) = if read {
                            file.read_at(buf, offset).await
                        } else {
                            file.write_at(buf, offset).await
                        };
                        buf = back;
                        let n = result.map_err(|e| e.to_string())?;
                        let _ = buf.0.resize(job.bs as usize);
                        ops += 1;
                        bytes += n as u64;
                        histogram.saturating_record(
                            u64::try_from(begin.elapsed().as_nanos())
                                .unwrap_or(u64::MAX)
                                .max(1),
                        );
                    }
                    Ok::<_, String>((ops, bytes, histogram))
                }));
            }
            let mut results = Vec::with_capacity(tasks.len());
            for task in tasks {
                results.push(task.await);
            }
            sum(results)
        })
    })
}

/// Runs `job` through glommio's DmaFile (always O_DIRECT), `iodepth` tasks per job thread.
/// Reads use `read_at_aligned`; writes allocate a DmaBuffer per write, as glommio requires.
///
/// # Errors
///
/// The first setup or I/O error, as text.
#[cfg(feature = "peers")]
pub fn glommio(job: &Job, path: &Path, seed: u64) -> Result<Measured, String> {
    if !job.direct {
        return Err("glommio's DmaFile is always O_DIRECT: run it with --direct 1".into());
    }
    per_job(job, |index| {
        let executor = glommio::LocalExecutorBuilder::default()
            .make()
            .map_err(|e| format!("glommio executor: {e}"))?;
        executor.run(async {
            let file = glommio::io::OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(path)
                .await
                .map_err(|e| e.to_string())?;
            let file = std::rc::Rc::new(file);
            let deadline = Instant::now() + job.runtime;
            let mut tasks = Vec::new();
            for w in 0..job.iodepth {
                let (file, job) = (std::rc::Rc::clone(&file), job.clone());
                tasks.push(glommio::spawn_local(async move {
                    let mut pattern = Pattern::new(&job, index * job.iodepth + w, seed);
                    let mut histogram = histogram()?;
                    let (mut ops, mut bytes) = (0u64, 0u64);
                    while Instant::now() < deadline {
                        let (read, offset) = pattern.next_request();
                        let begin = Instant::now();
                        let n = if read {
                            file.read_at_aligned(offset, job.bs as usize)
                                .await
                                .map_err(|e| e.to_string())?
                                .len()
                        } else {
                            let mut buf = file.alloc_dma_buffer(job.bs as usize);
                            buf.as_bytes_mut().fill(0x5A);
                            file.write_at(buf, offset)
                                .await
                                .map_err(|e| e.to_string())?
                        };
                        ops += 1;
                        bytes += n as u64;
                        histogram.saturating_record(
                            u64::try_from(begin.elapsed().as_nanos())
                                .unwrap_or(u64::MAX)
                                .max(1),
                        );
                    }
                    Ok::<_, String>((ops, bytes, histogram))
                }));
            }
            let mut results = Vec::with_capacity(tasks.len());
            for task in tasks {
                results.push(task.await);
            }
            sum(results)
        })
    })
}
