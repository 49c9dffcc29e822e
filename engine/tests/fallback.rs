//! When io_uring cannot run, `auto` falls back with the diagnosis in the report, and asking
//! for exactly `uring` fails with it. Setup failures are simulated through the
//! configuration's test switches, and produced for real (as root) with the
//! `kernel.io_uring_disabled` and `fs.aio-max-nr` sysctls. One test function: the sysctls are
//! process-wide.

#![cfg(all(feature = "uring", feature = "aio"))]

use engine::registry::Outcome;
use engine::{Choice, Engine, EngineConfig, ErrorKind, Settings};

/// Settings for `choice` whose setups fail as `failing` says (backend, errno).
fn settings_failing(choice: Choice, failing: &[(&'static str, i32)]) -> Settings {
    let mut config = EngineConfig::default();
    config.testing.setup_errno = failing.to_vec();
    Settings {
        requested: format!("{choice:?}"),
        choice,
        config,
    }
}

fn settings(choice: Choice) -> Settings {
    settings_failing(choice, &[])
}

fn assert_falls_back(failing: &[(&'static str, i32)], errno: i32, cause: &str) {
    assert_backend_falls_back(failing, "uring", 0, errno, cause);
}

/// With `failing`, `backend` (attempt number `index` under `auto`) is unavailable with `errno`
/// and `cause`, and asking for exactly it fails with the same diagnosis.
fn assert_backend_falls_back(
    failing: &[(&'static str, i32)],
    backend: &str,
    index: usize,
    errno: i32,
    cause: &str,
) {
    let engine =
        Engine::from_settings(settings_failing(Choice::Auto, failing)).expect("auto falls back");
    let report = engine.report();
    assert_ne!(engine.name(), backend, "{report}");
    let attempt = &report.attempts[index];
    assert_eq!(attempt.backend, backend, "{report}");
    let Outcome::Unavailable(diagnosis) = &attempt.outcome else {
        panic!("{backend} must be unavailable: {report}");
    };
    assert_eq!(diagnosis.errno, Some(errno), "{report}");
    assert!(
        diagnosis.cause.contains(cause),
        "cause names {cause:?}: {report}"
    );
    assert!(!diagnosis.remedy.is_empty(), "a remedy: {report}");
    assert!(report.to_string().contains("remedy:"), "printed: {report}");

    let only = Engine::from_settings(settings_failing(
        Choice::List(vec![backend.into()]),
        failing,
    ));
    let error = only.expect_err("exactly the unavailable backend must fail");
    assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
    assert!(
        error.to_string().contains(cause),
        "the error carries the diagnosis: {error}"
    );
}

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

#[test]
fn unavailable_io_uring_falls_back_with_a_diagnosis() {
    if let Err(e) = Engine::with_backend("uring", EngineConfig::default()) {
        panic!("this test needs io_uring and Linux AIO to run for real here: {e}");
    }
    // Simulated: a seccomp-style EPERM and a kernel without io_uring.
    assert_falls_back(&[("uring", libc::EPERM)], libc::EPERM, "seccomp");
    assert_falls_back(&[("uring", libc::ENOSYS)], libc::ENOSYS, "no io_uring");
    assert_eq!(
        Engine::from_settings(settings(Choice::Auto))
            .expect("auto")
            .name(),
        "uring"
    );

    // For real, when this process may change the sysctl (root on Linux 6.6+).
    match std::fs::read_to_string(SYSCTL) {
        Ok(old) if std::fs::write(SYSCTL, "2").is_ok() => {
            let _restore = Restore(SYSCTL, old);
            assert_falls_back(&[], libc::EPERM, "kernel.io_uring_disabled=2");
        }
        Ok(_) => println!("real sysctl check skipped: cannot write {SYSCTL} (not root)"),
        Err(e) => println!("real sysctl check skipped: {SYSCTL}: {e} (kernel before 6.6)"),
    }
    assert_eq!(auto_name(), "uring", "restored");

    // With io_uring blocked, AIO is next; block it too and sync is chosen, with both reasons.
    let uring_blocked = [("uring", libc::EPERM)];
    let engine =
        Engine::from_settings(settings_failing(Choice::Auto, &uring_blocked)).expect("auto");
    assert_eq!(engine.name(), "aio", "{}", engine.report());
    drop(engine);
    let both_blocked = [("uring", libc::EPERM), ("aio", libc::EAGAIN)];
    assert_backend_falls_back(
        &both_blocked,
        "aio",
        1,
        libc::EAGAIN,
        "fs.aio-max-nr is exhausted",
    );
    let engine =
        Engine::from_settings(settings_failing(Choice::Auto, &both_blocked)).expect("auto");
    assert_eq!(engine.name(), "sync", "{}", engine.report());
    assert_eq!(engine.report().attempts.len(), 3, "{}", engine.report());
    drop(engine);

    // For real: exhaust fs.aio-max-nr (root only) and AIO must explain it.
    match (
        std::fs::read_to_string(AIO_MAX),
        std::fs::read_to_string(AIO_NR),
    ) {
        (Ok(old), Ok(nr)) if std::fs::write(AIO_MAX, nr.trim()).is_ok() => {
            let _restore = Restore(AIO_MAX, old);
            assert_backend_falls_back(
                &uring_blocked,
                "aio",
                1,
                libc::EAGAIN,
                "fs.aio-max-nr is exhausted",
            );
        }
        _ => println!("real aio-max-nr check skipped: cannot write {AIO_MAX} (not root)"),
    }
    assert_eq!(auto_name(), "uring", "restored");
}

const AIO_MAX: &str = "/proc/sys/fs/aio-max-nr";
const AIO_NR: &str = "/proc/sys/fs/aio-nr";

fn auto_name() -> &'static str {
    Engine::from_settings(settings(Choice::Auto))
        .expect("auto")
        .name()
}

/// Restores a sysctl even if an assertion fails.
struct Restore(&'static str, String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}
