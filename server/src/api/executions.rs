//! `POST /runners/{id}/execute` and the execution WebSocket (`reference/poseidon.md` §2).
//!
//! An execution request is only stored under a fresh id; connecting the WebSocket pops it (an id
//! works once) and runs the command. Server → client: `start`, then `stdout` / `stderr` chunks,
//! then exactly one of `exit`, `timeout` or `error`, then a normal close (1000). Client → server:
//! the bytes of every text frame go to stdin; a binary frame stops the input silently; a close
//! frame cancels the execution.
//!
//! # Closing without a reset
//!
//! When an execution ends, the client may still be sending stdin. A TCP connection closed with
//! received data unread is reset, not closed, and a reset throws away whatever the server had
//! not sent yet (the final message and the close frame wait behind output the client has not
//! read) and makes the client's next read fail: the client would never learn how its command
//! ended. So the reading half outlives the execution: it reads and drops what the client sends
//! while the final message and the close frame go out, and afterwards until the client's own
//! close frame arrives (tungstenite answers ours at once), for at most [`CLOSE_DRAIN_TIMEOUT`]
//! and [`CLOSE_DRAIN_BYTES_MAX`], like `limits::refuse` drains a refused request. A message over
//! the WebSocket limit (1009) is the exception: tungstenite's stream ends with that error, so
//! there is nothing left to read through it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{
    CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::Instrument;
use trident_backends::{ExecutionEvent, Executor, KillReach, RunningExecution};
use trident_core::{DownCause, ExecutionId, Input, LeaseEndCause, RunnerId};

use super::bodies::{ClientAction, ClientFrame, ClientInput, ExecuteBody};
use super::{
    ApiError, AppState, PENDING_EXECUTIONS_PER_RUNNER_MAX, Query, WEBSOCKET, claimed_runner, decode,
};
use crate::monitoring::RequestIds;
use crate::monitoring::requests::RequestStart;

/// How long a command may take to stop after the interrupt, before its process tree is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);
/// How long the server waits for a command still being opened when its time limit passed, to
/// stop it once it runs. The backends bound an open themselves (Nomad: two exec handshakes of at
/// most 10 s each, after the allocation lookup); this bounds a backend that does not.
const LATE_OPEN_MAX: Duration = Duration::from_secs(60);
/// How long the client may take to accept a message outside the output loop (`start`, the
/// ending, the close): one that stopped reading must not hold the execution's task forever.
const LAST_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Stdin is queued in pieces of at most this many bytes, so that the queue's bound of
/// `STDIN_QUEUE` pieces bounds bytes, not messages.
const STDIN_PIECE_BYTES: usize = 8 * 1024;
/// Bytes an execution's WebSocket reads from its connection at once. tungstenite's default,
/// 128 KiB, is zero-filled on the first read, so every idle WebSocket held 128 KiB of the
/// server's memory (about 157 KiB per socket in all, measured with 512 idle executions); stdin
/// arrives in pieces of `STDIN_PIECE_BYTES` anyway, and a larger message still fits: the buffer
/// grows to hold a whole frame.
const WEBSOCKET_READ_BUFFER_BYTES: usize = 16 * 1024;
/// How long the reading half keeps reading after the close frame went out, waiting for the
/// client's close frame (see the module documentation): as long as a client may take to accept
/// a message, since it answers our close frame once it has read everything before it.
const CLOSE_DRAIN_TIMEOUT: Duration = LAST_SEND_TIMEOUT;
/// Bytes of messages read and dropped after an execution ended; beyond, the connection is
/// dropped with whatever is still unread (and reset).
const CLOSE_DRAIN_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Poseidon's error texts; CodeOcean matches the OOM one exactly.
const OOM_MESSAGE: &str = "the allocation was OOM Killed";
const STOPPED_MESSAGE: &str = "the allocation stopped as expected";
const GENERIC_MESSAGE: &str = "Error executing the request";
const SHUTTING_DOWN_MESSAGE: &str = "the server is shutting down; the command was stopped";

