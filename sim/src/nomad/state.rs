//! The fake's cluster state: jobs, evaluations, allocations, the raft index, the event buffer and
//! the timer set that plays scheduler and client.
//!
//! Every write is a *transaction* ([`Tx`]): it takes the next raft index, changes objects (each
//! changed object gets that index as its `ModifyIndex`) and appends one frame with the events of
//! that index, typed by the raft message as Nomad does (`nomad-api.md` §6.3). Job statuses are
//! recomputed at the end of every transaction that touched the job's allocations or evaluations
//! (§3.4) and a flip adds a Job event to the same frame.
//!
//! What Nomad's scheduler and client agent do later (placing allocations, starting tasks,
//! stopping them) are timers in one ordered set keyed by `(due, sequence)`, so equal deadlines
//! fire in the order they were set. The owner ([`super::FakeNomad`]) runs them from tokio's clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, watch};

use super::events::{Event, EventBuffer, Frame};
use super::faults::FaultState;
use super::fs::Fs;
use super::{FakeNomadConfig, SplitMix64, uuid};

mod wire;

/// How many task events a task state keeps (Nomad's client default).
const TASK_EVENTS_MAX: usize = 10;

/// An error answered over HTTP: status and Nomad's plain-text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

type JobKey = (String, String);

/// A registered job.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    namespace: String,
    id: String,
    /// The job as registered, canonicalised, without server-owned fields.
    spec: Map<String, Value>,
    job_type: String,
    version: u64,
    create_index: u64,
    modify_index: u64,
    job_modify_index: u64,
    submit_time_ns: i64,
    stop: bool,
    status: &'static str,
}

/// Fields Nomad computes itself and ignores on register (§3.1).
const SERVER_FIELDS: [&str; 10] = [
    "Status",
    "StatusDescription",
    "Version",
    "CreateIndex",
    "ModifyIndex",
    "JobModifyIndex",
    "SubmitTime",
    "Stop",
    "Stable",
    "Namespace",
];

/// Case-insensitive key lookup: Nomad decodes with Go's `encoding/json` (§1.1).
pub(crate) fn get_ci<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn get_ci_i64(map: &Map<String, Value>, key: &str) -> Option<i64> {
    get_ci(map, key).and_then(Value::as_i64)
}

fn get_ci_str<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    get_ci(map, key).and_then(Value::as_str)
}

/// What the fake reads from one task group of a job spec.
#[derive(Clone, Debug)]
struct GroupSpec {
    name: String,
    count: u64,
    task_name: String,
    image: String,
    cpu: i64,
    memory_mb: i64,
    memory_max_mb: i64,
    /// `(label, to)` of the group network's dynamic ports.
    dynamic_ports: Vec<(String, i64)>,
    restart_attempts: u64,
}

