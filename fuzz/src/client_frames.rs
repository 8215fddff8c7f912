//! What an execution's WebSocket client sends, from the bytes on the wire to the command's
//! stdin: frames encoded here (RFC 6455, independently of tungstenite), read by tungstenite in
//! the server role with the configuration axum gives the server's WebSocket (its default), and
//! interpreted by the server's own [`ClientInput`] (`trident_server::api::bodies`), as the
//! execution handler does.
//!
//! The input decodes (`arbitrary`) into client messages (text, binary, ping, pong, close with a
//! code and reason), each split into up to four fragments with their own mask keys (control
//! frames interleaved between fragments, as RFC 6455 allows), some corrupted: unmasked, reserved
//! bits or opcodes, invalid UTF-8 in a text message, an over-long control frame, a stray
//! continuation, a last frame cut short.
//!
//! Properties: nothing panics; up to the first corrupted frame, the frames the server sees are
//! exactly the messages sent (text byte for byte), and it sees none of a corrupted message;
//! stdin receives exactly the text messages before the first binary message, and nothing after
//! a close.

use std::io::{Cursor, Read, Write};

use arbitrary::{Arbitrary, Unstructured};
use trident_server::api::bodies::{ClientAction, ClientFrame, ClientInput};
use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

/// Messages per input.
const MESSAGES_MAX: usize = 32;
/// Close codes a client may send.
const CLOSE_CODES: [u16; 6] = [1000, 1001, 1003, 1008, 3000, 4999];

#[derive(Arbitrary, Debug)]
struct Input {
    messages: Vec<ClientMessage>,
}

#[derive(Arbitrary, Debug)]
struct ClientMessage {
    kind: Kind,
    /// Data messages are split into `1 + fragments % 4` frames.
    fragments: u8,
    /// A ping sent between the first two fragments.
    interleaved_ping: bool,
    mask: [u8; 4],
    corruption: Option<Corruption>,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u8, String)>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Corruption {
    Unmasked,
    Reserved(u8),
    ReservedOpcode(u8),
    InvalidUtf8,
    LongControl,
    StrayContinuation,
    Truncated(u8),
}

/// What the server should make of a message.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Text(String),
    Binary,
    Control,
    Close,
}

impl ClientMessage {
    /// The corruption, if it changes this message's frames (some apply to one kind only).
    fn corruption(&self) -> Option<Corruption> {
        match (self.corruption?, &self.kind) {
            (Corruption::InvalidUtf8, Kind::Text(_))
            | (Corruption::LongControl, Kind::Ping(_) | Kind::Pong(_)) => self.corruption,
            (Corruption::InvalidUtf8 | Corruption::LongControl, _) => None,
            (corruption, _) => Some(corruption),
        }
    }

    fn seen(&self) -> Seen {
        match &self.kind {
            Kind::Text(text) => Seen::Text(text.clone()),
            Kind::Binary(_) => Seen::Binary,
            Kind::Ping(_) | Kind::Pong(_) => Seen::Control,
            Kind::Close(_) => Seen::Close,
        }
    }

    /// The opcode and payload of the message, corrupted as it says.
    fn payload(&self) -> (u8, Vec<u8>) {
        match &self.kind {
            Kind::Text(text) => {
                let mut bytes = text.clone().into_bytes();
                if let Some(Corruption::InvalidUtf8) = self.corruption {
                    bytes.push(0xC3); // A sequence cut short.
                }
                (1, bytes)
            }
            Kind::Binary(bytes) => (2, bytes.clone()),
            Kind::Ping(bytes) | Kind::Pong(bytes) => {
                let opcode = if matches!(self.kind, Kind::Ping(_)) {
                    9
                } else {
                    10
                };
                let mut bytes = bytes[..bytes.len().min(125)].to_vec();
                if let Some(Corruption::LongControl) = self.corruption {
                    bytes.resize(126, b'x');
                }
                (opcode, bytes)
            }
            Kind::Close(close) => {
                let mut bytes = Vec::new();
                if let Some((code, reason)) = close {
                    let code = CLOSE_CODES[usize::from(*code) % CLOSE_CODES.len()];
                    bytes.extend_from_slice(&code.to_be_bytes());
                    let mut end = reason.len().min(120);
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    bytes.extend_from_slice(&reason.as_bytes()[..end]);
                }
                (8, bytes)
            }
        }
    }

