//! [`NomadExecutor`]: the control plane of the Nomad backend, as an [`Executor`].
//!
//! - Environments are template jobs, runners are runner jobs ([`super::jobs`]); registering
//!   either waits for its evaluation ([`super::evaluations`]): through the event stream first,
//!   polling `GET /v1/evaluation/:id` when the stream has not answered within
//!   [`NomadOptions::evaluation_poll_interval`]. A placement failure is an error, so is a
//!   timeout — never success, unlike Poseidon's §6.5.
//! - Observations come from one owned task that seeds an [`AllocationTracker`] from the
//!   allocation list, follows the event stream from that index, feeds every frame to the tracker
//!   and its evaluations to the [`EvaluationBoard`], and re-seeds on every `Resync` (gap,
//!   undecodable frame). An [`EventMonitor`] ([`NomadOptions::event_monitor`]) is shown every
//!   frame before the tracker applies it, and the tracked job count after; it is a plain call
//!   that must not wait, so monitoring never holds up the stream.
//! - Claim marks are kept in each environment's ledger (the template job's `config` group meta)
//!   and written by re-registering the template; the inventory reads one job list plus one
//!   template per environment.
//!
//!
//! The data plane runs everything through the exec WebSocket ([`super::exec`]) in the runner's
//! running allocation (found with [`choose_allocation`] on the job's allocations, never the
//! first one blindly), with the argv of [`super::commands`]:
//! - `execute`: the stderr reader (non-tty) is opened first, then the command (tty), joined into
//!   one [`SplitExecution`];
//! - `update_files`: one non-tty exec as root, the tar archive on stdin, then stdin closed; a
//!   non-zero exit is `file copy failed: …` with tar's output (Poseidon §4.5);
//! - `list_files`: `ls` parsed by [`parse_ls`]; a failure with nothing listed is `FileNotFound`;
//! - `download_file`: the file's own `ls` header gives its size (a non-regular file is
//!   `FileNotFound`), then `cat` streams it through a bounded queue into the reader.
//!
//! A runner without a running allocation is `RunnerNotFound`; paths that climb out of the
//! working directory with `..` are `BadRequest` ([`commands::check_path`]). A file command whose
//! session ends without an exit frame (`nomad-api.md` §10 row 21) is `Unavailable`, not the
//! exit 0 Poseidon reads into it: the copy or listing may not have finished. Interactive
//! executions keep Poseidon's reading (exit 0, logged).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use trident_core::{
    EnvironmentId, EnvironmentSpec, Inventory, InventoryRunner, InventoryStatus, RunnerId,
    RunnerMark, Timestamp, Uuid,
};

use super::client::{AllocationQuery, NomadClient, NomadError};
use super::commands::{self, CommandError, LsParser, StderrFifo};
use super::connector::Connector;
use super::evaluations::{self, EvaluationBoard};
use super::events::{EventStream, EventStreamConfig, StreamItem};
use super::exec::{
    ExecClient, ExecError, ExecSession, SessionEnd, SplitExecution, choose_allocation,
};
use super::jobs::{self, JobSettings};
use super::model::Frame;
use super::tracker::AllocationTracker;
use crate::executor::{
    BackendError, ExecutionEvent, ExecutionRequest, Executor, FileDownload, FileHeader, FileUpdate,
    Observation, RunningExecution,
};

/// Observations waiting for the driver.
const OBSERVATION_QUEUE: usize = 4_096;
/// Pause before re-seeding after a failed allocation list.
const SEED_RETRY: Duration = Duration::from_secs(1);
/// Most bytes kept of a file command's stdout or stderr for an error message.
const MESSAGE_BYTES_MAX: usize = 16 << 10;
/// Chunks of a download between its exec session and its reader.
const DOWNLOAD_QUEUE: usize = 16;

