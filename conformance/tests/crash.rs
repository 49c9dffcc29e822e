//! The crash simulator on every backend (and the reference engine): random writes, syncs and
//! crashes under every policy; after each crash every acknowledged sector must hold its
//! acknowledged write or a later one. A negative control proves the check can fail.
//!
//! `CONFORMANCE_CRASH_SEEDS` sets the seeds per backend (default 6); a failure prints its seed.

use std::time::Duration;

use conformance::crash::{crash_config, crash_workload, CrashPolicy, CrashSim};
use conformance::runner::{self, Outcome, Trial};
use conformance::MemEngine;
use engine::{Engine, BUILTIN_BACKENDS};
use engine_core::{block_on, AlignedBuf, Backend, BackendExt, OpenOptions};

fn make(backend: &'static str) -> engine::Result<Box<dyn engine::DynBackend>> {
    if backend == "mem" {
        Ok(Box::new(MemEngine::new(crash_config())?))
    } else {
        Ok(Box::new(Engine::with_backend(backend, crash_config())?))
    }
}

/// The crash workload with `seed` on `backend`.
fn workload(backend: &'static str, seed: u64) -> Outcome {
    if let Err(e) = make(backend) {
        return Outcome::Skipped(format!("backend {backend} cannot run here: {e}"));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let report = crash_workload(&|| make(backend), dir.path(), seed, 80).expect("workload");
    if report.crashes == 0 {
        return Outcome::Failed(format!("seed {seed:#x}: no crash was simulated"));
    }
    if report.losses.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed(format!("seed {seed:#x}: {:?}", report.losses))
    }
}

/// Damages an acknowledged sector after a crash: verify must report exactly it.
fn negative_control() -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("control");
    std::fs::write(&path, vec![0u8; 4096]).expect("file");
    let sim = CrashSim::new(MemEngine::new(crash_config()).expect("mem"), 512);
    let file = sim
        .open(&path, &OpenOptions::new().read(true).write(true))
        .expect("open");
    let (written, _) = block_on(sim.write_all_at(
        &file,
        512,
        AlignedBuf::from_slice(&[7u8; 512], 512).expect("buf"),
    ));
    written.expect("write");
    block_on(sim.sync_data(&file)).expect("sync");
    drop(file);
    let ledger = sim.crash(CrashPolicy::DropAll, 1);
    let clean = ledger.verify().is_empty();
    let mut damaged = std::fs::read(&path).expect("read");
    damaged[700] ^= 0xFF;
    std::fs::write(&path, damaged).expect("damage");
    let losses = ledger.verify();
    if clean && losses.len() == 1 && losses[0].sector == 1 {
        Outcome::Passed
    } else {
        Outcome::Failed(format!("clean={clean} losses={losses:?}"))
    }
}

fn main() {
    let seeds: u64 = std::env::var("CONFORMANCE_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let mut backends: Vec<&'static str> = BUILTIN_BACKENDS.to_vec();
    backends.push("mem");
    let mut all = Vec::new();
    for backend in backends {
        for seed in 0..seeds {
            let seed = 0xC4A5_0000 + seed;
            all.push(Trial::new(
                &format!("crash:{backend}"),
                &format!("seed_{seed:x}"),
                Duration::from_secs(120),
                move || workload(backend, seed),
            ));
        }
    }
    all.push(Trial::new(
        "crash",
        "negative_control_reports_a_damaged_sector",
        Duration::from_secs(30),
        negative_control,
    ));
    runner::run(all);
}
