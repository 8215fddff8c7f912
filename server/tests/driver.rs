//! The driver against an in-memory backend that records what it is asked to do: registrations
//! answer puts, starts come back as observations, effect failures become inputs, and a shutdown
//! writes the claim marks still outstanding.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trident_backends::{
    BackendError, ExecutionEvent, ExecutionRequest, Executor, FileDownload, FileHeader, FileUpdate,
    KillReach, Observation, RunningExecution,
};
use trident_core::{
    EnvironmentId, EnvironmentSpec, Input, Inventory, Manager, ManagerConfig, PutOutcome, Reply,
    RunnerId, RunnerMark, SeededIds, Timestamp,
};
use trident_server::driver::{self, DriverConfig, ManagerHandle, PutFailure};

/// A backend in memory. Registrations of `failing_environment` fail; marks take `mark_delay`.
struct Recorder {
    observations: Mutex<Option<mpsc::Receiver<Observation>>>,
    sender: mpsc::Sender<Observation>,
    failing_environment: Option<EnvironmentId>,
    mark_delay: Duration,
    marks: Mutex<Vec<(RunnerId, RunnerMark)>>,
    stopped: Mutex<BTreeSet<RunnerId>>,
}

impl Recorder {
    fn new(failing_environment: Option<EnvironmentId>, mark_delay: Duration) -> Recorder {
        let (sender, receiver) = mpsc::channel(1_024);
        Recorder {
            observations: Mutex::new(Some(receiver)),
            sender,
            failing_environment,
            mark_delay,
            marks: Mutex::new(Vec::new()),
            stopped: Mutex::new(BTreeSet::new()),
        }
    }
}

struct NoExecution;

impl RunningExecution for NoExecution {
    async fn next_event(&mut self) -> Option<ExecutionEvent> {
        None
    }
    fn stdin(&self) -> mpsc::Sender<Bytes> {
        mpsc::channel(1).0
    }
    fn interrupt(&self) {}
    fn kill(&self) -> KillReach {
        KillReach::ProcessTree
    }
}

fn unsupported() -> BackendError {
    BackendError::Failed("not part of this test".into())
}

impl Executor for Recorder {
    type Execution = NoExecution;

    fn take_observations(&self) -> Option<mpsc::Receiver<Observation>> {
        self.observations.lock().expect("not poisoned").take()
    }

    async fn register_environment(
        &self,
        id: EnvironmentId,
        _spec: Arc<EnvironmentSpec>,
    ) -> Result<(), BackendError> {
        if Some(id) == self.failing_environment {
            return Err(BackendError::Failed("the image does not exist".into()));
        }
        Ok(())
    }

    async fn remove_environment(&self, _id: EnvironmentId) -> Result<(), BackendError> {
        Ok(())
    }

    async fn start_runner(
        &self,
        runner: RunnerId,
        _spec: Arc<EnvironmentSpec>,
    ) -> Result<(), BackendError> {
        self.sender
            .send(Observation::Up {
                runner,
                ports: vec![],
            })
            .await
            .map_err(|_| unsupported())
    }

    async fn stop_runner(&self, runner: RunnerId) -> Result<(), BackendError> {
        self.stopped.lock().expect("not poisoned").insert(runner);
        Ok(())
    }

    async fn mark_runner(&self, runner: RunnerId, mark: RunnerMark) -> Result<(), BackendError> {
        tokio::time::sleep(self.mark_delay).await;
        self.marks
            .lock()
            .expect("not poisoned")
            .push((runner, mark));
        Ok(())
    }

    async fn inventory(&self, as_of: Timestamp) -> Result<Inventory, BackendError> {
        Ok(Inventory {
            as_of,
            ..Inventory::default()
        })
    }

    async fn execute(
        &self,
        _runner: RunnerId,
        _request: ExecutionRequest,
    ) -> Result<NoExecution, BackendError> {
        Err(unsupported())
    }

    async fn update_files(
        &self,
        _runner: RunnerId,
        _update: FileUpdate,
    ) -> Result<(), BackendError> {
        Err(unsupported())
    }

