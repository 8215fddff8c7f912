//! The contract every [`Executor`] must pass, as plain async functions.
//!
//! Each function is one behaviour, named by it, and panics (with the observed outcome) when the
//! backend breaks it, like a test does. A backend's test file runs every function against its own
//! [`ContractFixture`], one `#[tokio::test]` per function and named the same (see
//! `backends/tests/contract_local.rs`), so that `local` and `nomad` are held to one definition of
//! what the server may rely on.
//!
//! Why a public module rather than a test helper: the Nomad backend and the simulation live in
//! other crates and must run the very same functions. It uses nothing beyond what the crate
//! already depends on (tokio's timers), so production builds gain no dependency; the functions
//! are merely unused there.
//!
//! The contract speaks only through the trait and through commands run in the runner (`bash`,
//! coreutils, `find`), never through a backend's internals. Where it needs a path it uses
//! Poseidon's: the working directory is the workspace, `/tmp` is the runner's private scratch
//! space.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use trident_core::{
    ClaimMark, EnvironmentId, EnvironmentSpec, InventoryStatus, Lease, RunnerId, RunnerMark,
    Timestamp, Uuid,
};

use crate::executor::{
    BackendError, ExecutionEvent, ExecutionRequest, Executor, FileUpdate, Observation,
    RunningExecution,
};

/// Upper bound on a runner becoming ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound on one command of the contract (the longest is a `find` over the whole root).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound on a command ending after an interrupt or a kill.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a backend's test provides: fresh executors.
pub trait ContractFixture {
    /// The backend under test.
    type E: Executor;

    /// A fresh executor: nothing registered, nothing running, observations not yet taken, and
    /// sharing nothing with executors made before (each contract function makes its own).
    fn executor(&self) -> impl Future<Output = Self::E>;

    /// The environment the contract's runners use (any network settings are overridden where a
    /// function needs them). The default suits a backend whose images have bash and coreutils.
    fn environment(&self) -> EnvironmentSpec {
        EnvironmentSpec {
            prewarming_pool_size: 1,
            cpu_limit: 0,
            memory_limit: 0,
            image: "trident/contract".to_owned(),
            network_access: false,
            exposed_ports: Vec::new(),
        }
    }
}

/// What a command produced.
#[derive(Debug, Default)]
pub struct Output {
    /// The terminal's bytes (stdout and the echo of stdin).
    pub stdout: Vec<u8>,
    /// The stderr bytes.
    pub stderr: Vec<u8>,
    /// The exit code; `None` if the runner went away first.
    pub exit: Option<u8>,
}

impl Output {
    /// Stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// An executor under test with its observations.
#[derive(Debug)]
pub struct Harness<E: Executor> {
    /// The executor.
    pub executor: E,
    observations: mpsc::Receiver<Observation>,
    /// Observations received while waiting for another one, oldest first.
    pending: Vec<Observation>,
    next_uuid: u128,
}

/// The environment most functions use.
pub const ENV_A: EnvironmentId = EnvironmentId(7_001);
/// A second environment.
pub const ENV_B: EnvironmentId = EnvironmentId(7_002);

impl<E: Executor> Harness<E> {
    /// A fresh executor from `fixture`, with its observations taken.
    pub async fn new<F: ContractFixture<E = E>>(fixture: &F) -> Harness<E> {
        let executor = fixture.executor().await;
        let observations = executor
            .take_observations()
            .expect("a fresh executor hands out its observations once");
        assert!(
            executor.take_observations().is_none(),
            "the observations are handed out only once"
        );
        Harness {
            executor,
            observations,
            pending: Vec::new(),
            next_uuid: 0xC0_17AC_7000,
        }
    }

    /// Registers `id` with `spec`.
    pub async fn register(
        &self,
        id: EnvironmentId,
        spec: &EnvironmentSpec,
    ) -> Arc<EnvironmentSpec> {
        let spec = Arc::new(spec.clone());
        self.executor
            .register_environment(id, Arc::clone(&spec))
            .await
            .expect("registering an environment succeeds");
        spec
    }