impl Job {
    fn groups(&self) -> Vec<GroupSpec> {
        let Some(groups) = get_ci(&self.spec, "TaskGroups").and_then(Value::as_array) else {
            return Vec::new();
        };
        groups
            .iter()
            .filter_map(Value::as_object)
            .map(|group| {
                let task = get_ci(group, "Tasks")
                    .and_then(Value::as_array)
                    .and_then(|tasks| tasks.first())
                    .and_then(Value::as_object);
                let resources = task
                    .and_then(|t| get_ci(t, "Resources"))
                    .and_then(Value::as_object);
                let config = task
                    .and_then(|t| get_ci(t, "Config"))
                    .and_then(Value::as_object);
                let dynamic_ports = get_ci(group, "Networks")
                    .and_then(Value::as_array)
                    .and_then(|networks| networks.first())
                    .and_then(Value::as_object)
                    .and_then(|network| get_ci(network, "DynamicPorts"))
                    .and_then(Value::as_array)
                    .map(|ports| {
                        ports
                            .iter()
                            .filter_map(Value::as_object)
                            .map(|port| {
                                (
                                    get_ci_str(port, "Label").unwrap_or_default().to_owned(),
                                    get_ci_i64(port, "To").unwrap_or(0),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                GroupSpec {
                    name: get_ci_str(group, "Name").unwrap_or_default().to_owned(),
                    count: get_ci(group, "Count").and_then(Value::as_u64).unwrap_or(1),
                    task_name: task
                        .and_then(|t| get_ci_str(t, "Name"))
                        .unwrap_or("default-task")
                        .to_owned(),
                    image: config
                        .and_then(|c| get_ci_str(c, "image"))
                        .unwrap_or_default()
                        .to_owned(),
                    cpu: resources.and_then(|r| get_ci_i64(r, "CPU")).unwrap_or(100),
                    memory_mb: resources
                        .and_then(|r| get_ci_i64(r, "MemoryMB"))
                        .unwrap_or(300),
                    memory_max_mb: resources
                        .and_then(|r| get_ci_i64(r, "MemoryMaxMB"))
                        .unwrap_or(0),
                    dynamic_ports,
                    restart_attempts: get_ci(group, "RestartPolicy")
                        .and_then(Value::as_object)
                        .and_then(|policy| get_ci(policy, "Attempts"))
                        .and_then(Value::as_u64)
                        .unwrap_or(3),
                }
            })
            .collect()
    }

    /// The job as Nomad returns it: the spec and the server's fields (§3.3).
    fn to_json(&self) -> Value {
        serde_json::to_value(wire::JobWire(self)).expect("string keys")
    }
}

#[derive(Clone, Debug)]
struct Eval {
    id: String,
    namespace: String,
    job_id: String,
    eval_type: String,
    triggered_by: &'static str,
    job_modify_index: u64,
    node_id: String,
    status: &'static str,
    status_description: String,
    failed_tg_allocs: Option<Value>,
    blocked_eval: String,
    previous_eval: String,
    create_index: u64,
    modify_index: u64,
    create_time_ns: i64,
    modify_time_ns: i64,
}

impl Eval {
    fn is_terminal(&self) -> bool {
        matches!(self.status, "complete" | "failed" | "canceled")
    }

    /// Zero fields omitted (`_struct` omitempty, §1.3).
    fn to_json(&self) -> Value {
        let mut map = Map::new();
        put(&mut map, "ID", json!(self.id));
        put(&mut map, "Namespace", json!(self.namespace));
        put(&mut map, "Priority", json!(50));
        put(&mut map, "Type", json!(self.eval_type));
        put(&mut map, "TriggeredBy", json!(self.triggered_by));
        put(&mut map, "JobID", json!(self.job_id));
        put(&mut map, "JobModifyIndex", json!(self.job_modify_index));
        put(&mut map, "NodeID", json!(self.node_id));
        put(&mut map, "Status", json!(self.status));
        put(
            &mut map,
            "StatusDescription",
            json!(self.status_description),
        );
        put(&mut map, "PreviousEval", json!(self.previous_eval));
        put(&mut map, "BlockedEval", json!(self.blocked_eval));
        put(
            &mut map,
            "FailedTGAllocs",
            self.failed_tg_allocs.clone().unwrap_or(Value::Null),
        );
        put(&mut map, "CreateIndex", json!(self.create_index));
        put(&mut map, "ModifyIndex", json!(self.modify_index));
        put(&mut map, "CreateTime", json!(self.create_time_ns));
        put(&mut map, "ModifyTime", json!(self.modify_time_ns));
        Value::Object(map)
    }

    fn event(&self, typ: &'static str) -> Event {
        Event {
            topic: "Evaluation",
            typ,
            key: self.id.clone(),
            namespace: self.namespace.clone(),
            filter_keys: Some(vec![self.job_id.clone(), String::new()]),
            payload: raw(&json!({ "Evaluation": self.to_json() })),
        }
    }
}

/// Inserts `value` unless it is Go's zero value (the omitempty rule of §1.3).
fn put(map: &mut Map<String, Value>, key: &str, value: Value) {
    let zero = match &value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    };
    if !zero {
        map.insert(key.to_owned(), value);
    }
}

#[derive(Clone, Debug)]
struct TaskEvent {
    typ: &'static str,
    time_ns: i64,
    message: String,
    details: BTreeMap<&'static str, String>,
}

#[derive(Clone, Debug)]
struct TaskState {
    state: &'static str,
    failed: bool,
    restarts: u64,
    last_restart_ns: i64,
    started_at_ns: i64,
    finished_at_ns: i64,
    events: Vec<TaskEvent>,
}

impl TaskState {
    fn new() -> Self {
        TaskState {
            state: "pending",
            failed: false,
            restarts: 0,
            last_restart_ns: 0,
            started_at_ns: 0,
            finished_at_ns: 0,
            events: Vec::new(),
        }
    }

    fn push(
        &mut self,
        typ: &'static str,
        time_ns: i64,
        message: &str,
        details: &[(&'static str, String)],
    ) {
        self.events.push(TaskEvent {
            typ,
            time_ns,
            message: message.to_owned(),
            details: details.iter().cloned().collect(),
        });
        if self.events.len() > TASK_EVENTS_MAX {
            self.events.remove(0);
        }
    }
}

/// An allocation, with the container the fake driver runs for it.
#[derive(Clone, Debug)]
pub(crate) struct Alloc {
    pub(crate) id: String,
    namespace: String,
    eval_id: String,
    name: String,
    node_id: String,
    node_name: String,
    pub(crate) job_id: String,
    job: Value,
    job_version: u64,
    job_create_index: u64,
    task_group: String,
    pub(crate) task_name: String,
    image: String,
    pub(crate) desired_status: &'static str,
    desired_description: String,
    pub(crate) client_status: &'static str,
    client_description: String,
    task: Option<TaskState>,
    previous_allocation: String,
    next_allocation: String,
    create_index: u64,
    modify_index: u64,
    alloc_modify_index: u64,
    create_time_ns: i64,
    modify_time_ns: i64,
    /// `(label, host port, container port)`.
    ports: Vec<(String, i64, i64)>,
    cpu: i64,
    memory_mb: i64,
    memory_max_mb: i64,
    restart_attempts: u64,
    /// Grows whenever the container is replaced (restart) or stops: running execs of an older
    /// incarnation end, and a new incarnation starts with a clean file system.
    pub(crate) incarnation: u64,
    pub(crate) fs: Fs,
}

/// Purged jobs remembered for [`State::purged_at`].
const PURGES_KEPT: usize = 4096;

/// Client statuses Nomad counts as terminal (§5.4).
fn client_terminal(status: &str) -> bool {
    matches!(status, "complete" | "failed" | "lost")
}

impl Alloc {
    /// Nomad's `TerminalStatus()`: the server wants it stopped, or the client is done.
    fn is_terminal(&self) -> bool {
        matches!(self.desired_status, "stop" | "evict") || client_terminal(self.client_status)
    }

    /// The memory the container may use before the OOM killer fires (MiB).
    pub(crate) fn memory_limit_mb(&self) -> i64 {
        if self.memory_max_mb > 0 {
            self.memory_max_mb
        } else {
            self.memory_mb
        }
    }

    /// The full allocation (`GET /v1/allocation/:id`; the event payload without `Job`), zero
    /// fields omitted (§5.3).
    fn to_json(&self, with_job: bool) -> Value {
        serde_json::to_value(wire::AllocWire {
            alloc: self,
            with_job,
        })
        .expect("string keys")
    }

    /// An event's payload, `{"Allocation": …}`, serialised once, straight from the state.
    fn payload(&self) -> Box<RawValue> {
        serde_json::value::to_raw_value(&wire::PayloadWire(self)).expect("string keys")
    }

    fn event(&self, typ: &'static str, payload: Box<RawValue>) -> Event {
        Event {
            topic: "Allocation",
            typ,
            key: self.id.clone(),
            namespace: self.namespace.clone(),
            filter_keys: Some(vec![self.job_id.clone(), String::new()]),
            payload,
        }
    }
}

/// Something the scheduler or the client agent does later.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Timer {
    /// The scheduler processes an evaluation.
    Schedule { eval_id: String },
    /// The client picks an allocation up (`Received`, `Task Setup`, `Driver`).
    ClientPickup { alloc_id: String, incarnation: u64 },
    /// The task starts.
    TaskStart { alloc_id: String, incarnation: u64 },
    /// The client kills a task the server wants stopped.
    ClientStop { alloc_id: String },
}

/// One raft write in progress.
#[derive(Debug)]
struct Tx {
    index: u64,
    typ: &'static str,
    events: Vec<Event>,
    /// Jobs whose status may have changed.
    touched: BTreeSet<JobKey>,
}

/// Where an exec may run, or why it may not (close code and reason of §7.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExecTarget {
    pub(crate) incarnation: u64,
    pub(crate) memory_limit_mb: i64,
}

/// The cluster.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) config: FakeNomadConfig,
    rng: SplitMix64,
    index: u64,
    /// Elapsed tokio time since the fake started; set by the owner before every use.
    pub(crate) now: Duration,
    node_id: String,
    jobs: BTreeMap<JobKey, Job>,
    evals: BTreeMap<String, Eval>,
    allocs: BTreeMap<String, Alloc>,
    /// The ids of every job's allocations: Nomad's state store looks allocations up by job, and
    /// so must the fake, or every job list of a 10,000-job cluster would be quadratic.
    allocs_by_job: BTreeMap<JobKey, BTreeSet<String>>,
    jobs_index: u64,
    allocs_index: u64,
    pub(crate) events: EventBuffer,
    timers: BTreeMap<(Duration, u64), Timer>,
    timer_sequence: u64,
    next_host_port: i64,
    pub(crate) faults: FaultState,
    /// Bumped to end every open event stream.
    pub(crate) stream_generation: u64,
    /// The raft index at which each of the latest [`PURGES_KEPT`] purged jobs was purged, and
    /// their order.
    purges: BTreeMap<(String, String), u64>,
    purge_order: std::collections::VecDeque<(String, String)>,
    /// HTTP requests received, by `METHOD /route` (see `http::route_of`), refused ones included.
    pub(crate) requests: BTreeMap<String, u64>,
    /// Bumped after every change: event streams and execs re-check the state.
    wake: watch::Sender<u64>,
    /// Notified when a timer is added: the timer task re-computes its deadline.
    timer_wake: Arc<Notify>,
}

/// Formats unix nanoseconds as RFC 3339 with nanoseconds (Go's `time.Time` JSON); 0 is Go's zero
/// time.
pub(crate) fn rfc3339(ns: i64) -> String {
    if ns == 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl State {
    pub(crate) fn new(
        config: FakeNomadConfig,
        wake: watch::Sender<u64>,
        timer_wake: Arc<Notify>,
    ) -> Self {
        let mut rng = SplitMix64::new(config.seed);
        let node_id = uuid(&mut rng);
        State {
            events: EventBuffer::new(config.event_buffer_size),
            config,
            rng,
            index: 0,
            now: Duration::ZERO,
            node_id,
            jobs: BTreeMap::new(),
            evals: BTreeMap::new(),
            allocs: BTreeMap::new(),
            allocs_by_job: BTreeMap::new(),
            jobs_index: 0,
            allocs_index: 0,
            timers: BTreeMap::new(),
            timer_sequence: 0,
            next_host_port: 20_000,
            faults: FaultState::default(),
            stream_generation: 0,
            purges: BTreeMap::new(),
            purge_order: std::collections::VecDeque::new(),
            requests: BTreeMap::new(),
            wake,
            timer_wake,
        }
    }

    pub(crate) fn index(&self) -> u64 {
        self.index
    }

    fn now_ns(&self) -> i64 {
        let elapsed = i64::try_from(self.now.as_nanos()).unwrap_or(i64::MAX / 2);
        self.config.epoch_unix_s * 1_000_000_000 + elapsed
    }

    pub(crate) fn now_s(&self) -> i64 {
        self.now_ns() / 1_000_000_000
    }

    /// Wakes streams and execs so they re-read the state.
    pub(crate) fn wake(&self) {
        self.wake.send_modify(|generation| *generation += 1);
    }

    fn begin(&mut self, typ: &'static str) -> Tx {
        self.index += 1;
        Tx {
            index: self.index,
            typ,
            events: Vec::new(),
            touched: BTreeSet::new(),
        }
    }

    fn commit(&mut self, mut tx: Tx) {
        for key in std::mem::take(&mut tx.touched) {
            let status = self.job_status(&key);
            if let Some(job) = self.jobs.get_mut(&key)
                && job.status != status
            {
                job.status = status;
                job.modify_index = tx.index;
                self.jobs_index = tx.index;
                tx.events.push(job_event(job, tx.typ));
            }
        }
        if !tx.events.is_empty() {
            self.events.push(Frame {
                index: tx.index,
                events: tx.events,
            });
        }
        self.wake();
    }

    fn add_timer(&mut self, delay: Duration, timer: Timer) {
        self.timer_sequence += 1;
        self.timers
            .insert((self.now + delay, self.timer_sequence), timer);
        self.timer_wake.notify_one();
    }

    /// When the next timer is due (elapsed time since start).
    pub(crate) fn next_timer_due(&self) -> Option<Duration> {
        self.timers.keys().next().map(|(due, _)| *due)
    }

    /// Runs every timer due by `self.now`, in order.
    pub(crate) fn run_due_timers(&mut self) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let timer = entry.remove();
            match timer {
                Timer::Schedule { eval_id } => self.run_eval(&eval_id),
                Timer::ClientPickup {
                    alloc_id,
                    incarnation,
                } => self.client_pickup(&alloc_id, incarnation),
                Timer::TaskStart {
                    alloc_id,
                    incarnation,
                } => self.task_start(&alloc_id, incarnation),
                Timer::ClientStop { alloc_id } => self.client_stop(&alloc_id),
            }
        }
    }

    /// Job status (`state_store.go` getJobStatus, §3.4) for batch and service jobs.
    fn job_status(&self, key: &JobKey) -> &'static str {
        let Some(job) = self.jobs.get(key) else {
            return "dead";
        };
        let live_alloc = self
            .job_allocs(key)
            .any(|alloc| alloc.job_create_index == job.create_index && !alloc.is_terminal());
        if live_alloc {
            return "running";
        }
        let mut any_eval = false;
        for eval in self.evals.values() {
            if eval.namespace == key.0
                && eval.job_id == key.1
                && eval.create_index >= job.create_index
            {
                if !eval.is_terminal() {
                    return "pending";
                }
                any_eval = true;
            }
        }
        if any_eval || job.stop {
            "dead"
        } else {
            "pending"
        }
    }

    fn new_eval(
        &mut self,
        tx: &Tx,
        namespace: &str,
        job_id: &str,
        eval_type: &str,
        triggered_by: &'static str,
        job_modify_index: u64,
    ) -> String {
        let id = uuid(&mut self.rng);
        let now = self.now_ns();
        self.evals.insert(
            id.clone(),
            Eval {
                id: id.clone(),
                namespace: namespace.to_owned(),
                job_id: job_id.to_owned(),
                eval_type: eval_type.to_owned(),
                triggered_by,
                job_modify_index,
                node_id: String::new(),
                status: "pending",
                status_description: String::new(),
                failed_tg_allocs: None,
                blocked_eval: String::new(),
                previous_eval: String::new(),
                create_index: tx.index,
                modify_index: tx.index,
                create_time_ns: now,
                modify_time_ns: now,
            },
        );
        id
    }

    // ---------------------------------------------------------------- jobs

    /// `PUT /v1/jobs` (§3.1).
    pub(crate) fn register(&mut self, namespace: &str, body: &Value) -> Result<Value, ApiError> {
        let request = body.as_object().ok_or_else(|| {
            ApiError::new(
                400,
                "json: cannot unmarshal into Go value of type api.JobRegisterRequest",
            )
        })?;
        let job = get_ci(request, "Job")
            .and_then(Value::as_object)
            .ok_or_else(|| ApiError::new(400, "Job must be specified"))?;
        let enforce = get_ci(request, "EnforceIndex")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let enforce_index = get_ci(request, "JobModifyIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let (id, spec, job_type) = prepare(job)?;
        let key = (namespace.to_owned(), id.clone());
        let existing = self.jobs.get(&key);
        if enforce {
            match existing {
                None if enforce_index != 0 => {
                    return Err(ApiError::new(
                        500,
                        format!("Enforcing job modify index {enforce_index}: job does not exist"),
                    ));
                }
                Some(_) if enforce_index == 0 => {
                    return Err(ApiError::new(
                        500,
                        "Enforcing job modify index 0: job already exists",
                    ));
                }
                Some(job) if job.job_modify_index != enforce_index => {
                    return Err(ApiError::new(
                        500,
                        format!(
                            "Enforcing job modify index {enforce_index}: job exists with conflicting job modify index: {}",
                            job.job_modify_index
                        ),
                    ));
                }
                _ => {}
            }
        }
        if let Some(job) = existing
            && job.job_type != job_type
        {
            return Err(ApiError::new(
                500,
                format!(
                    "cannot update job from type \"{}\" to \"{job_type}\"",
                    job.job_type
                ),
            ));
        }
        let changed = existing.is_none_or(|job| job.spec != spec || job.stop);
        let mut tx = self.begin("JobRegistered");
        let now = self.now_ns();
        let job_modify_index = match self.jobs.get_mut(&key) {
            Some(job) if changed => {
                job.spec = spec;
                job.version += 1;
                job.stop = false;
                job.job_modify_index = tx.index;
                job.submit_time_ns = now;
                job.job_modify_index
            }
            Some(job) => job.job_modify_index,
            None => {
                self.jobs.insert(
                    key.clone(),
                    Job {
                        namespace: namespace.to_owned(),
                        id: id.clone(),
                        spec,
                        job_type: job_type.clone(),
                        version: 0,
                        create_index: tx.index,
                        modify_index: tx.index,
                        job_modify_index: tx.index,
                        submit_time_ns: now,
                        stop: false,
                        status: "pending",
                    },
                );
                tx.index
            }
        };
        let eval_id = self.new_eval(
            &tx,
            namespace,
            &id,
            &job_type,
            "job-register",
            job_modify_index,
        );
        if changed {
            let status = self.job_status(&key);
            let job = self.jobs.get_mut(&key).expect("the job was just written");
            job.status = status;
            job.modify_index = tx.index;
            self.jobs_index = tx.index;
            tx.events.push(job_event(job, tx.typ));
        }
        tx.events.push(self.evals[&eval_id].event(tx.typ));
        tx.touched.insert(key);
        let index = tx.index;
        self.commit(tx);
        self.add_timer(
            self.config.schedule_delay,
            Timer::Schedule {
                eval_id: eval_id.clone(),
            },
        );
        Ok(json!({
            "EvalID": eval_id,
            "EvalCreateIndex": index,
            "JobModifyIndex": job_modify_index,
            "Warnings": "",
            "Index": index,
            "LastContact": 0,
            "KnownLeader": false,
            "NextToken": "",
        }))
    }

    /// The raft index at which job `id` (default namespace) was last purged, if it is among the
    /// latest [`PURGES_KEPT`] purges.
    pub(crate) fn purged_at(&self, id: &str) -> Option<u64> {
        self.purges
            .get(&("default".to_owned(), id.to_owned()))
            .copied()
    }

    /// `DELETE /v1/job/:id` (§3.5): `(body, X-Nomad-Index)`.
    pub(crate) fn deregister(&mut self, namespace: &str, id: &str, purge: bool) -> (Value, u64) {
        let key = (namespace.to_owned(), id.to_owned());
        if !self.jobs.contains_key(&key) {
            return (deregister_response("", 0, 0), 0);
        }
        let mut tx = self.begin("JobDeregistered");
        let job_modify_index;
        if purge {
            let mut job = self.jobs.remove(&key).expect("checked above");
            if self.purge_order.len() >= PURGES_KEPT
                && let Some(oldest) = self.purge_order.pop_front()
            {
                self.purges.remove(&oldest);
            }
            if self.purges.insert(key.clone(), tx.index).is_none() {
                self.purge_order.push_back(key.clone());
            }
            job.modify_index = tx.index;
            job.status = "dead";
            job_modify_index = job.job_modify_index;
            tx.events.push(job_event(&job, tx.typ));
        } else {
            let job = self.jobs.get_mut(&key).expect("checked above");
            job.stop = true;
            job.version += 1;
            job.job_modify_index = tx.index;
            job.modify_index = tx.index;
            job_modify_index = tx.index;
            tx.events.push(job_event(job, tx.typ));
        }
        self.jobs_index = tx.index;
        if self.faults.deregister_without_alloc_events
            && let Some(ids) = self.allocs_by_job.remove(&key)
        {
            for id in &ids {
                self.allocs.remove(id);
            }
            self.allocs_index = tx.index;
        }
        let eval_id = self.new_eval(
            &tx,
            namespace,
            id,
            "service",
            "job-deregister",
            job_modify_index,
        );
        tx.events.push(self.evals[&eval_id].event(tx.typ));
        tx.touched.insert(key);
        let index = tx.index;
        self.commit(tx);
        self.add_timer(
            self.config.schedule_delay,
            Timer::Schedule {
                eval_id: eval_id.clone(),
            },
        );
        (
            deregister_response(&eval_id, index, job_modify_index),
            index,
        )
    }

    /// Stores `jobs` (each as the `Job` of a register request) as a cluster that has run them
    /// for a while holds them: one raft write for all, every allocation placed and running, no
    /// evaluations (garbage-collected), no event frames (older than any buffer), no timers.
    /// Returns the write's index. Jobs that exist already are refused.
    pub(crate) fn seed_running(
        &mut self,
        namespace: &str,
        jobs: &[Value],
    ) -> Result<u64, ApiError> {
        let mut prepared = Vec::with_capacity(jobs.len());
        let mut ids = BTreeSet::new();
        for job in jobs {
            let job = job
                .as_object()
                .ok_or_else(|| ApiError::new(400, "Job must be specified"))?;
            let (id, spec, job_type) = prepare(job)?;
            let key = (namespace.to_owned(), id);
            if self.jobs.contains_key(&key) || !ids.insert(key.1.clone()) {
                return Err(ApiError::new(
                    400,
                    format!("job {:?} exists already", key.1),
                ));
            }
            prepared.push((key, spec, job_type));
        }
        let index = self.begin("JobRegistered").index;
        let now = self.now_ns();
        for (key, spec, job_type) in prepared {
            self.jobs.insert(
                key.clone(),
                Job {
                    namespace: key.0.clone(),
                    id: key.1.clone(),
                    spec,
                    job_type,
                    version: 0,
                    create_index: index,
                    modify_index: index,
                    job_modify_index: index,
                    submit_time_ns: now,
                    stop: false,
                    status: "pending",
                },
            );
            let eval_id = uuid(&mut self.rng);
            let groups = self.jobs[&key].groups();
            for group in groups.into_iter().filter(|group| group.count > 0) {
                for name_index in 0..group.count {
                    let mut alloc = self.new_alloc(index, &key, &group, name_index, &eval_id, "");
                    let mut task = TaskState::new();
                    task.push("Received", now, "Task received by client", &[]);
                    task.push("Started", now, "Task started by client", &[]);
                    task.state = "running";
                    task.started_at_ns = now;
                    alloc.task = Some(task);
                    alloc.client_status = "running";
                    alloc.client_description = "Tasks are running".into();
                    self.insert_alloc(alloc);
                }
            }
            let status = self.job_status(&key);
            if let Some(job) = self.jobs.get_mut(&key) {
                job.status = status;
            }
        }
        self.jobs_index = index;
        self.allocs_index = index;
        self.wake();
        Ok(index)
    }

    /// `GET /v1/job/:id`: the job and its `ModifyIndex`.
    pub(crate) fn job(&self, namespace: &str, id: &str) -> Option<(Value, u64)> {
        self.jobs
            .get(&(namespace.to_owned(), id.to_owned()))
            .map(|job| (job.to_json(), job.modify_index))
    }

    /// `GET /v1/jobs?prefix=…[&meta=true]` (§3.4), in ID order.
    pub(crate) fn list_jobs(&self, namespace: &str, prefix: &str, meta: bool) -> (Value, u64) {
        let stubs: Vec<Value> = self
            .jobs
            .values()
            .filter(|job| {
                (namespace == "*" || job.namespace == namespace) && job.id.starts_with(prefix)
            })
            .map(|job| self.job_stub(job, meta))
            .collect();
        (Value::Array(stubs), self.jobs_index)
    }

    fn job_stub(&self, job: &Job, meta: bool) -> Value {
        let key = (job.namespace.clone(), job.id.clone());
        let mut summary = Map::new();
        for group in job.groups() {
            let mut counts = BTreeMap::from([
                ("Queued", 0u64),
                ("Complete", 0),
                ("Failed", 0),
                ("Running", 0),
                ("Starting", 0),
                ("Lost", 0),
                ("Unknown", 0),
            ]);
            for alloc in self
                .job_allocs(&key)
                .filter(|a| a.task_group == group.name && a.job_create_index == job.create_index)
            {
                let slot = match alloc.client_status {
                    "pending" => "Starting",
                    "running" => "Running",
                    "complete" => "Complete",
                    "failed" => "Failed",
                    "lost" => "Lost",
                    _ => "Unknown",
                };
                *counts.entry(slot).or_default() += 1;
            }
            summary.insert(group.name, json!(counts));
        }
        let mut stub = json!({
            "ID": job.id,
            "ParentID": "",
            "Name": get_ci(&job.spec, "Name").cloned().unwrap_or(Value::Null),
            "Namespace": job.namespace,
            "Datacenters": get_ci(&job.spec, "Datacenters").cloned().unwrap_or(Value::Null),
            "Multiregion": null,
            "Type": job.job_type,
            "Priority": get_ci(&job.spec, "Priority").cloned().unwrap_or(json!(50)),
            "Periodic": false,
            "ParameterizedJob": false,
            "Stop": job.stop,
            "Status": job.status,
            "StatusDescription": "",
            "JobSummary": {
                "JobID": job.id,
                "Namespace": job.namespace,
                "Summary": summary,
                "Children": { "Pending": 0, "Running": 0, "Dead": 0 },
                "CreateIndex": job.create_index,
                "ModifyIndex": job.modify_index,
            },
            "CreateIndex": job.create_index,
            "ModifyIndex": job.modify_index,
            "JobModifyIndex": job.job_modify_index,
            "SubmitTime": job.submit_time_ns,
            "NodePool": "default",
        });
        if meta
            && let Some(job_meta) =
                get_ci(&job.spec, "Meta").filter(|m| m.as_object().is_some_and(|m| !m.is_empty()))
            && let Some(map) = stub.as_object_mut()
        {
            map.insert("Meta".into(), job_meta.clone());
        }
        stub
    }

    // --------------------------------------------------------- allocations

    /// `GET /v1/job/:id/allocations?all=…` (§3.6), serialised (Trident asks it before every
    /// exec, so it is written straight from the state, not built as a `Value`).
    pub(crate) fn job_allocations(&self, namespace: &str, id: &str, all: bool) -> (Vec<u8>, u64) {
        let key = (namespace.to_owned(), id.to_owned());
        let create_index = self.jobs.get(&key).map(|job| job.create_index);
        let stubs = wire::array(
            self.job_allocs(&key)
                .filter(|a| all || create_index.is_none_or(|index| a.job_create_index == index))
                .map(|alloc| wire::StubWire {
                    alloc,
                    resources: false,
                    task_states: true,
                }),
        );
        (stubs, self.allocs_index)
    }

    /// `GET /v1/job/:id/evaluations` (§3.6): the job's evaluations, `[]` for an unknown job.
    /// Evaluations are never garbage-collected here, so a purged job's stay listed (as in
    /// Nomad until its GC).
    pub(crate) fn job_evaluations(&self, namespace: &str, id: &str) -> (Value, u64) {
        let evals: Vec<Value> = self
            .evals
            .values()
            .filter(|eval| eval.namespace == namespace && eval.job_id == id)
            .map(Eval::to_json)
            .collect();
        (Value::Array(evals), self.index)
    }

    /// `GET /v1/allocations` (§5.1).
    pub(crate) fn list_allocations(
        &self,
        namespace: &str,
        prefix: &str,
        resources: bool,
        task_states: bool,
    ) -> (Vec<u8>, u64) {
        let stubs = wire::array(
            self.allocs
                .values()
                .filter(|a| {
                    (namespace == "*" || a.namespace == namespace) && a.id.starts_with(prefix)
                })
                .map(|alloc| wire::StubWire {
                    alloc,
                    resources,
                    task_states,
                }),
        );
        (stubs, self.allocs_index)
    }

    /// `GET /v1/allocation/:id`.
    pub(crate) fn allocation(&self, id: &str) -> Option<(Value, u64)> {
        self.allocs
            .get(id)
            .map(|a| (a.to_json(true), a.modify_index))
    }

    /// `GET /v1/evaluation/:id`.
    pub(crate) fn evaluation(&self, id: &str) -> Option<(Value, u64)> {
        self.evals.get(id).map(|e| (e.to_json(), e.modify_index))
    }

    /// `GET /v1/node/:id`.
    pub(crate) fn node(&self, id: &str) -> Option<Value> {
        (id == self.node_id).then(|| {
            json!({
                "ID": self.node_id,
                "Name": self.config.node_name,
                "Datacenter": "dc1",
                "NodePool": "default",
                "HTTPAddr": "",
                "TLSEnabled": false,
                "Status": "ready",
                "SchedulingEligibility": "eligible",
                "Drain": false,
            })
        })
    }

    /// The ids of the jobs neither stopped nor dead (reads no clock).
    pub(crate) fn visit_live_jobs(&self, mut visit: impl FnMut(&str)) {
        for job in self.jobs.values() {
            if !job.stop && job.status != "dead" {
                visit(&job.id);
            }
        }
    }

    /// The jobs and the live allocations, for the simulation's invariants (reads no clock).
    pub(crate) fn census(&self) -> super::Census {
        super::Census {
            jobs: self
                .jobs
                .values()
                .map(|job| super::JobCensus {
                    id: job.id.clone(),
                    stopped: job.stop,
                    status: job.status,
                })
                .collect(),
            running: self
                .allocs
                .values()
                .filter(|alloc| alloc.client_status == "running" && alloc.desired_status == "run")
                .map(|alloc| (alloc.id.clone(), alloc.job_id.clone()))
                .collect(),
            index: self.index,
        }
    }

    pub(crate) fn alloc(&self, id: &str) -> Option<&Alloc> {
        self.allocs.get(id)
    }

    pub(crate) fn alloc_mut(&mut self, id: &str) -> Option<&mut Alloc> {
        self.allocs.get_mut(id)
    }

    /// Whether an exec may run in `alloc_id`'s `task` (§7.5 reasons otherwise).
    pub(crate) fn exec_target(
        &self,
        alloc_id: &str,
        task: &str,
    ) -> Result<ExecTarget, (u16, String)> {
        let Some(alloc) = self.allocs.get(alloc_id) else {
            return Err((1008, format!("Unknown allocation \"{alloc_id}\"")));
        };
        if client_terminal(alloc.client_status) {
            return Err((
                1008,
                format!(
                    "exec not possible, client status of allocation {alloc_id} is {}",
                    alloc.client_status
                ),
            ));
        }
        if task != alloc.task_name {
            return Err((1008, format!("unknown task name \"{task}\"")));
        }
        match alloc.task.as_ref().map(|t| t.state) {
            Some("running") => Ok(ExecTarget {
                incarnation: alloc.incarnation,
                memory_limit_mb: alloc.memory_limit_mb(),
            }),
            Some(_) if alloc.task.as_ref().is_some_and(|t| t.started_at_ns != 0) => {
                Err((1008, format!("task \"{task}\" is not running.")))
            }
            _ => Err((1008, format!("task \"{task}\" not started yet."))),
        }
    }

    // ------------------------------------------------------------ scheduler

    /// Places a new allocation of `group` (`pending/run`); the client picks it up and starts
    /// it later (timers). Returns its id.
    fn place(
        &mut self,
        tx: &Tx,
        job_key: &JobKey,
        group: &GroupSpec,
        name_index: u64,
        eval_id: &str,
        previous: &str,
    ) -> String {
        let alloc = self.new_alloc(tx.index, job_key, group, name_index, eval_id, previous);
        let id = alloc.id.clone();
        self.insert_alloc(alloc);
        self.add_timer(
            self.config.client_pickup_delay,
            Timer::ClientPickup {
                alloc_id: id.clone(),
                incarnation: 0,
            },
        );
        self.add_timer(
            self.config.task_start_delay,
            Timer::TaskStart {
                alloc_id: id.clone(),
                incarnation: 0,
            },
        );
        id
    }

    fn insert_alloc(&mut self, alloc: Alloc) {
        self.allocs_by_job
            .entry((alloc.namespace.clone(), alloc.job_id.clone()))
            .or_default()
            .insert(alloc.id.clone());
        self.allocs.insert(alloc.id.clone(), alloc);
    }

    /// The allocations of one job, in id order (the order of `self.allocs`).
    fn job_allocs<'a>(&'a self, key: &JobKey) -> impl Iterator<Item = &'a Alloc> + use<'a> {
        self.allocs_by_job
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|id| self.allocs.get(id))
    }

