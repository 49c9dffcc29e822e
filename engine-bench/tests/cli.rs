//! engine-bench's command line, JSON shape and `--verify`, on short runs. No timing is
//! asserted: machines here are shared and noisy.

use clap::Parser;
use engine_bench::args::{parse_size, parse_time, Api, Args, EngineSpec, Rw};
use std::process::Command;
use std::time::Duration;

#[test]
fn engine_entries_name_their_api_and_job_count() {
    let spec = EngineSpec::parse("uring@async").expect("parse");
    assert_eq!(
        (spec.name.as_str(), spec.api, spec.numjobs),
        ("uring", Some(Api::Async), None)
    );
    let spec = EngineSpec::parse("fio:psync#4").expect("parse");
    assert_eq!(
        (spec.name.as_str(), spec.api, spec.numjobs),
        ("fio:psync", None, Some(4))
    );
    let spec = EngineSpec::parse("sync@queue#2").expect("parse");
    assert_eq!(
        (spec.api, spec.numjobs, spec.label.as_str()),
        (Some(Api::Queue), Some(2), "sync@queue#2")
    );
    assert!(EngineSpec::parse("uring@fast")
        .expect_err("bad api")
        .contains("queue or async"));
    assert!(EngineSpec::parse("fio#0")
        .expect_err("bad count")
        .contains("1 to 256"));
    assert!(EngineSpec::parse("@async")
        .expect_err("no name")
        .contains("no engine name"));
}

#[test]
fn sizes_and_times_parse_with_suffixes_and_fail_clearly() {
    assert_eq!(parse_size("4k"), Ok(4096));
    assert_eq!(parse_size("1M"), Ok(1 << 20));
    assert_eq!(parse_size("2g"), Ok(2 << 30));
    assert_eq!(parse_size("512"), Ok(512));
    for bad in ["", "k", "4x", "-1", "0", "1.5m"] {
        let error = parse_size(bad).expect_err(bad);
        assert!(error.contains("k, m or g"), "{bad}: {error}");
    }
    assert_eq!(parse_time("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_time("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_time("3"), Ok(Duration::from_secs(3)));
    for bad in ["", "0s", "fast", "1m"] {
        let error = parse_time(bad).expect_err(bad);
        assert!(error.contains("s or ms"), "{bad}: {error}");
    }
}

#[test]
fn bad_flags_are_one_line_errors_naming_the_flag() {
    let cases: [(&[&str], &str); 5] = [
        (&["--bs", "huge"], "--bs"),
        (&["--rw", "sideways"], "--rw"),
        (&["--iodepth", "0"], "--iodepth"),
        (&["--direct", "2"], "--direct"),
        (&["--runtime", "forever"], "--runtime"),
    ];
    for (flags, name) in cases {
        let mut argv = vec!["engine-bench"];
        argv.extend_from_slice(flags);
        let error = Args::try_parse_from(argv).expect_err(name).to_string();
        assert!(error.contains(name), "{flags:?}: {error}");
        assert!(
            error
                .lines()
                .next()
                .is_some_and(|l| l.starts_with("error:")),
            "{error}"
        );
    }
}

#[test]
fn no_arguments_means_the_standard_set() {
    let args = Args::try_parse_from(["engine-bench"]).expect("defaults");
    assert!(args.is_default_run());
    let jobs = args.jobs().expect("jobs");
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        (jobs[0].rw, jobs[0].bs, jobs[0].iodepth, jobs[0].direct),
        (Rw::Randread, 4096, 32, true)
    );
    assert_eq!(
        (jobs[1].rw, jobs[1].bs, jobs[1].iodepth),
        (Rw::Write, 1 << 20, 8)
    );
    assert!(jobs
        .iter()
        .all(|j| j.size == 1 << 30 && j.runtime == Duration::from_secs(3)));
    let engines = args.engines(true);
    assert_eq!(
        engines,
        ["uring", "aio", "sync", "monoio", "glommio", "fio"]
    );
    assert_eq!(
        args.engines(false),
        ["uring", "aio", "sync", "monoio", "glommio"]
    );
    let custom = Args::try_parse_from([
        "engine-bench",
        "--rw",
        "randrw",
        "--rwmixread",
        "70",
        "--bs",
        "8k",
        "--size",
        "4k",
    ])
    .expect("parse");
    assert!(custom
        .jobs()
        .expect_err("bs above size")
        .contains("larger than --size"));
}

