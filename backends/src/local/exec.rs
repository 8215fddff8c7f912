//! One command running in a sandbox.
//!
//! The execution semantics are Poseidon's (and so CodeOcean's expectations): stdin and stdout go
//! through a pseudo-terminal — input is echoed, output newlines arrive as `\r\n`, and programs
//! line-buffer as they do in a terminal, so `input()` prompts appear at once — while stderr has
//! a pipe of its own. The command gets a clean environment: a few defaults, the caller's
//! variables, and `CODEOCEAN=true`. argv is passed as a list, never re-quoted by a shell.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nix::errno::Errno;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::local::ExecError;
use crate::local::cgroup::ExecCgroup;
use crate::local::protocol::{self, ExecControl, ExecStatus};

/// Events queued per execution before the reader is pushed back (Poseidon's output queue).
pub const EVENT_QUEUE: usize = 64;
/// Stdin chunks queued per execution.
pub const STDIN_QUEUE: usize = 64;
/// Bytes read from stdout or stderr at once.
const READ_CHUNK: usize = 8192;
/// After the command exited, output still held by background processes is awaited this long.
/// Output the command itself wrote is read completely anyway: its end is the pty's end-of-file.
pub const OUTPUT_LINGER: Duration = Duration::from_millis(100);
/// How much [`Execution::collect`] keeps of each stream.
pub const COLLECT_MAX_BYTES: usize = 16 * 1024 * 1024;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// The program and its arguments, passed to `execve` as they are. A program name without `/`
    /// is looked up in the command's `PATH`.
    pub argv: Vec<String>,
    /// Variables added to the clean environment (deterministic order).
    pub env: BTreeMap<String, String>,
    /// Run as root of the sandbox (never root of the host) instead of the sandbox user.
    pub privileged: bool,
}

impl ExecSpec {
    /// Runs `argv` unprivileged with no extra variables.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> ExecSpec {
        ExecSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            privileged: false,
        }
    }

    /// Runs `command` with `/bin/bash -c`, as Poseidon does (but without its quoting: any
    /// character, `'` and newlines included, reaches bash as written).
    pub fn shell(command: impl Into<String>) -> ExecSpec {
        ExecSpec::new(["/bin/bash".to_owned(), "-c".to_owned(), command.into()])
    }

    /// The environment the command gets: defaults, then the caller's variables, then
    /// `CODEOCEAN=true` (always, as in Poseidon).
    pub(crate) fn environment(&self, workspace: &str) -> Result<Vec<(String, String)>, ExecError> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), crate::local::init::DEFAULT_PATH.into());
        env.insert("HOME".into(), workspace.into());
        env.insert("TERM".into(), "xterm".into());
        env.insert("LANG".into(), "C.UTF-8".into());
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') {
                return Err(ExecError::InvalidVariable(key.clone()));
            }
            if key.contains('\0') || value.contains('\0') {
                return Err(ExecError::NulByte);
            }
            env.insert(key.clone(), value.clone());
        }
        env.insert("CODEOCEAN".into(), "true".into());
        Ok(env.into_iter().collect())
    }

    pub(crate) fn validate(&self) -> Result<(), ExecError> {
        if self.argv.is_empty() {
            return Err(ExecError::EmptyCommand);
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err(ExecError::NulByte);
        }
        Ok(())
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    code: u8,
    signal: Option<i32>,
}

impl ExitStatus {
    pub(crate) fn from_status(status: ExecStatus) -> Option<ExitStatus> {
        match status {
            ExecStatus::Exited { code } => Some(ExitStatus {
                code: (code & 0xff) as u8,
                signal: None,
            }),
            ExecStatus::Signaled { signal } => Some(ExitStatus {
                code: (128 + signal).clamp(0, 255) as u8,
                signal: Some(signal),
            }),
            ExecStatus::Started { .. } | ExecStatus::SpawnFailed { .. } => None,
        }
    }

    /// The exit code as a shell reports it: the process's code, or 128 + the signal that killed
    /// it (137 for SIGKILL, as after an OOM kill).
    pub fn code(&self) -> u8 {
        self.code
    }

    /// The signal that killed the process, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }
}

/// Something an execution produced. `Exited` or `SandboxGone` is the last event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes from the pseudo-terminal (the command's stdout and the echo of its input).
    Stdout(Bytes),
    /// Bytes from the command's stderr.
    Stderr(Bytes),
    /// The command ended; all its output came before this event.
    Exited(ExitStatus),
    /// The sandbox went away (destroyed or crashed) before the command ended.
    SandboxGone,
}

/// What [`Execution::collect`] gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    /// The pty output (at most [`COLLECT_MAX_BYTES`]).
    pub stdout: Vec<u8>,
    /// The stderr output (at most [`COLLECT_MAX_BYTES`]).
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: ExitStatus,
}