    /// A new `pending/run` allocation of `group` at raft index `index`, not yet stored.
    fn new_alloc(
        &mut self,
        index: u64,
        job_key: &JobKey,
        group: &GroupSpec,
        name_index: u64,
        eval_id: &str,
        previous: &str,
    ) -> Alloc {
        let job = &self.jobs[job_key];
        let job_json = job.to_json();
        let (job_version, job_create_index) = (job.version, job.create_index);
        let id = uuid(&mut self.rng);
        let mut ports = Vec::new();
        for (label, to) in &group.dynamic_ports {
            ports.push((label.clone(), self.next_host_port, *to));
            self.next_host_port += 1;
        }
        let now = self.now_ns();
        let now_s = self.now_s();
        Alloc {
            id,
            namespace: job_key.0.clone(),
            eval_id: eval_id.to_owned(),
            name: format!("{}.{}[{name_index}]", job_key.1, group.name),
            node_id: self.node_id.clone(),
            node_name: self.config.node_name.clone(),
            job_id: job_key.1.clone(),
            job: job_json,
            job_version,
            job_create_index,
            task_group: group.name.clone(),
            task_name: group.task_name.clone(),
            image: group.image.clone(),
            desired_status: "run",
            desired_description: String::new(),
            client_status: "pending",
            client_description: String::new(),
            task: None,
            previous_allocation: previous.to_owned(),
            next_allocation: String::new(),
            create_index: index,
            modify_index: index,
            alloc_modify_index: index,
            create_time_ns: now,
            modify_time_ns: now,
            ports,
            cpu: group.cpu,
            memory_mb: group.memory_mb,
            memory_max_mb: group.memory_max_mb,
            restart_attempts: group.restart_attempts,
            incarnation: 0,
            fs: Fs::new(now_s),
        }
    }

