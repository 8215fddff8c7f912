//! The event-stream client: `GET /v1/event/stream` (`reference/nomad-api.md` §6), read by one
//! owned task that survives disconnects and tells its owner when it may have missed something.
//!
//! What the task does, and why:
//!
//! - **NDJSON framing** ([`LineSplitter`]): lines are split across arbitrary chunk boundaries.
//!   A line longer than [`EventStreamConfig::line_bytes_max`] is discarded as it arrives (memory
//!   stays bounded) and reported as [`Resync::LineTooLong`]: the frame in it is lost, so the owner
//!   must re-list. Dropping the connection instead would only fetch the same line again.
//! - **Heartbeats**: Nomad sends `{}` at once after subscribing and every 30 s (§6.2). They are
//!   not handed on, but every complete line counts as liveness; no line for
//!   [`EventStreamConfig::heartbeat_timeout`] (60 s: two missed heartbeats) means a dead or
//!   half-open connection (§10 row 2, nomad#27133), which is dropped and reopened.
//! - **Resume** from the last index handed on. Nomad starts a stream at the requested index
//!   *inclusive* when it still buffers that frame (§6.4, nomad#11296), so the first data frame of
//!   a resumed stream is the last one seen: it is skipped as a duplicate, as is anything below
//!   it (a server whose buffer ends before it re-sends its newest frame). Frame indexes are raft
//!   indexes, shared by every table and sent only when an event matches the topics (§6.2), so
//!   consecutive frames are normally *not* consecutive integers, and Nomad never says that it
//!   skipped anything (§10 row 3). What it does say: had it still buffered `last`, it would
//!   have re-sent it. So a first frame `first > last + 1` means `last` was evicted, and frames
//!   in between may have been too; the task then reports [`Resync::Gap`] before the frame and
//!   carries on, and the owner re-lists through HTTP. `first == last + 1` loses nothing (no
//!   index lies between), `first ≤ last` is a re-send or a replay.
//! - **Back-off** between reconnects: jittered, exponential, bounded
//!   ([`EventStreamConfig::reconnect`]), reset once a connection delivered a line. A 4xx on
//!   subscribe (bad topic, revoked token, §10 row 18) waits the longest delay at once: no tight
//!   loop against a server that says no.
//! - **A slow consumer never blocks reading.** Items go through a bounded channel with
//!   `try_send`. When it is full, the task drops the connection (Nomad's buffer, not ours, then
//!   holds the events), waits until the consumer takes the undelivered item, and resumes at its
//!   index. Nothing is dropped silently: either Nomad still buffers the frames and re-sends them,
//!   or the resume finds a gap and reports [`Resync::Gap`]. Reading on while the consumer lags
//!   would need an unbounded queue; stopping to read would stall the TCP window, which Nomad
//!   ≥ 1.11.2 punishes by cutting the stream after 40 s anyway (§6.5).
//! - **Ownership**: the task belongs to the [`EventStream`] handle; dropping the handle aborts it.

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::client::{NomadClient, Query};
use super::connector::Connector;
use super::model::Frame;
use super::retry::Backoff;

/// What the event-stream task reads and how patiently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventStreamConfig {
    /// `topic=` values. Explicit `Topic:*` keys, as Poseidon sends them: without any topic Nomad
    /// requires a management token (§6.1).
    pub topics: Vec<String>,
    /// The index to start at. 0 replays what Nomad buffers (up to 100 frames, §6.4). Any other
    /// value is treated as the index of a frame already seen: if the first frame comes more
    /// than one index after it, [`Resync::Gap`] is reported. Starting at the `X-Nomad-Index` of a list is allowed, but
    /// since that index need not be a frame of these topics it may cost one needless resync.
    pub start_index: u64,
    /// No line for this long means the connection is dead (Nomad sends `{}` every 30 s).
    pub heartbeat_timeout: Duration,
    /// Longest accepted line. Frames carry allocations with task states; a few MiB is plenty.
    pub line_bytes_max: usize,
    /// Items the consumer may fall behind by before the connection is dropped.
    pub channel_capacity: usize,
    /// Delays between reconnects.
    pub reconnect: Backoff,
}

