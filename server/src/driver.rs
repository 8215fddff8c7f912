//! The driver: the one task that owns the [`Manager`] and runs it against a backend.
//!
//! It is `quinn` to the manager's `quinn-proto`: it feeds the manager requests (from HTTP
//! handlers, through a [`ManagerHandle`]), backend observations, effect outcomes and the time; it
//! runs the effects the manager queues as tasks against the [`Executor`], at most
//! `effects_in_flight_max` at once; and it turns the manager's events into notifications for the
//! executions of runners whose lease ended.
//!
//! Architecture invariant: only this task touches the `Manager`. Every channel into it is
//! bounded; every task it spawns is in its `JoinSet` and is aborted when the driver stops.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use trident_backends::{Executor, Observation};
use trident_core::{
    Effect, EnvironmentId, EnvironmentSpec, Event, Input, Lease, LeaseEndCause, Manager, PutError,
    PutOutcome, Reply, RunnerId, RunnerMark, Timestamp,
};

/// Requests waiting for the driver. A full queue makes handlers wait: backpressure, not loss.
const COMMAND_QUEUE: usize = 1_024;
/// Effect outcomes waiting for the driver.
const OUTCOME_QUEUE: usize = 1_024;
/// Runners whose start is timed for the startup-duration measurement; starts beyond it are not
/// timed.
const STARTS_TIMED_MAX: usize = 65_536;

/// How the driver runs.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// At most this many effects run against the backend at once; the rest wait in order.
    pub effects_in_flight_max: usize,
    /// How long a shutdown may spend writing outstanding claim marks and finishing the effects
    /// in flight.
    pub shutdown_flush_timeout: Duration,
    /// Called with the manager after every input the driver handled (the simulation checks its
    /// invariants there). `None` in production.
    pub inspector: Option<Inspector>,
    /// Where runner startup durations are recorded; `None` records nothing.
    pub monitor: Option<Arc<crate::monitoring::Monitor>>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            effects_in_flight_max: 64,
            shutdown_flush_timeout: Duration::from_secs(10),
            inspector: None,
            monitor: None,
        }
    }
}

/// A read-only look at the manager after every input, with the manager's `now`.
#[derive(Clone)]
pub struct Inspector(pub Arc<InspectFn>);

/// What an [`Inspector`] calls.
pub type InspectFn = dyn Fn(&Manager, Timestamp) + Send + Sync;

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inspector")
    }
}

