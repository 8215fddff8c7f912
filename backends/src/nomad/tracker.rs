//! The allocation tracker: Nomad's allocation and job events in, the manager's runner
//! observations out.
//!
//! Nomad reports allocations, the manager thinks in runners. A runner is one Nomad job
//! (`<envId>-<uuid>`, count 1), and over its life the job has a chain of allocations: the first
//! placement, then a replacement after every reschedule or migration, each with a new allocation
//! id. Allocation events come duplicated, reordered, late and sometimes not at all
//! (`reference/nomad-api.md` §10). The tracker keeps, per runner job, the one allocation that
//! currently stands for the runner, and tells the manager what changed:
//! [`Observation::Up`] when it runs, [`Observation::Down`] with a [`DownCause`] when it stops.
//!
//! It follows Poseidon's event handling (`reference/poseidon.md` §6.3), with these pre-filters,
//! in order:
//!
//! 1. The job must be a runner job: `template-<id>` jobs and ids that are not `<envId>-<uuid>`
//!    are ignored ([`Ignored::TemplateJob`], [`Ignored::ForeignJob`]).
//! 2. **Stale** ([`Ignored::Stale`]) replaces Poseidon's `ModifyTime < stream start` cutoff, which
//!    needed a clock and let old Job events through: an event for an allocation the tracker has
//!    already forgotten, an event whose `ModifyIndex` is below the one already seen for that
//!    allocation, and an event for an allocation the seed did not list although its
//!    `ModifyIndex` is not above the seed's index (it was gone when the list was taken).
//! 3. **Unknown** ([`Ignored::UnknownAllocation`]): an allocation of a job the tracker does not
//!    track is only taken up when it is `pending/run` (a placement).
//! 4. **Superseded** ([`Ignored::Superseded`]): an event for an allocation that a newer allocation
//!    of the same job replaced is ignored. "Newer" is decided by the `PreviousAllocation` /
//!    `NextAllocation` links, else by `CreateIndex`, else (indexes unknown) a `pending/run`
//!    placement counts as newer.
//! 5. **Duplicate** ([`Ignored::Duplicate`]): same (ClientStatus, DesiredStatus) as last seen.
//!
//! Then the table (one arm of the private `AllocationTracker::transition` each):
//!
//! | ClientStatus / Desired | observation | afterwards |
//! |---|---|---|
//! | pending / run, tracked (in-place restart) | `Down(OomKilled)` if the OOM rule holds, else `Down(Rescheduled)`, if the runner was up | tracked |
//! | any, newer allocation of a tracked job (reschedule, migration) | `Down(Rescheduled)` if the runner was up, then the row of its own status | the new one tracked |
//! | pending / run, untracked job | nothing | tracked |
//! | pending / stop | nothing | forgotten |
//! | running / run | `Up` with the ports of `AllocatedResources.Shared.Ports` | tracked |
//! | running / stop | `Down(Rescheduled)` if a replacement follows (`DesiredTransition.Migrate` or `NextAllocation`), else `Down(Completed)` | tracked until the replacement, else forgotten |
//! | complete / any | `Down(Completed)` only if not yet reported down | tracked if a replacement is awaited, else forgotten |
//! | failed or lost / any, with `NextAllocation` | `Down(Rescheduled)` if the runner was up | tracked until the replacement |
//! | failed or lost / any, without | `Down(Lost)`, or `Down(FailedToStart)` if the allocation failed without ever running | forgotten |
//! | unknown status | nothing | tracked |
//!
//! The manager hears changes only: no second `Down` for the same cause, no second restart for a
//! runner already restarting (an in-place restart followed by a migration is one restart).
//!
//! A `JobDeregistered` (or `JobBatchDeregistered`) event for a tracked job gives one
//! `Down(Deregistered)` and forgets the job; for an untracked job it gives nothing.
//!
//! Where Trident departs from Poseidon, on purpose (`reference/poseidon.md` §11, §13):
//!
//! - **Non-OOM in-place restarts are reused, not purged.** Poseidon reports a restart that is not
//!   classified as OOM with a nil reason, which its manager takes as "purge the job" (§11, code
//!   reading). Here it is `Down(Rescheduled)`: the container restarted clean under the same id.
//! - **OOM means OOM.** Poseidon counts `Restarts == 0` as an OOM kill (so container re-creations
//!   after an agent restart tell learners "OOM Killed"), and requires every restart to have been
//!   an OOM (`#oom_killed ≥ Restarts`), which the client's ten-event window and mixed causes
//!   break. Here: at least one restart, and the most recent event that says anything about
//!   `oom_killed` says `true`.
//! - **Regression 14-09-2023** (f031219, 2eb15c8): no race suppression; the chain a1→a2→a3 is
//!   followed through the superseded rule, and late stops of a2 are ignored.
//! - **Migration ordering** (4739e6e): the old allocation's desire-stop is reported at once, as in
//!   Poseidon, but as `Rescheduled` when Nomad says a replacement follows, so the runner survives
//!   in the manager and the replacement's `running` brings it back (Poseidon purged, then
//!   re-added it as a new idle runner).
//! - **Rescheduled runners are reported whether idle or claimed** (#433, #455): the tracker does
//!   not know claims; the manager ends the lease and takes the runner back clean (#321: never as
//!   idle under the old claim).
//! - **Seeding** (#343, 8950ce2): [`AllocationTracker::seed`] takes the full allocation list at
//!   every (re)start, so stops of allocations created before are not ignored as unknown.
//! - **Missing events** (#470, §10 row 6): a newer allocation of a tracked job is taken up
//!   whatever its first seen status, so a replacement whose `pending` event was lost still comes
//!   up; a `complete` whose `running/stop` was lost still reports the runner down.
//! - **Lost nodes coming back** (§10 row 29): updates for an allocation that was replaced are
//!   ignored, so a late `complete` of the old one does not take the new one down.
//! - **Jobs gone without JobDeregistered** (#612, #673): `JobBatchDeregistered` counts too.
//! - **IPv6 host addresses** are bracketed in `mappedPorts` (`[::1]:8080`, not `::1:8080`).
//!
//! Bounds: at most [`AllocationTracker::tracked_jobs_max`] jobs are tracked (default
//! [`TRACKED_JOBS_MAX_DEFAULT`]); at the bound a new placement is refused
//! ([`Ignored::AtCapacity`]) and counted, already tracked jobs go on as before. The manager then
//! never hears the refused runner come up, times its start out and stops it, so the failure is
//! loud and bounded rather than a silent eviction of a runner whose stop would then be missed. The
//! bound should sit well above the manager's runner count; reaching it means entries leaked
//! (events lost), which the next resync's [`AllocationTracker::seed`] repairs. Every job keeps at
//! most [`SUPERSEDED_PER_JOB_MAX`] replaced allocation ids, and the tracker remembers the last
//! [`FORGOTTEN_ALLOCATIONS_MAX`] allocations it forgot, to recognise their late events.
//!
//! Architecture invariant: pure. No I/O, no async, no clock, no randomness; ordered collections
//! only, so the same events give the same observations in production and in the simulation.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use trident_core::{DownCause, InventoryStatus, MappedPort, RunnerId};

