//! The sandbox tier: each backend runs a list of cases in a child process under the seccomp
//! filter `engine::sandbox::Sandbox` builds for it (its steady-state calls, pinned to its
//! files and its own rings, contexts and eventfds; the process's allocator and exit; writes
//! to stdout and stderr for the report), with a trap on any other call. The child opens its
//! files, makes its queue and runs every case once before the filter (the warm-up the
//! steady state assumes), then runs them again inside it. A call missing from the list
//! kills the child, and every case it had not finished fails naming the call.
//!
//! io_uring runs as its hardened (restricted) ring. Each backend also has a negative
//! control: the same child with one listed call taken out of the filter must be killed,
//! and the report must name that call.
//!
//! Prints `conformance: sandbox backend=<b> passed=<n> skipped=<n> failed=<n>`.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use conformance::runner::{self, Outcome, Trial};
use engine::sandbox::{syscall_name, Sandbox, Violation};
use engine::{
    block_on, join_all, AlignedBuf, AllocateMode, Engine, EngineConfig, ErrorKind, File,
    OpenOptions, Queue, Request, WriteFlags,
};

/// The variable that makes the test binary a sandboxed child: `<backend>` or
/// `<backend>:<call to leave out>`.
const CHILD: &str = "CONFORMANCE_SANDBOX_CHILD";

/// The variable that gives the child its scratch directory.
const SCRATCH: &str = "CONFORMANCE_SANDBOX_SCRATCH";

/// The exit code of a child the filter stopped.
const TRAPPED: i32 = 97;

/// The backends of the tier, and the call each negative control leaves out (the one every
/// request of that backend makes).
const BACKENDS: [(&str, &str); 3] = [
    ("uring", "io_uring_enter"),
    ("aio", "io_submit"),
    ("sync", "pread64"),
];

/// What a case runs on: the engine, its queue and files opened before the sandbox.
struct Ctx {
    engine: Engine,
    queue: Mutex<engine::EngineQueue>,
    buffered: File,
    direct: Option<File>,
    /// For allocate and set_len.
    scratch: File,
    /// Alignment for the direct file.
    align: usize,
}

