//! `check_invariants`: what must hold after every call. Debug builds assert it after each public
//! method; the property tests, the fuzzers and the simulation call it after every step.
//!
//! Where the manager keeps derived state for speed (the timer set), the check recomputes it from
//! the states and compares: the pair assertion of TigerBeetle's style.

use std::collections::{BTreeMap, BTreeSet};

use super::{Manager, Registration, RunnerState, Timer};
use crate::ids::{Lease, RunnerId};
use crate::io::Effect;
use crate::time::Timestamp;

/// A broken invariant: which one, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {detail}")]
pub struct InvariantViolation {
    /// The invariant's short name.
    pub name: &'static str,
    /// What was found.
    pub detail: String,
}

fn violation(name: &'static str, detail: String) -> Result<(), InvariantViolation> {
    Err(InvariantViolation { name, detail })
}

impl Manager {
    /// Checks every invariant and reports the first one broken:
    /// - `runner-of-deleted-environment`: a runner of an unknown environment is only ever stopping;
    /// - `lease-unique`: no two claimed runners hold the same lease;
    /// - `lease-issued-once`: every held lease was issued before (`< next_lease`), so the
    ///   counter never hands it out again;
    /// - `pool-bound`: per environment, current-spec idle + starting ≤ target, and idle of any
    ///   spec ≤ target (runners being stopped do not count);
    /// - `inactivity-deadline`: a claimed runner has a deadline iff it asked for a timeout, and
    ///   the timeout is not zero;
    /// - `executions-bound`: open executions per runner within the configured maximum;
    /// - `stop-attempts`: a stopping runner has made between 1 and the maximum attempts;
    /// - `timers-derived`: the timer set is exactly what the states imply;
    /// - `pool-counts-derived`: each environment's cached counts are what a scan counts;
    /// - `effect-names-known-runner`: every queued effect names a runner the manager knows, in
    ///   the state the effect implies (start → starting, stop → stopping);
    /// - `tombstone-not-live`: a runner remembered as removed is not also live; the tombstone
    ///   bound holds;
    /// - `unknown-ups`: "up" reports remembered for the next inventory are bounded and name only
    ///   runners the manager does not know;
    /// - `generation-order`: an environment's ready generation never runs ahead of its current.
    ///
    /// Each runner has exactly one state by construction (one enum value per map entry), and
    /// idle runners hold no lease by construction (the idle state has no lease field).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.check_runners()?;
        self.check_pools()?;
        self.check_timers()?;
        self.check_effects()?;
        self.check_tombstones()?;
        self.check_environments()
    }

    fn check_runners(&self) -> Result<(), InvariantViolation> {
        let mut leases: BTreeMap<Lease, RunnerId> = BTreeMap::new();
        for (id, runner) in &self.runners {
            let environment_known = self.environments.contains_key(&id.environment());
            match &runner.state {
                RunnerState::Stopping { attempts, .. } => {
                    if *attempts == 0 || *attempts > self.config.stop_attempts_max {
                        return violation("stop-attempts", format!("{id} at attempt {attempts}"));
                    }
                }
                state if !environment_known => {
                    return violation(
                        "runner-of-deleted-environment",
                        format!("{id} is {}", state_name(state)),
                    );
                }
                RunnerState::Claimed(claim) => {
                    if let Some(other) = leases.insert(claim.lease, *id) {
                        return violation(
                            "lease-unique",
                            format!("{} held by {other} and {id}", claim.lease),
                        );
                    }
                    if claim.lease.0 >= self.next_lease {
                        return violation(
                            "lease-issued-once",
                            format!("{id} holds {} but next is {}", claim.lease, self.next_lease),
                        );
                    }
                    if claim.inactivity.is_some_and(|i| i.timeout.is_zero()) {
                        return violation(
                            "inactivity-deadline",
                            format!("{id} has a zero timeout"),
                        );
                    }
                    if claim.executions.len() > self.config.executions_per_runner_max {
                        return violation(
                            "executions-bound",
                            format!("{id} has {} executions", claim.executions.len()),
                        );
                    }
                }
                RunnerState::Starting { .. } | RunnerState::Idle { .. } => {}
            }
        }
        Ok(())
    }

    fn check_pools(&self) -> Result<(), InvariantViolation> {
        for (id, environment) in &self.environments {
            let counted = self.count_pool(*id, environment.generation);
            if counted != environment.counts {
                return violation(
                    "pool-counts-derived",
                    format!(
                        "environment {id}: cached {:?}, counted {counted:?}",
                        environment.counts
                    ),
                );
            }
            let scan = self.pool_scan(*id, environment.generation);
            let target = environment.spec.prewarming_pool_size as usize;
            let current = scan.idle_current.len() + scan.starting_current.len();
            let idle = scan.idle_current.len() + scan.idle_old.len();
            if current > target || idle > target {
                return violation(
                    "pool-bound",
                    format!(
                        "environment {id}: target {target}, idle {idle} ({} current), starting {}",
                        scan.idle_current.len(),
                        scan.starting_current.len()
                    ),
                );
            }
        }
        Ok(())
    }

    fn check_timers(&self) -> Result<(), InvariantViolation> {
        let mut expected: BTreeSet<(Timestamp, Timer)> = BTreeSet::new();
        for (id, runner) in &self.runners {
            if let Some(deadline) = runner.deadline() {
                expected.insert((deadline, Timer::Runner(*id)));
            }
        }
        for (id, environment) in &self.environments {
            if let Some(deadline) = environment.deadline() {
                expected.insert((deadline, Timer::Environment(*id)));
            }
        }
        if let Some(at) = self.next_reconcile {
            expected.insert((at, Timer::Reconcile));
        }
        if let Some((removed_at, _)) = self.tombstone_order.front() {
            expected.insert((*removed_at + self.config.tombstone_ttl, Timer::Tombstones));
        }
        if expected != self.timers {
            let missing: Vec<_> = expected.difference(&self.timers).take(3).collect();
            let extra: Vec<_> = self.timers.difference(&expected).take(3).collect();
            return violation(
                "timers-derived",
                format!("missing {missing:?}, unexpected {extra:?}"),
            );
        }
        Ok(())
    }

    fn check_effects(&self) -> Result<(), InvariantViolation> {
        for effect in &self.effects {
            let Some(id) = effect.runner() else {
                continue;
            };
            let Some(runner) = self.runners.get(&id) else {
                return violation(
                    "effect-names-known-runner",
                    format!("{effect:?} names an unknown runner"),
                );
            };
            let consistent = match effect {
                // A start may be followed in the same call by a stop (a surplus, a delete).
                Effect::StartRunner { .. } => !matches!(
                    runner.state,
                    RunnerState::Idle { .. } | RunnerState::Claimed(_)
                ),
                Effect::StopRunner { .. } => matches!(runner.state, RunnerState::Stopping { .. }),
                _ => true,
            };
            if !consistent {
                return violation(
                    "effect-names-known-runner",
                    format!("{effect:?} but {id} is {}", state_name(&runner.state)),
                );
            }
        }
        Ok(())
    }

    fn check_tombstones(&self) -> Result<(), InvariantViolation> {
        if self.unknown_ups.len() > super::UNKNOWN_UPS_MAX
            || self
                .unknown_ups
                .keys()
                .any(|id| self.runners.contains_key(id))
        {
            return violation(
                "unknown-ups",
                format!(
                    "{} remembered reports, some about known runners",
                    self.unknown_ups.len()
                ),
            );
        }
        if let Some(id) = self
            .tombstones
            .keys()
            .find(|id| self.runners.contains_key(id))
        {
            return violation("tombstone-not-live", format!("{id} is removed and live"));
        }
        if self.tombstone_order.len() > self.config.tombstones_max
            || self.tombstones.len() > self.tombstone_order.len()
        {
            return violation(
                "tombstone-not-live",
                format!(
                    "{} tombstones, {} in order, bound {}",
                    self.tombstones.len(),
                    self.tombstone_order.len(),
                    self.config.tombstones_max
                ),
            );
        }
        Ok(())
    }

    fn check_environments(&self) -> Result<(), InvariantViolation> {
        for (id, environment) in &self.environments {
            if environment
                .ready_generation
                .is_some_and(|ready| ready > environment.generation)
            {
                return violation("generation-order", format!("environment {id}"));
            }
            if environment.registration == Registration::Done && environment.registered_at.is_none()
            {
                return violation("generation-order", format!("environment {id} has no time"));
            }
        }
        Ok(())
    }
}

fn state_name(state: &RunnerState) -> &'static str {
    match state {
        RunnerState::Starting { .. } => "starting",
        RunnerState::Idle { .. } => "idle",
        RunnerState::Claimed(_) => "claimed",
        RunnerState::Stopping { .. } => "stopping",
    }
}
