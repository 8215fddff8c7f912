//! Monitoring: Prometheus metrics (always on, `GET /metrics`) and Poseidon's InfluxDB
//! measurements (`reference/poseidon.md` §8.1; on when an InfluxDB URL is configured).
//!
//! [`Monitor`] is the one recording interface: the API, the request middleware
//! ([`requests`]) and the driver call it with what happened, and it updates the Prometheus
//! metrics and queues InfluxDB points. Recording never waits: metrics are atomics, points go
//! through a bounded buffer with `try_send` ([`influx`]). Pool sizes are sampled once a second
//! from the manager by a task the server owns ([`sample_pools`]), not counted on the driver's
//! path.
//!
//! Influx measurements keep Poseidon's names, tags and fields so existing Grafana dashboards
//! keep working: `poseidon_<route>` (tags `status`, `runner_id`, `environment_id`; fields
//! `duration` in ns, `request_size` for file updates), `poseidon_poolsize`,
//! `poseidon_nomad_idle_runners` (`count`; `startup_duration` in ns when a runner came up),
//! `poseidon_used_runners`, `poseidon_environments`, `poseidon_nomad_executions`,
//! `poseidon_file_download`, and with the Nomad backend `poseidon_nomad_events`,
//! `poseidon_nomad_jobs` and `poseidon_nomad_allocations` ([`nomad`]). Every point carries the
//! `stage` tag.

pub mod influx;
pub mod metrics;
pub mod nomad;
pub mod requests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use influxdb2::models::FieldValue;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use trident_core::{EnvironmentId, EnvironmentSpec, EnvironmentStats, ExecutionId, RunnerId};

use crate::driver::ManagerHandle;
use influx::{InfluxConfig, InfluxSink, Point};
use metrics::Metrics;

/// How often pool sizes are sampled for InfluxDB.
const POOL_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Every this many samples, every environment's counts are written even if unchanged
/// (Poseidon's `periodically` points, once a minute).
const POOL_SAMPLES_PER_PERIODIC: u32 = 60;

/// The ids a request concerns, for tags and span fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestIds {
    /// The runner, if the route names one (or the claim handed one out).
    pub runner: Option<RunnerId>,
    /// The environment, if the route or the runner names one.
    pub environment: Option<EnvironmentId>,
}

/// Where recordings go.
#[derive(Debug)]
pub struct Monitor {
    metrics: Arc<Metrics>,
    influx: Option<InfluxSink>,
    /// The Nomad tracker's last job count, to write Poseidon's points only when it changes.
    nomad_tracked: AtomicUsize,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            metrics: Arc::new(Metrics::new()),
            influx: None,
            nomad_tracked: AtomicUsize::new(0),
        }
    }
}

impl Monitor {
    /// Prometheus metrics, and InfluxDB if `influx` is set: its writer task stops when
    /// `shutdown` is cancelled (after a bounded flush); the caller owns the returned handle.
    pub fn start(
        influx: Option<&InfluxConfig>,
        shutdown: CancellationToken,
    ) -> Result<(Monitor, Option<JoinHandle<()>>), String> {
        let metrics = Arc::new(Metrics::new());
        let Some(config) = influx else {
            return Ok((
                Monitor {
                    metrics,
                    ..Monitor::default()
                },
                None,
            ));
        };
        let (sink, task) = InfluxSink::start(config, Arc::clone(&metrics), shutdown)?;
        tracing::info!(url = %config.url, bucket = %config.bucket, "writing measurements to InfluxDB");
        Ok((
            Monitor {
                metrics,
                influx: Some(sink),
                nomad_tracked: AtomicUsize::new(0),
            },
            Some(task),
        ))
    }

    /// The Prometheus metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether points go to InfluxDB.
    pub fn influx_enabled(&self) -> bool {
        self.influx.is_some()
    }

    /// Queues the point `build` makes, if InfluxDB is configured (nothing is built otherwise).
    fn point(
        &self,
        measurement: &str,
        build: impl FnOnce() -> (Vec<(&'static str, String)>, Vec<(&'static str, FieldValue)>),
    ) {
        if let Some(sink) = &self.influx {
            let (tags, fields) = build();
            sink.send(Point {
                measurement: measurement.to_owned(),
                tags,
                fields,
                time_ns: unix_ns(),
            });
        }
    }

