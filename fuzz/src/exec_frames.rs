//! The Nomad exec client ([`ExecSession`]) against arbitrary server frames, over a real
//! WebSocket on an in-memory pipe (tokio-tungstenite on both ends, the client configured as the
//! backend configures it).
//!
//! The input decodes (`arbitrary`) into stdin the client sends, then a sequence of server
//! messages: `stdout`/`stderr` frames with base64 data or with text that may not be base64,
//! `exited` frames with any exit code, signal and OOM flag, heartbeats, stream-close frames, JSON
//! of other shapes, text that is not JSON, binary and ping frames, close frames with or without
//! a code and reason; the server then ends the connection.
//!
//! Properties, against a model of `reference/nomad-api.md` §7.4–7.5 as `exec.rs` reads it:
//! - the session's events are exactly the non-empty decoded `stdout`/`stderr` data of the frames
//!   before the first ending, in order, followed by exactly one ending event: the `exited` frame's
//!   code (`128 + signal` for a signal without a code, 255 for a code outside 0..=255), exit 0
//!   for a close frame 1000 (or without a code), `Gone` for any other close frame and for a
//!   connection that just ends (the exit code is unknown: never report one);
//! - nothing comes after the ending, and [`ExecSession::end`] says the same;
//! - the server received the client's stdin, byte for byte, in `{"stdin":{"data":…}}` frames
//!   of at most [`STDIN_FRAME_BYTES_MAX`] bytes, then one `{"stdin":{"close":true}}`.

use std::cell::RefCell;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncWriteExt as _;
use tokio::runtime::Runtime;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use trident_backends::nomad::exec::{ExecConfig, ExecSession, STDIN_FRAME_BYTES_MAX, SessionEnd};
use trident_backends::{ExecutionEvent, RunningExecution};

/// Messages per input.
const MESSAGES_MAX: usize = 64;
/// Close codes a server may send (tungstenite refuses to send reserved ones).
const CLOSE_CODES: [u16; 7] = [1000, 1001, 1002, 1008, 1011, 3000, 4000];
/// Close reasons, Nomad's own among them (§7.5).
const CLOSE_REASONS: [&str; 5] = [
    "",
    "Unknown allocation \"x\"",
    "exec not possible, client status is \"complete\"",
    "rpc error",
    "exec not possible, client status",
];
/// How long one input may take (wall clock); far beyond what it needs.
const INPUT_TIME_MAX: Duration = Duration::from_secs(10);

#[derive(Arbitrary, Debug)]
struct Input {
    /// Chunks the client writes to stdin before the server speaks.
    stdin: Vec<Vec<u8>>,
    messages: Vec<ServerMessage>,
}

#[derive(Arbitrary, Debug)]
enum ServerMessage {
    /// `{"stdout":{"data":<base64 of the bytes>}}` (`stderr` if the flag is set).
    Data { stderr: bool, bytes: Vec<u8> },
    /// The same with `data` as given, which may not be base64.
    RawData { stderr: bool, data: String },
    /// `{"exited":true,"result":{…}}`, each field present or not.
    Exited {
        exit_code: Option<i64>,
        signal: Option<i64>,
        oom_killed: Option<bool>,
        with_result: bool,
    },
    /// `{"exited":false}`.
    NotExited,
    /// `{}`.
    Heartbeat,
    /// `{"stdout":{"close":true}}` (or `stderr`).
    StreamClose { stderr: bool },
    /// Text as given (mostly not JSON).
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A ping (the client answers it).
    Ping(Vec<u8>),
    /// A close frame: a code of [`CLOSE_CODES`] and a reason, or none.
    Close {
        code: Option<(u8, u8)>,
        reason: String,
    },
}

