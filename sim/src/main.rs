//! `trident-sim`: runs simulation seeds (planned) and serves the fake Nomad for development.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use trident_sim::nomad::{FakeNomad, FakeNomadConfig};

const PLANNED_USAGE: &str = "trident-sim: the simulation harness is not built yet.\n\
     Planned usage: trident-sim --seed N | --seeds A..B [--minutes M] [--faults kind,...] [--trace]\n\
     Available now: trident-sim nomad --listen 127.0.0.1:4646";

#[derive(Debug, Parser)]
#[command(
    name = "trident-sim",
    about = "Trident's deterministic simulation and its fake Nomad"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the fake Nomad's HTTP API, event stream and exec WebSocket over TCP.
    Nomad {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:4646")]
        listen: SocketAddr,
        /// Seed of every id the fake draws.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Require this ACL token (`X-Nomad-Token`) on every request.
        #[arg(long)]
        token: Option<String>,
        /// Frames the event buffer keeps.
        #[arg(long, default_value_t = 100)]
        event_buffer_size: usize,
        /// Seconds between `{}` heartbeats on event streams.
        #[arg(long, default_value_t = 30)]
        heartbeat_s: u64,
    },
}

fn main() -> ExitCode {
    if std::env::args_os().len() <= 1 {
        eprintln!("{PLANNED_USAGE}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Nomad {
            listen,
            seed,
            token,
            event_buffer_size,
            heartbeat_s,
        } => {
            if event_buffer_size == 0 || heartbeat_s == 0 {
                eprintln!("trident-sim: --event-buffer-size and --heartbeat-s must be positive");
                return ExitCode::from(2);
            }
            let config = FakeNomadConfig {
                seed,
                acl_token: token,
                event_buffer_size,
                heartbeat_interval: Duration::from_secs(heartbeat_s),
                ..FakeNomadConfig::default()
            };
            // One thread: the fake is written for a current-thread runtime (and turmoil).
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("trident-sim: cannot start the runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                println!("fake Nomad listening on http://{}", listener.local_addr()?);
                FakeNomad::new(config).serve(listener).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("trident-sim: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