    fn run_eval(&mut self, eval_id: &str) {
        let Some(eval) = self.evals.get(eval_id).filter(|e| e.status == "pending") else {
            return;
        };
        let key = (eval.namespace.clone(), eval.job_id.clone());
        let mut plan = self.begin("PlanResult");
        let mut failed_groups = Map::new();
        let now = self.now_ns();
        match self.jobs.get(&key).filter(|job| !job.stop) {
            Some(job) => {
                let (version, create_index) = (job.version, job.create_index);
                let job_json = job.to_json();
                for group in job.groups().into_iter().filter(|g| g.count > 0) {
                    let live: Vec<String> = self
                        .job_allocs(&key)
                        .filter(|a| {
                            a.task_group == group.name
                                && a.job_create_index == create_index
                                && !a.is_terminal()
                        })
                        .map(|a| a.id.clone())
                        .collect();
                    for alloc_id in &live {
                        let alloc = self.allocs.get_mut(alloc_id).expect("listed above");
                        if alloc.job_version != version {
                            // An in-place update: a new job version, same statuses (§3.1, §5.7).
                            alloc.job_version = version;
                            alloc.job = job_json.clone();
                            alloc.modify_index = plan.index;
                            alloc.alloc_modify_index = plan.index;
                            alloc.modify_time_ns = now;
                            plan.events.push(alloc.event(plan.typ, alloc.payload()));
                        }
                    }
                    let missing = group.count.saturating_sub(live.len() as u64);
                    if missing == 0 {
                        continue;
                    }
                    if self.faults.placement_failure {
                        failed_groups.insert(
                            group.name.clone(),
                            json!({
                                "NodesEvaluated": 1, "NodesFiltered": 0, "NodesInPool": 1, "NodePool": "default",
                                "NodesAvailable": { "dc1": 1 }, "ClassFiltered": null, "ConstraintFiltered": null,
                                "NodesExhausted": 1, "ClassExhausted": null, "DimensionExhausted": { "memory": 1 },
                                "QuotaExhausted": null, "ResourcesExhausted": null, "Scores": null,
                                "ScoreMetaData": null, "AllocationTime": 10_000, "CoalescedFailures": missing - 1,
                            }),
                        );
                        continue;
                    }
                    for name_index in 0..missing {
                        let id = self.place(&plan, &key, &group, name_index, eval_id, "");
                        let alloc = &self.allocs[&id];
                        plan.events.push(alloc.event(plan.typ, alloc.payload()));
                    }
                }
            }
            None => {
                // Stopped or purged: every allocation of the job stops (§5.5 row 7).
                let doomed: Vec<String> = self
                    .job_allocs(&key)
                    .filter(|a| !a.is_terminal())
                    .map(|a| a.id.clone())
                    .collect();
                for alloc_id in doomed {
                    let alloc = self.allocs.get_mut(&alloc_id).expect("listed above");
                    alloc.desired_status = "stop";
                    alloc.desired_description = "alloc not needed due to job update".into();
                    alloc.modify_index = plan.index;
                    alloc.alloc_modify_index = plan.index;
                    alloc.modify_time_ns = now;
                    plan.events.push(alloc.event(plan.typ, alloc.payload()));
                    self.add_timer(
                        self.config.client_stop_delay,
                        Timer::ClientStop { alloc_id },
                    );
                }
            }
        }
        if !plan.events.is_empty() {
            self.allocs_index = plan.index;
        }
        plan.touched.insert(key.clone());
        self.commit(plan);

        let mut update = self.begin("EvaluationUpdated");
        let blocked_id = if failed_groups.is_empty() {
            String::new()
        } else {
            let (namespace, job_id, eval_type, jmi) = {
                let eval = &self.evals[eval_id];
                (
                    eval.namespace.clone(),
                    eval.job_id.clone(),
                    eval.eval_type.clone(),
                    eval.job_modify_index,
                )
            };
            let blocked = self.new_eval(
                &update,
                &namespace,
                &job_id,
                &eval_type,
                "queued-allocs",
                jmi,
            );
            let blocked_eval = self.evals.get_mut(&blocked).expect("just created");
            blocked_eval.status = "blocked";
            blocked_eval.status_description = "created to place remaining allocations".into();
            blocked_eval.previous_eval = eval_id.to_owned();
            blocked
        };
        let eval = self.evals.get_mut(eval_id).expect("checked at the start");
        eval.status = "complete";
        eval.modify_index = update.index;
        eval.modify_time_ns = now;
        if !failed_groups.is_empty() {
            eval.failed_tg_allocs = Some(Value::Object(failed_groups));
            eval.blocked_eval = blocked_id.clone();
        }
        update.events.push(eval.event(update.typ));
        if !blocked_id.is_empty() {
            update
                .events
                .push(self.evals[&blocked_id].event(update.typ));
        }
        update.touched.insert(key);
        self.commit(update);
    }

