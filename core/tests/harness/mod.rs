//! The property-test harness: a small reference model, a fake backend and a client-side ledger,
//! driving the real [`Manager`] through `proptest-state-machine`.
//!
//! - The **reference model** predicts what it can without re-implementing the manager: which
//!   environments exist and what a put, delete or claim of an unknown environment answers.
//! - The **fake backend** holds the effects the manager issued and lets the transitions deliver
//!   them (successfully, failing, or never), report runners down for every cause, duplicate and
//!   replay old observations, deliver fresh and stale inventories, and restart the manager.
//! - The **ledger** is what the clients know: every lease they were handed and the executions
//!   they opened. After every step it must equal the manager's claimed runners exactly, every
//!   lease must be new, every `LeaseEnded` must end a lease the ledger holds, with the executions
//!   the ledger opened.
//!
//! After every step `check_invariants()` runs; at the end a healed phase (everything succeeds,
//! time passes) must bring every pool to its target with no runner left starting or stopping
//! and no orphan in the backend: the liveness property.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use trident_core::*;

/// Environments the transitions choose from.
const ENVIRONMENTS: u64 = 3;
/// Heal rounds allowed for liveness: each delivers everything and lets the longest back-off pass.
const HEAL_ROUNDS_MAX: usize = 40;
/// Observations kept for duplication and replay.
const HISTORY_MAX: usize = 32;

pub fn config() -> ManagerConfig {
    ManagerConfig {
        starts_in_flight_max: 2,
        start_timeout: Duration::from_secs(30),
        start_backoff_min: Duration::from_secs(1),
        start_backoff_max: Duration::from_secs(8),
        stop_backoff_min: Duration::from_secs(1),
        stop_backoff_max: Duration::from_secs(8),
        stop_attempts_max: 4,
        reconcile_interval: Some(Duration::from_secs(20)),
        inventory_request_interval_min: Duration::from_secs(2),
        tombstone_ttl: Duration::from_secs(60),
        tombstones_max: 64,
        environments_max: 16,
        executions_per_runner_max: 2,
        first_lease: 1,
    }
}

pub fn spec(pool: u8, variant: u8) -> EnvironmentSpec {
    EnvironmentSpec {
        prewarming_pool_size: u32::from(pool),
        cpu_limit: 20,
        memory_limit: 128,
        image: format!("image-{variant}"),
        network_access: false,
        exposed_ports: vec![],
    }
}

/// One step of a test case.
#[derive(Clone, Debug)]
pub enum Step {
    Put {
        env: u64,
        pool: u8,
        variant: u8,
    },
    Delete {
        env: u64,
    },
    Claim {
        env: u64,
        timeout_s: Option<u8>,
    },
    Release {
        pick: Index,
    },
    Activity {
        pick: Index,
    },
    ExecStart {
        pick: Index,
        exec: u8,
    },
    ExecFinish {
        pick: Index,
        exec: u8,
    },
    Register {
        pick: Index,
        ok: bool,
    },
    Start {
        pick: Index,
        outcome: StartOutcome,
    },
    Stop {
        pick: Index,
        ok: bool,
    },
    Mark {
        pick: Index,
        ok: bool,
    },
    /// A runner the backend has goes down.
    Down {
        pick: Index,
        cause: DownCause,
    },
    /// A runner the backend restarts by itself comes back up.
    Restarted {
        pick: Index,
    },
    /// The last observation, delivered again.
    Duplicate,
    /// An old observation, delivered again (out of order, stale).
    Replay {
        pick: Index,
    },
    TakeSnapshot,
    Inventory {
        stale: bool,
    },
    Advance {
        ms: u16,
    },
    Restart,
}

#[derive(Clone, Copy, Debug)]
pub enum StartOutcome {
    Up,
    Fail,
    /// The backend accepts the start but the runner never comes up.
    Never,
}

