//! The event buffer and the NDJSON event stream (`reference/nomad-api.md` §6).
//!
//! The buffer holds the newest `event_buffer_size` *frames* (one per raft index that produced
//! events), like Nomad's ring. Where a subscriber starts follows §6.4 exactly: at the requested
//! index itself when it is buffered (inclusive, so a resume re-delivers the last frame seen), at
//! the next buffered index above it otherwise, at the oldest buffered frame when it is too old
//! (silently: the gap is invisible), and at the newest buffered frame when it is newer than all.
//! An open subscriber whose next frame was evicted before it read it is cut off (the slow-consumer
//! rule of §6.5, as ≥ v1.11.2 does it: the connection closes).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::Instant;

use super::FakeNomad;

/// One event inside a frame (§6.2: all keys present).
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) topic: &'static str,
    pub(crate) typ: &'static str,
    pub(crate) key: String,
    pub(crate) namespace: String,
    pub(crate) filter_keys: Option<Vec<String>>,
    /// Serialised when the event is made: a frame is rendered once per subscriber, and the
    /// buffer keeps it until evicted.
    pub(crate) payload: Box<RawValue>,
}

impl Event {
    /// Appends the event as one JSON object. Serialised from borrowed fields, not built as a
    /// `Value` first (that deep-copied every payload once per subscriber and frame, a tenth of
    /// a simulation's time); the keys are in the order a `serde_json::Map` keeps (sorted), so the
    /// bytes are those of the `Value` this used to build.
    fn write_json(&self, index: u64, out: &mut Vec<u8>) {
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            #[serde(rename = "FilterKeys")]
            filter_keys: &'a Option<Vec<String>>,
            #[serde(rename = "Index")]
            index: u64,
            #[serde(rename = "Key")]
            key: &'a str,
            #[serde(rename = "Namespace")]
            namespace: &'a str,
            #[serde(rename = "Payload")]
            payload: &'a RawValue,
            #[serde(rename = "Topic")]
            topic: &'a str,
            #[serde(rename = "Type")]
            typ: &'a str,
        }
        let wire = Wire {
            filter_keys: &self.filter_keys,
            index,
            key: &self.key,
            namespace: &self.namespace,
            payload: &self.payload,
            topic: self.topic,
            typ: self.typ,
        };
        serde_json::to_writer(out, &wire)
            .expect("a Vec takes every write and the keys are strings");
    }
}

/// The events of one raft index.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub(crate) index: u64,
    pub(crate) events: Vec<Event>,
}

impl Frame {
    /// The frame's NDJSON line with only the events `filter` lets through, or `None` when none
    /// does (Nomad sends no empty frames). The bytes of `{"Events":[…],"Index":N}` as a
    /// `serde_json::Value` would print them.
    pub(crate) fn render(&self, filter: &StreamFilter) -> Option<Vec<u8>> {
        let mut line = Vec::with_capacity(1024);
        line.extend_from_slice(b"{\"Events\":[");
        let mut events = 0usize;
        for event in self.events.iter().filter(|event| filter.matches(event)) {
            if events > 0 {
                line.push(b',');
            }
            event.write_json(self.index, &mut line);
            events += 1;
        }
        if events == 0 {
            return None;
        }
        line.extend_from_slice(format!("],\"Index\":{}}}\n", self.index).as_bytes());
        Some(line)
    }
}

/// The bounded ring of frames.
#[derive(Debug)]
pub(crate) struct EventBuffer {
    frames: VecDeque<Frame>,
    capacity: usize,
    /// The highest index ever evicted: a subscriber that still needs a frame at or below it has
    /// missed it.
    evicted_through: u64,
}

impl EventBuffer {
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "an event buffer holds at least one frame");
        EventBuffer {
            frames: VecDeque::new(),
            capacity,
            evicted_through: 0,
        }
    }

    pub(crate) fn push(&mut self, frame: Frame) {
        if let Some(last) = self.frames.back() {
            assert!(frame.index > last.index, "frames are pushed in index order");
        }
        self.frames.push_back(frame);
        while self.frames.len() > self.capacity {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(old) = self.frames.pop_front() {
            self.evicted_through = self.evicted_through.max(old.index);
        }
    }

    /// Keeps only the newest `keep` frames (the buffer-overrun fault).
    pub(crate) fn keep_newest(&mut self, keep: usize) {
        while self.frames.len() > keep {
            self.evict_oldest();
        }
    }

    /// The first index a subscription asking for `requested` receives (§6.4); `current` is the
    /// raft index now, used when nothing is buffered.
    pub(crate) fn start_index(&self, requested: u64, current: u64) -> u64 {
        match (self.frames.front(), self.frames.back()) {
            (None, _) | (_, None) => current + 1,
            (Some(_), Some(newest)) => self
                .frames
                .iter()
                .find(|frame| frame.index >= requested)
                .map_or(newest.index, |frame| frame.index),
        }
    }

    /// The frames at or above `next`, or `Err` when one the subscriber still needed is gone.
    pub(crate) fn frames_from(&self, next: u64) -> Result<impl Iterator<Item = &Frame>, Evicted> {
        if next <= self.evicted_through {
            return Err(Evicted);
        }
        Ok(self.frames.iter().filter(move |frame| frame.index >= next))
    }

    /// Every buffered frame, unfiltered, as NDJSON.
    pub(crate) fn log(&self) -> String {
        let bytes: Vec<u8> = self
            .frames
            .iter()
            .filter_map(|frame| frame.render(&StreamFilter::all()))
            .flatten()
            .collect();
        String::from_utf8(bytes).expect("serde_json writes UTF-8")
    }
}

