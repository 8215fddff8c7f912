//! Reconciliation: diffing the backend's [`Inventory`] against the manager's view.
//!
//! The rule in one line: **for runners the manager knows, its own view of claims wins; for
//! runners it does not know, the backend's persisted claim marks decide.** A claim made just
//! before a resync is therefore never undone by an inventory that still says "idle" (Poseidon's
//! claim-vs-recovery race), and a claim made by a previous incarnation survives a restart.
//!
//! Inventories are snapshots and may be stale: a runner the manager learnt of at or after
//! `as_of` may be missing without being gone, and a runner removed after `as_of` may still be
//! listed without being back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{
    Claim, Environment, Inactivity, Manager, PoolCounts, Registration, Runner, RunnerState,
};
use crate::ids::{Lease, RunnerId};
use crate::io::{
    ClaimMark, DownCause, Effect, Inventory, InventoryRunner, InventoryStatus, LeaseEndCause,
    RunnerMark,
};
use crate::time::Timestamp;

impl Manager {
    /// Reconciles with the backend's full view:
    /// - environments the backend has and the manager does not are adopted; environments the
    ///   manager had registered before `as_of` and the backend lost (or holds with another spec)
    ///   are registered again;
    /// - unknown runners of known environments are adopted (claimed ones with their persisted
    ///   lease and a fresh inactivity deadline), unknown runners of unknown environments and
    ///   runners remembered as removed are stopped;
    /// - runners the backend no longer has are dropped, their leases ended;
    /// - known runners keep the manager's view of their claim, and a mark that disagrees is
    ///   written again.
    pub fn reconcile(&mut self, now: Timestamp, inventory: Inventory) {
        let now = self.advance(now);
        self.inventory_requested_at = None;
        let as_of = inventory.as_of.min(now);

        self.reconcile_environments(now, as_of, &inventory);

        let listed: BTreeSet<RunnerId> = inventory.runners.iter().map(|runner| runner.id).collect();
        let mut held_leases: BTreeSet<Lease> = self
            .runners
            .values()
            .filter_map(|runner| match &runner.state {
                RunnerState::Claimed(claim) => Some(claim.lease),
                _ => None,
            })
            .collect();
        // Every lease persisted anywhere in the inventory was issued: lift the counter above it
        // before anything else, whatever becomes of the runner (stopped, dropped, adopted).
        // Leases from `Lease::MAX` up were never issued; their runners are stopped below.
        for listed_runner in &inventory.runners {
            if let RunnerMark::Claimed(mark) = listed_runner.mark
                && mark.lease < Lease::MAX
            {
                self.next_lease = self.next_lease.max(mark.lease.0 + 1);
            }
        }
        for listed_runner in inventory.runners {
            if self.runners.contains_key(&listed_runner.id) {
                self.reconcile_known(now, listed_runner);
            } else {
                self.reconcile_unknown(now, as_of, listed_runner, &mut held_leases);
            }
        }

        let missing: Vec<RunnerId> = self
            .runners
            .iter()
            .filter(|(id, runner)| !listed.contains(id) && runner.known_since < as_of)
            .map(|(id, _)| *id)
            .collect();
        for runner in missing {
            self.end_lease(runner, LeaseEndCause::MissingFromInventory);
            self.remove_runner(now, runner);
        }

        let environments: Vec<_> = self.environments.keys().copied().collect();
        for environment in environments {
            self.upkeep(now, environment);
        }
        // Every report newer than this inventory has been used; older ones it covers.
        self.unknown_ups.clear();
        self.debug_check();
    }

