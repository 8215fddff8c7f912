//! The executor contract (`trident_backends::contract`) run against the Nomad backend
//! (`NomadExecutor`) and the in-process fake Nomad of `trident-sim` over real TCP: one test per
//! contract function, named the same, as `backends/tests/contract_local.rs` does for the local
//! backend.
//!
//! The fake runs Trident's wrapper scripts by decoding them (`commands::decode_*`), and the user's
//! command in a toy shell (`sim/src/nomad/driver.rs`): no pseudo-terminal, no pipes or
//! redirections, no variable expansion, a handful of commands. The contract functions that need
//! more are marked `#[ignore]` with the exact gap that prevents them; they are not faked into
//! passing. After the contract, a few tests of what the fake *can* show about the data plane.

use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use trident_backends::contract::{self, ContractFixture, Harness};
use trident_backends::nomad::client::{NomadClient, NomadConfig};
use trident_backends::nomad::connector::{MaybeTls, TcpConnector};
use trident_backends::nomad::exec::{ExecClient, ExecConfig};
use trident_backends::nomad::executor::{NomadExecutor, NomadOptions};
use trident_backends::nomad::retry::SplitMix64;
use trident_backends::{BackendError, ExecutionRequest, Executor};
use trident_sim::nomad::FakeNomadConfig;
use trident_tests::ServedNomad;

/// One fake Nomad on an ephemeral port, serving until the fixture is dropped.
struct Fake(ServedNomad);

impl Fake {
    async fn start() -> Fake {
        Fake(ServedNomad::start(FakeNomadConfig::default()).await)
    }
}

impl ContractFixture for Fake {
    type E = NomadExecutor<MaybeTls<TcpConnector>>;

    async fn executor(&self) -> Self::E {
        let config = NomadConfig::new(self.0.address.clone());
        let client = NomadClient::connect_tcp(&config, SplitMix64::new(1)).expect("a client");
        let exec = ExecClient::connect_tcp(&config, ExecConfig::default(), SplitMix64::new(2))
            .expect("an exec client");
        NomadExecutor::new(client, exec, NomadOptions::default())
    }
}

macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture = Fake::start().await;
                contract::$name(&fixture).await;
            }
        )*
    };
}

/// Contract functions the fake cannot support, each with the gap that prevents it.
macro_rules! unsupported_by_the_fake {
    ($($name:ident: $gap:literal),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = $gap]
            async fn $name() {
                let fixture = Fake::start().await;
                contract::$name(&fixture).await;
            }
        )*
    };
}

contract_tests!(
    start_runner_reports_up_with_the_environments_ports,
    execute_reports_exit_codes,
    copied_files_can_be_listed_downloaded_and_read,
    missing_files_are_file_not_found,
    stop_runner_makes_later_calls_fail_and_unknown_stops_succeed,
    mark_runner_is_reflected_by_the_inventory,
    unreadable_system_files_are_file_not_found,
    inventory_lists_environments_and_running_runners,
);

unsupported_by_the_fake!(
    execute_sends_stdout_through_a_terminal:
        "the fake has no pseudo-terminal: no `\\n` to `\\r\\n` translation, no `test -t 1`",
    execute_keeps_stderr_separate:
        "the toy shell has no redirections (`>&2`) and its `cat` has no option parsing \
         (`cat -invalid` is a missing file, not `invalid option`)",
    execute_round_trips_stdin_with_terminal_echo:
        "the fake has no pseudo-terminal (no echo of stdin, no `\\r\\n`)",
    execute_passes_environment_variables_exactly:
        "the toy shell has no variable expansion, `printf` or redirections \
         (variables are checked with `printenv` in `variables_and_stderr_reach_the_fake`)",
    execute_runs_commands_containing_single_quotes:
        "the toy shell has no `printf`, and no pseudo-terminal for the expected `\\r\\n`",
    interrupt_ends_a_sleep:
        "the fake ends the `sleep` on Ctrl-\\ (exit 131), but has no pseudo-terminal for the \
         `\\r\\n` the last check expects",
    kill_ends_a_sleep:
        "Nomad's kill closes the exec session and the process runs on (`KillReach::ConnectionOnly`, \
         as the fake models it); the server stops the runner instead, pinned by \
         `nomad_faults::a_command_that_ignores_the_interrupt_is_ended_by_stopping_its_runner`",
    copying_a_path_ending_in_slash_makes_a_directory:
        "the toy shell has no `test`, `touch`, pipes or `wc`",
    delete_removes_files_and_dot_slash_empties_the_workspace:
        "the toy shell has no redirections (`echo x > file`), pipes or `wc`",
    paths_escaping_the_workspace_are_rejected:
        "the toy shell has no pipes or `md5sum` for the snapshot of `..` and `/`",
    workspace_and_tmp_persist_across_executions:
        "the toy shell has no redirections (`echo kept > ws.txt`) and no terminal `\\r\\n`",
    runners_share_neither_workspace_nor_tmp:
        "the toy shell has no redirections (`echo a > ws.txt`)",
    a_runner_cannot_see_another_runners_files:
        "the toy shell has no redirections, globs, pipes or `find`",
    absolute_tmp_and_workspace_paths_reach_what_commands_see:
        "the toy shell has no redirections (`echo … > /tmp/made.txt`) and no terminal `\\r\\n`",
);

