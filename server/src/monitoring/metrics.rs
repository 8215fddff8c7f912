//! Prometheus metrics (`GET /metrics`, OpenMetrics text), named `trident_…` after Prometheus'
//! conventions: base units (seconds, bytes), `_total` on counters.
//!
//! Recording is an atomic update (a counter, a histogram bucket) after a short read lock on the
//! label family; nothing here waits for I/O.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use trident_core::{EnvironmentId, EnvironmentStats};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// Poseidon's route name, e.g. `provideRunner`.
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvironmentLabels {
    environment_id: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NomadEventLabels {
    topic: String,
    r#type: String,
}

/// Distinct `(topic, type)` pairs of `trident_nomad_events_total`: Nomad names both, so a
/// misbehaving server could otherwise grow the family without bound. Later pairs count as
/// `other`.
const NOMAD_EVENT_LABELS_MAX: usize = 64;
/// Longest topic or type kept as a label value (Nomad's are under 40 bytes).
const NOMAD_EVENT_LABEL_BYTES_MAX: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Why InfluxDB points were dropped.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DropReason {
    /// The buffer was full: InfluxDB is slow or down and a write is in flight.
    BufferFull,
    /// A write failed or timed out; its whole batch is dropped.
    WriteFailed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: DropReasonLabel,
}

/// `DropReason` as Prometheus sees it (snake case).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct DropReasonLabel(DropReason);

impl EncodeLabelValue for DropReasonLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self.0 {
            DropReason::BufferFull => "buffer_full",
            DropReason::WriteFailed => "write_failed",
        })
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every Prometheus metric of the server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: HistogramFamily<RequestLabels>,
    executions: Family<EnvironmentLabels, Counter>,
    execution_duration: HistogramFamily<OutcomeLabels>,
    upload_bytes: Histogram,
    download_bytes: Histogram,
    downloads_incomplete: Counter,
    runner_startup: HistogramFamily<EnvironmentLabels>,
    idle_runners: Family<EnvironmentLabels, Gauge>,
    used_runners: Family<EnvironmentLabels, Gauge>,
    pool_size: Family<EnvironmentLabels, Gauge>,
    environments: Gauge,
    /// Environments that have gauges, so that a deleted one's gauges go away.
    gauged: Mutex<BTreeSet<EnvironmentId>>,
    influx_written: Counter,
    influx_dropped: Family<DropLabels, Counter>,
    ready: Gauge,
    nomad_events: Family<NomadEventLabels, Counter>,
    /// The `(topic, type)` pairs `nomad_events` has, at most [`NOMAD_EVENT_LABELS_MAX`].
    nomad_event_labels: Mutex<BTreeSet<(String, String)>>,
    nomad_tracked_jobs: Gauge,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 27 min, doubling: claims, file operations and whole executions.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 24))
}

