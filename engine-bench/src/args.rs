//! The command line, with fio's flag names, and the job it describes.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Which API of an engine drives the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// The per-thread queue (push, submit, wait).
    Queue,
    /// The async API (`read_at`/`write_at` futures), `iodepth` futures per job.
    Async,
}

/// The access pattern, as fio names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Random mixed reads and writes (`--rwmixread` percent reads).
    Randrw,
}

impl Rw {
    /// True for sequential patterns.
    pub fn sequential(self) -> bool {
        matches!(self, Rw::Read | Rw::Write)
    }

    /// fio's name.
    pub fn name(self) -> &'static str {
        match self {
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::Randread => "randread",
            Rw::Randwrite => "randwrite",
            Rw::Randrw => "randrw",
        }
    }
}

/// The origins' jobs (`--workload`), each against its hand-written baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// blobd's store: durable object puts and deletes in a preallocated file.
    Blob,
    /// A write-ahead log: records from many writers, each durable before its ack.
    Wal,
    /// Firedancer's snapshot writer: a stream in large O_DIRECT writes, then a sync.
    Snapshot,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table for people.
    Text,
    /// One JSON object per engine run, in an array.
    Json,
    /// A Markdown table (for BENCHMARKS.md).
    Markdown,
}

/// A fio-like benchmark for the storage I/O engine. With no arguments it runs a short standard
/// set of workloads on every engine available here (and fio, if installed) against a 1 GiB
/// temporary file in the current directory, and prints a comparison table.
#[derive(Parser, Debug, Clone)]
#[command(name = "engine-bench", version)]
pub struct Args {
    /// Engines to run, comma-separated: auto, uring, aio, sync, monoio, glommio, all (every
    /// built-in engine), `uring-restricted` (io_uring's hardened ring, as a sandbox runs it),
    /// a plugin name, fio (fio with io_uring), `fio:<ioengine>` (for example
    /// fio:libaio, fio:psync), tokio-fs, and with the `peers` feature glommio-direct and
    /// monoio-direct (glommio's DmaFile and monoio's File used directly). Ratios are
    /// against the first. A library engine may name its API (`uring@async`, `sync@queue`;
    /// otherwise `--api`), and any engine its own job count (`fio:psync#4`: four psync jobs;
    /// otherwise `--numjobs`), so one interleaved run can compare both APIs, or a one-queue
    /// engine with a thread pool against as many fio jobs.
    #[arg(long, value_delimiter = ',')]
    pub engine: Vec<String>,
    /// The engine API to drive.
    #[arg(long, value_enum, default_value_t = Api::Queue)]
    pub api: Api,
    /// Access pattern.
    #[arg(long, value_enum)]
    pub rw: Option<Rw>,
    /// Percent of reads in randrw.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmixread: u8,
    /// Block size, bytes with optional k/m/g.
    #[arg(long, value_parser = parse_size)]
    pub bs: Option<u64>,
    /// Requests in flight per job.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub iodepth: Option<u32>,
    /// Submit once this many requests are queued (fio's iodepth_batch_submit); 1 submits each
    /// request at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub iodepth_batch_submit: u32,
    /// Worker threads of this library's engines that use them (the sync engine): a number, or
    /// `inline` to run each request on the job's own thread, as fio's psync does.
    #[arg(long, value_parser = parse_threads)]
    pub threads: Option<Threads>,
    /// Jobs (threads), each with its own queue.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub numjobs: u32,
    /// 1 for O_DIRECT.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub direct: Option<u8>,
    /// File size, bytes with optional k/m/g.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Run time of each engine run, with s or ms.
    #[arg(long, value_parser = parse_time)]
    pub runtime: Option<Duration>,
    /// The file to use; it is created (and filled) when missing or too small, and kept.
    /// Without it, a temporary file in the current directory is used and removed.
    #[arg(long)]
    pub filename: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub output_format: Format,
    /// Also write the JSON results to this file, whatever the output format.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Write an SVG chart of IOPS and latency per engine run.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write a seeded pattern over the file, read it back through each engine and check it.
    #[arg(long)]
    pub verify: bool,
    /// Run one of the origins' jobs instead of a fio-like one, each engine of `--engine`
    /// against `baseline`, the job written by hand as the origin did it (see the
    /// `workloads` module): `--bs` is the record, object or write size, `--size` the store or
    /// stream, `--iodepth` the snapshot's buffers.
    #[arg(long, value_enum)]
    pub workload: Option<Workload>,
    /// Concurrent writers of `--workload wal` and `blob`.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub writers: u32,
    /// Repetitions, interleaved across engines; ratios are the median over repetitions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// 0 keeps the page cache (fio's --invalidate=0), for cached buffered workloads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub invalidate: u8,
    /// An fdatasync after every N writes (fio's --fdatasync): a write-ahead log's pattern.
    /// The writes in flight complete first, so the sync covers them.
    #[arg(long, default_value_t = 0)]
    pub fdatasync: u32,
    /// An fsync after every N writes (fio's --fsync).
    #[arg(long, default_value_t = 0)]
    pub fsync: u32,
    /// 1: every write durable at completion (WriteFlags::DSYNC; fio: --sync=dsync).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub dsync: u8,
    /// 1: every write untorn (WriteFlags::ATOMIC; fio: --atomic=1, fio 3.38 and later).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub atomic: u8,
}

