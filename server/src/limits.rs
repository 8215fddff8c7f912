//! The limits at the HTTP boundary, where a hostile client meets the server first.
//!
//! - **Connections.** At most [`HttpLimits::connections_max`] at once, and
//!   [`HttpLimits::connections_per_client_max`] from one client address. A connection beyond
//!   either is answered at once with Poseidon's error body (429 for the client's own limit, 503
//!   for the total) and closed, before the server reads anything from it. An upgraded
//!   connection (an execution's WebSocket) counts until it closes, so the limits bound idle
//!   WebSockets too. Each connection holds a socket, a task and hyper's buffers; unbounded, a
//!   client could exhaust the server's file descriptors and nobody else could connect.
//! - **Time.** A request's head must arrive within [`HttpLimits::header_timeout`], which also
//!   closes a keep-alive connection that stays idle that long (hyper's header read timeout), and
//!   its body within [`HttpLimits::body_timeout`] (408 otherwise): a slowloris client that
//!   trickles bytes cannot hold a connection for longer.
//! - **Error bodies.** axum's extractors answer some rejections in plain text (a body over the
//!   limit, a path that does not decode); they get Poseidon's JSON shape here. A query string
//!   that does not decode to UTF-8 is refused with 400 (axum's query decoding would replace the
//!   bad bytes silently, and a file operation would then act on another path).
//!
//! [`serve`] stands in for `axum::serve`: the same accept loop and graceful shutdown, over
//! HTTP/1.1 only (what Poseidon's clients speak), with hyper's timer so that its header timeout
//! works. Time comes from tokio, so the simulation's clock drives it.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Default of [`HttpLimits::connections_max`]: far more than a small deployment's CodeOcean
/// holds (one connection per running execution plus a few for requests), far fewer than the
/// open files the server raises its limit to.
pub const DEFAULT_CONNECTIONS_MAX: usize = 4_096;
/// Default of [`HttpLimits::connections_per_client_max`]: CodeOcean is one client address for
/// all its learners, so a quarter of the total, not a handful.
pub const DEFAULT_CONNECTIONS_PER_CLIENT_MAX: usize = 1_024;
/// Default of [`HttpLimits::header_timeout`] (hyper's own default).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`HttpLimits::body_timeout`]: a 64 MiB upload at 1.1 MB/s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Refused connections being answered at once; beyond, a refused connection is closed without
/// an answer (each answer holds a socket for up to [`REFUSAL_TIMEOUT`], usually for
/// [`REFUSAL_DRAIN_IDLE`]).
const REFUSALS_IN_FLIGHT_MAX: usize = 1_024;
/// How long answering a refused connection may take.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes of a refused connection's request read (and dropped) after the answer, so that
/// closing does not reset the connection before the client has read the answer.
const REFUSAL_DRAIN_BYTES_MAX: usize = 64 * 1024;
/// The drain stops when the client sends nothing for this long.
const REFUSAL_DRAIN_IDLE: Duration = Duration::from_millis(100);
/// How long a connection may take to finish its request in flight once the server shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Bytes of a plain-text rejection read to turn it into Poseidon's body.
const REJECTION_BYTES_MAX: usize = 16 * 1024;

/// Default of [`ApiLimits::files_per_update_max`]: an exercise has tens of files, a large
/// project a few thousand.
pub const DEFAULT_FILES_PER_UPDATE_MAX: usize = 10_000;
/// Default of [`ApiLimits::output_bytes_max`]: far more than a person reads, little enough that
/// a runaway `print` loop ends in seconds.
pub const DEFAULT_OUTPUT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Default of [`ApiLimits::websocket_message_bytes_max`]: a pasted input file, not a flood.
pub const DEFAULT_WEBSOCKET_MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// The limits of the API's requests beyond the HTTP boundary's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// Entries (`delete` plus `copy`) of one `PATCH /files`; more are a 400.
    pub files_per_update_max: usize,
    /// Bytes of stdout and stderr one execution may send; beyond, the command is killed and
    /// the client gets an `error` message. `None`: no limit.
    pub output_bytes_max: Option<u64>,
    /// Bytes of one WebSocket message (stdin) from the client; a larger one closes the
    /// WebSocket with 1009 (message too big) and ends the execution.
    pub websocket_message_bytes_max: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            files_per_update_max: DEFAULT_FILES_PER_UPDATE_MAX,
            output_bytes_max: Some(DEFAULT_OUTPUT_BYTES_MAX),
            websocket_message_bytes_max: DEFAULT_WEBSOCKET_MESSAGE_BYTES_MAX,
        }
    }
}

