//! The exec WebSocket, `GET /v1/client/allocation/:id/exec` (`nomad-api.md` §7).
//!
//! As Nomad ≥ 2.0.3 does, the upgrade happens first and every refusal is a close frame (1008 with
//! the reason texts of §7.5). A session forwards stdin frames to the process, sends its output in
//! frames of at most 1024 bytes, then `stdout`/`stderr` close frames and the `exited` frame
//! (`exit_code` omitted when 0), and closes the TCP connection without a close frame. The server
//! sends no heartbeats. With `tty=true` stderr is merged into stdout, as Docker does.
//!
//! When the container dies under the exec (OOM kill, stop, loss), the session ends with exit code
//! 137. When the client goes away, the session ends and the process runs on, as under Docker
//! (§7.5): stdin at end of file, output discarded, until it ends by itself or its container
//! stops ([`FakeNomad::outlive`]). With `tty=true` the session plays the terminal's line
//! discipline for one key: a Ctrl-\\ byte (0x1c) in stdin is taken out of the input and ends the
//! process as SIGQUIT does (exit code 131), unless the command ran `trap '' QUIT`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::FutureExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use trident_backends::nomad::commands::{self, INTERRUPT_BYTE};

use super::driver::{Output, Process};
use super::{FakeNomad, Running};

/// Raw bytes per output frame (the driver's read size, §7.4).
const FRAME_BYTES_MAX: usize = 1024;
/// Chunks queued between the websocket and the process, each way.
const CHANNEL_BOUND: usize = 16;
/// How long a finished session waits for the client's stdin close or its close of the
/// connection (tokio time).
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) async fn exec_handler(
    State(nomad): State<FakeNomad>,
    Path(alloc_id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade.on_upgrade(move |socket| session(nomad, alloc_id, params, socket))
}

async fn close(mut socket: WebSocket, code: u16, reason: String) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

async fn send_json(socket: &mut WebSocket, value: Value) -> bool {
    send_text(
        socket,
        serde_json::to_string(&value).expect("a Value always serialises"),
    )
    .await
}

async fn send_text(socket: &mut WebSocket, text: String) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

async fn send_output(socket: &mut WebSocket, output: Output, tty: bool) -> bool {
    let (stream, bytes) = match output {
        Output::Stdout(bytes) => ("stdout", bytes),
        Output::Stderr(bytes) if tty => ("stdout", bytes),
        Output::Stderr(bytes) => ("stderr", bytes),
    };
    for chunk in bytes.chunks(FRAME_BYTES_MAX) {
        // `{"stdout":{"data":…}}` written out: base64 needs no escaping, and the frame is the
        // one message of the simulation sent most often.
        let mut frame = String::with_capacity(24 + chunk.len().div_ceil(3) * 4);
        frame.push_str("{\"");
        frame.push_str(stream);
        frame.push_str("\":{\"data\":\"");
        BASE64.encode_string(chunk, &mut frame);
        frame.push_str("\"}}");
        if !send_text(socket, frame).await {
            return false;
        }
    }
    true
}

/// What a client frame asks for (§7.3).
enum Input {
    Stdin(Vec<u8>),
    StdinClose,
    Heartbeat,
    Invalid,
}

fn parse_input(text: &str) -> Input {
    let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text) else {
        return Input::Invalid;
    };
    match frame.get("stdin") {
        Some(stdin) => {
            if stdin.get("close").and_then(Value::as_bool) == Some(true) {
                return Input::StdinClose;
            }
            match stdin
                .get("data")
                .and_then(Value::as_str)
                .map(|d| BASE64.decode(d))
            {
                Some(Ok(bytes)) => Input::Stdin(bytes),
                Some(Err(_)) => Input::Invalid,
                None => Input::Heartbeat,
            }
        }
        // `tty_size`, `setup` and `{}` change nothing here.
        None => Input::Heartbeat,
    }
}

