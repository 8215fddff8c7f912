//! End-to-end tests: the real `trident` binary on the local backend, driven by real HTTP
//! (reqwest) and WebSocket (tokio-tungstenite) clients, following Poseidon's e2e list
//! (`reference/poseidon.md` §10.2). Each test starts its own server process with its own state
//! directory and port, and stops it at the end.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// How long a server may take to answer `/health` after its start.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long any one WebSocket conversation may take before the test gives up.
const EXECUTION_TIMEOUT: Duration = Duration::from_secs(30);

struct Server {
    child: Child,
    base: String,
    client: reqwest::Client,
    _state: tempfile::TempDir,
}

impl Server {
    async fn start(extra: &[&str]) -> Server {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("bound").port()
        };
        let state = tempfile::tempdir().expect("a temporary directory");
        let child = Command::new(env!("CARGO_BIN_EXE_trident"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(state.path())
            .args(extra)
            .env("TRIDENT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the trident binary starts");
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}/api/v1"),
            client: reqwest::Client::new(),
            _state: state,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(response) = server.client.get(server.url("/health")).send().await
                && response.status().is_success()
            {
                return server;
            }
            assert!(Instant::now() < deadline, "the server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates an environment with `pool` runners and waits until they are idle.
    async fn environment(&self, id: u64, pool: u32, memory_mb: u32) {
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
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let stats: Value = self
                .client
                .get(self.url("/statistics/execution-environments"))
                .send()
                .await
                .expect("statistics")
                .json()
                .await
                .expect("JSON");
            if stats[id.to_string()]["idleRunners"] == json!(pool) {
                return;
            }
            assert!(Instant::now() < deadline, "the pool did not fill: {stats}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn claim(&self, environment: u64, inactivity_s: u64) -> String {
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

    async fn copy(&self, runner: &str, path: &str, content: &[u8]) -> reqwest::StatusCode {
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

    /// Runs a command over the WebSocket, sending `input` after `start`; returns every message.
    async fn run(&self, runner: &str, body: Value, input: Option<&str>) -> Conversation {
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
        let url = response["websocketUrl"].as_str().expect("a websocket URL");
        let (mut socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("the WebSocket connects");
        let mut conversation = Conversation::default();
        let started = Instant::now();
        tokio::time::timeout(EXECUTION_TIMEOUT, async {
            while let Some(message) = socket.next().await {
                match message.expect("a frame") {
                    Message::Text(text) => {
                        let value: Value = serde_json::from_str(&text).expect("JSON message");
                        if value["type"] == "start"
                            && let Some(input) = input
                        {
                            socket
                                .send(Message::Text(input.into()))
                                .await
                                .expect("stdin");
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

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM, then wait: the server stops its sandboxes as it exits.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default)]
struct Conversation {
    messages: Vec<Value>,
    close: Option<CloseCode>,
    elapsed: Duration,
}

impl Conversation {
    fn text(&self, kind: &str) -> String {
        self.messages
            .iter()
            .filter(|message| message["type"] == kind)
            .filter_map(|message| message["data"].as_str())
            .collect()
    }

    fn kinds(&self) -> Vec<&str> {
        self.messages
            .iter()
            .filter_map(|message| message["type"].as_str())
            .collect()
    }

    fn last_control(&self) -> &Value {
        self.messages
            .iter()
            .rev()
            .find(|message| !matches!(message["type"].as_str(), Some("stdout" | "stderr")))
            .expect("a control message")
    }
}

#[tokio::test]
async fn health_version_and_unknown_routes() {
    let server = Server::start(&[]).await;
    let health = server
        .client
        .get(server.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 204);
    let version: Value = server
        .client
        .get(server.url("/version"))
        .send()
        .await
        .expect("version")
        .json()
        .await
        .expect("a JSON string");
    assert!(version.is_string());
    let unknown = server
        .client
        .get(server.url("/nope"))
        .send()
        .await
        .expect("404");
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.text().await.expect("body"), "");
}

#[tokio::test]
async fn a_token_guards_every_route_but_health_and_version() {
    let server = Server::start(&["--token", "secret"]).await;
    let denied = server
        .client
        .get(server.url("/execution-environments"))
        .send()
        .await
        .expect("list");
    assert_eq!(denied.status(), 401);
    let wrong = server
        .client
        .get(server.url("/execution-environments"))
        .header("Poseidon-Token", "secreT")
        .send()
        .await
        .expect("list");
    assert_eq!(wrong.status(), 401);
    let allowed = server
        .client
        .get(server.url("/execution-environments"))
        .header("Poseidon-Token", "secret")
        .send()
        .await
        .expect("list");
    assert_eq!(allowed.status(), 200);
    let version = server
        .client
        .get(server.url("/version"))
        .send()
        .await
        .expect("version");
    assert_eq!(version.status(), 200);
}

#[tokio::test]
async fn environments_are_created_read_listed_updated_and_deleted() {
    let server = Server::start(&[]).await;
    let url = server.url("/execution-environments/42");
    let empty = server.client.put(&url).send().await.expect("put");
    assert_eq!(empty.status(), 400, "an empty body");
    let list: Value = server
        .client
        .get(server.url("/execution-environments"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    assert_eq!(list, json!({"executionEnvironments": null}));

    server.environment(42, 1, 128).await;
    let read: Value = server
        .client
        .get(&url)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("JSON");
    assert_eq!(read["id"], 42);
    for key in [
        "prewarmingPoolSize",
        "cpuLimit",
        "memoryLimit",
        "image",
        "networkAccess",
        "exposedPorts",
    ] {
        assert!(read.get(key).is_some(), "{key} in {read}");
    }
    let updated = server
        .client
        .put(&url)
        .json(&json!({"prewarmingPoolSize": 1, "cpuLimit": 150, "memoryLimit": 142, "image": "host", "networkAccess": false, "exposedPorts": null}))
        .send()
        .await
        .expect("update");
    assert_eq!(updated.status(), 204);
    let read: Value = server
        .client
        .get(&url)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        (read["cpuLimit"].clone(), read["memoryLimit"].clone()),
        (json!(150), json!(142))
    );
    let bad = server
        .client
        .put(&url)
        .json(&json!({"prewarmingPoolSize": -1, "cpuLimit": 1, "memoryLimit": 1, "image": "host", "networkAccess": false}))
        .send()
        .await
        .expect("bad put");
    assert_eq!(bad.status(), 400);

    assert_eq!(
        server
            .client
            .delete(&url)
            .send()
            .await
            .expect("delete")
            .status(),
        204
    );
    assert_eq!(
        server
            .client
            .delete(&url)
            .send()
            .await
            .expect("delete")
            .status(),
        404
    );
    assert_eq!(
        server.client.get(&url).send().await.expect("get").status(),
        404
    );
}

#[tokio::test]
async fn runners_are_claimed_and_released_with_poseidons_errors() {
    let server = Server::start(&[]).await;
    server.environment(1, 1, 128).await;
    let empty = server
        .client
        .post(server.url("/runners"))
        .send()
        .await
        .expect("claim");
    assert_eq!(empty.status(), 400);
    let unknown = server
        .client
        .post(server.url("/runners"))
        .json(&json!({"executionEnvironmentId": 9999}))
        .send()
        .await
        .expect("claim");
    assert_eq!(unknown.status(), 404);

    let runner = server.claim(1, 0).await;
    assert!(runner.starts_with("1-"), "{runner}");
    // The replacement may not be up yet; an empty pool answers at once.
    let overload = server
        .client
        .post(server.url("/runners"))
        .json(&json!({"executionEnvironmentId": 1}))
        .send()
        .await
        .expect("claim");
    if overload.status() == 500 {
        let body: Value = overload.json().await.expect("JSON");
        assert_eq!(body["errorCode"], "NOMAD_OVERLOAD");
    }

    let url = server.url(&format!("/runners/{runner}"));
    assert_eq!(
        server
            .client
            .delete(&url)
            .send()
            .await
            .expect("delete")
            .status(),
        204
    );
    assert_eq!(
        server
            .client
            .delete(&url)
            .send()
            .await
            .expect("delete")
            .status(),
        410
    );
    let bogus = server
        .client
        .delete(server.url("/runners/1-nonsense"))
        .send()
        .await
        .expect("delete");
    assert_eq!(bogus.status(), 410);
}

#[tokio::test]
async fn files_are_copied_listed_downloaded_and_confined() {
    let server = Server::start(&[]).await;
    server.environment(1, 1, 128).await;
    let runner = server.claim(1, 0).await;
    let files = server.url(&format!("/runners/{runner}/files"));
    let listing: Value = server
        .client
        .get(&files)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listing, json!({"files": []}));

    assert_eq!(server.copy(&runner, "test.txt", b"").await, 204);
    let listing: Value = server
        .client
        .get(&files)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    let entries = listing["files"].as_array().expect("files");
    assert_eq!(entries.len(), 1, "{listing}");
    assert_eq!(entries[0]["name"], "./test.txt");
    assert_eq!(entries[0]["entryType"], "-");
    assert_eq!(entries[0]["permissions"], "rwxr--r--");
    assert_eq!(entries[0]["owner"], "root");

    assert_eq!(
        server.copy(&runner, "dir/data.bin", b"Hello Trident").await,
        204
    );
    let raw = server.url(&format!("/runners/{runner}/files/raw?path=dir/data.bin"));
    let download = server.client.get(&raw).send().await.expect("download");
    assert_eq!(download.status(), 200);
    assert_eq!(download.headers()["content-length"], "13");
    assert_eq!(
        download.headers()["content-disposition"],
        "attachment; filename=\"dir/data.bin\""
    );
    assert_eq!(
        download.bytes().await.expect("body").as_ref(),
        b"Hello Trident"
    );

    let missing = server.url(&format!("/runners/{runner}/files/raw?path=missing.txt"));
    let missing = server.client.get(&missing).send().await.expect("download");
    assert_eq!(missing.status(), 424);
    let body: Value = missing.json().await.expect("JSON");
    assert_eq!(
        body["message"],
        "file not found or insufficient permissions"
    );

    assert_eq!(server.copy(&runner, "../escape.txt", b"x").await, 400);
    let gone = server
        .client
        .get(server.url("/runners/1-00000000-0000-0000-0000-000000000000/files"))
        .send()
        .await
        .expect("list");
    assert_eq!(gone.status(), 410);

    // Delete runs before copy; `cat` sees what was copied.
    let both = server
        .client
        .patch(&files)
        .json(
            &json!({"delete": ["test.txt"], "copy": [{"path": "test.txt", "content": "YWdhaW4="}]}),
        )
        .send()
        .await
        .expect("patch");
    assert_eq!(both.status(), 204);
    let cat = server
        .run(&runner, json!({"command": "cat test.txt"}), None)
        .await;
    assert_eq!(cat.text("stdout"), "again");
}

#[tokio::test]
async fn executions_stream_output_exit_codes_and_errors() {
    let server = Server::start(&[]).await;
    server.environment(1, 1, 256).await;
    let runner = server.claim(1, 0).await;

    let ok = server.run(&runner, json!({"command": "true"}), None).await;
    assert_eq!(ok.kinds(), vec!["start", "exit"]);
    assert_eq!(ok.last_control()["data"], 0);
    assert_eq!(ok.close, Some(CloseCode::Normal));

    let hello = server
        .run(&runner, json!({"command": "echo -n Hello World"}), None)
        .await;
    assert_eq!(hello.text("stdout"), "Hello World");
    assert!(!hello.kinds().contains(&"error"));

    let invalid = server
        .run(&runner, json!({"command": "cat -invalid"}), None)
        .await;
    assert!(
        invalid.text("stderr").contains("invalid option"),
        "{invalid:?}"
    );
    assert!(!invalid.text("stdout").contains("invalid option"));
    assert_eq!(invalid.last_control()["data"], 1);

    let quote = server
        .run(
            &runner,
            json!({"command": "echo 'single quotes' \"and more\""}),
            None,
        )
        .await;
    assert_eq!(quote.text("stdout"), "single quotes and more\r\n");
}

#[tokio::test]
async fn stdin_goes_through_a_terminal_and_users_differ_by_privilege() {
    let server = Server::start(&[]).await;
    server.environment(1, 1, 256).await;
    let runner = server.claim(1, 0).await;

    let head = server
        .run(
            &runner,
            json!({"command": "head -n 1"}),
            Some("Hello World!\n"),
        )
        .await;
    assert_eq!(head.text("stdout"), "Hello World!\r\nHello World!\r\n");

    let user = server.run(&runner, json!({"command": "id -u"}), None).await;
    assert_ne!(user.text("stdout").trim(), "0");
    let root = server
        .run(
            &runner,
            json!({"command": "id -u", "privilegedExecution": true}),
            None,
        )
        .await;
    assert_eq!(root.text("stdout").trim(), "0");

    let env = server
        .run(
            &runner,
            json!({"command": "env", "environment": {"hello": "world"}}),
            None,
        )
        .await;
    let output = env.text("stdout");
    assert!(output.contains("hello=world"), "{output}");
    assert!(output.contains("CODEOCEAN=true"), "{output}");
    assert!(!output.contains("NOMAD_"), "{output}");
}

#[tokio::test]
async fn a_time_limit_ends_the_execution_with_timeout() {
    let server = Server::start(&[]).await;
    server.environment(1, 1, 256).await;
    let runner = server.claim(1, 0).await;
    let slow = server
        .run(&runner, json!({"command": "sleep 4", "timeLimit": 1}), None)
        .await;
    assert_eq!(slow.last_control()["type"], "timeout");
    assert_eq!(slow.close, Some(CloseCode::Normal));
    assert!(slow.elapsed < Duration::from_secs(3), "{:?}", slow.elapsed);
    // The runner still works afterwards.
    let next = server
        .run(&runner, json!({"command": "echo -n next"}), None)
        .await;
    assert_eq!(next.text("stdout"), "next");
}

#[tokio::test]
async fn the_inactivity_timeout_destroys_the_runner_during_a_long_execution() {
    let server = Server::start(&[]).await;
    server.environment(1, 1, 256).await;
    let runner = server.claim(1, 2).await;
    let endless = server
        .run(&runner, json!({"command": "sleep infinity"}), None)
        .await;
    assert_eq!(endless.last_control()["type"], "timeout");
    assert_eq!(endless.close, Some(CloseCode::Normal));
    assert!(
        endless.elapsed < Duration::from_secs(7),
        "{:?}",
        endless.elapsed
    );
    let gone = server
        .client
        .delete(server.url(&format!("/runners/{runner}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(gone.status(), 410);
}

#[tokio::test]
async fn a_memory_breach_kills_the_process_and_the_runner_survives() {
    let server = Server::start(&[]).await;
    server.environment(1, 1, 100).await;
    let runner = server.claim(1, 0).await;
    let hog = server
        .run(
            &runner,
            json!({"command": "</dev/zero head -c 110MB | tail > /dev/null"}),
            None,
        )
        .await;
    assert_eq!(hog.text("stdout"), "");
    assert!(hog.text("stderr").contains("Killed"), "{hog:?}");
    let next = server
        .run(&runner, json!({"command": "echo -n alive"}), None)
        .await;
    assert_eq!(next.text("stdout"), "alive");
}

#[tokio::test]
async fn an_execution_id_works_once_and_only_on_its_runner() {
    let server = Server::start(&[]).await;
    server.environment(1, 2, 128).await;
    let runner = server.claim(1, 0).await;
    let other = server.claim(1, 0).await;
    let response: Value = server
        .client
        .post(server.url(&format!("/runners/{runner}/execute")))
        .json(&json!({"command": "true"}))
        .send()
        .await
        .expect("execute")
        .json()
        .await
        .expect("JSON");
    let url = response["websocketUrl"].as_str().expect("url").to_owned();
    let http = url.replace("ws://", "http://");
    let on_other = http.replace(&runner, &other);
    let wrong = server.client.get(&on_other).send().await.expect("get");
    assert_eq!(wrong.status(), 404, "another runner's execution id");
    let (socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connects");
    drop(socket);
    let again = tokio_tungstenite::connect_async(&url).await;
    assert!(
        again.is_err(),
        "a second connect with the same id must fail"
    );
}