    /// Starts a runner of `environment` and waits for its `Up`; returns it and its ports.
    pub async fn start(
        &mut self,
        environment: EnvironmentId,
        spec: &Arc<EnvironmentSpec>,
    ) -> (RunnerId, Vec<trident_core::MappedPort>) {
        self.next_uuid += 1;
        let runner = RunnerId::new(environment, Uuid(self.next_uuid));
        self.executor
            .start_runner(runner, Arc::clone(spec))
            .await
            .expect("starting a runner succeeds");
        let ports = self
            .wait_for(|o| match o {
                Observation::Up { runner: r, ports } if *r == runner => Some(ports.clone()),
                Observation::Down { runner: r, cause } if *r == runner => {
                    panic!("runner {runner} went down ({cause:?}) instead of up")
                }
                _ => None,
            })
            .await;
        (runner, ports)
    }

    /// Waits (bounded by [`START_TIMEOUT`]) for an observation that `pick` accepts; keeps the
    /// others for later waits.
    pub async fn wait_for<T>(&mut self, mut pick: impl FnMut(&Observation) -> Option<T>) -> T {
        if let Some(index) = self.pending.iter().position(|o| pick(o).is_some()) {
            let observation = self.pending.remove(index);
            return pick(&observation).expect("picked before");
        }
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let observation = tokio::time::timeout_at(deadline, self.observations.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no awaited observation within {START_TIMEOUT:?}; others: {:?}",
                        self.pending
                    )
                })
                .expect("the executor keeps its observation channel open");
            if let Some(value) = pick(&observation) {
                return value;
            }
            self.pending.push(observation);
        }
    }

    /// The next observation if one is waiting, without waiting.
    pub fn try_next_observation(&mut self) -> Option<Observation> {
        if !self.pending.is_empty() {
            return Some(self.pending.remove(0));
        }
        self.observations.try_recv().ok()
    }

    /// The executor and its observations, for tests that drop the executor.
    pub fn into_parts(self) -> (E, mpsc::Receiver<Observation>) {
        (self.executor, self.observations)
    }

    /// Registers [`ENV_A`] with the fixture's environment and starts one runner of it.
    pub async fn runner<F: ContractFixture<E = E>>(&mut self, fixture: &F) -> RunnerId {
        let spec = self.register(ENV_A, &fixture.environment()).await;
        self.start(ENV_A, &spec).await.0
    }

    /// Starts `command` (with `environment`), feeds it `stdin` and collects everything until it
    /// ends, bounded by [`COMMAND_TIMEOUT`].
    pub async fn run_with(
        &self,
        runner: RunnerId,
        command: &str,
        environment: Vec<(String, String)>,
        stdin: Option<&'static [u8]>,
    ) -> Output {
        let mut execution = self
            .executor
            .execute(
                runner,
                ExecutionRequest {
                    command: command.to_owned(),
                    environment,
                    privileged: false,
                },
            )
            .await
            .unwrap_or_else(|error| panic!("{command:?} does not start: {error}"));
        if let Some(input) = stdin {
            execution
                .stdin()
                .send(Bytes::from_static(input))
                .await
                .expect("stdin is open");
        }
        tokio::time::timeout(COMMAND_TIMEOUT, collect(&mut execution))
            .await
            .unwrap_or_else(|_| panic!("{command:?} did not end within {COMMAND_TIMEOUT:?}"))
    }

    /// Runs `command` without input or extra variables.
    pub async fn run(&self, runner: RunnerId, command: &str) -> Output {
        self.run_with(runner, command, Vec::new(), None).await
    }

    /// Runs `command` and asserts that it exits 0; returns its stdout.
    pub async fn ok(&self, runner: RunnerId, command: &str) -> String {
        let out = self.run(runner, command).await;
        assert_eq!(out.exit, Some(0), "{command:?} failed: {out:?}");
        out.stdout_text()
    }

    /// Applies a file update and expects success.
    pub async fn files(&self, runner: RunnerId, delete: &[&str], copy: &[(&str, &[u8])]) {
        self.executor
            .update_files(runner, update(delete, copy))
            .await
            .unwrap_or_else(|error| panic!("update {delete:?} {copy:?} failed: {error}"));
    }

    /// Downloads a whole file.
    pub async fn download(&self, runner: RunnerId, path: &str) -> Result<Vec<u8>, BackendError> {
        let mut download = self
            .executor
            .download_file(runner, path.to_owned(), false)
            .await?;
        let mut body = Vec::new();
        download
            .reader
            .read_to_end(&mut body)
            .await
            .expect("the download can be read");
        assert_eq!(
            body.len() as u64,
            download.size,
            "the announced size of {path:?} matches its body"
        );
        Ok(body)
    }

    /// Names and types of a listing.
    pub async fn list(
        &self,
        runner: RunnerId,
        path: &str,
        recursive: bool,
    ) -> Result<Vec<(String, char)>, BackendError> {
        Ok(self
            .executor
            .list_files(runner, path.to_owned(), recursive, false)
            .await?
            .into_iter()
            .map(|header| (header.name, header.entry_type))
            .collect())
    }
}