/// What the reference model expects the step to answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Expect {
    #[default]
    Anything,
    Put(PutOutcome),
    Delete(Result<(), UnknownEnvironment>),
    UnknownEnvironment,
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Environment → (pool, variant).
    environments: BTreeMap<u64, (u8, u8)>,
    pub expect: Expect,
}

pub struct ModelMachine;

impl ReferenceStateMachine for ModelMachine {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(_state: &Model) -> BoxedStrategy<Step> {
        let env = 0..ENVIRONMENTS;
        let cause = prop_oneof![
            Just(DownCause::Completed),
            Just(DownCause::OomKilled),
            Just(DownCause::Rescheduled),
            Just(DownCause::Lost),
            Just(DownCause::Deregistered),
            Just(DownCause::FailedToStart),
        ];
        let outcome = prop_oneof![
            6 => Just(StartOutcome::Up),
            2 => Just(StartOutcome::Fail),
            1 => Just(StartOutcome::Never),
        ];
        prop_oneof![
            3 => (env.clone(), 0..4u8, 0..2u8)
                .prop_map(|(env, pool, variant)| Step::Put { env, pool, variant }),
            1 => env.clone().prop_map(|env| Step::Delete { env }),
            6 => (env, proptest::option::of(1..20u8))
                .prop_map(|(env, timeout_s)| Step::Claim { env, timeout_s }),
            3 => any::<Index>().prop_map(|pick| Step::Release { pick }),
            1 => any::<Index>().prop_map(|pick| Step::Activity { pick }),
            1 => (any::<Index>(), 0..3u8).prop_map(|(pick, exec)| Step::ExecStart { pick, exec }),
            1 => (any::<Index>(), 0..3u8).prop_map(|(pick, exec)| Step::ExecFinish { pick, exec }),
            4 => (any::<Index>(), prop::bool::weighted(0.8))
                .prop_map(|(pick, ok)| Step::Register { pick, ok }),
            8 => (any::<Index>(), outcome).prop_map(|(pick, outcome)| Step::Start { pick, outcome }),
            4 => (any::<Index>(), prop::bool::weighted(0.8)).prop_map(|(pick, ok)| Step::Stop { pick, ok }),
            3 => (any::<Index>(), prop::bool::weighted(0.9)).prop_map(|(pick, ok)| Step::Mark { pick, ok }),
            3 => (any::<Index>(), cause).prop_map(|(pick, cause)| Step::Down { pick, cause }),
            2 => any::<Index>().prop_map(|pick| Step::Restarted { pick }),
            2 => Just(Step::Duplicate),
            2 => any::<Index>().prop_map(|pick| Step::Replay { pick }),
            1 => Just(Step::TakeSnapshot),
            2 => any::<bool>().prop_map(|stale| Step::Inventory { stale }),
            3 => (0..12_000u16).prop_map(|ms| Step::Advance { ms }),
            1 => Just(Step::Restart),
        ]
        .boxed()
    }

    fn apply(mut state: Model, step: &Step) -> Model {
        state.expect = Expect::Anything;
        match step {
            Step::Put { env, pool, variant } => {
                let outcome = match state.environments.insert(*env, (*pool, *variant)) {
                    None => PutOutcome::Created,
                    Some(before) if before == (*pool, *variant) => PutOutcome::Unchanged,
                    Some(_) => PutOutcome::Updated,
                };
                state.expect = Expect::Put(outcome);
            }
            Step::Delete { env } => {
                state.expect = Expect::Delete(match state.environments.remove(env) {
                    Some(_) => Ok(()),
                    None => Err(UnknownEnvironment),
                });
            }
            Step::Claim { env, .. } if !state.environments.contains_key(env) => {
                state.expect = Expect::UnknownEnvironment;
            }
            _ => {}
        }
        state
    }
}

/// What the backend holds of one runner.
#[derive(Clone, Debug)]
struct BackendRunner {
    running: bool,
    mark: RunnerMark,
}