/// The owner of the executions' WebSocket tasks. axum runs each upgraded connection in a task
/// of its own, detached; every execution's work is tracked here instead, so that the server
/// ends them when it stops and waits for them (bounded) before it exits. Ending one on
/// shutdown stops its command, tells its client with an `error` message and closes with 1001
/// (going away).
#[derive(Debug)]
pub struct Executions {
    tracker: TaskTracker,
    stopping: CancellationToken,
}

impl Executions {
    /// Executions end when `stopping` is cancelled.
    pub fn new(stopping: CancellationToken) -> Executions {
        Executions {
            tracker: TaskTracker::new(),
            stopping,
        }
    }

    /// Waits until every execution has ended, for at most `grace`; returns how many were still
    /// running then (they end with the process). Call once `stopping` is cancelled.
    pub async fn wait(&self, grace: Duration) -> usize {
        self.tracker.close();
        let _ = tokio::time::timeout(grace, self.tracker.wait()).await;
        self.tracker.len()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ExecuteAnswer {
    websocket_url: String,
}

/// Stores the request under a fresh execution id and answers with the WebSocket URL. Unlike
/// Poseidon, commands may contain any character, `'` included: the command reaches the shell
/// as one argument and is never re-quoted.
pub(super) async fn execute<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
    Path(runner): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ExecuteAnswer>, ApiError> {
    let runner = claimed_runner(&state, &runner).await?;
    let body: ExecuteBody = decode(&body)?;
    if let Some(problem) = unrunnable(&body) {
        return Err(ApiError::BadRequest(problem));
    }
    let execution = {
        let mut ids = state
            .ids
            .lock()
            .map_err(|_| ApiError::BadRequest("id source unavailable".into()))?;
        ExecutionId(ids.next_uuid())
    };
    let waiting = {
        let mut pending = state
            .pending_executions
            .lock()
            .map_err(|_| ApiError::BadRequest("execution store unavailable".into()))?;
        let waiting = pending.count_for(runner);
        if waiting >= PENDING_EXECUTIONS_PER_RUNNER_MAX {
            return Err(ApiError::BadRequest(format!(
                "the runner already has {PENDING_EXECUTIONS_PER_RUNNER_MAX} executions waiting for their WebSocket"
            )));
        }
        pending.by_id.insert(execution, (runner, body));
        waiting + 1
    };
    state.monitor.execution_stored(runner, execution, waiting);
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("localhost");
    Ok(Json(ExecuteAnswer {
        websocket_url: format!(
            "ws://{host}/api/v1/runners/{runner}/websocket?executionID={execution}"
        ),
    }))
}

/// Connects an execution: 410 for a runner that is not claimed, 404 for an unknown execution id,
/// 403 when the `Origin` is another host than `Host` (Poseidon's upgrader check), 400 when the
/// request is not a WebSocket upgrade.
pub(super) async fn websocket<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
    Path(runner): Path<String>,
    query: Query,
    headers: HeaderMap,
    request_start: Option<Extension<RequestStart>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let request_start = request_start.map_or_else(Instant::now, |Extension(start)| start.0);
    let runner = claimed_runner(&state, &runner).await?;
    let execution: Option<ExecutionId> = query.get("executionID").and_then(|id| id.parse().ok());
    let body = {
        let mut pending = state
            .pending_executions
            .lock()
            .map_err(|_| ApiError::BadRequest("execution store unavailable".into()))?;
        match execution.and_then(|id| pending.by_id.get(&id).map(|(r, _)| *r)) {
            Some(owner) if owner == runner => execution
                .and_then(|id| pending.by_id.remove(&id))
                .map(|(_, body)| body),
            _ => None,
        }
    };
    let (Some(execution), Some(body)) = (execution, body) else {
        return Err(ApiError::NotFound("execution id unknown".into()));
    };
    let waiting = state
        .pending_executions
        .lock()
        .map_or(0, |pending| pending.count_for(runner));
    state.monitor.execution_taken(runner, execution, waiting);
    if !same_origin(&headers) {
        return Ok(StatusCode::FORBIDDEN.into_response());
    }
    let upgrade = match upgrade {
        // A larger message closes the WebSocket with 1009 (message too big).
        Ok(upgrade) => upgrade
            .max_message_size(state.limits.websocket_message_bytes_max)
            .max_frame_size(state.limits.websocket_message_bytes_max)
            .read_buffer_size(WEBSOCKET_READ_BUFFER_BYTES),
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let span = tracing::info_span!("execution", runner_id = %runner, execution_id = %execution);
    let executions = state.executions.tracker.clone();
    Ok(upgrade.on_upgrade(move |socket| {
        let connected = Instant::now();
        executions.track_future(
            async move {
                let (ending, drain) =
                    run(Arc::clone(&state), runner, execution, body, socket).await;
                // Poseidon measured `/websocket` over the whole execution (its handler blocked
                // until the end); so does Trident, from the upgrade request's arrival.
                let ids = RequestIds {
                    runner: Some(runner),
                    environment: Some(runner.environment()),
                };
                state.monitor.request(
                    WEBSOCKET,
                    StatusCode::SWITCHING_PROTOCOLS.as_u16(),
                    request_start.elapsed(),
                    ids,
                    None,
                );
                state
                    .monitor
                    .execution_finished(ending.outcome(), connected.elapsed());
                // Measured without it: waiting for the client's close frame is not the execution.
                if let Some(drain) = drain {
                    drain.finish().await;
                }
            }
            .instrument(span),
        )
    }))
}

/// Why a command cannot be run, if it cannot: `execve` takes no NUL byte, and a variable needs
/// a name without `=`. Refused here with a 400 rather than failing once the WebSocket is open.
fn unrunnable(body: &ExecuteBody) -> Option<String> {
    if body.command.contains('\0') {
        return Some("the command contains a NUL byte".into());
    }
    body.environment.iter().find_map(|(name, value)| {
        if name.is_empty() || name.contains(['=', '\0']) {
            Some(format!("{name:?} is not a valid environment variable name"))
        } else if value.contains('\0') {
            Some(format!("the value of {name:?} contains a NUL byte"))
        } else {
            None
        }
    })
}

/// Whether the `Origin` header, if any, names the `Host` the request was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    origin_host.eq_ignore_ascii_case(host)
}

#[derive(Serialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
enum ServerMessage<'a> {
    Start,
    Stdout(&'a str),
    Stderr(&'a str),
    Exit(u8),
    Timeout,
    Error(&'a str),
}

impl Ending {
    /// The `outcome` label of the execution-duration metric.
    fn outcome(&self) -> &'static str {
        match self {
            Ending::Exited(_) => "exit",
            Ending::TimeLimit | Ending::LeaseEnded(LeaseEndCause::InactivityTimeout) => "timeout",
            Ending::LeaseEnded(_)
            | Ending::Failed
            | Ending::OutputLimit(_)
            | Ending::ShuttingDown => "error",
            Ending::ClientClosed | Ending::MessageTooBig => "client_closed",
        }
    }
}

/// How an execution ended, as far as the client is told.
#[derive(Debug)]
enum Ending {
    Exited(u8),
    TimeLimit,
    LeaseEnded(LeaseEndCause),
    ClientClosed,
    Failed,
    /// The output passed this many bytes.
    OutputLimit(u64),
    /// The client sent a message over the WebSocket message limit.
    MessageTooBig,
    /// The server is stopping.
    ShuttingDown,
}

/// Runs one execution over its WebSocket. Returns how it ended and, unless the client's close
/// frame came already, the reading half still to be drained.
async fn run<E: Executor>(
    state: Arc<AppState<E>>,
    runner: RunnerId,
    execution: ExecutionId,
    body: ExecuteBody,
    socket: WebSocket,
) -> (Ending, Option<Drain>) {
    let (mut sink, stream) = socket.split();
    let started = state
        .manager
        .apply(Input::ExecutionStarted { runner, execution })
        .await;
    let lease = state.manager.watch_lease(runner).await.ok().flatten();
    let (Ok(trident_core::Reply::Runner(Ok(()))), Some(mut lease)) = (started, lease) else {
        let refused = async {
            let _ = send_bounded(&mut sink, &ServerMessage::Error(GENERIC_MESSAGE)).await;
            let _ = tokio::time::timeout(LAST_SEND_TIMEOUT, sink.send(close_normal())).await;
        };
        let drain = while_draining(refused, Some(Drain::new(stream))).await;
        return (Ending::Failed, drain);
    };
    let _ = send_bounded(&mut sink, &ServerMessage::Start).await;
    // The time limit counts from `start`, as the client sees it: a backend slow to open the
    // command (Nomad's exec under a partition) does not stretch it.
    let deadline = body.deadline(Instant::now());
    let stopping = &state.executions.stopping;
    let mut opening = Box::pin(state.executor.execute(runner, body.request()));
    let opened = tokio::select! {
        biased;
        () = stopping.cancelled() => Err(Ending::ShuttingDown),
        opened = &mut opening => Ok(opened),
        () = sleep_until(deadline) => Err(Ending::TimeLimit),
    };
    // A command that outlived its limit or the lease is stopped after the client has its final
    // message: stopping may wait (an interrupt's grace, a slow backend), the answer need not.
    let mut to_stop = None;
    // A command whose limit passed while it was being opened may start all the same (Nomad's exec
    // under latency: the session was on its way); it is stopped once it has opened, which the
    // backend bounds (Poseidon's interrupt waits for the connection in its priority buffer).
    let late = matches!(opened, Err(Ending::TimeLimit)).then_some(opening);
    let (ending, stream) = match opened {
        Err(ending) => (ending, Some(stream)),
        Ok(Err(error)) => {
            tracing::warn!(%error, "the execution could not start");
            (Ending::Failed, Some(stream))
        }
        Ok(Ok(mut process)) => {
            // The input pump holds the reading half while the command runs; it ends by itself
            // when the client closes, and is stopped when the execution ends first. Either way
            // it hands the reading half back, to be drained.
            let (closed_tx, mut closed) = oneshot::channel();
            let stop_input = CancellationToken::new();
            let pump = AbortOnDropHandle::new(tokio::spawn(pump_input(
                stream,
                process.stdin(),
                closed_tx,
                stop_input.clone(),
            )));
            let watch = Watch {
                deadline,
                lease: &mut lease,
                lease_open: true,
                closed: &mut closed,
                stopping,
            };
            let ending = pump_output(
                &mut process,
                &mut sink,
                watch,
                state.limits.output_bytes_max,
            )
            .await;
            stop_input.cancel();
            // Prompt: every wait of the pump gives way to `stop_input`. A pump that panicked
            // leaves nothing to drain.
            let stream = pump.await.ok();
            if !matches!(ending, Ending::Exited(_)) {
                to_stop = Some(process);
            }
            (ending, stream)
        }
    };
    tracing::info!(?ending, "execution ended");
    let output_limit_message = match &ending {
        Ending::OutputLimit(bytes) => {
            format!("the output exceeded the limit of {bytes} bytes; the command was killed")
        }
        _ => String::new(),
    };
    let message = match &ending {
        Ending::Exited(code) => Some(ServerMessage::Exit(*code)),
        Ending::TimeLimit | Ending::LeaseEnded(LeaseEndCause::InactivityTimeout) => {
            Some(ServerMessage::Timeout)
        }
        Ending::LeaseEnded(LeaseEndCause::Backend(DownCause::OomKilled)) => {
            Some(ServerMessage::Error(OOM_MESSAGE))
        }
        Ending::LeaseEnded(
            LeaseEndCause::Released | LeaseEndCause::Backend(DownCause::Completed),
        ) => Some(ServerMessage::Error(STOPPED_MESSAGE)),
        Ending::LeaseEnded(_) | Ending::Failed => Some(ServerMessage::Error(GENERIC_MESSAGE)),
        Ending::OutputLimit(_) => Some(ServerMessage::Error(&output_limit_message)),
        Ending::ShuttingDown => Some(ServerMessage::Error(SHUTTING_DOWN_MESSAGE)),
        Ending::ClientClosed | Ending::MessageTooBig => None,
    };
    let close = match ending {
        Ending::MessageTooBig => close_too_big(state.limits.websocket_message_bytes_max),
        Ending::ShuttingDown => close_going_away(),
        _ => close_normal(),
    };
    let closing = async {
        if let Some(message) = message {
            let _ = send_bounded(&mut sink, &message).await;
        }
        let to_stop = match (to_stop, late) {
            (Some(process), _) => Some(process),
            (None, Some(opening)) => tokio::select! {
                biased;
                () = stopping.cancelled() => None,
                opened = tokio::time::timeout(LATE_OPEN_MAX, opening) => match opened {
                    Ok(Ok(process)) => Some(process),
                    Ok(Err(error)) => {
                        tracing::info!(%error, "the command did not start after its time limit");
                        None
                    }
                    Err(_) => {
                        tracing::warn!("the command was still being opened {LATE_OPEN_MAX:?} after its time limit; giving it up");
                        None
                    }
                },
            },
            (None, None) => None,
        };
        if let Some(mut process) = to_stop
            && stop(&mut process, &ending).await == KillReach::ConnectionOnly
            && !matches!(ending, Ending::LeaseEnded(_) | Ending::ShuttingDown)
        {
            // The command may run on in the runner (Nomad's exec): stopping the runner is the
            // only way left to end it, as Poseidon does ("the execution did not stop after
            // SIGQUIT"). A runner whose lease ended is stopping anyway; at shutdown the runner
            // is kept for the next start, as claimed runners are.
            tracing::warn!("the command could not be stopped; stopping its runner");
            let _ = state
                .manager
                .apply(Input::ExecutionNotStopped { runner, execution })
                .await;
        }
        // A client that stopped reading must not hold the execution's task forever.
        let _ = tokio::time::timeout(LAST_SEND_TIMEOUT, async {
            let _ = sink.send(close).await;
            let _ = sink.close().await;
        })
        .await;
    };
    let drain = while_draining(closing, stream.map(Drain::new)).await;
    let _ = state
        .manager
        .apply(Input::ExecutionFinished { runner, execution })
        .await;
    (ending, drain)
}

/// The reading half of an execution's WebSocket once the execution is over: what the client
/// still sends is read and dropped, so that closing the connection does not reset it (see the
/// module documentation).
struct Drain {
    stream: futures_util::stream::SplitStream<WebSocket>,
    /// Bytes of messages dropped so far.
    dropped_bytes: usize,
}

impl Drain {
    fn new(stream: futures_util::stream::SplitStream<WebSocket>) -> Drain {
        Drain {
            stream,
            dropped_bytes: 0,
        }
    }

    /// Reads one message and drops it. `false` once there is nothing more to wait for: the
    /// client's close frame came, the connection ended or failed, or the byte bound is reached.
    /// Cancel-safe: a message only partly received stays in the stream's buffer.
    async fn drop_one(&mut self) -> bool {
        if self.dropped_bytes >= CLOSE_DRAIN_BYTES_MAX {
            return false;
        }
        let bytes = match self.stream.next().await {
            Some(Ok(Message::Close(_)) | Err(_)) | None => return false,
            Some(Ok(Message::Text(text))) => text.len(),
            Some(Ok(Message::Binary(bytes) | Message::Ping(bytes) | Message::Pong(bytes))) => {
                bytes.len()
            }
        };
        self.dropped_bytes = self.dropped_bytes.saturating_add(bytes);
        true
    }

    /// Drops what the client sends until [`Drain::drop_one`] has nothing more to wait for, for
    /// at most [`CLOSE_DRAIN_TIMEOUT`]. Dropping the drain afterwards closes the connection.
    async fn finish(mut self) {
        let _ = tokio::time::timeout(CLOSE_DRAIN_TIMEOUT, async {
            while self.drop_one().await {}
        })
        .await;
    }
}

/// Runs `closing` (the final message, the command's stop, the close frame) while the drain
/// drops what the client sends meanwhile: a client blocked on sending might otherwise never
/// read the final message. Returns the drain unless it has nothing more to wait for.
async fn while_draining(closing: impl Future<Output = ()>, drain: Option<Drain>) -> Option<Drain> {
    let Some(mut drain) = drain else {
        closing.await;
        return None;
    };
    let mut closing = std::pin::pin!(closing);
    loop {
        tokio::select! {
            biased;
            () = &mut closing => return Some(drain),
            more = drain.drop_one() => if !more {
                closing.await;
                return None;
            },
        }
    }
}

/// What ends an execution besides its own exit: the time limit, the end of the lease, the
/// client's close, the server's shutdown.
struct Watch<'a> {
    deadline: Option<Instant>,
    lease: &'a mut crate::driver::LeaseWatch,
    lease_open: bool,
    closed: &'a mut oneshot::Receiver<ClientGone>,
    stopping: &'a CancellationToken,
}

impl Watch<'_> {
    /// Resolves when one of the endings happens (never, if none can).
    async fn ending(&mut self) -> Ending {
        loop {
            tokio::select! {
                biased;
                // First: at shutdown the driver also ends every lease (as released), later.
                () = self.stopping.cancelled() => return Ending::ShuttingDown,
                gone = &mut *self.closed => return match gone {
                    Ok(ClientGone::TooBig) => Ending::MessageTooBig,
                    Ok(ClientGone::Closed) | Err(_) => Ending::ClientClosed,
                },
                changed = self.lease.changed(), if self.lease_open => match changed {
                    Ok(()) => {
                        if let Some(cause) = *self.lease.borrow() {
                            return Ending::LeaseEnded(cause);
                        }
                    }
                    Err(_) => self.lease_open = false,
                },
                () = sleep_until(self.deadline) => return Ending::TimeLimit,
            }
        }
    }
}