    fn reconcile_environments(&mut self, now: Timestamp, as_of: Timestamp, inventory: &Inventory) {
        let listed: BTreeMap<_, _> = inventory
            .environments
            .iter()
            .map(|(id, spec)| (*id, spec))
            .collect();
        self.prune_deleted_environments(now);
        for (id, spec) in &listed {
            if self.environments.contains_key(id) {
                continue;
            }
            match self.deleted_environments.get(id) {
                // Deleted after the snapshot was taken: the listing is stale.
                Some(deleted_at) if *deleted_at >= as_of => continue,
                // Deleted before, yet still there: the removal did not take. Repeat it.
                Some(_) => {
                    self.effects
                        .push_back(Effect::RemoveEnvironment { id: *id });
                    continue;
                }
                None => {}
            }
            if spec.validate().is_err() || self.environments.len() >= self.config.environments_max {
                continue;
            }
            self.insert_environment(
                *id,
                Environment {
                    spec: std::sync::Arc::new((*spec).clone()),
                    version: 1,
                    generation: 1,
                    registration: Registration::Done,
                    ready_generation: Some(1),
                    registered_at: Some(now),
                    failures: 0,
                    backoff_until: None,
                    counts: PoolCounts::default(),
                },
            );
        }
        let lost: Vec<_> = self
            .environments
            .iter()
            .filter(|(id, environment)| {
                environment.registration == Registration::Done
                    && environment.registered_at.is_some_and(|at| at < as_of)
                    && listed
                        .get(id)
                        .is_none_or(|spec| **spec != *environment.spec)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.update_environment(id, |environment| {
                environment.version += 1;
                environment.registration = Registration::InFlight;
            });
            self.push_register(id);
        }
    }

    fn reconcile_known(&mut self, now: Timestamp, listed: InventoryRunner) {
        let id = listed.id;
        let Some(runner) = self.runners.get(&id) else {
            return;
        };
        match (&runner.state, listed.status) {
            (RunnerState::Starting { clear_mark, .. }, InventoryStatus::Running(ports)) => {
                // The "up" was missed. A mark can only be stale: this manager did not claim it.
                if *clear_mark || listed.mark != RunnerMark::Idle {
                    self.effects.push_back(Effect::MarkRunner {
                        runner: id,
                        mark: RunnerMark::Idle,
                    });
                }
                self.update_runner(id, |state| *state = RunnerState::Idle { ports });
                self.update_environment(id.environment(), |environment| {
                    environment.failures = 0;
                    environment.backoff_until = None;
                });
            }
            (RunnerState::Starting { .. }, InventoryStatus::Pending) => {}
            // The events that said so were missed; what follows is what they would have done
            // (`Manager::runner_down`): purge it, and back off as after any failed start.
            (RunnerState::Starting { .. }, InventoryStatus::Failed) => {
                self.begin_stop(id, LeaseEndCause::Backend(DownCause::FailedToStart));
                self.record_start_failure(now, id.environment());
            }
            (RunnerState::Idle { .. } | RunnerState::Claimed(_), InventoryStatus::Failed) => {
                self.begin_stop(id, LeaseEndCause::Backend(DownCause::Lost));
            }
            (RunnerState::Idle { .. }, status) => {
                if listed.mark != RunnerMark::Idle {
                    self.effects.push_back(Effect::MarkRunner {
                        runner: id,
                        mark: RunnerMark::Idle,
                    });
                }
                if let InventoryStatus::Running(ports) = status {
                    self.update_runner(id, |state| *state = RunnerState::Idle { ports });
                }
            }
            (RunnerState::Claimed(claim), status) => {
                let mark = ClaimMark {
                    lease: claim.lease,
                    inactivity_timeout: claim.inactivity.map(|inactivity| inactivity.timeout),
                };
                if listed.mark != RunnerMark::Claimed(mark) {
                    self.effects.push_back(Effect::MarkRunner {
                        runner: id,
                        mark: RunnerMark::Claimed(mark),
                    });
                }
                if let InventoryStatus::Running(ports) = status {
                    self.update_claim(id, |claim| claim.ports = ports);
                }
            }
            (RunnerState::Stopping { .. }, _) => {
                // A stop is in flight or waits for its retry; it will be reported.
            }
        }
    }

    fn reconcile_unknown(
        &mut self,
        now: Timestamp,
        as_of: Timestamp,
        listed: InventoryRunner,
        held_leases: &mut BTreeSet<Lease>,
    ) {
        let id = listed.id;
        let removed_at = self.tombstones.get(&id).copied();
        if removed_at.is_some_and(|removed_at| removed_at >= as_of) {
            // Removed after the snapshot was taken: the listing is stale.
            return;
        }
        // Listed after its removal: whatever follows, it is live again.
        self.tombstones.remove(&id);
        let Some(generation) = self
            .environments
            .get(&id.environment())
            .map(|e| e.generation)
        else {
            self.adopt(id, 0, now, stopping());
            self.effects.push_back(Effect::StopRunner { runner: id });
            return;
        };
        if removed_at.is_some() {
            // Removed before the snapshot, yet still there: a stop that did not take, or a
            // replacement the manager does not want. Purge it and let the pool start fresh.
            self.adopt(id, generation, now, stopping());
            self.effects.push_back(Effect::StopRunner { runner: id });
            return;
        }
        let claim = match listed.mark {
            RunnerMark::Idle => None,
            RunnerMark::Claimed(mark) if mark.lease < Lease::MAX => Some(mark),
            // A lease no manager issued: the mark is corrupt and whoever wrote it may use the
            // runner. Stopped like a retired one, never handed out.
            RunnerMark::Claimed(_) | RunnerMark::Retired => {
                // Dirty and given up on by an earlier manager: finish the job.
                self.adopt(id, generation, now, stopping());
                self.effects.push_back(Effect::StopRunner { runner: id });
                return;
            }
        };
        let state = match (listed.status, claim) {
            (InventoryStatus::Running(ports), Some(mark)) => {
                let lease = if held_leases.contains(&mark.lease) {
                    // Two runners persisted with one lease: the backend's marks are corrupt.
                    // Keep both claimed (someone may hold either) but never share a lease.
                    let fresh = self.issue_lease();
                    self.effects.push_back(Effect::MarkRunner {
                        runner: id,
                        mark: RunnerMark::Claimed(ClaimMark {
                            lease: fresh,
                            inactivity_timeout: mark.inactivity_timeout,
                        }),
                    });
                    fresh
                } else {
                    mark.lease
                };
                held_leases.insert(lease);
                let inactivity = mark
                    .inactivity_timeout
                    .filter(|timeout| !timeout.is_zero())
                    .map(|timeout: Duration| Inactivity {
                        timeout,
                        deadline: now + timeout,
                    });
                RunnerState::Claimed(Box::new(Claim {
                    lease,
                    ports,
                    inactivity,
                    executions: BTreeSet::new(),
                }))
            }
            (InventoryStatus::Running(ports), None) => RunnerState::Idle { ports },
            (InventoryStatus::Pending, Some(_)) => {
                // Claimed, and restarting (or restarted) since: as for a claimed runner that
                // goes down, its id is its holder's capability, so it is stopped, never put back
                // into the pool (the simulation found it handed to a second client this way).
                self.unknown_ups.remove(&id);
                self.adopt(id, generation, now, stopping());
                self.effects.push_back(Effect::StopRunner { runner: id });
                return;
            }
            (InventoryStatus::Failed, Some(_)) => {
                // Claimed and never to run again: stopped, as a claimed runner that went down.
                self.unknown_ups.remove(&id);
                self.adopt(id, generation, now, stopping());
                self.effects.push_back(Effect::StopRunner { runner: id });
                return;
            }
            (InventoryStatus::Failed, None) => match self.unknown_ups.remove(&id) {
                // Reported up after this snapshot was taken (placed once the cluster had room):
                // the report is newer.
                Some((reported_at, ports)) if reported_at >= as_of => RunnerState::Idle { ports },
                // A start an earlier manager made that failed unseen: purge what is left.
                _ => {
                    self.adopt(id, generation, now, stopping());
                    self.effects.push_back(Effect::StopRunner { runner: id });
                    return;
                }
            },
            (InventoryStatus::Pending, None) => {
                match self.unknown_ups.remove(&id) {
                    // The backend reported it up after this snapshot was taken: it is up.
                    Some((reported_at, ports)) if reported_at >= as_of => {
                        RunnerState::Idle { ports }
                    }
                    _ => RunnerState::Starting {
                        deadline: now + self.config.start_timeout,
                        clear_mark: false,
                    },
                }
            }
        };
        self.adopt(id, generation, now, state);
    }

    fn adopt(&mut self, id: RunnerId, generation: u64, now: Timestamp, state: RunnerState) {
        self.insert_runner(
            id,
            Runner {
                generation,
                known_since: now,
                state,
            },
        );
    }
}

fn stopping() -> RunnerState {
    RunnerState::Stopping {
        attempts: 1,
        retry_at: None,
        // Adopted only to be stopped; should its stop fail, reconciliation finds it again.
        dirty: false,
    }
}