use super::model::{
    Allocation, ClientStatus, DesiredStatus, Evaluation, EvaluationStatus, Event, EventType, Frame,
    PortMapping, RUNNER_TASK, TaskEvent, Topic,
};
use crate::Observation;

/// Default bound on tracked jobs: far above any pool Trident runs (Poseidon's production pools
/// add up to a few hundred runners), small enough to bound memory at a few MB.
pub const TRACKED_JOBS_MAX_DEFAULT: usize = 16_384;

/// Replaced allocation ids remembered per job. Poseidon's template allows 3 reschedules in 6 h;
/// migrations add one each. Older ones are recognised by `CreateIndex` anyway.
pub const SUPERSEDED_PER_JOB_MAX: usize = 4;

/// Forgotten allocation ids remembered, to ignore their late events (a `complete` after the
/// `running/stop` that was reported, a replayed frame). Beyond that, late events of forgotten
/// allocations are dropped by the unknown-allocation rule unless they are `pending/run`.
pub const FORGOTTEN_ALLOCATIONS_MAX: usize = 4_096;

/// Why the tracker ignored an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ignored {
    /// The job is an environment's template job (`template-<id>`).
    TemplateJob,
    /// The job id is not a runner id (`<envId>-<uuid>`): not Trident's job.
    ForeignJob,
    /// An allocation of an untracked job that is not a placement (`pending/run`).
    UnknownAllocation,
    /// Same client and desired status as last seen.
    Duplicate,
    /// Older than what the tracker already knows (see the module docs).
    Stale,
    /// A newer allocation of the same job replaced this one.
    Superseded,
    /// A new placement while [`AllocationTracker::tracked_jobs_max`] jobs are tracked.
    AtCapacity,
    /// A job event for a job the tracker does not track.
    UntrackedJob,
    /// An event the tracker does not act on (evaluations, other job events, a missing payload).
    Irrelevant,
}

/// What one event did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// What the manager must hear, in order. At most two: a replacement's `Down(Rescheduled)`
    /// followed by its own status.
    pub observations: Vec<Observation>,
    /// Why the event was ignored, if it was.
    pub ignored: Option<Ignored>,
}

impl Step {
    fn ignored(reason: Ignored) -> Self {
        Step {
            observations: Vec::new(),
            ignored: Some(reason),
        }
    }
}

/// Cumulative counts, for metrics and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Allocation events considered (from frames or given directly).
    pub allocation_events: u64,
    /// Job deregistrations considered.
    pub job_events: u64,
    /// `Up` observations returned.
    pub ups: u64,
    /// `Down` observations returned.
    pub downs: u64,
    /// Ignored events (and seeded allocations) by reason.
    pub ignored: BTreeMap<Ignored, u64>,
}

impl Counters {
    /// How many events were ignored for `reason`.
    pub fn ignored(&self, reason: Ignored) -> u64 {
        self.ignored.get(&reason).copied().unwrap_or(0)
    }
}

/// What the manager last heard about a runner from this tracker. Downs and Ups are reported on
/// changes of this, so duplicates and reorderings never reach the manager twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reported {
    /// Nothing since the runner's placement: the manager has it starting.
    Nothing,
    /// It is up.
    Up,
    /// It went down for this cause.
    Down(DownCause),
}

