//! One test per transition, named by the behaviour it pins. Debug builds check every invariant
//! after every call, so each test also checks the invariants along its way.

use std::time::Duration;

use super::*;
use crate::RunnerMark;
use crate::ids::{SeededIds, Uuid};
use crate::io::{Inventory, InventoryRunner, InventoryStatus};

const ENV: EnvironmentId = EnvironmentId(10);

fn spec(pool: u32) -> EnvironmentSpec {
    EnvironmentSpec {
        prewarming_pool_size: pool,
        cpu_limit: 20,
        memory_limit: 256,
        image: "python:3.12".into(),
        network_access: false,
        exposed_ports: vec![],
    }
}

fn ports(port: u16) -> Vec<MappedPort> {
    vec![MappedPort {
        exposed_port: port,
        host_address: format!("10.0.0.1:{}", 20_000 + port),
    }]
}

fn config() -> ManagerConfig {
    ManagerConfig {
        starts_in_flight_max: 3,
        reconcile_interval: None,
        ..ManagerConfig::default()
    }
}

/// A manager plus a clock and the effects it has issued so far.
struct Fixture {
    manager: Manager,
    now: Timestamp,
    effects: Vec<Effect>,
    events: Vec<Event>,
}

impl Fixture {
    fn new() -> Self {
        Self::with(config())
    }

    fn with(config: ManagerConfig) -> Self {
        let mut fixture = Self {
            manager: Manager::new(config, Box::new(SeededIds::new(1))),
            now: Timestamp::ZERO,
            effects: vec![],
            events: vec![],
        };
        // The initial inventory request of a fresh manager.
        assert_eq!(fixture.drain(), vec![Effect::RequestInventory]);
        fixture
    }

    fn drain(&mut self) -> Vec<Effect> {
        let mut drained = vec![];
        while let Some(effect) = self.manager.poll_effect() {
            drained.push(effect);
        }
        while let Some(event) = self.manager.poll_event() {
            self.events.push(event);
        }
        self.effects.extend(drained.iter().cloned());
        drained
    }

    fn advance(&mut self, duration: Duration) {
        self.now = self.now + duration;
        self.manager.handle_timeout(self.now);
    }

    /// Puts an environment, registers it, and returns the runners it started.
    fn environment(&mut self, pool: u32) -> Vec<RunnerId> {
        assert_eq!(
            self.manager.put_environment(self.now, ENV, spec(pool)),
            Ok(PutOutcome::Created)
        );
        self.register_all()
    }

    /// Registers every environment whose registration was issued; returns the runners started.
    fn register_all(&mut self) -> Vec<RunnerId> {
        let mut started = vec![];
        let mut pending = self.drain();
        while !pending.is_empty() {
            let mut next = vec![];
            for effect in pending {
                match effect {
                    Effect::RegisterEnvironment { id, version, .. } => {
                        self.manager
                            .environment_registered(self.now, id, version, true);
                        next.extend(self.drain());
                    }
                    Effect::StartRunner { runner, .. } => started.push(runner),
                    _ => {}
                }
            }
            pending = next;
        }
        started
    }

    /// Reports every runner in `runners` up; returns the runners started in response.
    fn up(&mut self, runners: &[RunnerId]) -> Vec<RunnerId> {
        for runner in runners {
            self.manager.runner_up(self.now, *runner, ports(80));
        }
        starts(&self.drain())
    }

    /// An environment with `pool` idle runners, all up; starts issued after that are returned.
    fn ready_pool(&mut self, pool: u32) -> Vec<RunnerId> {
        let mut starting = self.environment(pool);
        loop {
            let next = self.up(&starting);
            if next.is_empty() {
                break;
            }
            starting = next;
        }
        let stats = self.stats();
        assert_eq!((stats.idle, stats.starting), (pool, 0));
        self.idle_runners()
    }

    fn idle_runners(&self) -> Vec<RunnerId> {
        self.manager
            .runners
            .iter()
            .filter(|(_, runner)| matches!(runner.state, RunnerState::Idle { .. }))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The newest event, after draining what is queued.
    fn last_event(&mut self) -> Option<Event> {
        self.drain();
        self.events.last().cloned()
    }

    fn stats(&self) -> EnvironmentStats {
        self.manager
            .statistics(ENV)
            .expect("the environment exists")
    }

    fn claim(&mut self, timeout: Option<Duration>) -> Claimed {
        self.manager
            .claim(self.now, ENV, timeout)
            .expect("an idle runner")
    }
}

fn starts(effects: &[Effect]) -> Vec<RunnerId> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::StartRunner { runner, .. } => Some(*runner),
            _ => None,
        })
        .collect()
}

fn stops(effects: &[Effect]) -> Vec<RunnerId> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::StopRunner { runner } => Some(*runner),
            _ => None,
        })
        .collect()
}

fn unknown_runner() -> RunnerId {
    RunnerId::new(ENV, Uuid(0xdead))
}

// ----- Environments -----

#[test]
fn a_new_environment_is_registered_before_any_runner_starts() {
    let mut fixture = Fixture::new();
    assert_eq!(
        fixture.manager.put_environment(fixture.now, ENV, spec(2)),
        Ok(PutOutcome::Created)
    );
    let effects = fixture.drain();
    assert!(matches!(
        effects.as_slice(),
        [Effect::RegisterEnvironment {
            id: ENV,
            version: 1,
            ..
        }]
    ));
    fixture
        .manager
        .environment_registered(fixture.now, ENV, 1, true);
    assert_eq!(starts(&fixture.drain()).len(), 2);
    assert_eq!(fixture.stats().starting, 2);
}

