//! Recovery of 10,000 runners, 1,000 of them claimed, from the fake Nomad of `trident-sim` over
//! real TCP: how many HTTP calls and how much wall time it takes to learn every runner, its
//! state and its claim — Trident's way and Poseidon's way, side by side in the same run, against
//! the same cluster. Calls are counted by the fake (`FakeNomad::requests`), not estimated.
//!
//! - **Trident**: a fresh `NomadExecutor` (whose follower task lists the allocations to seed its
//!   tracker and subscribes to the event stream) and its `inventory()`: one job list, one read
//!   of each environment's template job (the claim ledger is in its `config` group meta), one
//!   allocation list. O(environments) calls, here 5.
//! - **Poseidon** (`reference/poseidon.md` §6.4): list the template jobs and read each, list the
//!   allocations, list the environment's runner jobs, then per runner read the job (its own
//!   `config` group meta says `used` and `timeout`) and its allocations (the port mappings):
//!   2N + 4 calls. Once sequentially, as Poseidon's `loadEnvironment` does, and once with 8
//!   runners looked up at a time (the client's connection pool), the best case for that
//!   approach.
//!
//! The cluster is seeded in one write (`FakeNomad::seed_running_jobs`): every runner job is
//! Trident's own job JSON, with Poseidon's `used`/`timeout` meta set as well for the claimed
//! ones, so both readings find the same 1,000 claims.
//!
//! For scale, the table also times the two large lists alone (one allocation list with the port
//! mappings, one job list): they, not the number of calls, bound Trident's recovery.
//!
//! Run: `cargo bench -p trident-tests --bench recovery`. `RECOVERY_RUNNERS` (default 10000),
//! `RECOVERY_CLAIMED` (1000) and `RECOVERY_SAMPLES` (3) change the workload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::Value;
use trident_backends::Executor;
use trident_backends::nomad::client::{AllocationQuery, NomadClient, NomadConfig};
use trident_backends::nomad::connector::{MaybeTls, TcpConnector};
use trident_backends::nomad::exec::{ExecClient, ExecConfig, choose_allocation};
use trident_backends::nomad::executor::{NomadExecutor, NomadOptions};
use trident_backends::nomad::jobs::{self, JobSettings};
use trident_backends::nomad::retry::SplitMix64;
use trident_core::{
    ClaimMark, EnvironmentId, EnvironmentSpec, InventoryStatus, Lease, RunnerId, RunnerMark,
    Timestamp, Uuid,
};
use trident_sim::nomad::{FakeNomad, FakeNomadConfig};
use trident_tests::ServedNomad;

const ENVIRONMENT: EnvironmentId = EnvironmentId(29);
const IN_FLIGHT: usize = 8;
const STREAM: &str = "GET /v1/event/stream";

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// What one recovery found and what it cost.
#[derive(Debug)]
struct Outcome {
    calls: BTreeMap<String, u64>,
    elapsed: Duration,
    runners: usize,
    claimed: usize,
}

impl Outcome {
    fn total_calls(&self) -> u64 {
        self.calls.values().sum()
    }
}

fn main() {
    let runners = setting("RECOVERY_RUNNERS", 10_000);
    let claimed = setting("RECOVERY_CLAIMED", 1_000).min(runners);
    let samples = setting("RECOVERY_SAMPLES", 3).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(bench(runners, claimed, samples));
}

