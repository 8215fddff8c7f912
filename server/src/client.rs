//! The command-line client in the `trident` binary: `trident env put|list`, `trident run`,
//! `trident stats`. It uses the public HTTP and WebSocket API only, like any other client.

use std::io::Write;
use std::path::PathBuf;

use base64::Engine;
use clap::{Args, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

/// Where the server is and how to authenticate.
#[derive(Clone, Debug, Args)]
pub struct Connection {
    /// The server's base URL.
    #[arg(long, env = "TRIDENT_SERVER", default_value = "http://127.0.0.1:7200")]
    pub server: String,
    /// The `Poseidon-Token` to send, if the server requires one.
    #[arg(long = "token", env = "TRIDENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Client subcommands.
#[derive(Clone, Debug, Subcommand)]
pub enum ClientCommand {
    /// Manage execution environments.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Claim a runner, upload files, run a command with this terminal attached, print its exit
    /// code and give the runner back.
    Run(RunArgs),
    /// Show each environment's pool: target, idle and used runners.
    Stats(Connection),
}

/// `trident env …`.
#[derive(Clone, Debug, Subcommand)]
pub enum EnvCommand {
    /// Create or update an environment.
    Put(PutArgs),
    /// List the environments.
    List(Connection),
}

/// `trident env put`.
#[derive(Clone, Debug, Args)]
pub struct PutArgs {
    /// The environment's id.
    pub id: u64,
    /// The image (local backend: a configured root file system, else the host's root).
    #[arg(long, default_value = "host")]
    pub image: String,
    /// Idle runners to keep ready.
    #[arg(long, default_value_t = 1)]
    pub pool: u32,
    /// CPU limit in MHz.
    #[arg(long, default_value_t = 1000)]
    pub cpu: u32,
    /// Memory limit in MB.
    #[arg(long, default_value_t = 512)]
    pub memory: u32,
    /// Give runners network access.
    #[arg(long)]
    pub network: bool,
    /// Expose a port (repeatable; needs --network).
    #[arg(long = "port")]
    pub ports: Vec<u16>,
    #[command(flatten)]
    pub connection: Connection,
}

/// `trident run`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// The environment to claim a runner of.
    #[arg(long = "env")]
    pub environment: u64,
    /// A file to upload into the workspace under its own name (repeatable).
    #[arg(long = "file")]
    pub files: Vec<PathBuf>,
    /// Stop the command after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub time_limit: u64,
    /// Run as root inside the runner.
    #[arg(long)]
    pub privileged: bool,
    /// Wait this many seconds for an idle runner when the pool is empty (e.g. still warming up).
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
    #[command(flatten)]
    pub connection: Connection,
    /// The command line, run by bash in the workspace.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// What a terminal's line discipline reads as the end of input: Ctrl-D (EOT).
const END_OF_INPUT: &str = "\u{4}";

/// Runs a client command; the result is the process's exit code.
pub async fn run(command: ClientCommand) -> Result<u8, String> {
    match command {
        ClientCommand::Env(EnvCommand::Put(args)) => put(args).await.map(|()| 0),
        ClientCommand::Env(EnvCommand::List(connection)) => list(connection).await.map(|()| 0),
        ClientCommand::Stats(connection) => stats(connection).await.map(|()| 0),
        ClientCommand::Run(args) => execute(args).await,
    }
}

struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    fn new(connection: &Connection) -> Api {
        Api {
            base: format!("{}/api/v1", connection.server.trim_end_matches('/')),
            token: connection.token.clone(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, String), String> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("Poseidon-Token", token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| format!("cannot reach {}: {error}", self.base))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|error| format!("reading the answer failed: {error}"))?;
        Ok((status, text))
    }

    /// Sends a request and insists on a 2xx answer.
    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<String, String> {
        let (status, text) = self.send(method.clone(), path, body).await?;
        if (200..300).contains(&status) {
            Ok(text)
        } else {
            Err(format!("{method} {path} answered {status}: {text}"))
        }
    }
}

async fn put(args: PutArgs) -> Result<(), String> {
    let api = Api::new(&args.connection);
    let body = json!({
        "prewarmingPoolSize": args.pool, "cpuLimit": args.cpu, "memoryLimit": args.memory,
        "image": args.image, "networkAccess": args.network, "exposedPorts": args.ports,
    });
    let path = format!("/execution-environments/{}", args.id);
    let (status, text) = api.send(reqwest::Method::PUT, &path, Some(body)).await?;
    match status {
        201 => println!("environment {} created", args.id),
        204 => println!("environment {} updated", args.id),
        _ => return Err(format!("PUT {path} answered {status}: {text}")),
    }
    Ok(())
}

async fn list(connection: Connection) -> Result<(), String> {
    let api = Api::new(&connection);
    let text = api
        .expect(reqwest::Method::GET, "/execution-environments", None)
        .await?;
    let value: Value = serde_json::from_str(&text).map_err(|error| error.to_string())?;
    println!(
        "{:>6}  {:>5}  {:>7}  {:>8}  {:<7}  image",
        "id", "pool", "cpu MHz", "mem MB", "network"
    );
    for environment in value["executionEnvironments"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "{:>6}  {:>5}  {:>7}  {:>8}  {:<7}  {}",
            environment["id"].to_string(),
            environment["prewarmingPoolSize"].to_string(),
            environment["cpuLimit"].to_string(),
            environment["memoryLimit"].to_string(),
            environment["networkAccess"].to_string(),
            environment["image"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

async fn stats(connection: Connection) -> Result<(), String> {
    let api = Api::new(&connection);
    let text = api
        .expect(
            reqwest::Method::GET,
            "/statistics/execution-environments",
            None,
        )
        .await?;
    let value: Value = serde_json::from_str(&text).map_err(|error| error.to_string())?;
    println!("{:>6}  {:>6}  {:>5}  {:>5}", "id", "target", "idle", "used");
    for stats in value.as_object().into_iter().flat_map(|map| map.values()) {
        println!(
            "{:>6}  {:>6}  {:>5}  {:>5}",
            stats["id"].to_string(),
            stats["prewarmingPoolSize"].to_string(),
            stats["idleRunners"].to_string(),
            stats["usedRunners"].to_string()
        );
    }
    Ok(())
}

/// Claims a runner, waiting (bounded) while the pool is still warming up: right after `env put`
/// the runners are being started and the server answers `NOMAD_OVERLOAD` at once.
async fn claim(api: &Api, args: &RunArgs) -> Result<Value, String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(args.wait);
    let mut told = false;
    loop {
        let body = json!({"executionEnvironmentId": args.environment, "inactivityTimeout": 300});
        let (status, text) = api
            .send(reqwest::Method::POST, "/runners", Some(body))
            .await?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|error| error.to_string());
        }
        let overloaded = status == 500 && text.contains("NOMAD_OVERLOAD");
        if !overloaded || tokio::time::Instant::now() >= deadline {
            return Err(format!("POST /runners answered {status}: {text}"));
        }
        if !told {
            eprintln!(
                "trident: no idle runner yet, waiting up to {} s for the pool…",
                args.wait
            );
            told = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn execute(args: RunArgs) -> Result<u8, String> {
    let api = Api::new(&args.connection);
    let claim = claim(&api, &args).await?;
    let runner = claim["runnerId"]
        .as_str()
        .ok_or_else(|| format!("no runner id in {claim}"))?
        .to_owned();
    let result = execute_on(&api, &runner, &args).await;
    // Give the runner back whatever happened.
    if let Err(error) = api
        .expect(reqwest::Method::DELETE, &format!("/runners/{runner}"), None)
        .await
    {
        eprintln!("trident: releasing {runner} failed: {error}");
    }
    result
}

async fn execute_on(api: &Api, runner: &str, args: &RunArgs) -> Result<u8, String> {
    let mut copy = Vec::new();
    for file in &args.files {
        let content = std::fs::read(file)
            .map_err(|error| format!("cannot read {}: {error}", file.display()))?;
        let name = file
            .file_name()
            .ok_or_else(|| format!("{} has no file name", file.display()))?
            .to_string_lossy()
            .into_owned();
        copy.push(json!({
            "path": name,
            "content": base64::engine::general_purpose::STANDARD.encode(content),
        }));
    }
    if !copy.is_empty() {
        api.expect(
            reqwest::Method::PATCH,
            &format!("/runners/{runner}/files"),
            Some(json!({"copy": copy})),
        )
        .await?;
    }
    let answer = api
        .expect(
            reqwest::Method::POST,
            &format!("/runners/{runner}/execute"),
            Some(json!({
                "command": args.command.join(" "),
                "timeLimit": args.time_limit,
                "privilegedExecution": args.privileged,
            })),
        )
        .await?;
    let answer: Value = serde_json::from_str(&answer).map_err(|error| error.to_string())?;
    let url = answer["websocketUrl"]
        .as_str()
        .ok_or_else(|| format!("no websocketUrl in {answer}"))?;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .map_err(|error| error.to_string())?;
    if let Some(token) = &api.token {
        let value = token
            .parse()
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        request.headers_mut().insert("Poseidon-Token", value);
    }
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|error| format!("cannot connect to {url}: {error}"))?;
    let (mut sink, mut stream) = socket.split();
    // This terminal's stdin, line by line, goes to the command's stdin.
    let input = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if sink
                .send(Message::Text(format!("{line}\n").into()))
                .await
                .is_err()
            {
                return;
            }
        }
        // Our stdin ended: the command's stdin is a terminal, where the end of input is
        // Ctrl-D at the start of a line (every line sent ended with a newline). Without it a
        // command that reads to the end (`cat`, `sort`) would wait until its runner times out.
        let _ = sink.send(Message::Text(END_OF_INPUT.into())).await;
    });
    let mut code = None;
    while let Some(message) = stream.next().await {
        let Ok(Message::Text(text)) = message else {
            continue;
        };
        let value: Value = serde_json::from_str(&text).map_err(|error| error.to_string())?;
        match value["type"].as_str() {
            Some("stdout") => {
                let mut out = std::io::stdout();
                let _ = out.write_all(value["data"].as_str().unwrap_or_default().as_bytes());
                let _ = out.flush();
            }
            Some("stderr") => {
                let _ = std::io::stderr()
                    .write_all(value["data"].as_str().unwrap_or_default().as_bytes());
            }
            Some("exit") => code = value["data"].as_u64().map(|code| code.min(255) as u8),
            Some("timeout") => {
                eprintln!("trident: the command timed out");
                code = Some(124);
            }
            Some("error") => {
                eprintln!("trident: {}", value["data"].as_str().unwrap_or("error"));
                code = Some(1);
            }
            _ => {}
        }
    }
    input.abort();
    let code = code.ok_or("the connection ended without an exit code")?;
    eprintln!("trident: exit code {code}");
    Ok(code)
}
