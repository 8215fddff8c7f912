//! The runner manager ([`trident_core::Manager`]) under arbitrary input sequences.
//!
//! The bytes decode (through [`Unstructured`]) into a manager configuration with small bounds
//! and up to [`STEPS_MAX`] steps over a small id space: four environment ids (one more than the
//! manager may hold), runner ids taken mostly from the effects and replies seen so far (so that
//! inputs hit real runners), four execution ids. A step is one [`Input`] at a time that only
//! moves forward, or the answer of a fake backend to the oldest queued effect (success or
//! failure), which lets short inputs reach pools of running, claimed and stopping runners.
//!
//! After every step: [`Manager::check_invariants`] holds, the manager holds at most as many
//! environments as configured, and a successful claim's lease is above every lease issued
//! before (the counter only grows) and above every lease an inventory listed as persisted for
//! that runner while the manager did not know it (a lease is never issued twice to a runner).
//!
//! Persisted leases in inventories are ones an earlier process issued (below `first_lease`: the
//! server starts each process at wall-clock microseconds), ones this manager issued, and now and
//! then one at the very top of the range (a ledger entry that was edited or corrupted: the
//! ledger parser accepts any number). Inactivity timeouts include `u64::MAX` seconds, which the
//! server passes on for a client's `inactivityTimeout`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use arbitrary::{Result, Unstructured};
use trident_core::{
    ClaimMark, DownCause, Effect, EnvironmentId, EnvironmentSpec, ExecutionId, Input, Inventory,
    InventoryRunner, InventoryStatus, Lease, Manager, ManagerConfig, MappedPort, Reply, RunnerId,
    RunnerMark, SeededIds, Timestamp, Uuid,
};

/// Steps per input, so that an input's run time is bounded.
pub const STEPS_MAX: usize = 256;
/// Environment ids 0..ENVIRONMENT_IDS; the manager holds at most one fewer.
const ENVIRONMENT_IDS: u64 = 4;
/// Runner ids remembered for later inputs.
const KNOWN_RUNNERS_MAX: usize = 64;
/// Effects queued for the fake backend.
const PENDING_EFFECTS_MAX: usize = 256;

/// Runs the target on `data`.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(mut driver) = Driver::new(&mut u) else {
        return;
    };
    for _ in 0..STEPS_MAX {
        if u.is_empty() || driver.step(&mut u).is_err() {
            break;
        }
    }
}

struct Driver {
    manager: Manager,
    now: Timestamp,
    /// Runner ids seen in effects and claims, newest last.
    runners: VecDeque<RunnerId>,
    /// Claims seen, for `ClaimMarkFailed`.
    leases: VecDeque<(RunnerId, Lease)>,
    /// Effects not yet answered by the fake backend, oldest first.
    pending: VecDeque<Effect>,
    /// The configured first lease: leases persisted by earlier processes are below it.
    first_lease: u64,
    /// The highest lease issued so far.
    issued_max: u64,
    /// Per runner, the highest lease issued to it or found persisted for it while unknown.
    leases_of: BTreeMap<RunnerId, u64>,
}

impl Driver {
    fn new(u: &mut Unstructured<'_>) -> Result<Self> {
        let config = ManagerConfig {
            starts_in_flight_max: u.int_in_range(1..=3)?,
            start_timeout: Duration::from_secs(10),
            start_backoff_min: Duration::from_secs(1),
            start_backoff_max: Duration::from_secs(8),
            stop_backoff_min: Duration::from_secs(1),
            stop_backoff_max: Duration::from_secs(4),
            stop_attempts_max: u.int_in_range(1..=3)?,
            reconcile_interval: if u.arbitrary()? {
                Some(Duration::from_secs(30))
            } else {
                None
            },
            inventory_request_interval_min: Duration::from_secs(5),
            tombstone_ttl: Duration::from_secs(60),
            tombstones_max: u.int_in_range(1..=8)?,
            environments_max: (ENVIRONMENT_IDS - 1) as usize,
            executions_per_runner_max: 2,
            first_lease: u.int_in_range(1..=16)?,
        };
        let first_lease = config.first_lease;
        let manager = Manager::new(config, Box::new(SeededIds::new(u.arbitrary()?)));
        let mut driver = Driver {
            manager,
            now: Timestamp::ZERO,
            runners: VecDeque::new(),
            leases: VecDeque::new(),
            pending: VecDeque::new(),
            first_lease,
            issued_max: 0,
            leases_of: BTreeMap::new(),
        };
        driver.settle();
        Ok(driver)
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        self.advance(u)?;
        let input = match u.int_in_range(0..=17u8)? {
            0 => Input::PutEnvironment {
                id: environment(u)?,
                spec: spec(u)?,
            },
            1 => Input::DeleteEnvironment {
                id: environment(u)?,
            },
            2 => Input::Claim {
                environment: environment(u)?,
                inactivity_timeout: *u.choose(&[
                    None,
                    Some(Duration::ZERO),
                    Some(Duration::from_secs(1)),
                    Some(Duration::from_secs(30)),
                    // What the server passes for any `inactivityTimeout` a client sends.
                    Some(Duration::from_secs(u64::MAX)),
                ])?,
            },
            3 => Input::Release {
                runner: self.runner(u)?,
            },
            4 => Input::Activity {
                runner: self.runner(u)?,
            },
            5 => Input::ExecutionStarted {
                runner: self.runner(u)?,
                execution: execution(u)?,
            },
            6 => Input::ExecutionFinished {
                runner: self.runner(u)?,
                execution: execution(u)?,
            },
            7 => Input::EnvironmentRegistered {
                id: environment(u)?,
                version: u.int_in_range(0..=4)?,
                ok: u.arbitrary()?,
            },
            8 => Input::RunnerUp {
                runner: self.runner(u)?,
                ports: ports(u)?,
            },
            9 => Input::RunnerDown {
                runner: self.runner(u)?,
                cause: cause(u)?,
            },
            10 => Input::StopFinished {
                runner: self.runner(u)?,
                ok: u.arbitrary()?,
            },
            11 => {
                let (runner, lease) = match u.choose(self.leases.make_contiguous()) {
                    Ok(&(runner, lease)) if u.arbitrary()? => (runner, lease),
                    _ => (self.runner(u)?, Lease(u.int_in_range(0..=8)?)),
                };
                Input::ClaimMarkFailed { runner, lease }
            }
            12 => Input::Reconcile(self.inventory(u)?),
            13 => Input::Timeout,
            17 => Input::ExecutionNotStopped {
                runner: self.runner(u)?,
                execution: execution(u)?,
            },
            // The fake backend answers the oldest effect: 14 and 15 with success, 16 with failure.
            ok => match self.pending.pop_front() {
                Some(effect) => match outcome(effect, ok != 16) {
                    Some(input) => input,
                    None => return Ok(()),
                },
                None => Input::Timeout,
            },
        };
        self.apply(input);
        Ok(())
    }

