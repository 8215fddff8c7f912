//! The sandbox init: the program that holds a runner's namespaces and starts its executions.
//!
//! # Why a re-executed program
//!
//! The server is a multi-threaded tokio process. After `fork` in a threaded process only
//! async-signal-safe calls are allowed until `execve`, but an init that lives as long as a runner
//! needs allocation, JSON and a poll loop. So the server starts this code with `execve` (of the
//! `trident-sandbox-init` binary, or of its own executable when its `main` calls
//! [`run_if_requested`]), and from then on it is an ordinary single-threaded Rust program.
//!
//! # Why executions are forked by the init (not `setns` from the server)
//!
//! Entering a sandbox from outside would need, per execution: a fork of the threaded server, then
//! `setns` into six namespaces (joining a user namespace is refused to threaded callers, so it has
//! to happen in the child), a second fork because `setns` into a pid namespace only affects
//! children, a `chroot` into the sandbox's root, and an intermediate process that relays the exit
//! status. Asking the init instead costs one message: the init, already inside every namespace
//! and at the sandbox's root, forks and execs. It is also the parent of every execution, so it
//! reaps them (as pid 1 it reaps orphans too, which would otherwise pile up as zombies against
//! the pid limit) and reports exact exit statuses; and it can kill an execution's process group
//! from inside. The server passes the execution's pty, stderr pipe, status socket and cgroup
//! file over the control socket with `SCM_RIGHTS`, so nothing is opened inside on the server's
//! behalf.
//!
//! # Processes
//!
//! 1. *stage 1* (this program, started by the server): creates the user namespace, waits while
//!    the server writes its id maps and moves it into the sandbox's cgroups, creates the other
//!    namespaces and forks:
//! 2. *pid 1* of the new pid namespace: builds the root file system, then serves execution
//!    requests until the control socket reaches end-of-file (the server dropped the sandbox or
//!    exited), and exits, which makes the kernel kill every process in the namespace. Its parent
//!    death signal is SIGKILL, tied to stage 1.
//!
//! Both report on the control socket, stage 1 `Pid1` (pid 1's pid on the host), pid 1 `Ready` or
//! its failure, and the server reads them in that order. Pid 1 sends nothing before stage 1 has
//! written a byte to a pipe between them, after its `Pid1` was sent: the order holds by
//! construction, however the host schedules the two processes.
//!
//! Stage 1 stays as pid 1's parent and waits for it: the server holds stage 1 as a child
//! process (killed on drop) and pid 1 by pidfd. Stage 1 itself has no parent death signal because
//! that signal follows the *thread* that forked it, and tokio may fork from a blocking-pool
//! thread that exits when idle.

use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, killpg, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use crate::local::config::IdMap;
use crate::local::protocol::{self, ExecControl, ExecRequest, ExecStatus, FromInit, Setup, ToInit};
use crate::local::sys;

/// `argv[1]` that makes a program the sandbox init.
pub const INIT_ARG: &str = "--trident-sandbox-init";
/// `argv[1]` that makes a program probe which namespaces this host allows (see
/// [`crate::local::probe`]).
pub const PROBE_ARG: &str = "--trident-sandbox-probe";
/// The fd on which the server passes the control socket.
pub(crate) const CONTROL_FD: i32 = 3;
/// Upper bound of executions running at once in one sandbox; more get `SpawnFailed`.
pub(crate) const MAX_EXECUTIONS: usize = 64;
/// `PATH` for commands whose environment does not set one (Debian's default for root).
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs the init (or the namespace probe) and exits if this process was started as one;
/// returns otherwise. A server that uses its own executable as
/// [`HostConfig::init_program`](crate::local::HostConfig::init_program) calls this first thing
/// in `main`, before any thread is started.
pub fn run_if_requested() {
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        Some(arg) if arg == OsStr::new(INIT_ARG) => std::process::exit(stage1_main()),
        Some(arg) if arg == OsStr::new(PROBE_ARG) => std::process::exit(probe_main()),
        _ => {}
    }
}

/// A set-up failure: what the init was doing and the error.
#[derive(Debug)]
struct Failure {
    stage: String,
    errno: Option<i32>,
    message: String,
}

