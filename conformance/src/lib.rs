//! The contract every engine backend keeps, as one suite of plain functions over
//! [`engine_core::Engine`], run against every backend compiled in (`cargo test -p
//! conformance`).
//!
//! Each case is a `pub fn(&Harness<E>) -> CaseResult`: it passes, fails by panicking with a
//! labelled assertion, or returns [`Skip`] with the reason when the backend's
//! [`engine_core::Capabilities`] or the machine do not allow it. Skips are printed and counted
//! as skips, never as passes. At the end of a run, [`run_suite`] prints one line per backend:
//! `conformance: backend=<name> passed=<n> skipped=<n> failed=<n>`.

pub mod cases;
pub mod crash;
pub mod faulty;
pub mod mem;
pub mod mutants;
pub mod oracle;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use engine_core::{
    block_on, AlignedBuf, Engine, EngineConfig, EngineExt, FaultAction, FaultHook, File, OpKind,
    OpenOptions, Result,
};

pub use mem::MemEngine;

/// Why a case did not run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip(pub String);

/// What a case returns: `Ok(())` when it passed, `Err(Skip)` when it could not run here.
/// A failure is a panic.
pub type CaseResult = std::result::Result<(), Skip>;

/// Builds engines of the backend under test.
pub type Factory<E> = Box<dyn Fn(EngineConfig) -> Result<E> + Send + Sync>;

/// One named case of the suite.
pub struct Case<E> {
    /// The function's name.
    pub name: &'static str,
    /// The case.
    pub run: fn(&Harness<E>) -> CaseResult,
}

/// Everything a case needs: engines of the backend under test, and a scratch directory.
pub struct Harness<E> {
    backend: String,
    make: Factory<E>,
    dir: tempfile::TempDir,
    files: AtomicU64,
}

/// The queue depth of engines from [`Harness::engine`].
pub const DEPTH: usize = 32;

impl<E: Engine> Harness<E> {
    /// A harness for `backend`, whose engines come from `make`. The scratch directory is
    /// created under `CONFORMANCE_DIR` if set, else the system temp directory.
    ///
    /// # Panics
    ///
    /// When the scratch directory cannot be created.
    pub fn new(backend: &str, make: Factory<E>) -> Harness<E> {
        let dir = match std::env::var_os("CONFORMANCE_DIR") {
            Some(base) => tempfile::tempdir_in(base),
            None => tempfile::tempdir(),
        };
        Harness {
            backend: backend.to_string(),
            make,
            dir: dir.expect("scratch directory"),
            files: AtomicU64::new(0),
        }
    }

    /// The backend's name.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// A fresh engine with queue depth [`DEPTH`].
    ///
    /// # Panics
    ///
    /// When the backend cannot be built.
    pub fn engine(&self) -> E {
        self.engine_with(|_| {})
    }

    /// A fresh engine with a configuration adjusted by `adjust`.
    ///
    /// # Panics
    ///
    /// When the backend cannot be built.
    pub fn engine_with(&self, adjust: impl FnOnce(&mut EngineConfig)) -> E {
        let mut config = EngineConfig {
            queue_depth: DEPTH,
            threads: 8,
            ..EngineConfig::default()
        };
        adjust(&mut config);
        (self.make)(config).expect("build engine")
    }

    /// A fresh engine with `hook` installed.
    pub fn engine_with_hook(&self, hook: Arc<Hook>) -> E {
        self.engine_with(|c| c.fault_hook = Some(hook))
    }

    /// A new path in the scratch directory.
    pub fn path(&self) -> PathBuf {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("f{n}"))
    }

    /// Creates a file holding `contents` (written with std) and opens it through `engine`.
    ///
    /// # Panics
    ///
    /// When the file cannot be created or opened.
    pub fn file(&self, engine: &E, contents: &[u8], options: &OpenOptions) -> File {
        let path = self.path();
        std::fs::write(&path, contents).expect("create file");
        engine
            .open(&path, options)
            .expect("open through the engine")
    }

    /// Reads the whole file behind `file` through std, bypassing the engine.
    ///
    /// # Panics
    ///
    /// When the file cannot be read.
    pub fn contents(&self, file: &File) -> Vec<u8> {
        std::fs::read(file.path()).expect("read back with std")
    }
}

/// Read and write, buffered.
pub fn rw() -> OpenOptions {
    OpenOptions::new().read(true).write(true)
}

/// A deterministic byte pattern.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An aligned copy of `data`.
///
/// # Panics
///
/// When allocation fails.
pub fn buf(data: &[u8], align: usize) -> AlignedBuf {
    AlignedBuf::from_slice(data, align).expect("allocate buffer")
}

/// Writes all of `data` at `offset` through the engine.
///
/// # Panics
///
/// When the write fails.
pub fn write_all<E: Engine>(engine: &E, file: &File, offset: u64, data: &[u8], align: usize) {
    let (result, _) = block_on(engine.write_all_at(file, offset, buf(data, align)));
    result.expect("write_all_at");
}