/// A [`FileUpdate`] from borrowed parts.
pub fn update(delete: &[&str], copy: &[(&str, &[u8])]) -> FileUpdate {
    FileUpdate {
        delete: delete.iter().map(|p| (*p).to_owned()).collect(),
        copy: copy
            .iter()
            .map(|(p, content)| ((*p).to_owned(), content.to_vec()))
            .collect(),
    }
}

/// Every event of an execution until its end.
pub async fn collect<X: RunningExecution>(execution: &mut X) -> Output {
    let mut out = Output::default();
    while let Some(event) = execution.next_event().await {
        match event {
            ExecutionEvent::Stdout(bytes) => out.stdout.extend_from_slice(&bytes),
            ExecutionEvent::Stderr(bytes) => out.stderr.extend_from_slice(&bytes),
            ExecutionEvent::Exited(code) => out.exit = Some(code),
            ExecutionEvent::Gone => {}
        }
    }
    out
}

fn assert_bad_request<T: std::fmt::Debug>(what: &str, result: Result<T, BackendError>) {
    assert!(
        matches!(result, Err(BackendError::BadRequest(_))),
        "{what}: expected BadRequest, got {result:?}"
    );
}

fn assert_runner_not_found<T: std::fmt::Debug>(
    what: &str,
    runner: RunnerId,
    result: Result<T, BackendError>,
) {
    assert!(
        matches!(result, Err(BackendError::RunnerNotFound(r)) if r == runner),
        "{what}: expected RunnerNotFound({runner}), got {result:?}"
    );
}

/// `start_runner` is followed by `Observation::Up` carrying one mapping per exposed port of an
/// environment with network access, and none without network access.
pub async fn start_runner_reports_up_with_the_environments_ports<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let mut spec = fixture.environment();
    spec.network_access = true;
    spec.exposed_ports = vec![8080, 1337];
    let spec = h.register(ENV_A, &spec).await;
    let (_, ports) = h.start(ENV_A, &spec).await;
    let exposed: BTreeSet<u16> = ports.iter().map(|p| p.exposed_port).collect();
    assert_eq!(exposed, BTreeSet::from([1337, 8080]), "{ports:?}");
    assert_eq!(ports.len(), 2, "one mapping per port: {ports:?}");
    assert!(
        ports.iter().all(|p| p.host_address.contains(':')),
        "host:port addresses: {ports:?}"
    );

    let isolated = h.register(ENV_B, &fixture.environment()).await;
    let (_, ports) = h.start(ENV_B, &isolated).await;
    assert_eq!(ports, vec![], "no network, no ports");
}

/// Exit codes arrive as they are, and a signal `n` gives `128 + n`.
pub async fn execute_reports_exit_codes<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    for (command, code) in [
        ("true", 0),
        ("false", 1),
        ("exit 42", 42),
        ("kill -9 $$", 137),
    ] {
        let out = h.run(runner, command).await;
        assert_eq!(out.exit, Some(code), "{command:?}: {out:?}");
    }
}

/// Stdout goes through a terminal: exact bytes, with `\r\n` line ends.
pub async fn execute_sends_stdout_through_a_terminal<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    let out = h.run(runner, "echo -n Hello World").await;
    assert_eq!(out.stdout_text(), "Hello World", "{out:?}");
    let out = h
        .run(runner, "echo one; echo two; test -t 1 && echo tty")
        .await;
    assert_eq!(out.stdout_text(), "one\r\ntwo\r\ntty\r\n", "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

/// Stderr is its own stream (a pipe: no `\r`), never mixed into stdout.
pub async fn execute_keeps_stderr_separate<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    let out = h.run(runner, "cat -invalid").await;
    assert_eq!(out.exit, Some(1), "{out:?}");
    assert!(
        out.stderr_text().contains("invalid option"),
        "stderr: {out:?}"
    );
    assert!(!out.stdout_text().contains("invalid option"), "{out:?}");
    let out = h.run(runner, "echo out; echo err >&2").await;
    assert_eq!(
        (out.stdout_text().as_str(), out.stderr_text().as_str()),
        ("out\r\n", "err\n")
    );
}

