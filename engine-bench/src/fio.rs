//! Running fio itself with the identical job, and reading its JSON.

use std::path::Path;
use std::process::Command;

use crate::args::Job;

/// What one fio run reported.
pub struct FioResult {
    /// IOPS, reads and writes together.
    pub iops: f64,
    /// Bytes per second.
    pub bw_bytes: f64,
    /// Completion latency percentiles in nanoseconds: p50, p99, p99.9.
    pub lat_ns: [u64; 3],
    /// User CPU seconds.
    pub cpu_user_s: f64,
    /// System CPU seconds.
    pub cpu_sys_s: f64,
    /// Run time in seconds.
    pub runtime_s: f64,
}

/// True when a `fio` is on PATH.
pub fn available() -> bool {
    Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// fio's synchronous ioengines, which ignore `iodepth`.
const SYNCHRONOUS: [&str; 4] = ["psync", "pvsync", "pvsync2", "sync"];

/// The fio arguments for `job` on `path` with `ioengine`.
///
/// A synchronous ioengine keeps one request in flight per thread, so `iodepth` requests per
/// job become `iodepth` threads per job: the same thread count as this library's sync engine,
/// whose worker pool runs one request per thread.
pub fn arguments(job: &Job, path: &Path, ioengine: &str) -> Vec<String> {
    let mut job = job.clone();
    if SYNCHRONOUS.contains(&ioengine) {
        job.numjobs *= job.iodepth;
        job.iodepth = 1;
    }
    let job = &job;
    let mut args = vec![
        "--name=engine-bench".to_string(),
        format!("--filename={}", path.display()),
        format!("--ioengine={ioengine}"),
        format!("--rw={}", job.rw.name()),
        format!("--bs={}", job.bs),
        format!("--iodepth={}", job.iodepth),
        format!("--iodepth_batch_submit={}", job.iodepth_batch_submit),
        format!("--numjobs={}", job.numjobs),
        format!("--direct={}", u8::from(job.direct)),
        format!("--size={}", job.size),
        format!("--runtime={}ms", job.runtime.as_millis()),
        "--time_based".to_string(),
        "--group_reporting".to_string(),
        "--thread".to_string(),
        "--norandommap".to_string(),
        "--randrepeat=0".to_string(),
        format!("--invalidate={}", u8::from(job.invalidate)),
        // Total latency percentiles (submission to completion), as engine-bench measures;
        // fio's default percentiles are of completion latency only.
        "--lat_percentiles=1".to_string(),
        "--output-format=json".to_string(),
    ];
    if job.rw == crate::args::Rw::Randrw {
        args.push(format!("--rwmixread={}", job.rwmixread));
    }
    if job.fdatasync > 0 {
        args.push(format!("--fdatasync={}", job.fdatasync));
    }
    if job.fsync > 0 {
        args.push(format!("--fsync={}", job.fsync));
    }
    if job.dsync {
        args.push("--sync=dsync".to_string());
    }
    if job.atomic {
        args.push("--atomic=1".to_string());
    }
    if !job.rw.sequential() || job.numjobs == 1 {
        return args;
    }
    // Sequential jobs each get their own region, as engine-bench's jobs do.
    args.push(format!(
        "--offset_increment={}",
        job.size / u64::from(job.numjobs)
    ));
    args
}

/// Runs fio with `ioengine` on `job`.
///
/// # Errors
///
/// A message when fio is missing, fails, or prints something that is not its JSON.
pub fn run(job: &Job, path: &Path, ioengine: &str) -> Result<FioResult, String> {
    let (user0, sys0) = crate::run::cpu_seconds_of(libc::RUSAGE_CHILDREN);
    let output = Command::new("fio")
        .args(arguments(job, path, ioengine))
        .output()
        .map_err(|e| format!("fio is not installed or cannot run ({e}); install it (apt-get install fio) or leave it out of --engine"))?;
    if !output.status.success() {
        return Err(format!(
            "fio failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    // fio may print notes before the JSON.
    let json = text.find('{').map_or("", |start| &text[start..]);
    let mut result = parse(json)?;
    // fio's own CPU figures are per-job percentages; the children's rusage is the exact total.
    let (user1, sys1) = crate::run::cpu_seconds_of(libc::RUSAGE_CHILDREN);
    result.cpu_user_s = user1 - user0;
    result.cpu_sys_s = sys1 - sys0;
    Ok(result)
}

/// Reads fio's JSON output.
///
/// # Errors
///
/// A message naming what is missing.
pub fn parse(json: &str) -> Result<FioResult, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("fio's output is not JSON: {e}"))?;
    let job = value
        .get("jobs")
        .and_then(|j| j.get(0))
        .ok_or("fio's JSON has no jobs")?;
    let number =
        |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let mut iops = 0.0;
    let mut bw = 0.0;
    let mut lat = [0u64; 3];
    let mut weight = 0.0;
    // Under group reporting `job_runtime` is the sum over jobs; a direction's `runtime` is the
    // group's wall-clock time, which is what IOPS were computed over.
    let mut runtime_ms: f64 = 0.0;
    for side in ["read", "write"] {
        let Some(stats) = job.get(side) else { continue };
        runtime_ms = runtime_ms.max(number(stats.get("runtime")));
        let side_iops = number(stats.get("iops"));
        iops += side_iops;
        bw += number(stats.get("bw_bytes"));
        let percentiles = stats
            .get("lat_ns")
            .and_then(|c| c.get("percentile"))
            .or_else(|| stats.get("clat_ns").and_then(|c| c.get("percentile")));
        if side_iops > weight {
            // A mixed job's headline latency is its dominant side's.
            weight = side_iops;
            for (i, key) in ["50.000000", "99.000000", "99.900000"].iter().enumerate() {
                lat[i] = number(percentiles.and_then(|p| p.get(*key))) as u64;
            }
        }
    }
    if runtime_ms == 0.0 {
        runtime_ms = number(job.get("job_runtime"));
    }
    let runtime_s = runtime_ms / 1000.0;
    Ok(FioResult {
        iops,
        bw_bytes: bw,
        lat_ns: lat,
        cpu_user_s: 0.0,
        cpu_sys_s: 0.0,
        runtime_s,
    })
}
