//! Configuration: defaults, then a TOML file, then `TRIDENT_…` environment variables, then
//! command-line flags, each overriding the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::limits::{self, ApiLimits, HttpLimits};
use crate::monitoring::influx::{DEFAULT_BUFFER_POINTS, InfluxConfig};

/// The default request body limit: CodeOcean has been seen sending 60 MB of files in one
/// request (Poseidon's issue #591), so 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Which backend runs the runners.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Sandboxed processes on this host (the embedded default).
    #[default]
    Local,
    /// A HashiCorp Nomad cluster.
    Nomad,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `trident`: Poseidon's API on pools of pre-warmed sandboxes.
///
/// Without a subcommand, `trident` serves. Every server flag can also be set by its environment
/// variable or in the configuration file; flags win over variables, variables over the file.
#[derive(Clone, Debug, Default, Parser)]
#[command(
    name = "trident",
    version,
    about = "Trident: Poseidon's API on pools of pre-warmed sandboxes. Without a subcommand, serves.",
    long_about = None
)]
pub struct Cli {
    /// A client command; none to serve.
    #[command(subcommand)]
    pub command: Option<crate::client::ClientCommand>,
    /// A TOML configuration file (keys as in the flags, with `_` for `-`).
    #[arg(long, env = "TRIDENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to listen for HTTP [default: 127.0.0.1:7200].
    #[arg(long, env = "TRIDENT_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Which backend runs the runners [default: local].
    #[arg(long, env = "TRIDENT_BACKEND", value_enum)]
    pub backend: Option<BackendKind>,
    /// Require this `Poseidon-Token` header on every route but /health and /version
    /// [default: none, no authentication].
    #[arg(
        long,
        env = "TRIDENT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Where the local backend keeps runner workspaces [default: a directory under the
    /// system's temporary directory].
    #[arg(long, env = "TRIDENT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// `/health` answers 503 when an environment's idle runners fall under this share of its
    /// pool [default: 0, never].
    #[arg(long, env = "TRIDENT_DEPLETING_THRESHOLD", value_name = "RATIO")]
    pub depleting_threshold: Option<f64>,
    /// Log format [default: text].
    #[arg(long, env = "TRIDENT_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Largest request body accepted; larger ones get 413 [default: 67108864, 64 MiB].
    #[arg(long, env = "TRIDENT_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Connections open at once; more are answered 503 and closed [default: 4096].
    #[arg(long, env = "TRIDENT_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections open at once from one client address; more are answered 429 and closed
    /// [default: 1024].
    #[arg(long, env = "TRIDENT_MAX_CONNECTIONS_PER_CLIENT", value_name = "N")]
    pub max_connections_per_client: Option<usize>,
    /// Seconds for a request's head to arrive; also how long an idle keep-alive connection
    /// stays open [default: 30].
    #[arg(long, env = "TRIDENT_HEADER_TIMEOUT_S", value_name = "SECONDS")]
    pub header_timeout_s: Option<u64>,
    /// Seconds for a request's body to arrive; slower bodies get 408 [default: 60].
    #[arg(long, env = "TRIDENT_BODY_TIMEOUT_S", value_name = "SECONDS")]
    pub body_timeout_s: Option<u64>,
    /// Files (delete plus copy entries) in one file update; more get 400 [default: 10000].
    #[arg(long, env = "TRIDENT_MAX_FILES_PER_UPDATE", value_name = "N")]
    pub max_files_per_update: Option<usize>,
    /// Bytes of output (stdout and stderr) one execution may send; beyond, it is killed and
    /// ends with an error message; 0 for no limit [default: 67108864, 64 MiB].
    #[arg(long, env = "TRIDENT_MAX_OUTPUT_BYTES", value_name = "BYTES")]
    pub max_output_bytes: Option<u64>,
    /// Bytes of one WebSocket message (stdin) from a client; a larger one closes the
    /// WebSocket (1009) [default: 1048576, 1 MiB].
    #[arg(
        long,
        env = "TRIDENT_MAX_WEBSOCKET_MESSAGE_BYTES",
        value_name = "BYTES"
    )]
    pub max_websocket_message_bytes: Option<usize>,
    /// Local backend: bytes each runner's workspace and /tmp may hold together (a tmpfs,
    /// needs a root server); 0 for no quota [default: 268435456, 256 MiB].
    #[arg(long, env = "TRIDENT_WORKSPACE_BYTES", value_name = "BYTES")]
    pub workspace_bytes: Option<u64>,
    /// Local backend: files and directories each runner's workspace and /tmp may hold
    /// together; 0 for no bound [default: 65536].
    #[arg(long, env = "TRIDENT_WORKSPACE_FILES", value_name = "N")]
    pub workspace_files: Option<u64>,
    /// Local backend: processes (and threads) each runner may run at once; a fork beyond
    /// fails [default: 512].
    #[arg(long, env = "TRIDENT_MAX_PROCESSES", value_name = "N")]
    pub max_processes: Option<u64>,
    /// Nomad backend: the cluster's address [default: http://127.0.0.1:4646].
    #[arg(long, env = "TRIDENT_NOMAD_ADDRESS", value_name = "URL")]
    pub nomad_address: Option<String>,
    /// Nomad backend: the ACL token sent as `X-Nomad-Token`.
    #[arg(
        long,
        env = "TRIDENT_NOMAD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub nomad_token: Option<String>,
    /// Nomad backend: the namespace of Trident's jobs [default: Nomad's `default`].
    #[arg(long, env = "TRIDENT_NOMAD_NAMESPACE", value_name = "NAME")]
    pub nomad_namespace: Option<String>,
    /// Nomad backend: an event stream that sends nothing for this long, not even Nomad's `{}`
    /// heartbeat (every 30 s), is taken for dead (a half-open connection) and reopened
    /// [default: 60].
    #[arg(
        long,
        env = "TRIDENT_NOMAD_HEARTBEAT_TIMEOUT_S",
        value_name = "SECONDS"
    )]
    pub nomad_heartbeat_timeout_s: Option<u64>,
    /// Write Poseidon's measurements to this InfluxDB 2 server (its base URL; VictoriaMetrics
    /// works too) [default: none, no InfluxDB].
    #[arg(long, env = "TRIDENT_INFLUXDB_URL", value_name = "URL")]
    pub influxdb_url: Option<String>,
    /// InfluxDB: the organisation (required with --influxdb-url).
    #[arg(long, env = "TRIDENT_INFLUXDB_ORG", value_name = "ORG")]
    pub influxdb_org: Option<String>,
    /// InfluxDB: the bucket (required with --influxdb-url).
    #[arg(long, env = "TRIDENT_INFLUXDB_BUCKET", value_name = "BUCKET")]
    pub influxdb_bucket: Option<String>,
    /// InfluxDB: the API token.
    #[arg(
        long,
        env = "TRIDENT_INFLUXDB_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub influxdb_token: Option<String>,
    /// InfluxDB: the `stage` tag of every point [default: empty].
    #[arg(long, env = "TRIDENT_INFLUXDB_STAGE", value_name = "STAGE")]
    pub influxdb_stage: Option<String>,
    /// InfluxDB: points buffered while a write is in flight; more are dropped and counted
    /// [default: 10000].
    #[arg(long, env = "TRIDENT_INFLUXDB_BUFFER_POINTS", value_name = "POINTS")]
    pub influxdb_buffer_points: Option<usize>,
}

