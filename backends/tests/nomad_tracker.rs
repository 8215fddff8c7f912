//! The Nomad allocation tracker against Poseidon's event table and regression scenarios
//! (`reference/poseidon.md` §6.3, §11) and the failure modes of `reference/nomad-api.md` §10.
//! Every test asserts the exact sequence of observations the manager would receive.

use trident_backends::Observation;
use trident_backends::nomad::model::{
    AllocatedResources, Allocation, DesiredTransition, Frame, PortMapping, SharedResources,
    TaskEvent, TaskState,
};
use trident_backends::nomad::tracker::{AllocationTracker, Ignored, SUPERSEDED_PER_JOB_MAX};
use trident_core::{DownCause, InventoryStatus, MappedPort, RunnerId};

/// Poseidon's regression test job (environment 29).
const JOB: &str = "29-6f04b525-5315-11ee-af32-fa163e079f19";
const OTHER_JOB: &str = "29-0331c7d8-03c1-11ef-b832-fa163e7afdf8";

fn runner() -> RunnerId {
    JOB.parse().expect("a valid runner id")
}

fn other_runner() -> RunnerId {
    OTHER_JOB.parse().expect("a valid runner id")
}

/// An allocation of [`JOB`] with the given id and statuses; everything else absent, as in
/// Poseidon's tests.
fn alloc(id: &str, client: &str, desired: &str) -> Allocation {
    Allocation {
        id: id.into(),
        job_id: JOB.into(),
        client_status: client.into(),
        desired_status: desired.into(),
        ..Allocation::default()
    }
}

/// Setters for the fields the scenarios vary.
trait With {
    fn job(self, job: &str) -> Self;
    fn previous(self, id: &str) -> Self;
    fn next(self, id: &str) -> Self;
    fn created(self, index: u64) -> Self;
    fn modified(self, index: u64) -> Self;
    fn migrating(self) -> Self;
    fn task(self, restarts: u64, events: Vec<TaskEvent>) -> Self;
    fn port(self, to: i64, value: i64) -> Self;
}

impl With for Allocation {
    fn job(mut self, job: &str) -> Self {
        self.job_id = job.into();
        self
    }
    fn previous(mut self, id: &str) -> Self {
        self.previous_allocation = Some(id.into());
        self
    }
    fn next(mut self, id: &str) -> Self {
        self.next_allocation = Some(id.into());
        self
    }
    fn created(mut self, index: u64) -> Self {
        self.create_index = index;
        self
    }
    fn modified(mut self, index: u64) -> Self {
        self.modify_index = index;
        self
    }
    fn migrating(mut self) -> Self {
        self.desired_transition = DesiredTransition {
            migrate: true,
            reschedule: false,
        };
        self
    }
    fn task(mut self, restarts: u64, events: Vec<TaskEvent>) -> Self {
        let state = TaskState {
            state: "pending".into(),
            failed: false,
            restarts,
            events,
        };
        self.task_states.insert("default-task".into(), state);
        self
    }
    fn port(mut self, to: i64, value: i64) -> Self {
        let resources = self
            .allocated_resources
            .get_or_insert_with(|| AllocatedResources {
                shared: SharedResources::default(),
            });
        resources.shared.ports.push(PortMapping {
            label: to.to_string(),
            value,
            to,
            host_ip: "10.0.4.17".into(),
        });
        self
    }
}

/// A task event; `oom_killed` is its detail, if any.
fn task_event(kind: &str, oom_killed: Option<bool>) -> TaskEvent {
    let mut event = TaskEvent {
        kind: kind.into(),
        ..TaskEvent::default()
    };
    if let Some(oom) = oom_killed {
        event.details.insert("oom_killed".into(), oom.to_string());
    }
    event
}

/// An OOM kill and the restart that follows, as the client reports them.
fn oom_events() -> Vec<TaskEvent> {
    vec![
        task_event("Started", None),
        task_event("Terminated", Some(true)),
        task_event("Restarting", None),
    ]
}

/// A crash (exit 1) and the restart that follows.
fn crash_events() -> Vec<TaskEvent> {
    vec![
        task_event("Started", None),
        task_event("Terminated", Some(false)),
        task_event("Restarting", None),
    ]
}