/// The allocation that currently stands for a runner.
#[derive(Clone, Debug)]
struct Tracked {
    id: String,
    create_index: u64,
    modify_index: u64,
    client: ClientStatus,
    desired: DesiredStatus,
    previous: Option<String>,
    next: Option<String>,
    /// Whether this allocation was ever seen running: a failure without it is a failed start.
    ran: bool,
    /// The last port mappings seen, for a `running` event that does not carry them.
    ports: Vec<MappedPort>,
}

impl Tracked {
    fn new(allocation: &Allocation) -> Self {
        Tracked {
            id: allocation.id.clone(),
            create_index: allocation.create_index,
            modify_index: allocation.modify_index,
            client: allocation.client_status.clone(),
            desired: allocation.desired_status.clone(),
            previous: allocation.previous_allocation.clone(),
            next: allocation.next_allocation.clone(),
            ran: false,
            ports: mapped_ports(allocation).unwrap_or_default(),
        }
    }

    /// Takes what a newer event of the same allocation adds. Links and indexes are only ever
    /// filled in, never cleared: an event that omits them (a stub, a test) knows less, not more.
    fn refresh(&mut self, allocation: &Allocation) {
        debug_assert_eq!(self.id, allocation.id);
        self.modify_index = self.modify_index.max(allocation.modify_index);
        if self.create_index == 0 {
            self.create_index = allocation.create_index;
        }
        if allocation.previous_allocation.is_some() {
            self.previous.clone_from(&allocation.previous_allocation);
        }
        if allocation.next_allocation.is_some() {
            self.next.clone_from(&allocation.next_allocation);
        }
        if let Some(ports) = mapped_ports(allocation) {
            self.ports = ports;
        }
    }
}

/// One tracked runner job.
#[derive(Clone, Debug)]
struct Job {
    current: Tracked,
    /// Ids of allocations `current` replaced, oldest first, at most [`SUPERSEDED_PER_JOB_MAX`].
    superseded: VecDeque<String>,
    reported: Reported,
}

impl Job {
    fn supersede(&mut self, id: String) {
        if self.superseded.len() == SUPERSEDED_PER_JOB_MAX {
            self.superseded.pop_front();
        }
        self.superseded.push_back(id);
    }

    /// Whether the manager was told the runner restarts, so a replacement is expected: the job
    /// stays tracked after its allocation ends, for the replacement to link to.
    fn awaits_replacement(&self) -> bool {
        matches!(self.reported, Reported::Down(cause) if cause.restarts())
    }
}

/// A bounded first-in-first-out set of forgotten allocation ids.
#[derive(Clone, Debug, Default)]
struct Forgotten {
    order: VecDeque<String>,
    ids: BTreeSet<String>,
}

impl Forgotten {
    fn insert(&mut self, id: String) {
        if self.ids.contains(&id) {
            return;
        }
        if self.order.len() == FORGOTTEN_ALLOCATIONS_MAX {
            let oldest = self
                .order
                .pop_front()
                .expect("a full ring has an oldest entry");
            self.ids.remove(&oldest);
        }
        self.ids.insert(id.clone());
        self.order.push_back(id);
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    fn clear(&mut self) {
        self.order.clear();
        self.ids.clear();
    }
}

/// Turns Nomad allocation and job events into runner observations. See the module docs for the
/// rules.
#[derive(Clone, Debug)]
pub struct AllocationTracker {
    jobs: BTreeMap<RunnerId, Job>,
    tracked_jobs_max: usize,
    /// The raft index of the allocation list the tracker was seeded with.
    seed_index: u64,
    forgotten: Forgotten,
    counters: Counters,
}

impl Default for AllocationTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl AllocationTracker {
    /// An empty tracker bounded at [`TRACKED_JOBS_MAX_DEFAULT`] jobs.
    pub fn new() -> Self {
        Self::with_capacity(TRACKED_JOBS_MAX_DEFAULT)
    }

    /// An empty tracker bounded at `tracked_jobs_max` jobs.
    pub fn with_capacity(tracked_jobs_max: usize) -> Self {
        assert!(
            tracked_jobs_max > 0,
            "a tracker must be able to track a job"
        );
        AllocationTracker {
            jobs: BTreeMap::new(),
            tracked_jobs_max,
            seed_index: 0,
            forgotten: Forgotten::default(),
            counters: Counters::default(),
        }
    }

    /// The bound on tracked jobs.
    pub fn tracked_jobs_max(&self) -> usize {
        self.tracked_jobs_max
    }

    /// How many jobs are tracked.
    pub fn tracked_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// The id of the allocation that stands for `runner`, if its job is tracked.
    pub fn allocation_of(&self, runner: RunnerId) -> Option<&str> {
        self.jobs.get(&runner).map(|job| job.current.id.as_str())
    }

    /// The runner's state as an inventory would list it, from its current allocation: `pending`
    /// is pending, `running/run` is running with its ports, anything else (stopping, ended) is
    /// not listed. The Nomad backend builds its inventory from the same seed, so the manager's
    /// reconciliation and the tracker start from one view.
    pub fn status(&self, runner: RunnerId) -> Option<InventoryStatus> {
        let current = &self.jobs.get(&runner)?.current;
        match (&current.client, &current.desired) {
            (ClientStatus::Pending, DesiredStatus::Run) => Some(InventoryStatus::Pending),
            (ClientStatus::Running, DesiredStatus::Run) => {
                Some(InventoryStatus::Running(current.ports.clone()))
            }
            _ => None,
        }
    }

