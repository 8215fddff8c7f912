//! Nomad's wire format, as far as the allocation tracker and the evaluation waiters read it
//! (`reference/nomad-api.md` §1.3, §4, §5 and §6).
//!
//! Only what the tracker needs is modelled; every other key is ignored, so a newer Nomad that adds
//! fields decodes unchanged. Nomad's encoder makes three shapes of "nothing": a key left out (the
//! `omitempty` structs `Allocation`, `Port`, `AllocatedPortMapping` drop every zero field), a
//! `null` (a nil slice, map or pointer) and a zero value. All three decode to the same Rust value:
//! every field is `#[serde(default)]` and null-tolerant, and empty id strings become `None`.
//! Status strings Nomad may add later decode to an `Unknown(text)` variant rather than failing.
//!
//! The types only deserialise: the fake Nomad of the simulation needs Nomad's exact omit rules on
//! output, which is its own concern.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer};

/// The task Poseidon's template job runs the runner in (`reference/poseidon.md` §6.1).
pub const RUNNER_TASK: &str = "default-task";

/// Reads a value that Nomad may send as `null` (a nil Go slice, map or pointer) as its default.
/// Combined with `#[serde(default)]` it also covers an absent key.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Reads an optional allocation id: absent, `null` and `""` all mean "none" (Go's zero string is
/// what the omitempty encoder drops, the list stubs send it as `""`).
fn non_empty_string<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<String>::deserialize(deserializer)?.filter(|text| !text.is_empty()))
}

/// Declares a string enum with a fallback for values this code has not seen. `null` and an
/// absent key decode to `Unknown("")`, so a half-filled object still decodes and the tracker
/// decides what an unknown status means (nothing, as a rule).
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )*
            /// A value this code does not know, kept verbatim for logs.
            Unknown(String),
        }

        impl $name {
            /// The wire text.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $text, )*
                    $name::Unknown(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $( $text => $name::$variant, )*
                    other => $name::Unknown(other.to_owned()),
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::Unknown(String::new())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = Option::<Cow<'de, str>>::deserialize(deserializer)?;
                Ok(text.as_deref().map(Self::from).unwrap_or_default())
            }
        }
    };
}

wire_enum! {
    /// What the Nomad client reports about an allocation (`nomad-api.md` §5.4).
    ///
    /// Nomad's own `unknown` status (a disconnected node, only with `disconnect.lost_after`, which
    /// Poseidon's template does not set) lands in [`ClientStatus::Unknown`] like any unseen value:
    /// the tracker treats both as "no news about the runner".
    pub enum ClientStatus {
        /// No task started yet, or a task waits to restart.
        Pending => "pending",
        /// A task runs.
        Running => "running",
        /// All tasks ended and none failed (also after a stop the server asked for).
        Complete => "complete",
        /// A task failed.
        Failed => "failed",
        /// The server gave the allocation up because its node is down.
        Lost => "lost",
    }
}

impl ClientStatus {
    /// Nomad's terminal client statuses (`alloc.go` terminalAllocationStatuses).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ClientStatus::Complete | ClientStatus::Failed | ClientStatus::Lost
        )
    }
}

wire_enum! {
    /// What the server wants of an allocation (`nomad-api.md` §5.4).
    pub enum DesiredStatus {
        /// It should run.
        Run => "run",
        /// It should stop.
        Stop => "stop",
        /// It was preempted; it stops like `stop`.
        Evict => "evict",
    }
}

impl DesiredStatus {
    /// Whether the server wants the allocation gone (`stop` or `evict`).
    pub fn wants_stop(&self) -> bool {
        matches!(self, DesiredStatus::Stop | DesiredStatus::Evict)
    }
}