    // --------------------------------------------------------------- client

    /// One client-side write of an allocation (`AllocationUpdated`), with the duplicate and
    /// stale-replay faults applied after it.
    fn client_update(&mut self, alloc_id: &str, change: impl FnOnce(&mut Alloc, i64)) {
        let now = self.now_ns();
        let mut tx = self.begin("AllocationUpdated");
        let Some(alloc) = self.allocs.get_mut(alloc_id) else {
            self.commit(tx);
            return;
        };
        // The version before this write, for the stale-replay fault only: building a payload
        // is the costliest part of an update.
        let previous = self.faults.stale_alloc_replay.then(|| alloc.payload());
        change(alloc, now);
        alloc.modify_index = tx.index;
        alloc.modify_time_ns = now;
        tx.events.push(alloc.event(tx.typ, alloc.payload()));
        tx.touched
            .insert((alloc.namespace.clone(), alloc.job_id.clone()));
        self.allocs_index = tx.index;
        self.commit(tx);
        if self.faults.duplicate_alloc_updates {
            let tx = self.begin("AllocationUpdated");
            let alloc = self.allocs.get_mut(alloc_id).expect("updated above");
            alloc.modify_index = tx.index;
            let mut tx = tx;
            tx.events.push(alloc.event(tx.typ, alloc.payload()));
            self.allocs_index = tx.index;
            self.commit(tx);
        }
        if let Some(previous) = previous {
            let mut tx = self.begin("AllocationUpdated");
            let alloc = &self.allocs[alloc_id];
            tx.events.push(alloc.event(tx.typ, previous));
            self.commit(tx);
        }
    }

