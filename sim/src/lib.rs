//! # trident-sim
//!
//! The deterministic simulation of Trident against Nomad: one fake Nomad (served over real TCP or
//! over turmoil), the harness that runs the real server with the Nomad backend inside turmoil,
//! workloads of CodeOcean-like clients, seeded fault plans and the invariants checked after every
//! step. A failing seed replays with one command.
//!
//! - [`nomad`]: the fake Nomad;
//! - [`harness`]: the turmoil simulation ([`harness::run_seed`]), its fault kinds, workload,
//!   invariants and trace.

pub mod harness;
pub mod nomad;
