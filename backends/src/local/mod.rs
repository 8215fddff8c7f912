//! The embedded local backend's mechanism: sandboxes on this host.
//!
//! A runner of the local backend is a [`Sandbox`]: a long-lived init process that holds the
//! runner's namespaces (user, mount, pid, ipc, uts, cgroup and — unless the environment has
//! network access — network), its mounts (a read-only root file system, the runner's workspace
//! read-write at `/workspace`, a private `/tmp` (a host directory of the runner, like the workspace), a fresh `/proc`, a minimal `/dev`) and its cgroups
//! (memory, process count, CPU share). It is the local counterpart of a Poseidon container running
//! `sleep infinity`: pre-warming does the expensive part before a claim, files and `/tmp` persist
//! across the executions of one runner, and an execution costs little more than a fork and an exec.
//!
//! Code map:
//!
//! - [`config`]: what the server configures (host-wide [`HostConfig`]) and what each runner asks
//!   for ([`SandboxSpec`], [`Limits`]).
//! - [`probe`]: [`Capabilities`], what this host allows (namespaces, id mapping, which limit is
//!   enforced by which mechanism), printed by the server at start-up.
//! - [`cgroup`]: cgroup v1/v2 detection per controller, sandbox and per-execution cgroups.
//! - [`sandbox`]: [`SandboxHost`] (creates sandboxes) and [`Sandbox`] (one runner: exec, destroy).
//! - [`exec`]: [`ExecSpec`] and [`Execution`]: a running command with a pseudo-terminal for
//!   stdin/stdout, a pipe for stderr, interrupt and kill.
//! - [`files`]: [`Workspace`], file operations in Rust confined to a runner's workspace.
//! - [`init`]: the init program itself (runs inside the sandbox; see there for why it is a
//!   re-executed program and how executions enter the sandbox).
//! - [`executor`]: [`LocalExecutor`], the [`crate::Executor`] built from all of the above.
//! - `protocol` (private): the messages between the server and the init.
//!
//! Architecture invariants:
//!
//! - No process outlives its sandbox: every process of a sandbox is a descendant of its init, the
//!   init is pid 1 of the sandbox's pid namespace (its death kills the namespace), and the init dies
//!   when the server closes its control socket, which the kernel does when the server exits.
//! - Nothing is ever run unsandboxed: a host that does not allow the namespaces gets a typed
//!   [`SandboxError::NamespacesUnavailable`], never a fallback.
//! - Sandboxed code never runs as host root: even `privileged` executions are root only inside the
//!   sandbox's user namespace, whose uid 0 is mapped to an unprivileged host uid.
//! - File operations never follow a symlink or `..` out of the workspace (kernel-enforced
//!   `openat2(RESOLVE_BENEATH)`).
//! - Every queue is bounded; every task belongs to a handle that stops it on drop.

pub mod cgroup;
pub mod config;
mod error;
pub mod exec;
pub mod executor;
pub mod files;
pub mod init;
pub mod probe;
mod protocol;
pub mod sandbox;
mod sys;

pub use config::{HostConfig, IdMapConfig, Limits, SandboxSpec};
pub use error::{ExecError, SandboxError};
pub use exec::{Event, ExecSpec, Execution, ExitStatus};
pub use executor::{LocalExecution, LocalExecutor, LocalOptions};
pub use files::{FileError, FileHeader, Workspace};
pub use probe::{Capabilities, LimitMechanism};
pub use sandbox::{InitExit, Sandbox, SandboxHost};
pub use sys::raise_open_files_limit;
