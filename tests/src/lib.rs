//! # trident-tests
//!
//! The kit for black-box tests: a [`Server`] that runs the real `trident` binary on an ephemeral
//! port with its own state directory, real HTTP (reqwest) and WebSocket (tokio-tungstenite)
//! clients, and a [`Conversation`] that records what an execution's WebSocket said. The tests
//! themselves are in `tests/` (the end-to-end suite follows Poseidon's e2e list,
//! `reference/poseidon.md` §10.2).
//!
//! The binary is built on first use with the cargo that runs the tests (`$CARGO build -p
//! trident-server --bin trident`, same profile and target directory), because cargo only hands
//! the path of a binary to the tests of its own package.

mod backend;
mod monitoring;
mod nomad;

pub use backend::{Backend, OnBackend};
pub use monitoring::{Metrics, Sample, Series, VictoriaMetrics};
pub use nomad::ServedNomad;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// How long a server may take to answer `/health` after its start.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long any one WebSocket conversation may take before the test gives up.
const EXECUTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The `trident` binary, built once per test process.
pub fn server_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            // <target>/<profile>/deps/<test binary>: the binary lands in <target>/<profile>/.
            let test = std::env::current_exe().expect("the test binary's path");
            let profile_dir = test
                .parent()
                .and_then(|deps| deps.parent())
                .expect("a test binary lives in <target>/<profile>/deps")
                .to_owned();
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build.args([
                "build",
                "--quiet",
                "-p",
                "trident-server",
                "--bin",
                "trident",
            ]);
            // The variables `cargo test` sets for the test process describe this package, not
            // the build: a build script that watches one (ring's watches CARGO_MANIFEST_DIR)
            // would see it change and rebuild the server's TLS stack and the binary (a minute on
            // two cores) for every test binary of another package.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                if name.starts_with("CARGO_PKG_")
                    || matches!(
                        &*name,
                        "CARGO_MANIFEST_DIR"
                            | "CARGO_MANIFEST_PATH"
                            | "CARGO_CRATE_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                            | "CARGO_RUSTC_CURRENT_DIR"
                    )
                {
                    build.env_remove(&*name);
                }
            }
            if profile_dir
                .file_name()
                .is_some_and(|name| name == "release")
            {
                build.arg("--release");
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "building the trident binary failed");
            let binary = profile_dir.join("trident");
            assert!(binary.exists(), "no binary at {}", binary.display());
            binary
        })
        .clone()
}

/// How to start a [`Server`] beyond [`Server::start`]'s defaults.
#[derive(Clone, Debug)]
pub struct Launch<'a> {
    /// Extra flags.
    pub extra: &'a [&'a str],
    /// `TRIDENT_LOG` (default: `$TRIDENT_TEST_LOG`, else `warn`).
    pub log_filter: Option<&'a str>,
    /// Write the server's stderr to a file ([`Server::logs`]) instead of the test's stderr.
    pub capture_logs: bool,
    /// The route whose success means "started" (default `/ready`: the first recovery is done).
    pub wait_for: &'a str,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch {
            extra: &[],
            log_filter: None,
            capture_logs: false,
            wait_for: "/ready",
        }
    }
}

/// A `trident` process serving on an ephemeral port; stopped (SIGTERM) when dropped.
pub struct Server {
    child: Child,
    base: String,
    root: String,
    /// An HTTP client for it.
    pub client: reqwest::Client,
    _state: tempfile::TempDir,
    /// The captured stderr, if [`Launch::capture_logs`].
    log: Option<tempfile::NamedTempFile>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Starts the `trident` binary of this workspace with `extra` flags.
    pub async fn start(extra: &[&str]) -> Server {
        Server::start_binary(&server_binary(), extra).await
    }

    /// Starts a server with one environment (id 1, pool 1, `memory_mb`) and claims its runner.
    pub async fn with_runner(memory_mb: u32) -> (Server, String) {
        let server = Server::start(&[]).await;
        server.environment(1, 1, memory_mb).await;
        let runner = server.claim(1, 0).await;
        (server, runner)
    }