/// Stdin reaches the command, and the terminal echoes it (Poseidon's `TestCommandHead`).
pub async fn execute_round_trips_stdin_with_terminal_echo<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    let out = h
        .run_with(runner, "head -n 1", Vec::new(), Some(b"Hello World!\n"))
        .await;
    assert_eq!(out.exit, Some(0), "{out:?}");
    assert_eq!(
        out.stdout_text(),
        "Hello World!\r\nHello World!\r\n",
        "echo, then output"
    );
}

/// Variables arrive byte for byte (spaces, newlines, quotes, `$`, backslashes), and
/// `CODEOCEAN=true` is always set.
pub async fn execute_passes_environment_variables_exactly<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    let values = [
        ("SPACES", "a b  c "),
        ("NEWLINES", "line 1\nline 2\n"),
        ("QUOTES", "it's \"quoted\" `tick` $HOME \\ end"),
    ];
    let environment = values
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    // Printed to stderr, a pipe, so that no terminal translates them.
    let out = h
        .run_with(
            runner,
            r#"printf '%s\0' "$SPACES" "$NEWLINES" "$QUOTES" "$CODEOCEAN" >&2"#,
            environment,
            None,
        )
        .await;
    assert_eq!(out.exit, Some(0), "{out:?}");
    let expected: Vec<u8> = values
        .iter()
        .map(|(_, v)| *v)
        .chain(["true"])
        .flat_map(|v| v.bytes().chain([0]))
        .collect();
    assert_eq!(out.stderr_text(), String::from_utf8_lossy(&expected));
}

/// A command is passed to the shell verbatim, single quotes included.
pub async fn execute_runs_commands_containing_single_quotes<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    let out = h
        .run(runner, r#"echo 'it'"'"'s'; printf '%s' "it's"; echo ' x'"#)
        .await;
    assert_eq!(out.exit, Some(0), "{out:?}");
    assert_eq!(out.stdout_text(), "it's\r\nit's x\r\n");
}

/// Starts `echo ready; sleep 600` and waits for `ready`, so that the command surely runs.
async fn sleeping<E: Executor>(h: &Harness<E>, runner: RunnerId) -> E::Execution {
    let mut execution = h
        .executor
        .execute(
            runner,
            ExecutionRequest {
                command: "echo ready; sleep 600".to_owned(),
                environment: Vec::new(),
                privileged: false,
            },
        )
        .await
        .expect("the sleep starts");
    let mut stdout = Vec::new();
    while !String::from_utf8_lossy(&stdout).contains("ready") {
        match tokio::time::timeout(COMMAND_TIMEOUT, execution.next_event()).await {
            Ok(Some(ExecutionEvent::Stdout(bytes))) => stdout.extend_from_slice(&bytes),
            Ok(Some(ExecutionEvent::Stderr(_))) => {}
            other => panic!("the sleep ended before it was ready: {other:?}"),
        }
    }
    execution
}

/// An interrupt (Ctrl-\ on the terminal) ends a `sleep` with a failure status.
///
/// The interrupt is repeated every half second: like Ctrl-\ on a real terminal it signals the
/// processes in the foreground *at that moment*, and one that lands while the shell is forking
/// `sleep` kills the shell but not the `sleep` that was not yet forked. Poseidon's clients (and
/// its time limit) behave alike; what matters is that the command ends.
pub async fn interrupt_ends_a_sleep<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    let mut execution = sleeping(&h, runner).await;
    let started = tokio::time::Instant::now();
    let mut out = Output::default();
    let mut interrupts = 0;
    let mut next_interrupt = started;
    loop {
        assert!(
            started.elapsed() < STOP_TIMEOUT,
            "the sleep did not end within {STOP_TIMEOUT:?} of {interrupts} interrupts: {out:?}"
        );
        // At most one interrupt per half second: the terminal echoes each (`^\`), and answering
        // every echo with another interrupt would only flood the terminal.
        if tokio::time::Instant::now() >= next_interrupt {
            execution.interrupt();
            interrupts += 1;
            next_interrupt = tokio::time::Instant::now() + Duration::from_millis(500);
        }
        match tokio::time::timeout_at(next_interrupt, execution.next_event()).await {
            Ok(Some(ExecutionEvent::Stdout(bytes))) => out.stdout.extend_from_slice(&bytes),
            Ok(Some(ExecutionEvent::Stderr(bytes))) => out.stderr.extend_from_slice(&bytes),
            Ok(Some(ExecutionEvent::Exited(code))) => out.exit = Some(code),
            Ok(Some(ExecutionEvent::Gone)) | Ok(None) => break,
            Err(_elapsed) => {}
        }
    }
    assert!(
        matches!(out.exit, Some(code) if code != 0),
        "ends with a failure status: {out:?}"
    );
    assert!(started.elapsed() < STOP_TIMEOUT);
    assert_eq!(h.ok(runner, "echo still usable").await, "still usable\r\n");
}

