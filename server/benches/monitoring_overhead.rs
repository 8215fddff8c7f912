//! What monitoring costs a claim: three release `trident` servers in one run, each with a warm
//! pool, claimed from in turn so that they share the machine's state:
//!
//! - off: no InfluxDB (Prometheus metrics are always recorded);
//! - reachable: InfluxDB writes to a real VictoriaMetrics;
//! - unreachable: InfluxDB writes to a port that accepts connections and never answers, so
//!   every write hangs until its timeout and the buffer overflows.
//!
//! `cargo bench -p trident-server --bench monitoring_overhead` (root, Linux namespaces, and
//! Debian's `victoria-metrics`, as for the monitoring tests). Figures go to BENCHMARKS.md.

use std::path::Path;
use std::time::{Duration, Instant};

use trident_tests::{Server, VictoriaMetrics};

const POOL: u32 = 20;
const BATCHES: usize = 15;
const ENVIRONMENT: u64 = 1;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// Accepts connections and holds them without a word; owned by the bench's runtime.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: one connection per write at most, a write every 5 s.
        while held.len() < 1_024 {
            match listener.accept().await {
                Ok((socket, _)) => held.push(socket),
                Err(_) => break,
            }
        }
        std::future::pending::<()>().await;
    });
    (url, task)
}

async fn start(binary: &Path, influx_url: Option<&str>) -> Server {
    let mut flags = Vec::new();
    if let Some(url) = influx_url {
        flags.extend([
            "--influxdb-url",
            url,
            "--influxdb-org",
            "bench",
            "--influxdb-bucket",
            "bench",
        ]);
    }
    let server = Server::start_binary(binary, &flags).await;
    server.environment(ENVIRONMENT, POOL, 256).await;
    server
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let binary = Path::new(env!("CARGO_BIN_EXE_trident"));
        let vm = VictoriaMetrics::start().await;
        let (hole, hole_task) = black_hole().await;
        let servers = [
            ("off", start(binary, None).await),
            ("reachable", start(binary, Some(&vm.base())).await),
            ("unreachable", start(binary, Some(&hole)).await),
        ];
        let mut claims: Vec<Vec<Duration>> = vec![Vec::new(); servers.len()];
        for batch in 0..BATCHES {
            for (_, server) in &servers {
                server.environment_ready(ENVIRONMENT, POOL).await;
            }
            // Claims alternate between the servers, starting with a different one each batch.
            let mut claimed: Vec<Vec<String>> = vec![Vec::new(); servers.len()];
            for _ in 0..POOL / 2 {
                for offset in 0..servers.len() {
                    let index = (batch + offset) % servers.len();
                    let started = Instant::now();
                    claimed[index].push(servers[index].1.claim(ENVIRONMENT, 0).await);
                    claims[index].push(started.elapsed());
                }
            }
            for (index, runners) in claimed.into_iter().enumerate() {
                let server = &servers[index].1;
                for runner in runners {
                    server
                        .client
                        .delete(server.url(&format!("/runners/{runner}")))
                        .send()
                        .await
                        .expect("delete");
                }
            }
        }
        let mut written = Vec::new();
        for (_, server) in &servers {
            let metrics = server.metrics().await;
            written.push((
                metrics.sum("trident_influxdb_points_written_total", &[]),
                metrics.sum("trident_influxdb_points_dropped_total", &[]),
            ));
        }
        println!(
            "claims on warm pools of {POOL}, {BATCHES} batches of {} claims per server, interleaved",
            POOL / 2
        );
        let mut off_p99 = None;
        for (index, (name, _)) in servers.iter().enumerate() {
            let samples = &mut claims[index];
            let p50 = percentile(samples, 0.50);
            let p99 = percentile(samples, 0.99);
            let off = *off_p99.get_or_insert(p99);
            println!(
                "monitoring {name:<12} n={:<4} p50 {:>7.3} ms   p99 {:>7.3} ms   p99/off {:>5.2}   influx points written {:>6}, dropped {:>6}",
                samples.len(),
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                p99.as_secs_f64() / off.as_secs_f64(),
                written[index].0 as u64,
                written[index].1 as u64,
            );
        }
        drop(servers);
        hole_task.abort();
        drop(vm);
    });
}