/// A running command. Dropping it kills the command's whole process tree (and stops its I/O
/// task): no process outlives the handle of the execution that started it.
#[derive(Debug)]
pub struct Execution {
    events: mpsc::Receiver<Event>,
    stdin: mpsc::Sender<Bytes>,
    status: Arc<AsyncFd<OwnedFd>>,
    cgroup: Option<ExecCgroup>,
    pid: i32,
    task: JoinHandle<()>,
}

impl Execution {
    pub(crate) fn start(
        master: OwnedFd,
        stderr: OwnedFd,
        status: AsyncFd<OwnedFd>,
        cgroup: Option<ExecCgroup>,
        pid: i32,
    ) -> Result<Execution, ExecError> {
        crate::local::sys::set_nonblocking(master.as_fd())
            .map_err(|e| ExecError::io("make the pty non-blocking", e))?;
        crate::local::sys::set_nonblocking(stderr.as_fd())
            .map_err(|e| ExecError::io("make the stderr pipe non-blocking", e))?;
        let master = crate::local::sys::async_fd(master, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| ExecError::io("watch the pty", e))?;
        let stderr = crate::local::sys::async_fd(stderr, Interest::READABLE)
            .map_err(|e| ExecError::io("watch the stderr pipe", e))?;
        let status = Arc::new(status);
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (stdin, stdin_rx) = mpsc::channel(STDIN_QUEUE);
        let task = tokio::spawn(drive(
            master,
            stderr,
            Arc::clone(&status),
            stdin_rx,
            events_tx,
        ));
        Ok(Execution {
            events,
            stdin,
            status,
            cgroup,
            pid,
            task,
        })
    }

    /// The next event; `None` after the last one.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// A sender for stdin (bounded: a full queue waits until the pty takes more, which it does
    /// when the command reads). Bytes go through the terminal's line discipline, so they are
    /// echoed and control characters act (`Ctrl-D` is end-of-file for a reading program).
    pub fn stdin(&self) -> mpsc::Sender<Bytes> {
        self.stdin.clone()
    }

    /// The command's pid inside the sandbox.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Interrupts like Poseidon on a timeout, where `Ctrl-\` (0x1c) written to the terminal
    /// sends SIGQUIT to the foreground process group: the init sends that SIGQUIT to the
    /// command's process group itself. Through the terminal it would come only once the
    /// command had read the input queued before it, and a command that reads no stdin while
    /// the client keeps sending would never get it. A command may ignore it;
    /// [`Execution::kill`] cannot be ignored.
    pub fn interrupt(&self) -> Result<(), ExecError> {
        // Non-blocking: the status socket only ever holds a few tiny messages.
        protocol::send(self.status.get_ref().as_fd(), &ExecControl::Interrupt, &[])
            .map_err(|e| ExecError::io("interrupt", e))
    }

    /// Kills the command's whole process tree: everything in its cgroup (which processes
    /// cannot leave) and its process group (asked of the init, for hosts without cgroups).
    /// Returns at once; the `Exited` event follows.
    pub fn kill(&self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
        // Non-blocking: the status socket only ever holds a few tiny messages.
        let _ = protocol::send(self.status.get_ref().as_fd(), &ExecControl::Kill, &[]);
    }

    /// Waits for the end, discarding output not yet received.
    pub async fn wait(&mut self) -> Result<ExitStatus, ExecError> {
        while let Some(event) = self.next_event().await {
            match event {
                Event::Exited(status) => return Ok(status),
                Event::SandboxGone => return Err(ExecError::SandboxGone),
                Event::Stdout(_) | Event::Stderr(_) => {}
            }
        }
        Err(ExecError::SandboxGone)
    }

    /// Gathers all output and the end (bounded by [`COLLECT_MAX_BYTES`] per stream; more is
    /// dropped). For short commands and tests.
    pub async fn collect(&mut self) -> Result<Collected, ExecError> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let append = |buf: &mut Vec<u8>, bytes: &[u8]| {
            let room = COLLECT_MAX_BYTES.saturating_sub(buf.len());
            buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        };
        while let Some(event) = self.next_event().await {
            match event {
                Event::Stdout(b) => append(&mut stdout, &b),
                Event::Stderr(b) => append(&mut stderr, &b),
                Event::Exited(status) => {
                    return Ok(Collected {
                        stdout,
                        stderr,
                        status,
                    });
                }
                Event::SandboxGone => return Err(ExecError::SandboxGone),
            }
        }
        Err(ExecError::SandboxGone)
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        self.task.abort();
        self.kill();
        // Usually still busy for a moment (the kill is asynchronous in the kernel); then the
        // sandbox removes it with its next execution, or at the latest when it is destroyed.
        if let Some(cgroup) = &self.cgroup {
            cgroup.release();
        }
    }
}

