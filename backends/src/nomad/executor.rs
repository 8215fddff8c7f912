//! [`NomadExecutor`]: the control plane of the Nomad backend, as an [`Executor`].
//!
//! - Environments are template jobs, runners are runner jobs ([`super::jobs`]); registering
//!   either waits for its evaluation (a placement failure is an error, so is a timeout — never
//!   success, unlike Poseidon's §6.5).
//! - Observations come from one owned task that seeds an [`AllocationTracker`] from the
//!   allocation list, follows the event stream from that index, feeds every frame to the tracker,
//!   and re-seeds on every `Resync` (gap, undecodable frame).
//! - Claim marks are kept in each environment's ledger (the template job's `config` group meta)
//!   and written by re-registering the template; the inventory reads one job list plus one
//!   template per environment.
//!
//! Commands and file operations inside allocations (the exec WebSocket) are not wired yet: the
//! data-plane methods answer with an error that says so.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use trident_core::{
    EnvironmentId, EnvironmentSpec, Inventory, InventoryRunner, InventoryStatus, RunnerId,
    RunnerMark, Timestamp, Uuid,
};

use super::client::{AllocationQuery, NomadClient, NomadError};
use super::connector::Connector;
use super::events::{EventStream, EventStreamConfig, StreamItem};
use super::jobs::{self, JobSettings};
use super::model::EvaluationStatus;
use super::tracker::AllocationTracker;
use crate::executor::{
    BackendError, ExecutionEvent, ExecutionRequest, Executor, FileDownload, FileHeader, FileUpdate,
    Observation, RunningExecution,
};

/// Observations waiting for the driver.
const OBSERVATION_QUEUE: usize = 4_096;
/// How often an evaluation is polled while waiting for it.
const EVALUATION_POLL: Duration = Duration::from_millis(100);
/// Pause before re-seeding after a failed allocation list.
const SEED_RETRY: Duration = Duration::from_secs(1);

/// Settings of the Nomad executor beyond the HTTP client's.
#[derive(Clone, Debug)]
pub struct NomadOptions {
    /// What the jobs look like.
    pub jobs: JobSettings,
    /// How long a registration may wait for its evaluation (Poseidon: 10 s).
    pub evaluation_timeout: Duration,
    /// The event stream's settings (its start index is set by the executor).
    pub events: EventStreamConfig,
}