    async fn list_files(
        &self,
        _runner: RunnerId,
        _path: String,
        _recursive: bool,
        _privileged: bool,
    ) -> Result<Vec<FileHeader>, BackendError> {
        Err(unsupported())
    }

    async fn download_file(
        &self,
        _runner: RunnerId,
        _path: String,
        _privileged: bool,
    ) -> Result<FileDownload, BackendError> {
        Err(unsupported())
    }
}

fn spec(pool: u32) -> EnvironmentSpec {
    EnvironmentSpec {
        prewarming_pool_size: pool,
        cpu_limit: 100,
        memory_limit: 128,
        image: "python".into(),
        network_access: false,
        exposed_ports: vec![],
    }
}

fn start(
    recorder: Arc<Recorder>,
) -> (
    ManagerHandle,
    tokio::task::JoinHandle<()>,
    CancellationToken,
) {
    let manager = Manager::new(
        ManagerConfig {
            reconcile_interval: None,
            ..ManagerConfig::default()
        },
        Box::new(SeededIds::new(3)),
    );
    let shutdown = CancellationToken::new();
    let (handle, task) =
        driver::spawn(manager, recorder, DriverConfig::default(), shutdown.clone());
    (handle, task, shutdown)
}

async fn idle(handle: &ManagerHandle, environment: EnvironmentId) -> u32 {
    handle
        .query(move |manager| {
            manager
                .statistics(environment)
                .map_or(0, |stats| stats.idle)
        })
        .await
        .expect("the driver runs")
}

#[tokio::test(start_paused = true)]
async fn a_put_waits_for_the_registration_and_the_pool_fills_from_observations() {
    let recorder = Arc::new(Recorder::new(None, Duration::ZERO));
    let (handle, _task, _shutdown) = start(Arc::clone(&recorder));
    let environment = EnvironmentId(4);
    assert_eq!(
        handle
            .put_environment(environment, spec(3))
            .await
            .expect("registered"),
        PutOutcome::Created
    );
    for _ in 0..100 {
        if idle(&handle, environment).await == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(idle(&handle, environment).await, 3);
    assert_eq!(
        handle
            .put_environment(environment, spec(3))
            .await
            .expect("unchanged"),
        PutOutcome::Unchanged
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_registration_fails_the_put_and_starts_nothing() {
    let environment = EnvironmentId(5);
    let recorder = Arc::new(Recorder::new(Some(environment), Duration::ZERO));
    let (handle, _task, _shutdown) = start(Arc::clone(&recorder));
    let failure = handle
        .put_environment(environment, spec(2))
        .await
        .expect_err("the backend refuses");
    assert!(
        matches!(failure, PutFailure::Backend(ref message) if message.contains("image")),
        "{failure:?}"
    );
    let stats = handle
        .query(move |manager| manager.statistics(environment))
        .await
        .expect("the driver runs")
        .expect("the environment is kept and retried");
    assert_eq!((stats.idle, stats.starting), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_writes_the_claim_marks_still_outstanding() {
    let recorder = Arc::new(Recorder::new(None, Duration::from_secs(2)));
    let (handle, task, shutdown) = start(Arc::clone(&recorder));
    let environment = EnvironmentId(6);
    handle
        .put_environment(environment, spec(1))
        .await
        .expect("registered");
    while idle(&handle, environment).await < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = handle
        .apply(Input::Claim {
            environment,
            inactivity_timeout: None,
        })
        .await
        .expect("the driver runs");
    let Reply::Claim(Ok(claimed)) = reply else {
        panic!("no claim: {reply:?}");
    };
    // The mark takes 2 s to write; the server stops right away.
    shutdown.cancel();
    task.await.expect("the driver ends");
    let marks = recorder.marks.lock().expect("not poisoned").clone();
    assert!(
        marks.iter().any(|(runner, mark)| *runner == claimed.runner
            && matches!(mark, RunnerMark::Claimed(claim) if claim.lease == claimed.lease)),
        "the claim mark was not written: {marks:?}"
    );
}