    /// The counts so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Replaces everything the tracker knows with a full allocation list (`GET /v1/allocations`
    /// of the namespace) taken at raft index `index` (its `X-Nomad-Index`). Call it at start and
    /// after every resynchronisation, then resume the event stream at `index`: events the list
    /// already reflects are recognised as stale or duplicate.
    ///
    /// Per runner job, the newest `pending` or `running` allocation is tracked; the job's other
    /// allocations count as superseded. Jobs with only terminal allocations are not tracked.
    /// Running allocations count as reported up: the manager learns them from the inventory,
    /// not from this tracker. At the bound, jobs are taken in runner id order and the rest
    /// counted as [`Ignored::AtCapacity`]. Returns no observations: the inventory, not the
    /// tracker, tells the manager what exists.
    pub fn seed(&mut self, index: u64, allocations: impl IntoIterator<Item = Allocation>) {
        self.jobs.clear();
        self.forgotten.clear();
        self.seed_index = index;
        let mut by_job: BTreeMap<RunnerId, Vec<Allocation>> = BTreeMap::new();
        for allocation in allocations {
            match runner_of(&allocation.job_id) {
                Ok(runner) => by_job.entry(runner).or_default().push(allocation),
                Err(reason) => self.count_ignored(reason),
            }
        }
        for (runner, allocations) in by_job {
            let mut newest: Option<Tracked> = None;
            for allocation in &allocations {
                if !matches!(
                    allocation.client_status,
                    ClientStatus::Pending | ClientStatus::Running
                ) {
                    continue;
                }
                let newer = match &newest {
                    None => true,
                    Some(current) => replaces(current, allocation) == Some(true),
                };
                if newer {
                    newest = Some(Tracked::new(allocation));
                }
            }
            let Some(mut current) = newest else {
                continue;
            };
            if self.jobs.len() == self.tracked_jobs_max {
                self.count_ignored(Ignored::AtCapacity);
                continue;
            }
            current.ran = current.client == ClientStatus::Running;
            let reported = if current.ran {
                Reported::Up
            } else {
                Reported::Nothing
            };
            let mut job = Job {
                current,
                superseded: VecDeque::new(),
                reported,
            };
            for allocation in &allocations {
                if allocation.id != job.current.id {
                    job.supersede(allocation.id.clone());
                }
            }
            self.jobs.insert(runner, job);
        }
        self.check_invariants();
    }

    /// Applies every event of a frame, in order; a heartbeat does nothing. The stream client
    /// must already have dropped frames it applied before (Nomad re-sends the frame a resumed
    /// stream starts at).
    pub fn apply_frame(&mut self, frame: &Frame) -> Vec<Observation> {
        let mut observations = Vec::new();
        for event in &frame.events {
            observations.extend(self.apply_event(event).observations);
        }
        observations
    }

    /// Applies one event: allocation events of any type (`PlanResult` and `AllocationUpdated`
    /// alike, commit 9300a82), and job deregistrations. Everything else is irrelevant here.
    pub fn apply_event(&mut self, event: &Event) -> Step {
        match (&event.topic, &event.kind) {
            (Topic::Allocation, _) => match &event.payload.allocation {
                Some(allocation) => self.apply_allocation(allocation),
                None => self.ignore(Ignored::Irrelevant),
            },
            (Topic::Job, EventType::JobDeregistered | EventType::JobBatchDeregistered) => {
                let job_id = match &event.payload.job {
                    Some(job) if event.key.is_empty() => job.id.as_str(),
                    _ => event.key.as_str(),
                };
                self.job_deregistered(job_id)
            }
            _ => self.ignore(Ignored::Irrelevant),
        }
    }

    /// Applies one allocation update.
    pub fn apply_allocation(&mut self, allocation: &Allocation) -> Step {
        self.counters.allocation_events += 1;
        let step = self.allocation(allocation);
        self.finish(step)
    }

    /// Applies a job deregistration (`JobDeregistered`, `JobBatchDeregistered`): a tracked job
    /// reports `Down(Deregistered)` once and is forgotten. Nomad sometimes sends only this, and
    /// no allocation events (commit 6252699); when it does send them afterwards, they are stale.
    pub fn job_deregistered(&mut self, job_id: &str) -> Step {
        self.counters.job_events += 1;
        let step = match runner_of(job_id) {
            Err(reason) => Step::ignored(reason),
            Ok(runner) => match self.jobs.contains_key(&runner) {
                false => Step::ignored(Ignored::UntrackedJob),
                true => {
                    let mut observations = Vec::new();
                    self.report_down(runner, DownCause::Deregistered, &mut observations);
                    self.forget(runner);
                    Step {
                        observations,
                        ignored: None,
                    }
                }
            },
        };
        self.finish(step)
    }

    fn allocation(&mut self, allocation: &Allocation) -> Step {
        let runner = match runner_of(&allocation.job_id) {
            Ok(runner) => runner,
            Err(reason) => return Step::ignored(reason),
        };
        if self.forgotten.contains(&allocation.id) {
            return Step::ignored(Ignored::Stale);
        }
        let Some(job) = self.jobs.get(&runner) else {
            return self.place(runner, allocation);
        };
        if job.current.id == allocation.id {
            return self.update(runner, allocation);
        }
        if job.superseded.contains(&allocation.id) {
            return Step::ignored(Ignored::Superseded);
        }
        if self.missing_from_seed(allocation) {
            return Step::ignored(Ignored::Stale);
        }
        match replaces(&job.current, allocation) {
            Some(true) => self.replace(runner, allocation),
            Some(false) => Step::ignored(Ignored::Superseded),
            None => Step::ignored(Ignored::UnknownAllocation),
        }
    }

