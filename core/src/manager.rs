//! The runner manager: environments, their pools of runners, claims, and the deadlines that keep
//! it all moving. Sans-IO in the manner of `quinn-proto`: every call takes `now`; the manager
//! answers, queues [`Effect`]s for the backend and [`Event`]s for the application, and says when
//! it next wants to be woken ([`Manager::poll_timeout`]).
//!
//! Architecture invariant: nothing in here reads a clock, draws a random number, does I/O or
//! iterates a hash map. Ids come from the injected [`IdSource`], time from the `now` arguments.

mod invariants;
mod reconcile;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::ids::{EnvironmentId, ExecutionId, IdSource, Lease, RunnerId};
use crate::io::{
    ClaimError, ClaimMark, Claimed, DownCause, Effect, EnvironmentStats, Event, Input,
    LeaseEndCause, PutError, PutOutcome, Reply, RunnerError, RunnerMark, UnknownEnvironment,
};
use crate::spec::{EnvironmentSpec, MappedPort};
use crate::time::Timestamp;

pub use invariants::InvariantViolation;

/// "Up" reports about unknown runners remembered until the next inventory.
const UNKNOWN_UPS_MAX: usize = 1_024;

/// The manager's knobs. [`ManagerConfig::default`] holds production values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerConfig {
    /// At most this many runners of one environment are starting at once, so that a pool of
    /// hundreds does not hit the backend with hundreds of registrations in one go.
    pub starts_in_flight_max: u32,
    /// A runner not up this long after its start is given up on and counts as a failed start.
    /// Generous, because a first image pull can take minutes.
    pub start_timeout: Duration,
    /// The back-off after the first failed start (or registration) of an environment; it
    /// doubles with every further failure, up to `start_backoff_max`.
    pub start_backoff_min: Duration,
    /// The longest back-off between starts.
    pub start_backoff_max: Duration,
    /// The back-off after the first failed stop of a runner; it doubles up to `stop_backoff_max`.
    pub stop_backoff_min: Duration,
    /// The longest back-off between stops.
    pub stop_backoff_max: Duration,
    /// A runner is forgotten after this many failed stops ([`Event::StopAbandoned`]).
    pub stop_attempts_max: u32,
    /// Ask for a full inventory this often (periodic reconciliation); `None` never.
    pub reconcile_interval: Option<Duration>,
    /// Ask for an inventory at most this often when an observation names an unknown runner.
    pub inventory_request_interval_min: Duration,
    /// Remember a removed runner this long, so stale reports about it are recognised.
    pub tombstone_ttl: Duration,
    /// Remember at most this many removed runners (the oldest are forgotten first).
    pub tombstones_max: usize,
    /// At most this many environments.
    pub environments_max: usize,
    /// At most this many open executions per runner.
    pub executions_per_runner_max: usize,
    /// The first lease this manager issues. Leases only grow within one manager, and the
    /// reconciliation lifts the counter above every lease it finds persisted; to make leases
    /// unique across restarts too, the server starts each process above the last one (it passes
    /// wall-clock microseconds), the simulation a value derived from its seed.
    pub first_lease: u64,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            starts_in_flight_max: 8,
            start_timeout: Duration::from_secs(600),
            start_backoff_min: Duration::from_secs(1),
            start_backoff_max: Duration::from_secs(60),
            stop_backoff_min: Duration::from_secs(1),
            stop_backoff_max: Duration::from_secs(60),
            stop_attempts_max: 12,
            reconcile_interval: Some(Duration::from_secs(60)),
            inventory_request_interval_min: Duration::from_secs(5),
            tombstone_ttl: Duration::from_secs(600),
            tombstones_max: 100_000,
            environments_max: 10_000,
            executions_per_runner_max: 64,
            first_lease: 1,
        }
    }
}

