//! Property tests: random sequences of every input the manager takes — requests, effect
//! outcomes, duplicated, reordered and stale observations, fresh and stale inventories,
//! restarts — against a reference model and a client ledger, with `check_invariants()` after
//! every step and a liveness check at the end. See `harness/mod.rs`.
//!
//! `PROPTEST_CASES` raises the case count (1,000 by default); failures shrink and are saved in
//! `proptest-regressions/`, which is committed and replayed first.

#![cfg(not(feature = "canary"))]

mod harness;

use harness::ManagerTest;
use proptest::test_runner::Config;
use proptest_state_machine::prop_state_machine;

prop_state_machine! {
    #![proptest_config(Config {
        cases: harness::cases(),
        max_shrink_iters: 20_000,
        .. Config::default()
    })]

    #[test]
    fn the_manager_keeps_its_promises_under_any_sequence_of_inputs(
        sequential 1..120 => ManagerTest
    );
}