    fn client_pickup(&mut self, alloc_id: &str, incarnation: u64) {
        let Some(alloc) = self.allocs.get(alloc_id) else {
            return;
        };
        if alloc.incarnation != incarnation
            || alloc.desired_status != "run"
            || alloc.client_status != "pending"
        {
            return;
        }
        if self.faults.image_pull_failure {
            let image = alloc.image.clone();
            self.client_update(alloc_id, |alloc, now| {
                let mut task = TaskState::new();
                task.push("Received", now, "Task received by client", &[]);
                task.push("Task Setup", now, "Building Task Directory", &[("message", "Building Task Directory".into())]);
                let error = format!("Failed to pull `{image}`: Error response from daemon: manifest for {image} not found: manifest unknown");
                task.push("Driver Failure", now, &error, &[("driver_error", error.clone())]);
                task.push(
                    "Not Restarting",
                    now,
                    "Error was unrecoverable",
                    &[("restart_reason", "Error was unrecoverable".into()), ("fails_task", "true".into())],
                );
                task.state = "dead";
                task.failed = true;
                task.finished_at_ns = now;
                alloc.task = Some(task);
                alloc.client_status = "failed";
                alloc.client_description = "Failed tasks".into();
                alloc.incarnation += 1;
            });
            return;
        }
        if self.faults.skip_pending_update {
            return;
        }
        self.client_update(alloc_id, |alloc, now| {
            let mut task = TaskState::new();
            task.push("Received", now, "Task received by client", &[]);
            task.push(
                "Task Setup",
                now,
                "Building Task Directory",
                &[("message", "Building Task Directory".into())],
            );
            task.push(
                "Driver",
                now,
                "Downloading image",
                &[("driver_message", "Downloading image".into())],
            );
            alloc.task = Some(task);
            alloc.client_description = "No tasks have started".into();
        });
    }

