//! The simulation harness as ordinary tests: a seed's trace is the same on every run, seeds
//! differ, faults fire and are counted, and a calm run heals.
//!
//! The smoke run over hundreds of seeds, the cross-process determinism check and the regression
//! seeds run from `tests/run` with the release binary (`trident-sim --seeds …`); these tests
//! keep to short seeds so the debug build stays quick.

use std::sync::Mutex;
use std::time::Duration;

use trident_sim::harness::faults::FaultKind;
use trident_sim::harness::{SeedOutcome, SimConfig};

/// One seed at a time in this process: a run's trace depends on tokio's process-wide task ids
/// (`run_seed` aligns the counter first), and a seed running on another test thread would take
/// ids in the middle of it.
static ONE_SEED_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run_seed(config: &SimConfig) -> SeedOutcome {
    let _alone = ONE_SEED_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    trident_sim::harness::run_seed(config)
}

fn short(seed: u64) -> SimConfig {
    SimConfig {
        duration: Duration::from_secs(90),
        ..SimConfig::new(seed)
    }
}

#[test]
fn a_seed_replays_to_the_same_trace_in_one_process() {
    let config = short(11);
    let first = run_seed(&config);
    let second = run_seed(&config);
    assert!(
        first.trace_lines > 30,
        "the trace records the run: {} lines",
        first.trace_lines
    );
    assert_eq!(
        (first.trace_hash, first.trace_lines, first.steps),
        (second.trace_hash, second.trace_lines, second.steps),
        "same seed, same trace"
    );
    assert_eq!(first.fired, second.fired);
}

#[test]
fn different_seeds_take_different_paths() {
    let hashes: Vec<u64> = (20..23)
        .map(|seed| run_seed(&short(seed)).trace_hash)
        .collect();
    assert_ne!(hashes[0], hashes[1]);
    assert_ne!(hashes[1], hashes[2]);
}

#[test]
fn without_faults_every_invariant_holds_and_the_pools_heal_at_once() {
    let outcome = run_seed(&SimConfig {
        faults: Vec::new(),
        ..short(5)
    });
    assert!(
        outcome.fired.values().all(|count| *count == 0),
        "{:?}",
        outcome.fired
    );
    assert!(
        outcome.passed(),
        "{:?} {:?}",
        outcome.violations,
        outcome.error
    );
    assert!(
        outcome.counters.claims > 5 && outcome.counters.executions > 5,
        "the workload did its work: {:?}",
        outcome.counters
    );
    assert!(
        outcome
            .healed_after
            .is_some_and(|after| after < Duration::from_secs(30)),
        "a calm run heals within seconds of its workload ending: {:?}",
        outcome.healed_after
    );
}

#[test]
fn a_restricted_fault_list_fires_only_those_kinds() {
    let kinds = [FaultKind::TridentRestart, FaultKind::StreamDisconnect];
    let mut fired = 0;
    for seed in 0..6 {
        let outcome = run_seed(&SimConfig {
            faults: kinds.to_vec(),
            ..short(seed)
        });
        for (kind, count) in &outcome.fired {
            assert!(
                kinds.contains(kind) || *count == 0,
                "{kind} fired {count} times"
            );
            fired += count;
        }
    }
    assert!(fired > 0, "some seed fired one of the kinds");
}
