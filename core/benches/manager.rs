//! Throughput of the manager on a production-sized state: 1,000 environments of 100 runners
//! each (100,000 runners), under a mixed workload of claims, start reports, activity, releases,
//! stop reports, duplicated observations and timeouts.
//!
//! `cargo bench -p trident-core` prints the time per batch and, through divan's item counter,
//! inputs per second. Figures are recorded in BENCHMARKS.md.

use std::time::Duration;

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use trident_core::{
    Effect, EnvironmentId, EnvironmentSpec, Manager, ManagerConfig, RunnerId, SeededIds, Timestamp,
};

const ENVIRONMENTS: u64 = 1_000;
const POOL: u32 = 100;
/// Inputs fed per measured batch.
const BATCH_CYCLES: usize = 10_000;
/// Inputs per workload cycle (see `cycle`).
const INPUTS_PER_CYCLE: usize = 7;

fn main() {
    divan::main();
}

/// A manager with every pool full and idle, and the time it reached that state.
fn full_manager() -> (Manager, Timestamp) {
    let config = ManagerConfig {
        starts_in_flight_max: POOL,
        reconcile_interval: None,
        ..ManagerConfig::default()
    };
    let mut manager = Manager::new(config, Box::new(SeededIds::new(1)));
    let now = Timestamp::from_millis(1);
    for id in 0..ENVIRONMENTS {
        let spec = EnvironmentSpec {
            prewarming_pool_size: POOL,
            cpu_limit: 20,
            memory_limit: 256,
            image: format!("image-{id}"),
            network_access: false,
            exposed_ports: vec![],
        };
        manager
            .put_environment(now, EnvironmentId(id), spec)
            .expect("valid spec");
    }
    let mut started = Vec::new();
    loop {
        let mut progress = false;
        while let Some(effect) = manager.poll_effect() {
            progress = true;
            match effect {
                Effect::RegisterEnvironment { id, version, .. } => {
                    manager.environment_registered(now, id, version, true)
                }
                Effect::StartRunner { runner, .. } => started.push(runner),
                _ => {}
            }
        }
        for runner in started.drain(..) {
            progress = true;
            manager.runner_up(now, runner, vec![]);
        }
        if !progress {
            break;
        }
    }
    assert_eq!(
        manager.runner_count(),
        (ENVIRONMENTS * u64::from(POOL)) as usize
    );
    (manager, now)
}

/// One cycle of the workload, 7 inputs: claim, the replacement's start reported up, activity,
/// a duplicated "up" for the replacement, release, the stop reported done, a timeout.
fn cycle(manager: &mut Manager, now: &mut Timestamp, environment: EnvironmentId) {
    *now = *now + Duration::from_millis(1);
    let claimed = manager
        .claim(*now, environment, Some(Duration::from_secs(60)))
        .expect("the pool refills every cycle");
    let replacement = drain_start(manager).expect("a claim starts a replacement");
    manager.runner_up(*now, replacement, vec![]);
    manager.activity(*now, claimed.runner).expect("claimed");
    manager.runner_up(*now, replacement, vec![]);
    manager.release(*now, claimed.runner).expect("claimed");
    manager.stop_finished(*now, claimed.runner, true);
    manager.handle_timeout(*now);
    while let Some(event) = manager.poll_event() {
        black_box(event);
    }
    while let Some(effect) = manager.poll_effect() {
        black_box(effect);
    }
}

fn drain_start(manager: &mut Manager) -> Option<RunnerId> {
    let mut start = None;
    while let Some(effect) = manager.poll_effect() {
        if let Effect::StartRunner { runner, .. } = effect {
            start = Some(runner);
        }
    }
    start
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn mixed_workload_1000_environments_100000_runners(bencher: Bencher<'_, '_>) {
    bencher
        .counter(ItemsCount::new(BATCH_CYCLES * INPUTS_PER_CYCLE))
        .with_inputs(full_manager)
        .bench_local_values(|(mut manager, mut now)| {
            for index in 0..BATCH_CYCLES {
                // Spread over the environments, as many clients would.
                let environment = EnvironmentId((index as u64 * 7_919) % ENVIRONMENTS);
                cycle(&mut manager, &mut now, environment);
            }
            manager
        });
}