/// Forwards output until the command exits, the time limit passes, the lease ends, the client
/// closes or the output passes `output_bytes_max`, whichever comes first. Waiting for a slow
/// client to take a message is no escape from the others: a client that stops reading still
/// meets the time limit and the lease's end.
async fn pump_output<X: RunningExecution>(
    process: &mut X,
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    mut watch: Watch<'_>,
    output_bytes_max: Option<u64>,
) -> Ending {
    let mut stdout = Utf8Chunks::default();
    let mut stderr = Utf8Chunks::default();
    let mut output_bytes: u64 = 0;
    loop {
        let event = tokio::select! {
            biased;
            event = process.next_event() => event,
            ending = watch.ending() => return ending,
        };
        let text = match event {
            Some(ExecutionEvent::Stdout(bytes) | ExecutionEvent::Stderr(bytes))
                if output_bytes_max
                    .is_some_and(|max| output_bytes.saturating_add(bytes.len() as u64) > max) =>
            {
                return Ending::OutputLimit(output_bytes_max.unwrap_or_default());
            }
            Some(ExecutionEvent::Stdout(bytes)) => {
                output_bytes += bytes.len() as u64;
                ServerText::Stdout(stdout.push(&bytes))
            }
            Some(ExecutionEvent::Stderr(bytes)) => {
                output_bytes += bytes.len() as u64;
                ServerText::Stderr(stderr.push(&bytes))
            }
            Some(ExecutionEvent::Exited(code)) => return Ending::Exited(code),
            Some(ExecutionEvent::Gone) | None => {
                return match *watch.lease.borrow() {
                    Some(cause) => Ending::LeaseEnded(cause),
                    None => Ending::Failed,
                };
            }
        };
        let message = match &text {
            ServerText::Stdout(text) if !text.is_empty() => ServerMessage::Stdout(text),
            ServerText::Stderr(text) if !text.is_empty() => ServerMessage::Stderr(text),
            _ => continue,
        };
        tokio::select! {
            biased;
            sent = send(sink, &message) => if sent.is_err() {
                return Ending::ClientClosed;
            },
            ending = watch.ending() => return ending,
        }
    }
}

