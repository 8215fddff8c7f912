//! # trident-server
//!
//! Configuration, the Poseidon-compatible HTTP + WebSocket API, and the driver that owns the
//! [`trident_core::Manager`]: it feeds the manager requests, backend observations and the time,
//! and runs the effects the manager asks for against a backend. The binary is `trident`.
//!
//! Architecture invariant: only the driver task touches the manager; handlers reach it through
//! a [`driver::ManagerHandle`]. The server is generic over its backend
//! ([`trident_backends::Executor`]).

pub mod api;
pub mod client;
pub mod config;
pub mod driver;
pub mod limits;
pub mod monitoring;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use trident_backends::Executor;
use trident_backends::nomad::client::{NomadClient, NomadConfig};
use trident_backends::nomad::connector::Connector;
use trident_backends::nomad::exec::{ExecClient, ExecConfig};
use trident_backends::nomad::executor::{NomadExecutor, NomadOptions};
use trident_backends::nomad::retry::Entropy;
use trident_core::{IdSource, Manager, ManagerConfig, Uuid};

/// How long a stopping server waits for its executions to end. Each is bounded on its own: at
/// most 5 s for its final message, 5 s for its close frame and 5 s for the client's answer.
const EXECUTIONS_STOP_GRACE: Duration = Duration::from_secs(20);

/// Fresh ids from the operating system's randomness: runner and execution ids are capabilities
/// (whoever knows one can use the runner), so they must not be guessable.
///
/// Outside the simulation: the simulation injects a seeded source instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsIds;

impl IdSource for OsIds {
    fn next_uuid(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the operating system provides randomness");
        let raw = u128::from_be_bytes(bytes);
        // Version 4, RFC 4122 variant.
        let versioned = (raw & !(0xF << 76)) | (0x4 << 76);
        Uuid((versioned & !(0x3 << 62)) | (0x2 << 62))
    }
}

/// Makes the id sources of one server.
#[derive(Clone)]
pub struct IdFactory(pub Arc<dyn Fn() -> Box<dyn IdSource> + Send + Sync>);

impl std::fmt::Debug for IdFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdFactory")
    }
}

/// What the server needs besides its backend.
#[derive(Debug)]
pub struct ServerOptions {
    /// The manager's knobs.
    pub manager: ManagerConfig,
    /// The driver's knobs.
    pub driver: driver::DriverConfig,
    /// `Poseidon-Token`, if required.
    pub token: Option<String>,
    /// `/health`'s depleting threshold.
    pub depleting_threshold: f64,
    /// What `/version` answers.
    pub version: String,
    /// Fresh runner and execution ids: called once for the manager's source and once for the
    /// API's (execution ids).
    pub ids: IdFactory,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Connections, and how long a request's head and body may take (see [`limits`]).
    pub http: limits::HttpLimits,
    /// Files per update, output per execution, WebSocket message size (see [`limits`]).
    pub api: limits::ApiLimits,
    /// Where Poseidon's InfluxDB measurements go; `None` writes none (Prometheus' `/metrics`
    /// is always served).
    pub influx: Option<monitoring::influx::InfluxConfig>,
    /// The Nomad backend's event hook ([`NomadOptions::event_monitor`]), bound to this
    /// server's monitoring when it starts; `None` with another backend.
    pub nomad_events: Option<monitoring::nomad::NomadEvents>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            manager: ManagerConfig::default(),
            driver: driver::DriverConfig::default(),
            token: None,
            depleting_threshold: 0.0,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ids: IdFactory(Arc::new(|| Box::new(OsIds))),
            max_body_bytes: config::DEFAULT_MAX_BODY_BYTES,
            http: limits::HttpLimits::default(),
            api: limits::ApiLimits::default(),
            influx: None,
            nomad_events: None,
        }
    }
}