/// Settings of the Nomad executor beyond the HTTP client's.
#[derive(Clone, Debug)]
pub struct NomadOptions {
    /// What the jobs look like.
    pub jobs: JobSettings,
    /// How long a registration may wait for its evaluation (Poseidon: 10 s).
    pub evaluation_timeout: Duration,
    /// How long a registration waits for its evaluation on the event stream before it polls
    /// `GET /v1/evaluation/:id`, and the pause between polls. Nomad's scheduler takes
    /// milliseconds, so with a healthy stream no poll is ever made.
    pub evaluation_poll_interval: Duration,
    /// The event stream's settings (its start index is set by the executor).
    pub events: EventStreamConfig,
    /// Unix seconds when the executor is created: the modification time of copied files is this
    /// plus the tokio time elapsed since (0 where no wall clock may be read, as in the
    /// simulation).
    pub unix_time_at_start_s: u64,
    /// Told the index of every event frame the tracker processed, with the number of the
    /// subscription it came through (one per seed of the tracker). The simulation checks that
    /// indexes never go backwards within a subscription. `None` in production.
    pub frame_probe: Option<FrameProbe>,
    /// Told every event frame and the number of tracked runner jobs, for monitoring (the
    /// server's `poseidon_nomad_events`). `None` records nothing.
    pub event_monitor: Option<Arc<dyn EventMonitor>>,
}

/// What the follower tells monitoring. It is called on the follower task, between reading a
/// frame and applying it, so an implementation must return at once: no await, no blocking send,
/// no lock held across I/O. The event stream's reader never waits on monitoring.
pub trait EventMonitor: Send + Sync + std::fmt::Debug {
    /// A data frame (never a heartbeat), before the tracker applies it.
    fn frame(&self, frame: &Frame);
    /// How many runner jobs the tracker follows (one allocation each), after every seed and
    /// every frame.
    fn tracked_jobs(&self, jobs: usize);
}

/// See [`NomadOptions::frame_probe`]: called with (subscription, frame index).
#[derive(Clone)]
pub struct FrameProbe(pub Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for FrameProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameProbe")
    }
}

impl Default for NomadOptions {
    fn default() -> Self {
        Self {
            jobs: JobSettings::default(),
            evaluation_timeout: Duration::from_secs(10),
            evaluation_poll_interval: Duration::from_secs(1),
            events: EventStreamConfig::default(),
            unix_time_at_start_s: 0,
            frame_probe: None,
            event_monitor: None,
        }
    }
}

#[derive(Clone, Debug)]
struct EnvironmentState {
    spec: Arc<EnvironmentSpec>,
    ledger: BTreeMap<Uuid, RunnerMark>,
}

/// The Nomad backend's executor. See the module documentation.
pub struct NomadExecutor<C: Connector> {
    client: NomadClient<C>,
    exec: ExecClient<C>,
    /// When the executor was created, on tokio's clock (see [`NomadOptions::unix_time_at_start_s`]).
    created: tokio::time::Instant,
    options: NomadOptions,
    /// Registered environments and their claim ledgers. An async mutex: a ledger write holds it
    /// across the template's re-registration, which serialises writers of one ledger.
    environments: tokio::sync::Mutex<BTreeMap<EnvironmentId, EnvironmentState>>,
    observations: Mutex<Option<mpsc::Receiver<Observation>>>,
    /// Terminal evaluations from the event stream, for the registrations waiting on them.
    evaluations: Arc<EvaluationBoard>,
    follower: tokio::task::JoinHandle<()>,
}

impl<C: Connector> std::fmt::Debug for NomadExecutor<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NomadExecutor").finish_non_exhaustive()
    }
}

impl<C: Connector> Drop for NomadExecutor<C> {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl<C: Connector> NomadExecutor<C> {
    /// An executor on `client` (control plane) and `exec` (commands and files, over the same
    /// connector); starts following the cluster's allocations at once.
    pub fn new(client: NomadClient<C>, exec: ExecClient<C>, options: NomadOptions) -> Self {
        // Owned by the follower task alone; the inventory reads a fresh allocation list.
        let tracker = Arc::new(Mutex::new(AllocationTracker::new()));
        let (sender, receiver) = mpsc::channel(OBSERVATION_QUEUE);
        let evaluations = Arc::new(EvaluationBoard::new());
        let follower = tokio::spawn(follow(
            client.clone(),
            Arc::clone(&tracker),
            Arc::clone(&evaluations),
            sender,
            options.events.clone(),
            options.frame_probe.clone(),
            options.event_monitor.clone(),
        ));
        Self {
            client,
            exec,
            created: tokio::time::Instant::now(),
            options,
            environments: tokio::sync::Mutex::new(BTreeMap::new()),
            observations: Mutex::new(Some(receiver)),
            evaluations,
            follower,
        }
    }