/// A chunk of output text, by stream.
enum ServerText {
    Stdout(String),
    Stderr(String),
}

/// Stops a command that did not exit by itself: interrupt as Ctrl-\ does (unless the runner is
/// gone anyway), then kill the process tree after a grace period. Returns how far the kill
/// reached (`ProcessTree` when the interrupt was enough).
async fn stop<X: RunningExecution>(process: &mut X, ending: &Ending) -> KillReach {
    // At shutdown nobody waits for the command's last words, and a runner whose lease ended is
    // going anyway. A runaway output is interrupted first too: what it writes meanwhile is read
    // and dropped, and on Nomad a kill that only closes the connection costs the runner.
    if !matches!(ending, Ending::LeaseEnded(_) | Ending::ShuttingDown) {
        process.interrupt();
        // Only an exit code shows that the command ended. `Gone` (or the end of the events) may
        // be the connection to it lost, with the command running on (Nomad's exec): the kill
        // below then says how far it can reach.
        let exited = tokio::time::timeout(INTERRUPT_GRACE, async {
            while let Some(event) = process.next_event().await {
                match event {
                    ExecutionEvent::Exited(_) => return true,
                    ExecutionEvent::Gone => return false,
                    ExecutionEvent::Stdout(_) | ExecutionEvent::Stderr(_) => {}
                }
            }
            false
        })
        .await;
        match exited {
            Ok(true) => return KillReach::ProcessTree,
            Ok(false) => tracing::info!("the connection to the command was lost; killing it"),
            Err(_) => tracing::info!("the command ignored the interrupt; killing it"),
        }
    }
    process.kill()
}

