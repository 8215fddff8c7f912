//! The exec client: `GET /v1/client/allocation/<alloc>/exec` over a websocket
//! (`reference/nomad-api.md` §7), one owned task per session, exposed as a
//! [`RunningExecution`].
//!
//! What the session task does, and why:
//!
//! - **Handshake** through the injected [`Connector`] (so TLS via [`MaybeTls`] and turmoil work
//!   unchanged) with tokio-tungstenite's `client_async`: `task`, `tty` and the argv as a JSON
//!   `command` in the query, the token in `X-Nomad-Token`, no `Origin` (§7.2). The
//!   `Sec-WebSocket-Key` nonce comes from the injected [`Entropy`], not from the operating
//!   system. (tungstenite still draws its frame masks itself; they change bytes on the wire, not
//!   behaviour.) An upgrade refused with an HTTP status becomes [`ExecError::Status`].
//! - **Frames** (§7.3, §7.4): stdin goes out as `{"stdin":{"data":<base64>}}` in pieces of at
//!   most 2048 bytes, like the Go client; when every stdin sender is gone the task sends
//!   `{"stdin":{"close":true}}` once. A heartbeat `{}` goes out every
//!   [`ExecConfig::heartbeat_interval`] (Nomad's Go client: 10 s). From the server,
//!   `stdout`/`stderr` data become [`ExecutionEvent::Stdout`]/[`ExecutionEvent::Stderr`],
//!   stream-close frames are noted and dropped, the `exited` frame ends the session. Frames that
//!   are not JSON, carry bad base64 or are binary are skipped (logged): one bad frame should not
//!   cost the user the output after it.
//! - **End of session without an exit frame** (§7.5): a close frame 1000 (or without a code)
//!   gives exit code 0, as Poseidon reads it; any other close frame (1008/1011 with a reason:
//!   the allocation is unknown or terminal, an RPC error) gives [`ExecutionEvent::Gone`], which
//!   the client sees as Poseidon's error message (an exit code 1 would be one the command never
//!   produced; the simulation caught `exit 2` reported as 1). A connection that just ends (1006, "unexpected EOF": an agent or server
//!   restart, a node gone) also gives [`ExecutionEvent::Gone`], where Poseidon reports exit
//!   code 0: the command's real exit code is unknown, and a 0 would tell CodeOcean that a
//!   program passed when it may have failed (the simulation caught exactly that: `exit 3`
//!   reported as 0 under `exec-drop`). The precise ending is kept in [`ExecSession::end`].
//! - **Interrupt** writes [`INTERRUPT_BYTE`] (Ctrl-\, SIGQUIT through the terminal) ahead of any
//!   queued stdin. **Kill** closes the websocket and reports exit code 137 (as `SIGKILL`). Nomad
//!   does *not* kill the process when the websocket goes (§7.5): a process that ignores the
//!   interrupt outlives the session, so `kill` answers [`KillReach::ConnectionOnly`] and the
//!   server stops the runner, which ends it (Poseidon's "the execution did not stop after
//!   SIGQUIT").
//! - **Bounds and ownership**: events and stdin travel through bounded channels; a consumer that
//!   does not read stops the task reading the socket (TCP back-pressure to Nomad), never an
//!   unbounded buffer. The task belongs to the [`ExecSession`]; dropping the session aborts it.
//!   Time comes from `tokio::time` only.
//!
//! [`SplitExecution`] joins the two sessions of an interactive execution whose stderr travels
//! through a fifo (see [`super::commands`]) into one [`RunningExecution`].

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::client::{NomadConfig, encode};
use super::commands::INTERRUPT_BYTE;
use super::connector::{Connector, MaybeTls, TcpConnector};
use super::model::{Allocation, ClientStatus};
use super::retry::Entropy;
use crate::executor::{ExecutionEvent, KillReach, RunningExecution};

/// The most stdin bytes in one frame (the Go client reads 2048 at a time, §7.3).
pub const STDIN_FRAME_BYTES_MAX: usize = 2048;
/// The exit code reported after [`RunningExecution::kill`]: 128 + SIGKILL.
pub const KILLED_EXIT_CODE: u8 = 137;