/// A kill ends a `sleep` (its whole process tree) with a failure status, and the runner stays
/// usable.
pub async fn kill_ends_a_sleep<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    let mut execution = sleeping(&h, runner).await;
    execution.kill();
    let out = tokio::time::timeout(STOP_TIMEOUT, collect(&mut execution))
        .await
        .expect("the sleep ends soon after the kill");
    assert!(
        matches!(out.exit, Some(code) if code != 0),
        "ends with a failure status: {out:?}"
    );
    assert_eq!(
        h.ok(runner, "pgrep -x sleep | wc -l").await.trim(),
        "0",
        "no sleep survives"
    );
}

/// Copied files can be listed (Poseidon's names and types), downloaded with their size, and read
/// by commands; missing parents are created.
pub async fn copied_files_can_be_listed_downloaded_and_read<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    assert_eq!(h.list(runner, "./", true).await.expect("list"), vec![]);
    h.files(
        runner,
        &[],
        &[
            ("hello.txt", b"Hello"),
            ("sub/inner.txt", b"12345"),
            ("./dot.txt", b""),
        ],
    )
    .await;
    assert_eq!(
        h.list(runner, "./", true).await.expect("list"),
        vec![
            ("./dot.txt".to_owned(), '-'),
            ("./hello.txt".to_owned(), '-'),
            ("./sub".to_owned(), 'd'),
            ("./sub/inner.txt".to_owned(), '-'),
        ]
    );
    let headers = h
        .executor
        .list_files(runner, "hello.txt".to_owned(), false, false)
        .await
        .expect("list a file");
    assert_eq!(headers.len(), 1, "{headers:?}");
    assert_eq!(
        (headers[0].size, headers[0].permissions.as_str()),
        (5, "rwxr--r--")
    );
    assert_eq!(
        (headers[0].owner.as_str(), headers[0].group.as_str()),
        ("root", "root")
    );
    assert_eq!(
        h.download(runner, "hello.txt").await.expect("download"),
        b"Hello"
    );
    assert_eq!(
        h.download(runner, "sub/inner.txt").await.expect("download"),
        b"12345"
    );
    assert_eq!(
        h.ok(runner, "cat hello.txt sub/inner.txt dot.txt").await,
        "Hello12345"
    );
    // Replacing truncates.
    h.files(runner, &[], &[("hello.txt", b"Hi")]).await;
    assert_eq!(
        h.download(runner, "hello.txt").await.expect("download"),
        b"Hi"
    );
}

/// A copied path ending in `/` creates an (empty) directory; its content is ignored.
pub async fn copying_a_path_ending_in_slash_makes_a_directory<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    h.files(runner, &[], &[("dir/", b"ignored"), ("a/b/c/", b"")])
        .await;
    assert_eq!(
        h.list(runner, "./", false).await.expect("list"),
        vec![("a".to_owned(), 'd'), ("dir".to_owned(), 'd')]
    );
    assert_eq!(
        h.ok(
            runner,
            "test -d dir && test -d a/b/c && ls -A dir a/b/c | wc -w"
        )
        .await
        .trim(),
        "2",
        "only the two `ls` headers: both directories are empty"
    );
    // The sandbox user may add files (directories are sticky and world-writable, as in Poseidon).
    h.ok(runner, "touch dir/mine").await;
}

