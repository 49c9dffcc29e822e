//! `cargo test -p conformance`: the whole case list against every backend compiled into the
//! `engine` facade, its ring and pool variants, under injected latency and the crash
//! simulator, and against the in-memory reference engine, all under the bundled `block_on`;
//! then every backend again under each other runtime of [`Runtime::ALL`]. Each trial is
//! `<variant>::<case>` (or `<runtime>/<backend>::<case>`), so `cargo test -p conformance
//! --test suite -- uring::read` runs just those, and `-- tokio-mt/` one runtime.

use std::time::Duration;

use conformance::crash::CrashSim;
use conformance::faulty::{Fault, FaultyEngine, Injector, Plan};
use conformance::runner::{self, Outcome, Trial};
use conformance::runtime::Runtime;
use conformance::{cases, trials_in, Harness, MemEngine};
use engine::{Engine, EngineConfig, ErrorKind, BUILTIN_BACKENDS};

type Adjust = fn(&mut EngineConfig);

/// Trials that each report why `variant` cannot run under `runtime` here, so every case
/// shows as ignored with the reason instead of disappearing.
fn unavailable(runtime: Runtime, variant: &str, reason: &str) -> Vec<Trial> {
    let group = match runtime {
        Runtime::BlockOn => variant.to_string(),
        other => format!("{}/{variant}", other.name()),
    };
    cases::all::<Engine>()
        .into_iter()
        .map(|case| {
            let reason = reason.to_string();
            Trial::new(&group, case.name, Duration::from_secs(1), move || {
                Outcome::Skipped(reason)
            })
            .in_runtime(runtime.name(), variant)
        })
        .collect()
}

/// A harness whose engines are the built-in backend `name`.
fn backend(name: &str) -> Harness<Engine> {
    let backend = name.to_string();
    Harness::new(
        name,
        Box::new(move |config| Engine::with_backend(&backend, config)),
    )
}

fn main() {
    let mut all: Vec<Trial> = Vec::new();
    let mut available: Vec<&str> = Vec::new();
    let mut unavailable_reasons: Vec<(&str, String)> = Vec::new();
    for name in BUILTIN_BACKENDS {
        // Probe once: a backend that is not compiled in, or cannot run on this machine, shows
        // its reason on every case.
        match Engine::with_backend(name, EngineConfig::default()) {
            Ok(engine) => drop(engine),
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                let reason = format!("backend {name} cannot run here: {}", e.message());
                all.extend(unavailable(Runtime::BlockOn, name, &reason));
                unavailable_reasons.push((name, reason));
                continue;
            }
            Err(e) => panic!("backend {name} cannot be built: {e}"),
        }
        available.push(name);
        all.extend(trials_in(Runtime::BlockOn, backend(name), cases::all()));
    }
    // Ring and pool variants of the built-in backends keep the same contract.
    let variants: [(&str, &str, Adjust); 4] = [
        ("uring+sqpoll", "uring", |c| c.sqpoll_idle_ms = Some(50)),
        ("uring+restricted", "uring", |c| c.restricted = true),
        ("sync+inline", "sync", |c| c.inline = true),
        // Linux AIO without kernel fsync (before 4.18) runs syncs on a thread.
        ("aio+thread-sync", "aio", |c| {
            c.testing.force_thread_sync = true
        }),
    ];
    for (variant, base, adjust) in variants {
        if !available.contains(&base) {
            all.extend(unavailable(
                Runtime::BlockOn,
                variant,
                &format!("backend {base} cannot run here"),
            ));
            continue;
        }
        let harness = Harness::new(
            variant,
            Box::new(move |mut config| {
                adjust(&mut config);
                Engine::with_backend(base, config)
            }),
        );
        all.extend(trials_in(Runtime::BlockOn, harness, cases::all()));
    }
    // monoio's legacy (epoll) driver, which monoio picks where io_uring is unavailable: the
    // same contract with every file operation a blocking syscall on the executor thread.
    #[cfg(feature = "monoio")]
    {
        use engine::monoio::{DriverChoice, MonoioEngine};
        let variant = "monoio+legacy";
        if available.contains(&"monoio") {
            let harness = Harness::new(
                variant,
                Box::new(|config| MonoioEngine::with_driver(config, DriverChoice::Legacy)),
            );
            all.extend(trials_in(Runtime::BlockOn, harness, cases::all()));
        } else {
            all.extend(unavailable(
                Runtime::BlockOn,
                variant,
                "backend monoio cannot run here",
            ));
        }
    }
    // Every built-in backend again, under injected latency (faults the engine must absorb
    // without changing any result), and through the crash simulator's bookkeeping.
    for name in available {
        let faulty = format!("faulty:{name}");
        let harness = Harness::new(
            &faulty,
            Box::new(move |config| {
                let injector = Injector::new(0xFA17, Plan::Rates(vec![(Fault::Latency, 0.05)]));
                FaultyEngine::new(
                    move |c| Engine::with_backend(name, c),
                    config,
                    &injector,
                    false,
                )
            }),
        );
        all.extend(trials_in(Runtime::BlockOn, harness, cases::all()));
        let crash = format!("crash:{name}");
        let harness = Harness::new(
            &crash,
            Box::new(move |config| Ok(CrashSim::new(Engine::with_backend(name, config)?, 512))),
        );
        all.extend(trials_in(Runtime::BlockOn, harness, cases::all()));
    }
    let harness = Harness::new(conformance::mem::NAME, Box::new(MemEngine::new));
    all.extend(trials_in(Runtime::BlockOn, harness, cases::all()));
    // Every built-in backend under every other runtime: the same futures, polled and woken the
    // way each runtime does it.
    for runtime in Runtime::ALL.into_iter().filter(|&r| r != Runtime::BlockOn) {
        let probed = runtime.probe();
        for name in BUILTIN_BACKENDS {
            if let Some((_, reason)) = unavailable_reasons.iter().find(|(n, _)| *n == name) {
                all.extend(unavailable(runtime, name, reason));
            } else if let Err(reason) = &probed {
                all.extend(unavailable(runtime, name, reason));
            } else {
                all.extend(trials_in(runtime, backend(name), cases::all()));
            }
        }
    }
    // Each case works on files of its own, so trials run side by side (one per CPU); the few
    // that measure the filesystem's free space run alone.
    runner::run_parallel(all);
}
