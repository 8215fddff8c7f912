//! The fake Nomad over real TCP: reqwest for HTTP and the event stream, tokio-tungstenite for
//! exec. Timing tests use short configured delays in real time; the determinism test runs with
//! tokio's paused clock and no network.

use std::pin::Pin;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use trident_sim::nomad::fs::build_tar;
use trident_sim::nomad::{FakeNomad, FakeNomadConfig, Fault, FaultError};

const WAIT: Duration = Duration::from_secs(5);

fn fast_config() -> FakeNomadConfig {
    FakeNomadConfig {
        seed: 7,
        heartbeat_interval: Duration::from_secs(30),
        schedule_delay: Duration::from_millis(5),
        client_pickup_delay: Duration::from_millis(20),
        task_start_delay: Duration::from_millis(60),
        client_stop_delay: Duration::from_millis(20),
        restart_delay: Duration::from_millis(100),
        ..FakeNomadConfig::default()
    }
}

struct Fake {
    nomad: FakeNomad,
    base: String,
    addr: std::net::SocketAddr,
    http: reqwest::Client,
}

async fn start(config: FakeNomadConfig) -> Fake {
    let nomad = FakeNomad::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("bound");
    let server = nomad.clone();
    tokio::spawn(async move { server.serve(listener).await });
    Fake {
        nomad,
        base: format!("http://{addr}"),
        addr,
        http: reqwest::Client::new(),
    }
}

/// A runner job shaped like Poseidon's template (`poseidon.md` §5.2).
fn runner_job(id: &str) -> Value {
    json!({ "Job": {
        "ID": id,
        "Name": id,
        "Type": "batch",
        "Datacenters": ["dc1"],
        "TaskGroups": [
            {
                "Name": "default-group",
                "Count": 1,
                "RestartPolicy": { "Attempts": 3, "Interval": 3_600_000_000_000u64, "Delay": 15_000_000_000u64, "Mode": "fail" },
                "Networks": [{ "Mode": "bridge", "DynamicPorts": [{ "Label": "8080", "To": 8080 }] }],
                "Tasks": [{
                    "Name": "default-task",
                    "Driver": "docker",
                    "Config": { "image": "python:3.12", "command": "sleep", "args": ["infinity"] },
                    "Resources": { "CPU": 40, "MemoryMB": 50, "MemoryMaxMB": 100 },
                }],
            },
            {
                "Name": "config",
                "Count": 0,
                "Meta": { "used": "false", "prewarmingPoolSize": "1" },
                "Tasks": [{ "Name": "config", "Driver": "exec", "Config": { "command": "true" },
                            "Resources": { "CPU": 1, "MemoryMB": 10 } }],
            },
        ],
        "Meta": { "environment": "29" },
    }})
}

impl Fake {
    async fn get(&self, path: &str) -> (u16, Value, reqwest::header::HeaderMap) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body, headers)
    }

    async fn register(&self, id: &str) -> Value {
        let response = self
            .http
            .put(format!("{}/v1/jobs", self.base))
            .json(&runner_job(id))
            .send()
            .await
            .expect("register");
        assert_eq!(response.status(), 200);
        response.json().await.expect("register response")
    }

    async fn purge(&self, id: &str) -> (u16, Value) {
        let response = self
            .http
            .delete(format!("{}/v1/job/{id}?purge=true", self.base))
            .send()
            .await
            .expect("deregister");
        let status = response.status().as_u16();
        (status, response.json().await.expect("deregister response"))
    }

    /// Polls the job's allocations until one has `client_status`; returns it.
    async fn wait_alloc(&self, job: &str, client_status: &str) -> Value {
        // tokio's clock (turmoil's simulated time in the simulation), not the wall clock.
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, allocs, _) = self.get(&format!("/v1/job/{job}/allocations")).await;
            if let Some(alloc) = allocs
                .as_array()
                .and_then(|a| a.iter().find(|a| a["ClientStatus"] == client_status))
            {
                return alloc.clone();
            }
            assert!(
                // tokio's clock (turmoil's simulated time in the simulation), not the wall clock.
                Instant::now() < deadline,
                "no {client_status} allocation for {job}: {allocs}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn subscribe(&self, query: &str) -> EventStream {
        let response = self
            .http
            .get(format!("{}/v1/event/stream{query}", self.base))
            .send()
            .await
            .expect("subscribe");
        assert_eq!(response.status(), 200);
        EventStream {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
            min_index: 0,
        }
    }

    /// A stream of what happens from now on: subscribes at the next index and drops the frame
    /// Nomad re-delivers when the requested index is newer than everything buffered (§6.4).
    async fn subscribe_live(&self, topics: &str) -> EventStream {
        let next = self.nomad.index() + 1;
        let mut stream = self.subscribe(&format!("?index={next}{topics}")).await;
        stream.min_index = next;
        stream
    }
}

struct EventStream {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: Vec<u8>,
    /// Frames below this index are skipped by `frame`.
    min_index: u64,
}

impl EventStream {
    /// The next NDJSON line (heartbeats included); `None` at the end of the stream.
    async fn line(&mut self, wait: Duration) -> Option<Value> {
        // tokio's clock (turmoil's simulated time in the simulation), not the wall clock.
        let deadline = Instant::now() + wait;
        loop {
            if let Some(pos) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("every line is JSON"));
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(Some(Err(_)) | None) => return None,
                Err(_) => panic!("no line within {wait:?}"),
            }
        }
    }

    /// The next data frame (heartbeats skipped).
    async fn frame(&mut self) -> Value {
        loop {
            let line = self.line(WAIT).await.expect("stream open");
            if line["Index"]
                .as_u64()
                .is_some_and(|index| index >= self.min_index)
            {
                return line;
            }
        }
    }

    /// Reads frames until `done` holds for the collected events; returns `(frame index, event)`.
    async fn until(&mut self, done: impl Fn(&[(u64, Value)]) -> bool) -> Vec<(u64, Value)> {
        let mut events = Vec::new();
        while !done(&events) {
            let frame = self.frame().await;
            let index = frame["Index"].as_u64().expect("frame index");
            for event in frame["Events"].as_array().expect("events") {
                assert_eq!(event["Index"], index, "event index equals frame index");
                events.push((index, event.clone()));
            }
        }
        events
    }
}

fn alloc_status(event: &Value) -> (String, String) {
    let alloc = &event["Payload"]["Allocation"];
    (
        alloc["ClientStatus"].as_str().unwrap_or("").to_owned(),
        alloc["DesiredStatus"].as_str().unwrap_or("").to_owned(),
    )
}

fn has_alloc(events: &[(u64, Value)], id: &str, client: &str, desired: &str) -> bool {
    events.iter().any(|(_, e)| {
        e["Topic"] == "Allocation"
            && e["Key"] == id
            && alloc_status(e) == (client.to_owned(), desired.to_owned())
    })
}

fn has_running(events: &[(u64, Value)]) -> bool {
    events
        .iter()
        .any(|(_, e)| e["Topic"] == "Allocation" && alloc_status(e).0 == "running")
}

