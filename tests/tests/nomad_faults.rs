//! One test per fault knob of the fake Nomad (`sim/src/nomad/faults.rs`, the rows of
//! `reference/nomad-api.md` §10 it models): the real `trident` binary with `--backend nomad`
//! drives the fake over real TCP, the fault is injected while pools fill or runners are claimed,
//! and the outcome is asserted at Trident's API — pools refill, claims are never handed out
//! twice, executions and file operations end the way the fault demands. Where the outcome is
//! "how often" (back-off, bounded retries), the fake's request counters say it; nothing is
//! guessed. The fake runs with short scheduler and client delays, so each test takes seconds.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trident_sim::nomad::{FakeNomad, FakeNomadConfig, Fault};
use trident_tests::{ServedNomad, Server};

const STREAM: &str = "GET /v1/event/stream";
const REGISTER: &str = "PUT /v1/jobs";
const PURGE: &str = "DELETE /v1/job/:id";
const READ_JOB: &str = "GET /v1/job/:id";
const JOB_ALLOCATIONS: &str = "GET /v1/job/:id/allocations";
const JOB_EVALUATIONS: &str = "GET /v1/job/:id/evaluations";
/// The environment every test uses.
const ENV: u64 = 1;

/// Scheduler and client delays of a few hundred milliseconds, so that a runner is up within a
/// second of its registration.
fn fast() -> FakeNomadConfig {
    FakeNomadConfig {
        schedule_delay: Duration::from_millis(10),
        client_pickup_delay: Duration::from_millis(50),
        task_start_delay: Duration::from_millis(150),
        client_stop_delay: Duration::from_millis(50),
        restart_delay: Duration::from_millis(300),
        ..FakeNomadConfig::default()
    }
}

/// The fake Nomad on an ephemeral port and a `trident --backend nomad` in front of it.
struct Cluster {
    nomad: FakeNomad,
    address: String,
    server: Server,
    /// Serves `nomad` until the cluster is dropped.
    _served: ServedNomad,
}

impl Cluster {
    async fn start(config: FakeNomadConfig, extra: &[&str]) -> Cluster {
        Cluster::attach(ServedNomad::start(config).await, extra).await
    }

    /// A `trident --backend nomad` in front of a fake that may already hold jobs.
    async fn attach(served: ServedNomad, extra: &[&str]) -> Cluster {
        let mut args = vec![
            "--backend",
            "nomad",
            "--nomad-address",
            served.address.as_str(),
        ];
        args.extend_from_slice(extra);
        let server = Server::start(&args).await;
        Cluster {
            nomad: served.nomad.clone(),
            address: served.address.clone(),
            server,
            _served: served,
        }
    }

    fn inject(&self, fault: Fault) {
        self.nomad.inject(fault).expect("the fault applies");
    }

    fn count(&self, route: &str) -> u64 {
        self.nomad.request_count(route)
    }

