//! The Nomad [`AllocationTracker`] under arbitrary sequences of allocation events, job
//! deregistrations and re-seeds, decoded with `arbitrary` over a small id space (three runner
//! jobs, a template job and a foreign one; eight allocation ids per job; small raft indexes, links
//! between allocations, migrations, restarts with and without OOM details, port mappings), so
//! that replacements, reorderings, duplicates and stale events meet the same jobs. Where the
//! `event_stream` target reaches the tracker only through JSON, this one reaches its rules.
//!
//! After every step, for a tracker with a small bound and one with the default bound:
//! - the tracker's own invariant check holds (debug builds: bounds, bookkeeping, a job whose end
//!   was reported is forgotten unless a replacement is awaited);
//! - at most two observations, only for runner jobs;
//! - the manager hears changes only: per runner, a `Down` never repeats the cause last reported,
//!   nor reports a restart of a runner already restarting (since the job was last placed);
//! - after an `Up`, the runner's inventory status is running with the very ports reported;
//!   after a `Down`, it is not running; a runner whose status becomes running was reported up;
//! - the event applied through a frame gives the same observations as applied directly.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use trident_backends::Observation;
use trident_backends::nomad::model::{
    AllocatedResources, Allocation, ClientStatus, DesiredStatus, DesiredTransition, Event,
    EventType, Frame, JobPayload, Payload, PortMapping, SharedResources, TaskEvent, TaskState,
    Topic,
};
use trident_backends::nomad::tracker::AllocationTracker;
use trident_core::{EnvironmentId, InventoryStatus, RunnerId, Uuid};

/// Steps per input, so that an input's run time is bounded.
pub const STEPS_MAX: usize = 256;
/// The small tracker bound.
const TRACKED_JOBS_MAX_SMALL: usize = 2;
/// The task Poseidon's jobs run (the OOM rule reads its state).
const TASK: &str = "default-task";

/// One step of the sequence.
#[derive(Arbitrary, Debug)]
enum Step {
    /// An allocation update, as `AllocationUpdated`/`PlanResult` events bring them.
    Allocation(AllocationSpec),
    /// `JobDeregistered` or `JobBatchDeregistered`.
    Deregister {
        job: u8,
        batch: bool,
        /// The job id in the payload instead of the key.
        in_payload: bool,
    },
    /// A resynchronisation: a full allocation list at a raft index.
    Seed {
        index: u8,
        allocations: Vec<AllocationSpec>,
    },
    /// An event the tracker does not act on.
    Evaluation,
}

/// An allocation, over small domains.
#[derive(Arbitrary, Debug)]
struct AllocationSpec {
    job: u8,
    id: u8,
    client: u8,
    desired: u8,
    create_index: u8,
    modify_index: u8,
    previous: Option<u8>,
    next: Option<u8>,
    migrate: bool,
    restarts: u8,
    /// What the task's recent events say about `oom_killed`, oldest first.
    oom_events: Vec<Option<bool>>,
    /// Number of port mappings, if the event carries resources.
    ports: Option<u8>,
}

impl AllocationSpec {
    fn allocation(&self) -> Allocation {
        let client = [
            "pending", "running", "complete", "failed", "lost", "unknown", "",
        ][usize::from(self.client) % 7];
        let desired = ["run", "stop", "evict", ""][usize::from(self.desired) % 4];
        let mut task_states = BTreeMap::new();
        if self.restarts > 0 || !self.oom_events.is_empty() {
            let events = self
                .oom_events
                .iter()
                .take(4)
                .map(|oom| TaskEvent {
                    kind: "Terminated".to_owned(),
                    details: oom
                        .map(|oom| [("oom_killed".to_owned(), oom.to_string())].into())
                        .unwrap_or_default(),
                    ..TaskEvent::default()
                })
                .collect();
            task_states.insert(
                TASK.to_owned(),
                TaskState {
                    restarts: u64::from(self.restarts % 4),
                    events,
                    ..TaskState::default()
                },
            );
        }
        Allocation {
            id: allocation_id(self.job, self.id),
            job_id: job_id(self.job),
            client_status: ClientStatus::from(client),
            desired_status: DesiredStatus::from(desired),
            desired_transition: DesiredTransition {
                migrate: self.migrate,
                reschedule: false,
            },
            previous_allocation: self.previous.map(|id| allocation_id(self.job, id)),
            next_allocation: self.next.map(|id| allocation_id(self.job, id)),
            create_index: u64::from(self.create_index % 16),
            modify_index: u64::from(self.modify_index % 32),
            modify_time_ns: 0,
            task_states,
            allocated_resources: self.ports.map(|count| AllocatedResources {
                shared: SharedResources {
                    ports: (0..count % 3)
                        .map(|index| PortMapping {
                            label: format!("{}", 8000 + u16::from(index)),
                            value: 20_000 + i64::from(index),
                            to: if self.id.is_multiple_of(2) {
                                8000 + i64::from(index)
                            } else {
                                0
                            },
                            host_ip: ["10.0.0.1", "::1"][usize::from(self.id % 2)].to_owned(),
                        })
                        .collect(),
                },
            }),
        }
    }
}

/// Job numbers map to job ids through `job % 5`: 0, 1 and 2 are runner jobs.
fn runner(job: u8) -> RunnerId {
    RunnerId::new(EnvironmentId(1), Uuid(u128::from(job % 5) + 1))
}

/// Three runner jobs, a template job and a job that is not Trident's.
fn job_id(job: u8) -> String {
    match job % 5 {
        3 => "template-1".to_owned(),
        4 => "not-a-runner".to_owned(),
        _ => runner(job).to_string(),
    }
}

