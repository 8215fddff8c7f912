//! An allocation's JSON (`nomad-api.md` §5.3, §5.6), serialised straight from the fake's state.
//!
//! Every allocation update puts the whole allocation into an event, so building it is the
//! costliest thing the fake does per update. These wrappers write it without building a
//! `serde_json::Value` tree first, and write exactly the bytes that tree would print: the keys of
//! each object in the order a `serde_json::Map` keeps (sorted), and for the omitempty objects
//! (`Allocation`, a port) only the fields that are not Go's zero value, as `put` decides for a
//! `Value`. The tests below compare both ways on allocations in every state.

use std::collections::BTreeMap;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::{Alloc, Job, TaskEvent, TaskState, rfc3339};

/// The allocation (`GET /v1/allocation/:id` with `with_job`; the event payload without).
pub(super) struct AllocWire<'a> {
    pub(super) alloc: &'a Alloc,
    pub(super) with_job: bool,
}

/// An omitempty field: written unless it is Go's zero value.
fn put_str<M: SerializeMap>(map: &mut M, key: &'static str, value: &str) -> Result<(), M::Error> {
    if value.is_empty() {
        return Ok(());
    }
    map.serialize_entry(key, value)
}

fn put_u64<M: SerializeMap>(map: &mut M, key: &'static str, value: u64) -> Result<(), M::Error> {
    if value == 0 {
        return Ok(());
    }
    map.serialize_entry(key, &value)
}

fn put_i64<M: SerializeMap>(map: &mut M, key: &'static str, value: i64) -> Result<(), M::Error> {
    if value == 0 {
        return Ok(());
    }
    map.serialize_entry(key, &value)
}

/// Go's zero value of a JSON value, as the omitempty rule sees it.
fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

impl Serialize for AllocWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let alloc = self.alloc;
        let mut map = serializer.serialize_map(None)?;
        // Sorted keys: uppercase before lowercase, a prefix before what extends it.
        put_u64(&mut map, "AllocModifyIndex", alloc.alloc_modify_index)?;
        map.serialize_entry("AllocatedResources", &ResourcesWire(alloc))?;
        put_str(&mut map, "ClientDescription", &alloc.client_description)?;
        put_str(&mut map, "ClientStatus", alloc.client_status)?;
        put_u64(&mut map, "CreateIndex", alloc.create_index)?;
        put_i64(&mut map, "CreateTime", alloc.create_time_ns)?;
        put_str(&mut map, "DesiredDescription", &alloc.desired_description)?;
        put_str(&mut map, "DesiredStatus", alloc.desired_status)?;
        put_str(&mut map, "EvalID", &alloc.eval_id)?;
        put_str(&mut map, "ID", &alloc.id)?;
        if self.with_job && !is_zero(&alloc.job) {
            map.serialize_entry("Job", &alloc.job)?;
        }
        put_str(&mut map, "JobID", &alloc.job_id)?;
        put_u64(&mut map, "ModifyIndex", alloc.modify_index)?;
        put_i64(&mut map, "ModifyTime", alloc.modify_time_ns)?;
        put_str(&mut map, "Name", &alloc.name)?;
        put_str(&mut map, "Namespace", &alloc.namespace)?;
        put_str(&mut map, "NextAllocation", &alloc.next_allocation)?;
        put_str(&mut map, "NodeID", &alloc.node_id)?;
        put_str(&mut map, "NodeName", &alloc.node_name)?;
        put_str(&mut map, "PreviousAllocation", &alloc.previous_allocation)?;
        put_str(&mut map, "TaskGroup", &alloc.task_group)?;
        if let Some(task) = &alloc.task {
            map.serialize_entry("TaskStates", &TaskStatesWire { alloc, task })?;
        }
        map.end()
    }
}

/// `{"Allocation": …}`, an allocation event's payload.
pub(super) struct PayloadWire<'a>(pub(super) &'a Alloc);

impl Serialize for PayloadWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(
            "Allocation",
            &AllocWire {
                alloc: self.0,
                with_job: false,
            },
        )?;
        map.end()
    }
}

/// `TaskStates`: `{<task>: TaskState}` (§5.6).
pub(super) struct TaskStatesWire<'a> {
    pub(super) alloc: &'a Alloc,
    pub(super) task: &'a TaskState,
}

impl Serialize for TaskStatesWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(&self.alloc.task_name, &TaskStateWire(self.task))?;
        map.end()
    }
}