#[test]
fn starts_in_flight_are_bounded_per_environment() {
    let mut fixture = Fixture::new();
    let started = fixture.environment(10);
    assert_eq!(started.len(), 3, "starts_in_flight_max is 3");
    // Each runner that comes up makes room for one more start.
    let next = fixture.up(&started[..1]);
    assert_eq!(next.len(), 1);
    assert_eq!(fixture.stats().starting, 3);
}

#[test]
fn the_same_spec_again_changes_nothing() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(2);
    assert_eq!(
        fixture.manager.put_environment(fixture.now, ENV, spec(2)),
        Ok(PutOutcome::Unchanged)
    );
    assert_eq!(fixture.drain(), vec![]);
    assert_eq!(fixture.stats().idle, 2);
}

#[test]
fn a_pool_size_change_resizes_without_rolling() {
    let mut fixture = Fixture::new();
    let idle = fixture.ready_pool(3);
    assert_eq!(
        fixture.manager.put_environment(fixture.now, ENV, spec(1)),
        Ok(PutOutcome::Updated)
    );
    let effects = fixture.drain();
    assert_eq!(stops(&effects).len(), 2, "two surplus idle runners stop");
    assert!(matches!(
        effects[0],
        Effect::RegisterEnvironment { version: 2, .. }
    ));
    let kept = fixture.idle_runners();
    assert_eq!(kept.len(), 1);
    assert!(
        idle.contains(&kept[0]),
        "the kept runner is one of the old ones"
    );

    fixture
        .manager
        .put_environment(fixture.now, ENV, spec(2))
        .expect("valid");
    let effects = fixture.drain();
    assert_eq!(starts(&effects).len(), 1, "growth starts at once: no roll");
}

#[test]
fn a_spec_change_rolls_the_pool_while_old_runners_keep_serving() {
    let mut fixture = Fixture::new();
    let old = fixture.ready_pool(2);
    let mut changed = spec(2);
    changed.image = "python:3.13".into();
    assert_eq!(
        fixture.manager.put_environment(fixture.now, ENV, changed),
        Ok(PutOutcome::Updated)
    );
    // Until the new spec is registered and its runners are up, the old runners serve claims.
    assert_eq!(fixture.stats().idle, 2);
    let new = fixture.register_all();
    assert_eq!(new.len(), 2);
    let claimed = fixture.claim(None);
    assert!(
        old.contains(&claimed.runner),
        "an old runner serves while new ones start"
    );
    fixture.drain();
    // One new runner up: one new and one old idle make the target; nothing stops yet.
    fixture.up(&new[..1]);
    assert!(stops(&fixture.effects).is_empty());
    // The second new runner up: the remaining old idle runner makes way for it.
    fixture.up(&new[1..]);
    let remaining_old: Vec<_> = old
        .iter()
        .filter(|r| **r != claimed.runner)
        .copied()
        .collect();
    assert_eq!(stops(&fixture.effects), remaining_old);
    // A claim now prefers the new spec.
    let next = fixture.claim(None);
    assert_eq!(next.runner, new[0]);
    // The claimed old runner is untouched by the roll.
    assert!(fixture.manager.claimed_runner(claimed.runner).is_some());
}

#[test]
fn a_spec_change_stops_old_runners_that_are_not_up_yet() {
    let mut fixture = Fixture::new();
    let started = fixture.environment(2);
    let mut changed = spec(2);
    changed.memory_limit = 512;
    fixture
        .manager
        .put_environment(fixture.now, ENV, changed)
        .expect("valid");
    let effects = fixture.drain();
    let mut stopped = stops(&effects);
    stopped.sort();
    let mut expected = started.clone();
    expected.sort();
    assert_eq!(stopped, expected);
}

#[test]
fn deleting_an_environment_stops_every_runner_and_ends_leases() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(2);
    let claimed = fixture.claim(Some(Duration::from_secs(30)));
    fixture.drain();
    assert_eq!(fixture.manager.delete_environment(fixture.now, ENV), Ok(()));
    let effects = fixture.drain();
    assert_eq!(
        stops(&effects).len(),
        3,
        "two idle, one claimed (the replacement start)"
    );
    assert!(effects.contains(&Effect::RemoveEnvironment { id: ENV }));
    assert!(fixture.events.iter().any(|event| matches!(
        event,
        Event::LeaseEnded { runner, cause: LeaseEndCause::EnvironmentDeleted, .. } if *runner == claimed.runner
    )));
    assert_eq!(
        fixture.manager.delete_environment(fixture.now, ENV),
        Err(UnknownEnvironment)
    );
    assert_eq!(
        fixture.manager.claim(fixture.now, ENV, None),
        Err(ClaimError::UnknownEnvironment)
    );
}

#[test]
fn an_invalid_spec_and_too_many_environments_are_refused() {
    let mut fixture = Fixture::with(ManagerConfig {
        environments_max: 1,
        ..config()
    });
    let mut bad = spec(1);
    bad.exposed_ports = vec![80, 80];
    assert_eq!(
        fixture.manager.put_environment(fixture.now, ENV, bad),
        Err(PutError::Invalid(crate::SpecError::DuplicatePort(80)))
    );
    fixture
        .manager
        .put_environment(fixture.now, ENV, spec(1))
        .expect("first");
    assert_eq!(
        fixture
            .manager
            .put_environment(fixture.now, EnvironmentId(11), spec(1)),
        Err(PutError::TooManyEnvironments(1))
    );
}

