//! [`LocalExecutor`]: the [`Executor`] of the embedded local backend.
//!
//! A runner is a [`Sandbox`]; starting one creates the sandbox (namespaces, mounts, cgroups:
//! the expensive part, done before any claim) and reports it up. Environments are remembered in
//! memory with the root file system their image maps to. Nothing outlives the server: its
//! sandboxes die with it (see [`crate::local`]), so the inventory of a fresh server is empty and
//! claim marks need no persistence beyond this process.
//!
//! # Unexpected deaths
//!
//! Every running runner has a watcher task that waits on its init's pidfd. If the init exits
//! without [`Executor::stop_runner`] having been called (killed from outside, crashed), the
//! watcher removes the runner, tears down what is left of its sandbox (cgroups, directories) and
//! reports [`Observation::Down`] with [`DownCause::Lost`], after the runner's `Up`. Watchers are
//! owned: a runner's entry holds its watcher and aborts it when removed (stop) or dropped (the
//! executor dropped); a watcher that has already taken its runner out of the map finishes its
//! report or gives up when the executor is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use trident_core::{
    DownCause, EnvironmentId, EnvironmentSpec, Inventory, InventoryRunner, InventoryStatus,
    MappedPort, RunnerId, RunnerMark, Timestamp,
};

use crate::executor::{
    BackendError, ExecutionEvent, ExecutionRequest, Executor, FileDownload, FileHeader, FileUpdate,
    KillReach, Observation, RunningExecution,
};
use crate::local::{
    Event, ExecSpec, Execution, FileError, InitExit, Limits, Sandbox, SandboxHost, SandboxSpec,
};

/// Observations waiting for the driver. Each runner start produces one, so the bound is the
/// number of starts the driver runs at once, with room to spare.
const OBSERVATION_QUEUE: usize = 4_096;
/// Processes per sandbox when nothing else is configured: enough for compilers and test
/// runners, few enough that a fork bomb stays contained.
pub const DEFAULT_PIDS_MAX: u64 = 512;
/// Bytes a runner's workspace and `/tmp` may hold together when nothing else is configured:
/// four times the largest upload CodeOcean has been seen sending (60 MB, Poseidon's issue #591),
/// and little enough that a few dozen full runners fit in a small server's memory.
pub const DEFAULT_WORKSPACE_BYTES: u64 = 256 * 1024 * 1024;
/// Files and directories a runner's workspace and `/tmp` may hold together by default.
pub const DEFAULT_WORKSPACE_FILES: u64 = 65_536;
/// The kernel's `NAME_MAX`: bytes of one path component.
const NAME_BYTES_MAX: usize = 255;
/// The kernel's `PATH_MAX` less its terminating NUL.
const PATH_BYTES_MAX: usize = 4_095;

/// Settings of the local executor beyond the sandbox host's.
#[derive(Clone, Debug, Default)]
pub struct LocalOptions {
    /// Image name → root file system directory. Images not listed run on the host's root file
    /// system, read-only.
    pub images: BTreeMap<String, PathBuf>,
    /// Processes per sandbox; `None` for [`DEFAULT_PIDS_MAX`].
    pub pids_max: Option<u64>,
    /// Bytes of each runner's workspace and `/tmp` together (a tmpfs, see
    /// [`Limits::workspace_bytes`]); `None` for [`DEFAULT_WORKSPACE_BYTES`], `Some(0)` for no
    /// quota.
    pub workspace_bytes: Option<u64>,
    /// Files and directories of each runner's workspace and `/tmp` together; `None` for
    /// [`DEFAULT_WORKSPACE_FILES`], `Some(0)` for no bound.
    pub workspace_files: Option<u64>,
    /// The address reported for exposed ports of runners with network access.
    pub port_host: Option<String>,
}

struct LocalRunner {
    sandbox: Arc<Sandbox>,
    ports: Vec<MappedPort>,
    mark: RunnerMark,
    /// Tells this entry from a later one under the same id, so that a watcher never removes a
    /// runner it was not started for.
    generation: u64,
    watcher: Watcher,
}

/// The task watching one runner's init. Dropping the entry that holds it aborts the task, so a
/// stopped runner or a dropped executor leaves no watcher behind.
struct Watcher(Option<tokio::task::JoinHandle<()>>);

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

type Runners = Mutex<BTreeMap<RunnerId, LocalRunner>>;

