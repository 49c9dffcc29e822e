//! When io_uring cannot run, `auto` falls back with the diagnosis in the report, and asking
//! for exactly `uring` fails with it. One test function: it changes process-wide state (the
//! simulated setup failure, and for real the `kernel.io_uring_disabled` sysctl).

#![cfg(feature = "uring")]

use engine::{Choice, Engine, EngineConfig, ErrorKind, Outcome, Settings};

fn settings(choice: Choice) -> Settings {
    Settings {
        requested: format!("{choice:?}"),
        choice,
        config: EngineConfig::default(),
    }
}

fn assert_falls_back(errno: i32, cause: &str) {
    let engine = Engine::from_settings(settings(Choice::Auto)).expect("auto falls back");
    let report = engine.report();
    assert_ne!(engine.name(), "uring", "{report}");
    let first = &report.attempts[0];
    assert_eq!(first.backend, "uring");
    let Outcome::Unavailable(diagnosis) = &first.outcome else {
        panic!("uring must be unavailable: {report}");
    };
    assert_eq!(diagnosis.errno, Some(errno), "{report}");
    assert!(
        diagnosis.cause.contains(cause),
        "cause names {cause:?}: {report}"
    );
    assert!(!diagnosis.remedy.is_empty(), "a remedy: {report}");
    assert!(report.to_string().contains("remedy:"), "printed: {report}");

    let only = Engine::from_settings(settings(Choice::List(vec!["uring".into()])));
    let error = only.expect_err("exactly uring must fail");
    assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
    assert!(
        error.to_string().contains(cause),
        "the error carries the diagnosis: {error}"
    );
}

/// Restores the sysctl even if an assertion fails.
struct Sysctl(String);

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.0);
    }
}

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

#[test]
fn unavailable_io_uring_falls_back_with_a_diagnosis() {
    if Engine::with_backend("uring", EngineConfig::default()).is_err() {
        println!("skipped: io_uring is genuinely unavailable here, so the fallback is covered by every other test");
        return;
    }
    // Simulated: a seccomp-style EPERM and a kernel without io_uring.
    engine::uring::simulate_setup_failure(Some(libc_eperm()));
    assert_falls_back(libc_eperm(), "seccomp");
    engine::uring::simulate_setup_failure(Some(38));
    assert_falls_back(38, "no io_uring");
    engine::uring::simulate_setup_failure(None);
    assert_eq!(
        Engine::from_settings(settings(Choice::Auto))
            .expect("auto")
            .name(),
        "uring"
    );

    // For real, when this process may change the sysctl (root on Linux 6.6+).
    match std::fs::read_to_string(SYSCTL) {
        Ok(old) if std::fs::write(SYSCTL, "2").is_ok() => {
            let _restore = Sysctl(old);
            assert_falls_back(libc_eperm(), "kernel.io_uring_disabled=2");
        }
        Ok(_) => println!("real sysctl check skipped: cannot write {SYSCTL} (not root)"),
        Err(e) => println!("real sysctl check skipped: {SYSCTL}: {e} (kernel before 6.6)"),
    }
    assert_eq!(
        Engine::from_settings(settings(Choice::Auto))
            .expect("auto")
            .name(),
        "uring",
        "restored"
    );
}

fn libc_eperm() -> i32 {
    1
}