#[test]
fn a_failed_registration_is_retried_with_back_off_and_stale_outcomes_are_ignored() {
    let mut fixture = Fixture::new();
    fixture
        .manager
        .put_environment(fixture.now, ENV, spec(1))
        .expect("valid");
    fixture.drain();
    fixture
        .manager
        .environment_registered(fixture.now, ENV, 1, false);
    assert_eq!(fixture.drain(), vec![], "no start without registration");
    assert_eq!(
        fixture.manager.poll_timeout(),
        Some(fixture.now + Duration::from_secs(1))
    );
    fixture.advance(Duration::from_secs(1));
    let effects = fixture.drain();
    assert!(matches!(
        effects.as_slice(),
        [Effect::RegisterEnvironment { version: 1, .. }]
    ));
    // An outcome for a version a newer put superseded changes nothing.
    let mut changed = spec(1);
    changed.cpu_limit = 40;
    fixture
        .manager
        .put_environment(fixture.now, ENV, changed)
        .expect("valid");
    fixture.drain();
    fixture
        .manager
        .environment_registered(fixture.now, ENV, 1, true);
    assert_eq!(starts(&fixture.drain()), vec![]);
    fixture
        .manager
        .environment_registered(fixture.now, ENV, 2, true);
    assert_eq!(starts(&fixture.drain()).len(), 1);
}

// ----- Claims -----

#[test]
fn a_claim_hands_out_an_idle_runner_with_a_lease_and_starts_a_replacement() {
    let mut fixture = Fixture::new();
    let mut starting = fixture.environment(1);
    fixture
        .manager
        .runner_up(fixture.now, starting.remove(0), ports(8080));
    fixture.drain();
    let claimed = fixture.claim(Some(Duration::from_secs(60)));
    assert_eq!(claimed.ports, ports(8080));
    let effects = fixture.drain();
    assert!(effects.contains(&Effect::MarkRunner {
        runner: claimed.runner,
        mark: RunnerMark::Claimed(ClaimMark {
            lease: claimed.lease,
            inactivity_timeout: Some(Duration::from_secs(60)),
        }),
    }));
    assert_eq!(starts(&effects).len(), 1, "the replacement");
    assert_eq!(
        fixture.manager.claimed_runner(claimed.runner),
        Some((claimed.lease, ports(8080).as_slice()))
    );
    let stats = fixture.stats();
    assert_eq!((stats.idle, stats.used, stats.starting), (0, 1, 1));
}

#[test]
fn a_claim_never_waits_and_reports_an_empty_pool() {
    let mut fixture = Fixture::new();
    fixture.environment(1);
    assert_eq!(
        fixture.manager.claim(fixture.now, ENV, None),
        Err(ClaimError::NoIdleRunner)
    );
    assert_eq!(
        fixture.manager.claim(fixture.now, EnvironmentId(99), None),
        Err(ClaimError::UnknownEnvironment)
    );
}

#[test]
fn leases_are_never_issued_twice() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(3);
    let mut leases = vec![];
    for _ in 0..3 {
        let claimed = fixture.claim(None);
        leases.push(claimed.lease);
        fixture
            .manager
            .release(fixture.now, claimed.runner)
            .expect("claimed");
        fixture.drain();
    }
    let mut unique = leases.clone();
    unique.dedup();
    assert_eq!(unique.len(), 3);
    assert!(leases.windows(2).all(|pair| pair[0] < pair[1]));
}

#[test]
fn releasing_destroys_the_runner_and_ends_its_lease() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(1);
    let claimed = fixture.claim(None);
    fixture.drain();
    assert_eq!(fixture.manager.release(fixture.now, claimed.runner), Ok(()));
    assert_eq!(stops(&fixture.drain()), vec![claimed.runner]);
    assert_eq!(
        fixture.last_event().as_ref(),
        Some(&Event::LeaseEnded {
            runner: claimed.runner,
            lease: claimed.lease,
            cause: LeaseEndCause::Released,
            executions: vec![],
        })
    );
    assert_eq!(
        fixture.manager.release(fixture.now, claimed.runner),
        Err(RunnerError::NotClaimed),
        "a second release finds nothing (Poseidon: 410)"
    );
    fixture
        .manager
        .stop_finished(fixture.now, claimed.runner, true);
    assert_eq!(
        fixture.manager.runner_count(),
        1,
        "only the replacement is left"
    );
}

#[test]
fn idle_and_unknown_runners_are_not_claimed_runners() {
    let mut fixture = Fixture::new();
    let idle = fixture.ready_pool(1);
    for runner in [idle[0], unknown_runner()] {
        assert_eq!(
            fixture.manager.release(fixture.now, runner),
            Err(RunnerError::NotClaimed)
        );
        assert_eq!(
            fixture.manager.activity(fixture.now, runner),
            Err(RunnerError::NotClaimed)
        );
        assert!(fixture.manager.claimed_runner(runner).is_none());
    }
}

#[test]
fn a_claim_that_cannot_be_persisted_destroys_the_runner() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(1);
    let claimed = fixture.claim(None);
    fixture.drain();
    // A report for another lease is stale.
    fixture
        .manager
        .claim_mark_failed(fixture.now, claimed.runner, Lease(claimed.lease.0 + 100));
    assert!(fixture.manager.claimed_runner(claimed.runner).is_some());
    fixture
        .manager
        .claim_mark_failed(fixture.now, claimed.runner, claimed.lease);
    assert_eq!(stops(&fixture.drain()), vec![claimed.runner]);
    assert!(matches!(
        fixture.last_event().as_ref(),
        Some(Event::LeaseEnded {
            cause: LeaseEndCause::ClaimNotPersisted,
            ..
        })
    ));
}

// ----- Inactivity and executions -----