/// One allocation: the full object of `GET /v1/allocation/:id` and of an event's payload, or the
/// list stub of `GET /v1/allocations` (which lacks `PreviousAllocation` and, without
/// `resources=true`, `AllocatedResources`; both then decode as absent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Allocation {
    /// The allocation's own id (a uuid).
    #[serde(rename = "ID", default, deserialize_with = "null_as_default")]
    pub id: String,
    /// The job's id: `<envId>-<uuid>` for a runner, `template-<envId>` for an environment.
    #[serde(rename = "JobID", default, deserialize_with = "null_as_default")]
    pub job_id: String,
    /// What the client reports.
    #[serde(rename = "ClientStatus", default)]
    pub client_status: ClientStatus,
    /// What the server wants.
    #[serde(rename = "DesiredStatus", default)]
    pub desired_status: DesiredStatus,
    /// Why the server wants it changed; `Migrate` marks a drain or an `alloc stop`, after which
    /// Nomad places a replacement.
    #[serde(
        rename = "DesiredTransition",
        default,
        deserialize_with = "null_as_default"
    )]
    pub desired_transition: DesiredTransition,
    /// The allocation this one replaces (reschedule or migration), if any.
    #[serde(
        rename = "PreviousAllocation",
        default,
        deserialize_with = "non_empty_string"
    )]
    pub previous_allocation: Option<String>,
    /// The allocation that replaces this one, once the server has placed it.
    #[serde(
        rename = "NextAllocation",
        default,
        deserialize_with = "non_empty_string"
    )]
    pub next_allocation: Option<String>,
    /// Raft index of the allocation's creation: a later allocation of the same job has a larger
    /// one. 0 when unknown.
    #[serde(rename = "CreateIndex", default, deserialize_with = "null_as_default")]
    pub create_index: u64,
    /// Raft index of the allocation's last change: grows with every update of this allocation.
    /// 0 when unknown.
    #[serde(rename = "ModifyIndex", default, deserialize_with = "null_as_default")]
    pub modify_index: u64,
    /// Unix nanoseconds of the last change (beyond 2^53, so never routed through `f64`). The
    /// tracker orders by raft index instead; kept for logs.
    #[serde(rename = "ModifyTime", default, deserialize_with = "null_as_default")]
    pub modify_time_ns: i64,
    /// Per task: restarts and recent events.
    #[serde(rename = "TaskStates", default, deserialize_with = "null_as_default")]
    pub task_states: BTreeMap<String, TaskState>,
    /// What the scheduler reserved, including the port mappings.
    #[serde(rename = "AllocatedResources", default)]
    pub allocated_resources: Option<AllocatedResources>,
}

/// `DesiredTransition`: the server's intent behind a desired-status change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct DesiredTransition {
    /// The allocation is being migrated (node drain, `alloc stop`): a replacement follows.
    #[serde(rename = "Migrate", default, deserialize_with = "null_as_default")]
    pub migrate: bool,
    /// The allocation is to be rescheduled.
    #[serde(rename = "Reschedule", default, deserialize_with = "null_as_default")]
    pub reschedule: bool,
}

/// One task's state (`nomad-api.md` §5.6).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TaskState {
    /// `pending`, `running` or `dead`.
    #[serde(rename = "State", default, deserialize_with = "null_as_default")]
    pub state: String,
    /// Whether the task failed for good.
    #[serde(rename = "Failed", default, deserialize_with = "null_as_default")]
    pub failed: bool,
    /// How often the task restarted in place.
    #[serde(rename = "Restarts", default, deserialize_with = "null_as_default")]
    pub restarts: u64,
    /// The most recent events, oldest first (the client keeps the last ten or so).
    #[serde(rename = "Events", default, deserialize_with = "null_as_default")]
    pub events: Vec<TaskEvent>,
}

/// One task event. Only `Details` is authoritative; the flat fields beside it are deprecated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TaskEvent {
    /// `Terminated`, `Restarting`, `Started`, ... There is no "OOM Killed" type: an OOM kill is a
    /// `Terminated` event with `Details["oom_killed"] == "true"`.
    #[serde(rename = "Type", default, deserialize_with = "null_as_default")]
    pub kind: String,
    /// Unix nanoseconds.
    #[serde(rename = "Time", default, deserialize_with = "null_as_default")]
    pub time_ns: i64,
    /// Details by key (`exit_code`, `signal`, `oom_killed`, `restart_reason`, ...).
    #[serde(rename = "Details", default, deserialize_with = "null_as_default")]
    pub details: BTreeMap<String, String>,
}

impl TaskEvent {
    /// What the event says about an OOM kill: `Some(true)` or `Some(false)` when it carries the
    /// `oom_killed` detail, `None` when it says nothing about it.
    pub fn oom_killed(&self) -> Option<bool> {
        self.details
            .get("oom_killed")
            .map(|value| value.eq_ignore_ascii_case("true"))
    }
}

/// `AllocatedResources`; only the group-wide part matters here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct AllocatedResources {
    /// Group-wide resources.
    #[serde(rename = "Shared", default, deserialize_with = "null_as_default")]
    pub shared: SharedResources,
}

/// `AllocatedResources.Shared`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct SharedResources {
    /// The port mappings; `null` when the group has no network.
    #[serde(rename = "Ports", default, deserialize_with = "null_as_default")]
    pub ports: Vec<PortMapping>,
}