/// How a session behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecConfig {
    /// The task to exec in (Poseidon's jobs have one, `default-task`).
    pub task: String,
    /// A `{}` frame this often keeps proxies and Nomad from timing the session out (Go client:
    /// 10 s).
    pub heartbeat_interval: Duration,
    /// Bound on connect plus handshake.
    pub handshake_timeout: Duration,
    /// Events the consumer may fall behind by before the task stops reading the socket; also the
    /// stdin queue's length.
    pub channel_capacity: usize,
    /// Largest accepted websocket message. Nomad's frames carry at most 1024 raw bytes.
    pub message_bytes_max: usize,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            task: "default-task".to_owned(),
            heartbeat_interval: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            channel_capacity: 64,
            message_bytes_max: 1 << 20,
        }
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The configuration is unusable (address, token).
    #[error("invalid exec configuration: {0}")]
    Config(String),
    /// Nomad could not be reached or the handshake broke.
    #[error("cannot open the exec session: {0}")]
    Connection(String),
    /// Connect and handshake took longer than [`ExecConfig::handshake_timeout`].
    #[error("the exec handshake did not finish within {0:?}")]
    Timeout(Duration),
    /// Nomad refused the upgrade with an HTTP status (v1.10: a bad `command`, a missing
    /// capability).
    #[error("Nomad refused the exec with {status}: {body}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// Nomad's plain-text message.
        body: String,
    },
}

/// How a session ended, precisely (the events carry Poseidon's reading of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The `exited` frame came.
    Exited {
        /// The exit code (128 + n for a signal n that Nomad reported without a code).
        code: u8,
        /// Nomad said the kernel killed the process for memory.
        oom_killed: bool,
    },
    /// A close frame came before any exit frame.
    Closed {
        /// The close code (1005 when the frame had none).
        code: u16,
        /// Nomad's reason text.
        reason: String,
    },
    /// The connection ended without an exit or close frame (Nomad restarted, the node went).
    ConnectionLost(String),
    /// [`RunningExecution::kill`] closed the session.
    Killed,
}

impl SessionEnd {
    /// The event a consumer sees for this ending (§7.5).
    pub fn event(&self) -> ExecutionEvent {
        match self {
            SessionEnd::Exited { code, .. } => ExecutionEvent::Exited(*code),
            SessionEnd::Closed {
                code: 1000 | 1005, ..
            } => ExecutionEvent::Exited(0),
            // Unknown exit code: never report one (see the module documentation).
            SessionEnd::ConnectionLost(_) => ExecutionEvent::Gone,
            // Poseidon turns these into an error too ("Error executing the request"), never an
            // exit code the command did not produce.
            SessionEnd::Closed { .. } => ExecutionEvent::Gone,
            SessionEnd::Killed => ExecutionEvent::Exited(KILLED_EXIT_CODE),
        }
    }
}

/// The allocation to exec in: the newest running allocation of the job that Nomad does not want
/// stopped. Poseidon took `allocs[0]` (issue #717), which may be a stopped or pending one.
pub fn choose_allocation(allocations: &[Allocation]) -> Option<&Allocation> {
    allocations
        .iter()
        .filter(|allocation| {
            allocation.client_status == ClientStatus::Running
                && !allocation.desired_status.wants_stop()
        })
        .max_by_key(|allocation| (allocation.create_index, allocation.modify_index))
}

/// Opens exec sessions. Cheap to clone.
pub struct ExecClient<C: Connector> {
    connector: C,
    host: String,
    port: u16,
    /// `ws://host:port` or `wss://host:port`.
    base: String,
    authority: String,
    token: Option<String>,
    namespace: Option<String>,
    region: Option<String>,
    config: ExecConfig,
    entropy: Arc<Mutex<dyn Entropy>>,
}