impl Failure {
    fn report(self) -> FromInit {
        FromInit::Failed {
            stage: self.stage,
            errno: self.errno,
            message: self.message,
        }
    }
}

/// Attaches "what we were doing" to an error.
trait Stage<T> {
    fn stage(self, what: impl FnOnce() -> String) -> Result<T, Failure>;
}

impl<T, E: Into<io::Error>> Stage<T> for Result<T, E> {
    fn stage(self, what: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|e| {
            let e: io::Error = e.into();
            Failure {
                stage: what(),
                errno: e.raw_os_error(),
                message: e.to_string(),
            }
        })
    }
}

fn stage1_main() -> i32 {
    let ctl = match sys::take_fd(CONTROL_FD) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("trident-sandbox-init: no control socket on fd {CONTROL_FD}: {e}");
            return 2;
        }
    };
    match stage1(&ctl) {
        Ok(code) => code,
        Err(failure) => {
            let _ = protocol::send(ctl.as_fd(), &failure.report(), &[]);
            1
        }
    }
}

fn recv_expected(ctl: BorrowedFd<'_>, what: &str) -> Result<ToInit, Failure> {
    match protocol::recv::<ToInit>(ctl).stage(|| format!("receive {what}"))? {
        Some((msg, _fds)) => Ok(msg),
        None => Err(Failure {
            stage: format!("receive {what}"),
            errno: None,
            message: "the server closed the control socket".into(),
        }),
    }
}

fn stage1(ctl: &OwnedFd) -> Result<i32, Failure> {
    let setup = match recv_expected(ctl.as_fd(), "the set-up")? {
        ToInit::Setup(setup) => setup,
        other => {
            return Err(Failure {
                stage: "receive the set-up".into(),
                errno: None,
                message: format!("unexpected message {other:?}"),
            });
        }
    };
    unshare(CloneFlags::CLONE_NEWUSER).stage(|| "create the user namespace".into())?;
    if let IdMap::SingleId { host_uid, host_gid } = setup.id_map {
        // An unprivileged process may map exactly its own ids, and only after giving up
        // setgroups(2) for good (otherwise it could drop a group that denies it access).
        write_proc_self("setgroups", "deny")?;
        write_proc_self("uid_map", &format!("0 {host_uid} 1\n"))?;
        write_proc_self("gid_map", &format!("0 {host_gid} 1\n"))?;
    }
    protocol::send(ctl.as_fd(), &FromInit::UsernsReady, &[])
        .stage(|| "report the user namespace".into())?;
    match recv_expected(ctl.as_fd(), "the go-ahead")? {
        ToInit::Go => {}
        other => {
            return Err(Failure {
                stage: "receive the go-ahead".into(),
                errno: None,
                message: format!("unexpected message {other:?}"),
            });
        }
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    if !setup.network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags)
        .stage(|| "create the mount, pid, ipc, uts, cgroup and network namespaces".into())?;

    // Stage 1 and pid 1 share the control socket, and the server expects `Pid1` (from stage 1)
    // before anything pid 1 says. Nothing orders two processes' sends by itself: on a busy host
    // pid 1 can build the sandbox and report `Ready` before stage 1 is scheduled again. So pid 1
    // holds its first message until stage 1 says, through this pipe, that `Pid1` is sent.
    let (pid1_reported_read, pid1_reported_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .stage(|| "create the pipe that orders the reports".into())?;
    // SAFETY: stage 1 is single-threaded (a fresh `execve` that started no thread), so the child
    // may run arbitrary code.
    match unsafe { nix::unistd::fork() }.stage(|| "fork the sandbox's pid 1".into())? {
        ForkResult::Child => {
            // Only stage 1 may hold the write end: its exit must read as end-of-file here.
            drop(pid1_reported_write);
            let code = pid1_main(&setup, ctl, pid1_reported_read);
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(pid1_reported_read);
            #[cfg(debug_assertions)]
            delay_pid1_report_for_tests();
            protocol::send(
                ctl.as_fd(),
                &FromInit::Pid1 {
                    host_pid: child.as_raw(),
                },
                &[],
            )
            .stage(|| "report pid 1".into())?;
            // `send` returned, so `Pid1` is in the server's queue: pid 1's reports go after it.
            // Should this write fail, pid 1 sees end-of-file when stage 1 exits.
            nix::unistd::write(&pid1_reported_write, &[1]).stage(|| "let pid 1 report".into())?;
            drop(pid1_reported_write);
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
                    Ok(_) | Err(Errno::EINTR) => continue,
                    Err(e) => {
                        return Err(e).stage(|| "wait for pid 1".into());
                    }
                }
            }
        }
    }
}