/// One `AllocatedPortMapping`. Zero fields are omitted on the wire, so `To` is absent when the
/// group maps no container port. Numbers are kept as Nomad's signed integers and range-checked
/// where they are used, so an odd value costs one port, not the whole allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PortMapping {
    /// The port's label; Poseidon uses the exposed port number as text.
    #[serde(rename = "Label", default, deserialize_with = "null_as_default")]
    pub label: String,
    /// The host port.
    #[serde(rename = "Value", default, deserialize_with = "null_as_default")]
    pub value: i64,
    /// The container port.
    #[serde(rename = "To", default, deserialize_with = "null_as_default")]
    pub to: i64,
    /// The host address.
    #[serde(rename = "HostIP", default, deserialize_with = "null_as_default")]
    pub host_ip: String,
}

wire_enum! {
    /// An event's topic (`nomad-api.md` §6.1); only the subscribed ones are named.
    pub enum Topic {
        /// Allocation changes.
        Allocation => "Allocation",
        /// Job changes.
        Job => "Job",
        /// Evaluation changes.
        Evaluation => "Evaluation",
    }
}

wire_enum! {
    /// The raft message that produced an event (`nomad-api.md` §6.3): the transaction's type,
    /// not the kind of change to the object.
    pub enum EventType {
        /// A job was registered or updated.
        JobRegistered => "JobRegistered",
        /// A job was deregistered (purged, or stopped).
        JobDeregistered => "JobDeregistered",
        /// Dead jobs were purged by garbage collection.
        JobBatchDeregistered => "JobBatchDeregistered",
        /// A scheduler plan was applied.
        PlanResult => "PlanResult",
        /// A client reported allocation updates.
        AllocationUpdated => "AllocationUpdated",
        /// The desired transition of allocations changed (stop API, drain).
        AllocationUpdateDesiredStatus => "AllocationUpdateDesiredStatus",
        /// An evaluation changed.
        EvaluationUpdated => "EvaluationUpdated",
    }
}

/// One line of the event stream: `{"Index": N, "Events": [...]}`, or the heartbeat `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Frame {
    /// The raft index of the frame's transaction; 0 for a heartbeat.
    #[serde(rename = "Index", default, deserialize_with = "null_as_default")]
    pub index: u64,
    /// The events of that index that passed the subscription's filter.
    #[serde(rename = "Events", default, deserialize_with = "null_as_default")]
    pub events: Vec<Event>,
}

impl Frame {
    /// Decodes one NDJSON line. A line that is not a frame (Nomad ≤ 1.11.1 appends an error text
    /// after the last frame when it ends a stream) is an error: the stream client treats it like
    /// a broken stream and resynchronises.
    pub fn from_json(line: &[u8]) -> Result<Frame, serde_json::Error> {
        serde_json::from_slice(line)
    }

    /// Whether this is a heartbeat (`{}`): Poseidon's test is `Index == 0 && no events`; a frame
    /// without events carries no news whatever its index.
    pub fn is_heartbeat(&self) -> bool {
        self.events.is_empty()
    }
}

/// One event of a frame (`nomad-api.md` §6.2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// Its topic.
    #[serde(rename = "Topic", default)]
    pub topic: Topic,
    /// The raft message that produced it.
    #[serde(rename = "Type", default)]
    pub kind: EventType,
    /// The object's id: allocation id, job id, evaluation id.
    #[serde(rename = "Key", default, deserialize_with = "null_as_default")]
    pub key: String,
    /// The object's namespace (`""` for namespace-less objects).
    #[serde(rename = "Namespace", default, deserialize_with = "null_as_default")]
    pub namespace: String,
    /// Equals the frame's index.
    #[serde(rename = "Index", default, deserialize_with = "null_as_default")]
    pub index: u64,
    /// The object itself.
    #[serde(rename = "Payload", default, deserialize_with = "null_as_default")]
    pub payload: Payload,
}

/// An event's payload: one object keyed by its kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Payload {
    /// For topic `Allocation`: the allocation (without its job).
    #[serde(rename = "Allocation", default)]
    pub allocation: Option<Allocation>,
    /// For topic `Job`: the job.
    #[serde(rename = "Job", default)]
    pub job: Option<JobPayload>,
    /// For topic `Evaluation`: the evaluation, which registrations wait for (`nomad-api.md` §4).
    #[serde(rename = "Evaluation", default)]
    pub evaluation: Option<Evaluation>,
}

