//! # trident-core
//!
//! Trident's domain types and its runner-manager state machine, [`Manager`].
//!
//! The manager is sans-IO, in the manner of `quinn-proto`: requests, backend observations and
//! outcomes come in together with the current time; replies come back at once, work for the
//! backend is queued as [`Effect`]s, news for the application as [`Event`]s, and
//! [`Manager::poll_timeout`] says when to call [`Manager::handle_timeout`] next. It never awaits,
//! sleeps, reads a clock or draws a random number, so the very same code runs in the server, in
//! property tests, in fuzz targets and in the deterministic simulation.
//!
//! Architecture invariant: this crate does no I/O, has no async, reads no clock, draws no
//! randomness (fresh ids come from an injected [`IdSource`]) and iterates only ordered
//! collections. It depends on `serde` and `thiserror` only.
//!
//! ```
//! use std::time::Duration;
//! use trident_core::*;
//!
//! let mut manager = Manager::new(ManagerConfig::default(), Box::new(SeededIds::new(7)));
//! let now = Timestamp::from_millis(0);
//! let spec = EnvironmentSpec {
//!     prewarming_pool_size: 1,
//!     cpu_limit: 20,
//!     memory_limit: 256,
//!     image: "python:3.12".into(),
//!     network_access: false,
//!     exposed_ports: vec![],
//! };
//! let environment = EnvironmentId(10);
//! assert_eq!(manager.put_environment(now, environment, spec), Ok(PutOutcome::Created));
//!
//! // The driver runs the effects against a backend and reports the outcomes.
//! let mut started = vec![];
//! while let Some(effect) = manager.poll_effect() {
//!     match effect {
//!         Effect::RegisterEnvironment { id, version, .. } => {
//!             manager.environment_registered(now, id, version, true)
//!         }
//!         Effect::StartRunner { runner, .. } => started.push(runner),
//!         _ => {}
//!     }
//! }
//! // Registered, the pool started one runner; the backend reports it up.
//! assert_eq!(started.len(), 1);
//! manager.runner_up(now, started[0], vec![]);
//!
//! let claimed = manager.claim(now, environment, Some(Duration::from_secs(60))).unwrap();
//! assert_eq!(claimed.runner, started[0]);
//! assert_eq!(manager.claim(now, environment, None), Err(ClaimError::NoIdleRunner));
//! ```

#![forbid(unsafe_code)]

mod ids;
mod io;
mod manager;
mod spec;
mod time;

pub use ids::{
    EnvironmentId, ExecutionId, IdError, IdSource, Lease, RunnerId, SeededIds, SplitMix64, Uuid,
};
pub use io::{
    ClaimError, ClaimMark, Claimed, DownCause, Effect, EnvironmentStats, Event, Input, Inventory,
    InventoryRunner, InventoryStatus, LeaseEndCause, PutError, PutOutcome, Reply, RunnerError,
    RunnerMark, UnknownEnvironment,
};
pub use manager::{InvariantViolation, Manager, ManagerConfig};
pub use spec::{
    CPU_LIMIT_MHZ_MAX, EXPOSED_PORTS_MAX, EnvironmentSpec, IMAGE_LENGTH_MAX, MEMORY_LIMIT_MB_MAX,
    MappedPort, POOL_SIZE_MAX, SpecError,
};
pub use time::Timestamp;