/// The local backend. See the module documentation.
pub struct LocalExecutor {
    host: Arc<SandboxHost>,
    /// Sandbox creations running at once. Each keeps a core busy for ~15 ms; unbounded, a pool
    /// refill would starve the requests being served (claim latency).
    /// Each creation's permit travels with it onto its blocking thread, so a creation whose
    /// caller gave up still counts until it is done.
    creations: Arc<tokio::sync::Semaphore>,
    /// The semaphore's size, so that shutdown can wait for every creation in flight.
    creations_max: u32,
    /// Destructions in flight hold one permit each (on their blocking thread), so that shutdown
    /// can wait for them: a destruction cut short by the runtime's end would leave a cgroup or a
    /// workspace behind.
    destructions: Arc<tokio::sync::Semaphore>,
    options: LocalOptions,
    environments: Mutex<BTreeMap<EnvironmentId, Arc<EnvironmentSpec>>>,
    /// Shared with the watchers only weakly: they must not keep the runners alive.
    runners: Arc<Runners>,
    /// Runners whose start is in flight (queued behind `creations` or being created): the
    /// inventory lists them as pending, as Nomad lists a registered job whose allocation has not
    /// started. Without them, an inventory taken during a pool refill missed the queued starts,
    /// the manager dropped those runners, stopped each as an orphan when it came up and asked
    /// for another inventory: under steady claims the pools stalled.
    starting: Mutex<BTreeSet<RunnerId>>,
    next_generation: AtomicU64,
    observations: mpsc::Sender<Observation>,
    observations_rx: Mutex<Option<mpsc::Receiver<Observation>>>,
    /// Never sent on; dropped with the executor, which ends the watchers that have detached
    /// from their entry to deliver a `Down` (nobody would act on it any more).
    shutdown: watch::Sender<()>,
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
            host: Arc::new(host),
            creations: Arc::new(tokio::sync::Semaphore::new(creations_at_once())),
            destructions: Arc::new(tokio::sync::Semaphore::new(DESTRUCTIONS_MAX as usize)),
            creations_max: u32::try_from(creations_at_once()).unwrap_or(1),
            starting: Mutex::new(BTreeSet::new()),
            options,
            environments: Mutex::new(BTreeMap::new()),
            runners: Arc::new(Mutex::new(BTreeMap::new())),
            next_generation: AtomicU64::new(0),
            observations,
            observations_rx: Mutex::new(Some(observations_rx)),
            shutdown: watch::Sender::new(()),
        }
    }

    /// The host pid of a runner's sandbox init (pid 1 inside), for diagnostics and for tests that
    /// make a sandbox die behind the executor's back.
    pub fn init_pid(&self, runner: RunnerId) -> Result<i32, BackendError> {
        Ok(self.sandbox(runner)?.init_pid())
    }

    /// Waits for the sandbox creations in flight, refuses new ones, and destroys every sandbox
    /// (workspaces included). The server calls it when it stops: local sandboxes cannot outlive
    /// the process anyway, and this leaves nothing behind on disk or in the cgroup tree.
    pub async fn shutdown(&self) {
        if let Ok(all) = self.creations.acquire_many(self.creations_max).await {
            all.forget();
        }
        self.creations.close();
        let runners: Vec<RunnerId> = lock(&self.runners).keys().copied().collect();
        for runner in runners {
            if let Err(error) = self.stop_runner(runner).await {
                tracing::warn!(%runner, %error, "destroying a sandbox at shutdown failed");
            }
        }
        if let Ok(all) = self.destructions.acquire_many(DESTRUCTIONS_MAX).await {
            all.forget();
        }
        self.destructions.close();
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
            workspace_bytes: Some(
                self.options
                    .workspace_bytes
                    .unwrap_or(DEFAULT_WORKSPACE_BYTES),
            )
            .filter(|bytes| *bytes > 0),
            workspace_files: Some(
                self.options
                    .workspace_files
                    .unwrap_or(DEFAULT_WORKSPACE_FILES),
            )
            .filter(|files| *files > 0),
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

/// Destructions in flight at most; more wait for a permit.
const DESTRUCTIONS_MAX: u32 = 1_024;

/// Half the cores, at least one: the other half stays free for requests and executions.
/// Takes a runner off [`LocalExecutor::starting`] when its start ends, however it ends
/// (done, failed, or the caller gave up).
struct Starting<'a> {
    set: &'a Mutex<BTreeSet<RunnerId>>,
    runner: RunnerId,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.runner);
    }
}

fn creations_at_once() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
}

/// Runs a sandbox's creation or destruction on a blocking-pool thread. Both make blocking system
/// calls (clone, mount, waiting for a cgroup to empty) for milliseconds; on the runtime's few
/// worker threads they would hold up every request behind them (claims measured 3 ms at the
/// median and 16 ms at p99 before this, under pool refills).
async fn off_the_workers<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, BackendError> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(work))
        .await
        .map_err(|error| BackendError::Failed(format!("a sandbox task failed: {error}")))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits for a runner's init to exit; if the runner is still the one this watcher was started
