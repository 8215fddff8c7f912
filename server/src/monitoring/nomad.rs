//! Nomad's event stream in monitoring: Poseidon's `poseidon_nomad_events` (one point per event,
//! tags `topic`, `type`, `key` and `timestamp`, field `payload`), `poseidon_nomad_jobs` and
//! `poseidon_nomad_allocations` (the tracked count), and `trident_nomad_events_total{topic,type}`
//! and `trident_nomad_tracked_jobs` in `/metrics`.
//!
//! The Nomad backend's follower calls [`NomadEvents`] on its own task, between reading a frame and
//! applying it ([`EventMonitor`]): recording is a counter, and points go through the InfluxDB
//! sink's `try_send`, so the stream reader never waits on monitoring.
//!
//! **Payload.** Poseidon writes each event's whole payload, which for a job event is the job
//! specification with its environment variable values and meta. Trident writes a summary of
//! what it decoded instead, so no specification ever reaches InfluxDB: for an allocation its
//! ids, statuses, links, indexes and per task the state, restarts, failure and event types; for
//! a job its id; for an evaluation its ids, status, trigger and description. The JSON is cut at
//! [`PAYLOAD_BYTES_MAX`].

use std::sync::{Arc, OnceLock};

use influxdb2::models::FieldValue;
use serde_json::{Map, Value, json};
use trident_backends::nomad::executor::EventMonitor;
use trident_backends::nomad::model::{Allocation, Evaluation, Event, Frame};

use super::metrics::truncate;
use super::{Monitor, unix_ns};

/// Longest `payload` written: enough for an allocation with a few tasks and their last events.
pub const PAYLOAD_BYTES_MAX: usize = 4_096;
/// Task states, and events per task state, summarised at most (Nomad keeps 10 events per task).
const TASK_STATES_MAX: usize = 8;
const TASK_EVENTS_MAX: usize = 10;
const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// The Nomad backend's [`EventMonitor`], handed to it before the server exists and bound to the
/// server's [`Monitor`] by [`crate::start`]. Events before the binding (there are none in
/// practice: the follower lists allocations over HTTP before its first frame) are not recorded.
#[derive(Clone, Debug, Default)]
pub struct NomadEvents(Arc<OnceLock<Arc<Monitor>>>);

impl NomadEvents {
    /// Records into `monitor` from now on. A second call changes nothing.
    pub fn attach(&self, monitor: Arc<Monitor>) {
        let _ = self.0.set(monitor);
    }
}

impl EventMonitor for NomadEvents {
    fn frame(&self, frame: &Frame) {
        if let Some(monitor) = self.0.get() {
            monitor.nomad_frame(frame);
        }
    }

    fn tracked_jobs(&self, jobs: usize) {
        if let Some(monitor) = self.0.get() {
            monitor.nomad_tracked_jobs(jobs);
        }
    }
}

impl Monitor {
    /// Every event of a frame: the counter, and a `poseidon_nomad_events` point each.
    fn nomad_frame(&self, frame: &Frame) {
        for event in &frame.events {
            self.metrics
                .nomad_event(event.topic.as_str(), event.kind.as_str());
            let Some(sink) = &self.influx else {
                continue;
            };
            let time_ns = unix_ns();
            sink.send(super::influx::Point {
                measurement: "poseidon_nomad_events".to_owned(),
                tags: vec![
                    ("topic", event.topic.as_str().to_owned()),
                    ("type", event.kind.as_str().to_owned()),
                    ("key", event.key.clone()),
                    ("timestamp", time_of_day(time_ns)),
                ],
                fields: vec![("payload", FieldValue::String(payload(event)))],
                time_ns,
            });
        }
    }

    /// The tracked job count: the gauge, and a point of each of Poseidon's two measurements
    /// when it changed.
    fn nomad_tracked_jobs(&self, jobs: usize) {
        self.metrics.nomad_tracked_jobs(jobs);
        let before = self
            .nomad_tracked
            .swap(jobs, std::sync::atomic::Ordering::Relaxed);
        if before == jobs {
            return;
        }
        let event_type = if jobs < before {
            "deletion"
        } else {
            "creation"
        };
        for measurement in ["poseidon_nomad_jobs", "poseidon_nomad_allocations"] {
            self.point(measurement, || {
                (
                    vec![("event_type", event_type.to_owned())],
                    vec![("count", super::count(jobs))],
                )
            });
        }
    }
}

/// `hh:mm:ss.nnnnnnnnn` (UTC, 24 hours) of a Unix time in nanoseconds: Poseidon's `timestamp`
/// tag, the moment the event was read.
pub fn time_of_day(unix_ns: i64) -> String {
    let of_day = unix_ns.rem_euclid(NANOS_PER_DAY);
    let seconds = of_day / 1_000_000_000;
    format!(
        "{:02}:{:02}:{:02}.{:09}",
        seconds / 3_600,
        seconds / 60 % 60,
        seconds % 60,
        of_day % 1_000_000_000
    )
}

/// The event's `payload` field: a JSON summary of what was decoded, never a job specification,
/// at most [`PAYLOAD_BYTES_MAX`] bytes. See the module documentation.
pub fn payload(event: &Event) -> String {
    let summary = if let Some(allocation) = &event.payload.allocation {
        json!({ "Allocation": allocation_summary(allocation) })
    } else if let Some(job) = &event.payload.job {
        json!({ "Job": { "ID": job.id } })
    } else if let Some(evaluation) = &event.payload.evaluation {
        json!({ "Evaluation": evaluation_summary(evaluation) })
    } else {
        json!({})
    };
    let mut text = summary.to_string();
    let kept = truncate(&text, PAYLOAD_BYTES_MAX).len();
    text.truncate(kept);
    text
}

