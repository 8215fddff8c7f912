//! The executor contract (`trident_backends::contract`) run against the local backend, one test
//! per contract function and named the same, plus what only the local backend can be asked
//! (a sandbox that dies behind its back).
//!
//! Each test gets its own state dir (under cargo's per-target temporary directory, not `/tmp`, so
//! that the read-only host root a sandbox sees would show it, were it not hidden) and its own
//! cgroup parent, and removes both.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use trident_backends::contract::{self, ContractFixture, Harness};
use trident_backends::local::cgroup::CgroupLayout;
use trident_backends::local::{HostConfig, LocalExecutor, LocalOptions, SandboxHost};
use trident_backends::{BackendError, Executor, Observation};
use trident_core::{DownCause, InventoryStatus, RunnerId, Timestamp, Uuid};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Makes local executors, each with its own state dir and cgroup parent; removes the cgroup
/// parents when dropped (after the executors, whose sandboxes are gone by then).
struct Local {
    dir: tempfile::TempDir,
    cgroup_parents: Mutex<Vec<String>>,
}

impl Local {
    fn new() -> Local {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory");
        // Traversable by everyone, as a real state dir may be: otherwise the sandbox user could
        // not reach it anyway and `a_runner_cannot_see_another_runners_files` would prove
        // nothing about hiding it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the temporary directory");
        Local {
            dir,
            cgroup_parents: Mutex::new(Vec::new()),
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        for parent in self.cgroup_parents.lock().expect("not poisoned").iter() {
            CgroupLayout::detect(parent).remove_parent();
        }
    }
}

impl ContractFixture for Local {
    type E = LocalExecutor;

    async fn executor(&self) -> LocalExecutor {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let parent = format!("trident-contract-{}-{n}", std::process::id());
        self.cgroup_parents
            .lock()
            .expect("not poisoned")
            .push(parent.clone());
        let mut config = HostConfig::new(
            self.dir.path().join(format!("state-{n}")),
            PathBuf::from(env!("CARGO_BIN_EXE_trident-sandbox-init")),
        );
        config.cgroup_parent = parent;
        let host = SandboxHost::new(config)
            .await
            .expect("this host allows sandboxes");
        LocalExecutor::new(host, LocalOptions::default())
    }
}

macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture = Local::new();
                contract::$name(&fixture).await;
            }
        )*
    };
}

contract_tests!(
    start_runner_reports_up_with_the_environments_ports,
    execute_reports_exit_codes,
    execute_sends_stdout_through_a_terminal,
    execute_keeps_stderr_separate,
    execute_round_trips_stdin_with_terminal_echo,
    execute_passes_environment_variables_exactly,
    execute_runs_commands_containing_single_quotes,
    interrupt_ends_a_sleep,
    kill_ends_a_sleep,
    copied_files_can_be_listed_downloaded_and_read,
    copying_a_path_ending_in_slash_makes_a_directory,
    delete_removes_files_and_dot_slash_empties_the_workspace,
    paths_escaping_the_workspace_are_rejected,
    missing_files_are_file_not_found,
    workspace_and_tmp_persist_across_executions,
    runners_share_neither_workspace_nor_tmp,
    a_runner_cannot_see_another_runners_files,
    stop_runner_makes_later_calls_fail_and_unknown_stops_succeed,
    mark_runner_is_reflected_by_the_inventory,
    inventory_lists_environments_and_running_runners,
    absolute_tmp_and_workspace_paths_reach_what_commands_see,
    unreadable_system_files_are_file_not_found,
);