/// The configuration file's shape; every key is optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    backend: Option<BackendKind>,
    token: Option<String>,
    state_dir: Option<PathBuf>,
    depleting_threshold: Option<f64>,
    log_format: Option<LogFormat>,
    max_body_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    header_timeout_s: Option<u64>,
    body_timeout_s: Option<u64>,
    max_files_per_update: Option<usize>,
    max_output_bytes: Option<u64>,
    max_websocket_message_bytes: Option<usize>,
    workspace_bytes: Option<u64>,
    workspace_files: Option<u64>,
    max_processes: Option<u64>,
    nomad_address: Option<String>,
    nomad_token: Option<String>,
    nomad_namespace: Option<String>,
    nomad_heartbeat_timeout_s: Option<u64>,
    influxdb_url: Option<String>,
    influxdb_org: Option<String>,
    influxdb_bucket: Option<String>,
    influxdb_token: Option<String>,
    influxdb_stage: Option<String>,
    influxdb_buffer_points: Option<usize>,
    /// Local backend: image name → root file system directory (only in the file).
    images: Option<std::collections::BTreeMap<String, PathBuf>>,
}

/// The configuration in force.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Which backend.
    pub backend: BackendKind,
    /// The required token, if any.
    pub token: Option<String>,
    /// The local backend's state directory.
    pub state_dir: PathBuf,
    /// `/health`'s depleting threshold.
    pub depleting_threshold: f64,
    /// Log format.
    pub log_format: LogFormat,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Connections and request timeouts.
    pub http: HttpLimits,
    /// Files per update, output per execution, WebSocket message size.
    pub api: ApiLimits,
    /// Local backend: bytes of each runner's workspace and /tmp together; 0 for no quota.
    pub workspace_bytes: u64,
    /// Local backend: files of each runner's workspace and /tmp together; 0 for no bound.
    pub workspace_files: u64,
    /// Local backend: processes of each runner at once (its pids cgroup, or `RLIMIT_NPROC`).
    pub max_processes: u64,
    /// The configuration file this was read from, if any: the local backend hides it from
    /// sandboxes (it may hold the API token).
    pub config_file: Option<PathBuf>,
    /// Nomad backend: address, token, namespace.
    pub nomad_address: String,
    /// Nomad backend: the ACL token.
    pub nomad_token: Option<String>,
    /// Nomad backend: the namespace.
    pub nomad_namespace: Option<String>,
    /// Nomad backend: seconds without a line on the event stream before it is reopened.
    pub nomad_heartbeat_timeout_s: u64,
    /// InfluxDB, if configured (an URL is set).
    pub influx: Option<InfluxConfig>,
    /// Local backend: image name → root file system directory; other images run on the host's
    /// root file system, read-only. Set in the configuration file's `[images]` table.
    pub images: std::collections::BTreeMap<String, PathBuf>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("the configuration file {path} is invalid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Merges the file named by the flags (or `TRIDENT_CONFIG`) under the flags and variables.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let mut config = Config::merge(cli, file)?;
        config.config_file = cli.config.clone();
        Ok(config)
    }

    fn merge(cli: &Cli, file: FileConfig) -> Result<Config, ConfigError> {
        let depleting_threshold = cli
            .depleting_threshold
            .or(file.depleting_threshold)
            .unwrap_or(0.0);
        let nomad_heartbeat_timeout_s = cli
            .nomad_heartbeat_timeout_s
            .or(file.nomad_heartbeat_timeout_s)
            .unwrap_or(60);
        if nomad_heartbeat_timeout_s == 0 {
            return Err(ConfigError::Invalid(
                "nomad_heartbeat_timeout_s must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&depleting_threshold) {
            return Err(ConfigError::Invalid(format!(
                "depleting_threshold must be between 0 and 1, got {depleting_threshold}"
            )));
        }
        let influx = Config::influx(cli, &file)?;
        let (http, api) = Config::limits(cli, &file)?;
        // No "0 for none" here, unlike the workspace quota: a runner without a process limit is
        // one fork bomb away from the host's process table.
        let max_processes = cli
            .max_processes
            .or(file.max_processes)
            .unwrap_or(trident_backends::local::executor::DEFAULT_PIDS_MAX);
        if max_processes == 0 {
            return Err(ConfigError::Invalid(
                "max_processes must be at least 1".into(),
            ));
        }
        Ok(Config {
            max_processes,
            influx,
            http,
            api,
            config_file: None,
            workspace_bytes: cli
                .workspace_bytes
                .or(file.workspace_bytes)
                .unwrap_or(trident_backends::local::executor::DEFAULT_WORKSPACE_BYTES),
            workspace_files: cli
                .workspace_files
                .or(file.workspace_files)
                .unwrap_or(trident_backends::local::executor::DEFAULT_WORKSPACE_FILES),
            listen: cli
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7200))),
            backend: cli.backend.or(file.backend).unwrap_or_default(),
            token: cli
                .token
                .clone()
                .or(file.token)
                .filter(|token| !token.is_empty()),
            state_dir: cli
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| std::env::temp_dir().join("trident")),
            depleting_threshold,
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            max_body_bytes: cli
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            images: file.images.unwrap_or_default(),
            nomad_address: cli
                .nomad_address
                .clone()
                .or(file.nomad_address)
                .unwrap_or_else(|| "http://127.0.0.1:4646".to_owned()),
            nomad_token: cli.nomad_token.clone().or(file.nomad_token),
            nomad_namespace: cli.nomad_namespace.clone().or(file.nomad_namespace),
            nomad_heartbeat_timeout_s,
        })
    }
}