/// `(Type, Topic, status)` of each event.
fn summary(events: &[(u64, Value)]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|(_, e)| {
            let status = match e["Topic"].as_str() {
                Some("Allocation") => {
                    let (client, desired) = alloc_status(e);
                    format!("{client}/{desired}")
                }
                Some("Job") => e["Payload"]["Job"]["Status"].as_str().unwrap_or("").into(),
                Some("Evaluation") => e["Payload"]["Evaluation"]["Status"]
                    .as_str()
                    .unwrap_or("")
                    .into(),
                _ => String::new(),
            };
            (
                e["Type"].as_str().unwrap_or("").into(),
                e["Topic"].as_str().unwrap_or("").into(),
                status,
            )
        })
        .collect()
}

fn s(items: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    items
        .iter()
        .map(|(a, b, c)| ((*a).into(), (*b).into(), (*c).into()))
        .collect()
}

// ------------------------------------------------------------------ jobs and the event stream

#[tokio::test]
async fn register_evaluates_and_runs_the_allocation_with_events_in_order() {
    let fake = start(fast_config()).await;
    let mut stream = fake.subscribe("?topic=*").await;
    assert_eq!(
        stream.line(WAIT).await,
        Some(json!({})),
        "first frame is {{}}"
    );
    let registered = fake.register("29-runner").await;
    let eval_id = registered["EvalID"].as_str().expect("eval id").to_owned();
    assert_eq!(registered["EvalCreateIndex"], registered["Index"]);
    assert_eq!(registered["JobModifyIndex"], registered["Index"]);

    let events = stream.until(has_running).await;
    assert_eq!(
        summary(&events),
        s(&[
            ("JobRegistered", "Job", "pending"),
            ("JobRegistered", "Evaluation", "pending"),
            ("PlanResult", "Allocation", "pending/run"),
            ("PlanResult", "Job", "running"),
            ("EvaluationUpdated", "Evaluation", "complete"),
            ("AllocationUpdated", "Allocation", "pending/run"),
            ("AllocationUpdated", "Allocation", "running/run"),
        ])
    );
    let mut last = 0;
    let mut frames = Vec::new();
    for (index, _) in &events {
        assert!(*index >= last, "indexes never go back");
        if *index != last {
            frames.push(*index);
        }
        last = *index;
    }
    assert!(frames.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(events[1].1["Key"], eval_id);
    // Payload allocations omit the job; FilterKeys carry the job id.
    let placed = &events[2].1;
    assert!(placed["Payload"]["Allocation"].get("Job").is_none());
    assert_eq!(placed["FilterKeys"], json!(["29-runner", ""]));
    assert!(
        placed["Payload"]["Allocation"]
            .get("NextAllocation")
            .is_none()
    );

    let (status, eval, headers) = fake.get(&format!("/v1/evaluation/{eval_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(eval["Status"], "complete");
    assert!(eval.get("FailedTGAllocs").is_none(), "omitempty");
    assert!(headers.contains_key("x-nomad-index"));

    let alloc_id = placed["Key"].as_str().expect("alloc id");
    let (status, alloc, headers) = fake.get(&format!("/v1/allocation/{alloc_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(alloc["ClientStatus"], "running");
    assert_eq!(alloc["Job"]["ID"], "29-runner");
    assert_eq!(alloc["Name"], "29-runner.default-group[0]");
    assert_eq!(
        headers["x-nomad-index"].to_str().expect("ascii"),
        alloc["ModifyIndex"].to_string()
    );
    let ports = &alloc["AllocatedResources"]["Shared"]["Ports"];
    assert_eq!(ports[0]["Label"], "8080");
    assert_eq!(ports[0]["To"], 8080);
    assert!(ports[0]["Value"].as_u64().expect("host port") >= 20_000);
    let task = &alloc["TaskStates"]["default-task"];
    assert_eq!(task["State"], "running");
    let types: Vec<&str> = task["Events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["Type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["Received", "Task Setup", "Driver", "Started"]);

    let (status, job, _) = fake.get("/v1/job/29-runner").await;
    assert_eq!(status, 200);
    assert_eq!(job["Status"], "running");
    assert_eq!(job["Version"], 0);
    assert_eq!(job["TaskGroups"][1]["Meta"]["used"], "false");
}

#[tokio::test]
async fn reregistering_changes_the_version_only_when_the_spec_changes() {
    let fake = start(fast_config()).await;
    fake.register("29-a").await;
    let alloc = fake.wait_alloc("29-a", "running").await;
    let (_, job, _) = fake.get("/v1/job/29-a").await;
    // Re-submitting what GET returned is no spec change.
    let same = fake
        .http
        .put(format!("{}/v1/jobs", fake.base))
        .json(&json!({ "Job": job }))
        .send()
        .await
        .expect("register");
    let same: Value = same.json().await.expect("json");
    assert_eq!(same["JobModifyIndex"], job["JobModifyIndex"]);
    let mut changed = runner_job("29-a");
    changed["Job"]["TaskGroups"][1]["Meta"]["used"] = json!("true");
    let response = fake
        .http
        .put(format!("{}/v1/jobs", fake.base))
        .json(&changed)
        .send()
        .await
        .expect("register");
    let response: Value = response.json().await.expect("json");
    assert_ne!(response["JobModifyIndex"], job["JobModifyIndex"]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, job, _) = fake.get("/v1/job/29-a").await;
    assert_eq!(job["Version"], 1);
    assert_eq!(job["TaskGroups"][1]["Meta"]["used"], "true");
    // The running allocation is updated in place, not replaced.
    let (_, allocs, _) = fake.get("/v1/job/29-a/allocations").await;
    assert_eq!(allocs.as_array().map(Vec::len), Some(1));
    assert_eq!(allocs[0]["ID"], alloc["ID"]);
    assert_eq!(allocs[0]["JobVersion"], 1);
    assert_eq!(allocs[0]["ClientStatus"], "running");
}

#[tokio::test]
async fn register_rejects_what_nomad_rejects() {
    let fake = start(fast_config()).await;
    let put = |body: String| {
        fake.http
            .put(format!("{}/v1/jobs", fake.base))
            .body(body)
            .send()
    };
    let empty = put(String::new()).await.expect("request");
    assert_eq!(empty.status(), 400);
    assert_eq!(empty.text().await.expect("text"), "Request body is empty");
    let no_job = put("{}".into()).await.expect("request");
    assert_eq!(no_job.status(), 400);
    assert_eq!(no_job.text().await.expect("text"), "Job must be specified");
    let mut bad = runner_job("29-bad");
    bad["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMaxMB"] = json!(40);
    let bad = put(bad.to_string()).await.expect("request");
    assert_eq!(bad.status(), 500);
    assert_eq!(
        bad.headers()["content-type"].to_str().expect("ascii"),
        "text/plain"
    );
    assert!(
        bad.text()
            .await
            .expect("text")
            .contains("MemoryMaxMB value (40) should be larger than MemoryMB value (50)")
    );
    let mut conflict = runner_job("29-c");
    conflict["EnforceIndex"] = json!(true);
    conflict["JobModifyIndex"] = json!(5);
    let conflict = put(conflict.to_string()).await.expect("request");
    assert_eq!(conflict.status(), 500);
    assert_eq!(
        conflict.text().await.expect("text"),
        "Enforcing job modify index 5: job does not exist"
    );
}

#[tokio::test]
async fn list_with_prefix_and_meta_then_purge() {
    let fake = start(fast_config()).await;
    for id in ["template-1", "1-b", "1-a", "2-a"] {
        fake.register(id).await;
    }
    let (status, jobs, headers) = fake.get("/v1/jobs?prefix=1-").await;
    assert_eq!(status, 200);
    assert!(headers.contains_key("x-nomad-index"));
    let ids: Vec<&str> = jobs
        .as_array()
        .expect("array")
        .iter()
        .map(|j| j["ID"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["1-a", "1-b"]);
    assert!(jobs[0].get("Meta").is_none(), "Meta only with meta=true");
    let (_, jobs, _) = fake.get("/v1/jobs?prefix=template&meta=true").await;
    assert_eq!(jobs[0]["Meta"]["environment"], "29");
    let (_, none, _) = fake.get("/v1/jobs?prefix=nothing").await;
    assert_eq!(none, json!([]));

    let alloc = fake.wait_alloc("1-a", "running").await;
    let (status, response) = fake.purge("1-a").await;
    assert_eq!(status, 200);
    assert!(!response["EvalID"].as_str().expect("eval id").is_empty());
    let (status, body, _) = fake.get("/v1/job/1-a").await;
    assert_eq!((status, body), (404, json!("job not found")));
    let (_, jobs, _) = fake.get("/v1/jobs?prefix=1-").await;
    assert_eq!(jobs.as_array().map(Vec::len), Some(1));
    // The allocation is stopped later and stays listed until GC.
    let stopped = fake.wait_alloc("1-a", "complete").await;
    assert_eq!(stopped["ID"], alloc["ID"]);
    assert_eq!(stopped["DesiredStatus"], "stop");
    assert_eq!(
        stopped["DesiredDescription"],
        "alloc not needed due to job update"
    );
    // Deregistering an unknown job is a 200 with empty fields.
    let response = fake
        .http
        .delete(format!("{}/v1/job/never?purge=true", fake.base))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-nomad-index"], "0");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["EvalID"], "");
    let (status, body, _) = fake.get("/v1/allocation/nope").await;
    assert_eq!((status, body), (404, json!("alloc not found")));
    let (status, body, _) = fake.get("/v1/evaluation/nope").await;
    assert_eq!((status, body), (404, json!("eval not found")));
    let (_, allocs, _) = fake.get("/v1/allocations?resources=true").await;
    assert!(allocs[0].get("AllocatedResources").is_some());
    let (_, allocs, _) = fake.get("/v1/allocations").await;
    assert!(allocs[0].get("AllocatedResources").is_none());
    assert!(
        allocs[0].get("PreviousAllocation").is_none(),
        "not in stubs"
    );
    assert_eq!(allocs.as_array().map(Vec::len), Some(4));
}

#[tokio::test]
async fn purge_emits_deregister_plan_and_client_stop() {
    let fake = start(fast_config()).await;
    fake.register("29-p").await;
    let alloc = fake.wait_alloc("29-p", "running").await;
    let id = alloc["ID"].as_str().expect("id").to_owned();
    let mut stream = fake.subscribe_live("").await;
    fake.purge("29-p").await;
    let events = stream
        .until(|events| has_alloc(events, &id, "complete", "stop"))
        .await;
    assert_eq!(
        summary(&events),
        s(&[
            ("JobDeregistered", "Job", "dead"),
            ("JobDeregistered", "Evaluation", "pending"),
            ("PlanResult", "Allocation", "running/stop"),
            ("EvaluationUpdated", "Evaluation", "complete"),
            ("AllocationUpdated", "Allocation", "complete/stop"),
        ])
    );
}

#[tokio::test]
async fn event_stream_replays_from_an_index_then_goes_live() {
    let fake = start(fast_config()).await;
    fake.register("29-r").await;
    fake.wait_alloc("29-r", "running").await;
    let log: Vec<Value> = fake
        .nomad
        .event_log()
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let indexes: Vec<u64> = log
        .iter()
        .map(|f| f["Index"].as_u64().expect("index"))
        .collect();
    assert!(indexes.len() >= 4);

    // index=0: the oldest buffered frame.
    let mut from_zero = fake.subscribe("?index=0").await;
    assert_eq!(from_zero.frame().await["Index"], indexes[0]);
    // index=N buffered: N itself, inclusive.
    let mut inclusive = fake.subscribe(&format!("?index={}", indexes[2])).await;
    assert_eq!(inclusive.frame().await, log[2]);
    // index between buffered frames: the next higher one.
    let mut between = fake.subscribe(&format!("?index={}", indexes[0] + 1)).await;
    let first = between.frame().await["Index"].as_u64().expect("index");
    assert!(first > indexes[0] && first <= indexes[1]);
    // index newer than everything: the newest buffered frame again.
    let mut newer = fake.subscribe("?index=100000").await;
    assert_eq!(newer.frame().await, log[log.len() - 1]);
    // Then live frames follow.
    fake.register("29-live").await;
    let live = newer.frame().await;
    assert!(live["Index"].as_u64() > indexes.last().copied());
    assert_eq!(live["Events"][0]["Key"], "29-live");

    // Topic filters: Job only, and one job's allocations by filter key.
    let mut jobs = fake.subscribe("?index=0&topic=Job").await;
    let frame = jobs.frame().await;
    assert!(
        frame["Events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["Topic"] == "Job")
    );
    let mut one = fake.subscribe("?index=0&topic=Allocation:29-live").await;
    let frame = one.frame().await;
    assert_eq!(
        frame["Events"][0]["Payload"]["Allocation"]["JobID"],
        "29-live"
    );
}

#[tokio::test]
async fn event_stream_rejects_bad_parameters() {
    let fake = start(fast_config()).await;
    let (status, body, _) = fake.get("/v1/event/stream?index=abc").await;
    assert_eq!(status, 400);
    assert!(
        body.as_str()
            .expect("text")
            .starts_with("Unable to parse index")
    );
    let (status, body, _) = fake.get("/v1/event/stream?topic=Job:a:b").await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!(
            "Invalid topic query: error parsing topics: Invalid key value pair for topic, topic: Job:a:b"
        )
    );
}

#[tokio::test]
async fn event_stream_sends_heartbeats() {
    let fake = start(FakeNomadConfig {
        heartbeat_interval: Duration::from_millis(100),
        ..fast_config()
    })
    .await;
    let mut stream = fake.subscribe("").await;
    // tokio's clock (turmoil's simulated time in the simulation), not the wall clock.
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(stream.line(Duration::from_secs(2)).await, Some(json!({})));
    }
    assert!(started.elapsed() >= Duration::from_millis(190));
}

#[tokio::test]
async fn acl_token_is_checked_when_configured() {
    let fake = start(FakeNomadConfig {
        acl_token: Some("secret".into()),
        ..fast_config()
    })
    .await;
    let (status, body, _) = fake.get("/v1/jobs").await;
    assert_eq!((status, body), (403, json!("Permission denied")));
    let wrong = fake
        .http
        .get(format!("{}/v1/jobs", fake.base))
        .header("X-Nomad-Token", "nope")
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status(), 403);
    assert_eq!(wrong.text().await.expect("text"), "ACL token not found");
    for (name, value) in [
        ("X-Nomad-Token", "secret"),
        ("Authorization", "Bearer secret"),
    ] {
        let right = fake
            .http
            .get(format!("{}/v1/jobs", fake.base))
            .header(name, value)
            .send()
            .await
            .expect("request");
        assert_eq!(right.status(), 200);
    }
}

// ------------------------------------------------------------------------------------- exec

#[derive(Debug, Default)]
struct ExecResult {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit_code: Option<i64>,
    close: Option<(u16, String)>,
    saw_stream_close_frames: bool,
    /// The connection ended without a close frame after the exit frame (or without anything).
    ended_without_close_frame: bool,
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn exec_argv(
    fake: &Fake,
    alloc_id: &str,
    task: &str,
    argv: &[&str],
    stdin: &[u8],
) -> ExecResult {
    let command = percent_encode(&serde_json::to_string(argv).expect("json"));
    let url = format!(
        "ws://{}/v1/client/allocation/{alloc_id}/exec?command={command}&task={task}&tty=false",
        fake.addr
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket upgrade");
    for chunk in stdin.chunks(2048) {
        let frame = json!({ "stdin": { "data": BASE64.encode(chunk) } });
        socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .ok();
    }
    socket
        .send(Message::Text(json!({}).to_string().into()))
        .await
        .ok();
    socket
        .send(Message::Text(
            json!({ "stdin": { "close": true } }).to_string().into(),
        ))
        .await
        .ok();
    let mut result = ExecResult::default();
    loop {
        let message = timeout(WAIT, socket.next()).await.expect("exec answers");
        match message {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(text.as_str()).expect("json frame");
                for (name, sink) in [
                    ("stdout", &mut result.stdout),
                    ("stderr", &mut result.stderr),
                ] {
                    if let Some(data) = frame[name]["data"].as_str() {
                        sink.extend(BASE64.decode(data).expect("base64"));
                    }
                    if frame[name]["close"] == true {
                        result.saw_stream_close_frames = true;
                    }
                }
                if frame["exited"] == true {
                    result.exit_code = Some(frame["result"]["exit_code"].as_i64().unwrap_or(0));
                }
            }
            Some(Ok(Message::Close(frame))) => {
                result.close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                return result;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                result.ended_without_close_frame = true;
                return result;
            }
        }
    }
}

async fn exec(fake: &Fake, alloc_id: &str, script: &str, stdin: &[u8]) -> ExecResult {
    exec_argv(
        fake,
        alloc_id,
        "default-task",
        &["/bin/bash", "-c", script],
        stdin,
    )
    .await
}

async fn running_runner(fake: &Fake, id: &str) -> String {
    fake.register(id).await;
    let alloc = fake.wait_alloc(id, "running").await;
    alloc["ID"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn exec_runs_echo_cat_and_exit_codes() {
    let fake = start(fast_config()).await;
    let alloc = running_runner(&fake, "29-exec").await;

    let echo = exec(&fake, &alloc, "echo hello 'big world'", b"").await;
    assert_eq!(echo.stdout, b"hello big world\n");
    assert_eq!(echo.exit_code, Some(0));
    assert!(echo.saw_stream_close_frames);
    assert!(
        echo.ended_without_close_frame,
        "no close frame after exited"
    );

    let input: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let cat = exec(&fake, &alloc, "cat", &input).await;
    assert_eq!(cat.stdout, input);
    assert_eq!(cat.exit_code, Some(0));

    let failing = exec(&fake, &alloc, "echo -n out; exit 3; echo never", b"").await;
    assert_eq!(
        (failing.stdout.as_slice(), failing.exit_code),
        (&b"out"[..], Some(3))
    );

    let chained = exec(&fake, &alloc, "false && echo no || echo yes", b"").await;
    assert_eq!(chained.stdout, b"yes\n");

    let unknown = exec(&fake, &alloc, "frobnicate --now", b"").await;
    assert_eq!(unknown.exit_code, Some(127));
    assert_eq!(
        unknown.stderr,
        b"bash: line 1: frobnicate: command not found\n"
    );

    let wrapped = exec(
        &fake,
        &alloc,
        "unset ${!NOMAD_@} && /bin/bash -c \"env CODEOCEAN=true /bin/bash -c \\\"echo wrapped; exit 4\\\"\"",
        b"",
    )
    .await;
    assert_eq!(
        (wrapped.stdout.as_slice(), wrapped.exit_code),
        (&b"wrapped\n"[..], Some(4))
    );

    let zeros = exec(&fake, &alloc, "head -c 3000 /dev/zero", b"").await;
    assert_eq!(zeros.stdout, vec![0u8; 3000]);

    let lines = exec(&fake, &alloc, "head -n 2", b"one\ntwo\nthree\n").await;
    assert_eq!(
        (lines.stdout.as_slice(), lines.exit_code),
        (&b"one\ntwo\n"[..], Some(0))
    );
    let short = exec(&fake, &alloc, "head -n 2; echo after", b"only").await;
    assert_eq!(
        short.stdout, b"onlyafter\n",
        "stdin ended before the second line"
    );

    let sleep = exec(&fake, &alloc, "sleep 0.05; echo slept", b"").await;
    assert_eq!(sleep.stdout, b"slept\n");
}

/// A tty exec of `script`, given time to start its command.
async fn tty_session(
    fake: &Fake,
    alloc_id: &str,
    script: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let argv = ["/bin/bash", "-c", script];
    let command = percent_encode(&serde_json::to_string(&argv).expect("json"));
    let url = format!(
        "ws://{}/v1/client/allocation/{alloc_id}/exec?command={command}&task=default-task&tty=true",
        fake.addr
    );
    let (socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket upgrade");
    tokio::time::sleep(Duration::from_millis(50)).await;
    socket
}

/// Sends Ctrl-\ as stdin and returns the exit code the session reports within `within`, if any.
async fn interrupt(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    within: Duration,
) -> Option<i64> {
    let frame = json!({ "stdin": { "data": BASE64.encode([0x1c]) } });
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .expect("the session is open");
    let read = async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(text.as_str()).expect("json frame");
                if frame["exited"] == true {
                    return Some(frame["result"]["exit_code"].as_i64().unwrap_or(0));
                }
            }
        }
        None
    };
    timeout(within, read).await.ok().flatten()
}

/// Waits until `alloc_id` has `count` processes that outlived their sessions.
async fn wait_outliving(fake: &Fake, alloc_id: &str, count: usize, what: &str) {
    let deadline = Instant::now() + WAIT;
    while fake.nomad.processes_outliving(alloc_id) != count {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn ctrl_backslash_ends_a_tty_command_unless_it_traps_sigquit_and_processes_outlive_their_session()
 {
    let fake = start(fast_config()).await;
    let alloc = running_runner(&fake, "29-quit").await;

    // Ctrl-\ on the terminal: SIGQUIT for the command, exit code 128 + 3.
    let mut plain = tty_session(&fake, &alloc, "sleep 100").await;
    assert_eq!(interrupt(&mut plain, WAIT).await, Some(131));

    // Without a terminal, 0x1c is just a byte of input.
    let piped = exec(&fake, &alloc, "cat", &[b'a', 0x1c, b'b']).await;
    assert_eq!(
        (piped.stdout.as_slice(), piped.exit_code),
        (&[b'a', 0x1c, b'b'][..], Some(0))
    );

    // A command that ignores SIGQUIT runs on, and on after its client has gone.
    let mut trapped = tty_session(&fake, &alloc, "trap '' QUIT; sleep 100").await;
    assert_eq!(
        interrupt(&mut trapped, Duration::from_millis(300)).await,
        None,
        "the trapped command ignored Ctrl-\\"
    );
    assert_eq!(fake.nomad.processes_outliving(&alloc), 0);
    drop(trapped);
    wait_outliving(&fake, &alloc, 1, "the process did not outlive its session").await;
    // A process that ends by itself stops counting.
    let short = tty_session(&fake, &alloc, "trap '' QUIT; sleep 0.3").await;
    drop(short);
    wait_outliving(
        &fake,
        &alloc,
        2,
        "the second process did not outlive its session",
    )
    .await;
    wait_outliving(&fake, &alloc, 1, "the process that ended still counts").await;
    // Stopping the job ends the container and what ran in it.
    let (status, _) = fake.purge("29-quit").await;
    assert_eq!(status, 200);
    wait_outliving(&fake, &alloc, 0, "the stopped container's process runs on").await;
}

#[tokio::test]
async fn exec_extracts_tar_then_lists_and_reads_files() {
    let fake = start(fast_config()).await;
    let alloc = running_runner(&fake, "29-files").await;
    let archive = build_tar(&[
        ("/workspace/sub/", None),
        ("/workspace/sub/a.txt", Some(b"alpha")),
        ("b.txt", Some(b"bravo!")),
    ]);
    let copy = exec(
        &fake,
        &alloc,
        "rm --recursive --force '/workspace/old' ;tar --extract --absolute-names --verbose --file=/dev/stdin;",
        &archive,
    )
    .await;
    assert_eq!(
        copy.exit_code,
        Some(0),
        "stderr: {:?}",
        String::from_utf8_lossy(&copy.stderr)
    );
    assert_eq!(
        copy.stdout,
        b"/workspace/sub/\n/workspace/sub/a.txt\nb.txt\n"
    );

    let ls = exec(
        &fake,
        &alloc,
        "ls -l --time-style=+%s -1 --literal --recursive \"/workspace\"",
        b"",
    )
    .await;
    assert_eq!(
        String::from_utf8(ls.stdout).expect("utf-8"),
        "/workspace:\ntotal 8\n-rwxr--r-- 1 root root 6 1700000000 b.txt\n\
         drwxrwxrwt 2 root root 4096 1700000000 sub\n\n\
         /workspace/sub:\ntotal 4\n-rwxr--r-- 1 root root 5 1700000000 a.txt\n"
    );
    let download = exec(
        &fake,
        &alloc,
        "ls -l --time-style=+%s -1 --literal \"sub/a.txt\" && cat \"sub/a.txt\"",
        b"",
    )
    .await;
    assert_eq!(
        download.stdout,
        b"-rwxr--r-- 1 root root 5 1700000000 sub/a.txt\nalpha"
    );
    let missing = exec(&fake, &alloc, "cat /workspace/nope", b"").await;
    assert_eq!(missing.exit_code, Some(1));
    assert_eq!(
        missing.stderr,
        b"cat: /workspace/nope: No such file or directory\n"
    );
    let missing_ls = exec(&fake, &alloc, "ls -l --time-style=+%s -1 --literal /x", b"").await;
    assert_eq!(missing_ls.exit_code, Some(2));

    let removed = exec(
        &fake,
        &alloc,
        "rm --recursive --force ./* && ls -l /workspace",
        b"",
    )
    .await;
    assert_eq!(removed.stdout, b"total 0\n");
    let garbage = exec(
        &fake,
        &alloc,
        "tar --extract --file=/dev/stdin",
        &[7u8; 600],
    )
    .await;
    assert_eq!(garbage.exit_code, Some(2));
}

#[tokio::test]
async fn exec_refuses_with_nomads_close_frames() {
    let fake = start(FakeNomadConfig {
        task_start_delay: Duration::from_secs(3600),
        ..fast_config()
    })
    .await;
    let unknown = exec(&fake, "no-such-alloc", "echo", b"").await;
    assert_eq!(
        unknown.close,
        Some((1008, "Unknown allocation \"no-such-alloc\"".into()))
    );
    fake.register("29-slow").await;
    let pending = fake.wait_alloc("29-slow", "pending").await;
    let id = pending["ID"].as_str().expect("id");
    let not_started = exec(&fake, id, "echo", b"").await;
    assert_eq!(
        not_started.close,
        Some((1008, "task \"default-task\" not started yet.".into()))
    );
    let wrong_task = exec_argv(&fake, id, "other", &["echo"], b"").await;
    assert_eq!(
        wrong_task.close,
        Some((1008, "unknown task name \"other\"".into()))
    );
    let no_task = exec_argv(&fake, id, "", &["echo"], b"").await;
    assert_eq!(no_task.close, Some((1008, "must provide task name".into())));
    let no_command = exec_argv(&fake, id, "default-task", &[], b"").await;
    assert_eq!(
        no_command.close,
        Some((1008, "command is not present".into()))
    );
}

#[tokio::test]
async fn memory_past_the_limit_oom_kills_and_restarts_clean() {
    let fake = start(fast_config()).await;
    let alloc = running_runner(&fake, "29-oom").await;
    let written = exec(&fake, &alloc, "echo x > /dev/null", b"").await;
    assert_eq!(written.exit_code, Some(2), "redirections are not supported");
    let archive = build_tar(&[("keep.txt", Some(b"1"))]);
    exec(&fake, &alloc, "tar -x --file=/dev/stdin", &archive).await;
    let within = exec(&fake, &alloc, "allocate-memory 100", b"").await;
    assert_eq!(within.exit_code, Some(0));

    let mut stream = fake.subscribe_live("").await;
    let killed = exec(&fake, &alloc, "echo before; allocate-memory 101", b"").await;
    assert_eq!(killed.exit_code, Some(137));
    assert_eq!(killed.stdout, b"before\n");
    let events = stream
        .until(|events| has_alloc(events, &alloc, "running", "run"))
        .await;
    assert_eq!(
        summary(&events),
        s(&[
            ("AllocationUpdated", "Allocation", "pending/run"),
            ("AllocationUpdated", "Allocation", "running/run"),
        ])
    );
    let task = &events[0].1["Payload"]["Allocation"]["TaskStates"]["default-task"];
    assert_eq!(task["Restarts"], 1);
    let oom = task["Events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["Type"] == "Terminated")
        .expect("a Terminated event");
    assert_eq!(oom["Details"]["oom_killed"], "true");
    assert_eq!(oom["Details"]["exit_code"], "137");
    assert!(
        task["Events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["Type"] == "Restarting")
    );
    let gone = exec(&fake, &alloc, "cat keep.txt", b"").await;
    assert_eq!(gone.exit_code, Some(1), "the restarted container is clean");
}

// ------------------------------------------------------------------------------ fault knobs

#[tokio::test]
async fn fault_disconnect_ends_open_streams_and_reconnecting_works() {
    let fake = start(fast_config()).await;
    let mut stream = fake.subscribe("").await;
    assert_eq!(stream.line(WAIT).await, Some(json!({})));
    fake.nomad
        .inject(Fault::DisconnectEventStreams)
        .expect("inject");
    assert_eq!(stream.line(WAIT).await, None, "EOF");
    let mut again = fake.subscribe("").await;
    assert_eq!(again.line(WAIT).await, Some(json!({})));
    fake.register("29-d").await;
    assert_eq!(again.frame().await["Events"][0]["Key"], "29-d");
}

#[tokio::test]
async fn fault_stall_sends_nothing_not_even_heartbeats() {
    let fake = start(FakeNomadConfig {
        heartbeat_interval: Duration::from_millis(50),
        ..fast_config()
    })
    .await;
    let mut stream = fake.subscribe("").await;
    assert_eq!(stream.line(WAIT).await, Some(json!({})));
    fake.nomad
        .inject(Fault::StallEventStreams(true))
        .expect("inject");
    // Drain whatever was in flight before the stall took effect.
    while timeout(Duration::from_millis(60), stream.body.next())
        .await
        .is_ok()
    {}
    fake.register("29-s").await;
    let silent = timeout(Duration::from_millis(400), stream.body.next()).await;
    assert!(silent.is_err(), "no bytes at all during a stall");
    fake.nomad
        .inject(Fault::StallEventStreams(false))
        .expect("inject");
    assert_eq!(stream.frame().await["Events"][0]["Key"], "29-s");
}

#[tokio::test]
async fn fault_evicted_buffer_makes_a_resume_start_silently_after_a_gap() {
    let fake = start(fast_config()).await;
    fake.register("29-g").await;
    fake.wait_alloc("29-g", "running").await;
    let log = fake.nomad.event_log();
    let frames: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let first = frames[0]["Index"].as_u64().expect("index");
    fake.nomad
        .inject(Fault::EvictEventBuffer { keep: 2 })
        .expect("inject");
    let mut resumed = fake.subscribe(&format!("?index={first}")).await;
    let got = resumed.frame().await;
    assert_eq!(got, frames[frames.len() - 2], "oldest kept frame, no error");
    assert!(got["Index"].as_u64() > Some(first + 1), "an index gap");
}

#[tokio::test]
async fn fault_small_buffer_cuts_off_a_consumer_that_fell_behind() {
    let fake = start(FakeNomadConfig {
        event_buffer_size: 2,
        ..fast_config()
    })
    .await;
    let mut stream = fake.subscribe("").await;
    assert_eq!(stream.line(WAIT).await, Some(json!({})));
    fake.nomad
        .inject(Fault::StallEventStreams(true))
        .expect("inject");
    for id in ["29-x", "29-y", "29-z"] {
        fake.register(id).await;
    }
    fake.nomad
        .inject(Fault::StallEventStreams(false))
        .expect("inject");
    assert_eq!(
        stream.line(WAIT).await,
        None,
        "evicted before delivery: closed"
    );
}

#[tokio::test]
async fn fault_duplicate_alloc_updates_repeat_statuses_with_new_indexes() {
    let fake = start(fast_config()).await;
    fake.nomad
        .inject(Fault::DuplicateAllocUpdates(true))
        .expect("inject");
    let mut stream = fake.subscribe("?topic=Allocation").await;
    fake.register("29-dup").await;
    let events = stream
        .until(|events| {
            events
                .iter()
                .filter(|(_, e)| alloc_status(e).0 == "running")
                .count()
                == 2
        })
        .await;
    let client_updates: Vec<(String, u64)> = events
        .iter()
        .filter(|(_, e)| e["Type"] == "AllocationUpdated")
        .map(|(_, e)| {
            (
                alloc_status(e).0,
                e["Payload"]["Allocation"]["ModifyIndex"]
                    .as_u64()
                    .expect("index"),
            )
        })
        .collect();
    assert_eq!(client_updates.len(), 4);
    assert_eq!(client_updates[0].0, client_updates[1].0);
    assert_eq!(client_updates[2].0, client_updates[3].0);
    assert!(client_updates.windows(2).all(|w| w[0].1 < w[1].1));
}

#[tokio::test]
async fn fault_skip_pending_update_goes_from_plan_straight_to_running() {
    let fake = start(fast_config()).await;
    fake.nomad
        .inject(Fault::SkipPendingUpdate(true))
        .expect("inject");
    let mut stream = fake.subscribe("?topic=Allocation").await;
    fake.register("29-skip").await;
    let events = stream.until(has_running).await;
    assert_eq!(
        summary(&events),
        s(&[
            ("PlanResult", "Allocation", "pending/run"),
            ("AllocationUpdated", "Allocation", "running/run"),
        ])
    );
}

#[tokio::test]
async fn fault_stale_replay_redelivers_an_older_allocation_version() {
    let fake = start(fast_config()).await;
    fake.nomad
        .inject(Fault::StaleAllocReplay(true))
        .expect("inject");
    let mut stream = fake.subscribe("?topic=Allocation").await;
    fake.register("29-stale").await;
    let events = stream
        .until(|events| {
            events.last().is_some_and(|(_, e)| {
                e["Type"] == "AllocationUpdated" && alloc_status(e).0 == "pending"
            }) && has_running(events)
        })
        .await;
    // After running/run, a frame carries the pending version with its older ModifyIndex.
    let running = events
        .iter()
        .position(|(_, e)| alloc_status(e).0 == "running")
        .expect("running");
    let (frame_index, stale) = &events[events.len() - 1];
    assert!(events.len() - 1 > running);
    let modify_index = stale["Payload"]["Allocation"]["ModifyIndex"]
        .as_u64()
        .expect("index");
    assert!(modify_index < *frame_index);
    let running_modify = events[running].1["Payload"]["Allocation"]["ModifyIndex"].as_u64();
    assert!(Some(modify_index) < running_modify);
}

#[tokio::test]
async fn fault_lost_allocation_is_replaced_under_a_new_id() {
    let fake = start(fast_config()).await;
    let old = running_runner(&fake, "29-lost").await;
    let mut stream = fake.subscribe_live("").await;
    fake.nomad
        .inject(Fault::LoseAllocation {
            alloc_id: old.clone(),
        })
        .expect("inject");
    let events = stream
        .until(|events| {
            events
                .iter()
                .any(|(_, e)| e["Key"] != old.as_str() && alloc_status(e).0 == "running")
        })
        .await;
    assert_eq!(
        summary(&events),
        s(&[
            ("EvaluationUpdated", "Evaluation", "pending"),
            ("PlanResult", "Allocation", "lost/stop"),
            ("PlanResult", "Allocation", "pending/run"),
            ("EvaluationUpdated", "Evaluation", "complete"),
            ("AllocationUpdated", "Allocation", "pending/run"),
            ("AllocationUpdated", "Allocation", "running/run"),
        ])
    );
    let lost = &events[1].1["Payload"]["Allocation"];
    let new = &events[2].1["Payload"]["Allocation"];
    assert_eq!(lost["NextAllocation"], new["ID"]);
    assert_eq!(new["PreviousAllocation"], old.as_str());
    assert_eq!(new["Name"], lost["Name"]);
    let refused = exec(&fake, &old, "echo", b"").await;
    assert_eq!(
        refused.close,
        Some((
            1008,
            format!("exec not possible, client status of allocation {old} is lost")
        ))
    );
    assert_eq!(
        fake.nomad.inject(Fault::LoseAllocation {
            alloc_id: "nope".into()
        }),
        Err(FaultError::UnknownAllocation("nope".into()))
    );
}

#[tokio::test]
async fn fault_image_pull_failure_leaves_the_allocation_failed() {
    let fake = start(fast_config()).await;
    fake.nomad
        .inject(Fault::ImagePullFailure(true))
        .expect("inject");
    let registered = fake.register("29-pull").await;
    let failed = fake.wait_alloc("29-pull", "failed").await;
    let events = failed["TaskStates"]["default-task"]["Events"]
        .as_array()
        .expect("events")
        .clone();
    let driver_failure = events
        .iter()
        .find(|e| e["Type"] == "Driver Failure")
        .expect("Driver Failure");
    assert!(
        driver_failure["Details"]["driver_error"]
            .as_str()
            .expect("text")
            .starts_with("Failed to pull `python:3.12`")
    );
    assert!(events.iter().any(|e| e["Type"] == "Not Restarting"));
    let (_, eval, _) = fake
        .get(&format!(
            "/v1/evaluation/{}",
            registered["EvalID"].as_str().expect("id")
        ))
        .await;
    assert_eq!(eval["Status"], "complete");
    assert!(eval.get("FailedTGAllocs").is_none());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, job, _) = fake.get("/v1/job/29-pull").await;
    assert_eq!(job["Status"], "dead");
    let (_, allocs, _) = fake.get("/v1/job/29-pull/allocations").await;
    assert_eq!(allocs[0]["ClientStatus"], "failed", "never started");
}

#[tokio::test]
async fn fault_oom_kill_restarts_in_place() {
    let fake = start(fast_config()).await;
    let alloc = running_runner(&fake, "29-oomk").await;
    fake.nomad
        .inject(Fault::OomKill {
            alloc_id: alloc.clone(),
        })
        .expect("inject");
    let (_, restarted, _) = fake.get(&format!("/v1/allocation/{alloc}")).await;
    assert_eq!(restarted["ClientStatus"], "pending");
    assert_eq!(restarted["TaskStates"]["default-task"]["Restarts"], 1);
    let running = fake.wait_alloc("29-oomk", "running").await;
    assert_eq!(running["ID"], alloc.as_str(), "same allocation id");
    let pending_alloc = fake
        .nomad
        .inject(Fault::OomKill {
            alloc_id: alloc.clone(),
        })
        .and_then(|()| {
            fake.nomad.inject(Fault::OomKill {
                alloc_id: alloc.clone(),
            })
        });
    assert!(matches!(
        pending_alloc,
        Err(FaultError::WrongAllocationState { .. })
    ));
}

#[tokio::test]
async fn fault_placement_failure_completes_the_eval_with_failed_groups() {
    let fake = start(fast_config()).await;
    fake.nomad
        .inject(Fault::PlacementFailure(true))
        .expect("inject");
    let mut stream = fake.subscribe("?topic=Evaluation").await;
    let registered = fake.register("29-full").await;
    let events = stream
        .until(|events| {
            events
                .iter()
                .any(|(_, e)| e["Payload"]["Evaluation"]["Status"] == "blocked")
        })
        .await;
    let complete = events
        .iter()
        .find(|(_, e)| {
            e["Key"] == registered["EvalID"] && e["Payload"]["Evaluation"]["Status"] == "complete"
        })
        .expect("complete eval");
    let eval = &complete.1["Payload"]["Evaluation"];
    assert!(eval["FailedTGAllocs"]["default-group"].is_object());
    let blocked = eval["BlockedEval"].as_str().expect("blocked eval id");
    let (_, blocked_eval, _) = fake.get(&format!("/v1/evaluation/{blocked}")).await;
    assert_eq!(blocked_eval["Status"], "blocked");
    let (_, allocs, _) = fake.get("/v1/job/29-full/allocations").await;
    assert_eq!(allocs, json!([]));
    let (_, job, _) = fake.get("/v1/job/29-full").await;
    assert_eq!(job["Status"], "pending");
}

#[tokio::test]
async fn fault_deregister_without_alloc_events_emits_only_job_deregistered() {
    let fake = start(fast_config()).await;
    let alloc = running_runner(&fake, "29-quiet").await;
    fake.nomad
        .inject(Fault::DeregisterWithoutAllocEvents(true))
        .expect("inject");
    let mut stream = fake.subscribe_live("&topic=Job&topic=Allocation").await;
    fake.purge("29-quiet").await;
    let frame = stream.frame().await;
    assert_eq!(frame["Events"].as_array().map(Vec::len), Some(1));
    assert_eq!(frame["Events"][0]["Type"], "JobDeregistered");
    assert_eq!(frame["Events"][0]["Topic"], "Job");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let quiet = timeout(Duration::from_millis(200), stream.frame()).await;
    assert!(quiet.is_err(), "no allocation events follow");
    let (status, _, _) = fake.get(&format!("/v1/allocation/{alloc}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn fault_http_errors_answer_the_next_requests_then_recover() {
    let fake = start(fast_config()).await;
    fake.nomad
        .inject(Fault::HttpErrors {
            status: 500,
            count: 2,
        })
        .expect("inject");
    for _ in 0..2 {
        let (status, body, _) = fake.get("/v1/jobs").await;
        assert_eq!((status, body), (500, json!("No cluster leader")));
    }
    assert_eq!(fake.get("/v1/jobs").await.0, 200);
    fake.nomad
        .inject(Fault::HttpErrors {
            status: 429,
            count: 1,
        })
        .expect("inject");
    let limited = fake
        .http
        .get(format!("{}/v1/jobs", fake.base))
        .send()
        .await
        .expect("request");
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["connection"], "close");
    assert_eq!(
        limited.text().await.expect("text"),
        "Your IP is issuing too many concurrent connections, please rate limit your calls\n"
    );
    assert_eq!(
        fake.nomad.inject(Fault::HttpErrors {
            status: 200,
            count: 1
        }),
        Err(FaultError::NotAnErrorStatus(200))
    );
}

#[tokio::test]
async fn fault_exec_delay_holds_the_command_back() {
    let fake = start(fast_config()).await;
    let alloc = running_runner(&fake, "29-slowexec").await;
    fake.nomad
        .inject(Fault::ExecDelay(Duration::from_millis(300)))
        .expect("inject");
    let started = Instant::now();
    let echo = exec(&fake, &alloc, "echo late", b"").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(echo.stdout, b"late\n");
    fake.nomad.clear_faults();
    let started = Instant::now();
    exec(&fake, &alloc, "echo now", b"").await;
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn fault_exec_drop_closes_without_exit_frame() {
    let fake = start(fast_config()).await;
    let alloc = running_runner(&fake, "29-drop").await;
    fake.nomad
        .inject(Fault::ExecDropBeforeExit(true))
        .expect("inject");
    let dropped = exec(&fake, &alloc, "echo partial", b"").await;
    assert_eq!(dropped.stdout, b"partial\n");
    assert_eq!(dropped.exit_code, None);
    assert!(!dropped.saw_stream_close_frames);
    assert!(dropped.ended_without_close_frame);
}

// ------------------------------------------------------------------------------ determinism

/// A scripted scenario on the paused clock: register, restart by OOM, loss and replacement,
/// purge, placement failure; returns the full event log.
async fn scripted_scenario(seed: u64) -> String {
    let nomad = FakeNomad::new(FakeNomadConfig {
        seed,
        event_buffer_size: 10_000,
        ..FakeNomadConfig::default()
    });
    for id in ["29-a", "29-b", "template-29"] {
        nomad
            .register_job("default", &runner_job(id))
            .expect("register");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alloc_of = |job: &str| {
        nomad.job_allocations("default", job)[0]["ID"]
            .as_str()
            .expect("allocation")
            .to_owned()
    };
    nomad
        .inject(Fault::OomKill {
            alloc_id: alloc_of("29-a"),
        })
        .expect("oom");
    nomad
        .inject(Fault::DuplicateAllocUpdates(true))
        .expect("duplicates");
    tokio::time::sleep(Duration::from_secs(20)).await;
    nomad
        .inject(Fault::LoseAllocation {
            alloc_id: alloc_of("29-b"),
        })
        .expect("lose");
    tokio::time::sleep(Duration::from_secs(1)).await;
    nomad.deregister_job("default", "29-a", true);
    nomad.inject(Fault::PlacementFailure(true)).expect("full");
    nomad
        .register_job("default", &runner_job("29-c"))
        .expect("register");
    tokio::time::sleep(Duration::from_secs(5)).await;
    nomad.event_log()
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_scenario_gives_the_same_event_log_byte_for_byte() {
    let first = scripted_scenario(42).await;
    let second = scripted_scenario(42).await;
    assert!(first.lines().count() > 20, "a substantial log:\n{first}");
    assert_eq!(first, second);
    let other = scripted_scenario(43).await;
    assert_ne!(first, other, "the seed drives the ids");
}

#[tokio::test]
async fn requests_are_counted_by_route_refused_ones_included() {
    let fake = start(fast_config()).await;
    fake.register("29-a").await;
    fake.register("29-b").await;
    fake.get("/v1/job/29-a").await;
    fake.get("/v1/job/29-b").await;
    fake.get("/v1/job/29-b/allocations").await;
    fake.get("/v1/nothing/here").await;
    fake.nomad
        .inject(Fault::HttpErrors {
            status: 500,
            count: 1,
        })
        .expect("errors");
    let (status, _, _) = fake.get("/v1/jobs?prefix=29-").await;
    assert_eq!(status, 500);
    let counts = fake.nomad.requests();
    assert_eq!(counts.get("PUT /v1/jobs"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("GET /v1/job/:id"), Some(&2), "{counts:?}");
    assert_eq!(
        counts.get("GET /v1/job/:id/allocations"),
        Some(&1),
        "{counts:?}"
    );
    assert_eq!(counts.get("GET /v1/jobs"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("GET (other)"), Some(&1), "{counts:?}");
    assert_eq!(counts.values().sum::<u64>(), 7, "{counts:?}");
    assert_eq!(fake.nomad.request_count("GET /v1/job/:id"), 2);
    assert_eq!(fake.nomad.request_count("DELETE /v1/job/:id"), 0);
}

#[tokio::test]
async fn seeded_jobs_run_at_once_under_one_index_without_events() {
    let fake = start(fast_config()).await;
    let before = fake.nomad.index();
    let jobs: Vec<Value> = (0..50)
        .map(|i| runner_job(&format!("29-{i:03}"))["Job"].clone())
        .collect();
    let index = fake
        .nomad
        .seed_running_jobs("default", &jobs)
        .expect("seeded");
    assert_eq!(index, before + 1);
    assert_eq!(fake.nomad.event_log(), "", "no frames for seeded jobs");
    let (status, list, headers) = fake.get("/v1/jobs?prefix=29-").await;
    assert_eq!(status, 200);
    let list = list.as_array().expect("a list").clone();
    assert_eq!(list.len(), 50);
    assert!(
        list.iter().all(|job| job["Status"] == "running"),
        "{list:?}"
    );
    assert_eq!(headers["X-Nomad-Index"], index.to_string().as_str());
    let (_, allocations, _) = fake.get("/v1/job/29-007/allocations").await;
    let allocations = allocations.as_array().expect("a list").clone();
    assert_eq!(allocations.len(), 1);
    assert_eq!(allocations[0]["ClientStatus"], "running");
    assert_eq!(allocations[0]["CreateIndex"], index);
    // The seeded allocations run: exec works in them.
    let alloc = allocations[0]["ID"].as_str().expect("an id");
    let result = exec(&fake, alloc, "echo seeded", b"").await;
    assert_eq!(result.stdout, b"seeded\n");
    // A job that exists already is refused, and nothing of the batch is stored.
    let again = vec![runner_job("29-new")["Job"].clone(), jobs[0].clone()];
    let (status, _) = fake
        .nomad
        .seed_running_jobs("default", &again)
        .expect_err("a duplicate");
    assert_eq!(status, 400);
    let (status, _, _) = fake.get("/v1/job/29-new").await;
    assert_eq!(status, 404);
}
