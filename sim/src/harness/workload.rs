//! CodeOcean-like clients: they put environments, claim runners, copy files, run commands (with
//! stdin, time limits, large outputs), list and download files, release runners or let them time
//! out, and check every answer against what they did.
//!
//! A client tolerates failure (a fault may make any request fail) but never a wrong answer: a
//! wrong answer is a [`Invariant`] violation in the observatory.

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use http::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use trident_core::SplitMix64;

use crate::nomad::FakeNomad;

use super::net::{self, Answer};
use super::observatory::{Invariant, Shared};

/// Where Trident listens inside the simulation.
pub const TRIDENT: &str = "trident:7200";
/// The environments the workload uses.
pub const ENVIRONMENTS: [u64; 2] = [1, 2];

/// Bound of every request: a partition swallows requests silently.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound of an execution without time limit (its commands are short).
const EXECUTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How late a `timeout` may come after the limit: the interrupt's grace plus scheduling.
const TIMEOUT_SLACK: Duration = Duration::from_secs(10);

/// What the workload does; the step loop stops it by time.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Clients stop starting sessions after this simulated time.
    pub until: Duration,
}

/// The administrator: puts the environments, later changes their pool sizes now and then.
pub async fn admin(shared: Shared, mut rng: SplitMix64, config: WorkloadConfig) {
    for environment in ENVIRONMENTS {
        let pool = 2 + rng.next_u64() % 3;
        put_environment(&shared, environment, pool).await;
    }
    loop {
        sleep(&mut rng, 60, 180).await;
        if now() >= config.until {
            return;
        }
        let environment = ENVIRONMENTS[(rng.next_u64() % 2) as usize];
        let pool = 1 + rng.next_u64() % 4;
        put_environment(&shared, environment, pool).await;
    }
}