/// A `TaskState`: every key present (it is not an omitempty struct).
struct TaskStateWire<'a>(&'a TaskState);

impl Serialize for TaskStateWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let task = self.0;
        let mut map = serializer.serialize_map(Some(8))?;
        map.serialize_entry("Events", &EventsWire(&task.events))?;
        map.serialize_entry("Failed", &task.failed)?;
        map.serialize_entry("FinishedAt", &rfc3339(task.finished_at_ns))?;
        map.serialize_entry("LastRestart", &rfc3339(task.last_restart_ns))?;
        map.serialize_entry("Paused", &())?;
        map.serialize_entry("Restarts", &task.restarts)?;
        map.serialize_entry("StartedAt", &rfc3339(task.started_at_ns))?;
        map.serialize_entry("State", task.state)?;
        map.end()
    }
}

struct EventsWire<'a>(&'a [TaskEvent]);

impl Serialize for EventsWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(TaskEventWire))
    }
}

/// A `TaskEvent`: every key present; the deprecated fields derived from `Details`.
struct TaskEventWire<'a>(&'a TaskEvent);

impl Serialize for TaskEventWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event = self.0;
        let detail = |key: &str| event.details.get(key).map_or("", String::as_str);
        let number = |key: &str| {
            event
                .details
                .get(key)
                .and_then(|value| value.parse::<i64>().ok())
                .unwrap_or(0)
        };
        let details: &BTreeMap<&'static str, String> = &event.details;
        let mut map = serializer.serialize_map(Some(12))?;
        map.serialize_entry("Details", details)?;
        map.serialize_entry("DisplayMessage", &event.message)?;
        map.serialize_entry("DriverError", detail("driver_error"))?;
        map.serialize_entry("DriverMessage", detail("driver_message"))?;
        map.serialize_entry("ExitCode", &number("exit_code"))?;
        map.serialize_entry("FailsTask", &(detail("fails_task") == "true"))?;
        map.serialize_entry("Message", &event.message)?;
        map.serialize_entry("RestartReason", detail("restart_reason"))?;
        map.serialize_entry("Signal", &0)?;
        map.serialize_entry("StartDelay", &number("start_delay"))?;
        map.serialize_entry("Time", &event.time_ns)?;
        map.serialize_entry("Type", event.typ)?;
        map.end()
    }
}

/// `AllocatedResources` (§5.3), with the shared port mappings.
pub(super) struct ResourcesWire<'a>(pub(super) &'a Alloc);

impl Serialize for ResourcesWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let alloc = self.0;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("Shared", &SharedWire(alloc))?;
        map.serialize_entry("TaskLifecycles", &Single(&alloc.task_name, &()))?;
        map.serialize_entry(
            "Tasks",
            &Single(&alloc.task_name, &TaskResourcesWire(alloc)),
        )?;
        map.end()
    }
}

/// An object of one entry.
struct Single<'a, V: Serialize>(&'a str, &'a V);

impl<V: Serialize> Serialize for Single<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.0, self.1)?;
        map.end()
    }
}

struct SharedWire<'a>(&'a Alloc);

impl Serialize for SharedWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ports = &self.0.ports;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("DiskMB", &10)?;
        map.serialize_entry("Networks", &())?;
        if ports.is_empty() {
            map.serialize_entry("Ports", &())?;
        } else {
            map.serialize_entry("Ports", &PortsWire(ports))?;
        }
        map.end()
    }
}

struct PortsWire<'a>(&'a [(String, i64, i64)]);

impl Serialize for PortsWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(PortWire))
    }
}

/// An `AllocatedPortMapping`: omitempty.
struct PortWire<'a>(&'a (String, i64, i64));

impl Serialize for PortWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (label, value, to) = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("HostIP", "127.0.0.1")?;
        put_str(&mut map, "Label", label)?;
        put_i64(&mut map, "To", *to)?;
        put_i64(&mut map, "Value", *value)?;
        map.end()
    }
}

struct TaskResourcesWire<'a>(&'a Alloc);

impl Serialize for TaskResourcesWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let alloc = self.0;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("Cpu", &CpuWire(alloc.cpu))?;
        map.serialize_entry("Devices", &())?;
        map.serialize_entry("Memory", &MemoryWire(alloc.memory_mb, alloc.memory_max_mb))?;
        map.serialize_entry("Networks", &())?;
        map.end()
    }
}

struct CpuWire(i64);