/// The part of a job payload the tracker reads: its id, in case an event's `Key` is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct JobPayload {
    /// The job's id.
    #[serde(rename = "ID", default, deserialize_with = "null_as_default")]
    pub id: String,
}

// ---------------------------------------------------------------------------------------------
// Answers of the HTTP calls (`nomad-api.md` §3, §4), read by the client in `client.rs`. Same
// rules as above: every field defaultable, null-tolerant, unknown keys ignored.
// ---------------------------------------------------------------------------------------------

wire_enum! {
    /// A job's status as Nomad computes it (`nomad-api.md` §3.4).
    pub enum JobStatus {
        /// Registered, nothing placed yet (or waiting for a reschedule).
        Pending => "pending",
        /// An allocation (or deployment) is not terminal.
        Running => "running",
        /// Stopped, or every allocation and evaluation is terminal.
        Dead => "dead",
    }
}

/// One entry of `GET /v1/jobs` (`JobListStub`, `nomad-api.md` §3.4).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct JobListStub {
    /// The job's id.
    #[serde(rename = "ID", default, deserialize_with = "null_as_default")]
    pub id: String,
    /// The job's name (Poseidon: equal to the id).
    #[serde(rename = "Name", default, deserialize_with = "null_as_default")]
    pub name: String,
    /// The job's namespace (omitted by Nomad when empty).
    #[serde(rename = "Namespace", default, deserialize_with = "null_as_default")]
    pub namespace: String,
    /// `batch`, `service`, …
    #[serde(rename = "Type", default, deserialize_with = "null_as_default")]
    pub kind: String,
    /// Nomad's computed status.
    #[serde(rename = "Status", default)]
    pub status: JobStatus,
    /// Set after a deregister without purge.
    #[serde(rename = "Stop", default, deserialize_with = "null_as_default")]
    pub stop: bool,
    /// The job-level `Meta`; only filled when the list was asked for with `meta=true`.
    #[serde(rename = "Meta", default, deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    /// Raft index of the job's creation.
    #[serde(rename = "CreateIndex", default, deserialize_with = "null_as_default")]
    pub create_index: u64,
    /// Raft index of the job row's last write (status flips included).
    #[serde(rename = "ModifyIndex", default, deserialize_with = "null_as_default")]
    pub modify_index: u64,
    /// Raft index of the last spec change.
    #[serde(
        rename = "JobModifyIndex",
        default,
        deserialize_with = "null_as_default"
    )]
    pub job_modify_index: u64,
    /// Unix nanoseconds of the last submission (beyond 2^53: never a float).
    #[serde(rename = "SubmitTime", default, deserialize_with = "null_as_default")]
    pub submit_time_ns: i64,
}

/// The answer to `PUT /v1/jobs` (`JobRegisterResponse`, `nomad-api.md` §3.1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct JobRegisterResponse {
    /// The evaluation the registration created; `None` for periodic and parameterized jobs.
    #[serde(rename = "EvalID", default, deserialize_with = "non_empty_string")]
    pub eval_id: Option<String>,
    /// Raft index of that evaluation's creation.
    #[serde(
        rename = "EvalCreateIndex",
        default,
        deserialize_with = "null_as_default"
    )]
    pub eval_create_index: u64,
    /// Raft index of the job's last spec change (unchanged when the spec was).
    #[serde(
        rename = "JobModifyIndex",
        default,
        deserialize_with = "null_as_default"
    )]
    pub job_modify_index: u64,
    /// `""`, or Nomad's warning text (e.g. memory oversubscription disabled), for the log.
    #[serde(rename = "Warnings", default, deserialize_with = "null_as_default")]
    pub warnings: String,
    /// The raft index of the write.
    #[serde(rename = "Index", default, deserialize_with = "null_as_default")]
    pub index: u64,
}

/// The answer to `DELETE /v1/job/:id` (`JobDeregisterResponse`, `nomad-api.md` §3.5). All zero
/// for a job that did not exist: Nomad answers 200 then.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct JobDeregisterResponse {
    /// The deregister evaluation; `None` when the job did not exist.
    #[serde(rename = "EvalID", default, deserialize_with = "non_empty_string")]
    pub eval_id: Option<String>,
    /// Raft index of that evaluation's creation.
    #[serde(
        rename = "EvalCreateIndex",
        default,
        deserialize_with = "null_as_default"
    )]
    pub eval_create_index: u64,
    /// Raft index of the job's last spec change.
    #[serde(
        rename = "JobModifyIndex",
        default,
        deserialize_with = "null_as_default"
    )]
    pub job_modify_index: u64,
    /// The raft index of the write (0 when the job did not exist).
    #[serde(rename = "Index", default, deserialize_with = "null_as_default")]
    pub index: u64,
}

