//! The simulation's canary: with `--features canary` the Nomad backend's recovery forgets the
//! claim ledger (every recovered runner is reported idle), so a restarted Trident hands out
//! runners that clients still hold. The simulation must catch that within a fixed number of
//! seeds, or its invariants and fault mix have gone blind.
//!
//! `cargo test -p trident-sim --features canary --test canary` (run by `tests/run`).

#![cfg(feature = "canary")]

use std::time::Duration;

use trident_sim::harness::observatory::Invariant;
use trident_sim::harness::{SimConfig, run_seed};

/// Seeds the simulation gets to find the planted bug.
const SEEDS: u64 = 10;

#[test]
fn the_simulation_finds_the_planted_recovery_bug_within_ten_seeds() {
    let mut tried = Vec::new();
    for seed in 0..SEEDS {
        let outcome = run_seed(&SimConfig {
            duration: Duration::from_secs(300),
            ..SimConfig::new(seed)
        });
        let caught = outcome
            .violations
            .iter()
            .any(|violation| violation.invariant == Invariant::RunnerHandedOutOnce);
        if caught {
            println!("seed {seed} caught the planted bug after {tried:?} did not");
            return;
        }
        tried.push(seed);
    }
    panic!(
        "no seed of 0..{SEEDS} caught the planted bug: the simulation has gone blind to lost claims"
    );
}
