//! `cargo test -p conformance`: the whole case list against every backend compiled into the
//! `engine` facade, then against the in-memory reference engine.

use conformance::crash::CrashSim;
use conformance::faulty::{Fault, FaultyEngine, Injector, Plan};
use conformance::{cases, run_suite, Harness, MemEngine, Summary};
use engine::{Engine, ErrorKind, BUILTIN_BACKENDS};

fn main() {
    let mut summaries: Vec<(String, Summary)> = Vec::new();
    for name in BUILTIN_BACKENDS {
        // Probe once: a backend that is not compiled in, or cannot run on this machine, is
        // reported as such and not counted.
        match Engine::with_backend(name, engine::EngineConfig::default()) {
            Ok(engine) => drop(engine),
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                println!(
                    "conformance: backend {name} not run: {}",
                    e.message().lines().nth(2).unwrap_or("").trim()
                );
                continue;
            }
            Err(e) => {
                println!("conformance: backend {name} cannot be built: {e}");
                summaries.push((
                    name.to_string(),
                    Summary {
                        failed: 1,
                        ..Summary::default()
                    },
                ));
                continue;
            }
        }
        let backend = name.to_string();
        let harness = Harness::new(
            name,
            Box::new(move |config| Engine::with_backend(&backend, config)),
        );
        summaries.push((name.to_string(), run_suite(harness, cases::all())));
    }
    // io_uring's optional ring modes keep the same contract.
    if summaries.iter().any(|(name, _)| name == "uring") {
        type Adjust = fn(&mut engine::EngineConfig);
        let variants: [(&str, Adjust); 2] = [
            ("uring+sqpoll", |c| c.sqpoll_idle_ms = Some(50)),
            ("uring+restricted", |c| c.restricted = true),
        ];
        for (name, adjust) in variants {
            let harness = Harness::new(
                name,
                Box::new(move |mut config| {
                    adjust(&mut config);
                    Engine::with_backend("uring", config)
                }),
            );
            summaries.push((name.to_string(), run_suite(harness, cases::all())));
        }
    }
    // The sync backend without a pool: requests run on the submitting thread.
    if summaries.iter().any(|(name, _)| name == "sync") {
        let name = "sync+inline";
        let harness = Harness::new(
            name,
            Box::new(|mut config: engine::EngineConfig| {
                config.inline = true;
                Engine::with_backend("sync", config)
            }),
        );
        summaries.push((name.to_string(), run_suite(harness, cases::all())));
    }
    // Linux AIO without kernel fsync support (before 4.18) runs syncs on a thread: same contract.
    if summaries.iter().any(|(name, _)| name == "aio") {
        engine::aio::force_threaded_sync(true);
        let name = "aio+threaded-sync";
        let harness = Harness::new(name, Box::new(|config| Engine::with_backend("aio", config)));
        summaries.push((name.to_string(), run_suite(harness, cases::all())));
        engine::aio::force_threaded_sync(false);
    }
    // Every built-in backend again, under injected latency (faults the engine must absorb
    // without changing any result), and through the crash simulator's bookkeeping.
    let built: Vec<String> = summaries
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| BUILTIN_BACKENDS.contains(&n.as_str()))
        .collect();
    for name in built {
        let faulty = format!("faulty:{name}");
        let inner = name.clone();
        let harness = Harness::new(
            &faulty,
            Box::new(move |config| {
                let injector = Injector::new(0xFA17, Plan::Rates(vec![(Fault::Latency, 0.05)]));
                let backend = inner.clone();
                FaultyEngine::new(
                    move |c| Engine::with_backend(&backend, c),
                    config,
                    &injector,
                    false,
                )
            }),
        );
        summaries.push((faulty, run_suite(harness, cases::all())));
        let crash = format!("crash:{name}");
        let inner = name.clone();
        let harness = Harness::new(
            &crash,
            Box::new(move |config| Ok(CrashSim::new(Engine::with_backend(&inner, config)?, 512))),
        );
        summaries.push((crash, run_suite(harness, cases::all())));
    }
    let harness = Harness::new(conformance::mem::NAME, Box::new(MemEngine::new));
    summaries.push((
        conformance::mem::NAME.to_string(),
        run_suite(harness, cases::all()),
    ));

    for (name, summary) in &summaries {
        println!("{}", summary.line(name));
    }
    let failed: usize = summaries.iter().map(|(_, s)| s.failed).sum();
    if failed > 0 {
        eprintln!("conformance: {failed} case(s) failed");
        std::process::exit(1);
    }
}