/// Puts an environment until Trident accepts it.
async fn put_environment(shared: &Shared, environment: u64, pool: u64) {
    let body = json!({
        "prewarmingPoolSize": pool,
        "cpuLimit": 100,
        "memoryLimit": 256,
        "image": "openhpi/co_execenv_python:3.8",
        "networkAccess": false,
        "exposedPorts": [],
    });
    for _ in 0..50 {
        let answer = net::request(
            TRIDENT,
            Method::PUT,
            &format!("/api/v1/execution-environments/{environment}"),
            Some(body.clone()),
            REQUEST_TIMEOUT,
        )
        .await;
        let outcome = describe(&answer);
        shared.lock().trace(
            "admin",
            format_args!("put env{environment} pool={pool} -> {outcome}"),
        );
        if matches!(&answer, Ok(answer) if answer.status == 201 || answer.status == 204) {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// One CodeOcean-like client.
pub struct Client {
    id: usize,
    name: String,
    rng: SplitMix64,
    shared: Shared,
    /// Sessions so far: names this client's files apart.
    sessions: u64,
    /// A runner of this session in which a command that ignores the interrupt may run on
    /// (its execution ended without the server's close).
    unstopped: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.id).finish()
    }
}

/// A file a client wrote into its runner.
struct Written {
    path: String,
    content: Vec<u8>,
}

/// How a session ends.
enum End {
    /// The runner is gone (410) or unreachable: give it up.
    Lost,
    /// Go on.
    Continue,
}

impl Client {
    /// Client `id` drawing from `rng`.
    pub fn new(id: usize, rng: SplitMix64, shared: Shared) -> Self {
        Client {
            id,
            name: format!("client{id}"),
            rng,
            shared,
            sessions: 0,
            unstopped: None,
        }
    }

    /// Runs sessions until `config.until`.
    pub async fn run(mut self, config: WorkloadConfig) {
        // Let the administrator put the environments and the pools warm up.
        tokio::time::sleep(Duration::from_secs(5 + self.rng.next_u64() % 10)).await;
        while now() < config.until {
            self.session().await;
            sleep(&mut self.rng, 1, 8).await;
        }
    }

    fn trace(&self, what: impl std::fmt::Display) {
        self.shared.lock().trace(&self.name, what);
    }

    fn violate(&self, invariant: Invariant, detail: impl Into<String>) {
        self.shared.lock().violate(invariant, detail);
    }

    async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Option<Answer> {
        let what = format!("{method} {path}");
        let answer = net::request(TRIDENT, method, path, body, REQUEST_TIMEOUT).await;
        self.trace(format_args!("{what} -> {}", describe(&answer)));
        match answer {
            Ok(answer) => Some(answer),
            Err(_) => {
                self.shared.lock().counters.transport_errors += 1;
                None
            }
        }
    }

    /// Claim, work, release (or abandon).
    async fn session(&mut self) {
        self.sessions += 1;
        let environment = ENVIRONMENTS[(self.rng.next_u64() % 2) as usize];
        let inactivity = 20 + self.rng.next_u64() % 60;
        let index_before = self.shared.lock().nomad.as_ref().map(FakeNomad::peek_index);
        let Some(answer) = self
            .request(
                Method::POST,
                "/api/v1/runners",
                Some(
                    json!({"executionEnvironmentId": environment, "inactivityTimeout": inactivity}),
                ),
            )
            .await
        else {
            self.shared.lock().counters.claims_refused += 1;
            return;
        };
        let runner = match (answer.status, answer.json()["runnerId"].as_str()) {
            (200, Some(runner)) => runner.to_owned(),
            _ => {
                self.shared.lock().counters.claims_refused += 1;
                return;
            }
        };
        self.shared
            .lock()
            .handed_out(&runner, self.id, index_before);
        let mut written: Vec<Written> = Vec::new();
        let operations = 1 + self.rng.next_u64() % 5;
        for _ in 0..operations {
            let end = match self.rng.next_u64() % 8 {
                0 | 1 => self.copy(&runner, &mut written).await,
                2 => self.cat_file(&runner, &written).await,
                3 => self.exit_code(&runner).await,
                4 => self.large_output(&runner).await,
                5 => self.time_limit(&runner).await,
                6 => self.stdin_echo(&runner).await,
                _ => self.read_back(&runner, &written).await,
            };
            if let End::Lost = end {
                return;
            }
        }
        if self.rng.next_u64().is_multiple_of(4) {
            // Abandon it: the inactivity timeout must reclaim it.
            self.trace(format_args!("abandons {runner}"));
            return;
        }
        let Some(answer) = self
            .request(Method::DELETE, &format!("/api/v1/runners/{runner}"), None)
            .await
        else {
            return;
        };
        if answer.status != 204 {
            return;
        }
        self.shared.lock().counters.releases += 1;
        if let Some(after) = self
            .request(
                Method::GET,
                &format!("/api/v1/runners/{runner}/files?path=./"),
                None,
            )
            .await
            && after.status != 410
        {
            self.violate(
                Invariant::ReleasedRunnerGone,
                format!(
                    "{runner} answered {} after its release was answered 204",
                    after.status
                ),
            );
        }
    }

    /// Copies a fresh file whose name and content say whose it is.
    async fn copy(&mut self, runner: &str, written: &mut Vec<Written>) -> End {
        let path = format!("c{}-s{}-f{}.txt", self.id, self.sessions, written.len() + 1);
        let length = 1 + self.rng.next_u64() % 2048;
        let mut content = format!("{} wrote {path} into {runner}\n", self.name).into_bytes();
        while (content.len() as u64) < length {
            content.push(b'a' + (self.rng.next_u64() % 26) as u8);
        }
        let body = json!({"copy": [{
            "path": path,
            "content": base64::engine::general_purpose::STANDARD.encode(&content),
        }]});
        let Some(answer) = self
            .request(
                Method::PATCH,
                &format!("/api/v1/runners/{runner}/files"),
                Some(body),
            )
            .await
        else {
            return End::Continue;
        };
        match answer.status {
            204 => {
                self.shared.lock().counters.copies += 1;
                written.push(Written { path, content });
                End::Continue
            }
            410 => End::Lost,
            _ => End::Continue,
        }
    }

    /// `cat` of a written file must print exactly its content.
    async fn cat_file(&mut self, runner: &str, written: &[Written]) -> End {
        let Some(file) = written.last() else {
            return self.exit_code(runner).await;
        };
        let command = format!("cat {}", file.path);
        let Some(run) = self.execute(runner, &command, 0, None).await else {
            return End::Lost;
        };
        // A file copied before an OOM kill or a lost allocation may be gone: only a successful
        // cat has to be faithful.
        if run.exit == Some(0) && run.stdout != file.content {
            self.violate(
                Invariant::OutputFaithful,
                format!(
                    "{runner}: `{command}` printed {} bytes, the file has {}",
                    run.stdout.len(),
                    file.content.len()
                ),
            );
        }
        End::Continue
    }

    /// `exit N` must end with exit code N.
    async fn exit_code(&mut self, runner: &str) -> End {
        let code = self.rng.next_u64() % 4;
        let command = format!("exit {code}");
        let Some(run) = self.execute(runner, &command, 0, None).await else {
            return End::Lost;
        };
        // 128 + n: killed by signal n (an OOM kill, a lost node), which may beat any command.
        if let Some(exit) = run.exit
            && exit < 128
            && u64::try_from(exit).ok() != Some(code)
        {
            self.violate(
                Invariant::ExitCodeFaithful,
                format!("{runner}: `{command}` exited {exit}"),
            );
        }
        End::Continue
    }

    /// A large output arrives whole.
    async fn large_output(&mut self, runner: &str) -> End {
        let bytes = 1 + self.rng.next_u64() % 300_000;
        let command = format!("head -c {bytes} /dev/zero");
        let Some(run) = self.execute(runner, &command, 0, None).await else {
            return End::Lost;
        };
        if run.exit == Some(0)
            && (run.stdout.len() as u64 != bytes || run.stdout.iter().any(|byte| *byte != 0))
        {
            self.violate(
                Invariant::OutputFaithful,
                format!("{runner}: `{command}` printed {} bytes", run.stdout.len()),
            );
        }
        End::Continue
    }

    /// A command outliving its time limit ends with `timeout`, at the limit.
    async fn time_limit(&mut self, runner: &str) -> End {
        let limit = 1 + self.rng.next_u64() % 5;
        // A third of them ignore the interrupt (Ctrl-\) that the time limit sends.
        let unkillable = self.rng.next_u64().is_multiple_of(3);
        let command = if unkillable {
            "trap '' QUIT; sleep 1000"
        } else {
            "sleep 1000"
        };
        let Some(run) = self.execute(runner, command, limit, None).await else {
            return End::Lost;
        };
        if unkillable && !run.closed {
            // Trident may have died during the interrupt's grace: its successor keeps the
            // runner, and the command may run on in it.
            self.unstopped = Some(runner.to_owned());
        }
        if unkillable
            && (run.timeout || run.error.is_some())
            && run.closed
            && self.unstopped.as_deref() != Some(runner)
        {
            // The server closed the execution after its stop: the runner was stopped by then,
            // unless the command never started (its exec could not be opened).
            let Some(answer) = self
                .request(
                    Method::GET,
                    &format!("/api/v1/runners/{runner}/files?path=./"),
                    None,
                )
                .await
            else {
                return End::Continue;
            };
            if answer.status == 410 {
                self.shared.lock().counters.unkillable_runners_stopped += 1;
                return End::Lost;
            }
            let nomad = self.shared.lock().nomad.clone();
            let outliving = nomad.map_or(0, |nomad| nomad.commands_outliving_in_job(runner));
            if outliving > 0 {
                self.violate(
                    Invariant::UnkillableCommandStopsRunner,
                    format!(
                        "{runner}: the command ignored the interrupt, ended with {}, and runs \
                         on ({outliving} processes), and the runner still answers {} after the \
                         close",
                        run.summary(),
                        answer.status
                    ),
                );
            }
        }
        if run.timeout {
            let limit = Duration::from_secs(limit);
            if run.elapsed + Duration::from_millis(500) < limit
                || run.elapsed > limit + TIMEOUT_SLACK
            {
                self.violate(
                    Invariant::TimeLimitRespected,
                    format!(
                        "{runner}: a {}s limit answered timeout after {:?}",
                        limit.as_secs(),
                        run.elapsed
                    ),
                );
            }
        } else if run.exit.is_some_and(|code| code < 128) {
            self.violate(
                Invariant::TimeLimitRespected,
                format!("{runner}: `sleep 1000` under a {limit}s limit exited"),
            );
        }
        End::Continue
    }

    /// stdin reaches the command: `head -c N /dev/stdin`-like echo through `cat` with a limit.
    async fn stdin_echo(&mut self, runner: &str) -> End {
        let token = format!("{} says {}\n", self.name, self.rng.next_u64());
        // `cat` never sees the end of its input over the WebSocket: a time limit ends it, and
        // what it echoed before must be the input.
        let Some(run) = self.execute(runner, "cat", 3, Some(&token)).await else {
            return End::Lost;
        };
        if !run.stdout.is_empty() && run.stdout != token.as_bytes() {
            self.violate(
                Invariant::OutputFaithful,
                format!(
                    "{runner}: cat echoed {:?} for {token:?}",
                    String::from_utf8_lossy(&run.stdout)
                ),
            );
        }
        End::Continue
    }

    /// Lists the workspace and downloads a file: only this session's files, with their content.
    async fn read_back(&mut self, runner: &str, written: &[Written]) -> End {
        let Some(answer) = self
            .request(
                Method::GET,
                &format!("/api/v1/runners/{runner}/files?path=./&recursive=true"),
                None,
            )
            .await
        else {
            return End::Continue;
        };
        match answer.status {
            200 => {}
            410 => return End::Lost,
            _ => return End::Continue,
        }
        self.shared.lock().counters.reads += 1;
        let own = format!("c{}-s{}-", self.id, self.sessions);
        if let Some(files) = answer.json()["files"].as_array() {
            for file in files {
                let name = file["name"].as_str().unwrap_or_default();
                let base = name.rsplit('/').next().unwrap_or(name);
                if base.starts_with('c') && base.ends_with(".txt") && !base.starts_with(&own) {
                    self.violate(
                        Invariant::FilesPrivate,
                        format!("{runner} of {} lists {name}", self.name),
                    );
                }
            }
        }
        let Some(file) = written.first() else {
            return End::Continue;
        };
        let Some(answer) = self
            .request(
                Method::GET,
                &format!("/api/v1/runners/{runner}/files/raw?path={}", file.path),
                None,
            )
            .await
        else {
            return End::Continue;
        };
        match answer.status {
            200 => {
                self.shared.lock().counters.reads += 1;
                if answer.body != file.content {
                    self.violate(
                        Invariant::FilesPrivate,
                        format!(
                            "{runner}: {} read back {} bytes, {} were written",
                            file.path,
                            answer.body.len(),
                            file.content.len()
                        ),
                    );
                }
                End::Continue
            }
            410 => End::Lost,
            _ => End::Continue,
        }
    }

    /// Requests an execution and runs it over the WebSocket. `None` when the runner is gone.
    async fn execute(
        &mut self,
        runner: &str,
        command: &str,
        time_limit: u64,
        stdin: Option<&str>,
    ) -> Option<Run> {
        let answer = self
            .request(
                Method::POST,
                &format!("/api/v1/runners/{runner}/execute"),
                Some(json!({"command": command, "timeLimit": time_limit})),
            )
            .await?;
        if answer.status == 410 {
            return None;
        }
        let url = answer.json()["websocketUrl"].as_str()?.to_owned();
        let bound = if time_limit > 0 {
            Duration::from_secs(time_limit) + TIMEOUT_SLACK + REQUEST_TIMEOUT
        } else {
            EXECUTION_TIMEOUT
        };
        let run = tokio::time::timeout(bound, self.converse(&url, stdin))
            .await
            .unwrap_or_else(|_| Run {
                problem: Some("no final answer in time".into()),
                ..Run::default()
            });
        let summary = run.summary();
        self.trace(format_args!("ran `{command}` on {runner}: {summary}"));
        if let Some(problem) = &run.problem
            && run.finals > 1
        {
            self.violate(
                Invariant::SingleFinalAnswer,
                format!("{runner} `{command}`: {problem}"),
            );
        }
        if run.finals > 0 {
            self.shared.lock().counters.executions += 1;
        }
        Some(run)
    }

    async fn converse(&self, url: &str, stdin: Option<&str>) -> Run {
        let mut run = Run::default();
        let mut socket = match net::websocket(url).await {
            Ok(socket) => socket,
            Err(error) => {
                run.problem = Some(error);
                return run;
            }
        };
        let mut started = None;
        while let Some(message) = socket.next().await {
            let text = match message {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(_)) => {
                    run.closed = true;
                    break;
                }
                Err(_) => break,
                Ok(_) => continue,
            };
            let value: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
            let kind = value["type"].as_str().unwrap_or_default();
            if run.finals > 0 {
                run.finals += 1;
                run.problem = Some(format!("a {kind:?} message after the final answer"));
                continue;
            }
            match kind {
                "start" => {
                    // tokio's clock (turmoil's simulated time in the simulation), not the wall clock.
                    started = Some(tokio::time::Instant::now());
                    if let Some(input) = stdin
                        && socket.send(Message::Text(input.into())).await.is_err()
                    {
                        break;
                    }
                }
                "stdout" => {
                    run.stdout
                        .extend_from_slice(value["data"].as_str().unwrap_or_default().as_bytes());
                }
                "stderr" => {}
                "exit" => {
                    run.finals += 1;
                    run.exit = value["data"].as_i64();
                }
                "timeout" => {
                    run.finals += 1;
                    run.timeout = true;
                }
                "error" => {
                    run.finals += 1;
                    run.error = Some(value["data"].as_str().unwrap_or_default().to_owned());
                }
                other => run.problem = Some(format!("unknown message type {other:?}")),
            }
            if run.finals == 1
                && let Some(started) = started
            {
                run.elapsed = started.elapsed();
            }
        }
        run
    }
}

