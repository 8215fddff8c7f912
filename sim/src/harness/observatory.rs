//! What the simulation sees: the canonical trace, the invariants and their violations, and the
//! views the hosts report into it (the manager after every input, every event frame Trident
//! processes, every answer a client gets).
//!
//! Every host runs on turmoil's one thread, so the observatory is a plain mutex shared by all of
//! them and by the step loop.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use trident_core::{EnvironmentStats, Manager, RunnerId};

use super::faults::{FaultKind, Fnv};
use crate::nomad::FakeNomad;

/// The named invariants, checked after every step (or at the moment the observation they need
/// is made, which is inside a step).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// `Manager::check_invariants` holds after every input the driver handles.
    ManagerInvariants,
    /// A lease number belongs to one runner's one claim, across every restart of Trident.
    LeaseNeverReissued,
    /// A runner id is handed out by a claim at most once in a whole run (a released runner is
    /// destroyed, never reused), so no runner is ever someone else's.
    RunnerHandedOutOnce,
    /// A claimed runner is a job the cluster really has.
    ClaimedRunnerIsReal,
    /// Within one subscription, the indexes of the event frames Trident processes never go
    /// backwards.
    FrameIndexMonotonic,
    /// Every runner job of Trident's in the cluster is known to the running Trident (tracked or
    /// being stopped) within a grace period.
    OwnedJobsTracked,
    /// An execution delivers at most one final answer (`exit`, `timeout` or `error`), and
    /// nothing after it.
    SingleFinalAnswer,
    /// An `exit` carries the exit code the command produced.
    ExitCodeFaithful,
    /// Output is the output the command produced (a file's content, N bytes, stdin echoed).
    OutputFaithful,
    /// A client's files never appear in another client's runner, and a file reads back as it
    /// was written.
    FilesPrivate,
    /// A time limit ends an execution with `timeout`, not before the limit and not long after.
    TimeLimitRespected,
    /// A released runner answers 410 afterwards.
    ReleasedRunnerGone,
    /// A command that ignored the interrupt at its time limit cannot be killed through Nomad's
    /// exec, so Trident stops its runner before it closes the execution: afterwards the runner
    /// answers 410, or (when the command never started) no process of it runs on in the
    /// runner's allocations.
    UnkillableCommandStopsRunner,
    /// Idle runners never exceed an environment's pool size.
    IdleWithinPool,
    /// After the faults stop, every pool is back at its size and no orphaned job remains,
    /// within a bounded time (liveness).
    HealedWithinBound,
}

impl Invariant {
    /// Every invariant, in report order.
    pub const ALL: [Invariant; 15] = [
        Invariant::ManagerInvariants,
        Invariant::LeaseNeverReissued,
        Invariant::RunnerHandedOutOnce,
        Invariant::ClaimedRunnerIsReal,
        Invariant::FrameIndexMonotonic,
        Invariant::OwnedJobsTracked,
        Invariant::SingleFinalAnswer,
        Invariant::ExitCodeFaithful,
        Invariant::OutputFaithful,
        Invariant::FilesPrivate,
        Invariant::TimeLimitRespected,
        Invariant::ReleasedRunnerGone,
        Invariant::UnkillableCommandStopsRunner,
        Invariant::IdleWithinPool,
        Invariant::HealedWithinBound,
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::ManagerInvariants => "manager-invariants",
            Invariant::LeaseNeverReissued => "lease-never-reissued",
            Invariant::RunnerHandedOutOnce => "runner-handed-out-once",
            Invariant::ClaimedRunnerIsReal => "claimed-runner-is-real",
            Invariant::FrameIndexMonotonic => "frame-index-monotonic",
            Invariant::OwnedJobsTracked => "owned-jobs-tracked",
            Invariant::SingleFinalAnswer => "single-final-answer",
            Invariant::ExitCodeFaithful => "exit-code-faithful",
            Invariant::OutputFaithful => "output-faithful",
            Invariant::FilesPrivate => "files-private",
            Invariant::TimeLimitRespected => "time-limit-respected",
            Invariant::ReleasedRunnerGone => "released-runner-gone",
            Invariant::UnkillableCommandStopsRunner => "unkillable-command-stops-runner",
            Invariant::IdleWithinPool => "idle-within-pool",
            Invariant::HealedWithinBound => "healed-within-bound",
        }
    }
}

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which.
    pub invariant: Invariant,
    /// Simulated time.
    pub at: Duration,
    /// What was seen.
    pub detail: String,
}

