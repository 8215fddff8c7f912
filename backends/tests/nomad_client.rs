//! The Nomad HTTP client and the event-stream task against a small stand-in for Nomad served
//! over real TCP on 127.0.0.1 (axum). The stand-in answers what each test scripts, in Nomad's
//! wire forms (`reference/nomad-api.md` §1.2, §2, §6): JSON on success, plain text on error,
//! `X-Nomad-Index`, NDJSON streams with `{}` heartbeats and Nomad's inclusive resume.
//!
//! Most tests run with tokio's clock paused: retries, heartbeat timeouts and reconnect back-offs
//! then take no wall time, and their durations can be asserted exactly.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::json;
use tokio::time::Instant;
use trident_backends::nomad::client::{AllocationQuery, NomadClient, NomadConfig, NomadError};
use trident_backends::nomad::connector::{MaybeTls, TcpConnector, TlsSettings};
use trident_backends::nomad::events::{EventStream, EventStreamConfig, Resync, StreamItem};
use trident_backends::nomad::model::{ClientStatus, EvaluationStatus, JobStatus};
use trident_backends::nomad::retry::{Backoff, RetryPolicy, SplitMix64};

const SEED: u64 = 0x5EED;

// ---------------------------------------------------------------------------------------------
// The stand-in
// ---------------------------------------------------------------------------------------------

/// A request as the stand-in saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    token: Option<String>,
    body: Vec<u8>,
}

impl Seen {
    fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key.to_owned(), value.to_owned())
            })
            .collect()
    }

    fn param(&self, key: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// A scripted answer to a plain call.
enum Reply {
    /// Status, `X-Nomad-Index`, JSON body.
    Json(u16, Option<u64>, String),
    /// Status and a plain-text body, as Nomad sends errors.
    Text(u16, &'static str),
    /// Answer only after this long (to trip the client's timeout).
    Slow(Duration),
}

/// One step of a scripted event stream.
#[derive(Clone)]
enum Step {
    /// Raw bytes, sent as one chunk (need not end on a line boundary).
    Raw(String),
    /// Wait.
    Sleep(Duration),
    /// Send nothing, ever (a half-open connection).
    Silent,
    /// Send `{}` at this interval, forever.
    Beat(Duration),
}

/// How one subscription is answered.
enum StreamScript {
    /// These steps; the stream ends after the last one.
    Steps(Vec<Step>),
    /// Nomad's buffer: the frames with index ≥ the requested one (all of them for index 0 or an
    /// index older than the buffer; the newest one for an index past it), then `then`.
    Buffer(Vec<u64>, Vec<Step>),
    /// A refusal: status and text.
    Refuse(u16, &'static str),
}

#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<Seen>>,
    replies: Mutex<VecDeque<Reply>>,
    streams: Mutex<VecDeque<StreamScript>>,
    /// Set when a stream body the stand-in served was dropped (the client went away).
    stream_dropped: Arc<AtomicBool>,
}

impl Fake {
    fn reply(&self, reply: Reply) {
        self.replies.lock().expect("lock").push_back(reply);
    }

    fn stream(&self, script: StreamScript) {
        self.streams.lock().expect("lock").push_back(script);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    fn stream_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|seen| seen.path == "/v1/event/stream")
            .collect()
    }
}

async fn handle(State(fake): State<Arc<Fake>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("a readable body");
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        token: parts
            .headers
            .get("X-Nomad-Token")
            .map(|value| value.to_str().expect("ascii").to_owned()),
        body: body.to_vec(),
    };
    fake.seen.lock().expect("lock").push(seen.clone());
    if seen.path == "/v1/event/stream" {
        let script = fake.streams.lock().expect("lock").pop_front();
        return match script {
            None => text(500, "no stream scripted"),
            Some(StreamScript::Refuse(status, body)) => text(status, body),
            Some(StreamScript::Steps(steps)) => ndjson(steps, Arc::clone(&fake.stream_dropped)),
            Some(StreamScript::Buffer(frames, then)) => {
                let requested: u64 = seen
                    .param("index")
                    .and_then(|index| index.parse().ok())
                    .unwrap_or(0);
                let mut from: Vec<u64> =
                    frames.iter().copied().filter(|i| *i >= requested).collect();
                if from.is_empty() {
                    from.extend(frames.last().copied());
                }
                let mut steps = vec![Step::Raw("{}\n".into())];
                steps.extend(from.into_iter().map(|index| Step::Raw(frame_line(index))));
                steps.extend(then);
                ndjson(steps, Arc::clone(&fake.stream_dropped))
            }
        };
    }
    let reply = fake.replies.lock().expect("lock").pop_front();
    match reply {
        // Nomad's answer to an unknown URL: 404 with an empty body.
        None => text(404, ""),
        Some(Reply::Json(status, index, body)) => {
            let mut response = Response::builder()
                .status(status)
                .header("Content-Type", "application/json");
            if let Some(index) = index {
                response = response.header("X-Nomad-Index", index.to_string());
            }
            response.body(Body::from(body)).expect("a response")
        }
        Some(Reply::Text(status, body)) => text(status, body),
        Some(Reply::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            text(200, "[]")
        }
    }
}

