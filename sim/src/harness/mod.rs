//! The deterministic simulation: the real Trident server with the real Nomad backend, run
//! against the fake Nomad inside turmoil, with CodeOcean-like clients, seeded swarm faults,
//! invariants after every step and a healed phase at the end.
//!
//! Hosts: `nomad` (the fake), `trident` (built through [`trident_server::nomad_executor`] and
//! [`trident_server::start`], the constructors `main` uses, over turmoil's TCP, with tokio's
//! simulated clock and seeded ids and entropy), `admin` and `client1`… (the workload).
//!
//! One seed is one run: [`run_seed`]. Everything in it derives from the seed: turmoil's world
//! rng (latencies), the fault rates and schedule, the clients' choices, Trident's ids and retry
//! jitter, the fake's ids. Its canonical trace (every client request and answer, every fault,
//! a periodic snapshot of pools and cluster) hashes to the same value on every run.

pub mod faults;
pub mod net;
pub mod observatory;
pub mod workload;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::mpsc;
use trident_backends::nomad::client::NomadConfig;
use trident_backends::nomad::executor::{FrameProbe, NomadOptions};
use trident_core::{ManagerConfig, SeededIds, SplitMix64};
use trident_server::driver::{DriverConfig, Inspector};
use trident_server::{IdFactory, ServerOptions};

use self::faults::{FaultKind, Swarm, unit};
use self::net::{SimConnector, SimListener};
use self::observatory::{Counters, Invariant, Observatory, Shared, Violation};
use self::workload::{Client, WorkloadConfig};
use crate::nomad::{FakeNomad, FakeNomadConfig, Fault};

/// Trident's port inside the simulation.
const TRIDENT_PORT: u16 = 7200;
/// The fake Nomad's port.
const NOMAD_PORT: u16 = 4646;
/// Simulated time per step.
const TICK: Duration = Duration::from_millis(20);
/// A snapshot line in the trace this often.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(10);
/// Commands waiting for the fake's host.
const NOMAD_COMMANDS: usize = 64;

/// One seed's settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Simulated time with the workload and faults.
    pub duration: Duration,
    /// Simulated time the healed phase may take before liveness counts as broken.
    pub heal_bound: Duration,
    /// The fault kinds that may fire (a seed still draws a rate for each, zero for some).
    pub faults: Vec<FaultKind>,
    /// CodeOcean-like clients (besides the administrator).
    pub clients: usize,
    /// Keep the step-by-step trace text.
    pub keep_trace: bool,
}

impl SimConfig {
    /// The defaults for `seed`: 5 simulated minutes, every fault kind, 3 clients.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            duration: Duration::from_secs(300),
            heal_bound: Duration::from_secs(300),
            faults: FaultKind::ALL.to_vec(),
            clients: 3,
            keep_trace: false,
        }
    }
}

/// What one seed did.
#[derive(Debug)]
pub struct SeedOutcome {
    /// The seed.
    pub seed: u64,
    /// The swarm's rates, digested.
    pub swarm_digest: u64,
    /// The canonical trace's hash.
    pub trace_hash: u64,
    /// Its length in lines.
    pub trace_lines: u64,
    /// The trace's text, if kept.
    pub trace: Option<String>,
    /// Faults fired, by kind.
    pub fired: BTreeMap<FaultKind, u64>,
    /// Broken invariants (empty: the seed passed).
    pub violations: Vec<Violation>,
    /// Counters.
    pub counters: Counters,
    /// Simulated time at the end.
    pub simulated: Duration,
    /// Simulated time from the end of the faults until healed (`None`: never).
    pub healed_after: Option<Duration>,
    /// Steps taken.
    pub steps: u64,
    /// An error of turmoil's or of a host's (a host that returned an error or panicked).
    pub error: Option<String>,
}

impl SeedOutcome {
    /// Whether the seed passed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.error.is_none()
    }
}

/// What the step loop asks of the fake's host.
#[derive(Debug)]
enum NomadCommand {
    Inject(Fault),
    /// Lose the running allocation at this position (modulo their number).
    LoseAllocation(u64),
    /// OOM-kill the running allocation at this position.
    OomKill(u64),
    ClearFaults,
}

