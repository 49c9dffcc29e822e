//! The watchdog every test binary runs under (`scripts/test-watchdog`, cargo's target runner
//! in `.cargo/config.toml`): a small libtest binary, compiled here with `rustc --test`, with
//! a test that hangs and one that hangs after starting a process. The watchdog must fail the
//! run with libtest's code, name the hung test, show its threads' kernel stacks (as root),
//! and leave neither it nor its child behind;
//! and a run that does not hang must come through with its output and status unchanged.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use conformance::runner::{self, Outcome, Trial};

/// The tests of the fixture binary. `hangs_with_a_child` writes its child's pid to the file
/// named by `FIXTURE_CHILD_PID`.
const FIXTURE: &str = r#"
#[test]
fn ok_one() {}

#[test]
fn ok_two() {}

#[test]
fn fails() {
    panic!("the fixture's failing test");
}

#[test]
fn hangs() {
    std::thread::sleep(std::time::Duration::from_secs(3600));
}

#[test]
fn hangs_with_a_child() {
    let child = std::process::Command::new("sleep").arg("3600").spawn().expect("sleep");
    std::fs::write(std::env::var("FIXTURE_CHILD_PID").expect("pid file"), child.id().to_string())
        .expect("write pid");
    std::thread::sleep(std::time::Duration::from_secs(3600));
}

#[test]
fn slow_a() {
    std::thread::sleep(std::time::Duration::from_millis(1500));
}

#[test]
fn slow_b() {
    std::thread::sleep(std::time::Duration::from_millis(1500));
}

#[test]
fn quiet_for_a_while() {
    std::thread::sleep(std::time::Duration::from_secs(3));
}
"#;

/// The watchdog's limit in these runs, in seconds.
const LIMIT: &str = "2";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-watchdog")
}

/// The fixture, compiled once per run into a `deps/` directory under cargo's scratch
/// directory for tests (cargo puts test binaries in `deps/`, where the watchdog watches),
/// and a copy outside one; or why it cannot be built here.
fn fixture() -> Result<(&'static Path, &'static Path), String> {
    static BUILT: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("watchdog-fixture");
        let deps = dir.join("deps");
        std::fs::create_dir_all(&deps).map_err(|e| e.to_string())?;
        let source = dir.join("fixture.rs");
        std::fs::write(&source, FIXTURE).map_err(|e| e.to_string())?;
        let watched = deps.join("fixture-0123456789abcdef");
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let out = Command::new(&rustc)
            .args(["--edition", "2021", "--test", "-o"])
            .arg(&watched)
            .arg(&source)
            .output()
            .map_err(|e| format!("cannot run {rustc}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{rustc} --test failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let unwatched = dir.join("fixture");
        std::fs::copy(&watched, &unwatched).map_err(|e| e.to_string())?;
        Ok((watched, unwatched))
    });
    match built {
        Ok((watched, unwatched)) => Ok((watched.as_path(), unwatched.as_path())),
        Err(e) => Err(e.clone()),
    }
}

/// Runs `binary` under the watchdog with `args`; its output, and how long it took.
fn watch(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<(Output, Duration), String> {
    let started = Instant::now();
    let mut command = Command::new(script());
    command
        .arg(binary)
        .args(args)
        .env("TEST_WATCHDOG_SECS", LIMIT)
        .env_remove("RUST_TEST_THREADS");
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command
        .output()
        .map_err(|e| format!("cannot run the watchdog: {e}"))?;
    Ok((out, started.elapsed()))
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether a process `pid` still exists (and is not a zombie left for its parent to reap).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn check(ok: bool, what: &str, out: &Output) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what}\n{}", text(out)))
    }
}

type Body = fn(&Path, &Path) -> Result<(), String>;

/// A hung test among passing ones: the run fails with code 101 within the limit and a
/// little more, and the report names the hung test as the one running.
fn names_the_hung_test(watched: &Path, _: &Path) -> Result<(), String> {
    let (out, took) = watch(watched, &["--exact", "ok_one", "hangs", "ok_two"], &[])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(out.status.code() == Some(101), "not failed with 101", &out)?;
    // The limit, then at most a listing (20 s) and gdb's stacks where it is installed (60 s).
    check(took < Duration::from_secs(90), "not killed in time", &out)?;
    check(
        stdout.contains("test ok_one ... ok") && stdout.contains("test ok_two ... ok"),
        "the tests that passed are not reported",
        &out,
    )?;
    let report = stdout
        .split_once("running now")
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_default();
    let named: Vec<&str> = report
        .lines()
        .filter_map(|l| l.strip_prefix("watchdog:     "))
        .collect();
    check(
        named == ["hangs"],
        "the hung test is not the one named",
        &out,
    )?;
    // Where a kernel stack can be read (as root), the report shows the hung thread's: asleep
    // in nanosleep.
    if std::fs::read_to_string("/proc/thread-self/stack").is_ok() {
        check(
            stdout
                .lines()
                .any(|l| l.starts_with("watchdog:   | ") && l.contains("nanosleep")),
            "the threads' kernel stacks are not shown",
            &out,
        )?;
    } else {
        println!("watchdog: kernel stacks are not readable here (not root): not checked");
    }
    Ok(())
}