fn text(status: u16, body: &'static str) -> Response {
    Response::builder()
        .status(status)
        .header("Content-Type", "text/plain")
        .body(Body::from(body))
        .expect("a response")
}

/// Sets a flag when dropped: the stand-in's way of noticing that the client went away.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn ndjson(steps: Vec<Step>, dropped: Arc<AtomicBool>) -> Response {
    let state = (VecDeque::from(steps), DropFlag(dropped));
    let stream = futures_util::stream::unfold(state, |(mut steps, flag)| async move {
        loop {
            match steps.pop_front()? {
                Step::Raw(bytes) => {
                    return Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), (steps, flag)));
                }
                Step::Sleep(delay) => tokio::time::sleep(delay).await,
                Step::Silent => std::future::pending::<()>().await,
                Step::Beat(interval) => {
                    tokio::time::sleep(interval).await;
                    steps.push_front(Step::Beat(interval));
                    return Some((Ok(Bytes::from_static(b"{}\n")), (steps, flag)));
                }
            }
        }
    });
    Response::builder()
        .status(200)
        .header("Content-Type", "application/json")
        .body(Body::from_stream(stream))
        .expect("a response")
}

/// One data frame as Nomad sends it: one allocation placement at `index`.
fn frame_json(index: u64) -> String {
    json!({
        "Index": index,
        "Events": [{
            "Topic": "Allocation", "Type": "PlanResult", "Key": format!("a{index}"),
            "Namespace": "poseidon", "FilterKeys": ["7-job", ""], "Index": index,
            "Payload": {"Allocation": {
                "ID": format!("a{index}"), "JobID": "7-job", "ClientStatus": "pending",
                "DesiredStatus": "run", "CreateIndex": index, "ModifyIndex": index
            }}
        }]
    })
    .to_string()
}

fn frame_line(index: u64) -> String {
    frame_json(index) + "\n"
}

async fn start() -> (Arc<Fake>, SocketAddr) {
    let fake = Arc::new(Fake::default());
    let app = Router::new().fallback(handle).with_state(Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let address = listener.local_addr().expect("an address");
    // The server task lives as long as the test's runtime.
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serving") });
    (fake, address)
}

fn config(address: SocketAddr) -> NomadConfig {
    NomadConfig {
        token: Some("s3cr3t\n".into()),
        namespace: Some("poseidon".into()),
        region: Some("eu".into()),
        retry: RetryPolicy {
            attempts_max: 3,
            backoff: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(2),
            },
        },
        ..NomadConfig::new(format!("http://{address}"))
    }
}

fn client(address: SocketAddr) -> NomadClient<MaybeTls<TcpConnector>> {
    NomadClient::connect_tcp(&config(address), SplitMix64::new(SEED)).expect("a client")
}

// ---------------------------------------------------------------------------------------------
// Typed calls
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn register_job_puts_the_job_with_token_namespace_and_region() {
    let (fake, address) = start().await;
    fake.reply(Reply::Json(
        200,
        Some(31),
        r#"{"EvalID": "e-1", "EvalCreateIndex": 31, "JobModifyIndex": 30,
            "Warnings": "1 warning:\n\n* memory_max ignored", "Index": 31,
            "LastContact": 0, "KnownLeader": false, "NextToken": ""}"#
            .into(),
    ));
    let job = json!({"ID": "7-job", "Name": "7-job", "Type": "batch"});
    let answer = client(address)
        .register_job(&job)
        .await
        .expect("registered");
    assert_eq!(answer.eval_id.as_deref(), Some("e-1"));
    assert_eq!(answer.job_modify_index, 30);
    assert_eq!(answer.index, 31);
    assert!(answer.warnings.contains("memory_max"));

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].path, "/v1/jobs");
    assert_eq!(seen[0].query, "namespace=poseidon&region=eu");
    // The token is trimmed, as Nomad itself would.
    assert_eq!(seen[0].token.as_deref(), Some("s3cr3t"));
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("JSON");
    assert_eq!(body, json!({"Job": job}));
}

#[tokio::test]
async fn read_job_gives_the_job_with_its_index_and_none_when_nomad_says_not_found() {
    let (fake, address) = start().await;
    let client = client(address);
    fake.reply(Reply::Json(
        200,
        Some(44),
        r#"{"ID": "7-job", "Version": 3}"#.into(),
    ));
    fake.reply(Reply::Text(404, "job not found"));
    // No reply left: the stand-in answers like an unknown URL (404, empty body).

    let job = client
        .read_job("7-job")
        .await
        .expect("read")
        .expect("found");
    assert_eq!(job.index, 44);
    assert_eq!(job.value["Version"], 3);
    assert_eq!(client.read_job("7-gone").await.expect("read"), None);
    let error = client
        .read_job("7-job")
        .await
        .expect_err("an unknown URL is not a missing job");
    assert_eq!(error.status().map(|s| s.as_u16()), Some(404));

    let paths: Vec<String> = fake.seen().into_iter().map(|seen| seen.path).collect();
    assert_eq!(paths, ["/v1/job/7-job", "/v1/job/7-gone", "/v1/job/7-job"]);
}

