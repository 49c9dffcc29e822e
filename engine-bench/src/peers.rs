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
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
                    .map_err(|e| e.to_string())?;
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
    let elapsed = started.elapsed();
    let (user1, sys1) = crate::run::cpu_seconds_of(libc::RUSAGE_SELF);
    let mut total =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).map_err(|e| e.to_string())?;
    let (mut ops, mut bytes) = (0, 0);
    for result in results {
        let (o, b, h) = result?;
        ops += o;
        bytes += b;
        let _ = total.add(&h);
    }
    Ok(Measured {
        ops,
        bytes,
        elapsed,
        latency_ns: total,
        cpu_user_s: user1 - user0,
        cpu_sys_s: sys1 - sys0,
        allocations: None,
    })
}