/// The system under test: the manager, a fake backend, the clients' ledger.
pub struct Sut {
    pub manager: Manager,
    now: Timestamp,
    incarnation: u64,
    // The backend.
    environments: BTreeMap<EnvironmentId, EnvironmentSpec>,
    runners: BTreeMap<RunnerId, BackendRunner>,
    pending: Vec<Effect>,
    history: Vec<Input>,
    snapshot: Option<Inventory>,
    // The clients.
    ledger: BTreeMap<RunnerId, Held>,
    /// Claims recovered after a restart that no client holds: runners whose release was not
    /// durable (the stop and the retire mark both failed before the restart). The manager must
    /// keep them claimed (never hand them out) until something ends them.
    zombies: BTreeMap<RunnerId, Lease>,
    leases_seen: BTreeSet<(RunnerId, Lease)>,
    leases_this_incarnation: BTreeSet<Lease>,
    /// Every runner a claim ever returned: a runner id is its holder's capability, so no runner
    /// is handed out twice, not even after it restarted clean.
    handed_out: BTreeSet<RunnerId>,
}

#[derive(Clone, Debug)]
struct Held {
    lease: Lease,
    executions: BTreeSet<ExecutionId>,
}

impl Sut {
    fn new() -> Self {
        let mut sut = Self {
            manager: Manager::new(config(), Box::new(SeededIds::new(0))),
            now: Timestamp::ZERO,
            incarnation: 0,
            environments: BTreeMap::new(),
            runners: BTreeMap::new(),
            pending: vec![],
            history: vec![],
            snapshot: None,
            ledger: BTreeMap::new(),
            zombies: BTreeMap::new(),
            leases_seen: BTreeSet::new(),
            leases_this_incarnation: BTreeSet::new(),
            handed_out: BTreeSet::new(),
        };
        sut.collect();
        sut
    }

    /// Moves the manager's effects into the backend's queue and its events into the ledger.
    fn collect(&mut self) {
        while let Some(effect) = self.manager.poll_effect() {
            match &effect {
                // Registrations and removals take effect in the backend when issued; only their
                // reports are delayed (a timed-out call that did apply is the common case).
                Effect::RegisterEnvironment { id, spec, .. } => {
                    self.environments.insert(*id, (**spec).clone());
                    self.pending.push(effect);
                }
                Effect::RemoveEnvironment { id } => {
                    self.environments.remove(id);
                }
                Effect::RequestInventory => {}
                Effect::StartRunner { runner, .. } => {
                    assert!(
                        !self.runners.contains_key(runner),
                        "start of {runner}, which the backend already has"
                    );
                    self.pending.push(effect);
                }
                Effect::StopRunner { .. } | Effect::MarkRunner { .. } => self.pending.push(effect),
            }
        }
        while let Some(event) = self.manager.poll_event() {
            match event {
                Event::LeaseEnded {
                    runner,
                    lease,
                    executions,
                    ..
                } => {
                    if self.zombies.remove(&runner).is_some() {
                        continue;
                    }
                    let held = self.ledger.remove(&runner).unwrap_or_else(|| {
                        panic!("lease {lease} of {runner} ended, but no client held it")
                    });
                    assert_eq!(
                        held.lease, lease,
                        "the lease that ended is the one handed out"
                    );
                    let executions: BTreeSet<_> = executions.into_iter().collect();
                    assert_eq!(held.executions, executions, "open executions of {runner}");
                }
                Event::StopAbandoned { .. } => {}
            }
        }
    }

    fn observe(&mut self, input: Input) {
        self.history.push(input.clone());
        if self.history.len() > HISTORY_MAX {
            self.history.remove(0);
        }
        self.manager.apply(self.now, input);
    }

