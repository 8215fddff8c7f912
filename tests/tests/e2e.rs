//! End-to-end tests: the real `trident` binary driven by real HTTP and WebSocket clients,
//! following Poseidon's e2e list (`reference/poseidon.md` §10.2) and named after the behaviour
//! each pins. Each test starts its own server.
//!
//! Every behaviour that does not depend on the backend is one body, `async fn name(backend)`,
//! run twice by [`on_both_backends!`]: `name::local` on the local backend and `name::nomad` with
//! `--backend nomad` against the fake Nomad of `trident-sim` over TCP ([`Backend`]). The fake
//! runs commands in a toy shell (`sim/src/nomad/driver.rs`: `echo`, `cat`, `sleep`, `exit`,
//! `printenv`, `head`, `;`/`&&`/`||`, no pipes, redirections or expansion) without a
//! pseudo-terminal, so these bodies use only commands both run, and where the terminal makes the
//! local backend's output differ (echo of stdin, `\r\n`) the body says so with
//! [`Backend::newline`] and a comment.
//!
//! Local only, each for the reason given:
//! - `users_differ_by_privilege`: the fake does not model users (everything runs as root) and
//!   has no `id`;
//! - `stdin_round_trips_through_cat_and_a_python_prompt`: Ctrl-D ends `cat`'s input only on a
//!   terminal (the fake has none and Trident never closes an execution's stdin), and the fake
//!   has no Python;
//! - `a_memory_breach_kills_the_process_and_the_runner_survives`: the cgroup memory limit kills
//!   one process; on Nomad an OOM kills and restarts the whole container (the fake's
//!   `allocate-memory`, pinned by the simulation and `nomad_faults.rs`);
//! - `traversal_and_symlink_escapes_are_rejected_and_the_host_file_is_untouched`: it plants
//!   symlinks with `ln` to a host file; the fake has no `ln`, no symlinks and no host (its copy
//!   refusal of `../` is in `files_are_copied_listed_downloaded_and_confined`);
//! - `a_fork_bomb_is_contained_and_the_server_stays_responsive`: the fake has no processes, pipes
//!   or background jobs to bomb with;
//! - `a_hundred_megabytes_of_output_stream_with_bounded_server_memory`: the command is a pipe
//!   (`head | tr`); the Nomad output limit under a flood is in the hostile suite;
//! - `a_client_disconnect_kills_the_process`: it needs `$$`, `kill -0` and loops, which the toy
//!   shell lacks (on Nomad a command that outlives its interrupt costs the runner, pinned by
//!   `nomad_faults.rs`'s `a_command_that_ignores_the_interrupt_is_ended_by_stopping_its_runner`);
//! - `sigterm_ends_executions_with_a_going_away_error_and_removes_every_sandbox`: sandboxes are
//!   the local backend's (the going-away error on Nomad is `nomad.rs`'s
//!   `sigterm_ends_executions_with_a_going_away_error`);
//! - `the_command_line_client_runs_a_python_file_end_to_end`: Python again (the CLI itself does
//!   not care about the backend);
//! - `an_image_mapped_to_a_root_file_system_runs_on_it`: root file systems are the local
//!   backend's image mapping.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use trident_tests::{Backend, Server};

/// Runs each `async fn name(backend: Backend)` as two tests, `name::local` and `name::nomad`.
/// Multi-threaded: a dropped server blocks its thread while it waits for the process to exit,
/// and the fake Nomad has to keep serving the server's last calls meanwhile.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn local() {
                    super::$name(trident_tests::Backend::Local).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn nomad() {
                    super::$name(trident_tests::Backend::Nomad).await;
                }
            }
        )*
    };
}

on_both_backends!(
    health_version_and_unknown_routes,
    a_token_guards_every_route_but_health_and_version,
    environments_are_created_read_listed_updated_and_deleted,
    runners_are_claimed_and_released_with_poseidons_errors,
    files_are_copied_listed_downloaded_and_confined,
    executions_stream_output_exit_codes_and_errors,
    stdin_reaches_the_command,
    variables_reach_the_command,
    a_time_limit_ends_the_execution_with_timeout,
    the_inactivity_timeout_destroys_the_runner_during_a_long_execution,
    an_execution_id_works_once_and_only_on_its_runner,
    claiming_from_an_empty_pool_fails_at_once_with_nomad_overload,
    malformed_json_is_a_400_with_a_message,
    a_body_over_the_limit_is_a_413,
    executions_on_different_runners_run_concurrently,
);

