//! What goes into the manager and what comes out: inputs, replies, effects and events.
//!
//! - An [`Input`] is anything that happens: a request, a backend observation, the outcome of an
//!   effect, the passage of time. Each has a typed method on [`crate::Manager`]; the enum exists
//!   so that traces, property tests, fuzzers and the simulation can record and replay them.
//! - An [`Effect`] is work the manager wants done against the backend. The driver drains them
//!   with [`crate::Manager::poll_effect`] after every call and reports each outcome back as an
//!   input.
//! - An [`Event`] is news for the application: a lease ended (so its executions must be told),
//!   a stop was abandoned.

use std::sync::Arc;
use std::time::Duration;

use crate::ids::{EnvironmentId, ExecutionId, Lease, RunnerId};
use crate::spec::{EnvironmentSpec, MappedPort, SpecError};

/// Everything the manager reacts to, for recording and replay. See the methods of
/// [`crate::Manager`] of the same names for what each does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// `PUT /execution-environments/{id}`.
    PutEnvironment {
        /// The environment.
        id: EnvironmentId,
        /// Its new spec.
        spec: EnvironmentSpec,
    },
    /// `DELETE /execution-environments/{id}`.
    DeleteEnvironment {
        /// The environment.
        id: EnvironmentId,
    },
    /// `POST /runners`.
    Claim {
        /// The environment to claim a runner of.
        environment: EnvironmentId,
        /// Destroy the runner after this long without activity; `None` never.
        inactivity_timeout: Option<Duration>,
    },
    /// `DELETE /runners/{id}`.
    Release {
        /// The runner.
        runner: RunnerId,
    },
    /// A file operation or any other sign of life on a claimed runner.
    Activity {
        /// The runner.
        runner: RunnerId,
    },
    /// An execution's WebSocket connected.
    ExecutionStarted {
        /// The runner.
        runner: RunnerId,
        /// The execution.
        execution: ExecutionId,
    },
    /// An execution ended, however it ended.
    ExecutionFinished {
        /// The runner.
        runner: RunnerId,
        /// The execution.
        execution: ExecutionId,
    },
    /// An execution's command outlived its interrupt and the kill could not reach it (Nomad's
    /// exec ends the connection, not the process): only stopping the runner ends it. Poseidon's
    /// "the execution did not stop after SIGQUIT".
    ExecutionNotStopped {
        /// The runner.
        runner: RunnerId,
        /// The execution.
        execution: ExecutionId,
    },
    /// The outcome of an [`Effect::RegisterEnvironment`].
    EnvironmentRegistered {
        /// The environment.
        id: EnvironmentId,
        /// The version the effect carried.
        version: u64,
        /// Whether the backend accepted it.
        ok: bool,
    },
    /// The backend saw a runner up and ready.
    RunnerUp {
        /// The runner.
        runner: RunnerId,
        /// Where its exposed ports are reachable.
        ports: Vec<MappedPort>,
    },
    /// The backend saw a runner go down, or fail to start.
    RunnerDown {
        /// The runner.
        runner: RunnerId,
        /// Why.
        cause: DownCause,
    },
    /// The outcome of an [`Effect::StopRunner`].
    StopFinished {
        /// The runner.
        runner: RunnerId,
        /// Whether the backend confirmed the stop (a runner it does not know counts as stopped).
        ok: bool,
    },
    /// An [`Effect::MarkRunner`] that carried a claim failed for good.
    ClaimMarkFailed {
        /// The runner.
        runner: RunnerId,
        /// The lease the mark carried.
        lease: Lease,
    },
    /// The backend's full view, in answer to [`Effect::RequestInventory`] or at start-up.
    Reconcile(Inventory),
    /// Time passed: fire every deadline due.
    Timeout,
}

/// The answer to an [`Input`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// To [`Input::PutEnvironment`].
    Put(Result<PutOutcome, PutError>),
    /// To [`Input::DeleteEnvironment`].
    Delete(Result<(), UnknownEnvironment>),
    /// To [`Input::Claim`].
    Claim(Result<Claimed, ClaimError>),
    /// To [`Input::Release`], [`Input::Activity`] and the execution inputs.
    Runner(Result<(), RunnerError>),
    /// Inputs that have no answer: observations, outcomes, time.
    Done,
}