    /// The payload pieces of the message's frames: data messages are split into
    /// `1 + fragments % 4` frames, control messages are one.
    fn pieces(&self) -> Vec<Vec<u8>> {
        let (opcode, payload) = self.payload();
        if payload.is_empty() || opcode >= 8 {
            return vec![payload];
        }
        let pieces = usize::from(self.fragments % 4) + 1;
        payload
            .chunks(payload.len().div_ceil(pieces))
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// The wire bytes of the message.
    fn encode(&self, out: &mut Vec<u8>) {
        let mask =
            Some(self.mask).filter(|_| !matches!(self.corruption, Some(Corruption::Unmasked)));
        let (opcode, _) = self.payload();
        let rsv = match self.corruption {
            Some(Corruption::Reserved(bits)) => (bits % 7 + 1) << 4,
            _ => 0,
        };
        let opcode = match self.corruption {
            Some(Corruption::ReservedOpcode(code)) => {
                [3, 4, 5, 6, 7, 11, 12, 13, 14, 15][usize::from(code) % 10]
            }
            _ => opcode,
        };
        if let Some(Corruption::StrayContinuation) = self.corruption {
            frame(out, true, 0, 0, mask, b"stray");
        }
        let start = out.len();
        let chunks = self.pieces();
        for (index, chunk) in chunks.iter().enumerate() {
            let fin = index + 1 == chunks.len();
            let code = if index == 0 { opcode } else { 0 };
            frame(out, fin, rsv, code, mask, chunk);
            if index == 0 && !fin && self.interleaved_ping {
                frame(out, true, 0, 9, mask, b"ping");
            }
        }
        if let Some(Corruption::Truncated(cut)) = self.corruption {
            let frame_len = out.len() - start;
            out.truncate(start + usize::from(cut) % frame_len);
        }
    }
}

/// Appends one frame.
fn frame(out: &mut Vec<u8>, fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) {
    out.push(u8::from(fin) << 7 | rsv | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(
                payload
                    .iter()
                    .enumerate()
                    .map(|(i, byte)| byte ^ key[i % 4]),
            );
        }
        None => out.extend_from_slice(payload),
    }
}

/// The server's end of the connection: reads the client's bytes, swallows what the server
/// writes back (pongs, the close reply).
#[derive(Debug)]
struct Wire {
    input: Cursor<Vec<u8>>,
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs the target on `data`.
pub fn run(data: &[u8]) {
    let Ok(mut input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    input.messages.truncate(MESSAGES_MAX);
    let mut bytes = Vec::new();
    for message in &input.messages {
        message.encode(&mut bytes);
        if let Some(Corruption::Truncated(_)) = message.corruption {
            // A frame cut short is the end of the stream (what followed would complete it).
            break;
        }
    }
    // axum's `WebSocketUpgrade` uses tungstenite's default configuration.
    let mut socket = WebSocket::from_raw_socket(
        Wire {
            input: Cursor::new(bytes),
        },
        Role::Server,
        Some(WebSocketConfig::default()),
    );
    let mut seen = Vec::new();
    let mut client = ClientInput::default();
    let mut stdin = Vec::new();
    let mut closed = false;
    // Each read consumes at least one frame, so this ends; the bound is a second guard.
    for _ in 0..4 * MESSAGES_MAX * 6 {
        let Ok(message) = socket.read() else {
            break;
        };
        let (frame, observed) = match &message {
            Message::Text(text) => (
                ClientFrame::Text(text.as_str()),
                Seen::Text(text.as_str().to_owned()),
            ),
            Message::Binary(_) => (ClientFrame::Binary, Seen::Binary),
            Message::Ping(_) | Message::Pong(_) => (ClientFrame::Control, Seen::Control),
            Message::Close(_) => (ClientFrame::Close, Seen::Close),
            Message::Frame(_) => unreachable!("tungstenite returns raw frames only when writing"),
        };
        seen.push(observed);
        match client.on_frame(frame) {
            ClientAction::Stdin(bytes) => stdin.extend_from_slice(&bytes),
            ClientAction::Ignore => {}
            ClientAction::Closed => {
                closed = true;
                break;
            }
        }
    }
    check(&input.messages, &seen, &stdin, closed);
}

fn check(messages: &[ClientMessage], seen: &[Seen], stdin: &[u8], closed: bool) {
    // The interleaved pings count as control frames the server sees before the message.
    let mut expected = Vec::new();
    let mut corrupted = false;
    for message in messages {
        if message.pieces().len() > 1 && message.interleaved_ping {
            expected.push(Seen::Control);
        }
        if message.corruption().is_some() {
            // The server may see the interleaved ping, never the message.
            corrupted = true;
            break;
        }
        expected.push(message.seen());
        if matches!(message.kind, Kind::Close(_)) {
            break;
        }
    }
    if corrupted {
        assert!(
            expected.starts_with(seen),
            "seen {seen:?}, sent {expected:?} before a corrupted frame"
        );
    } else {
        assert_eq!(seen, expected);
    }
    let mut model = Vec::new();
    for frame in seen {
        match frame {
            Seen::Text(text) => model.extend_from_slice(text.as_bytes()),
            Seen::Binary | Seen::Close => break,
            Seen::Control => {}
        }
    }
    assert_eq!(stdin, model, "stdin");
    assert_eq!(closed, seen.last() == Some(&Seen::Close));
}