impl Default for EventStreamConfig {
    fn default() -> Self {
        EventStreamConfig {
            topics: vec![
                "Job:*".to_owned(),
                "Allocation:*".to_owned(),
                "Evaluation:*".to_owned(),
            ],
            start_index: 0,
            heartbeat_timeout: Duration::from_secs(60),
            line_bytes_max: 16 << 20,
            channel_capacity: 256,
            reconnect: Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30),
            },
        }
    }
}

/// What the consumer receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamItem {
    /// A data frame, in index order, each index at most once.
    Frame(Frame),
    /// Events may have been missed: re-list through HTTP (jobs and allocations) and reseed.
    /// Frames keep coming after it.
    Resync(Resync),
}

/// Why the consumer must resynchronise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resync {
    /// After resuming at `resumed_at`, Nomad's first frame was `first_index > resumed_at + 1`:
    /// frames in between may have fallen out of Nomad's buffer (or another server never had
    /// them).
    Gap {
        /// The index the stream was (re)opened at.
        resumed_at: u64,
        /// The first index Nomad sent.
        first_index: u64,
    },
    /// The frame at `index` is JSON but not a frame this code can read; it was skipped.
    UndecodableFrame {
        /// Its index.
        index: u64,
        /// The decoder's complaint.
        error: String,
    },
    /// A line exceeded [`EventStreamConfig::line_bytes_max`] and was discarded.
    LineTooLong {
        /// The bound it exceeded.
        bytes_max: usize,
    },
}

/// What the task has seen, for health checks and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStatus {
    /// Whether a stream is open right now.
    pub connected: bool,
    /// Successful subscribes so far.
    pub connects: u64,
    /// Heartbeats (`{}`) read.
    pub heartbeats: u64,
    /// Frames handed to the consumer.
    pub frames: u64,
    /// Frames skipped as already handed on (the re-sent frame of every resume, replays).
    pub duplicates: u64,
    /// Resyncs reported.
    pub resyncs: u64,
    /// The index of the last frame handed on (the resume position).
    pub last_index: u64,
    /// Why the last connection ended or could not be opened.
    pub last_error: Option<String>,
}

