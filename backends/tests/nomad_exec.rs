//! The exec websocket client against an in-test stand-in for Nomad's exec endpoint
//! (`reference/nomad-api.md` §7), and the commands of `nomad::commands` against this machine's
//! real `ls`, `tar` and `bash`.
//!
//! The stand-in is tokio-tungstenite's server on one end of an in-memory duplex stream, handed
//! out by a test [`Connector`]: the client code under test is the production code (handshake,
//! frames, session task), and with tokio's clock paused heartbeats can be timed exactly. One
//! test runs the same client over real TCP.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use trident_backends::executor::{ExecutionEvent, FileHeader, RunningExecution};
use trident_backends::nomad::client::NomadConfig;
use trident_backends::nomad::commands::{self, INTERRUPT_BYTE};
use trident_backends::nomad::connector::{Connector, MaybeTls, TcpConnector};
use trident_backends::nomad::exec::{
    ExecClient, ExecConfig, ExecError, ExecSession, KILLED_EXIT_CODE, SessionEnd, SplitExecution,
    choose_allocation,
};
use trident_backends::nomad::model::Allocation;
use trident_backends::nomad::retry::SplitMix64;

const TOKEN: &str = "s3cr3t-token";
const ALLOCATION: &str = "5b2c1a3e-0000-4000-8000-000000000001";

// ---------------------------------------------------------------------------------------------
// The stand-in
// ---------------------------------------------------------------------------------------------

/// A connector whose connections are in-memory pipes; the test gets the other ends.
#[derive(Clone, Debug)]
struct PipeConnector {
    servers: mpsc::Sender<DuplexStream>,
}

impl Connector for PipeConnector {
    type Stream = DuplexStream;

    async fn connect(&self, _host: &str, _port: u16) -> std::io::Result<DuplexStream> {
        let (client, server) = tokio::io::duplex(64 << 10);
        self.servers
            .send(server)
            .await
            .map_err(|_| std::io::Error::other("the stand-in is gone"))?;
        Ok(client)
    }
}

/// The upgrade request as the stand-in saw it.
#[derive(Clone, Debug, Default)]
struct Upgrade {
    path: String,
    query: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
}

impl Upgrade {
    fn command(&self) -> Vec<String> {
        serde_json::from_str(&self.query["command"]).expect("command is a JSON list of strings")
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).expect("ascii");
            decoded.push(u8::from_str_radix(hex, 16).expect("hex"));
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).expect("utf-8")
}

fn record(request: &Request) -> Upgrade {
    let uri = request.uri();
    Upgrade {
        path: uri.path().to_owned(),
        query: uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key.to_owned(), percent_decode(value)))
            .collect(),
        headers: request
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    value.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
    }
}

/// Accepts one upgrade and records what the client asked for.
// The callback's error type is tungstenite's.
#[allow(clippy::result_large_err)]
async fn accept(stream: DuplexStream) -> (WebSocketStream<DuplexStream>, Upgrade) {
    let mut seen = Upgrade::default();
    let socket = tokio_tungstenite::accept_hdr_async(
        stream,
        |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
            seen = record(request);
            Ok(response)
        },
    )
    .await
    .expect("the client's upgrade is a valid websocket handshake");
    (socket, seen)
}

fn client(servers: mpsc::Sender<DuplexStream>) -> ExecClient<PipeConnector> {
    let mut nomad = NomadConfig::new("http://nomad.test:4646");
    nomad.token = Some(TOKEN.to_owned());
    nomad.namespace = Some("poseidon".to_owned());
    ExecClient::new(
        &nomad,
        PipeConnector { servers },
        ExecConfig::default(),
        SplitMix64::new(7),
    )
    .expect("a valid configuration")
}

/// A client and the stand-in's side: the server ends of its connections.
fn stand_in() -> (ExecClient<PipeConnector>, mpsc::Receiver<DuplexStream>) {
    let (servers, accepted) = mpsc::channel(4);
    (client(servers), accepted)
}

fn argv(command: &str) -> Vec<String> {
    vec!["/bin/bash".into(), "-c".into(), command.into()]
}

fn stdout(data: &[u8]) -> Message {
    Message::text(json!({"stdout": {"data": BASE64.encode(data)}}).to_string())
}