/// One execution as the client saw it.
#[derive(Debug, Default)]
struct Run {
    stdout: Vec<u8>,
    exit: Option<i64>,
    timeout: bool,
    error: Option<String>,
    /// Final answers received (exit, timeout, error): must be at most 1.
    finals: u32,
    /// From `start` to the final answer.
    elapsed: Duration,
    problem: Option<String>,
    /// The server's close frame came (the connection did not just break).
    closed: bool,
}

impl Run {
    fn summary(&self) -> String {
        let end = match (&self.exit, self.timeout, &self.error) {
            (Some(code), _, _) => format!("exit {code}"),
            (None, true, _) => "timeout".into(),
            (None, false, Some(error)) => format!("error {error:?}"),
            (None, false, None) => "no final answer".into(),
        };
        let mut summary = format!(
            "{end}, {} stdout bytes, {:.3}s",
            self.stdout.len(),
            self.elapsed.as_secs_f64()
        );
        if let Some(problem) = &self.problem {
            summary.push_str(", ");
            summary.push_str(problem);
        }
        summary
    }
}

/// How an answer looks in the trace.
fn describe(answer: &Result<Answer, String>) -> String {
    match answer {
        Ok(answer) => {
            let json = answer.json();
            match (answer.status, json.get("errorCode"), json.get("runnerId")) {
                (_, _, Some(runner)) => {
                    format!("{} {}", answer.status, runner.as_str().unwrap_or("?"))
                }
                (_, Some(code), _) => format!("{} {}", answer.status, code.as_str().unwrap_or("?")),
                _ => answer.status.to_string(),
            }
        }
        Err(error) => format!("failed: {error}"),
    }
}

/// The simulated time.
pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Sleeps a whole number of seconds in `[low, high)`.
async fn sleep(rng: &mut SplitMix64, low: u64, high: u64) {
    let seconds = low + rng.next_u64() % (high - low).max(1);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}
