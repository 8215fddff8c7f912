//! The hostile-input suite (issue 6, item 3): the real `trident` binary on the local backend,
//! attacked over real HTTP, WebSocket and TCP connections and by the code it runs. Each test
//! asserts a clear error (a status and Poseidon's error body) or a contained outcome, and then
//! that the server is still healthy: `/health` answers and a freshly claimed runner executes a
//! command ([`assert_healthy`]). The limits these cases meet are documented in the README
//! ("Limits").

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use trident_tests::Server;

/// Tests that load the machine (thousands of sockets) or assert on time take this lock, so that
/// they run one at a time: the suite's tests run in parallel otherwise, and a heavy one would
/// skew the timings of another.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// The names of a listing's entries.
fn listed(listing: &Value) -> Vec<String> {
    listing["files"]
        .as_array()
        .unwrap_or_else(|| panic!("files in {listing}"))
        .iter()
        .map(|file| file["name"].as_str().unwrap_or_default().to_owned())
        .collect()
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

/// Waits (at most 30 s) until exactly `count` host processes carry `marker`.
async fn wait_for_host_processes(marker: &str, count: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = host_processes_with(marker).len();
        if found == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {found} processes, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A value of a process's `/proc/<pid>/status`, in KiB (`VmRSS:`, `VmHWM:`).
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the server's /proc status")
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("a {key} line"))
}

/// The file descriptors a process holds.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's fds")
        .count()
}

/// The CPU time a process used so far (user and system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the server's stat");
    // The fields after the command name, which may hold spaces: utime and stime are the 12th
    // and 13th of them (proc(5) fields 14 and 15).
    let after_name = &stat[stat.rfind(')').expect("(comm)") + 2..];
    let fields: Vec<u64> = after_name
        .split(' ')
        .skip(11)
        .take(2)
        .map(|field| field.parse().expect("a tick count"))
        .collect();
    fields.iter().sum()
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).expect("a positive tick rate")
}

/// A WebSocket client over a plain TCP connection.
type Socket = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Connects an execution's WebSocket from `source` and reads its `start` message. The client's
/// read buffer is small: tungstenite's default (128 KiB) times thousands of sockets would be
/// this test process's memory.
async fn websocket_from(source: Ipv4Addr, server: SocketAddr, url: &str) -> Socket {
    let stream = connect_from(source, server).await.expect("connects");
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut socket, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .expect("the WebSocket upgrades");
    let first = tokio::time::timeout(Duration::from_secs(30), socket.next())
        .await
        .expect("the first message in time");
    match first {
        Some(Ok(Message::Text(text))) => {
            let message: Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(message["type"], "start", "{message}");
        }
        other => panic!("expected the start message, got {other:?}"),
    }
    socket
}