    /// Takes the `pick`-th pending effect that `filter` accepts.
    fn take_pending(&mut self, pick: &Index, filter: impl Fn(&Effect) -> bool) -> Option<Effect> {
        let candidates: Vec<usize> = (0..self.pending.len())
            .filter(|i| filter(&self.pending[*i]))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(
            self.pending
                .remove(candidates[pick.index(candidates.len())]),
        )
    }

    fn inventory(&self) -> Inventory {
        Inventory {
            as_of: self.now,
            environments: self
                .environments
                .iter()
                .map(|(id, spec)| (*id, spec.clone()))
                .collect(),
            runners: self
                .runners
                .iter()
                .map(|(id, runner)| InventoryRunner {
                    id: *id,
                    status: if runner.running {
                        InventoryStatus::Running(vec![])
                    } else {
                        InventoryStatus::Pending
                    },
                    mark: runner.mark,
                })
                .collect(),
        }
    }

    fn pick_held(&self, pick: &Index) -> RunnerId {
        if self.ledger.is_empty() {
            return RunnerId::new(EnvironmentId(0), Uuid(pick.index(1000) as u128));
        }
        *self
            .ledger
            .keys()
            .nth(pick.index(self.ledger.len()))
            .expect("index in range")
    }

    fn step(&mut self, step: Step, expect: &Expect) {
        let now = self.now;
        match step {
            Step::Put { env, pool, variant } => {
                let reply =
                    self.manager
                        .put_environment(now, EnvironmentId(env), spec(pool, variant));
                assert_eq!(Expect::Put(reply.expect("valid spec")), *expect);
            }
            Step::Delete { env } => {
                let reply = self.manager.delete_environment(now, EnvironmentId(env));
                assert_eq!(Expect::Delete(reply), *expect);
            }
            Step::Claim { env, timeout_s } => {
                let timeout = timeout_s.map(|s| Duration::from_secs(u64::from(s)));
                match self.manager.claim(now, EnvironmentId(env), timeout) {
                    Ok(claimed) => {
                        assert_ne!(*expect, Expect::UnknownEnvironment);
                        assert!(
                            !self.ledger.contains_key(&claimed.runner),
                            "{} handed to two clients",
                            claimed.runner
                        );
                        assert!(
                            self.handed_out.insert(claimed.runner),
                            "{} handed out a second time",
                            claimed.runner
                        );
                        assert!(
                            self.leases_seen.insert((claimed.runner, claimed.lease)),
                            "lease {} of {} issued twice",
                            claimed.lease,
                            claimed.runner
                        );
                        assert!(
                            self.leases_this_incarnation.insert(claimed.lease),
                            "lease {} issued twice",
                            claimed.lease
                        );
                        self.ledger.insert(
                            claimed.runner,
                            Held {
                                lease: claimed.lease,
                                executions: BTreeSet::new(),
                            },
                        );
                    }
                    Err(ClaimError::UnknownEnvironment) => {
                        assert_eq!(*expect, Expect::UnknownEnvironment)
                    }
                    Err(ClaimError::NoIdleRunner) => assert_eq!(*expect, Expect::Anything),
                }
            }
            Step::Release { pick } => {
                let runner = self.pick_held(&pick);
                let held = self.ledger.contains_key(&runner);
                let reply = self.manager.release(now, runner);
                assert_eq!(reply.is_ok(), held, "release of {runner}: {reply:?}");
            }
            Step::Activity { pick } => {
                let runner = self.pick_held(&pick);
                let held = self.ledger.contains_key(&runner);
                assert_eq!(self.manager.activity(now, runner).is_ok(), held);
            }
            Step::ExecStart { pick, exec } => {
                let runner = self.pick_held(&pick);
                let execution = ExecutionId(Uuid(u128::from(exec)));
                let reply = self.manager.execution_started(now, runner, execution);
                let expected = match self.ledger.get_mut(&runner) {
                    None => Err(RunnerError::NotClaimed),
                    Some(held) if held.executions.contains(&execution) => {
                        Err(RunnerError::DuplicateExecution)
                    }
                    Some(held) if held.executions.len() >= config().executions_per_runner_max => {
                        Err(RunnerError::TooManyExecutions(
                            config().executions_per_runner_max,
                        ))
                    }
                    Some(held) => {
                        held.executions.insert(execution);
                        Ok(())
                    }
                };
                assert_eq!(reply, expected);
            }
            Step::ExecFinish { pick, exec } => {
                let runner = self.pick_held(&pick);
                let execution = ExecutionId(Uuid(u128::from(exec)));
                let reply = self.manager.execution_finished(now, runner, execution);
                let expected = match self.ledger.get_mut(&runner) {
                    None => Err(RunnerError::NotClaimed),
                    Some(held) => {
                        if held.executions.remove(&execution) {
                            Ok(())
                        } else {
                            Err(RunnerError::UnknownExecution)
                        }
                    }
                };
                assert_eq!(reply, expected);
            }
            Step::Register { pick, ok } => {
                if let Some(Effect::RegisterEnvironment { id, version, .. }) =
                    self.take_pending(&pick, |e| matches!(e, Effect::RegisterEnvironment { .. }))
                {
                    self.observe(Input::EnvironmentRegistered { id, version, ok });
                }
            }
            Step::Start { pick, outcome } => {
                if let Some(Effect::StartRunner { runner, .. }) =
                    self.take_pending(&pick, |e| matches!(e, Effect::StartRunner { .. }))
                {
                    self.deliver_start(runner, outcome);
                }
            }
            Step::Stop { pick, ok } => {
                if let Some(Effect::StopRunner { runner }) =
                    self.take_pending(&pick, |e| matches!(e, Effect::StopRunner { .. }))
                {
                    if ok {
                        self.runners.remove(&runner);
                    }
                    self.observe(Input::StopFinished { runner, ok });
                }
            }
            Step::Mark { pick, ok } => {
                if let Some(Effect::MarkRunner { runner, mark }) =
                    self.take_pending(&pick, |e| matches!(e, Effect::MarkRunner { .. }))
                {
                    match (ok, self.runners.get_mut(&runner), mark) {
                        (true, Some(backend), _) => backend.mark = mark,
                        (_, _, RunnerMark::Claimed(mark)) => self.observe(Input::ClaimMarkFailed {
                            runner,
                            lease: mark.lease,
                        }),
                        _ => {}
                    }
                }
            }
            Step::Down { pick, cause } => {
                if self.runners.is_empty() {
                    return;
                }
                let runner = *self
                    .runners
                    .keys()
                    .nth(pick.index(self.runners.len()))
                    .expect("index in range");
                if cause.restarts() {
                    let backend = self.runners.get_mut(&runner).expect("picked");
                    backend.running = false;
                } else {
                    self.runners.remove(&runner);
                }
                self.observe(Input::RunnerDown { runner, cause });
            }
            Step::Restarted { pick } => {
                let restarting: Vec<RunnerId> = self
                    .runners
                    .iter()
                    .filter(|(_, runner)| !runner.running)
                    .map(|(id, _)| *id)
                    .collect();
                if restarting.is_empty() {
                    return;
                }
                let runner = restarting[pick.index(restarting.len())];
                self.runners.get_mut(&runner).expect("picked").running = true;
                self.observe(Input::RunnerUp {
                    runner,
                    ports: vec![],
                });
            }
            Step::Duplicate => {
                if let Some(last) = self.history.last().cloned() {
                    self.manager.apply(now, last);
                }
            }
            Step::Replay { pick } => {
                if !self.history.is_empty() {
                    let old = self.history[pick.index(self.history.len())].clone();
                    self.manager.apply(now, old);
                }
            }
            Step::TakeSnapshot => self.snapshot = Some(self.inventory()),
            Step::Inventory { stale } => {
                let inventory = if stale {
                    match self.snapshot.clone() {
                        Some(snapshot) => snapshot,
                        None => return,
                    }
                } else {
                    self.inventory()
                };
                self.manager.reconcile(now, inventory);
            }
            Step::Advance { ms } => {
                self.now = self.now + Duration::from_millis(u64::from(ms));
                self.manager.handle_timeout(self.now);
            }
            Step::Restart => self.restart(),
        }
    }