/// The handle of the event-stream task. Dropping it stops the task.
pub struct EventStream {
    items: mpsc::Receiver<StreamItem>,
    status: watch::Receiver<StreamStatus>,
    task: JoinHandle<()>,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventStream {
    /// Starts the task on the current tokio runtime.
    pub fn spawn<C: Connector>(client: NomadClient<C>, config: EventStreamConfig) -> EventStream {
        // A zero capacity would make tokio panic; one item is the least that can work.
        let (items_tx, items) = mpsc::channel(config.channel_capacity.max(1));
        let (status_tx, status) = watch::channel(StreamStatus {
            last_index: config.start_index,
            ..StreamStatus::default()
        });
        let reader = Reader {
            client,
            last_index: config.start_index,
            config,
            items: items_tx,
            status: status_tx,
        };
        let task = tokio::spawn(reader.run());
        EventStream {
            items,
            status,
            task,
        }
    }

    /// The next item; `None` only if the task ended (it does not end by itself).
    pub async fn next(&mut self) -> Option<StreamItem> {
        self.items.recv().await
    }

    /// The task's counters as of now.
    pub fn status(&self) -> StreamStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change (e.g. to wait for `connected`).
    pub fn watch_status(&self) -> watch::Receiver<StreamStatus> {
        self.status.clone()
    }
}

/// How one connection ended.
enum Outcome {
    /// The consumer dropped its receiver.
    ConsumerGone,
    /// The channel was full; these items (at most two, in order) still have to be delivered.
    ConsumerBusy(Vec<StreamItem>),
    /// The connection failed, ended or went silent.
    Ended {
        error: String,
        /// Whether it delivered any line (then the back-off starts over).
        progressed: bool,
        /// Whether Nomad refused the subscription with a 4xx.
        refused: bool,
    },
}

struct Reader<C: Connector> {
    client: NomadClient<C>,
    config: EventStreamConfig,
    items: mpsc::Sender<StreamItem>,
    status: watch::Sender<StreamStatus>,
    /// The resume position: the index of the last frame handed on (or queued to be).
    last_index: u64,
}

/// The part of a frame that must be readable even when the rest is not.
#[derive(Deserialize)]
struct IndexOnly {
    #[serde(rename = "Index", default)]
    index: u64,
}

impl<C: Connector> Reader<C> {
    async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            match self.connect_and_read().await {
                Outcome::ConsumerGone => return,
                Outcome::ConsumerBusy(pending) => {
                    // The connection is gone already; waiting here blocks no reading.
                    for item in pending {
                        if self.items.send(item).await.is_err() {
                            return;
                        }
                    }
                    failures = 0;
                }
                Outcome::Ended {
                    error,
                    progressed,
                    refused,
                } => {
                    tracing::warn!(%error, last_index = self.last_index, "Nomad event stream ended");
                    self.status
                        .send_modify(|status| status.last_error = Some(error));
                    if progressed {
                        failures = 0;
                    }
                    let attempt = if refused { u32::MAX } else { failures };
                    failures = failures.saturating_add(1);
                    let delay = self.config.reconnect.delay(attempt, self.client.random());
                    tokio::select! {
                        biased;
                        () = self.items.closed() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn connect_and_read(&mut self) -> Outcome {
        let mut query = Query::new();
        query.push("index", self.last_index.to_string());
        for topic in &self.config.topics {
            query.push("topic", topic.clone());
        }
        let body = match self.client.open_stream("/v1/event/stream", query).await {
            Ok(body) => body,
            Err(error) => {
                let refused = error
                    .status()
                    .is_some_and(|status| status.is_client_error());
                return Outcome::Ended {
                    error: error.to_string(),
                    progressed: false,
                    refused,
                };
            }
        };
        self.status.send_modify(|status| {
            status.connected = true;
            status.connects += 1;
        });
        let resumed_at = (self.last_index > 0).then_some(self.last_index);
        let outcome = self.read(body, resumed_at).await;
        self.status.send_modify(|status| status.connected = false);
        outcome
    }

    async fn read(&mut self, mut body: Incoming, mut resumed_at: Option<u64>) -> Outcome {
        let mut lines = LineSplitter::new(self.config.line_bytes_max);
        let mut progressed = false;
        // tokio's clock (paused and advanced by the simulation), never the wall clock.
        let mut deadline = Instant::now() + self.config.heartbeat_timeout;
        loop {
            let chunk = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    return Outcome::Ended {
                        error: format!("no heartbeat for {:?}", self.config.heartbeat_timeout),
                        progressed,
                        refused: false,
                    };
                }
                Ok(None) => {
                    return Outcome::Ended {
                        error: "the stream ended".into(),
                        progressed,
                        refused: false,
                    };
                }
                Ok(Some(Err(error))) => {
                    return Outcome::Ended {
                        error: format!("the stream broke: {error}"),
                        progressed,
                        refused: false,
                    };
                }
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers carry nothing for us.
                    Err(_) => continue,
                },
            };
            lines.push(&chunk);
            loop {
                let items = match lines.next_line() {
                    Ok(None) => break,
                    Ok(Some(line)) => {
                        deadline = Instant::now() + self.config.heartbeat_timeout;
                        progressed = true;
                        match self.interpret(&line, &mut resumed_at) {
                            Ok(items) => items,
                            Err(error) => {
                                return Outcome::Ended {
                                    error,
                                    progressed,
                                    refused: false,
                                };
                            }
                        }
                    }
                    Err(LineTooLong) => vec![StreamItem::Resync(Resync::LineTooLong {
                        bytes_max: self.config.line_bytes_max,
                    })],
                };
                if let Some(outcome) = self.deliver(items) {
                    return outcome;
                }
            }
        }
    }