/// Deletes run before copies, remove files and trees, ignore missing paths, and `./` empties the
/// workspace without removing it.
pub async fn delete_removes_files_and_dot_slash_empties_the_workspace<F: ContractFixture>(
    fixture: &F,
) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    h.files(
        runner,
        &[],
        &[("a.txt", b"a"), ("d/e/f.txt", b"f"), ("keep.txt", b"k")],
    )
    .await;
    h.files(runner, &["a.txt", "d", "never/existed"], &[]).await;
    assert!(matches!(
        h.download(runner, "a.txt").await,
        Err(BackendError::FileNotFound)
    ));
    let out = h.run(runner, "cat a.txt").await;
    assert!(
        out.stderr_text().contains("No such file or directory") && out.stdout.is_empty(),
        "{out:?}"
    );
    assert_eq!(
        h.list(runner, "./", true).await.expect("list"),
        vec![("./keep.txt".to_owned(), '-')]
    );
    // Delete and copy of the same file in one request: the delete runs first.
    h.files(runner, &["keep.txt"], &[("keep.txt", b"new")])
        .await;
    assert_eq!(
        h.download(runner, "keep.txt").await.expect("download"),
        b"new"
    );
    h.ok(
        runner,
        "mkdir -p made/by/command && echo x > made/by/command/x",
    )
    .await;
    h.files(runner, &["./"], &[]).await;
    assert_eq!(h.list(runner, "./", true).await.expect("list"), vec![]);
    assert_eq!(
        h.ok(runner, "pwd >/dev/null && ls -A | wc -l").await.trim(),
        "0"
    );
    h.ok(runner, "echo works > again.txt").await;
}

/// Paths that climb out of the workspace with `..` are refused with `BadRequest` by every file
/// operation, and nothing outside changes.
pub async fn paths_escaping_the_workspace_are_rejected<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    let snapshot = "ls -A .. / | md5sum";
    let before = h.ok(runner, snapshot).await;
    for path in [
        "../escaped.txt",
        "a/../../escaped.txt",
        "/../escaped.txt",
        "/workspace/../../escaped.txt",
    ] {
        assert_bad_request(
            &format!("copy {path}"),
            h.executor
                .update_files(runner, update(&[], &[(path, b"pwned")]))
                .await,
        );
        assert_bad_request(
            &format!("delete {path}"),
            h.executor.update_files(runner, update(&[path], &[])).await,
        );
        assert_bad_request(&format!("download {path}"), h.download(runner, path).await);
        assert_bad_request(&format!("list {path}"), h.list(runner, path, true).await);
    }
    assert_bad_request(
        "delete ../",
        h.executor.update_files(runner, update(&["../"], &[])).await,
    );
    assert_eq!(
        h.ok(runner, snapshot).await,
        before,
        "nothing outside changed"
    );
    let out = h.run(runner, "ls /escaped.txt ../escaped.txt").await;
    assert_ne!(out.exit, Some(0), "{out:?}");
}

/// A missing file is `FileNotFound` for download and listing.
pub async fn missing_files_are_file_not_found<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    let download = h.download(runner, "missing.txt").await;
    assert!(
        matches!(download, Err(BackendError::FileNotFound)),
        "{download:?}"
    );
    let list = h.list(runner, "missing/dir", true).await;
    assert!(matches!(list, Err(BackendError::FileNotFound)), "{list:?}");
    h.files(runner, &[], &[("dir/", b"")]).await;
    let directory = h.download(runner, "dir").await;
    assert!(
        matches!(directory, Err(BackendError::FileNotFound)),
        "a directory cannot be downloaded: {directory:?}"
    );
}

/// The workspace and `/tmp` keep their files across the executions of one runner.
pub async fn workspace_and_tmp_persist_across_executions<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    h.ok(runner, "echo kept > ws.txt && echo scratch > /tmp/t.txt")
        .await;
    assert_eq!(
        h.ok(runner, "cat ws.txt /tmp/t.txt").await,
        "kept\r\nscratch\r\n"
    );
    assert_eq!(
        h.download(runner, "ws.txt").await.expect("download"),
        b"kept\n"
    );
}

/// Two runners, even of one environment, share neither workspace nor `/tmp`.
pub async fn runners_share_neither_workspace_nor_tmp<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let spec = h.register(ENV_A, &fixture.environment()).await;
    let (a, _) = h.start(ENV_A, &spec).await;
    let (b, _) = h.start(ENV_A, &spec).await;
    h.ok(a, "echo a > ws.txt && echo a > /tmp/t.txt").await;
    h.files(a, &[], &[("copied.txt", b"a")]).await;
    let out = h.run(b, "ls ws.txt /tmp/t.txt copied.txt").await;
    assert_eq!(out.exit, Some(2), "b sees none of a's files: {out:?}");
    assert_eq!(h.list(b, "./", true).await.expect("list"), vec![]);
    assert!(matches!(
        h.download(b, "copied.txt").await,
        Err(BackendError::FileNotFound)
    ));
    h.files(b, &["./"], &[]).await;
    assert_eq!(h.download(a, "copied.txt").await.expect("a's file"), b"a");
}