    fn deliver_start(&mut self, runner: RunnerId, outcome: StartOutcome) {
        match outcome {
            StartOutcome::Up => {
                self.runners.insert(
                    runner,
                    BackendRunner {
                        running: true,
                        mark: RunnerMark::Idle,
                    },
                );
                self.observe(Input::RunnerUp {
                    runner,
                    ports: vec![],
                });
            }
            StartOutcome::Fail => self.observe(Input::RunnerDown {
                runner,
                cause: DownCause::FailedToStart,
            }),
            StartOutcome::Never => {
                self.runners.insert(
                    runner,
                    BackendRunner {
                        running: false,
                        mark: RunnerMark::Idle,
                    },
                );
            }
        }
    }

    /// A graceful restart: the old manager's outstanding marks and stops are flushed (the
    /// server's shutdown does that), starts in flight are placed but not yet up, and a new
    /// manager recovers from the backend's inventory. Clients keep exactly the claims the
    /// backend persisted on runners that are up.
    fn restart(&mut self) {
        for effect in std::mem::take(&mut self.pending) {
            match effect {
                Effect::MarkRunner { runner, mark } => {
                    if let Some(backend) = self.runners.get_mut(&runner) {
                        backend.mark = mark;
                    }
                }
                Effect::StopRunner { runner } => {
                    self.runners.remove(&runner);
                }
                Effect::StartRunner { runner, .. } => {
                    self.runners.insert(
                        runner,
                        BackendRunner {
                            running: false,
                            mark: RunnerMark::Idle,
                        },
                    );
                }
                _ => {}
            }
        }
        let persisted: BTreeMap<RunnerId, Lease> = self
            .runners
            .iter()
            .filter_map(|(id, runner)| match runner.mark {
                RunnerMark::Claimed(mark) if runner.running => Some((*id, mark.lease)),
                _ => None,
            })
            .collect();
        self.ledger.retain(|runner, held| {
            persisted.get(runner) == Some(&held.lease) && {
                // Executions do not survive a restart: their WebSockets died with the process.
                held.executions.clear();
                true
            }
        });
        self.zombies = persisted
            .into_iter()
            .filter(|(runner, _)| !self.ledger.contains_key(runner))
            .collect();
        self.incarnation += 1;
        self.history.clear();
        self.snapshot = None;
        self.leases_this_incarnation = self
            .ledger
            .values()
            .map(|held| held.lease)
            .chain(self.zombies.values().copied())
            .collect();
        let config = ManagerConfig {
            // What the server does with the wall clock: each process issues leases above the last.
            first_lease: self.incarnation << 32,
            ..config()
        };
        self.manager = Manager::new(config, Box::new(SeededIds::new(self.incarnation)));
        self.manager.handle_timeout(self.now);
        let inventory = self.inventory();
        self.manager.reconcile(self.now, inventory);
        self.collect();
        for (runner, lease) in &self.zombies {
            assert_eq!(
                self.manager.claimed_runner(*runner).map(|(lease, _)| lease),
                Some(*lease),
                "{runner} recovered as held by nobody"
            );
        }
        for (runner, held) in &self.ledger {
            assert_eq!(
                self.manager.claimed_runner(*runner).map(|(lease, _)| lease),
                Some(held.lease),
                "{runner} recovered with its lease"
            );
        }
    }

