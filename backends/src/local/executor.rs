//! [`LocalExecutor`]: the [`Executor`] of the embedded local backend.
//!
//! A runner is a [`Sandbox`]; starting one creates the sandbox (namespaces, mounts, cgroups:
//! the expensive part, done before any claim) and reports it up. Environments are remembered in
//! memory with the root file system their image maps to. Nothing outlives the server: its
//! sandboxes die with it (see [`crate::local`]), so the inventory of a fresh server is empty and
//! claim marks need no persistence beyond this process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use trident_core::{
    EnvironmentId, EnvironmentSpec, Inventory, InventoryRunner, InventoryStatus, MappedPort,
    RunnerId, RunnerMark, Timestamp,
};

use crate::executor::{
    BackendError, ExecutionEvent, ExecutionRequest, Executor, FileDownload, FileHeader, FileUpdate,
    Observation, RunningExecution,
};
use crate::local::{
    Event, ExecSpec, Execution, FileError, Limits, Sandbox, SandboxHost, SandboxSpec,
};

/// Observations waiting for the driver. Each runner start produces one, so the bound is the
/// number of starts the driver runs at once, with room to spare.
const OBSERVATION_QUEUE: usize = 4_096;
/// Processes per sandbox when nothing else is configured: enough for compilers and test
/// runners, few enough that a fork bomb stays contained.
pub const DEFAULT_PIDS_MAX: u64 = 512;

/// Settings of the local executor beyond the sandbox host's.
#[derive(Clone, Debug, Default)]
pub struct LocalOptions {
    /// Image name → root file system directory. Images not listed run on the host's root file
    /// system, read-only.
    pub images: BTreeMap<String, PathBuf>,
    /// Processes per sandbox; `None` for [`DEFAULT_PIDS_MAX`].
    pub pids_max: Option<u64>,
    /// The address reported for exposed ports of runners with network access.
    pub port_host: Option<String>,
}

struct LocalRunner {
    sandbox: Arc<Sandbox>,
    ports: Vec<MappedPort>,
    mark: RunnerMark,
}

/// The local backend. See the module documentation.
pub struct LocalExecutor {
    host: SandboxHost,
    options: LocalOptions,
    environments: Mutex<BTreeMap<EnvironmentId, Arc<EnvironmentSpec>>>,
    runners: Mutex<BTreeMap<RunnerId, LocalRunner>>,
    observations: mpsc::Sender<Observation>,
    observations_rx: Mutex<Option<mpsc::Receiver<Observation>>>,
}

impl std::fmt::Debug for LocalExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalExecutor").finish_non_exhaustive()
    }
}

impl LocalExecutor {
    /// A local executor creating sandboxes on `host`.
    pub fn new(host: SandboxHost, options: LocalOptions) -> LocalExecutor {
        let (observations, observations_rx) = mpsc::channel(OBSERVATION_QUEUE);
        LocalExecutor {
            host,
            options,
            environments: Mutex::new(BTreeMap::new()),
            runners: Mutex::new(BTreeMap::new()),
            observations,
            observations_rx: Mutex::new(Some(observations_rx)),
        }
    }

    /// The sandbox host, for start-up reports.
    pub fn host(&self) -> &SandboxHost {
        &self.host
    }

    fn sandbox(&self, runner: RunnerId) -> Result<Arc<Sandbox>, BackendError> {
        lock(&self.runners)
            .get(&runner)
            .map(|local| Arc::clone(&local.sandbox))
            .ok_or(BackendError::RunnerNotFound(runner))
    }

    fn sandbox_spec(&self, runner: RunnerId, spec: &EnvironmentSpec) -> SandboxSpec {
        let mut sandbox = SandboxSpec::new(runner.to_string());
        sandbox.rootfs = self.options.images.get(&spec.image).cloned();
        sandbox.network = spec.network_access;
        sandbox.limits = Limits {
            memory_bytes: (spec.memory_limit > 0)
                .then(|| u64::from(spec.memory_limit) * 1024 * 1024),
            pids_max: Some(self.options.pids_max.unwrap_or(DEFAULT_PIDS_MAX)),
            cpu_mhz: (spec.cpu_limit > 0).then_some(spec.cpu_limit),
            ..Limits::default()
        };
        sandbox
    }

