//! The monitoring side of the kit: a real VictoriaMetrics (Debian's `victoria-metrics`, which
//! accepts InfluxDB's line protocol at `/api/v2/write`) owned by the test, and a parser for the
//! server's `/metrics` exposition.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long VictoriaMetrics may take to answer `/health` after its start.
const VM_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `victoria-metrics` binary on `PATH`, or a panic that says how to get it.
fn victoria_metrics_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("victoria-metrics"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "victoria-metrics is not installed, so the monitoring tests cannot run: \
                 tests/run installs Debian's `victoria-metrics` package \
                 (apt-get install victoria-metrics)"
            )
        })
}

/// A VictoriaMetrics process on an ephemeral port with a temporary data directory; killed when
/// dropped (or by [`VictoriaMetrics::stop`]).
#[derive(Debug)]
pub struct VictoriaMetrics {
    child: Option<Child>,
    port: u16,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

/// One series of an export: its name, labels and every sample's value.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// `__name__`: the Influx measurement and field joined by `_`.
    pub name: String,
    /// Every other label (Influx tags become labels).
    pub labels: BTreeMap<String, String>,
    /// The values, oldest first.
    pub values: Vec<f64>,
}

impl VictoriaMetrics {
    /// Starts VictoriaMetrics and waits until it is healthy.
    pub async fn start() -> VictoriaMetrics {
        let binary = victoria_metrics_binary();
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("bound").port()
        };
        let data = tempfile::tempdir().expect("a temporary directory");
        let child = Command::new(binary)
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", data.path().display()))
            .arg("-loggerLevel=ERROR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("victoria-metrics starts");
        let vm = VictoriaMetrics {
            child: Some(child),
            port,
            http: reqwest::Client::new(),
            _data: data,
        };
        let deadline = Instant::now() + VM_START_TIMEOUT;
        loop {
            if let Ok(response) = vm.http.get(vm.url("/health")).send().await
                && response.status().is_success()
            {
                return vm;
            }
            assert!(
                Instant::now() < deadline,
                "victoria-metrics did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The base URL, which is what the server's `--influxdb-url` takes.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// Every series matching `selector` (e.g. `{__name__=~"poseidon_.*"}`), after making what
    /// was written searchable.
    pub async fn export(&self, selector: &str) -> Vec<Series> {
        let flushed = self
            .http
            .get(self.url("/internal/force_flush"))
            .send()
            .await
            .expect("force_flush");
        assert!(flushed.status().is_success(), "force_flush: {flushed:?}");
        let text = self
            .http
            .get(self.url("/api/v1/export"))
            .query(&[("match[]", selector)])
            .send()
            .await
            .expect("export")
            .text()
            .await
            .expect("an export body");
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let value: Value = serde_json::from_str(line).expect("an export line is JSON");
                let mut labels: BTreeMap<String, String> = value["metric"]
                    .as_object()
                    .expect("metric labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let name = labels.remove("__name__").expect("a metric name");
                let values = value["values"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|v| v.as_f64().expect("a number"))
                    .collect();
                Series {
                    name,
                    labels,
                    values,
                }
            })
            .collect()
    }

    /// Kills it; its port is free afterwards.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One sample of a `/metrics` exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric name, suffix included (`…_total`, `…_bucket`, `…_count`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed OpenMetrics text exposition.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// `# TYPE` lines: metric family → type.
    pub types: BTreeMap<String, String>,
}

impl Metrics {
    /// Parses `text`; panics (naming the line) on anything malformed, and when `# EOF` is not
    /// the last line.
    pub fn parse(text: &str) -> Metrics {
        let mut metrics = Metrics::default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.last(),
            Some(&"# EOF"),
            "the exposition ends with # EOF"
        );
        for line in &lines[..lines.len() - 1] {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (family, kind) = rest.split_once(' ').expect("# TYPE <name> <type>");
                metrics.types.insert(family.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            metrics
                .samples
                .push(parse_sample(line).unwrap_or_else(|| panic!("malformed sample: {line:?}")));
        }
        metrics
    }

    /// The samples named `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
    }

    /// The sum of the matching samples' values (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|sample| sample.value).sum()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (index, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break index,
                    other => value.push(other),
                }
            };
            labels.insert(key.trim_start_matches(',').to_owned(), value);
            rest = &after[end + 1..];
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}