type CaseFn = fn(&Ctx) -> Result<(), String>;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn buf(bytes: &[u8], align: usize) -> Result<AlignedBuf, String> {
    AlignedBuf::from_slice(bytes, align).map_err(|e| e.to_string())
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

fn round_trip(
    ctx: &Ctx,
    file: &File,
    offset: u64,
    len: usize,
    align: usize,
    seed: u8,
) -> Result<(), String> {
    let data = pattern(len, seed);
    let (written, _) = block_on(ctx.engine.write_all_at(file, offset, buf(&data, align)?));
    written.map_err(|e| format!("write: {e}"))?;
    let into = AlignedBuf::zeroed(len, align).map_err(|e| e.to_string())?;
    let (read, back) = block_on(ctx.engine.read_exact_at(file, offset, into));
    read.map_err(|e| format!("read: {e}"))?;
    check(back.as_slice() == data.as_slice(), "read back other bytes")
}

fn buffered_round_trip(ctx: &Ctx) -> Result<(), String> {
    round_trip(ctx, &ctx.buffered, 4096, 8192, 8, 1)
}

fn direct_round_trip(ctx: &Ctx) -> Result<(), String> {
    let Some(direct) = &ctx.direct else {
        return Err("skip: the scratch filesystem takes no O_DIRECT".into());
    };
    round_trip(ctx, direct, ctx.align as u64, 4 * ctx.align, ctx.align, 2)
}

fn vectored_round_trip(ctx: &Ctx) -> Result<(), String> {
    let parts = [pattern(4096, 3), pattern(4096, 4)];
    let bufs = parts
        .iter()
        .map(|p| buf(p, 8))
        .collect::<Result<Vec<_>, _>>()?;
    let (written, _) = block_on(ctx.engine.write_vectored_at(&ctx.buffered, 65536, bufs));
    written.map_err(|e| format!("write: {e}"))?;
    let into = vec![
        AlignedBuf::zeroed(4096, 8).map_err(|e| e.to_string())?,
        AlignedBuf::zeroed(4096, 8).map_err(|e| e.to_string())?,
    ];
    let (read, back) = block_on(ctx.engine.read_vectored_at(&ctx.buffered, 65536, into));
    read.map_err(|e| format!("read: {e}"))?;
    check(
        back[0].as_slice() == parts[0].as_slice() && back[1].as_slice() == parts[1].as_slice(),
        "read back other bytes",
    )
}

fn syncs(ctx: &Ctx) -> Result<(), String> {
    block_on(ctx.engine.sync_data(&ctx.buffered)).map_err(|e| format!("sync_data: {e}"))?;
    block_on(ctx.engine.sync_all(&ctx.buffered)).map_err(|e| format!("sync_all: {e}"))
}

fn durable_writes(ctx: &Ctx) -> Result<(), String> {
    for (flags, at) in [
        (WriteFlags::DSYNC, 131072),
        (WriteFlags::SYNC_DATA_AFTER, 135168),
    ] {
        let data = pattern(4096, 5);
        let (written, _) =
            block_on(
                ctx.engine
                    .write_all_at_with(&ctx.buffered, at, buf(&data, 8)?, flags),
            );
        written.map_err(|e| format!("{flags:?} write: {e}"))?;
    }
    Ok(())
}

fn file_management(ctx: &Ctx) -> Result<(), String> {
    let file = &ctx.scratch;
    block_on(ctx.engine.set_len(file, 0)).map_err(|e| format!("set_len 0: {e}"))?;
    block_on(
        ctx.engine
            .allocate(file, 0, 1 << 20, AllocateMode::Allocate),
    )
    .map_err(|e| format!("allocate: {e}"))?;
    let allocated = block_on(ctx.engine.metadata(file)).map_err(|e| format!("metadata: {e}"))?;
    check(
        allocated.len() == 1 << 20,
        "allocate did not extend the file",
    )?;
    block_on(ctx.engine.allocate(file, 0, 65536, AllocateMode::PunchHole))
        .map_err(|e| format!("punch: {e}"))?;
    block_on(ctx.engine.set_len(file, 4096)).map_err(|e| format!("set_len: {e}"))?;
    let cut = block_on(ctx.engine.metadata(file)).map_err(|e| format!("metadata: {e}"))?;
    check(cut.len() == 4096, "set_len did not cut the file")
}

/// Pushes `requests` through `queue` and waits for every one; their completions.
fn through_queue(
    queue: &mut engine::EngineQueue,
    requests: Vec<Request>,
) -> Result<Vec<engine::Completion>, String> {
    let mut out = Vec::new();
    for request in requests {
        queue
            .push_or_wait(request, &mut out)
            .map_err(|e| format!("push: {e}"))?;
    }
    while queue.in_flight() > 0 {
        let want = queue.in_flight();
        queue
            .wait(want, &mut out)
            .map_err(|e| format!("wait: {e}"))?;
    }
    Ok(out)
}

fn queue_round_trip(ctx: &Ctx) -> Result<(), String> {
    let mut queue = ctx.queue.lock().map_err(|_| "queue lock poisoned")?;
    let at = |i: u64| 262144 + i * 4096;
    let mut writes = Vec::new();
    for i in 0..16u64 {
        let data = buf(&pattern(4096, i as u8), 8)?;
        writes.push(Request::write(&ctx.buffered, at(i), data, i));
    }
    let written = through_queue(&mut queue, writes)?;
    check(
        written.len() == 16 && written.iter().all(|c| matches!(c.result, Ok(4096))),
        "not every queued write completed whole",
    )?;
    let mut reads = Vec::new();
    for i in 0..16u64 {
        let into = AlignedBuf::zeroed(4096, 8).map_err(|e| e.to_string())?;
        reads.push(Request::read(&ctx.buffered, at(i), into, i));
    }
    let read = through_queue(&mut queue, reads)?;
    for completion in &read {
        let expected = pattern(4096, completion.user_data as u8);
        let got: Vec<u8> = completion.buffers().flat_map(|b| b.to_vec()).collect();
        check(got == expected, "a queued read returned other bytes")?;
    }
    check(read.len() == 16, "not every queued read completed")
}

fn many_in_flight(ctx: &Ctx) -> Result<(), String> {
    let mut reads = Vec::new();
    for i in 0..64u64 {
        let into = AlignedBuf::zeroed(4096, 8).map_err(|e| e.to_string())?;
        reads.push(ctx.engine.read_at(&ctx.buffered, (i % 16) * 4096, into));
    }
    let results = block_on(join_all(reads));
    check(
        results.iter().all(|(r, _)| r.is_ok()),
        "a read of 64 in flight failed",
    )
}

fn refusals_are_typed(ctx: &Ctx) -> Result<(), String> {
    if let Some(direct) = &ctx.direct {
        let misaligned = AlignedBuf::zeroed(ctx.align, ctx.align).map_err(|e| e.to_string())?;
        let (result, _) = block_on(ctx.engine.read_at(direct, 1, misaligned));
        check(
            result.err().map(|e| e.kind()) == Some(ErrorKind::Misaligned),
            "a misaligned direct read was not refused as Misaligned",
        )?;
    }
    let into = AlignedBuf::zeroed(4096, 8).map_err(|e| e.to_string())?;
    let (result, _) = block_on(ctx.engine.read_at(&ctx.buffered, 1 << 40, into));
    check(
        matches!(result, Ok(0)),
        "a read past the end did not return 0",
    )
}

const CASES: [(&str, CaseFn); 9] = [
    ("buffered_round_trip", buffered_round_trip),
    ("direct_round_trip", direct_round_trip),
    ("vectored_round_trip", vectored_round_trip),
    ("syncs", syncs),
    ("durable_writes", durable_writes),
    ("file_management", file_management),
    ("queue_round_trip", queue_round_trip),
    ("many_in_flight", many_in_flight),
    ("refusals_are_typed", refusals_are_typed),
];

/// The SIGSYS handler of the child: writes the trapped call's number to stderr and exits
/// with [`TRAPPED`]. Only async-signal-safe calls (write, _exit).
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS raised by seccomp; its `_sigsys`
    // member (`_call_addr`, then the int `_syscall`) starts 16 bytes in on 64-bit Linux, so
    // the call's number is the int 24 bytes in.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<i32>().read_unaligned() };
    let mut text = *b"sandbox: trapped system call           \n";
    let mut at = text.len() - 2;
    let mut n = nr.unsigned_abs();
    loop {
        text[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || at == 30 {
            break;
        }
        at -= 1;
    }
    // SAFETY: write and _exit are async-signal-safe; `text` lives on this stack frame.
    unsafe {
        libc::write(2, text.as_ptr().cast(), text.len());
        libc::_exit(TRAPPED);
    }
}

/// The sandboxed child: sets up, warms up, enters the filter, runs the cases, and exits
/// without dropping the engine (teardown is not steady state).
fn child(spec: &str) -> ! {
    let (backend, omit) = match spec.split_once(':') {
        Some((backend, omit)) => (backend, Some(omit)),
        None => (spec, None),
    };
    let report = |line: String| println!("{line}");
    let config = EngineConfig {
        queue_depth: 32,
        threads: 2,
        restricted: backend == "uring",
        ..EngineConfig::default()
    };
    let engine = match Engine::with_backend(backend, config) {
        Ok(engine) => engine,
        Err(e) => {
            report(format!("unavailable {e}"));
            std::process::exit(0);
        }
    };
    let dir = std::path::PathBuf::from(std::env::var_os(SCRATCH).expect("the scratch directory"));
    let rw = OpenOptions::new().read(true).write(true).create(true);
    let buffered = engine
        .open(&dir.join("buffered"), &rw)
        .expect("open the buffered file");
    let scratch = engine
        .open(&dir.join("scratch"), &rw)
        .expect("open the scratch file");
    let direct = engine
        .open(&dir.join("direct"), &rw.clone().direct(true))
        .ok();
    let align = direct.as_ref().map_or(4096, |f| {
        let g = f.geometry();
        g.offset_align.max(g.mem_align) as usize
    });
    let queue = engine.queue().expect("a queue");
    let ctx = Ctx {
        engine,
        queue: Mutex::new(queue),
        buffered,
        direct,
        scratch,
        align,
    };
    // The warm-up: every case once, outside the sandbox.
    for (name, case) in CASES {
        if let Err(e) = case(&ctx) {
            if !e.starts_with("skip:") {
                report(format!("warmup {name} {e}"));
            }
        }
    }
    let mut state = ctx
        .engine
        .steady_state_syscalls()
        .expect("a steady-state list");
    if let Some(omit) = omit {
        assert!(state.get(omit).is_some(), "{omit} is not in the list");
        state = state.without(omit);
    }
    let queue = ctx.queue.lock().expect("queue");
    let mut sandbox = Sandbox::from_state(state)
        .queue(&*queue)
        .file(&ctx.buffered)
        .file(&ctx.scratch)
        .allow_process_basics()
        .allow_on(libc::SYS_write, std::io::stdout())
        .allow_on(libc::SYS_write, std::io::stderr())
        .on_violation(Violation::Trap);
    drop(queue);
    if let Some(direct) = &ctx.direct {
        sandbox = sandbox.file(direct);
    }
    let filter = sandbox.build().expect("the filter compiles");
    // SAFETY: `on_sigsys` only makes async-signal-safe calls; the sigaction struct is
    // zeroed (an empty mask) and lives for the call.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut());
    }
    filter.apply().expect("the filter installs");
    report("sandboxed".into());
    for (name, case) in CASES {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&ctx)));
        let line = match outcome {
            Ok(Ok(())) => format!("case {name} ok"),
            Ok(Err(e)) => match e.strip_prefix("skip: ") {
                Some(why) => format!("case {name} skipped {why}"),
                None => format!("case {name} failed {e}"),
            },
            Err(panic) => format!(
                "case {name} failed panicked: {}",
                runner::panic_message(&*panic)
            ),
        };
        report(line);
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: _exit ends the process without running destructors, which is the point:
    // dropping the engine closes and unmaps, which the sandbox does not allow.
    unsafe { libc::_exit(0) }
}

