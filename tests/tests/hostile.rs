//! The hostile-input suite (issue 6, item 3): the real `trident` binary on the local backend,
//! attacked over real HTTP, WebSocket and TCP connections and by the code it runs. Each test
//! asserts a clear error (a status and Poseidon's error body) or a contained outcome, and then
//! that the server is still healthy: `/health` answers and a freshly claimed runner executes a
//! command ([`assert_healthy`]). The limits these cases meet are documented in the README
//! ("Limits").

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use trident_tests::Server;

/// Starts a server with `flags` and environment 1 (pool 2, `memory_mb`), and claims a runner.
async fn server_with_runner(flags: &[&str], memory_mb: u32) -> (Server, String) {
    let server = Server::start(flags).await;
    server.environment(1, 2, memory_mb).await;
    let runner = server.claim(1, 0).await;
    (server, runner)
}

/// `/health` answers 204, and a runner claimed now (from environment 1) runs a command.
async fn assert_healthy(server: &Server) {
    let health = server
        .client
        .get(server.url("/health"))
        .send()
        .await
        .expect("/health answers");
    assert_eq!(health.status(), 204, "health after the attack");
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.statistics().await["1"]["idleRunners"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline, "no idle runner came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runner = server.claim(1, 0).await;
    let fresh = server
        .run(&runner, json!({"command": "echo -n fresh"}), None)
        .await;
    assert_eq!(
        fresh.text("stdout"),
        "fresh",
        "a fresh runner works: {fresh:?}"
    );
    let released = server
        .client
        .delete(server.url(&format!("/runners/{runner}")))
        .send()
        .await
        .expect("release");
    assert_eq!(released.status(), 204);
}

/// Asserts a Poseidon client-error body (`{"message"}`, no error code) whose message contains
/// `needle`, and returns the message.
async fn client_error(response: reqwest::Response, status: u16, needle: &str) -> String {
    assert_eq!(response.status(), status, "status");
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "Poseidon's bodies are JSON"
    );
    let body: Value = response.json().await.expect("a JSON body");
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("a message in {body}"))
        .to_owned();
    assert!(
        body.get("errorCode").is_none(),
        "client errors have no code: {body}"
    );
    assert!(
        message.contains(needle),
        "{message:?} should mention {needle:?}"
    );
    message
}

async fn patch_files(server: &Server, runner: &str, body: Vec<u8>) -> reqwest::Response {
    server
        .client
        .patch(server.url(&format!("/runners/{runner}/files")))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("patch")
}

async fn list(server: &Server, runner: &str) -> Value {
    server
        .client
        .get(server.url(&format!("/runners/{runner}/files")))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON")
}

async fn get(server: &Server, path_and_query: &str) -> reqwest::Response {
    server
        .client
        .get(server.url(path_and_query))
        .send()
        .await
        .expect("get")
}

/// The server's socket address.
fn address(server: &Server) -> SocketAddr {
    server
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches("/api/v1")
        .parse()
        .expect("host:port")
}

/// A TCP connection to the server from `source` (any address of 127.0.0.0/8 is this host).
async fn connect_from(source: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.connect(server).await
}

/// Reads what the server sends until it closes the connection or `limit` passes; `None` if it
/// did not close in time.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&received).into_owned())
}

/// Raises this test process's open-files limit to its hard limit (thousands of sockets).
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// Host processes whose command line contains `marker`.
fn host_processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
        })
        .collect()
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_with_poseidons_body() {
    let (server, runner) = server_with_runner(&["--max-body-bytes", "4096"], 128).await;
    let content = base64::engine::general_purpose::STANDARD.encode(vec![b'a'; 8192]);
    let body = serde_json::to_vec(&json!({"copy": [{"path": "big.txt", "content": content}]}))
        .expect("JSON");
    let response = patch_files(&server, &runner, body.clone()).await;
    client_error(response, 413, "larger than the limit of 4096 bytes").await;
    // Without a Content-Length (chunked): cut off at the limit all the same.
    let mut stream = TcpStream::connect(address(&server))
        .await
        .expect("connects");
    let head = format!(
        "PATCH /api/v1/runners/{runner}/files HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    for chunk in body.chunks(1000) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if stream.write_all(&framed).await.is_err() {
            break; // the server answered and closed early
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let answer = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#"{"message":"the request body is larger than the limit of 4096 bytes"}"#),
        "{answer}"
    );
    assert_eq!(list(&server, &runner).await, json!({"files": []}));
    assert_healthy(&server).await;
}

