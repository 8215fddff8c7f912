//! What clients send in request bodies and paths, through the server's own decoders
//! (`trident_server::api::bodies`, the code the handlers run) into what the manager and the
//! backends take. The input is one body, decoded as each of:
//!
//! - `PUT /execution-environments/{id}`: an [`EnvironmentSpec`] that decodes and validates
//!   survives a JSON round trip unchanged and still validates;
//! - `POST /runners` ([`ClaimBody`]): the fields are the JSON's; its claim input, applied to a
//!   manager that holds that environment with an idle runner, claims it, and the manager's
//!   invariants hold then and at its next deadline, whatever the inactivity timeout;
//! - `POST /runners/{id}/execute` ([`ExecuteBody`]): the time-limit deadline never overflows
//!   the clock and lies exactly `timeLimit` seconds ahead when it exists; the request becomes a
//!   Nomad argv that decodes back to the very request, or is refused for a NUL byte or a
//!   variable name that is not a shell name;
//! - `PATCH /runners/{id}/files` ([`UpdateBody`]): contents are accepted iff they are standard
//!   base64, which then re-encodes to the same text; the Nomad update argv carries the delete
//!   paths, cleaned, as its own elements.
//!
//! As text, the input is also an id as it arrives in a path ([`EnvironmentId`], [`RunnerId`],
//! [`ExecutionId`] through `FromStr`): an id that parses prints as text that parses to the same
//! id, and that text is canonical. Nothing panics.

use std::fmt::Display;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use trident_backends::nomad::commands::{
    StderrFifo, clean_path, decode_interactive, decode_update_files, interactive_argv,
    update_files_argv,
};
use trident_core::{
    EnvironmentId, EnvironmentSpec, ExecutionId, Input, Manager, ManagerConfig, Reply, RunnerId,
    SeededIds, Timestamp,
};
use trident_server::api::bodies::{ClaimBody, ExecuteBody, UpdateBody, decode};

/// Runs the target on `data`.
pub fn run(data: &[u8]) {
    environment(data);
    claim(data);
    execute(data);
    update(data);
    if let Ok(text) = std::str::from_utf8(data) {
        round_trip::<EnvironmentId>(text);
        round_trip::<RunnerId>(text);
        round_trip::<ExecutionId>(text);
        // Ids as they arrive in a path: one segment of a longer text.
        for segment in text.split('/') {
            round_trip::<RunnerId>(segment);
        }
    }
}

fn environment(data: &[u8]) {
    let Ok(spec) = decode::<EnvironmentSpec>(data) else {
        return;
    };
    if spec.validate().is_ok() {
        let json = serde_json::to_vec(&spec).expect("a spec always serialises");
        let again: EnvironmentSpec =
            serde_json::from_slice(&json).expect("a serialised spec decodes");
        assert_eq!(again, spec, "JSON round trip changed the spec");
        assert!(again.validate().is_ok());
    }
}

fn claim(data: &[u8]) {
    let Ok(body) = decode::<ClaimBody>(data) else {
        return;
    };
    // A number out of `f64`'s range in an ignored field is skipped by the decoder (as by Go's)
    // but refused by `Value`: then there is nothing to compare with.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        assert_eq!(
            value["executionEnvironmentId"].as_u64(),
            Some(body.execution_environment_id)
        );
        match value.get("inactivityTimeout") {
            Some(timeout) => assert_eq!(timeout.as_u64(), Some(body.inactivity_timeout)),
            None => assert_eq!(body.inactivity_timeout, 0),
        }
    }

    // A manager holding the body's environment with one idle runner.
    let id = EnvironmentId(body.execution_environment_id);
    let mut manager = Manager::new(ManagerConfig::default(), Box::new(SeededIds::new(7)));
    let mut now = Timestamp::ZERO;
    let spec: EnvironmentSpec = serde_json::from_str(
        r#"{"prewarmingPoolSize":1,"cpuLimit":100,"memoryLimit":256,"image":"i","networkAccess":false,"exposedPorts":null}"#,
    )
    .expect("a valid spec");
    manager.apply(now, Input::PutEnvironment { id, spec });
    answer_effects(&mut manager, now);
    let Reply::Claim(Ok(claimed)) = manager.apply(now, body.input()) else {
        panic!("no runner claimed with {body:?}");
    };
    assert_invariants(&manager);
    assert!(manager.claimed_runner(claimed.runner).is_some());
    // Its deadline, however far, is reached without overflow.
    now = Timestamp::from_millis(1_000);
    manager.apply(
        now,
        Input::Activity {
            runner: claimed.runner,
        },
    );
    if let Some(deadline) = manager.poll_timeout() {
        assert!(deadline >= now);
        manager.handle_timeout(deadline);
        assert_invariants(&manager);
    }
    let expired = body.inactivity_timeout > 0
        && Duration::from_secs(body.inactivity_timeout) <= Duration::from_secs(3_600);
    if expired {
        manager.handle_timeout(Timestamp::from_millis(1_000 + 3_600_000));
        assert!(manager.claimed_runner(claimed.runner).is_none());
    }
}

