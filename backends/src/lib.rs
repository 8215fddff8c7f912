//! # trident-backends
//!
//! The `Executor` trait and the backends that implement it:
//!
//! - `local`, the embedded default: every runner is a workspace directory and a Linux sandbox
//!   (user, mount, pid, network, ipc and uts namespaces; cgroup limits) on this host;
//! - `nomad`, production: environments and runners are HashiCorp Nomad jobs, observed through
//!   Nomad's event stream, commands run through Nomad's exec WebSocket. Its allocation tracker is a
//!   pure module that turns allocation events into the manager's runner observations.
//!
//! Backends do I/O; the decisions stay in [`trident_core::Manager`].

pub mod contract;
pub mod executor;
pub mod local;
pub mod nomad;

pub use executor::{
    BackendError, ExecutionEvent, ExecutionRequest, Executor, FileDownload, FileHeader, FileUpdate,
    KillReach, Observation, RunningExecution,
};
