//! The fake Nomad: one implementation of the HTTP API, event stream and exec WebSocket Trident's
//! Nomad backend uses (`shared/reference/nomad-api.md`), served by axum over any listener — real
//! TCP for integration tests and the dev server, turmoil in the simulation.
//!
//! Layout, one concept per module:
//! - `state` — jobs, evaluations, allocations, the raft index, transactions, and the
//!   timers that play scheduler and client agent;
//! - `events` — the bounded frame buffer with Nomad's index and replay rules, and the NDJSON
//!   stream;
//! - `http` — the routes, token check and HTTP fault injection;
//! - `exec` — the exec WebSocket (frames of §7);
//! - `driver` — the scripted task driver: a small interpreter for the commands the backend sends;
//! - `fs` — each allocation's in-memory file system, a ustar reader, GNU `ls` output;
//! - `faults` — the [`Fault`] knobs.
//!
//! Determinism: time comes only from `tokio::time` (paused and advanced in tests and in the
//! simulation), ids only from the seeded [`SplitMix64`] in [`FakeNomadConfig::seed`], every
//! collection is ordered, and nothing spawns a thread. With the same seed and the same sequence of
//! calls at the same tokio times, the event log ([`FakeNomad::event_log`]) is identical byte for
//! byte.

mod driver;
mod events;
mod exec;
mod faults;
pub mod fs;
mod http;
mod state;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

pub use faults::{Fault, FaultError};

/// Settings of one fake Nomad. Delays are tokio time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeNomadConfig {
    /// Seed of every id the fake draws.
    pub seed: u64,
    /// Frames the event buffer keeps (Nomad's `event_buffer_size`, default 100).
    pub event_buffer_size: usize,
    /// `{}` heartbeat period on event streams (Nomad: 30 s).
    pub heartbeat_interval: Duration,
    /// From an evaluation's creation to the scheduler processing it.
    pub schedule_delay: Duration,
    /// From placement to the client's `pending` update (`Received`, `Task Setup`, `Driver`).
    pub client_pickup_delay: Duration,
    /// From placement to the task running.
    pub task_start_delay: Duration,
    /// From the server's stop decision to the client reporting `complete`.
    pub client_stop_delay: Duration,
    /// Delay of a restart within the restart policy (Poseidon's template: 15 s).
    pub restart_delay: Duration,
    /// When set, every request needs this `X-Nomad-Token` (or `Authorization: Bearer`).
    pub acl_token: Option<String>,
    /// The node's name in allocations.
    pub node_name: String,
    /// Unix seconds at tokio time zero (for `CreateTime`, `ModifyTime`, task event times).
    pub epoch_unix_s: i64,
}

impl Default for FakeNomadConfig {
    fn default() -> Self {
        FakeNomadConfig {
            seed: 0,
            event_buffer_size: 100,
            heartbeat_interval: Duration::from_secs(30),
            schedule_delay: Duration::from_millis(10),
            client_pickup_delay: Duration::from_millis(100),
            task_start_delay: Duration::from_millis(300),
            client_stop_delay: Duration::from_millis(100),
            restart_delay: Duration::from_secs(15),
            acl_token: None,
            node_name: "fake-node-1".into(),
            epoch_unix_s: 1_700_000_000,
        }
    }
}

/// The fake's only source of randomness: the project's seeded generator.
pub use trident_core::SplitMix64;

/// A version-4-shaped UUID drawn from `rng`, as Nomad's ids look.
pub(crate) fn uuid(rng: &mut SplitMix64) -> String {
    let high = rng.next_u64();
    let low = rng.next_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0x0fff,
        ((low >> 48) & 0x3fff) | 0x8000,
        low & 0xffff_ffff_ffff
    )
}

/// The write end of a named pipe: what a process that opens the fifo for writing gets.
pub(crate) type FifoWriter = mpsc::Sender<Vec<u8>>;

/// An exec's process, running: it resolves to the exit code.
pub(crate) type Running = std::pin::Pin<Box<dyn std::future::Future<Output = i32> + Send>>;

/// Processes one allocation may have running after their exec sessions ended. Docker has no such
/// bound; the fake drops a process beyond it at once (and counts none of it).
const OUTLIVING_PER_ALLOCATION_MAX: usize = 64;

