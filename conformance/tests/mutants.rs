//! The catalogue of seeded bugs: every mutant must be caught by the case list, the fault
//! oracle or the crash simulator, and the control (the same wrapper with no bug) must pass
//! them all, so a "catch" is the bug's doing and not the wrapper's. Each mutant is a trial
//! that passes when the mutant is caught, and prints what caught it.
//!
//! Two kinds: `Mutant<E>` wraps the sync engine and breaks one rule of the contract on the way
//! in or out ([`Bug`]); a [`Mutation`] seeds a bug inside the request bookkeeping of the kernel
//! backends themselves (io_uring and Linux AIO): a lost submission, a slot mix-up, a buffer
//! handed back before its data.

use std::sync::Arc;
use std::time::Duration;

use conformance::crash::{crash_config, crash_workload};
use conformance::faulty::{Fault, FaultyEngine, Injector, Plan};
use conformance::mutants::{Bug, Mutant};
use conformance::runner::{self, Outcome, Trial};
use conformance::{cases, oracle, quietly, run_case, Harness};
use engine::testing::Mutation;
use engine::{Engine, EngineConfig};

/// The real backend under the wrapper mutants.
const BASE: &str = "sync";
/// A hung case fails after this long (mutants that lose requests hang by design).
const TIMEOUT: Duration = Duration::from_secs(10);
const SEEDS: u64 = 5;

/// Runs the case list on engines from `make`; returns the first failure (case and message).
fn first_failing_case<E: engine::Backend + 'static>(
    name: &str,
    make: impl Fn(EngineConfig) -> engine::Result<E> + Send + Sync + 'static,
) -> Option<String> {
    let harness = Arc::new(Harness::new(name, Box::new(make)));
    for case in cases::all() {
        if let Outcome::Failed(message) = run_case(&harness, &case, TIMEOUT) {
            let first = message.lines().next().unwrap_or("").chars().take(160);
            return Some(format!(
                "case {} ({})",
                case.name,
                first.collect::<String>()
            ));
        }
    }
    None
}

/// The fault oracle on wrapper mutants over `BASE`; returns the first violation.
fn oracle_violation(bug: Bug) -> Option<String> {
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
                return Some(format!("the fault oracle, seed {seed} ({v})"));
            }
        }
    }
    None
}

/// The crash simulator on wrapper mutants over `BASE`; returns the first loss.
fn crash_loss(bug: Bug) -> Option<String> {
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
                return Some(format!("the crash simulator, seed {seed} ({loss})"));
            }
        }
    }
    None
}

/// What catches a wrapper mutant, if anything does.
fn caught_by(bug: Bug) -> Option<String> {
    let make =
        move |config: EngineConfig| Ok(Mutant::new(Engine::with_backend(BASE, config)?, bug));
    first_failing_case(&format!("mutant {bug:?}"), make)
        .or_else(|| oracle_violation(bug))
        .or_else(|| crash_loss(bug))
}

/// A trial that passes when `check` finds the mutant, printing what did.
fn mutant_trial(name: String, check: impl FnOnce() -> Option<String> + Send + 'static) -> Trial {
    Trial::new(
        "mutants",
        &name.clone(),
        Duration::from_secs(600),
        move || match quietly(check) {
            Some(by) => {
                println!("  mutant {name}: caught by {by}");
                Outcome::Passed
            }
            None => Outcome::Failed(format!("mutant {name} was NOT caught")),
        },
    )
}

fn main() {
    let mut all = Vec::new();
    // The control: the wrapper with no bug passes every check.
    all.push(Trial::new(
        "mutants",
        "control_without_a_bug_passes_every_check",
        Duration::from_secs(600),
        || match quietly(|| caught_by(Bug::None)) {
            None => Outcome::Passed,
            Some(by) => Outcome::Failed(format!("the control failed: {by}")),
        },
    ));
    for bug in Bug::ALL {
        all.push(mutant_trial(format!("{bug:?}"), move || caught_by(bug)));
    }
    let mutations = [
        ("lost_submission", Mutation::LoseSubmission(3)),
        ("slot_mix_up", Mutation::SwapCompletions),
        (
            "read_handed_back_before_its_data",
            Mutation::CompleteReadsAtPush,
        ),
    ];
    for backend in ["uring", "aio"] {
        for (name, mutation) in mutations {
            let trial_name = format!("{backend}_{name}");
            if let Err(e) = Engine::with_backend(backend, EngineConfig::default()) {
                let reason = format!("backend {backend} cannot run here: {e}");
                all.push(Trial::new("mutants", &trial_name, TIMEOUT, move || {
                    Outcome::Skipped(reason)
                }));
                continue;
            }
            all.push(mutant_trial(trial_name, move || {
                first_failing_case(&format!("{backend} {mutation:?}"), move |mut config| {
                    config.testing.mutation = Some(mutation);
                    Engine::with_backend(backend, config)
                })
            }));
        }
    }
    runner::run(all);
}