/// The limits of the HTTP boundary; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections at once, in total.
    pub connections_max: usize,
    /// Connections at once from one client IP address.
    pub connections_per_client_max: usize,
    /// Time for a request's head to arrive, and for an idle keep-alive connection to stay open.
    pub header_timeout: Duration,
    /// Time for a request's body to arrive, from the end of its head.
    pub body_timeout: Duration,
    /// The request body limit, for the text of its 413 (the limit itself is axum's
    /// `DefaultBodyLimit`, set by [`crate::start`] from the same option).
    pub body_bytes_max: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            connections_max: DEFAULT_CONNECTIONS_MAX,
            connections_per_client_max: DEFAULT_CONNECTIONS_PER_CLIENT_MAX,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            body_bytes_max: crate::config::DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` is cancelled, then lets the
/// connections finish their requests in flight (each for at most 10 s) and returns.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let limits = Arc::new(limits);
    let router = router.layer(middleware::from_fn_with_state(
        Arc::clone(&limits),
        boundary,
    ));
    let counts = Arc::new(Mutex::new(Counts::default()));
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT_MAX));
    // Owns every connection task: shutdown waits for them.
    let connections = TaskTracker::new();
    loop {
        let (io, addr) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match admit(&counts, addr.ip(), &limits) {
            Ok(slot) => {
                connections.spawn(connection(
                    Counted { io, _slot: slot },
                    router.clone(),
                    limits.header_timeout,
                    shutdown.clone(),
                ));
            }
            Err(refusal) => {
                tracing::debug!(client = %addr.ip(), %refusal, "connection refused");
                // Beyond the bound the connection is dropped here, closed without an answer.
                if let Ok(permit) = Arc::clone(&refusals).try_acquire_owned() {
                    let limits = Arc::clone(&limits);
                    connections.spawn(async move {
                        refuse(io, &refusal, &limits).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Serves one admitted connection until it closes, or until shutdown and its grace.
async fn connection<I>(io: I, router: Router, header_timeout: Duration, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let served = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(router))
        .with_upgrades();
    let mut served = std::pin::pin!(served);
    tokio::select! {
        // An error here is the client's (a reset, a malformed or timed-out head): hyper has
        // answered what could be answered.
        _ = served.as_mut() => return,
        () = shutdown.cancelled() => {}
    }
    served.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, served).await;
}

/// Open connections, in total and per client address.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_client: BTreeMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug)]
enum Refusal {
    Client { client: IpAddr, limit: usize },
    Total { limit: usize },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Client { client, limit } => write!(
                f,
                "too many connections from {client}: at most {limit} at once"
            ),
            Refusal::Total { limit } => {
                write!(f, "the server has its maximum of {limit} connections open")
            }
        }
    }
}

/// One admitted connection's place in [`Counts`], given back when dropped.
#[derive(Debug)]
struct Slot {
    counts: Arc<Mutex<Counts>>,
    client: IpAddr,
}

fn lock(counts: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    // Plain counters: a panic elsewhere leaves them consistent.
    counts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn admit(
    counts: &Arc<Mutex<Counts>>,
    client: IpAddr,
    limits: &HttpLimits,
) -> Result<Slot, Refusal> {
    let mut guard = lock(counts);
    if guard.total >= limits.connections_max {
        return Err(Refusal::Total {
            limit: limits.connections_max,
        });
    }
    let from_client = guard.by_client.get(&client).copied().unwrap_or(0);
    if from_client >= limits.connections_per_client_max {
        return Err(Refusal::Client {
            client,
            limit: limits.connections_per_client_max,
        });
    }
    guard.by_client.insert(client, from_client + 1);
    guard.total += 1;
    Ok(Slot {
        counts: Arc::clone(counts),
        client,
    })
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = lock(&self.counts);
        guard.total = guard.total.saturating_sub(1);
        if let Entry::Occupied(mut entry) = guard.by_client.entry(self.client) {
            *entry.get_mut() = entry.get().saturating_sub(1);
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

/// A connection's stream with its [`Slot`]: the slot lives as long as the stream, through a
/// WebSocket upgrade too.
#[derive(Debug)]
struct Counted<I> {
    io: I,
    _slot: Slot,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Answers a refused connection with Poseidon's error body and closes it.
async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(
    mut io: I,
    refusal: &Refusal,
    limits: &HttpLimits,
) {
    let status = match refusal {
        Refusal::Client { .. } => StatusCode::TOO_MANY_REQUESTS,
        Refusal::Total { .. } => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = error_json(status, &refusal.to_string());
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: {}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len(),
        limits.header_timeout.as_secs().max(1),
    );
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        io.write_all(head.as_bytes()).await?;
        io.write_all(body.as_bytes()).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES_MAX {
            match tokio::time::timeout(REFUSAL_DRAIN_IDLE, io.read(&mut sink)).await {
                Ok(Ok(read)) if read > 0 => drained += read,
                _ => break,
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// Poseidon's error body: `{"message"}` for a client error, with `"errorCode"` for a server
/// error (see `api::ApiError`).
fn error_json(status: StatusCode, message: &str) -> String {
    let body = if status.is_server_error() {
        serde_json::json!({"message": message, "errorCode": "UNKNOWN"})
    } else {
        serde_json::json!({"message": message})
    };
    body.to_string()
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let mut response = (status, error_json(status, message)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The middleware every request passes: the query's encoding, the body's deadline, and
/// Poseidon's shape for plain-text errors.
async fn boundary(State(limits): State<Arc<HttpLimits>>, request: Request, next: Next) -> Response {
    if !request.uri().query().is_none_or(query_is_utf8) {
        return error_response(
            StatusCode::BAD_REQUEST,
            "the query string is not valid UTF-8 once percent-decoded",
        );
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    let deadline = tokio::time::Instant::now() + limits.body_timeout;
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            timed_out: Arc::clone(&timed_out),
        })
    });
    let response = next.run(request).await;
    if timed_out.load(Ordering::Relaxed) {
        return error_response(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the request body did not arrive within {} s",
                limits.body_timeout.as_secs()
            ),
        );
    }
    poseidon_shaped(response, &limits).await
}

/// Gives a plain-text error response (axum's rejections) Poseidon's JSON body.
async fn poseidon_shaped(response: Response, limits: &HttpLimits) -> Response {
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/plain"));
    if !plain || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return error_response(
            status,
            &format!(
                "the request body is larger than the limit of {} bytes",
                limits.body_bytes_max
            ),
        );
    }
    let text = axum::body::to_bytes(response.into_body(), REJECTION_BYTES_MAX)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|_| status.canonical_reason().unwrap_or_default().to_owned());
    error_response(status, &text)
}

/// Whether every key and value of a query string is UTF-8 once percent-decoded (`+` needs no
/// decoding for this question; a `%` without two hex digits stands for itself, as in
/// `application/x-www-form-urlencoded` parsers).
fn query_is_utf8(query: &str) -> bool {
    let bytes = query.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        match (bytes[index], hex(index + 1), hex(index + 2)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                index += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

/// A request body that fails once its deadline has passed, and says so through `timed_out`.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request body did not arrive in time",
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_checked_for_utf8_after_percent_decoding() {
        assert!(query_is_utf8("path=%2Fworkspace%2Fa.txt&recursive=true"));
        assert!(query_is_utf8("path=%E2%82%AC"));
        assert!(
            query_is_utf8("path=100%"),
            "a lone percent sign stands for itself"
        );
        assert!(!query_is_utf8("path=%FF%FE"));
        assert!(!query_is_utf8("path=%E2%82"), "a truncated sequence");
    }

    #[test]
    fn connections_are_counted_per_client_and_in_total() {
        let limits = HttpLimits {
            connections_max: 3,
            connections_per_client_max: 2,
            ..HttpLimits::default()
        };
        let counts = Arc::new(Mutex::new(Counts::default()));
        let a: IpAddr = "10.0.0.1".parse().expect("an address");
        let b: IpAddr = "10.0.0.2".parse().expect("an address");
        let first = admit(&counts, a, &limits).expect("admitted");
        let _second = admit(&counts, a, &limits).expect("admitted");
        assert!(matches!(
            admit(&counts, a, &limits),
            Err(Refusal::Client { .. })
        ));
        let _third = admit(&counts, b, &limits).expect("another client is admitted");
        assert!(matches!(
            admit(&counts, b, &limits),
            Err(Refusal::Total { .. })
        ));
        drop(first);
        let _again = admit(&counts, a, &limits).expect("a freed slot is reused");
        assert_eq!(lock(&counts).by_client.get(&a), Some(&2));
    }

    #[test]
    fn error_bodies_have_poseidons_shape() {
        assert_eq!(
            error_json(StatusCode::TOO_MANY_REQUESTS, "x"),
            r#"{"message":"x"}"#
        );
        assert_eq!(
            error_json(StatusCode::SERVICE_UNAVAILABLE, "y"),
            r#"{"errorCode":"UNKNOWN","message":"y"}"#
        );
    }
}
