//! The Nomad backend: the wire types ([`model`]), the allocation tracker ([`tracker`]) that
//! turns Nomad's event stream into runner observations, and the job JSON and claim ledger
//! ([`jobs`]) — all three pure — and the I/O around them: the
//! typed HTTP client ([`client`]) over a pluggable [`connector`], its retry policy ([`retry`]),
//! the event-stream task ([`events`]), the evaluation waiters ([`evaluations`]), the commands Trident runs in allocations and the `ls`
//! parser ([`commands`], pure), the exec WebSocket client ([`exec`]), and the backend itself,
//! control plane and data plane, as an `Executor` ([`executor`]).
//!
//! Architecture invariant: `model`, `tracker`, `jobs` and `commands` do no I/O, have no async, read no clock, draw no
//! randomness and iterate only ordered collections, so the simulation drives them unchanged.
//!
//! Architecture invariant: `client`, `events` and `retry` take time from `tokio::time` only and
//! randomness from an injected `retry::Entropy`, and reach the network only through a
//! `connector::Connector`, so the simulation runs them over turmoil unchanged.

pub mod client;
pub mod commands;
pub mod connector;
pub mod evaluations;
pub mod events;
pub mod exec;
pub mod executor;
pub mod jobs;
pub mod model;
pub mod retry;
pub mod tracker;