#[test]
fn an_idle_claim_expires_after_its_inactivity_timeout() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(1);
    let claimed = fixture.claim(Some(Duration::from_secs(5)));
    fixture.drain();
    fixture.advance(Duration::from_millis(4_999));
    assert!(fixture.manager.claimed_runner(claimed.runner).is_some());
    fixture.advance(Duration::from_millis(1));
    assert!(fixture.manager.claimed_runner(claimed.runner).is_none());
    assert_eq!(stops(&fixture.drain()), vec![claimed.runner]);
    assert!(matches!(
        fixture.last_event().as_ref(),
        Some(Event::LeaseEnded {
            cause: LeaseEndCause::InactivityTimeout,
            ..
        })
    ));
}

#[test]
fn activity_and_execution_starts_restart_the_timeout_but_finishes_do_not() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(1);
    let claimed = fixture.claim(Some(Duration::from_secs(5)));
    let execution = ExecutionId(Uuid(7));
    fixture.advance(Duration::from_secs(4));
    fixture
        .manager
        .activity(fixture.now, claimed.runner)
        .expect("claimed");
    fixture.advance(Duration::from_secs(4));
    fixture
        .manager
        .execution_started(fixture.now, claimed.runner, execution)
        .expect("claimed");
    fixture.advance(Duration::from_secs(4));
    fixture
        .manager
        .execution_finished(fixture.now, claimed.runner, execution)
        .expect("open");
    assert!(
        fixture.manager.claimed_runner(claimed.runner).is_some(),
        "12 s in, still held"
    );
    fixture.advance(Duration::from_secs(1));
    assert!(
        fixture.manager.claimed_runner(claimed.runner).is_none(),
        "5 s after the execution started, finishing it did not extend the lease"
    );
}

#[test]
fn a_running_execution_does_not_pause_the_inactivity_timeout() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(1);
    let claimed = fixture.claim(Some(Duration::from_secs(2)));
    let execution = ExecutionId(Uuid(1));
    fixture
        .manager
        .execution_started(fixture.now, claimed.runner, execution)
        .expect("claimed");
    fixture.drain();
    fixture.advance(Duration::from_secs(2));
    assert_eq!(
        fixture.last_event(),
        Some(Event::LeaseEnded {
            runner: claimed.runner,
            lease: claimed.lease,
            cause: LeaseEndCause::InactivityTimeout,
            executions: vec![execution],
        })
    );
}

#[test]
fn a_zero_inactivity_timeout_means_none() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(1);
    let claimed = fixture.claim(Some(Duration::ZERO));
    fixture.drain();
    assert_eq!(
        fixture.manager.poll_timeout(),
        Some(fixture.now + fixture.manager.config.start_timeout)
    );
    fixture.advance(Duration::from_secs(3600 * 24));
    fixture.drain();
    assert!(fixture.manager.claimed_runner(claimed.runner).is_some());
}

#[test]
fn executions_are_bounded_unique_and_must_be_open_to_finish() {
    let mut fixture = Fixture::with(ManagerConfig {
        executions_per_runner_max: 2,
        ..config()
    });
    fixture.ready_pool(1);
    let runner = fixture.claim(None).runner;
    let now = fixture.now;
    let [a, b, c] = [1, 2, 3].map(|n| ExecutionId(Uuid(n)));
    assert_eq!(fixture.manager.execution_started(now, runner, a), Ok(()));
    assert_eq!(
        fixture.manager.execution_started(now, runner, a),
        Err(RunnerError::DuplicateExecution)
    );
    assert_eq!(fixture.manager.execution_started(now, runner, b), Ok(()));
    assert_eq!(
        fixture.manager.execution_started(now, runner, c),
        Err(RunnerError::TooManyExecutions(2))
    );
    assert_eq!(
        fixture.manager.execution_finished(now, runner, c),
        Err(RunnerError::UnknownExecution)
    );
    assert_eq!(
        fixture.manager.executions(runner).collect::<Vec<_>>(),
        vec![a, b]
    );
}

#[test]
fn an_execution_that_could_not_be_stopped_stops_its_runner_and_ends_the_lease() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(1);
    let claimed = fixture.claim(None);
    let [running, other] = [1, 2].map(|n| ExecutionId(Uuid(n)));
    let now = fixture.now;
    fixture
        .manager
        .execution_started(now, claimed.runner, running)
        .expect("claimed");
    fixture.drain();
    // Only an execution of the runner can have its runner stopped.
    assert_eq!(
        fixture
            .manager
            .execution_not_stopped(now, claimed.runner, other),
        Err(RunnerError::UnknownExecution)
    );
    assert!(fixture.manager.claimed_runner(claimed.runner).is_some());
    assert_eq!(
        fixture
            .manager
            .execution_not_stopped(now, unknown_runner(), running),
        Err(RunnerError::NotClaimed)
    );
    assert_eq!(
        fixture
            .manager
            .execution_not_stopped(now, claimed.runner, running),
        Ok(())
    );
    assert_eq!(stops(&fixture.drain()), vec![claimed.runner]);
    assert_eq!(
        fixture.last_event(),
        Some(Event::LeaseEnded {
            runner: claimed.runner,
            lease: claimed.lease,
            cause: LeaseEndCause::ExecutionNotStopped,
            executions: vec![running],
        })
    );
    assert!(fixture.manager.claimed_runner(claimed.runner).is_none());
    // The execution's own end afterwards finds no claim.
    assert_eq!(
        fixture
            .manager
            .execution_finished(now, claimed.runner, running),
        Err(RunnerError::NotClaimed)
    );
}

// ----- Backend observations -----

#[test]
fn a_duplicated_up_never_returns_a_claimed_runner_to_the_pool() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(1);
    let claimed = fixture.claim(None);
    fixture
        .manager
        .runner_up(fixture.now, claimed.runner, ports(81));
    if cfg!(feature = "canary") {
        return; // the planted bug does exactly this; see tests/canary.rs
    }
    assert_eq!(
        fixture
            .manager
            .claimed_runner(claimed.runner)
            .map(|(lease, p)| (lease, p.to_vec())),
        Some((claimed.lease, ports(81))),
        "still claimed, with the new port mapping"
    );
    assert_eq!(
        fixture.manager.claim(fixture.now, ENV, None),
        Err(ClaimError::NoIdleRunner)
    );
}