impl Config {
    fn influx(cli: &Cli, file: &FileConfig) -> Result<Option<InfluxConfig>, ConfigError> {
        let pick = |flag: &Option<String>, key: &Option<String>| {
            flag.clone()
                .or_else(|| key.clone())
                .filter(|value| !value.is_empty())
        };
        let Some(url) = pick(&cli.influxdb_url, &file.influxdb_url) else {
            return Ok(None);
        };
        let org = pick(&cli.influxdb_org, &file.influxdb_org);
        let bucket = pick(&cli.influxdb_bucket, &file.influxdb_bucket);
        let (Some(org), Some(bucket)) = (org, bucket) else {
            return Err(ConfigError::Invalid(
                "influxdb_url is set: influxdb_org and influxdb_bucket are required too".into(),
            ));
        };
        let buffer_points = cli
            .influxdb_buffer_points
            .or(file.influxdb_buffer_points)
            .unwrap_or(DEFAULT_BUFFER_POINTS);
        if buffer_points == 0 {
            return Err(ConfigError::Invalid(
                "influxdb_buffer_points must be at least 1".into(),
            ));
        }
        Ok(Some(InfluxConfig {
            url,
            org,
            bucket,
            token: pick(&cli.influxdb_token, &file.influxdb_token),
            stage: pick(&cli.influxdb_stage, &file.influxdb_stage).unwrap_or_default(),
            buffer_points,
        }))
    }
}

