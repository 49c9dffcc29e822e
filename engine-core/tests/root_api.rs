//! The crate root is the user's API and stays small: at most 40 names. The implementer's API
//! lives under `raw`, test switches under `testing`. This test reads `src/lib.rs`, so adding a
//! name to the root shows up here.

/// The names the root exports: each item of a `pub use`, and each `pub mod`.
fn root_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut statement = String::new();
    for line in source.lines() {
        let line = line.trim();
        if statement.is_empty() && !(line.starts_with("pub use ") || line.starts_with("pub mod ")) {
            continue;
        }
        statement.push_str(line);
        statement.push(' ');
        if !line.ends_with(';') {
            continue;
        }
        if let Some(module) = statement.strip_prefix("pub mod ") {
            names.push(module.trim().trim_end_matches(';').to_string());
        } else {
            let items = match (statement.find('{'), statement.rfind('}')) {
                (Some(open), Some(close)) => &statement[open + 1..close],
                _ => statement.rsplit("::").next().unwrap_or(""),
            };
            for item in items.split(',') {
                let item = item.trim().trim_end_matches(';').trim();
                if !item.is_empty() {
                    let name = item.rsplit(" as ").next().unwrap_or(item);
                    names.push(name.to_string());
                }
            }
        }
        statement.clear();
    }
    names
}

#[test]
fn the_root_exports_at_most_40_names() {
    let source = include_str!("../src/lib.rs");
    let names = root_names(source);
    assert!(names.len() <= 40, "{} root names: {names:?}", names.len());
    for must in [
        "Backend",
        "BackendExt",
        "Request",
        "Completion",
        "raw",
        "registry",
        "block_on",
    ] {
        assert!(
            names.iter().any(|n| n == must),
            "{must} is at the root: {names:?}"
        );
    }
    for implementer in [
        "InFlight",
        "Driver",
        "Metrics",
        "CountingAllocator",
        "FaultHook",
        "prepare",
    ] {
        assert!(
            !names.iter().any(|n| n == implementer),
            "{implementer} belongs under raw or testing: {names:?}"
        );
    }
}

#[test]
fn the_counter_counts_what_it_should() {
    let names = root_names("pub use a::{B, C as D};\npub mod e;\npub use f::G;\n");
    assert_eq!(names, ["B", "D", "e", "G"]);
}