    async fn nomad_get(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.address))
            .await
            .expect("the fake answers")
            .json()
            .await
            .expect("JSON")
    }

    /// The runner jobs of the environment that Nomad holds and that are not stopped.
    async fn runner_jobs(&self) -> BTreeSet<String> {
        let jobs = self.nomad_get(&format!("/v1/jobs?prefix={ENV}-")).await;
        jobs.as_array()
            .into_iter()
            .flatten()
            .filter(|job| job["Stop"] != true)
            .filter_map(|job| job["ID"].as_str().map(str::to_owned))
            .collect()
    }

    /// `(allocation, job)` of every allocation that runs and should.
    async fn running(&self) -> Vec<(String, String)> {
        let allocations = self.nomad_get("/v1/allocations").await;
        allocations
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["ClientStatus"] == "running" && a["DesiredStatus"] == "run")
            .filter_map(|a| {
                Some((
                    a["ID"].as_str()?.to_owned(),
                    a["JobID"].as_str()?.to_owned(),
                ))
            })
            .collect()
    }

    /// The allocation that runs `runner` right now.
    async fn running_allocation(&self, runner: &str) -> String {
        let running = self.running().await;
        let mut of_runner = running
            .iter()
            .filter(|(_, job)| job == runner)
            .map(|(allocation, _)| allocation.clone());
        let allocation = of_runner
            .next()
            .unwrap_or_else(|| panic!("no running allocation of {runner}: {running:?}"));
        assert!(of_runner.next().is_none(), "one running allocation");
        allocation
    }

    /// How many runner jobs of the environment have a running allocation.
    async fn running_runners(&self) -> usize {
        let prefix = format!("{ENV}-");
        self.running()
            .await
            .iter()
            .filter(|(_, job)| job.starts_with(&prefix))
            .count()
    }

    async fn pool(&self) -> (u64, u64) {
        let stats = self.server.statistics().await;
        let environment = &stats[ENV.to_string()];
        (
            environment["idleRunners"].as_u64().unwrap_or(0),
            environment["usedRunners"].as_u64().unwrap_or(0),
        )
    }

    /// Waits until the statistics show `idle` idle and `used` claimed runners.
    async fn wait_pool(&self, idle: u64, used: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let pool = self.pool().await;
            if pool == (idle, used) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the pool stayed at (idle, used) = {pool:?}, not ({idle}, {used})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `DELETE /runners/<id>`: 204 releases a held runner, 410 says it is not held.
    async fn release(&self, runner: &str) -> u16 {
        self.server
            .client
            .delete(self.server.url(&format!("/runners/{runner}")))
            .send()
            .await
            .expect("delete")
            .status()
            .as_u16()
    }

    /// `PATCH /runners/<id>/files` with one file: the status and the body.
    async fn copy(&self, runner: &str, path: &str, content: &[u8]) -> (u16, Value) {
        use base64::Engine;
        let content = base64::engine::general_purpose::STANDARD.encode(content);
        let response = self
            .server
            .client
            .patch(self.server.url(&format!("/runners/{runner}/files")))
            .json(&json!({"copy": [{"path": path, "content": content}]}))
            .send()
            .await
            .expect("patch");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn download(&self, runner: &str, path: &str) -> (u16, Vec<u8>) {
        let response = self
            .server
            .client
            .get(
                self.server
                    .url(&format!("/runners/{runner}/files/raw?path={path}")),
            )
            .send()
            .await
            .expect("download");
        let status = response.status().as_u16();
        (status, response.bytes().await.expect("a body").to_vec())
    }

    /// Runs `command` on `runner` and returns its conversation.
    async fn run(&self, runner: &str, command: &str) -> trident_tests::Conversation {
        self.server
            .run(runner, json!({ "command": command }), None)
            .await
    }

    /// Waits until the claim of `runner` is in its environment's ledger (so that no ledger
    /// write is in flight when a test starts counting requests).
    async fn wait_ledger(&self, runner: &str) {
        let uuid = runner.split_once('-').expect("<env>-<uuid>").1;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let template = self.nomad_get(&format!("/v1/job/template-{ENV}")).await;
            let marked = template["TaskGroups"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|group| group["Meta"][format!("claim.{uuid}")].is_string());
            if marked {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the claim never reached the ledger"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn exit_code(run: &trident_tests::Conversation) -> Option<i64> {
    let last = run.last_control();
    (last["type"] == "exit")
        .then(|| last["data"].as_i64())
        .flatten()
}

/// §10 row 1: the event stream breaks twice while runners are claimed and the pool refills;
/// every Up of the refill happens while the stream is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_drops_during_claims_neither_stop_the_refill_nor_hand_out_a_runner_twice() {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.server.environment(ENV, 2, 128).await;
    let first = cluster.server.claim(ENV, 0).await;
    cluster.inject(Fault::DisconnectEventStreams);
    wait_until("the stream reconnects", Duration::from_secs(5), || {
        cluster.count(STREAM) >= 2
    })
    .await;
    let second = cluster.server.claim(ENV, 0).await;
    cluster.inject(Fault::DisconnectEventStreams);

    // The refill's registrations and Ups reach Trident through the resumed stream.
    cluster.wait_pool(2, 2, Duration::from_secs(10)).await;
    let third = cluster.server.claim(ENV, 0).await;
    let fourth = cluster.server.claim(ENV, 0).await;
    let claimed = BTreeSet::from([&first, &second, &third, &fourth]);
    assert_eq!(
        claimed.len(),
        4,
        "a runner was handed out twice: {claimed:?}"
    );
    let streams = cluster.count(STREAM);
    assert!((3..=6).contains(&streams), "{streams} subscriptions");
}

/// §10 row 2: the stream stays open and silent (half-open TCP); after the heartbeat timeout
/// Trident drops it and subscribes again, at a bounded rate, and the pool refills once Nomad
/// talks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_is_reopened_after_the_heartbeat_timeout() {
    let config = FakeNomadConfig {
        heartbeat_interval: Duration::from_millis(500),
        ..fast()
    };
    let cluster = Cluster::start(config, &["--nomad-heartbeat-timeout-s", "2"]).await;
    cluster.server.environment(ENV, 1, 128).await;
    let before = cluster.count(STREAM);
    cluster.inject(Fault::StallEventStreams(true));
    cluster.server.claim(ENV, 0).await;
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let reopened = cluster.count(STREAM) - before;
    assert!(
        (1..=4).contains(&reopened),
        "{reopened} subscriptions in 5.5 s of silence with a 2 s timeout"
    );
    // Nothing came through meanwhile: the refilled runner is not known to be up.
    assert_eq!(cluster.pool().await, (0, 1));
    cluster.inject(Fault::StallEventStreams(false));
    cluster.wait_pool(1, 1, Duration::from_secs(10)).await;
}

/// §10 rows 3 and 26: while the stream is stalled, claims and the refill go on, then Nomad's
/// buffer forgets those frames. The resumed stream starts after a gap: Trident re-lists,
/// brings the refilled runners up, and never hands out the two claimed before the resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_stream_resyncs_the_pool_without_handing_out_claims_again() {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.server.environment(ENV, 2, 128).await;
    cluster.inject(Fault::StallEventStreams(true));
    let first = cluster.server.claim(ENV, 0).await;
    let second = cluster.server.claim(ENV, 0).await;
    // The refill registers (its evaluations answered by polling) and runs in Nomad.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.running_runners().await != 4 {
        assert!(Instant::now() < deadline, "the refill never ran in Nomad");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.inject(Fault::EvictEventBuffer { keep: 1 });
    cluster.inject(Fault::StallEventStreams(false));

    cluster.wait_pool(2, 2, Duration::from_secs(10)).await;
    let third = cluster.server.claim(ENV, 0).await;
    let fourth = cluster.server.claim(ENV, 0).await;
    let claimed = BTreeSet::from([&first, &second, &third, &fourth]);
    assert_eq!(
        claimed.len(),
        4,
        "a runner was handed out twice: {claimed:?}"
    );
}