#[tokio::test]
async fn ids_are_percent_encoded_into_one_path_segment() {
    let (fake, address) = start().await;
    fake.reply(Reply::Text(404, "job not found"));
    assert_eq!(
        client(address).read_job("a/../b?x").await.expect("read"),
        None
    );
    // axum hands over the path still encoded.
    assert_eq!(fake.seen()[0].path, "/v1/job/a%2F..%2Fb%3Fx");
}

#[tokio::test]
async fn list_jobs_asks_for_prefix_and_meta_and_decodes_the_stubs() {
    let (fake, address) = start().await;
    fake.reply(Reply::Json(
        200,
        Some(90),
        r#"[{"ID": "7-a", "Name": "7-a", "Type": "batch", "Status": "running",
             "Meta": {"used": "true", "timeout": "60"}, "JobSummary": {}, "CreateIndex": 10,
             "ModifyIndex": 12, "JobModifyIndex": 10, "SubmitTime": 1714644903100000001},
            {"ID": "7-b", "Status": "dead", "Stop": true}]"#
            .into(),
    ));
    fake.reply(Reply::Json(200, Some(91), "[]".into()));
    let client = client(address);
    let jobs = client.list_jobs("7-", true).await.expect("listed");
    assert_eq!(jobs.index, 90);
    assert_eq!(jobs.value.len(), 2);
    assert_eq!(jobs.value[0].meta["used"], "true");
    assert_eq!(jobs.value[0].status, JobStatus::Running);
    assert_eq!(jobs.value[1].status, JobStatus::Dead);
    assert!(jobs.value[1].stop && jobs.value[1].meta.is_empty());
    let none = client.list_jobs("template-", false).await.expect("listed");
    assert!(none.value.is_empty());

    let seen = fake.seen();
    assert_eq!(seen[0].path, "/v1/jobs");
    assert_eq!(
        seen[0].query,
        "prefix=7-&meta=true&namespace=poseidon&region=eu"
    );
    assert_eq!(seen[1].param("meta"), None);
}

#[tokio::test]
async fn delete_job_purges_and_an_unknown_job_is_no_error() {
    let (fake, address) = start().await;
    fake.reply(Reply::Json(
        200,
        Some(50),
        r#"{"EvalID": "e-9", "EvalCreateIndex": 50, "JobModifyIndex": 50, "Index": 50}"#.into(),
    ));
    fake.reply(Reply::Json(
        200,
        Some(0),
        r#"{"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": 0, "VolumeEvalID": "", "Index": 0}"#
            .into(),
    ));
    let client = client(address);
    let first = client.delete_job("7-job", true).await.expect("deleted");
    assert_eq!(first.eval_id.as_deref(), Some("e-9"));
    let again = client
        .delete_job("7-job", true)
        .await
        .expect("deleted again");
    assert_eq!(again.eval_id, None);
    assert_eq!(again.index, 0);
    let seen = fake.seen();
    assert_eq!(seen[0].method, "DELETE");
    assert_eq!(seen[0].path, "/v1/job/7-job");
    assert_eq!(seen[0].param("purge").as_deref(), Some("true"));
}

#[tokio::test]
async fn allocations_and_evaluations_are_listed_and_read() {
    let (fake, address) = start().await;
    fake.reply(Reply::Json(
        200,
        Some(70),
        r#"[{"ID": "a1", "JobID": "7-a", "ClientStatus": "running", "DesiredStatus": "run",
             "TaskStates": null, "CreateIndex": 5, "ModifyIndex": 9}]"#
            .into(),
    ));
    fake.reply(Reply::Json(
        200,
        Some(71),
        r#"[{"ID": "old", "JobID": "7-a", "ClientStatus": "failed", "CreateIndex": 5},
            {"ID": "new", "JobID": "7-a", "ClientStatus": "pending", "CreateIndex": 20},
            {"ID": "mid", "JobID": "7-a", "ClientStatus": "lost", "CreateIndex": 11}]"#
            .into(),
    ));
    fake.reply(Reply::Json(
        200,
        Some(72),
        r#"{"ID": "new", "JobID": "7-a", "ClientStatus": "pending", "DesiredStatus": "run",
            "PreviousAllocation": "mid", "Job": {"ID": "7-a"}, "CreateIndex": 20, "ModifyIndex": 21}"#
            .into(),
    ));
    fake.reply(Reply::Text(404, "alloc not found"));
    fake.reply(Reply::Json(
        200,
        Some(73),
        r#"{"ID": "e-1", "JobID": "7-a", "Status": "complete", "TriggeredBy": "job-register",
            "CreateIndex": 19, "ModifyIndex": 22}"#
            .into(),
    ));
    fake.reply(Reply::Text(404, "eval not found"));
    let client = client(address);

    let all = client
        .list_allocations(&AllocationQuery {
            prefix: Some("a1".into()),
            all_namespaces: true,
            resources: true,
            omit_task_states: true,
        })
        .await
        .expect("listed");
    assert_eq!(all.index, 70);
    assert_eq!(all.value[0].client_status, ClientStatus::Running);

    let of_job = client.job_allocations("7-a", false).await.expect("listed");
    let order: Vec<&str> = of_job.value.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        order,
        ["new", "mid", "old"],
        "newest first, as the Go client sorts"
    );

    let allocation = client
        .read_allocation("new")
        .await
        .expect("read")
        .expect("found");
    assert_eq!(allocation.index, 72);
    assert_eq!(allocation.value.previous_allocation.as_deref(), Some("mid"));
    assert_eq!(client.read_allocation("gone").await.expect("read"), None);

    let evaluation = client
        .read_evaluation("e-1")
        .await
        .expect("read")
        .expect("found");
    assert_eq!(evaluation.value.status, EvaluationStatus::Complete);
    assert!(evaluation.value.failed_task_group_allocations.is_empty());
    assert_eq!(client.read_evaluation("e-gone").await.expect("read"), None);

    let seen = fake.seen();
    assert_eq!(seen[0].path, "/v1/allocations");
    // `*` lists every namespace, replacing the configured one.
    assert_eq!(
        seen[0].query,
        "prefix=a1&resources=true&task_states=false&namespace=%2A&region=eu"
    );
    assert_eq!(seen[1].path, "/v1/job/7-a/allocations");
    assert_eq!(seen[1].param("all").as_deref(), Some("false"));
    assert_eq!(seen[2].path, "/v1/allocation/new");
    assert_eq!(seen[4].path, "/v1/evaluation/e-1");
}

