//! `trident-sim`: runs simulation seeds, and serves the fake Nomad for development.
//!
//! ```text
//! trident-sim --seed 42                      one seed, 5 simulated minutes
//! trident-sim --seeds 0..200 --minutes 5     a range of seeds and a report
//! trident-sim --seed 42 --trace              the step-by-step trace of one seed
//! trident-sim --seeds 0..50 --faults partition,oom-kill
//! trident-sim --seeds 0..200 --check-determinism --hashes hashes.txt
//! trident-sim nomad --listen 127.0.0.1:4646  the fake Nomad over TCP
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use trident_sim::harness::faults::FaultKind;
use trident_sim::harness::observatory::Invariant;
use trident_sim::harness::{SeedOutcome, SimConfig, run_seed};
use trident_sim::nomad::{FakeNomad, FakeNomadConfig};

#[derive(Debug, Parser)]
#[command(
    name = "trident-sim",
    about = "Trident's deterministic simulation against a fake Nomad, and the fake Nomad itself",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run the seeds A..B (B excluded).
    #[arg(long, value_parser = parse_range, conflicts_with = "seeds_file")]
    seeds: Option<Range<u64>>,
    /// Run the seeds listed in this file: one per line, `#` starts a comment (the committed
    /// regression seeds are `sim/regressions.txt`).
    #[arg(long, conflicts_with = "seed")]
    seeds_file: Option<PathBuf>,
    /// Simulated minutes of workload and faults per seed (the healed phase comes on top).
    #[arg(long, default_value_t = 5)]
    minutes: u64,
    /// Only these fault kinds (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<FaultKind>,
    /// CodeOcean-like clients per seed.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Print the step-by-step trace of each seed (use with one seed).
    #[arg(long)]
    trace: bool,
    /// Run every seed twice and fail when the two traces differ.
    #[arg(long)]
    check_determinism: bool,
    /// Write `seed hash` lines to this file (compare two processes' files to check determinism
    /// across processes).
    #[arg(long)]
    hashes: Option<PathBuf>,
    /// Seeds that fail because of a known, open bug (one per line, `#` comments, as
    /// `sim/known-failures.txt`; none is fine): their failures are reported but do not fail the
    /// run. A nondeterministic trace always fails it.
    #[arg(long)]
    known_failures: Option<PathBuf>,
    /// Print one line per seed, not only failures and the report.
    #[arg(long)]
    verbose: bool,
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

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (start, end) = text
        .split_once("..")
        .ok_or_else(|| format!("{text:?} is not a range like 0..100"))?;
    let start: u64 = start
        .parse()
        .map_err(|error| format!("range start {start:?}: {error}"))?;
    let end: u64 = end
        .parse()
        .map_err(|error| format!("range end {end:?}: {error}"))?;
    if end <= start {
        return Err(format!("the range {text} is empty"));
    }
    Ok(start..end)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Ok(filter) = std::env::var("TRIDENT_SIM_LOG") {
        // Trident's and the fake's logs, for debugging one seed (they are not part of the trace).
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    match cli.command {
        Some(Command::Nomad {
            listen,
            seed,
            token,
            event_buffer_size,
            heartbeat_s,
        }) => serve_nomad(listen, seed, token, event_buffer_size, heartbeat_s),
        None => run_seeds(&cli),
    }
}