    /// The ledger and the manager agree on who holds what.
    fn check_ledger(&self) {
        let claimed: BTreeMap<RunnerId, Lease> = self.manager.claimed_runners().collect();
        let held: BTreeMap<RunnerId, Lease> = self
            .ledger
            .iter()
            .map(|(runner, held)| (*runner, held.lease))
            .chain(self.zombies.iter().map(|(runner, lease)| (*runner, *lease)))
            .collect();
        assert_eq!(
            claimed, held,
            "the manager's claims and the clients' ledger differ"
        );
    }

    /// Liveness: with every effect succeeding and time passing, every pool reaches its target
    /// within a bounded number of rounds, nothing is left starting or stopping, and the backend
    /// holds no runner the manager does not know.
    pub fn heal(&mut self) {
        for _ in 0..HEAL_ROUNDS_MAX {
            self.collect();
            for effect in std::mem::take(&mut self.pending) {
                match effect {
                    Effect::RegisterEnvironment { id, version, .. } => {
                        self.observe(Input::EnvironmentRegistered {
                            id,
                            version,
                            ok: true,
                        })
                    }
                    Effect::StartRunner { runner, .. } => {
                        self.deliver_start(runner, StartOutcome::Up)
                    }
                    Effect::StopRunner { runner } => {
                        self.runners.remove(&runner);
                        self.observe(Input::StopFinished { runner, ok: true });
                    }
                    Effect::MarkRunner { runner, mark } => {
                        if let Some(backend) = self.runners.get_mut(&runner) {
                            backend.mark = mark;
                        }
                    }
                    _ => {}
                }
                self.collect();
            }
            let restarting: Vec<RunnerId> = self
                .runners
                .iter()
                .filter(|(_, runner)| !runner.running)
                .map(|(id, _)| *id)
                .collect();
            for runner in restarting {
                self.runners.get_mut(&runner).expect("listed").running = true;
                self.observe(Input::RunnerUp {
                    runner,
                    ports: vec![],
                });
            }
            let inventory = self.inventory();
            self.manager.reconcile(self.now, inventory);
            self.collect();
            self.check_ledger();
            if self.pending.is_empty() && self.healthy() {
                return;
            }
            self.now = self.now + Duration::from_secs(10);
            self.manager.handle_timeout(self.now);
        }
        panic!(
            "not healed after {HEAL_ROUNDS_MAX} rounds: {:?}, backend {} runners, pending {:?}",
            self.manager.all_statistics(),
            self.runners.len(),
            self.pending
        );
    }