/// Forwards the client's text frames to stdin. A binary frame stops forwarding (Poseidon does
/// the same); a close frame, an error or the end of the stream reports the client gone. Returns
/// the reading half when the client is gone or at once when `stop` is cancelled (the execution
/// ended).
async fn pump_input(
    mut stream: futures_util::stream::SplitStream<WebSocket>,
    stdin: tokio::sync::mpsc::Sender<bytes::Bytes>,
    closed: oneshot::Sender<ClientGone>,
    stop: CancellationToken,
) -> futures_util::stream::SplitStream<WebSocket> {
    let mut input = ClientInput::default();
    let mut gone = ClientGone::Closed;
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => return stream,
            next = stream.next() => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                if too_big(error) {
                    gone = ClientGone::TooBig;
                }
                break;
            }
            None => break,
        };
        let frame = match &message {
            Message::Text(text) => ClientFrame::Text(text.as_str()),
            Message::Binary(_) => ClientFrame::Binary,
            Message::Close(_) => ClientFrame::Close,
            Message::Ping(_) | Message::Pong(_) => ClientFrame::Control,
        };
        match input.on_frame(frame) {
            ClientAction::Stdin(bytes) => {
                for piece in bytes.chunks(STDIN_PIECE_BYTES) {
                    // A full queue (the command reads no input) must not keep the pump from
                    // stopping.
                    let sent = tokio::select! {
                        biased;
                        () = stop.cancelled() => return stream,
                        sent = stdin.send(bytes::Bytes::copy_from_slice(piece)) => sent,
                    };
                    if sent.is_err() {
                        input.stop();
                        break;
                    }
                }
            }
            ClientAction::Ignore => {}
            ClientAction::Closed => break,
        }
    }
    let _ = closed.send(gone);
    stream
}