/// Reads an execution's WebSocket until the server closes it (or `limit` passes): the types of
/// its JSON messages and the close code.
async fn rest_of(socket: &mut Socket, limit: Duration) -> (Vec<String>, Option<u16>) {
    let mut kinds = Vec::new();
    let mut close = None;
    let _ = tokio::time::timeout(limit, async {
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Text(text)) => {
                    let message: Value = serde_json::from_str(&text).expect("JSON");
                    kinds.push(message["type"].as_str().unwrap_or_default().to_owned());
                }
                Ok(Message::Close(frame)) => {
                    close = frame.map(|frame| u16::from(frame.code));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await;
    (kinds, close)
}

/// Sends `GET /api/v1/health` over a new connection from `source` and returns the answer.
async fn health_from(source: Ipv4Addr, server: SocketAddr) -> String {
    let mut stream = connect_from(source, server).await.expect("connects");
    stream
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("a request");
    read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("answered and closed")
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
async fn file_names_that_are_not_utf8_are_listed_lossily_and_cannot_be_fetched() {
    let (server, runner) = server_with_runner(&[], 128).await;
    // Names the code makes with bytes that are not UTF-8 (0xFF, 0xFE).
    let made = server
        .run(
            &runner,
            json!({"command": "touch $'bad\\xff\\xfename' && mkdir $'dir\\xff' && echo -n inside > $'dir\\xff/file.txt'"}),
            None,
        )
        .await;
    assert_eq!(made.last_control()["data"], 0, "{made:?}");
    // Listed, each bad byte shown as U+FFFD (as Poseidon's JSON encoder shows it).
    let listing = list(&server, &runner).await;
    assert_eq!(
        listed(&listing),
        [
            "./bad\u{FFFD}\u{FFFD}name",
            "./dir\u{FFFD}",
            "./dir\u{FFFD}/file.txt"
        ],
        "{listing}"
    );
    // The listed name is another name: nothing is there (424), never some other file.
    for path in ["bad%EF%BF%BD%EF%BF%BDname", "dir%EF%BF%BD/file.txt"] {
        let response = get(&server, &format!("/runners/{runner}/files/raw?path={path}")).await;
        assert_eq!(response.status(), 424, "{path}");
        let body: Value = response.json().await.expect("JSON");
        assert!(body["message"].is_string(), "{body}");
    }
    let response = get(
        &server,
        &format!("/runners/{runner}/files?path=dir%EF%BF%BD"),
    )
    .await;
    assert_eq!(response.status(), 424);
    // The real bytes cannot be asked for: a query that is not UTF-8 is refused.
    for route in [
        format!("/runners/{runner}/files/raw?path=bad%FF%FEname"),
        format!("/runners/{runner}/files?path=dir%FF"),
    ] {
        client_error(get(&server, &route).await, 400, "UTF-8").await;
    }
    // Deleting the listed name deletes nothing (a missing path is no error, as with `rm -f`).
    let body = json!({"delete": ["bad\u{FFFD}\u{FFFD}name"]});
    let response = patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await;
    assert_eq!(response.status(), 204);
    assert_eq!(listed(&list(&server, &runner).await).len(), 3);
    let inside = server
        .run(
            &runner,
            json!({"command": "cat $'dir\\xff/file.txt'"}),
            None,
        )
        .await;
    assert_eq!(
        inside.text("stdout"),
        "inside",
        "the code still reads its file"
    );
    // Deleting the workspace's contents takes them along.
    let body = json!({"delete": ["./"]});
    let response = patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await;
    assert_eq!(response.status(), 204);
    assert_eq!(list(&server, &runner).await, json!({"files": []}));
    let left = server
        .run(&runner, json!({"command": "ls -A | wc -l"}), None)
        .await;
    assert_eq!(left.text("stdout").trim(), "0", "{left:?}");
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
    // `..` in list and delete: the runner's own /tmp is one `..` above its workspace on the host.
    assert_eq!(server.copy(&runner, "/tmp/keep.txt", b"kept").await, 204);
    for path in ["..", "../", "a/../..", "../tmp/", "/workspace/../.."] {
        let response = get(&server, &format!("/runners/{runner}/files?path={path}")).await;
        client_error(response, 400, "leaves the workspace").await;
    }
    for path in [
        "../tmp/keep.txt",
        "a/../../tmp",
        "/workspace/../../tmp/keep.txt",
        "..",
    ] {
        let body = json!({"delete": [path]});
        client_error(
            patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await,
            400,
            "leaves the workspace",
        )
        .await;
    }
    let kept = get(
        &server,
        &format!("/runners/{runner}/files/raw?path=/tmp/keep.txt"),
    )
    .await;
    assert_eq!(
        kept.text().await.expect("body"),
        "kept",
        "nothing outside was touched"
    );
    // Absolute paths elsewhere are unreachable: written nowhere, read as missing. An update that
    // names one fails as Poseidon's `tar` does (500), before any of its entries is done.
    let body = json!({
        "delete": ["/tmp/keep.txt"],
        "copy": [
            {"path": "first.txt", "content": "eA=="},
            {"path": "/etc/trident-hostile", "content": "eA=="},
            {"path": "/tmp/second.txt", "content": "eA=="},
        ],
    });
    let response = patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await;
    assert_eq!(response.status(), 500);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(error["errorCode"], "UNKNOWN", "{error}");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains(
            "file copy failed: Cannot open: /etc/trident-hostile: only the workspace and /tmp"
        )),
        "{error}"
    );
    assert!(!std::path::Path::new("/etc/trident-hostile").exists());
    assert_eq!(
        list(&server, &runner).await,
        json!({"files": []}),
        "no entry of the failed update was written"
    );
    let after = server
        .run(&runner, json!({"command": "ls /tmp"}), None)
        .await;
    assert_eq!(
        after.text("stdout"),
        "keep.txt\r\n",
        "nor deleted: {after:?}"
    );
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
    // Copy: through a link is refused and writes nothing anywhere.
    let outside = format!("trident-hostile-{}", std::process::id());
    for path in [
        "dir-link/x.txt".to_owned(),
        "dir-link/new/x.txt".to_owned(),
        format!("root-link/tmp/{outside}"),
        format!("sub/up/tmp/{outside}"),
        format!("/tmp/root-link/tmp/{outside}"),
    ] {
        let body = json!({"copy": [{"path": path, "content": "eA=="}]});
        client_error(
            patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await,
            400,
            "through a symlink",
        )
        .await;
    }
    let host_entries: Vec<_> = std::fs::read_dir(host.path())
        .expect("the host directory")
        .filter_map(|entry| entry.ok().map(|entry| entry.file_name()))
        .collect();
    assert_eq!(
        host_entries,
        ["victim.txt"],
        "nothing was written through dir-link"
    );
    assert!(!std::path::Path::new("/tmp").join(&outside).exists());
    // A copy to the link itself replaces the link, not its target.
    assert_eq!(server.copy(&runner, "file-link", b"replaced").await, 204);
    let replaced = get(
        &server,
        &format!("/runners/{runner}/files/raw?path=file-link"),
    )
    .await;
    assert_eq!(replaced.text().await.expect("body"), "replaced");
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "original");
    // Delete: through a link is refused; the link itself goes, its target stays.
    let body = json!({"delete": ["dir-link/victim.txt"]});
    client_error(
        patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await,
        400,
        "through a symlink",
    )
    .await;
    let passwd = std::fs::read("/etc/passwd").expect("read /etc/passwd");
    let body =
        json!({"delete": ["dir-link", "file-link", "root-link", "sub/up", "/tmp/root-link"]});
    let response = patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await;
    assert_eq!(response.status(), 204);
    // The links are gone (`sub` stays, empty), their targets are intact.
    assert_eq!(listed(&list(&server, &runner).await), ["./sub"]);
    let tmp = get(&server, &format!("/runners/{runner}/files?path=/tmp/")).await;
    assert_eq!(
        listed(&tmp.json().await.expect("JSON")),
        Vec::<String>::new()
    );
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "original");
    assert_eq!(std::fs::read("/etc/passwd").expect("read"), passwd);
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
    // Under the per-update limit but over the workspace's file quota: a clear 400 too. Files are
    // written in the update's order until the quota is used up, and those stay (the quota is
    // found out by writing; Poseidon's `tar` also keeps what it extracted before a failure).
    let files: Vec<Value> = (0..3_000)
        .map(|i| json!({"path": format!("f{i:05}"), "content": ""}))
        .collect();
    let body = serde_json::to_vec(&json!({"copy": files})).expect("JSON");
    client_error(
        patch_files(&server, &runner, body).await,
        400,
        "no space left for \"f0",
    )
    .await;
    let written = listed(&list(&server, &runner).await);
    let expected: Vec<String> = (0..written.len()).map(|i| format!("./f{i:05}")).collect();
    assert_eq!(
        written, expected,
        "the first entries of the update, in order"
    );
    // The quota counts the workspace's and /tmp's directories too.
    assert!(
        (1_900..2_000).contains(&written.len()),
        "{} files under a quota of 2000",
        written.len()
    );
    eprintln!(
        "{} of 3000 files written under a quota of 2000",
        written.len()
    );
    // Deleting frees the quota at once.
    let body = json!({"delete": ["./"], "copy": [{"path": "after.txt", "content": ""}]});
    let response = patch_files(&server, &runner, serde_json::to_vec(&body).expect("JSON")).await;
    assert_eq!(response.status(), 204);
    assert_eq!(listed(&list(&server, &runner).await), ["./after.txt"]);
    assert_healthy(&server).await;
}

