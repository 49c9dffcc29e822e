//! `engine-bench`: a fio-like benchmark for the storage I/O engine.
//!
//! It runs a workload (fio's flag names: `--rw`, `--bs`, `--iodepth`, `--numjobs`,
//! `--direct`, `--size`, `--runtime`, ...) on any engine of this library, through the queue
//! API or the async API, and on fio itself or tokio's file I/O with the identical job,
//! interleaving repetitions (each in its own order: see [`in_turn`]), and reports IOPS,
//! bandwidth, latency percentiles, CPU time and heap allocations per operation, with each
//! engine's median ratio against the first.

pub mod args;
pub mod fio;
pub mod peers;
pub mod report;
pub mod run;
pub mod workloads;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use engine::{Engine, EngineConfig};
use indicatif::{ProgressBar, ProgressStyle};

use args::{Api, Args, Format, Job};
use report::{Latency, RunResult};

/// Everything a bench run produced.
pub struct Outcome {
    /// One record per engine run.
    pub results: Vec<RunResult>,
    /// The selection report of `Engine::from_env()` here, for people.
    pub selection: String,
}

/// Builds engine `name` for `job` through `api`: the queue depth covers what the job keeps in
/// flight (through the queue API each job's own queue, so `--iodepth`; through the async API
/// the engine admits every job's requests at once, so `--iodepth` times `--numjobs`), and the
/// registered pool holds every buffer the job keeps in flight.
pub fn build_engine(name: &str, job: &Job, api: Api) -> Result<Engine, String> {
    if name == "auto" {
        return Engine::from_env().map_err(|e| e.to_string());
    }
    // `<backend>-restricted`: the backend's hardened mode (io_uring's restricted ring).
    let (name, restricted) = match name.strip_suffix("-restricted") {
        Some(backend) => (backend, true),
        None => (name, false),
    };
    let in_flight = u64::from(job.iodepth) * u64::from(job.numjobs);
    let pool = (2 * in_flight * job.bs).clamp(32 << 20, 1 << 30);
    let depth = match api {
        Api::Queue => u64::from(job.iodepth),
        Api::Async => in_flight,
    };
    let mut config = EngineConfig {
        queue_depth: (depth as usize).max(1),
        register_buffers_bytes: pool as usize,
        restricted,
        ..EngineConfig::default()
    };
    match job.threads {
        Some(args::Threads::Inline) => config.inline = true,
        Some(args::Threads::Count(n)) => config.threads = n,
        None => {}
    }
    Engine::with_backend(name, config).map_err(|e| e.to_string())
}

/// The engines in the order repetition `repetition` runs them: the list rotated by one place
/// per repetition, so that each engine runs in each place in turn. A run can leave the device
/// busy for the next one (a burst of writes still being written back, say); in a fixed order
/// the same engine would always pay for it. Ratios are taken per repetition, so the order does
/// not change which runs are compared.
pub fn in_turn<T>(engines: &[T], repetition: u32) -> impl Iterator<Item = &T> {
    let start = (repetition as usize)
        .checked_rem(engines.len())
        .unwrap_or(0);
    engines[start..].iter().chain(&engines[..start])
}

/// Says (on stderr) when requests of a run on `engine` waited for one of its slots: the run
/// kept more in flight than the engine's queue depth admits, so its numbers measure requests
/// taking turns, not the engine.
pub fn warn_on_slot_waits(engine: &Engine, what: &str) {
    let waits = engine.metrics().slot_waits;
    if waits > 0 {
        eprintln!(
            "note: {what} on {}: {waits} requests waited for a slot (more in flight than the \
             engine's queue depth)",
            engine.name()
        );
    }
}

/// True for names this library's engines answer to (not fio or a peer).
pub fn is_library_engine(name: &str) -> bool {
    !name.starts_with("fio") && !["tokio-fs", "monoio-direct", "glommio-direct"].contains(&name)
}

/// Prepares the page cache for a buffered job the way fio does: dropped for
/// `--invalidate=1`, warmed by reading the file for `--invalidate=0`.
fn settle_cache(path: &Path, job: &Job) {
    if job.direct {
        return;
    }
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    if job.invalidate {
        // SAFETY: posix_fadvise takes a descriptor we own and plain integers.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
    } else {
        let _ = std::io::copy(&mut std::io::BufReader::new(file), &mut std::io::sink());
    }
}

/// Runs engine `name` (without modifiers) through `api` on `job`.
fn run_spec(
    name: &str,
    api: Api,
    job: &Job,
    path: &Path,
    allocations: Option<fn() -> u64>,
    repetition: u32,
    seed: u64,
) -> Result<RunResult, String> {
    settle_cache(path, job);
    if let Some(ioengine) = name.strip_prefix("fio") {
        let ioengine = ioengine
            .strip_prefix(':')
            .filter(|s| !s.is_empty())
            .unwrap_or("io_uring");
        let r = fio::run(job, path, ioengine)?;
        let mut result = RunResult::new(
            name,
            ioengine,
            job,
            0,
            0,
            r.runtime_s,
            Latency {
                p50: r.lat_ns[0],
                p99: r.lat_ns[1],
                p999: r.lat_ns[2],
            },
            (r.cpu_user_s, r.cpu_sys_s),
            None,
            repetition,
        );
        result.iops = r.iops;
        result.bw_bytes = r.bw_bytes;
        let ops = r.iops * r.runtime_s;
        result.cpu_ns_per_op = if ops > 0.0 {
            (r.cpu_user_s + r.cpu_sys_s) * 1e9 / ops
        } else {
            0.0
        };
        return Ok(result);
    }
    let (measured, api_name) = if name == "tokio-fs" {
        (peers::tokio_fs(job, path, seed)?, "blocking-pool")
    } else if name == "monoio-direct" || name == "glommio-direct" {
        peer(name, job, path, seed)?
    } else {
        let engine = build_engine(name, job, api)?;
        let api_name = match api {
            Api::Queue => "queue",
            Api::Async => "async",
        };
        (
            run::run(&engine, path, job, api, allocations, seed)?,
            api_name,
        )
    };
    let h = &measured.latency_ns;
    let lat = Latency {
        p50: h.value_at_quantile(0.50),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
    };
    Ok(RunResult::new(
        name,
        api_name,
        job,
        measured.ops,
        measured.bytes,
        measured.elapsed.as_secs_f64(),
        lat,
        (measured.cpu_user_s, measured.cpu_sys_s),
        measured.allocations,
        repetition,
    ))
}

