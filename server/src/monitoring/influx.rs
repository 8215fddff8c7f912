//! The InfluxDB sink: points go into a bounded buffer without waiting, and one task writes them
//! in batches through the `influxdb2` client.
//!
//! Nothing on a request's path ever waits for InfluxDB: [`InfluxSink::send`] is a `try_send`.
//! When the buffer is full (InfluxDB slow or down, a write in flight), the point is dropped and
//! counted; a batch whose write fails or times out is dropped and counted too, never retried, so
//! the memory held for monitoring is bounded by the buffer and one batch.

use std::sync::Arc;
use std::time::Duration;

use influxdb2::models::{DataPoint, FieldValue};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics::{DropReason, Metrics};

/// Points written in one request at most.
const BATCH_POINTS_MAX: usize = 1_000;
/// A batch is written at the latest this long after its first point.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// One write may take this long; then its batch is dropped. A request never waits for it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// At shutdown, what is still buffered is written within this bound, then abandoned.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Points buffered by default before new ones are dropped.
pub const DEFAULT_BUFFER_POINTS: usize = 10_000;

/// Where points go. InfluxDB 2's write API (`/api/v2/write`), which VictoriaMetrics speaks too.
#[derive(Clone, PartialEq)]
pub struct InfluxConfig {
    /// The server's base URL, e.g. `http://influxdb:8086` (the client appends `/api/v2/write`).
    pub url: String,
    /// The organisation.
    pub org: String,
    /// The bucket.
    pub bucket: String,
    /// The API token, sent as `Authorization: Token …`; never logged.
    pub token: Option<String>,
    /// Every point's `stage` tag (Poseidon's `influxdb.stage`), e.g. `production`.
    pub stage: String,
    /// Points buffered before new ones are dropped.
    pub buffer_points: usize,
}

impl std::fmt::Debug for InfluxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfluxConfig")
            .field("url", &self.url)
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("stage", &self.stage)
            .field("buffer_points", &self.buffer_points)
            .finish()
    }
}

/// One measurement point, before it becomes line protocol in the writer task.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Poseidon's measurement name, e.g. `poseidon_provideRunner`.
    pub measurement: String,
    /// Tag names and values (the `stage` tag is added by the sink).
    pub tags: Vec<(&'static str, String)>,
    /// Field names and values; at least one.
    pub fields: Vec<(&'static str, FieldValue)>,
    /// Nanoseconds since the Unix epoch.
    pub time_ns: i64,
}

impl Point {
    fn into_data_point(self, stage: &str) -> Option<DataPoint> {
        let mut builder = DataPoint::builder(self.measurement).tag("stage", stage);
        for (name, value) in self.tags {
            // Line protocol cannot carry an empty tag value.
            if !value.is_empty() {
                builder = builder.tag(name, value);
            }
        }
        for (name, value) in self.fields {
            builder = builder.field(name, value);
        }
        builder.timestamp(self.time_ns).build().ok()
    }
}

/// The handle the recording side uses: never blocks.
#[derive(Debug)]
pub struct InfluxSink {
    points: mpsc::Sender<Point>,
    metrics: Arc<Metrics>,
}

impl InfluxSink {
    /// Starts the writer task. It stops when `shutdown` is cancelled, after writing what is
    /// buffered (bounded by [`SHUTDOWN_FLUSH_TIMEOUT`]).
    pub fn start(
        config: &InfluxConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<(InfluxSink, JoinHandle<()>), String> {
        // The client panics on a URL it cannot parse: check first.
        reqwest::Url::parse(&config.url)
            .map_err(|error| format!("invalid InfluxDB URL {:?}: {error}", config.url))?;
        let client = influxdb2::ClientBuilder::new(
            config.url.clone(),
            config.org.clone(),
            config.token.clone().unwrap_or_default(),
        )
        .build()
        .map_err(|error| format!("cannot build the InfluxDB client: {error}"))?;
        let (points, receiver) = mpsc::channel(config.buffer_points.max(1));
        let writer = Writer {
            client,
            bucket: config.bucket.clone(),
            stage: config.stage.clone(),
            metrics: Arc::clone(&metrics),
            failing: false,
        };
        let task = tokio::spawn(writer.run(receiver, shutdown));
        Ok((InfluxSink { points, metrics }, task))
    }

    /// Queues a point; drops and counts it if the buffer is full.
    pub fn send(&self, point: Point) {
        if self.points.try_send(point).is_err() {
            self.metrics.influx_dropped(DropReason::BufferFull, 1);
        }
    }
}

struct Writer {
    client: influxdb2::Client,
    bucket: String,
    stage: String,
    metrics: Arc<Metrics>,
    /// Whether the last write failed, so a failure is logged once per outage, not per batch.
    failing: bool,
}

impl Writer {
    async fn run(mut self, mut points: mpsc::Receiver<Point>, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                point = points.recv() => match point {
                    Some(point) => point,
                    None => break,
                },
            };
            let mut batch = vec![first];
            // tokio's clock: the batch window is not wall-clock dependent.
            let flush_at = tokio::time::Instant::now() + FLUSH_INTERVAL;
            while batch.len() < BATCH_POINTS_MAX {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    point = points.recv() => match point {
                        Some(point) => batch.push(point),
                        None => break,
                    },
                    () = tokio::time::sleep_until(flush_at) => break,
                }
            }
            self.write(batch).await;
        }
        // Shutdown: what is buffered now is all there will be (the buffer bounds it).
        points.close();
        let flushed = tokio::time::timeout(SHUTDOWN_FLUSH_TIMEOUT, async {
            loop {
                let mut batch = Vec::new();
                while batch.len() < BATCH_POINTS_MAX {
                    match points.try_recv() {
                        Ok(point) => batch.push(point),
                        Err(_) => break,
                    }
                }
                if batch.is_empty() {
                    break;
                }
                self.write(batch).await;
            }
        })
        .await;
        if flushed.is_err() {
            let mut abandoned = 0;
            while points.try_recv().is_ok() {
                abandoned += 1;
            }
            self.metrics
                .influx_dropped(DropReason::WriteFailed, abandoned);
            tracing::warn!(abandoned, "gave up flushing InfluxDB points at shutdown");
        }
    }

    async fn write(&mut self, batch: Vec<Point>) {
        let count = batch.len() as u64;
        let data: Vec<DataPoint> = batch
            .into_iter()
            .filter_map(|point| point.into_data_point(&self.stage))
            .collect();
        let write = self.client.write_with_precision(
            &self.bucket,
            futures_util::stream::iter(data),
            influxdb2::api::write::TimestampPrecision::Nanoseconds,
        );
        let error = match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("no answer within {} s", WRITE_TIMEOUT.as_secs())),
        };
        match error {
            None => {
                self.metrics.influx_written(count);
                if self.failing {
                    tracing::info!("InfluxDB accepts points again");
                    self.failing = false;
                }
            }
            Some(error) => {
                self.metrics.influx_dropped(DropReason::WriteFailed, count);
                if !self.failing {
                    // The error names the URL, never the token (it travels in a header).
                    tracing::warn!(%error, dropped = count, "writing to InfluxDB failed; points are dropped until it works again");
                    self.failing = true;
                }
            }
        }
    }
}