    /// Moves time forward by a step that reaches every configured duration, or to the next
    /// deadline.
    fn advance(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let millis = *u.choose(&[0, 0, 1, 100, 1_000, 5_000, 30_000, 600_000, u64::MAX])?;
        self.now = if millis == u64::MAX {
            self.manager
                .poll_timeout()
                .unwrap_or(self.now)
                .max(self.now)
        } else {
            Timestamp::from_millis(self.now.as_millis().saturating_add(millis))
        };
        Ok(())
    }

    fn apply(&mut self, input: Input) {
        if let Input::Reconcile(inventory) = &input {
            for listed in &inventory.runners {
                // Leases from `Lease::MAX` up were never issued: the manager stops their runners.
                if let RunnerMark::Claimed(mark) = listed.mark
                    && mark.lease < Lease::MAX
                    && !self.manager.runner_ids().any(|known| known == listed.id)
                {
                    let lease = self.leases_of.entry(listed.id).or_default();
                    *lease = (*lease).max(mark.lease.0);
                }
            }
        }
        let reply = self.manager.apply(self.now, input.clone());
        if let Reply::Claim(Ok(claimed)) = &reply {
            let before = self.leases_of.get(&claimed.runner).copied().unwrap_or(0);
            assert!(
                claimed.lease.0 > self.issued_max && claimed.lease.0 > before,
                "{} issued to {} after {} was issued and {before} known for that runner",
                claimed.lease,
                claimed.runner,
                self.issued_max
            );
            self.issued_max = claimed.lease.0;
            self.leases_of.insert(claimed.runner, claimed.lease.0);
            self.remember(claimed.runner);
            self.leases.push_back((claimed.runner, claimed.lease));
            if self.leases.len() > KNOWN_RUNNERS_MAX {
                self.leases.pop_front();
            }
        }
        if let Err(violation) = self.manager.check_invariants() {
            panic!("{violation:?} after {input:?} -> {reply:?}");
        }
        assert!(self.manager.environment_ids().count() < ENVIRONMENT_IDS as usize);
        self.settle();
    }

    /// Takes the manager's effects and events.
    fn settle(&mut self) {
        while let Some(effect) = self.manager.poll_effect() {
            if let Some(runner) = effect.runner() {
                self.remember(runner);
            }
            self.pending.push_back(effect);
            if self.pending.len() > PENDING_EFFECTS_MAX {
                self.pending.pop_front();
            }
        }
        while self.manager.poll_event().is_some() {}
    }

    fn remember(&mut self, runner: RunnerId) {
        if !self.runners.contains(&runner) {
            self.runners.push_back(runner);
            if self.runners.len() > KNOWN_RUNNERS_MAX {
                self.runners.pop_front();
            }
        }
    }

    /// Mostly a runner seen before; sometimes one nobody issued.
    fn runner(&mut self, u: &mut Unstructured<'_>) -> Result<RunnerId> {
        if !self.runners.is_empty() && u.ratio(7, 8)? {
            return Ok(*u.choose(self.runners.make_contiguous())?);
        }
        Ok(RunnerId::new(environment(u)?, Uuid(u.int_in_range(0..=3)?)))
    }