/// Reads exactly `len` bytes at `offset` through the engine.
///
/// # Panics
///
/// When the read fails.
pub fn read_exact<E: Engine>(
    engine: &E,
    file: &File,
    offset: u64,
    len: usize,
    align: usize,
) -> Vec<u8> {
    let zeroed = AlignedBuf::zeroed(len, align).expect("allocate buffer");
    let (result, buf) = block_on(engine.read_exact_at(file, offset, zeroed));
    result.expect("read_exact_at");
    buf.to_vec()
}

/// One call the fault hook saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookCall {
    /// The request's kind.
    pub kind: OpKind,
    /// Its offset.
    pub offset: u64,
    /// The length the backend was about to transfer.
    pub len: usize,
    /// The retry count.
    pub attempt: u32,
}

type Decide = dyn Fn(&HookCall) -> Option<FaultAction> + Send + Sync;
type Delay = dyn Fn(&HookCall) -> Duration + Send + Sync;

/// A scripted [`FaultHook`] that records every call.
pub struct Hook {
    decide: Box<Decide>,
    delay: Option<Box<Delay>>,
    calls: Mutex<Vec<HookCall>>,
}

impl Hook {
    /// A hook deciding each call with `decide`.
    pub fn new(
        decide: impl Fn(&HookCall) -> Option<FaultAction> + Send + Sync + 'static,
    ) -> Arc<Hook> {
        Arc::new(Hook {
            decide: Box::new(decide),
            delay: None,
            calls: Mutex::new(Vec::new()),
        })
    }

    /// A hook that injects nothing but sleeps `delay(call)` in each call: a slow device.
    pub fn latency(delay: impl Fn(&HookCall) -> Duration + Send + Sync + 'static) -> Arc<Hook> {
        Arc::new(Hook {
            decide: Box::new(|_| None),
            delay: Some(Box::new(delay)),
            calls: Mutex::new(Vec::new()),
        })
    }

    /// Every call seen so far.
    pub fn calls(&self) -> Vec<HookCall> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl FaultHook for Hook {
    fn before(
        &self,
        kind: OpKind,
        _file: &File,
        offset: u64,
        len: usize,
        attempt: u32,
    ) -> Option<FaultAction> {
        let call = HookCall {
            kind,
            offset,
            len,
            attempt,
        };
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
        if let Some(delay) = &self.delay {
            std::thread::sleep(delay(&call));
        }
        (self.decide)(&call)
    }
}

/// Counts of one backend's run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cases that passed.
    pub passed: usize,
    /// Cases skipped, each with its reason printed.
    pub skipped: usize,
    /// Cases that failed or hung.
    pub failed: usize,
}

/// The longest a case may run before it is reported as hung.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// How one case ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseOutcome {
    /// It passed.
    Passed,
    /// It could not run here; the reason.
    Skipped(String),
    /// It failed; the message (at most 600 characters).
    Failed(String),
}

/// Runs one case on its own thread, with a time limit: a case still running after `timeout`
/// fails as hung (its thread is left behind).
pub fn run_case<E: Engine + 'static>(
    harness: &Arc<Harness<E>>,
    case: &Case<E>,
    timeout: Duration,
) -> CaseOutcome {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = Arc::clone(harness);
    let run = case.run;
    let spawned = std::thread::Builder::new()
        .name(case.name.to_string())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&h)));
            let _ = tx.send(outcome);
        });
    if let Err(e) = spawned {
        return CaseOutcome::Failed(format!("cannot spawn the case thread: {e}"));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(Ok(()))) => CaseOutcome::Passed,
        Ok(Ok(Err(Skip(reason)))) => CaseOutcome::Skipped(reason),
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into());
            CaseOutcome::Failed(message.chars().take(600).collect())
        }
        Err(_) => CaseOutcome::Failed(format!("hung for more than {timeout:?}")),
    }
}

/// Silences the default panic output while `body` runs (failures are reported one line
/// each by the runner), then restores it.
pub fn quietly<T>(body: impl FnOnce() -> T) -> T {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = body();
    std::panic::set_hook(default_hook);
    result
}

/// Runs every case against one backend, printing one line per case; the caller prints
/// [`Summary::line`] at the end of the whole run.
pub fn run_suite<E: Engine + 'static>(harness: Harness<E>, cases: Vec<Case<E>>) -> Summary {
    let harness = Arc::new(harness);
    let backend = harness.backend().to_string();
    let mut summary = Summary::default();
    println!(
        "conformance: running {} cases on backend {backend}",
        cases.len()
    );
    quietly(|| {
        for case in &cases {
            match run_case(&harness, case, CASE_TIMEOUT) {
                CaseOutcome::Passed => {
                    summary.passed += 1;
                    println!("  ok   {}", case.name);
                }
                CaseOutcome::Skipped(reason) => {
                    summary.skipped += 1;
                    println!("  skip {}: {reason}", case.name);
                }
                CaseOutcome::Failed(message) => {
                    summary.failed += 1;
                    println!("  FAIL {}: {message}", case.name);
                }
            }
        }
    });
    println!("conformance: finished backend {backend}");
    summary
}

impl Summary {
    /// The summary line: `conformance: backend=<name> passed=<n> skipped=<n> failed=<n>`.
    pub fn line(&self, backend: &str) -> String {
        format!(
            "conformance: backend={backend} passed={} skipped={} failed={}",
            self.passed, self.skipped, self.failed
        )
    }
}