    fn ports(&self, spec: &EnvironmentSpec) -> Vec<MappedPort> {
        if !spec.network_access {
            return Vec::new();
        }
        let host = self.options.port_host.as_deref().unwrap_or("127.0.0.1");
        spec.exposed_ports
            .iter()
            .map(|port| MappedPort {
                exposed_port: *port,
                host_address: format!("{host}:{port}"),
            })
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn file_error(error: FileError) -> BackendError {
    match error {
        FileError::Escape(_) | FileError::SymlinkEscape(_) | FileError::Invalid(_) => {
            BackendError::BadRequest(error.to_string())
        }
        FileError::NotFound(_) | FileError::IsADirectory(_) | FileError::NotAFile(_) => {
            BackendError::FileNotFound
        }
        other => BackendError::Failed(other.to_string()),
    }
}

/// A command running in a local sandbox.
#[derive(Debug)]
pub struct LocalExecution {
    execution: Execution,
}

impl RunningExecution for LocalExecution {
    async fn next_event(&mut self) -> Option<ExecutionEvent> {
        Some(match self.execution.next_event().await? {
            Event::Stdout(bytes) => ExecutionEvent::Stdout(bytes),
            Event::Stderr(bytes) => ExecutionEvent::Stderr(bytes),
            Event::Exited(status) => ExecutionEvent::Exited(status.code()),
            Event::SandboxGone => ExecutionEvent::Gone,
        })
    }

    fn stdin(&self) -> mpsc::Sender<Bytes> {
        self.execution.stdin()
    }

    fn interrupt(&self) {
        if let Err(error) = self.execution.interrupt() {
            tracing::debug!(%error, "interrupting an execution failed");
        }
    }

    fn kill(&self) {
        self.execution.kill();
    }
}

impl Executor for LocalExecutor {
    type Execution = LocalExecution;

    fn take_observations(&self) -> Option<mpsc::Receiver<Observation>> {
        lock(&self.observations_rx).take()
    }

    async fn register_environment(
        &self,
        id: EnvironmentId,
        spec: Arc<EnvironmentSpec>,
    ) -> Result<(), BackendError> {
        if let Some(rootfs) = self.options.images.get(&spec.image)
            && !rootfs.is_dir()
        {
            return Err(BackendError::Failed(format!(
                "the root file system {} of image {:?} is not a directory",
                rootfs.display(),
                spec.image
            )));
        }
        lock(&self.environments).insert(id, spec);
        Ok(())
    }

    async fn remove_environment(&self, id: EnvironmentId) -> Result<(), BackendError> {
        lock(&self.environments).remove(&id);
        Ok(())
    }

    async fn start_runner(
        &self,
        runner: RunnerId,
        spec: Arc<EnvironmentSpec>,
    ) -> Result<(), BackendError> {
        let sandbox = self
            .host
            .create(self.sandbox_spec(runner, &spec))
            .await
            .map_err(|error| BackendError::Failed(error.to_string()))?;
        let ports = self.ports(&spec);
        lock(&self.runners).insert(
            runner,
            LocalRunner {
                sandbox: Arc::new(sandbox),
                ports: ports.clone(),
                mark: RunnerMark::Idle,
            },
        );
        self.observations
            .send(Observation::Up { runner, ports })
            .await
            .map_err(|_| BackendError::Failed("the driver stopped listening".into()))
    }

    async fn stop_runner(&self, runner: RunnerId) -> Result<(), BackendError> {
        let Some(local) = lock(&self.runners).remove(&runner) else {
            return Ok(());
        };
        match Arc::try_unwrap(local.sandbox) {
            Ok(sandbox) => sandbox
                .destroy()
                .await
                .map_err(|error| BackendError::Failed(error.to_string())),
            // A file operation still holds it; the last holder's drop tears it down.
            Err(shared) => {
                drop(shared);
                Ok(())
            }
        }
    }

    async fn mark_runner(&self, runner: RunnerId, mark: RunnerMark) -> Result<(), BackendError> {
        let mut runners = lock(&self.runners);
        let local = runners
            .get_mut(&runner)
            .ok_or(BackendError::RunnerNotFound(runner))?;
        local.mark = mark;
        Ok(())
    }

    async fn inventory(&self, as_of: Timestamp) -> Result<Inventory, BackendError> {
        let environments = lock(&self.environments)
            .iter()
            .map(|(id, spec)| (*id, (**spec).clone()))
            .collect();
        let runners = lock(&self.runners)
            .iter()
            .map(|(id, local)| InventoryRunner {
                id: *id,
                status: if local.sandbox.is_alive() {
                    InventoryStatus::Running(local.ports.clone())
                } else {
                    InventoryStatus::Pending
                },
                mark: local.mark,
            })
            .collect();
        Ok(Inventory {
            as_of,
            environments,
            runners,
        })
    }

    async fn execute(
        &self,
        runner: RunnerId,
        request: ExecutionRequest,
    ) -> Result<LocalExecution, BackendError> {
        let sandbox = self.sandbox(runner)?;
        let mut spec = ExecSpec::shell(request.command);
        spec.env.extend(request.environment);
        spec.privileged = request.privileged;
        let execution = sandbox
            .exec(spec)
            .await
            .map_err(|error| BackendError::Failed(error.to_string()))?;
        Ok(LocalExecution { execution })
    }

    async fn update_files(&self, runner: RunnerId, update: FileUpdate) -> Result<(), BackendError> {
        let sandbox = self.sandbox(runner)?;
        tokio::task::spawn_blocking(move || {
            let workspace = sandbox.workspace().map_err(file_error)?;
            for path in &update.delete {
                match workspace.delete(path) {
                    Ok(()) | Err(FileError::NotFound(_)) => {}
                    Err(error) => return Err(file_error(error)),
                }
            }
            for (path, content) in &update.copy {
                workspace.copy(path, content).map_err(|error| match error {
                    FileError::Escape(_) | FileError::SymlinkEscape(_) | FileError::Invalid(_) => {
                        BackendError::BadRequest(error.to_string())
                    }
                    other => BackendError::Failed(format!("file copy failed: {other}")),
                })?;
            }
            Ok(())
        })
        .await
        .map_err(|error| BackendError::Failed(error.to_string()))?
    }

    async fn list_files(
        &self,
        runner: RunnerId,
        path: String,
        recursive: bool,
        _privileged: bool,
    ) -> Result<Vec<FileHeader>, BackendError> {
        let sandbox = self.sandbox(runner)?;
        tokio::task::spawn_blocking(move || {
            let workspace = sandbox.workspace().map_err(file_error)?;
            workspace.list(&path, recursive).map_err(file_error)
        })
        .await
        .map_err(|error| BackendError::Failed(error.to_string()))?
    }

    async fn download_file(
        &self,
        runner: RunnerId,
        path: String,
        _privileged: bool,
    ) -> Result<FileDownload, BackendError> {
        let sandbox = self.sandbox(runner)?;
        let (size, file) = tokio::task::spawn_blocking(move || {
            let workspace = sandbox.workspace().map_err(file_error)?;
            workspace.open_file(&path).map_err(file_error)
        })
        .await
        .map_err(|error| BackendError::Failed(error.to_string()))??;
        Ok(FileDownload {
            size,
            reader: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}