/// A subscriber missed a frame: the buffer evicted it first.
#[derive(Debug)]
pub(crate) struct Evicted;

/// Topic and namespace filter of one subscription (§6.1).
#[derive(Clone, Debug)]
pub(crate) struct StreamFilter {
    /// `(topic, key)` pairs; `*` matches everything on either side.
    topics: Vec<(String, String)>,
    /// `None` = all namespaces.
    namespace: Option<String>,
}

impl StreamFilter {
    pub(crate) fn all() -> Self {
        StreamFilter {
            topics: vec![("*".into(), "*".into())],
            namespace: None,
        }
    }

    /// Parses the `topic` query values; `Err` carries Nomad's 400 text.
    pub(crate) fn parse(topics: &[String], namespace: &str) -> Result<Self, String> {
        let mut parsed = Vec::new();
        for topic in topics {
            let parts: Vec<&str> = topic.split(':').collect();
            match parts.as_slice() {
                [name] => parsed.push(((*name).to_owned(), "*".to_owned())),
                [name, key] => parsed.push(((*name).to_owned(), (*key).to_owned())),
                _ => {
                    return Err(format!(
                        "Invalid topic query: error parsing topics: Invalid key value pair for topic, topic: {topic}"
                    ));
                }
            }
        }
        if parsed.is_empty() {
            parsed.push(("*".into(), "*".into()));
        }
        Ok(StreamFilter {
            topics: parsed,
            namespace: (namespace != "*").then(|| namespace.to_owned()),
        })
    }

    fn matches(&self, event: &Event) -> bool {
        if let Some(namespace) = &self.namespace
            && !event.namespace.is_empty()
            && event.namespace != *namespace
        {
            return false;
        }
        self.topics.iter().any(|(topic, key)| {
            (topic == "*" || topic == event.topic)
                && (key == "*"
                    || *key == event.key
                    || event
                        .filter_keys
                        .as_ref()
                        .is_some_and(|keys| keys.iter().any(|k| k == key)))
        })
    }
}

/// One open event stream: yields NDJSON lines until the fake disconnects it or its consumer fell
/// behind the buffer. Owned by the response body, so it ends when the client goes away.
pub(crate) struct Subscription {
    nomad: FakeNomad,
    wake: watch::Receiver<u64>,
    filter: StreamFilter,
    /// The next frame index to deliver.
    next_index: u64,
    generation: u64,
    heartbeat_interval: Duration,
    heartbeat_due: Instant,
    queue: VecDeque<Bytes>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("next_index", &self.next_index)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(nomad: FakeNomad, filter: StreamFilter, requested_index: u64) -> Self {
        let wake = nomad.shared.wake.subscribe();
        let (next_index, generation, heartbeat_interval) = {
            let state = nomad.lock();
            (
                state.events.start_index(requested_index, state.index()),
                state.stream_generation,
                state.config.heartbeat_interval,
            )
        };
        let mut queue = VecDeque::new();
        // The first frame is `{}`, sent right after subscribing (§6.2).
        queue.push_back(Bytes::from_static(b"{}\n"));
        Subscription {
            nomad,
            wake,
            filter,
            next_index,
            generation,
            heartbeat_interval,
            // tokio's clock: paused and advanced by the simulation.
            // tokio's clock (turmoil's simulated time in the simulation), not the wall clock.
            heartbeat_due: Instant::now() + heartbeat_interval,
            queue,
        }
    }

    /// The next line, or `None` when the stream ends.
    pub(crate) async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            let stalled = {
                let state = self.nomad.lock();
                if state.stream_generation != self.generation {
                    return None;
                }
                let stalled = state.faults.stall_event_streams;
                if !stalled {
                    if let Some(line) = self.queue.pop_front() {
                        return Some(line);
                    }
                    let frames = match state.events.frames_from(self.next_index) {
                        Ok(frames) => frames,
                        Err(Evicted) => return None,
                    };
                    for frame in frames {
                        self.next_index = frame.index + 1;
                        if let Some(line) = frame.render(&self.filter) {
                            self.queue.push_back(Bytes::from(line));
                        }
                    }
                    if let Some(line) = self.queue.pop_front() {
                        return Some(line);
                    }
                }
                stalled
            };
            tokio::select! {
                biased;
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = tokio::time::sleep_until(self.heartbeat_due), if !stalled => {
                    self.heartbeat_due += self.heartbeat_interval;
                    self.queue.push_back(Bytes::from_static(b"{}\n"));
                }
            }
            if stalled {
                // Heartbeats that fell due during a stall are not sent afterwards.
                // tokio's clock: paused and advanced by the simulation.
                // tokio's clock (turmoil's simulated time in the simulation), not the wall clock.
                let now = Instant::now();
                while self.heartbeat_due <= now {
                    self.heartbeat_due += self.heartbeat_interval;
                }
            }
        }
    }

    /// The subscription as a body stream.
    pub(crate) fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send {
        futures_util::stream::unfold(self, |mut subscription| async move {
            let line = subscription.next_line().await?;
            Some((Ok(line), subscription))
        })
    }
}
