//! turmoil's TCP in the shapes Trident's code wants: an axum listener for the servers (Trident's
//! API and the fake Nomad), a [`Connector`] for the Nomad backend, and the small HTTP and
//! WebSocket client the CodeOcean-like clients speak.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use trident_backends::nomad::connector::Connector;

/// turmoil's listener as axum's `serve` wants it.
pub struct SimListener(pub turmoil::net::TcpListener);

impl std::fmt::Debug for SimListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimListener").finish_non_exhaustive()
    }
}

impl SimListener {
    /// Binds `0.0.0.0:port` on the current host.
    pub async fn bind(port: u16) -> io::Result<Self> {
        turmoil::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .map(SimListener)
    }
}

impl axum::serve::Listener for SimListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                // As axum's own listener does: an accept error is the connection's, not the
                // listener's; pause briefly and go on.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// The Nomad backend's connector inside the simulation: turmoil resolves host names.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimConnector;

impl Connector for SimConnector {
    type Stream = turmoil::net::TcpStream;

    async fn connect(&self, host: &str, port: u16) -> io::Result<Self::Stream> {
        turmoil::net::TcpStream::connect(format!("{host}:{port}")).await
    }
}

/// Most bytes a client reads of one response body.
const RESPONSE_BYTES_MAX: usize = 8 << 20;

/// One HTTP answer as a client saw it.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends one request on a fresh connection to `authority` (`host:port`) and reads the whole
/// answer within `timeout` (turmoil drops what a partition cuts, so every wait needs a bound).
pub async fn request(
    authority: &str,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
    timeout: Duration,
) -> Result<Answer, String> {
    tokio::time::timeout(timeout, async {
        let stream = turmoil::net::TcpStream::connect(authority)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| format!("handshake: {error}"))?;
        // Owned by this request: dropped (and the connection closed) when the request ends.
        let connection = tokio::spawn(connection);
        let _abort = AbortOnDrop(connection);
        let mut builder = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority);
        let bytes = match body {
            Some(body) => {
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&body).map_err(|error| format!("body: {error}"))?)
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(bytes))
            .map_err(|error| format!("request: {error}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("send: {error}"))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|error| format!("body: {error}"))?
            .to_bytes();
        Ok(Answer { status, body })
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()))
}

/// Aborts a spawned task when dropped: ties a connection task to its request.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A WebSocket to `url` (`ws://host:port/path`) over turmoil's TCP.
pub async fn websocket(
    url: &str,
) -> Result<tokio_tungstenite::WebSocketStream<turmoil::net::TcpStream>, String> {
    let authority = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| format!("not a ws:// URL: {url}"))?;
    let stream = turmoil::net::TcpStream::connect(authority)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    tokio_tungstenite::client_async(url, stream)
        .await
        .map(|(socket, _)| socket)
        .map_err(|error| format!("upgrade: {error}"))
}
