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

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use trident_backends::Executor;
use trident_core::{IdSource, Manager, ManagerConfig, Uuid};

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
    /// Fresh runner and execution ids.
    pub ids: fn() -> Box<dyn IdSource>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            manager: ManagerConfig::default(),
            driver: driver::DriverConfig::default(),
            token: None,
            depleting_threshold: 0.0,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ids: || Box::new(OsIds),
            max_body_bytes: config::DEFAULT_MAX_BODY_BYTES,
        }
    }
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
/// cancelled.
pub fn start<E: Executor>(
    executor: Arc<E>,
    listener: TcpListener,
    options: ServerOptions,
) -> std::io::Result<RunningServer> {
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let manager = Manager::new(options.manager, (options.ids)());
    let (handle, driver) = driver::spawn(
        manager,
        Arc::clone(&executor),
        options.driver,
        shutdown.child_token(),
    );
    let state = Arc::new(api::AppState {
        manager: handle,
        executor,
        token: options.token,
        depleting_threshold: options.depleting_threshold,
        version: options.version,
        pending_executions: Mutex::new(api::PendingExecutions::default()),
        ids: Mutex::new((options.ids)()),
    });
    let router =
        api::router(state).layer(axum::extract::DefaultBodyLimit::max(options.max_body_bytes));
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        let _ = driver.await;
        served
    });
    Ok(RunningServer {
        addr,
        shutdown,
        task,
    })
}