/// The engines' worker threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Threads {
    /// This many.
    Count(usize),
    /// None: requests run on the submitting thread.
    Inline,
}

/// Parses `--threads`: a number or `inline`.
///
/// # Errors
///
/// A message naming what is accepted.
pub fn parse_threads(text: &str) -> Result<Threads, String> {
    match text.trim() {
        "inline" => Ok(Threads::Inline),
        n => n
            .parse::<usize>()
            .ok()
            .filter(|&n| n <= 1024)
            .map(Threads::Count)
            .ok_or_else(|| format!("{text:?} is not a thread count: use 0 to 1024 or inline")),
    }
}

/// Parses a size such as `4k`, `1m`, `1G` or `512` (powers of 1024).
///
/// # Errors
///
/// A message naming what is accepted.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, shift) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 10),
        Some('m') => (&lower[..lower.len() - 1], 20),
        Some('g') => (&lower[..lower.len() - 1], 30),
        _ => (lower.as_str(), 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            format!(
                "{text:?} is not a size: use a positive number with an optional k, m or g suffix"
            )
        })
}

/// Parses a duration such as `5s`, `500ms` or `3` (seconds).
///
/// # Errors
///
/// A message naming what is accepted.
pub fn parse_time(text: &str) -> Result<Duration, String> {
    let lower = text.trim().to_ascii_lowercase();
    let parsed = if let Some(ms) = lower.strip_suffix("ms") {
        ms.parse::<u64>().ok().map(Duration::from_millis)
    } else {
        lower
            .strip_suffix('s')
            .unwrap_or(&lower)
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    };
    parsed
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a time: use a positive number with s or ms"))
}

/// One entry of `--engine`: the engine, and what it overrides of the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineSpec {
    /// As given, for reports (`uring@async`, `fio:psync#4`).
    pub label: String,
    /// The engine's name (`uring`, `fio:psync`).
    pub name: String,
    /// The API, for this library's engines, when the entry names one.
    pub api: Option<Api>,
    /// The job count, when the entry names one.
    pub numjobs: Option<u32>,
}

impl EngineSpec {
    /// Parses `name[@api][#numjobs]`.
    ///
    /// # Errors
    ///
    /// A message naming what is accepted.
    pub fn parse(text: &str) -> Result<EngineSpec, String> {
        let text = text.trim();
        let (rest, numjobs) = match text.split_once('#') {
            Some((rest, n)) => {
                let n = n
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| format!("{text:?}: the job count after # must be 1 to 256"))?;
                (rest, Some(n))
            }
            None => (text, None),
        };
        let (name, api) = match rest.split_once('@') {
            Some((name, "queue")) => (name, Some(Api::Queue)),
            Some((name, "async")) => (name, Some(Api::Async)),
            Some((_, other)) => {
                return Err(format!(
                    "{text:?}: the API after @ is queue or async, not {other:?}"
                ))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(format!("{text:?}: no engine name"));
        }
        Ok(EngineSpec {
            label: text.to_string(),
            name: name.to_string(),
            api,
            numjobs,
        })
    }
}