impl Default for NomadOptions {
    fn default() -> Self {
        Self {
            jobs: JobSettings::default(),
            evaluation_timeout: Duration::from_secs(10),
            events: EventStreamConfig::default(),
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
    options: NomadOptions,
    /// Registered environments and their claim ledgers. An async mutex: a ledger write holds it
    /// across the template's re-registration, which serialises writers of one ledger.
    environments: tokio::sync::Mutex<BTreeMap<EnvironmentId, EnvironmentState>>,
    tracker: Arc<Mutex<AllocationTracker>>,
    observations: Mutex<Option<mpsc::Receiver<Observation>>>,
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
    /// An executor on `client`; starts following the cluster's allocations at once.
    pub fn new(client: NomadClient<C>, options: NomadOptions) -> Self {
        let tracker = Arc::new(Mutex::new(AllocationTracker::new()));
        let (sender, receiver) = mpsc::channel(OBSERVATION_QUEUE);
        let follower = tokio::spawn(follow(
            client.clone(),
            Arc::clone(&tracker),
            sender,
            options.events.clone(),
        ));
        Self {
            client,
            options,
            environments: tokio::sync::Mutex::new(BTreeMap::new()),
            tracker,
            observations: Mutex::new(Some(receiver)),
            follower,
        }
    }

    /// Registers a job and waits until its evaluation completed with every allocation placed.
    async fn register_and_wait(&self, job: &serde_json::Value) -> Result<(), BackendError> {
        let response = self.client.register_job(job).await.map_err(nomad_error)?;
        let Some(evaluation) = response.eval_id.filter(|id| !id.is_empty()) else {
            return Ok(());
        };
        let waited = tokio::time::timeout(self.options.evaluation_timeout, async {
            loop {
                match self.client.read_evaluation(&evaluation).await {
                    Ok(Some(found)) => match found.value.status {
                        EvaluationStatus::Complete
                            if found.value.failed_task_group_allocations.is_empty() =>
                        {
                            return Ok(());
                        }
                        EvaluationStatus::Complete => {
                            return Err(BackendError::Unavailable(format!(
                                "evaluation {evaluation} could not place every allocation: {}",
                                serde_json::Value::Object(
                                    found
                                        .value
                                        .failed_task_group_allocations
                                        .clone()
                                        .into_iter()
                                        .collect()
                                )
                            )));
                        }
                        EvaluationStatus::Failed | EvaluationStatus::Canceled => {
                            return Err(BackendError::Failed(format!(
                                "evaluation {evaluation} ended {:?}: {}",
                                found.value.status, found.value.status_description
                            )));
                        }
                        _ => {}
                    },
                    Ok(None) => {}
                    Err(error) => return Err(nomad_error(error)),
                }
                tokio::time::sleep(EVALUATION_POLL).await;
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(BackendError::Unavailable(format!(
                "evaluation {evaluation} did not finish within {:?}",
                self.options.evaluation_timeout
            )))
        })
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
    sender: mpsc::Sender<Observation>,
    config: EventStreamConfig,
) {
    loop {
        let Some(index) = seed(&client, &tracker).await else {
            if sender.is_closed() {
                return;
            }
            tokio::time::sleep(SEED_RETRY).await;
            continue;
        };
        let mut stream = EventStream::spawn(
            client.clone(),
            EventStreamConfig {
                start_index: index.saturating_add(1),
                ..config.clone()
            },
        );
        while let Some(item) = stream.next().await {
            match item {
                StreamItem::Frame(frame) => {
                    let observations = lock(&tracker).apply_frame(&frame);
                    for observation in observations {
                        if sender.send(observation).await.is_err() {
                            return;
                        }
                    }
                }
                StreamItem::Resync(reason) => {
                    tracing::warn!(?reason, "event stream resync: re-seeding from the lists");
                    break;
                }
            }
        }
    }
}

async fn seed<C: Connector>(
    client: &NomadClient<C>,
    tracker: &Arc<Mutex<AllocationTracker>>,
) -> Option<u64> {
    let query = AllocationQuery {
        resources: true,
        ..AllocationQuery::default()
    };
    match client.list_allocations(&query).await {
        Ok(listed) => {
            lock(tracker).seed(listed.index, listed.value);
            Some(listed.index)
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

/// Placeholder execution type until the exec WebSocket is wired: never constructed.
#[derive(Debug)]
pub enum NomadExecution {}

impl RunningExecution for NomadExecution {
    async fn next_event(&mut self) -> Option<ExecutionEvent> {
        match *self {}
    }
    fn stdin(&self) -> mpsc::Sender<bytes::Bytes> {
        match *self {}
    }
    fn interrupt(&self) {
        match *self {}
    }
    fn kill(&self) {
        match *self {}
    }
}

fn not_wired() -> BackendError {
    BackendError::Failed(
        "the Nomad backend cannot run commands or touch files yet (exec is not wired)".into(),
    )
}

impl<C: Connector> Executor for NomadExecutor<C> {
    type Execution = NomadExecution;

    fn take_observations(&self) -> Option<mpsc::Receiver<Observation>> {
        lock(&self.observations).take()
    }

    async fn register_environment(
        &self,
        id: EnvironmentId,
        spec: Arc<EnvironmentSpec>,
    ) -> Result<(), BackendError> {
        let mut environments = self.environments.lock().await;
        let ledger = environments
            .get(&id)
            .map(|state| state.ledger.clone())
            .unwrap_or_default();
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
        let state = state.clone();
        self.write_ledger(runner.environment(), &state).await
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
        // What this executor knows of ledgers follows what Nomad holds.
        {
            let mut known = self.environments.lock().await;
            for (id, spec) in &environments {
                let ledger = ledgers.get(id).cloned().unwrap_or_default();
                known.insert(
                    *id,
                    EnvironmentState {
                        spec: Arc::new(spec.clone()),
                        ledger,
                    },
                );
            }
        }
        let tracker = lock(&self.tracker);
        let runners = runners
            .into_iter()
            .map(|runner| InventoryRunner {
                id: runner,
                status: tracker.status(runner).unwrap_or(InventoryStatus::Pending),
                mark: ledgers
                    .get(&runner.environment())
                    .and_then(|ledger| ledger.get(&runner.uuid()).copied())
                    .unwrap_or_default(),
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
        _runner: RunnerId,
        _request: ExecutionRequest,
    ) -> Result<NomadExecution, BackendError> {
        Err(not_wired())
    }

    async fn update_files(
        &self,
        _runner: RunnerId,
        _update: FileUpdate,
    ) -> Result<(), BackendError> {
        Err(not_wired())
    }

    async fn list_files(
        &self,
        _runner: RunnerId,
        _path: String,
        _recursive: bool,
        _privileged: bool,
    ) -> Result<Vec<FileHeader>, BackendError> {
        Err(not_wired())
    }

    async fn download_file(
        &self,
        _runner: RunnerId,
        _path: String,
        _privileged: bool,
    ) -> Result<FileDownload, BackendError> {
        Err(not_wired())
    }
}