#[test]
fn a_claimed_runner_that_restarts_ends_its_lease_and_is_stopped_never_handed_out_again() {
    for cause in [DownCause::OomKilled, DownCause::Rescheduled] {
        let mut fixture = Fixture::new();
        fixture.ready_pool(1);
        let claimed = fixture.claim(None);
        // The replacement fails to start, so the pool would have room for the restarting
        // runner: it is stopped all the same.
        let replacement = starts(&fixture.drain());
        fixture
            .manager
            .runner_down(fixture.now, replacement[0], DownCause::FailedToStart);
        fixture
            .manager
            .runner_down(fixture.now, claimed.runner, cause);
        let effects = fixture.drain();
        assert!(
            matches!(
                fixture.last_event().as_ref(),
                Some(Event::LeaseEnded { cause: LeaseEndCause::Backend(c), .. }) if *c == cause
            ),
            "{cause:?}"
        );
        assert!(stops(&effects).contains(&claimed.runner), "{cause:?}");
        // Its restart coming up changes nothing: it is being stopped.
        fixture
            .manager
            .runner_up(fixture.now, claimed.runner, ports(80));
        fixture.drain();
        let stats = fixture.stats();
        assert_eq!((stats.idle, stats.used), (0, 0), "{cause:?}");
        assert!(matches!(
            fixture.manager.runners[&claimed.runner].state,
            RunnerState::Stopping { .. }
        ));
        assert_eq!(
            fixture.manager.claim(fixture.now, ENV, None),
            Err(ClaimError::NoIdleRunner),
            "{cause:?}: the restarted runner is nobody's to claim"
        );
    }
}

#[test]
fn an_idle_runner_that_restarts_comes_back_under_its_id() {
    let mut fixture = Fixture::new();
    let idle = fixture.ready_pool(1);
    fixture
        .manager
        .runner_down(fixture.now, idle[0], DownCause::Rescheduled);
    assert!(stops(&fixture.drain()).is_empty());
    assert_eq!(fixture.stats().starting, 1);
    fixture.manager.runner_up(fixture.now, idle[0], ports(80));
    fixture.drain();
    assert_eq!(fixture.claim(None).runner, idle[0]);
}

#[test]
fn a_lost_runner_is_purged_and_replaced() {
    let mut fixture = Fixture::new();
    let idle = fixture.ready_pool(1);
    fixture
        .manager
        .runner_down(fixture.now, idle[0], DownCause::Lost);
    let effects = fixture.drain();
    assert_eq!(stops(&effects), vec![idle[0]]);
    assert_eq!(starts(&effects).len(), 1);
}

#[test]
fn a_completed_or_deregistered_runner_is_simply_forgotten() {
    for cause in [DownCause::Completed, DownCause::Deregistered] {
        let mut fixture = Fixture::new();
        fixture.ready_pool(2);
        let claimed = fixture.claim(None);
        fixture.drain();
        fixture
            .manager
            .runner_down(fixture.now, claimed.runner, cause);
        assert!(
            stops(&fixture.drain()).is_empty(),
            "{cause:?}: nothing to purge"
        );
        assert!(!fixture.manager.runners.contains_key(&claimed.runner));
        assert!(matches!(
            fixture.last_event().as_ref(),
            Some(Event::LeaseEnded { cause: LeaseEndCause::Backend(c), .. }) if *c == cause
        ));
    }
}

#[test]
fn failed_starts_back_off_exponentially_and_a_success_resets_it() {
    let mut fixture = Fixture::new();
    let mut started = fixture.environment(1);
    for expected_backoff_s in [1, 2, 4, 8] {
        fixture
            .manager
            .runner_down(fixture.now, started[0], DownCause::FailedToStart);
        let effects = fixture.drain();
        assert_eq!(stops(&effects), vec![started[0]], "remains are purged");
        assert!(starts(&effects).is_empty(), "no start during back-off");
        fixture.manager.stop_finished(fixture.now, started[0], true);
        fixture.advance(Duration::from_millis(expected_backoff_s * 1000 - 1));
        assert!(starts(&fixture.drain()).is_empty());
        fixture.advance(Duration::from_millis(1));
        started = starts(&fixture.drain());
        assert_eq!(started.len(), 1, "start again after {expected_backoff_s} s");
    }
    fixture.up(&started);
    assert_eq!(fixture.manager.environments[&ENV].failures, 0);
}

#[test]
fn a_start_that_never_comes_up_times_out_as_a_failure() {
    let mut fixture = Fixture::new();
    let started = fixture.environment(1);
    fixture.advance(fixture.manager.config.start_timeout);
    let effects = fixture.drain();
    assert_eq!(stops(&effects), started);
    assert_eq!(fixture.manager.environments[&ENV].failures, 1);
}

#[test]
fn a_failed_stop_is_retried_with_back_off_then_abandoned() {
    let mut fixture = Fixture::with(ManagerConfig {
        stop_attempts_max: 3,
        ..config()
    });
    fixture.ready_pool(1);
    let claimed = fixture.claim(None);
    fixture
        .manager
        .release(fixture.now, claimed.runner)
        .expect("claimed");
    fixture.drain();
    for backoff_s in [1, 2] {
        fixture
            .manager
            .stop_finished(fixture.now, claimed.runner, false);
        fixture.advance(Duration::from_millis(backoff_s * 1000 - 1));
        assert!(stops(&fixture.drain()).is_empty());
        fixture.advance(Duration::from_millis(1));
        assert_eq!(stops(&fixture.drain()), vec![claimed.runner]);
    }
    fixture
        .manager
        .stop_finished(fixture.now, claimed.runner, false);
    fixture.drain();
    assert_eq!(
        fixture.last_event().as_ref(),
        Some(&Event::StopAbandoned {
            runner: claimed.runner,
            attempts: 3
        })
    );
    assert!(!fixture.manager.runners.contains_key(&claimed.runner));
}

