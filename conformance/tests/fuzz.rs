//! No panic from any argument: proptest drives the public API of every backend compiled into
//! the facade with arbitrary sequences of calls and argument values (offsets up to `u64::MAX`,
//! lengths, buffer alignments, write flags, allocate modes, lengths to truncate to, open
//! options, a closed handle, an adopted pipe) and the environment parser with arbitrary
//! values. Every call must return `Ok` or a typed error, hand its buffers back, and a closed
//! handle must answer `BadFile`; a panic fails the case with its inputs, and the runner's time
//! limit fails a hang by the trial's name.
//!
//! The bodies of the `cargo fuzz` targets (`fuzz/src/lib.rs`: request validation and the
//! environment parser) are replayed here too, on the stable toolchain, over their seed
//! corpus and random bytes, so that they cannot rot between fuzzing runs.
//!
//! `CONFORMANCE_FUZZ_CASES` sets the proptest cases per backend (default 64); the inputs
//! come from the run's seed (`CONFORMANCE_SEED`, printed with any failure or hang).

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use conformance::runner::{self, Outcome, Trial};
use engine::{Engine, EngineConfig, ErrorKind, Settings, BUILTIN_BACKENDS, VARIABLES};
use engine_core::{block_on, AlignedBuf, AllocateMode, File, OpenOptions, WriteFlags};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

/// One call of the public API on the case's file.
#[derive(Clone, Debug)]
enum Call {
    Read {
        offset: u64,
        len: usize,
        align: usize,
    },
    Write {
        offset: u64,
        len: usize,
        align: usize,
        flags: u8,
    },
    WriteAtomic {
        offset: u64,
        len: usize,
        align: usize,
    },
    ReadVectored {
        offset: u64,
        lens: Vec<usize>,
        align: usize,
    },
    SyncData,
    SyncAll,
    Allocate {
        offset: u64,
        len: u64,
        mode: u8,
    },
    SetLen {
        len: u64,
    },
    Metadata,
    /// Closes the handle: every later call on it must be `BadFile`.
    Close,
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..1u64 << 20,
        0..4096u64,
        Just(i64::MAX as u64),
        Just(u64::MAX),
        (1u64 << 62)..u64::MAX,
    ]
}

fn len() -> impl Strategy<Value = usize> {
    prop_oneof![0..=9000usize, Just(4096), Just(1 << 20)]
}

fn align() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![1usize, 2, 8, 512, 4096, 65536])
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        (offset(), len(), align()).prop_map(|(offset, len, align)| Call::Read {
            offset,
            len,
            align
        }),
        (offset(), len(), align(), 0u8..8).prop_map(|(offset, len, align, flags)| {
            Call::Write {
                offset,
                len,
                align,
                flags,
            }
        }),
        (offset(), len(), align()).prop_map(|(offset, len, align)| Call::WriteAtomic {
            offset,
            len,
            align
        }),
        (
            offset(),
            prop::collection::vec(0..=8192usize, 0..4),
            align()
        )
            .prop_map(|(offset, lens, align)| Call::ReadVectored {
                offset,
                lens,
                align
            }),
        Just(Call::SyncData),
        Just(Call::SyncAll),
        (offset(), offset(), 0u8..4).prop_map(|(offset, len, mode)| Call::Allocate {
            offset,
            len,
            mode
        }),
        prop_oneof![0..1u64 << 22, Just(u64::MAX), Just(i64::MAX as u64)]
            .prop_map(|len| Call::SetLen { len }),
        Just(Call::Metadata),
        Just(Call::Close),
    ]
}

/// How the case's file is opened: access, O_DIRECT, O_DSYNC.
#[derive(Clone, Debug)]
struct Opening {
    read: bool,
    write: bool,
    direct: bool,
    dsync: bool,
}

fn opening() -> impl Strategy<Value = Opening> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(read, write, direct, dsync)| Opening {
            read: read || !write,
            write,
            direct,
            dsync,
        },
    )
}

fn buffer(len: usize, align: usize) -> Result<AlignedBuf, TestCaseError> {
    AlignedBuf::zeroed(len, align).map_err(|e| TestCaseError::fail(format!("buffer: {e}")))
}

/// Checks a result: any typed error is fine, except that a closed handle must say BadFile.
fn check<T>(what: &str, result: &engine::Result<T>, closed: bool) -> Result<(), TestCaseError> {
    match result {
        Err(e) if closed && e.kind() != ErrorKind::BadFile => Err(TestCaseError::fail(format!(
            "{what} on a closed handle: expected BadFile, got {e}"
        ))),
        Ok(_) if closed => Err(TestCaseError::fail(format!(
            "{what} on a closed handle succeeded"
        ))),
        _ => Ok(()),
    }
}