/// A runner of one environment finds no trace of another environment's runner's files anywhere
/// in its file system.
pub async fn a_runner_cannot_see_another_runners_files<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let spec_a = h.register(ENV_A, &fixture.environment()).await;
    let spec_b = h.register(ENV_B, &fixture.environment()).await;
    let (a, _) = h.start(ENV_A, &spec_a).await;
    let (b, _) = h.start(ENV_B, &spec_b).await;
    let name = format!("trident-contract-secret-{}", a.uuid().0);
    h.files(a, &[], &[(&format!("{name}.copied"), b"secret")])
        .await;
    h.ok(
        a,
        &format!("echo secret > {name}.ws && echo secret > /tmp/{name}.tmp"),
    )
    .await;
    assert_eq!(
        h.ok(a, &format!("ls {name}.* /tmp/{name}.* | wc -l"))
            .await
            .trim(),
        "3",
        "a sees its own files"
    );
    let out = h
        .run(
            b,
            &format!(
                "find / \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -name '{name}*' -print 2>/dev/null; true"
            ),
        )
        .await;
    assert_eq!(out.exit, Some(0), "{out:?}");
    assert_eq!(out.stdout_text(), "", "b found a's files");
}

/// After `stop_runner`, every call on the runner fails with `RunnerNotFound`, the inventory no
/// longer lists it, and stopping it again, or stopping a runner never started, is `Ok`.
pub async fn stop_runner_makes_later_calls_fail_and_unknown_stops_succeed<F: ContractFixture>(
    fixture: &F,
) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    h.ok(runner, "true").await;
    h.executor.stop_runner(runner).await.expect("stop");
    let request = ExecutionRequest {
        command: "true".to_owned(),
        environment: Vec::new(),
        privileged: false,
    };
    assert_runner_not_found(
        "execute",
        runner,
        h.executor.execute(runner, request).await.map(|_| ()),
    );
    assert_runner_not_found(
        "update",
        runner,
        h.executor
            .update_files(runner, update(&[], &[("x", b"x")]))
            .await,
    );
    assert_runner_not_found(
        "list",
        runner,
        h.executor
            .list_files(runner, "./".into(), true, false)
            .await,
    );
    assert_runner_not_found(
        "download",
        runner,
        h.executor
            .download_file(runner, "x".into(), false)
            .await
            .map(|d| d.size),
    );
    assert_runner_not_found(
        "mark",
        runner,
        h.executor.mark_runner(runner, RunnerMark::Retired).await,
    );
    let inventory = h
        .executor
        .inventory(Timestamp::ZERO)
        .await
        .expect("inventory");
    assert!(
        inventory.runners.iter().all(|r| r.id != runner),
        "{inventory:?}"
    );
    h.executor.stop_runner(runner).await.expect("stop again");
    let never = RunnerId::new(ENV_A, Uuid(0xDEAD));
    h.executor.stop_runner(never).await.expect("stop unknown");
}

/// `mark_runner` is what `inventory()` reports as the runner's mark.
pub async fn mark_runner_is_reflected_by_the_inventory<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    let mark_of = |inventory: trident_core::Inventory| {
        inventory
            .runners
            .iter()
            .find(|r| r.id == runner)
            .map(|r| r.mark)
    };
    let inventory = h
        .executor
        .inventory(Timestamp::ZERO)
        .await
        .expect("inventory");
    assert_eq!(
        mark_of(inventory),
        Some(RunnerMark::Idle),
        "a new runner is idle"
    );
    let claimed = RunnerMark::Claimed(ClaimMark {
        lease: Lease(77),
        inactivity_timeout: Some(Duration::from_secs(60)),
    });
    for mark in [claimed, RunnerMark::Retired, RunnerMark::Idle] {
        h.executor.mark_runner(runner, mark).await.expect("mark");
        let inventory = h
            .executor
            .inventory(Timestamp::ZERO)
            .await
            .expect("inventory");
        assert_eq!(mark_of(inventory), Some(mark));
    }
}