impl<C: Connector> Clone for ExecClient<C> {
    fn clone(&self) -> Self {
        ExecClient {
            connector: self.connector.clone(),
            host: self.host.clone(),
            port: self.port,
            base: self.base.clone(),
            authority: self.authority.clone(),
            token: self.token.clone(),
            namespace: self.namespace.clone(),
            region: self.region.clone(),
            config: self.config.clone(),
            entropy: Arc::clone(&self.entropy),
        }
    }
}

impl<C: Connector> fmt::Debug for ExecClient<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token stays out of logs.
        f.debug_struct("ExecClient")
            .field("base", &self.base)
            .field("namespace", &self.namespace)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ExecClient<MaybeTls<TcpConnector>> {
    /// The production client: tokio TCP, with TLS when the address is `https` (the same choice
    /// as [`super::client::NomadClient::connect_tcp`]).
    pub fn connect_tcp(
        nomad: &NomadConfig,
        config: ExecConfig,
        entropy: impl Entropy,
    ) -> Result<Self, ExecError> {
        let connector = super::client::tcp_connector(nomad)
            .map_err(|error| ExecError::Config(error.to_string()))?;
        ExecClient::new(nomad, connector, config, entropy)
    }
}

impl<C: Connector> ExecClient<C> {
    /// A client for the Nomad at `nomad.address`, over `connector` (pass the same
    /// [`MaybeTls`] the HTTP client uses), drawing handshake nonces from `entropy`.
    pub fn new(
        nomad: &NomadConfig,
        connector: C,
        config: ExecConfig,
        entropy: impl Entropy,
    ) -> Result<Self, ExecError> {
        let uri: http::Uri = nomad
            .address
            .parse()
            .map_err(|error| ExecError::Config(format!("address {:?}: {error}", nomad.address)))?;
        let (scheme, default_port) = match uri.scheme_str() {
            Some("http") => ("ws", 80),
            Some("https") => ("wss", 443),
            _ => {
                return Err(ExecError::Config(format!(
                    "address {:?} must start with http:// or https://",
                    nomad.address
                )));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| ExecError::Config(format!("address {:?} has no host", nomad.address)))?;
        if config.channel_capacity == 0 {
            return Err(ExecError::Config(
                "channel_capacity must be at least 1".into(),
            ));
        }
        let token = nomad.token.as_deref().map(|token| token.trim().to_owned());
        if let Some(token) = &token {
            http::HeaderValue::from_str(token).map_err(|_| {
                ExecError::Config("the token has characters a header cannot carry".into())
            })?;
        }
        Ok(ExecClient {
            connector,
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: authority.port_u16().unwrap_or(default_port),
            base: format!("{scheme}://{authority}"),
            authority: authority.as_str().to_owned(),
            token,
            namespace: nomad.namespace.clone(),
            region: nomad.region.clone(),
            config,
            entropy: Arc::new(Mutex::new(entropy)),
        })
    }

    /// 64 bits from the client's entropy (fifo nonces of executions).
    pub fn draw_u64(&self) -> u64 {
        self.entropy
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .next_u64()
    }

    /// The request path and query of an exec (§7.2).
    pub fn exec_path(&self, allocation_id: &str, tty: bool, argv: &[String]) -> String {
        let command = serde_json::to_string(argv).expect("a list of strings serialises");
        let mut path = format!(
            "/v1/client/allocation/{}/exec?command={}&task={}&tty={tty}",
            encode(allocation_id),
            encode(&command),
            encode(&self.config.task),
        );
        if let Some(namespace) = &self.namespace {
            path.push_str(&format!("&namespace={}", encode(namespace)));
        }
        if let Some(region) = &self.region {
            path.push_str(&format!("&region={}", encode(region)));
        }
        path
    }

    /// Opens a session running `argv` in `allocation_id`'s task, with a terminal if `tty`.
    pub async fn open(
        &self,
        allocation_id: &str,
        tty: bool,
        argv: &[String],
    ) -> Result<ExecSession, ExecError> {
        let timeout = self.config.handshake_timeout;
        let socket = tokio::time::timeout(timeout, self.handshake(allocation_id, tty, argv))
            .await
            .map_err(|_| ExecError::Timeout(timeout))??;
        Ok(ExecSession::spawn(socket, &self.config))
    }

    async fn handshake(
        &self,
        allocation_id: &str,
        tty: bool,
        argv: &[String],
    ) -> Result<WebSocketStream<C::Stream>, ExecError> {
        let request = self.request(allocation_id, tty, argv)?;
        let stream = self
            .connector
            .connect(&self.host, self.port)
            .await
            .map_err(|error| ExecError::Connection(error.to_string()))?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.config.message_bytes_max))
            .max_frame_size(Some(self.config.message_bytes_max));
        match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
            Ok((socket, _response)) => Ok(socket),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status();
                let body = response
                    .body()
                    .as_deref()
                    .map(|body| String::from_utf8_lossy(body).trim().to_owned())
                    .unwrap_or_default();
                Err(ExecError::Status { status, body })
            }
            Err(error) => Err(ExecError::Connection(error.to_string())),
        }
    }

    fn request(
        &self,
        allocation_id: &str,
        tty: bool,
        argv: &[String],
    ) -> Result<Request<()>, ExecError> {
        let key = {
            let mut entropy = self
                .entropy
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&entropy.next_u64().to_le_bytes());
            nonce[8..].copy_from_slice(&entropy.next_u64().to_le_bytes());
            BASE64.encode(nonce)
        };
        let uri = format!("{}{}", self.base, self.exec_path(allocation_id, tty, argv));
        let mut builder = Request::builder()
            .method("GET")
            .uri(&uri)
            .header("Host", &self.authority)
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", key);
        if let Some(token) = &self.token {
            builder = builder.header("X-Nomad-Token", token);
        }
        builder
            .body(())
            .map_err(|error| ExecError::Config(format!("request {uri}: {error}")))
    }
}