    /// Registers a job and waits until its evaluation completed with every allocation placed.
    async fn register_and_wait(&self, job: &serde_json::Value) -> Result<(), BackendError> {
        let response = self.client.register_job(job).await.map_err(nomad_error)?;
        let Some(evaluation) = response.eval_id.filter(|id| !id.is_empty()) else {
            return Ok(());
        };
        let timeout = self.options.evaluation_timeout;
        tokio::time::timeout(timeout, self.wait_for_evaluation(&evaluation))
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::Unavailable(format!(
                    "evaluation {evaluation} did not finish within {timeout:?}"
                )))
            })
    }

    /// Waits for a terminal evaluation: from the event stream, or, when the stream has not
    /// answered within a poll interval, from `GET /v1/evaluation/:id`, whichever is first. The
    /// caller bounds the wait.
    async fn wait_for_evaluation(&self, id: &str) -> Result<(), BackendError> {
        // The watch is registered after the register call answered; an evaluation the stream
        // reported before that is on the board already (nomad-api.md §10 row 13).
        let mut watch = self.evaluations.watch(id);
        let interval = self.options.evaluation_poll_interval;
        // tokio's clock, which the simulation controls.
        let mut poll_at = tokio::time::Instant::now() + interval;
        let mut streamed = true;
        loop {
            tokio::select! {
                biased;
                finished = watch.finished(), if streamed => match finished {
                    Some(evaluation) => return evaluations::judge(&evaluation),
                    // Replaced by another watch of the same id: polling alone answers.
                    None => streamed = false,
                },
                () = tokio::time::sleep_until(poll_at) => {
                    tracing::debug!(evaluation = id, "the event stream has not reported the evaluation yet: polling");
                    match self.client.read_evaluation(id).await {
                        Ok(Some(found)) if found.value.status.is_terminal() => {
                            return evaluations::judge(&found.value);
                        }
                        // Not terminal, or not visible yet on the server that answered.
                        Ok(_) => {}
                        Err(error) if !error.is_transient() => return Err(nomad_error(error)),
                        // The client retried already; the stream may still answer, and the
                        // caller's deadline bounds the wait.
                        Err(error) => {
                            tracing::warn!(evaluation = id, %error, "polling the evaluation failed");
                        }
                    }
                    poll_at = tokio::time::Instant::now() + interval;
                }
            }
        }
    }

    /// Writes an environment's ledger by re-registering its template.
    async fn write_ledger(
        &self,
        environment: EnvironmentId,
        state: &EnvironmentState,
    ) -> Result<(), BackendError> {
        let job = jobs::template_job(&self.options.jobs, environment, &state.spec, &state.ledger);
        self.client
            .register_job(&job)
            .await
            .map(|_| ())
            .map_err(nomad_error)
    }
}

fn nomad_error(error: NomadError) -> BackendError {
    if error.is_transient() {
        BackendError::Unavailable(error.to_string())
    } else {
        BackendError::Failed(error.to_string())
    }
}

/// Follows the cluster: seed the tracker from the allocation list, stream events from there,
/// re-seed on every resync. Ends when the executor (the receiver) is gone.
async fn follow<C: Connector>(
    client: NomadClient<C>,
    tracker: Arc<Mutex<AllocationTracker>>,
    evaluations: Arc<EvaluationBoard>,
    sender: mpsc::Sender<Observation>,
    config: EventStreamConfig,
    probe: Option<FrameProbe>,
    monitor: Option<Arc<dyn EventMonitor>>,
) {
    let mut subscription = 0u64;
    loop {
        let Some((index, running)) = seed(&client, &tracker).await else {
            if sender.is_closed() {
                return;
            }
            tokio::time::sleep(SEED_RETRY).await;
            continue;
        };
        if let Some(monitor) = &monitor {
            monitor.tracked_jobs(lock(&tracker).tracked_jobs());
        }
        // The tracker does not report what it was seeded with, but the manager may have learnt
        // of these runners from an older snapshot that still said "pending": tell it they are up.
        // For runners it already knows as up this only refreshes their ports.
        for observation in running {
            if sender.send(observation).await.is_err() {
                return;
            }
        }
        // The stream resumes "after the last frame seen": the seed reflects everything up to
        // its index, so that index is the last frame seen. (Starting one later made the client
        // skip the very next frame as Nomad's re-sent one, and lose it.)
        subscription += 1;
        let mut stream = EventStream::spawn(
            client.clone(),
            EventStreamConfig {
                start_index: index,
                ..config.clone()
            },
        );
        while let Some(item) = stream.next().await {
            match item {
                StreamItem::Frame(frame) => {
                    if let Some(probe) = &probe {
                        (probe.0)(subscription, frame.index);
                    }
                    if let Some(monitor) = &monitor {
                        monitor.frame(&frame);
                    }
                    evaluations.take_events(&frame.events);
                    let (observations, tracked_jobs) = {
                        let mut tracker = lock(&tracker);
                        (tracker.apply_frame(&frame), tracker.tracked_jobs())
                    };
                    if let Some(monitor) = &monitor {
                        monitor.tracked_jobs(tracked_jobs);
                    }
                    for observation in observations {
                        if sender.send(observation).await.is_err() {
                            return;
                        }
                    }
                }
                StreamItem::Resync(reason) => {
                    tracing::warn!(?reason, "event stream resync: re-seeding from the lists");
                    // Bounded rate: a cluster that keeps producing gaps costs one list a second.
                    tokio::time::sleep(SEED_RETRY).await;
                    break;
                }
            }
        }
    }
}