fn startup_histogram() -> Histogram {
    // 1 ms to about 9 min: a local sandbox starts in milliseconds, a Nomad allocation in seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

fn size_histogram() -> Histogram {
    // 64 B to 128 MiB, quadrupling.
    Histogram::new(exponential_buckets(64.0, 4.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered and at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("trident");
        let requests = HistogramFamily::<RequestLabels>::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "HTTP requests by Poseidon's route name and status; a WebSocket counts until its execution ends",
            Unit::Seconds,
            requests.clone(),
        );
        let executions = Family::<EnvironmentLabels, Counter>::default();
        registry.register(
            "executions",
            "Executions requested (POST /execute)",
            executions.clone(),
        );
        let execution_duration =
            HistogramFamily::<OutcomeLabels>::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "execution_duration",
            "Executions from their WebSocket's connection to their end, by outcome (exit, timeout, error, client_closed)",
            Unit::Seconds,
            execution_duration.clone(),
        );
        let upload_bytes = size_histogram();
        registry.register_with_unit(
            "file_upload",
            "Request body sizes of file updates (PATCH /files)",
            Unit::Bytes,
            upload_bytes.clone(),
        );
        let download_bytes = size_histogram();
        registry.register_with_unit(
            "file_download",
            "Bytes sent by file downloads (GET /files/raw)",
            Unit::Bytes,
            download_bytes.clone(),
        );
        let downloads_incomplete = Counter::default();
        registry.register(
            "file_downloads_incomplete",
            "Downloads that sent fewer bytes than their Content-Length announced",
            downloads_incomplete.clone(),
        );
        let runner_startup =
            HistogramFamily::<EnvironmentLabels>::new_with_constructor(startup_histogram);
        registry.register_with_unit(
            "runner_startup_duration",
            "From a runner's start to its report of being up",
            Unit::Seconds,
            runner_startup.clone(),
        );
        let idle_runners = Family::<EnvironmentLabels, Gauge>::default();
        registry.register(
            "idle_runners",
            "Runners ready to be claimed",
            idle_runners.clone(),
        );
        let used_runners = Family::<EnvironmentLabels, Gauge>::default();
        registry.register("used_runners", "Runners claimed", used_runners.clone());
        let pool_size = Family::<EnvironmentLabels, Gauge>::default();
        registry.register(
            "prewarming_pool_size",
            "Idle runners each environment asks for",
            pool_size.clone(),
        );
        let environments = Gauge::default();
        registry.register(
            "environments",
            "Execution environments",
            environments.clone(),
        );
        let influx_written = Counter::default();
        registry.register(
            "influxdb_points_written",
            "Points InfluxDB accepted",
            influx_written.clone(),
        );
        let influx_dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "influxdb_points_dropped",
            "Points dropped because the buffer was full or their write failed",
            influx_dropped.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 once the first recovery (the first inventory) has finished",
            ready.clone(),
        );
        let nomad_events = Family::<NomadEventLabels, Counter>::default();
        registry.register(
            "nomad_events",
            "Events read from Nomad's event stream, by topic and type (Nomad backend)",
            nomad_events.clone(),
        );
        let nomad_tracked_jobs = Gauge::default();
        registry.register(
            "nomad_tracked_jobs",
            "Runner jobs whose allocation the Nomad backend follows (one allocation each)",
            nomad_tracked_jobs.clone(),
        );
        Metrics {
            registry,
            requests,
            executions,
            execution_duration,
            upload_bytes,
            download_bytes,
            downloads_incomplete,
            runner_startup,
            idle_runners,
            used_runners,
            pool_size,
            environments,
            gauged: Mutex::new(BTreeSet::new()),
            influx_written,
            influx_dropped,
            ready,
            nomad_events,
            nomad_event_labels: Mutex::new(BTreeSet::new()),
            nomad_tracked_jobs,
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    pub(crate) fn request(&self, route: &'static str, status: u16, duration: Duration) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .observe(duration.as_secs_f64());
    }

    pub(crate) fn execution_requested(&self, environment: EnvironmentId) {
        self.executions
            .get_or_create(&EnvironmentLabels {
                environment_id: environment.0,
            })
            .inc();
    }

    pub(crate) fn execution_finished(&self, outcome: &'static str, duration: Duration) {
        self.execution_duration
            .get_or_create(&OutcomeLabels { outcome })
            .observe(duration.as_secs_f64());
    }

    pub(crate) fn upload(&self, bytes: u64) {
        self.upload_bytes.observe(bytes as f64);
    }

    pub(crate) fn download(&self, expected: u64, actual: u64) {
        self.download_bytes.observe(actual as f64);
        if actual < expected {
            self.downloads_incomplete.inc();
        }
    }

    pub(crate) fn runner_started(&self, environment: EnvironmentId, duration: Duration) {
        self.runner_startup
            .get_or_create(&EnvironmentLabels {
                environment_id: environment.0,
            })
            .observe(duration.as_secs_f64());
    }

    /// Sets the pool gauges from a complete list of environments; environments not in it lose
    /// their gauges.
    pub(crate) fn pools(&self, statistics: &[EnvironmentStats]) {
        let Ok(mut gauged) = self.gauged.lock() else {
            return;
        };
        let current: BTreeSet<EnvironmentId> = statistics.iter().map(|stats| stats.id).collect();
        for gone in gauged.difference(&current) {
            let labels = EnvironmentLabels {
                environment_id: gone.0,
            };
            self.idle_runners.remove(&labels);
            self.used_runners.remove(&labels);
            self.pool_size.remove(&labels);
        }
        for stats in statistics {
            let labels = EnvironmentLabels {
                environment_id: stats.id.0,
            };
            self.idle_runners
                .get_or_create(&labels)
                .set(i64::from(stats.idle));
            self.used_runners
                .get_or_create(&labels)
                .set(i64::from(stats.used));
            self.pool_size
                .get_or_create(&labels)
                .set(i64::from(stats.target));
        }
        self.environments
            .set(i64::try_from(statistics.len()).unwrap_or(i64::MAX));
        *gauged = current;
    }

    pub(crate) fn influx_written(&self, points: u64) {
        self.influx_written.inc_by(points);
    }

    pub(crate) fn influx_dropped(&self, reason: DropReason, points: u64) {
        self.influx_dropped
            .get_or_create(&DropLabels {
                reason: DropReasonLabel(reason),
            })
            .inc_by(points);
    }

    pub(crate) fn set_ready(&self) {
        self.ready.set(1);
    }

    pub(crate) fn nomad_event(&self, topic: &str, kind: &str) {
        let mut labels = (
            truncate(topic, NOMAD_EVENT_LABEL_BYTES_MAX).to_owned(),
            truncate(kind, NOMAD_EVENT_LABEL_BYTES_MAX).to_owned(),
        );
        {
            let Ok(mut known) = self.nomad_event_labels.lock() else {
                return;
            };
            if !known.contains(&labels) {
                if known.len() < NOMAD_EVENT_LABELS_MAX {
                    known.insert(labels.clone());
                } else {
                    labels = ("other".to_owned(), "other".to_owned());
                }
            }
        }
        self.nomad_events
            .get_or_create(&NomadEventLabels {
                topic: labels.0,
                r#type: labels.1,
            })
            .inc();
    }

    pub(crate) fn nomad_tracked_jobs(&self, jobs: usize) {
        self.nomad_tracked_jobs
            .set(i64::try_from(jobs).unwrap_or(i64::MAX));
    }
}

/// `text` cut to at most `bytes_max` bytes, at a character boundary.
pub(crate) fn truncate(text: &str, bytes_max: usize) -> &str {
    if text.len() <= bytes_max {
        return text;
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
