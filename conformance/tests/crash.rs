//! The crash simulator on every backend (and the reference engine): random writes, syncs and
//! crashes under every policy; after each crash every acknowledged sector must hold its
//! acknowledged write or a later one. A negative control proves the check can fail.
//!
//! `CONFORMANCE_CRASH_SEEDS` sets the seeds per backend (default 6); a failure prints its seed.

use conformance::crash::{crash_config, crash_workload, CrashPolicy, CrashSim};
use conformance::MemEngine;
use engine::{Engine, BUILTIN_BACKENDS};
use engine_core::{block_on, AlignedBuf, Engine as _, EngineExt, OpenOptions};

fn main() {
    let seeds: u64 = std::env::var("CONFORMANCE_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let (mut passed, mut failed, mut skipped) = (0usize, 0usize, 0usize);
    let mut backends: Vec<&str> = BUILTIN_BACKENDS.to_vec();
    backends.push("mem");
    for backend in backends {
        let make = move || -> engine::Result<Box<dyn engine::DynEngine>> {
            if backend == "mem" {
                Ok(Box::new(MemEngine::new(crash_config())?))
            } else {
                Ok(Box::new(Engine::with_backend(backend, crash_config())?))
            }
        };
        if make().is_err() {
            println!("skipped backend {backend}: not available here");
            skipped += 1;
            continue;
        }
        for seed in 0..seeds {
            let dir = tempfile::tempdir().expect("tempdir");
            let seed = 0xC4A5_0000 + seed;
            let report = crash_workload(&make, dir.path(), seed, 80).expect("workload");
            if report.losses.is_empty() && report.crashes > 0 {
                passed += 1;
                println!(
                    "{backend}: seed {seed:#x}: {} crashes, {} acknowledged sectors intact",
                    report.crashes, report.acknowledged
                );
            } else {
                failed += 1;
                println!("FAIL {backend}: seed {seed:#x}: {:?}", report.losses);
            }
        }
    }

    // Negative control: damage an acknowledged sector after a crash; verify must see it.
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
        passed += 1;
        println!("negative control: a damaged acknowledged sector is reported");
    } else {
        failed += 1;
        println!("FAIL negative control: clean={clean} losses={losses:?}");
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        std::process::exit(1);
    }
}
