//! The test runner every conformance binary uses: libtest's command line and output, so
//! `cargo test -p conformance -- eof` runs only the matching cases and `cargo nextest` can
//! list and run them one at a time, plus what libtest lacks here: a case can decide at run
//! time that it cannot run (reported as `ignored` with its reason, never as `ok`), each case
//! runs on its own thread with a time limit (a hang fails it), and the run ends with one
//! summary line per group (`conformance: backend=<group> passed=<n> skipped=<n> failed=<n>`,
//! or `conformance: runtime=<runtime> backend=<backend> ...` for trials run under a runtime,
//! `conformance: <tier> backend=<backend> ...` for a tier such as the sandbox).
//!
//! A trial still running after a minute gets a line a minute, as libtest prints once
//! (`test <name> has been running for over 60 seconds`), so the watchdog every test binary
//! runs under (`scripts/test-watchdog`, which kills a binary that prints nothing for three
//! minutes) sees the run alive while the trial's own time limit runs. A trial that draws its
//! inputs at random ([`Trial::seeded`]) draws them from the run's [`seed`], which its failure,
//! hang and progress lines print with the way to run it again.
//!
//! (libtest-mimic was the first choice; its 0.8 has no way to ignore a trial at run time.)
//!
//! Understood flags: `[FILTER...]`, `--exact`, `--skip FILTER` (repeatable), `--list`,
//! `--format pretty|terse`, `--ignored`, `--include-ignored`, `--test-threads N`,
//! `--nocapture`, `--show-output`, `-q`/`--quiet`, `--color WHEN`; others are refused.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often a trial still running is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

/// The variable that sets the run's [`seed`].
pub const SEED_VARIABLE: &str = "CONFORMANCE_SEED";

/// The seed of this run, for trials that draw their inputs at random: `CONFORMANCE_SEED`
/// (decimal, or hexadecimal after `0x`) where set, otherwise drawn once per process from
/// the clock and the process id. A value that does not parse panics with the variable's
/// name: a test run with a seed it did not ask for would mislead.
pub fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| match std::env::var(SEED_VARIABLE) {
        Ok(text) => {
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{SEED_VARIABLE}={text:?} is not a u64"))
        }
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            crate::mix(now ^ u64::from(std::process::id()).rotate_left(32))
        }
    })
}

/// How long proptest may shrink a failing case before it reports the smallest one found.
/// Unbounded, a failure in a slow trial (the model's cases each build an engine) could
/// shrink through a thousand reruns past the trial's time limit and read as a hang.
pub const SHRINK_TIME: Duration = Duration::from_secs(60);

/// proptest's configuration for a seeded trial: `cases` cases drawn from the run's [`seed`]
/// (so the failure line's `CONFORMANCE_SEED` reproduces them), shrinking bounded by
/// [`SHRINK_TIME`], and no failure file (a trial that wants one sets it).
pub fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed()),
        max_shrink_time: SHRINK_TIME.as_millis() as u32,
        ..proptest::test_runner::Config::default()
    }
}

/// How one trial ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Passed,
    /// It could not run here; the reason.
    Skipped(String),
    /// It failed; the message.
    Failed(String),
}

type Body = Box<dyn FnOnce() -> Outcome + Send + 'static>;

/// One named test. Its name is `<group>::<case>`; the group names the summary line.
pub struct Trial {
    name: String,
    group: String,
    /// What the summary line says the group is: `backend=<group>` unless
    /// [`Trial::in_runtime`] or [`Trial::in_tier`] said otherwise.
    label: String,
    /// Runs with no other trial beside it (see [`Trial::exclusive`]).
    exclusive: bool,
    /// Draws its inputs from the run's [`seed`] (see [`Trial::seeded`]).
    seeded: bool,
    timeout: Duration,
    body: Body,
}

impl Trial {
    /// A trial `group::case` running `body` within `timeout`.
    pub fn new(
        group: &str,
        case: &str,
        timeout: Duration,
        body: impl FnOnce() -> Outcome + Send + 'static,
    ) -> Trial {
        Trial {
            name: format!("{group}::{case}"),
            group: group.to_string(),
            label: format!("backend={group}"),
            exclusive: false,
            seeded: false,
            timeout,
            body: Box::new(body),
        }
    }