/// A runner of a fresh executor on a fresh fake.
async fn runner(
    fixture: &Fake,
) -> (
    Harness<NomadExecutor<MaybeTls<TcpConnector>>>,
    trident_core::RunnerId,
) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    (h, runner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_and_stderr_reach_the_fake() {
    let fixture = Fake::start().await;
    let (h, runner) = runner(&fixture).await;
    let out = h
        .run_with(
            runner,
            "echo out; cat missing.txt; printenv A CODEOCEAN; exit 3",
            vec![("A".to_owned(), "two words = 'q' $HOME\nnext".to_owned())],
            None,
        )
        .await;
    assert_eq!(out.exit, Some(3), "{out:?}");
    assert_eq!(
        out.stdout_text(),
        "out\ntwo words = 'q' $HOME\nnext\ntrue\n",
        "stdout carries no stderr: {out:?}"
    );
    assert_eq!(
        out.stderr_text(),
        "cat: missing.txt: No such file or directory\n",
        "stderr came through the fifo reader: {out:?}"
    );
    // A bad variable name is the client's mistake.
    let refused = h
        .executor
        .execute(
            runner,
            ExecutionRequest {
                command: "true".into(),
                environment: vec![("A-B".into(), "1".into())],
                privileged: false,
            },
        )
        .await;
    assert!(
        matches!(refused, Err(BackendError::BadRequest(_))),
        "{:?}",
        refused.map(|_| ())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_delete_first_report_tar_failures_and_refuse_escapes() {
    let fixture = Fake::start().await;
    let (h, runner) = runner(&fixture).await;
    h.files(
        runner,
        &[],
        &[("a.txt", b"a"), ("d/e.txt", b"e"), ("keep.txt", b"k")],
    )
    .await;
    h.files(
        runner,
        &["a.txt", "d", "never/existed"],
        &[("new.txt", b"n")],
    )
    .await;
    assert_eq!(
        h.list(runner, "./", true).await.expect("list"),
        vec![
            ("./keep.txt".to_owned(), '-'),
            ("./new.txt".to_owned(), '-')
        ]
    );
    // A file where a directory is: tar's failure, with its message, after the rest is written.
    h.files(runner, &[], &[("dir/", b"")]).await;
    let failed = h
        .executor
        .update_files(
            runner,
            contract::update(&[], &[("dir", b"x"), ("written.txt", b"w")]),
        )
        .await;
    match failed {
        Err(BackendError::Failed(message)) => {
            assert!(message.starts_with("file copy failed: "), "{message}");
            assert!(message.contains("Cannot open"), "{message}");
        }
        other => panic!("expected a copy failure, got {other:?}"),
    }
    assert_eq!(
        h.download(runner, "written.txt").await.expect("written"),
        b"w"
    );
    // `./` empties the workspace.
    h.files(runner, &["./"], &[]).await;
    assert_eq!(h.list(runner, "./", true).await.expect("list"), vec![]);
    // Escapes are refused before anything is done.
    for path in ["../x", "/workspace/../../x"] {
        let refused = h
            .executor
            .update_files(runner, contract::update(&[], &[(path, b"x")]))
            .await;
        assert!(
            matches!(refused, Err(BackendError::BadRequest(_))),
            "{refused:?}"
        );
        let refused = h.list(runner, path, false).await;
        assert!(
            matches!(refused, Err(BackendError::BadRequest(_))),
            "{refused:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_streams_exactly_its_size() {
    let fixture = Fake::start().await;
    let (h, runner) = runner(&fixture).await;
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    h.executor
        .update_files(
            runner,
            trident_backends::FileUpdate {
                delete: Vec::new(),
                copy: vec![("big.bin".to_owned(), content.clone())],
            },
        )
        .await
        .expect("copied");
    let mut download = h
        .executor
        .download_file(runner, "big.bin".to_owned(), true)
        .await
        .expect("download");
    assert_eq!(download.size, content.len() as u64);
    let mut body = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        download.reader.read_to_end(&mut body),
    )
    .await
    .expect("in time")
    .expect("read");
    assert!(
        body == content,
        "the body is the file ({} bytes)",
        body.len()
    );
}