async fn bench(runners: usize, claimed: usize, samples: usize) {
    let served = seeded_fake(runners, claimed).await;
    let (nomad, address) = (&served.nomad, served.address.as_str());
    println!(
        "recovery of {runners} runners ({claimed} claimed) from the fake Nomad at {address}, \
         {samples} samples each"
    );
    let mut results: [(&str, Vec<Outcome>); 5] = [
        ("Trident (ledger in the template job)", Vec::new()),
        ("Poseidon (2N, sequential)", Vec::new()),
        ("Poseidon (2N, 8 runners at a time)", Vec::new()),
        ("for scale: one allocation list", Vec::new()),
        ("for scale: one job list", Vec::new()),
    ];
    for _ in 0..samples {
        // Interleaved, so that a machine that slows down meanwhile hits every approach.
        let trident = measure(nomad, trident_recovery(nomad, address)).await;
        results[0].1.push(trident);
        let sequential = measure(nomad, poseidon_recovery(address, 1)).await;
        results[1].1.push(sequential);
        let parallel = measure(nomad, poseidon_recovery(address, IN_FLIGHT)).await;
        results[2].1.push(parallel);
        let allocations = measure(nomad, allocation_list(address)).await;
        results[3].1.push(allocations);
        let jobs = measure(nomad, job_list(address)).await;
        results[4].1.push(jobs);
    }
    println!();
    println!("| approach | HTTP calls | wall time, median (min–max) |");
    println!("|---|---|---|");
    for (approach, outcomes) in &results {
        for outcome in outcomes {
            assert_eq!(outcome.runners, runners, "{approach} found every runner");
            if !approach.starts_with("for scale") {
                assert_eq!(outcome.claimed, claimed, "{approach} found every claim");
            }
            assert_eq!(
                outcome.calls, outcomes[0].calls,
                "{approach} makes the same calls every time"
            );
        }
        let mut times: Vec<Duration> = outcomes.iter().map(|outcome| outcome.elapsed).collect();
        times.sort();
        println!(
            "| {approach} | {} | {:.3} s ({:.3}–{:.3}) |",
            outcomes[0].total_calls(),
            times[times.len() / 2].as_secs_f64(),
            times[0].as_secs_f64(),
            times[times.len() - 1].as_secs_f64(),
        );
    }
    println!();
    for (approach, outcomes) in &results {
        println!("{approach}: {:?}", outcomes[0].calls);
    }
}

/// A fake Nomad holding one environment's template (with the claims in its ledger) and
/// `runners` running runner jobs, served on an ephemeral port.
async fn seeded_fake(runners: usize, claimed: usize) -> ServedNomad {
    // Served before it is seeded: nobody knows its address until this returns.
    let served = ServedNomad::start(FakeNomadConfig::default()).await;
    let settings = JobSettings::default();
    let spec = EnvironmentSpec {
        prewarming_pool_size: u32::try_from(runners - claimed).expect("a pool size"),
        cpu_limit: 20,
        memory_limit: 256,
        image: "openhpi/co_execenv_python:3.8".to_owned(),
        network_access: false,
        exposed_ports: Vec::new(),
    };
    let ids: Vec<RunnerId> = (0..runners)
        .map(|n| RunnerId::new(ENVIRONMENT, Uuid(0x1000_0000 + n as u128)))
        .collect();
    let mut ledger = BTreeMap::new();
    for (n, runner) in ids.iter().take(claimed).enumerate() {
        let mark = ClaimMark {
            lease: Lease(1_000 + n as u64),
            inactivity_timeout: Some(Duration::from_secs(60)),
        };
        ledger.insert(runner.uuid(), RunnerMark::Claimed(mark));
    }
    let mut seeded = vec![jobs::template_job(&settings, ENVIRONMENT, &spec, &ledger)];
    for (n, runner) in ids.iter().enumerate() {
        let mut job = jobs::runner_job(&settings, *runner, &spec, true);
        if n < claimed {
            // Poseidon's own record of the claim, in the runner job's `config` group.
            let groups = job["TaskGroups"].as_array_mut().expect("task groups");
            let config = groups
                .iter_mut()
                .find(|group| group["Name"] == jobs::CONFIG_GROUP)
                .expect("a config group");
            config["Meta"]["used"] = Value::from("true");
            config["Meta"]["timeout"] = Value::from("60");
        }
        seeded.push(job);
    }
    served
        .nomad
        .seed_running_jobs("default", &seeded)
        .expect("the jobs are valid");
    served
}

/// Runs one recovery and takes the requests the fake received meanwhile.
async fn measure(
    nomad: &FakeNomad,
    recovery: impl Future<Output = (usize, usize, Duration)>,
) -> Outcome {
    let before = nomad.requests();
    let (runners, claimed, elapsed) = recovery.await;
    let mut calls = nomad.requests();
    for (route, count) in &before {
        if let Some(after) = calls.get_mut(route) {
            *after -= count;
        }
    }
    calls.retain(|_, count| *count > 0);
    Outcome {
        calls,
        elapsed,
        runners,
        claimed,
    }
}

fn client(address: &str, seed: u64) -> NomadClient<MaybeTls<TcpConnector>> {
    NomadClient::connect_tcp(&NomadConfig::new(address), SplitMix64::new(seed)).expect("a client")
}