/// §10 row 5: every client update comes twice. No runner is restarted, stopped or started
/// more than the pool needs, and a claimed runner keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_allocation_updates_change_nothing() {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.inject(Fault::DuplicateAllocUpdates(true));
    cluster.server.environment(ENV, 2, 128).await;
    let held = cluster.server.claim(ENV, 0).await;
    let run = cluster.run(&held, "echo one").await;
    assert_eq!(exit_code(&run), Some(0), "{run:?}");
    cluster.wait_pool(2, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cluster.pool().await, (2, 1));
    assert_eq!(cluster.runner_jobs().await.len(), 3);
    assert_eq!(cluster.count(PURGE), 0, "nothing was stopped");
    let again = cluster.run(&held, "echo two").await;
    assert_eq!(again.text("stdout").trim(), "two", "{again:?}");
    assert_eq!(exit_code(&again), Some(0), "{again:?}");
}

/// §10 row 6: the client's `pending` update never comes; runners go from placed to running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_come_up_without_their_pending_update() {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.inject(Fault::SkipPendingUpdate(true));
    cluster.server.environment(ENV, 3, 128).await;
    let held = cluster.server.claim(ENV, 0).await;
    let run = cluster.run(&held, "echo up").await;
    assert_eq!(run.text("stdout").trim(), "up", "{run:?}");
    assert_eq!(exit_code(&run), Some(0), "{run:?}");
    cluster.wait_pool(3, 1, Duration::from_secs(10)).await;
}