fn allocation_summary(allocation: &Allocation) -> Value {
    let mut tasks = Map::new();
    for (name, state) in allocation.task_states.iter().take(TASK_STATES_MAX) {
        let skipped = state.events.len().saturating_sub(TASK_EVENTS_MAX);
        let events: Vec<&str> = state.events[skipped..]
            .iter()
            .map(|event| event.kind.as_str())
            .collect();
        let oom_killed = state
            .events
            .iter()
            .filter(|event| event.oom_killed() == Some(true))
            .count();
        tasks.insert(
            name.clone(),
            json!({
                "State": state.state,
                "Failed": state.failed,
                "Restarts": state.restarts,
                "Events": events,
                "OOMKilled": oom_killed,
            }),
        );
    }
    json!({
        "ID": allocation.id,
        "JobID": allocation.job_id,
        "ClientStatus": allocation.client_status.as_str(),
        "DesiredStatus": allocation.desired_status.as_str(),
        "PreviousAllocation": allocation.previous_allocation,
        "NextAllocation": allocation.next_allocation,
        "CreateIndex": allocation.create_index,
        "ModifyIndex": allocation.modify_index,
        "ModifyTime": allocation.modify_time_ns,
        "TaskStates": tasks,
    })
}

fn evaluation_summary(evaluation: &Evaluation) -> Value {
    json!({
        "ID": evaluation.id,
        "JobID": evaluation.job_id,
        "Status": evaluation.status.as_str(),
        "TriggeredBy": evaluation.triggered_by,
        "StatusDescription": evaluation.status_description,
        "BlockedEval": evaluation.blocked_eval,
        "FailedTaskGroups": evaluation.failed_task_group_allocations.keys().collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Event {
        let frame = Frame::from_json(format!(r#"{{"Index":9,"Events":[{json}]}}"#).as_bytes())
            .expect("a frame");
        frame.events.into_iter().next().expect("one event")
    }

    #[test]
    fn a_job_events_payload_carries_its_id_and_none_of_its_specification() {
        let job = event(
            r#"{"Topic":"Job","Type":"JobRegistered","Key":"7-abc","Index":9,"Payload":{"Job":{
                "ID":"7-abc","Meta":{"used":"true"},
                "TaskGroups":[{"Name":"default-group","Tasks":[{"Name":"default-task",
                    "Env":{"SECRET":"env-value-5e1f"},"Config":{"command":"sleep"}}]}]}}}"#,
        );
        let payload = payload(&job);
        assert_eq!(payload, r#"{"Job":{"ID":"7-abc"}}"#);
        assert!(!payload.contains("env-value-5e1f"));
    }

    #[test]
    fn an_allocation_events_payload_summarises_statuses_tasks_and_oom_kills() {
        let allocation = event(
            r#"{"Topic":"Allocation","Type":"AllocationUpdated","Key":"a1","Index":9,"Payload":{
                "Allocation":{"ID":"a1","JobID":"7-abc","ClientStatus":"running",
                "DesiredStatus":"run","ModifyIndex":9,"CreateIndex":8,
                "Job":{"TaskGroups":[{"Tasks":[{"Env":{"SECRET":"env-value-5e1f"}}]}]},
                "TaskStates":{"default-task":{"State":"running","Restarts":1,"Events":[
                    {"Type":"Started"},{"Type":"OOM Killed","Details":{"oom_killed":"true"}}]}}}}}"#,
        );
        let payload: Value = serde_json::from_str(&payload(&allocation)).expect("JSON");
        let summary = &payload["Allocation"];
        assert_eq!(summary["ID"], "a1");
        assert_eq!(summary["JobID"], "7-abc");
        assert_eq!(summary["ClientStatus"], "running");
        assert_eq!(summary["ModifyIndex"], 9);
        let task = &summary["TaskStates"]["default-task"];
        assert_eq!(task["Restarts"], 1);
        assert_eq!(task["Events"], json!(["Started", "OOM Killed"]));
        assert_eq!(task["OOMKilled"], 1);
        assert!(!payload.to_string().contains("env-value-5e1f"));
    }

    #[test]
    fn a_payload_is_cut_at_its_bound() {
        let long = "x".repeat(3 * PAYLOAD_BYTES_MAX);
        let evaluation = event(&format!(
            r#"{{"Topic":"Evaluation","Type":"EvaluationUpdated","Key":"e1","Index":9,
                "Payload":{{"Evaluation":{{"ID":"e1","Status":"complete","StatusDescription":"{long}"}}}}}}"#
        ));
        let payload = payload(&evaluation);
        assert_eq!(payload.len(), PAYLOAD_BYTES_MAX);
        assert!(payload.starts_with(r#"{"Evaluation":{"#));
    }

    #[test]
    fn the_timestamp_tag_is_the_utc_time_of_day_to_the_nanosecond() {
        // 2024-03-01T13:04:05.000000007Z
        assert_eq!(time_of_day(1_709_298_245_000_000_007), "13:04:05.000000007");
        assert_eq!(time_of_day(0), "00:00:00.000000000");
        assert_eq!(time_of_day(NANOS_PER_DAY - 1), "23:59:59.999999999");
    }
}