    /// Turns one line into what the consumer must hear (nothing for heartbeats and duplicates).
    /// `Err` for a line that is not a frame at all: Nomad ≤ 1.11.1 ends a stream with a text
    /// tail (§6.5), so the stream is over.
    fn interpret(
        &mut self,
        line: &[u8],
        resumed_at: &mut Option<u64>,
    ) -> Result<Vec<StreamItem>, String> {
        let (index, decoded) = match Frame::from_json(line) {
            Ok(frame) if frame.is_heartbeat() => {
                self.status.send_modify(|status| status.heartbeats += 1);
                return Ok(Vec::new());
            }
            Ok(frame) => (frame.index, Ok(frame)),
            Err(error) => match serde_json::from_slice::<IndexOnly>(line) {
                Ok(IndexOnly { index }) if index > 0 => (index, Err(error.to_string())),
                _ => {
                    let text = String::from_utf8_lossy(&line[..line.len().min(200)]);
                    return Err(format!(
                        "the stream sent a line that is not a frame: {text}"
                    ));
                }
            },
        };
        let mut items = Vec::with_capacity(2);
        if let Some(resumed_at) = resumed_at.take()
            && index > resumed_at.saturating_add(1)
        {
            items.push(StreamItem::Resync(Resync::Gap {
                resumed_at,
                first_index: index,
            }));
        }
        if index <= self.last_index {
            // The re-sent frame of a resume, or a replay: already handed on.
            debug_assert!(items.is_empty(), "a gap is never a duplicate");
            self.status.send_modify(|status| status.duplicates += 1);
            return Ok(items);
        }
        self.last_index = index;
        items.push(match decoded {
            Ok(frame) => StreamItem::Frame(frame),
            Err(error) => StreamItem::Resync(Resync::UndecodableFrame { index, error }),
        });
        Ok(items)
    }

    /// Hands items on without waiting. `Some` when the connection must end.
    fn deliver(&mut self, items: Vec<StreamItem>) -> Option<Outcome> {
        let mut items = items.into_iter();
        while let Some(item) = items.next() {
            let counted = item.kind();
            match self.items.try_send(item) {
                Ok(()) => self.count(counted),
                Err(mpsc::error::TrySendError::Closed(_)) => return Some(Outcome::ConsumerGone),
                Err(mpsc::error::TrySendError::Full(item)) => {
                    let mut pending = vec![item];
                    pending.extend(items);
                    // Counted now: they will be delivered before anything else.
                    for item in &pending {
                        self.count(item.kind());
                    }
                    return Some(Outcome::ConsumerBusy(pending));
                }
            }
        }
        None
    }

    fn count(&self, kind: ItemKind) {
        let last_index = self.last_index;
        self.status.send_modify(|status| {
            match kind {
                ItemKind::Frame => status.frames += 1,
                ItemKind::Resync => status.resyncs += 1,
            }
            status.last_index = last_index;
        });
    }
}

#[derive(Clone, Copy)]
enum ItemKind {
    Frame,
    Resync,
}

impl StreamItem {
    fn kind(&self) -> ItemKind {
        match self {
            StreamItem::Frame(_) => ItemKind::Frame,
            StreamItem::Resync(_) => ItemKind::Resync,
        }
    }
}

/// A line exceeded the bound; it is being (or was) discarded.
#[derive(Debug, PartialEq, Eq)]
pub struct LineTooLong;

/// Splits a byte stream into lines, whatever the chunk boundaries, with a bound on line length.
///
/// Memory stays below `bytes_max` plus one chunk: an over-long line is reported once and its
/// bytes dropped as they arrive, up to its newline.
///
/// Public for the `event_stream` fuzz target (`fuzz/`), which feeds it arbitrary bytes in
/// arbitrary chunks; the event-stream task is its only other user.
#[derive(Debug)]
pub struct LineSplitter {
    buffer: BytesMut,
    /// Bytes at the start of `buffer` known to hold no newline.
    scanned: usize,
    bytes_max: usize,
    /// Inside an over-long line that was already reported.
    discarding: bool,
}

impl LineSplitter {
    /// A splitter that refuses lines longer than `bytes_max` bytes.
    pub fn new(bytes_max: usize) -> Self {
        LineSplitter {
            buffer: BytesMut::new(),
            scanned: 0,
            bytes_max,
            discarding: false,
        }
    }