/// Seeds the tracker from the allocation list; returns the list's index and an `Up` for every
/// runner whose newest allocation runs.
async fn seed<C: Connector>(
    client: &NomadClient<C>,
    tracker: &Arc<Mutex<AllocationTracker>>,
) -> Option<(u64, Vec<Observation>)> {
    // Statuses, links and ports are all the tracker takes from a list: task states (the OOM
    // rule) come with the events.
    let query = AllocationQuery {
        resources: true,
        omit_task_states: true,
        ..AllocationQuery::default()
    };
    match client.list_allocations(&query).await {
        Ok(listed) => {
            let mut by_job: BTreeMap<String, Vec<super::model::Allocation>> = BTreeMap::new();
            for allocation in &listed.value {
                by_job
                    .entry(allocation.job_id.clone())
                    .or_default()
                    .push(allocation.clone());
            }
            let running = by_job
                .iter()
                .filter_map(|(job, allocations)| {
                    let runner = job.parse::<RunnerId>().ok()?;
                    let allocation = choose_allocation(allocations)?;
                    Some(Observation::Up {
                        runner,
                        ports: super::tracker::mapped_ports(allocation).unwrap_or_default(),
                    })
                })
                .collect();
            lock(tracker).seed(listed.index, listed.value);
            Some((listed.index, running))
        }
        Err(error) => {
            tracing::warn!(%error, "listing allocations failed");
            None
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn command_error(error: CommandError) -> BackendError {
    BackendError::BadRequest(error.to_string())
}

fn exec_error(error: ExecError) -> BackendError {
    let message = format!("communication with executor failed: {error}");
    match error {
        ExecError::Connection(_) | ExecError::Timeout(_) => BackendError::Unavailable(message),
        ExecError::Config(_) | ExecError::Status { .. } => BackendError::Failed(message),
    }
}

/// What a non-interactive file command produced.
#[derive(Debug, Default)]
struct FileCommandOutput {
    /// Its stderr (at most [`MESSAGE_BYTES_MAX`]).
    stderr: Vec<u8>,
    /// Its exit code.
    exit: u8,
}

fn keep(buffer: &mut Vec<u8>, bytes: &[u8]) {
    let room = MESSAGE_BYTES_MAX.saturating_sub(buffer.len());
    buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

impl<C: Connector> NomadExecutor<C> {
    /// The id of the runner's running allocation. A runner whose job is gone or stopping has
    /// none, even while its allocation still runs (the scheduler has not processed the stop).
    async fn allocation(&self, runner: RunnerId) -> Result<String, BackendError> {
        let job_id = runner.to_string();
        let (job, allocations) = tokio::join!(
            self.client.read_job(&job_id),
            self.client.job_allocations(&job_id, false)
        );
        let job = job.map_err(nomad_error)?;
        if job.is_none_or(|job| job.value["Stop"].as_bool() == Some(true)) {
            return Err(BackendError::RunnerNotFound(runner));
        }
        let allocations = allocations.map_err(nomad_error)?;
        choose_allocation(&allocations.value)
            .map(|allocation| allocation.id.clone())
            .ok_or(BackendError::RunnerNotFound(runner))
    }

    /// Runs `argv` without a terminal in the runner's allocation, `stdin` then end of file, and
    /// waits for its end. Stdout goes to `on_stdout`; an allocation that goes away is
    /// `RunnerNotFound`.
    async fn run_file_command(
        &self,
        runner: RunnerId,
        argv: &[String],
        stdin: Option<Vec<u8>>,
        mut on_stdout: impl FnMut(&[u8]) + Send,
    ) -> Result<FileCommandOutput, BackendError> {
        let allocation = self.allocation(runner).await?;
        let mut session = self
            .exec
            .open(&allocation, false, argv)
            .await
            .map_err(exec_error)?;
        let sender = session.stdin();
        session.close_stdin();
        let feed = async move {
            if let Some(bytes) = stdin {
                // A command that ends without reading all of it is reported by its exit code.
                let _ = sender.send(Bytes::from(bytes)).await;
            }
            drop(sender);
        };
        let mut output = FileCommandOutput::default();
        let collect = async {
            while let Some(event) = session.next_event().await {
                match event {
                    ExecutionEvent::Stdout(bytes) => on_stdout(&bytes),
                    ExecutionEvent::Stderr(bytes) => keep(&mut output.stderr, &bytes),
                    ExecutionEvent::Exited(code) => {
                        // Poseidon reads a session that ended without an exit frame as exit 0
                        // (nomad-api.md §7.5); for a file command that would confirm a copy or
                        // a listing nobody saw finish (§10 row 21): the result is unknown.
                        if let Some(end) = session
                            .end()
                            .filter(|end| !matches!(end, SessionEnd::Exited { .. }))
                        {
                            return Err(BackendError::Unavailable(format!(
                                "the file command ended without an exit code: {end:?}"
                            )));
                        }
                        output.exit = code;
                        return Ok(());
                    }
                    ExecutionEvent::Gone => {
                        // A lost connection says nothing about the runner (Nomad or the node
                        // restarted): the result is unknown, not the runner gone.
                        return Err(match session.end() {
                            Some(end @ SessionEnd::ConnectionLost(_)) => BackendError::Unavailable(
                                format!("the file command ended without an exit code: {end:?}"),
                            ),
                            _ => BackendError::RunnerNotFound(runner),
                        });
                    }
                }
            }
            Err(BackendError::RunnerNotFound(runner))
        };
        let ((), collected) = tokio::join!(feed, collect);
        collected.map(|()| output)
    }

    /// Lists `path` with `argv` (a listing or a header): the headers, or `FileNotFound` when
    /// `ls` failed without listing anything (Poseidon §4.6: 424).
    async fn list_with(
        &self,
        runner: RunnerId,
        argv: &[String],
    ) -> Result<Vec<FileHeader>, BackendError> {
        let mut parser = LsParser::new();
        let mut headers = Vec::new();
        let output = self
            .run_file_command(runner, argv, None, |chunk| parser.feed(chunk, &mut headers))
            .await?;
        parser.finish(&mut headers);
        if output.exit != 0 && headers.is_empty() {
            return Err(BackendError::FileNotFound);
        }
        Ok(headers)
    }

    /// Unix seconds now, for tar mtimes: see [`NomadOptions::unix_time_at_start_s`].
    fn unix_time_s(&self) -> u64 {
        self.options
            .unix_time_at_start_s
            .saturating_add(self.created.elapsed().as_secs())
    }
}

/// A download's bytes: a bounded queue filled by a task that owns the `cat` session (and is
/// aborted with this reader). The task delivers exactly the announced size: bytes beyond it (the
/// file grew) are dropped, and a file that shrank or a `cat` that failed after the first byte
/// ends the body with an error rather than short.
struct DownloadReader {
    chunks: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    pump: JoinHandle<()>,
}

impl Drop for DownloadReader {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl AsyncRead for DownloadReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.current.is_empty() {
                let n = self.current.len().min(buf.remaining());
                let piece = self.current.split_to(n);
                buf.put_slice(&piece);
                return Poll::Ready(Ok(()));
            }
            match self.chunks.poll_recv(cx) {
                Poll::Ready(Some(Ok(bytes))) => self.current = bytes,
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Moves a download's bytes from its session into the reader's queue, `size` bytes exactly.
async fn pump_download(
    mut session: ExecSession,
    first: Bytes,
    size: u64,
    chunks: mpsc::Sender<std::io::Result<Bytes>>,
) {
    let mut left = size;
    let mut next = Some(first);
    loop {
        if let Some(mut bytes) = next.take() {
            let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
            bytes.truncate(take);
            left -= take as u64;
            if !bytes.is_empty() && chunks.send(Ok(bytes)).await.is_err() {
                return;
            }
            if left == 0 {
                // Whatever follows (the file grew) is not announced: the body is complete.
                return;
            }
        }
        let failure = match session.next_event().await {
            Some(ExecutionEvent::Stdout(bytes)) => {
                next = Some(bytes);
                continue;
            }
            Some(ExecutionEvent::Stderr(_)) => continue,
            Some(ExecutionEvent::Exited(0)) => format!("the file shrank by {left} bytes"),
            Some(ExecutionEvent::Exited(code)) => format!("cat failed with exit code {code}"),
            Some(ExecutionEvent::Gone) | None => "the runner went away".to_owned(),
        };
        let _ = chunks
            .send(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("download cut short: {failure}"),
            )))
            .await;
        return;
    }
}

impl<C: Connector> Executor for NomadExecutor<C> {
    type Execution = SplitExecution;

    fn take_observations(&self) -> Option<mpsc::Receiver<Observation>> {
        lock(&self.observations).take()
    }

    async fn register_environment(
        &self,
        id: EnvironmentId,
        spec: Arc<EnvironmentSpec>,
    ) -> Result<(), BackendError> {
        let mut environments = self.environments.lock().await;
        let ledger = match environments.get(&id) {
            Some(state) => state.ledger.clone(),
            // Not known to this process yet (a put right after a restart, before the first
            // inventory): the template in Nomad may hold claims of an earlier process, which a
            // registration with an empty ledger would wipe.
            None => match self
                .client
                .read_job(&jobs::template_job_id(id))
                .await
                .map_err(nomad_error)?
            {
                Some(job) => jobs::parse_ledger(&job.value),
                None => BTreeMap::new(),
            },
        };
        let job = jobs::template_job(&self.options.jobs, id, &spec, &ledger);
        self.register_and_wait(&job).await?;
        environments.insert(id, EnvironmentState { spec, ledger });
        Ok(())
    }

    async fn remove_environment(&self, id: EnvironmentId) -> Result<(), BackendError> {
        let mut environments = self.environments.lock().await;
        self.client
            .delete_job(&jobs::template_job_id(id), true)
            .await
            .map_err(nomad_error)?;
        environments.remove(&id);
        Ok(())
    }

    async fn start_runner(
        &self,
        runner: RunnerId,
        spec: Arc<EnvironmentSpec>,
    ) -> Result<(), BackendError> {
        let job = jobs::runner_job(&self.options.jobs, runner, &spec, true);
        self.register_and_wait(&job).await
    }

    async fn stop_runner(&self, runner: RunnerId) -> Result<(), BackendError> {
        self.client
            .delete_job(&runner.to_string(), true)
            .await
            .map_err(nomad_error)?;
        // Its mark goes with it, or the ledger would only grow.
        let mut environments = self.environments.lock().await;
        if let Some(state) = environments.get_mut(&runner.environment())
            && state.ledger.remove(&runner.uuid()).is_some()
        {
            let state = state.clone();
            self.write_ledger(runner.environment(), &state).await?;
        }
        Ok(())
    }

    async fn mark_runner(&self, runner: RunnerId, mark: RunnerMark) -> Result<(), BackendError> {
        // A stopped runner has no mark to keep (its job is purged, or stopping).
        let job = self
            .client
            .read_job(&runner.to_string())
            .await
            .map_err(nomad_error)?;
        if job.is_none_or(|job| job.value["Stop"].as_bool() == Some(true)) {
            return Err(BackendError::RunnerNotFound(runner));
        }
        let mut environments = self.environments.lock().await;
        let state = environments
            .get_mut(&runner.environment())
            .ok_or(BackendError::EnvironmentNotFound(runner.environment()))?;
        let before = state.ledger.get(&runner.uuid()).copied();
        match mark {
            RunnerMark::Idle => state.ledger.remove(&runner.uuid()),
            mark => state.ledger.insert(runner.uuid(), mark),
        };
        if before == state.ledger.get(&runner.uuid()).copied() {
            return Ok(());
        }
        let written = state.clone();
        let result = self.write_ledger(runner.environment(), &written).await;
        if result.is_err() {
            // What is in memory is what Nomad holds: a failed write leaves no trace.
            match before {
                Some(mark) => state.ledger.insert(runner.uuid(), mark),
                None => state.ledger.remove(&runner.uuid()),
            };
        }
        result
    }

    async fn inventory(&self, as_of: Timestamp) -> Result<Inventory, BackendError> {
        let stubs = self
            .client
            .list_jobs("", false)
            .await
            .map_err(nomad_error)?;
        let mut environments = Vec::new();
        let mut ledgers: BTreeMap<EnvironmentId, BTreeMap<Uuid, RunnerMark>> = BTreeMap::new();
        let mut runners = Vec::new();
        for stub in &stubs.value {
            if stub.stop || stub.status == super::model::JobStatus::Dead {
                continue;
            }
            if jobs::environment_of_template(&stub.id).is_some() {
                let Some(job) = self.client.read_job(&stub.id).await.map_err(nomad_error)? else {
                    continue;
                };
                match jobs::parse_template(&job.value) {
                    Ok((id, spec)) => {
                        ledgers.insert(id, jobs::parse_ledger(&job.value));
                        environments.push((id, spec));
                    }
                    Err(error) => tracing::warn!(%error, "skipping a template job"),
                }
            } else if let Ok(runner) = stub.id.parse::<RunnerId>() {
                runners.push(runner);
            }
        }
        // Ledgers this process does not know yet come from Nomad (recovery). One it knows is
        // its own, and it is the only writer: the copy just read may predate a mark written
        // while the lists were read, and adopting it would drop that mark from every later write
        // (the simulation found a claim lost that way).
        {
            let mut known = self.environments.lock().await;
            for (id, spec) in &environments {
                let state = known.entry(*id).or_insert_with(|| EnvironmentState {
                    spec: Arc::new(spec.clone()),
                    ledger: ledgers.get(id).cloned().unwrap_or_default(),
                });
                // The marks reported are the ones this process holds, the newest.
                ledgers.insert(*id, state.ledger.clone());
            }
        }
        // Runner states from a fresh allocation list, not from the tracker: the tracker may be
        // behind (a restarted server seeds it while allocations are still being placed, and a
        // seeded allocation that is already running is never reported "up" again). A job that
        // will not run by itself is listed `Failed` (`tracker::not_running_status`), so that a
        // manager that missed the events saying so purges it rather than waiting for it.
        let query = AllocationQuery {
            resources: true,
            omit_task_states: true,
            ..AllocationQuery::default()
        };
        let allocations = self
            .client
            .list_allocations(&query)
            .await
            .map_err(nomad_error)?;
        let mut by_job: BTreeMap<&str, Vec<super::model::Allocation>> = BTreeMap::new();
        for allocation in &allocations.value {
            by_job
                .entry(allocation.job_id.as_str())
                .or_default()
                .push(allocation.clone());
        }
        let mut listed = Vec::with_capacity(runners.len());
        for runner in runners {
            let job = runner.to_string();
            let allocations = by_job.get(job.as_str()).map_or(&[][..], Vec::as_slice);
            let status = match choose_allocation(allocations) {
                Some(running) => InventoryStatus::Running(
                    super::tracker::mapped_ports(running).unwrap_or_default(),
                ),
                // Not placed: whether it still may be or could not be, only its evaluations
                // say. One call per such job, and only for those (a pool starting, a cluster
                // full); a pool that runs costs none.
                None if allocations.is_empty() => {
                    let evaluations = self
                        .client
                        .job_evaluations(&job)
                        .await
                        .map_err(nomad_error)?;
                    super::tracker::not_running_status(&[], &evaluations.value)
                }
                None => super::tracker::not_running_status(allocations, &[]),
            };
            listed.push(InventoryRunner {
                id: runner,
                status,
                mark: ledgers
                    .get(&runner.environment())
                    .and_then(|ledger| ledger.get(&runner.uuid()).copied())
                    .unwrap_or_default(),
            });
        }
        let runners = listed;
        // The simulation's canary (`sim/tests/canary.rs`): a recovery that forgets the claim
        // ledger, so a restarted Trident hands out runners that clients still hold.
        #[cfg(feature = "sim-canary")]
        let runners = runners
            .into_iter()
            .map(|runner| InventoryRunner {
                mark: RunnerMark::Idle,
                ..runner
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
    ) -> Result<SplitExecution, BackendError> {
        let fifo = StderrFifo::for_execution(self.exec.draw_u64());
        let commands = commands::split_execution(&request, &fifo).map_err(command_error)?;
        let allocation = self.allocation(runner).await?;
        // The reader first: it creates the fifo the command waits for.
        let mut reader = self
            .exec
            .open(&allocation, false, &commands.stderr_reader)
            .await
            .map_err(exec_error)?;
        reader.close_stdin();
        let main = self
            .exec
            .open(&allocation, true, &commands.main)
            .await
            .map_err(exec_error)?;
        Ok(SplitExecution::new(main, reader))
    }

    async fn update_files(&self, runner: RunnerId, update: FileUpdate) -> Result<(), BackendError> {
        // Refuse the whole request before any of it is done.
        for path in update
            .delete
            .iter()
            .chain(update.copy.iter().map(|(path, _)| path))
        {
            commands::check_path(path).map_err(command_error)?;
        }
        let argv = commands::update_files_argv(&update.delete).map_err(command_error)?;
        let archive =
            commands::tar_archive(&update.copy, self.unix_time_s()).map_err(command_error)?;
        let mut stdout = Vec::new();
        let output = self
            .run_file_command(runner, &argv, Some(archive), |chunk| {
                keep(&mut stdout, chunk);
            })
            .await?;
        if output.exit == 0 {
            return Ok(());
        }
        Err(BackendError::Failed(format!(
            "file copy failed: stderr output '{}' and stdout output '{}'",
            String::from_utf8_lossy(&output.stderr).trim_end(),
            String::from_utf8_lossy(&stdout).trim_end(),
        )))
    }

    async fn list_files(
        &self,
        runner: RunnerId,
        path: String,
        recursive: bool,
        privileged: bool,
    ) -> Result<Vec<FileHeader>, BackendError> {
        commands::check_path(&path).map_err(command_error)?;
        let argv =
            commands::list_files_argv(&path, recursive, privileged).map_err(command_error)?;
        self.list_with(runner, &argv).await
    }

    async fn download_file(
        &self,
        runner: RunnerId,
        path: String,
        privileged: bool,
    ) -> Result<FileDownload, BackendError> {
        commands::check_path(&path).map_err(command_error)?;
        let argv = commands::file_header_argv(&path, privileged).map_err(command_error)?;
        let headers = self.list_with(runner, &argv).await?;
        let size = match headers.as_slice() {
            [header] if header.entry_type == '-' => {
                u64::try_from(header.size).map_err(|_| BackendError::FileNotFound)?
            }
            // A directory, a device, a fifo: nothing to download.
            _ => return Err(BackendError::FileNotFound),
        };
        let argv = commands::download_argv(&path, privileged).map_err(command_error)?;
        let allocation = self.allocation(runner).await?;
        let mut session = self
            .exec
            .open(&allocation, false, &argv)
            .await
            .map_err(exec_error)?;
        session.close_stdin();
        // Wait for the first byte or the end, so that an unreadable file is `FileNotFound` and
        // not a body cut short (`/proc/1/environ`: listed, not readable).
        let first = loop {
            match session.next_event().await {
                Some(ExecutionEvent::Stdout(bytes)) if !bytes.is_empty() => break bytes,
                Some(ExecutionEvent::Stdout(_) | ExecutionEvent::Stderr(_)) => {}
                Some(ExecutionEvent::Exited(0)) => break Bytes::new(),
                Some(ExecutionEvent::Exited(_)) => return Err(BackendError::FileNotFound),
                Some(ExecutionEvent::Gone) | None => {
                    return Err(BackendError::RunnerNotFound(runner));
                }
            }
        };
        let (sender, chunks) = mpsc::channel(DOWNLOAD_QUEUE);
        let pump = tokio::spawn(pump_download(session, first, size, sender));
        Ok(FileDownload {
            size,
            reader: Box::new(DownloadReader {
                chunks,
                current: Bytes::new(),
                pump,
            }),
        })
    }
}