fn stderr(data: &[u8]) -> Message {
    Message::text(json!({"stderr": {"data": BASE64.encode(data)}}).to_string())
}

fn exited(result: Value) -> Message {
    Message::text(json!({"exited": true, "result": result}).to_string())
}

/// The next text frame from the client, as JSON, skipping heartbeats.
async fn next_input(socket: &mut WebSocketStream<DuplexStream>) -> Option<Value> {
    while let Some(message) = socket.next().await {
        match message.ok()? {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).expect("client frames are JSON");
                if value != json!({}) {
                    return Some(value);
                }
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
    None
}

fn stdin_data(frame: &Value) -> Vec<u8> {
    BASE64
        .decode(frame["stdin"]["data"].as_str().expect("a stdin data frame"))
        .expect("base64")
}

async fn collect(execution: &mut impl RunningExecution) -> Vec<ExecutionEvent> {
    let mut events = Vec::new();
    while let Some(event) = execution.next_event().await {
        events.push(event);
    }
    events
}

// ---------------------------------------------------------------------------------------------
// Exec sessions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn handshake_carries_task_tty_command_json_namespace_and_token() {
    let (client, mut accepted) = stand_in();
    let command = argv("echo 'a b' \"$X\" && printf '%s\\n' ü;\n exit 3");
    let server = tokio::spawn(async move {
        let (mut socket, seen) = accept(accepted.recv().await.expect("a connection")).await;
        socket.send(stdout(b"out\r\n")).await.expect("sent");
        socket.send(stderr(b"err\n")).await.expect("sent");
        socket
            .send(Message::text(r#"{"stdout":{"close":true}}"#))
            .await
            .expect("sent");
        socket
            .send(exited(json!({"exit_code": 3})))
            .await
            .expect("sent");
        seen
    });
    let mut session = client
        .open(ALLOCATION, true, &command)
        .await
        .expect("the session opens");
    let events = collect(&mut session).await;
    assert_eq!(
        events,
        [
            ExecutionEvent::Stdout(Bytes::from_static(b"out\r\n")),
            ExecutionEvent::Stderr(Bytes::from_static(b"err\n")),
            ExecutionEvent::Exited(3),
        ]
    );
    assert_eq!(
        session.end(),
        Some(SessionEnd::Exited {
            code: 3,
            oom_killed: false
        })
    );
    let seen = server.await.expect("the stand-in ran");
    assert_eq!(
        seen.path,
        format!("/v1/client/allocation/{ALLOCATION}/exec")
    );
    assert_eq!(seen.query["task"], "default-task");
    assert_eq!(seen.query["tty"], "true");
    assert_eq!(seen.query["namespace"], "poseidon");
    assert_eq!(seen.command(), command);
    assert_eq!(seen.headers["x-nomad-token"], TOKEN);
    assert_eq!(seen.headers["host"], "nomad.test:4646");
    assert!(!seen.headers.contains_key("origin"), "no Origin (§7.2)");
}

#[tokio::test]
async fn stdin_is_sent_in_2048_byte_frames_and_closed_when_the_senders_are_gone() {
    let (client, mut accepted) = stand_in();
    let server = tokio::spawn(async move {
        let (mut socket, seen) = accept(accepted.recv().await.expect("a connection")).await;
        let mut frames = Vec::new();
        let mut received = Vec::new();
        // Echo, like a terminal.
        while let Some(frame) = next_input(&mut socket).await {
            if frame == json!({"stdin": {"close": true}}) {
                break;
            }
            let data = stdin_data(&frame);
            frames.push(data.len());
            received.extend_from_slice(&data);
            socket.send(stdout(&data)).await.expect("sent");
        }
        socket.send(exited(json!({}))).await.expect("sent");
        (seen, frames, received)
    });
    let mut session = client
        .open(ALLOCATION, false, &argv("cat"))
        .await
        .expect("opens");
    let input: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    session
        .stdin()
        .send(Bytes::from(input.clone()))
        .await
        .expect("queued");
    let mut echoed = Vec::new();
    while echoed.len() < input.len() {
        match session.next_event().await {
            Some(ExecutionEvent::Stdout(bytes)) => echoed.extend_from_slice(&bytes),
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    assert_eq!(echoed, input);
    session.close_stdin();
    assert!(
        session
            .stdin()
            .send(Bytes::from_static(b"late"))
            .await
            .is_err(),
        "a closed stdin refuses input"
    );
    // `{"exited":true,"result":{}}`: exit code 0 is omitted by Nomad (§7.4).
    assert_eq!(session.next_event().await, Some(ExecutionEvent::Exited(0)));
    assert_eq!(session.next_event().await, None);
    let (seen, frames, received) = server.await.expect("the stand-in ran");
    assert_eq!(seen.query["tty"], "false");
    assert_eq!(frames, [2048, 2048, 904]);
    assert_eq!(received, input);
}

#[tokio::test]
async fn interrupt_writes_ctrl_backslash_ahead_of_stdin() {
    let (client, mut accepted) = stand_in();
    let server = tokio::spawn(async move {
        let (mut socket, _) = accept(accepted.recv().await.expect("a connection")).await;
        let frame = next_input(&mut socket).await.expect("a frame");
        socket
            .send(exited(json!({"exit_code": 131})))
            .await
            .expect("sent");
        stdin_data(&frame)
    });
    let mut session = client
        .open(ALLOCATION, true, &argv("sleep 100"))
        .await
        .expect("opens");
    session.interrupt();
    assert_eq!(collect(&mut session).await, [ExecutionEvent::Exited(131)]);
    assert_eq!(server.await.expect("ran"), [INTERRUPT_BYTE]);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_go_out_every_ten_seconds_of_silence() {
    let (client, mut accepted) = stand_in();
    let server = tokio::spawn(async move {
        let (mut socket, _) = accept(accepted.recv().await.expect("a connection")).await;
        let start = Instant::now();
        let mut beats = Vec::new();
        while beats.len() < 3 {
            match socket.next().await {
                Some(Ok(Message::Text(text))) if text.as_str() == "{}" => {
                    beats.push(start.elapsed());
                }
                other => panic!("expected a heartbeat, got {other:?}"),
            }
        }
        socket.send(exited(json!({}))).await.expect("sent");
        beats
    });
    let mut session = client
        .open(ALLOCATION, true, &argv("sleep 30"))
        .await
        .expect("opens");
    assert_eq!(collect(&mut session).await, [ExecutionEvent::Exited(0)]);
    assert_eq!(
        server.await.expect("ran"),
        [
            Duration::from_secs(10),
            Duration::from_secs(20),
            Duration::from_secs(30)
        ]
    );
}

/// How the stand-in ends a session without an exit frame.
#[derive(Clone, Debug)]
enum Ending {
    DropConnection,
    Close(u16, &'static str),
}

async fn end_without_exit(ending: Ending) -> (Vec<ExecutionEvent>, Option<SessionEnd>) {
    let (client, mut accepted) = stand_in();
    let server = tokio::spawn(async move {
        let (mut socket, _) = accept(accepted.recv().await.expect("a connection")).await;
        socket.send(stdout(b"partial")).await.expect("sent");
        match ending {
            Ending::DropConnection => drop(socket),
            Ending::Close(code, reason) => {
                socket
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    })))
                    .await
                    .expect("sent");
                // Keep reading so the close handshake completes.
                while socket.next().await.is_some() {}
            }
        }
    });
    let mut session = client
        .open(ALLOCATION, true, &argv("true"))
        .await
        .expect("opens");
    let events = collect(&mut session).await;
    server.await.expect("ran");
    (events, session.end())
}

#[tokio::test]
async fn sessions_ending_without_an_exit_frame_map_as_poseidon_reads_them_except_a_lost_connection()
{
    let partial = ExecutionEvent::Stdout(Bytes::from_static(b"partial"));
    // Poseidon reports exit 0 here; the exit code is unknown, so Trident reports the runner gone.
    let (events, end) = end_without_exit(Ending::DropConnection).await;
    assert_eq!(events, [partial.clone(), ExecutionEvent::Gone]);
    assert!(
        matches!(end, Some(SessionEnd::ConnectionLost(_))),
        "{end:?}"
    );

    let (events, end) = end_without_exit(Ending::Close(1000, "")).await;
    assert_eq!(events, [partial.clone(), ExecutionEvent::Exited(0)]);
    assert_eq!(
        end,
        Some(SessionEnd::Closed {
            code: 1000,
            reason: String::new()
        })
    );

    let (events, _) =
        end_without_exit(Ending::Close(1008, "Unknown allocation \"5b2c1a3e\"")).await;
    assert_eq!(events, [partial.clone(), ExecutionEvent::Gone]);

    let (events, _) = end_without_exit(Ending::Close(
        1008,
        "exec not possible, client status of allocation 5b2c1a3e is complete",
    ))
    .await;
    assert_eq!(events, [partial.clone(), ExecutionEvent::Gone]);

    let (events, end) =
        end_without_exit(Ending::Close(1011, "failed to create exec object: boom")).await;
    assert_eq!(events, [partial, ExecutionEvent::Gone]);
    assert_eq!(
        end,
        Some(SessionEnd::Closed {
            code: 1011,
            reason: "failed to create exec object: boom".into()
        })
    );
}

#[tokio::test]
async fn malformed_frames_are_skipped_and_the_session_goes_on() {
    let (client, mut accepted) = stand_in();
    tokio::spawn(async move {
        let (mut socket, _) = accept(accepted.recv().await.expect("a connection")).await;
        for message in [
            Message::text("not json"),
            Message::text("[1,2]"),
            Message::binary(Bytes::from_static(b"\x00\x01")),
            Message::text(r#"{"stdout":{"data":"!!not base64!!"}}"#),
            Message::text(r#"{"stdout":null,"stderr":{"close":true}}"#),
            Message::text(r#"{"unknown":{"field":1}}"#),
            stdout(b"good"),
            Message::text(r#"{"exited":true,"result":{"signal":9,"oom_killed":true}}"#),
        ] {
            socket.send(message).await.expect("sent");
        }
    });
    let mut session = client
        .open(ALLOCATION, true, &argv("true"))
        .await
        .expect("opens");
    assert_eq!(
        collect(&mut session).await,
        [
            ExecutionEvent::Stdout(Bytes::from_static(b"good")),
            ExecutionEvent::Exited(137),
        ]
    );
    assert_eq!(
        session.end(),
        Some(SessionEnd::Exited {
            code: 137,
            oom_killed: true
        })
    );
}

#[tokio::test]
async fn kill_closes_the_socket_and_reports_a_killed_exit() {
    let (client, mut accepted) = stand_in();
    let server = tokio::spawn(async move {
        let (mut socket, _) = accept(accepted.recv().await.expect("a connection")).await;
        // Output the consumer never reads: the kill must still get through.
        for _ in 0..200 {
            if socket.send(stdout(&[b'x'; 1024])).await.is_err() {
                break;
            }
        }
        let mut closed = false;
        while let Some(message) = socket.next().await {
            if matches!(message, Ok(Message::Close(_)) | Err(_)) {
                closed = true;
                break;
            }
        }
        closed || socket.next().await.is_none()
    });
    let mut session = client
        .open(ALLOCATION, true, &argv("sleep 100"))
        .await
        .expect("opens");
    session.kill();
    let events = collect(&mut session).await;
    assert_eq!(
        events.last(),
        Some(&ExecutionEvent::Exited(KILLED_EXIT_CODE))
    );
    assert_eq!(session.end(), Some(SessionEnd::Killed));
    assert!(
        server.await.expect("ran"),
        "the stand-in saw the session end"
    );
}

#[tokio::test]
// The callback's error type is tungstenite's.
#[allow(clippy::result_large_err)]
async fn a_refused_upgrade_is_a_status_error_with_nomads_text() {
    let (servers, mut accepted) = mpsc::channel(1);
    let client = client(servers);
    tokio::spawn(async move {
        let stream = accepted.recv().await.expect("a connection");
        let _ = tokio_tungstenite::accept_hdr_async(
            stream,
            |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
                Err(http::Response::builder()
                    .status(403)
                    .body(Some("Permission denied".to_owned()))
                    .expect("a response"))
            },
        )
        .await;
    });
    let error = client
        .open(ALLOCATION, true, &argv("true"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&error, ExecError::Status { status, body }
            if status.as_u16() == 403 && body == "Permission denied"),
        "{error:?}"
    );
}

#[tokio::test]
async fn dropping_a_session_ends_its_task_and_connection() {
    let (client, mut accepted) = stand_in();
    let server = tokio::spawn(async move {
        let (mut socket, _) = accept(accepted.recv().await.expect("a connection")).await;
        while let Some(Ok(_)) = socket.next().await {}
    });
    let session = client
        .open(ALLOCATION, true, &argv("sleep 100"))
        .await
        .expect("opens");
    drop(session);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the connection closes when the session is dropped")
        .expect("ran");
}

#[tokio::test]
async fn split_execution_keeps_stderr_apart_and_exits_after_it() {
    let (client, mut accepted) = stand_in();
    let server = tokio::spawn(async move {
        // The reader connects first, as the executor must open it first.
        let (mut reader, reader_seen) = accept(accepted.recv().await.expect("reader")).await;
        let (mut main, main_seen) = accept(accepted.recv().await.expect("main")).await;
        main.send(stdout(b"out\r\n")).await.expect("sent");
        main.send(exited(json!({"exit_code": 2})))
            .await
            .expect("sent");
        // stderr trails the exit, as a pipe can.
        tokio::time::sleep(Duration::from_millis(50)).await;
        reader.send(stdout(b"late err\n")).await.expect("sent");
        reader.send(exited(json!({}))).await.expect("sent");
        (reader_seen, main_seen)
    });
    let fifo = commands::StderrFifo::for_execution(42);
    let split = commands::split_execution(
        &trident_backends::executor::ExecutionRequest {
            command: "ls /nope".into(),
            environment: vec![],
            privileged: false,
        },
        &fifo,
    )
    .expect("valid");
    let reader = client
        .open(ALLOCATION, false, &split.stderr_reader)
        .await
        .expect("reader opens");
    let main = client
        .open(ALLOCATION, true, &split.main)
        .await
        .expect("main opens");
    let mut execution = SplitExecution::new(main, reader);
    assert_eq!(
        collect(&mut execution).await,
        [
            ExecutionEvent::Stdout(Bytes::from_static(b"out\r\n")),
            ExecutionEvent::Stderr(Bytes::from_static(b"late err\n")),
            ExecutionEvent::Exited(2),
        ]
    );
    let (reader_seen, main_seen) = server.await.expect("ran");
    assert_eq!(reader_seen.query["tty"], "false");
    assert_eq!(reader_seen.command(), split.stderr_reader);
    assert_eq!(main_seen.query["tty"], "true");
    assert_eq!(main_seen.command(), split.main);
}

#[tokio::test(start_paused = true)]
async fn split_execution_does_not_wait_for_stderr_forever() {
    let (client, mut accepted) = stand_in();
    let server = tokio::spawn(async move {
        let (mut reader, _) = accept(accepted.recv().await.expect("reader")).await;
        let (mut main, _) = accept(accepted.recv().await.expect("main")).await;
        main.send(exited(json!({}))).await.expect("sent");
        // A background process keeps the pipe open: the reader never ends by itself.
        while let Some(Ok(_)) = reader.next().await {}
    });
    let reader = client
        .open(ALLOCATION, false, &argv("cat"))
        .await
        .expect("opens");
    let main = client
        .open(ALLOCATION, true, &argv("true"))
        .await
        .expect("opens");
    let start = Instant::now();
    let mut execution = SplitExecution::new(main, reader);
    assert_eq!(collect(&mut execution).await, [ExecutionEvent::Exited(0)]);
    assert_eq!(start.elapsed(), SplitExecution::STDERR_GRACE);
    drop(execution);
    server
        .await
        .expect("the reader's connection ends with the execution");
}

#[tokio::test]
async fn the_client_works_over_real_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bound");
    let address = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accepted");
        let mut socket = tokio_tungstenite::accept_async(stream)
            .await
            .expect("upgraded");
        socket.send(stdout(b"tcp")).await.expect("sent");
        socket.send(exited(json!({}))).await.expect("sent");
    });
    let client = ExecClient::new(
        &NomadConfig::new(format!("http://{address}")),
        MaybeTls::plain(TcpConnector),
        ExecConfig::default(),
        SplitMix64::new(1),
    )
    .expect("valid");
    let mut session: ExecSession = client
        .open(ALLOCATION, true, &argv("true"))
        .await
        .expect("opens");
    assert_eq!(
        collect(&mut session).await,
        [
            ExecutionEvent::Stdout(Bytes::from_static(b"tcp")),
            ExecutionEvent::Exited(0)
        ]
    );
}

#[test]
fn choose_allocation_takes_the_newest_running_one_never_blindly_the_first() {
    let allocation = |id: &str, client: &str, desired: &str, create_index: u64| -> Allocation {
        serde_json::from_value(json!({
            "ID": id, "JobID": "job", "ClientStatus": client, "DesiredStatus": desired,
            "CreateIndex": create_index, "ModifyIndex": create_index,
        }))
        .expect("an allocation")
    };
    let allocations = [
        allocation("stopped", "complete", "stop", 30),
        allocation("pending", "pending", "run", 40),
        allocation("old", "running", "run", 10),
        allocation("draining", "running", "stop", 50),
        allocation("new", "running", "run", 20),
    ];
    assert_eq!(
        choose_allocation(&allocations).map(|a| a.id.as_str()),
        Some("new")
    );
    assert_eq!(choose_allocation(&allocations[..2]), None);
    assert_eq!(choose_allocation(&[]), None);
}

// ---------------------------------------------------------------------------------------------
// Commands against this machine's tools
// ---------------------------------------------------------------------------------------------

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into())
        .expect("the user database is readable")
        .map_or_else(|| uid.to_string(), |user| user.name)
}

fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(gid.into())
        .expect("the group database is readable")
        .map_or_else(|| gid.to_string(), |group| group.name)
}

/// What `ls` should say about `path`, listed as `name`.
fn expected_header(path: &Path, name: &str, entry_type: char, permissions: &str) -> FileHeader {
    let metadata = std::fs::symlink_metadata(path).expect("exists");
    FileHeader {
        name: name.to_owned(),
        entry_type,
        link_target: if entry_type == 'l' {
            std::fs::read_link(path)
                .expect("a link")
                .to_str()
                .expect("utf-8")
                .to_owned()
        } else {
            String::new()
        },
        size: i64::try_from(metadata.len()).expect("small"),
        modification_time: metadata.mtime(),
        permissions: permissions.to_owned(),
        owner: user_name(metadata.uid()),
        group: group_name(metadata.gid()),
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn run_in(argv: &[String], directory: &Path, stdin: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(directory)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin)
        .expect("written");
    child.wait_with_output().expect("ends")
}

#[test]
fn the_ls_parser_reads_real_gnu_ls_output_like_ls2json() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let root = directory.path();
    std::fs::write(root.join("a.txt"), b"hello").expect("written");
    set_mode(&root.join("a.txt"), 0o744);
    std::fs::write(root.join("with  two spaces.txt"), b"1234567").expect("written");
    set_mode(&root.join("with  two spaces.txt"), 0o640);
    std::fs::write(root.join("x -> y"), b"").expect("written");
    set_mode(&root.join("x -> y"), 0o600);
    std::os::unix::fs::symlink("a.txt", root.join("link")).expect("linked");
    std::fs::create_dir(root.join("sub dir")).expect("created");
    set_mode(&root.join("sub dir"), 0o1777);
    std::fs::write(root.join("sub dir/inner.txt"), vec![b'z'; 4321]).expect("written");
    set_mode(&root.join("sub dir/inner.txt"), 0o644);
    let fifo = root.join("sub dir/pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("a fifo");

    let argv = commands::list_files_argv("./", true, true).expect("valid");
    let output = run_in(&argv, root, b"");
    assert!(output.status.success(), "{output:?}");
    let headers = commands::parse_ls(&output.stdout);
    let expected = vec![
        expected_header(&root.join("a.txt"), "./a.txt", '-', "rwxr--r--"),
        expected_header(&root.join("link"), "./link", 'l', "rwxrwxrwx"),
        expected_header(&root.join("sub dir"), "./sub dir", 'd', "rwxrwxrwt"),
        expected_header(
            &root.join("with  two spaces.txt"),
            "./with  two spaces.txt",
            '-',
            "rw-r-----",
        ),
        expected_header(&root.join("x -> y"), "./x -> y", '-', "rw-------"),
        expected_header(
            &root.join("sub dir/inner.txt"),
            "./sub dir/inner.txt",
            '-',
            "rw-r--r--",
        ),
        expected_header(&fifo, "./sub dir/pipe", 'p', "rw-------"),
    ];
    assert_eq!(
        headers,
        expected,
        "ls said:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(headers[1].link_target, "a.txt");

    // Not recursive, an absolute path: names as ls prints them, no prefix.
    let argv =
        commands::list_files_argv(root.join("sub dir").to_str().expect("utf-8"), false, true)
            .expect("valid");
    let output = run_in(&argv, root, b"");
    let names: Vec<String> = commands::parse_ls(&output.stdout)
        .into_iter()
        .map(|header| header.name)
        .collect();
    assert_eq!(names, ["inner.txt", "pipe"]);

    // A missing path: nothing listed, a failure status (the API's 424).
    let argv = commands::list_files_argv("./missing", false, true).expect("valid");
    let output = run_in(&argv, root, b"");
    assert!(!output.status.success());
    assert_eq!(commands::parse_ls(&output.stdout), []);
}

#[test]
fn the_tar_archive_extracts_with_poseidons_modes_after_the_deletes() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let root = directory.path();
    let workspace = root.join("workspace");
    std::fs::create_dir(&workspace).expect("created");
    std::fs::write(workspace.join("old.txt"), b"old").expect("written");
    std::fs::write(workspace.join("kept.txt"), b"kept").expect("written");
    let absolute = root.join("abs");
    let long_name = format!("deep/{}/file.txt", "d".repeat(120));
    let mtime_s = 1_600_000_000;
    let copy = vec![
        ("hello.txt".to_owned(), b"Hello".to_vec()),
        ("./sub/../sub/inner.txt".to_owned(), b"12345".to_vec()),
        ("shared/".to_owned(), Vec::new()),
        (long_name.clone(), b"long".to_vec()),
        (
            format!("{}/x y/z.bin", absolute.display()),
            vec![0, 1, 2, 255],
        ),
        ("empty.txt".to_owned(), Vec::new()),
    ];
    let archive = commands::tar_archive(&copy, mtime_s).expect("valid");
    let argv = commands::update_files_argv(&["old.txt".into()]).expect("valid");
    let output = run_in(&argv, &workspace, &archive);
    assert!(output.status.success(), "{output:?}");

    assert!(!workspace.join("old.txt").exists(), "deleted first");
    assert!(workspace.join("kept.txt").exists());
    let root_user = nix::unistd::geteuid().is_root();
    for (path, content) in [
        (workspace.join("hello.txt"), &b"Hello"[..]),
        (workspace.join("sub/inner.txt"), b"12345"),
        (workspace.join(&long_name), b"long"),
        (absolute.join("x y/z.bin"), &[0, 1, 2, 255]),
        (workspace.join("empty.txt"), b""),
    ] {
        assert_eq!(
            std::fs::read(&path).expect("extracted"),
            content,
            "{path:?}"
        );
        let metadata = std::fs::metadata(&path).expect("exists");
        assert_eq!(metadata.mode() & 0o7777, 0o744, "{path:?}");
        assert_eq!(
            u64::try_from(metadata.mtime()).ok(),
            Some(mtime_s),
            "{path:?}"
        );
        if root_user {
            assert_eq!((metadata.uid(), metadata.gid()), (0, 0), "{path:?}");
        }
    }
    let shared = std::fs::metadata(workspace.join("shared")).expect("extracted");
    assert!(shared.is_dir());
    // tar applies the umask to modes unless it runs as root, as it does in a runner.
    let expected_directory_mode = if root_user { 0o1777 } else { 0o1755 };
    assert_eq!(shared.mode() & 0o7777, expected_directory_mode);
}

#[test]
fn the_download_argv_cats_exactly_the_named_file() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let root = directory.path();
    std::fs::write(root.join("-n $(id) 'q'.txt"), b"line\n").expect("written");
    let argv = commands::download_argv("-n $(id) 'q'.txt", true).expect("valid");
    let output = run_in(&argv, root, b"");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, b"line\n");
}