/// A fault to undo later.
#[derive(Debug)]
enum Undo {
    Repair,
    RepairOneWay {
        from: &'static str,
        to: &'static str,
    },
    Release,
    Latency,
    Restart,
    Nomad(Fault),
    RepairClient(String),
}

/// Runs one seed.
pub fn run_seed(config: &SimConfig) -> SeedOutcome {
    align_task_ids();
    let mut rng = SplitMix64::new(config.seed);
    let swarm = Swarm::draw(&mut rng, &config.faults);
    let shared = Shared(Arc::new(Mutex::new(Observatory::new(config.keep_trace))));
    let total = config.duration + config.heal_bound;
    let mut sim = turmoil::Builder::new()
        .simulation_duration(total + Duration::from_secs(60))
        .tick_duration(TICK)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .rng_seed(config.seed)
        .build();

    // The fake Nomad, and the channel the step loop drives its faults through.
    let (commands, receiver) = mpsc::channel::<NomadCommand>(NOMAD_COMMANDS);
    let receiver = Arc::new(Mutex::new(Some(receiver)));
    {
        let shared = shared.clone();
        let seed = config.seed;
        sim.host("nomad", move || {
            let shared = shared.clone();
            let receiver = receiver.lock().ok().and_then(|mut slot| slot.take());
            async move {
                let nomad = FakeNomad::new(FakeNomadConfig {
                    seed: seed ^ 0x006e_6f6d_6164,
                    // Production Nomad's, not the fast test settings: the simulation is about
                    // real timing.
                    schedule_delay: Duration::from_millis(50),
                    client_pickup_delay: Duration::from_millis(500),
                    task_start_delay: Duration::from_secs(2),
                    client_stop_delay: Duration::from_millis(500),
                    ..FakeNomadConfig::default()
                });
                shared.lock().nomad = Some(nomad.clone());
                if let Some(receiver) = receiver {
                    tokio::spawn(apply_nomad_commands(nomad.clone(), receiver));
                }
                nomad.serve(SimListener::bind(NOMAD_PORT).await?).await?;
                Ok(())
            }
        });
    }

    // Trident, restartable: every start is a new process with a new manager that recovers
    // from Nomad.
    {
        let shared = shared.clone();
        let seed = config.seed;
        sim.host("trident", move || trident(shared.clone(), seed));
    }

    let workload = WorkloadConfig {
        until: config.duration,
    };
    {
        let shared = shared.clone();
        let rng = SplitMix64::new(config.seed ^ 0xad41);
        let workload = workload.clone();
        sim.client("admin", async move {
            workload::admin(shared, rng, workload).await;
            Ok(())
        });
    }
    let client_names: Vec<String> = (1..=config.clients)
        .map(|id| format!("client{id}"))
        .collect();
    for (index, name) in client_names.iter().enumerate() {
        let client = Client::new(
            index + 1,
            SplitMix64::new(config.seed ^ ((index as u64 + 1) << 40)),
            shared.clone(),
        );
        let workload = workload.clone();
        sim.client(name.as_str(), async move {
            client.run(workload).await;
            Ok(())
        });
    }

    let mut loop_state = StepLoop {
        sim,
        shared: shared.clone(),
        rng,
        swarm,
        commands,
        undo: BTreeMap::new(),
        undo_sequence: 0,
        network_busy_until: Duration::ZERO,
        trident_down: false,
        clients: client_names,
    };
    let (steps, healed_after, error) = loop_state.run(config);
    let simulated = loop_state.sim.elapsed();
    let swarm_digest = loop_state.swarm.digest();
    drop(loop_state);

    let mut observatory = shared.lock();
    let (trace_hash, trace_lines) = observatory.trace_digest();
    SeedOutcome {
        seed: config.seed,
        swarm_digest,
        trace_hash,
        trace_lines,
        trace: observatory.take_trace(),
        fired: observatory.fired.clone(),
        violations: observatory.violations().to_vec(),
        counters: observatory.counters.clone(),
        simulated,
        healed_after,
        steps,
        error,
    }
}