/// How long a runner job may exist unknown to a running Trident: a start whose answer was lost
/// is found by the next periodic reconciliation (60 s), a restart recovers within seconds; three
/// reconciliation periods leave room for a partition in between.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(180);

/// Counters for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Claims that returned a runner.
    pub claims: u64,
    /// Claims answered otherwise (empty pool, errors, timeouts).
    pub claims_refused: u64,
    /// Executions that reached a final answer.
    pub executions: u64,
    /// File copies answered 204.
    pub copies: u64,
    /// Lists and downloads that succeeded.
    pub reads: u64,
    /// Releases answered 204.
    pub releases: u64,
    /// Requests that failed at the transport (timeouts, resets, partitions).
    pub transport_errors: u64,
    /// Runners found stopped (410) after a command ignored the interrupt at its time limit
    /// ([`Invariant::UnkillableCommandStopsRunner`] held).
    pub unkillable_runners_stopped: u64,
    /// Manager inputs inspected.
    pub inspections: u64,
    /// Event frames Trident processed.
    pub frames: u64,
    /// Trident processes started (1 + restarts).
    pub incarnations: u64,
}

/// The manager as last inspected.
#[derive(Clone, Debug, Default)]
pub struct ManagerView {
    /// Its runners. Ids, not their text: the view is taken after every manager input, and
    /// formatting every id each time was a measurable part of a simulation.
    pub runners: BTreeSet<RunnerId>,
    /// Per environment.
    pub stats: Vec<EnvironmentStats>,
}

impl ManagerView {
    /// Whether the manager knows the runner a job id names (a job id that names no runner is no
    /// runner it knows).
    pub fn knows(&self, job_id: &str) -> bool {
        job_id
            .parse::<RunnerId>()
            .is_ok_and(|runner| self.runners.contains(&runner))
    }
}

/// The shared state of one seed's simulation.
#[derive(Debug)]
pub struct Observatory {
    trace_hash: Fnv,
    trace_lines: u64,
    /// Kept only when the step-by-step trace was asked for.
    trace: Option<String>,
    violations: Vec<Violation>,
    /// Counters for the report.
    pub counters: Counters,
    /// Faults fired, by kind.
    pub fired: BTreeMap<FaultKind, u64>,
    /// The fake Nomad, once its host has created it.
    pub nomad: Option<FakeNomad>,
    /// The current Trident's manager, as last inspected; `None` while Trident is down.
    pub manager: Option<ManagerView>,
    /// Every lease ever seen in a manager, and its runner.
    leases: BTreeMap<u64, RunnerId>,
    /// Every runner ever handed out by a claim, and the client it went to.
    handed_out: BTreeMap<String, usize>,
    /// Last frame index per (incarnation, subscription).
    frames: BTreeMap<(u64, u64), u64>,
    /// Runner jobs the running Trident does not know, since when.
    untracked: BTreeMap<String, Duration>,
    /// The cluster index and manager inspection count of the last cluster check: when neither
    /// moved, the comparison would find the same jobs, and only their clocks need a look.
    cluster_checked: Option<(u64, u64)>,
    /// Simulated time of the step loop.
    pub now: Duration,
}