/// Trident: a fresh executor until its inventory is in and its follower streams events.
async fn trident_recovery(nomad: &FakeNomad, address: &str) -> (usize, usize, Duration) {
    let subscriptions = nomad.request_count(STREAM);
    let started = Instant::now();
    let config = NomadConfig::new(address);
    let exec = ExecClient::connect_tcp(&config, ExecConfig::default(), SplitMix64::new(2))
        .expect("an exec client");
    let executor = Arc::new(NomadExecutor::new(
        client(address, 1),
        exec,
        NomadOptions::default(),
    ));
    let mut observations = executor.take_observations().expect("the observations");
    let inventory = executor
        .inventory(Timestamp::ZERO)
        .await
        .expect("an inventory");
    // The follower has seeded its tracker when it reports the running runners it found.
    let mut seen = 0;
    while seen < inventory.runners.len() {
        observations.recv().await.expect("the follower reports");
        seen += 1;
    }
    while nomad.request_count(STREAM) == subscriptions {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let running = inventory
        .runners
        .iter()
        .filter(|runner| matches!(runner.status, InventoryStatus::Running(_)))
        .count();
    let claimed = inventory
        .runners
        .iter()
        .filter(|runner| matches!(runner.mark, RunnerMark::Claimed(_)))
        .count();
    drop(executor);
    (running, claimed, elapsed)
}

/// One `GET /v1/allocations` as Trident asks for it (port mappings, no task states): the
/// largest answer of a recovery.
async fn allocation_list(address: &str) -> (usize, usize, Duration) {
    let started = Instant::now();
    let query = AllocationQuery {
        resources: true,
        omit_task_states: true,
        ..AllocationQuery::default()
    };
    let listed = client(address, 4)
        .list_allocations(&query)
        .await
        .expect("allocations");
    let runners = listed
        .value
        .iter()
        .filter(|allocation| allocation.job_id.parse::<RunnerId>().is_ok())
        .count();
    (runners, 0, started.elapsed())
}

/// One `GET /v1/jobs` of the whole namespace.
async fn job_list(address: &str) -> (usize, usize, Duration) {
    let started = Instant::now();
    let listed = client(address, 5).list_jobs("", false).await.expect("jobs");
    let runners = listed
        .value
        .iter()
        .filter(|job| job.id.parse::<RunnerId>().is_ok())
        .count();
    (runners, 0, started.elapsed())
}

/// Poseidon's `KeepEnvironmentsSynced` and `loadEnvironment` (§6.4), with `in_flight` runner
/// lookups at a time.
async fn poseidon_recovery(address: &str, in_flight: usize) -> (usize, usize, Duration) {
    let started = Instant::now();
    let client = client(address, 3);
    let templates = client
        .list_jobs(jobs::TEMPLATE_PREFIX, false)
        .await
        .expect("templates");
    let mut environments = Vec::new();
    for stub in &templates.value {
        let job = client
            .read_job(&stub.id)
            .await
            .expect("a template")
            .expect("it exists");
        environments.push(jobs::parse_template(&job.value).expect("a template job").0);
    }
    // Poseidon bootstraps its allocation tracking from the full list first (commit 8950ce2).
    let _ = client
        .list_allocations(&Default::default())
        .await
        .expect("allocations");
    let mut running = 0;
    let mut claimed = 0;
    for environment in environments {
        let stubs = client
            .list_jobs(&format!("{environment}-"), false)
            .await
            .expect("runner jobs");
        let lookups = futures_util::stream::iter(stubs.value.iter().map(|stub| {
            let client = client.clone();
            let id = stub.id.clone();
            async move {
                let job = client
                    .read_job(&id)
                    .await
                    .expect("a job")
                    .expect("it exists")
                    .value;
                let used = job["TaskGroups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|group| group["Name"] == jobs::CONFIG_GROUP)
                    .is_some_and(|group| group["Meta"]["used"] == "true");
                let allocations = client
                    .job_allocations(&id, false)
                    .await
                    .expect("allocations")
                    .value;
                (used, choose_allocation(&allocations).is_some())
            }
        }))
        .buffer_unordered(in_flight)
        .collect::<Vec<_>>()
        .await;
        for (used, up) in lookups {
            running += usize::from(up);
            claimed += usize::from(used);
        }
    }
    (running, claimed, started.elapsed())
}