/// Brings tokio's process-wide task-id counter to a multiple of 64.
///
/// A crashed host's runtime drops its tasks shard by shard, and a task's shard is its id modulo
/// the shard count (4 for a current-thread runtime). The order of those drops is the order in
/// which the dropped sockets' closing segments draw their latencies from turmoil's rng, so it
/// shows in the trace. Ids come from one global counter: a second run in the same process starts
/// where the first stopped. Starting every run at a multiple of 64 (any power-of-two shard count
/// up to 64) gives every run the same ids modulo the shard count, hence the same drop order.
fn align_task_ids() {
    const MODULUS: u64 = 64;
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    runtime.block_on(async {
        for _ in 0..MODULUS {
            let Ok(id) = tokio::spawn(async { tokio::task::id() }).await else {
                return;
            };
            // `Id`'s text is the counter's value; the next task gets the next one.
            if id
                .to_string()
                .parse::<u64>()
                .map_or(true, |id| id % MODULUS == MODULUS - 1)
            {
                return;
            }
        }
    });
}

/// The `trident` host: the real server with the Nomad backend over turmoil.
async fn trident(shared: Shared, seed: u64) -> turmoil::Result {
    let incarnation = {
        let mut observatory = shared.lock();
        observatory.counters.incarnations += 1;
        observatory.manager = None;
        let incarnation = observatory.counters.incarnations;
        observatory.trace("trident", format_args!("process #{incarnation} starts"));
        incarnation
    };
    let process_seed = seed ^ incarnation.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let entropy_rng = Arc::new(Mutex::new(SplitMix64::new(process_seed ^ 0xe7)));
    let entropy = move || entropy_rng.lock().map_or(0, |mut rng| rng.next_u64());
    let probe = shared.clone();
    let options = NomadOptions {
        frame_probe: Some(FrameProbe(Arc::new(move |subscription, index| {
            probe.lock().frame(incarnation, subscription, index);
        }))),
        ..NomadOptions::default()
    };
    let executor = Arc::new(trident_server::nomad_executor(
        &NomadConfig::new(format!("http://nomad:{NOMAD_PORT}")),
        SimConnector,
        entropy,
        options,
    )?);
    let inspected = shared.clone();
    let streams = Arc::new(AtomicU64::new(0));
    let server_options = ServerOptions {
        manager: ManagerConfig {
            // As production's wall-clock floor: each process starts above the last one's.
            first_lease: u64::try_from(workload::now().as_micros()).unwrap_or(u64::MAX / 2) + 1,
            ..ManagerConfig::default()
        },
        driver: DriverConfig {
            inspector: Some(Inspector(Arc::new(move |manager, _now| {
                inspected.lock().inspect_manager(manager);
            }))),
            ..DriverConfig::default()
        },
        ids: IdFactory(Arc::new(move || {
            let stream = streams.fetch_add(1, Ordering::Relaxed);
            Box::new(SeededIds::new(
                process_seed ^ (stream + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            ))
        })),
        ..ServerOptions::default()
    };
    let listener = SimListener::bind(TRIDENT_PORT).await?;
    let server = trident_server::start(executor, listener, server_options)?;
    server.task.await??;
    Ok(())
}

/// Applies the step loop's commands inside the fake's runtime (its clock is that host's).
async fn apply_nomad_commands(nomad: FakeNomad, mut commands: mpsc::Receiver<NomadCommand>) {
    while let Some(command) = commands.recv().await {
        let result = match command {
            NomadCommand::Inject(fault) => nomad.inject(fault),
            NomadCommand::LoseAllocation(pick) => match pick_running(&nomad, pick) {
                Some(alloc_id) => nomad.inject(Fault::LoseAllocation { alloc_id }),
                None => Ok(()),
            },
            NomadCommand::OomKill(pick) => match pick_running(&nomad, pick) {
                Some(alloc_id) => nomad.inject(Fault::OomKill { alloc_id }),
                None => Ok(()),
            },
            NomadCommand::ClearFaults => {
                nomad.clear_faults();
                Ok(())
            }
        };
        // The step loop only picks allocations that run; one that stopped in between is fine.
        drop(result);
    }
}

fn pick_running(nomad: &FakeNomad, pick: u64) -> Option<String> {
    let running: Vec<String> = nomad
        .census()
        .running
        .into_iter()
        .filter(|(_, job)| !job.starts_with("template-"))
        .map(|(alloc, _)| alloc)
        .collect();
    let count = running.len() as u64;
    (count > 0).then(|| running[(pick % count) as usize].clone())
}

/// The step loop: faults in, invariants checked, after every step.
struct StepLoop<'a> {
    sim: turmoil::Sim<'a>,
    shared: Shared,
    rng: SplitMix64,
    swarm: Swarm,
    commands: mpsc::Sender<NomadCommand>,
    /// Faults to undo, by due time (and a sequence number for order).
    undo: BTreeMap<(Duration, u64), Undo>,
    undo_sequence: u64,
    /// A network fault between Trident and Nomad lasts until then: no second one overlaps it
    /// (turmoil does not support hold together with one-way partitions).
    network_busy_until: Duration,
    trident_down: bool,
    clients: Vec<String>,
}