/// Registers, starts and brings up what the manager asks for.
fn answer_effects(manager: &mut Manager, now: Timestamp) {
    for _ in 0..8 {
        let Some(effect) = manager.poll_effect() else {
            return;
        };
        let input = match effect {
            trident_core::Effect::RegisterEnvironment { id, version, .. } => {
                Input::EnvironmentRegistered {
                    id,
                    version,
                    ok: true,
                }
            }
            trident_core::Effect::StartRunner { runner, .. } => Input::RunnerUp {
                runner,
                ports: Vec::new(),
            },
            _ => continue,
        };
        manager.apply(now, input);
    }
}

fn assert_invariants(manager: &Manager) {
    if let Err(violation) = manager.check_invariants() {
        panic!("{violation:?}");
    }
}

/// A fixed start, so that a corpus file replays the same.
static START: LazyLock<tokio::time::Instant> = LazyLock::new(tokio::time::Instant::now);

fn execute(data: &[u8]) {
    let Ok(body) = decode::<ExecuteBody>(data) else {
        return;
    };
    match body.deadline(*START) {
        None => assert!(
            body.time_limit == 0
                || START
                    .checked_add(Duration::from_secs(body.time_limit))
                    .is_none()
        ),
        Some(deadline) => assert_eq!(deadline - *START, Duration::from_secs(body.time_limit)),
    }
    let request = body.request();
    assert_eq!(request.command, body.command);
    assert_eq!(request.privileged, body.privileged_execution);
    assert_eq!(request.environment.len(), body.environment.len());
    let fifo = StderrFifo::for_execution(body.time_limit);
    match interactive_argv(&request, Some(&fifo)) {
        Ok(argv) => {
            let decoded = decode_interactive(&argv).expect("a built argv decodes");
            assert_eq!(decoded.request, request);
            assert_eq!(decoded.fifo, Some(fifo));
        }
        Err(_) => assert!(
            request.command.contains('\0')
                || request.environment.iter().any(|(name, value)| {
                    value.contains('\0')
                        || name.is_empty()
                        || name.starts_with(|c: char| c.is_ascii_digit())
                        || !name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
                }),
            "refused {request:?}"
        ),
    }
}

fn update(data: &[u8]) {
    let Ok(body) = decode::<UpdateBody>(data) else {
        return;
    };
    let contents: Vec<String> = body.copy.iter().map(|file| file.content.clone()).collect();
    let delete = body.delete.clone();
    match body.into_update() {
        Ok(update) => {
            assert_eq!(update.delete, delete);
            for ((_, content), text) in update.copy.iter().zip(&contents) {
                assert_eq!(&BASE64.encode(content), text, "base64 is not canonical");
            }
            if let Ok(argv) = update_files_argv(&update.delete) {
                let paths = decode_update_files(&argv).expect("a built argv decodes");
                let cleaned: Vec<String> = update
                    .delete
                    .iter()
                    .map(|path| match path.as_str() {
                        "./*" => path.clone(),
                        _ => clean_path(path),
                    })
                    .collect();
                assert_eq!(paths, cleaned);
            } else {
                assert!(
                    update
                        .delete
                        .iter()
                        .any(|path| path.is_empty() || path.contains('\0'))
                );
            }
        }
        Err(_) => assert!(
            contents.iter().any(|text| BASE64.decode(text).is_err()),
            "valid base64 refused"
        ),
    }
}

fn round_trip<T: FromStr + Display + PartialEq + std::fmt::Debug>(text: &str) {
    let Ok(id) = text.parse::<T>() else {
        return;
    };
    let printed = id.to_string();
    let Ok(again) = printed.parse::<T>() else {
        panic!("{text:?} parsed as {id:?}, which prints as {printed:?}, which does not parse");
    };
    assert_eq!(again, id, "{text:?} → {printed:?}");
    assert_eq!(again.to_string(), printed, "printing is not canonical");
}