/// The runner-manager state machine. See the module documentation.
pub struct Manager {
    config: ManagerConfig,
    ids: Box<dyn IdSource>,
    /// The latest `now` seen; time never goes backwards inside the manager.
    now: Timestamp,
    environments: BTreeMap<EnvironmentId, Environment>,
    /// All runners, ordered by id and hence grouped by environment.
    runners: BTreeMap<RunnerId, Runner>,
    /// Every pending deadline, earliest first. Kept in step with the states it derives from by
    /// [`Manager::update_runner`] and friends; `check_invariants` recomputes and compares it.
    timers: BTreeSet<(Timestamp, Timer)>,
    /// Removed runners and when they were removed, to recognise stale reports about them.
    tombstones: BTreeMap<RunnerId, Timestamp>,
    /// The same, in removal order, for expiry and for the size bound.
    tombstone_order: VecDeque<(Timestamp, RunnerId)>,
    /// Deleted environments and when, so that a stale inventory does not bring them back.
    /// Pruned on use: entries older than the tombstone lifetime go, and there are never more
    /// than `environments_max`.
    deleted_environments: BTreeMap<EnvironmentId, Timestamp>,
    /// The next lease to issue. Only grows.
    next_lease: u64,
    /// When the last inventory was asked for and not yet received.
    inventory_requested_at: Option<Timestamp>,
    /// "Up" reports about runners the manager did not know, with when they came and the ports,
    /// until the next inventory: one taken before the report may still list such a runner as
    /// pending, and the report is newer. Bounded by [`UNKNOWN_UPS_MAX`]; the oldest go first.
    unknown_ups: BTreeMap<RunnerId, (Timestamp, Vec<MappedPort>)>,
    /// When the next periodic inventory is due.
    next_reconcile: Option<Timestamp>,
    effects: VecDeque<Effect>,
    events: VecDeque<Event>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("now", &self.now)
            .field("environments", &self.environments.len())
            .field("runners", &self.runners.len())
            .field("effects", &self.effects.len())
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
struct Environment {
    spec: Arc<EnvironmentSpec>,
    /// Bumped on every change of the spec; matches registration outcomes to requests.
    version: u64,
    /// Bumped when the runners themselves change (anything but the pool size). Runners of an
    /// older generation serve claims until the new ones are up, then go.
    generation: u64,
    registration: Registration,
    /// The newest generation the backend has accepted; starts wait for the current one.
    ready_generation: Option<u64>,
    /// When the current registration completed, for reconciliation.
    registered_at: Option<Timestamp>,
    /// Consecutive failed starts or registrations; reset by a runner coming up.
    failures: u32,
    /// How many of its runners are in which state: a cache of what a scan of them gives, kept
    /// in step by the functions that change runners and compared with a scan by
    /// `check_invariants`. It saves two scans of the pool on every claim and every start.
    counts: PoolCounts,
    /// No starts before this time.
    backoff_until: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Registration {
    InFlight,
    Done,
    RetryAt(Timestamp),
}

impl Environment {
    fn deadline(&self) -> Option<Timestamp> {
        let retry = match self.registration {
            Registration::RetryAt(at) => Some(at),
            Registration::InFlight | Registration::Done => None,
        };
        match (retry, self.backoff_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn may_start(&self, now: Timestamp) -> bool {
        self.ready_generation == Some(self.generation)
            && self.backoff_until.is_none_or(|until| until <= now)
    }
}

#[derive(Clone, Debug)]
struct Runner {
    generation: u64,
    /// When the manager first learnt of this runner (its start, or its adoption).
    known_since: Timestamp,
    state: RunnerState,
}

#[derive(Clone, Debug)]
enum RunnerState {
    /// A start was issued, or the runner restarts by itself; not yet up.
    Starting {
        deadline: Timestamp,
        /// Whether a stale claim mark must be cleared once the runner is up (it restarted
        /// clean after being claimed).
        clear_mark: bool,
    },
    Idle {
        ports: Vec<MappedPort>,
    },
    Claimed(Box<Claim>),
    /// A stop was issued (`retry_at == None`) or failed and waits to be retried.
    Stopping {
        attempts: u32,
        retry_at: Option<Timestamp>,
        /// Whether the backend may hold a claim mark for it. If its stop fails, the mark is
        /// replaced by [`RunnerMark::Retired`], so that a restarted manager stops it instead of
        /// adopting a claim nobody holds.
        dirty: bool,
    },
}

#[derive(Clone, Debug)]
struct Claim {
    lease: Lease,
    ports: Vec<MappedPort>,
    inactivity: Option<Inactivity>,
    executions: BTreeSet<ExecutionId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Inactivity {
    timeout: Duration,
    deadline: Timestamp,
}

impl Runner {
    fn deadline(&self) -> Option<Timestamp> {
        match &self.state {
            RunnerState::Starting { deadline, .. } => Some(*deadline),
            RunnerState::Idle { .. } => None,
            RunnerState::Claimed(claim) => claim.inactivity.map(|inactivity| inactivity.deadline),
            RunnerState::Stopping { retry_at, .. } => *retry_at,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Runner(RunnerId),
    Environment(EnvironmentId),
    Reconcile,
    Tombstones,
}

/// How many runners of one environment are in each state, split by spec generation where the
/// pool upkeep needs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PoolCounts {
    idle_current: usize,
    idle_old: usize,
    starting_current: usize,
    starting_old: usize,
    claimed: usize,
    stopping: usize,
}

impl PoolCounts {
    fn slot(&mut self, state: &RunnerState, current: bool) -> &mut usize {
        match (state, current) {
            (RunnerState::Idle { .. }, true) => &mut self.idle_current,
            (RunnerState::Idle { .. }, false) => &mut self.idle_old,
            (RunnerState::Starting { .. }, true) => &mut self.starting_current,
            (RunnerState::Starting { .. }, false) => &mut self.starting_old,
            (RunnerState::Claimed(_), _) => &mut self.claimed,
            (RunnerState::Stopping { .. }, _) => &mut self.stopping,
        }
    }

    fn add(&mut self, state: &RunnerState, current: bool) {
        *self.slot(state, current) += 1;
    }

    fn remove(&mut self, state: &RunnerState, current: bool) {
        let slot = self.slot(state, current);
        *slot = slot
            .checked_sub(1)
            .expect("a counted runner is removed from its own slot");
    }
}

/// Per-environment runner ids from one scan of its runners, by state and spec generation.
#[derive(Default)]
struct PoolScan {
    idle_current: Vec<RunnerId>,
    idle_old: Vec<RunnerId>,
    starting_current: Vec<RunnerId>,
    starting_old: Vec<RunnerId>,
}

impl Manager {
    /// An empty manager. Time starts at [`Timestamp::ZERO`]; the first periodic inventory is
    /// asked for right away, so a fresh manager learns what the backend already runs.
    pub fn new(config: ManagerConfig, ids: Box<dyn IdSource>) -> Self {
        let mut manager = Self {
            next_lease: config.first_lease.clamp(1, Lease::MAX.0 - 1),
            config,
            ids,
            now: Timestamp::ZERO,
            environments: BTreeMap::new(),
            runners: BTreeMap::new(),
            timers: BTreeSet::new(),
            tombstones: BTreeMap::new(),
            tombstone_order: VecDeque::new(),
            deleted_environments: BTreeMap::new(),
            unknown_ups: BTreeMap::new(),
            inventory_requested_at: None,
            next_reconcile: None,
            effects: VecDeque::new(),
            events: VecDeque::new(),
        };
        manager.request_inventory(Timestamp::ZERO);
        manager.schedule_reconcile(Timestamp::ZERO);
        manager
    }

    /// The configuration in force.
    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// Feeds any input; the typed methods do the same one at a time.
    pub fn apply(&mut self, now: Timestamp, input: Input) -> Reply {
        match input {
            Input::PutEnvironment { id, spec } => Reply::Put(self.put_environment(now, id, spec)),
            Input::DeleteEnvironment { id } => Reply::Delete(self.delete_environment(now, id)),
            Input::Claim {
                environment,
                inactivity_timeout,
            } => Reply::Claim(self.claim(now, environment, inactivity_timeout)),
            Input::Release { runner } => Reply::Runner(self.release(now, runner)),
            Input::Activity { runner } => Reply::Runner(self.activity(now, runner)),
            Input::ExecutionStarted { runner, execution } => {
                Reply::Runner(self.execution_started(now, runner, execution))
            }
            Input::ExecutionFinished { runner, execution } => {
                Reply::Runner(self.execution_finished(now, runner, execution))
            }
            Input::ExecutionNotStopped { runner, execution } => {
                Reply::Runner(self.execution_not_stopped(now, runner, execution))
            }
            Input::EnvironmentRegistered { id, version, ok } => {
                self.environment_registered(now, id, version, ok);
                Reply::Done
            }
            Input::RunnerUp { runner, ports } => {
                self.runner_up(now, runner, ports);
                Reply::Done
            }
            Input::RunnerDown { runner, cause } => {
                self.runner_down(now, runner, cause);
                Reply::Done
            }
            Input::StopFinished { runner, ok } => {
                self.stop_finished(now, runner, ok);
                Reply::Done
            }
            Input::ClaimMarkFailed { runner, lease } => {
                self.claim_mark_failed(now, runner, lease);
                Reply::Done
            }
            Input::Reconcile(inventory) => {
                self.reconcile(now, inventory);
                Reply::Done
            }
            Input::Timeout => {
                self.handle_timeout(now);
                Reply::Done
            }
        }
    }

    // ----- Requests -----

    /// Creates an environment, or changes one. A new spec that differs only in the pool size
    /// resizes the pool; any other change rolls it: runners of the old spec keep serving claims
    /// until runners of the new one are up, and claimed runners are never touched. The same
    /// spec again changes nothing (Poseidon tears the whole pool down on every put, issue #268).
    pub fn put_environment(
        &mut self,
        now: Timestamp,
        id: EnvironmentId,
        spec: EnvironmentSpec,
    ) -> Result<PutOutcome, PutError> {
        let now = self.advance(now);
        spec.validate()?;
        let outcome = match self.environments.get(&id) {
            Some(environment) if *environment.spec == spec => PutOutcome::Unchanged,
            Some(environment) => {
                let rolls = !environment.spec.same_runners_as(&spec);
                let old_generation = environment.generation;
                self.update_environment(id, |environment| {
                    environment.spec = Arc::new(spec);
                    environment.version += 1;
                    if rolls {
                        environment.generation += 1;
                    }
                    environment.registration = Registration::InFlight;
                });
                self.recount(id);
                if rolls {
                    // Old-spec runners that are not up yet would never serve a claim: stop them now.
                    for runner in self.pool_scan(id, old_generation + 1).starting_old {
                        self.begin_stop(runner, LeaseEndCause::EnvironmentDeleted);
                    }
                }
                self.push_register(id);
                PutOutcome::Updated
            }
            None => {
                self.deleted_environments.remove(&id);
                if self.environments.len() >= self.config.environments_max {
                    return Err(PutError::TooManyEnvironments(self.config.environments_max));
                }
                self.insert_environment(
                    id,
                    Environment {
                        spec: Arc::new(spec),
                        version: 1,
                        generation: 1,
                        registration: Registration::InFlight,
                        ready_generation: None,
                        registered_at: None,
                        failures: 0,
                        backoff_until: None,
                        counts: PoolCounts::default(),
                    },
                );
                self.push_register(id);
                PutOutcome::Created
            }
        };
        self.upkeep(now, id);
        self.debug_check();
        Ok(outcome)
    }

    /// Deletes an environment and stops all its runners, claimed ones included (as Poseidon
    /// does); their leases end with [`LeaseEndCause::EnvironmentDeleted`].
    pub fn delete_environment(
        &mut self,
        now: Timestamp,
        id: EnvironmentId,
    ) -> Result<(), UnknownEnvironment> {
        let now = self.advance(now);
        if self.remove_environment(id).is_none() {
            return Err(UnknownEnvironment);
        }
        self.remember_deleted_environment(now, id);
        let runners: Vec<RunnerId> = self
            .runners_of(id)
            .filter(|(_, runner)| !matches!(runner.state, RunnerState::Stopping { .. }))
            .map(|(runner, _)| *runner)
            .collect();
        for runner in runners {
            self.begin_stop(runner, LeaseEndCause::EnvironmentDeleted);
        }
        self.effects.push_back(Effect::RemoveEnvironment { id });
        self.debug_check();
        Ok(())
    }

    /// Claims an idle runner of `environment`, preferring runners of the current spec. Never
    /// waits: with no idle runner the answer is [`ClaimError::NoIdleRunner`] at once. The claim
    /// is persisted asynchronously ([`Effect::MarkRunner`]) and a replacement is started.
    pub fn claim(
        &mut self,
        now: Timestamp,
        environment: EnvironmentId,
        inactivity_timeout: Option<Duration>,
    ) -> Result<Claimed, ClaimError> {
        let now = self.advance(now);
        let Some(generation) = self.environments.get(&environment).map(|e| e.generation) else {
            return Err(ClaimError::UnknownEnvironment);
        };
        let mut fallback = None;
        let mut chosen = None;
        for (id, runner) in self.runners_of(environment) {
            if let RunnerState::Idle { .. } = runner.state {
                if runner.generation == generation {
                    chosen = Some(*id);
                    break;
                }
                fallback.get_or_insert(*id);
            }
        }
        let runner = chosen.or(fallback).ok_or(ClaimError::NoIdleRunner)?;
        let lease = self.issue_lease();
        let inactivity_timeout = inactivity_timeout.filter(|timeout| !timeout.is_zero());
        let ports = self
            .update_runner(runner, |state| {
                let RunnerState::Idle { ports } = state else {
                    unreachable!("the runner was chosen because it is idle");
                };
                let ports = std::mem::take(ports);
                *state = RunnerState::Claimed(Box::new(Claim {
                    lease,
                    ports: ports.clone(),
                    inactivity: inactivity_timeout.map(|timeout| Inactivity {
                        timeout,
                        deadline: now + timeout,
                    }),
                    executions: BTreeSet::new(),
                }));
                ports
            })
            .expect("the chosen runner exists");
        self.effects.push_back(Effect::MarkRunner {
            runner,
            mark: RunnerMark::Claimed(ClaimMark {
                lease,
                inactivity_timeout,
            }),
        });
        self.upkeep(now, environment);
        self.debug_check();
        Ok(Claimed {
            runner,
            lease,
            ports,
        })
    }

    /// Gives a claimed runner back. Like Poseidon, the runner is destroyed (it is dirty); the
    /// pool already started its replacement at the claim.
    pub fn release(&mut self, now: Timestamp, runner: RunnerId) -> Result<(), RunnerError> {
        self.advance(now);
        self.claimed(runner).ok_or(RunnerError::NotClaimed)?;
        self.begin_stop(runner, LeaseEndCause::Released);
        self.debug_check();
        Ok(())
    }

    /// A sign of life on a claimed runner (a file operation): restarts its inactivity timeout.
    pub fn activity(&mut self, now: Timestamp, runner: RunnerId) -> Result<(), RunnerError> {
        let now = self.advance(now);
        self.claimed(runner).ok_or(RunnerError::NotClaimed)?;
        self.touch(now, runner);
        self.debug_check();
        Ok(())
    }

    /// An execution's WebSocket connected: counts as activity. As in Poseidon, the inactivity
    /// timeout is not paused while the execution runs (e2e
    /// `TestRunnerGetsDestroyedAfterInactivityTimeout` relies on it).
    pub fn execution_started(
        &mut self,
        now: Timestamp,
        runner: RunnerId,
        execution: ExecutionId,
    ) -> Result<(), RunnerError> {
        let now = self.advance(now);
        let claim = self.claimed(runner).ok_or(RunnerError::NotClaimed)?;
        if claim.executions.contains(&execution) {
            return Err(RunnerError::DuplicateExecution);
        }
        let max = self.config.executions_per_runner_max;
        if claim.executions.len() >= max {
            return Err(RunnerError::TooManyExecutions(max));
        }
        self.update_claim(runner, |claim| {
            claim.executions.insert(execution);
        });
        self.touch(now, runner);
        self.debug_check();
        Ok(())
    }

    /// An execution ended. Not activity, as in Poseidon.
    pub fn execution_finished(
        &mut self,
        now: Timestamp,
        runner: RunnerId,
        execution: ExecutionId,
    ) -> Result<(), RunnerError> {
        self.advance(now);
        self.open_execution(runner, execution)?;
        self.update_claim(runner, |claim| {
            claim.executions.remove(&execution);
        });
        self.debug_check();
        Ok(())
    }

    /// An execution's command could be neither interrupted nor killed: the runner is stopped,
    /// which is the only way left to end the command (Poseidon destroys the runner the same
    /// way, "the execution did not stop after SIGQUIT"). Its lease ends with
    /// [`LeaseEndCause::ExecutionNotStopped`]; the execution stays counted until it finishes.
    pub fn execution_not_stopped(
        &mut self,
        now: Timestamp,
        runner: RunnerId,
        execution: ExecutionId,
    ) -> Result<(), RunnerError> {
        self.advance(now);
        self.open_execution(runner, execution)?;
        self.begin_stop(runner, LeaseEndCause::ExecutionNotStopped);
        self.debug_check();
        Ok(())
    }

    // ----- Outcomes of effects -----

    /// The outcome of [`Effect::RegisterEnvironment`]. A stale outcome (for a version a newer
    /// put superseded) is ignored; a failure is retried with back-off.
    pub fn environment_registered(
        &mut self,
        now: Timestamp,
        id: EnvironmentId,
        version: u64,
        ok: bool,
    ) {
        let now = self.advance(now);
        let Some(environment) = self.environments.get(&id) else {
            return;
        };
        if environment.version != version || environment.registration != Registration::InFlight {
            return;
        }
        if ok {
            self.update_environment(id, |environment| {
                environment.registration = Registration::Done;
                environment.ready_generation = Some(environment.generation);
                environment.registered_at = Some(now);
            });
        } else {
            let backoff = self.start_backoff(environment.failures + 1);
            self.update_environment(id, |environment| {
                environment.failures += 1;
                environment.registration = Registration::RetryAt(now + backoff);
            });
        }
        self.upkeep(now, id);
        self.debug_check();
    }

    /// The outcome of [`Effect::StopRunner`].
    pub fn stop_finished(&mut self, now: Timestamp, runner: RunnerId, ok: bool) {
        let now = self.advance(now);
        let Some(RunnerState::Stopping {
            attempts, dirty, ..
        }) = self.runners.get(&runner).map(|r| &r.state)
        else {
            return;
        };
        let (attempts, dirty) = (*attempts, *dirty);
        if ok {
            self.remove_runner(now, runner);
        } else if attempts >= self.config.stop_attempts_max {
            self.remove_runner(now, runner);
            self.events
                .push_back(Event::StopAbandoned { runner, attempts });
        } else {
            let backoff = backoff(
                self.config.stop_backoff_min,
                self.config.stop_backoff_max,
                attempts,
            );
            self.update_runner(runner, |state| {
                *state = RunnerState::Stopping {
                    attempts,
                    retry_at: Some(now + backoff),
                    dirty,
                };
            });
            if dirty {
                self.effects.push_back(Effect::MarkRunner {
                    runner,
                    mark: RunnerMark::Retired,
                });
            }
        }
        self.debug_check();
    }

    /// A claim could not be persisted: the runner is destroyed rather than risk handing it out
    /// twice after a restart. A report for an older lease is ignored.
    pub fn claim_mark_failed(&mut self, now: Timestamp, runner: RunnerId, lease: Lease) {
        self.advance(now);
        if self
            .claimed(runner)
            .is_some_and(|claim| claim.lease == lease)
        {
            self.begin_stop(runner, LeaseEndCause::ClaimNotPersisted);
        }
        self.debug_check();
    }

    // ----- Backend observations -----

    /// The backend saw `runner` up. A starting runner becomes idle. Reports about claimed,
    /// idle or stopping runners are duplicates or stale and change nothing but the ports (a
    /// claimed runner never goes back to the pool: Poseidon's issue #321). A report about a
    /// runner the manager does not know is a hint that its view is incomplete: it asks for an
    /// inventory, which carries the persisted claims, rather than adopt the runner blindly.
    pub fn runner_up(&mut self, now: Timestamp, runner: RunnerId, ports: Vec<MappedPort>) {
        let now = self.advance(now);
        let Some(state) = self.runners.get(&runner).map(|r| &r.state) else {
            if !self.tombstones.contains_key(&runner) {
                self.remember_unknown_up(now, runner, ports);
            }
            self.request_inventory(now);
            self.debug_check();
            return;
        };
        match state {
            RunnerState::Starting { clear_mark, .. } => {
                if *clear_mark {
                    self.effects.push_back(Effect::MarkRunner {
                        runner,
                        mark: RunnerMark::Idle,
                    });
                }
                self.update_runner(runner, |state| *state = RunnerState::Idle { ports });
                self.update_environment(runner.environment(), |environment| {
                    environment.failures = 0;
                    environment.backoff_until = None;
                });
                self.upkeep(now, runner.environment());
            }
            RunnerState::Idle { .. } => {
                self.update_runner(runner, |state| *state = RunnerState::Idle { ports });
            }
            RunnerState::Claimed(_) => {
                #[cfg(feature = "canary")]
                {
                    // The planted bug: Poseidon's #321, a duplicated "up" puts a claimed runner
                    // back into the pool.
                    self.update_runner(runner, |state| *state = RunnerState::Idle { ports });
                    self.upkeep(now, runner.environment());
                }
                #[cfg(not(feature = "canary"))]
                self.update_claim(runner, |claim| claim.ports = ports);
            }
            RunnerState::Stopping { .. } => {}
        }
        self.debug_check();
    }

    /// The backend saw `runner` go down. What follows depends on the cause:
    /// - restarting causes ([`DownCause::restarts`]) put an unclaimed runner back to starting: it
    ///   comes back clean under the same id and rejoins the pool. A *claimed* runner's lease ends
    ///   and the runner is stopped instead: its id is the capability its client holds, so the
    ///   runner must never be handed to anyone else (Poseidon puts it back into the pool, and the
    ///   next claimant shares it with the previous holder; the simulation found this);
    /// - the others remove it, and those that may leave remains ([`DownCause::leaves_remains`])
    ///   stop it to purge them;
    /// - a failed start makes the environment back off.
    pub fn runner_down(&mut self, now: Timestamp, runner: RunnerId, cause: DownCause) {
        let now = self.advance(now);
        let Some(current) = self.runners.get(&runner) else {
            self.debug_check();
            return;
        };
        let environment = runner.environment();
        let was_starting = matches!(current.state, RunnerState::Starting { .. });
        match (&current.state, cause) {
            (RunnerState::Stopping { .. }, DownCause::Completed | DownCause::Deregistered) => {
                // The stop took effect (or someone else's did): nothing is left to purge.
                self.remove_runner(now, runner);
            }
            // Anything else may leave remains: the stop in flight or its retry goes on.
            (RunnerState::Stopping { .. }, _) => {}
            (RunnerState::Claimed(_), cause) if cause.restarts() => {
                self.begin_stop(runner, LeaseEndCause::Backend(cause));
            }
            (_, cause) if cause.restarts() => {
                let was_claimed = self.end_lease(runner, LeaseEndCause::Backend(cause));
                let deadline = now + self.config.start_timeout;
                self.update_runner(runner, |state| {
                    let clear_mark = was_claimed
                        || matches!(
                            state,
                            RunnerState::Starting {
                                clear_mark: true,
                                ..
                            }
                        );
                    *state = RunnerState::Starting {
                        deadline,
                        clear_mark,
                    };
                });
            }
            (_, cause) if cause.leaves_remains() => {
                self.begin_stop(runner, LeaseEndCause::Backend(cause));
            }
            (_, cause) => {
                self.end_lease(runner, LeaseEndCause::Backend(cause));
                self.remove_runner(now, runner);
            }
        }
        if was_starting && cause == DownCause::FailedToStart {
            self.record_start_failure(now, environment);
        }
        self.upkeep(now, environment);
        self.debug_check();
    }

    // ----- Time -----

    /// When the manager next needs [`Manager::handle_timeout`]; `None` when nothing is pending.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Fires every deadline due at `now`: inactivity timeouts, start timeouts, stop retries,
    /// environment back-offs and registration retries, periodic reconciliation, tombstone expiry.
    /// Only deadlines already due when the call starts fire, so the call is bounded even if
    /// handling one sets another that is due at once.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let now = self.advance(now);
        let due: Vec<Timer> = self
            .timers
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, timer)| *timer)
            .collect();
        for timer in due {
            match timer {
                Timer::Runner(runner) => self.runner_deadline(now, runner),
                Timer::Environment(environment) => self.environment_deadline(now, environment),
                Timer::Reconcile => {
                    self.request_inventory(now);
                    self.schedule_reconcile(now);
                }
                Timer::Tombstones => self.expire_tombstones(now),
            }
        }
        self.debug_check();
    }

    fn runner_deadline(&mut self, now: Timestamp, runner: RunnerId) {
        let Some(current) = self.runners.get(&runner) else {
            return;
        };
        if current.deadline().is_none_or(|deadline| deadline > now) {
            return;
        }
        match &current.state {
            RunnerState::Starting { .. } => {
                self.begin_stop(runner, LeaseEndCause::Backend(DownCause::FailedToStart));
                self.record_start_failure(now, runner.environment());
                self.upkeep(now, runner.environment());
            }
            RunnerState::Claimed(_) => {
                self.begin_stop(runner, LeaseEndCause::InactivityTimeout);
            }
            RunnerState::Stopping {
                attempts, dirty, ..
            } => {
                let (attempts, dirty) = (*attempts + 1, *dirty);
                self.update_runner(runner, |state| {
                    *state = RunnerState::Stopping {
                        attempts,
                        retry_at: None,
                        dirty,
                    };
                });
                self.effects.push_back(Effect::StopRunner { runner });
            }
            RunnerState::Idle { .. } => unreachable!("idle runners have no deadline"),
        }
    }

    fn environment_deadline(&mut self, now: Timestamp, id: EnvironmentId) {
        let Some(environment) = self.environments.get(&id) else {
            return;
        };
        let retry_due = matches!(environment.registration, Registration::RetryAt(at) if at <= now);
        let backoff_over = environment.backoff_until.is_some_and(|until| until <= now);
        if retry_due {
            self.update_environment(id, |environment| {
                environment.registration = Registration::InFlight;
            });
            self.push_register(id);
        }
        if backoff_over {
            self.update_environment(id, |environment| environment.backoff_until = None);
        }
        self.upkeep(now, id);
    }

    // ----- Queries -----

    /// The next effect for the backend, oldest first.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The next event for the application, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The spec of an environment.
    pub fn environment(&self, id: EnvironmentId) -> Option<&EnvironmentSpec> {
        self.environments
            .get(&id)
            .map(|environment| &*environment.spec)
    }

    /// All environments, in id order.
    pub fn environments(&self) -> impl Iterator<Item = (EnvironmentId, &EnvironmentSpec)> {
        self.environments
            .iter()
            .map(|(id, environment)| (*id, &*environment.spec))
    }

    /// The lease and ports of a claimed runner; `None` for any other runner (Poseidon answers
    /// 410 for idle and unknown runners alike).
    pub fn claimed_runner(&self, runner: RunnerId) -> Option<(Lease, &[MappedPort])> {
        self.claimed(runner)
            .map(|claim| (claim.lease, claim.ports.as_slice()))
    }

    /// Every claimed runner and its lease, in id order.
    pub fn claimed_runners(&self) -> impl Iterator<Item = (RunnerId, Lease)> + '_ {
        self.runners
            .iter()
            .filter_map(|(id, runner)| match &runner.state {
                RunnerState::Claimed(claim) => Some((*id, claim.lease)),
                _ => None,
            })
    }