#[tokio::test]
async fn deeply_nested_json_is_refused_or_skipped_without_recursion() {
    let (server, runner) = server_with_runner(&[], 128).await;
    let depth = 1_000_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // As the whole body: a type error at the first bracket.
    for route in ["/runners", &format!("/runners/{runner}/execute")] {
        let response = server
            .client
            .post(server.url(route))
            .body(nested.clone())
            .send()
            .await
            .expect("post");
        client_error(response, 400, "invalid JSON").await;
    }
    let response = patch_files(&server, &runner, nested.clone().into_bytes()).await;
    client_error(response, 400, "invalid JSON").await;
    // Where a map is expected.
    let response = server
        .client
        .post(server.url(&format!("/runners/{runner}/execute")))
        .body(format!(r#"{{"command":"true","environment":{nested}}}"#))
        .send()
        .await
        .expect("post");
    client_error(response, 400, "invalid JSON").await;
    // In an unknown field, ignored as Go's decoder ignores it (skipped without recursion: a
    // million levels would overflow a recursive parser's stack).
    let response = server
        .client
        .post(server.url(&format!("/runners/{runner}/execute")))
        .body(format!(r#"{{"command":"echo -n skipped","x":{nested}}}"#))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    let ran = server
        .run(&runner, json!({"command": "echo -n after"}), None)
        .await;
    assert_eq!(ran.text("stdout"), "after");
    assert_healthy(&server).await;
}

#[tokio::test]
async fn invalid_base64_is_a_400_and_changes_nothing() {
    let (server, runner) = server_with_runner(&[], 128).await;
    let body = json!({"copy": [
        {"path": "good.txt", "content": "Z29vZA=="},
        {"path": "bad.txt", "content": "not*base64!"},
    ]});
    let response = patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await;
    client_error(response, 400, "\"bad.txt\" is not base64").await;
    assert_eq!(
        list(&server, &runner).await,
        json!({"files": []}),
        "not even the good file was written"
    );
    assert_healthy(&server).await;
}

#[tokio::test]
async fn invalid_utf8_in_paths_is_a_400() {
    let (server, runner) = server_with_runner(&[], 128).await;
    // Raw bytes that are not UTF-8 inside a JSON string.
    let mut raw = br#"{"copy":[{"path":""#.to_vec();
    raw.extend_from_slice(&[0xff, 0xfe]);
    raw.extend_from_slice(br#"","content":""}]}"#);
    client_error(
        patch_files(&server, &runner, raw).await,
        400,
        "invalid JSON",
    )
    .await;
    // A lone surrogate escape: valid JSON syntax, no Unicode scalar.
    let surrogate = br#"{"copy":[{"path":"a\udc80","content":""}]}"#.to_vec();
    client_error(
        patch_files(&server, &runner, surrogate).await,
        400,
        "surrogate",
    )
    .await;
    // Percent-encoded bytes that do not decode to UTF-8, in a query and in the URL's path.
    for route in [
        format!("/runners/{runner}/files/raw?path=%FF%FE"),
        format!("/runners/{runner}/files?path=a%C3"),
        format!("/runners/{runner}/files?path=..%2F%FF"),
    ] {
        client_error(get(&server, &route).await, 400, "UTF-8").await;
    }
    client_error(get(&server, "/runners/%FF/files").await, 400, "UTF-8").await;
    assert_eq!(list(&server, &runner).await, json!({"files": []}));
    assert_healthy(&server).await;
}

#[tokio::test]
async fn nul_bytes_are_refused_in_paths_commands_and_variables() {
    let (server, runner) = server_with_runner(&[], 128).await;
    let copy = json!({"copy": [{"path": "a\u{0}b", "content": ""}]});
    client_error(
        patch_files(&server, &runner, serde_json::to_vec(&copy).expect("JSON")).await,
        400,
        "not valid",
    )
    .await;
    let delete = json!({"delete": ["x\u{0}/../y"]});
    client_error(
        patch_files(&server, &runner, serde_json::to_vec(&delete).expect("JSON")).await,
        400,
        "not valid",
    )
    .await;
    client_error(
        get(&server, &format!("/runners/{runner}/files/raw?path=a%00b")).await,
        400,
        "not valid",
    )
    .await;
    client_error(
        get(&server, &format!("/runners/{runner}/files?path=%00")).await,
        400,
        "not valid",
    )
    .await;
    for (body, needle) in [
        (json!({"command": "echo a\u{0}b"}), "NUL"),
        (
            json!({"command": "env", "environment": {"A": "x\u{0}y"}}),
            "NUL",
        ),
        (
            json!({"command": "env", "environment": {"A\u{0}B": "x"}}),
            "not a valid environment variable name",
        ),
        (
            json!({"command": "env", "environment": {"A=B": "x"}}),
            "not a valid environment variable name",
        ),
    ] {
        let response = server
            .client
            .post(server.url(&format!("/runners/{runner}/execute")))
            .json(&body)
            .send()
            .await
            .expect("execute");
        client_error(response, 400, needle).await;
    }
    assert_healthy(&server).await;
}

#[tokio::test]
async fn absolute_and_dot_dot_paths_stay_inside_the_workspace_and_tmp() {
    let (server, runner) = server_with_runner(&[], 128).await;
    for path in [
        "../escape.txt",
        "a/../../escape.txt",
        "/workspace/../../etc/x",
    ] {
        let body = json!({"copy": [{"path": path, "content": "eA=="}]});
        client_error(
            patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await,
            400,
            "leaves the workspace",
        )
        .await;
    }
    // Absolute paths elsewhere are unreachable: written nowhere, read as missing.
    let body = json!({"copy": [{"path": "/etc/trident-hostile", "content": "eA=="}]});
    let response = patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await;
    assert_eq!(response.status(), 500);
    let error: Value = response.json().await.expect("JSON");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("only the workspace and /tmp")),
        "{error}"
    );
    assert!(!std::path::Path::new("/etc/trident-hostile").exists());
    for path in ["/etc/passwd", "/proc/1/environ", "/"] {
        let response = get(&server, &format!("/runners/{runner}/files/raw?path={path}")).await;
        assert_eq!(response.status(), 424, "{path}");
    }
    // /workspace/… and /tmp/… are the sandbox's own.
    let body = json!({"copy": [
        {"path": "/workspace/w.txt", "content": "dw=="},
        {"path": "/tmp/t.txt", "content": "dA=="},
    ]});
    let response = patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await;
    assert_eq!(response.status(), 204);
    let cat = server
        .run(&runner, json!({"command": "cat w.txt /tmp/t.txt"}), None)
        .await;
    assert_eq!(cat.text("stdout"), "wt");
    assert_healthy(&server).await;
}

#[tokio::test]
async fn symlinks_planted_by_the_code_do_not_lead_list_download_or_delete_out() {
    let (server, runner) = server_with_runner(&[], 128).await;
    let host = tempfile::tempdir().expect("a host directory");
    let victim = host.path().join("victim.txt");
    std::fs::write(&victim, "original").expect("write the victim");
    let plant = format!(
        "ln -s {dir} dir-link && ln -s {victim} file-link && ln -s / root-link && ln -s / /tmp/root-link && mkdir -p sub && ln -s ../../.. sub/up",
        dir = host.path().display(),
        victim = victim.display(),
    );
    let planted = server.run(&runner, json!({"command": plant}), None).await;
    assert_eq!(planted.last_control()["data"], 0, "{planted:?}");

    // List: through a link is refused; the workspace's listing shows links, never their targets.
    for path in ["dir-link/", "root-link/etc/", "sub/up/", "/tmp/root-link/"] {
        let response = get(&server, &format!("/runners/{runner}/files?path={path}")).await;
        client_error(response, 400, "through a symlink").await;
    }
    let listing = list(&server, &runner).await;
    let names: Vec<&str> = listing["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|file| file["name"].as_str())
        .collect();
    assert!(
        !names.iter().any(|name| name.contains("victim")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|name| name.contains("passwd")),
        "{names:?}"
    );
    // Download: through a link, or of a link out, is refused.
    for path in [
        "file-link",
        "dir-link/victim.txt",
        "root-link/etc/passwd",
        "sub/up/etc/passwd",
        "/tmp/root-link/etc/passwd",
    ] {
        let response = get(&server, &format!("/runners/{runner}/files/raw?path={path}")).await;
        client_error(response, 400, "through a symlink").await;
    }
    // Delete: through a link is refused; the link itself goes, its target stays.
    let body = json!({"delete": ["dir-link/victim.txt"]});
    client_error(
        patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await,
        400,
        "through a symlink",
    )
    .await;
    let body = json!({"delete": ["dir-link", "file-link", "root-link"]});
    let response = patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await;
    assert_eq!(response.status(), 204);
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "original");
    assert!(std::path::Path::new("/etc/passwd").exists());
    assert_healthy(&server).await;
}

#[tokio::test]
async fn a_file_name_of_four_kib_is_a_400() {
    let (server, runner) = server_with_runner(&[], 128).await;
    let long = "n".repeat(4096);
    let body =
        json!({"copy": [{"path": "first.txt", "content": ""}, {"path": long, "content": ""}]});
    client_error(
        patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await,
        400,
        "too long",
    )
    .await;
    assert_eq!(
        list(&server, &runner).await,
        json!({"files": []}),
        "refused before anything was written"
    );
    for route in [
        format!("/runners/{runner}/files/raw?path={long}"),
        format!("/runners/{runner}/files?path={long}"),
    ] {
        client_error(get(&server, &route).await, 400, "too long").await;
    }
    assert_healthy(&server).await;
}

#[tokio::test]
async fn a_hundred_thousand_files_in_one_update_are_refused_whole() {
    let (server, runner) = server_with_runner(&["--workspace-files", "2000"], 128).await;
    let files: Vec<Value> = (0..100_000)
        .map(|i| json!({"path": format!("many/f{i:06}"), "content": ""}))
        .collect();
    let body = serde_json::to_vec(&json!({"copy": files})).expect("JSON");
    let started = Instant::now();
    client_error(
        patch_files(&server, &runner, body).await,
        400,
        "at most 10000",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused without writing: {:?}",
        started.elapsed()
    );
    assert_eq!(list(&server, &runner).await, json!({"files": []}));
    // Under the per-update limit but over the workspace's file quota: a clear 400 too.
    let files: Vec<Value> = (0..3_000)
        .map(|i| json!({"path": format!("f{i:05}"), "content": ""}))
        .collect();
    let body = serde_json::to_vec(&json!({"copy": files})).expect("JSON");
    client_error(
        patch_files(&server, &runner, body).await,
        400,
        "quota of bytes or files",
    )
    .await;
    assert_healthy(&server).await;
}

#[tokio::test]
async fn slowloris_heads_bodies_and_idle_connections_are_cut_off() {
    let (server, runner) =
        server_with_runner(&["--header-timeout-s", "2", "--body-timeout-s", "2"], 128).await;
    let addr = address(&server);
    let started = Instant::now();
    // A hundred heads that never end, a hundred silent connections, a hundred bodies that stop.
    let mut heads = Vec::new();
    let mut silent = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..100 {
        let mut head = TcpStream::connect(addr).await.expect("connects");
        head.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("a partial head");
        heads.push(head);
        silent.push(TcpStream::connect(addr).await.expect("connects"));
        let mut body = TcpStream::connect(addr).await.expect("connects");
        let request = format!(
            "PATCH /api/v1/runners/{runner}/files HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"copy\": ["
        );
        body.write_all(request.as_bytes())
            .await
            .expect("a partial body");
        bodies.push(body);
    }
    // Others are served meanwhile.
    let health = get(&server, "/health").await;
    assert_eq!(health.status(), 204);
    for head in &mut heads {
        let answer = read_until_closed(head, Duration::from_secs(10)).await;
        assert!(answer.is_some(), "a partial head was not cut off");
    }
    for idle in &mut silent {
        let answer = read_until_closed(idle, Duration::from_secs(10)).await;
        assert_eq!(answer.as_deref(), Some(""), "an idle connection is closed");
    }
    for body in &mut bodies {
        let answer = read_until_closed(body, Duration::from_secs(10))
            .await
            .expect("a stalled body is cut off");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            answer.contains(r#"{"message":"the request body did not arrive within 2 s"}"#),
            "{answer}"
        );
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(15),
        "{elapsed:?}"
    );
    assert_healthy(&server).await;
}

#[tokio::test]
async fn thousands_of_idle_connections_meet_the_per_client_and_total_limits() {
    let files = raise_open_files_limit();
    assert!(
        files >= 4_000,
        "the test needs 4,000 open files, has {files}"
    );
    let server = Server::start(&[
        "--max-connections-per-client",
        "1000",
        "--max-connections",
        "1500",
    ])
    .await;
    server.environment(1, 2, 128).await;
    let addr = address(&server);
    // 2,000 idle connections from one client: 1,000 are held, the others refused at once.
    let hostile = Ipv4Addr::new(127, 0, 0, 2);
    let mut streams = Vec::new();
    for _ in 0..2_000 {
        streams.push(connect_from(hostile, addr).await.expect("connects"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut held = Vec::new();
    let mut refused = 0;
    for mut stream in streams {
        // A refused connection has its answer by now; an admitted one waits for a request.
        let mut first = [0u8; 4096];
        match stream.try_read(&mut first) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => held.push(stream),
            Ok(n) if n > 0 => {
                let rest = read_until_closed(&mut stream, Duration::from_secs(5))
                    .await
                    .expect("closed after the answer");
                let answer = format!("{}{rest}", String::from_utf8_lossy(&first[..n]));
                assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
                assert!(
                    answer.ends_with(
                        r#"{"message":"too many connections from 127.0.0.2: at most 1000 at once"}"#
                    ),
                    "{answer}"
                );
                refused += 1;
            }
            other => panic!("neither held nor answered: {other:?}"),
        }
    }
    assert_eq!((held.len(), refused), (1_000, 1_000));
    // Another client is served while the hostile one holds its 1,000.
    assert_healthy(&server).await;
    // A second client fills the total (1,500): beyond it, everyone gets 503.
    let second = Ipv4Addr::new(127, 0, 0, 3);
    for _ in 0..500 {
        held.push(connect_from(second, addr).await.expect("connects"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = connect_from(Ipv4Addr::new(127, 0, 0, 4), addr)
        .await
        .expect("connects");
    over.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("a request");
    let answer = read_until_closed(&mut over, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains(r#""message":"the server has its maximum of 1500 connections open""#),
        "{answer}"
    );
    // Freed connections are counted back.
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_healthy(&server).await;
}

#[tokio::test]
async fn idle_websockets_that_never_read_do_not_hold_the_server() {
    let (server, runner) = server_with_runner(&[], 128).await;
    // Fifty executions whose client never reads; half print a lot, half wait.
    let mut sockets = Vec::new();
    for i in 0..50 {
        let command = if i % 2 == 0 {
            "yes hostile-output"
        } else {
            "sleep 30"
        };
        let url = server
            .execute_url(&runner, json!({"command": command, "timeLimit": 3}))
            .await;
        let (socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("the WebSocket connects");
        sockets.push(socket);
    }
    assert_healthy(&server).await;
    // The time limit holds although nobody reads: no `yes` survives it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let check = server
            .run(
                &runner,
                json!({"command": "pgrep -c -x yes || true", "privilegedExecution": true}),
                None,
            )
            .await;
        if check.text("stdout").trim() == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "output flooders outlived their time limit: {check:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(sockets);
    assert_healthy(&server).await;
}

#[tokio::test]
async fn stdin_flooding_is_bounded_and_an_oversized_message_ends_the_execution() {
    let (server, runner) = server_with_runner(&[], 128).await;
    let before_kib = server.peak_rss_kib();
    // 32 messages of 1 MiB (the limit) of lines, as fast as the connection takes them, into a
    // command that reads them at its own pace; Ctrl-D ends its input.
    let url = server
        .execute_url(&runner, json!({"command": "cat > /dev/null; echo -n done"}))
        .await;
    let (socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connects");
    let (mut sink, mut stream) = socket.split();
    let flood = tokio::spawn(async move {
        let line = format!("{}\n", "x".repeat(1023));
        let chunk = line.repeat(1024);
        for _ in 0..32 {
            sink.send(Message::Text(chunk.clone().into()))
                .await
                .expect("the server takes stdin");
        }
        sink.send(Message::Text("\u{4}".into()))
            .await
            .expect("Ctrl-D");
        sink
    });
    let mut exit = None;
    let mut stdout = String::new();
    while let Some(Ok(message)) = stream.next().await {
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            match value["type"].as_str() {
                Some("exit") => exit = value["data"].as_u64(),
                Some("stdout") => stdout.push_str(value["data"].as_str().unwrap_or_default()),
                _ => {}
            }
        }
    }
    let _sink = flood.await.expect("the flood ends");
    assert_eq!(exit, Some(0), "the command ran to its end");
    assert!(stdout.ends_with("done"), "{} bytes of stdout", stdout.len());
    let after_kib = server.peak_rss_kib();
    assert!(
        after_kib < before_kib + 48 * 1024,
        "peak RSS grew from {before_kib} KiB to {after_kib} KiB under 32 MiB of stdin"
    );
    // One message over the limit closes the WebSocket (1009) and ends the command.
    let url = server
        .execute_url(&runner, json!({"command": "cat > /dev/null"}))
        .await;
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connects");
    let big = "y".repeat(1024 * 1024 + 1);
    let _ = socket.send(Message::Text(big.into())).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut close = None;
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Close(frame)) => {
                    close = frame.map(|frame| u16::from(frame.code));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        close
    })
    .await
    .expect("the oversized message ends the WebSocket");
    assert_eq!(ended, Some(1009), "message too big");
    assert_healthy(&server).await;
}

#[tokio::test]
async fn output_flooding_ends_at_the_output_limit_with_an_error() {
    let (server, runner) = server_with_runner(&["--max-output-bytes", "10000000"], 128).await;
    let before_kib = server.peak_rss_kib();
    // A client that reads as fast as it can, while another one asks for /health.
    let health_latency = async {
        let mut slowest = Duration::ZERO;
        for _ in 0..10 {
            let started = Instant::now();
            let health = get(&server, "/health").await;
            assert_eq!(health.status(), 204);
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slowest
    };
    let (flood, slowest) = tokio::join!(
        server.run(&runner, json!({"command": "yes hostile"}), None),
        health_latency
    );
    assert!(
        slowest < Duration::from_secs(1),
        "/health took {slowest:?} during the flood"
    );
    let received = flood.text("stdout").len();
    assert!(
        (9_000_000..=10_000_000).contains(&received),
        "{received} bytes before the cut"
    );
    let last = flood.last_control();
    assert_eq!(last["type"], "error", "{last}");
    assert_eq!(
        last["data"],
        "the output exceeded the limit of 10000000 bytes; the command was killed"
    );
    eprintln!(
        "{received} bytes of output in {:?}; /health at most {slowest:?}",
        flood.elapsed
    );
    // stderr counts too.
    let stderr = server
        .run(&runner, json!({"command": "yes hostile >&2"}), None)
        .await;
    assert_eq!(stderr.last_control()["type"], "error");
    // The flooder is gone.
    let check = server
        .run(
            &runner,
            json!({"command": "pgrep -c -x yes || true", "privilegedExecution": true}),
            None,
        )
        .await;
    assert_eq!(check.text("stdout").trim(), "0", "{check:?}");
    let after_kib = server.peak_rss_kib();
    assert!(
        after_kib < before_kib + 48 * 1024,
        "peak RSS grew from {before_kib} KiB to {after_kib} KiB"
    );
    assert_healthy(&server).await;
}

/// The sandbox's `pids.current` (its cgroup's process count), wherever the pids controller is.
fn sandbox_pids(runner: &str) -> Option<u64> {
    [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(|mount| format!("{mount}/trident/{runner}/pids.current"))
    .find_map(|path| std::fs::read_to_string(path).ok())
    .and_then(|text| text.trim().parse().ok())
}

#[tokio::test]
async fn a_fork_bomb_stays_under_the_process_limit() {
    let (server, runner) = server_with_runner(&[], 256).await;
    let url = server
        .execute_url(
            &runner,
            json!({"command": "bomb() { bomb | bomb & }; bomb; sleep 10", "timeLimit": 4}),
        )
        .await;
    let (socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connects");
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let pids = sandbox_pids(&runner).expect("the sandbox's pids cgroup (cgroup v1 or v2)");
        peak = peak.max(pids);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(peak > 100, "the bomb forked: {peak}");
    assert!(peak <= 512, "the process limit holds: {peak}");
    assert_healthy(&server).await;
    drop(socket);
    // The bomb's runner recovers once its execution is killed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let after = server
            .run(&runner, json!({"command": "echo -n calm"}), None)
            .await;
        if after.text("stdout") == "calm" {
            break;
        }
        assert!(Instant::now() < deadline, "{after:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_memory_bomb_is_killed_and_the_runner_survives() {
    let (server, runner) = server_with_runner(&[], 128).await;
    let before_kib = server.peak_rss_kib();
    let bomb = server
        .run(
            &runner,
            json!({"command": "python3 -c 'b = [bytearray(16 << 20) for _ in range(200)]'"}),
            None,
        )
        .await;
    assert_eq!(
        bomb.last_control()["data"],
        137,
        "killed by the OOM killer: {bomb:?}"
    );
    let after = server
        .run(&runner, json!({"command": "echo -n alive"}), None)
        .await;
    assert_eq!(after.text("stdout"), "alive");
    assert!(server.peak_rss_kib() < before_kib + 16 * 1024);
    assert_healthy(&server).await;
}

#[tokio::test]
async fn filling_the_workspace_meets_the_quota() {
    let (server, runner) = server_with_runner(&["--workspace-bytes", "20000000"], 256).await;
    let fill = server
        .run(
            &runner,
            json!({"command": "head -c 50M /dev/zero > big; echo $?; head -c 50M /dev/zero > /tmp/big; echo $?; du -sb big /tmp/big | cut -f1"}),
            None,
        )
        .await;
    assert!(
        fill.text("stderr").contains("No space left on device"),
        "{fill:?}"
    );
    let lines: Vec<String> = fill
        .text("stdout")
        .lines()
        .map(|line| line.trim().to_owned())
        .collect();
    assert_eq!(&lines[..2], ["1", "1"], "{lines:?}");
    let held: u64 = lines[2..]
        .iter()
        .filter_map(|line| line.parse::<u64>().ok())
        .sum();
    // tmpfs rounds its size up to whole pages.
    assert!(held <= 20_000_000 + 4096, "{held} bytes held");
    // The file API meets the same quota with a clear error.
    let content = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 1_000_000]);
    let body = json!({"copy": [{"path": "more.bin", "content": content}]});
    client_error(
        patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await,
        400,
        "no space left",
    )
    .await;
    // Freed space is usable again.
    let body =
        json!({"delete": ["big", "/tmp/big"], "copy": [{"path": "more.bin", "content": content}]});
    let response = patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await;
    assert_eq!(response.status(), 204);
    assert_healthy(&server).await;
}

#[tokio::test]
async fn host_secrets_the_server_environment_and_its_configuration_stay_out_of_reach() {
    // A configuration file where an administrator might put it: readable by everyone on the host.
    let dir = tempfile::tempdir_in("/var/tmp").expect("a directory under /var/tmp");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let config = dir.path().join("trident.toml");
    std::fs::write(&config, "nomad_token = \"hostile-secret-4711\"\n").expect("write");
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let config = config.display().to_string();
    let (server, runner) = server_with_runner(&["--config", &config], 128).await;
    let server_pid = server.pid();
    for privileged in [false, true] {
        let probe = format!(
            "cat /etc/shadow; cat {config}; cat /proc/{server_pid}/environ; grep -l TRIDENT_LOG /proc/[0-9]*/environ; grep -rl hostile-secret-4711 /proc/[0-9]*/cmdline /proc/[0-9]*/environ; true"
        );
        let run = server
            .run(
                &runner,
                json!({"command": probe, "privilegedExecution": privileged}),
                None,
            )
            .await;
        let stdout = run.text("stdout");
        assert!(!stdout.contains("root:"), "/etc/shadow was read: {stdout}");
        assert!(
            !stdout.contains("hostile-secret"),
            "the configuration was read: {stdout}"
        );
        assert!(
            !stdout.contains("TRIDENT_LOG"),
            "the server's environment was read"
        );
        let stderr = run.text("stderr");
        assert!(
            stderr.contains("/etc/shadow: Permission denied"),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("{config}: Permission denied")),
            "{stderr}"
        );
    }
    // The file API reaches neither.
    for path in ["/etc/shadow", config.as_str()] {
        let response = get(&server, &format!("/runners/{runner}/files/raw?path={path}")).await;
        assert_eq!(response.status(), 424, "{path}");
    }
    assert_healthy(&server).await;
}

/// This host's first non-loopback IPv4 address (a UDP "connect" sends nothing).
fn host_address() -> Ipv4Addr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
    socket.connect("192.0.2.1:9").expect("a route");
    match socket.local_addr().expect("an address").ip() {
        IpAddr::V4(address) => address,
        IpAddr::V6(_) => panic!("an IPv4 address"),
    }
}

#[tokio::test]
async fn the_network_is_unreachable_without_network_access() {
    // The server listens on every address so that a sandbox with network access reaches it.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("a port");
    let port = listener.local_addr().expect("bound").port();
    let target = format!("{}:{port}", host_address());
    let (server, runner) = server_with_runner(&[], 128).await;
    let connect = |host: &str| {
        format!("timeout 5 bash -c 'exec 3<>/dev/tcp/{host}' && echo connected || echo refused")
    };
    let host_ip = target.replace(':', "/");
    for host in [host_ip.as_str(), &format!("127.0.0.1/{port}")] {
        let run = server
            .run(&runner, json!({"command": connect(host)}), None)
            .await;
        assert_eq!(run.text("stdout").trim(), "refused", "{host}: {run:?}");
    }
    // The control: with network access, the same connection works.
    let response = server
        .client
        .put(server.url("/execution-environments/2"))
        .json(
            &json!({"prewarmingPoolSize": 1, "cpuLimit": 100, "memoryLimit": 128,
            "image": "host", "networkAccess": true, "exposedPorts": null}),
        )
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 201);
    server.environment_ready(2, 1).await;
    let open = server.claim(2, 0).await;
    let accept = std::thread::spawn(move || listener.accept().is_ok());
    let run = server
        .run(&open, json!({"command": connect(&host_ip)}), None)
        .await;
    assert_eq!(run.text("stdout").trim(), "connected", "{run:?}");
    assert!(accept.join().expect("joined"));
    assert_healthy(&server).await;
}

#[tokio::test]
async fn processes_outside_the_sandbox_cannot_be_signalled() {
    let (server, runner) = server_with_runner(&[], 128).await;
    let mut bystander = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("a host process");
    let targets = format!("{} {} {}", server.pid(), bystander.id(), std::process::id());
    let attack = format!("for pid in {targets}; do kill -9 $pid; done; kill -9 -1; echo survived");
    let run = server
        .run(
            &runner,
            json!({"command": attack, "privilegedExecution": true}),
            None,
        )
        .await;
    // `kill -9 -1` kills the shell itself: everything it can reach is in its sandbox.
    assert!(run.text("stderr").contains("No such process"), "{run:?}");
    assert_eq!(
        bystander.try_wait().expect("waits"),
        None,
        "the host process lives"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    let after = server
        .run(&runner, json!({"command": "echo -n still"}), None)
        .await;
    assert_eq!(after.text("stdout"), "still", "the sandbox's init survived");
    assert_healthy(&server).await;
}

#[tokio::test]
async fn no_process_outlives_its_execution_or_its_runner() {
    let (server, runner) = server_with_runner(&[], 128).await;
    let marker = format!("trident-hostile-{}", std::process::id());
    // Background processes, a new session, nohup: all in the execution's cgroup.
    let escape = |tag: &str| {
        format!(
            "(exec -a {marker}-{tag}-a sleep 1000) & setsid bash -c '(exec -a {marker}-{tag}-b sleep 1000) &' ; nohup bash -c 'exec -a {marker}-{tag}-c sleep 1000' >/dev/null 2>&1 & disown"
        )
    };
    let wait_for = |count: usize, what: &'static str| {
        let marker = marker.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let found = host_processes_with(&marker);
                if found.len() == count {
                    return;
                }
                assert!(Instant::now() < deadline, "{what}: {found:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // An execution that starts them and exits takes them along.
    let url = server
        .execute_url(
            &runner,
            json!({"command": format!("{}; sleep 2", escape("x"))}),
        )
        .await;
    let (socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connects");
    wait_for(3, "the daemons did not start").await;
    wait_for(0, "outlived their execution").await;
    drop(socket);
    // A runner destroyed under a running execution takes everything along.
    let url = server
        .execute_url(
            &runner,
            json!({"command": format!("{}; sleep 1000", escape("y"))}),
        )
        .await;
    let (socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connects");
    wait_for(3, "the daemons did not start").await;
    let released = server
        .client
        .delete(server.url(&format!("/runners/{runner}")))
        .send()
        .await
        .expect("release");
    assert_eq!(released.status(), 204);
    wait_for(0, "outlived the runner").await;
    drop(socket);
    assert_healthy(&server).await;
}

#[tokio::test]
async fn one_runner_cannot_reach_another_runners_workspace() {
    let (server, a) = server_with_runner(&[], 128).await;
    let b = server.claim(1, 0).await;
    let secret = format!("hostile-secret-{}", std::process::id());
    assert_eq!(server.copy(&a, "secret.txt", secret.as_bytes()).await, 204);
    let state = server.state_dir().display().to_string();
    let a_host = format!("{state}/{a}/workspace/secret.txt");
    let probe = format!(
        "ls -a {state}; cat {a_host}; ln -s {a_host} link; cat link; cat /proc/[0-9]*/root/workspace/secret.txt; grep -rs {secret} /tmp /workspace; true"
    );
    for privileged in [false, true] {
        let run = server
            .run(
                &b,
                json!({"command": probe, "privilegedExecution": privileged}),
                None,
            )
            .await;
        assert!(!run.text("stdout").contains(&secret), "{run:?}");
        assert!(
            !run.text("stdout").contains(&a),
            "the state dir is hidden: {run:?}"
        );
    }
    // The file API of one runner does not reach the other's files either.
    for path in [
        format!("../{a}/workspace/secret.txt"),
        format!("/workspace/../../{a}/workspace/secret.txt"),
        "link".to_owned(),
        a_host.clone(),
    ] {
        let response = get(&server, &format!("/runners/{b}/files/raw?path={path}")).await;
        assert!(
            matches!(response.status().as_u16(), 400 | 424),
            "{path}: {}",
            response.status()
        );
        assert!(!response.text().await.expect("body").contains(&secret));
    }
    // The owner still reads it.
    let own = get(&server, &format!("/runners/{a}/files/raw?path=secret.txt")).await;
    assert_eq!(own.text().await.expect("body"), secret);
    assert_healthy(&server).await;
}

/// The Nomad backend, against `trident-sim`'s fake Nomad over real TCP: where paths and
/// commands travel as arguments of commands run in an allocation.
mod nomad {
    use super::*;
    use trident_sim::nomad::{FakeNomad, FakeNomadConfig};

    async fn server() -> (FakeNomad, Server, String) {
        let nomad = FakeNomad::new(FakeNomadConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = format!("http://{}", listener.local_addr().expect("bound"));
        let serving = nomad.clone();
        tokio::spawn(async move { serving.serve(listener).await });
        let server = Server::start(&["--backend", "nomad", "--nomad-address", &address]).await;
        server.environment(1, 2, 128).await;
        let runner = server.claim(1, 0).await;
        (nomad, server, runner)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shell_syntax_in_paths_round_trips_and_escapes_are_refused() {
        let (_nomad, server, runner) = server().await;
        let names = [
            "it's \"quoted\".txt",
            "$(touch pwned) `id` ;rm -rf ~.txt",
            "dir with spaces/--help",
            "-rf",
            "ü ✓ 🚀.txt",
        ];
        for (index, name) in names.iter().enumerate() {
            let content = format!("content {index}");
            assert_eq!(
                server.copy(&runner, name, content.as_bytes()).await,
                204,
                "{name}"
            );
            let raw = server
                .client
                .get(server.url(&format!("/runners/{runner}/files/raw")))
                .query(&[("path", name)])
                .send()
                .await
                .expect("download");
            assert_eq!(raw.status(), 200, "{name}");
            assert_eq!(raw.text().await.expect("body"), content, "{name}");
        }
        let listing = list(&server, &runner).await;
        let listed: Vec<&str> = listing["files"]
            .as_array()
            .expect("files")
            .iter()
            .filter_map(|file| file["name"].as_str())
            .collect();
        assert!(
            !listed
                .iter()
                .any(|name| name.contains("pwned") && !name.contains('$')),
            "no command ran: {listed:?}"
        );
        for path in ["../escape.txt", "a/../../escape.txt", "/workspace/../../x"] {
            let body = json!({"copy": [{"path": path, "content": "eA=="}]});
            let response =
                patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await;
            assert_eq!(response.status(), 400, "{path}");
        }
        let body = json!({"copy": [{"path": "a\u{0}b", "content": ""}]});
        let response =
            patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await;
        assert_eq!(response.status(), 400);
        let command = server
            .run(
                &runner,
                json!({"command": "echo -n \"it's $(not run)\"", "environment": {"X": "'; exit 3; '"}}),
                None,
            )
            .await;
        assert_eq!(command.last_control()["data"], 0, "{command:?}");
        assert_healthy(&server).await;
    }
}
