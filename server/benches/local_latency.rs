//! Latency of the local backend over HTTP, with a warm pool, side by side with the cost of a bare
//! `fork`+`exec` of `/bin/true` measured in the same run:
//!
//! - claim: `POST /runners` to its answer;
//! - round trip: claim → copy one file → execute `echo hi` → `exit` message → delete.
//!
//! `cargo bench -p trident-server --bench local_latency` runs it against the release binary
//! (root and Linux namespaces needed, as for the server itself). Figures go to BENCHMARKS.md.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const POOL: u32 = 40;
const BATCHES: usize = 10;
const ENVIRONMENT: u64 = 1;

struct Server {
    child: Child,
    base: String,
    _state: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

fn report(name: &str, samples: &mut [Duration]) {
    let p50 = percentile(samples, 0.50);
    let p99 = percentile(samples, 0.99);
    println!(
        "{name:<44} n={:<5} p50 {:>8.3} ms   p99 {:>8.3} ms",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}

async fn wait_for_pool(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats: Value = client
            .get(format!("{base}/statistics/execution-environments"))
            .send()
            .await
            .expect("statistics")
            .json()
            .await
            .expect("JSON");
        if stats[ENVIRONMENT.to_string()]["idleRunners"] == json!(POOL) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the pool did not refill: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn claim(client: &reqwest::Client, base: &str) -> String {
    let answer: Value = client
        .post(format!("{base}/runners"))
        .json(&json!({"executionEnvironmentId": ENVIRONMENT}))
        .send()
        .await
        .expect("claim")
        .json()
        .await
        .expect("JSON");
    answer["runnerId"].as_str().expect("a runner").to_owned()
}

async fn round_trip(client: &reqwest::Client, base: &str) {
    let runner = claim(client, base).await;
    let copied = client
        .patch(format!("{base}/runners/{runner}/files"))
        .json(&json!({"copy": [{"path": "main.py", "content": "cHJpbnQoImhpIikK"}]}))
        .send()
        .await
        .expect("copy");
    assert_eq!(copied.status(), 204);
    let answer: Value = client
        .post(format!("{base}/runners/{runner}/execute"))
        .json(&json!({"command": "echo hi"}))
        .send()
        .await
        .expect("execute")
        .json()
        .await
        .expect("JSON");
    let url = answer["websocketUrl"].as_str().expect("a URL");
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connects");
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message
            && text.contains("\"exit\"")
        {
            break;
        }
    }
    drop(socket);
    let deleted = client
        .delete(format!("{base}/runners/{runner}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 204);
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("bound")
            .port();
        let state = tempfile::tempdir().expect("a state directory");
        let child = Command::new(env!("CARGO_BIN_EXE_trident"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(state.path())
            .env("TRIDENT_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("the server starts");
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}/api/v1"),
            _state: state,
        };
        let base = server.base.clone();
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.get(format!("{base}/health")).send().await.is_err() {
            assert!(Instant::now() < deadline, "the server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let put = client
            .put(format!("{base}/execution-environments/{ENVIRONMENT}"))
            .json(
                &json!({"prewarmingPoolSize": POOL, "cpuLimit": 1000, "memoryLimit": 256,
                "image": "host", "networkAccess": false, "exposedPorts": null}),
            )
            .send()
            .await
            .expect("put");
        assert_eq!(put.status(), 201);

        let mut fork_exec = Vec::new();
        let mut claims = Vec::new();
        let mut trips = Vec::new();
        for _ in 0..BATCHES {
            for _ in 0..POOL {
                let started = Instant::now();
                Command::new("/bin/true").status().expect("/bin/true runs");
                fork_exec.push(started.elapsed());
            }
            wait_for_pool(&client, &base).await;
            // Claims, then their releases: a warm pool, the claim alone measured.
            let mut claimed = Vec::new();
            for _ in 0..POOL / 2 {
                let started = Instant::now();
                claimed.push(claim(&client, &base).await);
                claims.push(started.elapsed());
            }
            for runner in claimed {
                client
                    .delete(format!("{base}/runners/{runner}"))
                    .send()
                    .await
                    .expect("delete");
            }
            wait_for_pool(&client, &base).await;
            for _ in 0..POOL / 2 {
                let started = Instant::now();
                round_trip(&client, &base).await;
                trips.push(started.elapsed());
            }
        }
        println!("local backend, warm pool of {POOL}, {BATCHES} batches");
        report("fork+exec /bin/true (baseline)", &mut fork_exec);
        report("claim (POST /runners)", &mut claims);
        report("round trip claim-copy-execute-exit-delete", &mut trips);
    });
}
