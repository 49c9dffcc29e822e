//! Results: one record per engine run, the comparison table with median ratios, JSON, and an
//! SVG chart.

use std::fmt::Write as _;

use serde::Serialize;

use crate::args::{human, Job};

/// Latency percentiles in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
}

/// One engine's run of one job: the JSON object the bench prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunResult {
    /// The engine as named on the command line (`uring`, `fio`, `fio:libaio`, `tokio-fs`, ...).
    pub engine: String,
    /// `queue` or `async` for this library's engines; the peer's own model otherwise.
    pub api: String,
    /// fio's rw name.
    pub rw: String,
    /// Block size in bytes.
    pub bs: u64,
    /// Requests in flight per job.
    pub iodepth: u32,
    /// Jobs.
    pub numjobs: u32,
    /// O_DIRECT.
    pub direct: bool,
    /// Operations per second.
    pub iops: f64,
    /// Bytes per second.
    pub bw_bytes: f64,
    /// Completion latency.
    pub lat_ns: Latency,
    /// User CPU seconds (the whole process, or fio's).
    pub cpu_user_s: f64,
    /// System CPU seconds.
    pub cpu_sys_s: f64,
    /// CPU nanoseconds per operation, user plus system.
    pub cpu_ns_per_op: f64,
    /// Heap allocations per operation; null where not counted (fio, peers).
    pub allocs_per_op: Option<f64>,
    /// Run time in seconds.
    pub runtime_s: f64,
    /// Which repetition.
    pub repetition: u32,
    /// Bytes written and read back intact by `--verify` before the run, if asked.
    pub verified_bytes: Option<u64>,
}

impl RunResult {
    /// A record for `job` from raw measurements.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: &str,
        api: &str,
        job: &Job,
        ops: u64,
        bytes: u64,
        secs: f64,
        lat_ns: Latency,
        cpu: (f64, f64),
        allocations: Option<u64>,
        repetition: u32,
    ) -> RunResult {
        let secs = secs.max(1e-9);
        RunResult {
            engine: engine.to_string(),
            api: api.to_string(),
            rw: job.rw.name().to_string(),
            bs: job.bs,
            iodepth: job.iodepth,
            numjobs: job.numjobs,
            direct: job.direct,
            iops: ops as f64 / secs,
            bw_bytes: bytes as f64 / secs,
            lat_ns,
            cpu_user_s: cpu.0,
            cpu_sys_s: cpu.1,
            cpu_ns_per_op: if ops > 0 {
                (cpu.0 + cpu.1) * 1e9 / ops as f64
            } else {
                0.0
            },
            allocs_per_op: allocations.map(|a| if ops > 0 { a as f64 / ops as f64 } else { 0.0 }),
            runtime_s: secs,
            repetition,
            verified_bytes: None,
        }
    }

    fn job_key(&self) -> (String, u64, u32, u32, bool) {
        (
            self.rw.clone(),
            self.bs,
            self.iodepth,
            self.numjobs,
            self.direct,
        )
    }
}

/// The median of `values` (0 when empty).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// A summary row: one engine on one job, over every repetition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The job, as a label.
    pub job: String,
    /// The engine.
    pub engine: String,
    /// The API.
    pub api: String,
    /// Median IOPS over repetitions.
    pub iops: f64,
    /// Median bandwidth.
    pub bw_bytes: f64,
    /// Median p50, p99, p99.9 latency.
    pub lat_ns: Latency,
    /// Median CPU ns per operation.
    pub cpu_ns_per_op: f64,
    /// Median allocations per operation.
    pub allocs_per_op: Option<f64>,
    /// Median over repetitions of this engine's IOPS divided by the first engine's in the same
    /// repetition.
    pub iops_ratio: f64,
    /// The same for median latency (lower is better).
    pub p50_ratio: f64,
}

