//! The `Executor` trait: what the server needs from a backend.
//!
//! Two halves:
//! - the **control plane**, driven by the manager's effects: register and remove environments,
//!   start and stop runners, persist claim marks, collect an inventory, and a stream of
//!   observations (runner up, runner down);
//! - the **data plane**, driven by clients on claimed runners: execute a command with stdin in and
//!   output out, update, list and download files.
//!
//! The trait is generic rather than object-safe (`impl Future` returns, no boxing): the server is
//! generic over its backend, so every call is static.
//!
//! Architecture invariant: a backend reports facts and does what it is asked; it decides nothing
//! about pools or claims. Every queue it hands out is bounded.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use trident_core::{
    DownCause, EnvironmentId, EnvironmentSpec, Inventory, MappedPort, RunnerId, RunnerMark,
    Timestamp,
};

/// What a backend saw happen to a runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The runner is up and ready.
    Up {
        /// The runner.
        runner: RunnerId,
        /// Where its exposed ports are reachable.
        ports: Vec<MappedPort>,
    },
    /// The runner went down.
    Down {
        /// The runner.
        runner: RunnerId,
        /// Why.
        cause: DownCause,
    },
}

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The runner does not exist in the backend (any more).
    #[error("runner {0} not found in the backend")]
    RunnerNotFound(RunnerId),
    /// The environment is not registered in the backend.
    #[error("execution environment {0} not found in the backend")]
    EnvironmentNotFound(EnvironmentId),
    /// The request is wrong: a path that leaves the workspace, say. The message is for the
    /// client (Poseidon: 400).
    #[error("{0}")]
    BadRequest(String),
    /// The file does not exist or may not be read (Poseidon: 424 with this very message).
    #[error("file not found or insufficient permissions")]
    FileNotFound,
    /// The backend is overloaded or unreachable; retrying later may help.
    #[error("the backend is unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// A command to run in a runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionRequest {
    /// The command line, run by a shell (`bash -c`) in the runner's working directory. Any
    /// characters are allowed: it is passed as one argument, never re-quoted.
    pub command: String,
    /// Extra environment variables (`CODEOCEAN=true` is always added).
    pub environment: Vec<(String, String)>,
    /// Run as root inside the runner instead of the unprivileged user.
    pub privileged: bool,
}

/// Something an execution produced. `Exited` or `Gone` is the last event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecutionEvent {
    /// Bytes from the terminal: the command's stdout and the echo of its input.
    Stdout(Bytes),
    /// Bytes from the command's stderr.
    Stderr(Bytes),
    /// The command ended with this code (128 + n for a signal n).
    Exited(u8),
    /// The runner went away before the command ended.
    Gone,
}

/// A running command. Dropping it kills the command's whole process tree.
pub trait RunningExecution: Send + 'static {
    /// The next event; `None` after the last.
    fn next_event(&mut self) -> impl Future<Output = Option<ExecutionEvent>> + Send;
    /// A sender for stdin. Bounded: a full queue waits until the command reads.
    fn stdin(&self) -> mpsc::Sender<Bytes>;
    /// Asks the command to stop, as Ctrl-\ on its terminal does (Poseidon's SIGQUIT).
    fn interrupt(&self);
    /// Kills the command's whole process tree at once where the backend can, and says how far
    /// the kill reached.
    fn kill(&self) -> KillReach;
}

/// How far [`RunningExecution::kill`] reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillReach {
    /// Every process of the command is killed (the local backend kills the execution's cgroup).
    ProcessTree,
    /// Only the connection to the command is closed; its processes may run on until the runner
    /// stops (Nomad's exec does not kill the process when its WebSocket goes, nomad-api.md
    /// §7.5). The caller stops the runner if the command had not ended.
    ConnectionOnly,
}

/// A change to a runner's files: Poseidon's `PATCH /files` body, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileUpdate {
    /// Paths to delete first; `./` means the whole workspace's contents.
    pub delete: Vec<String>,
    /// Files to write (a path ending in `/` creates a directory).
    pub copy: Vec<(String, Vec<u8>)>,
}

/// One entry of a listing, in Poseidon's JSON shape (`GET /files`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileHeader {
    /// The path, as `ls` prints it.
    pub name: String,
    /// One of `-` (regular), `d`, `l`, `p`, `s`, `c`, `b`, `?`.
    pub entry_type: char,
    /// Where a symlink points; omitted otherwise.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub link_target: String,
    /// Size in bytes.
    pub size: i64,
    /// Last modification, unix seconds.
    pub modification_time: i64,
    /// Like `ls -l`: `rwxr--r--`.
    pub permissions: String,
    /// Owner as seen inside the runner.
    pub owner: String,
    /// Group as seen inside the runner.
    pub group: String,
}

/// A file being downloaded.
pub struct FileDownload {
    /// Its size in bytes (the `Content-Length`).
    pub size: u64,
    /// Its bytes.
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
}

impl std::fmt::Debug for FileDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDownload")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A backend: see the module documentation.
pub trait Executor: Send + Sync + 'static {
    /// The running commands this backend hands out.
    type Execution: RunningExecution;

    /// The observations this backend makes. The driver takes the receiver once, at start-up;
    /// later calls return `None`.
    fn take_observations(&self) -> Option<mpsc::Receiver<Observation>>;

    /// Registers (creates or updates) an environment.
    fn register_environment(
        &self,
        id: EnvironmentId,
        spec: Arc<EnvironmentSpec>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Removes an environment. Its runners are stopped separately.
    fn remove_environment(
        &self,
        id: EnvironmentId,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Starts a runner. Success means the backend accepted it; readiness is reported as
    /// [`Observation::Up`].
    fn start_runner(
        &self,
        runner: RunnerId,
        spec: Arc<EnvironmentSpec>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Stops a runner and removes everything left of it. A runner the backend does not know
    /// counts as stopped.
    fn stop_runner(
        &self,
        runner: RunnerId,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Persists what is known about a runner's claim.
    fn mark_runner(
        &self,
        runner: RunnerId,
        mark: RunnerMark,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Everything the backend has, collected starting at `as_of`.
    fn inventory(
        &self,
        as_of: Timestamp,
    ) -> impl Future<Output = Result<Inventory, BackendError>> + Send;

    /// Runs a command in a runner.
    fn execute(
        &self,
        runner: RunnerId,
        request: ExecutionRequest,
    ) -> impl Future<Output = Result<Self::Execution, BackendError>> + Send;

    /// Deletes, then writes, files in a runner (writes are done as root inside the runner, as in
    /// Poseidon).
    fn update_files(
        &self,
        runner: RunnerId,
        update: FileUpdate,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Lists the files under `path`.
    fn list_files(
        &self,
        runner: RunnerId,
        path: String,
        recursive: bool,
        privileged: bool,
    ) -> impl Future<Output = Result<Vec<FileHeader>, BackendError>> + Send;

    /// Opens one file for download.
    fn download_file(
        &self,
        runner: RunnerId,
        path: String,
        privileged: bool,
    ) -> impl Future<Output = Result<FileDownload, BackendError>> + Send;
}