    /// An allocation of an untracked job: only a placement is taken up.
    fn place(&mut self, runner: RunnerId, allocation: &Allocation) -> Step {
        if !is_placement(allocation) {
            return Step::ignored(Ignored::UnknownAllocation);
        }
        if self.missing_from_seed(allocation) {
            return Step::ignored(Ignored::Stale);
        }
        if self.jobs.len() == self.tracked_jobs_max {
            return Step::ignored(Ignored::AtCapacity);
        }
        let job = Job {
            current: Tracked::new(allocation),
            superseded: VecDeque::new(),
            reported: Reported::Nothing,
        };
        self.jobs.insert(runner, job);
        Step::default()
    }

    /// A newer event of the job's current allocation.
    fn update(&mut self, runner: RunnerId, allocation: &Allocation) -> Step {
        let current = &mut self.job_mut(runner).current;
        if allocation.modify_index != 0 && allocation.modify_index < current.modify_index {
            return Step::ignored(Ignored::Stale);
        }
        current.refresh(allocation);
        if current.client == allocation.client_status
            && current.desired == allocation.desired_status
        {
            return Step::ignored(Ignored::Duplicate);
        }
        current.client = allocation.client_status.clone();
        current.desired = allocation.desired_status.clone();
        let mut observations = Vec::new();
        self.transition(runner, allocation, &mut observations);
        Step {
            observations,
            ignored: None,
        }
    }

    /// A newer allocation replaced the job's current one (reschedule, migration): the runner
    /// restarts clean under the same id, so the manager hears `Down(Rescheduled)` (if it had the
    /// runner up) and then whatever the new allocation's status says.
    fn replace(&mut self, runner: RunnerId, allocation: &Allocation) -> Step {
        let mut observations = Vec::new();
        if self.job_mut(runner).reported == Reported::Up {
            self.report_down(runner, DownCause::Rescheduled, &mut observations);
        }
        let job = self.job_mut(runner);
        let replaced = std::mem::replace(&mut job.current, Tracked::new(allocation));
        job.supersede(replaced.id);
        self.transition(runner, allocation, &mut observations);
        Step {
            observations,
            ignored: None,
        }
    }

    /// The table: what a new (ClientStatus, DesiredStatus) of the current allocation means.
    fn transition(
        &mut self,
        runner: RunnerId,
        allocation: &Allocation,
        observations: &mut Vec<Observation>,
    ) {
        let job = self.job_mut(runner);
        debug_assert_eq!(job.current.id, allocation.id);
        match (&allocation.client_status, &allocation.desired_status) {
            // An in-place restart of a runner that was up. A runner not up (the first event of a
            // replacement, reported already) falls through to "no news".
            (ClientStatus::Pending, DesiredStatus::Run) if job.reported == Reported::Up => {
                let cause = match oom_killed(allocation) {
                    true => DownCause::OomKilled,
                    false => DownCause::Rescheduled,
                };
                self.report_down(runner, cause, observations);
            }
            (ClientStatus::Pending, desired) if desired.wants_stop() => {
                // Stops of pending allocations are not propagated (commit 90d591d): a migration
                // of a pending allocation places a replacement, a purge sends JobDeregistered.
                // Only a runner reported up (its restart's pending/run was lost) is reported.
                if job.reported == Reported::Up {
                    self.report_down(runner, stop_cause(allocation), observations);
                }
                self.forget(runner);
            }
            (ClientStatus::Running, DesiredStatus::Run) => {
                job.current.ran = true;
                let ports = job.current.ports.clone();
                job.reported = Reported::Up;
                self.counters.ups += 1;
                observations.push(Observation::Up { runner, ports });
            }
            (ClientStatus::Running, desired) if desired.wants_stop() => {
                // Reported at once, before the allocation completes (commit 4739e6e), so the
                // runner is not handed out while it is being killed.
                let cause = stop_cause(allocation);
                self.report_down(runner, cause, observations);
                self.forget_unless_awaiting(runner);
            }
            (ClientStatus::Complete, _) => {
                // Normally reported at running/stop already; this catches a lost running/stop.
                if !matches!(self.job_mut(runner).reported, Reported::Down(_)) {
                    self.report_down(runner, DownCause::Completed, observations);
                }
                self.forget_unless_awaiting(runner);
            }
            (ClientStatus::Failed | ClientStatus::Lost, _) => {
                if allocation.next_allocation.is_some() {
                    // The replacement is placed already (same plan): the runner restarts.
                    if job.reported == Reported::Up {
                        self.report_down(runner, DownCause::Rescheduled, observations);
                    }
                } else {
                    let cause =
                        match allocation.client_status == ClientStatus::Lost || job.current.ran {
                            true => DownCause::Lost,
                            false => DownCause::FailedToStart,
                        };
                    self.report_down(runner, cause, observations);
                    self.forget(runner);
                }
            }
            // Nomad's own `unknown` (disconnected node), unseen statuses, and a running or
            // pending allocation with an unseen desired status: no news about the runner.
            _ => {}
        }
    }

