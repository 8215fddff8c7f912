//! The few system calls that neither std nor nix wraps, in one place so that every `unsafe`
//! block of the local backend but `fork` and `pre_exec` is here, small and commented.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// The `RLIMIT_NOFILE` this process started with, once [`raise_open_files_limit`] changed it.
static STARTING_OPEN_FILES_LIMIT: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises this process's soft limit of open files to `wanted` (at most its hard limit) and
/// returns the soft limit in force. A server holds a socket per connection and a few fds per
/// runner and execution; the soft limit a service manager hands out (often 1,024) is less than
/// the connection limit's default. Sandboxes started later get the limit this process started
/// with back (see [`starting_open_files_limit`]), not the raised one.
pub fn raise_open_files_limit(wanted: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let target = wanted.min(limit.rlim_max);
    if target <= limit.rlim_cur {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let _ = STARTING_OPEN_FILES_LIMIT.set(limit);
    Ok(target)
}

/// The open-files limit to give a sandbox's init: the one this process started with, if
/// [`raise_open_files_limit`] raised it.
pub(crate) fn starting_open_files_limit() -> Option<libc::rlimit> {
    STARTING_OPEN_FILES_LIMIT.get().copied()
}

/// `pidfd_open(2)` (Linux 5.3): a handle on a process that cannot be confused with a later
/// process that reuses its pid.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain system call with integer arguments; on success it returns a new fd that we
    // own (PIDFD_NONBLOCK is not requested: readiness is polled, never read).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(2)`: signal exactly the process behind `pidfd`. `ESRCH` (already exited)
/// counts as success because the caller wants the process gone.
pub(crate) fn pidfd_kill(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: system call on a valid fd; a null siginfo is allowed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// Waits (blocking, bounded) until the process behind `pidfd` has exited. Returns whether it did.
pub(crate) fn pidfd_wait_exited(pidfd: BorrowedFd<'_>, timeout_ms: u16) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(timeout_ms)), Ok(n) if n > 0)
}

/// `struct mount_attr` of `mount_setattr(2)`, which the libc crate does not define.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `mount_setattr(2)` (Linux 5.12): sets flags on a mount, and with `recursive` on every mount
/// below it in one atomic call. A recursive bind of the host root carries many submounts; the
/// old `MS_REMOUNT|MS_BIND|MS_RDONLY` only changes the top one.
pub(crate) fn mount_setattr(path: &std::ffi::CStr, recursive: bool, set: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `path` is a valid C string, `attr` a valid struct of the size we pass; the kernel
    // only reads both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `fd` the controlling terminal of the calling process (which must be a session leader).
pub(crate) fn set_controlling_tty(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal from another session).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Brings the loopback interface up. A fresh network namespace has `lo` down; Docker's
/// `network_mode=none` (Poseidon's no-network runners) has it up.
pub(crate) fn loopback_up() -> io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets `O_NONBLOCK`, needed before an fd is handed to tokio's `AsyncFd`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Clears `O_NONBLOCK`.
pub(crate) fn set_blocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Sets `FD_CLOEXEC`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Leaves a forked child without running any of the parent's exit handlers or flushing its
/// buffers (which belong to the parent).
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}

/// Drops every capability for good: clears the bounding, ambient and inheritable sets and sets
/// `no_new_privs`, so that even uid 0 gets no capability from a later `execve`. Used for
/// "unprivileged" executions when the id mapping has only uid 0 ([`IdMap::SingleId`]).
///
/// [`IdMap::SingleId`]: crate::local::config::IdMap::SingleId
pub(crate) fn drop_all_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_LAST_POSSIBLE: libc::c_ulong = 63;

    for cap in 0..=CAP_LAST_POSSIBLE {
        // SAFETY: prctl with integer arguments. EINVAL marks capabilities this kernel lacks.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc < 0 && Errno::last() != Errno::EINVAL {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: prctl with integer arguments.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a header and two data structs of the v3 layout, which we pass.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Resets the signal state a child inherited from the init to the defaults a container's process
/// gets: the init blocks `SIGCHLD` (it reads it from a signalfd), Rust programs ignore `SIGPIPE`,
/// and a server started in the background by a non-interactive shell inherits `SIGINT` and
/// `SIGQUIT` ignored (POSIX asks shells to do that for `&` jobs). Ignored dispositions survive
/// `execve`: without this reset the interrupt (Ctrl-\ on the terminal) would not stop a
/// learner's program, and `yes | head` would behave unlike in a container.
pub(crate) fn reset_signals_for_exec() -> io::Result<()> {
    use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL involves no handler code, so no signal-safety concerns.
        unsafe { signal(sig, SigHandler::SigDfl) }?;
    }
    Ok(())
}

/// Duplicates `fd` onto `target` (clearing close-on-exec on the copy).
pub(crate) fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on fds the caller owns; it replaces `target` atomically.
    let rc = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Borrowed view of a raw fd number the process knows to be open (used for fd 3, the init's
/// control socket, which the server put there before `execve`).
pub(crate) fn take_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // Check it is open before claiming it: F_GETFD fails with EBADF otherwise.
    // SAFETY: fcntl F_GETFD only reads the fd's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd is open and, by the protocol with the server, ours alone.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(owned.as_fd())?;
    Ok(owned)
}

/// Registers an fd with tokio's reactor.
pub(crate) fn async_fd(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is open for as long as it lives and always returns the same raw fd,
    // and the `AsyncFd` owns it, which is what `register_with_interest` requires.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(io::Error::from)
}