/// §10 row 7: after every client update the stream re-delivers the allocation's previous
/// version (`pending/run` after `running/run`, `running/stop` after `complete/stop`). Stale
/// versions neither restart idle runners nor take a claimed one away, and a release stays a
/// release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_allocation_replays_take_nothing_back() {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.inject(Fault::StaleAllocReplay(true));
    cluster.server.environment(ENV, 2, 128).await;
    let held = cluster.server.claim(ENV, 0).await;
    cluster.wait_pool(2, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cluster.pool().await, (2, 1));
    let run = cluster.run(&held, "echo still").await;
    assert_eq!(run.text("stdout").trim(), "still", "{run:?}");
    assert_eq!(cluster.count(PURGE), 0, "nothing was stopped");
    assert_eq!(cluster.runner_jobs().await.len(), 3);

    assert_eq!(cluster.release(&held).await, 204);
    wait_until(
        "the released runner is purged",
        Duration::from_secs(5),
        || cluster.count(PURGE) == 1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cluster.pool().await, (2, 0));
    let jobs = cluster.runner_jobs().await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(!jobs.contains(&held), "{jobs:?}");
}

/// §10 row 8: the node of two runners goes down; Nomad replaces their allocations under new
/// ids. Both runners come back as themselves (no new runner job), the pool refills, and the
/// claimed one loses its claim (its container is gone). Which of the two then stays in the
/// pool and which is stopped as surplus is the manager's choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_allocations_are_replaced_and_the_pool_refills() {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.server.environment(ENV, 2, 128).await;
    let held = cluster.server.claim(ENV, 0).await;
    cluster.wait_pool(2, 1, Duration::from_secs(10)).await;
    let jobs_before = cluster.runner_jobs().await;
    assert_eq!(jobs_before.len(), 3);
    let idle = jobs_before
        .iter()
        .find(|job| **job != held)
        .expect("an idle runner")
        .clone();
    let mut lost = BTreeSet::new();
    for runner in [&idle, &held] {
        let allocation = cluster.running_allocation(runner).await;
        lost.insert(allocation.clone());
        cluster.inject(Fault::LoseAllocation {
            alloc_id: allocation,
        });
    }

    cluster.wait_pool(2, 0, Duration::from_secs(10)).await;
    assert_eq!(cluster.release(&held).await, 410, "the claim ended");
    let jobs_after = cluster.runner_jobs().await;
    assert!(
        jobs_after.is_subset(&jobs_before) && jobs_after.len() == 2,
        "lost runners were replaced by new jobs: {jobs_before:?} → {jobs_after:?}"
    );
    let comeback: Vec<&String> = jobs_after
        .iter()
        .filter(|job| **job == idle || **job == held)
        .collect();
    assert!(!comeback.is_empty(), "{jobs_after:?}");
    for runner in comeback {
        let allocation = cluster.running_allocation(runner).await;
        assert!(!lost.contains(&allocation), "{runner} runs its replacement");
    }
}

/// §10 row 11: images cannot be pulled; every runner fails before it runs. Trident backs the
/// environment off exponentially instead of restarting in a hot loop, purges each failed
/// runner, and fills the pool once images pull again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_pull_failure_backs_off_and_recovers() {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.inject(Fault::ImagePullFailure(true));
    let created = cluster
        .server
        .client
        .put(
            cluster
                .server
                .url(&format!("/execution-environments/{ENV}")),
        )
        .json(&json!({
            "prewarmingPoolSize": 1, "cpuLimit": 100, "memoryLimit": 128,
            "image": "registry.invalid/missing:1", "networkAccess": false, "exposedPorts": null
        }))
        .send()
        .await
        .expect("put");
    assert_eq!(created.status(), 201);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // One registration is the template's; no claims, so no ledger writes.
    let starts = cluster.count(REGISTER) - 1;
    let purges = cluster.count(PURGE);
    assert!(
        (2..=5).contains(&starts),
        "{starts} runner starts in 5 s (back-off 1 s, 2 s, 4 s)"
    );
    assert!(
        purges + 1 >= starts,
        "{purges} purges for {starts} failed starts"
    );
    assert_eq!(cluster.pool().await, (0, 0));

    cluster.inject(Fault::ImagePullFailure(false));
    cluster.wait_pool(1, 0, Duration::from_secs(15)).await;
}

