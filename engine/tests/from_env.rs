//! `Engine::from_env()` against the real process environment. One test function, so no other
//! test in this binary races on the variables.

use engine::registry::Outcome;
use engine::{Engine, ErrorKind};

fn clear() {
    for (name, _) in std::env::vars() {
        if name.starts_with("ENGINE_") {
            std::env::remove_var(name);
        }
    }
}

#[test]
fn from_env_selects_explains_and_rejects() {
    clear();
    std::env::set_var("ENGINE_BACKEND", "nonsense");
    let error = Engine::from_env().expect_err("nonsense is not a backend");
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    let text = error.to_string();
    for name in ["auto", "uring", "aio", "sync"] {
        assert!(
            text.contains(name),
            "error names valid backend {name}: {text}"
        );
    }

    std::env::set_var("ENGINE_BACKEND", "sync");
    std::env::set_var("ENGINE_QUEUE_DEPTH", "16");
    std::env::set_var("ENGINE_THREADS", "3");
    let engine = Engine::from_env().expect("sync is always available");
    assert_eq!(engine.name(), "sync");
    assert_eq!(engine.capabilities().queue_depth_max, 16);
    assert_eq!(engine.capabilities().threads, 3);
    let report = engine.report();
    assert_eq!(report.requested, "ENGINE_BACKEND=sync");
    assert_eq!(
        report.attempts.len(),
        1,
        "exactly the one asked for: {report}"
    );
    assert_eq!(report.chosen.as_deref(), Some("sync"));
    drop(engine);

    clear();
    let engine = Engine::from_env().expect("auto");
    let report = engine.report();
    let tried: Vec<&str> = report.attempts.iter().map(|a| a.backend.as_str()).collect();
    assert_eq!(tried[0], "uring", "auto tries uring first: {report}");
    assert_eq!(
        report.chosen.as_deref(),
        tried.last().copied(),
        "auto stops at the first backend that runs: {report}"
    );
    for attempt in &report.attempts[..report.attempts.len() - 1] {
        assert!(
            !matches!(attempt.outcome, Outcome::Chosen(_)),
            "only the last attempt is chosen: {report}"
        );
    }
    let printed = report.to_string();
    assert!(
        printed.contains(&format!("=> using {}", engine.name())),
        "{printed}"
    );
    drop(engine);

    // Exactly one backend by name: that one or an error saying why, never another.
    std::env::set_var("ENGINE_BACKEND", "aio");
    match Engine::from_env() {
        Ok(engine) => assert_eq!(engine.name(), "aio", "{}", engine.report()),
        Err(error) => assert!(error.to_string().contains("1. aio: "), "{error}"),
    }

    clear();
    std::env::set_var("ENGINE_QUEUE_DEPTH", "lots");
    let error = Engine::from_env().expect_err("bad depth");
    assert!(error.to_string().contains("ENGINE_QUEUE_DEPTH"), "{error}");
    clear();
    std::env::set_var("ENGINE_NONSENSE", "1");
    let error = Engine::from_env().expect_err("unknown variable");
    assert!(
        error
            .to_string()
            .contains("ENGINE_BACKEND, ENGINE_QUEUE_DEPTH"),
        "{error}"
    );
    clear();
}

#[test]
fn readme_lists_every_variable() {
    let readme = include_str!("../../README.md");
    for (name, doc) in engine::VARIABLES {
        let row = format!("| `{name}` | {doc} |");
        assert!(
            readme.contains(&row),
            "README row for {name}: expected {row}"
        );
    }
}