#[test]
fn fio_gets_the_identical_job_and_its_json_is_read() {
    let args = Args::try_parse_from([
        "engine-bench",
        "--rw",
        "randread",
        "--bs",
        "4k",
        "--iodepth",
        "16",
        "--size",
        "1g",
        "--runtime",
        "2s",
        "--direct",
        "1",
    ])
    .expect("parse");
    let job = &args.jobs().expect("job")[0];
    let fio_args = engine_bench::fio::arguments(job, std::path::Path::new("/data/f"), "libaio");
    for expected in [
        "--ioengine=libaio",
        "--rw=randread",
        "--bs=4096",
        "--iodepth=16",
        "--direct=1",
        "--size=1073741824",
        "--runtime=2000ms",
        "--filename=/data/f",
        "--iodepth_batch_submit=1",
    ] {
        assert!(
            fio_args.iter().any(|a| a == expected),
            "{expected} in {fio_args:?}"
        );
    }
    let sample = r#"{"jobs":[{"job_runtime":2000,"read":{"iops":1000.5,"bw_bytes":4098048,"clat_ns":{"percentile":{"50.000000":300000,"99.000000":900000,"99.900000":2000000}}},"write":{"iops":0,"bw_bytes":0}}]}"#;
    let parsed = engine_bench::fio::parse(sample).expect("parse fio json");
    assert_eq!(parsed.iops, 1000.5);
    assert_eq!(parsed.lat_ns, [300000, 900000, 2000000]);
    assert_eq!(parsed.runtime_s, 2.0);
    // Four jobs under group reporting: job_runtime is summed, the direction's runtime is not.
    let grouped = r#"{"jobs":[{"job_runtime":8000,"read":{"iops":4000,"bw_bytes":16384000,"runtime":2001},"write":{"iops":0,"bw_bytes":0,"runtime":0}}]}"#;
    let parsed = engine_bench::fio::parse(grouped).expect("parse grouped fio json");
    assert_eq!(parsed.runtime_s, 2.001);
    assert!(engine_bench::fio::parse("{}").is_err());
}

#[test]
fn json_output_has_the_documented_shape_and_verify_checks_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bench.dat");
    let plot = dir.path().join("plot.svg");
    let output = Command::new(env!("CARGO_BIN_EXE_engine-bench"))
        .args([
            "--engine",
            "sync,uring",
            "--rw",
            "randrw",
            "--bs",
            "4k",
            "--iodepth",
            "4",
            "--size",
            "8m",
            "--runtime",
            "200ms",
            "--verify",
            "--output-format",
            "json",
            "--direct",
            "0",
        ])
        .arg("--filename")
        .arg(&file)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("run engine-bench");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let runs = json.as_array().expect("an array");
    assert_eq!(runs.len(), 2, "one object per engine run");
    for (run, engine) in runs.iter().zip(["sync", "uring"]) {
        assert_eq!(run["engine"], engine);
        assert_eq!(run["api"], "queue");
        assert_eq!(run["rw"], "randrw");
        assert_eq!(run["bs"], 4096);
        assert_eq!(run["iodepth"], 4);
        assert!(run["iops"].as_f64().is_some_and(|v| v > 0.0), "{run}");
        assert!(run["bw_bytes"].as_f64().is_some_and(|v| v > 0.0), "{run}");
        for p in ["p50", "p99", "p999"] {
            assert!(
                run["lat_ns"][p].as_u64().is_some_and(|v| v > 0),
                "{p} in {run}"
            );
        }
        assert!(
            run["cpu_user_s"].is_number() && run["cpu_sys_s"].is_number(),
            "{run}"
        );
        assert!(run["allocs_per_op"].is_number(), "{run}");
        assert_eq!(
            run["verified_bytes"],
            8 << 20,
            "verify wrote and read back the whole file"
        );
    }
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(
        svg.starts_with("<svg") && svg.contains("sync (queue)"),
        "{svg}"
    );
}