    /// Starts `binary` (a `trident` built elsewhere, e.g. a benchmark's release build).
    pub async fn start_binary(binary: &std::path::Path, extra: &[&str]) -> Server {
        Server::launch(
            binary,
            Launch {
                extra,
                ..Launch::default()
            },
        )
        .await
    }

    /// Starts the `trident` binary of this workspace as `launch` says.
    pub async fn start_with(launch: Launch<'_>) -> Server {
        Server::launch(&server_binary(), launch).await
    }

    /// Starts `binary` as `launch` says; returns once `launch.wait_for` answers with success.
    pub async fn launch(binary: &std::path::Path, launch: Launch<'_>) -> Server {
        let extra = launch.extra;
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("bound").port()
        };
        let state = tempfile::tempdir().expect("a temporary directory");
        let log = launch
            .capture_logs
            .then(|| tempfile::NamedTempFile::new().expect("a log file"));
        let stderr = match &log {
            Some(file) => Stdio::from(file.reopen().expect("the log file opens")),
            None => Stdio::inherit(),
        };
        let log_filter = launch.log_filter.map_or_else(
            || std::env::var("TRIDENT_TEST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            str::to_owned,
        );
        let child = Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(state.path())
            .args(extra)
            // `TRIDENT_TEST_LOG=info cargo test …` shows the servers' logs when a test fails.
            .env("TRIDENT_LOG", log_filter)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the trident binary starts");
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}/api/v1"),
            root: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            _state: state,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(response) = server.client.get(server.url(launch.wait_for)).send().await
                && response.status().is_success()
            {
                return server;
            }
            assert!(Instant::now() < deadline, "the server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `path` under `/api/v1`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `path` from the server's root (`/metrics`).
    pub fn root_url(&self, path: &str) -> String {
        format!("{}{path}", self.root)
    }

    /// What the server wrote to stderr so far (its logs); needs [`Launch::capture_logs`].
    pub fn logs(&self) -> String {
        let file = self.log.as_ref().expect("started with capture_logs");
        std::fs::read_to_string(file.path()).expect("the log file is readable")
    }

    /// `GET /metrics`, parsed; panics on a malformed exposition.
    pub async fn metrics(&self) -> Metrics {
        let response = self
            .client
            .get(self.root_url("/metrics"))
            .send()
            .await
            .expect("metrics");
        assert_eq!(response.status(), 200);
        Metrics::parse(&response.text().await.expect("a body"))
    }

    /// Creates an environment with `pool` runners and waits until they are idle.
    pub async fn environment(&self, id: u64, pool: u32, memory_mb: u32) {
        let response = self
            .client
            .put(self.url(&format!("/execution-environments/{id}")))
            .json(&json!({
                "prewarmingPoolSize": pool, "cpuLimit": 100, "memoryLimit": memory_mb,
                "image": "host", "networkAccess": false, "exposedPorts": null
            }))
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 201);
        self.environment_ready(id, pool).await;
    }

    /// `GET /statistics/execution-environments`.
    pub async fn statistics(&self) -> Value {
        self.client
            .get(self.url("/statistics/execution-environments"))
            .send()
            .await
            .expect("statistics")
            .json()
            .await
            .expect("JSON")
    }

    /// Waits until environment `id` has `pool` idle runners.
    pub async fn environment_ready(&self, id: u64, pool: u32) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let stats = self.statistics().await;
            if stats[id.to_string()]["idleRunners"] == json!(pool) {
                return;
            }
            assert!(Instant::now() < deadline, "the pool did not fill: {stats}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn claim(&self, environment: u64, inactivity_s: u64) -> String {
        let response: Value = self
            .client
            .post(self.url("/runners"))
            .json(
                &json!({"executionEnvironmentId": environment, "inactivityTimeout": inactivity_s}),
            )
            .send()
            .await
            .expect("claim")
            .json()
            .await
            .expect("JSON");
        response["runnerId"]
            .as_str()
            .unwrap_or_else(|| panic!("a runner id in {response}"))
            .to_owned()
    }