// ---------------------------------------------------------------------------------------------
// Errors and retries
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_429_is_retried_after_a_jittered_back_off_and_then_succeeds() {
    let (fake, address) = start().await;
    fake.reply(Reply::Text(
        429,
        "Your IP is issuing too many concurrent connections, please rate limit your calls",
    ));
    fake.reply(Reply::Json(200, Some(3), "[]".into()));
    let began = Instant::now();
    let jobs = client(address)
        .list_jobs("7-", false)
        .await
        .expect("listed after a retry");
    let waited = began.elapsed();
    assert!(jobs.value.is_empty());
    assert_eq!(fake.seen().len(), 2);
    // The client's first draw from its entropy decides the first delay.
    let expected = config(address)
        .retry
        .backoff
        .delay(0, SplitMix64::new(SEED).next_u64());
    assert!(
        waited >= expected && waited < expected + Duration::from_millis(50),
        "waited {waited:?}, expected {expected:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_500_beyond_the_retry_bound_fails_with_nomads_status_and_text() {
    let (fake, address) = start().await;
    for _ in 0..4 {
        fake.reply(Reply::Text(500, "No cluster leader"));
    }
    let error = client(address)
        .read_allocation("a1")
        .await
        .expect_err("every attempt failed");
    let NomadError::Status { status, body } = &error else {
        panic!("a status error, got {error:?}");
    };
    assert_eq!(status.as_u16(), 500);
    assert_eq!(body, "No cluster leader");
    assert_eq!(fake.seen().len(), 3, "attempts_max is 3");
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried_and_keep_the_plain_text() {
    let (fake, address) = start().await;
    fake.reply(Reply::Text(
        500,
        "1 error occurred:\n\t* Task group default-group validation failed: minimum CPU value is 1; got 0\n",
    ));
    fake.reply(Reply::Text(403, "Permission denied"));
    let client = client(address);
    let error = client
        .register_job(&json!({"ID": "7-job"}))
        .await
        .expect_err("invalid");
    assert_eq!(error.status().map(|s| s.as_u16()), Some(500));
    assert!(error.to_string().contains("minimum CPU value is 1; got 0"));
    assert!(!error.is_transient());
    let error = client.list_jobs("7-", false).await.expect_err("forbidden");
    let NomadError::Status { status, body } = error else {
        panic!("a status error");
    };
    assert_eq!((status.as_u16(), body.as_str()), (403, "Permission denied"));
    assert_eq!(fake.seen().len(), 2, "one attempt each");
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_nomad_is_a_connection_error_after_the_retries() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let address = listener.local_addr().expect("an address");
    drop(listener);
    let error = client(address)
        .list_jobs("7-", false)
        .await
        .expect_err("nobody listens");
    assert!(matches!(error, NomadError::Connection(_)), "{error:?}");
    assert!(error.is_transient());
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_times_out() {
    let (fake, address) = start().await;
    fake.reply(Reply::Slow(Duration::from_secs(30)));
    let config = NomadConfig {
        request_timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            attempts_max: 1,
            ..RetryPolicy::default()
        },
        ..config(address)
    };
    let client = NomadClient::connect_tcp(&config, SplitMix64::new(SEED)).expect("a client");
    let began = Instant::now();
    let error = client.list_jobs("7-", false).await.expect_err("too slow");
    assert!(matches!(error, NomadError::Timeout(timeout) if timeout == Duration::from_secs(2)));
    assert!(began.elapsed() >= Duration::from_secs(2));
    assert!(began.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn answers_of_the_wrong_shape_and_oversized_answers_are_typed_errors() {
    let (fake, address) = start().await;
    fake.reply(Reply::Json(200, None, r#"{"ID": 5}"#.into()));
    fake.reply(Reply::Json(
        200,
        None,
        format!("[{}]", "0,".repeat(100) + "0"),
    ));
    let config = NomadConfig {
        response_bytes_max: 64,
        ..config(address)
    };
    let client = NomadClient::connect_tcp(&config, SplitMix64::new(SEED)).expect("a client");
    let error = client
        .read_allocation("a")
        .await
        .expect_err("ID is no string");
    assert!(
        matches!(
            error,
            NomadError::Decode {
                what: "read allocation",
                ..
            }
        ),
        "{error:?}"
    );
    let error = client.list_jobs("", false).await.expect_err("too large");
    assert!(matches!(error, NomadError::TooLarge(64)), "{error:?}");
}

#[test]
fn bad_configurations_are_refused() {
    let refused = |config: NomadConfig| {
        NomadClient::connect_tcp(&config, SplitMix64::new(SEED)).expect_err("refused")
    };
    assert!(matches!(
        refused(NomadConfig::new("nomad:4646")),
        NomadError::Config(_)
    ));
    assert!(matches!(
        refused(NomadConfig::new("https://nomad:4646")),
        NomadError::Config(_)
    ));
    assert!(matches!(
        refused(NomadConfig {
            token: Some("a\u{7f}b".into()),
            ..NomadConfig::new("http://nomad:4646")
        }),
        NomadError::Config(_)
    ));
}

// ---------------------------------------------------------------------------------------------
// The event stream
// ---------------------------------------------------------------------------------------------

/// What the consumer saw, with frames reduced to their index.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Frame(u64),
    Resync(Resync),
}

fn stream_config() -> EventStreamConfig {
    EventStreamConfig {
        reconnect: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(4),
        },
        ..EventStreamConfig::default()
    }
}

/// The next `count` items, failing if they do not come within ten (virtual) minutes.
async fn take(stream: &mut EventStream, count: usize) -> Vec<Got> {
    let mut got = Vec::new();
    while got.len() < count {
        let item = tokio::time::timeout(Duration::from_secs(600), stream.next())
            .await
            .unwrap_or_else(|_| panic!("no item after {got:?}"))
            .expect("the task runs");
        got.push(match item {
            StreamItem::Frame(frame) => {
                assert_eq!(frame.events.len(), 1);
                assert_eq!(frame.events[0].index, frame.index);
                Got::Frame(frame.index)
            }
            StreamItem::Resync(resync) => Got::Resync(resync),
        });
    }
    got
}

/// Asserts that nothing more arrives within `wait` (virtual time).
async fn assert_quiet(stream: &mut EventStream, wait: Duration) {
    if let Ok(item) = tokio::time::timeout(wait, stream.next()).await {
        panic!("unexpected item {item:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn frames_split_across_chunks_arrive_whole_and_heartbeats_are_counted() {
    let (fake, address) = start().await;
    let five = frame_line(5);
    let (head, tail) = five.split_at(17);
    fake.stream(StreamScript::Steps(vec![
        Step::Raw("{}\n{".into()),
        Step::Raw("}\n".into()),
        Step::Raw(head.into()),
        Step::Sleep(Duration::from_secs(1)),
        Step::Raw(tail.to_owned() + "{}\n" + &frame_json(9)),
        Step::Raw("\n".into()),
        Step::Silent,
    ]));
    let mut stream = EventStream::spawn(client(address), stream_config());
    assert_eq!(take(&mut stream, 2).await, [Got::Frame(5), Got::Frame(9)]);
    let status = stream.status();
    assert_eq!(status.heartbeats, 3);
    assert_eq!(
        (status.frames, status.last_index, status.connects),
        (2, 9, 1)
    );
    assert!(status.connected);

    let request = &fake.stream_requests()[0];
    assert_eq!(request.method, "GET");
    assert_eq!(
        request.query,
        "index=0&topic=Job%3A%2A&topic=Allocation%3A%2A&topic=Evaluation%3A%2A\
         &namespace=poseidon&region=eu"
    );
    assert_eq!(request.token.as_deref(), Some("s3cr3t"));
}

#[tokio::test(start_paused = true)]
async fn a_disconnect_resumes_at_the_last_index_and_skips_the_resent_frame() {
    let (fake, address) = start().await;
    fake.stream(StreamScript::Steps(vec![
        Step::Raw("{}\n".into()),
        Step::Raw(frame_line(5) + &frame_line(9)),
    ]));
    // Nomad still buffers 9: it re-sends it first (inclusive resume).
    fake.stream(StreamScript::Buffer(vec![3, 5, 9, 12], vec![Step::Silent]));
    let mut stream = EventStream::spawn(client(address), stream_config());
    assert_eq!(
        take(&mut stream, 3).await,
        [Got::Frame(5), Got::Frame(9), Got::Frame(12)]
    );
    assert_quiet(&mut stream, Duration::from_secs(30)).await;
    let requests = fake.stream_requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].param("index").as_deref(), Some("9"));
    let status = stream.status();
    assert_eq!(
        (status.duplicates, status.resyncs, status.connects),
        (1, 0, 2)
    );
    assert_eq!(status.last_error.as_deref(), Some("the stream ended"));
}

#[tokio::test(start_paused = true)]
async fn a_resume_past_frames_nomad_no_longer_buffers_reports_a_gap() {
    let (fake, address) = start().await;
    fake.stream(StreamScript::Steps(vec![Step::Raw(
        frame_line(5) + &frame_line(9),
    )]));
    // The buffer moved on while disconnected: 9 is gone, the stream starts at 40.
    fake.stream(StreamScript::Buffer(vec![40, 41], vec![Step::Silent]));
    let mut stream = EventStream::spawn(client(address), stream_config());
    assert_eq!(
        take(&mut stream, 5).await,
        [
            Got::Frame(5),
            Got::Frame(9),
            Got::Resync(Resync::Gap {
                resumed_at: 9,
                first_index: 40
            }),
            Got::Frame(40),
            Got::Frame(41),
        ]
    );
    assert_eq!(stream.status().resyncs, 1);
}

#[tokio::test(start_paused = true)]
async fn a_resume_whose_first_frame_is_the_next_index_has_no_gap() {
    // 9 was not re-sent, so it fell out of Nomad's buffer; but no index lies between 9 and 10,
    // so nothing can be missing. One index further would be a gap (the test above).
    let (fake, address) = start().await;
    fake.stream(StreamScript::Steps(vec![Step::Raw(frame_line(9))]));
    fake.stream(StreamScript::Buffer(vec![10, 11], vec![Step::Silent]));
    let mut stream = EventStream::spawn(client(address), stream_config());
    assert_eq!(
        take(&mut stream, 3).await,
        [Got::Frame(9), Got::Frame(10), Got::Frame(11)]
    );
    assert_eq!(stream.status().resyncs, 0);
}

#[tokio::test(start_paused = true)]
async fn a_resume_at_a_server_that_is_behind_replays_nothing_and_reports_no_gap() {
    let (fake, address) = start().await;
    fake.stream(StreamScript::Steps(vec![Step::Raw(
        frame_line(5) + &frame_line(9),
    )]));
    // Another server, restarted, whose newest frame is 7 (< 9): it re-sends 7, then goes on.
    fake.stream(StreamScript::Buffer(
        vec![5, 7],
        vec![Step::Raw(frame_line(11)), Step::Silent],
    ));
    let mut stream = EventStream::spawn(client(address), stream_config());
    assert_eq!(
        take(&mut stream, 3).await,
        [Got::Frame(5), Got::Frame(9), Got::Frame(11)]
    );
    assert_eq!(stream.status().resyncs, 0);
}

#[tokio::test(start_paused = true)]
async fn a_start_index_is_checked_like_a_resume() {
    let (fake, address) = start().await;
    fake.stream(StreamScript::Buffer(vec![20, 30], vec![Step::Silent]));
    let config = EventStreamConfig {
        start_index: 10,
        ..stream_config()
    };
    let mut stream = EventStream::spawn(client(address), config);
    assert_eq!(
        take(&mut stream, 3).await,
        [
            Got::Resync(Resync::Gap {
                resumed_at: 10,
                first_index: 20
            }),
            Got::Frame(20),
            Got::Frame(30),
        ]
    );
    assert_eq!(
        fake.stream_requests()[0].param("index").as_deref(),
        Some("10")
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_is_dropped_after_the_heartbeat_timeout_and_resumed() {
    let (fake, address) = start().await;
    fake.stream(StreamScript::Steps(vec![
        Step::Raw("{}\n".into()),
        Step::Raw(frame_line(3)),
        Step::Silent,
    ]));
    fake.stream(StreamScript::Buffer(vec![3, 4], vec![Step::Silent]));
    let mut stream = EventStream::spawn(client(address), stream_config());
    assert_eq!(take(&mut stream, 1).await, [Got::Frame(3)]);
    let silent_since = Instant::now();
    assert_eq!(take(&mut stream, 1).await, [Got::Frame(4)]);
    let waited = silent_since.elapsed();
    assert!(
        waited >= Duration::from_secs(60),
        "reconnected after {waited:?}"
    );
    // 60 s plus at most the first (jittered) reconnect delay of 100 ms.
    assert!(
        waited <= Duration::from_millis(60_100),
        "reconnected after {waited:?}"
    );
    let status = stream.status();
    assert_eq!(status.connects, 2);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("no heartbeat"))
    );
    assert_eq!(
        fake.stream_requests()[1].param("index").as_deref(),
        Some("3")
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_quiet_stream_alive() {
    let (fake, address) = start().await;
    let mut steps = vec![Step::Raw(frame_line(3))];
    for _ in 0..6 {
        steps.push(Step::Sleep(Duration::from_secs(30)));
        steps.push(Step::Raw("{}\n".into()));
    }
    steps.push(Step::Raw(frame_line(4)));
    steps.push(Step::Silent);
    fake.stream(StreamScript::Steps(steps));
    let mut stream = EventStream::spawn(client(address), stream_config());
    assert_eq!(take(&mut stream, 2).await, [Got::Frame(3), Got::Frame(4)]);
    let status = stream.status();
    assert_eq!((status.connects, status.heartbeats), (1, 6));
    assert_eq!(status.last_error, None);
}

#[tokio::test(start_paused = true)]
async fn a_slow_consumer_gets_every_frame_once_through_a_reconnect() {
    let (fake, address) = start().await;
    let frames: Vec<u64> = (1..=10).collect();
    for _ in 0..10 {
        fake.stream(StreamScript::Buffer(frames.clone(), vec![Step::Silent]));
    }
    let config = EventStreamConfig {
        channel_capacity: 2,
        ..stream_config()
    };
    let mut stream = EventStream::spawn(client(address), config);
    // The consumer is busy while Nomad sends everything.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        fake.stream_requests().len(),
        1,
        "no reconnect while the consumer is stuck"
    );
    assert!(
        !stream.status().connected,
        "the connection was dropped, not left unread"
    );
    let got = take(&mut stream, 10).await;
    let expected: Vec<Got> = frames.iter().map(|index| Got::Frame(*index)).collect();
    assert_eq!(got, expected);
    assert_quiet(&mut stream, Duration::from_secs(5)).await;
    let requests = fake.stream_requests();
    assert!(requests.len() >= 2);
    // Two frames fit, the third waited for room: the stream resumed at it.
    assert_eq!(requests[1].param("index").as_deref(), Some("3"));
    assert_eq!(stream.status().resyncs, 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_consumer_whose_frames_left_nomads_buffer_gets_a_resync() {
    let (fake, address) = start().await;
    fake.stream(StreamScript::Buffer((1..=10).collect(), vec![Step::Silent]));
    // By the time the stream resumes, Nomad buffers only 8 to 10. (The consumer may still lag
    // behind a second time; later resumes find what they need in the buffer.)
    for _ in 0..5 {
        fake.stream(StreamScript::Buffer(vec![8, 9, 10], vec![Step::Silent]));
    }
    let config = EventStreamConfig {
        channel_capacity: 2,
        ..stream_config()
    };
    let mut stream = EventStream::spawn(client(address), config);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        take(&mut stream, 7).await,
        [
            Got::Frame(1),
            Got::Frame(2),
            Got::Frame(3),
            Got::Resync(Resync::Gap {
                resumed_at: 3,
                first_index: 8
            }),
            Got::Frame(8),
            Got::Frame(9),
            Got::Frame(10),
        ]
    );
    assert_eq!(stream.status().resyncs, 1, "one gap, reported once");
}

#[tokio::test(start_paused = true)]
async fn an_undecodable_frame_and_an_over_long_line_are_reported_and_skipped() {
    let (fake, address) = start().await;
    fake.stream(StreamScript::Steps(vec![
        Step::Raw(
            r#"{"Index": 2, "Events": [{"Topic": "Allocation", "Payload": {"Allocation": {"ID": 1}}}]}"#
                .to_owned()
                + "\n",
        ),
        Step::Raw("x".repeat(3000)),
        Step::Raw("y".repeat(3000) + "\n"),
        Step::Raw(frame_line(3)),
        Step::Silent,
    ]));
    let config = EventStreamConfig {
        line_bytes_max: 2048,
        ..stream_config()
    };
    let mut stream = EventStream::spawn(client(address), config);
    let got = take(&mut stream, 3).await;
    let Got::Resync(Resync::UndecodableFrame { index: 2, .. }) = &got[0] else {
        panic!("expected an undecodable frame first: {got:?}");
    };
    assert_eq!(got[1], Got::Resync(Resync::LineTooLong { bytes_max: 2048 }));
    assert_eq!(got[2], Got::Frame(3));
    assert_eq!(stream.status().connects, 1, "neither ends the connection");
}

#[tokio::test(start_paused = true)]
async fn a_text_tail_ends_the_stream_and_it_resumes() {
    let (fake, address) = start().await;
    // Nomad ≤ 1.11.1 appends the reason after the frames when it closes a subscription.
    fake.stream(StreamScript::Steps(vec![
        Step::Raw(frame_line(5)),
        Step::Raw("subscription closed by server, client should resubscribe\n".into()),
        Step::Silent,
    ]));
    fake.stream(StreamScript::Buffer(vec![5, 6], vec![Step::Silent]));
    let mut stream = EventStream::spawn(client(address), stream_config());
    assert_eq!(take(&mut stream, 2).await, [Got::Frame(5), Got::Frame(6)]);
    let status = stream.status();
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("subscription closed by server")),
        "{status:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_subscription_waits_the_longest_back_off() {
    let (fake, address) = start().await;
    fake.stream(StreamScript::Refuse(403, "Permission denied"));
    fake.stream(StreamScript::Buffer(vec![1], vec![Step::Silent]));
    let began = Instant::now();
    let mut stream = EventStream::spawn(client(address), stream_config());
    assert_eq!(take(&mut stream, 1).await, [Got::Frame(1)]);
    // Half the 4 s cap at least (equal jitter), not the 100 ms of a first failure.
    assert!(
        began.elapsed() >= Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    assert!(began.elapsed() <= Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn reconnect_delays_grow_while_nomad_is_down() {
    let (fake, address) = start().await;
    for _ in 0..4 {
        fake.stream(StreamScript::Refuse(500, "No cluster leader"));
    }
    fake.stream(StreamScript::Buffer(vec![1], vec![Step::Silent]));
    let began = Instant::now();
    let mut stream = EventStream::spawn(client(address), stream_config());
    assert_eq!(take(&mut stream, 1).await, [Got::Frame(1)]);
    // Four failures: at least 50 + 100 + 200 + 400 ms, at most twice that.
    let waited = began.elapsed();
    assert!(waited >= Duration::from_millis(750), "{waited:?}");
    assert!(waited <= Duration::from_millis(1500), "{waited:?}");
    let status = stream.status();
    assert_eq!(status.connects, 1);
    assert_eq!(fake.stream_requests().len(), 5);
}

#[tokio::test]
async fn dropping_the_handle_stops_the_task_and_closes_the_connection() {
    let (fake, address) = start().await;
    fake.stream(StreamScript::Steps(vec![
        Step::Raw(frame_line(1)),
        Step::Beat(Duration::from_millis(20)),
    ]));
    let mut stream = EventStream::spawn(client(address), stream_config());
    let mut status = stream.watch_status();
    assert_eq!(take(&mut stream, 1).await, [Got::Frame(1)]);
    assert!(!fake.stream_dropped.load(Ordering::SeqCst));
    drop(stream);
    // The status sender lives in the task: it is gone once the task is.
    tokio::time::timeout(Duration::from_secs(10), async {
        while status.changed().await.is_ok() {}
    })
    .await
    .expect("the task ended");
    // The server notices at its next heartbeat write.
    tokio::time::timeout(Duration::from_secs(10), async {
        while !fake.stream_dropped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the connection was closed");
    assert_eq!(
        fake.stream_requests().len(),
        1,
        "no reconnect after the drop"
    );
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// The stand-in behind TLS: every accepted connection is a rustls server session that demands a
/// client certificate signed by the CA.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.tcp.accept().await else {
                continue;
            };
            // A client without an acceptable certificate fails here; the next one is served.
            if let Ok(stream) = self.acceptor.accept(stream).await {
                return (stream, address);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A private CA, a server certificate for Nomad's own naming (`server.global.nomad`) and a
/// client certificate, as PEM files in `dir`.
struct Pki {
    ca: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
    server_config: rustls::ServerConfig,
}

fn pki(dir: &std::path::Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a key")).expect("a CA");
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("parameters");
        params.extended_key_usages = vec![usage];
        let certificate = params.signed_by(&key, &ca).expect("a certificate");
        (certificate, key)
    };
    let (server_cert, server_key) =
        leaf("server.global.nomad", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf("trident", ExtendedKeyUsagePurpose::ClientAuth);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("the CA");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()
    .expect("a client verifier");
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .expect("a server config");

    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("a PEM file");
        path
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        client_cert: write("client.pem", client_cert.pem()),
        client_key: write("client-key.pem", client_key.serialize_pem()),
        server_config,
    }
}

#[tokio::test]
async fn mutual_tls_against_a_private_ca_and_nomads_server_name() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pki = pki(dir.path());
    let fake = Arc::new(Fake::default());
    let app = Router::new().fallback(handle).with_state(Arc::clone(&fake));
    let listener = TlsListener {
        tcp: tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port"),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config)),
    };
    let address = axum::serve::Listener::local_addr(&listener).expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serving") });
    fake.reply(Reply::Json(200, Some(8), r#"[{"ID": "7-a"}]"#.into()));

    let settings = TlsSettings {
        ca_pem_path: pki.ca.clone(),
        client_cert_pem_path: Some(pki.client_cert.clone()),
        client_key_pem_path: Some(pki.client_key.clone()),
        server_name: Some("server.global.nomad".into()),
    };
    let tls_config = |settings: TlsSettings| NomadConfig {
        tls: Some(settings),
        ..config(address)
    };
    let https = |config: NomadConfig| NomadConfig {
        address: format!("https://{address}"),
        ..config
    };
    let client =
        NomadClient::connect_tcp(&https(tls_config(settings.clone())), SplitMix64::new(SEED))
            .expect("a TLS client");
    let jobs = client
        .list_jobs("7-", false)
        .await
        .expect("listed over TLS");
    assert_eq!(jobs.value[0].id, "7-a");
    assert_eq!(fake.seen()[0].token.as_deref(), Some("s3cr3t"));

    // Without the client certificate the server refuses the session.
    let anonymous = TlsSettings {
        client_cert_pem_path: None,
        client_key_pem_path: None,
        ..settings.clone()
    };
    let client = NomadClient::connect_tcp(&https(tls_config(anonymous)), SplitMix64::new(SEED))
        .expect("a TLS client");
    let error = client
        .list_jobs("7-", false)
        .await
        .expect_err("no client certificate");
    assert!(matches!(error, NomadError::Connection(_)), "{error:?}");

    // The server's certificate does not name 127.0.0.1: without Nomad's name it is refused.
    let by_address = TlsSettings {
        server_name: None,
        ..settings.clone()
    };
    let client = NomadClient::connect_tcp(&https(tls_config(by_address)), SplitMix64::new(SEED))
        .expect("a TLS client");
    let error = client.list_jobs("7-", false).await.expect_err("wrong name");
    assert!(matches!(error, NomadError::Connection(_)), "{error:?}");
    assert_eq!(fake.seen().len(), 1, "only the first client got through");

    // Half a client identity is a configuration error, not a silent downgrade.
    let half = TlsSettings {
        client_key_pem_path: None,
        ..settings
    };
    let error = NomadClient::connect_tcp(&https(tls_config(half)), SplitMix64::new(SEED))
        .expect_err("half an identity");
    assert!(matches!(error, NomadError::Config(_)), "{error:?}");
}