    /// The full name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes the trial run alone, with no other trial running beside it, when trials run on
    /// several threads: for a case that measures something other cases change (the
    /// filesystem's free space).
    pub fn exclusive(mut self) -> Trial {
        self.exclusive = true;
        self
    }

    /// Marks the trial as drawing its inputs from the run's [`seed`]: its failure, hang and
    /// progress lines then name the seed and how to run the trial again with it.
    pub fn seeded(mut self) -> Trial {
        self.seeded = true;
        self
    }

    /// How to run this trial again with the same inputs, where it is seeded.
    fn rerun(&self) -> String {
        if self.seeded {
            let seed = seed();
            format!(
                " (seed {seed:#x}: rerun with {SEED_VARIABLE}={seed:#x} and the filter `{}`)",
                self.name
            )
        } else {
            String::new()
        }
    }

    /// Labels the trial's group `<tier> backend=<backend>` on the summary line (for
    /// example `sandbox backend=uring`).
    pub fn in_tier(mut self, tier: &str, backend: &str) -> Trial {
        self.label = format!("{tier} backend={backend}");
        self
    }

    /// Labels the trial's group `runtime=<runtime> backend=<backend>` on the summary line.
    pub fn in_runtime(mut self, runtime: &str, backend: &str) -> Trial {
        self.label = format!("runtime={runtime} backend={backend}");
        self
    }
}

/// The command line, as libtest takes it.
#[derive(Debug, Default)]
struct Args {
    filters: Vec<String>,
    skips: Vec<String>,
    exact: bool,
    list: bool,
    terse: bool,
    ignored_only: bool,
    quiet: bool,
    threads: usize,
}

fn parse_args(default_threads: usize) -> Result<Args, String> {
    let mut args = Args {
        threads: std::env::var("RUST_TEST_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_threads),
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--exact" => args.exact = true,
            "--list" => args.list = true,
            "--ignored" => args.ignored_only = true,
            "--include-ignored" | "--nocapture" | "--no-capture" | "--show-output" => {}
            "-q" | "--quiet" => args.quiet = true,
            "--skip" => args.skips.push(value("--skip")?),
            "--format" => args.terse = value("--format")? == "terse",
            "--color" | "-Z" | "--logfile" | "--report-time" => {
                let _ = value(&flag);
            }
            "--test-threads" => {
                let v = value("--test-threads")?;
                args.threads = v
                    .parse()
                    .map_err(|_| format!("--test-threads {v:?} is not a number"))?;
            }
            other if other.starts_with('-') => return Err(format!("unknown flag {other}")),
            filter => args.filters.push(filter.to_string()),
        }
    }
    args.threads = args.threads.max(1);
    Ok(args)
}

impl Args {
    fn selects(&self, name: &str) -> bool {
        let matches = |pattern: &String| {
            if self.exact {
                name == pattern
            } else {
                name.contains(pattern.as_str())
            }
        };
        (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skips.iter().any(matches)
    }
}

/// The counts of one group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Trials that passed.
    pub passed: usize,
    /// Trials that could not run here, each reported with its reason.
    pub skipped: usize,
    /// Trials that failed or hung.
    pub failed: usize,
}

/// Runs one trial body on its own thread with a time limit: a body still running after the
/// limit fails as hung (its thread is left behind).
fn run_one(trial: Trial) -> Outcome {
    let rerun = trial.rerun();
    let outcome = run_body(trial);
    match outcome {
        Outcome::Failed(message) if !rerun.is_empty() => Outcome::Failed(message + &rerun),
        other => other,
    }
}

