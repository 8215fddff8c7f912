//! What clients send, decoded: the JSON bodies of Poseidon's requests and the frames of an
//! execution's WebSocket, turned into what the manager and the backend take.
//!
//! Pure (no I/O, no state beyond [`ClientInput`]'s flag) and public, so that the fuzz targets
//! (`fuzz/src/api_bodies.rs`, `fuzz/src/client_frames.rs`) run the very code the handlers run.
//! Decoding is lenient as Go's `encoding/json` is for Poseidon: unknown fields are ignored,
//! missing optional fields take their zero value; an empty body, bad JSON or a type mismatch is a
//! 400.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use trident_backends::{ExecutionRequest, FileUpdate};
use trident_core::{EnvironmentId, Input};

use super::ApiError;

/// Decodes a JSON body (see the module docs); `PUT /execution-environments/{id}` decodes a
/// [`trident_core::EnvironmentSpec`] with it.
///
/// Every body is an object. serde would also read a struct from an array of its fields
/// (`[10, 60]` as a claim), which Go's `encoding/json` refuses: Poseidon answers such a body
/// with 400, and so does Trident.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let first = body
        .iter()
        .find(|byte| !matches!(byte, b' ' | b'\t' | b'\r' | b'\n'));
    if first.is_some_and(|&byte| byte != b'{') {
        return Err(ApiError::BadRequest(
            "invalid JSON: the body must be an object".to_owned(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|error| ApiError::BadRequest(format!("invalid JSON: {error}")))
}

/// `POST /runners`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimBody {
    /// The environment to claim a runner of.
    pub execution_environment_id: u64,
    /// Seconds; 0 (or missing) means the manager's default.
    #[serde(default)]
    pub inactivity_timeout: u64,
}

impl ClaimBody {
    /// The manager's input. Any number of seconds is accepted: the manager's deadlines saturate
    /// at the end of time.
    pub fn input(&self) -> Input {
        Input::Claim {
            environment: EnvironmentId(self.execution_environment_id),
            inactivity_timeout: Some(Duration::from_secs(self.inactivity_timeout)),
        }
    }
}

/// `POST /runners/{id}/execute`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteBody {
    /// Run by `bash -c` as one argument, never re-quoted.
    pub command: String,
    /// As root inside the sandbox.
    #[serde(default)]
    pub privileged_execution: bool,
    /// Seconds; 0 means no limit.
    #[serde(default)]
    pub time_limit: u64,
    /// Variables, exactly as given (ordered by name).
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
}

impl ExecuteBody {
    /// The backend's request.
    pub fn request(&self) -> ExecutionRequest {
        ExecutionRequest {
            command: self.command.clone(),
            environment: self
                .environment
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            privileged: self.privileged_execution,
        }
    }

    /// When the time limit ends for an execution started at `start` (tokio's clock, which the
    /// simulation controls): `None` without a limit, and also for a limit beyond what the clock
    /// can represent (`Instant + Duration` would panic), which no execution outlives anyway.
    pub fn deadline(&self, start: Instant) -> Option<Instant> {
        if self.time_limit == 0 {
            return None;
        }
        start.checked_add(Duration::from_secs(self.time_limit))
    }
}

/// `PATCH /runners/{id}/files`: deletes, then copies.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct UpdateBody {
    /// Paths to delete.
    pub delete: Vec<String>,
    /// Files to write.
    pub copy: Vec<CopyBody>,
}

/// One file of an [`UpdateBody`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct CopyBody {
    /// Where.
    pub path: String,
    /// Base64; missing means an empty file.
    pub content: String,
}

impl UpdateBody {
    /// The backend's update, contents decoded. A content that is not standard base64 (with
    /// padding) is a 400 naming its path, and nothing is changed.
    pub fn into_update(self) -> Result<FileUpdate, ApiError> {
        let mut copy = Vec::with_capacity(self.copy.len());
        for file in self.copy {
            let content = base64::engine::general_purpose::STANDARD
                .decode(file.content.as_bytes())
                .map_err(|error| {
                    ApiError::BadRequest(format!(
                        "content of {:?} is not base64: {error}",
                        file.path
                    ))
                })?;
            copy.push((file.path, content));
        }
        Ok(FileUpdate {
            delete: self.delete,
            copy,
        })
    }
}

/// A frame from an execution's WebSocket client, as far as the server cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// A text message: its bytes are stdin.
    Text(&'a str),
    /// A binary message.
    Binary,
    /// A close frame.
    Close,
    /// Ping or pong (answered by the WebSocket layer).
    Control,
}

/// What to do with a client frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAction {
    /// Write these bytes to the command's stdin.
    Stdin(Bytes),
    /// Nothing.
    Ignore,
    /// The client is gone: cancel the execution.
    Closed,
}

/// The client side of an execution's WebSocket, as Poseidon reads it (`reference/poseidon.md`
/// §2): every text frame is stdin, a binary frame stops the input for good (silently), a close
/// frame cancels the execution.
#[derive(Clone, Debug, Default)]
pub struct ClientInput {
    stopped: bool,
}

impl ClientInput {
    /// What `frame` means now.
    pub fn on_frame(&mut self, frame: ClientFrame<'_>) -> ClientAction {
        match frame {
            ClientFrame::Text(text) if !self.stopped => {
                ClientAction::Stdin(Bytes::copy_from_slice(text.as_bytes()))
            }
            ClientFrame::Binary => {
                self.stopped = true;
                ClientAction::Ignore
            }
            ClientFrame::Close => ClientAction::Closed,
            ClientFrame::Text(_) | ClientFrame::Control => ClientAction::Ignore,
        }
    }

    /// Stops forwarding (the command closed its stdin).
    pub fn stop(&mut self) {
        self.stopped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_must_be_an_object() {
        assert!(decode::<ClaimBody>(br#"[10, 60]"#).is_err());
        let body: ClaimBody = decode(b" \n{\"executionEnvironmentId\": 10}").expect("an object");
        assert_eq!(body.execution_environment_id, 10);
        assert_eq!(body.inactivity_timeout, 0);
        assert!(decode::<ClaimBody>(b"").is_err());
    }

    #[test]
    fn a_time_limit_beyond_the_clock_means_no_deadline() {
        let body: ExecuteBody =
            decode(br#"{"command":"true","timeLimit":18446744073709551615}"#).expect("valid");
        let now = Instant::now();
        // `now + limit` panics here, which the handler computed before.
        assert_eq!(now.checked_add(Duration::from_secs(body.time_limit)), None);
        assert_eq!(body.deadline(now), None);
        let body: ExecuteBody = decode(br#"{"command":"true","timeLimit":2}"#).expect("valid");
        assert_eq!(body.deadline(now), Some(now + Duration::from_secs(2)));
        let body: ExecuteBody = decode(br#"{"command":"true"}"#).expect("valid");
        assert_eq!(body.deadline(now), None);
    }

    #[test]
    fn a_binary_frame_stops_the_input_and_a_close_ends_it() {
        let mut input = ClientInput::default();
        assert_eq!(
            input.on_frame(ClientFrame::Text("a")),
            ClientAction::Stdin(Bytes::from_static(b"a"))
        );
        assert_eq!(input.on_frame(ClientFrame::Control), ClientAction::Ignore);
        assert_eq!(input.on_frame(ClientFrame::Binary), ClientAction::Ignore);
        assert_eq!(input.on_frame(ClientFrame::Text("b")), ClientAction::Ignore);
        assert_eq!(input.on_frame(ClientFrame::Close), ClientAction::Closed);
    }
}
