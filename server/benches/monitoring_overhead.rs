//! What monitoring costs a claim: three release `trident` servers in one run, each with a warm
//! pool, claimed from in turn so that they share the machine's state:
//!
//! - off: no InfluxDB (Prometheus metrics are always recorded);
//! - reachable: InfluxDB writes to a real VictoriaMetrics;
//! - unreachable: InfluxDB writes to a port that accepts connections and never answers, so
//!   every write hangs until its 5 s timeout and its batch is dropped (counted as a failed
//!   write); points arriving meanwhile wait in the bounded buffer, and would be dropped as
//!   "buffer full" beyond its 10,000.
//!
//! Each batch refills every pool, then claims the whole pool of every server, one claim per
//! server in turn (starting with a different server each batch), then releases the runners.
//! Thousands of claims per server give percentiles with confidence intervals: for p50, p99 and
//! p99.9 the distribution-free interval between two order statistics; for the ratio of a
//! monitored server's percentile to the unmonitored one's, a bootstrap over batches (a batch is
//! resampled whole, for all three servers at once, so the pairing by time survives). The p99s
//! of blocks of consecutive batches (100 claims each) show the spread over time.
//!
//! `cargo bench -p trident-server --bench monitoring_overhead` (root, Linux namespaces, and
//! Debian's `victoria-metrics`, as for the monitoring tests). `MONITORING_BENCH_POOL` (100) and
//! `MONITORING_BENCH_BATCHES` (50) change the workload. Figures go to BENCHMARKS.md.

use std::path::Path;
use std::time::{Duration, Instant};

use trident_tests::{Server, VictoriaMetrics};

const ENVIRONMENT: u64 = 1;
/// Bootstrap resamples of the batches for the ratios' intervals.
const RESAMPLES: usize = 2_000;
/// The two-sided 95% normal quantile.
const Z_95: f64 = 1.96;
/// The server's InfluxDB write timeout (`monitoring::influx::WRITE_TIMEOUT`) and its batching
/// interval: a hanging write is given up at most this long after its batch's first point.
const WRITE_GIVEN_UP: Duration = Duration::from_secs(5 + 1);
/// The claim p99 ratio the issue allows a monitored server.
const RATIO_TARGET: f64 = 1.10;
/// Claims per block of consecutive batches whose p99 shows the spread over time.
const BLOCK_CLAIMS: usize = 100;
/// How long one pool may take to fill.
const POOL_FILL_TIMEOUT: Duration = Duration::from_secs(600);

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|value| *value > 0)
        .unwrap_or(default)
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

async fn start(binary: &Path, influx_url: Option<&str>, pool: u32) -> Server {
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
    let response = server
        .client
        .put(server.url(&format!("/execution-environments/{ENVIRONMENT}")))
        .json(&serde_json::json!({
            "prewarmingPoolSize": pool, "cpuLimit": 100, "memoryLimit": 256,
            "image": "host", "networkAccess": false, "exposedPorts": null
        }))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 201);
    server
}