/// What the tracker is fed: an allocation event or a job deregistration. Test inputs are few
/// and short-lived, so the size difference of the variants does not matter.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
enum In {
    Alloc(Allocation),
    Deregistered(&'static str),
}

impl From<Allocation> for In {
    fn from(allocation: Allocation) -> Self {
        In::Alloc(allocation)
    }
}

fn feed(tracker: &mut AllocationTracker, inputs: impl IntoIterator<Item = In>) -> Vec<Observation> {
    let mut observations = Vec::new();
    for input in inputs {
        let step = match input {
            In::Alloc(allocation) => tracker.apply_allocation(&allocation),
            In::Deregistered(job) => tracker.job_deregistered(job),
        };
        observations.extend(step.observations);
    }
    observations
}

fn run(inputs: impl IntoIterator<Item = In>) -> Vec<Observation> {
    feed(&mut AllocationTracker::new(), inputs)
}

fn allocs(allocations: impl IntoIterator<Item = Allocation>) -> Vec<In> {
    allocations.into_iter().map(In::Alloc).collect()
}

fn up() -> Observation {
    Observation::Up {
        runner: runner(),
        ports: vec![],
    }
}

fn up_with(ports: &[(u16, &str)]) -> Observation {
    Observation::Up {
        runner: runner(),
        ports: ports
            .iter()
            .map(|(exposed_port, host_address)| MappedPort {
                exposed_port: *exposed_port,
                host_address: (*host_address).into(),
            })
            .collect(),
    }
}

fn down(cause: DownCause) -> Observation {
    Observation::Down {
        runner: runner(),
        cause,
    }
}

/// a1 placed and running: the runner is up.
fn started(id: &str) -> Vec<Allocation> {
    vec![alloc(id, "pending", "run"), alloc(id, "running", "run")]
}

fn then(mut first: Vec<Allocation>, rest: impl IntoIterator<Item = Allocation>) -> Vec<In> {
    first.extend(rest);
    allocs(first)
}

// ----- §6.3, one row per line of the table -----

struct Row {
    behaviour: &'static str,
    inputs: Vec<In>,
    expected: Vec<Observation>,
}

fn table() -> Vec<Row> {
    vec![
        Row {
            behaviour: "pending/run of a tracked allocation classified as OOM: in-place restart, down as OomKilled, up again",
            inputs: then(
                started("a1"),
                [
                    alloc("a1", "pending", "run").task(1, oom_events()),
                    alloc("a1", "running", "run").task(1, oom_events()),
                ],
            ),
            expected: vec![up(), down(DownCause::OomKilled), up()],
        },
        Row {
            behaviour: "pending/run of a tracked allocation not classified as OOM: down as Rescheduled (Poseidon purged), up again",
            inputs: then(
                started("a1"),
                [
                    alloc("a1", "pending", "run").task(1, crash_events()),
                    alloc("a1", "running", "run").task(1, crash_events()),
                ],
            ),
            expected: vec![up(), down(DownCause::Rescheduled), up()],
        },
        Row {
            behaviour: "pending/run of a new allocation whose PreviousAllocation is tracked: the old one is rescheduled",
            inputs: then(
                started("a1"),
                [
                    alloc("a2", "pending", "run").previous("a1"),
                    alloc("a2", "running", "run").previous("a1"),
                ],
            ),
            expected: vec![up(), down(DownCause::Rescheduled), up()],
        },
        Row {
            behaviour: "pending/run of a new allocation without a previous one: tracked silently",
            inputs: allocs([alloc("a1", "pending", "run")]),
            expected: vec![],
        },
        Row {
            behaviour: "pending/run of a new allocation whose previous one is unknown: tracked silently, up when running",
            inputs: allocs([
                alloc("a2", "pending", "run").previous("gone"),
                alloc("a2", "running", "run").previous("gone"),
            ]),
            expected: vec![up()],
        },
        Row {
            behaviour: "pending/stop of a tracked allocation: untracked silently",
            inputs: allocs([
                alloc("a1", "pending", "run"),
                alloc("a1", "pending", "stop"),
                alloc("a1", "complete", "stop"),
            ]),
            expected: vec![],
        },
        Row {
            behaviour: "running/run of a tracked allocation: up with the allocated ports",
            inputs: allocs([
                alloc("a1", "pending", "run").port(8080, 23817),
                alloc("a1", "running", "run")
                    .port(8080, 23817)
                    .port(3000, 23818),
            ]),
            expected: vec![up_with(&[
                (8080, "10.0.4.17:23817"),
                (3000, "10.0.4.17:23818"),
            ])],
        },
        Row {
            behaviour: "running/run without resources: up with the ports the placement carried",
            inputs: allocs([
                alloc("a1", "pending", "run").port(8080, 23817),
                alloc("a1", "running", "run"),
            ]),
            expected: vec![up_with(&[(8080, "10.0.4.17:23817")])],
        },
        Row {
            behaviour: "running/stop of a tracked allocation: down as Completed at once",
            inputs: then(started("a1"), [alloc("a1", "running", "stop")]),
            expected: vec![up(), down(DownCause::Completed)],
        },
        Row {
            behaviour: "running/stop of a migrating allocation: down as Rescheduled",
            inputs: then(started("a1"), [alloc("a1", "running", "stop").migrating()]),
            expected: vec![up(), down(DownCause::Rescheduled)],
        },
        Row {
            behaviour: "complete/stop after running/stop: nothing more",
            inputs: then(
                started("a1"),
                [
                    alloc("a1", "running", "stop"),
                    alloc("a1", "complete", "stop"),
                ],
            ),
            expected: vec![up(), down(DownCause::Completed)],
        },
        Row {
            behaviour: "failed/stop with NextAllocation: down as Rescheduled once, the replacement adds nothing until it runs",
            inputs: then(
                started("a1"),
                [
                    alloc("a1", "failed", "stop").next("a2"),
                    alloc("a2", "pending", "run").previous("a1"),
                    alloc("a2", "running", "run").previous("a1"),
                ],
            ),
            expected: vec![up(), down(DownCause::Rescheduled), up()],
        },
        Row {
            behaviour: "lost/stop with NextAllocation: no Lost, the runner waits for its replacement",
            inputs: then(started("a1"), [alloc("a1", "lost", "stop").next("a2")]),
            expected: vec![up(), down(DownCause::Rescheduled)],
        },
        Row {
            behaviour: "failed/stop without NextAllocation after running: down as Lost",
            inputs: then(started("a1"), [alloc("a1", "failed", "stop")]),
            expected: vec![up(), down(DownCause::Lost)],
        },
        Row {
            behaviour: "lost/stop without NextAllocation: down as Lost",
            inputs: then(started("a1"), [alloc("a1", "lost", "stop")]),
            expected: vec![up(), down(DownCause::Lost)],
        },
        Row {
            behaviour: "failed without NextAllocation and never running: down as FailedToStart",
            inputs: allocs([alloc("a1", "pending", "run"), alloc("a1", "failed", "run")]),
            expected: vec![down(DownCause::FailedToStart)],
        },
        Row {
            behaviour: "JobDeregistered for a tracked job: down as Deregistered",
            inputs: {
                let mut inputs = allocs(started("a1"));
                inputs.push(In::Deregistered(JOB));
                inputs
            },
            expected: vec![up(), down(DownCause::Deregistered)],
        },
        Row {
            behaviour: "pre-filter: an unknown allocation that is not pending/run is dropped",
            inputs: allocs([alloc("a1", "running", "run")]),
            expected: vec![],
        },
        Row {
            behaviour: "pre-filter: an unchanged status is a duplicate",
            inputs: then(started("a1"), [alloc("a1", "running", "run")]),
            expected: vec![up()],
        },
    ]
}

#[test]
fn every_row_of_poseidons_table_gives_its_observations() {
    let mut failures = Vec::new();
    for row in table() {
        let actual = run(row.inputs.clone());
        if actual != row.expected {
            failures.push(format!(
                "{}\n  expected {:?}\n  actual   {:?}",
                row.behaviour, row.expected, actual
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ----- Regression scenarios -----

/// Poseidon's `RegressionTest_14_09_2023`, event for event: a reschedule chain a1 → a2 → a3 with
/// a2's stops arriving after a3 was placed. a3 must end up running.
#[test]
fn regression_14_09_2023_chain_ends_with_the_third_allocation_up() {
    let mut tracker = AllocationTracker::new();
    let observations = feed(
        &mut tracker,
        allocs([
            alloc("a1", "pending", "run"),
            alloc("a1", "running", "run"),
            alloc("a2", "pending", "run").previous("a1"),
            alloc("a3", "pending", "run").previous("a2"),
            alloc("a2", "pending", "stop").previous("a1").next("a3"),
            alloc("a2", "complete", "stop").previous("a1").next("a3"),
            alloc("a3", "running", "run").previous("a2"),
        ]),
    );
    assert_eq!(observations, vec![up(), down(DownCause::Rescheduled), up()]);
    assert_eq!(tracker.allocation_of(runner()), Some("a3"));
    assert_eq!(tracker.counters().ignored(Ignored::Superseded), 2);
}

/// The same chain with raft indexes and a1's own stop interleaved, as real Nomad numbers them.
#[test]
fn regression_14_09_2023_chain_with_indexes_and_interleaved_stops() {
    let observations = run(allocs([
        alloc("a1", "pending", "run").created(10).modified(10),
        alloc("a1", "running", "run").created(10).modified(12),
        alloc("a1", "running", "stop")
            .created(10)
            .modified(20)
            .next("a2")
            .migrating(),
        alloc("a2", "pending", "run")
            .created(20)
            .modified(20)
            .previous("a1"),
        alloc("a1", "complete", "stop")
            .created(10)
            .modified(22)
            .next("a2"),
        alloc("a2", "running", "run")
            .created(20)
            .modified(24)
            .previous("a1"),
        alloc("a2", "running", "stop")
            .created(20)
            .modified(30)
            .next("a3")
            .migrating(),
        alloc("a3", "pending", "run")
            .created(30)
            .modified(30)
            .previous("a2"),
        alloc("a2", "complete", "stop")
            .created(20)
            .modified(31)
            .next("a3"),
        alloc("a3", "running", "run")
            .created(30)
            .modified(33)
            .previous("a2"),
    ]));
    assert_eq!(
        observations,
        vec![
            up(),
            down(DownCause::Rescheduled),
            up(),
            down(DownCause::Rescheduled),
            up()
        ]
    );
}

/// A drain as Nomad sends it (`nomad-api.md` §5.5 row 9): the old allocation desires stop with
/// `Migrate`, the replacement runs, the old one completes. One Down(Rescheduled), and the runner
/// ends up up.
#[test]
fn migration_reports_one_reschedule_and_ends_up() {
    let observations = run(then(
        started("a1"),
        [
            alloc("a1", "running", "run").migrating(),
            alloc("a1", "running", "stop").migrating().next("a2"),
            alloc("a2", "pending", "run").previous("a1"),
            alloc("a2", "running", "run").previous("a1"),
            alloc("a1", "complete", "stop").migrating().next("a2"),
        ],
    ));
    assert_eq!(observations, vec![up(), down(DownCause::Rescheduled), up()]);
}

/// The plan's two allocations in the other order within the frame: the same observations.
#[test]
fn migration_with_the_replacement_first_in_the_frame_reports_the_same() {
    let observations = run(then(
        started("a1"),
        [
            alloc("a2", "pending", "run").previous("a1"),
            alloc("a1", "running", "stop").migrating().next("a2"),
            alloc("a2", "running", "run").previous("a1"),
            alloc("a1", "complete", "stop").migrating().next("a2"),
        ],
    ));
    assert_eq!(observations, vec![up(), down(DownCause::Rescheduled), up()]);
}

/// Poseidon's `CanHandleMigration` as written: no `Migrate` flag, no links between a1 and a2.
/// Nothing on the wire says a replacement follows, so a1's desire-stop is a completion; a2 is a
/// new placement of the same job and comes up (the manager, having dropped the runner, takes this
/// Up as a hint and re-adopts the runner through an inventory). No Down(Rescheduled) at all, and
/// a1's late completion does not take the runner down again.
#[test]
fn migration_without_any_marker_completes_the_old_and_brings_the_new_up() {
    let mut tracker = AllocationTracker::new();
    let observations = feed(
        &mut tracker,
        then(
            started("a1"),
            [
                alloc("a1", "running", "stop"),
                alloc("a2", "pending", "run"),
                alloc("a2", "running", "run"),
                alloc("a1", "complete", "stop"),
            ],
        ),
    );
    assert_eq!(observations, vec![up(), down(DownCause::Completed), up()]);
    assert_eq!(tracker.allocation_of(runner()), Some("a2"));
}

/// Poseidon's `ReportsOOMKilledStatus`: one restart and one event with `oom_killed=true` (no
/// event type, as in its test).
#[test]
fn oom_kill_counts_when_the_latest_oom_detail_is_true() {
    let observations = run(then(
        started("a1"),
        [alloc("a1", "pending", "run").task(1, vec![task_event("", Some(true))])],
    ));
    assert_eq!(observations, vec![up(), down(DownCause::OomKilled)]);
}

#[test]
fn a_crash_restart_is_a_reschedule_not_an_oom_kill() {
    let observations = run(then(
        started("a1"),
        [alloc("a1", "pending", "run").task(1, crash_events())],
    ));
    assert_eq!(observations, vec![up(), down(DownCause::Rescheduled)]);
}

/// Poseidon counts `Restarts == 0` as OOM; a container re-created after an agent restart is not
/// an OOM kill.
#[test]
fn a_restart_without_restarts_or_oom_events_is_a_reschedule() {
    let observations = run(then(
        started("a1"),
        [alloc("a1", "pending", "run").task(0, vec![task_event("Received", None)])],
    ));
    assert_eq!(observations, vec![up(), down(DownCause::Rescheduled)]);
}

#[test]
fn an_oom_kill_after_an_earlier_crash_is_an_oom_kill() {
    let mut events = crash_events();
    events.extend(oom_events());
    let observations = run(then(
        started("a1"),
        [alloc("a1", "pending", "run").task(2, events)],
    ));
    assert_eq!(observations, vec![up(), down(DownCause::OomKilled)]);
}

#[test]
fn a_crash_after_an_earlier_oom_kill_is_a_reschedule() {
    let mut events = oom_events();
    events.extend(crash_events());
    let observations = run(then(
        started("a1"),
        [alloc("a1", "pending", "run").task(2, events)],
    ));
    assert_eq!(observations, vec![up(), down(DownCause::Rescheduled)]);
}

/// Poseidon's "removes lost allocations not before the last restart attempt": a lost allocation
/// with a replacement does not lose the runner; a late report of the old one changes nothing.
#[test]
fn lost_with_next_allocation_waits_for_the_replacement() {
    let observations = run(then(
        started("a1"),
        [
            alloc("a1", "lost", "stop").next("a2"),
            alloc("a2", "pending", "run").previous("a1"),
            alloc("a2", "running", "run").previous("a1"),
            // The lost node comes back and reports the old allocation (nomad-api.md §10 row 29).
            alloc("a1", "complete", "stop").next("a2"),
        ],
    ));
    assert_eq!(observations, vec![up(), down(DownCause::Rescheduled), up()]);
}

#[test]
fn lost_without_next_allocation_is_lost_once() {
    let observations = run(then(
        started("a1"),
        [
            alloc("a1", "lost", "stop"),
            alloc("a1", "lost", "stop"),
            alloc("a1", "complete", "stop"),
        ],
    ));
    assert_eq!(observations, vec![up(), down(DownCause::Lost)]);
}

/// Nomad sometimes sends only `JobDeregistered` (commit 6252699); when the allocation events do
/// follow, or the deregistration repeats, the runner is still down exactly once.
#[test]
fn job_deregistered_without_allocation_events_reports_down_exactly_once() {
    let mut tracker = AllocationTracker::new();
    let mut inputs = allocs(started("a1"));
    inputs.extend([
        In::Deregistered(JOB),
        In::Deregistered(JOB),
        In::Alloc(alloc("a1", "running", "stop")),
        In::Alloc(alloc("a1", "complete", "stop")),
    ]);
    let observations = feed(&mut tracker, inputs);
    assert_eq!(observations, vec![up(), down(DownCause::Deregistered)]);
    assert_eq!(tracker.tracked_jobs(), 0);
    assert_eq!(tracker.counters().ignored(Ignored::UntrackedJob), 1);
}

#[test]
fn job_deregistered_for_an_untracked_job_reports_nothing() {
    let mut tracker = AllocationTracker::new();
    let observations = feed(
        &mut tracker,
        [In::Deregistered(JOB), In::Deregistered("template-29")],
    );
    assert_eq!(observations, vec![]);
    assert_eq!(tracker.counters().ignored(Ignored::UntrackedJob), 1);
    assert_eq!(tracker.counters().ignored(Ignored::TemplateJob), 1);
}

/// A runner restarting (down as Rescheduled) whose job is then purged is down as Deregistered.
#[test]
fn job_deregistered_while_a_replacement_is_awaited_reports_deregistered() {
    let mut inputs = then(started("a1"), [alloc("a1", "running", "stop").migrating()]);
    inputs.push(In::Deregistered(JOB));
    assert_eq!(
        run(inputs),
        vec![
            up(),
            down(DownCause::Rescheduled),
            down(DownCause::Deregistered)
        ]
    );
}

/// A runner restarting in place that is then migrated (its `running/run` in between lost)
/// restarts once, as far as the manager is concerned.
#[test]
fn a_restart_followed_by_a_migration_reports_one_restart() {
    let observations = run(then(
        started("a1"),
        [
            alloc("a1", "pending", "run").task(1, oom_events()),
            alloc("a1", "running", "stop").migrating().next("a2"),
            alloc("a2", "pending", "run").previous("a1"),
            alloc("a2", "running", "run").previous("a1"),
            alloc("a1", "complete", "stop").migrating().next("a2"),
        ],
    ));
    assert_eq!(observations, vec![up(), down(DownCause::OomKilled), up()]);
}

#[test]
fn duplicates_are_ignored() {
    let mut tracker = AllocationTracker::new();
    let observations = feed(
        &mut tracker,
        allocs([
            alloc("a1", "pending", "run"),
            alloc("a1", "pending", "run"),
            alloc("a1", "running", "run"),
            alloc("a1", "running", "run"),
            alloc("a1", "running", "stop"),
            alloc("a1", "running", "stop"),
        ]),
    );
    assert_eq!(observations, vec![up(), down(DownCause::Completed)]);
    assert_eq!(tracker.counters().ignored(Ignored::Duplicate), 2);
    // The second running/stop comes after the job was forgotten.
    assert_eq!(tracker.counters().ignored(Ignored::Stale), 1);
}

/// Poseidon's "does not callback for stopped pending allocations" (commit 90d591d).
#[test]
fn stops_of_pending_allocations_report_nothing() {
    let mut tracker = AllocationTracker::new();
    let observations = feed(
        &mut tracker,
        allocs([
            alloc("a1", "pending", "run"),
            alloc("a1", "pending", "stop").migrating(),
            alloc("a2", "pending", "run").previous("a1"),
            alloc("a2", "pending", "stop"),
        ]),
    );
    assert_eq!(observations, vec![]);
    assert_eq!(tracker.tracked_jobs(), 0);
}

#[test]
fn unknown_allocations_are_ignored() {
    let mut tracker = AllocationTracker::new();
    let observations = feed(
        &mut tracker,
        allocs([
            alloc("x", "running", "run"),
            alloc("x", "running", "stop"),
            alloc("x", "complete", "stop"),
            alloc("x", "failed", "stop"),
            alloc("x", "lost", "stop"),
        ]),
    );
    assert_eq!(observations, vec![]);
    assert_eq!(tracker.tracked_jobs(), 0);
    assert_eq!(tracker.counters().ignored(Ignored::UnknownAllocation), 5);
}

#[test]
fn template_jobs_and_foreign_jobs_are_ignored() {
    let mut tracker = AllocationTracker::new();
    let observations = feed(
        &mut tracker,
        allocs([
            alloc("t1", "pending", "run").job("template-29"),
            alloc("t1", "running", "run").job("template-29"),
            alloc("t1", "running", "stop").job("template-29"),
            alloc("f1", "pending", "run").job("prometheus"),
            alloc("f1", "running", "run").job("prometheus"),
        ]),
    );
    assert_eq!(observations, vec![]);
    assert_eq!(tracker.tracked_jobs(), 0);
    assert_eq!(tracker.counters().ignored(Ignored::TemplateJob), 3);
    assert_eq!(tracker.counters().ignored(Ignored::ForeignJob), 2);
}

// ----- Trident's own rules: seeding, staleness, superseding, bounds -----

#[test]
fn a_seeded_running_allocation_is_not_reported_again_but_its_stop_is() {
    let mut tracker = AllocationTracker::new();
    tracker.seed(
        100,
        [alloc("a1", "running", "run").modified(90).port(8080, 23817)],
    );
    assert_eq!(
        tracker.status(runner()),
        Some(InventoryStatus::Running(vec![MappedPort {
            exposed_port: 8080,
            host_address: "10.0.4.17:23817".into()
        }]))
    );
    let observations = feed(
        &mut tracker,
        allocs([
            // The frame at the seed index is re-sent when the stream resumes there.
            alloc("a1", "running", "run").modified(90),
            alloc("a1", "running", "stop").modified(101),
        ]),
    );
    assert_eq!(observations, vec![down(DownCause::Completed)]);
}

#[test]
fn a_seeded_running_allocation_restarting_reports_down_then_up() {
    let mut tracker = AllocationTracker::new();
    tracker.seed(100, [alloc("a1", "running", "run").modified(90)]);
    let observations = feed(
        &mut tracker,
        allocs([
            alloc("a1", "pending", "run")
                .modified(101)
                .task(1, oom_events()),
            alloc("a1", "running", "run").modified(102),
        ]),
    );
    assert_eq!(observations, vec![down(DownCause::OomKilled), up()]);
}

#[test]
fn seeding_tracks_the_newest_live_allocation_of_each_job_and_skips_others() {
    let mut tracker = AllocationTracker::new();
    tracker.seed(
        100,
        [
            alloc("a0", "complete", "stop").created(5).modified(9),
            alloc("a1", "running", "stop")
                .created(10)
                .modified(50)
                .next("a2")
                .migrating(),
            alloc("a2", "pending", "run").created(50).modified(50),
            alloc("o1", "complete", "stop")
                .job(OTHER_JOB)
                .created(7)
                .modified(8),
            alloc("t1", "running", "run").job("template-29"),
        ],
    );
    assert_eq!(tracker.tracked_jobs(), 1);
    assert_eq!(tracker.allocation_of(runner()), Some("a2"));
    assert_eq!(tracker.status(runner()), Some(InventoryStatus::Pending));
    assert_eq!(tracker.allocation_of(other_runner()), None);
    assert_eq!(tracker.counters().ignored(Ignored::TemplateJob), 1);
    // The old allocations' late events are superseded; the replacement comes up.
    let observations = feed(
        &mut tracker,
        allocs([
            alloc("a1", "complete", "stop")
                .created(10)
                .modified(101)
                .next("a2"),
            alloc("a0", "complete", "stop").created(5).modified(102),
            alloc("a2", "running", "run").created(50).modified(103),
        ]),
    );
    assert_eq!(observations, vec![up()]);
}

/// Replaces Poseidon's ModifyTime cutoff: a placement the seed did not list although it is not
/// newer than the seed was gone when the list was taken (a replayed frame).
#[test]
fn events_not_newer_than_the_seed_for_allocations_it_did_not_list_are_stale() {
    let mut tracker = AllocationTracker::new();
    tracker.seed(100, []);
    let observations = feed(
        &mut tracker,
        allocs([
            alloc("old", "pending", "run").modified(99),
            alloc("old", "running", "run").modified(100),
            alloc("new", "pending", "run").job(OTHER_JOB).modified(101),
            alloc("new", "running", "run").job(OTHER_JOB).modified(102),
        ]),
    );
    assert_eq!(
        observations,
        vec![Observation::Up {
            runner: other_runner(),
            ports: vec![]
        }]
    );
    assert_eq!(tracker.counters().ignored(Ignored::Stale), 1);
}

#[test]
fn an_older_modify_index_of_a_tracked_allocation_is_stale() {
    let mut tracker = AllocationTracker::new();
    let observations = feed(
        &mut tracker,
        allocs([
            alloc("a1", "pending", "run").modified(10),
            alloc("a1", "running", "run").modified(12),
            // Replayed from before: must not read as an in-place restart.
            alloc("a1", "pending", "run").modified(10),
        ]),
    );
    assert_eq!(observations, vec![up()]);
    assert_eq!(tracker.counters().ignored(Ignored::Stale), 1);
}

/// Without links, the creation index decides which allocation of a job is the newer one.
#[test]
fn an_older_allocation_by_creation_index_is_superseded() {
    let observations = run(allocs([
        alloc("a2", "pending", "run").created(20),
        alloc("a2", "running", "run").created(20),
        alloc("a1", "pending", "run").created(10),
        alloc("a1", "failed", "run").created(10),
    ]));
    assert_eq!(observations, vec![up()]);
}

/// The replacement's pending event was lost (issue #470): its first event is running.
#[test]
fn a_replacement_first_seen_running_takes_over() {
    let observations = run(then(
        started("a1"),
        [alloc("a2", "running", "run").previous("a1")],
    ));
    assert_eq!(observations, vec![up(), down(DownCause::Rescheduled), up()]);
}

/// The running/stop was lost; the completion still tells the manager the runner is gone.
#[test]
fn a_completion_whose_stop_was_missed_reports_completed() {
    let observations = run(then(started("a1"), [alloc("a1", "complete", "stop")]));
    assert_eq!(observations, vec![up(), down(DownCause::Completed)]);
}

#[test]
fn a_disconnected_allocation_reports_nothing_until_it_reconnects() {
    let observations = run(then(
        started("a1"),
        [alloc("a1", "unknown", "run"), alloc("a1", "running", "run")],
    ));
    assert_eq!(observations, vec![up(), up()]);
}

#[test]
fn runners_are_tracked_independently() {
    let other = |id: &str, client: &str, desired: &str| alloc(id, client, desired).job(OTHER_JOB);
    let observations = run(allocs([
        alloc("a1", "pending", "run"),
        other("b1", "pending", "run"),
        other("b1", "running", "run"),
        alloc("a1", "running", "run"),
        other("b1", "running", "stop"),
    ]));
    assert_eq!(
        observations,
        vec![
            Observation::Up {
                runner: other_runner(),
                ports: vec![]
            },
            up(),
            Observation::Down {
                runner: other_runner(),
                cause: DownCause::Completed
            },
        ]
    );
}

#[test]
fn reported_ends_are_forgotten() {
    let mut tracker = AllocationTracker::new();
    feed(
        &mut tracker,
        then(started("a1"), [alloc("a1", "running", "stop")]),
    );
    assert_eq!(tracker.tracked_jobs(), 0);
    assert_eq!(tracker.allocation_of(runner()), None);
}

#[test]
fn a_long_reschedule_chain_keeps_a_bounded_history() {
    let mut tracker = AllocationTracker::new();
    let mut inputs = allocs(started("a0"));
    let links = SUPERSEDED_PER_JOB_MAX + 3;
    for index in 1..=links {
        let (previous, id) = (format!("a{}", index - 1), format!("a{index}"));
        inputs.push(alloc(&id, "pending", "run").previous(&previous).into());
        inputs.push(alloc(&id, "running", "run").previous(&previous).into());
    }
    let observations = feed(&mut tracker, inputs);
    let mut expected = vec![up()];
    for _ in 0..links {
        expected.extend([down(DownCause::Rescheduled), up()]);
    }
    assert_eq!(observations, expected);
    assert_eq!(
        tracker.allocation_of(runner()),
        Some(format!("a{links}").as_str())
    );
}

/// At the bound a new placement is refused and counted; tracked jobs go on, and a forgotten job
/// frees its place.
#[test]
fn at_capacity_new_placements_are_refused_and_counted() {
    let mut tracker = AllocationTracker::with_capacity(1);
    let other = |id: &str, client: &str, desired: &str| alloc(id, client, desired).job(OTHER_JOB);
    let observations = feed(
        &mut tracker,
        allocs([
            alloc("a1", "pending", "run"),
            other("b1", "pending", "run"),
            other("b1", "running", "run"),
            alloc("a1", "running", "run"),
            alloc("a1", "running", "stop"),
            other("b2", "pending", "run"),
            other("b2", "running", "run"),
        ]),
    );
    assert_eq!(
        observations,
        vec![
            up(),
            down(DownCause::Completed),
            Observation::Up {
                runner: other_runner(),
                ports: vec![]
            },
        ]
    );
    assert_eq!(tracker.counters().ignored(Ignored::AtCapacity), 1);
    assert_eq!(tracker.counters().ignored(Ignored::UnknownAllocation), 1);
}

// ----- From the wire -----

/// A stream as NDJSON lines: heartbeat, placement with an evaluation, a duplicate, the task
/// start, a purge. Decoded with the model and applied frame by frame.
#[test]
fn frames_from_the_wire_drive_the_tracker() {
    let lines = [
        r#"{}"#.to_owned(),
        format!(
            r#"{{"Index": 200, "Events": [
                {{"Topic": "Job", "Type": "PlanResult", "Key": "{JOB}", "Index": 200, "Payload": {{"Job": {{"ID": "{JOB}", "Status": "running"}}}}}},
                {{"Topic": "Allocation", "Type": "PlanResult", "Key": "a1", "Index": 200, "FilterKeys": ["{JOB}", ""],
                  "Payload": {{"Allocation": {{"ID": "a1", "JobID": "{JOB}", "ClientStatus": "pending", "DesiredStatus": "run",
                    "CreateIndex": 200, "ModifyIndex": 200,
                    "AllocatedResources": {{"Shared": {{"Ports": [{{"Label": "8080", "Value": 23817, "To": 8080, "HostIP": "10.0.4.17"}}]}}}}}}}}}},
                {{"Topic": "Evaluation", "Type": "PlanResult", "Key": "e1", "Index": 200, "Payload": {{"Evaluation": {{"ID": "e1", "Status": "complete"}}}}}}
            ]}}"#
        ),
        format!(
            r#"{{"Index": 203, "Events": [{{"Topic": "Allocation", "Type": "AllocationUpdated", "Key": "a1", "Index": 203,
                "Payload": {{"Allocation": {{"ID": "a1", "JobID": "{JOB}", "ClientStatus": "pending", "DesiredStatus": "run",
                  "CreateIndex": 200, "ModifyIndex": 203, "TaskStates": {{"default-task": {{"State": "pending", "Restarts": 0,
                  "Events": [{{"Type": "Received", "Time": 1714644000000000000, "Details": {{}}}}]}}}}}}}}}}]}}"#
        ),
        format!(
            r#"{{"Index": 205, "Events": [{{"Topic": "Allocation", "Type": "AllocationUpdated", "Key": "a1", "Index": 205,
                "Payload": {{"Allocation": {{"ID": "a1", "JobID": "{JOB}", "ClientStatus": "running", "DesiredStatus": "run",
                  "CreateIndex": 200, "ModifyIndex": 205}}}}}}]}}"#
        ),
        format!(
            r#"{{"Index": 230, "Events": [{{"Topic": "Job", "Type": "JobDeregistered", "Key": "{JOB}", "Index": 230,
                "Payload": {{"Job": {{"ID": "{JOB}", "Status": "dead"}}, "Deleted": true}}}}]}}"#
        ),
        format!(
            r#"{{"Index": 231, "Events": [{{"Topic": "Allocation", "Type": "PlanResult", "Key": "a1", "Index": 231,
                "Payload": {{"Allocation": {{"ID": "a1", "JobID": "{JOB}", "ClientStatus": "running", "DesiredStatus": "stop",
                  "DesiredDescription": "alloc not needed due to job update", "CreateIndex": 200, "ModifyIndex": 231}}}}}}]}}"#
        ),
        "{}".to_owned(),
    ];
    let mut tracker = AllocationTracker::new();
    let mut observations = Vec::new();
    for line in &lines {
        let frame = Frame::from_json(line.as_bytes()).expect("a valid frame");
        observations.extend(tracker.apply_frame(&frame));
    }
    assert_eq!(
        observations,
        vec![
            up_with(&[(8080, "10.0.4.17:23817")]),
            down(DownCause::Deregistered)
        ]
    );
    let counters = tracker.counters();
    assert_eq!((counters.ups, counters.downs), (1, 1));
    assert_eq!(counters.ignored(Ignored::Duplicate), 1);
    assert_eq!(counters.ignored(Ignored::Stale), 1);
    assert_eq!(counters.ignored(Ignored::Irrelevant), 2);
}