fn run_seeds(cli: &Cli) -> ExitCode {
    let seeds: Vec<u64> = match (cli.seed, &cli.seeds, &cli.seeds_file) {
        (Some(seed), _, _) => vec![seed],
        (None, Some(range), _) => range.clone().collect(),
        (None, None, Some(path)) => match read_seeds(path).and_then(|seeds| {
            if seeds.is_empty() {
                Err(format!("{} lists no seed", path.display()))
            } else {
                Ok(seeds)
            }
        }) {
            Ok(seeds) => seeds,
            Err(error) => {
                eprintln!("trident-sim: {error}");
                return ExitCode::from(2);
            }
        },
        (None, None, None) => {
            eprintln!(
                "trident-sim: give --seed N, --seeds A..B or --seeds-file PATH (or the `nomad` subcommand)"
            );
            return ExitCode::from(2);
        }
    };
    if cli.minutes == 0 || cli.clients == 0 {
        eprintln!("trident-sim: --minutes and --clients must be positive");
        return ExitCode::from(2);
    }
    let faults = if cli.faults.is_empty() {
        FaultKind::ALL.to_vec()
    } else {
        cli.faults.clone()
    };
    let mut hashes = match &cli.hashes {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Some(std::io::BufWriter::new(file)),
            Err(error) => {
                eprintln!("trident-sim: cannot write {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let known: Vec<u64> = match &cli.known_failures {
        Some(path) => match read_seeds(path) {
            Ok(seeds) => seeds,
            Err(error) => {
                eprintln!("trident-sim: {error}");
                return ExitCode::from(2);
            }
        },
        None => Vec::new(),
    };
    let cpu_start = cpu_seconds();
    let mut report = Report::default();
    let total = seeds.len() as u64;
    for (done, seed) in seeds.iter().copied().enumerate() {
        let config = SimConfig {
            duration: Duration::from_secs(cli.minutes * 60),
            faults: faults.clone(),
            clients: cli.clients,
            keep_trace: cli.trace,
            ..SimConfig::new(seed)
        };
        let mut outcome = run_seed(&config);
        let mut nondeterministic = None;
        if cli.check_determinism {
            let again = run_seed(&config);
            if (again.trace_hash, again.trace_lines) != (outcome.trace_hash, outcome.trace_lines) {
                let mut problem = format!(
                    "the trace differs between two runs in one process: {:016x} ({} lines) then {:016x} ({} lines)",
                    outcome.trace_hash, outcome.trace_lines, again.trace_hash, again.trace_lines
                );
                // With --trace, both texts were kept: show where they part.
                if let (Some(first), Some(second)) = (&outcome.trace, &again.trace)
                    && let Some((line, (a, b))) = first
                        .lines()
                        .zip(second.lines())
                        .enumerate()
                        .find(|(_, (a, b))| a != b)
                {
                    problem.push_str(&format!(
                        "\n    first difference, line {}:\n    {a}\n    {b}",
                        line + 1
                    ));
                }
                nondeterministic = Some(problem);
            }
        }
        if let Some(trace) = outcome.trace.take() {
            print!("{trace}");
        }
        if let Some(file) = &mut hashes
            && writeln!(file, "{seed} {:016x}", outcome.trace_hash).is_err()
        {
            eprintln!("trident-sim: cannot write the hashes file");
            return ExitCode::FAILURE;
        }
        let passed = outcome.passed() && nondeterministic.is_none();
        if cli.verbose || !passed {
            println!("{}", seed_line(&outcome));
        }
        if let Some(problem) = &nondeterministic {
            println!("  nondeterminism: {problem}");
        }
        if !passed {
            for violation in &outcome.violations {
                println!(
                    "  {} at {:.3}s: {}",
                    violation.invariant.name(),
                    violation.at.as_secs_f64(),
                    violation.detail
                );
            }
            if let Some(error) = &outcome.error {
                println!("  error: {error}");
            }
            println!("{}", replay_line(cli, seed, &outcome));
        }
        let excused = !outcome.passed() && nondeterministic.is_none() && known.contains(&seed);
        if excused {
            println!("  seed {seed} is a known failure (an open bug, see --known-failures)");
            report.known.push(seed);
        }
        report.add(&outcome, passed || excused);
        if !cli.verbose && total >= 20 && (done as u64 + 1).is_multiple_of((total / 10).max(1)) {
            eprintln!(
                "trident-sim: {}/{total} seeds, {} failed",
                done + 1,
                report.failed.len()
            );
        }
    }
    if let Some(mut file) = hashes
        && file.flush().is_err()
    {
        eprintln!("trident-sim: cannot write the hashes file");
        return ExitCode::FAILURE;
    }
    let cpu = cpu_seconds().map(|end| end - cpu_start.unwrap_or(0.0));
    report.print(cli, cpu);
    if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The seeds of a seeds file.
fn read_seeds(path: &std::path::Path) -> Result<Vec<u64>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let mut seeds = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        seeds.push(line.parse().map_err(|error| {
            format!(
                "{}:{}: {line:?} is not a seed: {error}",
                path.display(),
                number + 1
            )
        })?);
    }
    Ok(seeds)
}

fn seed_line(outcome: &SeedOutcome) -> String {
    let fired: u64 = outcome.fired.values().sum();
    format!(
        "seed {}: {} trace={:016x} lines={} steps={} simulated={}s faults={} claims={} executions={} healed={}",
        outcome.seed,
        if outcome.passed() { "ok" } else { "FAILED" },
        outcome.trace_hash,
        outcome.trace_lines,
        outcome.steps,
        outcome.simulated.as_secs(),
        fired,
        outcome.counters.claims,
        outcome.counters.executions,
        outcome.healed_after.map_or_else(
            || "never".to_owned(),
            |after| format!("{}s", after.as_secs())
        ),
    )
}

/// The one line that replays a failing seed.
fn replay_line(cli: &Cli, seed: u64, outcome: &SeedOutcome) -> String {
    let mut command = format!("cargo run -p trident-sim --release -- --seed {seed}");
    if cli.minutes != 5 {
        command.push_str(&format!(" --minutes {}", cli.minutes));
    }
    if cli.clients != 3 {
        command.push_str(&format!(" --clients {}", cli.clients));
    }
    if !cli.faults.is_empty() {
        let names: Vec<&str> = cli.faults.iter().map(|kind| kind.name()).collect();
        command.push_str(&format!(" --faults {}", names.join(",")));
    }
    format!(
        "FAILED seed={seed} commit={} swarm={:016x} trace={:016x} replay: {command} --trace",
        commit(),
        outcome.swarm_digest,
        outcome.trace_hash
    )
}

/// The commit this binary was run from (best effort: outside a checkout it is unknown).
fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |text| text.trim().to_owned())
}