#[tokio::test]
async fn slowloris_heads_bodies_and_idle_connections_are_cut_off() {
    let _alone = ONE_AT_A_TIME.lock().await;
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
        // hyper closes a head that is late without an answer.
        let answer = read_until_closed(head, Duration::from_secs(10)).await;
        assert_eq!(answer.as_deref(), Some(""), "a partial head is cut off");
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

/// Sends `start`, then one byte of `trickle` a second, on a new connection, until the server
/// closes it (at most `limit`): when it closed (from the first byte), what it answered and how
/// many trickled bytes were sent.
async fn trickle(
    server: SocketAddr,
    start: &[u8],
    trickle: &[u8],
    limit: Duration,
) -> (Duration, String, usize) {
    let mut stream = TcpStream::connect(server).await.expect("connects");
    let started = Instant::now();
    stream.write_all(start).await.expect("the start");
    let mut sent = 0;
    let mut received = Vec::new();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut buffer = [0u8; 4096];
    loop {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            },
            _ = tick.tick() => {
                assert!(started.elapsed() < limit, "the connection outlived {limit:?}");
                // A write after the server closed may fail; the read sees the end.
                if stream.write_all(&trickle[sent % trickle.len()..][..1]).await.is_ok() {
                    sent += 1;
                }
            }
        }
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&received).into_owned(),
        sent,
    )
}

#[tokio::test]
async fn slowloris_trickling_a_byte_a_second_is_cut_at_the_deadline() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (server, runner) =
        server_with_runner(&["--header-timeout-s", "2", "--body-timeout-s", "2"], 128).await;
    let addr = address(&server);
    // A byte a second keeps each connection busy for longer than the 2 s deadlines: if a byte
    // restarted the deadline, the connection would live as long as the trickle (10 s here).
    let limit = Duration::from_secs(10);
    let head = || {
        trickle(
            addr,
            b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n",
            b"X-Slow: aaaaaaaaaaaaaaaaaaaa",
            limit,
        )
    };
    let body_head = format!(
        "PATCH /api/v1/runners/{runner}/files HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    let body = || {
        trickle(
            addr,
            body_head.as_bytes(),
            b"{\"copy\": [                     ",
            limit,
        )
    };
    let (heads, bodies) = tokio::join!(
        futures_util::future::join_all((0..20).map(|_| head())),
        futures_util::future::join_all((0..20).map(|_| body())),
    );
    for (closed_after, answer, sent) in heads {
        // Cut at the deadline, after the second or third byte; hyper does not answer a late head.
        assert!(
            closed_after >= Duration::from_millis(1_900) && closed_after < Duration::from_secs(5),
            "a trickled head was closed after {closed_after:?} ({sent} bytes trickled)"
        );
        assert!(sent <= 4, "{sent} bytes trickled");
        assert_eq!(answer, "", "no answer to a late head");
    }
    for (closed_after, answer, sent) in bodies {
        assert!(
            closed_after >= Duration::from_millis(1_900) && closed_after < Duration::from_secs(5),
            "a trickled body was cut after {closed_after:?} ({sent} bytes trickled)"
        );
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            answer.contains(r#"{"message":"the request body did not arrive within 2 s"}"#),
            "{answer}"
        );
    }
    assert_eq!(list(&server, &runner).await, json!({"files": []}));
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
    // The time limit holds although nobody reads: neither a `yes` nor a `sleep` survives it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let check = server
            .run(
                &runner,
                json!({"command": "pgrep -c -x 'yes|sleep' || true", "privilegedExecution": true}),
                None,
            )
            .await;
        if check.text("stdout").trim() == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "executions outlived their time limit: {check:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(sockets);
    assert_healthy(&server).await;
}

