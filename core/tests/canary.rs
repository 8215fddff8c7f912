//! Proof that the property suite has teeth: with the `canary` feature, the manager carries a
//! planted bug (a duplicated "runner up" puts a claimed runner back into the idle pool,
//! Poseidon's issue #321), and the suite must catch it.
//!
//! Run with `cargo test -p trident-core --features canary --test canary`.

#![cfg(feature = "canary")]

mod harness;

use proptest::test_runner::{Config, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};

#[test]
fn the_property_suite_catches_the_planted_bug() {
    let config = Config {
        cases: harness::cases(),
        // The canary's failures must not land in the committed regression file.
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = harness::ModelMachine::sequential_strategy(1..120);
    let result = runner.run(&strategy, |(initial, transitions, seen_counter)| {
        harness::ManagerTest::test_sequential(
            Default::default(),
            initial,
            transitions,
            seen_counter,
        );
        Ok(())
    });
    let failure = result.expect_err("the planted bug went unnoticed");
    let message = failure.to_string();
    eprintln!("caught: {message}");
    assert!(
        message.contains("handed to two clients")
            || message.contains("claims and the clients' ledger differ"),
        "caught, but for another reason: {message}"
    );
}