/// §10 row 10: containers are OOM-killed. A running execution ends at once (exit 137 or
/// Poseidon's OOM message), the claim ends, and runners restart in place: no new runner job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kills_end_the_claim_and_restart_runners_in_place() {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.server.environment(ENV, 1, 128).await;
    let held = cluster.server.claim(ENV, 0).await;
    cluster.wait_pool(1, 1, Duration::from_secs(10)).await;
    let jobs_before = cluster.runner_jobs().await;
    assert_eq!(jobs_before.len(), 2);

    let execution = {
        let url = cluster
            .server
            .execute_url(&held, json!({"command": "sleep 30"}))
            .await;
        tokio::spawn(async move { conversation(&url).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.inject(Fault::OomKill {
        alloc_id: cluster.running_allocation(&held).await,
    });
    let (messages, elapsed) = tokio::time::timeout(Duration::from_secs(10), execution)
        .await
        .expect("the execution ended")
        .expect("the conversation task");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    let last = messages
        .iter()
        .rev()
        .find(|message| !matches!(message["type"].as_str(), Some("stdout" | "stderr")))
        .cloned()
        .unwrap_or(Value::Null);
    assert!(
        last == json!({"type": "exit", "data": 137})
            || last == json!({"type": "error", "data": "the allocation was OOM Killed"}),
        "{messages:?}"
    );
    cluster.wait_pool(1, 0, Duration::from_secs(5)).await;
    assert_eq!(cluster.release(&held).await, 410, "the claim ended");

    let idle = jobs_before
        .iter()
        .find(|job| **job != held)
        .expect("the idle runner")
        .clone();
    cluster.inject(Fault::OomKill {
        alloc_id: cluster.running_allocation(&idle).await,
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cluster.wait_pool(1, 0, Duration::from_secs(5)).await;
    let jobs_after = cluster.runner_jobs().await;
    assert!(
        jobs_after.is_subset(&jobs_before),
        "an OOM-killed runner was replaced by a new job: {jobs_before:?} → {jobs_after:?}"
    );
}

/// Reads an execution's WebSocket to its end: the JSON messages and how long it took.
async fn conversation(url: &str) -> (Vec<Value>, Duration) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let started = Instant::now();
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the WebSocket connects");
    let mut messages = Vec::new();
    while let Some(Ok(message)) = socket.next().await {
        match message {
            Message::Text(text) => messages.push(serde_json::from_str(&text).expect("JSON")),
            Message::Close(_) => break,
            _ => {}
        }
    }
    (messages, started.elapsed())
}

/// §10 row 12: the cluster is full; evaluations complete with `FailedTGAllocs`. A start is a
/// failure (never success by default), backed off and purged; claims beyond the pool get
/// Poseidon's overload error; the pool fills once there is room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_failure_fails_the_start_backs_off_and_recovers() {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.server.environment(ENV, 1, 128).await;
    cluster.inject(Fault::PlacementFailure(true));
    let held = cluster.server.claim(ENV, 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let purges = cluster.count(PURGE);
    assert!(
        (2..=5).contains(&purges),
        "{purges} failed starts purged in 5 s (back-off 1 s, 2 s, 4 s)"
    );
    assert_eq!(cluster.pool().await, (0, 1));
    let jobs = cluster.runner_jobs().await;
    assert!(
        jobs.len() <= 2 && jobs.contains(&held),
        "unplaced runners are not left behind: {jobs:?}"
    );
    let overloaded = cluster
        .server
        .client
        .post(cluster.server.url("/runners"))
        .json(&json!({"executionEnvironmentId": ENV, "inactivityTimeout": 0}))
        .send()
        .await
        .expect("claim");
    assert_eq!(overloaded.status(), 500);
    let body: Value = overloaded.json().await.expect("JSON");
    assert_eq!(body["errorCode"], "NOMAD_OVERLOAD", "{body}");

    cluster.inject(Fault::PlacementFailure(false));
    cluster.wait_pool(1, 1, Duration::from_secs(15)).await;
}

/// §10 row 12 across a restart: a Trident registered a runner and died before the evaluation
/// failed to place it (the simulation's seeds 51 and 128). The next Trident finds the job with no
/// allocation and a blocked evaluation, purges it at once and fills the pool, where it used to
/// adopt it as starting and wait for it until the start timeout (600 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_left_unplaced_by_a_dead_trident_is_purged_by_the_next_one() {
    use trident_backends::nomad::jobs::{self, JobSettings};
    use trident_core::{EnvironmentId, EnvironmentSpec, RunnerId};

    let served = ServedNomad::start(fast()).await;
    let spec = EnvironmentSpec {
        prewarming_pool_size: 1,
        cpu_limit: 100,
        memory_limit: 128,
        image: "host".into(),
        network_access: false,
        exposed_ports: vec![],
    };
    let settings = JobSettings::default();
    let template = jobs::template_job(
        &settings,
        EnvironmentId(ENV),
        &spec,
        &std::collections::BTreeMap::new(),
    );
    served
        .nomad
        .register_job("default", &json!({ "Job": template }))
        .expect("the template registers");
    // What the dead Trident left: its runner's registration, placed while the cluster was full.
    let unplaced: RunnerId = format!("{ENV}-0b7e41f2-8c3d-11ef-9d2a-0242ac120002")
        .parse()
        .expect("a runner id");
    served
        .nomad
        .inject(Fault::PlacementFailure(true))
        .expect("the fault applies");
    let registered = served
        .nomad
        .register_job(
            "default",
            &json!({ "Job": jobs::runner_job(&settings, unplaced, &spec, true) }),
        )
        .expect("the runner registers");
    let evaluation = registered["EvalID"]
        .as_str()
        .expect("an evaluation")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: Value = reqwest::get(format!("{}/v1/evaluation/{evaluation}", served.address))
            .await
            .expect("the fake answers")
            .json()
            .await
            .expect("JSON");
        if found["Status"] == "complete" {
            assert!(
                found["BlockedEval"].is_string(),
                "placement failed: {found}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the evaluation never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Room again; the blocked evaluation stays blocked (the fake never re-runs it).
    served
        .nomad
        .inject(Fault::PlacementFailure(false))
        .expect("the fault clears");

    let cluster = Cluster::attach(served, &[]).await;
    cluster.wait_pool(1, 0, Duration::from_secs(15)).await;
    let jobs = cluster.runner_jobs().await;
    assert!(
        !jobs.contains(&unplaced.to_string()),
        "the unplaced runner was purged: {jobs:?}"
    );
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        cluster.count(JOB_EVALUATIONS),
        1,
        "the recovery read evaluations of the one job without an allocation, and of no other"
    );
}

/// §10 row 25: an operator purges two runner jobs and Nomad reports only `JobDeregistered`,
/// no allocation events. The idle runner is replaced, the claimed one's claim ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_deregistered_without_allocation_events_are_noticed() {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.server.environment(ENV, 2, 128).await;
    let held = cluster.server.claim(ENV, 0).await;
    cluster.wait_pool(2, 1, Duration::from_secs(10)).await;
    cluster.inject(Fault::DeregisterWithoutAllocEvents(true));
    let idle = cluster
        .runner_jobs()
        .await
        .into_iter()
        .find(|job| *job != held)
        .expect("an idle runner");
    cluster.nomad.deregister_job("default", &idle, true);
    cluster.nomad.deregister_job("default", &held, true);

    cluster.wait_pool(2, 0, Duration::from_secs(10)).await;
    assert_eq!(cluster.release(&held).await, 410, "the claim ended");
    let jobs = cluster.runner_jobs().await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(!jobs.contains(&idle) && !jobs.contains(&held), "{jobs:?}");
}

/// §10 rows 16 and 17 for one status: a short burst is ridden out by the client's retries; a
/// long one fails the request with a clear error after a bounded number of attempts; then the
/// same request works again.
async fn transient_errors_are_retried_a_bounded_number_of_times(status: u16, text: &str) {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.server.environment(ENV, 1, 128).await;
    let held = cluster.server.claim(ENV, 0).await;
    cluster.wait_ledger(&held).await;
    let reads = |cluster: &Cluster| cluster.count(READ_JOB) + cluster.count(JOB_ALLOCATIONS);

    // A burst of three: the two lookups of the copy retry past it.
    let before = reads(&cluster);
    cluster.inject(Fault::HttpErrors { status, count: 3 });
    assert_eq!(cluster.copy(&held, "a.txt", b"first").await.0, 204);
    assert_eq!(
        reads(&cluster) - before,
        5,
        "two lookups, three of their attempts refused"
    );

    // An outage: each lookup gives up after its attempts, and the API says why.
    let before = (cluster.count(READ_JOB), cluster.count(JOB_ALLOCATIONS));
    cluster.inject(Fault::HttpErrors {
        status,
        count: 1_000,
    });
    let (code, body) = cluster.copy(&held, "b.txt", b"second").await;
    assert_eq!(code, 500, "{body}");
    assert_eq!(body["errorCode"], "NOMAD_INTERNAL_SERVER_ERROR", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&status.to_string()) && message.contains(text),
        "{body}"
    );
    assert_eq!(
        (
            cluster.count(READ_JOB) - before.0,
            cluster.count(JOB_ALLOCATIONS) - before.1
        ),
        (4, 4),
        "four attempts per lookup"
    );

    cluster.inject(Fault::HttpErrors { status, count: 0 });
    assert_eq!(cluster.copy(&held, "b.txt", b"second").await.0, 204);
    assert_eq!(
        cluster.download(&held, "b.txt").await,
        (200, b"second".to_vec())
    );
}

/// §10 row 16: Nomad's connection limiter answers 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_answers_are_retried_a_bounded_number_of_times() {
    transient_errors_are_retried_a_bounded_number_of_times(429, "too many concurrent connections")
        .await;
}