/// The inventory lists the registered environments with their specs and the running runners
/// with their ports, and echoes `as_of`; removed environments and stopped runners disappear.
pub async fn inventory_lists_environments_and_running_runners<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let as_of = Timestamp::from_millis(1_234);
    let empty = h.executor.inventory(as_of).await.expect("inventory");
    assert_eq!(empty.as_of, as_of);
    assert!(
        empty.environments.is_empty() && empty.runners.is_empty(),
        "{empty:?}"
    );

    let spec_a = h.register(ENV_A, &fixture.environment()).await;
    let mut other = fixture.environment();
    other.prewarming_pool_size = 3;
    let spec_b = h.register(ENV_B, &other).await;
    let (a1, ports) = h.start(ENV_A, &spec_a).await;
    let (a2, _) = h.start(ENV_A, &spec_a).await;
    let inventory = h.executor.inventory(as_of).await.expect("inventory");
    assert_eq!(inventory.as_of, as_of);
    let mut environments = inventory.environments.clone();
    environments.sort_by_key(|(id, _)| *id);
    assert_eq!(
        environments,
        vec![(ENV_A, (*spec_a).clone()), (ENV_B, (*spec_b).clone())]
    );
    let mut runners: Vec<_> = inventory
        .runners
        .iter()
        .map(|r| (r.id, r.status.clone()))
        .collect();
    runners.sort_by_key(|(id, _)| *id);
    assert_eq!(
        runners,
        vec![
            (a1, InventoryStatus::Running(ports.clone())),
            (a2, InventoryStatus::Running(ports))
        ]
    );

    h.executor.stop_runner(a1).await.expect("stop");
    h.executor
        .remove_environment(ENV_B)
        .await
        .expect("remove an environment");
    let inventory = h.executor.inventory(as_of).await.expect("inventory");
    let environments: Vec<_> = inventory.environments.iter().map(|(id, _)| *id).collect();
    assert_eq!(environments, vec![ENV_A]);
    let runners: Vec<_> = inventory.runners.iter().map(|r| r.id).collect();
    assert_eq!(runners, vec![a2]);
}

/// Absolute paths name what commands see: `/tmp/...` is the runner's `/tmp` (Poseidon's e2e
/// `TestCopyFilesRoute` copies `/tmp/absolute/file/path.txt` and `cat`s it), `/workspace/...` the
/// workspace.
pub async fn absolute_tmp_and_workspace_paths_reach_what_commands_see<F: ContractFixture>(
    fixture: &F,
) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    h.files(
        runner,
        &[],
        &[
            ("/tmp/absolute/file/path.txt", b"in tmp"),
            ("/workspace/abs.txt", b"in workspace"),
        ],
    )
    .await;
    assert_eq!(
        h.ok(runner, "cat /tmp/absolute/file/path.txt; echo; cat abs.txt")
            .await,
        "in tmp\r\nin workspace"
    );
    assert_eq!(
        h.download(runner, "/tmp/absolute/file/path.txt")
            .await
            .expect("download"),
        b"in tmp"
    );
    assert_eq!(
        h.list(runner, "/tmp/absolute/", true).await.expect("list"),
        vec![
            ("/tmp/absolute/file".to_owned(), 'd'),
            ("/tmp/absolute/file/path.txt".to_owned(), '-'),
        ]
    );
    h.ok(runner, "echo from command > /tmp/made.txt").await;
    assert_eq!(
        h.download(runner, "/tmp/made.txt").await.expect("download"),
        b"from command\n"
    );
    h.files(runner, &["/tmp/absolute"], &[]).await;
    let out = h.run(runner, "ls /tmp/absolute").await;
    assert_ne!(out.exit, Some(0), "deleted: {out:?}");
}

/// A file the runner's user may not read, like `/proc/1/environ`, is `FileNotFound` (Poseidon's
/// e2e `TestGetFileContent_Nomad`: 424).
pub async fn unreadable_system_files_are_file_not_found<F: ContractFixture>(fixture: &F) {
    let mut h = Harness::new(fixture).await;
    let runner = h.runner(fixture).await;
    let result = h.download(runner, "/proc/1/environ").await;
    assert!(
        matches!(result, Err(BackendError::FileNotFound)),
        "{result:?}"
    );
}