    /// Every runner the manager knows, in any state, in id order.
    pub fn runner_ids(&self) -> impl Iterator<Item = RunnerId> + '_ {
        self.runners.keys().copied()
    }

    /// The environments, in id order.
    pub fn environment_ids(&self) -> impl Iterator<Item = EnvironmentId> + '_ {
        self.environments.keys().copied()
    }

    /// The open executions of a claimed runner.
    pub fn executions(&self, runner: RunnerId) -> impl Iterator<Item = ExecutionId> + '_ {
        self.claimed(runner)
            .into_iter()
            .flat_map(|claim| claim.executions.iter().copied())
    }

    /// The figures of one environment.
    pub fn statistics(&self, id: EnvironmentId) -> Option<EnvironmentStats> {
        let environment = self.environments.get(&id)?;
        let counts = environment.counts;
        let narrow = |count: usize| u32::try_from(count).unwrap_or(u32::MAX);
        Some(EnvironmentStats {
            id,
            target: environment.spec.prewarming_pool_size,
            idle: narrow(counts.idle_current + counts.idle_old),
            used: narrow(counts.claimed),
            starting: narrow(counts.starting_current + counts.starting_old),
            stopping: narrow(counts.stopping),
        })
    }

    /// The figures of every environment, in id order.
    pub fn all_statistics(&self) -> Vec<EnvironmentStats> {
        self.environments
            .keys()
            .filter_map(|id| self.statistics(*id))
            .collect()
    }

    /// How many runners the manager tracks, in any state.
    pub fn runner_count(&self) -> usize {
        self.runners.len()
    }

    // ----- Internals: pool upkeep -----

    /// Brings one environment's pool towards its target: stops old-spec idle runners that new
    /// ones have replaced, stops a current surplus (starting runners first, as they serve no one
    /// yet), and starts what is missing within the in-flight bound and outside back-off.
    fn upkeep(&mut self, now: Timestamp, id: EnvironmentId) {
        let Some(environment) = self.environments.get(&id) else {
            return;
        };
        let target = environment.spec.prewarming_pool_size as usize;
        let may_start = environment.may_start(now);
        let generation = environment.generation;
        // The ids are collected only when something must be stopped; the common case (nothing
        // or only starts to do) needs the counts alone.
        let counts = environment.counts;
        let current = counts.idle_current + counts.starting_current;
        if current > target || counts.idle_old > target.saturating_sub(counts.idle_current) {
            self.stop_surplus(id, generation, target);
        }
        if !may_start {
            return;
        }
        let in_flight_max = self.config.starts_in_flight_max as usize;
        let missing = target.saturating_sub(current);
        let room = in_flight_max.saturating_sub(counts.starting_current);
        let starts = missing.min(room);
        if starts == 0 {
            return;
        }
        let spec = Arc::clone(&self.environments[&id].spec);
        for _ in 0..starts {
            let Some(runner) = self.fresh_runner_id(id) else {
                return;
            };
            self.insert_runner(
                runner,
                Runner {
                    generation,
                    known_since: now,
                    state: RunnerState::Starting {
                        deadline: now + self.config.start_timeout,
                        clear_mark: false,
                    },
                },
            );
            self.effects.push_back(Effect::StartRunner {
                runner,
                spec: Arc::clone(&spec),
            });
        }
    }

    /// Stops a current surplus (starting runners first, newest id first, as they serve no one
    /// yet) and the old-spec idle runners that new ones have replaced.
    fn stop_surplus(&mut self, id: EnvironmentId, generation: u64, target: usize) {
        let scan = self.pool_scan(id, generation);
        let current = scan.idle_current.len() + scan.starting_current.len();
        let surplus = current.saturating_sub(target);
        let surplus_runners: Vec<RunnerId> = scan
            .starting_current
            .iter()
            .rev()
            .chain(scan.idle_current.iter())
            .take(surplus)
            .copied()
            .collect();
        for runner in surplus_runners {
            self.begin_stop(runner, LeaseEndCause::Released);
        }
        // Old-spec idle runners serve claims only while the new pool is not up.
        let room_for_old = target.saturating_sub(scan.idle_current.len());
        for runner in scan.idle_old.iter().skip(room_for_old) {
            self.begin_stop(*runner, LeaseEndCause::Released);
        }
    }

    /// Counts an environment's runners by scanning them: the truth the cached counts follow.
    fn count_pool(&self, id: EnvironmentId, generation: u64) -> PoolCounts {
        let mut counts = PoolCounts::default();
        for (_, runner) in self.runners_of(id) {
            counts.add(&runner.state, runner.generation == generation);
        }
        counts
    }

    /// Re-derives an environment's cached counts, after its generation changed or it was
    /// (re-)created while runners of its id were still being stopped.
    fn recount(&mut self, id: EnvironmentId) {
        let Some(generation) = self.environments.get(&id).map(|e| e.generation) else {
            return;
        };
        let counts = self.count_pool(id, generation);
        if let Some(environment) = self.environments.get_mut(&id) {
            environment.counts = counts;
        }
    }

    fn pool_scan(&self, id: EnvironmentId, generation: u64) -> PoolScan {
        let mut scan = PoolScan::default();
        for (runner_id, runner) in self.runners_of(id) {
            let current = runner.generation == generation;
            match (&runner.state, current) {
                (RunnerState::Idle { .. }, true) => scan.idle_current.push(*runner_id),
                (RunnerState::Idle { .. }, false) => scan.idle_old.push(*runner_id),
                (RunnerState::Starting { .. }, true) => scan.starting_current.push(*runner_id),
                (RunnerState::Starting { .. }, false) => scan.starting_old.push(*runner_id),
                (RunnerState::Claimed(_) | RunnerState::Stopping { .. }, _) => {}
            }
        }
        scan
    }

    fn record_start_failure(&mut self, now: Timestamp, id: EnvironmentId) {
        let Some(environment) = self.environments.get(&id) else {
            return;
        };
        let backoff = self.start_backoff(environment.failures + 1);
        self.update_environment(id, |environment| {
            environment.failures = environment.failures.saturating_add(1);
            environment.backoff_until = Some(now + backoff);
        });
    }

    fn start_backoff(&self, failures: u32) -> Duration {
        backoff(
            self.config.start_backoff_min,
            self.config.start_backoff_max,
            failures,
        )
    }

    /// A runner id not in use and not remembered as removed. `None` only if the id source
    /// keeps repeating itself, which is a bug in the source; the pool then tries again later.
    fn fresh_runner_id(&mut self, environment: EnvironmentId) -> Option<RunnerId> {
        const DRAWS_MAX: usize = 16;
        (0..DRAWS_MAX)
            .map(|_| RunnerId::new(environment, self.ids.next_uuid()))
            .find(|id| !self.runners.contains_key(id) && !self.tombstones.contains_key(id))
    }

    // ----- Internals: runner transitions -----

    /// Moves a runner to stopping and issues the stop, ending its lease first if it had one.
    fn begin_stop(&mut self, runner: RunnerId, cause: LeaseEndCause) {
        if let Some(RunnerState::Stopping { .. }) = self.runners.get(&runner).map(|r| &r.state) {
            return;
        }
        let was_claimed = self.end_lease(runner, cause);
        let updated = self.update_runner(runner, |state| {
            let dirty = was_claimed
                || matches!(
                    state,
                    RunnerState::Starting {
                        clear_mark: true,
                        ..
                    }
                );
            *state = RunnerState::Stopping {
                attempts: 1,
                retry_at: None,
                dirty,
            };
        });
        if updated.is_some() {
            self.effects.push_back(Effect::StopRunner { runner });
        }
    }

    /// If the runner is claimed, tells the application its lease ended. Returns whether it was.
    /// The caller moves the runner to its next state.
    fn end_lease(&mut self, runner: RunnerId, cause: LeaseEndCause) -> bool {
        let Some(claim) = self.claimed(runner) else {
            return false;
        };
        let event = Event::LeaseEnded {
            runner,
            lease: claim.lease,
            cause,
            executions: claim.executions.iter().copied().collect(),
        };
        self.events.push_back(event);
        true
    }

    fn touch(&mut self, now: Timestamp, runner: RunnerId) {
        self.update_claim(runner, |claim| {
            if let Some(inactivity) = &mut claim.inactivity {
                inactivity.deadline = now + inactivity.timeout;
            }
        });
    }

    fn issue_lease(&mut self) -> Lease {
        let lease = Lease(self.next_lease);
        self.next_lease += 1;
        lease
    }

    fn claimed(&self, runner: RunnerId) -> Option<&Claim> {
        match &self.runners.get(&runner)?.state {
            RunnerState::Claimed(claim) => Some(claim),
            _ => None,
        }
    }

    /// `Ok` when `runner` is claimed and `execution` is one of its open executions.
    fn open_execution(&self, runner: RunnerId, execution: ExecutionId) -> Result<(), RunnerError> {
        let claim = self.claimed(runner).ok_or(RunnerError::NotClaimed)?;
        if claim.executions.contains(&execution) {
            Ok(())
        } else {
            Err(RunnerError::UnknownExecution)
        }
    }

    fn runners_of(&self, id: EnvironmentId) -> impl Iterator<Item = (&RunnerId, &Runner)> {
        self.runners
            .range(RunnerId::first_of(id)..=RunnerId::last_of(id))
    }

    // ----- Internals: the only places that change runners, environments and their timers -----

    fn insert_runner(&mut self, id: RunnerId, runner: Runner) {
        if let Some(deadline) = runner.deadline() {
            self.timers.insert((deadline, Timer::Runner(id)));
        }
        if let Some(environment) = self.environments.get_mut(&id.environment()) {
            let current = runner.generation == environment.generation;
            environment.counts.add(&runner.state, current);
        }
        let previous = self.runners.insert(id, runner);
        assert!(previous.is_none(), "runner {id} inserted twice");
    }

    /// Changes a runner's state and keeps its timer in step. `None` if the runner is unknown.
    fn update_runner<R>(
        &mut self,
        id: RunnerId,
        change: impl FnOnce(&mut RunnerState) -> R,
    ) -> Option<R> {
        let runner = self.runners.get_mut(&id)?;
        let before = runner.deadline();
        let mut environment = self.environments.get_mut(&id.environment());
        let current = environment
            .as_ref()
            .is_some_and(|environment| runner.generation == environment.generation);
        if let Some(environment) = environment.as_deref_mut() {
            environment.counts.remove(&runner.state, current);
        }
        let result = change(&mut runner.state);
        if let Some(environment) = environment {
            environment.counts.add(&runner.state, current);
        }
        let after = runner.deadline();
        if before != after {
            if let Some(before) = before {
                self.timers.remove(&(before, Timer::Runner(id)));
            }
            if let Some(after) = after {
                self.timers.insert((after, Timer::Runner(id)));
            }
        }
        Some(result)
    }

    fn update_claim(&mut self, id: RunnerId, change: impl FnOnce(&mut Claim)) {
        self.update_runner(id, |state| {
            if let RunnerState::Claimed(claim) = state {
                change(claim);
            }
        });
    }

    /// Forgets a runner, remembers it as removed, and drops the effects still queued for it so
    /// that no effect ever names a runner the manager does not know.
    fn remove_runner(&mut self, now: Timestamp, id: RunnerId) {
        let Some(runner) = self.runners.remove(&id) else {
            return;
        };
        if let Some(environment) = self.environments.get_mut(&id.environment()) {
            let current = runner.generation == environment.generation;
            environment.counts.remove(&runner.state, current);
        }
        if let Some(deadline) = runner.deadline() {
            self.timers.remove(&(deadline, Timer::Runner(id)));
        }
        self.effects.retain(|effect| effect.runner() != Some(id));
        self.remember_removed(now, id);
    }

    fn remember_removed(&mut self, now: Timestamp, id: RunnerId) {
        if self.config.tombstones_max == 0 {
            return;
        }
        while self.tombstone_order.len() >= self.config.tombstones_max {
            self.forget_oldest_tombstone();
        }
        let was_empty = self.tombstone_order.is_empty();
        self.tombstones.insert(id, now);
        self.tombstone_order.push_back((now, id));
        if was_empty {
            self.timers
                .insert((now + self.config.tombstone_ttl, Timer::Tombstones));
        }
    }

    fn forget_oldest_tombstone(&mut self) {
        let Some((removed_at, id)) = self.tombstone_order.pop_front() else {
            return;
        };
        self.timers
            .remove(&(removed_at + self.config.tombstone_ttl, Timer::Tombstones));
        if self.tombstones.get(&id) == Some(&removed_at) {
            self.tombstones.remove(&id);
        }
        if let Some((next_removed_at, _)) = self.tombstone_order.front() {
            self.timers.insert((
                *next_removed_at + self.config.tombstone_ttl,
                Timer::Tombstones,
            ));
        }
    }

    fn expire_tombstones(&mut self, now: Timestamp) {
        while let Some((removed_at, _)) = self.tombstone_order.front() {
            if *removed_at + self.config.tombstone_ttl > now {
                break;
            }
            self.forget_oldest_tombstone();
        }
    }

    fn remember_unknown_up(&mut self, now: Timestamp, runner: RunnerId, ports: Vec<MappedPort>) {
        while self.unknown_ups.len() >= UNKNOWN_UPS_MAX {
            let oldest = self
                .unknown_ups
                .iter()
                .min_by_key(|(id, (at, _))| (*at, **id))
                .map(|(id, _)| *id)
                .expect("not empty");
            self.unknown_ups.remove(&oldest);
        }
        self.unknown_ups.insert(runner, (now, ports));
    }

    fn remember_deleted_environment(&mut self, now: Timestamp, id: EnvironmentId) {
        self.prune_deleted_environments(now);
        while self.deleted_environments.len() >= self.config.environments_max.max(1) {
            let oldest = self
                .deleted_environments
                .iter()
                .min_by_key(|(id, deleted_at)| (**deleted_at, **id))
                .map(|(id, _)| *id)
                .expect("not empty");
            self.deleted_environments.remove(&oldest);
        }
        self.deleted_environments.insert(id, now);
    }

    fn prune_deleted_environments(&mut self, now: Timestamp) {
        let ttl = self.config.tombstone_ttl;
        self.deleted_environments
            .retain(|_, deleted_at| *deleted_at + ttl > now);
    }

    fn insert_environment(&mut self, id: EnvironmentId, environment: Environment) {
        if let Some(deadline) = environment.deadline() {
            self.timers.insert((deadline, Timer::Environment(id)));
        }
        self.environments.insert(id, environment);
        // Runners of an earlier environment with this id may still be stopping.
        self.recount(id);
    }

    fn update_environment(&mut self, id: EnvironmentId, change: impl FnOnce(&mut Environment)) {
        let Some(environment) = self.environments.get_mut(&id) else {
            return;
        };
        let before = environment.deadline();
        change(environment);
        let after = environment.deadline();
        if before != after {
            if let Some(before) = before {
                self.timers.remove(&(before, Timer::Environment(id)));
            }
            if let Some(after) = after {
                self.timers.insert((after, Timer::Environment(id)));
            }
        }
    }

    fn remove_environment(&mut self, id: EnvironmentId) -> Option<Environment> {
        let environment = self.environments.remove(&id)?;
        if let Some(deadline) = environment.deadline() {
            self.timers.remove(&(deadline, Timer::Environment(id)));
        }
        Some(environment)
    }

    fn push_register(&mut self, id: EnvironmentId) {
        let environment = &self.environments[&id];
        self.effects.push_back(Effect::RegisterEnvironment {
            id,
            spec: Arc::clone(&environment.spec),
            version: environment.version,
        });
    }

    /// Asks for an inventory unless one was asked for recently and has not arrived.
    fn request_inventory(&mut self, now: Timestamp) {
        let recent = self.inventory_requested_at.is_some_and(|at| {
            now.saturating_since(at) < self.config.inventory_request_interval_min
        });
        if !recent {
            self.inventory_requested_at = Some(now);
            self.effects.push_back(Effect::RequestInventory);
        }
    }

    fn schedule_reconcile(&mut self, now: Timestamp) {
        if let Some(previous) = self.next_reconcile.take() {
            self.timers.remove(&(previous, Timer::Reconcile));
        }
        if let Some(interval) = self.config.reconcile_interval {
            let at = now + interval.max(Duration::from_millis(1));
            self.next_reconcile = Some(at);
            self.timers.insert((at, Timer::Reconcile));
        }
    }

    /// Takes `now`, never letting time go backwards: a caller's clock may jitter, the
    /// manager's deadlines must not.
    fn advance(&mut self, now: Timestamp) -> Timestamp {
        self.now = self.now.max(now);
        self.now
    }

    fn debug_check(&self) {
        if cfg!(debug_assertions)
            && let Err(violation) = self.check_invariants()
        {
            panic!("manager invariant violated: {violation}");
        }
    }
}

/// `min * 2^(attempt-1)`, capped at `max`.
fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(31);
    min.saturating_mul(1 << exponent).min(max)
}

#[cfg(test)]
mod tests;