/// for, removes it, purges its sandbox and reports it lost (after its `Up`, whose delivery
/// `up_sent` signals). See the module documentation for who ends this task.
async fn watch_runner(
    runners: Weak<Runners>,
    runner: RunnerId,
    generation: u64,
    exit: InitExit,
    up_sent: oneshot::Receiver<()>,
    observations: mpsc::Sender<Observation>,
    mut shutdown: watch::Receiver<()>,
) {
    tokio::select! {
        biased;
        // `changed` only fails, when the executor is dropped: nothing is ever sent.
        _ = shutdown.changed() => return,
        () = exit.wait() => {}
    }
    let Some(runners) = runners.upgrade() else {
        return;
    };
    let local = {
        let mut map = lock(&runners);
        match map.get(&runner) {
            Some(local) if local.generation == generation => {}
            // Stopped (or replaced) while we woke up: not ours to report.
            _ => return,
        }
        let Some(mut local) = map.remove(&runner) else {
            return;
        };
        // Detach ourselves: dropping the entry must not abort the task that is running this.
        drop(local.watcher.0.take());
        local
    };
    drop(runners);
    tracing::warn!(%runner, "the runner's sandbox died unexpectedly");
    let report = async {
        match Arc::try_unwrap(local.sandbox) {
            Ok(sandbox) => {
                if let Err(error) = sandbox.destroy().await {
                    tracing::warn!(%runner, %error, "purging a dead sandbox failed");
                }
            }
            // A file operation still holds it; the last holder's drop tears it down.
            Err(shared) => drop(shared),
        }
        // Either `Up` was sent, or its sender is gone (the start failed): go on either way.
        let _ = up_sent.await;
        let _ = observations
            .send(Observation::Down {
                runner,
                cause: DownCause::Lost,
            })
            .await;
    };
    tokio::select! {
        biased;
        _ = shutdown.changed() => {}
        () = report => {}
    }
}