fn write_proc_self(file: &str, content: &str) -> Result<(), Failure> {
    fs::write(format!("/proc/self/{file}"), content).stage(|| format!("write /proc/self/{file}"))
}

/// `TRIDENT_TEST_DELAY_PID1_REPORT_MS`, read by stage 1 of debug builds only: how long to wait
/// before reporting pid 1, so that a test can make pid 1 finish first, as a busy host may. The
/// server starts the init with an empty environment, so only a wrapper of the init program
/// (what the test does) can set it.
#[cfg(debug_assertions)]
fn delay_pid1_report_for_tests() {
    let delay_ms = std::env::var("TRIDENT_TEST_DELAY_PID1_REPORT_MS")
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok());
    if let Some(delay_ms) = delay_ms {
        // Bounded below the server's default start timeout (10 s).
        std::thread::sleep(std::time::Duration::from_millis(delay_ms.min(5_000)));
    }
}

/// How long pid 1 waits for stage 1 to report it. A backstop: stage 1 reports right after the
/// fork, and the server gives up on the start after its own create timeout (10 s by default).
const PID1_REPORTED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until stage 1 has sent `Pid1` (one byte on `reported`). An error means stage 1 failed
/// or exited first, and reported that itself.
fn wait_for_pid1_report(reported: OwnedFd) -> Result<(), String> {
    let deadline = std::time::Instant::now() + PID1_REPORTED_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(format!(
                "stage 1 did not report pid 1 within {PID1_REPORTED_TIMEOUT:?}"
            ));
        }
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(reported.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("cannot wait for stage 1: {e}")),
        }
        let mut byte = [0u8; 1];
        return match nix::unistd::read(&reported, &mut byte) {
            Ok(1) => Ok(()),
            Ok(_) => Err("stage 1 exited without reporting pid 1".into()),
            Err(e) => Err(format!("cannot hear from stage 1: {e}")),
        };
    }
}

fn pid1_main(setup: &Setup, ctl: &OwnedFd, pid1_reported: OwnedFd) -> i32 {
    // If stage 1 is killed between the fork and this call, no signal comes; pid 1 then still
    // ends when the server closes the control socket (or kills it by pidfd on destroy). A
    // `getppid()` check cannot tell: the parent is outside our pid namespace, so it reads 0.
    let built = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| Failure {
            stage: "set the parent death signal".into(),
            errno: Some(e as i32),
            message: e.desc().into(),
        })
        .and_then(|()| build_sandbox(setup));
    // Whatever pid 1 reports, `Ready` or a failure, goes after stage 1's `Pid1`.
    if let Err(why) = wait_for_pid1_report(pid1_reported) {
        eprintln!("trident-sandbox-init: {why}");
        return 1;
    }
    if let Err(failure) = built {
        let _ = protocol::send(ctl.as_fd(), &failure.report(), &[]);
        return 1;
    }
    if let Err(e) = protocol::send(ctl.as_fd(), &FromInit::Ready, &[]) {
        eprintln!("trident-sandbox-init: cannot report ready: {e}");
        return 1;
    }
    serve(setup, ctl)
}

/// Top-level entries of the root file system that the sandbox gets fresh instead of from the
/// host: kernel file systems, scratch space, and `/run` (host sockets live there).
const FRESH_TOP_LEVEL: &[&str] = &["proc", "sys", "dev", "tmp", "run"];

fn cstring(path: &Path) -> Result<CString, Failure> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Failure {
        stage: format!("use path {path:?}"),
        errno: None,
        message: "path contains a NUL byte".into(),
    })
}

