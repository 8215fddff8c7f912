//! Messages between the server and a sandbox's init.
//!
//! Transport: `SOCK_SEQPACKET` unix sockets (message boundaries kept, delivery in order, file
//! descriptors passed with `SCM_RIGHTS`), one JSON document per message. Two kinds of socket:
//!
//! - the *control* socket, one per sandbox: the set-up handshake, then execution requests. Its
//!   end-of-file tells the init that the server is gone, and the init then exits, which kills
//!   every process of the sandbox.
//! - a *status* socket per execution: the init reports `Started`/`Exited` on it; the server may
//!   send `Kill`. Its end-of-file on the init's side means the server dropped the execution, and
//!   the init kills the execution's process group.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::local::config::IdMap;

/// Upper bound of one message (the command, its environment and JSON overhead). Unix seqpacket
/// messages must fit in the socket's send buffer (about 200 KiB by default).
pub(crate) const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// Upper bound of file descriptors passed with one message.
pub(crate) const MAX_FDS: usize = 4;

/// What the init needs to build the sandbox.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Setup {
    /// Root file system on the host (`/` or a configured directory).
    pub(crate) rootfs: PathBuf,
    /// Empty host directory on which the sandbox's root tmpfs is mounted.
    pub(crate) root_mountpoint: PathBuf,
    /// The workspace directory on the host.
    pub(crate) workspace: PathBuf,
    /// The host directory bound at `/tmp` inside.
    pub(crate) tmp: PathBuf,
    /// The workspace's top-level name inside (`workspace` for `/workspace`).
    pub(crate) workspace_name: String,
    pub(crate) network: bool,
    pub(crate) hostname: String,
    /// Size of `/dev/shm` (a tmpfs).
    pub(crate) tmp_bytes: u64,
    /// Host paths to hide (absolute, host view).
    pub(crate) hidden: Vec<PathBuf>,
    pub(crate) id_map: IdMap,
    pub(crate) sandbox_uid: u32,
    pub(crate) sandbox_gid: u32,
    /// rlimits for executions where no cgroup controller enforces the limit.
    pub(crate) rlimit_as_bytes: Option<u64>,
    pub(crate) rlimit_nproc: Option<u64>,
}

/// Server → init on the control socket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToInit {
    /// First message: build this sandbox.
    Setup(Box<Setup>),
    /// The id maps and cgroups are in place; go on.
    Go,
    /// Start a command. File descriptors: pty slave, stderr pipe (write end), status socket,
    /// and, if `cgroup_fd`, an open `cgroup.procs` of the execution's cgroup.
    Exec(ExecRequest),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ExecRequest {
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) privileged: bool,
    pub(crate) cwd: PathBuf,
    pub(crate) cgroup_fd: bool,
}

/// Init → server on the control socket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromInit {
    /// The user namespace exists: write its id maps, move the init into its cgroups.
    UsernsReady,
    /// The sandbox's pid 1 exists, with this pid in the server's pid namespace.
    Pid1 { host_pid: i32 },
    /// The sandbox is built; executions can start.
    Ready,
    /// Set-up failed.
    Failed {
        stage: String,
        errno: Option<i32>,
        message: String,
    },
}

/// Init → server on an execution's status socket.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum ExecStatus {
    Started { pid: i32 },
    Exited { code: i32 },
    Signaled { signal: i32 },
    SpawnFailed { errno: i32 },
}

/// Server → init on an execution's status socket.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum ExecControl {
    /// Kill the execution's process group.
    Kill,
    /// Send SIGQUIT to the execution's process group, as `Ctrl-\` on its terminal would: for a
    /// terminal whose input is full, which takes no `Ctrl-\` until the command reads.
    Interrupt,
}

/// Sends one message with file descriptors. Non-blocking sockets return `WouldBlock` when full.
pub(crate) fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message too large",
        ));
    }
    assert!(
        fds.len() <= MAX_FDS,
        "no message carries more than {MAX_FDS} fds"
    );
    let iov = [IoSlice::new(&bytes)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsgs };
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    if sent != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short seqpacket send",
        ));
    }
    Ok(())
}

/// Receives one message and the file descriptors that came with it (close-on-exec). `Ok(None)`
/// is end-of-file: the peer closed its end.
pub(crate) fn recv<T: DeserializeOwned>(
    sock: BorrowedFd<'_>,
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
    let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, truncated, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for fd in raw {
                    // SAFETY: SCM_RIGHTS just installed these fds in our table; we own them.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, truncated, fds)
    };
    if truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "truncated message",
        ));
    }
    if len == 0 {
        // A seqpacket socket reads 0 only at end-of-file: we never send empty messages.
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..len]).map_err(io::Error::other)?;
    Ok(Some((msg, fds)))
}

/// Async wrappers for the server side (tokio, non-blocking sockets).
pub(crate) mod aio {
    use super::*;
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    pub(crate) async fn send<T: Serialize>(
        sock: &AsyncFd<OwnedFd>,
        msg: &T,
        fds: &[RawFd],
    ) -> io::Result<()> {
        sock.async_io(Interest::WRITABLE, |fd| super::send(fd.as_fd(), msg, fds))
            .await
    }

    pub(crate) async fn recv<T: DeserializeOwned>(
        sock: &AsyncFd<OwnedFd>,
    ) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
        sock.async_io(Interest::READABLE, |fd| super::recv(fd.as_fd()))
            .await
    }
}