/// Runs `calls` on a fresh file opened as `opening` says.
fn case(
    engine: &Engine,
    dir: &std::path::Path,
    opening: &Opening,
    calls: &[Call],
) -> Result<(), TestCaseError> {
    let path = dir.join("fuzz");
    std::fs::write(&path, vec![7u8; 8192]).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let options = OpenOptions::new()
        .read(opening.read)
        .write(opening.write)
        .direct(opening.direct)
        .dsync(opening.dsync);
    let file: File = match engine.open(&path, &options) {
        Ok(file) => file,
        // A typed refusal (O_DIRECT where the filesystem has none, say) is an answer.
        Err(_) => return Ok(()),
    };
    let mut closed = false;
    for call in calls {
        match call {
            Call::Read { offset, len, align } => {
                let (result, back) =
                    block_on(engine.read_at(&file, *offset, buffer(*len, *align)?));
                check("read", &result, closed)?;
                prop_assert!(back.capacity() >= *len, "read handed back a smaller buffer");
            }
            Call::Write {
                offset,
                len,
                align,
                flags,
            } => {
                let mut with = WriteFlags::NONE;
                for (bit, flag) in [
                    (1, WriteFlags::DSYNC),
                    (2, WriteFlags::ATOMIC),
                    (4, WriteFlags::SYNC_DATA_AFTER),
                ] {
                    if flags & bit != 0 {
                        with = with | flag;
                    }
                }
                let (result, back) =
                    block_on(engine.write_all_at_with(&file, *offset, buffer(*len, *align)?, with));
                check("write", &result, closed)?;
                prop_assert_eq!(back.len(), *len, "write handed back another buffer");
            }
            Call::WriteAtomic { offset, len, align } => {
                let (result, back) =
                    block_on(engine.write_atomic_at(&file, *offset, buffer(*len, *align)?));
                check("atomic write", &result, closed)?;
                prop_assert_eq!(back.len(), *len, "atomic write handed back another buffer");
            }
            Call::ReadVectored {
                offset,
                lens,
                align,
            } => {
                let bufs = lens
                    .iter()
                    .map(|&len| buffer(len, *align))
                    .collect::<Result<Vec<_>, _>>()?;
                let (result, back) = block_on(engine.read_vectored_at(&file, *offset, bufs));
                check("vectored read", &result, closed)?;
                prop_assert_eq!(back.len(), lens.len(), "vectored read lost a buffer");
            }
            Call::SyncData => check("sync_data", &block_on(engine.sync_data(&file)), closed)?,
            Call::SyncAll => check("sync_all", &block_on(engine.sync_all(&file)), closed)?,
            Call::Allocate { offset, len, mode } => {
                let mode = [
                    AllocateMode::Allocate,
                    AllocateMode::KeepSize,
                    AllocateMode::PunchHole,
                    AllocateMode::ZeroRange,
                ][usize::from(*mode) % 4];
                // Huge ranges are refused before the kernel; a real one is kept small.
                let len = if *len < 1 << 40 {
                    len % (1 << 20)
                } else {
                    *len
                };
                check(
                    "allocate",
                    &block_on(engine.allocate(&file, *offset, len, mode)),
                    closed,
                )?;
            }
            Call::SetLen { len } => {
                check("set_len", &block_on(engine.set_len(&file, *len)), closed)?
            }
            Call::Metadata => check("metadata", &block_on(engine.metadata(&file)), closed)?,
            Call::Close => {
                let result = engine.close(&file);
                if closed {
                    check("close", &result, true)?;
                }
                closed = true;
            }
        }
    }
    Ok(())
}

/// A pipe is not seekable: adopting it is a typed error, or a file whose calls are.
fn adopt_pipe(engine: &Engine) -> Result<(), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just made and nothing else owns them.
    let (read_end, write_end) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    drop(write_end);
    if let Ok(file) = engine.adopt(read_end, &OpenOptions::new().read(true)) {
        let buf = AlignedBuf::zeroed(16, 1).map_err(|e| e.to_string())?;
        let (result, _) = block_on(engine.read_at(&file, 0, buf));
        let _ = result;
    }
    Ok(())
}