/// §10 row 17: a leader election answers 500 `No cluster leader`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    transient_errors_are_retried_a_bounded_number_of_times(500, "No cluster leader").await;
}

/// §10 row 18: the token is revoked. Requests fail at once with Nomad's reason, without
/// retries, and work again when the token is valid again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_fails_requests_at_once_without_retrying() {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.server.environment(ENV, 1, 128).await;
    let held = cluster.server.claim(ENV, 0).await;
    cluster.wait_ledger(&held).await;
    let before = (cluster.count(READ_JOB), cluster.count(JOB_ALLOCATIONS));
    cluster.inject(Fault::HttpErrors {
        status: 403,
        count: 1_000,
    });
    let (code, body) = cluster.copy(&held, "a.txt", b"denied").await;
    assert_eq!(code, 500, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|message| message.contains("Permission denied")),
        "{body}"
    );
    assert_eq!(
        (
            cluster.count(READ_JOB) - before.0,
            cluster.count(JOB_ALLOCATIONS) - before.1
        ),
        (1, 1),
        "one attempt per lookup"
    );
    cluster.inject(Fault::HttpErrors {
        status: 403,
        count: 0,
    });
    assert_eq!(cluster.copy(&held, "a.txt", b"allowed").await.0, 204);
}

/// §10 row 20: exec sessions stay silent for seconds before their command starts. The time
/// limit still ends an execution on time, and a slow session without one completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_exec_sessions_are_bounded_by_the_time_limit() {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.server.environment(ENV, 2, 128).await;
    let held = cluster.server.claim(ENV, 0).await;

    cluster.inject(Fault::ExecDelay(Duration::from_secs(10)));
    let limited = cluster
        .server
        .run(&held, json!({"command": "echo late", "timeLimit": 1}), None)
        .await;
    assert_eq!(limited.last_control()["type"], "timeout", "{limited:?}");
    assert_eq!(limited.text("stdout"), "", "{limited:?}");
    // One second of limit and Poseidon's 3 s grace after the interrupt, not the 10 s delay.
    assert!(limited.elapsed < Duration::from_secs(8), "{limited:?}");
    // The interrupt could not reach a session that had not started its command, and closing
    // the session does not end a command on Nomad: the runner was stopped instead.
    wait_runner_stopped(&cluster, &held).await;

    cluster.inject(Fault::ExecDelay(Duration::from_millis(800)));
    let held = cluster.server.claim(ENV, 0).await;
    let slow = cluster.run(&held, "echo slow").await;
    assert_eq!(slow.text("stdout").trim(), "slow", "{slow:?}");
    assert_eq!(exit_code(&slow), Some(0), "{slow:?}");
    assert!(slow.elapsed >= Duration::from_millis(800), "{slow:?}");
}