impl ServerMessage {
    fn message(&self) -> Message {
        match self {
            ServerMessage::Data { stderr, bytes } => {
                Message::text(stream_frame(*stderr, &BASE64.encode(bytes)))
            }
            ServerMessage::RawData { stderr, data } => Message::text(stream_frame(*stderr, data)),
            ServerMessage::Exited {
                exit_code,
                signal,
                oom_killed,
                with_result,
            } => {
                let mut result = serde_json::Map::new();
                if let Some(code) = exit_code {
                    result.insert("exit_code".into(), (*code).into());
                }
                if let Some(signal) = signal {
                    result.insert("signal".into(), (*signal).into());
                }
                if let Some(oom) = oom_killed {
                    result.insert("oom_killed".into(), (*oom).into());
                }
                let mut frame = serde_json::Map::new();
                frame.insert("exited".into(), true.into());
                if *with_result {
                    frame.insert("result".into(), result.into());
                }
                Message::text(serde_json::Value::from(frame).to_string())
            }
            ServerMessage::NotExited => Message::text(r#"{"exited":false}"#),
            ServerMessage::Heartbeat => Message::text("{}"),
            ServerMessage::StreamClose { stderr } => Message::text(format!(
                r#"{{"{}":{{"close":true}}}}"#,
                if *stderr { "stderr" } else { "stdout" }
            )),
            ServerMessage::Text(text) => Message::text(text.clone()),
            ServerMessage::Binary(bytes) => Message::binary(bytes.clone()),
            ServerMessage::Ping(bytes) => Message::Ping(Bytes::from(truncate(bytes, 125))),
            ServerMessage::Close { code, reason } => Message::Close(code.map(|(code, pick)| {
                let reason = match usize::from(pick) % (CLOSE_REASONS.len() + 1) {
                    index if index < CLOSE_REASONS.len() => CLOSE_REASONS[index].to_owned(),
                    _ => truncate_str(reason, 100).to_owned(),
                };
                CloseFrame {
                    code: CloseCode::from(close_code(code)),
                    reason: reason.into(),
                }
            })),
        }
    }

    /// What the model expects of this message: an event, the ending, or nothing.
    fn expected(&self) -> Expected {
        match self {
            ServerMessage::Data { stderr, bytes } => data_event(*stderr, bytes.clone()),
            ServerMessage::RawData { stderr, data } => match BASE64.decode(data.as_bytes()) {
                Ok(bytes) => data_event(*stderr, bytes),
                Err(_) => Expected::Nothing,
            },
            ServerMessage::Exited {
                exit_code,
                signal,
                with_result,
                ..
            } => {
                let (code, signal) = match with_result {
                    true => (exit_code.unwrap_or(0), signal.unwrap_or(0)),
                    false => (0, 0),
                };
                Expected::End(ExecutionEvent::Exited(
                    if code == 0 && (1..128).contains(&signal) {
                        128 + signal as u8
                    } else if (0..=255).contains(&code) {
                        code as u8
                    } else {
                        255
                    },
                ))
            }
            ServerMessage::Text(text) => match serde_json::from_str::<serde_json::Value>(text) {
                // JSON text may happen to be a frame; the model does not guess.
                Ok(_) => Expected::Unknown,
                Err(_) => Expected::Nothing,
            },
            ServerMessage::Close { code: None, .. } => Expected::End(ExecutionEvent::Exited(0)),
            ServerMessage::Close {
                code: Some((code, _)),
                ..
            } => Expected::End(match close_code(*code) {
                1000 => ExecutionEvent::Exited(0),
                _ => ExecutionEvent::Gone,
            }),
            ServerMessage::NotExited
            | ServerMessage::Heartbeat
            | ServerMessage::StreamClose { .. }
            | ServerMessage::Binary(_)
            | ServerMessage::Ping(_) => Expected::Nothing,
        }
    }
}

enum Expected {
    Event(ExecutionEvent),
    End(ExecutionEvent),
    Nothing,
    /// JSON text of an arbitrary shape: the replay stops comparing here.
    Unknown,
}

fn data_event(stderr: bool, bytes: Vec<u8>) -> Expected {
    match (bytes.is_empty(), stderr) {
        (true, _) => Expected::Nothing,
        (false, true) => Expected::Event(ExecutionEvent::Stderr(Bytes::from(bytes))),
        (false, false) => Expected::Event(ExecutionEvent::Stdout(Bytes::from(bytes))),
    }
}

fn close_code(code: u8) -> u16 {
    CLOSE_CODES[usize::from(code) % CLOSE_CODES.len()]
}

fn stream_frame(stderr: bool, data: &str) -> String {
    let stream = if stderr { "stderr" } else { "stdout" };
    serde_json::json!({ stream: { "data": data } }).to_string()
}

fn truncate(bytes: &[u8], max: usize) -> Vec<u8> {
    bytes[..bytes.len().min(max)].to_vec()
}

fn truncate_str(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

thread_local! {
    static RUNTIME: RefCell<Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime builds"),
    );
}

/// Runs the target on `data`.
pub fn run(data: &[u8]) {
    let Ok(mut input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    input.messages.truncate(MESSAGES_MAX);
    input.stdin.truncate(MESSAGES_MAX);
    RUNTIME.with(|runtime| {
        runtime.borrow().block_on(async {
            tokio::time::timeout(INPUT_TIME_MAX, session(&input))
                .await
                .expect("the session ends");
        })
    });
}

async fn session(input: &Input) {
    let config = ExecConfig::default();
    let (client_io, server_io) = tokio::io::duplex(64 << 10);
    // As `ExecClient::handshake` configures the client.
    let client_config = WebSocketConfig::default()
        .max_message_size(Some(config.message_bytes_max))
        .max_frame_size(Some(config.message_bytes_max));
    let client =
        WebSocketStream::from_raw_socket(client_io, Role::Client, Some(client_config)).await;
    let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
    let mut session = ExecSession::spawn(client, &config);

    let stdin = session.stdin();
    session.close_stdin();
    let sent: Vec<u8> = input.stdin.concat();
    let writer = async move {
        for chunk in &input.stdin {
            if !chunk.is_empty() {
                stdin
                    .send(Bytes::copy_from_slice(chunk))
                    .await
                    .expect("the session reads stdin");
            }
        }
        drop(stdin);
    };
    let server = serve(server, &input.messages);
    let reader = async {
        let mut events = Vec::new();
        while let Some(event) = session.next_event().await {
            events.push(event);
        }
        events
    };
    let ((), received, events) = tokio::join!(writer, server, reader);

    assert_eq!(received, sent, "stdin arrived changed");
    let ending = check_events(&input.messages, &events);
    let end = session.end().expect("an ended session says how");
    assert_eq!(Some(&end.event()), events.last());
    if let (
        SessionEnd::Exited { oom_killed, .. },
        Some(ServerMessage::Exited {
            oom_killed: sent,
            with_result,
            ..
        }),
    ) = (&end, ending)
    {
        assert_eq!(*oom_killed, *with_result && *sent == Some(true));
    }
}

/// The server: reads stdin until the client closes it, then sends `messages` and ends the
/// connection. Returns the stdin bytes.
async fn serve(
    mut server: WebSocketStream<tokio::io::DuplexStream>,
    messages: &[ServerMessage],
) -> Vec<u8> {
    let mut received = Vec::new();
    while let Some(Ok(message)) = server.next().await {
        let Message::Text(text) = message else {
            panic!("the client sent {message:?}");
        };
        let frame: serde_json::Value = serde_json::from_str(&text).expect("stdin frames are JSON");
        if frame == serde_json::json!({"stdin": {"close": true}}) {
            break;
        }
        if frame == serde_json::json!({}) {
            continue; // A heartbeat.
        }
        let data = frame["stdin"]["data"].as_str().expect("a stdin data frame");
        let bytes = BASE64.decode(data).expect("stdin data is base64");
        assert!(!bytes.is_empty() && bytes.len() <= STDIN_FRAME_BYTES_MAX);
        received.extend_from_slice(&bytes);
    }
    for message in messages {
        // The client may be gone already (it stops at the first ending).
        if server.send(message.message()).await.is_err() {
            break;
        }
    }
    // End the connection (the write direction: a connection that just ends, as when Nomad
    // goes), and read what the client still says (its close reply, pongs) until it is gone.
    let _ = server.flush().await;
    let _ = server.get_mut().shutdown().await;
    while let Some(Ok(_)) = server.next().await {}
    received
}

/// Compares the events with the model; returns the message that ended the session, if the
/// model knows it.
fn check_events<'a>(
    messages: &'a [ServerMessage],
    events: &[ExecutionEvent],
) -> Option<&'a ServerMessage> {
    let (last, before) = events.split_last().expect("a session ends with an event");
    assert!(
        matches!(last, ExecutionEvent::Exited(_) | ExecutionEvent::Gone),
        "the last event is {last:?}"
    );
    for event in before {
        assert!(
            matches!(event, ExecutionEvent::Stdout(_) | ExecutionEvent::Stderr(_)),
            "{event:?} before the end"
        );
    }
    let mut expected = Vec::new();
    for message in messages {
        match message.expected() {
            Expected::Event(event) => expected.push(event),
            Expected::End(event) => {
                expected.push(event);
                assert_eq!(events, expected);
                return Some(message);
            }
            Expected::Nothing => {}
            Expected::Unknown => {
                // From here on the model does not know; what came before must match.
                let known = expected.len().min(before.len());
                assert_eq!(&before[..known], &expected[..known]);
                return None;
            }
        }
    }
    // The connection just ended: the exit code is unknown.
    expected.push(ExecutionEvent::Gone);
    assert_eq!(events, expected);
    None
}