    fn task_start(&mut self, alloc_id: &str, incarnation: u64) {
        let Some(alloc) = self.allocs.get(alloc_id) else {
            return;
        };
        if alloc.incarnation != incarnation
            || alloc.desired_status != "run"
            || alloc.client_status != "pending"
        {
            return;
        }
        let now_s = self.now_s();
        self.client_update(alloc_id, |alloc, now| {
            let task = alloc.task.get_or_insert_with(|| {
                let mut task = TaskState::new();
                task.push("Received", now, "Task received by client", &[]);
                task
            });
            task.push("Started", now, "Task started by client", &[]);
            task.state = "running";
            task.started_at_ns = now;
            alloc.client_status = "running";
            alloc.client_description = "Tasks are running".into();
            alloc.fs = Fs::new(now_s);
        });
    }

    fn client_stop(&mut self, alloc_id: &str) {
        let Some(alloc) = self.allocs.get(alloc_id) else {
            return;
        };
        if client_terminal(alloc.client_status) {
            return;
        }
        self.client_update(alloc_id, |alloc, now| {
            let task = alloc.task.get_or_insert_with(TaskState::new);
            task.push("Killing", now, "Sent interrupt. Waiting 0s before force killing", &[("kill_timeout", "0s".into())]);
            task.push(
                "Terminated",
                now,
                "Exit Code: 137, Exit Message: \"Docker container exited with non-zero exit code: 137\"",
                &[("exit_code", "137".into()), ("signal", "0".into()), ("oom_killed", "false".into())],
            );
            task.push("Killed", now, "Task successfully killed", &[]);
            task.state = "dead";
            task.finished_at_ns = now;
            alloc.client_status = "complete";
            alloc.client_description = "All tasks have completed".into();
            alloc.incarnation += 1;
        });
    }

    /// The container of a running allocation is OOM-killed (§10 row 10, §5.5 rows 4a/4b).
    pub(crate) fn oom_kill(&mut self, alloc_id: &str) -> Result<(), super::FaultError> {
        let Some(alloc) = self.allocs.get(alloc_id) else {
            return Err(super::FaultError::UnknownAllocation(alloc_id.to_owned()));
        };
        if alloc.client_status != "running" {
            return Err(super::FaultError::WrongAllocationState {
                alloc_id: alloc_id.to_owned(),
                client_status: alloc.client_status.to_owned(),
                needed: "running",
            });
        }
        let delay = self.config.restart_delay;
        let delay_ns = i64::try_from(delay.as_nanos()).unwrap_or(i64::MAX);
        let now_s = self.now_s();
        let mut restart_incarnation = None;
        self.client_update(alloc_id, |alloc, now| {
            let attempts = alloc.restart_attempts;
            let task = alloc.task.get_or_insert_with(TaskState::new);
            task.push(
                "Terminated",
                now,
                "OOM Killed",
                &[
                    ("exit_code", "137".into()),
                    ("signal", "0".into()),
                    ("oom_killed", "true".into()),
                    ("exit_message", "OOM Killed".into()),
                ],
            );
            alloc.incarnation += 1;
            alloc.fs = Fs::new(now_s);
            if task.restarts < attempts {
                task.push(
                    "Restarting",
                    now,
                    "Task restarting in 15s",
                    &[
                        ("restart_reason", "Restart within policy".into()),
                        ("start_delay", delay_ns.to_string()),
                    ],
                );
                task.restarts += 1;
                task.last_restart_ns = now;
                task.state = "pending";
                alloc.client_status = "pending";
                alloc.client_description = "No tasks have started".into();
                restart_incarnation = Some(alloc.incarnation);
            } else {
                let reason = format!(
                    "Exceeded allowed attempts {attempts} in interval 1h0m0s and mode is \"fail\""
                );
                task.push(
                    "Not Restarting",
                    now,
                    &reason,
                    &[
                        ("restart_reason", reason.clone()),
                        ("fails_task", "true".into()),
                    ],
                );
                task.state = "dead";
                task.failed = true;
                task.finished_at_ns = now;
                alloc.client_status = "failed";
                alloc.client_description = "Failed tasks".into();
            }
        });
        if let Some(incarnation) = restart_incarnation {
            self.add_timer(
                delay,
                Timer::TaskStart {
                    alloc_id: alloc_id.to_owned(),
                    incarnation,
                },
            );
        }
        Ok(())
    }