#[test]
fn an_up_for_an_unknown_runner_asks_for_an_inventory_at_most_once_per_interval() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(1);
    fixture.advance(Duration::from_secs(10));
    fixture
        .manager
        .runner_up(fixture.now, unknown_runner(), vec![]);
    fixture
        .manager
        .runner_up(fixture.now, unknown_runner(), vec![]);
    assert_eq!(fixture.drain(), vec![Effect::RequestInventory]);
    assert_eq!(fixture.stats().idle, 1, "not adopted blindly");
}

#[test]
fn reports_about_runners_being_stopped_do_not_revive_them() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(1);
    let claimed = fixture.claim(None);
    fixture
        .manager
        .release(fixture.now, claimed.runner)
        .expect("claimed");
    fixture
        .manager
        .runner_up(fixture.now, claimed.runner, vec![]);
    fixture
        .manager
        .runner_down(fixture.now, claimed.runner, DownCause::OomKilled);
    assert!(matches!(
        fixture.manager.runners[&claimed.runner].state,
        RunnerState::Stopping { .. }
    ));
    fixture
        .manager
        .runner_down(fixture.now, claimed.runner, DownCause::Completed);
    assert!(!fixture.manager.runners.contains_key(&claimed.runner));
    // The stop's own report arrives late and is ignored.
    fixture
        .manager
        .stop_finished(fixture.now, claimed.runner, true);
}

// ----- Reconciliation -----

fn listed(id: RunnerId, status: InventoryStatus, claim: Option<ClaimMark>) -> InventoryRunner {
    let mark = claim.map_or(RunnerMark::Idle, RunnerMark::Claimed);
    InventoryRunner { id, status, mark }
}

#[test]
fn reconciliation_adopts_unknown_runners_with_their_persisted_claims() {
    let mut fixture = Fixture::new();
    let idle = RunnerId::new(ENV, Uuid(1));
    let claimed = RunnerId::new(ENV, Uuid(2));
    let pending = RunnerId::new(ENV, Uuid(3));
    let mark = ClaimMark {
        lease: Lease(41),
        inactivity_timeout: Some(Duration::from_secs(30)),
    };
    fixture.manager.reconcile(
        fixture.now,
        Inventory {
            as_of: fixture.now,
            environments: vec![(ENV, spec(2))],
            runners: vec![
                listed(idle, InventoryStatus::Running(ports(80)), None),
                listed(claimed, InventoryStatus::Running(ports(80)), Some(mark)),
                listed(pending, InventoryStatus::Pending, None),
            ],
        },
    );
    assert!(
        fixture.drain().is_empty(),
        "a full pool: nothing to start or register"
    );
    let stats = fixture.stats();
    assert_eq!((stats.idle, stats.used, stats.starting), (1, 1, 1));
    assert_eq!(
        fixture.manager.claimed_runner(claimed).map(|c| c.0),
        Some(Lease(41))
    );
    // The adopted lease is never issued again; the inactivity timeout is re-armed from now.
    assert_eq!(fixture.claim(None).lease, Lease(42));
    fixture.advance(Duration::from_secs(30));
    assert!(fixture.manager.claimed_runner(claimed).is_none());
}

#[test]
fn a_persisted_lease_no_manager_issued_is_stopped_and_does_not_exhaust_the_counter() {
    let mut fixture = Fixture::new();
    let corrupt = RunnerId::new(ENV, Uuid(1));
    let idle = RunnerId::new(ENV, Uuid(2));
    let mark = |lease| ClaimMark {
        lease,
        inactivity_timeout: None,
    };
    fixture.manager.reconcile(
        fixture.now,
        Inventory {
            as_of: fixture.now,
            environments: vec![(ENV, spec(1))],
            runners: vec![
                listed(
                    corrupt,
                    InventoryStatus::Running(ports(80)),
                    Some(mark(Lease(u64::MAX))),
                ),
                listed(idle, InventoryStatus::Running(ports(80)), None),
            ],
        },
    );
    // Found by the `manager` fuzz target: the counter was lifted to `u64::MAX` and the next
    // claim overflowed it.
    assert_eq!(stops(&fixture.drain()), vec![corrupt]);
    assert!(fixture.manager.claimed_runner(corrupt).is_none());
    assert_eq!(fixture.claim(None).lease, Lease(1));
    fixture
        .manager
        .check_invariants()
        .expect("the invariants hold");
}

#[test]
fn a_claim_made_just_before_a_resync_wins_over_an_inventory_that_says_idle() {
    let mut fixture = Fixture::new();
    let idle = fixture.ready_pool(1);
    let as_of = fixture.now;
    let claimed = fixture.claim(None);
    fixture.drain();
    fixture.manager.reconcile(
        fixture.now,
        Inventory {
            as_of,
            environments: vec![(ENV, spec(1))],
            runners: vec![listed(idle[0], InventoryStatus::Running(ports(80)), None)],
        },
    );
    assert!(fixture.manager.claimed_runner(claimed.runner).is_some());
    assert_eq!(
        fixture.manager.claim(fixture.now, ENV, None),
        Err(ClaimError::NoIdleRunner),
        "never handed out twice"
    );
    assert!(fixture.drain().contains(&Effect::MarkRunner {
        runner: claimed.runner,
        mark: RunnerMark::Claimed(ClaimMark {
            lease: claimed.lease,
            inactivity_timeout: None
        })
    }));
}