/// How long an unexpected death may take to be reported: the watcher wakes on the pidfd at once,
/// then purges the sandbox (bounded by its teardown timeout, 5 s).
const DOWN_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_killed_behind_the_executors_back_is_reported_lost_and_forgotten() {
    let fixture = Local::new();
    let mut h = Harness::new(&fixture).await;
    let spec = h.register(contract::ENV_A, &fixture.environment()).await;
    let (runner, _) = h.start(contract::ENV_A, &spec).await;
    let (survivor, _) = h.start(contract::ENV_A, &spec).await;
    let pid = h.executor.init_pid(runner).expect("a running runner");
    let started = tokio::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the init");
    let cause = tokio::time::timeout(
        DOWN_WITHIN,
        h.wait_for(|o| match o {
            Observation::Down { runner: r, cause } if *r == runner => Some(*cause),
            _ => None,
        }),
    )
    .await
    .expect("Down arrives in time");
    let elapsed = started.elapsed();
    assert_eq!(cause, DownCause::Lost);
    eprintln!("Down arrived {elapsed:?} after the kill");
    let inventory = h
        .executor
        .inventory(trident_core::Timestamp::ZERO)
        .await
        .expect("inventory");
    let ids: Vec<_> = inventory.runners.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![survivor], "the dead runner is forgotten");
    assert!(matches!(
        h.executor
            .list_files(runner, "./".into(), true, false)
            .await,
        Err(BackendError::RunnerNotFound(_))
    ));
    h.executor
        .stop_runner(runner)
        .await
        .expect("stopping it is fine");
    // The other runner is untouched and nothing else is reported.
    assert_eq!(h.ok(survivor, "echo alive").await, "alive\r\n");
    assert_eq!(h.try_next_observation(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_runner_is_not_reported_down() {
    let fixture = Local::new();
    let mut h = Harness::new(&fixture).await;
    let runner = h.runner(&fixture).await;
    h.executor.stop_runner(runner).await.expect("stop");
    // The watcher would wake at once on the init's exit; give it ample time to misbehave.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.try_next_observation(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_executor_ends_its_watchers_and_sandboxes() {
    let fixture = Local::new();
    let mut h = Harness::new(&fixture).await;
    let runner = h.runner(&fixture).await;
    let pid = h.executor.init_pid(runner).expect("running");
    let (executor, mut observations) = h.into_parts();
    drop(executor);
    // Every watcher holds a sender: the channel closes only once all of them have ended.
    let end = tokio::time::timeout(Duration::from_secs(5), observations.recv())
        .await
        .expect("the watchers end with the executor");
    assert_eq!(end, None, "no observation after the executor is gone");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "the sandbox's init is gone: {stat}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_outside_workspace_and_tmp_fail_before_anything_is_written() {
    // Poseidon's `tar` extracts what it can and fails on what it "Cannot open" (e2e
    // `TestCopyFilesRoute_PermissionDenied`: 500, `test.txt` still written). The status is kept,
    // but every path is checked first: nothing of a failed update is written.
    let fixture = Local::new();
    let mut h = Harness::new(&fixture).await;
    let runner = h.runner(&fixture).await;
    let result = h
        .executor
        .update_files(
            runner,
            contract::update(&[], &[("/proc/1/environ", b"x"), ("test.txt", b"ok")]),
        )
        .await;
    match result {
        Err(BackendError::Failed(message)) => assert!(
            message.contains("Cannot open: /proc/1/environ"),
            "{message}"
        ),
        other => panic!("expected a copy failure, got {other:?}"),
    }
    assert!(
        matches!(
            h.download(runner, "test.txt").await,
            Err(BackendError::FileNotFound)
        ),
        "test.txt was written"
    );
    h.files(runner, &[], &[("test.txt", b"ok")]).await;
    // An escape anywhere in a request refuses all of it: nothing is deleted or written.
    let result = h
        .executor
        .update_files(
            runner,
            contract::update(&["test.txt"], &[("new.txt", b"n"), ("../x", b"x")]),
        )
        .await;
    assert!(
        matches!(result, Err(BackendError::BadRequest(_))),
        "{result:?}"
    );
    assert_eq!(
        h.list(runner, "./", false).await.expect("list"),
        vec![("test.txt".to_owned(), '-')]
    );
}

/// Starts queued behind the creation limit are in the inventory (pending) before their sandbox
/// exists. An inventory that missed them made the manager drop runners it had started itself,
/// stop each as an orphan when it came up and ask for another inventory: under steady claims the
/// pools stalled (seen by the monitoring bench at the 60 s reconciliation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_being_started_are_listed_by_the_inventory() {
    let fixture = Local::new();
    let h = Harness::new(&fixture).await;
    let spec = h.register(contract::ENV_A, &fixture.environment()).await;
    let runners: Vec<RunnerId> = (0..8u128)
        .map(|n| RunnerId::new(contract::ENV_A, Uuid(0x5_7A27 + n)))
        .collect();
    let starts = futures_util::future::join_all(runners.iter().map(|runner| {
        h.executor
            .start_runner(*runner, std::sync::Arc::clone(&spec))
    }));
    // `join!` polls the starts first: each has registered itself before the inventory is read,
    // while the creations run one or two at a time.
    let (started, inventory) = tokio::join!(starts, h.executor.inventory(Timestamp::ZERO));
    let inventory = inventory.expect("an inventory");
    for result in started {
        result.expect("every start succeeds");
    }
    let listed: Vec<RunnerId> = inventory.runners.iter().map(|runner| runner.id).collect();
    for runner in &runners {
        assert_eq!(
            listed.iter().filter(|id| *id == runner).count(),
            1,
            "{runner} listed once while it was starting: {listed:?}"
        );
    }
    let later = h
        .executor
        .inventory(Timestamp::ZERO)
        .await
        .expect("an inventory");
    assert_eq!(later.runners.len(), runners.len(), "{later:?}");
    assert!(
        later
            .runners
            .iter()
            .all(|runner| matches!(runner.status, InventoryStatus::Running(_))),
        "{later:?}"
    );
}