#[test]
fn a_missing_fio_or_engine_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_engine-bench"))
        .args([
            "--engine",
            "nonsense",
            "--size",
            "1m",
            "--runtime",
            "100ms",
            "--rw",
            "read",
        ])
        .arg("--filename")
        .arg(dir.path().join("f"))
        .output()
        .expect("run engine-bench");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("engine-bench: nonsense"), "{stderr}");
    assert!(
        stderr.contains("valid backends")
            || stderr.contains("unknown backend")
            || stderr.contains("no plugin"),
        "{stderr}"
    );
}

#[test]
fn durability_flags_reach_fio_and_the_engines() {
    let args = Args::try_parse_from([
        "engine-bench",
        "--rw",
        "write",
        "--iodepth",
        "1",
        "--fdatasync",
        "1",
        "--dsync",
        "1",
        "--atomic",
        "1",
    ])
    .expect("parse");
    let job = &args.jobs().expect("job")[0];
    assert_eq!((job.fdatasync, job.dsync, job.atomic), (1, true, true));
    assert!(
        job.label().contains("fdatasync=1 dsync atomic"),
        "{}",
        job.label()
    );
    let fio_args = engine_bench::fio::arguments(job, std::path::Path::new("/data/f"), "psync");
    for expected in ["--fdatasync=1", "--sync=dsync", "--atomic=1"] {
        assert!(
            fio_args.iter().any(|a| a == expected),
            "{expected} in {fio_args:?}"
        );
    }
    // A log's pattern through both APIs: every write followed by its fdatasync, or durable.
    let dir = tempfile::tempdir().expect("tempdir");
    for durability in ["--fdatasync", "--fsync", "--dsync"] {
        let output = Command::new(env!("CARGO_BIN_EXE_engine-bench"))
            .args([
                "--engine",
                "sync@queue,uring@async",
                "--rw",
                "write",
                "--bs",
                "4k",
            ])
            .args([
                "--iodepth",
                "2",
                "--size",
                "1m",
                "--runtime",
                "100ms",
                "--direct",
                "0",
            ])
            .args([durability, "1", "--output-format", "json"])
            .arg("--filename")
            .arg(dir.path().join("wal"))
            .output()
            .expect("run engine-bench");
        assert!(
            output.status.success(),
            "{durability}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
        for run in json.as_array().expect("an array") {
            assert!(
                run["iops"].as_f64().is_some_and(|v| v > 0.0),
                "{durability}: {run}"
            );
        }
    }
    // Untorn writes where the file has none: a clear error, not a panic or a silent run.
    let output = Command::new(env!("CARGO_BIN_EXE_engine-bench"))
        .args([
            "--engine",
            "sync",
            "--rw",
            "write",
            "--bs",
            "4k",
            "--iodepth",
            "1",
        ])
        .args([
            "--size",
            "1m",
            "--runtime",
            "100ms",
            "--direct",
            "0",
            "--atomic",
            "1",
        ])
        .arg("--filename")
        .arg(dir.path().join("atomic"))
        .output()
        .expect("run engine-bench");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("atomic writes need O_DIRECT"), "{stderr}");
}

#[test]
fn each_workload_runs_the_engine_and_its_baseline() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (workload, size) in [("wal", "1m"), ("blob", "8m"), ("snapshot", "8m")] {
        let output = Command::new(env!("CARGO_BIN_EXE_engine-bench"))
            .args([
                "--workload",
                workload,
                "--engine",
                "baseline,sync",
                "--writers",
                "4",
            ])
            .args(["--size", size, "--bs", "64k", "--runtime", "200ms"])
            .args(["--output-format", "json"])
            .arg("--filename")
            .arg(dir.path().join("f"))
            .output()
            .expect("run engine-bench");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{workload}: {stderr}");
        let runs: Vec<serde_json::Value> =
            serde_json::from_slice(&output.stdout).expect("JSON results");
        let engines: Vec<&str> = runs.iter().filter_map(|r| r["engine"].as_str()).collect();
        assert_eq!(engines, ["baseline", "sync"], "{workload}");
        for run in &runs {
            assert!(
                run["iops"].as_f64().is_some_and(|ops| ops > 0.0),
                "{workload}: nothing done in {run}"
            );
            assert!(
                run["bw_bytes"].as_f64().is_some_and(|b| b > 0.0),
                "{workload}: no bytes in {run}"
            );
        }
    }
}