    pub async fn copy(&self, runner: &str, path: &str, content: &[u8]) -> reqwest::StatusCode {
        use base64::Engine;
        let content = base64::engine::general_purpose::STANDARD.encode(content);
        self.client
            .patch(self.url(&format!("/runners/{runner}/files")))
            .json(&json!({"copy": [{"path": path, "content": content}]}))
            .send()
            .await
            .expect("patch")
            .status()
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's peak resident memory so far, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmHWM line")
    }

    /// Requests an execution and returns its WebSocket URL.
    pub async fn execute_url(&self, runner: &str, body: Value) -> String {
        let response: Value = self
            .client
            .post(self.url(&format!("/runners/{runner}/execute")))
            .json(&body)
            .send()
            .await
            .expect("execute")
            .json()
            .await
            .expect("JSON");
        response["websocketUrl"]
            .as_str()
            .unwrap_or_else(|| panic!("a websocket URL in {response}"))
            .to_owned()
    }

    /// Runs a command over the WebSocket, sending `input` after `start`; returns every message.
    pub async fn run(&self, runner: &str, body: Value, input: Option<&str>) -> Conversation {
        let at_start = input.map_or(AtStart::Nothing, AtStart::Input);
        self.converse(runner, body, at_start).await
    }

    /// Runs a command over the WebSocket and sends the server SIGTERM once it has started;
    /// returns every message until the close.
    pub async fn run_until_terminated(&self, runner: &str, body: Value) -> Conversation {
        self.converse(runner, body, AtStart::Terminate).await
    }

    async fn converse(&self, runner: &str, body: Value, at_start: AtStart<'_>) -> Conversation {
        let url = self.execute_url(runner, body).await;
        let (mut socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("the WebSocket connects");
        let mut conversation = Conversation::default();
        let started = Instant::now();
        tokio::time::timeout(EXECUTION_TIMEOUT, async {
            while let Some(message) = socket.next().await {
                match message.expect("a frame") {
                    Message::Text(text) => {
                        let value: Value = serde_json::from_str(&text).expect("JSON message");
                        if value["type"] == "start" {
                            match at_start {
                                AtStart::Nothing => {}
                                AtStart::Input(input) => socket
                                    .send(Message::Text(input.into()))
                                    .await
                                    .expect("stdin"),
                                AtStart::Terminate => {
                                    let _ =
                                        Command::new("kill").arg(self.pid().to_string()).status();
                                }
                            }
                        }
                        conversation.messages.push(value);
                    }
                    Message::Close(frame) => {
                        conversation.close = frame.map(|frame| frame.code);
                        break;
                    }
                    _ => {}
                }
            }
        })
        .await
        .expect("the execution ended in time");
        conversation.elapsed = started.elapsed();
        conversation
    }
}

/// What a conversation does once the command has started.
#[derive(Clone, Copy)]
enum AtStart<'a> {
    Nothing,
    Input(&'a str),
    Terminate,
}

impl Server {
    /// The server's state directory (runner workspaces live under it).
    pub fn state_dir(&self) -> &std::path::Path {
        self._state.path()
    }

    /// Sends SIGTERM and waits (bounded) for the server to exit; `None` if it had to be killed.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM, then wait: the server stops its sandboxes as it exits.
        self.terminate();
    }
}

/// What an execution's WebSocket said.
#[derive(Debug, Default)]
pub struct Conversation {
    /// Every JSON message, in order.
    pub messages: Vec<Value>,
    /// The close code the server sent, if any.
    pub close: Option<CloseCode>,
    /// From connecting to the close.
    pub elapsed: Duration,
}

impl Conversation {
    pub fn text(&self, kind: &str) -> String {
        self.messages
            .iter()
            .filter(|message| message["type"] == kind)
            .filter_map(|message| message["data"].as_str())
            .collect()
    }

    pub fn kinds(&self) -> Vec<&str> {
        self.messages
            .iter()
            .filter_map(|message| message["type"].as_str())
            .collect()
    }

    pub fn last_control(&self) -> &Value {
        self.messages
            .iter()
            .rev()
            .find(|message| !matches!(message["type"].as_str(), Some("stdout" | "stderr")))
            .expect("a control message")
    }
}