#[test]
fn reconciliation_drops_missing_runners_but_not_those_newer_than_the_snapshot() {
    let mut fixture = Fixture::new();
    let idle = fixture.ready_pool(2);
    fixture.advance(Duration::from_secs(1));
    let claimed = fixture.claim(None);
    let fresh = starts(&fixture.drain());
    assert_eq!(fresh.len(), 1);
    // The snapshot was taken after the pool came up and before the replacement started; the
    // backend has lost everything it had then.
    fixture.manager.reconcile(
        fixture.now,
        Inventory {
            as_of: Timestamp::from_millis(500),
            environments: vec![(ENV, spec(2))],
            runners: vec![],
        },
    );
    assert!(
        fixture.manager.runners.contains_key(&fresh[0]),
        "newer than the snapshot"
    );
    for runner in &idle {
        assert!(
            !fixture.manager.runners.contains_key(runner),
            "gone: {runner}"
        );
    }
    assert!(matches!(
        fixture.last_event(),
        Some(Event::LeaseEnded {
            cause: LeaseEndCause::MissingFromInventory,
            ..
        })
    ));
    assert!(fixture.manager.claimed_runner(claimed.runner).is_none());
    assert_eq!(fixture.stats().starting, 2, "the pool refills");
}

#[test]
fn reconciliation_stops_runners_of_unknown_environments_and_of_the_removed() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(1);
    let claimed = fixture.claim(None);
    fixture
        .manager
        .release(fixture.now, claimed.runner)
        .expect("claimed");
    fixture
        .manager
        .stop_finished(fixture.now, claimed.runner, true);
    fixture.drain();
    let stranger = RunnerId::new(EnvironmentId(77), Uuid(5));
    let inventory = |as_of| Inventory {
        as_of,
        environments: vec![(ENV, spec(1))],
        runners: vec![
            listed(stranger, InventoryStatus::Running(vec![]), None),
            listed(claimed.runner, InventoryStatus::Running(vec![]), None),
        ],
    };
    // A snapshot older than the removal: its listing of the removed runner is stale.
    fixture
        .manager
        .reconcile(fixture.now, inventory(Timestamp::ZERO));
    let effects = fixture.drain();
    assert_eq!(stops(&effects), vec![stranger]);
    // A newer one that still lists it: the stop did not take; purge again.
    fixture.advance(Duration::from_secs(1));
    fixture
        .manager
        .reconcile(fixture.now, inventory(fixture.now));
    let effects = fixture.drain();
    assert_eq!(stops(&effects), vec![claimed.runner]);
}

#[test]
fn reconciliation_adopts_environments_and_re_registers_lost_ones() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(1);
    fixture.advance(Duration::from_secs(1));
    let other = EnvironmentId(11);
    fixture.manager.reconcile(
        fixture.now,
        Inventory {
            as_of: fixture.now,
            environments: vec![(other, spec(0))],
            runners: vec![],
        },
    );
    assert_eq!(fixture.manager.environment(other), Some(&spec(0)));
    let effects = fixture.drain();
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::RegisterEnvironment {
                id: ENV,
                version: 2,
                ..
            }
        )),
        "the backend lost ENV: register it again; {effects:?}"
    );
}

// ----- Time and bounds -----

#[test]
fn time_never_goes_backwards_inside_the_manager() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(1);
    fixture.advance(Duration::from_secs(100));
    let claimed = fixture
        .manager
        .claim(Timestamp::ZERO, ENV, Some(Duration::from_secs(10)))
        .expect("idle");
    // The deadline counts from the latest time seen, not from the stale argument.
    fixture.advance(Duration::from_secs(9));
    assert!(fixture.manager.claimed_runner(claimed.runner).is_some());
}

#[test]
fn tombstones_are_bounded_and_expire() {
    let mut fixture = Fixture::with(ManagerConfig {
        tombstones_max: 2,
        ..config()
    });
    fixture.ready_pool(4);
    for _ in 0..4 {
        let claimed = fixture.claim(None);
        fixture
            .manager
            .release(fixture.now, claimed.runner)
            .expect("claimed");
        fixture
            .manager
            .stop_finished(fixture.now, claimed.runner, true);
    }
    assert_eq!(fixture.manager.tombstones.len(), 2);
    fixture.advance(fixture.manager.config.tombstone_ttl);
    assert_eq!(fixture.manager.tombstones.len(), 0);
}

#[test]
fn periodic_reconciliation_asks_for_an_inventory() {
    let mut fixture = Fixture::with(ManagerConfig {
        reconcile_interval: Some(Duration::from_secs(60)),
        ..config()
    });
    fixture.advance(Duration::from_secs(60));
    assert_eq!(fixture.drain(), vec![Effect::RequestInventory]);
    fixture.advance(Duration::from_secs(60));
    assert_eq!(fixture.drain(), vec![Effect::RequestInventory]);
}

#[test]
fn the_invariant_check_detects_a_corrupted_timer_set() {
    let mut fixture = Fixture::new();
    fixture.ready_pool(1);
    fixture.claim(Some(Duration::from_secs(5)));
    assert_eq!(fixture.manager.check_invariants(), Ok(()));
    fixture.manager.timers.clear();
    let violation = fixture
        .manager
        .check_invariants()
        .expect_err("timers were cleared");
    assert_eq!(violation.name, "timers-derived");
}