    /// Tells the manager the runner went down for `cause`, unless that adds nothing to what it
    /// last heard: the same cause, or a restart of a runner it already knows to be restarting
    /// (an in-place restart followed by a migration is one restart to the manager).
    fn report_down(
        &mut self,
        runner: RunnerId,
        cause: DownCause,
        observations: &mut Vec<Observation>,
    ) {
        let job = self.job_mut(runner);
        let redundant = match job.reported {
            Reported::Down(reported) => {
                reported == cause || (reported.restarts() && cause.restarts())
            }
            Reported::Nothing | Reported::Up => false,
        };
        if redundant {
            return;
        }
        job.reported = Reported::Down(cause);
        self.counters.downs += 1;
        observations.push(Observation::Down { runner, cause });
    }

    /// Forgets the job, unless the manager was told the runner restarts and the replacement has
    /// yet to show up.
    fn forget_unless_awaiting(&mut self, runner: RunnerId) {
        if !self.job_mut(runner).awaits_replacement() {
            self.forget(runner);
        }
    }

    /// Drops a job whose end was reported; its allocations' late events become stale.
    fn forget(&mut self, runner: RunnerId) {
        let job = self
            .jobs
            .remove(&runner)
            .expect("only tracked jobs are forgotten");
        for id in job.superseded {
            self.forgotten.insert(id);
        }
        self.forgotten.insert(job.current.id);
    }

    /// Whether an allocation the tracker does not know should have been in the seed: its last
    /// change is not newer than the list, so it was gone (or terminal) when the list was taken.
    fn missing_from_seed(&self, allocation: &Allocation) -> bool {
        allocation.modify_index != 0 && allocation.modify_index <= self.seed_index
    }

    fn job_mut(&mut self, runner: RunnerId) -> &mut Job {
        self.jobs
            .get_mut(&runner)
            .expect("the caller checked that the job is tracked")
    }

    fn ignore(&mut self, reason: Ignored) -> Step {
        self.finish(Step::ignored(reason))
    }

    fn count_ignored(&mut self, reason: Ignored) {
        *self.counters.ignored.entry(reason).or_insert(0) += 1;
    }

    fn finish(&mut self, step: Step) -> Step {
        if let Some(reason) = step.ignored {
            debug_assert!(
                step.observations.is_empty(),
                "an ignored event observes nothing"
            );
            self.count_ignored(reason);
        }
        debug_assert!(
            step.observations.len() <= 2,
            "a replacement and its own status at most"
        );
        self.check_invariants();
        step
    }

    /// Asserts the bounds and the bookkeeping (debug builds).
    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        assert!(self.jobs.len() <= self.tracked_jobs_max);
        assert_eq!(self.forgotten.order.len(), self.forgotten.ids.len());
        assert!(self.forgotten.order.len() <= FORGOTTEN_ALLOCATIONS_MAX);
        for job in self.jobs.values() {
            assert!(job.superseded.len() <= SUPERSEDED_PER_JOB_MAX);
            assert!(!job.superseded.contains(&job.current.id));
            assert!(!self.forgotten.contains(&job.current.id));
            // A job whose end was reported is forgotten, except while a replacement is awaited.
            if let Reported::Down(cause) = job.reported {
                assert!(
                    cause.restarts(),
                    "{cause:?} reported but the job is still tracked"
                );
            }
        }
    }
}

/// How an inventory lists a runner job none of whose allocations runs (a running one is listed
/// `Running` with its ports by the caller), from all its allocations and, for a job that has
/// none, its evaluations (`GET /v1/job/:id/evaluations`):
///
/// - an allocation that is not terminal (placed, starting, restarting, being replaced): `Pending`;
/// - every allocation terminal, the newest naming no replacement: `Failed`, the inventory's word
///   for what the tracker reports as `Down(FailedToStart)` or `Down(Lost)` when it sees the
///   allocation end (a job whose replacement is only scheduled, Nomad's delayed reschedule, is
///   `Failed` as well: the tracker does not wait for such a replacement either);
/// - no allocation, and the newest evaluation blocked or ended without placing it (§4, the
///   judgement of [`super::evaluations::judge`]): `Failed`, as a registration waiting for that
///   evaluation would have failed. A Trident that died between registering a runner and hearing
///   its evaluation left such a job (the simulation's seeds 51 and 128), and the next one waited
///   for it until the start timeout;
/// - no allocation, and no evaluation, a pending one, or one that placed it after the allocation
///   list was read: `Pending`.
///
/// Pure: the caller reads the lists.
pub fn not_running_status(
    allocations: &[Allocation],
    evaluations: &[Evaluation],
) -> InventoryStatus {
    if allocations
        .iter()
        .any(|allocation| !allocation.client_status.is_terminal())
    {
        return InventoryStatus::Pending;
    }
    if let Some(newest) = allocations
        .iter()
        .max_by_key(|allocation| (allocation.create_index, allocation.modify_index))
    {
        return match newest.next_allocation {
            // Its replacement was placed after the list was read.
            Some(_) => InventoryStatus::Pending,
            None => InventoryStatus::Failed,
        };
    }
    let newest = evaluations
        .iter()
        .max_by_key(|evaluation| (evaluation.create_index, evaluation.modify_index));
    match newest {
        Some(evaluation) if evaluation.status == EvaluationStatus::Blocked => {
            InventoryStatus::Failed
        }
        Some(evaluation)
            if evaluation.status.is_terminal()
                && super::evaluations::judge(evaluation).is_err() =>
        {
            InventoryStatus::Failed
        }
        _ => InventoryStatus::Pending,
    }
}