/// On one test thread libtest prints the test's name before it runs: the watchdog shows that
/// line and names only the first unfinished test as running.
fn names_it_on_one_thread(watched: &Path, _: &Path) -> Result<(), String> {
    let (out, _) = watch(
        watched,
        &["--exact", "--test-threads", "1", "hangs", "ok_two"],
        &[],
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(out.status.code() == Some(101), "not failed with 101", &out)?;
    check(
        stdout.contains("its last, unfinished line: test hangs ..."),
        "the unfinished line is not shown",
        &out,
    )?;
    let named: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("watchdog:     "))
        .collect();
    check(named == ["hangs"], "not exactly the hung test named", &out)
}

/// The process a hung test started is killed with it.
fn kills_what_the_test_started(watched: &Path, _: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let pid_file = dir.path().join("child");
    let pid_path = pid_file.to_string_lossy().into_owned();
    let (out, _) = watch(
        watched,
        &["--exact", "hangs_with_a_child"],
        &[("FIXTURE_CHILD_PID", &pid_path)],
    )?;
    check(out.status.code() == Some(101), "not failed with 101", &out)?;
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .map_err(|e| format!("the child's pid was not written: {e}\n{}", text(&out)))?
        .trim()
        .parse()
        .map_err(|e| format!("pid: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    check(
        !alive(pid),
        "the test's child process is still running",
        &out,
    )
}

/// Runs that do not hang pass through unchanged: a failing test fails the run with its own
/// message, a passing one passes, a test quiet for longer than the limit outside `deps/`
/// (`cargo run`, examples, benchmarks) is not watched at all.
fn passes_runs_through(watched: &Path, unwatched: &Path) -> Result<(), String> {
    let (out, _) = watch(watched, &["--exact", "fails"], &[])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.code() == Some(101),
        "a failing test did not fail",
        &out,
    )?;
    check(
        stdout.contains("the fixture's failing test") && !stdout.contains("watchdog:"),
        "a failing test's own message is not what the run shows",
        &out,
    )?;
    // Terse output: a dot per test and no newline for longer than the limit is progress.
    let (out, _) = watch(
        watched,
        &["-q", "--test-threads", "1", "--exact", "slow_a", "slow_b"],
        &[],
    )?;
    check(
        out.status.code() == Some(0),
        "a terse run printing a dot per test was taken to hang",
        &out,
    )?;
    let (out, _) = watch(watched, &["ok_"], &[])?;
    check(
        out.status.code() == Some(0),
        "passing tests did not pass",
        &out,
    )?;
    check(
        String::from_utf8_lossy(&out.stdout).contains("2 passed"),
        "the passing run's summary is missing",
        &out,
    )?;
    let (out, _) = watch(unwatched, &["quiet_for_a_while"], &[])?;
    check(
        out.status.code() == Some(0),
        "a binary outside deps/ was watched",
        &out,
    )?;
    let (out, _) = watch(
        watched,
        &["quiet_for_a_while"],
        &[("TEST_WATCHDOG_SECS", "0")],
    )?;
    check(
        out.status.code() == Some(0),
        "TEST_WATCHDOG_SECS=0 did not turn the watchdog off",
        &out,
    )
}

fn main() {
    let trials: [(&str, Body); 4] = [
        ("names_the_hung_test", names_the_hung_test),
        ("names_it_on_one_thread", names_it_on_one_thread),
        ("kills_what_the_test_started", kills_what_the_test_started),
        ("passes_runs_through", passes_runs_through),
    ];
    let all = trials
        .into_iter()
        .map(|(name, body)| {
            Trial::new(
                "watchdog",
                name,
                Duration::from_secs(120),
                move || match fixture() {
                    Err(why) => Outcome::Skipped(format!("no fixture binary: {why}")),
                    Ok((watched, unwatched)) => match body(watched, unwatched) {
                        Ok(()) => Outcome::Passed,
                        Err(e) => Outcome::Failed(e),
                    },
                },
            )
        })
        .collect();
    runner::run_parallel(all);
}