async fn health_version_and_unknown_routes(backend: Backend) {
    let server = backend.start(&[]).await;
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

async fn a_token_guards_every_route_but_health_and_version(backend: Backend) {
    let server = backend.start(&["--token", "secret"]).await;
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

async fn environments_are_created_read_listed_updated_and_deleted(backend: Backend) {
    let server = backend.start(&[]).await;
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

async fn runners_are_claimed_and_released_with_poseidons_errors(backend: Backend) {
    let server = backend.start(&[]).await;
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
    // An empty pool is pinned by `claiming_from_an_empty_pool_fails_at_once_with_nomad_overload`.

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

async fn files_are_copied_listed_downloaded_and_confined(backend: Backend) {
    let (server, runner) = backend.with_runner(128).await;
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

async fn executions_stream_output_exit_codes_and_errors(backend: Backend) {
    let (server, runner) = backend.with_runner(256).await;

    let ok = server.run(&runner, json!({"command": "true"}), None).await;
    assert_eq!(ok.kinds(), vec!["start", "exit"]);
    assert_eq!(ok.last_control()["data"], 0);
    assert_eq!(ok.close, Some(CloseCode::Normal));

    let hello = server
        .run(&runner, json!({"command": "echo -n Hello World"}), None)
        .await;
    assert_eq!(hello.text("stdout"), "Hello World");
    assert!(!hello.kinds().contains(&"error"));

    // A failing command's message arrives as stderr, never as stdout. (`cat missing.txt`, not
    // `cat -invalid`: the fake's `cat` parses no options.)
    let failed = server
        .run(&runner, json!({"command": "cat missing.txt"}), None)
        .await;
    assert!(
        failed
            .text("stderr")
            .contains("missing.txt: No such file or directory"),
        "{failed:?}"
    );
    assert!(
        !failed.text("stdout").contains("No such file"),
        "{failed:?}"
    );
    assert_eq!(failed.last_control()["data"], 1);

    let quote = server
        .run(
            &runner,
            json!({"command": "echo 'single quotes' \"and more\""}),
            None,
        )
        .await;
    assert_eq!(
        quote.text("stdout"),
        format!("single quotes and more{}", backend.newline())
    );
}

async fn stdin_reaches_the_command(backend: Backend) {
    let (server, runner) = backend.with_runner(256).await;
    let head = server
        .run(
            &runner,
            json!({"command": "head -n 1"}),
            Some("Hello World!\n"),
        )
        .await;
    let line = format!("Hello World!{}", backend.newline());
    // The local backend's stdin is a terminal, which echoes the input before `head` prints its
    // line (`Hello World!\r\n` twice, as in Poseidon); the fake Nomad has no terminal.
    let expected = match backend {
        Backend::Local => line.repeat(2),
        Backend::Nomad => line,
    };
    assert_eq!(head.text("stdout"), expected, "{head:?}");
    assert_eq!(head.last_control()["data"], 0, "{head:?}");
}

/// Local only: the fake Nomad does not model users (everything runs as root) and has no `id`.
#[tokio::test]
async fn users_differ_by_privilege() {
    let (server, runner) = Server::with_runner(256).await;
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
}

async fn variables_reach_the_command(backend: Backend) {
    let (server, runner) = backend.with_runner(256).await;
    // `printenv` rather than `env`: the fake's `env` only runs a command.
    let env = server
        .run(
            &runner,
            json!({"command": "printenv", "environment": {"hello": "world"}}),
            None,
        )
        .await;
    let output = env.text("stdout");
    assert!(output.contains("hello=world"), "{output}");
    assert!(output.contains("CODEOCEAN=true"), "{output}");
    assert!(!output.contains("NOMAD_"), "{output}");
}

async fn a_time_limit_ends_the_execution_with_timeout(backend: Backend) {
    let (server, runner) = backend.with_runner(256).await;
    let slow = server
        .run(&runner, json!({"command": "sleep 4", "timeLimit": 1}), None)
        .await;
    assert_eq!(slow.last_control()["type"], "timeout", "{slow:?}");
    assert_eq!(slow.close, Some(CloseCode::Normal));
    // The interrupt ends `sleep` at once: the close does not wait out the kill's grace.
    assert!(slow.elapsed < Duration::from_secs(3), "{:?}", slow.elapsed);
    // The runner still works afterwards.
    let next = server
        .run(&runner, json!({"command": "echo -n next"}), None)
        .await;
    assert_eq!(next.text("stdout"), "next");
}

async fn the_inactivity_timeout_destroys_the_runner_during_a_long_execution(backend: Backend) {
    let server = backend.start(&[]).await;
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
    let (server, runner) = Server::with_runner(100).await;
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

async fn an_execution_id_works_once_and_only_on_its_runner(backend: Backend) {
    let server = backend.start(&[]).await;
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

async fn claiming_from_an_empty_pool_fails_at_once_with_nomad_overload(backend: Backend) {
    let server = backend.start(&[]).await;
    server.environment(5, 0, 128).await;
    let response = server
        .client
        .post(server.url("/runners"))
        .json(&json!({"executionEnvironmentId": 5}))
        .send()
        .await
        .expect("claim");
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["errorCode"], "NOMAD_OVERLOAD");
    assert_eq!(
        body["message"],
        "no runners available for this execution environment"
    );
}

async fn malformed_json_is_a_400_with_a_message(backend: Backend) {
    let server = backend.start(&[]).await;
    let response = server
        .client
        .post(server.url("/runners"))
        .header("Content-Type", "application/json")
        .body("{\"executionEnvironmentId\": \"one\"")
        .send()
        .await
        .expect("claim");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("JSON");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn a_body_over_the_limit_is_a_413(backend: Backend) {
    let server = backend.start(&["--max-body-bytes", "1024"]).await;
    server.environment(1, 1, 128).await;
    let runner = server.claim(1, 0).await;
    assert_eq!(server.copy(&runner, "small.txt", &[b'a'; 100]).await, 204);
    assert_eq!(server.copy(&runner, "big.txt", &[b'a'; 4096]).await, 413);
}

#[tokio::test]
async fn traversal_and_symlink_escapes_are_rejected_and_the_host_file_is_untouched() {
    let (server, runner) = Server::with_runner(128).await;
    let host = tempfile::tempdir().expect("a host directory");
    let victim = host.path().join("victim.txt");
    std::fs::write(&victim, "original").expect("write the victim");
    // Symlinks planted from inside the runner, to the file and to its directory.
    let plant = format!(
        "ln -s {victim} file-link && ln -s {dir} dir-link && ln -s / root-link",
        victim = victim.display(),
        dir = host.path().display()
    );
    let planted = server.run(&runner, json!({"command": plant}), None).await;
    assert_eq!(planted.last_control()["data"], 0, "{planted:?}");

    for path in [
        "../victim.txt",
        "dir-link/victim.txt",
        "root-link/etc/passwd",
    ] {
        let status = server.copy(&runner, path, b"pwned").await;
        assert_eq!(status, 400, "copy to {path}");
    }
    for path in ["file-link", "dir-link/victim.txt", "../../../../etc/passwd"] {
        let raw = server.url(&format!("/runners/{runner}/files/raw?path={path}"));
        let response = server.client.get(&raw).send().await.expect("download");
        assert!(
            matches!(response.status().as_u16(), 400 | 424),
            "download of {path}: {}",
            response.status()
        );
        assert_ne!(response.text().await.expect("body"), "original");
    }
    // Copying onto the file link replaces the link, never writes through it.
    let status = server.copy(&runner, "file-link", b"pwned").await;
    assert!(matches!(status.as_u16(), 204 | 400), "{status}");
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "original");
}

#[tokio::test]
async fn a_fork_bomb_is_contained_and_the_server_stays_responsive() {
    let (server, runner) = Server::with_runner(256).await;
    let url = server
        .execute_url(
            &runner,
            json!({"command": "bomb() { bomb | bomb & }; bomb", "timeLimit": 3}),
        )
        .await;
    let (socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connects");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let health = server
            .client
            .get(server.url("/health"))
            .send()
            .await
            .expect("health");
        assert_eq!(health.status(), 204);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(socket);
    // Another runner still starts and works while the bomb's runner is contained.
    server.environment(2, 1, 128).await;
    let other = server.claim(2, 0).await;
    let ok = server
        .run(&other, json!({"command": "echo -n fine"}), None)
        .await;
    assert_eq!(ok.text("stdout"), "fine");
}

#[tokio::test]
async fn a_hundred_megabytes_of_output_stream_with_bounded_server_memory() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    // Above the default output limit (64 MiB, pinned by the hostile suite).
    let server = Server::start(&["--max-output-bytes", "200000000"]).await;
    server.environment(1, 1, 256).await;
    let runner = server.claim(1, 0).await;
    let before_kib = server.peak_rss_kib();
    let url = server
        .execute_url(
            &runner,
            json!({"command": "head -c 100000000 /dev/zero | tr '\\0' a"}),
        )
        .await;
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connects");
    let mut received = 0usize;
    let mut exit = None;
    let result = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(message) = socket.next().await {
            match message.expect("a frame") {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).expect("JSON");
                    match value["type"].as_str() {
                        Some("stdout") => received += value["data"].as_str().map_or(0, str::len),
                        Some("exit") => exit = value["data"].as_u64(),
                        _ => {}
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "the output did not finish streaming in time"
    );
    assert_eq!(exit, Some(0));
    assert_eq!(received, 100_000_000);
    let after_kib = server.peak_rss_kib();
    assert!(
        after_kib < before_kib + 64 * 1024,
        "peak RSS grew from {before_kib} KiB to {after_kib} KiB while streaming 100 MB"
    );
}

#[tokio::test]
async fn stdin_round_trips_through_cat_and_a_python_prompt() {
    let (server, runner) = Server::with_runner(256).await;
    // Ctrl-D on the terminal ends cat's input.
    let cat = server
        .run(&runner, json!({"command": "cat"}), Some("ping\n\u{4}"))
        .await;
    assert_eq!(cat.text("stdout").matches("ping").count(), 2, "{cat:?}");
    assert_eq!(cat.last_control()["data"], 0);

    let python = "/usr/bin/python3 -c 'name = input(\"Name? \"); print(\"Hi\", name)'";
    let prompt = server
        .run(&runner, json!({"command": python}), Some("Ada\n"))
        .await;
    let output = prompt.text("stdout");
    assert!(output.contains("Hi Ada"), "{output:?}");
    // Without the readline module CPython writes the prompt to stderr (PyOS_StdioReadline), as
    // it does in Poseidon's containers, where stderr is a separate stream too.
    let prompt_text = format!("{output}{}", prompt.text("stderr"));
    assert!(prompt_text.contains("Name? "), "{prompt:?}");
}

#[tokio::test]
async fn a_client_disconnect_kills_the_process() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (server, runner) = Server::with_runner(256).await;
    let url = server
        .execute_url(&runner, json!({"command": "echo pid=$$; exec sleep 1000"}))
        .await;
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connects");
    let mut pid = None;
    while pid.is_none() {
        let Some(Ok(Message::Text(text))) = socket.next().await else {
            panic!("the execution ended before printing its pid");
        };
        let value: Value = serde_json::from_str(&text).expect("JSON");
        if let Some(data) = value["data"].as_str()
            && let Some(rest) = data.trim().strip_prefix("pid=")
        {
            pid = rest.parse::<u32>().ok();
        }
    }
    let pid = pid.expect("a pid");
    drop(socket);
    let check = format!(
        "for i in $(seq 50); do kill -0 {pid} 2>/dev/null || exit 0; sleep 0.1; done; exit 1"
    );
    let gone = server
        .run(
            &runner,
            json!({"command": check, "privilegedExecution": true}),
            None,
        )
        .await;
    assert_eq!(
        gone.last_control()["data"],
        0,
        "process {pid} outlived its client: {gone:?}"
    );
}

async fn executions_on_different_runners_run_concurrently(backend: Backend) {
    let server = backend.start(&[]).await;
    server.environment(1, 3, 128).await;
    let runners = [
        server.claim(1, 0).await,
        server.claim(1, 0).await,
        server.claim(1, 0).await,
    ];
    let started = std::time::Instant::now();
    let runs = runners.iter().enumerate().map(|(index, runner)| {
        server.run(
            runner,
            json!({"command": format!("sleep 1; echo -n {index}")}),
            None,
        )
    });
    let conversations = futures_util::future::join_all(runs).await;
    for (index, conversation) in conversations.iter().enumerate() {
        assert_eq!(conversation.text("stdout"), index.to_string());
    }
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sigterm_ends_executions_with_a_going_away_error_and_removes_every_sandbox() {
    let mut server = Server::start(&[]).await;
    server.environment(1, 2, 128).await;
    let runner = server.claim(1, 0).await;
    let runner_dirs = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(
        runner_dirs(server.state_dir()) >= 2,
        "the pool's runners live in the state dir"
    );

    let run = server
        .run_until_terminated(&runner, json!({"command": "sleep 1000"}))
        .await;
    assert_eq!(run.kinds(), ["start", "error"], "{run:?}");
    assert!(
        run.text("error").contains("shutting down"),
        "{:?}",
        run.messages
    );
    assert_eq!(run.close, Some(CloseCode::Away), "closed as going away");
    let status = server.terminate().expect("the server exits by itself");
    assert!(status.success(), "{status:?}");
    assert_eq!(
        runner_dirs(server.state_dir()),
        0,
        "every sandbox is removed"
    );
}

#[tokio::test]
async fn the_command_line_client_runs_a_python_file_end_to_end() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let server = Server::start(&[]).await;
    let base = server.url("").trim_end_matches("/api/v1").to_owned();
    let binary = trident_tests::server_binary();
    let put = Command::new(&binary)
        .args([
            "env", "put", "7", "--pool", "1", "--memory", "256", "--server", &base,
        ])
        .output()
        .expect("trident env put");
    assert!(put.status.success(), "{put:?}");
    assert_eq!(
        String::from_utf8_lossy(&put.stdout),
        "environment 7 created\n"
    );
    // No waiting for the pool here: `trident run` waits for an idle runner itself, as a new
    // user typing the README's commands one after the other needs.

    let dir = tempfile::tempdir().expect("a directory");
    let script = dir.path().join("hello.py");
    std::fs::write(
        &script,
        "name = input()\nprint(f'Hello, {name}!')\nraise SystemExit(3)\n",
    )
    .expect("write the script");
    let mut run = Command::new(&binary)
        .args(["run", "--env", "7", "--server", &base, "--file"])
        .arg(&script)
        .args(["--", "python3", "hello.py"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("trident run");
    run.stdin
        .take()
        .expect("stdin")
        .write_all(b"Ada\n")
        .expect("write stdin");
    let output = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .expect("joined")
        .expect("trident run ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Hello, Ada!"), "{stdout:?}");
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    // The runner was given back: none is in use.
    let stats = server.statistics().await;
    assert_eq!(stats["7"]["usedRunners"], 0, "{stats}");
}

/// Copies `binary` and the libraries `ldd` names into `root`, at the same paths.
fn install_with_libraries(root: &std::path::Path, binary: &str) {
    let mut files = vec![binary.to_owned()];
    let ldd = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .expect("ldd runs");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split("=>")
            .last()
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|path| path.starts_with('/'));
        if let Some(path) = path {
            files.push(path.to_owned());
        }
    }
    for file in files {
        let real = std::fs::canonicalize(&file).expect("a real path");
        let target = root.join(file.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(&real, &target).expect("copy into the root file system");
    }
}

#[tokio::test]
async fn an_image_mapped_to_a_root_file_system_runs_on_it() {
    let rootfs = tempfile::tempdir().expect("a root file system directory");
    install_with_libraries(rootfs.path(), "/bin/bash");
    // A file only this root file system has.
    std::fs::create_dir_all(rootfs.path().join("etc")).expect("mkdir etc");
    std::fs::write(rootfs.path().join("etc/image-name"), "tiny").expect("write the marker");
    let config_dir = tempfile::tempdir().expect("a config directory");
    let config = config_dir.path().join("trident.toml");
    std::fs::write(
        &config,
        format!("[images]\n\"tiny\" = \"{}\"\n", rootfs.path().display()),
    )
    .expect("write the config");
    let config = config.display().to_string();
    let server = Server::start(&["--config", &config]).await;
    let response = server
        .client
        .put(server.url("/execution-environments/3"))
        .json(
            &json!({"prewarmingPoolSize": 1, "cpuLimit": 100, "memoryLimit": 128,
            "image": "tiny", "networkAccess": false, "exposedPorts": null}),
        )
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 201);
    server.environment_ready(3, 1).await;
    let runner = server.claim(3, 0).await;
    // bash's builtins only: the tiny root has no other program.
    let run = server
        .run(
            &runner,
            json!({"command": "read -r name < /etc/image-name; echo -n \"$name\"; [ -e /usr/bin/python3 ] && echo -n ' host'"}),
            None,
        )
        .await;
    assert_eq!(run.text("stdout"), "tiny", "{run:?}");
}