/// This process's user + system CPU time from `/proc/self/stat` (Linux), in seconds.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

#[derive(Debug, Default)]
struct Report {
    seeds: u64,
    failed: Vec<u64>,
    /// Seeds that failed as a known open bug.
    known: Vec<u64>,
    /// Per kind: total fires and seeds in which it fired.
    fired: BTreeMap<FaultKind, (u64, u64)>,
    violated: BTreeMap<Invariant, u64>,
    simulated: Duration,
    steps: u64,
    claims: u64,
    executions: u64,
    frames: u64,
    inspections: u64,
    restarts: u64,
    /// Runners seen stopped after a command ignored its time limit's interrupt.
    unkillable_stopped: u64,
    healed: Vec<Duration>,
}

impl Report {
    fn add(&mut self, outcome: &SeedOutcome, passed: bool) {
        self.seeds += 1;
        if !passed {
            self.failed.push(outcome.seed);
        }
        for (kind, count) in &outcome.fired {
            let entry = self.fired.entry(*kind).or_default();
            entry.0 += count;
            if *count > 0 {
                entry.1 += 1;
            }
        }
        for violation in &outcome.violations {
            *self.violated.entry(violation.invariant).or_default() += 1;
        }
        self.simulated += outcome.simulated;
        self.steps += outcome.steps;
        self.claims += outcome.counters.claims;
        self.executions += outcome.counters.executions;
        self.frames += outcome.counters.frames;
        self.inspections += outcome.counters.inspections;
        self.restarts += outcome.counters.incarnations.saturating_sub(1);
        self.unkillable_stopped += outcome.counters.unkillable_runners_stopped;
        if let Some(after) = outcome.healed_after {
            self.healed.push(after);
        }
    }

    fn print(&mut self, cli: &Cli, cpu: Option<f64>) {
        println!(
            "\n{} seeds, {} passed, {} failed{}",
            self.seeds,
            self.seeds - self.failed.len() as u64,
            self.failed.len(),
            if self.failed.is_empty() {
                String::new()
            } else {
                format!(" (seeds {:?})", self.failed)
            }
        );
        if !self.known.is_empty() {
            println!(
                "{} of the passes are known failures of open bugs: seeds {:?}",
                self.known.len(),
                self.known
            );
        }
        println!(
            "simulated {:.1} min in {} steps; {} claims, {} executions, {} event frames, {} manager inputs inspected, {} Trident restarts, {} runners stopped for a command that ignored its interrupt",
            self.simulated.as_secs_f64() / 60.0,
            self.steps,
            self.claims,
            self.executions,
            self.frames,
            self.inspections,
            self.restarts,
            self.unkillable_stopped
        );
        if let Some(cpu) = cpu
            && cpu > 0.0
        {
            println!(
                "CPU {cpu:.1} s: {:.1} seeds per CPU-minute at {} simulated minutes per seed{}",
                self.seeds as f64 * if cli.check_determinism { 2.0 } else { 1.0 } * 60.0 / cpu,
                cli.minutes,
                if cli.check_determinism {
                    " (each seed run twice)"
                } else {
                    ""
                }
            );
        }
        self.healed.sort();
        if let (Some(first), Some(last)) = (self.healed.first(), self.healed.last()) {
            println!(
                "healed after the faults: median {}s, max {}s (simulated)",
                self.healed[self.healed.len() / 2].as_secs(),
                last.as_secs().max(first.as_secs())
            );
        }
        println!("fault kind                        fired  in seeds");
        for kind in FaultKind::ALL {
            let (count, seeds) = self.fired.get(&kind).copied().unwrap_or_default();
            println!(
                "  {:<31} {count:>6}  {seeds:>4} ({:.0}%)",
                kind.name(),
                seeds as f64 * 100.0 / self.seeds.max(1) as f64
            );
        }
        println!("invariants checked (violations):");
        for invariant in Invariant::ALL {
            println!(
                "  {:<31} {}",
                invariant.name(),
                self.violated.get(&invariant).copied().unwrap_or(0)
            );
        }
    }
}

fn serve_nomad(
    listen: SocketAddr,
    seed: u64,
    token: Option<String>,
    event_buffer_size: usize,
    heartbeat_s: u64,
) -> ExitCode {
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