/// What one child reported.
#[derive(Clone, Debug, Default)]
struct Report {
    /// The backend cannot run here; why.
    unavailable: Option<String>,
    /// Each case's line after its name: `ok`, `skipped <why>` or `failed <why>`.
    cases: BTreeMap<String, String>,
    /// The call the filter trapped, by name (or number), if it stopped the child.
    trapped: Option<String>,
    /// Whatever else went wrong with the child (its exit status, the warm-up's failures).
    trouble: Vec<String>,
}

fn run_child(spec: &str) -> Report {
    let mut report = Report::default();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            report.trouble.push(format!("current_exe: {e}"));
            return report;
        }
    };
    // The child's scratch files live here, made and removed by the parent: the child ends
    // with `_exit`, inside its sandbox, where it could remove nothing.
    let scratch = match std::env::var_os("CONFORMANCE_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    };
    let scratch = match scratch {
        Ok(dir) => dir,
        Err(e) => {
            report.trouble.push(format!("scratch directory: {e}"));
            return report;
        }
    };
    let spawned = Command::new(exe)
        .env(CHILD, spec)
        .env(SCRATCH, scratch.path())
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            report.trouble.push(format!("spawning the child: {e}"));
            return report;
        }
    };
    // Both pipes are drained while the child runs, so it never blocks on a full one.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let out_reader = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err_reader = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    for line in stdout.lines() {
        if let Some(why) = line.strip_prefix("unavailable ") {
            report.unavailable = Some(why.to_string());
        } else if let Some(rest) = line.strip_prefix("case ") {
            if let Some((name, result)) = rest.split_once(' ') {
                report.cases.insert(name.to_string(), result.to_string());
            }
        } else if line.starts_with("warmup ") {
            report.trouble.push(line.to_string());
        }
    }
    for line in stderr.lines() {
        if let Some(nr) = line.strip_prefix("sandbox: trapped system call ") {
            let nr: i64 = nr.trim().parse().unwrap_or(-1);
            report.trapped = Some(match syscall_name(nr) {
                Some(name) => name.to_string(),
                None => format!("system call {nr}"),
            });
        }
    }
    match status {
        None => report
            .trouble
            .push("the child hung for 60 s and was killed".into()),
        Some(status) if status.code() == Some(TRAPPED) => {}
        Some(status) if !status.success() => report.trouble.push(format!(
            "the child exited with {status}; its stderr:\n{stderr}"
        )),
        Some(_) => {}
    }
    report
}