async fn session(
    nomad: FakeNomad,
    alloc_id: String,
    params: Vec<(String, String)>,
    mut socket: WebSocket,
) {
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let Some(task) = param("task").filter(|t| !t.is_empty()) else {
        return close(socket, 1008, "must provide task name".into()).await;
    };
    let argv: Vec<String> = match param("command").map(|c| serde_json::from_str(&c)) {
        Some(Ok(argv)) => argv,
        Some(Err(error)) => {
            return close(socket, 1008, format!("failed to parse command: {error}")).await;
        }
        None => Vec::new(),
    };
    if argv.is_empty() {
        return close(socket, 1008, "command is not present".into()).await;
    }
    let tty = param("tty").is_some_and(|t| t == "true");
    let stderr_reader = commands::decode_stderr_reader(&argv).is_some();
    let target = nomad.lock().exec_target(&alloc_id, &task);
    let target = match target {
        Ok(target) => target,
        Err((code, reason)) => return close(socket, code, reason).await,
    };
    let (delay, drop_before_exit) = {
        let state = nomad.lock();
        (state.faults.exec_delay, state.faults.exec_drop_before_exit)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(CHANNEL_BOUND);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(CHANNEL_BOUND);
    let mut wake = nomad.shared.wake.subscribe();
    let quit_ignored = Arc::new(AtomicBool::new(false));
    let mut process = Process {
        nomad: nomad.clone(),
        alloc_id: alloc_id.clone(),
        incarnation: target.incarnation,
        memory_limit_mb: target.memory_limit_mb,
        stdin: Some(stdin_rx),
        out: out_tx,
        stderr_to: None,
        environment: Vec::new(),
        quit_ignored: Arc::clone(&quit_ignored),
    };
    // `None` once the process is gone (killed by the terminal's SIGQUIT, or its container died).
    let mut run: Option<Running> = Some(Box::pin(async move { process.run_argv(&argv).await }));
    // Set when the client went away while the process was still running.
    let mut client_gone = false;

    let mut stdin_tx = Some(stdin_tx);
    let mut pending_stdin: Option<Vec<u8>> = None;
    let mut exit_code: Option<i32> = None;
    let mut output_open = true;
    let mut client_closed_stdin = false;
    while exit_code.is_none() || output_open {
        // An owned clone, so the select arm does not borrow `stdin_tx`; dropped every round.
        let reserve_tx = stdin_tx.clone();
        tokio::select! {
            biased;
            output = out_rx.recv(), if output_open => match output {
                Some(output) => {
                    if !send_output(&mut socket, output, tty).await {
                        client_gone = true;
                        break;
                    }
                }
                None => output_open = false,
            },
            code = async {
                match run.as_mut() {
                    Some(running) => running.await,
                    None => std::future::pending().await,
                }
            }, if exit_code.is_none() => {
                run = None;
                exit_code = Some(code);
            }
            permit = async { reserve_tx?.reserve_owned().await.ok() }, if pending_stdin.is_some() => {
                match permit {
                    Some(permit) => {
                        permit.send(pending_stdin.take().expect("guarded"));
                    }
                    None => {
                        pending_stdin = None;
                        stdin_tx = None;
                    }
                }
            }
            message = socket.recv(), if pending_stdin.is_none() => match message {
                Some(Ok(Message::Text(text))) => match parse_input(text.as_str()) {
                    Input::Stdin(mut bytes) => {
                        if tty && bytes.contains(&INTERRUPT_BYTE) {
                            // The line discipline takes Ctrl-\ out of the input and sends SIGQUIT
                            // to the foreground process group: the whole command.
                            bytes.retain(|byte| *byte != INTERRUPT_BYTE);
                            if exit_code.is_none() && !quit_ignored.load(Ordering::Relaxed) {
                                run = None;
                                exit_code = Some(128 + 3);
                            }
                        }
                        if stdin_tx.is_some() && !bytes.is_empty() {
                            pending_stdin = Some(bytes);
                        }
                    }
                    Input::StdinClose => {
                        stdin_tx = None;
                        client_closed_stdin = true;
                    }
                    Input::Heartbeat => {}
                    Input::Invalid => return close(socket, 1011, "unexpected message type".into()).await,
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    client_gone = true;
                    break;
                }
                Some(Ok(_)) => {}
            },
            changed = wake.changed() => {
                let alive = changed.is_ok()
                    && nomad
                        .lock()
                        .alloc(&alloc_id)
                        .is_some_and(|alloc| alloc.incarnation == target.incarnation);
                if !alive {
                    // The container died under the exec: what it wrote before still arrives.
                    run = None;
                    while let Ok(output) = out_rx.try_recv() {
                        if !send_output(&mut socket, output, tty).await {
                            return;
                        }
                    }
                    exit_code = Some(137);
                    break;
                }
            }
        }
    }
    if client_gone {
        // The session ends; the process does not (§7.5). Its stdin reaches end of file when the
        // session's senders go with this function, and its output has nowhere to go.
        if let Some(running) = run.take() {
            nomad.outlive(alloc_id, target.incarnation, running, stderr_reader);
        }
        return;
    }
    if drop_before_exit {
        // §10 row 21: the connection just closes.
        return;
    }
    let code = exit_code.unwrap_or(137);
    for frame in [
        json!({ "stdout": { "close": true } }),
        json!({ "stderr": { "close": true } }),
        if code == 0 {
            json!({ "exited": true, "result": {} })
        } else {
            json!({ "exited": true, "result": { "exit_code": code } })
        },
    ] {
        if !send_json(&mut socket, frame).await {
            return;
        }
    }
    // Nomad closes the TCP connection without a close frame (§7.5): dropping the socket does.
    // Closing a socket with unread data resets the connection, and a reset makes the client's
    // kernel discard what it has not read yet: a long download lost its tail that way, and a
    // short command its exit frame (the client's stdin close, sent as the command ended, was
    // still in flight). Nomad reads the client's frames on their own until the connection
    // closes, so nothing is left unread. Here a session whose client has not closed stdin yet
    // reads on after the exit frame until that frame comes, the client closes (Trident's does
    // on the exit frame) or `CLOSE_LINGER` passes; then it takes what is already there.
    if !client_closed_stdin {
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(message)) = socket.recv().await {
                if let Message::Text(text) = &message
                    && matches!(parse_input(text.as_str()), Input::StdinClose)
                {
                    break;
                }
            }
        })
        .await;
    }
    while let Some(Some(Ok(_))) = socket.recv().now_or_never() {}
}