#[tokio::test]
async fn upgraded_websockets_count_toward_the_connection_limits() {
    let (server, runner) = server_with_runner(
        &[
            "--max-connections-per-client",
            "8",
            "--max-connections",
            "12",
        ],
        128,
    )
    .await;
    let addr = address(&server);
    let execution = json!({"command": "sleep 1000", "timeLimit": 60});
    // Eight upgraded WebSockets from one client, each running its command: the client's limit.
    let hostile = Ipv4Addr::new(127, 0, 0, 2);
    let mut sockets = Vec::new();
    for _ in 0..8 {
        let url = server.execute_url(&runner, execution.clone()).await;
        sockets.push(websocket_from(hostile, addr, &url).await);
    }
    // The ninth connection from it is refused before anything is read.
    let mut ninth = connect_from(hostile, addr).await.expect("connects");
    let answer = read_until_closed(&mut ninth, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.ends_with(r#"{"message":"too many connections from 127.0.0.2: at most 8 at once"}"#),
        "{answer}"
    );
    // Another client is served meanwhile.
    assert_healthy(&server).await;
    // WebSockets from a second client fill the total (12, the test's own HTTP connection from
    // 127.0.0.1 among them); the next connection gets 503.
    let second = Ipv4Addr::new(127, 0, 0, 3);
    let mut more = Vec::new();
    let refusal = loop {
        assert!(more.len() <= 4, "more than 12 connections were admitted");
        let url = server.execute_url(&runner, execution.clone()).await;
        let mut stream = connect_from(second, addr).await.expect("connects");
        // A refused connection is answered at once; an admitted one waits for its request.
        if let Some(answer) = read_until_closed(&mut stream, Duration::from_secs(1)).await {
            break answer;
        }
        let (mut socket, _) = tokio_tungstenite::client_async(url.as_str(), stream)
            .await
            .expect("the WebSocket upgrades");
        let first = socket.next().await;
        assert!(
            matches!(&first, Some(Ok(Message::Text(text))) if text.contains("start")),
            "{first:?}"
        );
        more.push(socket);
    };
    assert!(!more.is_empty(), "the second client got no WebSocket");
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    assert!(
        refusal.contains(r#""message":"the server has its maximum of 12 connections open""#),
        "{refusal}"
    );
    // Closed WebSockets give their places back.
    for mut socket in sockets.into_iter().chain(more) {
        let _ = socket.close(None).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = health_from(hostile, addr).await;
        if answer.starts_with("HTTP/1.1 204") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "127.0.0.2 is still refused: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_healthy(&server).await;
}

/// Upgraded, idle execution WebSockets one client holds at once: 32 runners of 64 executions
/// (the local backend's executions per runner), each running a `sleep`. Measured before choosing
/// (debug build, the 2-core machine shared with other builds, load ~20): 2,048 took 22 s to open
/// 32 at a time, and held 44 KiB of the server's memory and 4 of its file descriptors each (157
/// KiB before the server's WebSocket read buffer went from tungstenite's 128 KiB to 16 KiB),
/// about 400 MB of the host's in all (sandboxes, processes, terminals). Twice as many would take
/// twice as long, and 4,096 terminals is the kernel's default for the whole host (`pty/max`).
const IDLE_WEBSOCKETS: usize = 2_048;
/// Executions a local runner runs at once (`local::init::MAX_EXECUTIONS`).
const EXECUTIONS_PER_RUNNER: usize = 64;
/// When every idle execution's time limit ends, counted from the start of the opening, which
/// must fit before it (22 s measured).
const IDLE_HOLD: Duration = Duration::from_secs(50);
/// Server memory an idle WebSocket may hold: twice what was measured.
const IDLE_WEBSOCKET_KIB_MAX: u64 = 96;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_websockets_stay_within_bounds_and_all_close_at_their_time_limit() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let files = raise_open_files_limit();
    assert!(
        files >= IDLE_WEBSOCKETS as u64 + 1_000,
        "the test needs {} open files, has {files}",
        IDLE_WEBSOCKETS + 1_000
    );
    // The client's limit is exactly the sockets it opens, so that one more is refused.
    let per_client = IDLE_WEBSOCKETS.to_string();
    let server = Server::start(&[
        "--max-connections-per-client",
        &per_client,
        "--max-connections",
        "4096",
    ])
    .await;
    server.environment(1, 2, 128).await;
    let runner_count = IDLE_WEBSOCKETS / EXECUTIONS_PER_RUNNER;
    server.environment(2, runner_count as u32, 128).await;
    let mut runners = Vec::new();
    for _ in 0..runner_count {
        runners.push(server.claim(2, 0).await);
    }
    // Claimed runners are all this needs: no refill of 32 more sandboxes.
    let resized = server
        .client
        .put(server.url("/execution-environments/2"))
        .json(
            &json!({"prewarmingPoolSize": 0, "cpuLimit": 100, "memoryLimit": 128,
            "image": "host", "networkAccess": false, "exposedPorts": null}),
        )
        .send()
        .await
        .expect("put");
    assert_eq!(resized.status(), 204);
    let pid = server.pid();
    let rss_before_kib = status_kib(pid, "VmRSS:");
    let fds_before = open_fds(pid);
    let marker = format!("trident-idle-{}", std::process::id());
    let addr = address(&server);
    let hostile = Ipv4Addr::new(127, 0, 0, 2);
    let server = Arc::new(server);
    let opening = Instant::now();
    let ends_at = opening + IDLE_HOLD;
    let mut openers = Vec::new();
    for runner in runners {
        let server = Arc::clone(&server);
        let command = format!("exec -a {marker} sleep 1000");
        openers.push(tokio::spawn(async move {
            let mut sockets = Vec::new();
            for _ in 0..EXECUTIONS_PER_RUNNER {
                // Every time limit ends at `ends_at`: each gets what is left of the hold.
                let left_s = ends_at
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
                    .ceil() as u64;
                assert!(
                    left_s > 5,
                    "opening the WebSockets took longer than {IDLE_HOLD:?}"
                );
                let url = server
                    .execute_url(&runner, json!({"command": command, "timeLimit": left_s}))
                    .await;
                sockets.push(websocket_from(hostile, addr, &url).await);
            }
            sockets
        }));
    }
    let mut sockets = Vec::new();
    for opener in openers {
        sockets.extend(opener.await.expect("a runner's WebSockets opened"));
    }
    let opened_in = opening.elapsed();
    assert_eq!(sockets.len(), IDLE_WEBSOCKETS);
    // All held at once, each with its command running.
    wait_for_host_processes(&marker, IDLE_WEBSOCKETS, "the idle executions").await;
    let rss_held_kib = status_kib(pid, "VmRSS:");
    let per_socket_kib = rss_held_kib.saturating_sub(rss_before_kib) / IDLE_WEBSOCKETS as u64;
    let idle_ticks = {
        let before = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_secs(2)).await;
        cpu_ticks(pid) - before
    };
    eprintln!(
        "{IDLE_WEBSOCKETS} idle WebSockets opened in {opened_in:?}; server RSS {rss_before_kib} -> {rss_held_kib} KiB ({per_socket_kib} KiB each), {} fds (from {fds_before}), {idle_ticks} CPU ticks in 2 s",
        open_fds(pid)
    );
    assert!(
        per_socket_kib < IDLE_WEBSOCKET_KIB_MAX,
        "{per_socket_kib} KiB per idle WebSocket"
    );
    assert!(
        idle_ticks < ticks_per_second(),
        "idle WebSockets kept the server busy: {idle_ticks} ticks in 2 s"
    );
    // They count toward the client's connections: one more is refused.
    let mut one_more = connect_from(hostile, addr).await.expect("connects");
    let answer = read_until_closed(&mut one_more, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.ends_with(&format!(
            r#"{{"message":"too many connections from 127.0.0.2: at most {IDLE_WEBSOCKETS} at once"}}"#
        )),
        "{answer}"
    );
    // Another client is served.
    assert_healthy(&server).await;
    // At the time limit, each one gets `timeout` and a normal close, though its client never
    // read: messages wait in the socket's buffers.
    let closing_limit = ends_at.saturating_duration_since(Instant::now()) + Duration::from_secs(30);
    let closings: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| tokio::spawn(async move { rest_of(&mut socket, closing_limit).await }))
        .collect();
    let mut endings = std::collections::BTreeMap::new();
    for closing in closings {
        *endings
            .entry(closing.await.expect("read to the end"))
            .or_insert(0) += 1;
    }
    assert_eq!(
        endings,
        std::collections::BTreeMap::from([(
            (vec!["timeout".to_owned()], Some(1000)),
            IDLE_WEBSOCKETS
        )]),
        "how the idle WebSockets ended"
    );
    // Cleaned up: no command, no descriptor, no connection place left behind.
    wait_for_host_processes(&marker, 0, "the idle executions after their time limit").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_fds(pid) > fds_before + 16 {
        assert!(
            Instant::now() < deadline,
            "the server holds {} fds, {fds_before} before",
            open_fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = health_from(hostile, addr).await;
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    let peak_kib = server.peak_rss_kib();
    assert!(
        peak_kib < rss_before_kib + IDLE_WEBSOCKETS as u64 * IDLE_WEBSOCKET_KIB_MAX + 32 * 1024,
        "peak RSS {peak_kib} KiB, {rss_before_kib} KiB before"
    );
    assert_healthy(&server).await;
}

/// Bytes of the stdin flood: eight times [`FLOOD_RSS_MARGIN_KIB`], so that a server that
/// buffered it would fail. 256 MiB took 5 s (debug build).
const STDIN_FLOOD_MIB: usize = 256;
/// How much the server's peak memory may grow under a flood of stdin or output.
const FLOOD_RSS_MARGIN_KIB: u64 = 32 * 1024;

#[tokio::test]
async fn stdin_flooding_is_bounded_and_an_oversized_message_ends_the_execution() {
    let (server, runner) = server_with_runner(&[], 128).await;
    let before_kib = server.peak_rss_kib();
    // Messages of 1 MiB (the limit), as fast as the connection takes them, into a command that
    // reads them at its own pace. Its terminal is raw and silent first: a cooked one would echo
    // the flood back as output (256 MiB, over the output limit), and its lines are limited.
    let command = format!(
        "stty raw -echo; echo -n ready; head -c {} > /dev/null; echo -n done",
        STDIN_FLOOD_MIB << 20
    );
    let url = server
        .execute_url(&runner, json!({"command": command}))
        .await;
    let (socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connects");
    let (sink, mut stream) = socket.split();
    let mut sink = Some(sink);
    let mut exit = None;
    let mut stdout = String::new();
    let mut flood = None;
    while let Some(Ok(message)) = stream.next().await {
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            match value["type"].as_str() {
                Some("exit") => exit = value["data"].as_u64(),
                Some("stdout") => stdout.push_str(value["data"].as_str().unwrap_or_default()),
                _ => {}
            }
        }
        if flood.is_none() && stdout.contains("ready") {
            let mut sink = sink.take().expect("flooded once");
            flood = Some(tokio::spawn(async move {
                let chunk = "x".repeat(1024 * 1024);
                for _ in 0..STDIN_FLOOD_MIB {
                    sink.send(Message::Text(chunk.clone().into()))
                        .await
                        .expect("the server takes stdin");
                }
                sink
            }));
        }
    }
    let _sink = flood
        .expect("the command got ready")
        .await
        .expect("the flood ends");
    assert_eq!(exit, Some(0), "the command ran to its end");
    assert_eq!(stdout, "readydone", "nothing of the flood came back");
    let after_kib = server.peak_rss_kib();
    assert!(
        after_kib < before_kib + FLOOD_RSS_MARGIN_KIB,
        "peak RSS grew from {before_kib} KiB to {after_kib} KiB under {STDIN_FLOOD_MIB} MiB of stdin"
    );
    // One message over the limit closes the WebSocket (1009) and ends the command.
    let url = server
        .execute_url(
            &runner,
            json!({"command": "echo -n ready; cat > /dev/null"}),
        )
        .await;
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connects");
    // Sent once `cat` runs.
    while let Some(Ok(message)) = socket.next().await {
        if matches!(&message, Message::Text(text) if text.contains("ready")) {
            break;
        }
    }
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
    // The command is stopped with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let check = server
            .run(
                &runner,
                json!({"command": "pgrep -c -x cat || true", "privilegedExecution": true}),
                None,
            )
            .await;
        if check.text("stdout").trim() == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cat outlived its WebSocket: {check:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_healthy(&server).await;
}

#[tokio::test]
async fn output_flooding_ends_at_the_output_limit_with_an_error() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (server, runner) = server_with_runner(&["--max-output-bytes", "10000000"], 128).await;
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
    // Memory under a flood: `an_output_flood_waits_for_a_stalled_reader…`, whose flood is not
    // cut at 10 MB.
    assert_healthy(&server).await;
}

/// A command that writes 64 KiB at a time as fast as its terminal takes them and keeps the count
/// of bytes written in `/tmp/written`.
const COUNTING_FLOOD: &str = "python3 -c '
import os
chunk = b\"y\" * 65536
written = 0
while True:
    written += os.write(1, chunk)
    with open(\"/tmp/written\", \"w\") as counter:
        counter.write(str(written))
'";
/// How far a command's output may run ahead of its client: the terminal's buffer, the
/// execution's queue (64 events of at most 8 KiB) and the sockets' buffers on both ends (4 MB
/// measured).
const OUTPUT_AHEAD_BYTES_MAX: u64 = 16 << 20;
/// How long the client of the output flood reads nothing.
const OUTPUT_STALL: Duration = Duration::from_secs(5);

/// Bytes `COUNTING_FLOOD` wrote so far in `runner`.
async fn flood_written(server: &Server, runner: &str) -> u64 {
    let count = server
        .run(runner, json!({"command": "cat /tmp/written"}), None)
        .await;
    count
        .text("stdout")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a byte count: {count:?}"))
}

#[tokio::test]
async fn an_output_flood_waits_for_a_stalled_reader_and_holds_no_memory() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // A total far beyond what is written here: back-pressure and the time limit hold this flood.
    let (server, runner) = server_with_runner(&["--max-output-bytes", "1073741824"], 128).await;
    let pid = server.pid();
    let before_kib = server.peak_rss_kib();
    let url = server
        .execute_url(&runner, json!({"command": COUNTING_FLOOD, "timeLimit": 10}))
        .await;
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connects");
    // The client reads nothing: the command is held once the buffers between them are full. A
    // server that took the output anyway (to buffer it) would drain it at 12 MB/s or more (a
    // client that reads as fast as it can gets that much from the debug build), 60 MB in the
    // stall, and would spend half a core on it.
    let ticks = cpu_ticks(pid);
    tokio::time::sleep(OUTPUT_STALL).await;
    let stalled_ticks = cpu_ticks(pid) - ticks;
    assert_eq!(get(&server, "/health").await.status(), 204);
    let written_stalled = flood_written(&server, &runner).await;
    assert!(
        written_stalled > 0 && written_stalled < OUTPUT_AHEAD_BYTES_MAX,
        "{written_stalled} bytes written while the client read nothing"
    );
    // Then it reads slowly (a message a millisecond) until the time limit.
    let ticks = cpu_ticks(pid);
    let mut received = 0u64;
    let mut last = Value::Null;
    while let Some(Ok(message)) = socket.next().await {
        match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).expect("JSON");
                if value["type"] == "stdout" {
                    received += value["data"].as_str().unwrap_or_default().len() as u64;
                } else {
                    last = value;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let reading_ticks = cpu_ticks(pid) - ticks;
    assert_eq!(last["type"], "timeout", "{last}");
    let written = flood_written(&server, &runner).await;
    eprintln!(
        "output flood: {written_stalled} bytes written in a {OUTPUT_STALL:?} stall ({stalled_ticks} server CPU ticks), {written} in all, {received} read slowly ({reading_ticks} ticks)"
    );
    // The command never ran further ahead of its reader than the buffers between them (the
    // count lags the last write by up to one chunk).
    assert!(
        received <= written + 65_536 && written.saturating_sub(received) < OUTPUT_AHEAD_BYTES_MAX,
        "{written} bytes written, {received} read"
    );
    assert!(
        stalled_ticks < ticks_per_second(),
        "a stalled flood cost the server {stalled_ticks} CPU ticks in {OUTPUT_STALL:?}"
    );
    let after_kib = server.peak_rss_kib();
    assert!(
        after_kib < before_kib + FLOOD_RSS_MARGIN_KIB,
        "peak RSS grew from {before_kib} KiB to {after_kib} KiB"
    );
    let check = server
        .run(
            &runner,
            json!({"command": "pgrep -c -x python3 || true", "privilegedExecution": true}),
            None,
        )
        .await;
    assert_eq!(check.text("stdout").trim(), "0", "{check:?}");
    assert_healthy(&server).await;
}

/// A client's stdin flood: a message of [`LATE_FLOOD_MESSAGE_BYTES`] (lines of 1 KiB) every
/// [`LATE_FLOOD_INTERVAL`], at most [`LATE_FLOOD_MESSAGES`] (6.25 MiB in 4 s or more): it
/// outruns a command that reads no input and goes on past the end of the execution, at a pace
/// the server drops well within its bounds after the end (16 MiB, the 5 s it waits for the
/// client's close frame).
const LATE_FLOOD_MESSAGES: usize = 400;
const LATE_FLOOD_MESSAGE_BYTES: usize = 16 * 1024;
const LATE_FLOOD_INTERVAL: Duration = Duration::from_millis(10);

/// What a client that floods stdin while it reads late hears at the end.
#[derive(Debug)]
struct LateReader {
    /// The JSON messages other than output, in order.
    controls: Vec<Value>,
    /// The close code, if a close frame came.
    close: Option<u16>,
    /// The read error that ended the connection instead of a close frame, if one did.
    error: Option<String>,
}

/// How long a late reader waits before each message it reads.
const LATE_READ_PAUSE: Duration = Duration::from_millis(1);

/// Runs `body` over a WebSocket whose client floods stdin from the start, reads nothing for
/// `stall`, and then reads a message a millisecond: the command's output waits in the sockets'
/// buffers, and the final message behind it, when the execution ends. A server that closes the
/// connection then, with stdin unread, resets it, and the reset throws away what the server had
/// not sent yet: the client reads output up to the reset and never the final message.
async fn flood_stdin_and_read_late(
    server: &Server,
    runner: &str,
    body: Value,
    stall: Duration,
) -> LateReader {
    let url = server.execute_url(runner, body).await;
    let (socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connects");
    let (mut sink, mut stream) = socket.split();
    let flood = tokio::spawn(async move {
        let line = format!("{}\n", "x".repeat(1023));
        let chunk = line.repeat(LATE_FLOOD_MESSAGE_BYTES / line.len());
        for _ in 0..LATE_FLOOD_MESSAGES {
            // Refused once the server's close frame came, or the connection is gone.
            if sink
                .send(Message::Text(chunk.clone().into()))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(LATE_FLOOD_INTERVAL).await;
        }
    });
    tokio::time::sleep(stall).await;
    let mut reader = LateReader {
        controls: Vec::new(),
        close: None,
        error: None,
    };
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(message) = stream.next().await {
            match message {
                Ok(Message::Text(text)) => {
                    let value: Value = serde_json::from_str(&text).expect("JSON");
                    if !matches!(value["type"].as_str(), Some("stdout" | "stderr")) {
                        reader.controls.push(value);
                    }
                }
                Ok(Message::Close(frame)) => {
                    reader.close = frame.map(|frame| u16::from(frame.code));
                    break;
                }
                Ok(_) => {}
                Err(error) => {
                    reader.error = Some(error.to_string());
                    break;
                }
            }
            tokio::time::sleep(LATE_READ_PAUSE).await;
        }
    })
    .await;
    assert!(read.is_ok(), "the execution ended within 60 s: {reader:?}");
    // The flood ends when the server stops taking input (at the latest when it closes).
    let flooded = tokio::time::timeout(Duration::from_secs(30), flood).await;
    assert!(flooded.is_ok(), "the flood ended within 30 s of the close");
    reader
}

/// How many times each ending is tried: the server without the drain lost the final message on
/// the first try nearly always.
const LATE_READER_ROUNDS: usize = 3;

/// What an execution killed by `--max-output-bytes 1000000` says, start to end.
fn output_limit_ending() -> Value {
    json!([
        {"type": "start"},
        {"type": "error", "data": "the output exceeded the limit of 1000000 bytes; the command was killed"}
    ])
}

/// Runs `request` [`LATE_READER_ROUNDS`] times with a client that floods stdin and reads late;
/// each round must end with exactly the `expected` control messages, a close 1000 and no
/// read error (a reset would have cost the client the final message).
async fn floods_end_with(server: &Server, runner: &str, request: Value, expected: Value) {
    for round in 0..LATE_READER_ROUNDS {
        let reader =
            flood_stdin_and_read_late(server, runner, request.clone(), Duration::from_millis(200))
                .await;
        assert_eq!(
            Value::Array(reader.controls.clone()),
            expected,
            "round {round}: {reader:?}"
        );
        assert_eq!(reader.close, Some(1000), "round {round}: {reader:?}");
        assert_eq!(reader.error, None, "round {round}");
    }
}

#[tokio::test]
async fn a_client_flooding_stdin_gets_the_output_limit_error_before_the_close() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (server, runner) = server_with_runner(&["--max-output-bytes", "1000000"], 128).await;
    floods_end_with(
        &server,
        &runner,
        json!({"command": "yes flood"}),
        output_limit_ending(),
    )
    .await;
    assert_healthy(&server).await;
}

#[tokio::test]
async fn a_client_flooding_stdin_gets_the_timeout_before_the_close() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (server, runner) = server_with_runner(&[], 128).await;
    // `cat` takes the flood (`<&0`: a background job's input is /dev/null otherwise), so that
    // the interrupt usually finds room in the terminal's input and the command ends at once:
    // the server then closes while the client still reads the output ahead of the final
    // message.
    floods_end_with(
        &server,
        &runner,
        json!({"command": "stty -echo; cat <&0 > /dev/null & yes flood", "timeLimit": 1}),
        json!([{"type": "start"}, {"type": "timeout"}]),
    )
    .await;
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
    let _alone = ONE_AT_A_TIME.lock().await;
    // Under the default (512), so that the bomb shows the setting applies.
    let (server, runner) = server_with_runner(&["--max-processes", "200"], 256).await;
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
    assert!(peak <= 200, "the process limit holds: {peak}");
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
    // The greps print what they find (`file:match`). Their patterns do not match themselves:
    // `[t]` matches `t`, not the `[t]` in the probe's own command line.
    let probe = format!(
        "cat /etc/shadow; cat {config}; cat /proc/{server_pid}/environ; grep -a -o 'TRIDENT_LO[G]=[^[:cntrl:]]*' /proc/[0-9]*/environ; grep -a -o 'hostile-secre[t]-4711' /proc/[0-9]*/cmdline /proc/[0-9]*/environ; true"
    );
    // The control: planted in the probe's own environment, both greps find what they look for.
    let planted = server
        .run(
            &runner,
            json!({"command": probe, "environment": {"TRIDENT_LOG": "planted", "PLANTED": "hostile-secret-4711"}}),
            None,
        )
        .await;
    let found = planted.text("stdout");
    assert!(found.contains("TRIDENT_LOG=planted"), "{planted:?}");
    assert!(found.contains(":hostile-secret-4711"), "{planted:?}");
    for privileged in [false, true] {
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
            "the server's environment was read: {stdout}"
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
    use trident_sim::nomad::FakeNomadConfig;
    use trident_tests::ServedNomad;

    /// The fake (serving until dropped), a `trident --backend nomad` in front of it, and a
    /// runner claimed from a pool of 2.
    async fn server(flags: &[&str]) -> (ServedNomad, Server, String) {
        let nomad = ServedNomad::start(FakeNomadConfig::default()).await;
        let mut args = vec!["--backend", "nomad", "--nomad-address", &nomad.address];
        args.extend_from_slice(flags);
        let server = Server::start(&args).await;
        server.environment(1, 2, 128).await;
        let runner = server.claim(1, 0).await;
        (nomad, server, runner)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shell_syntax_in_paths_round_trips_and_escapes_are_refused() {
        let (_nomad, server, runner) = server(&[]).await;
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
                json!({"command": "echo -n \"it's $(not run)\"; printenv X", "environment": {"X": "'; exit 3; '"}}),
                None,
            )
            .await;
        assert_eq!(command.last_control()["data"], 0, "{command:?}");
        // The command and the variable arrive as written (the fake's shell expands nothing, so
        // `$(not run)` stays); the variable's quotes ended nothing.
        assert_eq!(
            command.text("stdout"),
            "it's $(not run)'; exit 3; '\n",
            "{command:?}"
        );
        assert_healthy(&server).await;
    }

    /// The case the hostile suite first met the reset in: `cat` echoes a stdin flood past the
    /// output limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_flooding_stdin_past_the_output_limit_gets_the_error_before_the_close() {
        let _alone = ONE_AT_A_TIME.lock().await;
        let (_nomad, server, runner) = server(&["--max-output-bytes", "1000000"]).await;
        floods_end_with(
            &server,
            &runner,
            json!({"command": "cat"}),
            output_limit_ending(),
        )
        .await;
        assert_healthy(&server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stdin_comes_back_whole_and_the_output_and_message_limits_hold() {
        let (_nomad, server, runner) = server(&["--max-output-bytes", "1000000"]).await;
        // Stdin reaches the command (the fake's `cat` copies it; no terminal, so no echo).
        let echoed = server
            .run(
                &runner,
                json!({"command": "cat", "timeLimit": 2}),
                Some("hostile input\n"),
            )
            .await;
        assert_eq!(echoed.text("stdout"), "hostile input\n", "{echoed:?}");
        assert_eq!(echoed.last_control()["type"], "timeout", "{echoed:?}");
        // Output past the total is cut, with the same error.
        let flood = server
            .run(
                &runner,
                json!({"command": "head -c 50000000 /dev/zero"}),
                None,
            )
            .await;
        let received = flood.text("stdout").len();
        assert!(
            (900_000..=1_000_000).contains(&received),
            "{received} bytes before the cut"
        );
        assert_eq!(
            flood.last_control()["data"],
            "the output exceeded the limit of 1000000 bytes; the command was killed",
            "{:?}",
            flood.kinds()
        );
        // A stdin flood under the output limit comes back whole: 14 messages of 64,000 bytes
        // (stdin goes to Nomad in frames of 2,048). One past the limit:
        // `a_client_flooding_stdin_past_the_output_limit_gets_the_error_before_the_close`.
        let url = server
            .execute_url(&runner, json!({"command": "cat", "timeLimit": 5}))
            .await;
        let (socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connects");
        let (mut sink, mut stream) = socket.split();
        let flood = tokio::spawn(async move {
            let chunk = "x".repeat(64_000);
            for _ in 0..14 {
                sink.send(Message::Text(chunk.clone().into()))
                    .await
                    .expect("the server takes stdin");
            }
            sink
        });
        let mut last = Value::Null;
        let mut echoed = 0;
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Text(text) = message {
                let value: Value = serde_json::from_str(&text).expect("JSON");
                if value["type"] == "stdout" {
                    echoed += value["data"].as_str().unwrap_or_default().len();
                } else {
                    last = value;
                }
            }
        }
        let _sink = flood.await.expect("the flood ends");
        assert_eq!(echoed, 14 * 64_000, "every byte of stdin came back once");
        assert_eq!(last["type"], "timeout", "{last}");
        // One message over the WebSocket limit closes with 1009 here too.
        let url = server
            .execute_url(&runner, json!({"command": "cat", "timeLimit": 30}))
            .await;
        let (mut socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connects");
        let _ = socket
            .send(Message::Text("y".repeat(1024 * 1024 + 1).into()))
            .await;
        let mut close = None;
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Close(frame) = message {
                close = frame.map(|frame| u16::from(frame.code));
                break;
            }
        }
        assert_eq!(close, Some(1009));
        assert_healthy(&server).await;
    }
}