impl Serialize for CpuWire {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("CpuShares", &self.0)?;
        map.serialize_entry("ReservedCores", &())?;
        map.end()
    }
}

struct MemoryWire(i64, i64);

impl Serialize for MemoryWire {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("MemoryMB", &self.0)?;
        map.serialize_entry("MemoryMaxMB", &self.1)?;
        map.end()
    }
}

/// A job (`GET /v1/job/:id`, §3.7): the registered spec with the server's fields, in one sorted
/// order, as the `Map` the spec is would print with those fields inserted.
pub(super) struct JobWire<'a>(pub(super) &'a Job);

impl Serialize for JobWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let job = self.0;
        // Sorted, as the spec's keys are; they win over a spec key of the same name.
        let server: [(&str, ServerField<'_>); 10] = [
            ("CreateIndex", ServerField::U64(job.create_index)),
            ("JobModifyIndex", ServerField::U64(job.job_modify_index)),
            ("ModifyIndex", ServerField::U64(job.modify_index)),
            ("Namespace", ServerField::Str(&job.namespace)),
            ("Stable", ServerField::Bool(false)),
            ("Status", ServerField::Str(job.status)),
            ("StatusDescription", ServerField::Str("")),
            ("Stop", ServerField::Bool(job.stop)),
            ("SubmitTime", ServerField::I64(job.submit_time_ns)),
            ("Version", ServerField::U64(job.version)),
        ];
        debug_assert!(server.windows(2).all(|pair| pair[0].0 < pair[1].0));
        let mut map = serializer.serialize_map(None)?;
        let mut spec = job.spec.iter().peekable();
        for (key, value) in &server {
            while let Some((spec_key, spec_value)) = spec.next_if(|(k, _)| k.as_str() <= *key) {
                if spec_key != key {
                    map.serialize_entry(spec_key, spec_value)?;
                }
            }
            map.serialize_entry(key, value)?;
        }
        for (spec_key, spec_value) in spec {
            map.serialize_entry(spec_key, spec_value)?;
        }
        map.end()
    }
}

/// `{"Job": …}`, a job event's payload.
pub(super) struct JobPayloadWire<'a>(pub(super) &'a Job);

impl Serialize for JobPayloadWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("Job", &JobWire(self.0))?;
        map.end()
    }
}

enum ServerField<'a> {
    U64(u64),
    I64(i64),
    Str(&'a str),
    Bool(bool),
}

impl Serialize for ServerField<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ServerField::U64(value) => serializer.serialize_u64(*value),
            ServerField::I64(value) => serializer.serialize_i64(*value),
            ServerField::Str(value) => serializer.serialize_str(value),
            ServerField::Bool(value) => serializer.serialize_bool(*value),
        }
    }
}

/// An `AllocListStub` (§5.2): every key present, `AllocatedResources` only when asked for.
pub(super) struct StubWire<'a> {
    pub(super) alloc: &'a Alloc,
    pub(super) resources: bool,
    pub(super) task_states: bool,
}

impl Serialize for StubWire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let alloc = self.alloc;
        let mut map = serializer.serialize_map(None)?;
        if self.resources {
            map.serialize_entry("AllocatedResources", &ResourcesWire(alloc))?;
        }
        map.serialize_entry("ClientDescription", &alloc.client_description)?;
        map.serialize_entry("ClientStatus", alloc.client_status)?;
        map.serialize_entry("CreateIndex", &alloc.create_index)?;
        map.serialize_entry("CreateTime", &alloc.create_time_ns)?;
        map.serialize_entry("DeploymentStatus", &())?;
        map.serialize_entry("DesiredDescription", &alloc.desired_description)?;
        map.serialize_entry("DesiredStatus", alloc.desired_status)?;
        map.serialize_entry("DesiredTransition", &DesiredTransitionWire)?;
        map.serialize_entry("EvalID", &alloc.eval_id)?;
        map.serialize_entry("FollowupEvalID", "")?;
        map.serialize_entry("ID", &alloc.id)?;
        map.serialize_entry("JobID", &alloc.job_id)?;
        map.serialize_entry("JobType", alloc.job.get("Type").unwrap_or(&Value::Null))?;
        map.serialize_entry("JobVersion", &alloc.job_version)?;
        map.serialize_entry("ModifyIndex", &alloc.modify_index)?;
        map.serialize_entry("ModifyTime", &alloc.modify_time_ns)?;
        map.serialize_entry("Name", &alloc.name)?;
        map.serialize_entry("Namespace", &alloc.namespace)?;
        map.serialize_entry("NextAllocation", &alloc.next_allocation)?;
        map.serialize_entry("NodeID", &alloc.node_id)?;
        map.serialize_entry("NodeName", &alloc.node_name)?;
        map.serialize_entry("PreemptedAllocations", &())?;
        map.serialize_entry("PreemptedByAllocation", "")?;
        map.serialize_entry("RescheduleTracker", &())?;
        map.serialize_entry("TaskGroup", &alloc.task_group)?;
        match (&alloc.task, self.task_states) {
            (Some(task), true) => {
                map.serialize_entry("TaskStates", &TaskStatesWire { alloc, task })?;
            }
            _ => map.serialize_entry("TaskStates", &())?,
        }
        map.end()
    }
}