    /// The allocation's node goes down (§10 row 8, §5.5 row 8): returns the replacement's id.
    pub(crate) fn lose_allocation(&mut self, alloc_id: &str) -> Result<String, super::FaultError> {
        let Some(alloc) = self.allocs.get(alloc_id) else {
            return Err(super::FaultError::UnknownAllocation(alloc_id.to_owned()));
        };
        if alloc.is_terminal() {
            return Err(super::FaultError::WrongAllocationState {
                alloc_id: alloc_id.to_owned(),
                client_status: alloc.client_status.to_owned(),
                needed: "non-terminal",
            });
        }
        let key = (alloc.namespace.clone(), alloc.job_id.clone());
        let group_name = alloc.task_group.clone();
        let name_index: u64 = alloc
            .name
            .rsplit_once('[')
            .and_then(|(_, rest)| rest.trim_end_matches(']').parse().ok())
            .unwrap_or(0);
        let now = self.now_ns();
        let mut eval_tx = self.begin("EvaluationUpdated");
        let eval_type = self
            .jobs
            .get(&key)
            .map_or("batch".to_owned(), |job| job.job_type.clone());
        let eval_id = self.new_eval(&eval_tx, &key.0, &key.1, &eval_type, "node-update", 0);
        let node_id = self.node_id.clone();
        if let Some(eval) = self.evals.get_mut(&eval_id) {
            eval.node_id = node_id;
        }
        eval_tx.events.push(self.evals[&eval_id].event(eval_tx.typ));
        eval_tx.touched.insert(key.clone());
        self.commit(eval_tx);

        let mut plan = self.begin("PlanResult");
        let group = self
            .jobs
            .get(&key)
            .and_then(|job| job.groups().into_iter().find(|g| g.name == group_name));
        let replacement = match group {
            Some(group) => self.place(&plan, &key, &group, name_index, &eval_id, alloc_id),
            None => String::new(),
        };
        let alloc = self.allocs.get_mut(alloc_id).expect("checked above");
        alloc.client_status = "lost";
        alloc.client_description = "alloc is lost since its node is down".into();
        alloc.desired_status = "stop";
        alloc.desired_description = "alloc is lost since its node is down".into();
        alloc.next_allocation = replacement.clone();
        alloc.modify_index = plan.index;
        alloc.alloc_modify_index = plan.index;
        alloc.modify_time_ns = now;
        alloc.incarnation += 1;
        plan.events.push(alloc.event(plan.typ, alloc.payload()));
        if let Some(new) = self.allocs.get(&replacement) {
            plan.events.push(new.event(plan.typ, new.payload()));
        }
        self.allocs_index = plan.index;
        plan.touched.insert(key.clone());
        self.commit(plan);

        let mut done = self.begin("EvaluationUpdated");
        let eval = self.evals.get_mut(&eval_id).expect("created above");
        eval.status = "complete";
        eval.modify_index = done.index;
        eval.modify_time_ns = now;
        done.events.push(eval.event(done.typ));
        done.touched.insert(key);
        self.commit(done);
        Ok(replacement)
    }
}

/// A payload built as a value, serialised.
fn raw(value: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("a Value always serialises")
}

fn job_event(job: &Job, typ: &'static str) -> Event {
    Event {
        topic: "Job",
        typ,
        key: job.id.clone(),
        namespace: job.namespace.clone(),
        filter_keys: None,
        payload: serde_json::value::to_raw_value(&wire::JobPayloadWire(job)).expect("string keys"),
    }
}

fn deregister_response(eval_id: &str, index: u64, job_modify_index: u64) -> Value {
    json!({
        "EvalID": eval_id,
        "EvalCreateIndex": index,
        "JobModifyIndex": job_modify_index,
        "VolumeEvalID": "",
        "VolumeEvalIndex": 0,
        "Index": index,
        "LastContact": 0,
        "KnownLeader": false,
        "NextToken": "",
    })
}

/// A submitted job as the fake stores it: `(id, spec, type)`, server-owned fields dropped,
/// canonicalised and validated (§3.1), or Nomad's error.
fn prepare(job: &Map<String, Value>) -> Result<(String, Map<String, Value>, String), ApiError> {
    let mut spec = job.clone();
    spec.retain(|key, _| !SERVER_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(key)));
    let id = get_ci_str(&spec, "ID").unwrap_or_default().to_owned();
    if id.is_empty() {
        return Err(ApiError::new(400, "Job ID hasn't been provided"));
    }
    if id.contains(' ') || id.contains('\0') {
        return Err(ApiError::new(
            500,
            "1 error occurred:\n\t* Job ID contains a space\n\n",
        ));
    }
    canonicalize(&mut spec, &id);
    let job_type = get_ci_str(&spec, "Type").unwrap_or("service").to_owned();
    validate(&spec)?;
    Ok((id, spec, job_type))
}

/// Fills the defaults Nomad's canonicaliser sets, so a job read back with GET and re-submitted is
/// not a spec change.
fn canonicalize(spec: &mut Map<String, Value>, id: &str) {
    if get_ci(spec, "Name").is_none_or(|name| name.as_str().is_none_or(str::is_empty)) {
        spec.insert("Name".into(), json!(id));
    }
    if get_ci(spec, "Type").is_none_or(Value::is_null) {
        spec.insert("Type".into(), json!("service"));
    }
    if get_ci(spec, "Priority").is_none_or(Value::is_null) {
        spec.insert("Priority".into(), json!(50));
    }
    if get_ci(spec, "Region").is_none_or(Value::is_null) {
        spec.insert("Region".into(), json!("global"));
    }
    if get_ci(spec, "Datacenters").is_none_or(|dcs| dcs.as_array().is_none_or(Vec::is_empty)) {
        spec.insert("Datacenters".into(), json!(["*"]));
    }
}

/// The validation rules relevant to Poseidon's inputs (§3.7): a 500 multierror.
fn validate(spec: &Map<String, Value>) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    let groups = get_ci(spec, "TaskGroups")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for group in groups.iter().filter_map(Value::as_object) {
        let group_name = get_ci_str(group, "Name").unwrap_or_default();
        let tasks = get_ci(group, "Tasks")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for task in tasks.iter().filter_map(Value::as_object) {
            let Some(resources) = get_ci(task, "Resources").and_then(Value::as_object) else {
                continue;
            };
            let task_name = get_ci_str(task, "Name").unwrap_or_default();
            if let Some(cpu) = get_ci_i64(resources, "CPU")
                && cpu < 1
            {
                errors.push(format!("Task group {group_name} validation failed: Task {task_name} validation failed: minimum CPU value is 1; got {cpu}"));
            }
            let memory = get_ci_i64(resources, "MemoryMB");
            if let Some(memory) = memory
                && memory < 10
            {
                errors.push(format!("Task group {group_name} validation failed: Task {task_name} validation failed: minimum MemoryMB value is 10; got {memory}"));
            }
            if let (Some(max), Some(memory)) = (get_ci_i64(resources, "MemoryMaxMB"), memory)
                && max != 0
                && max != -1
                && max < memory
            {
                errors.push(format!("Task group {group_name} validation failed: Task {task_name} validation failed: MemoryMaxMB value ({max}) should be larger than MemoryMB value ({memory})"));
            }
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    let mut text = format!(
        "{} error{} occurred:\n",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for error in errors {
        text.push_str(&format!("\t* {error}\n"));
    }
    text.push('\n');
    Err(ApiError::new(500, text))
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_formats_go_times() {
        assert_eq!(rfc3339(0), "0001-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
    }
}
