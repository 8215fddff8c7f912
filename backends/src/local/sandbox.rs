//! Sandboxes: creating one per runner, starting executions in it, destroying it.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::local::cgroup::{CgroupLayout, SandboxCgroup};
use crate::local::config::{HostConfig, IdMap, SandboxSpec, is_valid_name, workspace_mount_name};
use crate::local::exec::{ExecSpec, Execution};
use crate::local::files::Workspace;
use crate::local::probe::{Capabilities, LimitMechanism, probe_namespaces};
use crate::local::protocol::{self, ExecRequest, ExecStatus, FromInit, Setup, ToInit, aio};
use crate::local::{ExecError, SandboxError, sys};

/// How long an execution request may take to be answered by the init (a fork).
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long destroy waits for the kernel to finish killing a sandbox's processes.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The local backend's sandbox factory: host-wide configuration, what the host allows, and the
/// cgroup layout. One per server.
#[derive(Debug)]
pub struct SandboxHost {
    config: Arc<HostConfig>,
    workspace_name: String,
    id_map: IdMap,
    cgroups: CgroupLayout,
    capabilities: Capabilities,
}

impl SandboxHost {
    /// Checks the configuration and the host (namespaces, id mapping, cgroups) and prepares the
    /// state dir and the parent cgroups. Fails with [`SandboxError::NamespacesUnavailable`] on a
    /// host that does not allow sandboxes.
    pub async fn new(config: HostConfig) -> Result<SandboxHost, SandboxError> {
        config.validate()?;
        let workspace_name = workspace_mount_name(&config.workspace_mount)
            .ok_or_else(|| SandboxError::InvalidConfig("workspace_mount".into()))?;
        probe_namespaces(&config.init_program).await?;
        let id_map = IdMap::resolve(config.id_map);
        if let IdMap::SingleId { host_uid: 0, .. } = id_map {
            return Err(SandboxError::InvalidConfig(
                "a single-id map of a root server would make the sandbox's root the host's root; use a range"
                    .into(),
            ));
        }
        if let IdMap::Range { .. } = id_map
            && (id_map.host_uid(config.sandbox_uid).is_none()
                || id_map.host_gid(config.sandbox_gid).is_none())
        {
            return Err(SandboxError::InvalidConfig(format!(
                "the id range {id_map:?} does not cover the sandbox user {}:{}",
                config.sandbox_uid, config.sandbox_gid
            )));
        }
        fs::create_dir_all(&config.state_dir).map_err(|e| {
            SandboxError::io(format!("create the state dir {:?}", config.state_dir), e)
        })?;
        let mut cgroups = CgroupLayout::detect(&config.cgroup_parent);
        cgroups.prepare();
        let mut capabilities = Capabilities::new(&cgroups, id_map);
        capabilities.workspace_quota = quota::probe(&config.state_dir);
        Ok(SandboxHost {
            config: Arc::new(config),
            workspace_name,
            id_map,
            cgroups,
            capabilities,
        })
    }

    /// What this host allows; print it at start-up.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// The cgroup layout in use.
    pub fn cgroups(&self) -> &CgroupLayout {
        &self.cgroups
    }

    /// Removes the parent cgroups if no sandbox uses them any more (at shutdown).
    pub fn remove_cgroup_parent(&self) {
        self.cgroups.remove_parent();
    }