impl Observatory {
    /// A fresh observatory; `keep_trace` keeps the trace's text (for `--trace`).
    pub fn new(keep_trace: bool) -> Self {
        Observatory {
            trace_hash: Fnv::default(),
            trace_lines: 0,
            trace: keep_trace.then(String::new),
            violations: Vec::new(),
            counters: Counters::default(),
            fired: BTreeMap::new(),
            nomad: None,
            manager: None,
            leases: BTreeMap::new(),
            handed_out: BTreeMap::new(),
            frames: BTreeMap::new(),
            untracked: BTreeMap::new(),
            cluster_checked: None,
            now: Duration::ZERO,
        }
    }

    /// Appends one line to the canonical trace, stamped with the simulated time.
    pub fn trace(&mut self, who: &str, what: impl std::fmt::Display) {
        let line = format!("{:>9.3} {who:<8} {what}\n", self.now.as_secs_f64());
        self.trace_hash.write(line.as_bytes());
        self.trace_lines += 1;
        if let Some(trace) = &mut self.trace {
            trace.push_str(&line);
        }
    }

    /// The trace's hash and length so far.
    pub fn trace_digest(&self) -> (u64, u64) {
        (self.trace_hash.finish(), self.trace_lines)
    }

    /// The trace's text, when it was kept.
    pub fn take_trace(&mut self) -> Option<String> {
        self.trace.take()
    }

    /// Records a violation (and traces it).
    pub fn violate(&mut self, invariant: Invariant, detail: impl Into<String>) {
        let detail = detail.into();
        self.trace("VIOLATED", format_args!("{}: {detail}", invariant.name()));
        self.violations.push(Violation {
            invariant,
            at: self.now,
            detail,
        });
    }

    /// The violations so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Counts a fired fault and traces it.
    pub fn fired(&mut self, kind: FaultKind, detail: impl std::fmt::Display) {
        *self.fired.entry(kind).or_default() += 1;
        self.trace("fault", format_args!("{kind} {detail}"));
    }

    /// The driver's inspector: the manager after an input.
    pub fn inspect_manager(&mut self, manager: &Manager) {
        self.counters.inspections += 1;
        if let Err(violation) = manager.check_invariants() {
            self.violate(Invariant::ManagerInvariants, format!("{violation:?}"));
        }
        let mut reissued = Vec::new();
        for (runner, lease) in manager.claimed_runners() {
            match self.leases.get(&lease.0) {
                Some(holder) if *holder != runner => reissued.push((lease.0, *holder, runner)),
                Some(_) => {}
                None => {
                    self.leases.insert(lease.0, runner);
                }
            }
        }
        for (lease, first, second) in reissued {
            self.violate(
                Invariant::LeaseNeverReissued,
                format!("lease {lease} was {first}'s and is now {second}'s"),
            );
        }
        let stats = manager.all_statistics();
        for environment in &stats {
            if environment.idle > environment.target {
                self.violate(
                    Invariant::IdleWithinPool,
                    format!(
                        "environment {} has {} idle runners for a pool of {}",
                        environment.id.0, environment.idle, environment.target
                    ),
                );
            }
        }
        self.manager = Some(ManagerView {
            runners: manager.runner_ids().collect(),
            stats,
        });
    }

    /// The Nomad backend's frame probe.
    pub fn frame(&mut self, incarnation: u64, subscription: u64, index: u64) {
        self.counters.frames += 1;
        let last = self.frames.entry((incarnation, subscription)).or_insert(0);
        if index < *last {
            let previous = *last;
            self.violate(
                Invariant::FrameIndexMonotonic,
                format!(
                    "Trident #{incarnation}, subscription {subscription}: frame {index} after {previous}"
                ),
            );
        } else {
            *last = index;
        }
    }

    /// A client got `runner` from a claim it sent when the cluster's raft index was
    /// `index_before`.
    pub fn handed_out(&mut self, runner: &str, client: usize, index_before: Option<u64>) {
        self.counters.claims += 1;
        if let Some(first) = self.handed_out.insert(runner.to_owned(), client) {
            self.violate(
                Invariant::RunnerHandedOutOnce,
                format!("{runner} was handed to client {first} and again to client {client}"),
            );
        }
        // A runner that lost its allocation while the answer was on its way may be purged by
        // the time the answer arrives: it was real when it was handed out.
        let known = self.nomad.as_ref().is_some_and(|nomad| {
            nomad.census().jobs.iter().any(|job| job.id == runner)
                || nomad
                    .purged_at(runner)
                    .zip(index_before)
                    .is_some_and(|(purged, before)| purged > before)
        });
        if !known {
            self.violate(
                Invariant::ClaimedRunnerIsReal,
                format!("{runner} (client {client}) is no job in the cluster"),
            );
        }
    }