/// Builds the Nomad backend over `connector`: the one constructor the `trident` binary (tokio
/// TCP and TLS) and the simulation (turmoil's TCP, seeded entropy) share. `entropy` is cloned
/// for the HTTP client and the exec client.
pub fn nomad_executor<C, R>(
    nomad: &NomadConfig,
    connector: C,
    entropy: R,
    options: NomadOptions,
) -> Result<NomadExecutor<C>, String>
where
    C: Connector,
    R: Entropy + Clone,
{
    let client = NomadClient::new(nomad, connector.clone(), entropy.clone())
        .map_err(|error| format!("cannot use Nomad at {}: {error}", nomad.address))?;
    let exec = ExecClient::new(nomad, connector, ExecConfig::default(), entropy)
        .map_err(|error| format!("cannot use Nomad at {}: {error}", nomad.address))?;
    Ok(NomadExecutor::new(client, exec, options))
}

/// A server that is serving.
#[derive(Debug)]
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Cancel to stop it.
    pub shutdown: CancellationToken,
    /// Ends when the server has stopped.
    pub task: JoinHandle<std::io::Result<()>>,
}

/// Serves Poseidon's API on `listener` with `executor` as the backend until `shutdown` is
/// cancelled. The listener is tokio's `TcpListener` in production and turmoil's in the
/// simulation.
pub fn start<E, L>(
    executor: Arc<E>,
    listener: L,
    options: ServerOptions,
) -> std::io::Result<RunningServer>
where
    E: Executor,
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    // The InfluxDB writer outlives the HTTP server and the driver: it is stopped after them,
    // so their last points are flushed.
    let monitoring_stop = CancellationToken::new();
    let (monitor, influx_writer) =
        monitoring::Monitor::start(options.influx.as_ref(), monitoring_stop.clone())
            .map_err(std::io::Error::other)?;
    let monitor = Arc::new(monitor);
    if let Some(events) = &options.nomad_events {
        events.attach(Arc::clone(&monitor));
    }
    let manager = Manager::new(options.manager, (options.ids.0)());
    let (handle, driver) = driver::spawn(
        manager,
        Arc::clone(&executor),
        driver::DriverConfig {
            monitor: Some(Arc::clone(&monitor)),
            ..options.driver
        },
        shutdown.child_token(),
    );
    let pool_sampler = monitor.influx_enabled().then(|| {
        tokio::spawn(monitoring::sample_pools(
            Arc::clone(&monitor),
            handle.clone(),
            shutdown.child_token(),
        ))
    });
    let state = Arc::new(api::AppState {
        manager: handle,
        executor,
        token: options.token,
        depleting_threshold: options.depleting_threshold,
        version: options.version,
        pending_executions: Mutex::new(api::PendingExecutions::default()),
        ids: Mutex::new((options.ids.0)()),
        monitor,
        limits: options.api,
        executions: api::Executions::new(shutdown.child_token()),
    });
    let executions_state = Arc::clone(&state);
    let router =
        api::router(state).layer(axum::extract::DefaultBodyLimit::max(options.max_body_bytes));
    let stop = shutdown.clone();
    let http = limits::HttpLimits {
        body_bytes_max: options.max_body_bytes,
        ..options.http
    };
    let task = tokio::spawn(async move {
        let served = limits::serve(listener, router, http, stop).await;
        // Upgraded connections are no longer the HTTP server's: the executions on them end
        // now, each within its own bounds (the final message, the command's kill, the close).
        let still_running = executions_state
            .executions
            .wait(EXECUTIONS_STOP_GRACE)
            .await;
        if still_running > 0 {
            tracing::warn!(still_running, "executions did not end in time at shutdown");
        }
        drop(executions_state);
        let _ = driver.await;
        if let Some(sampler) = pool_sampler {
            let _ = sampler.await;
        }
        monitoring_stop.cancel();
        if let Some(writer) = influx_writer {
            let _ = writer.await;
        }
        served
    });
    Ok(RunningServer {
        addr,
        shutdown,
        task,
    })
}