impl Config {
    fn limits(cli: &Cli, file: &FileConfig) -> Result<(HttpLimits, ApiLimits), ConfigError> {
        let at_least_one = |name: &str, value: u64| {
            if value == 0 {
                Err(ConfigError::Invalid(format!("{name} must be at least 1")))
            } else {
                Ok(value)
            }
        };
        let count = |name: &str, flag: Option<usize>, key: Option<usize>, default: usize| {
            let value = flag.or(key).unwrap_or(default);
            at_least_one(name, value as u64).map(|_| value)
        };
        let seconds = |name: &str, flag: Option<u64>, key: Option<u64>, default: Duration| {
            at_least_one(name, flag.or(key).unwrap_or(default.as_secs())).map(Duration::from_secs)
        };
        let http = HttpLimits {
            connections_max: count(
                "max_connections",
                cli.max_connections,
                file.max_connections,
                limits::DEFAULT_CONNECTIONS_MAX,
            )?,
            connections_per_client_max: count(
                "max_connections_per_client",
                cli.max_connections_per_client,
                file.max_connections_per_client,
                limits::DEFAULT_CONNECTIONS_PER_CLIENT_MAX,
            )?,
            header_timeout: seconds(
                "header_timeout_s",
                cli.header_timeout_s,
                file.header_timeout_s,
                limits::DEFAULT_HEADER_TIMEOUT,
            )?,
            body_timeout: seconds(
                "body_timeout_s",
                cli.body_timeout_s,
                file.body_timeout_s,
                limits::DEFAULT_BODY_TIMEOUT,
            )?,
            ..HttpLimits::default()
        };
        let output_bytes_max = cli
            .max_output_bytes
            .or(file.max_output_bytes)
            .unwrap_or(limits::DEFAULT_OUTPUT_BYTES_MAX);
        let api = ApiLimits {
            files_per_update_max: count(
                "max_files_per_update",
                cli.max_files_per_update,
                file.max_files_per_update,
                limits::DEFAULT_FILES_PER_UPDATE_MAX,
            )?,
            output_bytes_max: (output_bytes_max > 0).then_some(output_bytes_max),
            websocket_message_bytes_max: count(
                "max_websocket_message_bytes",
                cli.max_websocket_message_bytes,
                file.max_websocket_message_bytes,
                limits::DEFAULT_WEBSOCKET_MESSAGE_BYTES_MAX,
            )?,
        };
        Ok((http, api))
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).expect("valid TOML")
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = Config::merge(&Cli::default(), FileConfig::default()).expect("valid");
        assert_eq!(config.listen, "127.0.0.1:7200".parse().expect("addr"));
        assert_eq!(config.backend, BackendKind::Local);
        assert_eq!(config.token, None);
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli::try_parse_from(["trident", "--listen", "0.0.0.0:9000", "--token", "t"])
            .expect("valid flags");
        let config = Config::merge(
            &cli,
            file("listen = \"127.0.0.1:1\"\ntoken = \"f\"\nbackend = \"nomad\""),
        )
        .expect("valid");
        assert_eq!(config.listen, "0.0.0.0:9000".parse().expect("addr"));
        assert_eq!(config.token.as_deref(), Some("t"));
        assert_eq!(
            config.backend,
            BackendKind::Nomad,
            "unset flags fall back to the file"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<FileConfig>("listn = \"x\"").is_err());
        assert!(toml::from_str::<FileConfig>("listen = \"nonsense\"").is_err());
        let cli = Cli {
            depleting_threshold: Some(1.5),
            ..Cli::default()
        };
        assert!(matches!(
            Config::merge(&cli, FileConfig::default()),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn images_map_to_root_file_systems_from_the_file() {
        let config = Config::merge(
            &Cli::default(),
            file("[images]\n\"python:3.12\" = \"/srv/rootfs/python\"\n"),
        )
        .expect("valid");
        assert_eq!(
            config.images.get("python:3.12"),
            Some(&PathBuf::from("/srv/rootfs/python"))
        );
    }

    #[test]
    fn influxdb_is_off_without_an_url_and_needs_org_and_bucket_with_one() {
        let config = Config::merge(&Cli::default(), FileConfig::default()).expect("valid");
        assert_eq!(config.influx, None);
        let cli = Cli::try_parse_from(["trident", "--influxdb-url", "http://127.0.0.1:8086"])
            .expect("valid flags");
        assert!(matches!(
            Config::merge(&cli, FileConfig::default()),
            Err(ConfigError::Invalid(_))
        ));
        let config = Config::merge(
            &cli,
            file("influxdb_org = \"o\"\ninfluxdb_bucket = \"b\"\ninfluxdb_token = \"t\""),
        )
        .expect("valid");
        let influx = config.influx.expect("configured");
        assert_eq!(influx.url, "http://127.0.0.1:8086");
        assert_eq!((influx.org.as_str(), influx.bucket.as_str()), ("o", "b"));
        assert_eq!(influx.token.as_deref(), Some("t"));
        assert_eq!(influx.buffer_points, DEFAULT_BUFFER_POINTS);
        assert!(
            !format!("{influx:?}").contains("\"t\""),
            "the token stays out of debug output"
        );
    }

    #[test]
    fn limits_have_defaults_and_refuse_zero() {
        let config = Config::merge(&Cli::default(), FileConfig::default()).expect("valid");
        assert_eq!(config.http.connections_max, limits::DEFAULT_CONNECTIONS_MAX);
        assert_eq!(
            config.api.output_bytes_max,
            Some(limits::DEFAULT_OUTPUT_BYTES_MAX)
        );
        let cli = Cli::try_parse_from([
            "trident",
            "--max-connections-per-client",
            "7",
            "--header-timeout-s",
            "2",
            "--max-output-bytes",
            "0",
        ])
        .expect("valid flags");
        let config = Config::merge(&cli, file("max_files_per_update = 3\nworkspace_bytes = 0"))
            .expect("valid");
        assert_eq!(config.http.connections_per_client_max, 7);
        assert_eq!(config.http.header_timeout, Duration::from_secs(2));
        assert_eq!(config.api.output_bytes_max, None, "0 means no limit");
        assert_eq!(config.api.files_per_update_max, 3);
        assert_eq!(config.workspace_bytes, 0);
        assert!(matches!(
            Config::merge(&Cli::default(), file("max_connections = 0")),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn the_process_limit_has_a_default_a_flag_a_key_and_no_zero() {
        let config = Config::merge(&Cli::default(), FileConfig::default()).expect("valid");
        assert_eq!(
            config.max_processes,
            trident_backends::local::executor::DEFAULT_PIDS_MAX
        );
        let config = Config::merge(&Cli::default(), file("max_processes = 100")).expect("valid");
        assert_eq!(config.max_processes, 100);
        let cli = Cli::try_parse_from(["trident", "--max-processes", "64"]).expect("valid flags");
        let config = Config::merge(&cli, file("max_processes = 100")).expect("valid");
        assert_eq!(config.max_processes, 64, "the flag wins over the file");
        assert!(matches!(
            Config::merge(&Cli::default(), file("max_processes = 0")),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn an_empty_token_means_no_authentication() {
        let config = Config::merge(&Cli::default(), file("token = \"\"")).expect("valid");
        assert_eq!(config.token, None);
    }
}
