//! `trident`: the Trident server binary. See `trident --help`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use trident_backends::local::{HostConfig, LocalExecutor, LocalOptions, SandboxHost};
use trident_backends::nomad::client::{NomadConfig, tcp_connector};
use trident_backends::nomad::events::EventStreamConfig;
use trident_backends::nomad::executor::NomadOptions;
use trident_core::ManagerConfig;
use trident_server::config::{BackendKind, Cli, Config, LogFormat};
use trident_server::monitoring::nomad::NomadEvents;
use trident_server::{ServerOptions, nomad_executor, start};

fn main() -> ExitCode {
    // The local backend re-executes this binary as its sandbox init; that must happen before
    // anything else, in particular before any thread starts.
    trident_backends::local::init::run_if_requested();
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        return run_client(command);
    }
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("trident: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    block_on(runtime, serve(config))
        .map(|()| ExitCode::SUCCESS)
        .unwrap_or_else(|message| {
            tracing::error!("{message}");
            ExitCode::FAILURE
        })
}

/// Runs `work` on `runtime`; a runtime that could not be built, or an error, is printed.
fn block_on<T>(
    runtime: std::io::Result<tokio::runtime::Runtime>,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let result = match runtime {
        Ok(runtime) => runtime.block_on(work),
        Err(error) => Err(format!("cannot start the async runtime: {error}")),
    };
    if let Err(message) = &result {
        eprintln!("trident: {message}");
    }
    result
}

fn run_client(command: trident_server::client::ClientCommand) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    block_on(runtime, trident_server::client::run(command))
        .map(ExitCode::from)
        .unwrap_or(ExitCode::FAILURE)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIDENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", config.listen))?;
    let options = ServerOptions {
        manager: ManagerConfig {
            first_lease: lease_floor(),
            ..ManagerConfig::default()
        },
        token: config.token.clone(),
        depleting_threshold: config.depleting_threshold,
        max_body_bytes: config.max_body_bytes,
        influx: config.influx.clone(),
        http: config.http.clone(),
        api: config.api.clone(),
        ..ServerOptions::default()
    };
    raise_open_files_limit(config.http.connections_max);
    match config.backend {
        BackendKind::Local => {
            let executable = std::env::current_exe()
                .map_err(|error| format!("cannot find this program's path: {error}"))?;
            std::fs::create_dir_all(&config.state_dir).map_err(|error| {
                format!(
                    "cannot create the state directory {}: {error}",
                    config.state_dir.display()
                )
            })?;
            let state_dir = std::fs::canonicalize(&config.state_dir).map_err(|error| {
                format!("cannot resolve {}: {error}", config.state_dir.display())
            })?;
            let mut host_config = HostConfig::new(state_dir, executable);
            // The configuration file may hold the token: sandboxes must not read it.
            host_config.hidden_paths = config
                .config_file
                .iter()
                .filter_map(|path| std::fs::canonicalize(path).ok())
                .collect();
            let host = SandboxHost::new(host_config)
                .await
                .map_err(|error| format!("the local backend cannot sandbox code here: {error}"))?;
            tracing::info!(capabilities = %host.capabilities(), "local backend ready");
            for (image, rootfs) in &config.images {
                tracing::info!(image, rootfs = %rootfs.display(), "image mapped to a root file system");
            }
            let local = LocalOptions {
                images: config.images.clone(),
                workspace_bytes: Some(config.workspace_bytes),
                workspace_files: Some(config.workspace_files),
                pids_max: Some(config.max_processes),
                ..LocalOptions::default()
            };
            let executor = Arc::new(LocalExecutor::new(host, local));
            let server = start(Arc::clone(&executor), listener, options)
                .map_err(|error| error.to_string())?;
            let served = run_until_signal(server).await;
            executor.shutdown().await;
            tracing::info!("every sandbox is destroyed");
            served
        }
        BackendKind::Nomad => {
            let mut nomad = NomadConfig::new(config.nomad_address.clone());
            nomad.token = config.nomad_token.clone();
            nomad.namespace = config.nomad_namespace.clone();
            // Retry jitter only: OS randomness is fine outside the simulation.
            let entropy = || {
                let mut bytes = [0u8; 8];
                getrandom::fill(&mut bytes).map_or(0, |()| u64::from_le_bytes(bytes))
            };
            let connector = tcp_connector(&nomad)
                .map_err(|error| format!("cannot use Nomad at {}: {error}", nomad.address))?;
            let nomad_events = NomadEvents::default();
            let nomad_options = NomadOptions {
                events: EventStreamConfig {
                    heartbeat_timeout: Duration::from_secs(config.nomad_heartbeat_timeout_s),
                    ..EventStreamConfig::default()
                },
                // Modification times of copied files; outside the simulation.
                unix_time_at_start_s: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_secs()),
                event_monitor: Some(Arc::new(nomad_events.clone())),
                ..NomadOptions::default()
            };
            let executor = Arc::new(nomad_executor(&nomad, connector, entropy, nomad_options)?);
            tracing::info!(address = %nomad.address, "Nomad backend ready");
            let options = ServerOptions {
                nomad_events: Some(nomad_events),
                ..options
            };
            let server = start(executor, listener, options).map_err(|error| error.to_string())?;
            // Nomad's runners outlive this process: a restarted server recovers them.
            run_until_signal(server).await
        }
    }
}

/// Raises the soft limit of open files so that `connections_max` connections fit beside the
/// runners' descriptors (a service manager's default, 1,024, does not), and says if they do not.
fn raise_open_files_limit(connections_max: usize) {
    let connections = u64::try_from(connections_max).unwrap_or(u64::MAX / 4);
    let wanted = (2 * connections + 4_096).max(65_536);
    match trident_backends::local::raise_open_files_limit(wanted) {
        Ok(limit) if limit < connections + 1_024 => tracing::warn!(
            limit,
            connections_max,
            "the open-files limit leaves little room beside the connection limit; raise the hard limit (LimitNOFILE) or lower --max-connections"
        ),
        Ok(limit) => tracing::info!(limit, "open files"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
    }
}

/// Serves until SIGTERM or Ctrl-C, then stops the server gracefully.
async fn run_until_signal(server: trident_server::RunningServer) -> Result<(), String> {
    tracing::info!(addr = %server.addr, "serving Poseidon's API on http://{}/api/v1", server.addr);
    wait_for_signal(server.shutdown.clone()).await;
    server
        .task
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())
}

/// Leases start above every lease an earlier process issued: wall-clock microseconds.
/// Outside the simulation: the simulation passes its own floor.
fn lease_floor() -> u64 {
    std::time::SystemTime::now() // outside the simulation, see above
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(1)
}

async fn wait_for_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