/// Allocation ids are uuids in Nomad, unique across jobs: eight per job here.
fn allocation_id(job: u8, id: u8) -> String {
    format!("alloc-{}-{}", job % 5, id % 8)
}

/// What the manager last heard about a runner from the tracker, since its job was last placed.
type Heard = BTreeMap<RunnerId, Observation>;

/// Runs the target on `data`.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut trackers = [
        (
            AllocationTracker::with_capacity(TRACKED_JOBS_MAX_SMALL),
            Heard::new(),
        ),
        (AllocationTracker::new(), Heard::new()),
    ];
    for _ in 0..STEPS_MAX {
        let Ok(step) = Step::arbitrary(&mut u) else {
            break;
        };
        for (tracker, heard) in &mut trackers {
            apply(tracker, heard, &step);
        }
        if u.is_empty() {
            break;
        }
    }
}

fn apply(tracker: &mut AllocationTracker, heard: &mut Heard, step: &Step) {
    let runners: Vec<RunnerId> = (0..3).map(runner).collect();
    let tracked_before: Vec<bool> = runners
        .iter()
        .map(|&runner| tracker.allocation_of(runner).is_some())
        .collect();
    let running_before: Vec<bool> = runners
        .iter()
        .map(|&runner| is_running(tracker, runner))
        .collect();
    let observations = match step {
        Step::Allocation(spec) => {
            let allocation = spec.allocation();
            let frame = Frame {
                index: allocation.modify_index,
                events: vec![Event {
                    topic: Topic::Allocation,
                    kind: EventType::AllocationUpdated,
                    key: allocation.id.clone(),
                    index: allocation.modify_index,
                    payload: Payload {
                        allocation: Some(allocation.clone()),
                        ..Payload::default()
                    },
                    ..Event::default()
                }],
            };
            let mut through_frame = tracker.clone();
            let observations = tracker.apply_allocation(&allocation).observations;
            assert_eq!(through_frame.apply_frame(&frame), observations);
            observations
        }
        Step::Deregister {
            job,
            batch,
            in_payload,
        } => {
            let id = job_id(*job);
            let event = Event {
                topic: Topic::Job,
                kind: if *batch {
                    EventType::JobBatchDeregistered
                } else {
                    EventType::JobDeregistered
                },
                key: if *in_payload {
                    String::new()
                } else {
                    id.clone()
                },
                payload: Payload {
                    job: in_payload.then(|| JobPayload { id: id.clone() }),
                    ..Payload::default()
                },
                ..Event::default()
            };
            let mut direct = tracker.clone();
            let observations = tracker.apply_event(&event).observations;
            assert_eq!(direct.job_deregistered(&id).observations, observations);
            observations
        }
        Step::Seed { index, allocations } => {
            tracker.seed(
                u64::from(*index % 32),
                allocations.iter().take(16).map(AllocationSpec::allocation),
            );
            // The inventory, not the tracker, tells the manager what exists after a seed.
            heard.clear();
            for &runner in &runners {
                if let Some(InventoryStatus::Running(ports)) = tracker.status(runner) {
                    heard.insert(runner, Observation::Up { runner, ports });
                }
            }
            Vec::new()
        }
        Step::Evaluation => {
            let event = Event {
                topic: Topic::Evaluation,
                kind: EventType::EvaluationUpdated,
                ..Event::default()
            };
            tracker.apply_event(&event).observations
        }
    };

    assert!(tracker.tracked_jobs() <= tracker.tracked_jobs_max());
    assert!(observations.len() <= 2, "{observations:?}");
    for (index, &runner) in runners.iter().enumerate() {
        // A job placed afresh starts a new history.
        if !tracked_before[index] && tracker.allocation_of(runner).is_some() {
            heard.remove(&runner);
        }
        let mine: Vec<&Observation> = observations
            .iter()
            .filter(|observation| observed_runner(observation) == runner)
            .collect();
        for observation in &mine {
            if let Observation::Down { cause, .. } = observation
                && let Some(Observation::Down { cause: last, .. }) = heard.get(&runner)
            {
                assert!(
                    last != cause && !(last.restarts() && cause.restarts()),
                    "{runner}: {cause:?} after {last:?}"
                );
            }
            heard.insert(runner, (*observation).clone());
        }
        match mine.last() {
            Some(Observation::Up { ports, .. }) => assert_eq!(
                tracker.status(runner),
                Some(InventoryStatus::Running(ports.clone())),
                "{runner} reported up"
            ),
            Some(Observation::Down { cause, .. }) => {
                assert!(!is_running(tracker, runner), "{runner} down ({cause:?})");
                if !cause.restarts() {
                    assert_eq!(tracker.allocation_of(runner), None, "{cause:?} yet tracked");
                }
            }
            None => {}
        }
        if !running_before[index]
            && is_running(tracker, runner)
            && !matches!(step, Step::Seed { .. })
        {
            assert!(
                matches!(mine.last(), Some(Observation::Up { .. })),
                "{runner} runs but was not reported up"
            );
        }
    }
    for observation in &observations {
        assert!(
            runners.contains(&observed_runner(observation)),
            "{observation:?} is not about a runner job"
        );
    }
}

fn observed_runner(observation: &Observation) -> RunnerId {
    match observation {
        Observation::Up { runner, .. } | Observation::Down { runner, .. } => *runner,
    }
}

fn is_running(tracker: &AllocationTracker, runner: RunnerId) -> bool {
    matches!(tracker.status(runner), Some(InventoryStatus::Running(_)))
}