/// Control messages from the handle to its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Control {
    Interrupt,
}

/// One exec session: a [`RunningExecution`] whose events come from one websocket.
#[derive(Debug)]
pub struct ExecSession {
    events: mpsc::Receiver<ExecutionEvent>,
    stdin: Option<mpsc::Sender<Bytes>>,
    control: mpsc::Sender<Control>,
    kill: watch::Sender<bool>,
    end: watch::Receiver<Option<SessionEnd>>,
    finished: bool,
    task: JoinHandle<()>,
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ExecSession {
    /// Starts the session task on an open websocket.
    pub fn spawn<S>(socket: WebSocketStream<S>, config: &ExecConfig) -> ExecSession
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let capacity = config.channel_capacity.max(1);
        let (events_tx, events) = mpsc::channel(capacity);
        let (stdin, stdin_rx) = mpsc::channel(capacity);
        // Interrupts beyond a few pending ones add nothing: the terminal gets Ctrl-\ either way.
        let (control, control_rx) = mpsc::channel(4);
        let (kill, kill_rx) = watch::channel(false);
        let (end_tx, end) = watch::channel(None);
        let task = tokio::spawn(
            SessionTask {
                socket,
                events: events_tx,
                stdin: Some(stdin_rx),
                control: control_rx,
                kill: kill_rx,
                heartbeat_interval: config.heartbeat_interval,
            }
            .run(end_tx),
        );
        ExecSession {
            events,
            stdin: Some(stdin),
            control,
            kill,
            end,
            finished: false,
            task,
        }
    }

    /// Drops this handle's stdin sender: once every clone handed out by
    /// [`RunningExecution::stdin`] is gone too, the command's stdin is closed (`tar` of a file
    /// update needs its end of file).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// How the session ended, once it has.
    pub fn end(&self) -> Option<SessionEnd> {
        self.end.borrow().clone()
    }
}

impl RunningExecution for ExecSession {
    async fn next_event(&mut self) -> Option<ExecutionEvent> {
        if self.finished {
            return None;
        }
        let event = self.events.recv().await;
        if matches!(
            event,
            None | Some(ExecutionEvent::Exited(_) | ExecutionEvent::Gone)
        ) {
            self.finished = true;
        }
        event
    }