struct Shared {
    state: Mutex<state::State>,
    /// The named pipes (Trident's stderr fifos) that exist, by allocation and path. An entry is
    /// the pipe's *name*: the reader that created it holds the read end, and removing the name
    /// (taking the entry) leaves the pipe to whoever holds write ends. Every entry belongs to a
    /// live reader process, which removes it when it ends: bounded by the open exec sessions.
    fifos: Mutex<BTreeMap<(String, String), FifoWriter>>,
    /// How many processes run on after their exec session ended, by allocation and whether they
    /// are Trident's stderr readers (no entry: none).
    outliving: Mutex<BTreeMap<(String, bool), usize>>,
    /// Tokio time zero of this fake.
    start: Instant,
    wake: watch::Sender<u64>,
    timer_wake: Arc<Notify>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Lets the timer task notice that its fake is gone.
        self.timer_wake.notify_one();
    }
}

/// A handle to one fake Nomad: cheap to clone, shared by the routes, the timer task and the test.
#[derive(Clone)]
pub struct FakeNomad {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeNomad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeNomad").finish_non_exhaustive()
    }
}

impl FakeNomad {
    /// A fresh cluster with one ready node. Must be called inside a tokio runtime: it spawns the
    /// timer task that plays scheduler and client agent; that task ends when the last handle
    /// (and every route holding one) is dropped.
    pub fn new(config: FakeNomadConfig) -> Self {
        let (wake, _) = watch::channel(0);
        let timer_wake = Arc::new(Notify::new());
        let state = state::State::new(config, wake.clone(), Arc::clone(&timer_wake));
        let nomad = FakeNomad {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                fifos: Mutex::new(BTreeMap::new()),
                outliving: Mutex::new(BTreeMap::new()),
                // tokio's clock: paused and advanced by the simulation.
                // tokio's clock (turmoil's simulated time in the simulation), not the wall clock.
                start: Instant::now(),
                wake,
                timer_wake: Arc::clone(&timer_wake),
            }),
        };
        tokio::spawn(run_timers(Arc::downgrade(&nomad.shared), timer_wake));
        nomad
    }

    /// Locks the state with its clock set to the current tokio time.
    fn lock(&self) -> MutexGuard<'_, state::State> {
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.now = self.shared.start.elapsed();
        state
    }

    fn fifos(&self) -> MutexGuard<'_, BTreeMap<(String, String), FifoWriter>> {
        self.shared
            .fifos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `mkfifo`: creates the name `path` in `alloc_id`; `false` when it exists.
    pub(crate) fn create_fifo(&self, alloc_id: &str, path: &str, writer: FifoWriter) -> bool {
        let mut fifos = self.fifos();
        let key = (alloc_id.to_owned(), path.to_owned());
        if fifos.contains_key(&key) {
            return false;
        }
        fifos.insert(key, writer);
        true
    }

    /// Opens the fifo for writing and removes its name at once (`exec 2>"$f"; rm -f -- "$f"`).
    pub(crate) fn take_fifo(&self, alloc_id: &str, path: &str) -> Option<FifoWriter> {
        self.fifos().remove(&(alloc_id.to_owned(), path.to_owned()))
    }

    /// Whether the fifo's name still exists.
    pub(crate) fn fifo_exists(&self, alloc_id: &str, path: &str) -> bool {
        self.fifos()
            .contains_key(&(alloc_id.to_owned(), path.to_owned()))
    }

    fn outliving(&self) -> MutexGuard<'_, BTreeMap<(String, bool), usize>> {
        self.shared
            .outliving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lets an exec's process run on after its session ended, as Docker does (`nomad-api.md`
    /// §7.5): the task that runs it belongs to the allocation and ends when the process ends or
    /// the container it ran in does (a restart, a stop, a loss).
    /// `stderr_reader`: the process is Trident's stderr reader (it ends by itself once its fifo
    /// is gone), not a command.
    pub(crate) fn outlive(
        &self,
        alloc_id: String,
        incarnation: u64,
        running: Running,
        stderr_reader: bool,
    ) {
        {
            let mut outliving = self.outliving();
            let in_allocation: usize = outliving
                .range((alloc_id.clone(), false)..=(alloc_id.clone(), true))
                .map(|(_, count)| count)
                .sum();
            if in_allocation >= OUTLIVING_PER_ALLOCATION_MAX {
                return;
            }
            *outliving
                .entry((alloc_id.clone(), stderr_reader))
                .or_default() += 1;
        }
        let nomad = self.clone();
        tokio::spawn(async move {
            let _counted = Outliving {
                nomad: nomad.clone(),
                key: (alloc_id.clone(), stderr_reader),
            };
            let mut wake = nomad.shared.wake.subscribe();
            let alive = |nomad: &FakeNomad| {
                nomad
                    .lock()
                    .alloc(&alloc_id)
                    .is_some_and(|alloc| alloc.incarnation == incarnation)
            };
            let container_ends = async {
                while alive(&nomad) {
                    if wake.changed().await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                biased;
                () = container_ends => {}
                _ = running => {}
            }
        });
    }

    /// How many processes run on in `alloc_id` after their exec sessions ended (see
    /// [`FakeNomad::outlive`]).
    pub fn processes_outliving(&self, alloc_id: &str) -> usize {
        let key = |reader| (alloc_id.to_owned(), reader);
        self.outliving()
            .range(key(false)..=key(true))
            .map(|(_, count)| count)
            .sum()
    }

    /// How many commands (processes other than Trident's stderr readers) run on in the
    /// allocations of job `job_id` after their exec sessions ended. Reads no clock, so it may be
    /// called from outside the fake's runtime (the simulation's clients).
    pub fn commands_outliving_in_job(&self, job_id: &str) -> usize {
        // Lock order: `outliving`, then the state (nothing takes them the other way round).
        let outliving = self.outliving();
        let state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        outliving
            .iter()
            .filter(|((alloc_id, reader), _)| {
                !reader && state.alloc(alloc_id).is_some_and(|a| a.job_id == job_id)
            })
            .map(|(_, count)| count)
            .sum()
    }

    /// The axum router serving the Nomad API.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// Serves the API on `listener` until the future is dropped.
    pub async fn serve<L>(self, listener: L) -> std::io::Result<()>
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        axum::serve(listener, self.router()).await
    }

    /// Injects a fault (see [`Fault`] for what each does).
    pub fn inject(&self, fault: Fault) -> Result<(), FaultError> {
        let mut state = self.lock();
        match fault {
            Fault::DisconnectEventStreams => state.stream_generation += 1,
            Fault::StallEventStreams(on) => state.faults.stall_event_streams = on,
            Fault::EvictEventBuffer { keep } => state.events.keep_newest(keep),
            Fault::DuplicateAllocUpdates(on) => state.faults.duplicate_alloc_updates = on,
            Fault::SkipPendingUpdate(on) => state.faults.skip_pending_update = on,
            Fault::StaleAllocReplay(on) => state.faults.stale_alloc_replay = on,
            Fault::LoseAllocation { alloc_id } => {
                state.lose_allocation(&alloc_id)?;
            }
            Fault::ImagePullFailure(on) => state.faults.image_pull_failure = on,
            Fault::OomKill { alloc_id } => state.oom_kill(&alloc_id)?,
            Fault::PlacementFailure(on) => state.faults.placement_failure = on,
            Fault::DeregisterWithoutAllocEvents(on) => {
                state.faults.deregister_without_alloc_events = on;
            }
            Fault::HttpErrors { status, count } => {
                if count > 0 && !(400..=599).contains(&status) {
                    return Err(FaultError::NotAnErrorStatus(status));
                }
                state.faults.http_error_status = status;
                state.faults.http_errors_left = count;
            }
            Fault::ExecDelay(delay) => state.faults.exec_delay = delay,
            Fault::ExecDropBeforeExit(on) => state.faults.exec_drop_before_exit = on,
        }
        state.wake();
        Ok(())
    }

    /// Turns every persistent fault off.
    pub fn clear_faults(&self) {
        let mut state = self.lock();
        state.faults = faults::FaultState::default();
        state.wake();
    }

    /// The jobs and running allocations. Reads no clock, so it may be called from outside the
    /// fake's runtime (the simulation's step loop).
    pub fn census(&self) -> Census {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .census()
    }

    /// Calls `visit` with the id of every job that is neither stopped nor dead, in id order.
    /// Reads no clock, as [`FakeNomad::census`], and copies nothing: the simulation's step loop
    /// calls it whenever the cluster or Trident changed.
    pub fn visit_live_jobs(&self, visit: impl FnMut(&str)) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .visit_live_jobs(visit);
    }

    /// The current raft index, read without touching the fake's clock (so the simulation's step
    /// loop, outside every runtime, may call it).
    pub fn peek_index(&self) -> u64 {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .index()
    }

    /// The raft index at which job `id` was last purged, if it is among the latest purges (a
    /// few thousand). Reads no clock, so it may be called from outside the fake's runtime.
    pub fn purged_at(&self, id: &str) -> Option<u64> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .purged_at(id)
    }

    /// The current raft index.
    pub fn index(&self) -> u64 {
        self.lock().index()
    }

    /// Every buffered frame, unfiltered, as the NDJSON lines a `*` subscriber would receive.
    pub fn event_log(&self) -> String {
        self.lock().events.log()
    }

    /// Registers a job without HTTP (`body` as for `PUT /v1/jobs`): the `JobRegisterResponse`, or
    /// Nomad's status and text.
    pub fn register_job(
        &self,
        namespace: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, (u16, String)> {
        self.lock()
            .register(namespace, body)
            .map_err(|error| (error.status, error.message))
    }

    /// Deregisters a job without HTTP: the `JobDeregisterResponse`.
    pub fn deregister_job(&self, namespace: &str, id: &str, purge: bool) -> serde_json::Value {
        self.lock().deregister(namespace, id, purge).0
    }

    /// The allocation stubs of a job (as `GET /v1/job/:id/allocations?all=true`).
    pub fn job_allocations(&self, namespace: &str, id: &str) -> serde_json::Value {
        let (stubs, _) = self.lock().job_allocations(namespace, id, true);
        serde_json::from_slice(&stubs).expect("the fake writes JSON")
    }

    /// Stores `jobs` (each as the `Job` of a `PUT /v1/jobs` body) at once, as a cluster that has
    /// run them for a while holds them: one raft index, every allocation running, no
    /// evaluations, no event frames. For benchmarks and tests that need thousands of jobs
    /// without waiting for thousands of placements. Returns the raft index of the write, or
    /// Nomad's status and text for an invalid job (then nothing is stored); a job that exists
    /// already is refused with 400.
    pub fn seed_running_jobs(
        &self,
        namespace: &str,
        jobs: &[serde_json::Value],
    ) -> Result<u64, (u16, String)> {
        self.lock()
            .seed_running(namespace, jobs)
            .map_err(|error| (error.status, error.message))
    }

    /// How many HTTP requests the fake received so far, by `METHOD /route` with the route's
    /// parameters as `:name` (e.g. `GET /v1/job/:id`), refused ones (fault knobs, ACL)
    /// included. Tests and benchmarks count calls here instead of guessing them.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.lock().requests.clone()
    }

    /// Requests for one `METHOD /route` key of [`FakeNomad::requests`] so far.
    pub fn request_count(&self, route: &str) -> u64 {
        self.lock().requests.get(route).copied().unwrap_or(0)
    }
}

