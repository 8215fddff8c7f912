//! The local backend's sandboxes, tested for real: real processes, namespaces and cgroups on
//! this host (CI runs as root on the same kind of machine). Every test puts its state under a
//! temporary directory and its cgroups under a parent of its own, and removes both.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use trident_backends::local::exec::Collected;
use trident_backends::local::{
    Event, ExecSpec, HostConfig, Limits, Sandbox, SandboxHost, SandboxSpec,
};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A sandbox host with its own state dir and cgroup parent.
struct Fixture {
    host: SandboxHost,
    dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.host.remove_cgroup_parent();
    }
}

fn init_program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trident-sandbox-init"))
}

fn cgroup_parent() -> String {
    format!(
        "trident-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = HostConfig::new(dir.path().join("state"), init_program());
    config.cgroup_parent = cgroup_parent();
    let host = SandboxHost::new(config)
        .await
        .expect("this host allows sandboxes");
    Fixture { host, dir }
}

impl Fixture {
    async fn sandbox(&self, spec: SandboxSpec) -> Sandbox {
        self.host.create(spec).await.expect("the sandbox starts")
    }

    async fn plain(&self, id: &str) -> Sandbox {
        self.sandbox(SandboxSpec::new(id)).await
    }
}

async fn run(sandbox: &Sandbox, spec: ExecSpec) -> Collected {
    let mut execution = sandbox.exec(spec).await.expect("the command starts");
    tokio::time::timeout(Duration::from_secs(20), execution.collect())
        .await
        .expect("the command ends in time")
        .expect("the sandbox stays up")
}

async fn sh(sandbox: &Sandbox, command: &str) -> Collected {
    run(sandbox, ExecSpec::shell(command)).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Host pids of `root` and all its descendants, from /proc.
fn process_tree(root: i32) -> BTreeSet<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        parents.push((pid, ppid));
    }
    let mut tree = BTreeSet::from([root]);
    loop {
        let before = tree.len();
        for (pid, ppid) in &parents {
            if tree.contains(ppid) {
                tree.insert(*pid);
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

/// Whether a host pid is a live (non-zombie) process.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            !matches!(state, Some(Some('Z')) | Some(Some('X')))
        })
        .unwrap_or(false)
}

fn host_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn exit_code_is_reported_and_stderr_is_separate_from_the_pty() {
    let f = fixture().await;
    let sb = f.plain("exit").await;
    let out = sh(&sb, "echo out; echo err >&2; exit 3").await;
    assert_eq!(out.status.code(), 3);
    assert_eq!(out.status.signal(), None);
    assert_eq!(text(&out.stdout), "out\r\n", "pty output has \\r\\n");
    assert_eq!(text(&out.stderr), "err\n", "stderr is a pipe, no \\r");
    let out = sh(&sb, "cat -invalid").await;
    assert!(text(&out.stderr).contains("invalid option"), "{out:?}");
    assert!(!text(&out.stdout).contains("invalid option"), "{out:?}");
    assert_eq!(out.status.code(), 1);
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn input_is_echoed_by_the_pty_like_poseidon() {
    let f = fixture().await;
    let sb = f.plain("echo").await;
    let mut execution = sb.exec(ExecSpec::shell("head -n 1")).await.expect("start");
    execution
        .stdin()
        .send(Bytes::from_static(b"Hello World!\n"))
        .await
        .expect("stdin open");
    let out = execution.collect().await.expect("ends");
    assert_eq!(text(&out.stdout), "Hello World!\r\nHello World!\r\n");
    assert_eq!(out.status.code(), 0);
    drop(execution);
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn missing_programs_exit_127_with_a_message() {
    let f = fixture().await;
    let sb = f.plain("missing").await;
    let out = run(&sb, ExecSpec::new(["no-such-program-anywhere"])).await;
    assert_eq!(out.status.code(), 127);
    assert!(text(&out.stderr).contains("No such file"), "{out:?}");
    // PATH lookup uses the command's PATH.
    let out = run(&sb, ExecSpec::new(["true"])).await;
    assert_eq!(out.status.code(), 0);
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn environment_is_clean_plus_callers_variables_plus_codeocean() {
    let f = fixture().await;
    let sb = f.plain("env").await;
    let mut spec = ExecSpec::shell("env");
    spec.env.insert("hello".into(), "world with spaces".into());
    let out = run(&sb, spec).await;
    let env = text(&out.stdout);
    assert!(env.contains("hello=world with spaces\r\n"), "{env}");
    assert!(env.contains("CODEOCEAN=true\r\n"), "{env}");
    assert!(env.contains("PATH=/usr/local/sbin"), "{env}");
    // Nothing leaks from the server's environment (cargo sets these for tests).
    assert!(!env.contains("CARGO"), "{env}");
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn commands_with_quotes_and_newlines_reach_bash_verbatim() {
    let f = fixture().await;
    let sb = f.plain("quotes").await;
    let out = sh(
        &sb,
        "printf '%s|' \"it's\" '$HOME' \"a\\\"b\"\necho\necho second line",
    )
    .await;
    assert_eq!(text(&out.stdout), "it's|$HOME|a\"b|\r\nsecond line\r\n");
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn unprivileged_is_the_sandbox_user_and_privileged_is_root_only_inside() {
    let f = fixture().await;
    let sb = f.plain("ids").await;
    let out = sh(&sb, "id -u; id -g").await;
    assert_eq!(text(&out.stdout), "1000\r\n1000\r\n");
    let mut spec = ExecSpec::shell("id -u; exec sleep 30");
    spec.privileged = true;
    let mut execution = sb.exec(spec).await.expect("start");
    match execution.next_event().await {
        Some(Event::Stdout(b)) => assert_eq!(&b[..], b"0\r\n"),
        other => panic!("expected uid 0 inside, got {other:?}"),
    }
    // On the host, no process of the sandbox runs as root: uid 0 inside is an unprivileged id.
    // (A process that exited in between, like `id`, has no status any more and is skipped.)
    let uids: Vec<(i32, u32)> = process_tree(sb.init_pid())
        .into_iter()
        .filter_map(|pid| host_uid(pid).map(|uid| (pid, uid)))
        .collect();
    assert!(uids.len() >= 2, "init and the command: {uids:?}");
    for (pid, uid) in &uids {
        assert!(*uid >= 100_000, "host pid {pid} runs as host uid {uid}");
    }
    execution.kill();
    assert_eq!(execution.wait().await.expect("ends").code(), 137);
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn memory_breach_kills_the_command_with_137_and_the_sandbox_survives() {
    let f = fixture().await;
    let mut spec = SandboxSpec::new("memory");
    spec.limits = Limits {
        memory_bytes: Some(64 * 1024 * 1024),
        ..Limits::default()
    };
    let sb = f.sandbox(spec).await;
    // Poseidon's e2e TestMemoryMaxLimit: tail buffers everything it reads.
    let out = sh(&sb, "</dev/zero head -c 200M | tail > /dev/null").await;
    assert_eq!(out.status.code(), 137, "{out:?}");
    assert!(text(&out.stderr).contains("Killed"), "{out:?}");
    assert_eq!(text(&out.stdout), "");
    let out = sh(&sb, "echo still here").await;
    assert_eq!(text(&out.stdout), "still here\r\n");
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn process_count_is_bounded_and_kill_ends_the_flood() {
    let f = fixture().await;
    let mut spec = SandboxSpec::new("pids");
    spec.limits = Limits {
        pids_max: Some(32),
        ..Limits::default()
    };
    let sb = f.sandbox(spec).await;
    // dash, not bash: bash retries a failed fork for half a minute. The flood runs in a subshell
    // (dash gives up when a fork fails); the count uses only builtins, as no fork is left.
    let flood = "(i=0; while [ $i -lt 100 ]; do sleep 60 & i=$((i+1)); done) 2>/dev/null; set -- /proc/[0-9]*; echo $#; read x";
    let mut execution = sb
        .exec(ExecSpec::new(["/bin/sh", "-c", flood]))
        .await
        .expect("start");
    let count = match tokio::time::timeout(Duration::from_secs(10), execution.next_event()).await {
        Ok(Some(Event::Stdout(b))) => text(&b).trim().parse::<usize>().expect("a count"),
        other => panic!("expected the process count, got {other:?}"),
    };
    assert!(count <= 32, "{count} processes in a sandbox limited to 32");
    assert!(count >= 20, "the flood did fork: {count}");
    execution.kill();
    assert_eq!(execution.wait().await.expect("ends").code(), 137);
    drop(execution);
    // Every background sleep is gone, and the sandbox starts commands again.
    let out = sh(&sb, "ls /proc | grep -c '^[0-9]'").await;
    let left: usize = text(&out.stdout).trim().parse().expect("a count");
    assert!(left <= 4, "init, bash, ls, grep; got {left}");
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn without_network_access_only_loopback_exists() {
    let f = fixture().await;
    let sb = f.plain("nonet").await;
    let out = sh(&sb, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").await;
    assert_eq!(text(&out.stdout), "lo\r\n");
    let out = sh(&sb, "cat /sys/class/net/lo/operstate; ls /sys/class/net").await;
    assert_eq!(
        text(&out.stdout),
        "unknown\r\nlo\r\n",
        "loopback is up (UNKNOWN is lo's up)"
    );
    sb.destroy().await.expect("destroy");

    let mut spec = SandboxSpec::new("net");
    spec.network = true;
    let sb = f.sandbox(spec).await;
    let out = sh(&sb, "tail -n +3 /proc/net/dev | wc -l").await;
    let interfaces: usize = text(&out.stdout).trim().parse().expect("a count");
    let host: usize = std::fs::read_to_string("/proc/net/dev")
        .expect("host")
        .lines()
        .count()
        - 2;
    assert_eq!(
        interfaces, host,
        "network access shares the host's interfaces"
    );
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn files_and_tmp_persist_between_executions_and_tmp_is_private() {
    let f = fixture().await;
    let marker = format!("trident-test-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let a = f.plain("persist-a").await;
    let b = f.plain("persist-b").await;
    let out = sh(
        &a,
        &format!("echo kept > file.txt && echo tmp > /tmp/{marker} && pwd"),
    )
    .await;
    assert_eq!(text(&out.stdout), "/workspace\r\n");
    let out = sh(&a, &format!("cat /workspace/file.txt /tmp/{marker}")).await;
    assert_eq!(text(&out.stdout), "kept\r\ntmp\r\n");
    // The workspace is the host directory; /tmp is the sandbox's own.
    assert_eq!(
        std::fs::read_to_string(a.workspace_dir().join("file.txt")).expect("on the host"),
        "kept\n"
    );
    assert!(
        !Path::new("/tmp").join(&marker).exists(),
        "/tmp leaked to the host"
    );
    let out = sh(&b, &format!("ls /tmp/{marker} /workspace/file.txt")).await;
    assert_eq!(out.status.code(), 2, "{out:?}");
    // The root file system is read-only, the state dir (other workspaces) hidden.
    let state = f.dir.path().join("state");
    let out = sh(&a, &format!("touch /usr/x; ls {}", state.display())).await;
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{out:?}"
    );
    assert_eq!(text(&out.stdout), "", "the state dir is hidden: {out:?}");
    a.destroy().await.expect("destroy");
    b.destroy().await.expect("destroy");
}

#[tokio::test]
async fn destroy_leaves_no_process_cgroup_or_directory_behind() {
    let f = fixture().await;
    let sb = f.plain("destroy").await;
    let mut execution = sb
        .exec(ExecSpec::shell(
            "setsid sleep 300 & sleep 300 & echo started; wait",
        ))
        .await
        .expect("start");
    assert!(matches!(
        execution.next_event().await,
        Some(Event::Stdout(_))
    ));
    let tree = process_tree(sb.init_pid());
    assert!(tree.len() >= 4, "init, bash and two sleeps: {tree:?}");
    let cgroup_dirs: Vec<PathBuf> = [
        &f.host.cgroups().memory,
        &f.host.cgroups().pids,
        &f.host.cgroups().tracking,
    ]
    .into_iter()
    .flatten()
    .map(|h| h.mount.join(&f.host.cgroups().parent).join("destroy"))
    .collect();
    assert!(cgroup_dirs.iter().all(|d| d.is_dir()), "{cgroup_dirs:?}");
    let workspace = sb.workspace_dir().to_owned();
    sb.destroy().await.expect("destroy");
    for pid in &tree {
        assert!(!alive(*pid), "host pid {pid} outlived its sandbox");
    }
    for dir in &cgroup_dirs {
        assert!(!dir.exists(), "{dir:?} was not removed");
    }
    assert!(!workspace.exists(), "the workspace was not wiped");
    assert_eq!(
        execution.wait().await.ok(),
        None,
        "the execution reports the sandbox gone"
    );
}

#[tokio::test]
async fn dropping_a_sandbox_kills_its_processes() {
    let f = fixture().await;
    let sb = f.plain("drop").await;
    let mut execution = sb
        .exec(ExecSpec::shell("sleep 300 & echo started; wait"))
        .await
        .expect("start");
    assert!(matches!(
        execution.next_event().await,
        Some(Event::Stdout(_))
    ));
    let tree = process_tree(sb.init_pid());
    drop(sb);
    for pid in &tree {
        assert!(!alive(*pid), "host pid {pid} outlived its dropped sandbox");
    }
}

#[tokio::test]
async fn kill_reaches_processes_that_left_the_process_group() {
    let f = fixture().await;
    let sb = f.plain("kill").await;
    let mut execution = sb
        .exec(ExecSpec::shell(
            "setsid sleep 301 & sleep 302 & echo started; wait",
        ))
        .await
        .expect("start");
    assert!(matches!(
        execution.next_event().await,
        Some(Event::Stdout(_))
    ));
    execution.kill();
    assert_eq!(execution.wait().await.expect("ends").code(), 137);
    let out = sh(&sb, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '").await;
    assert!(!text(&out.stdout).contains("sleep 30"), "{out:?}");
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn dropping_an_execution_kills_its_process_tree() {
    let f = fixture().await;
    let sb = f.plain("dropexec").await;
    let mut execution = sb
        .exec(ExecSpec::shell("sleep 303 & echo started; wait"))
        .await
        .expect("start");
    assert!(matches!(
        execution.next_event().await,
        Some(Event::Stdout(_))
    ));
    drop(execution);
    let mut left = String::new();
    for _ in 0..100 {
        left = text(
            &sh(&sb, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
                .await
                .stdout,
        );
        if !left.contains("sleep 303") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!left.contains("sleep 303"), "{left}");
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn interrupt_sends_sigquit_to_the_command() {
    let f = fixture().await;
    let sb = f.plain("interrupt").await;
    let mut execution = sb.exec(ExecSpec::shell("sleep 100")).await.expect("start");
    // Give bash a moment to exec sleep, so that the signal reaches sleep.
    tokio::time::sleep(Duration::from_millis(50)).await;
    execution.interrupt().expect("interrupt");
    let status = tokio::time::timeout(Duration::from_secs(5), execution.wait())
        .await
        .expect("SIGQUIT ends sleep")
        .expect("ends");
    assert_eq!(status.code(), 131);
    assert_eq!(status.signal(), Some(3));
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn interrupt_reaches_a_command_whose_terminal_input_is_full() {
    let f = fixture().await;
    let sb = f.plain("interrupt-full").await;
    let mut execution = sb.exec(ExecSpec::shell("sleep 100")).await.expect("start");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // sleep reads nothing: lines queue in the terminal until it takes no more, then in the
    // execution's stdin queue until that is full too.
    let stdin = execution.stdin();
    let mut line = vec![b'y'; 1023];
    line.push(b'\n');
    let line = bytes::Bytes::from(line);
    let mut full = false;
    for _ in 0..1_024 {
        let sent = tokio::time::timeout(Duration::from_millis(200), stdin.send(line.clone())).await;
        if sent.is_err() {
            full = true;
            break;
        }
    }
    assert!(full, "1 MiB of stdin fit: the terminal never filled");
    execution.interrupt().expect("interrupt");
    let status = tokio::time::timeout(Duration::from_secs(5), execution.wait())
        .await
        .expect("SIGQUIT ends sleep though the terminal takes no input")
        .expect("ends");
    assert_eq!(status.signal(), Some(3), "{status:?}");
    sb.destroy().await.expect("destroy");
}

#[tokio::test]
async fn many_short_executions_in_a_row_all_succeed() {
    let f = fixture().await;
    let started = Instant::now();
    let sb = f.plain("timing").await;
    let create = started.elapsed();
    let started = Instant::now();
    const RUNS: u32 = 20;
    for _ in 0..RUNS {
        assert_eq!(
            run(&sb, ExecSpec::new(["/bin/true"])).await.status.code(),
            0
        );
    }
    let per_exec = started.elapsed() / RUNS;
    // A measurement for the log, not an assertion (a benchmark guards performance).
    println!("sandbox create: {create:?}, one `true` execution: {per_exec:?}");
    // Released executions' cgroups do not pile up in a long-lived sandbox.
    let tracking = f
        .host
        .cgroups()
        .tracking
        .as_ref()
        .expect("a tracking hierarchy here");
    let sandbox_cgroup = tracking.mount.join(&f.host.cgroups().parent).join("timing");
    let left = std::fs::read_dir(&sandbox_cgroup)
        .expect("the sandbox's cgroup")
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    assert!(
        left <= 2,
        "{left} execution cgroups left after {RUNS} executions"
    );
    sb.destroy().await.expect("destroy");
}

/// Helper for `the_sandbox_dies_with_the_server`: run in a child test process, which the parent
/// kills.
#[tokio::test]
#[ignore = "run by the_sandbox_dies_with_the_server in a child process"]
async fn child_server_holding_a_sandbox() {
    let Ok(state) = std::env::var("TRIDENT_TEST_STATE") else {
        return;
    };
    let Ok(parent) = std::env::var("TRIDENT_TEST_CGROUP") else {
        return;
    };
    let mut config = HostConfig::new(state, init_program());
    config.cgroup_parent = parent;
    let host = SandboxHost::new(config).await.expect("host");
    let sb = host
        .create(SandboxSpec::new("orphan"))
        .await
        .expect("sandbox");
    let mut execution = sb
        .exec(ExecSpec::shell("sleep 300 & echo started; wait"))
        .await
        .expect("start");
    assert!(matches!(
        execution.next_event().await,
        Some(Event::Stdout(_))
    ));
    println!("INIT {}", sb.init_pid());
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn the_sandbox_dies_with_the_server() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let parent = cgroup_parent();
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_server_holding_a_sandbox",
            "--ignored",
            "--nocapture",
        ])
        .env("TRIDENT_TEST_STATE", dir.path().join("state"))
        .env("TRIDENT_TEST_CGROUP", &parent)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("child test process");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let init_pid: i32 = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the child reports in time")
            .expect("readable")
            .expect("the child prints its sandbox's init pid");
        if let Some(pid) = line.strip_prefix("INIT ") {
            break pid.parse().expect("a pid");
        }
    };
    let tree = process_tree(init_pid);
    assert!(tree.len() >= 3, "init, bash, sleep: {tree:?}");
    // The server dies without any chance to clean up.
    child.start_kill().expect("kill the child");
    let _ = child.wait().await;
    eventually("every process of the orphaned sandbox is gone", || {
        tree.iter().all(|pid| !alive(*pid))
    })
    .await;
    // The dead server's cgroups are left for the next start-up; remove them here, once the
    // last zombie has been reaped by whoever inherited it.
    let layout = trident_backends::local::cgroup::CgroupLayout::detect(&parent);
    let hierarchies: Vec<PathBuf> = [&layout.memory, &layout.pids, &layout.cpu, &layout.tracking]
        .into_iter()
        .flatten()
        .map(|h| h.mount.join(&parent))
        .collect();
    eventually("the orphaned sandbox's cgroups can be removed", || {
        for dir in &hierarchies {
            let sandbox = dir.join("orphan");
            if let Ok(entries) = std::fs::read_dir(&sandbox) {
                for e in entries.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(&sandbox);
            let _ = std::fs::remove_dir(dir);
        }
        hierarchies.iter().all(|dir| !dir.exists())
    })
    .await;
}

#[tokio::test]
async fn a_root_server_refuses_to_map_the_sandboxs_root_to_host_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = HostConfig::new(dir.path().join("state"), init_program());
    config.cgroup_parent = cgroup_parent();
    config.id_map = trident_backends::local::IdMapConfig::SingleId;
    match SandboxHost::new(config).await {
        Err(trident_backends::local::SandboxError::InvalidConfig(reason)) => {
            assert!(reason.contains("host's root"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_workspace_quota_bounds_bytes_and_files_of_the_workspace_and_tmp_together() {
    let f = fixture().await;
    assert!(
        f.host.capabilities().workspace_quota,
        "a root server can mount the quota tmpfs"
    );
    let mut spec = SandboxSpec::new("quota");
    spec.limits = Limits {
        workspace_bytes: Some(8 * 1024 * 1024),
        workspace_files: Some(64),
        ..Limits::default()
    };
    let sb = f.sandbox(spec).await;
    let dir = f.dir.path().join("state").join("quota");
    // Bytes: the workspace and /tmp draw from one quota; the write that overflows fails.
    let out = sh(
        &sb,
        "head -c 5M /dev/zero > a && head -c 5M /dev/zero > /tmp/b; echo $?",
    )
    .await;
    assert!(
        text(&out.stderr).contains("No space left on device"),
        "{out:?}"
    );
    assert_eq!(text(&out.stdout).trim(), "1", "{out:?}");
    // Files: the 65th inode is refused.
    let out = sh(
        &sb,
        "rm -f a /tmp/b; for i in $(seq 100); do : > f$i || break; done; ls | wc -l",
    )
    .await;
    let created: usize = text(&out.stdout).trim().parse().expect("a count");
    assert!((50..64).contains(&created), "{created} files: {out:?}");
    // File operations of the server meet the same bound, with a clear error.
    let workspace = sb.workspace().expect("the workspace opens");
    match workspace.copy("big.bin", &vec![7u8; 9 * 1024 * 1024]) {
        Err(trident_backends::local::FileError::NoSpace(path)) => assert_eq!(path, "big.bin"),
        other => panic!("expected NoSpace, got {other:?}"),
    }
    drop(workspace);
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .contains(&format!(" {} ", dir.display()))
    };
    assert!(mounted(), "the runner's directory is a mount");
    sb.destroy().await.expect("destroy");
    assert!(!mounted(), "the quota tmpfs is unmounted with the sandbox");
    assert!(!dir.exists(), "and its mount point removed");
}

#[tokio::test]
async fn a_hidden_file_cannot_be_read_inside_the_sandbox() {
    // Outside /tmp (the sandbox has its own) and readable by anyone on the host.
    let dir = tempfile::tempdir_in("/var/tmp").expect("a directory under /var/tmp");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let secret = dir.path().join("trident.toml");
    std::fs::write(&secret, "token = \"s3cret\"\n").expect("write the secret");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let state = tempfile::tempdir().expect("a temporary directory");
    let mut config = HostConfig::new(state.path().join("state"), init_program());
    config.cgroup_parent = cgroup_parent();
    config.hidden_paths = vec![secret.clone()];
    let host = SandboxHost::new(config).await.expect("a host");
    let sb = host
        .create(SandboxSpec::new("hidden"))
        .await
        .expect("the sandbox starts");
    let command = format!("cat {}; ls {}", secret.display(), dir.path().display());
    let out = sh(&sb, &command).await;
    assert!(!text(&out.stdout).contains("s3cret"), "{out:?}");
    assert!(text(&out.stderr).contains("Permission denied"), "{out:?}");
    assert!(
        text(&out.stdout).contains("trident.toml"),
        "the file is still listed, only unreadable: {out:?}"
    );
    let privileged = run(&sb, {
        let mut spec = ExecSpec::shell(format!("cat {}", secret.display()));
        spec.privileged = true;
        spec
    })
    .await;
    assert!(
        !text(&privileged.stdout).contains("s3cret"),
        "{privileged:?}"
    );
    sb.destroy().await.expect("destroy");
    host.remove_cgroup_parent();
}

/// Stage 1 reports `Pid1` and the sandbox's pid 1 reports `Ready`, two processes on one control
/// socket. On a busy host pid 1 may be done before stage 1 is scheduled again after its fork;
/// `Ready` then came first and the start failed ("unexpected message Ready"). Here a hook of
/// debug builds holds stage 1 back for `DELAY` before it reports, far longer than pid 1 takes to
/// build the sandbox, so the race is certain, and every start still succeeds.
#[cfg(debug_assertions)]
#[tokio::test]
async fn a_sandbox_starts_when_pid_1_is_ready_before_stage_1_reports_it() {
    use std::os::unix::fs::PermissionsExt;
    const DELAY: Duration = Duration::from_millis(600);
    let dir = tempfile::tempdir().expect("a temporary directory");
    // The server starts the init with an empty environment: a wrapper sets the hook's variable.
    let wrapper = dir.path().join("slow-stage-1");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nTRIDENT_TEST_DELAY_PID1_REPORT_MS={} exec '{}' \"$@\"\n",
            DELAY.as_millis(),
            init_program().display()
        ),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .expect("make the wrapper executable");
    // A child that another test forks while the file was open for writing holds a copy of that
    // descriptor until it execs; running the file meanwhile fails with ETXTBSY.
    for _ in 0..100 {
        match std::process::Command::new(&wrapper)
            .arg("--trident-sandbox-probe")
            .output()
        {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => break,
        }
    }
    let mut config = HostConfig::new(dir.path().join("state"), wrapper);
    config.cgroup_parent = cgroup_parent();
    let host = SandboxHost::new(config).await.expect("a host");
    for attempt in 0..3 {
        let started = Instant::now();
        let sb = host
            .create(SandboxSpec::new(format!("slow-report-{attempt}")))
            .await
            .expect("the sandbox starts although pid 1 was ready first");
        assert!(
            started.elapsed() >= DELAY,
            "the hook held stage 1 back (the start took {:?})",
            started.elapsed()
        );
        let out = sh(&sb, "echo -n up").await;
        assert_eq!(text(&out.stdout), "up", "{out:?}");
        assert_eq!(out.status.code(), 0, "{out:?}");
        sb.destroy().await.expect("destroy");
    }
    host.remove_cgroup_parent();
}

/// A command that reads no input exits while input is still queued for its terminal. No
/// process holds the terminal any more (it is hung up) and it is full: the execution's I/O task
/// must give the input up and report the exit, not retry the write for good. It did retry: the
/// hang-up leaves the terminal "writable" for tokio while every write fails with `EAGAIN`, and
/// the task spun on one worker thread without ever yielding, which stopped the server's timers.
#[test]
fn input_queued_for_a_hung_up_terminal_does_not_hold_up_the_exit() {
    // A runtime of its own on a thread of its own: a spinning task holds a runtime thread for
    // good, and this test must end all the same.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let status = runtime.block_on(async {
            let f = fixture().await;
            let sb = f.plain("hung-up").await;
            let mut execution = sb
                .exec(ExecSpec::shell("sleep 1"))
                .await
                .expect("the command starts");
            let stdin = execution.stdin();
            let line = Bytes::from(format!("{}\n", "x".repeat(1023)));
            // 1 MiB: far more than the terminal and the input queue take.
            let feeder = tokio::spawn(async move {
                for _ in 0..1024 {
                    if stdin.send(line.clone()).await.is_err() {
                        break;
                    }
                }
            });
            let collected = execution.collect().await.expect("the sandbox stays up");
            feeder.abort();
            drop(execution);
            sb.destroy().await.expect("destroy");
            collected.status
        });
        let _ = done_tx.send(status);
    });
    let status = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the exit is reported although input was still queued");
    assert_eq!(status.code(), 0, "{status:?}");
}
