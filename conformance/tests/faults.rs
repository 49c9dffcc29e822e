//! Fault injection on every backend: the fault matrix (backend x fault x operation kind),
//! randomized workloads checked by the oracle, the determinism of the injector, and the
//! `faulty:<backend>` registry plugins.
//!
//! `CONFORMANCE_FAULT_SEEDS` sets the seeds per backend (default 6); a failure prints its seed.

use std::sync::Arc;

use conformance::faulty::{Fault, FaultyEngine, Injector, Plan, PlanEntry};
use conformance::oracle;
use engine::{Engine, EngineConfig, Settings, BUILTIN_BACKENDS};
use engine_core::OpKind;

fn rates() -> Plan {
    Plan::Rates(vec![
        (Fault::Eio, 0.03),
        (Fault::Enospc, 0.02),
        (Fault::Eintr, 0.05),
        (Fault::Eagain, 0.05),
        (Fault::Short, 0.08),
        (Fault::Torn, 0.03),
        (Fault::Latency, 0.02),
    ])
}

fn config() -> EngineConfig {
    EngineConfig {
        queue_depth: 16,
        threads: 4,
        register_buffers_bytes: 1 << 20,
        ..EngineConfig::default()
    }
}

fn faulty(backend: &str, injector: &Arc<Injector>) -> engine::Result<FaultyEngine<Engine>> {
    FaultyEngine::new(
        |c| Engine::with_backend(backend, c),
        config(),
        injector,
        true,
    )
}

/// A faulty plugin per built-in backend: `ENGINE_BACKEND=faulty:<name>`.
struct FaultyPlugin(&'static str, &'static str);

impl engine::Plugin for FaultyPlugin {
    fn name(&self) -> &'static str {
        self.0
    }
    fn probe(&self, config: &EngineConfig) -> engine::Probe {
        match Engine::with_backend(self.1, config.clone()) {
            Ok(_) => engine::Probe::Available(format!("{} with injected faults", self.1)),
            Err(e) => engine::Probe::Unavailable(engine::Diagnosis {
                errno: e.raw_os_error(),
                cause: e.to_string(),
                remedy: "use another backend".into(),
            }),
        }
    }
    fn create(&self, config: &EngineConfig) -> engine::Result<Box<dyn engine::DynEngine>> {
        let seed = std::env::var("CONFORMANCE_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        let injector = Injector::new(seed, rates());
        let inner = self.1;
        Ok(Box::new(FaultyEngine::new(
            |c| Engine::with_backend(inner, c),
            config.clone(),
            &injector,
            true,
        )?))
    }
}

fn main() {
    let seeds: u64 = std::env::var("CONFORMANCE_FAULT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let (mut passed, mut failed, mut skipped) = (0usize, 0usize, 0usize);
    let mut record = |ok: bool, what: String| {
        if ok {
            passed += 1;
        } else {
            failed += 1;
            println!("FAIL {what}");
        }
    };
    let kinds = [
        OpKind::Read,
        OpKind::Write,
        OpKind::SyncData,
        OpKind::SyncAll,
    ];
    let mut matrix = String::from("fault matrix (backend x fault x op: ok, skip, FAIL)\n");
    matrix.push_str(&format!(
        "  {:<8} {:<8} {:>8} {:>8} {:>10} {:>9}\n",
        "backend", "fault", "read", "write", "sync_data", "sync_all"
    ));
    for backend in BUILTIN_BACKENDS {
        if Engine::with_backend(backend, config()).is_err() {
            println!("skipped backend {backend}: not available here");
            skipped += 1;
            continue;
        }
        let dir = tempfile::tempdir().expect("tempdir");

        // Determinism: the same seed and workload give the same trace.
        let traces: Vec<u64> = (0..2)
            .map(|round| {
                let injector = Injector::new(42, rates());
                let engine = faulty(backend, &injector).expect("engine");
                let sub = dir.path().join(format!("det-{round}"));
                std::fs::create_dir_all(&sub).expect("dir");
                oracle::random_workload(&engine, &sub, 42, 120).expect("workload");
                injector.trace_hash()
            })
            .collect();
        record(
            traces[0] == traces[1],
            format!("{backend}: same seed, different traces {traces:x?}"),
        );

        // Randomized workloads under the oracle.
        for seed in 0..seeds {
            let injector = Injector::new(0x5EED_0000 + seed, rates());
            let engine = faulty(backend, &injector).expect("engine");
            let sub = dir.path().join(format!("seed-{seed}"));
            std::fs::create_dir_all(&sub).expect("dir");
            let verdict =
                oracle::random_workload(&engine, &sub, injector.seed(), 200).expect("workload");
            let ok = verdict.violations.is_empty() && verdict.injected > 0;
            if ok {
                println!(
                    "{backend}: seed {:#x}: {} ops, {} faults injected, {} masked, {} surfaced",
                    injector.seed(),
                    verdict.ops,
                    verdict.injected,
                    verdict.masked,
                    verdict.surfaced
                );
            }
            record(
                ok,
                format!(
                    "{backend}: seed {:#x}: {:?}",
                    injector.seed(),
                    verdict.violations
                ),
            );
        }

        // The matrix: one planned fault on the first request of each kind.
        for fault in Fault::ALL {
            let mut cells = Vec::new();
            for kind in kinds {
                if !fault.applies_to(kind) {
                    cells.push("skip".to_string());
                    skipped += 1;
                    continue;
                }
                let injector = Injector::new(
                    7,
                    Plan::Explicit(vec![PlanEntry {
                        kind,
                        occurrence: 0,
                        fault,
                    }]),
                );
                let engine = faulty(backend, &injector).expect("engine");
                let sub = dir.path().join(format!("m-{}-{:?}", fault.name(), kind));
                std::fs::create_dir_all(&sub).expect("dir");
                let verdict = oracle::single(&engine, &sub, kind).expect("single");
                let ok = verdict.violations.is_empty() && verdict.injected >= 1;
                cells.push(if ok { "ok" } else { "FAIL" }.to_string());
                record(
                    ok,
                    format!(
                        "{backend} {} on {kind:?}: injected {}, {:?}",
                        fault.name(),
                        verdict.injected,
                        verdict.violations
                    ),
                );
            }
            matrix.push_str(&format!(
                "  {:<8} {:<8} {:>8} {:>8} {:>10} {:>9}\n",
                backend,
                fault.name(),
                cells[0],
                cells[1],
                cells[2],
                cells[3]
            ));
        }

        // The registry plugin.
        let name: &'static str = Box::leak(format!("faulty:{backend}").into_boxed_str());
        let _ = engine::registry::register(Arc::new(FaultyPlugin(name, backend)));
        let settings = Settings::parse([("ENGINE_BACKEND", name)], &Engine::backend_names())
            .expect("settings");
        let engine = Engine::from_settings(settings).expect("faulty plugin");
        record(
            engine.report().chosen.as_deref() == Some(name),
            format!("ENGINE_BACKEND={name} chose {:?}", engine.report().chosen),
        );
    }
    println!("skip cells: a fault that cannot hit that operation (no short or torn sync, no ENOSPC or torn read)");
    print!("{matrix}");
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        std::process::exit(1);
    }
}