/// A job as [`FakeNomad::census`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobCensus {
    /// The job's id.
    pub id: String,
    /// Whether it was deregistered without purge (`Stop`).
    pub stopped: bool,
    /// `pending`, `running` or `dead`.
    pub status: &'static str,
}

/// What the cluster holds right now, for invariants that compare it with Trident's view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Every job, in id order.
    pub jobs: Vec<JobCensus>,
    /// `(allocation id, job id)` of every allocation that runs and should.
    pub running: Vec<(String, String)>,
    /// The raft index.
    pub index: u64,
}

/// Counts one outliving process for as long as it runs.
struct Outliving {
    nomad: FakeNomad,
    key: (String, bool),
}

impl Drop for Outliving {
    fn drop(&mut self) {
        let mut outliving = self.nomad.outliving();
        if let Some(count) = outliving.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                outliving.remove(&self.key);
            }
        }
    }
}

/// Plays scheduler and client agent: sleeps until the next timer is due and runs every due timer.
async fn run_timers(shared: Weak<Shared>, timer_wake: Arc<Notify>) {
    loop {
        let deadline = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let nomad = FakeNomad { shared };
            let mut state = nomad.lock();
            state.run_due_timers();
            state.next_timer_due().map(|due| nomad.shared.start + due)
        };
        match deadline {
            Some(deadline) => {
                tokio::select! {
                    biased;
                    () = timer_wake.notified() => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
            None => timer_wake.notified().await,
        }
    }
}
