//! # trident-sim
//!
//! The deterministic simulation of Trident against Nomad: one fake Nomad (served over real TCP or
//! over turmoil), the harness that runs the real server with the Nomad backend inside turmoil,
//! workloads of CodeOcean-like clients, seeded fault plans and the invariants checked after every
//! step. A failing seed replays with one command.
//!
//! So far: the fake Nomad ([`nomad`]). The harness arrives with the simulation issue; it builds on
//! the Nomad backend.

pub mod nomad;