#[cfg(feature = "peers")]
fn peer(
    name: &str,
    job: &Job,
    path: &Path,
    seed: u64,
) -> Result<(run::Measured, &'static str), String> {
    if name == "monoio-direct" {
        Ok((peers::monoio(job, path, seed)?, "io_uring"))
    } else {
        Ok((peers::glommio(job, path, seed)?, "DmaFile"))
    }
}

#[cfg(not(feature = "peers"))]
fn peer(name: &str, _: &Job, _: &Path, _: u64) -> Result<(run::Measured, &'static str), String> {
    Err(format!("{name} is a peer built only with the `peers` feature: cargo run --release -p engine-bench --features peers"))
}

/// The file to run on, and the temporary file to remove afterwards if it is one.
fn target(args: &Args) -> Result<(PathBuf, Option<tempfile::TempPath>), String> {
    match &args.filename {
        Some(path) => Ok((path.clone(), None)),
        None => {
            let temp = tempfile::Builder::new()
                .prefix(".engine-bench-")
                .tempfile_in(".")
                .map_err(|e| format!("creating a temporary file in the current directory: {e}"))?
                .into_temp_path();
            Ok((temp.to_path_buf(), Some(temp)))
        }
    }
}

/// Runs the benchmark described by `args`. `allocations` reads the process's allocation
/// counter, when the binary installed one.
///
/// # Errors
///
/// A one-line message for bad arguments, a missing engine, or a failed run.
pub fn run(args: &Args, allocations: Option<fn() -> u64>) -> Result<Outcome, String> {
    if let Some(workload) = args.workload {
        let results = workloads::run(args, workload)?;
        let selection = match Engine::from_env() {
            Ok(engine) => engine.report().to_string(),
            Err(e) => format!("Engine::from_env() fails here: {e}"),
        };
        return Ok(Outcome { results, selection });
    }
    let jobs = args.jobs()?;
    let fio_available = fio::available();
    let engines = args.engine_specs(fio_available)?;
    let (path, _temp) = target(args)?;
    let size = jobs.iter().map(|j| j.size).max().unwrap_or(1 << 30);
    run::prepare_file(&path, size)?;

    let mut verified = Vec::new();
    if args.verify {
        for spec in engines.iter().filter(|s| is_library_engine(&s.name)) {
            let engine = build_engine(&spec.name, &jobs[0], Api::Queue)?;
            let bytes = run::verify(&engine, &path, size, jobs[0].direct, 0xC0FFEE)?;
            verified.push((spec.label.clone(), bytes));
        }
    }

    let total = u64::from(args.repeat) * (jobs.len() * engines.len()) as u64;
    let progress = if std::io::stdout().is_terminal() && args.output_format == Format::Text {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut results = Vec::new();
    for repetition in 0..args.repeat {
        for job in &jobs {
            for spec in in_turn(&engines, repetition) {
                let name = &spec.label;
                progress.set_message(format!("{name}: {}", job.label()));
                let seed = 0x5EED ^ u64::from(repetition);
                let api = spec.api.unwrap_or(args.api);
                let job = &Job {
                    numjobs: spec.numjobs.unwrap_or(job.numjobs),
                    ..job.clone()
                };
                let mut result =
                    run_spec(&spec.name, api, job, &path, allocations, repetition, seed)
                        .map_err(|e| format!("{name} on {}: {e}", job.label()))?;
                result.engine.clone_from(&spec.label);
                result.verified_bytes = verified.iter().find(|(n, _)| n == name).map(|(_, b)| *b);
                results.push(result);
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();
    let selection = match Engine::from_env() {
        Ok(engine) => engine.report().to_string(),
        Err(e) => format!("Engine::from_env() fails here: {e}"),
    };
    Ok(Outcome { results, selection })
}

#[cfg(test)]
mod tests {
    use super::in_turn;

    #[test]
    fn each_engine_runs_in_each_place_in_turn() {
        let engines = ["baseline", "uring", "aio", "sync"];
        let orders: Vec<Vec<&str>> = (0..4)
            .map(|r| in_turn(&engines, r).copied().collect())
            .collect();
        assert_eq!(
            orders[0], engines,
            "the first repetition runs the list as given"
        );
        for (place, _) in engines.iter().enumerate() {
            let mut in_place: Vec<&str> = orders.iter().map(|o| o[place]).collect();
            in_place.sort_unstable();
            let mut all = engines.to_vec();
            all.sort_unstable();
            assert_eq!(in_place, all, "place {place} holds every engine once");
        }
        assert_eq!(in_turn::<u8>(&[], 3).count(), 0);
    }
}