    /// Appends the next chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete, non-blank line without its `\n` (or `\r\n`); `Ok(None)` when more bytes
    /// are needed.
    pub fn next_line(&mut self) -> Result<Option<Bytes>, LineTooLong> {
        loop {
            let Some(offset) = self.buffer[self.scanned..]
                .iter()
                .position(|&byte| byte == b'\n')
            else {
                if self.discarding {
                    self.buffer.clear();
                    self.scanned = 0;
                } else if self.buffer.len() > self.bytes_max {
                    self.buffer.clear();
                    self.scanned = 0;
                    self.discarding = true;
                    return Err(LineTooLong);
                } else {
                    self.scanned = self.buffer.len();
                }
                return Ok(None);
            };
            let end = self.scanned + offset;
            let mut line = self.buffer.split_to(end + 1);
            self.scanned = 0;
            if self.discarding {
                // The tail of a line already reported.
                self.discarding = false;
                continue;
            }
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.len() > self.bytes_max {
                return Err(LineTooLong);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(line.freeze()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(splitter: &mut LineSplitter) -> Vec<Result<String, LineTooLong>> {
        let mut out = Vec::new();
        loop {
            match splitter.next_line() {
                Ok(None) => return out,
                Ok(Some(line)) => out.push(Ok(String::from_utf8(line.to_vec()).expect("utf-8"))),
                Err(error) => out.push(Err(error)),
            }
        }
    }

    #[test]
    fn lines_survive_every_split_into_three_chunks() {
        let text = b"{}\n{\"Index\":1}\r\n\n{\"Index\":22,\"Events\":[]}\n{\"Ind";
        let expected = vec![
            Ok("{}".to_owned()),
            Ok("{\"Index\":1}".to_owned()),
            Ok("{\"Index\":22,\"Events\":[]}".to_owned()),
        ];
        for first in 0..text.len() {
            for second in first..text.len() {
                let mut splitter = LineSplitter::new(64);
                let mut lines = Vec::new();
                for chunk in [&text[..first], &text[first..second], &text[second..]] {
                    splitter.push(chunk);
                    lines.extend(drain(&mut splitter));
                }
                assert_eq!(lines, expected, "split at {first} and {second}");
            }
        }
    }

    #[test]
    fn an_over_long_line_is_reported_once_and_skipped() {
        let mut splitter = LineSplitter::new(8);
        splitter.push(b"{}\n0123456");
        assert_eq!(drain(&mut splitter), vec![Ok("{}".to_owned())]);
        splitter.push(b"789abc");
        assert_eq!(drain(&mut splitter), vec![Err(LineTooLong)]);
        splitter.push(b"defghijklmnop");
        assert_eq!(drain(&mut splitter), vec![]);
        assert!(splitter.buffer.is_empty(), "the discarded line is not kept");
        splitter.push(b"qrs\n{\"a\":1}\n");
        assert_eq!(drain(&mut splitter), vec![Ok("{\"a\":1}".to_owned())]);
        // A complete over-long line in one chunk is reported too.
        splitter.push(b"0123456789\n{}\n");
        assert_eq!(
            drain(&mut splitter),
            vec![Err(LineTooLong), Ok("{}".to_owned())]
        );
    }
}