/// Why a put failed.
#[derive(Debug, thiserror::Error)]
pub enum PutFailure {
    /// The manager refused it.
    #[error(transparent)]
    Refused(#[from] PutError),
    /// The backend did not register the environment.
    #[error("the backend could not register the environment: {0}")]
    Backend(String),
    /// The driver is gone (the server is shutting down).
    #[error("the server is shutting down")]
    Stopped,
}

/// How a lease ended, as the executions of its runner see it. `None` while it lasts.
pub type LeaseWatch = watch::Receiver<Option<LeaseEndCause>>;

type Query = Box<dyn FnOnce(&Manager) + Send>;

enum Command {
    Apply {
        input: Input,
        reply: oneshot::Sender<Reply>,
    },
    Claim {
        input: Input,
        reply: ClaimWaiter,
    },
    Put {
        id: EnvironmentId,
        spec: EnvironmentSpec,
        reply: oneshot::Sender<Result<PutOutcome, PutFailure>>,
    },
    Query(Query),
    WatchLease {
        runner: RunnerId,
        reply: oneshot::Sender<Option<LeaseWatch>>,
    },
}

enum Outcome {
    /// A claim mark was written (`Ok`) or not (the error).
    ClaimMarked {
        runner: RunnerId,
        lease: Lease,
        result: Result<(), String>,
    },
    Registered {
        id: EnvironmentId,
        version: u64,
        result: Result<(), String>,
    },
    Input(Input),
}

/// The handlers' way to the driver. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ManagerHandle {
    commands: mpsc::Sender<Command>,
    recovered: watch::Receiver<bool>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// Why a claim was not handed out.
#[derive(Debug, thiserror::Error)]
pub enum ClaimFailure {
    /// The backend could not persist the claim, so it was withdrawn: a claim is answered only
    /// once a restarted server would recover it.
    #[error("the claim could not be persisted: {0}")]
    NotDurable(String),
    /// The runner went away (its lease ended) while the claim was being persisted.
    #[error("the runner went away while the claim was being persisted")]
    Withdrawn,
    /// The driver is gone (the server is shutting down).
    #[error("the server is shutting down")]
    Stopped,
}

type ClaimWaiter = oneshot::Sender<Result<Reply, ClaimFailure>>;

/// The driver has stopped; the server is shutting down.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the server is shutting down")]
pub struct Stopped;

impl ManagerHandle {
    /// Feeds an input and returns the manager's reply.
    pub async fn apply(&self, input: Input) -> Result<Reply, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Apply { input, reply })
            .await
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// Claims a runner (`input` is an [`Input::Claim`]): the reply comes once the backend has
    /// persisted the claim, so that a restarted server recovers every claim it ever answered.
    /// Any other input is applied as [`ManagerHandle::apply`] does.
    pub async fn claim(&self, input: Input) -> Result<Reply, ClaimFailure> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Claim { input, reply })
            .await
            .map_err(|_| ClaimFailure::Stopped)?;
        answer.await.map_err(|_| ClaimFailure::Stopped)?
    }

    /// Puts an environment and waits until the backend registered it (or refused).
    pub async fn put_environment(
        &self,
        id: EnvironmentId,
        spec: EnvironmentSpec,
    ) -> Result<PutOutcome, PutFailure> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Put { id, spec, reply })
            .await
            .map_err(|_| PutFailure::Stopped)?;
        answer.await.map_err(|_| PutFailure::Stopped)?
    }

    /// Reads from the manager.
    pub async fn query<R: Send + 'static>(
        &self,
        read: impl FnOnce(&Manager) -> R + Send + 'static,
    ) -> Result<R, Stopped> {
        let (reply, answer) = oneshot::channel();
        let query: Query = Box::new(move |manager| {
            let _ = reply.send(read(manager));
        });
        self.commands
            .send(Command::Query(query))
            .await
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// Whether the first recovery has finished: the manager reconciled its first inventory, so
    /// it knows what the backend already runs (readiness).
    pub fn recovered(&self) -> bool {
        *self.recovered.borrow()
    }

    /// A watch on the lease of a claimed runner; `None` if the runner is not claimed.
    pub async fn watch_lease(&self, runner: RunnerId) -> Result<Option<LeaseWatch>, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::WatchLease { runner, reply })
            .await
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

/// Maps tokio's clock to the manager's timestamps: milliseconds since the driver started.
#[derive(Clone, Copy, Debug)]
struct Clock {
    start: Instant,
}

impl Clock {
    fn now(&self) -> Timestamp {
        let millis = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Timestamp::from_millis(millis)
    }

    fn instant(&self, at: Timestamp) -> Instant {
        self.start + Duration::from_millis(at.as_millis())
    }
}

/// Starts the driver task for `manager` against `executor`. It runs until `shutdown` is
/// cancelled; the returned handle is the only way to reach it.
pub fn spawn<E: Executor>(
    manager: Manager,
    executor: Arc<E>,
    config: DriverConfig,
    shutdown: CancellationToken,
) -> (ManagerHandle, tokio::task::JoinHandle<()>) {
    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (outcomes_tx, outcomes) = mpsc::channel(OUTCOME_QUEUE);
    let observations = executor.take_observations();
    let (recovered_tx, recovered) = watch::channel(false);
    let driver = Driver {
        manager,
        executor,
        config,
        // tokio's clock, not the wall clock: paused and simulated inside the simulation.
        clock: Clock {
            start: tokio::time::Instant::now(),
        },
        commands,
        outcomes,
        outcomes_tx,
        observations,
        tasks: JoinSet::new(),
        backlog: VecDeque::new(),
        put_waiters: BTreeMap::new(),
        leases: BTreeMap::new(),
        claim_waiters: BTreeMap::new(),
        recovered: recovered_tx,
        starts: BTreeMap::new(),
    };
    let task = tokio::spawn(driver.run(shutdown));
    (
        ManagerHandle {
            commands: commands_tx,
            recovered,
        },
        task,
    )
}