impl StepLoop<'_> {
    /// Runs the fault phase and the healed phase. Returns the steps taken, when the system
    /// healed, and a turmoil or host error.
    fn run(&mut self, config: &SimConfig) -> (u64, Option<Duration>, Option<String>) {
        let mut steps = 0u64;
        let mut next_second = Duration::from_secs(1);
        let mut next_snapshot = SNAPSHOT_EVERY;
        let heal_deadline = config.duration + config.heal_bound;
        let mut healing = false;
        let mut healed_after = None;
        loop {
            let now = self.sim.elapsed();
            self.shared.lock().now = now;
            if let Err(error) = self.sim.step() {
                return (steps, healed_after, Some(error.to_string()));
            }
            steps += 1;
            let now = self.sim.elapsed();
            self.shared.lock().now = now;
            self.shared.lock().check_cluster();
            while let Some(entry) = self.undo.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let undo = entry.remove();
                self.undo(undo);
            }
            if now >= next_snapshot {
                next_snapshot += SNAPSHOT_EVERY;
                let mut observatory = self.shared.lock();
                let line = observatory.snapshot_line();
                observatory.trace("state", line);
            }
            if now < next_second {
                continue;
            }
            next_second += Duration::from_secs(1);
            if !healing && now >= config.duration {
                healing = true;
                self.heal();
            }
            if !healing {
                self.draw_faults(now);
                continue;
            }
            let problems = self.shared.lock().unhealed();
            if problems.is_empty() {
                healed_after = Some(now - config.duration);
                self.shared.lock().trace(
                    "healed",
                    format_args!("after {}s", (now - config.duration).as_secs()),
                );
                return (steps, healed_after, None);
            }
            if now >= heal_deadline {
                let mut observatory = self.shared.lock();
                observatory.violate(
                    Invariant::HealedWithinBound,
                    format!(
                        "not healed {}s after the faults stopped: {}",
                        config.heal_bound.as_secs(),
                        problems.join("; ")
                    ),
                );
                return (steps, None, None);
            }
        }
    }

    fn later(&mut self, at: Duration, undo: Undo) {
        self.undo_sequence += 1;
        self.undo.insert((at, self.undo_sequence), undo);
    }

    /// A duration in `[low, high)` seconds.
    fn seconds(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low * 1000 + self.rng.next_u64() % ((high - low) * 1000).max(1))
    }

    fn nomad(&mut self, command: NomadCommand) -> bool {
        self.commands.try_send(command).is_ok()
    }

    /// Fires each kind with its seed's probability for this second.
    fn draw_faults(&mut self, now: Duration) {
        let rates: Vec<(FaultKind, f64)> = self
            .swarm
            .per_second
            .iter()
            .map(|(kind, rate)| (*kind, *rate))
            .collect();
        for (kind, rate) in rates {
            // Draw for every kind every second, so one kind firing does not shift the others.
            let roll = unit(&mut self.rng);
            if roll < rate {
                self.fire(kind, now);
            }
        }
    }

    fn fire(&mut self, kind: FaultKind, now: Duration) {
        let network = matches!(
            kind,
            FaultKind::Partition
                | FaultKind::PartitionOneWay
                | FaultKind::HoldRelease
                | FaultKind::Latency
        );
        if network && now < self.network_busy_until {
            return;
        }
        let detail: String = match kind {
            FaultKind::Partition => {
                let length = self.seconds(1, 40);
                self.sim.partition("trident", "nomad");
                self.network_busy_until = now + length;
                self.later(now + length, Undo::Repair);
                format!("for {length:?}")
            }
            FaultKind::PartitionOneWay => {
                let length = self.seconds(1, 40);
                let (from, to) = if self.rng.next_u64().is_multiple_of(2) {
                    ("trident", "nomad")
                } else {
                    ("nomad", "trident")
                };
                self.sim.partition_oneway(from, to);
                self.network_busy_until = now + length;
                self.later(now + length, Undo::RepairOneWay { from, to });
                format!("{from}->{to} for {length:?}")
            }
            FaultKind::HoldRelease => {
                let length = self.seconds(1, 15);
                self.sim.hold("trident", "nomad");
                self.network_busy_until = now + length;
                self.later(now + length, Undo::Release);
                format!("for {length:?}")
            }
            FaultKind::Latency => {
                let length = self.seconds(5, 60);
                let latency = Duration::from_millis(100 + self.rng.next_u64() % 2000);
                self.sim
                    .set_link_max_message_latency("trident", "nomad", latency);
                self.network_busy_until = now + length;
                self.later(now + length, Undo::Latency);
                format!("up to {latency:?} for {length:?}")
            }
            FaultKind::TridentRestart => {
                if self.trident_down {
                    return;
                }
                self.sim.bounce("trident");
                self.shared.lock().manager = None;
                String::new()
            }
            FaultKind::TridentCrash => {
                if self.trident_down {
                    return;
                }
                let length = self.seconds(1, 30);
                self.sim.crash("trident");
                self.trident_down = true;
                self.shared.lock().manager = None;
                self.later(now + length, Undo::Restart);
                format!("down for {length:?}")
            }
            FaultKind::NomadRestart => {
                let length = self.seconds(1, 20);
                let sent = self.nomad(NomadCommand::Inject(Fault::HttpErrors {
                    status: 500,
                    count: u32::MAX,
                })) && self.nomad(NomadCommand::Inject(Fault::DisconnectEventStreams))
                    && self.nomad(NomadCommand::Inject(Fault::EvictEventBuffer { keep: 0 }));
                if !sent {
                    return;
                }
                self.later(
                    now + length,
                    Undo::Nomad(Fault::HttpErrors {
                        status: 500,
                        count: 0,
                    }),
                );
                format!("down for {length:?}")
            }
            FaultKind::StreamDisconnect => {
                if !self.nomad(NomadCommand::Inject(Fault::DisconnectEventStreams)) {
                    return;
                }
                String::new()
            }
            FaultKind::IndexGap => {
                let keep = (self.rng.next_u64() % 4) as usize;
                if !(self.nomad(NomadCommand::Inject(Fault::EvictEventBuffer { keep }))
                    && self.nomad(NomadCommand::Inject(Fault::DisconnectEventStreams)))
                {
                    return;
                }
                format!("keep {keep}")
            }
            FaultKind::StreamStall => self.timed_knob(
                now,
                Fault::StallEventStreams(true),
                Fault::StallEventStreams(false),
                (5, 120),
            ),
            FaultKind::DuplicateEvents => self.timed_knob(
                now,
                Fault::DuplicateAllocUpdates(true),
                Fault::DuplicateAllocUpdates(false),
                (10, 120),
            ),
            FaultKind::StaleEvents => self.timed_knob(
                now,
                Fault::StaleAllocReplay(true),
                Fault::StaleAllocReplay(false),
                (10, 120),
            ),
            FaultKind::SkipPending => self.timed_knob(
                now,
                Fault::SkipPendingUpdate(true),
                Fault::SkipPendingUpdate(false),
                (10, 120),
            ),
            FaultKind::ImagePullFailure => self.timed_knob(
                now,
                Fault::ImagePullFailure(true),
                Fault::ImagePullFailure(false),
                (5, 60),
            ),
            FaultKind::PlacementFailure => self.timed_knob(
                now,
                Fault::PlacementFailure(true),
                Fault::PlacementFailure(false),
                (5, 60),
            ),
            FaultKind::SlowExec => {
                let delay = Duration::from_millis(200 + self.rng.next_u64() % 3000);
                self.timed_knob(
                    now,
                    Fault::ExecDelay(delay),
                    Fault::ExecDelay(Duration::ZERO),
                    (10, 60),
                )
            }
            FaultKind::ExecDrop => self.timed_knob(
                now,
                Fault::ExecDropBeforeExit(true),
                Fault::ExecDropBeforeExit(false),
                (2, 20),
            ),
            FaultKind::DeregisterWithoutAllocEvents => self.timed_knob(
                now,
                Fault::DeregisterWithoutAllocEvents(true),
                Fault::DeregisterWithoutAllocEvents(false),
                (10, 120),
            ),
            FaultKind::LostAllocation => {
                let pick = self.rng.next_u64();
                if !self.nomad(NomadCommand::LoseAllocation(pick)) {
                    return;
                }
                String::new()
            }
            FaultKind::OomKill => {
                let pick = self.rng.next_u64();
                if !self.nomad(NomadCommand::OomKill(pick)) {
                    return;
                }
                String::new()
            }
            FaultKind::HttpErrors => {
                let status = [429, 500, 502, 503][(self.rng.next_u64() % 4) as usize];
                let count = 1 + (self.rng.next_u64() % 10) as u32;
                if !self.nomad(NomadCommand::Inject(Fault::HttpErrors { status, count })) {
                    return;
                }
                format!("{count} x {status}")
            }
            FaultKind::ClientPartition => {
                let index = (self.rng.next_u64() % self.clients.len() as u64) as usize;
                let client = self.clients[index].clone();
                let length = self.seconds(1, 30);
                self.sim.partition(client.as_str(), "trident");
                self.later(now + length, Undo::RepairClient(client.clone()));
                format!("{client} for {length:?}")
            }
        };
        self.shared.lock().fired(kind, detail);
    }

    /// Turns a fake knob on now and off after a drawn time.
    fn timed_knob(&mut self, now: Duration, on: Fault, off: Fault, range: (u64, u64)) -> String {
        let length = self.seconds(range.0, range.1);
        if !self.nomad(NomadCommand::Inject(on)) {
            return "(not sent)".into();
        }
        self.later(now + length, Undo::Nomad(off));
        format!("for {length:?}")
    }

    fn undo(&mut self, undo: Undo) {
        match undo {
            Undo::Repair => self.sim.repair("trident", "nomad"),
            Undo::RepairOneWay { from, to } => self.sim.repair_oneway(from, to),
            Undo::Release => self.sim.release("trident", "nomad"),
            Undo::Latency => self.sim.set_link_max_message_latency(
                "trident",
                "nomad",
                Duration::from_millis(100),
            ),
            Undo::Restart => {
                if self.trident_down {
                    self.sim.bounce("trident");
                    self.trident_down = false;
                }
            }
            Undo::Nomad(fault) => {
                // A full queue only delays the undo to the healed phase's clear.
                self.nomad(NomadCommand::Inject(fault));
            }
            Undo::RepairClient(client) => self.sim.repair(client.as_str(), "trident"),
        }
    }

    /// Ends every fault: what is timed is undone now, the fake's knobs are cleared.
    fn heal(&mut self) {
        for (_, undo) in std::mem::take(&mut self.undo) {
            self.undo(undo);
        }
        self.nomad(NomadCommand::ClearFaults);
        self.shared.lock().trace("heal", "faults off");
    }
}