/// The report of the sandboxed run of `backend`, made once.
fn sandboxed(backend: &'static str) -> Report {
    static RUNS: OnceLock<Mutex<BTreeMap<&'static str, Report>>> = OnceLock::new();
    let runs = RUNS.get_or_init(|| Mutex::new(BTreeMap::new()));
    let mut runs = runs.lock().unwrap_or_else(|p| p.into_inner());
    runs.entry(backend)
        .or_insert_with(|| run_child(backend))
        .clone()
}

fn case_outcome(backend: &'static str, name: &str) -> Outcome {
    let report = sandboxed(backend);
    if let Some(why) = report.unavailable {
        return Outcome::Skipped(format!("{backend} cannot run here: {why}"));
    }
    match report.cases.get(name) {
        // A call trapped after the last case (the child's own end) fails every case too:
        // the process did not get through under the filter.
        Some(result) if result == "ok" => match (&report.trapped, report.trouble.is_empty()) {
            (Some(call), _) => Outcome::Failed(format!(
                "the sandbox stopped the child at {call} after the cases, which {backend}'s \
                 steady-state list does not allow"
            )),
            (None, true) => Outcome::Passed,
            (None, false) => Outcome::Failed(report.trouble.join("\n")),
        },
        Some(result) => match result.strip_prefix("skipped ") {
            Some(why) => Outcome::Skipped(why.to_string()),
            None => Outcome::Failed(result.trim_start_matches("failed ").to_string()),
        },
        None => Outcome::Failed(match &report.trapped {
            Some(call) => format!(
                "the sandbox stopped the child at {call}, which {backend}'s steady-state list \
                 does not allow, before this case finished"
            ),
            None => format!("no report for this case: {}", report.trouble.join("\n")),
        }),
    }
}