type PutWaiter = oneshot::Sender<Result<PutOutcome, PutFailure>>;

struct Driver<E: Executor> {
    manager: Manager,
    executor: Arc<E>,
    config: DriverConfig,
    clock: Clock,
    commands: mpsc::Receiver<Command>,
    outcomes: mpsc::Receiver<Outcome>,
    outcomes_tx: mpsc::Sender<Outcome>,
    observations: Option<mpsc::Receiver<Observation>>,
    /// Effects running against the backend.
    tasks: JoinSet<()>,
    /// Effects waiting for a free slot, in the order the manager issued them.
    backlog: VecDeque<Effect>,
    /// Puts waiting for their registration, by environment: (version, outcome, waiter).
    put_waiters: BTreeMap<EnvironmentId, Vec<(u64, PutOutcome, PutWaiter)>>,
    /// Claimed runners whose executions want to hear when the lease ends.
    leases: BTreeMap<RunnerId, watch::Sender<Option<LeaseEndCause>>>,
    /// Claims answered once their mark is written: (lease, the reply, who waits for it).
    claim_waiters: BTreeMap<RunnerId, (Lease, Reply, ClaimWaiter)>,
    /// Becomes true once, when the first inventory has been reconciled.
    recovered: watch::Sender<bool>,
    /// When each runner's start began, for the startup-duration measurement (only with a
    /// monitor; at most `STARTS_TIMED_MAX`).
    starts: BTreeMap<RunnerId, Instant>,
}