    fn healthy(&self) -> bool {
        let pools_full =
            self.manager.all_statistics().iter().all(|stats| {
                stats.idle == stats.target && stats.starting == 0 && stats.stopping == 0
            });
        let known: BTreeSet<RunnerId> = self.manager.claimed_runners().map(|(id, _)| id).collect();
        let idle_total: u32 = self.manager.all_statistics().iter().map(|s| s.idle).sum();
        let no_orphans = self.runners.len() == known.len() + idle_total as usize
            && self.manager.runner_count() == self.runners.len();
        pools_full && no_orphans
    }
}

pub struct ManagerTest;

impl StateMachineTest for ManagerTest {
    type SystemUnderTest = Sut;
    type Reference = ModelMachine;

    fn init_test(_model: &Model) -> Sut {
        Sut::new()
    }

    fn apply(mut sut: Sut, model: &Model, step: Step) -> Sut {
        sut.step(step, &model.expect);
        sut.collect();
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        if let Err(violation) = sut.manager.check_invariants() {
            panic!("invariant violated: {violation}");
        }
        sut.check_ledger();
        let environments: Vec<u64> = sut.manager.environment_ids().map(|id| id.0).collect();
        let expected: Vec<u64> = model.environments.keys().copied().collect();
        assert_eq!(environments, expected, "environments");
    }

    fn teardown(mut sut: Sut, _model: Model) {
        sut.heal();
    }
}

/// Cases per run: 1,000 unless `PROPTEST_CASES` says otherwise.
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(1_000)
}