fn fuzz_backend(backend: &'static str, cases: u32) -> Outcome {
    let config = EngineConfig {
        queue_depth: 16,
        threads: 2,
        ..EngineConfig::default()
    };
    let engine = match Engine::with_backend(backend, config) {
        Ok(engine) => engine,
        Err(e) => return Outcome::Skipped(format!("{backend} cannot run here: {e}")),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    if let Err(e) = std::panic::catch_unwind(AssertUnwindSafe(|| adopt_pipe(&engine))) {
        return Outcome::Failed(format!(
            "adopting a pipe panicked: {}",
            runner::panic_message(&*e)
        ));
    }
    let mut runner = TestRunner::new(runner::proptest_config(cases));
    let strategy = (opening(), prop::collection::vec(call(), 1..12));
    let result = runner.run(
        &strategy,
        |(opening, calls)| match std::panic::catch_unwind(AssertUnwindSafe(|| {
            case(&engine, dir.path(), &opening, &calls)
        })) {
            Ok(result) => result,
            Err(panic) => Err(TestCaseError::fail(format!(
                "panicked: {}",
                runner::panic_message(&*panic)
            ))),
        },
    );
    match result {
        Ok(()) => Outcome::Passed,
        Err(e) => Outcome::Failed(format!("{backend}: {e}")),
    }
}

/// The environment parser: arbitrary values for every variable it knows, and unknown ones.
fn fuzz_environment(cases: u32) -> Outcome {
    let names: Vec<&'static str> = VARIABLES.iter().map(|(name, _)| *name).collect();
    let value = prop_oneof![
        ".{0,12}",
        "[0-9kmgKMG]{0,24}",
        Just("18446744073709551616".to_string()),
        Just("-1".to_string()),
        Just("uring,auto,,".to_string()),
    ];
    let name = prop_oneof![prop::sample::select(names), Just("ENGINE_NO_SUCH_THING"),];
    let mut runner = TestRunner::new(runner::proptest_config(cases * 4));
    let result = runner.run(&prop::collection::vec((name, value), 0..6), |vars| {
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
        match std::panic::catch_unwind(|| Settings::parse(pairs.clone(), &BUILTIN_BACKENDS)) {
            Ok(_) => Ok(()),
            Err(panic) => Err(TestCaseError::fail(format!(
                "Settings::parse({pairs:?}) panicked: {}",
                runner::panic_message(&*panic)
            ))),
        }
    });
    match result {
        Ok(()) => Outcome::Passed,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// A `cargo fuzz` target's body.
type Target = fn(&[u8]);

/// The `cargo fuzz` targets' bodies, compiled into this test.
#[path = "../../fuzz/src/lib.rs"]
mod targets;

/// One `cargo fuzz` target's body over the seeds in `fuzz/corpus/<target>/` and `cases`
/// random inputs.
fn replay(target: &str, body: fn(&[u8]), cases: u32) -> Outcome {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut seeds = Vec::new();
    match std::fs::read_dir(&corpus) {
        Ok(entries) => {
            for entry in entries.flatten() {
                match std::fs::read(entry.path()) {
                    Ok(bytes) => seeds.push(bytes),
                    Err(e) => return Outcome::Failed(format!("{}: {e}", entry.path().display())),
                }
            }
        }
        Err(e) => return Outcome::Failed(format!("{}: {e}", corpus.display())),
    }
    if seeds.is_empty() {
        return Outcome::Failed(format!("no seeds in {}", corpus.display()));
    }
    let run = |bytes: &[u8]| -> Result<(), TestCaseError> {
        std::panic::catch_unwind(|| body(bytes)).map_err(|panic| {
            TestCaseError::fail(format!(
                "{target} panicked on {bytes:02x?}: {}",
                runner::panic_message(&*panic)
            ))
        })
    };
    for seed in &seeds {
        if let Err(e) = run(seed) {
            return Outcome::Failed(e.to_string());
        }
    }
    let mut runner = TestRunner::new(runner::proptest_config(cases * 64));
    match runner.run(&prop::collection::vec(any::<u8>(), 0..96), |bytes| {
        run(&bytes)
    }) {
        Ok(()) => Outcome::Passed,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

fn main() {
    let cases: u32 = std::env::var("CONFORMANCE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut all = Vec::new();
    for backend in BUILTIN_BACKENDS {
        all.push(
            Trial::new(
                &format!("fuzz:{backend}"),
                "public_api_never_panics",
                Duration::from_secs(120),
                move || fuzz_backend(backend, cases),
            )
            .seeded(),
        );
    }
    all.push(
        Trial::new(
            "fuzz:env",
            "environment_parser_never_panics",
            Duration::from_secs(60),
            move || fuzz_environment(cases),
        )
        .seeded(),
    );
    let targets: [(&str, Target); 2] = [
        ("request_validation", targets::request_validation),
        ("environment", targets::environment),
    ];
    for (target, body) in targets {
        all.push(
            Trial::new("fuzz:targets", target, Duration::from_secs(60), move || {
                replay(target, body, cases)
            })
            .seeded(),
        );
    }
    runner::run(all);
}
