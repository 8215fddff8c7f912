//! Monitoring against real components: the `trident` binary writing Poseidon's InfluxDB
//! measurements to a real VictoriaMetrics (Debian's `victoria-metrics`, which speaks InfluxDB's
//! `/api/v2/write`), Prometheus' `/metrics` parsed, logs captured from the server's stderr,
//! Nomad's events as `poseidon_nomad_events` points from `trident --backend nomad` in front of the
//! fake Nomad, and readiness in front of a gated fake Nomad.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use trident_sim::nomad::FakeNomadConfig;
use trident_tests::{Launch, Series, ServedNomad, Server, VictoriaMetrics};

/// How long points may take to become visible in VictoriaMetrics (the server's batches are
/// written at least once a second).
const POINTS_TIMEOUT: Duration = Duration::from_secs(30);
/// The server's InfluxDB write timeout (`monitoring::influx::WRITE_TIMEOUT`): a request that
/// waited for a write would take about this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

async fn influx_server(vm_base: &str, extra: &[&str]) -> Server {
    let mut flags = vec![
        "--influxdb-url",
        vm_base,
        "--influxdb-org",
        "openhpi",
        "--influxdb-bucket",
        "trident",
        "--influxdb-stage",
        "test",
    ];
    flags.extend_from_slice(extra);
    Server::start_with(Launch {
        extra: &flags,
        ..Launch::default()
    })
    .await
}