fn run_body(trial: Trial) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let body = trial.body;
    let spawned = std::thread::Builder::new()
        .name(trial.name.chars().take(60).collect())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body))
                .unwrap_or_else(|panic| Outcome::Failed(panic_message(&*panic)));
            let _ = tx.send(outcome);
        });
    if let Err(e) = spawned {
        return Outcome::Failed(format!("cannot spawn the trial's thread: {e}"));
    }
    match rx.recv_timeout(trial.timeout) {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed(format!(
            "hung for more than {:?}; this process's threads then:\n{}",
            trial.timeout,
            threads_report()
        )),
    }
}

/// What every thread of this process is doing, for a trial that hangs: its name and kernel
/// wait channel, the kernel's stack where it can be read (as root), and gdb's backtraces where
/// gdb is installed. A hang that shows once in many runs can then be told apart from the
/// next one.
fn threads_report() -> String {
    let mut out = String::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let path = task.path();
            let read = |f: &str| std::fs::read_to_string(path.join(f)).unwrap_or_default();
            out += &format!(
                "  thread {} ({}): waits in {}\n",
                task.file_name().to_string_lossy(),
                read("comm").trim(),
                read("wchan").trim()
            );
            for line in read("stack").lines().take(12) {
                out += &format!("      {line}\n");
            }
        }
    }
    // Bounded by `timeout`, since gdb itself could wait on a wedged process.
    let gdb = std::process::Command::new("timeout")
        .args(["60", "gdb", "-p", &std::process::id().to_string(), "-batch"])
        .args(["-ex", "thread apply all bt 16"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    if let Ok(gdb) = gdb {
        let text = String::from_utf8_lossy(&gdb.stdout);
        for line in text
            .lines()
            .filter(|l| l.starts_with("Thread") || l.starts_with('#'))
            .take(240)
        {
            out += &format!("  gdb: {line}\n");
        }
    }
    out
}

/// The text of a panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// Runs the trials the command line selects, one at a time unless `--test-threads` or
/// `RUST_TEST_THREADS` says otherwise, prints libtest's output and one summary line per group,
/// and exits: 0 when nothing failed, 101 otherwise (2 for a bad command line).
pub fn run(trials: Vec<Trial>) -> ! {
    run_on(trials, 1)
}

/// As [`run`], on as many threads as the machine has CPUs unless `--test-threads` or
/// `RUST_TEST_THREADS` says otherwise, for trials that may run side by side (each on its own
/// files; those that may not are [`Trial::exclusive`]).
pub fn run_parallel(trials: Vec<Trial>) -> ! {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    run_on(trials, cpus)
}

fn run_on(trials: Vec<Trial>, default_threads: usize) -> ! {
    let args = match parse_args(default_threads) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let total = trials.len();
    // No trial is ignored before it runs: a skip is decided by the case itself.
    let selected: Vec<Trial> = if args.ignored_only {
        Vec::new()
    } else {
        trials
            .into_iter()
            .filter(|t| args.selects(&t.name))
            .collect()
    };
    if args.list {
        for trial in &selected {
            println!("{}: test", trial.name);
        }
        if !args.terse {
            println!("\n{} tests, 0 benchmarks", selected.len());
        }
        std::process::exit(0);
    }
    let filtered_out = total - selected.len();
    println!("\nrunning {} tests", selected.len());
    let started = Instant::now();
    let outcomes = crate::quietly(|| run_all(selected, args.threads, args.quiet));
    let mut groups: BTreeMap<String, Summary> = BTreeMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    let mut failures = Vec::new();
    for (name, (group, label), outcome) in outcomes {
        if !groups.contains_key(&group) {
            order.push((group.clone(), label));
        }
        let summary = groups.entry(group).or_default();
        match outcome {
            Outcome::Passed => summary.passed += 1,
            Outcome::Skipped(_) => summary.skipped += 1,
            Outcome::Failed(message) => {
                summary.failed += 1;
                failures.push((name, message));
            }
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:\n");
        for (name, message) in &failures {
            println!("---- {name} ----\n{message}\n");
        }
        println!("failures:");
        for (name, _) in &failures {
            println!("    {name}");
        }
    }
    println!();
    for (group, label) in &order {
        println!("{}", groups[group].line(label));
    }
    let sum = |f: fn(&Summary) -> usize| groups.values().map(f).sum::<usize>();
    let (passed, skipped, failed) = (sum(|s| s.passed), sum(|s| s.skipped), sum(|s| s.failed));
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; {skipped} ignored; 0 measured; \
         {filtered_out} filtered out; finished in {:.2}s\n",
        if failed == 0 { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stdout().flush();
    std::process::exit(if failed == 0 { 0 } else { 101 });
}

/// Runs the trials on `threads` threads, printing one line each as it ends; returns
/// (name, (group, label), outcome) in the order given.
fn run_all(
    trials: Vec<Trial>,
    threads: usize,
    quiet: bool,
) -> Vec<(String, (String, String), Outcome)> {
    let report = |name: &str, outcome: &Outcome| {
        let mut out = std::io::stdout().lock();
        let _ = match (outcome, quiet) {
            (Outcome::Passed, true) => write!(out, "."),
            (Outcome::Skipped(_), true) => write!(out, "i"),
            (Outcome::Failed(_), true) => write!(out, "F"),
            (Outcome::Passed, false) => writeln!(out, "test {name} ... ok"),
            (Outcome::Skipped(why), false) => writeln!(out, "test {name} ... ignored, {why}"),
            (Outcome::Failed(_), false) => writeln!(out, "test {name} ... FAILED"),
        };
        let _ = out.flush();
    };
    let meta: Vec<(String, (String, String))> = trials
        .iter()
        .map(|t| (t.name.clone(), (t.group.clone(), t.label.clone())))
        .collect();
    let reruns: Vec<String> = trials.iter().map(Trial::rerun).collect();
    // The trials running, by index, and when each started.
    let running: Mutex<BTreeMap<usize, Instant>> = Mutex::new(BTreeMap::new());
    let mut outcomes: Vec<Option<Outcome>> = meta.iter().map(|_| None).collect();
    let jobs = std::sync::Mutex::new(trials.into_iter().enumerate());
    // Trials share it; an exclusive trial holds it alone.
    let alone = std::sync::RwLock::new(());
    let (tx, rx) = mpsc::channel::<(usize, Outcome)>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (jobs, alone, running) = (&jobs, &alone, &running);
            let started = |index| {
                let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
                running.insert(index, Instant::now());
            };
            scope.spawn(move || loop {
                let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some((index, trial)) = job else { break };
                let outcome = if trial.exclusive {
                    let _alone = alone.write().unwrap_or_else(|p| p.into_inner());
                    started(index);
                    run_one(trial)
                } else {
                    let _shared = alone.read().unwrap_or_else(|p| p.into_inner());
                    started(index);
                    run_one(trial)
                };
                if tx.send((index, outcome)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut next_note = Instant::now() + PROGRESS_EVERY;
        loop {
            match rx.recv_timeout(next_note.saturating_duration_since(Instant::now())) {
                Ok((index, outcome)) => {
                    running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&index);
                    report(&meta[index].0, &outcome);
                    outcomes[index] = Some(outcome);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let running = running.lock().unwrap_or_else(|p| p.into_inner());
                    for (&index, since) in running.iter() {
                        let secs = since.elapsed().as_secs();
                        if secs >= PROGRESS_EVERY.as_secs() {
                            println!(
                                "test {} has been running for over {secs} seconds{}",
                                meta[index].0, reruns[index]
                            );
                        }
                    }
                    let _ = std::io::stdout().flush();
                    next_note += PROGRESS_EVERY;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    });
    meta.into_iter()
        .zip(outcomes)
        .map(|((name, group), outcome)| {
            let outcome = outcome.unwrap_or(Outcome::Failed("never ran".into()));
            (name, group, outcome)
        })
        .collect()
}

impl Summary {
    /// The summary line: `conformance: <label> passed=<n> skipped=<n> failed=<n>`, where the
    /// label is `backend=<name>`, `runtime=<runtime> backend=<name>` or
    /// `<tier> backend=<name>`.
    pub fn line(&self, label: &str) -> String {
        format!(
            "conformance: {label} passed={} skipped={} failed={}",
            self.passed, self.skipped, self.failed
        )
    }
}