/// How the client's side of an execution's WebSocket ended.
#[derive(Debug)]
enum ClientGone {
    /// Closed, reset, or a protocol error.
    Closed,
    /// A message over the WebSocket message limit.
    TooBig,
}

/// Whether a read error is a message over the limit (axum reports tungstenite's errors).
fn too_big(error: axum::Error) -> bool {
    error
        .into_inner()
        .downcast::<tungstenite::Error>()
        .is_ok_and(|error| matches!(*error, tungstenite::Error::Capacity(_)))
}

/// [`send`] for messages outside the output loop, bounded by [`LAST_SEND_TIMEOUT`].
async fn send_bounded(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    message: &ServerMessage<'_>,
) -> Result<(), axum::Error> {
    tokio::time::timeout(LAST_SEND_TIMEOUT, send(sink, message))
        .await
        .unwrap_or_else(|_| {
            Err(axum::Error::new(
                "the client did not take the message in time",
            ))
        })
}

async fn send(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    message: &ServerMessage<'_>,
) -> Result<(), axum::Error> {
    let text = serde_json::to_string(message).expect("messages serialize");
    sink.send(Message::Text(text.into())).await
}

/// 1009, "message too big" (RFC 6455 §7.4.1).
fn close_too_big(limit: usize) -> Message {
    Message::Close(Some(CloseFrame {
        code: 1009,
        reason: format!("a message exceeded {limit} bytes").into(),
    }))
}