    /// A lease a backend may hold: one an earlier process issued (below `first_lease`, as the
    /// server guarantees by starting each process at wall-clock microseconds) or one this
    /// manager issued (a stale mark).
    fn persisted_lease(&mut self, u: &mut Unstructured<'_>) -> Result<Lease> {
        if !self.leases.is_empty() && u.arbitrary()? {
            return Ok(u.choose(self.leases.make_contiguous())?.1);
        }
        if u.ratio(1, 16)? {
            // A ledger entry that is not what the server wrote (edited by hand, corrupted): the
            // ledger parser accepts any number.
            return Ok(Lease(u64::MAX - u.int_in_range(0..=2)?));
        }
        Ok(Lease(u.int_in_range(0..=self.first_lease - 1)?))
    }

    fn inventory(&mut self, u: &mut Unstructured<'_>) -> Result<Inventory> {
        let behind_ms = *u.choose(&[0, 1, 1_000, 10_000, 100_000])?;
        let mut inventory = Inventory {
            as_of: Timestamp::from_millis(self.now.as_millis().saturating_sub(behind_ms)),
            environments: Vec::new(),
            runners: Vec::new(),
        };
        for id in 0..ENVIRONMENT_IDS {
            if u.arbitrary()? {
                inventory.environments.push((EnvironmentId(id), spec(u)?));
            }
        }
        for _ in 0..u.int_in_range(0..=6)? {
            let status = match u.int_in_range(0..=2u8)? {
                0 => InventoryStatus::Pending,
                1 => InventoryStatus::Running(ports(u)?),
                _ => InventoryStatus::Failed,
            };
            let mark = match u.int_in_range(0..=2u8)? {
                0 => RunnerMark::Idle,
                1 => RunnerMark::Claimed(ClaimMark {
                    lease: self.persisted_lease(u)?,
                    inactivity_timeout: *u.choose(&[None, Some(Duration::from_secs(30))])?,
                }),
                _ => RunnerMark::Retired,
            };
            let id = self.runner(u)?;
            // A backend lists each runner once (a duplicate makes the second entry a "known"
            // runner whose persisted claim the manager rightly ignores).
            if inventory.runners.iter().all(|listed| listed.id != id) {
                inventory.runners.push(InventoryRunner { id, status, mark });
            }
        }
        Ok(inventory)
    }
}

/// What a backend reports for `effect`, succeeding or not; `None` when nothing is reported.
/// Consumes no bytes, so that hand-written seeds stay simple.
fn outcome(effect: Effect, ok: bool) -> Option<Input> {
    match effect {
        Effect::RegisterEnvironment { id, version, .. } => {
            Some(Input::EnvironmentRegistered { id, version, ok })
        }
        Effect::StartRunner { runner, .. } if ok => Some(Input::RunnerUp {
            runner,
            ports: Vec::new(),
        }),
        Effect::StartRunner { runner, .. } => Some(Input::RunnerDown {
            runner,
            cause: DownCause::FailedToStart,
        }),
        Effect::StopRunner { runner } => Some(Input::StopFinished { runner, ok }),
        Effect::MarkRunner {
            runner,
            mark: RunnerMark::Claimed(mark),
        } if !ok => Some(Input::ClaimMarkFailed {
            runner,
            lease: mark.lease,
        }),
        _ => None,
    }
}

fn environment(u: &mut Unstructured<'_>) -> Result<EnvironmentId> {
    Ok(EnvironmentId(u.int_in_range(0..=ENVIRONMENT_IDS - 1)?))
}

fn execution(u: &mut Unstructured<'_>) -> Result<ExecutionId> {
    Ok(ExecutionId(Uuid(u.int_in_range(0..=3)?)))
}

fn cause(u: &mut Unstructured<'_>) -> Result<DownCause> {
    Ok(*u.choose(&[
        DownCause::Completed,
        DownCause::OomKilled,
        DownCause::Rescheduled,
        DownCause::Lost,
        DownCause::Deregistered,
        DownCause::FailedToStart,
    ])?)
}

fn ports(u: &mut Unstructured<'_>) -> Result<Vec<MappedPort>> {
    Ok(match u.int_in_range(0..=2u8)? {
        0 => Vec::new(),
        n => (0..n)
            .map(|index| MappedPort {
                exposed_port: 8000 + u16::from(index),
                host_address: format!("10.0.0.1:{}", 20000 + u16::from(index)),
            })
            .collect(),
    })
}

/// Mostly valid specs over a few values, so that puts update, resize and roll pools; sometimes
/// an invalid one.
fn spec(u: &mut Unstructured<'_>) -> Result<EnvironmentSpec> {
    Ok(EnvironmentSpec {
        prewarming_pool_size: *u.choose(&[0, 1, 2, 3, 1_001])?,
        cpu_limit: *u.choose(&[0, 100, 2_000_000])?,
        memory_limit: *u.choose(&[0, 256])?,
        image: (*u.choose(&["a", "b", " "])?).to_owned(),
        network_access: u.arbitrary()?,
        exposed_ports: match u.int_in_range(0..=3u8)? {
            0 => Vec::new(),
            1 => vec![8000],
            2 => vec![8000, 8001],
            _ => vec![0],
        },
    })
}