impl<E: Executor> Driver<E> {
    async fn run(mut self, shutdown: CancellationToken) {
        self.drain();
        loop {
            let deadline = self.manager.poll_timeout().map(|at| self.clock.instant(at));
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(command) = self.commands.recv() => self.command(command),
                Some(outcome) = self.outcomes.recv() => self.outcome(outcome),
                observation = recv_optional(&mut self.observations) => match observation {
                    Some(observation) => {
                        let input = match observation {
                            Observation::Up { runner, ports } => Input::RunnerUp { runner, ports },
                            Observation::Down { runner, cause } => {
                                Input::RunnerDown { runner, cause }
                            }
                        };
                        let now = self.clock.now();
                        tracing::debug!(?input, %now, "observation");
                        let up = self.forget_start(&input);
                        self.manager.apply(now, input);
                        if let Some((runner, started)) = up {
                            self.record_startup(runner, started);
                        }
                    }
                    None => {
                        tracing::error!("the backend stopped reporting observations");
                        self.observations = None;
                    }
                },
                Some(joined) = self.tasks.join_next() => {
                    if let Err(error) = joined
                        && error.is_panic()
                    {
                        tracing::error!(%error, "an effect task panicked");
                    }
                }
                () = sleep_until(deadline) => {
                    let now = self.clock.now();
                    self.manager.handle_timeout(now);
                }
            }
            self.drain();
        }
        // Whatever still watches a lease learns it is over. The API's executions have ended
        // already: they watch the same shutdown (`api::Executions`) and prefer it.
        for (_, lease) in std::mem::take(&mut self.leases) {
            let _ = lease.send(Some(LeaseEndCause::Released));
        }
        // Claim marks still waiting are what a restarted server recovers claims from: write them
        // (with the effects already in flight) within a bound, abandon everything else. What the
        // backend keeps is its own business (the local backend destroys its sandboxes at
        // shutdown, Nomad's runners are recovered).
        let marks: Vec<Effect> = self
            .backlog
            .drain(..)
            .filter(|effect| matches!(effect, Effect::MarkRunner { .. }))
            .collect();
        let pending_marks = marks.len();
        for mark in marks {
            self.start(mark);
        }
        let flushed = tokio::time::timeout(self.config.shutdown_flush_timeout, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if flushed.is_err() {
            tracing::warn!(pending_marks, "gave up flushing effects at shutdown");
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    fn command(&mut self, command: Command) {
        let now = self.clock.now();
        match command {
            Command::Apply { input, reply } => {
                let reply_value = self.manager.apply(now, input);
                let _ = reply.send(reply_value);
            }
            Command::Claim { input, reply } => {
                let reply_value = self.manager.apply(now, input);
                let Reply::Claim(Ok(claimed)) = &reply_value else {
                    let _ = reply.send(Ok(reply_value));
                    return;
                };
                let (runner, lease) = (claimed.runner, claimed.lease);
                if self.start_claim_mark(runner, lease) {
                    self.claim_waiters
                        .insert(runner, (lease, reply_value, reply));
                } else {
                    // Nothing to persist (the manager asked for no mark): answer at once.
                    let _ = reply.send(Ok(reply_value));
                }
            }
            Command::Put { id, spec, reply } => {
                match self.manager.put_environment(now, id, spec) {
                    Ok(PutOutcome::Unchanged) => {
                        let _ = reply.send(Ok(PutOutcome::Unchanged));
                    }
                    Ok(outcome) => {
                        // The registration just queued carries the version to wait for.
                        let version = self.pending_registration(id);
                        match version {
                            Some(version) => self
                                .put_waiters
                                .entry(id)
                                .or_default()
                                .push((version, outcome, reply)),
                            None => {
                                let _ = reply.send(Ok(outcome));
                            }
                        }
                    }
                    Err(error) => {
                        let _ = reply.send(Err(PutFailure::Refused(error)));
                    }
                }
            }
            Command::Query(query) => query(&self.manager),
            Command::WatchLease { runner, reply } => {
                let watch = self.manager.claimed_runner(runner).map(|_| {
                    self.leases
                        .entry(runner)
                        .or_insert_with(|| watch::channel(None).0)
                        .subscribe()
                });
                let _ = reply.send(watch);
            }
        }
    }

    /// Starts the mark effect the manager just queued for this claim at once, ahead of the
    /// backlog and outside the in-flight bound (the claim's client is waiting for it; there is
    /// at most one per claimed runner). Returns whether there was one.
    fn start_claim_mark(&mut self, runner: RunnerId, lease: Lease) -> bool {
        let mut found = None;
        let mut effects = Vec::new();
        while let Some(effect) = self.manager.poll_effect() {
            match &effect {
                Effect::MarkRunner {
                    runner: marked,
                    mark: RunnerMark::Claimed(claim),
                } if *marked == runner && claim.lease == lease && found.is_none() => {
                    found = Some(effect);
                }
                _ => effects.push(effect),
            }
        }
        self.backlog.extend(effects);
        match found {
            Some(mark) => {
                self.start(mark);
                true
            }
            None => false,
        }
    }

    /// The version of the registration the manager just queued for `id`, if any. Looks only at
    /// effects not yet drained, which is where a put's registration is right after the put.
    fn pending_registration(&mut self, id: EnvironmentId) -> Option<u64> {
        let mut version = None;
        let mut effects = Vec::new();
        while let Some(effect) = self.manager.poll_effect() {
            if let Effect::RegisterEnvironment {
                id: effect_id,
                version: effect_version,
                ..
            } = &effect
                && *effect_id == id
            {
                version = Some(*effect_version);
            }
            effects.push(effect);
        }
        self.backlog.extend(effects);
        version
    }

    fn outcome(&mut self, outcome: Outcome) {
        let now = self.clock.now();
        match outcome {
            Outcome::Registered {
                id,
                version,
                result,
            } => {
                self.manager
                    .environment_registered(now, id, version, result.is_ok());
                if let Some(waiters) = self.put_waiters.get_mut(&id) {
                    let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(waiters)
                        .into_iter()
                        .partition(|(waited, _, _)| *waited == version);
                    *waiters = waiting;
                    for (_, put, waiter) in done {
                        let answer = match &result {
                            Ok(()) => Ok(put),
                            Err(message) => Err(PutFailure::Backend(message.clone())),
                        };
                        let _ = waiter.send(answer);
                    }
                    if waiters.is_empty() {
                        self.put_waiters.remove(&id);
                    }
                }
            }
            Outcome::ClaimMarked {
                runner,
                lease,
                result,
            } => {
                if let Err(error) = &result {
                    self.manager
                        .apply(now, Input::ClaimMarkFailed { runner, lease });
                    tracing::warn!(%runner, %error, "a claim was withdrawn: its mark was not written");
                }
                if let Some((waited, reply, waiter)) = self.claim_waiters.remove(&runner) {
                    if waited == lease {
                        // A runner whose lease ended meanwhile (it went down, say) is not handed
                        // out: its client could only get 410s from it.
                        let current = self
                            .manager
                            .claimed_runner(runner)
                            .is_some_and(|(claimed, _)| claimed == lease);
                        let answer = match result {
                            Ok(()) if current => Ok(reply),
                            Ok(()) => Err(ClaimFailure::Withdrawn),
                            Err(error) => Err(ClaimFailure::NotDurable(error)),
                        };
                        let _ = waiter.send(answer);
                    } else {
                        self.claim_waiters.insert(runner, (waited, reply, waiter));
                    }
                }
            }
            Outcome::Input(input) => {
                let inventory = matches!(input, Input::Reconcile(_));
                self.forget_start(&input);
                self.manager.apply(now, input);
                if inventory && !*self.recovered.borrow() {
                    tracing::info!("first recovery finished: ready");
                    self.recovered.send_replace(true);
                }
            }
        }
    }

    /// Moves the manager's effects to the backlog, starts what fits, and delivers its events.
    fn drain(&mut self) {
        while let Some(effect) = self.manager.poll_effect() {
            self.backlog.push_back(effect);
        }
        while self.tasks.len() < self.config.effects_in_flight_max {
            let Some(effect) = self.backlog.pop_front() else {
                break;
            };
            self.start(effect);
        }
        while let Some(event) = self.manager.poll_event() {
            match event {
                Event::LeaseEnded { runner, cause, .. } => {
                    tracing::info!(%runner, ?cause, "lease ended");
                    if let Some(lease) = self.leases.remove(&runner) {
                        let _ = lease.send(Some(cause));
                    }
                }
                Event::StopAbandoned { runner, attempts } => {
                    tracing::warn!(%runner, attempts, "gave up stopping a runner");
                }
            }
        }
        if let Some(inspector) = &self.config.inspector {
            (inspector.0)(&self.manager, self.clock.now());
        }
    }

    /// Ends the timing of a runner's start on news of it; returns when it began if the runner
    /// came up.
    fn forget_start(&mut self, input: &Input) -> Option<(RunnerId, Instant)> {
        match input {
            Input::RunnerUp { runner, .. } => self.starts.remove(runner).map(|at| (*runner, at)),
            Input::RunnerDown { runner, .. } | Input::StopFinished { runner, .. } => {
                self.starts.remove(runner);
                None
            }
            _ => None,
        }
    }

    fn record_startup(&self, runner: RunnerId, started: Instant) {
        if let Some(monitor) = &self.config.monitor {
            let idle = self
                .manager
                .statistics(runner.environment())
                .map_or(0, |stats| stats.idle);
            monitor.runner_started(runner, started.elapsed(), idle);
        }
    }

    fn start(&mut self, effect: Effect) {
        if let Effect::StartRunner { runner, .. } = &effect
            && self.config.monitor.is_some()
            && self.starts.len() < STARTS_TIMED_MAX
        {
            // tokio's clock, as everywhere in the driver.
            self.starts.insert(*runner, Instant::now());
        }
        let executor = Arc::clone(&self.executor);
        let outcomes = self.outcomes_tx.clone();
        let now = self.clock.now();
        let span = effect_span(&effect);
        self.tasks.spawn(
            async move {
                let outcome = run_effect(&*executor, effect, now).await;
                tracing::debug!("effect done");
                if let Some(outcome) = outcome {
                    // The driver may be gone during shutdown; the outcome then no longer matters.
                    let _ = outcomes.send(outcome).await;
                }
            }
            .instrument(span),
        );
    }
}

/// The span an effect runs in: the runner's or environment's ids as fields, so every log line
/// of the backend's work on a runner carries them.
fn effect_span(effect: &Effect) -> tracing::Span {
    match effect {
        Effect::StartRunner { runner, .. }
        | Effect::StopRunner { runner }
        | Effect::MarkRunner { runner, .. } => tracing::info_span!(
            "runner",
            effect = effect_name(effect),
            runner_id = %runner,
            environment_id = %runner.environment()
        ),
        Effect::RegisterEnvironment { id, .. } | Effect::RemoveEnvironment { id } => {
            tracing::info_span!("environment", effect = effect_name(effect), environment_id = %id)
        }
        Effect::RequestInventory => tracing::info_span!("inventory"),
    }
}

fn effect_name(effect: &Effect) -> &'static str {
    match effect {
        Effect::StartRunner { .. } => "start",
        Effect::StopRunner { .. } => "stop",
        Effect::MarkRunner { .. } => "mark",
        Effect::RegisterEnvironment { .. } => "register",
        Effect::RemoveEnvironment { .. } => "remove",
        Effect::RequestInventory => "inventory",
    }
}

async fn run_effect<E: Executor>(executor: &E, effect: Effect, now: Timestamp) -> Option<Outcome> {
    match effect {
        Effect::RegisterEnvironment { id, spec, version } => {
            let result = executor
                .register_environment(id, spec)
                .await
                .map_err(|error| error.to_string());
            if let Err(error) = &result {
                tracing::warn!(environment = %id, %error, "registering an environment failed");
            }
            Some(Outcome::Registered {
                id,
                version,
                result,
            })
        }
        Effect::RemoveEnvironment { id } => {
            if let Err(error) = executor.remove_environment(id).await {
                tracing::warn!(environment = %id, %error, "removing an environment failed");
            }
            None
        }
        Effect::StartRunner { runner, spec } => match executor.start_runner(runner, spec).await {
            Ok(()) => None,
            Err(error) => {
                tracing::warn!(%runner, %error, "starting a runner failed");
                Some(Outcome::Input(Input::RunnerDown {
                    runner,
                    cause: trident_core::DownCause::FailedToStart,
                }))
            }
        },
        Effect::StopRunner { runner } => {
            let result = executor.stop_runner(runner).await;
            if let Err(error) = &result {
                tracing::warn!(%runner, %error, "stopping a runner failed");
            }
            Some(Outcome::Input(Input::StopFinished {
                runner,
                ok: result.is_ok(),
            }))
        }
        Effect::MarkRunner { runner, mark } => {
            let result = executor.mark_runner(runner, mark).await;
            if let Err(error) = &result {
                tracing::warn!(%runner, %error, "persisting a runner's mark failed");
            }
            match mark {
                // Claims wait for their mark either way.
                RunnerMark::Claimed(claim) => Some(Outcome::ClaimMarked {
                    runner,
                    lease: claim.lease,
                    result: result.map_err(|error| error.to_string()),
                }),
                _ => None,
            }
        }
        Effect::RequestInventory => match executor.inventory(now).await {
            Ok(inventory) => {
                tracing::debug!(
                    as_of = %inventory.as_of,
                    environments = inventory.environments.len(),
                    runners = ?inventory.runners.iter().map(|r| (r.id, &r.status)).collect::<Vec<_>>(),
                    "inventory"
                );
                Some(Outcome::Input(Input::Reconcile(inventory)))
            }
            Err(error) => {
                tracing::warn!(%error, "collecting the inventory failed");
                None
            }
        },
    }
}

async fn recv_optional<T>(receiver: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