/// 1001, "going away": the server is stopping (RFC 6455 §7.4.1).
fn close_going_away() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1001,
        reason: "the server is shutting down".into(),
    }))
}

fn close_normal() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1000,
        reason: "".into(),
    }))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Turns a byte stream into text chunks without splitting a UTF-8 sequence across two messages:
/// an incomplete sequence at the end of a chunk waits for the next one; invalid bytes become
/// U+FFFD, as Go's JSON encoding does for Poseidon.
#[derive(Debug, Default)]
struct Utf8Chunks {
    pending: Vec<u8>,
}

impl Utf8Chunks {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let keep = incomplete_tail(&self.pending);
        let complete = self.pending.len() - keep;
        let text = String::from_utf8_lossy(&self.pending[..complete]).into_owned();
        self.pending.drain(..complete);
        text
    }
}

/// How many bytes at the end of `bytes` start a UTF-8 sequence that is not complete yet.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let byte = bytes[bytes.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back
        }
        let needed = match byte {
            0b1100_0000..=0b1101_1111 => 2,
            0b1110_0000..=0b1110_1111 => 3,
            0b1111_0000..=0b1111_0111 => 4,
            _ => return 0,
        };
        return if back < needed { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_utf8_sequence_waits_for_its_end() {
        let mut chunks = Utf8Chunks::default();
        let euro = "€".as_bytes(); // three bytes
        assert_eq!(chunks.push(&[b'a', euro[0]]), "a");
        assert_eq!(chunks.push(&euro[1..2]), "");
        assert_eq!(chunks.push(&[euro[2], b'b']), "€b");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut chunks = Utf8Chunks::default();
        assert_eq!(chunks.push(&[b'x', 0xff, b'y']), "x\u{fffd}y");
    }

    #[test]
    fn messages_have_poseidons_shape() {
        let json = |m: ServerMessage<'_>| serde_json::to_string(&m).expect("serializes");
        assert_eq!(json(ServerMessage::Start), r#"{"type":"start"}"#);
        assert_eq!(
            json(ServerMessage::Stdout("hi")),
            r#"{"type":"stdout","data":"hi"}"#
        );
        assert_eq!(json(ServerMessage::Exit(1)), r#"{"type":"exit","data":1}"#);
        assert_eq!(json(ServerMessage::Timeout), r#"{"type":"timeout"}"#);
        assert_eq!(
            json(ServerMessage::Error(OOM_MESSAGE)),
            r#"{"type":"error","data":"the allocation was OOM Killed"}"#
        );
    }

    #[test]
    fn the_origin_must_name_the_host() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "example.org:7200".parse().expect("valid"));
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            "http://example.org:7200".parse().expect("valid"),
        );
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            "http://evil.example".parse().expect("valid"),
        );
        assert!(!same_origin(&headers));
    }
}