/// Waits until `runner` is no longer held (410) and its job is gone from Nomad.
async fn wait_runner_stopped(cluster: &Cluster, runner: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A listing: a probe that wrote would change the runner while it is still held.
        let held = cluster
            .server
            .client
            .get(
                cluster
                    .server
                    .url(&format!("/runners/{runner}/files?path=./")),
            )
            .send()
            .await
            .expect("list")
            .status()
            != 410;
        if !held && !cluster.runner_jobs().await.contains(runner) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{runner} is still held ({held}) or its job still runs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Poseidon's SIGQUIT-then-destroy (`poseidon.md` §2.3): closing Nomad's exec session does not
/// end its command (`nomad-api.md` §7.5), so a command that ignores the interrupt sent at its
/// time limit (`trap '' QUIT`) is ended by stopping its runner, and the pool refills. A
/// command that obeys the interrupt keeps its runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_ignores_the_interrupt_is_ended_by_stopping_its_runner() {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.server.environment(ENV, 2, 128).await;
    let held = cluster.server.claim(ENV, 0).await;
    let allocation = cluster.running_allocation(&held).await;

    let obeys = cluster
        .server
        .run(&held, json!({"command": "sleep 100", "timeLimit": 1}), None)
        .await;
    assert_eq!(obeys.last_control()["type"], "timeout", "{obeys:?}");
    assert_eq!(cluster.copy(&held, "kept.txt", b"kept").await.0, 204);
    assert_eq!(cluster.nomad.processes_outliving(&allocation), 0);

    let ignores = cluster
        .server
        .run(
            &held,
            json!({"command": "trap '' QUIT; sleep 100", "timeLimit": 1}),
            None,
        )
        .await;
    assert_eq!(ignores.last_control()["type"], "timeout", "{ignores:?}");
    // The close follows the interrupt's 3 s grace.
    assert!(ignores.elapsed < Duration::from_secs(8), "{ignores:?}");
    wait_runner_stopped(&cluster, &held).await;
    let nomad = cluster.nomad.clone();
    wait_until(
        "the ignoring command still runs in the stopped allocation",
        Duration::from_secs(5),
        move || nomad.processes_outliving(&allocation) == 0,
    )
    .await;
    cluster.wait_pool(2, 0, Duration::from_secs(10)).await;
}

