//! How the Nomad backend waits for the evaluation of a registration (`reference/nomad-api.md`
//! §4, §10 rows 12 and 13): `NomadExecutor` against the fake Nomad of `trident-sim` over real
//! TCP. The event stream answers first; `GET /v1/evaluation/:id` is polled only when the stream
//! is silent; a placement failure and a timeout are errors. Which path answered is read from
//! the fake's request counters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use trident_backends::nomad::client::{NomadClient, NomadConfig};
use trident_backends::nomad::connector::{MaybeTls, TcpConnector};
use trident_backends::nomad::exec::{ExecClient, ExecConfig};
use trident_backends::nomad::executor::{NomadExecutor, NomadOptions};
use trident_backends::nomad::retry::SplitMix64;
use trident_backends::{BackendError, Executor};
use trident_core::{EnvironmentId, EnvironmentSpec, RunnerId, Uuid};
use trident_sim::nomad::{FakeNomadConfig, Fault};
use trident_tests::ServedNomad;

const EVALUATION_GET: &str = "GET /v1/evaluation/:id";
const ENVIRONMENT: EnvironmentId = EnvironmentId(3);

fn executor(fake: &ServedNomad, options: NomadOptions) -> NomadExecutor<MaybeTls<TcpConnector>> {
    let config = NomadConfig::new(fake.address.clone());
    let client = NomadClient::connect_tcp(&config, SplitMix64::new(1)).expect("a client");
    let exec = ExecClient::connect_tcp(&config, ExecConfig::default(), SplitMix64::new(2))
        .expect("an exec client");
    NomadExecutor::new(client, exec, options)
}

fn spec() -> Arc<EnvironmentSpec> {
    Arc::new(EnvironmentSpec {
        prewarming_pool_size: 1,
        cpu_limit: 100,
        memory_limit: 128,
        image: "trident/evaluations".to_owned(),
        network_access: false,
        exposed_ports: Vec::new(),
    })
}

fn runner(n: u128) -> RunnerId {
    RunnerId::new(ENVIRONMENT, Uuid(n))
}

/// Options whose poll interval the stream should always beat (the fake schedules in 10 ms).
fn patient() -> NomadOptions {
    NomadOptions {
        evaluation_poll_interval: Duration::from_secs(3),
        ..NomadOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_complete_through_the_event_stream_without_polling() {
    let fake = ServedNomad::start(FakeNomadConfig::default()).await;
    let executor = executor(&fake, patient());
    let started = Instant::now();
    executor
        .register_environment(ENVIRONMENT, spec())
        .await
        .expect("the template is registered");
    for n in 1..=3 {
        executor
            .start_runner(runner(n), spec())
            .await
            .expect("the runner is registered");
    }
    assert_eq!(fake.nomad.request_count(EVALUATION_GET), 0);
    // Four registrations, each answered by the stream well before the first poll was due.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.nomad.request_count("PUT /v1/jobs"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_event_stream_falls_back_to_polling_the_evaluation() {
    let fake = ServedNomad::start(FakeNomadConfig::default()).await;
    fake.nomad
        .inject(Fault::StallEventStreams(true))
        .expect("stall");
    let executor = executor(
        &fake,
        NomadOptions {
            evaluation_poll_interval: Duration::from_millis(200),
            ..NomadOptions::default()
        },
    );
    executor
        .register_environment(ENVIRONMENT, spec())
        .await
        .expect("registered through polling");
    executor
        .start_runner(runner(1), spec())
        .await
        .expect("registered through polling");
    let polls = fake.nomad.request_count(EVALUATION_GET);
    assert!(
        (2..=6).contains(&polls),
        "one or two polls per registration, not {polls}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_failure_is_an_error_whichever_path_reports_it() {
    let fake = ServedNomad::start(FakeNomadConfig::default()).await;
    let executor = executor(&fake, patient());
    executor
        .register_environment(ENVIRONMENT, spec())
        .await
        .expect("the template is registered");
    fake.nomad
        .inject(Fault::PlacementFailure(true))
        .expect("full cluster");

    let through_stream = executor.start_runner(runner(1), spec()).await;
    assert!(
        matches!(&through_stream, Err(BackendError::Unavailable(message))
            if message.contains("could not place every allocation")
                && message.contains("default-group")),
        "{through_stream:?}"
    );
    assert_eq!(fake.nomad.request_count(EVALUATION_GET), 0);

    fake.nomad
        .inject(Fault::StallEventStreams(true))
        .expect("stall");
    let polling = self::executor(
        &fake,
        NomadOptions {
            evaluation_poll_interval: Duration::from_millis(200),
            ..NomadOptions::default()
        },
    );
    let through_polling = polling.start_runner(runner(2), spec()).await;
    assert!(
        matches!(&through_polling, Err(BackendError::Unavailable(message))
            if message.contains("could not place every allocation")),
        "{through_polling:?}"
    );
    assert!(fake.nomad.request_count(EVALUATION_GET) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evaluation_that_never_finishes_is_a_timeout_not_a_success() {
    // The scheduler takes a minute: neither the stream nor a poll can report the evaluation
    // finished within the registration's bound.
    let fake = ServedNomad::start(FakeNomadConfig {
        schedule_delay: Duration::from_secs(60),
        ..FakeNomadConfig::default()
    })
    .await;
    let executor = executor(
        &fake,
        NomadOptions {
            evaluation_timeout: Duration::from_millis(800),
            evaluation_poll_interval: Duration::from_millis(300),
            ..NomadOptions::default()
        },
    );
    let started = Instant::now();
    let outcome = executor.register_environment(ENVIRONMENT, spec()).await;
    assert!(
        matches!(&outcome, Err(BackendError::Unavailable(message))
            if message.contains("did not finish within")),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // It polled meanwhile (the stream had nothing to say), a bounded number of times.
    let polls = fake.nomad.request_count(EVALUATION_GET);
    assert!((1..=3).contains(&polls), "{polls} polls");
}