/// What a put did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new environment (Poseidon answers 201).
    Created,
    /// An existing environment got a new spec; its pool rolls or resizes (204).
    Updated,
    /// The same spec again: nothing changed (204).
    Unchanged,
}

/// Why a put was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    /// The spec is out of bounds.
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// The manager holds as many environments as it is configured for.
    #[error("too many execution environments (the maximum is {0})")]
    TooManyEnvironments(usize),
}

/// The environment does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("execution environment not found")]
pub struct UnknownEnvironment;

/// A successful claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    /// The runner now held.
    pub runner: RunnerId,
    /// The lease that proves it; never issued before.
    pub lease: Lease,
    /// Where its exposed ports are reachable.
    pub ports: Vec<MappedPort>,
}

/// Why a claim failed. The messages are Poseidon's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Poseidon: 404.
    #[error("execution environment not found")]
    UnknownEnvironment,
    /// Poseidon: 500 with `NOMAD_OVERLOAD`.
    #[error("no runners available for this execution environment")]
    NoIdleRunner,
}

/// Why a runner operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunnerError {
    /// Not a claimed runner (Poseidon: 410).
    #[error("no runner found with this id")]
    NotClaimed,
    /// The runner already has as many open executions as allowed.
    #[error("the runner already runs {0} executions")]
    TooManyExecutions(usize),
    /// This execution already started.
    #[error("the execution already started")]
    DuplicateExecution,
    /// No such open execution.
    #[error("execution id unknown")]
    UnknownExecution,
}

/// Why the backend says a runner went down. The tracker of each backend maps what it sees to
/// one of these; the manager decides what follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DownCause {
    /// The runner stopped as expected (Nomad: running → stop). Nothing left to clean up.
    Completed,
    /// The runner was killed for memory and restarts clean in place.
    OomKilled,
    /// The runner is being replaced under the same id (Nomad: rescheduled or migrated); it comes
    /// back clean.
    Rescheduled,
    /// The runner is lost and nothing replaces it. Whatever is left is purged.
    Lost,
    /// The runner's job was removed behind the manager's back. Nothing left to clean up.
    Deregistered,
    /// The runner could not be started (registration, placement or image pull failed). Whatever
    /// is left is purged, and the environment backs off before the next start.
    FailedToStart,
}

impl DownCause {
    /// Whether the runner comes back by itself, clean, under the same id.
    pub const fn restarts(self) -> bool {
        matches!(self, DownCause::OomKilled | DownCause::Rescheduled)
    }

    /// Whether the backend may still hold something of the runner that must be purged.
    pub const fn leaves_remains(self) -> bool {
        matches!(self, DownCause::Lost | DownCause::FailedToStart)
    }
}

/// Why a lease ended. The server maps it to the WebSocket message of the executions still open
/// (`reference/poseidon.md` §2.1 and §4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEndCause {
    /// The client released the runner.
    Released,
    /// No activity for the requested inactivity timeout.
    InactivityTimeout,
    /// The environment was deleted.
    EnvironmentDeleted,
    /// The claim could not be persisted in the backend, so it would not survive a restart; the
    /// runner is destroyed rather than risk handing it out twice (Poseidon does the same).
    ClaimNotPersisted,
    /// The backend reported the runner down.
    Backend(DownCause),
    /// The backend's inventory no longer lists the runner.
    MissingFromInventory,
    /// A command of the runner outlived its interrupt and could not be killed, so the runner
    /// was stopped ([`Input::ExecutionNotStopped`]).
    ExecutionNotStopped,
}

/// What a claim looks like when persisted in the backend (Nomad: job meta), so that a restarted
/// manager recovers who holds what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimMark {
    /// The lease of the claim.
    pub lease: Lease,
    /// The inactivity timeout the client asked for; re-armed from scratch on recovery.
    pub inactivity_timeout: Option<Duration>,
}

/// What the backend persists about a runner, so that a restarted manager knows who holds what.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RunnerMark {
    /// Never claimed, or restarted clean since: may be handed out.
    #[default]
    Idle,
    /// Claimed.
    Claimed(ClaimMark),
    /// Released or otherwise given up while its stop failed: dirty, must never be handed out,
    /// must be stopped by whoever finds it.
    Retired,
}

