//! The catalogue of seeded bugs: every mutant must be caught by the case list, the fault
//! oracle or the crash simulator. Prints, per mutant, what caught it and after how many
//! seeds, and ends with `mutants caught: <caught>/<total>`.

use std::sync::Arc;
use std::time::Duration;

use conformance::crash::{crash_config, crash_workload};
use conformance::faulty::{Fault, FaultyEngine, Injector, Plan};
use conformance::mutants::{Bug, Mutant};
use conformance::{cases, oracle, quietly, run_case, CaseOutcome, Harness};
use engine::{Engine, EngineConfig};

/// The real backend under the mutants.
const BASE: &str = "sync";
/// A hung case fails after this long (mutants that lose requests hang by design).
const TIMEOUT: Duration = Duration::from_secs(10);
const SEEDS: u64 = 5;

fn caught_by(bug: Bug) -> Option<(String, u64)> {
    let harness = Arc::new(Harness::new(
        &format!("mutant {bug:?}"),
        Box::new(move |config: EngineConfig| {
            Ok(Mutant::new(Engine::with_backend(BASE, config)?, bug))
        }),
    ));
    for case in cases::all() {
        if let CaseOutcome::Failed(message) = run_case(&harness, &case, TIMEOUT) {
            return Some((
                format!(
                    "case {} ({})",
                    case.name,
                    message.lines().next().unwrap_or("")
                ),
                1,
            ));
        }
    }
    for seed in 0..SEEDS {
        let injector = Injector::new(
            seed,
            Plan::Rates(vec![
                (Fault::Eio, 0.05),
                (Fault::Short, 0.1),
                (Fault::Eintr, 0.05),
            ]),
        );
        let config = EngineConfig {
            queue_depth: 16,
            threads: 4,
            ..EngineConfig::default()
        };
        let Ok(engine) = FaultyEngine::new(
            |c| Ok(Mutant::new(Engine::with_backend(BASE, c)?, bug)),
            config,
            &injector,
            false,
        ) else {
            continue;
        };
        let dir = tempfile::tempdir().ok()?;
        if let Ok(verdict) = oracle::random_workload(&engine, dir.path(), seed, 150) {
            if let Some(v) = verdict.violations.first() {
                return Some((format!("the fault oracle ({v})"), seed + 1));
            }
        }
    }
    for seed in 0..SEEDS {
        let dir = tempfile::tempdir().ok()?;
        let make = move || {
            Ok(Mutant::new(
                Engine::with_backend(BASE, crash_config())?,
                bug,
            ))
        };
        if let Ok(report) = crash_workload(&make, dir.path(), seed, 60) {
            if let Some(loss) = report.losses.first() {
                return Some((format!("the crash simulator ({loss})"), seed + 1));
            }
        }
    }
    None
}

fn main() {
    let mut caught = 0;
    quietly(|| {
        for bug in Bug::ALL {
            match caught_by(bug) {
                Some((check, seeds)) => {
                    caught += 1;
                    let check: String = check.chars().take(200).collect();
                    println!("mutant {bug:?}: caught by {check} after {seeds} seed(s)");
                }
                None => println!("mutant {bug:?}: NOT caught"),
            }
        }
    });
    let total = Bug::ALL.len();
    if caught == total {
        println!("{caught} passed, 0 failed");
    } else {
        println!("{caught} passed, {} failed", total - caught);
    }
    println!("mutants caught: {caught}/{total}");
    if caught != total {
        std::process::exit(1);
    }
}