/// A filter without `omit` must stop the child, naming `omit`.
fn negative_control(backend: &'static str, omit: &'static str) -> Outcome {
    let report = run_child(&format!("{backend}:{omit}"));
    if let Some(why) = report.unavailable {
        return Outcome::Skipped(format!("{backend} cannot run here: {why}"));
    }
    match report.trapped {
        Some(call) if call == omit => Outcome::Passed,
        Some(call) => Outcome::Failed(format!(
            "the filter without {omit} stopped the child at {call} instead"
        )),
        None => Outcome::Failed(format!(
            "the filter without {omit} did not stop the child; it reported {:?} {:?}",
            report.cases, report.trouble
        )),
    }
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        child(&spec);
    }
    let mut all = Vec::new();
    for (backend, omit) in BACKENDS {
        let group = format!("sandbox:{backend}");
        for (name, _) in CASES {
            all.push(
                Trial::new(&group, name, Duration::from_secs(90), move || {
                    case_outcome(backend, name)
                })
                .in_tier("sandbox", backend),
            );
        }
        all.push(
            Trial::new(
                &group,
                &format!("a_filter_without_{omit}_stops_it_naming_the_call"),
                Duration::from_secs(90),
                move || negative_control(backend, omit),
            )
            .in_tier("sandbox", backend),
        );
    }
    runner::run(all);
}