/// The backend's full view of environments and runners, for reconciliation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// When the backend started collecting it. Runners the manager learnt of at or after this
    /// time may be missing from it without being gone.
    pub as_of: crate::Timestamp,
    /// The environments the backend has registered.
    pub environments: Vec<(EnvironmentId, EnvironmentSpec)>,
    /// The runners the backend has, whatever their state.
    pub runners: Vec<InventoryRunner>,
}

/// One runner in an [`Inventory`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InventoryRunner {
    /// Its id.
    pub id: RunnerId,
    /// Whether it is up.
    pub status: InventoryStatus,
    /// What is persisted about its claim.
    pub mark: RunnerMark,
}

/// A runner's state as the backend reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InventoryStatus {
    /// Placed or starting, not yet ready.
    Pending,
    /// Up and ready, with its port mappings.
    Running(Vec<MappedPort>),
    /// Held by the backend but it will not run by itself: its start failed (Nomad: placement
    /// failed, its evaluation blocked) or everything that ran it ended and nothing replaces it.
    /// The same facts, seen as events, are [`DownCause::FailedToStart`] or [`DownCause::Lost`];
    /// listed, they let a manager that missed those events (a restart, a gap) purge the runner
    /// instead of waiting for a start that never comes.
    Failed,
}

/// Work for the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Register (create or update) an environment. Report with [`Input::EnvironmentRegistered`]
    /// carrying `version`.
    RegisterEnvironment {
        /// The environment.
        id: EnvironmentId,
        /// Its spec.
        spec: Arc<EnvironmentSpec>,
        /// Matches the outcome to this request; a newer put supersedes it.
        version: u64,
    },
    /// Remove an environment. Its runners are stopped by their own effects.
    RemoveEnvironment {
        /// The environment.
        id: EnvironmentId,
    },
    /// Start a runner. Report failure with [`Input::RunnerDown`] and [`DownCause::FailedToStart`];
    /// success shows as [`Input::RunnerUp`] when the runner is ready.
    StartRunner {
        /// The new runner's id.
        runner: RunnerId,
        /// The spec to start it with.
        spec: Arc<EnvironmentSpec>,
    },
    /// Stop a runner and purge what is left of it. Report with [`Input::StopFinished`].
    StopRunner {
        /// The runner.
        runner: RunnerId,
    },
    /// Persist what is known about a runner's claim. Report a failed [`RunnerMark::Claimed`]
    /// with [`Input::ClaimMarkFailed`]; other failures need no report (reconciliation and stop
    /// retries repeat them).
    MarkRunner {
        /// The runner.
        runner: RunnerId,
        /// The mark.
        mark: RunnerMark,
    },
    /// Collect an [`Inventory`] and hand it to [`Input::Reconcile`].
    RequestInventory,
}

impl Effect {
    /// The runner the effect acts on, if any.
    pub fn runner(&self) -> Option<RunnerId> {
        match self {
            Effect::StartRunner { runner, .. }
            | Effect::StopRunner { runner }
            | Effect::MarkRunner { runner, .. } => Some(*runner),
            Effect::RegisterEnvironment { .. }
            | Effect::RemoveEnvironment { .. }
            | Effect::RequestInventory => None,
        }
    }
}

/// News for the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A claimed runner is no longer held: tell its open executions why and forget the runner.
    LeaseEnded {
        /// The runner.
        runner: RunnerId,
        /// The lease that ended.
        lease: Lease,
        /// Why.
        cause: LeaseEndCause,
        /// The executions that were still open.
        executions: Vec<ExecutionId>,
    },
    /// A runner could not be stopped after the configured number of attempts; the manager
    /// forgets it, and the next reconciliation stops it again if it still exists.
    StopAbandoned {
        /// The runner.
        runner: RunnerId,
        /// How often a stop was tried.
        attempts: u32,
    },
}

/// One environment's figures (Poseidon's statistics route, plus what Trident adds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnvironmentStats {
    /// The environment.
    pub id: EnvironmentId,
    /// The pool size it asks for.
    pub target: u32,
    /// Runners ready to be claimed.
    pub idle: u32,
    /// Runners claimed.
    pub used: u32,
    /// Runners being started (or restarting).
    pub starting: u32,
    /// Runners being stopped.
    pub stopping: u32,
}