/// Builds the sandbox's root file system and enters it.
///
/// Runs as pid 1, with every capability in the new user namespace but still with the host
/// credentials it was started with. That matters: permission checks on host paths compare host
/// ids, and the state dir may be reachable only by the server's own uid. So host paths are
/// resolved first (fds opened, the root tmpfs mounted and entered), then the process takes uid 0
/// *of the sandbox* (an unprivileged host uid), and everything after that uses paths relative to
/// the new root or `/proc/self/fd/N`.
fn build_sandbox(setup: &Setup) -> Result<(), Failure> {
    let open_dir = |path: &Path| -> Result<OwnedFd, Failure> {
        nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .stage(|| format!("open {path:?}"))
    };
    let rootfs_fd = open_dir(&setup.rootfs)?;
    let workspace_fd = open_dir(&setup.workspace)?;
    let tmp_fd = open_dir(&setup.tmp)?;
    let fd_path = |fd: &OwnedFd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    // Read the host root's entries while we can (host credentials).
    let mut entries = Vec::new();
    for entry in fs::read_dir(fd_path(&rootfs_fd)).stage(|| format!("list {:?}", setup.rootfs))? {
        let entry = entry.stage(|| format!("list {:?}", setup.rootfs))?;
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else {
            continue;
        };
        if FRESH_TOP_LEVEL.contains(&name_str) || name_str == setup.workspace_name {
            continue;
        }
        let file_type = entry.file_type().stage(|| format!("inspect {name:?}"))?;
        if file_type.is_symlink() {
            let target = fs::read_link(entry.path()).stage(|| format!("read link {name:?}"))?;
            entries.push((name, Some(target)));
        } else if file_type.is_dir() {
            entries.push((name, None));
        }
    }

    // Nothing we mount may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .stage(|| "make the mount namespace private".into())?;
    mount(
        Some("tmpfs"),
        &setup.root_mountpoint,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        // Owned by the sandbox's root (ids are read in our user namespace), not by the host
        // root we still are: otherwise the skeleton could not be created after the switch.
        Some("mode=0755,size=1m,uid=0,gid=0"),
    )
    .stage(|| "mount the root tmpfs".into())?;
    nix::unistd::chdir(&setup.root_mountpoint).stage(|| "enter the root tmpfs".into())?;

    // Become the sandbox's root: from here on files we create belong to the sandbox.
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .stage(|| "take gid 0 of the sandbox".into())?;
    if matches!(setup.id_map, IdMap::Range { .. }) {
        nix::unistd::setgroups(&[]).stage(|| "drop supplementary groups".into())?;
    }
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .stage(|| "take uid 0 of the sandbox".into())?;

    // Skeleton: mount points and the root file system's top-level symlinks (like /bin → usr/bin).
    let mkdir = |name: &str, mode: u32| -> Result<(), Failure> {
        nix::unistd::mkdir(name, nix::sys::stat::Mode::from_bits_truncate(mode))
            .stage(|| format!("create /{name}"))
    };
    for (name, target) in &entries {
        match target {
            Some(target) => std::os::unix::fs::symlink(target, name)
                .stage(|| format!("create the symlink /{}", name.to_string_lossy()))?,
            None => nix::unistd::mkdir(
                name.as_os_str(),
                nix::sys::stat::Mode::from_bits_truncate(0o755),
            )
            .stage(|| format!("create /{}", name.to_string_lossy()))?,
        }
    }
    for name in FRESH_TOP_LEVEL {
        mkdir(name, 0o755)?;
    }
    mkdir(&setup.workspace_name, 0o755)?;

    // The root file system, read-only.
    for (name, target) in &entries {
        if target.is_none() {
            let source = fd_path(&rootfs_fd).join(name);
            mount(
                Some(&source),
                name.as_os_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .stage(|| format!("bind {source:?}"))?;
        }
    }
    let sys_fresh = !setup.network
        && mount(
            Some("sysfs"),
            "sys",
            Some("sysfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .is_ok();
    if !sys_fresh {
        // sysfs can only be mounted by the owner of the network namespace; with network access
        // the sandbox shares the host's, so it gets the host's /sys read-only instead.
        mount(
            Some("/sys"),
            "sys",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .stage(|| "bind /sys".into())?;
    }
    sys::mount_setattr(
        c".",
        true,
        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
    )
    .stage(|| "make the root file system read-only (mount_setattr needs Linux 5.12)".into())?;

    // Hide host paths that other runners' data lives under (directories) and the server's own
    // secrets (files, such as its configuration file with the API token).
    for hidden in &setup.hidden {
        let Ok(relative) = hidden.strip_prefix("/") else {
            continue;
        };
        let inside = Path::new(".").join(relative);
        if relative.as_os_str().is_empty() {
            continue;
        }
        if inside.is_file() {
            // The host's /dev/null over it on a nodev mount: opening it is refused (EACCES).
            mount(
                Some("/dev/null"),
                relative,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .stage(|| format!("hide {hidden:?}"))?;
            let relative_c = cstring(relative)?;
            sys::mount_setattr(
                &relative_c,
                false,
                sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
            )
            .stage(|| format!("seal {hidden:?}"))?;
            continue;
        }
        if !inside.is_dir() {
            continue;
        }
        mount(
            Some("tmpfs"),
            relative,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4k,mode=0755"),
        )
        .stage(|| format!("hide {hidden:?}"))?;
    }

    // The writable parts.
    mount(
        Some(&fd_path(&workspace_fd)),
        setup.workspace_name.as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .stage(|| "bind the workspace".into())?;
    let workspace_c = cstring(Path::new(&setup.workspace_name))?;
    sys::mount_setattr(
        &workspace_c,
        false,
        sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
    )
    .stage(|| "harden the workspace mount".into())?;
    drop(workspace_fd);
    drop(rootfs_fd);
    // /tmp is a host directory of the runner, like the workspace, so that the server's file
    // operations can reach it by a host path (see `crate::local::files`): mounts made inside the
    // sandbox never appear there, and host root writing files in a file system mounted in the
    // sandbox's user namespace would need ids mapped in it. The price: no tmpfs size bound.
    mount(
        Some(&fd_path(&tmp_fd)),
        "tmp",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .stage(|| "bind /tmp".into())?;
    sys::mount_setattr(
        c"tmp",
        false,
        sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
    )
    .stage(|| "harden the /tmp mount".into())?;
    drop(tmp_fd);
    mount(
        Some("tmpfs"),
        "run",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m"),
    )
    .stage(|| "mount /run".into())?;
    mount(
        Some("proc"),
        "proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .stage(|| "mount /proc".into())?;
    build_dev(setup)?;

    // Enter the new root; the old one is detached and unreachable.
    nix::unistd::pivot_root(".", ".").stage(|| "pivot into the new root".into())?;
    umount2(".", MntFlags::MNT_DETACH).stage(|| "detach the host root".into())?;
    nix::unistd::chdir("/").stage(|| "enter /".into())?;

    nix::unistd::sethostname(&setup.hostname).stage(|| "set the host name".into())?;
    if !setup.network {
        sys::loopback_up().stage(|| "bring loopback up".into())?;
    }
    // Processes of the sandbox may be root in its user namespace; they must not be able to
    // ptrace pid 1, which still holds host-side handles. Non-dumpable processes can only be
    // traced with CAP_SYS_PTRACE in the namespace their memory image was created in: the host's.
    nix::sys::prctl::set_dumpable(false).stage(|| "make pid 1 non-dumpable".into())?;
    nix::unistd::chdir(Path::new("/").join(&setup.workspace_name).as_path())
        .stage(|| "enter the workspace".into())?;
    Ok(())
}

/// A minimal `/dev`: the harmless character devices bound from the host (device nodes cannot be
/// created in a user namespace), a private devpts for programs that open their own ptys, and
/// `/dev/shm` for POSIX shared memory (Python's multiprocessing needs it).
fn build_dev(setup: &Setup) -> Result<(), Failure> {
    mount(
        Some("tmpfs"),
        "dev",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .stage(|| "mount /dev".into())?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = PathBuf::from("dev").join(name);
        fs::File::create(&target).stage(|| format!("create /dev/{name}"))?;
        mount(
            Some(&Path::new("/dev").join(name)),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .stage(|| format!("bind /dev/{name}"))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, Path::new("dev").join(name))
            .stage(|| format!("create /dev/{name}"))?;
    }
    for name in ["pts", "shm"] {
        nix::unistd::mkdir(
            &Path::new("dev").join(name),
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        )
        .stage(|| format!("create /dev/{name}"))?;
    }
    // Best effort: without it only programs that open their own pseudo-terminals fail.
    let _ = mount(
        Some("devpts"),
        "dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    );
    mount(
        Some("tmpfs"),
        "dev/shm",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("mode=1777,size={}", setup.tmp_bytes.max(4096)).as_str()),
    )
    .stage(|| "mount /dev/shm".into())?;
    sys::mount_setattr(c"dev", false, sys::MOUNT_ATTR_RDONLY)
        .stage(|| "make /dev read-only".into())?;
    Ok(())
}

/// One running (or exited but not yet released) execution.
struct Running {
    pid: Pid,
    status: OwnedFd,
    exited: bool,
}

/// The init's loop: start executions, reap children, report exits, kill on request.
fn serve(setup: &Setup, ctl: &OwnedFd) -> i32 {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None) {
        eprintln!("trident-sandbox-init: cannot block SIGCHLD: {e}");
        return 1;
    }
    let sigfd = match SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("trident-sandbox-init: cannot create a signalfd: {e}");
            return 1;
        }
    };
    let mut running: Vec<Running> = Vec::new();
    loop {
        let (ctl_ready, sig_ready, ready_execs) = {
            let mut fds = Vec::with_capacity(2 + running.len());
            fds.push(PollFd::new(ctl.as_fd(), PollFlags::POLLIN));
            fds.push(PollFd::new(sigfd.as_fd(), PollFlags::POLLIN));
            for r in &running {
                fds.push(PollFd::new(r.status.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("trident-sandbox-init: poll failed: {e}");
                    return 1;
                }
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            let ready_execs: Vec<usize> = fds[2..]
                .iter()
                .enumerate()
                .filter(|(_, fd)| ready(fd))
                .map(|(i, _)| i)
                .collect();
            (ready(&fds[0]), ready(&fds[1]), ready_execs)
        };
        if sig_ready {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            reap(&mut running);
        }
        // Highest index first so that removals do not shift the indices still to visit.
        for index in ready_execs.into_iter().rev() {
            if handle_status_socket(&running[index]) {
                let released = running.swap_remove(index);
                // The server let go of the execution: nothing of it may stay behind.
                let _ = killpg(released.pid, Signal::SIGKILL);
            }
        }
        if ctl_ready {
            match protocol::recv::<ToInit>(ctl.as_fd()) {
                Ok(Some((ToInit::Exec(request), fds))) => {
                    if let Some(r) = start(setup, request, fds, running.len()) {
                        running.push(r);
                    }
                }
                Ok(Some((other, _))) => {
                    eprintln!("trident-sandbox-init: unexpected message {other:?}");
                }
                // The server is gone or dropped the sandbox: exiting kills the whole namespace.
                Ok(None) => return 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("trident-sandbox-init: control socket failed: {e}");
                    return 1;
                }
            }
        }
    }
}

/// Handles a readable status socket. Returns whether the server released the execution.
fn handle_status_socket(r: &Running) -> bool {
    match protocol::recv::<ExecControl>(r.status.as_fd()) {
        Ok(Some((ExecControl::Kill, _))) => {
            let _ = killpg(r.pid, Signal::SIGKILL);
            false
        }
        // The command leads its session and process group (`setsid`), which stays the
        // terminal's foreground group: bash -c runs without job control.
        Ok(Some((ExecControl::Interrupt, _))) => {
            let _ = killpg(r.pid, Signal::SIGQUIT);
            false
        }
        Ok(None) => true,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
        Err(_) => true,
    }
}

/// Reaps every exited child; reports the executions' exits.
fn reap(running: &mut [Running]) {
    loop {
        let (pid, status) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExecStatus::Exited { code }),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (
                pid,
                ExecStatus::Signaled {
                    signal: signal as i32,
                },
            ),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("trident-sandbox-init: waitpid failed: {e}");
                return;
            }
        };
        // Orphans re-parented to us are reaped silently.
        if let Some(r) = running.iter_mut().find(|r| r.pid == pid && !r.exited) {
            r.exited = true;
            let _ = protocol::send(r.status.as_fd(), &status, &[]);
        }
    }
}

/// An execution request turned into C strings, ready for `execve`.
struct Prepared {
    argv: Vec<CString>,
    env: Vec<CString>,
    path_var: Option<String>,
    privileged: bool,
    cwd: CString,
}

fn prepare(request: ExecRequest) -> Option<Prepared> {
    let to_c = |s: &str| CString::new(s).ok();
    let argv = request
        .argv
        .iter()
        .map(|a| to_c(a))
        .collect::<Option<Vec<_>>>()?;
    if argv.is_empty() {
        return None;
    }
    let path_var = request
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    let env = request
        .env
        .iter()
        .map(|(k, v)| to_c(&format!("{k}={v}")))
        .collect::<Option<Vec<_>>>()?;
    Some(Prepared {
        argv,
        env,
        path_var,
        privileged: request.privileged,
        cwd: CString::new(request.cwd.as_os_str().as_bytes()).ok()?,
    })
}

/// Starts one execution; reports `Started` or `SpawnFailed` on its status socket.
fn start(
    setup: &Setup,
    request: ExecRequest,
    fds: Vec<OwnedFd>,
    running: usize,
) -> Option<Running> {
    let has_cgroup = request.cgroup_fd;
    let expected = if has_cgroup { 4 } else { 3 };
    if fds.len() != expected {
        // Without a status socket there is no one to tell.
        return None;
    }
    let mut fds = fds.into_iter();
    let (Some(tty), Some(stderr), Some(status)) = (fds.next(), fds.next(), fds.next()) else {
        return None;
    };
    let cgroup_procs = fds.next();
    let fail = |status: &OwnedFd, errno: Errno| {
        let _ = protocol::send(
            status.as_fd(),
            &ExecStatus::SpawnFailed {
                errno: errno as i32,
            },
            &[],
        );
    };
    if running >= MAX_EXECUTIONS {
        fail(&status, Errno::EAGAIN);
        return None;
    }
    let Some(prepared) = prepare(request) else {
        fail(&status, Errno::EINVAL);
        return None;
    };
    // SAFETY: pid 1 is single-threaded, so the child may run arbitrary code before `execve`.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => exec_child(setup, &prepared, &tty, &stderr, cgroup_procs.as_ref()),
        Ok(ForkResult::Parent { child }) => {
            if protocol::send(
                status.as_fd(),
                &ExecStatus::Started {
                    pid: child.as_raw(),
                },
                &[],
            )
            .is_err()
            {
                // The server is not listening any more; do not let the command run unobserved.
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            }
            Some(Running {
                pid: child,
                status,
                exited: false,
            })
        }
        Err(errno) => {
            fail(&status, errno);
            None
        }
    }
}

/// The forked child: becomes the execution and `execve`s the command. Never returns.
fn exec_child(
    setup: &Setup,
    prepared: &Prepared,
    tty: &OwnedFd,
    stderr: &OwnedFd,
    cgroup_procs: Option<&OwnedFd>,
) -> ! {
    // Before anything else: join the execution's cgroup, so that a kill of it covers
    // everything this process starts.
    if let Some(procs) = cgroup_procs {
        let _ = nix::unistd::write(procs, b"0");
    }
    let result = (|| -> io::Result<()> {
        sys::reset_signals_for_exec()?;
        // A session of its own with the pty as controlling terminal: 0x1c on the pty then
        // signals this process group (SIGQUIT), and killpg reaches the whole group.
        nix::unistd::setsid()?;
        sys::set_controlling_tty(tty.as_fd())?;
        sys::dup_onto(tty.as_fd(), 0)?;
        sys::dup_onto(tty.as_fd(), 1)?;
        sys::dup_onto(stderr.as_fd(), 2)?;
        // pid 1 is protected from the OOM killer (-1000, set by the server); commands are not.
        let _ = fs::write("/proc/self/oom_score_adj", "0");
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        apply_rlimits(setup)?;
        if !prepared.privileged {
            match setup.id_map {
                IdMap::Range { .. } => {
                    nix::unistd::setgroups(&[])?;
                    let gid = Gid::from_raw(setup.sandbox_gid);
                    nix::unistd::setresgid(gid, gid, gid)?;
                    let uid = Uid::from_raw(setup.sandbox_uid);
                    nix::unistd::setresuid(uid, uid, uid)?;
                }
                IdMap::SingleId { .. } => sys::drop_all_capabilities()?,
            }
        }
        nix::unistd::chdir(prepared.cwd.as_c_str())?;
        Ok(())
    })();
    let mut err_out = fs::File::from(match stderr.try_clone() {
        Ok(fd) => fd,
        Err(_) => sys::exit_immediately(127),
    });
    if let Err(e) = result {
        let _ = writeln!(err_out, "trident: cannot prepare the execution: {e}");
        sys::exit_immediately(126);
    }
    let errno = exec_search(prepared);
    let argv0 = prepared.argv[0].to_string_lossy();
    let _ = writeln!(err_out, "trident: {argv0}: {}", io::Error::from(errno));
    // The shell's conventions: 127 "not found", 126 "found but not executable".
    sys::exit_immediately(if errno == Errno::ENOENT { 127 } else { 126 })
}

fn apply_rlimits(setup: &Setup) -> io::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    if let Some(bytes) = setup.rlimit_as_bytes {
        setrlimit(Resource::RLIMIT_AS, bytes, bytes)?;
    }
    if let Some(n) = setup.rlimit_nproc {
        setrlimit(Resource::RLIMIT_NPROC, n, n)?;
    }
    Ok(())
}

/// `execve` with a `PATH` search like `execvp`, but over the *command's* `PATH` (glibc's
/// `execvpe` searches the caller's). Returns the errno of the most telling failure.
fn exec_search(prepared: &Prepared) -> Errno {
    let argv0 = prepared.argv[0].as_bytes();
    if argv0.contains(&b'/') {
        return exec_one(&prepared.argv[0], prepared);
    }
    let path = prepared.path_var.as_deref().unwrap_or(DEFAULT_PATH);
    let mut result = Errno::ENOENT;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let mut candidate = dir.as_bytes().to_vec();
        candidate.push(b'/');
        candidate.extend_from_slice(argv0);
        let Ok(candidate) = CString::new(candidate) else {
            continue;
        };
        match exec_one(&candidate, prepared) {
            Errno::ENOENT | Errno::ENOTDIR => {}
            // Like execvp: remember that something was found but keep looking.
            Errno::EACCES => result = Errno::EACCES,
            other => return other,
        }
    }
    result
}