fn file_error(error: FileError) -> BackendError {
    match error {
        FileError::Escape(_)
        | FileError::SymlinkEscape(_)
        | FileError::Invalid(_)
        | FileError::NameTooLong(_)
        | FileError::NoSpace(_) => BackendError::BadRequest(error.to_string()),
        // Unreachable paths (`/proc/1/environ`, say) cannot be read: Poseidon answers 424 too.
        FileError::NotFound(_)
        | FileError::Unreachable(_)
        | FileError::IsADirectory(_)
        | FileError::NotAFile(_) => BackendError::FileNotFound,
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

    fn kill(&self) -> KillReach {
        // The execution's cgroup: every process it started, however it detached.
        self.execution.kill();
        KillReach::ProcessTree
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
        lock(&self.starting).insert(runner);
        let _starting = Starting {
            set: &self.starting,
            runner,
        };
        let permit = Arc::clone(&self.creations)
            .acquire_owned()
            .await
            .map_err(|_| BackendError::Failed("the executor is shutting down".into()))?;
        let host = Arc::clone(&self.host);
        let sandbox_spec = self.sandbox_spec(runner, &spec);
        let sandbox = off_the_workers(async move {
            let _permit = permit;
            host.create(sandbox_spec).await
        })
        .await?
        .map_err(|error| BackendError::Failed(error.to_string()))?;
        let exit = sandbox
            .exit_watch()
            .map_err(|error| BackendError::Failed(error.to_string()))?;
        let ports = self.ports(&spec);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (up_sent, up_sent_rx) = oneshot::channel();
        let task = tokio::spawn(watch_runner(
            Arc::downgrade(&self.runners),
            runner,
            generation,
            exit,
            up_sent_rx,
            self.observations.clone(),
            self.shutdown.subscribe(),
        ));
        let replaced = lock(&self.runners).insert(
            runner,
            LocalRunner {
                sandbox: Arc::new(sandbox),
                ports: ports.clone(),
                mark: RunnerMark::Idle,
                generation,
                watcher: Watcher(Some(task)),
            },
        );
        // Cannot happen (the sandbox's directory is named by the id, so a second create fails),
        // but if it did, the old sandbox is torn down outside the lock.
        drop(replaced);
        let sent = self
            .observations
            .send(Observation::Up { runner, ports })
            .await
            .map_err(|_| BackendError::Failed("the driver stopped listening".into()));
        let _ = up_sent.send(());
        sent
    }

    async fn stop_runner(&self, runner: RunnerId) -> Result<(), BackendError> {
        let Some(local) = lock(&self.runners).remove(&runner) else {
            return Ok(());
        };
        let LocalRunner {
            sandbox, watcher, ..
        } = local;
        // Before the kill: a stop is no unexpected death.
        drop(watcher);
        match Arc::try_unwrap(sandbox) {
            Ok(sandbox) => {
                let permit = Arc::clone(&self.destructions)
                    .acquire_owned()
                    .await
                    .map_err(|_| BackendError::Failed("the executor is shutting down".into()))?;
                off_the_workers(async move {
                    let _permit = permit;
                    sandbox.destroy().await
                })
                .await?
                .map_err(|error| BackendError::Failed(error.to_string()))
            }
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
        // Starts first: a start adds its runner to `runners` before it leaves `starting`, so
        // a start seen here is in `runners` below unless it failed (read the other way round,
        // a start ending between the two reads would be in neither).
        let mut starting = lock(&self.starting).clone();
        let mut runners: Vec<InventoryRunner> = lock(&self.runners)
            .iter()
            .map(|(id, local)| {
                starting.remove(id);
                InventoryRunner {
                    id: *id,
                    status: if local.sandbox.is_alive() {
                        InventoryStatus::Running(local.ports.clone())
                    } else {
                        InventoryStatus::Pending
                    },
                    mark: local.mark,
                }
            })
            .collect();
        runners.extend(starting.into_iter().map(|id| InventoryRunner {
            id,
            status: InventoryStatus::Pending,
            mark: RunnerMark::Idle,
        }));
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

    /// Paths are resolved as [`crate::local::files`] documents. Every path is checked before
    /// anything is done, so a request with an escaping or invalid path (`BadRequest`) changes
    /// nothing, and neither does one with a path outside the workspace and `/tmp` (which the
    /// local backend cannot write): that is reported as Poseidon's copy failure (500, "Cannot
    /// open"), but where Poseidon's `tar` extracts the other entries first, nothing is written,
    /// so that a failed update never leaves a workspace half changed.
    async fn update_files(&self, runner: RunnerId, update: FileUpdate) -> Result<(), BackendError> {
        let sandbox = self.sandbox(runner)?;
        tokio::task::spawn_blocking(move || {
            let workspace = sandbox.workspace().map_err(file_error)?;
            let mut unreachable = Vec::new();
            let paths = update
                .delete
                .iter()
                .chain(update.copy.iter().map(|(p, _)| p));
            for path in paths {
                if path.len() > PATH_BYTES_MAX
                    || path.split('/').any(|name| name.len() > NAME_BYTES_MAX)
                {
                    return Err(file_error(FileError::NameTooLong(path.clone())));
                }
                match workspace.check(path) {
                    Ok(()) => {}
                    Err(FileError::Unreachable(_)) => unreachable.push(path.as_str()),
                    Err(error) => return Err(BackendError::BadRequest(error.to_string())),
                }
            }
            if !unreachable.is_empty() {
                return Err(BackendError::Failed(format!(
                    "file copy failed: Cannot open: {}: only the workspace and /tmp can be written",
                    unreachable.join(", ")
                )));
            }
            for path in &update.delete {
                match workspace.delete(path) {
                    Ok(()) | Err(FileError::NotFound(_)) => {}
                    Err(error) => return Err(file_error(error)),
                }
            }
            for (path, content) in &update.copy {
                match workspace.copy(path, content) {
                    Ok(()) => {}
                    Err(
                        error @ (FileError::Escape(_)
                        | FileError::SymlinkEscape(_)
                        | FileError::Invalid(_)
                        | FileError::NameTooLong(_)
                        | FileError::NoSpace(_)),
                    ) => return Err(BackendError::BadRequest(error.to_string())),
                    Err(other) => {
                        return Err(BackendError::Failed(format!("file copy failed: {other}")));
                    }
                }
            }
            Ok(())
        })
        .await
        .map_err(|error| BackendError::Failed(error.to_string()))?
    }

    /// `privileged` is ignored: the listing is made by the server, which sees every file of
    /// the workspace and `/tmp` whatever its owner or mode, so an unprivileged listing shows
    /// what a privileged one would (Poseidon's unprivileged `ls` would fail on a directory the
    /// sandbox user cannot read). Nothing outside these two is reachable either way.
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

    /// `privileged` is ignored, as for `list_files`: a file the sandbox user
    /// could not read (a `0600` file of the sandbox's root, say) is downloaded all the same,
    /// where Poseidon's unprivileged `cat` would answer 424. Files written by `update_files` are
    /// `0744` and readable by the sandbox user anyway.
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