    /// A finished request: Poseidon's `poseidon_<route>` with its duration and status.
    pub fn request(
        &self,
        route: &'static str,
        status: u16,
        duration: Duration,
        ids: RequestIds,
        request_size: Option<u64>,
    ) {
        self.metrics.request(route, status, duration);
        if let Some(size) = request_size {
            self.metrics.upload(size);
        }
        if self.influx.is_none() {
            return;
        }
        self.point(&format!("poseidon_{route}"), || {
            let mut tags = vec![("status", status.to_string())];
            push_ids(&mut tags, ids);
            let mut fields = vec![("duration", nanos(duration))];
            if let Some(size) = request_size {
                fields.push(("request_size", FieldValue::I64(saturating_i64(size))));
            }
            (tags, fields)
        });
    }

    /// An execution was stored (`POST /execute`); `pending` is the runner's count after.
    pub fn execution_stored(&self, runner: RunnerId, execution: ExecutionId, pending: usize) {
        self.metrics.execution_requested(runner.environment());
        self.execution_store(runner, execution, "creation", pending);
    }

    /// An execution was taken by its WebSocket; `pending` is the runner's count after.
    pub fn execution_taken(&self, runner: RunnerId, execution: ExecutionId, pending: usize) {
        self.execution_store(runner, execution, "deletion", pending);
    }

    fn execution_store(
        &self,
        runner: RunnerId,
        execution: ExecutionId,
        event_type: &'static str,
        pending: usize,
    ) {
        self.point("poseidon_nomad_executions", || {
            let mut tags = vec![
                ("id", execution.to_string()),
                ("event_type", event_type.to_owned()),
            ];
            push_ids(&mut tags, runner_ids(runner));
            (tags, vec![("count", count(pending))])
        });
    }

    /// An execution ended, `duration` after its WebSocket connected.
    pub fn execution_finished(&self, outcome: &'static str, duration: Duration) {
        self.metrics.execution_finished(outcome, duration);
    }

    /// A download ended (completed or abandoned) after `actual` of `expected` bytes.
    pub fn download(&self, runner: RunnerId, expected: u64, actual: u64) {
        self.metrics.download(expected, actual);
        self.point("poseidon_file_download", || {
            let mut tags = Vec::new();
            push_ids(&mut tags, runner_ids(runner));
            let fields = vec![
                ("expected_length", FieldValue::I64(saturating_i64(expected))),
                ("actual_length", FieldValue::I64(saturating_i64(actual))),
            ];
            (tags, fields)
        });
    }

    /// An environment was created or changed; `environments` is the count after.
    pub fn environment_put(
        &self,
        id: EnvironmentId,
        spec: &EnvironmentSpec,
        created: bool,
        environments: usize,
    ) {
        self.point("poseidon_poolsize", || {
            (
                vec![("environment_id", id.to_string())],
                vec![(
                    "prewarming_pool_size",
                    FieldValue::I64(i64::from(spec.prewarming_pool_size)),
                )],
            )
        });
        if created {
            self.point("poseidon_environments", || {
                let tags = vec![
                    ("id", id.to_string()),
                    ("event_type", "creation".to_owned()),
                    ("image", spec.image.clone()),
                    ("cpu_limit", spec.cpu_limit.to_string()),
                    ("memory_limit", spec.memory_limit.to_string()),
                    ("network_access", spec.network_access.to_string()),
                ];
                (tags, vec![("count", count(environments))])
            });
        }
    }

    /// An environment was deleted; `environments` is the count after.
    pub fn environment_deleted(&self, id: EnvironmentId, environments: usize) {
        self.point("poseidon_environments", || {
            let tags = vec![
                ("id", id.to_string()),
                ("event_type", "deletion".to_owned()),
            ];
            (tags, vec![("count", count(environments))])
        });
    }

    /// A runner came up `duration` after its start; its environment has `idle` idle runners.
    pub fn runner_started(&self, runner: RunnerId, duration: Duration, idle: u32) {
        self.metrics.runner_started(runner.environment(), duration);
        self.point("poseidon_nomad_idle_runners", || {
            let mut tags = vec![
                ("id", runner.to_string()),
                ("event_type", "creation".to_owned()),
            ];
            push_ids(&mut tags, runner_ids(runner));
            let fields = vec![
                ("count", FieldValue::I64(i64::from(idle))),
                ("startup_duration", nanos(duration)),
            ];
            (tags, fields)
        });
    }