fn exec_one(path: &CStr, prepared: &Prepared) -> Errno {
    match nix::unistd::execve(path, &prepared.argv, &prepared.env) {
        Ok(never) => match never {},
        Err(errno) => errno,
    }
}

/// Which namespaces this host lets the current user create; prints JSON for the server.
fn probe_main() -> i32 {
    let mut missing: Vec<(&str, String)> = Vec::new();
    match unshare(CloneFlags::CLONE_NEWUSER) {
        Err(e) => missing.push(("user", e.desc().to_owned())),
        Ok(()) => {
            for (name, flag) in [
                ("mount", CloneFlags::CLONE_NEWNS),
                ("pid", CloneFlags::CLONE_NEWPID),
                ("net", CloneFlags::CLONE_NEWNET),
                ("ipc", CloneFlags::CLONE_NEWIPC),
                ("uts", CloneFlags::CLONE_NEWUTS),
                ("cgroup", CloneFlags::CLONE_NEWCGROUP),
            ] {
                if let Err(e) = unshare(flag) {
                    missing.push((name, e.desc().to_owned()));
                }
            }
        }
    }
    let report: Vec<serde_json::Value> = missing
        .into_iter()
        .map(|(name, error)| serde_json::json!({"namespace": name, "error": error}))
        .collect();
    println!("{}", serde_json::Value::Array(report));
    0
}
