//! The production code path on a laptop: the real `trident` binary with `--backend nomad`,
//! driving the fake Nomad of `trident-sim` over real TCP.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use trident_sim::nomad::FakeNomadConfig;
use trident_tests::{ServedNomad, Server};

async fn nomad_get(address: &str, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{address}{path}"))
        .await
        .expect("the fake answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nomad_backend_fills_pools_keeps_claims_in_the_ledger_and_purges_released_runners() {
    let served = ServedNomad::start(FakeNomadConfig::default()).await;
    let address = served.address.clone();
    let server = Server::start(&["--backend", "nomad", "--nomad-address", &address]).await;
    server.environment(1, 2, 128).await;

    let (status, template) = nomad_get(&address, "/v1/job/template-1").await;
    assert_eq!(status, 200, "{template}");
    assert_eq!(template["Type"], "batch");

    let runner = server.claim(1, 60).await;
    let uuid = runner.split_once('-').expect("<env>-<uuid>").1.to_owned();
    // The claim is persisted in the environment's ledger, not in the runner's job.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, template) = nomad_get(&address, "/v1/job/template-1").await;
        let groups = template["TaskGroups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let meta = groups
            .iter()
            .find(|group| group["Name"] == "config")
            .map(|group| group["Meta"].clone())
            .unwrap_or(Value::Null);
        if meta[format!("claim.{uuid}")]
            .as_str()
            .is_some_and(|mark| mark.ends_with(":60"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the claim never reached the ledger: {meta}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, job) = nomad_get(&address, &format!("/v1/job/{runner}")).await;
    assert_eq!(status, 200, "{job}");

    let released = server
        .client
        .delete(server.url(&format!("/runners/{runner}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(released.status(), 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = nomad_get(&address, &format!("/v1/job/{runner}")).await;
        if status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the released runner's job was not purged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pool refills through Nomad: two idle runners again.
    server.environment_ready(1, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_executions_go_through_nomad_exec() {
    let served = ServedNomad::start(FakeNomadConfig::default()).await;
    let address = served.address.clone();
    let server = Server::start(&["--backend", "nomad", "--nomad-address", &address]).await;
    server.environment(1, 1, 128).await;
    let runner = server.claim(1, 60).await;

    assert_eq!(
        server.copy(&runner, "dir/hello.txt", b"Hello Nomad").await,
        204
    );
    let run = server
        .run(
            &runner,
            serde_json::json!({"command": "cat dir/hello.txt; cat missing.txt; exit 4"}),
            None,
        )
        .await;
    assert_eq!(run.text("stdout"), "Hello Nomad", "{run:?}");
    assert_eq!(
        run.text("stderr"),
        "cat: missing.txt: No such file or directory\n",
        "{run:?}"
    );
    assert_eq!(run.last_control()["type"], "exit", "{run:?}");
    assert_eq!(run.last_control()["data"], 4, "{run:?}");

    let files = server.url(&format!("/runners/{runner}/files?path=./&recursive=true"));
    let listing: Value = server
        .client
        .get(&files)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    let names: Vec<&str> = listing["files"]
        .as_array()
        .unwrap_or_else(|| panic!("files in {listing}"))
        .iter()
        .filter_map(|entry| entry["name"].as_str())
        .collect();
    assert_eq!(names, ["./dir", "./dir/hello.txt"], "{listing}");

    let raw = server.url(&format!("/runners/{runner}/files/raw?path=dir/hello.txt"));
    let download = server.client.get(&raw).send().await.expect("download");
    assert_eq!(download.status(), 200);
    assert_eq!(download.headers()["content-length"], "11");
    assert_eq!(
        download.bytes().await.expect("body").as_ref(),
        b"Hello Nomad"
    );
    let missing = server.url(&format!("/runners/{runner}/files/raw?path=missing.txt"));
    let missing = server.client.get(&missing).send().await.expect("download");
    assert_eq!(missing.status(), 424);
    assert_eq!(server.copy(&runner, "../escape.txt", b"x").await, 400);
}

/// Nomad's runners outlive the server, so nothing but the server ends an execution at
/// shutdown: it tells the client and closes as going away rather than dropping the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_executions_with_a_going_away_error() {
    let served = ServedNomad::start(FakeNomadConfig::default()).await;
    let address = served.address.clone();
    let mut server = Server::start(&["--backend", "nomad", "--nomad-address", &address]).await;
    server.environment(1, 1, 128).await;
    let runner = server.claim(1, 0).await;
    let run = server
        .run_until_terminated(&runner, serde_json::json!({"command": "sleep 1000"}))
        .await;
    assert_eq!(run.kinds(), ["start", "error"], "{run:?}");
    assert!(run.text("error").contains("shutting down"), "{run:?}");
    assert_eq!(run.close, Some(CloseCode::Away), "{run:?}");
    let status = server.terminate().expect("the server exits by itself");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_recovers_idle_and_claimed_runners_with_their_timeouts() {
    let served = ServedNomad::start(FakeNomadConfig::default()).await;
    let address = served.address.clone();
    let args = ["--backend", "nomad", "--nomad-address", address.as_str()];
    let mut first = Server::start(&args).await;
    first.environment(1, 2, 128).await;
    let held = first.claim(1, 3).await; // inactivity timeout 3 s
    let kept = first.claim(1, 0).await; // no inactivity timeout
    assert_eq!(first.copy(&kept, "kept.txt", b"survives").await, 204);
    // SIGTERM: the first server flushes its claim marks and exits; Nomad keeps the runners.
    let status = first.terminate().expect("the first server exits");
    assert!(status.success(), "{status:?}");

    let second = Server::start(&args).await;
    // Recovery: the environment and both claims come back from Nomad; the pool refills to 2.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, stats) = (0, second.statistics().await);
        if stats["1"]["idleRunners"] == 2 {
            break;
        }
        if Instant::now() > deadline {
            let (_, allocations) = nomad_get(&address, "/v1/allocations").await;
            let summary: Vec<String> = allocations
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    format!(
                        "{} {} {}",
                        a["JobID"], a["ClientStatus"], a["DesiredStatus"]
                    )
                })
                .collect();
            panic!("the pool did not refill: {stats}; allocations {summary:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = second.statistics().await;
    assert_eq!(stats["1"]["usedRunners"], 2, "{stats}");
    // The claimed runner is the same one, with its files.
    let raw = second.url(&format!("/runners/{kept}/files/raw?path=kept.txt"));
    let download = second.client.get(&raw).send().await.expect("download");
    assert_eq!(download.status(), 200);
    assert_eq!(download.bytes().await.expect("body").as_ref(), b"survives");
    // The held runner's inactivity timeout was re-armed from scratch at recovery and expires;
    // watched through the statistics, since any request on the runner would count as activity.
    let deadline = Instant::now() + Duration::from_secs(15);
    while second.statistics().await["1"]["usedRunners"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the recovered claim never timed out"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone = second
        .client
        .delete(second.url(&format!("/runners/{held}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(gone.status(), 410, "the timed-out runner is gone");
    let kept_release = second
        .client
        .delete(second.url(&format!("/runners/{kept}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(
        kept_release.status(),
        204,
        "the runner without a timeout is still held"
    );
}