/// The runner a job id names, or why it names none.
fn runner_of(job_id: &str) -> Result<RunnerId, Ignored> {
    job_id
        .parse()
        .map_err(|_| match job_id.starts_with("template-") {
            true => Ignored::TemplateJob,
            false => Ignored::ForeignJob,
        })
}

/// A fresh placement: what Poseidon takes up for an allocation it does not know.
fn is_placement(allocation: &Allocation) -> bool {
    allocation.client_status == ClientStatus::Pending
        && allocation.desired_status == DesiredStatus::Run
}

/// Whether `candidate` replaces `current` (two allocations of one job): `Some(true)` if it is
/// newer, `Some(false)` if older, `None` if nothing tells. The links are the authority; then the
/// creation index; without either, only a placement can be the newer one.
fn replaces(current: &Tracked, candidate: &Allocation) -> Option<bool> {
    let links_forward = candidate.previous_allocation.as_deref() == Some(current.id.as_str())
        || current.next.as_deref() == Some(candidate.id.as_str());
    let links_backward = current.previous.as_deref() == Some(candidate.id.as_str())
        || candidate.next_allocation.as_deref() == Some(current.id.as_str());
    match (links_forward, links_backward) {
        (true, false) => return Some(true),
        (false, true) => return Some(false),
        // No links, or contradictory ones: fall back to the indexes.
        _ => {}
    }
    if current.create_index != 0 && candidate.create_index != 0 {
        return Some(candidate.create_index > current.create_index);
    }
    is_placement(candidate).then_some(true)
}

/// Why a running allocation stops: `Rescheduled` when Nomad says a replacement follows (a
/// migration sets `DesiredTransition.Migrate`; a placed replacement sets `NextAllocation`), else
/// `Completed`.
fn stop_cause(allocation: &Allocation) -> DownCause {
    match allocation.desired_transition.migrate || allocation.next_allocation.is_some() {
        true => DownCause::Rescheduled,
        false => DownCause::Completed,
    }
}

/// The OOM rule: the runner task restarted at least once, and the most recent task event that
/// says anything about `oom_killed` says `true` (Nomad has no "OOM Killed" event type; it is a
/// `Terminated` event's detail). Under cgroups v2 Docker may not report it; such a kill counts as
/// an ordinary restart, which the manager handles the same way but for the message.
fn oom_killed(allocation: &Allocation) -> bool {
    let Some(task) = allocation.task_states.get(RUNNER_TASK) else {
        return false;
    };
    task.restarts >= 1 && task.events.iter().rev().find_map(TaskEvent::oom_killed) == Some(true)
}

/// The port mappings of an allocation, `None` if the event does not carry its resources. Like
/// Poseidon: the exposed port is `To` (the label, which Poseidon sets to the port number, when
/// `To` is omitted), reachable at `HostIP:Value`. Mappings without a usable port or host are
/// left out.
pub(crate) fn mapped_ports(allocation: &Allocation) -> Option<Vec<MappedPort>> {
    let resources = allocation.allocated_resources.as_ref()?;
    Some(
        resources
            .shared
            .ports
            .iter()
            .filter_map(mapped_port)
            .collect(),
    )
}