/// The series of `name` whose labels include `labels`.
fn find<'a>(series: &'a [Series], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Series> {
    series
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// Exports `poseidon_*` until `ready` holds for it, or fails after [`POINTS_TIMEOUT`].
async fn poseidon_series(vm: &VictoriaMetrics, ready: impl Fn(&[Series]) -> bool) -> Vec<Series> {
    let deadline = Instant::now() + POINTS_TIMEOUT;
    loop {
        let series = vm.export(r#"{__name__=~"poseidon_.*"}"#).await;
        if ready(&series) {
            return series;
        }
        assert!(
            Instant::now() < deadline,
            "the expected points did not arrive; VictoriaMetrics has: {:#?}",
            series
                .iter()
                .map(|s| (&s.name, &s.labels, &s.values))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn one_value(series: &[Series], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(series, name, labels);
    assert_eq!(
        found.len(),
        1,
        "one series {name} with {labels:?}, found {found:#?}"
    );
    assert_eq!(found[0].values.len(), 1, "one point in {:?}", found[0]);
    found[0].values[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_execute_delete_cycle_reaches_victoria_metrics_with_poseidons_names_tags_and_values()
 {
    let vm = VictoriaMetrics::start().await;
    let server = influx_server(&vm.base(), &[]).await;
    server.environment(7, 1, 256).await;

    let runner = server.claim(7, 0).await;
    let runner_tags = [
        ("runner_id", runner.as_str()),
        ("environment_id", "7"),
        ("stage", "test"),
    ];
    // Used runners are sampled once a second: wait until the claim shows, then go on.
    poseidon_series(&vm, |series| {
        find(
            series,
            "poseidon_used_runners_count",
            &[("environment_id", "7")],
        )
        .iter()
        .any(|s| s.values.contains(&1.0))
    })
    .await;

    let content = b"print('monitored')\n";
    let body = json!({"copy": [{
        "path": "main.py",
        "content": base64::engine::general_purpose::STANDARD.encode(content),
    }]});
    let body_bytes = serde_json::to_vec(&body).expect("JSON");
    let patched = server
        .client
        .patch(server.url(&format!("/runners/{runner}/files")))
        .header("content-type", "application/json")
        .body(body_bytes.clone())
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 204);

    let run = server
        .run(&runner, json!({"command": "python3 main.py"}), None)
        .await;
    assert_eq!(run.last_control(), &json!({"type": "exit", "data": 0}));

    let download = server
        .client
        .get(server.url(&format!("/runners/{runner}/files/raw?path=main.py")))
        .send()
        .await
        .expect("download");
    assert_eq!(download.status(), 200);
    assert_eq!(download.bytes().await.expect("body").as_ref(), content);

    let deleted = server
        .client
        .delete(server.url(&format!("/runners/{runner}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 204);

    let series = poseidon_series(&vm, |series| {
        !find(series, "poseidon_deleteRunner_duration", &[]).is_empty()
            && !find(series, "poseidon_file_download_actual_length", &[]).is_empty()
            && !find(series, "poseidon_/websocket_duration", &[]).is_empty()
    })
    .await;

    // Requests: Poseidon's route names, `status`, the ids as tags, `duration` in nanoseconds.
    let claim_ns = one_value(
        &series,
        "poseidon_provideRunner_duration",
        &[&runner_tags[..], &[("status", "200")]].concat(),
    );
    assert!(
        claim_ns > 0.0 && claim_ns < 60e9,
        "claim duration {claim_ns} ns"
    );
    let put_ns = one_value(
        &series,
        "poseidon_createOrUpdate_duration",
        &[("environment_id", "7"), ("status", "201")],
    );
    assert!(put_ns > 0.0);
    let delete_ns = one_value(
        &series,
        "poseidon_deleteRunner_duration",
        &[&runner_tags[..], &[("status", "204")]].concat(),
    );
    assert!(delete_ns > 0.0);
    one_value(
        &series,
        "poseidon_/execute_duration",
        &[&runner_tags[..], &[("status", "200")]].concat(),
    );
    // The WebSocket counts over the whole execution: at least as long as running python.
    let websocket_ns = one_value(
        &series,
        "poseidon_/websocket_duration",
        &[&runner_tags[..], &[("status", "101")]].concat(),
    );
    assert!(
        websocket_ns >= run.elapsed.as_nanos() as f64 / 2.0,
        "websocket {websocket_ns} ns, execution {:?}",
        run.elapsed
    );
    // The file update's request size is its body's.
    let size = one_value(
        &series,
        "poseidon_/files_request_size",
        &[&runner_tags[..], &[("status", "204")]].concat(),
    );
    assert_eq!(size, body_bytes.len() as f64);
    // The download: expected and sent lengths.
    for field in ["expected_length", "actual_length"] {
        let length = one_value(
            &series,
            &format!("poseidon_file_download_{field}"),
            &runner_tags,
        );
        assert_eq!(length, content.len() as f64, "{field}");
    }
    // The execution was stored, then taken by its WebSocket.
    let stored = find(
        &series,
        "poseidon_nomad_executions_count",
        &[&runner_tags[..], &[("event_type", "creation")]].concat(),
    );
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].values, vec![1.0]);
    assert_eq!(
        one_value(
            &series,
            "poseidon_nomad_executions_count",
            &[&runner_tags[..], &[("event_type", "deletion")]].concat(),
        ),
        0.0
    );
    // The environment and its pool.
    assert_eq!(
        one_value(
            &series,
            "poseidon_environments_count",
            &[
                ("id", "7"),
                ("event_type", "creation"),
                ("image", "host"),
                ("cpu_limit", "100"),
                ("memory_limit", "256"),
                ("network_access", "false"),
            ],
        ),
        1.0
    );
    assert_eq!(
        one_value(
            &series,
            "poseidon_poolsize_prewarming_pool_size",
            &[("environment_id", "7")],
        ),
        1.0
    );
    // The claimed runner's start was timed when it came up.
    let startup_ns = one_value(
        &series,
        "poseidon_nomad_idle_runners_startup_duration",
        &runner_tags,
    );
    assert!(
        startup_ns > 0.0 && startup_ns < 60e9,
        "startup {startup_ns} ns"
    );
    // Every point carries the stage.
    assert!(
        series
            .iter()
            .all(|s| s.labels.get("stage").map(String::as_str) == Some("test")),
        "a point without stage=test"
    );

    // The same figures in Prometheus' exposition.
    let metrics = server.metrics().await;
    let requests = "trident_http_request_duration_seconds_count";
    assert_eq!(
        metrics.sum(requests, &[("route", "provideRunner"), ("status", "200")]),
        1.0
    );
    assert_eq!(
        metrics.sum(requests, &[("route", "/websocket"), ("status", "101")]),
        1.0
    );
    assert_eq!(
        metrics.sum("trident_executions_total", &[("environment_id", "7")]),
        1.0
    );
    assert_eq!(
        metrics.sum(
            "trident_execution_duration_seconds_count",
            &[("outcome", "exit")]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum("trident_file_upload_bytes_sum", &[]),
        body_bytes.len() as f64
    );
    assert_eq!(
        metrics.sum("trident_file_download_bytes_sum", &[]),
        content.len() as f64
    );
    assert!(
        metrics.sum(
            "trident_runner_startup_duration_seconds_count",
            &[("environment_id", "7")]
        ) >= 2.0,
        "the first runner and the claimed one's replacement came up"
    );
    assert_eq!(
        metrics.sum("trident_prewarming_pool_size", &[("environment_id", "7")]),
        1.0
    );
    assert_eq!(metrics.sum("trident_environments", &[]), 1.0);
    assert_eq!(metrics.sum("trident_ready", &[]), 1.0);
    // A point with two fields is two series in VictoriaMetrics: count the points.
    let points: usize = series
        .iter()
        .filter(|s| !s.name.ends_with("_actual_length") && !s.name.ends_with("_startup_duration"))
        .map(|s| s.values.len())
        .sum();
    // The writer counts a batch once VictoriaMetrics' answer is in: it may lag the export.
    let deadline = Instant::now() + POINTS_TIMEOUT;
    while server
        .metrics()
        .await
        .sum("trident_influxdb_points_written_total", &[])
        < points as f64
    {
        assert!(
            Instant::now() < deadline,
            "fewer points written than VictoriaMetrics holds ({points})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metrics.sum("trident_influxdb_points_dropped_total", &[]),
        0.0
    );
    assert_eq!(
        metrics.types.get("trident_http_request_duration_seconds"),
        Some(&"histogram".to_owned())
    );
    assert_eq!(
        metrics.types.get("trident_influxdb_points_written"),
        Some(&"counter".to_owned())
    );
    assert_eq!(
        metrics.types.get("trident_idle_runners"),
        Some(&"gauge".to_owned())
    );
}

/// Holds every connection it accepts without answering: an InfluxDB that hangs.
async fn black_hole(port: u16) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the stopped database's port is free");
    tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: the writer opens one connection per write at most.
        while held.len() < 64 {
            match listener.accept().await {
                Ok((socket, _)) => held.push(socket),
                Err(_) => break,
            }
        }
        std::future::pending::<()>().await;
    })
}

async fn version_latencies(server: &Server, count: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let response = server
            .client
            .get(server.url("/version"))
            .send()
            .await
            .expect("version");
        assert_eq!(response.status(), 200);
        latencies.push(started.elapsed());
    }
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_time_series_database_drops_and_counts_points_and_never_delays_requests() {
    let mut vm = VictoriaMetrics::start().await;
    // A small buffer, so that a hanging database fills it within the test's requests.
    let server = influx_server(&vm.base(), &["--influxdb-buffer-points", "32"]).await;
    server.environment(1, 1, 128).await;
    let before = version_latencies(&server, 50).await;
    let deadline = Instant::now() + POINTS_TIMEOUT;
    while server
        .metrics()
        .await
        .sum("trident_influxdb_points_written_total", &[])
        == 0.0
    {
        assert!(Instant::now() < deadline, "no point was ever written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        server
            .metrics()
            .await
            .sum("trident_influxdb_points_dropped_total", &[]),
        0.0
    );

    // The database goes away; something that accepts connections and never answers takes its
    // port, so writes hang until their timeout.
    let port = vm.port();
    vm.stop();
    let _hole = black_hole(port).await;
    // Requests go on while the first hanging write waits for its timeout; the buffer fills
    // and points are dropped. Bounded: at most 20 s or 20,000 requests.
    let started = Instant::now();
    let mut after = Vec::new();
    let mut full = 0.0;
    while full == 0.0 && started.elapsed() < Duration::from_secs(20) && after.len() < 20_000 {
        after.extend(version_latencies(&server, 50).await);
        full = server.metrics().await.sum(
            "trident_influxdb_points_dropped_total",
            &[("reason", "buffer_full")],
        );
    }
    assert!(
        full > 0.0,
        "no point dropped for a full buffer after {} requests in {:?}",
        after.len(),
        started.elapsed()
    );
    let slowest = after.iter().max().copied().unwrap_or_default();
    let slowest_before = before.iter().max().copied().unwrap_or_default();
    // A request that waited for the writer would take most of a write timeout; none may. (The
    // bound is the writer's own timeout, not a performance target.)
    assert!(
        slowest < WRITE_TIMEOUT / 2,
        "a request took {slowest:?} while InfluxDB hung (before: at most {slowest_before:?})"
    );
    let claim_started = Instant::now();
    let runner = server.claim(1, 0).await;
    let claim = claim_started.elapsed();
    assert!(claim < WRITE_TIMEOUT / 2, "a claim took {claim:?}");
    let deleted = server
        .client
        .delete(server.url(&format!("/runners/{runner}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 204);

    // And the batch whose write hangs is dropped when its timeout passes.
    let deadline = Instant::now() + WRITE_TIMEOUT * 3;
    loop {
        let failed = server.metrics().await.sum(
            "trident_influxdb_points_dropped_total",
            &[("reason", "write_failed")],
        );
        if failed > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hanging write was never given up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_file_content_or_environment_value_reaches_the_logs_and_json_logs_carry_ids() {
    const TOKEN: &str = "poseidon-token-7f3a9c";
    const INFLUX_TOKEN: &str = "influx-token-51be07";
    const FILE_CONTENT: &str = "file-content-c0ffee";
    const VARIABLE_VALUE: &str = "variable-value-d15ea5e";
    // An address where nothing listens: writes fail, and their errors are logged.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("bound")
        .port();
    let influx_url = format!("http://127.0.0.1:{closed_port}");
    let server = Server::start_with(Launch {
        extra: &[
            "--token",
            TOKEN,
            "--influxdb-url",
            &influx_url,
            "--influxdb-org",
            "o",
            "--influxdb-bucket",
            "b",
            "--influxdb-token",
            INFLUX_TOKEN,
            "--log-format",
            "json",
        ],
        // Everything Trident logs, at its most verbose.
        log_filter: Some(
            "trace,hyper=info,h2=info,reqwest=info,tungstenite=info,tokio_tungstenite=info",
        ),
        capture_logs: true,
        ..Launch::default()
    })
    .await;
    let authed = |request: reqwest::RequestBuilder| request.header("Poseidon-Token", TOKEN);
    let put = authed(server.client.put(server.url("/execution-environments/3")))
        .json(&json!({
            "prewarmingPoolSize": 1, "cpuLimit": 100, "memoryLimit": 128,
            "image": "host", "networkAccess": false, "exposedPorts": null
        }))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(20);
    let runner = loop {
        let claim: Value = authed(server.client.post(server.url("/runners")))
            .json(&json!({"executionEnvironmentId": 3}))
            .send()
            .await
            .expect("claim")
            .json()
            .await
            .expect("JSON");
        if let Some(runner) = claim["runnerId"].as_str() {
            break runner.to_owned();
        }
        assert!(Instant::now() < deadline, "no runner: {claim}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let copy = json!({"copy": [{"path": "secret.txt",
        "content": base64::engine::general_purpose::STANDARD.encode(FILE_CONTENT)}]});
    let patched = authed(
        server
            .client
            .patch(server.url(&format!("/runners/{runner}/files"))),
    )
    .json(&copy)
    .send()
    .await
    .expect("patch");
    assert_eq!(patched.status(), 204);
    let execute: Value = authed(
        server
            .client
            .post(server.url(&format!("/runners/{runner}/execute"))),
    )
    .json(
        &json!({"command": "cat secret.txt; printenv SECRET_VARIABLE",
        "environment": {"SECRET_VARIABLE": VARIABLE_VALUE}}),
    )
    .send()
    .await
    .expect("execute")
    .json()
    .await
    .expect("JSON");
    let url = execute["websocketUrl"].as_str().expect("a URL");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .expect("a request");
    request
        .headers_mut()
        .insert("Poseidon-Token", TOKEN.parse().expect("a header value"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the WebSocket connects");
    let mut stdout = String::new();
    while let Some(Ok(message)) = futures_util::StreamExt::next(&mut socket).await {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if value["type"] == "stdout" {
                stdout.push_str(value["data"].as_str().unwrap_or_default());
            }
        }
    }
    // The secrets did travel: the test would see them in the logs if they were logged.
    assert!(
        stdout.contains(FILE_CONTENT) && stdout.contains(VARIABLE_VALUE),
        "{stdout:?}"
    );
    let unauthorised = server
        .client
        .get(server.url("/execution-environments"))
        .header("Poseidon-Token", "wrong-token-value")
        .send()
        .await
        .expect("list");
    assert_eq!(unauthorised.status(), 401);
    let download = authed(
        server
            .client
            .get(server.url(&format!("/runners/{runner}/files/raw?path=secret.txt"))),
    )
    .send()
    .await
    .expect("download");
    assert_eq!(download.text().await.expect("body"), FILE_CONTENT);
    let deleted = authed(
        server
            .client
            .delete(server.url(&format!("/runners/{runner}"))),
    )
    .send()
    .await
    .expect("delete");
    assert_eq!(deleted.status(), 204);
    // Let the failing InfluxDB write be attempted and logged.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let mut server = server;
    server.terminate();
    let logs = server.logs();
    let encoded = base64::engine::general_purpose::STANDARD.encode(FILE_CONTENT);
    for secret in [
        TOKEN,
        INFLUX_TOKEN,
        FILE_CONTENT,
        encoded.as_str(),
        VARIABLE_VALUE,
        "wrong-token-value",
    ] {
        assert!(
            !logs.contains(secret),
            "{secret:?} is in the logs:\n{}",
            logs.lines()
                .filter(|line| line.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    // Every line is JSON; request lines carry their route and ids as span fields.
    let lines: Vec<Value> = logs
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line:?}"))
        })
        .collect();
    assert!(lines.len() > 10, "too few log lines: {logs}");
    // `span` is the event's own span, `spans` the ones it was entered in.
    let request_spans = |line: &Value| -> Vec<BTreeMap<String, Value>> {
        line["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(std::iter::once(&line["span"]))
            .filter(|span| span["name"] == "request")
            .filter_map(|span| serde_json::from_value(span.clone()).ok())
            .collect()
    };
    let claim_logged = lines.iter().flat_map(request_spans).any(|span| {
        span.get("route") == Some(&json!("provideRunner"))
            && span.get("runner_id") == Some(&json!(runner))
            && span.get("environment_id") == Some(&json!("3"))
    });
    assert!(
        claim_logged,
        "no request span with the claim's ids:\n{logs}"
    );
    let runner_effect_logged = lines.iter().any(|line| {
        line["span"]["name"] == "runner"
            && line["span"]["environment_id"] == json!("3")
            && line["span"]["runner_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("3-"))
    });
    assert!(runner_effect_logged, "no runner span with its ids:\n{logs}");
    let write_failure_logged = lines.iter().any(|line| {
        line["fields"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("writing to InfluxDB failed"))
    });
    assert!(
        write_failure_logged,
        "the InfluxDB failure was not logged:\n{logs}"
    );
}

/// A TCP proxy to `target` that holds every connection until `open` is set.
async fn gate(
    target: String,
    open: tokio::sync::watch::Receiver<bool>,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let address = format!("http://{}", listener.local_addr().expect("bound"));
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        // Bounded: the server's Nomad client opens a handful of connections.
        for _ in 0..256 {
            let Ok((mut inbound, _)) = listener.accept().await else {
                break;
            };
            let mut open = open.clone();
            let target = target.clone();
            connections.spawn(async move {
                if open.wait_for(|open| *open).await.is_err() {
                    return;
                }
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
        while connections.join_next().await.is_some() {}
    });
    (address, task)
}

/// Whether `text` is `hh:mm:ss.nnnnnnnnn` within a minute of the UTC time of day now.
fn is_time_of_day_now(text: &str) -> bool {
    let bytes = text.as_bytes();
    let shape = bytes.len() == 18
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            2 | 5 => *byte == b':',
            8 => *byte == b'.',
            _ => byte.is_ascii_digit(),
        });
    if !shape {
        return false;
    }
    let field = |range: std::ops::Range<usize>| text[range].parse::<i64>().unwrap_or(-1);
    let seconds = field(0..2) * 3_600 + field(3..5) * 60 + field(6..8);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
        % 86_400;
    // Around midnight the difference wraps.
    let difference = (now - seconds).rem_euclid(86_400);
    difference.min(86_400 - difference) <= 60
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nomad_event_becomes_a_poseidon_nomad_events_point_and_is_counted_by_topic_and_type()
{
    let vm = VictoriaMetrics::start().await;
    let nomad = ServedNomad::start(FakeNomadConfig::default()).await;
    let server = influx_server(
        &vm.base(),
        &["--backend", "nomad", "--nomad-address", &nomad.address],
    )
    .await;
    server.environment(7, 1, 256).await;
    let runner = server.claim(7, 0).await;
    // The claimed runner's replacement comes up: more allocation events.
    server.environment_ready(7, 1).await;

    let allocations: Value = reqwest::get(format!("{}/v1/allocations", nomad.address))
        .await
        .expect("the fake answers")
        .json()
        .await
        .expect("JSON");
    let allocations = allocations.as_array().expect("a list");
    let runner_allocation = allocations
        .iter()
        .find(|allocation| allocation["JobID"] == runner.as_str())
        .and_then(|allocation| allocation["ID"].as_str())
        .expect("the claimed runner's allocation")
        .to_owned();
    let live_runner_allocations = allocations
        .iter()
        .filter(|allocation| {
            allocation["JobID"]
                .as_str()
                .is_some_and(|job| job.starts_with("7-"))
                && allocation["DesiredStatus"] == "run"
                && matches!(
                    allocation["ClientStatus"].as_str(),
                    Some("pending" | "running")
                )
        })
        .count();
    assert_eq!(
        live_runner_allocations, 2,
        "the claimed runner and its replacement"
    );

    // Every event read from the stream is a point: once the stream is quiet, the points in
    // VictoriaMetrics and the counter agree, and nothing was dropped.
    let events_name = "poseidon_nomad_events_payload";
    let deadline = Instant::now() + POINTS_TIMEOUT;
    let (series, counted) = loop {
        let series = vm.export(r#"{__name__=~"poseidon_nomad_.*"}"#).await;
        let metrics = server.metrics().await;
        let counted = metrics.sum("trident_nomad_events_total", &[]);
        let points: usize = find(&series, events_name, &[])
            .iter()
            .map(|s| s.values.len())
            .sum();
        let written = metrics.sum("trident_influxdb_points_written_total", &[]);
        if counted > 0.0 && points as f64 == counted && written > 0.0 {
            break (series, counted);
        }
        assert!(
            Instant::now() < deadline,
            "{points} poseidon_nomad_events points, {counted} events counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let event_points = find(&series, events_name, &[]);
    // Poseidon's tags: topic, type, key, the time of day, and the stage.
    let has = |topic: &str, kind: &str, key: &str| {
        event_points.iter().any(|s| {
            s.labels.get("topic").map(String::as_str) == Some(topic)
                && s.labels.get("type").map(String::as_str) == Some(kind)
                && (key.is_empty() || s.labels.get("key").map(String::as_str) == Some(key))
        })
    };
    assert!(
        has("Job", "JobRegistered", "template-7"),
        "{event_points:#?}"
    );
    assert!(has("Job", "JobRegistered", &runner), "{event_points:#?}");
    assert!(
        event_points.iter().any(|s| {
            s.labels.get("topic").map(String::as_str) == Some("Allocation")
                && s.labels.get("key") == Some(&runner_allocation)
        }),
        "no Allocation event of {runner_allocation}: {event_points:#?}"
    );
    assert!(
        has("Evaluation", "EvaluationUpdated", ""),
        "{event_points:#?}"
    );
    for point in &event_points {
        let timestamp = point.labels.get("timestamp").map(String::as_str);
        assert!(
            timestamp.is_some_and(is_time_of_day_now),
            "timestamp {timestamp:?} of {point:?}"
        );
        assert_eq!(point.labels.get("stage").map(String::as_str), Some("test"));
    }
    // The counter by topic and type matches the points with those tags.
    let metrics = server.metrics().await;
    for (topic, kind) in [
        ("Job", "JobRegistered"),
        ("Allocation", "PlanResult"),
        ("Allocation", "AllocationUpdated"),
        ("Evaluation", "EvaluationUpdated"),
    ] {
        let labelled = find(&series, events_name, &[("topic", topic), ("type", kind)])
            .iter()
            .map(|s| s.values.len())
            .sum::<usize>() as f64;
        assert!(labelled > 0.0, "no {topic}/{kind} point");
        assert_eq!(
            metrics.sum(
                "trident_nomad_events_total",
                &[("topic", topic), ("type", kind)]
            ),
            labelled,
            "{topic}/{kind}"
        );
    }
    assert_eq!(
        metrics.types.get("trident_nomad_events"),
        Some(&"counter".to_owned())
    );
    assert!(counted >= 8.0, "{counted} events for two runners");
    assert_eq!(
        metrics.sum("trident_influxdb_points_dropped_total", &[]),
        0.0
    );

    // The tracker follows both runners' allocations: the gauge, and Poseidon's two counts.
    let deadline = Instant::now() + POINTS_TIMEOUT;
    loop {
        let tracked = server
            .metrics()
            .await
            .sum("trident_nomad_tracked_jobs", &[]);
        let series = vm
            .export(r#"{__name__=~"poseidon_nomad_(jobs|allocations)_count"}"#)
            .await;
        let reached = |name: &str| {
            find(&series, name, &[("event_type", "creation")])
                .iter()
                .any(|s| s.values.contains(&(live_runner_allocations as f64)))
        };
        if tracked == live_runner_allocations as f64
            && reached("poseidon_nomad_jobs_count")
            && reached("poseidon_nomad_allocations_count")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tracked {tracked}, points {series:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(server);
    drop(nomad);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_first_recovery_while_health_answers_at_once() {
    let nomad = ServedNomad::start(FakeNomadConfig::default()).await;
    let (open_tx, open) = tokio::sync::watch::channel(false);
    let (gated, gate_task) = gate(nomad.host_port().to_owned(), open).await;

    let server = Server::start_with(Launch {
        extra: &["--backend", "nomad", "--nomad-address", &gated],
        wait_for: "/health",
        ..Launch::default()
    })
    .await;
    // Nomad does not answer yet: the server is alive, not ready.
    for _ in 0..5 {
        let ready = server
            .client
            .get(server.url("/ready"))
            .send()
            .await
            .expect("ready");
        assert_eq!(ready.status(), 503);
        let body: Value = ready.json().await.expect("JSON");
        assert_eq!(body["message"], "the first recovery has not finished");
        let health = server
            .client
            .get(server.url("/health"))
            .send()
            .await
            .expect("health");
        assert_eq!(health.status(), 204);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(server.metrics().await.sum("trident_ready", &[]), 0.0);

    open_tx.send_replace(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = server
            .client
            .get(server.url("/ready"))
            .send()
            .await
            .expect("ready")
            .status();
        if status == 204 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            Instant::now() < deadline,
            "never ready after Nomad answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.metrics().await.sum("trident_ready", &[]), 1.0);
    drop(server);
    gate_task.abort();
}

#[tokio::test]
async fn the_openapi_document_lists_the_served_routes() {
    let server = Server::start(&[]).await;
    let response = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.expect("JSON");
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    let paths = document["paths"].as_object().expect("paths");
    // Each documented GET without path parameters answers something other than 404/405.
    for (path, item) in paths {
        if item.get("get").is_none() || path.contains('{') {
            continue;
        }
        let url = format!(
            "http://{}{path}",
            server
                .url("")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .expect("host")
        );
        let status = server.client.get(&url).send().await.expect("GET").status();
        assert!(
            status != 404 && status != 405,
            "documented GET {path} answered {status}"
        );
    }
}