/// One fully specified workload.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Job {
    /// The access pattern.
    pub rw: Rw,
    /// Percent reads for randrw.
    pub rwmixread: u8,
    /// Block size in bytes.
    pub bs: u64,
    /// Requests in flight per job.
    pub iodepth: u32,
    /// Requests queued before a submit.
    pub iodepth_batch_submit: u32,
    /// Jobs.
    pub numjobs: u32,
    /// O_DIRECT.
    pub direct: bool,
    /// File size in bytes.
    pub size: u64,
    /// Run time.
    #[serde(skip)]
    pub runtime: Duration,
    /// Keep the page cache warm.
    pub invalidate: bool,
    /// The engines' worker threads, if set.
    #[serde(skip)]
    pub threads: Option<Threads>,
    /// An fdatasync after every this many writes (0: none).
    pub fdatasync: u32,
    /// An fsync after every this many writes (0: none).
    pub fsync: u32,
    /// Every write durable at completion.
    pub dsync: bool,
    /// Every write untorn.
    pub atomic: bool,
}

impl Job {
    /// A short label: `randread 4k qd32 direct`.
    pub fn label(&self) -> String {
        let mut durability = String::new();
        if self.fdatasync > 0 {
            durability += &format!(" fdatasync={}", self.fdatasync);
        }
        if self.fsync > 0 {
            durability += &format!(" fsync={}", self.fsync);
        }
        if self.dsync {
            durability += " dsync";
        }
        if self.atomic {
            durability += " atomic";
        }
        format!(
            "{} {} qd{}{}{}{durability}",
            self.rw.name(),
            human(self.bs),
            self.iodepth,
            if self.numjobs > 1 {
                format!(" x{}", self.numjobs)
            } else {
                String::new()
            },
            if self.direct { " direct" } else { " buffered" }
        )
    }
}

/// `4096` as `4k`, `1048576` as `1m`.
pub fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}g", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}m", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}k", b >> 10),
        b => b.to_string(),
    }
}

impl Args {
    /// True when no workload flag was given: run the standard set.
    pub fn is_default_run(&self) -> bool {
        self.rw.is_none() && self.bs.is_none() && self.iodepth.is_none() && self.direct.is_none()
    }

    /// The jobs to run: the one described, or the standard set.
    ///
    /// # Errors
    ///
    /// A message when the block size does not divide the file size.
    pub fn jobs(&self) -> Result<Vec<Job>, String> {
        let size = self.size.unwrap_or(1 << 30);
        let runtime = self
            .runtime
            .unwrap_or(Duration::from_secs(if self.is_default_run() {
                3
            } else {
                5
            }));
        let base = Job {
            rw: Rw::Randread,
            rwmixread: self.rwmixread,
            bs: 4096,
            iodepth: 32,
            iodepth_batch_submit: self.iodepth_batch_submit,
            numjobs: self.numjobs,
            direct: true,
            size,
            runtime,
            invalidate: self.invalidate == 1,
            threads: self.threads,
            fdatasync: self.fdatasync,
            fsync: self.fsync,
            dsync: self.dsync == 1,
            atomic: self.atomic == 1,
        };
        let jobs = if self.is_default_run() {
            vec![
                base.clone(),
                Job {
                    rw: Rw::Write,
                    bs: 1 << 20,
                    iodepth: 8,
                    ..base.clone()
                },
            ]
        } else {
            vec![Job {
                rw: self.rw.unwrap_or(Rw::Randread),
                bs: self.bs.unwrap_or(4096),
                iodepth: self.iodepth.unwrap_or(32),
                direct: self.direct.is_none_or(|d| d == 1),
                ..base
            }]
        };
        for job in &jobs {
            if job.bs > job.size {
                return Err(format!(
                    "--bs {} is larger than --size {}",
                    human(job.bs),
                    human(job.size)
                ));
            }
            if job.bs > 256 << 20 {
                return Err(format!(
                    "--bs {} is above the 256m this benchmark supports",
                    human(job.bs)
                ));
            }
        }
        Ok(jobs)
    }

    /// The engines to run, in order.
    pub fn engines(&self, fio_available: bool) -> Vec<String> {
        if self.engine.is_empty() {
            let mut all: Vec<String> = engine::BUILTIN_BACKENDS.map(String::from).into();
            if fio_available {
                all.push("fio".into());
            }
            return all;
        }
        let mut out = Vec::new();
        for name in &self.engine {
            if name == "all" {
                out.extend(engine::BUILTIN_BACKENDS.map(String::from));
            } else {
                out.push(name.clone());
            }
        }
        out
    }

    /// The engines to run, parsed.
    ///
    /// # Errors
    ///
    /// A message for an entry that does not parse.
    pub fn engine_specs(&self, fio_available: bool) -> Result<Vec<EngineSpec>, String> {
        self.engines(fio_available)
            .iter()
            .map(|e| EngineSpec::parse(e))
            .collect()
    }
}