/// Reads whatever is available from a non-blocking fd. `Ok(None)`: end-of-file (for a pty
/// master, `EIO` once every holder of the slave has closed it).
async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    loop {
        let mut guard = fd.readable().await?;
        let closed = guard.ready().is_read_closed() || guard.ready().is_error();
        match guard
            .try_io(|inner| nix::unistd::read(inner.get_ref(), buf).map_err(std::io::Error::from))
        {
            Ok(Ok(0)) => return Ok(None),
            Ok(Ok(n)) => return Ok(Some(n)),
            Ok(Err(e)) if e.raw_os_error() == Some(Errno::EIO as i32) => return Ok(None),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
            // See `write_some`: a closed fd stays ready, so waiting again would spin.
            Err(_would_block) if closed => return Ok(None),
            Err(_would_block) => continue,
        }
    }
}

/// Writes some of `bytes` to a non-blocking fd; returns how many were taken.
///
/// A pty master whose slave every process has closed (the command and everything it started
/// exited) reports a hang-up, which tokio keeps as "write closed": `writable()` is ready at once
/// for good, while a full terminal still refuses the bytes with `EAGAIN`. Retrying would spin on
/// one worker thread without ever yielding (the hostile suite caught a server whose timers
/// stopped), so that is the end of input: an error.
async fn write_some(fd: &AsyncFd<OwnedFd>, bytes: &[u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.writable().await?;
        let closed = guard.ready().is_write_closed() || guard.ready().is_error();
        match guard.try_io(|inner| {
            nix::unistd::write(inner.get_ref(), bytes).map_err(std::io::Error::from)
        }) {
            Ok(Ok(n)) => return Ok(n),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
            Err(_would_block) if closed => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the terminal was hung up with its input full",
                ));
            }
            Err(_would_block) => continue,
        }
    }
}

/// The execution's I/O task: stdin into the pty, pty and stderr out as events, then the exit.
async fn drive(
    master: AsyncFd<OwnedFd>,
    stderr: AsyncFd<OwnedFd>,
    status: Arc<AsyncFd<OwnedFd>>,
    mut stdin_rx: mpsc::Receiver<Bytes>,
    events: mpsc::Sender<Event>,
) {
    let mut out_buf = vec![0u8; READ_CHUNK];
    let mut err_buf = vec![0u8; READ_CHUNK];
    let mut stdout_open = true;
    let mut stderr_open = true;
    let mut stdin_open = true;
    let mut pending: Option<Bytes> = None;
    let mut end: Option<Event> = None;
    let mut linger_until: Option<Instant> = None;
    loop {
        if end.is_some() && !stdout_open && !stderr_open {
            break;
        }
        let linger = async {
            match linger_until {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Output before the exit, so that the exit event follows everything that was there.
            biased;
            read = read_some(&master, &mut out_buf), if stdout_open => match read {
                Ok(Some(n)) => {
                    if events.send(Event::Stdout(Bytes::copy_from_slice(&out_buf[..n]))).await.is_err() {
                        return;
                    }
                }
                Ok(None) | Err(_) => stdout_open = false,
            },
            read = read_some(&stderr, &mut err_buf), if stderr_open => match read {
                Ok(Some(n)) => {
                    if events.send(Event::Stderr(Bytes::copy_from_slice(&err_buf[..n]))).await.is_err() {
                        return;
                    }
                }
                Ok(None) | Err(_) => stderr_open = false,
            },
            message = protocol::aio::recv::<ExecStatus>(&status), if end.is_none() => {
                end = Some(match message {
                    Ok(Some((s, _))) => match ExitStatus::from_status(s) {
                        Some(exit) => Event::Exited(exit),
                        None => continue,
                    },
                    // The init is gone, and with it every process of the sandbox.
                    Ok(None) | Err(_) => Event::SandboxGone,
                });
                linger_until = Some(Instant::now() + OUTPUT_LINGER);
            },
            () = linger => break,
            chunk = stdin_rx.recv(), if stdin_open && pending.is_none() => match chunk {
                Some(chunk) => pending = Some(chunk),
                None => stdin_open = false,
            },
            written = write_some(&master, pending.as_deref().unwrap_or_default()), if pending.is_some() => match written {
                Ok(n) => {
                    if let Some(chunk) = pending.as_mut() {
                        bytes::Buf::advance(chunk, n);
                        if chunk.is_empty() {
                            pending = None;
                        }
                    }
                }
                // The terminal is gone: input has nowhere to go.
                Err(_) => {
                    pending = None;
                    stdin_open = false;
                }
            },
        }
    }
    if let Some(end) = end {
        let _ = events.send(end).await;
    }
}