/// A runner this manager does not know yet comes up after an inventory was taken that lists it
/// as `status`; the inventory arrives next. Pool of 2 with one runner up and one starting: room
/// for the adopted one to stay idle. Returns the fixture and the runner, which must be idle: the
/// newer report says it is up.
fn up_reported_after_the_snapshot(status: InventoryStatus) -> (Fixture, RunnerId) {
    let mut fixture = Fixture::new();
    let started = fixture.environment(2);
    fixture.up(&started[..1]);
    let late = RunnerId::new(ENV, Uuid(9));
    let as_of = fixture.now;
    fixture.advance(Duration::from_secs(1));
    fixture.manager.runner_up(fixture.now, late, ports(80));
    fixture.drain();
    fixture.manager.reconcile(
        fixture.now,
        Inventory {
            as_of,
            environments: vec![(ENV, spec(2))],
            runners: vec![listed(late, status, None)],
        },
    );
    assert!(
        matches!(
            fixture.manager.runners[&late].state,
            RunnerState::Idle { .. }
        ),
        "the newer report says it is up"
    );
    (fixture, late)
}

#[test]
fn an_up_reported_after_the_snapshot_wins_over_a_pending_listing() {
    let (mut fixture, restarted) = up_reported_after_the_snapshot(InventoryStatus::Pending);
    // An older report is covered by the snapshot: pending stays pending.
    let other = RunnerId::new(ENV, Uuid(10));
    fixture.manager.runner_up(fixture.now, other, vec![]);
    fixture.advance(Duration::from_secs(1));
    fixture.manager.reconcile(
        fixture.now,
        Inventory {
            as_of: fixture.now,
            environments: vec![(ENV, spec(2))],
            runners: vec![
                listed(restarted, InventoryStatus::Running(ports(80)), None),
                listed(other, InventoryStatus::Pending, None),
            ],
        },
    );
    assert!(matches!(
        fixture.manager.runners[&other].state,
        RunnerState::Starting { .. }
    ));
}

#[test]
fn a_recovered_runner_whose_start_failed_unseen_is_purged_not_waited_for() {
    // Seeds 51 and 128 of the simulation: a Trident registered a runner and died before its
    // evaluation failed to place it. The next one found the job listed, adopted it as starting
    // and waited out the start timeout (600 s) before starting another.
    let mut fixture = Fixture::new();
    let unplaced = RunnerId::new(ENV, Uuid(1));
    let claimed_then_failed = RunnerId::new(ENV, Uuid(2));
    let mark = ClaimMark {
        lease: Lease(7),
        inactivity_timeout: None,
    };
    fixture.manager.reconcile(
        fixture.now,
        Inventory {
            as_of: fixture.now,
            environments: vec![(ENV, spec(1))],
            runners: vec![
                listed(unplaced, InventoryStatus::Failed, None),
                listed(claimed_then_failed, InventoryStatus::Failed, Some(mark)),
            ],
        },
    );
    let effects = fixture.drain();
    assert_eq!(stops(&effects), vec![unplaced, claimed_then_failed]);
    assert_eq!(starts(&effects).len(), 1, "the pool starts afresh at once");
    assert!(
        fixture
            .manager
            .claimed_runner(claimed_then_failed)
            .is_none()
    );
    // Not this manager's start: no back-off for it.
    assert_eq!(fixture.manager.environments[&ENV].failures, 0);
}

#[test]
fn a_failed_listing_of_a_runner_reported_up_after_the_snapshot_keeps_it() {
    let (mut fixture, placed_late) = up_reported_after_the_snapshot(InventoryStatus::Failed);
    assert!(!stops(&fixture.drain()).contains(&placed_late));
}

#[test]
fn a_known_starting_runner_listed_as_failed_is_a_failed_start() {
    let mut fixture = Fixture::new();
    let started = fixture.environment(1);
    fixture.manager.reconcile(
        fixture.now,
        Inventory {
            as_of: fixture.now,
            environments: vec![(ENV, spec(1))],
            runners: vec![listed(started[0], InventoryStatus::Failed, None)],
        },
    );
    let effects = fixture.drain();
    assert_eq!(
        stops(&effects),
        started,
        "purged at once, not at the start timeout"
    );
    assert!(starts(&effects).is_empty(), "backing off");
    assert_eq!(fixture.manager.environments[&ENV].failures, 1);
    fixture.manager.stop_finished(fixture.now, started[0], true);
    fixture.advance(Duration::from_secs(1));
    assert_eq!(
        starts(&fixture.drain()).len(),
        1,
        "started again after the back-off"
    );
}

#[test]
fn known_idle_and_claimed_runners_listed_as_failed_are_lost() {
    let mut fixture = Fixture::new();
    let idle = fixture.ready_pool(2);
    let claimed = fixture.claim(None);
    let other = *idle
        .iter()
        .find(|runner| **runner != claimed.runner)
        .expect("two runners");
    fixture.drain();
    fixture.manager.reconcile(
        fixture.now,
        Inventory {
            as_of: fixture.now,
            environments: vec![(ENV, spec(2))],
            runners: vec![
                listed(other, InventoryStatus::Failed, None),
                listed(
                    claimed.runner,
                    InventoryStatus::Failed,
                    Some(ClaimMark {
                        lease: claimed.lease,
                        inactivity_timeout: None,
                    }),
                ),
            ],
        },
    );
    let mut stopped = stops(&fixture.drain());
    stopped.sort();
    let mut expected = vec![other, claimed.runner];
    expected.sort();
    assert_eq!(stopped, expected);
    assert!(fixture.manager.claimed_runner(claimed.runner).is_none());
    assert!(fixture.events.iter().any(|event| matches!(
        event,
        Event::LeaseEnded { runner, cause: LeaseEndCause::Backend(DownCause::Lost), .. }
            if *runner == claimed.runner
    )));
    assert_eq!(fixture.manager.environments[&ENV].failures, 0);
}