    /// Pool counts sampled from the manager: gauges always; points for environments whose
    /// counts changed since `previous` (or all of them when `periodic`).
    fn pools(
        &self,
        statistics: &[EnvironmentStats],
        previous: &BTreeMap<EnvironmentId, EnvironmentStats>,
        periodic: bool,
    ) {
        self.metrics.pools(statistics);
        if self.influx.is_none() {
            return;
        }
        for stats in statistics {
            let before = previous.get(&stats.id);
            let idle_before = before.map(|b| b.idle);
            let used_before = before.map(|b| b.used);
            for (measurement, now, was) in [
                ("poseidon_nomad_idle_runners", stats.idle, idle_before),
                ("poseidon_used_runners", stats.used, used_before),
            ] {
                let event_type = match was {
                    Some(was) if was == now && periodic => "periodically",
                    Some(was) if was == now => continue,
                    Some(was) if was > now => "deletion",
                    _ => "creation",
                };
                self.point(measurement, || {
                    let tags = vec![
                        ("environment_id", stats.id.to_string()),
                        ("event_type", event_type.to_owned()),
                    ];
                    (tags, vec![("count", FieldValue::I64(i64::from(now)))])
                });
            }
        }
    }
}

/// Samples the pools every second for InfluxDB until `shutdown` is cancelled or the driver
/// stops. Started only when InfluxDB is configured: `/metrics` reads the pools itself.
pub async fn sample_pools(
    monitor: Arc<Monitor>,
    manager: ManagerHandle,
    shutdown: CancellationToken,
) {
    let mut previous: BTreeMap<EnvironmentId, EnvironmentStats> = BTreeMap::new();
    let mut ticks = tokio::time::interval(POOL_SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples: u32 = 0;
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Ok(statistics) = manager.query(|manager| manager.all_statistics()).await else {
            return;
        };
        samples = samples.wrapping_add(1);
        monitor.pools(
            &statistics,
            &previous,
            samples.is_multiple_of(POOL_SAMPLES_PER_PERIODIC),
        );
        previous = statistics
            .into_iter()
            .map(|stats| (stats.id, stats))
            .collect();
    }
}

/// Counts a download's bytes and records them when dropped (the body finished or was
/// abandoned): Poseidon's `expected_length` and `actual_length`.
#[derive(Debug)]
pub struct DownloadMeter {
    monitor: Arc<Monitor>,
    runner: RunnerId,
    expected: u64,
    actual: u64,
}

impl DownloadMeter {
    /// Meters a download of `expected` bytes from `runner`.
    pub fn new(monitor: Arc<Monitor>, runner: RunnerId, expected: u64) -> Self {
        DownloadMeter {
            monitor,
            runner,
            expected,
            actual: 0,
        }
    }

    /// `bytes` more were sent.
    pub fn sent(&mut self, bytes: usize) {
        self.actual = self.actual.saturating_add(bytes as u64);
    }
}

impl Drop for DownloadMeter {
    fn drop(&mut self) {
        self.monitor
            .download(self.runner, self.expected, self.actual);
    }
}

fn runner_ids(runner: RunnerId) -> RequestIds {
    RequestIds {
        runner: Some(runner),
        environment: Some(runner.environment()),
    }
}

fn push_ids(tags: &mut Vec<(&'static str, String)>, ids: RequestIds) {
    if let Some(runner) = ids.runner {
        tags.push(("runner_id", runner.to_string()));
    }
    if let Some(environment) = ids.environment {
        tags.push(("environment_id", environment.to_string()));
    }
}

fn nanos(duration: Duration) -> FieldValue {
    FieldValue::I64(i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX))
}

fn count(value: usize) -> FieldValue {
    FieldValue::I64(i64::try_from(value).unwrap_or(i64::MAX))
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A point's timestamp. Outside the simulation: only called when InfluxDB is configured,
/// which the simulation never does.
fn unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
        })
}