    fn stdin(&self) -> mpsc::Sender<Bytes> {
        match &self.stdin {
            Some(sender) => sender.clone(),
            // Stdin was closed: a sender whose receiver is gone refuses every send.
            None => mpsc::channel(1).0,
        }
    }

    fn interrupt(&self) {
        // A full queue already holds interrupts; one more would add nothing.
        let _ = self.control.try_send(Control::Interrupt);
    }

    fn kill(&self) -> KillReach {
        self.kill.send_replace(true);
        // Nomad ends the session, not the process (§7.5).
        KillReach::ConnectionOnly
    }
}

/// The frames Nomad sends (§7.4). Every field optional: go-codec omits zero values.
#[derive(Debug, Default, Deserialize)]
struct ServerFrame {
    #[serde(default)]
    stdout: Option<StreamFrame>,
    #[serde(default)]
    stderr: Option<StreamFrame>,
    #[serde(default)]
    exited: Option<bool>,
    #[serde(default)]
    result: Option<ExitResult>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamFrame {
    #[serde(default)]
    data: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ExitResult {
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    signal: Option<i64>,
    #[serde(default)]
    oom_killed: Option<bool>,
}

impl ExitResult {
    fn code(&self) -> u8 {
        let code = self.exit_code.unwrap_or(0);
        let signal = self.signal.unwrap_or(0);
        if code == 0 && (1..128).contains(&signal) {
            return u8::try_from(128 + signal).expect("below 256");
        }
        // Docker reports 0..=255; anything else is not an exit status, but still a failure.
        u8::try_from(code).unwrap_or(255)
    }
}

/// What one server message means to the task.
enum Incoming {
    Event(ExecutionEvent),
    Ended(SessionEnd),
    Nothing,
}

fn decode_message(message: Message) -> Incoming {
    match message {
        Message::Text(text) => decode_frame(text.as_str()),
        Message::Close(frame) => Incoming::Ended(match frame {
            Some(frame) => SessionEnd::Closed {
                code: u16::from(frame.code),
                reason: frame.reason.as_str().to_owned(),
            },
            None => SessionEnd::Closed {
                code: u16::from(CloseCode::Status),
                reason: String::new(),
            },
        }),
        Message::Binary(_) => {
            tracing::warn!("Nomad sent a binary exec frame; skipped");
            Incoming::Nothing
        }
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Incoming::Nothing,
    }
}

fn decode_frame(text: &str) -> Incoming {
    let frame: ServerFrame = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(error) => {
            tracing::warn!(%error, "Nomad sent an exec frame that is not one; skipped");
            return Incoming::Nothing;
        }
    };
    if frame.exited == Some(true) {
        let result = frame.result.unwrap_or_default();
        return Incoming::Ended(SessionEnd::Exited {
            code: result.code(),
            oom_killed: result.oom_killed.unwrap_or(false),
        });
    }
    let data = |stream: Option<StreamFrame>| stream.and_then(|stream| stream.data);
    let (data, stderr) = match (data(frame.stdout), data(frame.stderr)) {
        (Some(data), _) => (data, false),
        (None, Some(data)) => (data, true),
        // Stream-close frames, heartbeats and whatever a later Nomad adds.
        (None, None) => return Incoming::Nothing,
    };
    match BASE64.decode(data.as_bytes()) {
        Ok(bytes) if bytes.is_empty() => Incoming::Nothing,
        Ok(bytes) if stderr => Incoming::Event(ExecutionEvent::Stderr(Bytes::from(bytes))),
        Ok(bytes) => Incoming::Event(ExecutionEvent::Stdout(Bytes::from(bytes))),
        Err(error) => {
            tracing::warn!(%error, "Nomad sent exec data that is not base64; skipped");
            Incoming::Nothing
        }
    }
}

fn stdin_frame(data: &[u8]) -> Message {
    Message::text(format!(
        r#"{{"stdin":{{"data":"{}"}}}}"#,
        BASE64.encode(data)
    ))
}

/// The task of one session.
struct SessionTask<S> {
    socket: WebSocketStream<S>,
    events: mpsc::Sender<ExecutionEvent>,
    stdin: Option<mpsc::Receiver<Bytes>>,
    control: mpsc::Receiver<Control>,
    kill: watch::Receiver<bool>,
    heartbeat_interval: Duration,
}

/// Why the loop stopped.
enum Stop {
    Ended(SessionEnd),
    /// The consumer dropped the events receiver: nobody listens any more.
    Abandoned,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SessionTask<S> {
    async fn run(mut self, end_tx: watch::Sender<Option<SessionEnd>>) {
        let stop = self.serve().await;
        let Stop::Ended(end) = stop else {
            let _ = self.socket.close(None).await;
            return;
        };
        if matches!(end, SessionEnd::Killed) {
            // Bounded: a peer that does not read must not keep the kill from being reported.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.socket.close(None)).await;
        }
        match &end {
            SessionEnd::Exited { .. } | SessionEnd::Killed => {}
            SessionEnd::Closed { code, reason } => {
                tracing::warn!(code, %reason, "the exec session closed without an exit code");
            }
            SessionEnd::ConnectionLost(error) => {
                tracing::warn!(%error, "the exec connection ended without an exit code");
            }
        }
        let event = end.event();
        end_tx.send_replace(Some(end));
        let _ = self.events.send(event).await;
    }

    async fn serve(&mut self) -> Stop {
        let start = Instant::now() + self.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(start, self.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                changed = self.kill.changed() => {
                    if changed.is_err() || *self.kill.borrow() {
                        return Stop::Ended(SessionEnd::Killed);
                    }
                }
                Some(Control::Interrupt) = self.control.recv() => {
                    if let Err(error) = self.socket.send(stdin_frame(&[INTERRUPT_BYTE])).await {
                        return Stop::Ended(SessionEnd::ConnectionLost(error.to_string()));
                    }
                }
                message = self.socket.next() => {
                    let incoming = match message {
                        Some(Ok(message)) => decode_message(message),
                        Some(Err(error)) => Incoming::Ended(lost(error)),
                        None => Incoming::Ended(SessionEnd::ConnectionLost(
                            "the connection ended".into(),
                        )),
                    };
                    match incoming {
                        Incoming::Event(event) => {
                            if let Some(stop) = self.deliver(event).await {
                                return stop;
                            }
                        }
                        Incoming::Ended(end) => return Stop::Ended(end),
                        Incoming::Nothing => {}
                    }
                }
                data = recv_stdin(&mut self.stdin) => {
                    let message = match data {
                        Some(data) => {
                            let mut result = Ok(());
                            for piece in data.chunks(STDIN_FRAME_BYTES_MAX) {
                                result = self.socket.feed(stdin_frame(piece)).await;
                                if result.is_err() {
                                    break;
                                }
                            }
                            match result {
                                Ok(()) => self.socket.flush().await,
                                Err(error) => Err(error),
                            }
                        }
                        None => {
                            self.stdin = None;
                            self.socket
                                .send(Message::text(r#"{"stdin":{"close":true}}"#))
                                .await
                        }
                    };
                    if let Err(error) = message {
                        return Stop::Ended(SessionEnd::ConnectionLost(error.to_string()));
                    }
                }
                _ = heartbeat.tick() => {
                    if let Err(error) = self.socket.send(Message::text("{}")).await {
                        return Stop::Ended(SessionEnd::ConnectionLost(error.to_string()));
                    }
                }
            }
        }
    }

    /// Hands an event on, waiting for room (back-pressure) but not past a kill.
    async fn deliver(&mut self, event: ExecutionEvent) -> Option<Stop> {
        tokio::select! {
            biased;
            changed = self.kill.changed() => {
                if changed.is_err() || *self.kill.borrow() {
                    return Some(Stop::Ended(SessionEnd::Killed));
                }
                // A spurious change: deliver after all.
                self.events.send(event).await.err().map(|_| Stop::Abandoned)
            }
            sent = self.events.send(event.clone()) => sent.err().map(|_| Stop::Abandoned),
        }
    }
}

fn lost(error: tungstenite::Error) -> SessionEnd {
    SessionEnd::ConnectionLost(error.to_string())
}

/// The next stdin chunk, or `None` once every sender is gone; pends forever after that.
async fn recv_stdin(stdin: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match stdin {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// An interactive execution whose stderr travels through a fifo: the main session (with a
/// terminal) and the stderr reader's session (see [`super::commands::split_execution`]) as one
/// [`RunningExecution`].
///
/// The main session's stdout is the execution's stdout; the reader's stdout (and its own
/// stderr, which only carries the reader's errors) is the execution's stderr. The exit event is
/// held back until the reader has ended, so all stderr comes before it (Poseidon waits for the
/// stderr exec too, §3.1 step 8), but at most [`SplitExecution::STDERR_GRACE`]: a background
/// process that keeps the pipe open must not keep the execution from ending.
#[derive(Debug)]
pub struct SplitExecution {
    main: ExecSession,
    stderr: Option<ExecSession>,
    pending_end: Option<ExecutionEvent>,
    grace_deadline: Option<Instant>,
    finished: bool,
}

impl SplitExecution {
    /// How long stderr may trail the main command's exit.
    pub const STDERR_GRACE: Duration = Duration::from_secs(1);

    /// Joins the two sessions.
    pub fn new(main: ExecSession, stderr: ExecSession) -> Self {
        SplitExecution {
            main,
            stderr: Some(stderr),
            pending_end: None,
            grace_deadline: None,
            finished: false,
        }
    }

    /// The main session (for [`ExecSession::end`]).
    pub fn main(&self) -> &ExecSession {
        &self.main
    }
}

fn as_stderr(event: ExecutionEvent) -> Option<ExecutionEvent> {
    match event {
        ExecutionEvent::Stdout(bytes) | ExecutionEvent::Stderr(bytes) => {
            Some(ExecutionEvent::Stderr(bytes))
        }
        ExecutionEvent::Exited(_) | ExecutionEvent::Gone => None,
    }
}

impl RunningExecution for SplitExecution {
    async fn next_event(&mut self) -> Option<ExecutionEvent> {
        // Each round either returns or retires one of the two sessions: at most three rounds.
        for _ in 0..4 {
            if self.finished {
                return None;
            }
            let Some(reader) = self.stderr.as_mut() else {
                if let Some(end) = self.pending_end.take() {
                    self.finished = true;
                    return Some(end);
                }
                let event = self.main.next_event().await;
                if event.is_none() {
                    self.finished = true;
                }
                return event;
            };
            if self.pending_end.is_some() {
                let deadline = self
                    .grace_deadline
                    .expect("a pending end comes with a deadline");
                tokio::select! {
                    biased;
                    event = reader.next_event() => match event.and_then(as_stderr) {
                        Some(event) => return Some(event),
                        None => self.stderr = None,
                    },
                    () = tokio::time::sleep_until(deadline) => self.stderr = None,
                }
                continue;
            }
            tokio::select! {
                biased;
                event = self.main.next_event() => match event {
                    Some(event @ (ExecutionEvent::Stdout(_) | ExecutionEvent::Stderr(_))) => {
                        return Some(event);
                    }
                    Some(end) => {
                        self.pending_end = Some(end);
                        self.grace_deadline = Some(Instant::now() + Self::STDERR_GRACE);
                    }
                    None => {
                        self.pending_end = Some(ExecutionEvent::Gone);
                        self.grace_deadline = Some(Instant::now() + Self::STDERR_GRACE);
                    }
                },
                event = reader.next_event() => match event.and_then(as_stderr) {
                    Some(event) => return Some(event),
                    None => self.stderr = None,
                },
            }
        }
        unreachable!("every round returns or retires a session")
    }

    fn stdin(&self) -> mpsc::Sender<Bytes> {
        self.main.stdin()
    }

    fn interrupt(&self) {
        self.main.interrupt();
    }

    fn kill(&self) -> KillReach {
        if let Some(reader) = &self.stderr {
            reader.kill();
        }
        self.main.kill()
    }
}