struct DesiredTransitionWire;

impl Serialize for DesiredTransitionWire {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(5))?;
        for key in [
            "ForceReschedule",
            "Migrate",
            "MigrateDisablePlacement",
            "NoShutdownDelay",
            "Reschedule",
        ] {
            map.serialize_entry(key, &())?;
        }
        map.end()
    }
}

/// A JSON array of `items`, written once (the list endpoints).
pub(super) fn array<T: Serialize>(items: impl IntoIterator<Item = T>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    let mut serializer = serde_json::Serializer::new(&mut out);
    serializer
        .collect_seq(items)
        .expect("a Vec takes every write and the keys are strings");
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::{Map, Value, json};
    use tokio::sync::{Notify, watch};

    use super::super::{Alloc, Job, State, TaskState, put, rfc3339};
    use super::*;
    use crate::nomad::FakeNomadConfig;

    // The `Value` builders these wrappers replaced, kept as the reference they must match.

    fn task_state_value(task: &TaskState) -> Value {
        let events: Vec<Value> = task
            .events
            .iter()
            .map(|event| {
                json!({
                    "Type": event.typ,
                    "Time": event.time_ns,
                    "Message": event.message,
                    "DisplayMessage": event.message,
                    "Details": event.details,
                    "FailsTask": event.details.get("fails_task").is_some_and(|v| v == "true"),
                    "ExitCode": event.details.get("exit_code").and_then(|v| v.parse::<i64>().ok()).unwrap_or(0),
                    "Signal": 0,
                    "RestartReason": event.details.get("restart_reason").cloned().unwrap_or_default(),
                    "DriverError": event.details.get("driver_error").cloned().unwrap_or_default(),
                    "DriverMessage": event.details.get("driver_message").cloned().unwrap_or_default(),
                    "StartDelay": event.details.get("start_delay").and_then(|v| v.parse::<i64>().ok()).unwrap_or(0),
                })
            })
            .collect();
        json!({
            "State": task.state,
            "Failed": task.failed,
            "Restarts": task.restarts,
            "LastRestart": rfc3339(task.last_restart_ns),
            "StartedAt": rfc3339(task.started_at_ns),
            "FinishedAt": rfc3339(task.finished_at_ns),
            "Events": events,
            "Paused": null,
        })
    }

    fn resources_value(alloc: &Alloc) -> Value {
        let ports: Vec<Value> = alloc
            .ports
            .iter()
            .map(|(label, value, to)| {
                let mut port = Map::new();
                put(&mut port, "Label", json!(label));
                put(&mut port, "Value", json!(value));
                put(&mut port, "To", json!(to));
                put(&mut port, "HostIP", json!("127.0.0.1"));
                Value::Object(port)
            })
            .collect();
        json!({
            "Tasks": { alloc.task_name.clone(): {
                "Cpu": { "CpuShares": alloc.cpu, "ReservedCores": null },
                "Memory": { "MemoryMB": alloc.memory_mb, "MemoryMaxMB": alloc.memory_max_mb },
                "Networks": null,
                "Devices": null,
            }},
            "TaskLifecycles": { alloc.task_name.clone(): null },
            "Shared": {
                "Networks": null,
                "DiskMB": 10,
                "Ports": if ports.is_empty() { Value::Null } else { Value::Array(ports) },
            },
        })
    }

    fn alloc_value(alloc: &Alloc, with_job: bool) -> Value {
        let task_states = match &alloc.task {
            Some(task) => json!({ alloc.task_name.clone(): task_state_value(task) }),
            None => Value::Null,
        };
        let mut map = Map::new();
        put(&mut map, "ID", json!(alloc.id));
        put(&mut map, "Namespace", json!(alloc.namespace));
        put(&mut map, "EvalID", json!(alloc.eval_id));
        put(&mut map, "Name", json!(alloc.name));
        put(&mut map, "NodeID", json!(alloc.node_id));
        put(&mut map, "NodeName", json!(alloc.node_name));
        put(&mut map, "JobID", json!(alloc.job_id));
        if with_job {
            put(&mut map, "Job", alloc.job.clone());
        }
        put(&mut map, "TaskGroup", json!(alloc.task_group));
        put(&mut map, "AllocatedResources", resources_value(alloc));
        put(&mut map, "DesiredStatus", json!(alloc.desired_status));
        put(
            &mut map,
            "DesiredDescription",
            json!(alloc.desired_description),
        );
        put(&mut map, "ClientStatus", json!(alloc.client_status));
        put(
            &mut map,
            "ClientDescription",
            json!(alloc.client_description),
        );
        put(&mut map, "TaskStates", task_states);
        put(
            &mut map,
            "PreviousAllocation",
            json!(alloc.previous_allocation),
        );
        put(&mut map, "NextAllocation", json!(alloc.next_allocation));
        put(&mut map, "CreateIndex", json!(alloc.create_index));
        put(&mut map, "ModifyIndex", json!(alloc.modify_index));
        put(
            &mut map,
            "AllocModifyIndex",
            json!(alloc.alloc_modify_index),
        );
        put(&mut map, "CreateTime", json!(alloc.create_time_ns));
        put(&mut map, "ModifyTime", json!(alloc.modify_time_ns));
        Value::Object(map)
    }

    fn job_value(job: &Job) -> Value {
        let mut value = job.spec.clone();
        value.insert("Stop".into(), json!(job.stop));
        value.insert("Namespace".into(), json!(job.namespace));
        value.insert("Status".into(), json!(job.status));
        value.insert("StatusDescription".into(), json!(""));
        value.insert("Stable".into(), json!(false));
        value.insert("Version".into(), json!(job.version));
        value.insert("SubmitTime".into(), json!(job.submit_time_ns));
        value.insert("CreateIndex".into(), json!(job.create_index));
        value.insert("ModifyIndex".into(), json!(job.modify_index));
        value.insert("JobModifyIndex".into(), json!(job.job_modify_index));
        Value::Object(value)
    }

    /// Every job, both ways, byte for byte.
    fn check_every_job(state: &State) {
        for job in state.jobs.values() {
            let wire = serde_json::to_string(&JobPayloadWire(job)).expect("serialises");
            assert_eq!(wire, json!({ "Job": job_value(job) }).to_string());
        }
    }

    fn stub_value(alloc: &Alloc, resources: bool, task_states: bool) -> Value {
        let states = match (&alloc.task, task_states) {
            (Some(task), true) => json!({ alloc.task_name.clone(): task_state_value(task) }),
            _ => Value::Null,
        };
        let mut stub = json!({
            "ID": alloc.id,
            "EvalID": alloc.eval_id,
            "Name": alloc.name,
            "Namespace": alloc.namespace,
            "NodeID": alloc.node_id,
            "NodeName": alloc.node_name,
            "JobID": alloc.job_id,
            "JobType": alloc.job.get("Type").cloned().unwrap_or(Value::Null),
            "JobVersion": alloc.job_version,
            "TaskGroup": alloc.task_group,
            "DesiredStatus": alloc.desired_status,
            "DesiredDescription": alloc.desired_description,
            "ClientStatus": alloc.client_status,
            "ClientDescription": alloc.client_description,
            "DesiredTransition": { "Migrate": null, "Reschedule": null, "ForceReschedule": null,
                                   "NoShutdownDelay": null, "MigrateDisablePlacement": null },
            "TaskStates": states,
            "DeploymentStatus": null,
            "FollowupEvalID": "",
            "NextAllocation": alloc.next_allocation,
            "RescheduleTracker": null,
            "PreemptedAllocations": null,
            "PreemptedByAllocation": "",
            "CreateIndex": alloc.create_index,
            "ModifyIndex": alloc.modify_index,
            "CreateTime": alloc.create_time_ns,
            "ModifyTime": alloc.modify_time_ns,
        });
        if resources && let Some(map) = stub.as_object_mut() {
            map.insert("AllocatedResources".into(), resources_value(alloc));
        }
        stub
    }

    /// Every allocation's payload and full object, both ways, byte for byte.
    fn check_every_allocation(state: &State) -> usize {
        check_every_job(state);
        for alloc in state.allocs.values() {
            let payload = serde_json::to_string(&PayloadWire(alloc)).expect("serialises");
            let reference = json!({ "Allocation": alloc_value(alloc, false) }).to_string();
            assert_eq!(payload, reference, "payload of {}", alloc.id);
            for with_job in [false, true] {
                let wire = serde_json::to_string(&AllocWire { alloc, with_job }).expect("ok");
                assert_eq!(wire, alloc_value(alloc, with_job).to_string());
            }
            for (resources, task_states) in
                [(false, false), (false, true), (true, false), (true, true)]
            {
                let wire = serde_json::to_string(&StubWire {
                    alloc,
                    resources,
                    task_states,
                })
                .expect("ok");
                assert_eq!(wire, stub_value(alloc, resources, task_states).to_string());
            }
            if let Some(task) = &alloc.task {
                let states = serde_json::to_value(TaskStatesWire { alloc, task }).expect("ok");
                assert_eq!(
                    states,
                    json!({ alloc.task_name.clone(): task_state_value(task) })
                );
            }
        }
        state.allocs.len()
    }

    fn runner_job(id: &str, ports: bool) -> Value {
        let networks = if ports {
            json!([{ "Mode": "bridge", "DynamicPorts": [{ "Label": "8080", "To": 8080 }, { "Label": "web", "To": 0 }] }])
        } else {
            json!([])
        };
        json!({ "Job": {
            "ID": id, "Name": id, "Type": "batch", "Datacenters": ["dc1"],
            "TaskGroups": [{
                "Name": "default-group", "Count": 1,
                "RestartPolicy": { "Attempts": 1, "Interval": 3_600_000_000_000u64, "Delay": 15_000_000_000u64, "Mode": "fail" },
                "Networks": networks,
                "Tasks": [{
                    "Name": "default-task", "Driver": "docker",
                    "Config": { "image": "python:3.12", "command": "sleep", "args": ["infinity"] },
                    "Resources": { "CPU": 40, "MemoryMB": 50, "MemoryMaxMB": 100 },
                }],
            }],
        }})
    }

    fn advance(state: &mut State, seconds: u64) {
        for _ in 0..seconds * 10 {
            state.now += Duration::from_millis(100);
            state.run_due_timers();
        }
    }

    #[test]
    fn allocations_serialise_to_the_bytes_of_the_values_they_replaced() {
        let mut state = State::new(
            FakeNomadConfig::default(),
            watch::channel(0).0,
            Arc::new(Notify::new()),
        );
        let mut seen = 0;
        state
            .register("default", &runner_job("1-a", true))
            .expect("registers");
        state
            .register("default", &runner_job("1-b", false))
            .expect("registers");
        for _ in 0..6 {
            // Placed, picked up, started: every step of the way.
            advance(&mut state, 1);
            seen = seen.max(check_every_allocation(&state));
        }
        let running: Vec<String> = state
            .allocs
            .values()
            .filter(|alloc| alloc.client_status == "running")
            .map(|alloc| alloc.id.clone())
            .collect();
        assert_eq!(running.len(), 2, "both run");
        // An OOM kill and its restart (Terminated, Restarting details), then a lost allocation
        // and its replacement (links both ways).
        state.oom_kill(&running[0]).expect("running");
        check_every_allocation(&state);
        advance(&mut state, 20);
        check_every_allocation(&state);
        state.lose_allocation(&running[1]).expect("running");
        check_every_allocation(&state);
        advance(&mut state, 5);
        // An image that cannot be pulled: driver errors, restarts exhausted, failed.
        state.faults.image_pull_failure = true;
        state
            .register("default", &runner_job("1-c", true))
            .expect("registers");
        for _ in 0..8 {
            advance(&mut state, 10);
            check_every_allocation(&state);
        }
        assert!(
            state
                .allocs
                .values()
                .any(|alloc| alloc.client_status == "failed"),
            "the pull failure failed an allocation"
        );
        // Stops: desired descriptions.
        state.deregister("default", "1-a", true);
        check_every_allocation(&state);
        advance(&mut state, 5);
        assert!(check_every_allocation(&state) >= 4 && seen >= 2);
    }
}