    /// Creates and starts a sandbox. When this returns, the sandbox runs and is ready for
    /// executions.
    pub async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, SandboxError> {
        if !is_valid_name(&spec.id) {
            return Err(SandboxError::InvalidId(spec.id));
        }
        let rootfs = spec.rootfs.clone().unwrap_or_else(|| PathBuf::from("/"));
        if !rootfs.is_absolute() || !rootfs.is_dir() {
            return Err(SandboxError::InvalidRootfs(rootfs));
        }
        let dir = self.config.state_dir.join(&spec.id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SandboxError::AlreadyExists(spec.id));
            }
            Err(e) => return Err(SandboxError::io(format!("create {dir:?}"), e)),
        }
        let mut sandbox = Sandbox {
            id: spec.id.clone(),
            dir: dir.clone(),
            workspace_dir: dir.join("workspace"),
            workspace_mount: self.config.workspace_mount.clone(),
            id_map: self.id_map,
            sandbox_uid: self.config.sandbox_uid,
            control: None,
            stage1: None,
            pid1: None,
            pid1_host_pid: 0,
            tmp_dir: dir.join("tmp"),
            cgroup: None,
            exec_counter: AtomicU64::new(0),
            wipe_on_destroy: spec.wipe_on_destroy,
            quota_mounted: false,
            torn_down: false,
        };
        let timeout = self.config.create_timeout;
        match tokio::time::timeout(timeout, self.start(&mut sandbox, &spec, rootfs)).await {
            Ok(Ok(())) => Ok(sandbox),
            Ok(Err(e)) => {
                sandbox.teardown_blocking();
                Err(e)
            }
            Err(_elapsed) => {
                sandbox.teardown_blocking();
                Err(SandboxError::Timeout(timeout))
            }
        }
    }

    async fn start(
        &self,
        sandbox: &mut Sandbox,
        spec: &SandboxSpec,
        rootfs: PathBuf,
    ) -> Result<(), SandboxError> {
        let config = &self.config;
        let limits = &spec.limits;
        if self.capabilities.workspace_quota
            && (limits.workspace_bytes.is_some() || limits.workspace_files.is_some())
        {
            quota::mount(&sandbox.dir, limits.workspace_bytes, limits.workspace_files)
                .map_err(|e| SandboxError::io("mount the runner's quota tmpfs", e))?;
            sandbox.quota_mounted = true;
        }
        // The workspace belongs to the sandbox user, so that commands can create files in it.
        fs::create_dir(&sandbox.workspace_dir)
            .map_err(|e| SandboxError::io("create the workspace", e))?;
        let (uid, gid) = (
            self.id_map
                .host_uid(config.sandbox_uid)
                .or(self.id_map.host_uid(0)),
            self.id_map
                .host_gid(config.sandbox_gid)
                .or(self.id_map.host_gid(0)),
        );
        if let (Some(uid), Some(gid)) = (uid, gid)
            && nix::unistd::geteuid().is_root()
        {
            nix::unistd::chown(
                &sandbox.workspace_dir,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| SandboxError::io("hand the workspace to the sandbox user", e))?;
        }
        fs::set_permissions(&sandbox.workspace_dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| SandboxError::io("set the workspace's mode", e))?;
        // /tmp: world-writable and sticky like any /tmp, owned by the sandbox's root.
        fs::create_dir(&sandbox.tmp_dir).map_err(|e| SandboxError::io("create /tmp", e))?;
        if let (Some(uid), Some(gid)) = (self.id_map.host_uid(0), self.id_map.host_gid(0))
            && nix::unistd::geteuid().is_root()
        {
            nix::unistd::chown(
                &sandbox.tmp_dir,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| SandboxError::io("hand /tmp to the sandbox's root", e))?;
        }
        fs::set_permissions(&sandbox.tmp_dir, fs::Permissions::from_mode(0o1777))
            .map_err(|e| SandboxError::io("set the mode of /tmp", e))?;
        let root_mountpoint = sandbox.dir.join("root");
        fs::create_dir(&root_mountpoint)
            .map_err(|e| SandboxError::io("create the root mount point", e))?;

        let mut limits = spec.limits.clone();
        let mut rlimit_as_bytes = None;
        let mut rlimit_nproc = None;
        if self.capabilities.memory == LimitMechanism::Rlimit {
            rlimit_as_bytes = limits.memory_bytes.take();
        }
        if self.capabilities.pids == LimitMechanism::Rlimit {
            rlimit_nproc = limits.pids_max.take();
        }
        if self.cgroups.tracking.is_some()
            || self.cgroups.memory.is_some()
            || self.cgroups.pids.is_some()
        {
            let cgroup = SandboxCgroup::create(
                &self.cgroups,
                &spec.id,
                &limits,
                config.cpu_hard_limit_core_mhz,
            )
            .map_err(|(path, source)| SandboxError::Cgroup { path, source })?;
            sandbox.cgroup = Some(cgroup);
        }

        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(|e| SandboxError::io("create the control socket", e))?;
        // The init's end blocks (it is a plain poll loop); ours is driven by tokio.
        nix::fcntl::fcntl(
            theirs.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .map_err(|e| SandboxError::io("configure the control socket", e))?;
        let control = sys::async_fd(ours, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| SandboxError::io("watch the control socket", e))?;
        let control = sandbox.control.insert(control);

        let mut command = tokio::process::Command::new(&config.init_program);
        command
            .arg(crate::local::init::INIT_ARG)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        let theirs_raw = theirs.as_raw_fd();
        let open_files = sys::starting_open_files_limit();
        // SAFETY: the closure runs between fork and execve in the child and only calls dup2,
        // fcntl and setrlimit, which are async-signal-safe. It moves the init's end of the
        // control socket to the fd number the init expects; dup2 clears close-on-exec on the
        // copy (and when the fd already has that number, fcntl clears it). The sandbox gets
        // the open-files limit the server started with, not the one it raised for itself.
        unsafe {
            command.pre_exec(move || {
                if let Some(limit) = &open_files
                    && libc::setrlimit(libc::RLIMIT_NOFILE, limit) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if theirs_raw == crate::local::init::CONTROL_FD {
                    if libc::fcntl(theirs_raw, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(theirs_raw, crate::local::init::CONTROL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| {
            SandboxError::io(
                format!("start the sandbox init {:?}", config.init_program),
                e,
            )
        })?;
        drop(theirs);
        let stage1_pid = child.id().ok_or(SandboxError::Gone)?;
        sandbox.stage1 = Some(child);

        let setup = Setup {
            rootfs,
            root_mountpoint,
            workspace: sandbox.workspace_dir.clone(),
            tmp: sandbox.tmp_dir.clone(),
            workspace_name: self.workspace_name.clone(),
            network: spec.network,
            hostname: spec.hostname.clone(),
            tmp_bytes: spec.limits.tmp_bytes,
            hidden: std::iter::once(config.state_dir.clone())
                .chain(config.hidden_paths.iter().cloned())
                .collect(),
            id_map: self.id_map,
            sandbox_uid: config.sandbox_uid,
            sandbox_gid: config.sandbox_gid,
            rlimit_as_bytes,
            rlimit_nproc,
        };
        aio::send(control, &ToInit::Setup(Box::new(setup)), &[])
            .await
            .map_err(|e| SandboxError::io("send the set-up to the init", e))?;
        expect(control, |m| {
            matches!(m, FromInit::UsernsReady).then_some(())
        })
        .await?;

        if let IdMap::Range { host_base, count } = self.id_map {
            // Only a process with CAP_SETUID/CAP_SETGID outside the namespace (the server) may
            // map a range; the init cannot do it for itself.
            let map = format!("0 {host_base} {count}\n");
            fs::write(format!("/proc/{stage1_pid}/uid_map"), &map)
                .map_err(|e| SandboxError::io("write the sandbox's uid map", e))?;
            fs::write(format!("/proc/{stage1_pid}/gid_map"), &map)
                .map_err(|e| SandboxError::io("write the sandbox's gid map", e))?;
        }
        if let Some(cgroup) = &sandbox.cgroup {
            cgroup
                .add_process(stage1_pid)
                .map_err(|(path, source)| SandboxError::Cgroup { path, source })?;
        }
        // Keep the init out of the OOM killer's choice: a memory breach must kill the command,
        // not the sandbox. Needs privileges; without them the init is merely small.
        let _ = fs::write(format!("/proc/{stage1_pid}/oom_score_adj"), "-1000");
        aio::send(control, &ToInit::Go, &[])
            .await
            .map_err(|e| SandboxError::io("send the go-ahead to the init", e))?;

        // Stage 1's `Pid1` always comes before pid 1's first message: pid 1 waits for stage 1
        // to have sent it (see `init`'s "Processes").
        let host_pid = expect(control, |m| match m {
            FromInit::Pid1 { host_pid } => Some(*host_pid),
            _ => None,
        })
        .await?;
        // Stage 1 waits for pid 1 and exits right after reaping it, so while stage 1 lives the
        // pid is pid 1's. If pid 1 already failed, its report is the next message.
        let pidfd = sys::pidfd_open(host_pid);
        expect(control, |m| matches!(m, FromInit::Ready).then_some(())).await?;
        let pidfd =
            pidfd.map_err(|e| SandboxError::io("open a pidfd on the sandbox's pid 1", e))?;
        sandbox.pid1 = Some(pidfd);
        sandbox.pid1_host_pid = host_pid;
        Ok(())
    }
}

/// Receives the next message from the init and expects a particular one; a `Failed` becomes
/// the matching [`SandboxError`].
async fn expect<T>(
    control: &AsyncFd<OwnedFd>,
    pick: impl Fn(&FromInit) -> Option<T>,
) -> Result<T, SandboxError> {
    match aio::recv::<FromInit>(control).await {
        Ok(Some((message, _fds))) => {
            if let Some(value) = pick(&message) {
                return Ok(value);
            }
            match message {
                FromInit::Failed {
                    stage,
                    errno,
                    message,
                } => Err(setup_error(stage, errno, message)),
                other => Err(SandboxError::Setup {
                    stage: "follow the start-up protocol".into(),
                    message: format!("unexpected message {other:?}"),
                }),
            }
        }
        Ok(None) => Err(SandboxError::Setup {
            stage: "start".into(),
            message: "the init exited without a report".into(),
        }),
        Err(e) => Err(SandboxError::io("receive from the init", e)),
    }
}

/// Namespace creation failures are the host's policy, not a bug: say what to change.
fn setup_error(stage: String, errno: Option<i32>, message: String) -> SandboxError {
    let namespace_stage = stage.contains("namespace");
    let policy = matches!(
        errno,
        Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::ENOSPC) | Some(libc::EINVAL)
    );
    if namespace_stage && policy {
        return SandboxError::NamespacesUnavailable {
            missing: vec![stage.clone()],
            detail: message,
            hint: crate::local::probe::namespace_hint(
                &Default::default(),
                nix::unistd::geteuid().is_root(),
            ),
        };
    }
    SandboxError::Setup { stage, message }
}

/// Resolves when a sandbox's init has exited: see [`Sandbox::exit_watch`].
#[derive(Debug)]
pub struct InitExit {
    fd: AsyncFd<OwnedFd>,
}

impl InitExit {
    /// Waits until the init has exited. A pidfd becomes readable when its process exits, and
    /// stays readable. Should the reactor fail us, fall back to looking once a second.
    pub async fn wait(&self) {
        if self.fd.readable().await.is_ok() {
            return;
        }
        while !sys::pidfd_wait_exited(self.fd.get_ref().as_fd(), 0) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Whether the init has exited, without waiting.
    pub fn has_exited(&self) -> bool {
        sys::pidfd_wait_exited(self.fd.get_ref().as_fd(), 0)
    }
}

/// One runner's sandbox. Dropping it kills every process in it and removes its cgroups (and, if
/// configured, its workspace); [`Sandbox::destroy`] does the same without blocking.
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    dir: PathBuf,
    workspace_dir: PathBuf,
    workspace_mount: PathBuf,
    id_map: IdMap,
    sandbox_uid: u32,
    control: Option<AsyncFd<OwnedFd>>,
    stage1: Option<tokio::process::Child>,
    pid1: Option<OwnedFd>,
    pid1_host_pid: i32,
    /// The host directory bound at the sandbox's `/tmp`.
    tmp_dir: PathBuf,
    cgroup: Option<SandboxCgroup>,
    exec_counter: AtomicU64,
    wipe_on_destroy: bool,
    /// The runner's directory is a tmpfs of the workspace quota (see [`quota`]).
    quota_mounted: bool,
    torn_down: bool,
}

impl Sandbox {
    /// The sandbox's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The workspace directory on the host.
    pub fn workspace_dir(&self) -> &Path {
        &self.workspace_dir
    }

    /// File operations on the workspace and `/tmp`, with files owned by the sandbox's root (as
    /// Poseidon's `tar` as root leaves them).
    pub fn workspace(&self) -> Result<Workspace, crate::local::FileError> {
        let workspace = Workspace::open(
            &self.workspace_dir,
            self.workspace_mount.clone(),
            self.id_map,
            self.sandbox_uid,
        )?;
        let tmp = nix::fcntl::open(
            &self.tmp_dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| crate::local::FileError::Io {
            op: "open the sandbox's /tmp",
            path: "/tmp".into(),
            source: e.into(),
        })?;
        Ok(workspace.with_tmp(tmp))
    }

    /// The host pid of the sandbox's init (pid 1 inside).
    pub fn init_pid(&self) -> i32 {
        self.pid1_host_pid
    }

    /// A handle that resolves once the init has exited, for a watcher that must not keep the
    /// sandbox alive: it owns a duplicate of the init's pidfd, not a reference to the sandbox, so
    /// [`Sandbox::destroy`] can still take the sandbox by value while a watcher waits.
    pub fn exit_watch(&self) -> Result<InitExit, SandboxError> {
        let pidfd = self.pid1.as_ref().ok_or(SandboxError::Gone)?;
        let dup = pidfd
            .try_clone()
            .map_err(|e| SandboxError::io("duplicate the init's pidfd", e))?;
        let fd = sys::async_fd(dup, Interest::READABLE)
            .map_err(|e| SandboxError::io("watch the init's pidfd", e))?;
        Ok(InitExit { fd })
    }

    /// Whether the init is still running.
    pub fn is_alive(&self) -> bool {
        self.pid1
            .as_ref()
            .is_some_and(|fd| !sys::pidfd_wait_exited(fd.as_fd(), 0))
    }

    /// Starts a command in the sandbox.
    pub async fn exec(&self, spec: ExecSpec) -> Result<Execution, ExecError> {
        spec.validate()?;
        let control = self.control.as_ref().ok_or(ExecError::SandboxGone)?;
        let workspace = self.workspace_mount.to_string_lossy().into_owned();
        let env = spec.environment(&workspace)?;
        let request = ExecRequest {
            argv: spec.argv,
            env,
            privileged: spec.privileged,
            cwd: self.workspace_mount.clone(),
            cgroup_fd: false,
        };
        // JSON overhead of the envelope and the `cgroup_fd` flag set below is well under 64 bytes.
        let size = serde_json::to_vec(&request)
            .map(|v| v.len() + 64)
            .unwrap_or(usize::MAX);
        if size > protocol::MAX_MESSAGE_BYTES {
            return Err(ExecError::TooLarge {
                limit: protocol::MAX_MESSAGE_BYTES,
            });
        }

        let winsize = nix::pty::Winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(&winsize, None)
            .map_err(|e| ExecError::io("open a pseudo-terminal", e))?;
        sys::set_cloexec(pty.master.as_fd()).map_err(|e| ExecError::io("configure the pty", e))?;
        sys::set_cloexec(pty.slave.as_fd()).map_err(|e| ExecError::io("configure the pty", e))?;
        let (stderr_read, stderr_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| ExecError::io("create the stderr pipe", e))?;
        let (status_ours, status_theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(|e| ExecError::io("create the status socket", e))?;
        nix::fcntl::fcntl(
            status_theirs.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .map_err(|e| ExecError::io("configure the status socket", e))?;
        let n = self.exec_counter.fetch_add(1, Ordering::Relaxed);
        let cgroup = match &self.cgroup {
            Some(c) => c
                .exec_cgroup(n)
                .map_err(|e| ExecError::io("create the execution's cgroup", e))?,
            None => None,
        };
        let procs: Option<OwnedFd> = match &cgroup {
            Some(c) => Some(
                c.open_procs()
                    .map_err(|e| ExecError::io("open the execution's cgroup", e))?,
            ),
            None => None,
        };
        let mut fds = vec![
            pty.slave.as_raw_fd(),
            stderr_write.as_raw_fd(),
            status_theirs.as_raw_fd(),
        ];
        if let Some(p) = &procs {
            fds.push(p.as_raw_fd());
        }
        let request = ExecRequest {
            cgroup_fd: procs.is_some(),
            ..request
        };
        aio::send(control, &ToInit::Exec(request), &fds)
            .await
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => {
                    ExecError::SandboxGone
                }
                _ => ExecError::io("send the command to the init", e),
            })?;
        // The init has its copies now; ours would keep the pty open after the command exits.
        drop((pty.slave, stderr_write, status_theirs, procs));

        let status = sys::async_fd(status_ours, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| ExecError::io("watch the status socket", e))?;
        let started = tokio::time::timeout(START_TIMEOUT, aio::recv::<ExecStatus>(&status)).await;
        let pid = match started {
            Ok(Ok(Some((ExecStatus::Started { pid }, _)))) => pid,
            Ok(Ok(Some((ExecStatus::SpawnFailed { errno }, _)))) => {
                return Err(ExecError::Spawn(
                    std::io::Error::from_raw_os_error(errno).to_string(),
                ));
            }
            Ok(Ok(Some((other, _)))) => {
                return Err(ExecError::Spawn(format!("unexpected status {other:?}")));
            }
            Ok(Ok(None)) | Ok(Err(_)) => return Err(ExecError::SandboxGone),
            Err(_elapsed) => {
                return Err(ExecError::Spawn("the init did not answer in time".into()));
            }
        };
        Execution::start(pty.master, stderr_read, status, cgroup, pid)
    }

    /// Kills every process of the sandbox and waits (without blocking a thread) until the kernel
    /// has finished, then removes its cgroups and directories.
    pub async fn destroy(mut self) -> Result<(), SandboxError> {
        self.kill_everything();
        if let Some(pidfd) = self.pid1.take() {
            // A pidfd is readable once its process has exited; pid 1 exits only after the
            // kernel has killed and reaped every other process of its namespace.
            if let Ok(watch) = sys::async_fd(pidfd, Interest::READABLE) {
                let _ = tokio::time::timeout(TEARDOWN_TIMEOUT, watch.readable()).await;
            }
        }
        if let Some(stage1) = self.stage1.as_mut() {
            let _ = tokio::time::timeout(TEARDOWN_TIMEOUT, stage1.wait()).await;
        }
        let mut removed = true;
        if let Some(cgroup) = self.cgroup.as_mut() {
            let deadline = tokio::time::Instant::now() + TEARDOWN_TIMEOUT;
            loop {
                cgroup.kill_all();
                removed = cgroup.remove(Duration::ZERO);
                if removed || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        self.remove_dirs();
        self.torn_down = true;
        if removed {
            Ok(())
        } else {
            Err(SandboxError::Cgroup {
                path: self.dir.clone(),
                source: std::io::Error::other(
                    "processes were still exiting when the deadline passed",
                ),
            })
        }
    }

    /// Sends SIGKILL to pid 1 (which takes its whole pid namespace along), to stage 1, and to
    /// everything in the sandbox's cgroups (belt and braces: it also covers a half-started
    /// sandbox). Closing the control socket would end the init too.
    fn kill_everything(&mut self) {
        if let Some(pidfd) = &self.pid1 {
            let _ = sys::pidfd_kill(pidfd.as_fd());
        }
        if let Some(stage1) = self.stage1.as_mut() {
            let _ = stage1.start_kill();
        }
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all();
        }
        self.control = None;
    }

    fn remove_dirs(&self) {
        if self.quota_mounted {
            // The workspace, /tmp and the root mount point live in the tmpfs: they go with it.
            quota::unmount(&self.dir);
            return;
        }
        let _ = fs::remove_dir(self.dir.join("root"));
        // /tmp is scratch space: it goes with the sandbox whatever happens to the workspace.
        let _ = fs::remove_dir_all(&self.tmp_dir);
        if self.wipe_on_destroy {
            let _ = fs::remove_dir_all(&self.workspace_dir);
            let _ = fs::remove_dir(&self.dir);
        }
    }

    /// Synchronous teardown for `Drop` and failed starts: bounded, usually a few milliseconds.
    fn teardown_blocking(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        self.kill_everything();
        if let Some(pidfd) = &self.pid1 {
            let _ = sys::pidfd_wait_exited(pidfd.as_fd(), 1_000);
        }
        if let Some(cgroup) = self.cgroup.as_mut() {
            if !cgroup.is_empty() {
                cgroup.kill_all();
            }
            let _ = cgroup.remove(Duration::from_secs(1));
        }
        self.remove_dirs();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.teardown_blocking();
    }
}

/// The workspace quota: a runner's directory (`<state_dir>/<id>`, holding its workspace, its
/// `/tmp` and its root mount point) is a tmpfs with a size and an inode bound, mounted by the
/// server on the host before the sandbox starts.
///
/// Mounted on the host, not inside the sandbox, so that file operations keep resolving host
/// paths in the server's own mount namespace (see [`crate::local::Workspace::with_tmp`] for
/// why that matters) and host root may create files in it. Sandboxes created while it exists
/// may hold copies of it in their mount namespaces (a recursive bind of the host directory that
/// contains the state dir, hidden under an empty tmpfs but still referenced); removing the
/// mount point after the unmount detaches those copies too (the kernel unmounts mounts on a
/// removed directory in every namespace since Linux 3.18), so the memory is freed at once.
mod quota {
    use std::io;
    use std::path::Path;

    use nix::mount::{MntFlags, MsFlags};

    /// Whether this server may mount a tmpfs on the host: tries it once in the state dir.
    pub(super) fn probe(state_dir: &Path) -> bool {
        let dir = state_dir.join(format!(".quota-probe-{}", std::process::id()));
        if std::fs::create_dir(&dir).is_err() {
            return false;
        }
        let mounted = mount(&dir, Some(4096), Some(16)).is_ok();
        if mounted {
            unmount(&dir);
        } else {
            let _ = std::fs::remove_dir(&dir);
        }
        mounted
    }

    /// Mounts a tmpfs of `bytes` and `files` (both at least 1; `None` for the kernel's default)
    /// on `dir`, readable like the directory it covers.
    pub(super) fn mount(dir: &Path, bytes: Option<u64>, files: Option<u64>) -> io::Result<()> {
        let mut options = String::from("mode=0755");
        // tmpfs reads 0 as "no bound", so a bound is at least 1.
        if let Some(bytes) = bytes {
            options.push_str(&format!(",size={}", bytes.max(1)));
        }
        if let Some(files) = files {
            options.push_str(&format!(",nr_inodes={}", files.max(1)));
        }
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(io::Error::from)
    }

    /// Detaches the tmpfs on `dir` and removes the mount point (see the module documentation).
    pub(super) fn unmount(dir: &Path) {
        let _ = nix::mount::umount2(dir, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(dir);
    }
}
