//! Latency of the local backend over HTTP, with a warm pool, side by side with the cost of a bare
//! `fork`+`exec` of `/bin/true` measured in the same run:
//!
//! - claim: `POST /runners` to its answer;
//! - round trip: claim → copy one file → execute `echo hi` → `exit` message → delete.
//!
//! `cargo bench -p trident-server --bench local_latency` runs it against the release binary
//! (root and Linux namespaces needed, as for the server itself). Figures go to BENCHMARKS.md.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use trident_tests::Server;

const POOL: u32 = 40;
const BATCHES: usize = 10;
const ENVIRONMENT: u64 = 1;

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

/// Claim → copy one file → execute `echo hi` until its `exit` message → delete.
async fn round_trip(server: &Server) {
    let runner = server.claim(ENVIRONMENT, 0).await;
    let copied = server.copy(&runner, "main.py", b"print('hi')\n").await;
    assert_eq!(copied, 204);
    let run = server
        .run(&runner, json!({"command": "echo hi"}), None)
        .await;
    assert_eq!(run.last_control()["type"], "exit");
    let deleted = server
        .client
        .delete(server.url(&format!("/runners/{runner}")))
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
        let server = Server::start_binary(Path::new(env!("CARGO_BIN_EXE_trident")), &[]).await;
        server.environment(ENVIRONMENT, POOL, 256).await;

        let mut fork_exec = Vec::new();
        let mut claims = Vec::new();
        let mut trips = Vec::new();
        for _ in 0..BATCHES {
            for _ in 0..POOL {
                let started = Instant::now();
                Command::new("/bin/true").status().expect("/bin/true runs");
                fork_exec.push(started.elapsed());
            }
            server.environment_ready(ENVIRONMENT, POOL).await;
            // Claims, then their releases: a warm pool, the claim alone measured.
            let mut claimed = Vec::new();
            for _ in 0..POOL / 2 {
                let started = Instant::now();
                claimed.push(server.claim(ENVIRONMENT, 0).await);
                claims.push(started.elapsed());
            }
            for runner in claimed {
                server
                    .client
                    .delete(server.url(&format!("/runners/{runner}")))
                    .send()
                    .await
                    .expect("delete");
            }
            server.environment_ready(ENVIRONMENT, POOL).await;
            for _ in 0..POOL / 2 {
                let started = Instant::now();
                round_trip(&server).await;
                trips.push(started.elapsed());
            }
        }
        println!("local backend, warm pool of {POOL}, {BATCHES} batches");
        report("fork+exec /bin/true (baseline)", &mut fork_exec);
        report("claim (POST /runners)", &mut claims);
        report("round trip claim-copy-execute-exit-delete", &mut trips);
    });
}
