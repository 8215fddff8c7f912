//! Decoding of what clients send: the environment body of `PUT /execution-environments/{id}`
//! ([`EnvironmentSpec`] from JSON, then [`EnvironmentSpec::validate`]) and the ids in paths
//! ([`EnvironmentId`], [`RunnerId`], [`ExecutionId`] through `FromStr`).
//!
//! The server's own bodies (claim, execute, file update) are private types of
//! `server/src/api`; the server decodes them with `serde_json` into plain fields and hands the
//! values to the manager and the backend, whose parts are fuzzed here and in the other targets.
//!
//! Properties: nothing panics; a spec that decodes and validates survives a JSON round trip
//! unchanged and still validates; an id that parses prints as text that parses to the same id,
//! and that text is canonical (printing is a fixed point).

use std::fmt::Display;
use std::str::FromStr;

use trident_core::{EnvironmentId, EnvironmentSpec, ExecutionId, RunnerId};

/// Runs the target on `data`.
pub fn run(data: &[u8]) {
    if let Ok(spec) = serde_json::from_slice::<EnvironmentSpec>(data)
        && spec.validate().is_ok()
    {
        let json = serde_json::to_vec(&spec).expect("a spec always serialises");
        let again: EnvironmentSpec =
            serde_json::from_slice(&json).expect("a serialised spec decodes");
        assert_eq!(again, spec, "JSON round trip changed the spec");
        assert!(again.validate().is_ok());
    }
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