wire_enum! {
    /// An evaluation's status (`nomad-api.md` §4).
    pub enum EvaluationStatus {
        /// Not yet processed.
        Pending => "pending",
        /// Waiting for resources (the blocked evaluation of unplaceable allocations).
        Blocked => "blocked",
        /// Processed; placements may still have failed (`FailedTGAllocs`).
        Complete => "complete",
        /// The scheduler gave up.
        Failed => "failed",
        /// Cancelled (Nomad spells it with one "l").
        Canceled => "canceled",
    }
}

impl EvaluationStatus {
    /// `complete`, `failed` and `canceled` are final.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EvaluationStatus::Complete | EvaluationStatus::Failed | EvaluationStatus::Canceled
        )
    }
}

/// An evaluation (`GET /v1/evaluation/:id`, `nomad-api.md` §4); the omitempty encoder drops its
/// zero fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Evaluation {
    /// The evaluation's id.
    #[serde(rename = "ID", default, deserialize_with = "null_as_default")]
    pub id: String,
    /// The job it evaluates.
    #[serde(rename = "JobID", default, deserialize_with = "null_as_default")]
    pub job_id: String,
    /// Its status.
    #[serde(rename = "Status", default)]
    pub status: EvaluationStatus,
    /// Nomad's explanation of the status (e.g. `maximum attempts reached (5)`).
    #[serde(
        rename = "StatusDescription",
        default,
        deserialize_with = "null_as_default"
    )]
    pub status_description: String,
    /// What created it: `job-register`, `job-deregister`, `alloc-failure`, …
    #[serde(rename = "TriggeredBy", default, deserialize_with = "null_as_default")]
    pub triggered_by: String,
    /// Per task group, why placement failed (`AllocationMetric`, kept verbatim for the message).
    /// Empty when every allocation was placed.
    #[serde(
        rename = "FailedTGAllocs",
        default,
        deserialize_with = "null_as_default"
    )]
    pub failed_task_group_allocations: BTreeMap<String, serde_json::Value>,
    /// The blocked evaluation created for the allocations that could not be placed.
    #[serde(rename = "BlockedEval", default, deserialize_with = "non_empty_string")]
    pub blocked_eval: Option<String>,
    /// Raft index of its creation.
    #[serde(rename = "CreateIndex", default, deserialize_with = "null_as_default")]
    pub create_index: u64,
    /// Raft index of its last change.
    #[serde(rename = "ModifyIndex", default, deserialize_with = "null_as_default")]
    pub modify_index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `AllocationUpdated` frame as a Nomad 1.10 client sends it after an OOM kill: the task
    /// waits to restart, keys the tracker does not model are present, `NextAllocation` and
    /// `PreviousAllocation` are omitted (zero values), and `ModifyTime` exceeds 2^53.
    const OOM_RESTART_FRAME: &str = r#"{
        "Index": 4711,
        "Events": [{
            "Topic": "Allocation",
            "Type": "AllocationUpdated",
            "Key": "5e0b2c1a-7d44-4b0e-9a51-3c2f8e6d1b07",
            "Namespace": "poseidon",
            "FilterKeys": ["12-0b7e41f2-8c3d-11ef-9d2a-0242ac120002", ""],
            "Index": 4711,
            "Payload": {
                "Allocation": {
                    "ID": "5e0b2c1a-7d44-4b0e-9a51-3c2f8e6d1b07",
                    "Namespace": "poseidon",
                    "EvalID": "d1f0c7aa-0000-4000-8000-000000000001",
                    "Name": "12-0b7e41f2-8c3d-11ef-9d2a-0242ac120002.default-group[0]",
                    "NodeID": "a3a3a3a3-1111-4222-8333-444455556666",
                    "NodeName": "agent-3",
                    "JobID": "12-0b7e41f2-8c3d-11ef-9d2a-0242ac120002",
                    "TaskGroup": "default-group",
                    "DesiredStatus": "run",
                    "DesiredDescription": "",
                    "DesiredTransition": {"Migrate": null, "Reschedule": null},
                    "ClientStatus": "pending",
                    "ClientDescription": "No tasks have started",
                    "TaskStates": {
                        "default-task": {
                            "State": "pending",
                            "Failed": false,
                            "Restarts": 1,
                            "LastRestart": "2024-05-02T10:15:03.123456789Z",
                            "StartedAt": "2024-05-02T10:01:00.5Z",
                            "FinishedAt": "0001-01-01T00:00:00Z",
                            "Paused": null,
                            "Events": [
                                {"Type": "Started", "Time": 1714644060500000000,
                                 "Message": "", "DisplayMessage": "Task started by client",
                                 "Details": {}, "FailsTask": false, "ExitCode": 0},
                                {"Type": "Terminated", "Time": 1714644903000000000,
                                 "Message": "OOM Killed", "DisplayMessage": "Exit Code: 137, Exit Message: \"OOM Killed\"",
                                 "Details": {"exit_code": "137", "signal": "0",
                                             "oom_killed": "true", "exit_message": "OOM Killed"},
                                 "ExitCode": 137},
                                {"Type": "Restarting", "Time": 1714644903100000000,
                                 "Message": "", "DisplayMessage": "Task restarting in 15.2s",
                                 "Details": {"restart_reason": "Restart within policy",
                                             "start_delay": "15200000000"},
                                 "RestartReason": "Restart within policy"}
                            ]
                        }
                    },
                    "AllocatedResources": {
                        "Tasks": {"default-task": {"Cpu": {"CpuShares": 20}, "Memory": {"MemoryMB": 50, "MemoryMaxMB": 256}}},
                        "Shared": {"DiskMB": 10, "Networks": null, "Ports": [
                            {"Label": "8080", "Value": 23817, "To": 8080, "HostIP": "10.0.4.17"}
                        ]}
                    },
                    "CreateIndex": 4500,
                    "ModifyIndex": 4711,
                    "AllocModifyIndex": 4500,
                    "CreateTime": 1714644000000000000,
                    "ModifyTime": 1714644903100000001
                }
            }
        }]
    }"#;

    #[test]
    fn an_allocation_event_decodes_with_unmodelled_keys_ignored() {
        let frame = Frame::from_json(OOM_RESTART_FRAME.as_bytes()).expect("a valid frame");
        assert_eq!(frame.index, 4711);
        assert!(!frame.is_heartbeat());
        let event = &frame.events[0];
        assert_eq!(event.topic, Topic::Allocation);
        assert_eq!(event.kind, EventType::AllocationUpdated);
        assert_eq!(event.namespace, "poseidon");
        let allocation = event.payload.allocation.as_ref().expect("a payload");
        assert_eq!(allocation.id, "5e0b2c1a-7d44-4b0e-9a51-3c2f8e6d1b07");
        assert_eq!(allocation.job_id, "12-0b7e41f2-8c3d-11ef-9d2a-0242ac120002");
        assert_eq!(allocation.client_status, ClientStatus::Pending);
        assert_eq!(allocation.desired_status, DesiredStatus::Run);
        assert_eq!(allocation.desired_transition, DesiredTransition::default());
        assert_eq!(allocation.previous_allocation, None);
        assert_eq!(allocation.next_allocation, None);
        assert_eq!(allocation.create_index, 4500);
        assert_eq!(allocation.modify_index, 4711);
        // Beyond 2^53: exact, so it never went through a float.
        assert_eq!(allocation.modify_time_ns, 1_714_644_903_100_000_001);
        let task = &allocation.task_states[RUNNER_TASK];
        assert_eq!(task.restarts, 1);
        assert_eq!(task.events.len(), 3);
        assert_eq!(task.events[1].kind, "Terminated");
        assert_eq!(task.events[1].oom_killed(), Some(true));
        assert_eq!(task.events[0].oom_killed(), None);
        let ports = &allocation
            .allocated_resources
            .as_ref()
            .expect("resources")
            .shared
            .ports;
        assert_eq!(
            ports,
            &vec![PortMapping {
                label: "8080".into(),
                value: 23817,
                to: 8080,
                host_ip: "10.0.4.17".into(),
            }]
        );
    }

    #[test]
    fn heartbeats_decode_as_empty_frames() {
        let frame = Frame::from_json(b"{}").expect("a heartbeat");
        assert_eq!(frame, Frame::default());
        assert!(frame.is_heartbeat());
        let frame = Frame::from_json(br#"{"Index": 0, "Events": null}"#).expect("a heartbeat");
        assert!(frame.is_heartbeat());
    }

    #[test]
    fn absent_null_and_empty_fields_decode_alike() {
        // The omitempty encoder drops zero fields; nil collections come as null; list stubs send
        // empty strings.
        let absent: Allocation = serde_json::from_str(
            r#"{"ID": "a", "JobID": "j", "ClientStatus": "running", "DesiredStatus": "run"}"#,
        )
        .expect("absent fields");
        let null: Allocation = serde_json::from_str(
            r#"{"ID": "a", "JobID": "j", "ClientStatus": "running", "DesiredStatus": "run",
                "DesiredTransition": null, "PreviousAllocation": null, "NextAllocation": null,
                "CreateIndex": null, "ModifyIndex": null, "ModifyTime": null,
                "TaskStates": null, "AllocatedResources": null}"#,
        )
        .expect("null fields");
        let empty: Allocation = serde_json::from_str(
            r#"{"ID": "a", "JobID": "j", "ClientStatus": "running", "DesiredStatus": "run",
                "DesiredTransition": {}, "PreviousAllocation": "", "NextAllocation": "",
                "CreateIndex": 0, "ModifyIndex": 0, "ModifyTime": 0, "TaskStates": {}}"#,
        )
        .expect("zero fields");
        assert_eq!(absent, null);
        assert_eq!(absent, empty);
        assert_eq!(absent.previous_allocation, None);
        assert!(absent.task_states.is_empty());
    }

    #[test]
    fn a_task_state_with_null_events_and_a_port_without_container_port_decode() {
        let allocation: Allocation = serde_json::from_str(
            r#"{"ID": "a", "JobID": "j", "ClientStatus": "pending", "DesiredStatus": "run",
                "TaskStates": {"default-task": {"State": "pending", "Restarts": 0, "Events": null}},
                "AllocatedResources": {"Shared": {"Ports": [{"Label": "web", "Value": 31000, "HostIP": "10.0.0.1"}]}}}"#,
        )
        .expect("a valid allocation");
        assert!(allocation.task_states[RUNNER_TASK].events.is_empty());
        let port = &allocation
            .allocated_resources
            .expect("resources")
            .shared
            .ports[0];
        assert_eq!((port.value, port.to), (31000, 0));
    }

    #[test]
    fn unseen_statuses_decode_to_their_fallback() {
        let allocation: Allocation = serde_json::from_str(
            r#"{"ID": "a", "JobID": "j", "ClientStatus": "unknown", "DesiredStatus": "hibernate"}"#,
        )
        .expect("a valid allocation");
        assert_eq!(
            allocation.client_status,
            ClientStatus::Unknown("unknown".into())
        );
        assert_eq!(
            allocation.desired_status,
            DesiredStatus::Unknown("hibernate".into())
        );
        assert!(!allocation.client_status.is_terminal());
        assert!(!allocation.desired_status.wants_stop());
        let missing: Allocation = serde_json::from_str(r#"{"ID": "a"}"#).expect("a stub");
        assert_eq!(missing.client_status, ClientStatus::Unknown(String::new()));
        assert_eq!(missing.job_id, "");
    }

    #[test]
    fn a_migrating_allocation_stub_carries_its_transition_and_successor() {
        // A list stub (`GET /v1/allocations`) of a drained allocation: no PreviousAllocation key
        // exists in stubs, NextAllocation names the replacement.
        let stub: Allocation = serde_json::from_str(
            r#"{"ID": "old", "EvalID": "e", "Name": "3-x.default-group[0]", "JobID": "3-x",
                "JobType": "batch", "JobVersion": 2, "TaskGroup": "default-group",
                "DesiredStatus": "stop", "DesiredDescription": "alloc is being migrated",
                "DesiredTransition": {"Migrate": true}, "ClientStatus": "running",
                "ClientDescription": "Tasks are running", "TaskStates": null,
                "DeploymentStatus": null, "FollowupEvalID": "", "NextAllocation": "new",
                "RescheduleTracker": null, "PreemptedAllocations": null,
                "PreemptedByAllocation": "", "CreateIndex": 10, "ModifyIndex": 31,
                "CreateTime": 1714644000000000000, "ModifyTime": 1714644999000000000}"#,
        )
        .expect("a valid stub");
        assert!(stub.desired_transition.migrate);
        assert_eq!(stub.next_allocation.as_deref(), Some("new"));
        assert_eq!(stub.allocated_resources, None);
    }

    #[test]
    fn job_and_evaluation_events_decode() {
        let frame = Frame::from_json(
            br#"{"Index": 90, "Events": [
                {"Topic": "Job", "Type": "JobDeregistered", "Key": "4-j", "Namespace": "default",
                 "FilterKeys": null, "Index": 90,
                 "Payload": {"Job": {"ID": "4-j", "Status": "dead", "Stop": false, "TaskGroups": []}, "Deleted": true}},
                {"Topic": "Evaluation", "Type": "JobDeregistered", "Key": "e-1", "Namespace": "default",
                 "FilterKeys": ["4-j", ""], "Index": 90,
                 "Payload": {"Evaluation": {"ID": "e-1", "Status": "pending", "TriggeredBy": "job-deregister"}}},
                {"Topic": "Node", "Type": "NodeRegistration", "Key": "n", "Index": 90, "Payload": {"Node": {}}}
            ]}"#,
        )
        .expect("a valid frame");
        assert_eq!(frame.events[0].topic, Topic::Job);
        assert_eq!(frame.events[0].kind, EventType::JobDeregistered);
        assert_eq!(
            frame.events[0]
                .payload
                .job
                .as_ref()
                .map(|job| job.id.as_str()),
            Some("4-j")
        );
        assert_eq!(frame.events[1].topic, Topic::Evaluation);
        let evaluation = frame.events[1]
            .payload
            .evaluation
            .as_ref()
            .expect("an evaluation payload");
        assert_eq!(evaluation.id, "e-1");
        assert_eq!(evaluation.status, EvaluationStatus::Pending);
        assert_eq!(evaluation.triggered_by, "job-deregister");
        assert_eq!(frame.events[2].topic, Topic::Unknown("Node".into()));
        assert_eq!(
            frame.events[2].kind,
            EventType::Unknown("NodeRegistration".into())
        );
    }

    #[test]
    fn a_non_json_tail_after_the_frames_is_an_error() {
        // Nomad ≤ 1.11.1 appends the reason as text when it ends a stream.
        assert!(
            Frame::from_json(b"subscription closed by server, client should resubscribe").is_err()
        );
        // A payload of the wrong type fails the frame, as in Poseidon (TestAPIClient_WatchAllocations).
        assert!(
            Frame::from_json(br#"{"Index": 1, "Events": [{"Topic": "Allocation", "Payload": {"Allocation": {"ID": 1}}}]}"#)
                .is_err()
        );
    }

    #[test]
    fn http_answers_decode_with_absent_null_and_unknown_keys() {
        let jobs: Vec<JobListStub> = serde_json::from_str(
            r#"[{"ID": "7-a", "ParentID": "", "Name": "7-a", "Type": "batch", "Priority": 50,
                 "Status": "running", "Stop": false, "Meta": {"used": "true"},
                 "JobSummary": {"Summary": {}}, "CreateIndex": 3, "ModifyIndex": 9,
                 "JobModifyIndex": 3, "SubmitTime": 1714644903100000001},
                {"ID": "7-b", "Status": "hibernating", "Meta": null}]"#,
        )
        .expect("job stubs");
        assert_eq!(jobs[0].status, JobStatus::Running);
        assert_eq!(jobs[0].meta["used"], "true");
        assert_eq!(jobs[0].submit_time_ns, 1_714_644_903_100_000_001);
        assert_eq!(jobs[1].status, JobStatus::Unknown("hibernating".into()));
        assert!(jobs[1].meta.is_empty());

        let deleted_unknown: JobDeregisterResponse = serde_json::from_str(
            r#"{"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": 0, "VolumeEvalID": "",
                "Index": 0, "LastContact": 0, "KnownLeader": false, "NextToken": ""}"#,
        )
        .expect("a deregister answer");
        assert_eq!(deleted_unknown, JobDeregisterResponse::default());

        let evaluation: Evaluation = serde_json::from_str(
            r#"{"ID": "e", "JobID": "7-a", "Status": "complete", "BlockedEval": "b",
                "FailedTGAllocs": {"default-group": {"NodesEvaluated": 3}}, "CreateIndex": 4}"#,
        )
        .expect("an evaluation");
        assert!(evaluation.status.is_terminal());
        assert_eq!(evaluation.blocked_eval.as_deref(), Some("b"));
        assert_eq!(evaluation.failed_task_group_allocations.len(), 1);
        let bare: Evaluation = serde_json::from_str(r#"{"ID": "e", "Status": "pending"}"#)
            .expect("an omitempty evaluation");
        assert!(!bare.status.is_terminal());
        assert_eq!(bare.blocked_eval, None);
    }
}