/// §10 row 21: exec sessions end by a dropped connection, without the exit frame. Nobody saw
/// the command finish: a file copy or a listing is not reported done, and an interactive
/// execution delivers its output and then Poseidon's error message, not Poseidon's exit 0 (an
/// exit code the command may never have produced). Since the command may still run (Nomad does
/// not end it with the session), its runner is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sessions_without_an_exit_frame_confirm_nothing_and_cost_the_runner() {
    let cluster = Cluster::start(fast(), &[]).await;
    cluster.server.environment(ENV, 2, 128).await;
    let held = cluster.server.claim(ENV, 0).await;
    cluster.inject(Fault::ExecDropBeforeExit(true));

    let (code, body) = cluster.copy(&held, "a.txt", b"unconfirmed").await;
    assert_eq!(code, 500, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|message| message.contains("without an exit code")),
        "{body}"
    );
    let listing = cluster
        .server
        .client
        .get(
            cluster
                .server
                .url(&format!("/runners/{held}/files?path=./")),
        )
        .send()
        .await
        .expect("list");
    assert_eq!(listing.status(), 500);

    let run = cluster.run(&held, "echo dropped").await;
    assert_eq!(run.text("stdout").trim(), "dropped", "{run:?}");
    assert_eq!(exit_code(&run), None, "{run:?}");
    assert_eq!(run.last_control()["type"], "error", "{run:?}");
    wait_runner_stopped(&cluster, &held).await;

    cluster.inject(Fault::ExecDropBeforeExit(false));
    let fresh = cluster.server.claim(ENV, 0).await;
    assert_eq!(cluster.copy(&fresh, "a.txt", b"confirmed").await.0, 204);
    assert_eq!(
        cluster.download(&fresh, "a.txt").await,
        (200, b"confirmed".to_vec())
    );
}
