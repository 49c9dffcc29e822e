//! The contract every engine backend keeps, as one suite of plain functions over
//! [`engine_core::Backend`], run against every backend compiled in (`cargo test -p
//! conformance`).
//!
//! Each case is a `pub fn(&Harness<E>) -> CaseResult`: it passes, fails by panicking with a
//! labelled assertion, or returns [`Skip`] with the reason when the backend's
//! [`engine_core::Capabilities`] or the machine do not allow it. The [`runner`] reports skips as
//! `ignored` with the reason, never as passes, takes libtest's filters (`cargo test -p
//! conformance -- eof`), and ends with one line per backend:
//! `conformance: backend=<name> passed=<n> skipped=<n> failed=<n>`, or, for trials made by
//! [`trials_in`], one per runtime and backend:
//! `conformance: runtime=<runtime> backend=<name> passed=<n> skipped=<n> failed=<n>`. Cases
//! await each step with [`runtime::block_on`], so the same case runs under every executor of
//! [`runtime::Runtime`].

pub mod cases;
pub mod crash;
pub mod faulty;
pub mod mem;
pub mod mutants;
pub mod oracle;
pub mod process;
pub mod runner;
pub mod runtime;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use engine_core::testing::{FaultAction, FaultHook};
use engine_core::{
    AlignedBuf, Backend, BackendExt, EngineConfig, File, IoBuf, IoBufMut, Op, OpenOptions, Result,
};

use runner::{Outcome, Trial};
use runtime::block_on;

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

impl<E: Backend> Harness<E> {
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
        self.engine_with(|c| c.testing.fault_hook = Some(hook))
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

/// splitmix64's finaliser: a well-spread 64-bit hash, for seeded choices in the tests.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
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

/// A buffer of `len` bytes whose address is `shift` bytes past an `align`-aligned address
/// (`shift` not a multiple of `align`): a caller's own memory that breaks O_DIRECT's memory
/// rule on purpose.
///
/// # Panics
///
/// When allocation fails.
pub fn misaligned_buf(len: usize, align: usize, shift: usize) -> AlignedBuf {
    let inner = AlignedBuf::zeroed(len + shift, align).expect("allocate buffer");
    AlignedBuf::from_io_buf(Shifted { inner, shift })
}

/// An aligned buffer seen from `shift` bytes in.
struct Shifted {
    inner: AlignedBuf,
    shift: usize,
}

// SAFETY: the pointer is `shift` bytes into the inner buffer's memory, which the inner buffer
// owns and which does not move when it does; `bytes_init` and `bytes_total` stay within it.
unsafe impl IoBuf for Shifted {
    fn stable_ptr(&self) -> *const u8 {
        self.inner[self.shift..].as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.inner.len() - self.shift
    }
    fn bytes_total(&self) -> usize {
        self.inner.len() - self.shift
    }
}

// SAFETY: as above, writable.
unsafe impl IoBufMut for Shifted {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        let shift = self.shift;
        self.inner[shift..].as_mut_ptr()
    }
    unsafe fn set_init(&mut self, len: usize) {
        // Every byte of the inner buffer is initialised already; only the length changes.
        let _ = self.inner.resize(len + self.shift);
    }
}

/// Writes all of `data` at `offset` through the engine.
///
/// # Panics
///
/// When the write fails.
pub fn write_all<E: Backend>(engine: &E, file: &File, offset: u64, data: &[u8], align: usize) {
    let (result, _) = block_on(engine.write_all_at(file, offset, buf(data, align)));
    result.expect("write_all_at");
}

/// Reads exactly `len` bytes at `offset` through the engine.
///
/// # Panics
///
/// When the read fails.
pub fn read_exact<E: Backend>(
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
    /// The request's operation.
    pub op: Op,
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
        op: Op,
        _file: &File,
        offset: u64,
        len: usize,
        attempt: u32,
    ) -> Option<FaultAction> {
        let call = HookCall {
            op,
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

/// The longest a case may run before it is reported as hung.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one case against `harness` and maps its result to the runner's outcome.
pub fn outcome<E: Backend>(harness: &Harness<E>, case: fn(&Harness<E>) -> CaseResult) -> Outcome {
    match case(harness) {
        Ok(()) => Outcome::Passed,
        Err(Skip(reason)) => Outcome::Skipped(reason),
    }
}

/// One trial per case, named `<backend>::<case>`, sharing `harness`.
pub fn trials<E: Backend + 'static>(harness: Harness<E>, cases: Vec<Case<E>>) -> Vec<Trial> {
    let harness = Arc::new(harness);
    let backend = harness.backend().to_string();
    cases
        .into_iter()
        .map(|case| {
            let harness = Arc::clone(&harness);
            let trial = Trial::new(&backend, case.name, CASE_TIMEOUT, move || {
                outcome(&harness, case.run)
            });
            if cases::EXCLUSIVE.contains(&case.name) {
                trial.exclusive()
            } else {
                trial
            }
        })
        .collect()
}

/// One trial per case, each run with `runtime` entered on its thread (see
/// [`runtime::Runtime::enter`]), summed up as `runtime=<runtime> backend=<backend>`. The
/// trials are named `<backend>::<case>` under the bundled `block_on`, and
/// `<runtime>/<backend>::<case>` under any other runtime.
pub fn trials_in<E: Backend + 'static>(
    runtime: runtime::Runtime,
    harness: Harness<E>,
    cases: Vec<Case<E>>,
) -> Vec<Trial> {
    let harness = Arc::new(harness);
    let backend = harness.backend().to_string();
    let group = match runtime {
        runtime::Runtime::BlockOn => backend.clone(),
        other => format!("{}/{backend}", other.name()),
    };
    cases
        .into_iter()
        .map(|case| {
            let harness = Arc::clone(&harness);
            let trial = Trial::new(&group, case.name, CASE_TIMEOUT, move || {
                runtime.enter(|| outcome(&harness, case.run))
            })
            .in_runtime(runtime.name(), &backend);
            if cases::EXCLUSIVE.contains(&case.name) {
                trial.exclusive()
            } else {
                trial
            }
        })
        .collect()
}

/// Runs one case on its own thread with a time limit (a case still running after `timeout`
/// fails as hung), outside the runner: for checks that run cases themselves (the mutants).
pub fn run_case<E: Backend + 'static>(
    harness: &Arc<Harness<E>>,
    case: &Case<E>,
    timeout: Duration,
) -> Outcome {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = Arc::clone(harness);
    let run = case.run;
    let spawned = std::thread::Builder::new()
        .name(case.name.to_string())
        .spawn(move || {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| outcome(&h, run)))
                    .unwrap_or_else(|panic| Outcome::Failed(runner::panic_message(&*panic)));
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Outcome::Failed(format!("cannot spawn the case thread: {e}"));
    }
    match rx.recv_timeout(timeout) {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed(format!("hung for more than {timeout:?}")),
    }
}

/// Silences the default panic output while `body` runs (failures are reported by the
/// runner, with their message), then restores it.
pub fn quietly<T>(body: impl FnOnce() -> T) -> T {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = body();
    std::panic::set_hook(default_hook);
    result
}
