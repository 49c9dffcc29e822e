//! Fault injection on every backend: the fault matrix (backend x fault x operation kind),
//! randomized workloads checked by the oracle, the determinism of the injector, and the
//! `faulty:<backend>` registry plugins.
//!
//! `CONFORMANCE_FAULT_SEEDS` sets the seeds per backend (default 6); a failure prints its seed.

use std::sync::Arc;
use std::time::Duration;

use conformance::faulty::{Fault, FaultyEngine, Injector, Plan, PlanEntry};
use conformance::oracle;
use conformance::runner::{self, Outcome, Trial};
use engine::registry::{Diagnosis, Plugin, Probe};
use engine::{Engine, EngineConfig, Op, Settings, BUILTIN_BACKENDS};

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

impl Plugin for FaultyPlugin {
    fn name(&self) -> &'static str {
        self.0
    }
    fn probe(&self, config: &EngineConfig) -> Probe {
        match Engine::with_backend(self.1, config.clone()) {
            Ok(_) => Probe::Available(format!("{} with injected faults", self.1)),
            Err(e) => Probe::Unavailable(Diagnosis {
                errno: e.raw_os_error(),
                cause: e.to_string(),
                remedy: "use another backend".into(),
            }),
        }
    }
    fn create(&self, config: &EngineConfig) -> engine::Result<Box<dyn engine::DynBackend>> {
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

/// The same seed and workload give the same injection trace.
fn deterministic(backend: &'static str) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
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
    if traces[0] == traces[1] {
        Outcome::Passed
    } else {
        Outcome::Failed(format!("same seed, different traces {traces:x?}"))
    }
}

/// A randomized workload under the oracle.
fn oracle_seed(backend: &'static str, seed: u64) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let injector = Injector::new(seed, rates());
    let engine = faulty(backend, &injector).expect("engine");
    let verdict = oracle::random_workload(&engine, dir.path(), seed, 200).expect("workload");
    if verdict.injected == 0 {
        return Outcome::Failed(format!("seed {seed:#x}: nothing was injected"));
    }
    if verdict.violations.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed(format!("seed {seed:#x}: {:?}", verdict.violations))
    }
}

/// One planned fault on the first request of `op`.
fn matrix_cell(backend: &'static str, fault: Fault, op: Op) -> Outcome {
    if !fault.applies_to(op) {
        return Outcome::Skipped(format!(
            "{} cannot hit {op:?} (short transfers hit reads and writes, torn ones writes, ENOSPC neither reads nor metadata)",
            fault.name()
        ));
    }
    let injector = Injector::new(
        7,
        Plan::Explicit(vec![PlanEntry {
            op,
            occurrence: 0,
            fault,
        }]),
    );
    let engine = faulty(backend, &injector).expect("engine");
    let dir = tempfile::tempdir().expect("tempdir");
    let verdict = oracle::single(&engine, dir.path(), op).expect("single");
    if verdict.injected >= 1 && verdict.violations.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed(format!(
            "injected {}, {:?}",
            verdict.injected, verdict.violations
        ))
    }
}

/// `ENGINE_BACKEND=faulty:<backend>` chooses the registered plugin.
fn registry_plugin(backend: &'static str) -> Outcome {
    let name: &'static str = Box::leak(format!("faulty:{backend}").into_boxed_str());
    let _ = engine::registry::register(Arc::new(FaultyPlugin(name, backend)));
    let settings =
        Settings::parse([("ENGINE_BACKEND", name)], &Engine::backend_names()).expect("settings");
    let engine = Engine::from_settings(settings).expect("faulty plugin");
    let chosen = engine.report().chosen;
    if chosen.as_deref() == Some(name) {
        Outcome::Passed
    } else {
        Outcome::Failed(format!("ENGINE_BACKEND={name} chose {chosen:?}"))
    }
}

fn main() {
    let seeds: u64 = std::env::var("CONFORMANCE_FAULT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let mut all = Vec::new();
    let minutes = Duration::from_secs(120);
    for backend in BUILTIN_BACKENDS {
        let group = format!("faults:{backend}");
        if let Err(e) = Engine::with_backend(backend, config()) {
            let reason = format!("backend {backend} cannot run here: {e}");
            all.push(Trial::new(&group, "all", minutes, move || {
                Outcome::Skipped(reason)
            }));
            continue;
        }
        all.push(Trial::new(
            &group,
            "same_seed_same_trace",
            minutes,
            move || deterministic(backend),
        ));
        for seed in 0..seeds {
            let seed = 0x5EED_0000 + seed;
            all.push(Trial::new(
                &group,
                &format!("oracle_seed_{seed:x}"),
                minutes,
                move || oracle_seed(backend, seed),
            ));
        }
        for fault in Fault::ALL {
            for op in Op::IO {
                all.push(Trial::new(
                    &group,
                    &format!("matrix_{}_{op:?}", fault.name()).to_lowercase(),
                    minutes,
                    move || matrix_cell(backend, fault, op),
                ));
            }
        }
        all.push(Trial::new(&group, "registry_plugin", minutes, move || {
            registry_plugin(backend)
        }));
    }
    runner::run(all);
}