    /// The step loop's cross-check of the cluster against the running Trident.
    pub fn check_cluster(&mut self) {
        let (Some(nomad), Some(manager)) = (&self.nomad, &self.manager) else {
            // Trident is down: nothing to compare with; restart the clocks when it is back.
            self.untracked.clear();
            self.cluster_checked = None;
            return;
        };
        let checked = (nomad.peek_index(), self.counters.inspections);
        if self.cluster_checked != Some(checked) {
            self.cluster_checked = Some(checked);
            let mut seen = BTreeSet::new();
            nomad.visit_live_jobs(|job| {
                if !job.starts_with("template-") && !manager.knows(job) {
                    seen.insert(job.to_owned());
                }
            });
            self.untracked.retain(|job, _| seen.contains(job));
            let now = self.now;
            for job in seen {
                self.untracked.entry(job).or_insert(now);
            }
        }
        let now = self.now;
        let mut overdue = Vec::new();
        for (job, since) in &mut self.untracked {
            if now.saturating_sub(*since) >= ORPHAN_GRACE {
                // Reported once per grace period, not once per step.
                *since = now;
                overdue.push(job.clone());
            }
        }
        for job in overdue {
            self.violate(
                Invariant::OwnedJobsTracked,
                format!(
                    "runner job {job} has been unknown to Trident for {}s",
                    ORPHAN_GRACE.as_secs()
                ),
            );
        }
    }

    /// Runner jobs in the cluster that are neither stopped nor known to Trident (orphans), and
    /// environments whose idle count is not their pool size: what the healed phase waits for.
    pub fn unhealed(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(manager) = &self.manager else {
            problems.push("Trident is not running".into());
            return problems;
        };
        for environment in &manager.stats {
            if environment.idle != environment.target || environment.starting > 0 {
                problems.push(format!(
                    "environment {}: {} idle, {} starting of a pool of {}",
                    environment.id.0, environment.idle, environment.starting, environment.target
                ));
            }
        }
        if let Some(nomad) = &self.nomad {
            for job in nomad.census().jobs {
                let live = !job.stopped && job.status != "dead";
                if live && !job.id.starts_with("template-") && !manager.knows(&job.id) {
                    problems.push(format!("orphaned runner job {job}", job = job.id));
                }
            }
        }
        problems
    }

    /// A one-line summary of the manager's pools and the cluster, for the periodic trace line.
    pub fn snapshot_line(&self) -> String {
        let mut line = String::new();
        match &self.manager {
            Some(manager) => {
                for environment in &manager.stats {
                    let _ = write!(
                        line,
                        "env{}={}i/{}u/{}s/{}x ",
                        environment.id.0,
                        environment.idle,
                        environment.used,
                        environment.starting,
                        environment.stopping
                    );
                }
            }
            None => line.push_str("trident=down "),
        }
        if let Some(nomad) = &self.nomad {
            let census = nomad.census();
            let live = census
                .jobs
                .iter()
                .filter(|job| !job.stopped && job.status != "dead")
                .count();
            let _ = write!(
                line,
                "jobs={live} running={} index={}",
                census.running.len(),
                census.index
            );
        }
        line
    }
}

/// The observatory as the hosts share it.
#[derive(Clone, Debug)]
pub struct Shared(pub Arc<Mutex<Observatory>>);

impl Shared {
    /// Locks it (a poisoned lock is still read: a panic elsewhere already failed the seed).
    pub fn lock(&self) -> MutexGuard<'_, Observatory> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