/// Groups results by job and engine, with median-of-ratios against each job's first engine.
pub fn summarize(results: &[RunResult]) -> Vec<Summary> {
    let mut out = Vec::new();
    let mut jobs: Vec<(String, u64, u32, u32, bool)> = Vec::new();
    for r in results {
        if !jobs.contains(&r.job_key()) {
            jobs.push(r.job_key());
        }
    }
    for key in jobs {
        let of_job: Vec<&RunResult> = results.iter().filter(|r| r.job_key() == key).collect();
        let mut engines: Vec<(String, String)> = Vec::new();
        for r in &of_job {
            if !engines.contains(&(r.engine.clone(), r.api.clone())) {
                engines.push((r.engine.clone(), r.api.clone()));
            }
        }
        let Some(first) = engines.first().cloned() else {
            continue;
        };
        let label = format!(
            "{} {} qd{}{}{}",
            key.0,
            human(key.1),
            key.2,
            if key.3 > 1 {
                format!(" x{}", key.3)
            } else {
                String::new()
            },
            if key.4 { " direct" } else { " buffered" }
        );
        for (engine, api) in &engines {
            let runs: Vec<&&RunResult> = of_job
                .iter()
                .filter(|r| &r.engine == engine && &r.api == api)
                .collect();
            let pick = |f: &dyn Fn(&RunResult) -> f64| {
                median(&mut runs.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            let mut iops_ratios = Vec::new();
            let mut p50_ratios = Vec::new();
            for r in &runs {
                let base = of_job.iter().find(|b| {
                    b.engine == first.0 && b.api == first.1 && b.repetition == r.repetition
                });
                if let Some(base) = base {
                    if base.iops > 0.0 {
                        iops_ratios.push(r.iops / base.iops);
                    }
                    if base.lat_ns.p50 > 0 {
                        p50_ratios.push(r.lat_ns.p50 as f64 / base.lat_ns.p50 as f64);
                    }
                }
            }
            let allocs: Vec<f64> = runs.iter().filter_map(|r| r.allocs_per_op).collect();
            out.push(Summary {
                job: label.clone(),
                engine: engine.clone(),
                api: api.clone(),
                iops: pick(&|r| r.iops),
                bw_bytes: pick(&|r| r.bw_bytes),
                lat_ns: Latency {
                    p50: pick(&|r| r.lat_ns.p50 as f64) as u64,
                    p99: pick(&|r| r.lat_ns.p99 as f64) as u64,
                    p999: pick(&|r| r.lat_ns.p999 as f64) as u64,
                },
                cpu_ns_per_op: pick(&|r| r.cpu_ns_per_op),
                allocs_per_op: (!allocs.is_empty()).then(|| median(&mut allocs.clone())),
                iops_ratio: median(&mut iops_ratios),
                p50_ratio: median(&mut p50_ratios),
            });
        }
    }
    out
}

fn micros(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// The comparison table for people.
pub fn table(summaries: &[Summary], repetitions: u32) -> String {
    let mut text = String::new();
    let mut current = String::new();
    for s in summaries {
        if s.job != current {
            current = s.job.clone();
            let _ = writeln!(
                text,
                "\n{}{}",
                s.job,
                if repetitions > 1 {
                    format!(" (median of {repetitions} interleaved repetitions)")
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                text,
                "  {:<12} {:<6} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
                "engine",
                "api",
                "IOPS",
                "MB/s",
                "p50 us",
                "p99 us",
                "p99.9 us",
                "cpu ns/op",
                "allocs/op",
                "x IOPS",
                "x p50"
            );
        }
        let allocs = s
            .allocs_per_op
            .map_or("-".to_string(), |a| format!("{a:.3}"));
        let _ = writeln!(
            text,
            "  {:<12} {:<6} {:>10.0} {:>10.1} {:>9} {:>9} {:>9} {:>9.0} {:>9} {:>8.3} {:>8.3}",
            s.engine,
            s.api,
            s.iops,
            s.bw_bytes / 1e6,
            micros(s.lat_ns.p50),
            micros(s.lat_ns.p99),
            micros(s.lat_ns.p999),
            s.cpu_ns_per_op,
            allocs,
            s.iops_ratio,
            s.p50_ratio,
        );
    }
    text
}

/// An SVG chart: per job, a bar of IOPS and a bar of p99 latency for each engine.
pub fn svg(summaries: &[Summary]) -> String {
    let bar_h = 16.0;
    let gap = 6.0;
    let left = 230.0;
    let width = 900.0;
    let chart_w = (width - left - 40.0) / 2.0;
    let rows = summaries.len() as f64;
    let jobs = summaries
        .iter()
        .map(|s| &s.job)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as f64;
    let height = 60.0 + rows * (bar_h + gap) + jobs * 28.0;
    let max_iops = summaries.iter().map(|s| s.iops).fold(1.0, f64::max);
    let max_p99 = summaries
        .iter()
        .map(|s| s.lat_ns.p99 as f64)
        .fold(1.0, f64::max);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r##"<rect width="100%" height="100%" fill="#fff"/>"##);
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="20" font-weight="bold">IOPS (higher is better)</text>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="20" font-weight="bold">p99 latency, us (lower is better)</text>"#,
        left + chart_w + 30.0
    );
    let mut y = 40.0;
    let mut current = String::new();
    for s in summaries {
        if s.job != current {
            current = s.job.clone();
            y += 8.0;
            let _ = writeln!(
                out,
                r#"<text x="10" y="{}" font-weight="bold">{}</text>"#,
                y + 10.0,
                escape(&s.job)
            );
            y += 20.0;
        }
        let label = format!("{} ({})", s.engine, s.api);
        let iops_w = chart_w * s.iops / max_iops;
        let p99_w = chart_w * s.lat_ns.p99 as f64 / max_p99;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + 12.0,
            escape(&label)
        );
        let _ = writeln!(
            out,
            r##"<rect x="{left}" y="{y}" width="{iops_w:.1}" height="{bar_h}" fill="#4878d0"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}">{:.0}</text>"#,
            left + iops_w + 4.0,
            y + 12.0,
            s.iops
        );
        let x2 = left + chart_w + 30.0;
        let _ = writeln!(
            out,
            r##"<rect x="{x2}" y="{y}" width="{p99_w:.1}" height="{bar_h}" fill="#ee854a"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}">{}</text>"#,
            x2 + p99_w + 4.0,
            y + 12.0,
            micros(s.lat_ns.p99)
        );
        y += bar_h + gap;
    }
    let _ = writeln!(out, "</svg>");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The comparison as a Markdown table, one row per engine, for BENCHMARKS.md.
pub fn markdown(summaries: &[Summary], repetitions: u32) -> String {
    let mut text = String::new();
    let mut current = String::new();
    for s in summaries {
        if s.job != current {
            current = s.job.clone();
            let _ = writeln!(text, "\n**{}** (median of {repetitions} interleaved repetitions; ratios against the first row)\n", s.job);
            let _ = writeln!(text, "| engine | api | IOPS | MB/s | p50 us | p99 us | p99.9 us | CPU ns/op | allocs/op | IOPS ratio | p50 ratio |");
            let _ = writeln!(
                text,
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            );
        }
        let allocs = s
            .allocs_per_op
            .map_or("-".to_string(), |a| format!("{a:.3}"));
        let _ = writeln!(
            text,
            "| {} | {} | {:.0} | {:.1} | {} | {} | {} | {:.0} | {} | {:.3} | {:.3} |",
            s.engine,
            s.api,
            s.iops,
            s.bw_bytes / 1e6,
            micros(s.lat_ns.p50),
            micros(s.lat_ns.p99),
            micros(s.lat_ns.p999),
            s.cpu_ns_per_op,
            allocs,
            s.iops_ratio,
            s.p50_ratio
        );
    }
    text
}