/// Waits until the environment has `pool` idle runners. Bounded, but more patient than the
/// kit's wait: a few hundred sandboxes take a while to start on a loaded machine.
async fn pool_ready(server: &Server, pool: u32) {
    let deadline = Instant::now() + POOL_FILL_TIMEOUT;
    loop {
        let stats = server.statistics().await;
        if stats[ENVIRONMENT.to_string()]["idleRunners"] == serde_json::json!(pool) {
            return;
        }
        assert!(Instant::now() < deadline, "the pool did not fill: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sample of rank `p` (nearest rank) of sorted `samples`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The 95% confidence interval of the `p` quantile from sorted `samples`: the order statistics
/// whose ranks bound the binomial count of samples under the quantile (normal approximation).
fn percentile_interval(sorted: &[Duration], p: f64) -> (Duration, Duration) {
    let n = sorted.len() as f64;
    let half = Z_95 * (n * p * (1.0 - p)).sqrt();
    let last = sorted.len() - 1;
    let low = ((n * p - half).floor() - 1.0).clamp(0.0, last as f64) as usize;
    let high = ((n * p + half).ceil()).clamp(0.0, last as f64) as usize;
    (sorted[low], sorted[high])
}

/// SplitMix64: the bootstrap's resampling, seeded so that a run's figures can be recomputed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// The `p` quantile of every batch in `batches` pooled (batches may repeat).
fn pooled_percentile(claims: &[Vec<Duration>], batches: &[usize], p: f64) -> Duration {
    let mut pooled: Vec<Duration> = batches
        .iter()
        .flat_map(|batch| claims[*batch].iter().copied())
        .collect();
    pooled.sort_unstable();
    percentile(&pooled, p)
}

/// The 95% bootstrap interval of `percentile(server) / percentile(off)` over batches.
fn ratio_interval(
    off: &[Vec<Duration>],
    server: &[Vec<Duration>],
    p: f64,
    rng: &mut SplitMix64,
) -> (f64, f64) {
    let batches = off.len();
    let mut ratios = Vec::with_capacity(RESAMPLES);
    let mut picked = vec![0; batches];
    for _ in 0..RESAMPLES {
        for slot in &mut picked {
            *slot = rng.below(batches);
        }
        let base = pooled_percentile(off, &picked, p).as_secs_f64();
        let monitored = pooled_percentile(server, &picked, p).as_secs_f64();
        ratios.push(monitored / base);
    }
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    (at(0.025), at(0.975))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Influx counters of a server: written, dropped for a full buffer, dropped for a failed write.
async fn influx_counters(server: &Server) -> (u64, u64, u64) {
    let metrics = server.metrics().await;
    let count = |name: &str, labels: &[(&str, &str)]| metrics.sum(name, labels) as u64;
    (
        count("trident_influxdb_points_written_total", &[]),
        count(
            "trident_influxdb_points_dropped_total",
            &[("reason", "buffer_full")],
        ),
        count(
            "trident_influxdb_points_dropped_total",
            &[("reason", "write_failed")],
        ),
    )
}

fn main() {
    let pool = setting("MONITORING_BENCH_POOL", 100);
    let batches = setting("MONITORING_BENCH_BATCHES", 50);
    let pool_u32 = u32::try_from(pool).expect("a pool size below 2^32");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let binary = Path::new(env!("CARGO_BIN_EXE_trident"));
        let vm = VictoriaMetrics::start().await;
        let (hole, hole_task) = black_hole().await;
        let servers = [
            ("off", start(binary, None, pool_u32).await),
            ("reachable", start(binary, Some(&vm.base()), pool_u32).await),
            ("unreachable", start(binary, Some(&hole), pool_u32).await),
        ];
        // claims[server][batch]: every claim's latency, client side.
        let mut claims: Vec<Vec<Vec<Duration>>> = vec![Vec::new(); servers.len()];
        let started = Instant::now();
        for batch in 0..batches {
            if batch % 10 == 0 {
                eprintln!(
                    "batch {batch} of {batches} after {:.0} s",
                    started.elapsed().as_secs_f64()
                );
            }
            for (_, server) in &servers {
                pool_ready(server, pool_u32).await;
            }
            for per_server in &mut claims {
                per_server.push(Vec::with_capacity(pool));
            }
            // Claims alternate between the servers, starting with a different one each batch.
            let mut claimed: Vec<Vec<String>> = vec![Vec::with_capacity(pool); servers.len()];
            for _ in 0..pool {
                for offset in 0..servers.len() {
                    let index = (batch + offset) % servers.len();
                    let claim_started = Instant::now();
                    claimed[index].push(servers[index].1.claim(ENVIRONMENT, 0).await);
                    claims[index][batch].push(claim_started.elapsed());
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
        let elapsed = started.elapsed();
        // The unreachable server's first write hangs for its whole timeout before its batch is
        // counted as dropped; until then it has neither written nor dropped a point. (A run
        // shorter than that, like the 150-claim bench of 2026-11-28's run 2, reports 0 and 0.)
        let at_end = influx_counters(&servers[2].1).await;
        let waited = Instant::now();
        let counted_by = waited + WRITE_GIVEN_UP * 2;
        while influx_counters(&servers[2].1).await.2 == 0 && Instant::now() < counted_by {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let waited = waited.elapsed();
        let mut counters = Vec::new();
        for (_, server) in &servers {
            counters.push(influx_counters(server).await);
        }

        println!(
            "claims on warm pools of {pool}: {batches} batches of {pool} claims per server, \
             interleaved; {} claims per server in {:.0} s",
            pool * batches,
            elapsed.as_secs_f64()
        );
        println!(
            "95% intervals: order statistics for percentiles; {RESAMPLES} bootstrap resamples \
             of whole batches for ratios"
        );
        let block_claims = BLOCK_CLAIMS.div_ceil(pool) * pool;
        println!(
            "{:<12} {:>26} {:>26} {:>26} {:>30}",
            "monitoring",
            "p50 ms [95% CI]",
            "p99 ms [95% CI]",
            "p99.9 ms [95% CI]",
            format!("p99 per {block_claims} claims: median (IQR)")
        );
        for (index, (name, _)) in servers.iter().enumerate() {
            let mut all: Vec<Duration> = claims[index].iter().flatten().copied().collect();
            all.sort_unstable();
            // p99 of each run of consecutive batches with about BLOCK_CLAIMS claims.
            let mut batch_p99: Vec<Duration> = claims[index]
                .chunks(BLOCK_CLAIMS.div_ceil(pool))
                .map(|block| {
                    let mut block: Vec<Duration> = block.iter().flatten().copied().collect();
                    block.sort_unstable();
                    percentile(&block, 0.99)
                })
                .collect();
            batch_p99.sort_unstable();
            let cell = |p: f64| {
                let (low, high) = percentile_interval(&all, p);
                format!(
                    "{:.3} [{:.3}–{:.3}]",
                    ms(percentile(&all, p)),
                    ms(low),
                    ms(high)
                )
            };
            println!(
                "{name:<12} {:>26} {:>26} {:>26} {:>30}",
                cell(0.50),
                cell(0.99),
                cell(0.999),
                format!(
                    "{:.3} ({:.3}–{:.3})",
                    ms(percentile(&batch_p99, 0.5)),
                    ms(percentile(&batch_p99, 0.25)),
                    ms(percentile(&batch_p99, 0.75))
                ),
            );
        }
        let mut rng = SplitMix64(0x006d_6f6e_6974_6f72);
        let batch_list: Vec<usize> = (0..batches).collect();
        println!(
            "{:<12} {:>26} {:>26} {:>26}",
            "÷ off", "p50 [95% CI]", "p99 [95% CI]", "p99.9 [95% CI]"
        );
        for (index, (name, _)) in servers.iter().enumerate().skip(1) {
            let mut cells = Vec::new();
            let mut p99_interval = (0.0, 0.0);
            for p in [0.50, 0.99, 0.999] {
                let ratio = pooled_percentile(&claims[index], &batch_list, p).as_secs_f64()
                    / pooled_percentile(&claims[0], &batch_list, p).as_secs_f64();
                let (low, high) = ratio_interval(&claims[0], &claims[index], p, &mut rng);
                if p == 0.99 {
                    p99_interval = (low, high);
                }
                cells.push(format!("{ratio:.3} [{low:.3}–{high:.3}]"));
            }
            let verdict = if p99_interval.1 <= RATIO_TARGET {
                "p99 within 10% of off"
            } else if p99_interval.0 > RATIO_TARGET {
                "p99 more than 10% above off"
            } else {
                "undecided: the interval straddles 1.10, run more batches"
            };
            println!(
                "{name:<12} {:>26} {:>26} {:>26}   {verdict}",
                cells[0], cells[1], cells[2]
            );
        }
        for (index, (name, _)) in servers.iter().enumerate() {
            let (written, full, failed) = counters[index];
            println!(
                "influx {name:<12} points written {written:>7}, dropped: buffer full {full:>7}, write failed {failed:>7}"
            );
        }
        println!(
            "unreachable at the end of the claims: written {}, dropped {} + {}; counters read \
             {:.1} s later (a hanging write is given up after {} s)",
            at_end.0,
            at_end.1,
            at_end.2,
            waited.as_secs_f64(),
            WRITE_GIVEN_UP.as_secs() - 1
        );
        drop(servers);
        hole_task.abort();
        drop(vm);
    });
}
