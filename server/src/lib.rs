//! # trident-server
//!
//! Configuration, the Poseidon-compatible HTTP + WebSocket API, and the driver that owns the
//! [`trident_core::Manager`]: it feeds the manager requests, backend observations and the time,
//! and runs the effects the manager asks for against a backend. The binary is `trident`.
//!
//! The API and the driver arrive with the server issue; until then the binary explains what it
//! will do and exits with a non-zero status.

/// What `trident` prints until the server lands.
pub const PLANNED_USAGE: &str = "\
trident: the server is not built yet.

Planned usage:
  trident [--listen ADDR] [--backend local|nomad] [--config FILE] [--token TOKEN]
      serve Poseidon's API (default 127.0.0.1:7200) on the embedded local backend

The runner-manager core (crate trident-core) is in place and tested; the HTTP API and the local
backend are the next step (see ARCHITECTURE.md).";