fn mapped_port(mapping: &PortMapping) -> Option<MappedPort> {
    let exposed = match mapping.to {
        0 => mapping.label.parse().ok()?,
        to => to,
    };
    let exposed_port = u16::try_from(exposed).ok().filter(|port| *port != 0)?;
    let host_port = u16::try_from(mapping.value)
        .ok()
        .filter(|port| *port != 0)?;
    if mapping.host_ip.is_empty() {
        return None;
    }
    let host_address = match mapping.host_ip.contains(':') {
        true => format!("[{}]:{host_port}", mapping.host_ip),
        false => format!("{}:{host_port}", mapping.host_ip),
    };
    Some(MappedPort {
        exposed_port,
        host_address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(label: &str, value: i64, to: i64, host_ip: &str) -> PortMapping {
        PortMapping {
            label: label.into(),
            value,
            to,
            host_ip: host_ip.into(),
        }
    }

    #[test]
    fn ports_map_container_port_to_host_address() {
        assert_eq!(
            mapped_port(&port("8080", 23817, 8080, "10.0.4.17")),
            Some(MappedPort {
                exposed_port: 8080,
                host_address: "10.0.4.17:23817".into()
            })
        );
    }

    #[test]
    fn ports_fall_back_to_the_label_and_bracket_ipv6() {
        assert_eq!(
            mapped_port(&port("3000", 31000, 0, "fd00::7")),
            Some(MappedPort {
                exposed_port: 3000,
                host_address: "[fd00::7]:31000".into()
            })
        );
    }

    #[test]
    fn unusable_ports_are_left_out() {
        assert_eq!(mapped_port(&port("web", 31000, 0, "10.0.0.1")), None);
        assert_eq!(mapped_port(&port("80", 0, 80, "10.0.0.1")), None);
        assert_eq!(mapped_port(&port("80", 70000, 80, "10.0.0.1")), None);
        assert_eq!(mapped_port(&port("80", 31000, -1, "10.0.0.1")), None);
        assert_eq!(mapped_port(&port("80", 31000, 80, "")), None);
    }

    #[test]
    fn template_and_foreign_job_ids_name_no_runner() {
        assert_eq!(runner_of("template-12"), Err(Ignored::TemplateJob));
        assert_eq!(runner_of("some-other-job"), Err(Ignored::ForeignJob));
        assert_eq!(runner_of(""), Err(Ignored::ForeignJob));
        assert!(runner_of("12-0b7e41f2-8c3d-11ef-9d2a-0242ac120002").is_ok());
    }

    fn allocation(id: &str, client: ClientStatus, create_index: u64) -> Allocation {
        Allocation {
            id: id.into(),
            job_id: "1-0b7e41f2-8c3d-11ef-9d2a-0242ac120002".into(),
            client_status: client,
            desired_status: DesiredStatus::Run,
            create_index,
            modify_index: create_index,
            ..Allocation::default()
        }
    }

    fn evaluation(status: EvaluationStatus, create_index: u64) -> Evaluation {
        Evaluation {
            id: format!("e{create_index}"),
            status,
            create_index,
            modify_index: create_index,
            ..Evaluation::default()
        }
    }

    #[test]
    fn a_job_with_a_live_allocation_is_pending() {
        for client in [ClientStatus::Pending, ClientStatus::Running] {
            let allocations = [
                allocation("a1", ClientStatus::Failed, 10),
                allocation("a2", client, 12),
            ];
            assert_eq!(
                not_running_status(&allocations, &[]),
                InventoryStatus::Pending
            );
        }
    }

    #[test]
    fn a_job_whose_allocations_all_ended_without_a_replacement_failed() {
        for client in [
            ClientStatus::Failed,
            ClientStatus::Lost,
            ClientStatus::Complete,
        ] {
            let allocations = [
                allocation("a2", client, 12),
                allocation("a1", ClientStatus::Lost, 10),
            ];
            assert_eq!(
                not_running_status(&allocations, &[]),
                InventoryStatus::Failed
            );
        }
        // The newest names its replacement, which the list missed: it is coming.
        let mut replaced = allocation("a2", ClientStatus::Lost, 12);
        replaced.next_allocation = Some("a3".into());
        assert_eq!(
            not_running_status(&[allocation("a1", ClientStatus::Failed, 10), replaced], &[]),
            InventoryStatus::Pending
        );
    }

    #[test]
    fn a_job_without_allocations_failed_when_its_placement_did() {
        // `reference/nomad-api.md` §6.6, placement impossible: the registration's evaluation
        // completes with `FailedTGAllocs` and a blocked evaluation follows it.
        let mut placement = evaluation(EvaluationStatus::Complete, 994);
        placement.failed_task_group_allocations.insert(
            "default-group".into(),
            serde_json::json!({"NodesExhausted": 1}),
        );
        placement.blocked_eval = Some("e999".into());
        placement.modify_index = 999;
        let blocked = evaluation(EvaluationStatus::Blocked, 999);
        assert_eq!(
            not_running_status(&[], &[placement.clone(), blocked.clone()]),
            InventoryStatus::Failed
        );
        assert_eq!(not_running_status(&[], &[blocked]), InventoryStatus::Failed);
        assert_eq!(
            not_running_status(&[], &[placement]),
            InventoryStatus::Failed
        );
        for ended in [EvaluationStatus::Failed, EvaluationStatus::Canceled] {
            assert_eq!(
                not_running_status(&[], &[evaluation(ended, 5)]),
                InventoryStatus::Failed
            );
        }
    }

    #[test]
    fn a_job_without_allocations_is_pending_while_its_placement_may_still_come() {
        assert_eq!(not_running_status(&[], &[]), InventoryStatus::Pending);
        assert_eq!(
            not_running_status(&[], &[evaluation(EvaluationStatus::Pending, 5)]),
            InventoryStatus::Pending
        );
        // Placed after the allocation list was read.
        assert_eq!(
            not_running_status(&[], &[evaluation(EvaluationStatus::Complete, 5)]),
            InventoryStatus::Pending
        );
        // A blocked evaluation that was run again and placed it: the newest decides.
        let mut failed = evaluation(EvaluationStatus::Complete, 5);
        failed
            .failed_task_group_allocations
            .insert("default-group".into(), serde_json::json!({}));
        let unblocked = evaluation(EvaluationStatus::Complete, 7);
        assert_eq!(
            not_running_status(&[], &[unblocked, failed]),
            InventoryStatus::Pending
        );
    }

    #[test]
    fn the_forgotten_ring_is_bounded_and_first_in_first_out() {
        let mut forgotten = Forgotten::default();
        for index in 0..=FORGOTTEN_ALLOCATIONS_MAX {
            forgotten.insert(format!("a{index}"));
        }
        assert_eq!(forgotten.order.len(), FORGOTTEN_ALLOCATIONS_MAX);
        assert!(!forgotten.contains("a0"));
        assert!(forgotten.contains("a1"));
        assert!(forgotten.contains(&format!("a{FORGOTTEN_ALLOCATIONS_MAX}")));
    }
}
