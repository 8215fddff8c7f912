//! File operations on a runner's workspace, done in Rust on the host and confined to it.
//!
//! # Paths
//!
//! A client path is resolved like this:
//!
//! First the path is cleaned lexically like Go's `path.Clean` (which Poseidon applies): `.` and
//! empty components vanish, `a/../b` is `b`. A `..` that would climb above the workspace (for a
//! relative path) or above `/` (for an absolute one) is refused with [`FileError::Escape`]. Then:
//!
//! - `./x`, `x`: relative to the workspace; `./` and the empty path are the workspace itself.
//! - `/workspace/x` (the workspace's mount point inside the sandbox): the same file as `x`, so a
//!   path a command prints can be used as it is.
//! - `/tmp/x`: `x` in the sandbox's private `/tmp`, the very file a command sees there (Poseidon's
//!   e2e `TestCopyFilesRoute` copies `/tmp/absolute/file/path.txt` and `cat`s it). See
//!   [`Workspace::with_tmp`] for how the host reaches it.
//! - any other absolute path (`/`, `/etc/passwd`, `/proc/1/environ`, `/home/user/x`) is
//!   [`FileError::Unreachable`]: file operations reach only the workspace and `/tmp`, and the rest
//!   of a sandbox's file system is the read-only root shared with the host, which a file
//!   operation done by the server must never touch. Poseidon would write such paths inside the
//!   container as root, or fail to read them (`/proc/1/environ` gives 424); the local executor
//!   answers reads with "file not found" (424, like Poseidon) and an update naming one with a
//!   copy failure (500, like Poseidon's `tar` that "Cannot open" a path) before any of its
//!   entries is written (Poseidon's `tar` writes the others).
//!   Mapping them into the workspace instead (as an earlier version did) would put files where
//!   no command looks for them.
//!
//! Then the kernel resolves it below an fd of the workspace (or of `/tmp`) with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)`: symlinks inside the workspace are followed, but any resolution step
//! that would leave it (an absolute symlink, a relative one with too many `..`, a chain of them)
//! fails with `EXDEV`, reported as [`FileError::SymlinkEscape`]. The check and the use are one
//! system call, so a command racing to swap a directory for a symlink cannot win (no TOCTOU).
//! Final components that are created, replaced or removed are handled relative to the parent's
//! fd with `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`, so a symlink there is acted on itself, never
//! followed.
//!
//! # Ownership and modes (Poseidon §4.5)
//!
//! Files are written as the sandbox's root (Poseidon's `tar` runs as root): regular files get
//! mode `0744` (`rwxr--r--`), directories `01777` (sticky, so the sandbox user can add files but
//! not delete root's). Poseidon's `tar` would create *missing parents* with `0755`; here they get
//! `01777` like explicit directories, so that a command can write output next to its sources
//! (e.g. `javac src/Main.java`).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::UnlinkatFlags;

use crate::local::config::IdMap;

/// Mode of files written by [`Workspace::copy`].
pub const FILE_MODE: u32 = 0o744;
/// Mode of directories created by [`Workspace::copy`].
pub const DIR_MODE: u32 = 0o1777;
/// Upper bound of directory nesting that delete and list descend into.
pub const MAX_DEPTH: usize = 128;
/// Upper bound of entries one listing returns.
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path climbs above the workspace (or `/`) with `..`.
    #[error("path {0:?} leaves the workspace")]
    Escape(String),
    /// The path is absolute and outside the workspace and `/tmp`, the only parts of a runner
    /// that file operations reach (see the module documentation).
    #[error("{0:?} is outside the workspace and /tmp")]
    Unreachable(String),
    /// A symlink on the path points out of the workspace.
    #[error("path {0:?} leads out of the workspace through a symlink")]
    SymlinkEscape(String),
    /// The path contains a NUL byte.
    #[error("path {0:?} is not valid")]
    Invalid(String),
    /// Nothing exists at the path (or a component is not a directory).
    #[error("file {0:?} not found")]
    NotFound(String),
    /// The path names a directory where a file is needed.
    #[error("{0:?} is a directory")]
    IsADirectory(String),
    /// The path names something that is neither a regular file nor a directory where one of them
    /// is needed (a device, a FIFO, a socket).
    #[error("{0:?} is not a regular file")]
    NotAFile(String),
    /// The directory tree is nested deeper than [`MAX_DEPTH`].
    #[error("{0:?} is nested deeper than {MAX_DEPTH} levels")]
    TooDeep(String),
    /// The listing has more than [`MAX_LIST_ENTRIES`] entries.
    #[error("listing {0:?} has more than {MAX_LIST_ENTRIES} entries")]
    TooManyEntries(String),
    /// A component of the path is longer than 255 bytes, or the whole path longer than 4,095
    /// (the kernel's `NAME_MAX` and `PATH_MAX`).
    #[error("path {0:?} is too long: a name may have 255 bytes, a path 4095")]
    NameTooLong(String),
    /// The workspace (with `/tmp`) is full: its quota of bytes or of files is used up.
    #[error("no space left for {0:?}: the workspace's quota of bytes or files is used up")]
    NoSpace(String),
    /// Any other failure of a system call.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The client path.
        path: String,
        /// The kernel's answer.
        source: std::io::Error,
    },
}

pub use crate::executor::FileHeader;

/// A runner's workspace, opened for file operations.
#[derive(Debug)]
pub struct Workspace {
    root: OwnedFd,
    /// The sandbox's `/tmp`, if file operations may reach it.
    tmp: Option<OwnedFd>,
    mount: PathBuf,
    id_map: IdMap,
    sandbox_uid: u32,
    /// Host ids that own what copy creates (the sandbox's root), if we may chown.
    owner: Option<(u32, u32)>,
}

/// What a resolved client path designates.
struct Target<'a> {
    /// The directory the path is confined to: the workspace or `/tmp`.
    base: BorrowedFd<'a>,
    /// Normal components below `base`; empty for `base` itself.
    components: Vec<OsString>,
}

impl Target<'_> {
    fn parent_and_name(&self) -> Option<(&[OsString], &OsStr)> {
        let (name, parent) = self.components.split_last()?;
        Some((parent, name.as_os_str()))
    }
}

fn join(components: &[OsString]) -> PathBuf {
    if components.is_empty() {
        return PathBuf::from(".");
    }
    components.iter().collect()
}

impl Workspace {
    /// Opens the workspace at `root` (host path). `mount` is where it appears inside the
    /// sandbox; `id_map` and `sandbox_uid` decide ownership and the owner names of listings.
    pub fn open(
        root: &Path,
        mount: PathBuf,
        id_map: IdMap,
        sandbox_uid: u32,
    ) -> Result<Workspace, FileError> {
        let root_fd = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FileError::Io {
            op: "open the workspace",
            path: root.display().to_string(),
            source: e.into(),
        })?;
        let owner = match (
            nix::unistd::geteuid().is_root(),
            id_map.host_uid(0),
            id_map.host_gid(0),
        ) {
            (true, Some(uid), Some(gid)) => Some((uid, gid)),
            _ => None,
        };
        Ok(Workspace {
            root: root_fd,
            tmp: None,
            mount,
            id_map,
            sandbox_uid,
            owner,
        })
    }

    /// Lets file operations reach the sandbox's `/tmp` through `tmp`, a directory fd of it.
    ///
    /// The sandbox's `/tmp` is a bind mount of a host directory of the runner
    /// (`<state_dir>/<id>/tmp`), and `tmp` must be opened by its *host* path, like the workspace:
    /// then no mount a command makes inside the sandbox (a sandbox root may bind a read-only host
    /// directory such as `/etc` under `/tmp`) can redirect the server, host root, which resolves
    /// paths in its own mount namespace. An fd of the sandbox's own tmpfs would be subject to
    /// such mounts, and host root cannot even create files in a tmpfs mounted inside the
    /// sandbox's user namespace (its uid is not mapped there: `EOVERFLOW`).
    ///
    /// What this costs against a tmpfs: `/tmp` has no size bound of its own (the state dir's file
    /// system bounds it, as it bounds the workspace) and its pages are page cache, not shmem,
    /// under the sandbox's memory limit.
    pub fn with_tmp(mut self, tmp: OwnedFd) -> Workspace {
        self.tmp = Some(tmp);
        self
    }

    /// Checks a client path without touching anything: `Err` for exactly the paths every
    /// operation refuses ([`FileError::Escape`], [`FileError::Invalid`],
    /// [`FileError::Unreachable`]), so that a request can be refused before any of it is done.
    pub fn check(&self, path: &str) -> Result<(), FileError> {
        self.resolve(path).map(drop)
    }

    /// Cleans a client path into a base directory and components below it.
    fn resolve(&self, path: &str) -> Result<Target<'_>, FileError> {
        if path.contains('\0') {
            return Err(FileError::Invalid(path.to_owned()));
        }
        let as_path = Path::new(path);
        let mut components: Vec<OsString> = Vec::new();
        for component in as_path.components() {
            match component {
                Component::Normal(name) => components.push(name.to_owned()),
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir => {
                    if components.pop().is_none() {
                        return Err(FileError::Escape(path.to_owned()));
                    }
                }
                Component::Prefix(_) => return Err(FileError::Invalid(path.to_owned())),
            }
        }
        if !as_path.is_absolute() {
            return Ok(Target {
                base: self.root.as_fd(),
                components,
            });
        }
        let workspace = self.mount.strip_prefix("/").unwrap_or(&self.mount);
        let base = match components.first() {
            Some(first) if Path::new(first) == workspace => self.root.as_fd(),
            Some(first) if first == "tmp" => match &self.tmp {
                Some(tmp) => tmp.as_fd(),
                None => return Err(FileError::Unreachable(path.to_owned())),
            },
            _ => return Err(FileError::Unreachable(path.to_owned())),
        };
        components.remove(0);
        Ok(Target { base, components })
    }

    /// Opens `components` below the workspace with the kernel confining the resolution.
    fn open_beneath(
        &self,
        base: BorrowedFd<'_>,
        components: &[OsString],
        flags: OFlag,
        client: &str,
    ) -> Result<OwnedFd, FileError> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(base, &join(components), how).map_err(|e| map_errno(e, "open", client))
    }

    fn open_dir_beneath(
        &self,
        base: BorrowedFd<'_>,
        components: &[OsString],
        client: &str,
    ) -> Result<OwnedFd, FileError> {
        self.open_beneath(base, components, OFlag::O_PATH | OFlag::O_DIRECTORY, client)
    }

    /// Gives a new entry (opened as `fd`) the ownership and mode Poseidon's `tar` would.
    fn adopt(&self, fd: BorrowedFd<'_>, mode: u32, client: &str) -> Result<(), FileError> {
        if let Some((uid, gid)) = self.owner {
            nix::unistd::fchown(
                fd,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| map_errno(e, "chown", client))?;
        }
        // After chown: chown clears set-id bits, and the sticky bit must survive the umask.
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode))
            .map_err(|e| map_errno(e, "chmod", client))
    }

    /// Ensures the directories `components` exist (creating missing ones with [`DIR_MODE`]) and
    /// returns an fd of the last.
    fn ensure_dirs(
        &self,
        base: BorrowedFd<'_>,
        components: &[OsString],
        client: &str,
    ) -> Result<OwnedFd, FileError> {
        let mut current = self.open_dir_beneath(base, &[], client)?;
        for depth in 1..=components.len() {
            match self.open_dir_beneath(base, &components[..depth], client) {
                Ok(fd) => current = fd,
                Err(FileError::NotFound(_)) => {
                    let name = components[depth - 1].as_os_str();
                    match nix::sys::stat::mkdirat(
                        current.as_fd(),
                        name,
                        Mode::from_bits_truncate(0o700),
                    ) {
                        Ok(()) => {
                            let created = openat(
                                current.as_fd(),
                                name,
                                OFlag::O_RDONLY
                                    | OFlag::O_DIRECTORY
                                    | OFlag::O_NOFOLLOW
                                    | OFlag::O_CLOEXEC,
                                Mode::empty(),
                            )
                            .map_err(|e| map_errno(e, "open the new directory", client))?;
                            self.adopt(created.as_fd(), DIR_MODE, client)?;
                        }
                        // Created concurrently (by a command, or another request): use it.
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(map_errno(e, "create directory", client)),
                    }
                    current = self.open_dir_beneath(base, &components[..depth], client)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(current)
    }

    /// Writes a file (creating missing parents), or creates a directory if `path` ends with `/`
    /// (then `content` is ignored), like an entry of Poseidon's `PATCH /files` `copy` list. An
    /// existing file is replaced; an existing symlink at the path is replaced, not followed.
    pub fn copy(&self, path: &str, content: &[u8]) -> Result<(), FileError> {
        let target = self.resolve(path)?;
        if path.ends_with('/') {
            let dir = self.ensure_dirs(target.base, &target.components, path)?;
            // An existing directory keeps its owner and mode, as with tar.
            drop(dir);
            return Ok(());
        }
        let Some((parent, name)) = target.parent_and_name() else {
            return Err(FileError::IsADirectory(path.to_owned()));
        };
        let dir = self.ensure_dirs(target.base, parent, path)?;
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_TRUNC
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(0o600);
        let fd = match openat(dir.as_fd(), name, flags, mode) {
            // A symlink (ELOOP with O_NOFOLLOW): replace the link itself.
            Err(Errno::ELOOP) => {
                nix::unistd::unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| map_errno(e, "replace symlink", path))?;
                openat(dir.as_fd(), name, flags | OFlag::O_EXCL, mode)
            }
            other => other,
        }
        .map_err(|e| match e {
            Errno::EISDIR => FileError::IsADirectory(path.to_owned()),
            // A FIFO without a reader (O_NONBLOCK keeps us from hanging on it).
            Errno::ENXIO => FileError::NotAFile(path.to_owned()),
            e => map_errno(e, "create", path),
        })?;
        let stat = fstat(fd.as_fd()).map_err(|e| map_errno(e, "inspect", path))?;
        if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(FileError::NotAFile(path.to_owned()));
        }
        self.adopt(fd.as_fd(), FILE_MODE, path)?;
        let mut file = File::from(fd);
        file.write_all(content)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => FileError::NoSpace(path.to_owned()),
                _ => FileError::Io {
                    op: "write",
                    path: path.to_owned(),
                    source: e,
                },
            })?;
        Ok(())
    }

    /// Deletes a file or a directory tree, like `rm -rf`: a missing path is no error. `./` (the
    /// workspace) deletes the workspace's contents, not the workspace. Symlinks are removed, never
    /// followed.
    pub fn delete(&self, path: &str) -> Result<(), FileError> {
        let target = self.resolve(path)?;
        let Some((parent, name)) = target.parent_and_name() else {
            let root =
                self.open_beneath(target.base, &[], OFlag::O_RDONLY | OFlag::O_DIRECTORY, path)?;
            return remove_contents(root, path, 0);
        };
        let dir = match self.open_dir_beneath(target.base, parent, path) {
            Ok(dir) => dir,
            Err(FileError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        remove_entry(dir.as_fd(), name, path, 0)
    }

    /// Lists `path` like Poseidon's `ls -l [--recursive]`:
    ///
    /// - a directory, not recursive: its entries, named by their bare names;
    /// - a directory, recursive: its entries and those of every subdirectory (depth first, each
    ///   directory's entries sorted by name), named `<path>/<relative path>` where `<path>` is the
    ///   client's path with one trailing `/` (so `./` gives `./test.txt`, as in Poseidon's e2e
    ///   tests). Symlinks to directories are listed, not descended into;
    /// - anything else (a file, a symlink): one entry named by the client's path.
    pub fn list(&self, path: &str, recursive: bool) -> Result<Vec<FileHeader>, FileError> {
        let target = self.resolve(path)?;
        let mut out = Vec::new();
        let dir = match target.parent_and_name() {
            None => {
                self.open_beneath(target.base, &[], OFlag::O_RDONLY | OFlag::O_DIRECTORY, path)?
            }
            // `dir/` (like `ls -l dir/`) follows a symlink to a directory, confined.
            Some(_) if path.ends_with('/') => self.open_beneath(
                target.base,
                &target.components,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                path,
            )?,
            Some((parent, name)) => {
                let parent_fd = self.open_dir_beneath(target.base, parent, path)?;
                let stat = fstatat(parent_fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| map_errno(e, "inspect", path))?;
                if file_type(&stat) != 'd' {
                    out.push(self.header(parent_fd.as_fd(), name, &stat, path.to_owned()));
                    return Ok(out);
                }
                openat(
                    parent_fd.as_fd(),
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| map_errno(e, "open", path))?
            }
        };
        let prefix = recursive.then(|| {
            let trimmed = path.trim_end_matches('/');
            match (trimmed.is_empty(), path.starts_with('/')) {
                (true, true) => "/".to_owned(),
                (true, false) => "./".to_owned(),
                (false, _) => format!("{trimmed}/"),
            }
        });
        self.list_dir(dir, prefix.as_deref(), recursive, path, 0, &mut out)?;
        Ok(out)
    }

    fn list_dir(
        &self,
        dir: OwnedFd,
        prefix: Option<&str>,
        recursive: bool,
        client: &str,
        depth: usize,
        out: &mut Vec<FileHeader>,
    ) -> Result<(), FileError> {
        if depth > MAX_DEPTH {
            return Err(FileError::TooDeep(client.to_owned()));
        }
        let names = dir_entries(&dir, client)?;
        let mut subdirs = Vec::new();
        for name in names {
            let stat = match fstatat(dir.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                // Removed by a command while we list: skip it, like ls.
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(map_errno(e, "inspect", client)),
            };
            let display = format!("{}{}", prefix.unwrap_or(""), name.to_string_lossy());
            if recursive && file_type(&stat) == 'd' {
                subdirs.push((name.clone(), display.clone()));
            }
            if out.len() >= MAX_LIST_ENTRIES {
                return Err(FileError::TooManyEntries(client.to_owned()));
            }
            out.push(self.header(dir.as_fd(), &name, &stat, display));
        }
        for (name, display) in subdirs {
            let sub = match openat(
                dir.as_fd(),
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(sub) => sub,
                Err(Errno::ENOENT) | Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => continue,
                Err(e) => return Err(map_errno(e, "open", client)),
            };
            let sub_prefix = format!("{display}/");
            self.list_dir(sub, Some(&sub_prefix), recursive, client, depth + 1, out)?;
        }
        Ok(())
    }

    fn header(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        stat: &FileStat,
        display: String,
    ) -> FileHeader {
        let entry_type = file_type(stat);
        let link_target = if entry_type == 'l' {
            nix::fcntl::readlinkat(dir, name)
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        FileHeader {
            name: display,
            entry_type,
            link_target,
            size: stat.st_size,
            modification_time: stat.st_mtime,
            permissions: permissions(stat.st_mode),
            owner: self.user_name(self.id_map.inside_uid(stat.st_uid)),
            group: self.user_name(self.id_map.inside_gid(stat.st_gid)),
        }
    }

    /// Names as an image would show them: `root`, `user` for the sandbox user (Poseidon's images
    /// call it that), the number otherwise, `nobody` for host ids the sandbox cannot see.
    fn user_name(&self, inside: Option<u32>) -> String {
        match inside {
            Some(0) => "root".to_owned(),
            Some(id) if id == self.sandbox_uid => "user".to_owned(),
            Some(id) => id.to_string(),
            None => "nobody".to_owned(),
        }
    }

    /// Opens a regular file for download; returns its size and a reader positioned at the
    /// start. Symlinks inside the workspace are followed (like `cat`), confined to it.
    pub fn open_file(&self, path: &str) -> Result<(u64, File), FileError> {
        let target = self.resolve(path)?;
        if target.components.is_empty() {
            return Err(FileError::IsADirectory(path.to_owned()));
        }
        let fd = self.open_beneath(
            target.base,
            &target.components,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK,
            path,
        )?;
        let stat = fstat(fd.as_fd()).map_err(|e| map_errno(e, "inspect", path))?;
        match file_type(&stat) {
            '-' => {}
            'd' => return Err(FileError::IsADirectory(path.to_owned())),
            _ => return Err(FileError::NotAFile(path.to_owned())),
        }
        // Regular files ignore O_NONBLOCK; clear it anyway for readers that check.
        crate::local::sys::set_blocking(fd.as_fd()).map_err(|e| FileError::Io {
            op: "open",
            path: path.to_owned(),
            source: e,
        })?;
        Ok((u64::try_from(stat.st_size).unwrap_or(0), File::from(fd)))
    }
}

fn map_errno(e: Errno, op: &'static str, client: &str) -> FileError {
    match e {
        Errno::ENOENT | Errno::ENOTDIR => FileError::NotFound(client.to_owned()),
        // RESOLVE_BENEATH: a step of the resolution would leave the workspace.
        Errno::EXDEV => FileError::SymlinkEscape(client.to_owned()),
        Errno::ELOOP => FileError::SymlinkEscape(client.to_owned()),
        Errno::ENAMETOOLONG => FileError::NameTooLong(client.to_owned()),
        Errno::ENOSPC | Errno::EDQUOT => FileError::NoSpace(client.to_owned()),
        e => FileError::Io {
            op,
            path: client.to_owned(),
            source: e.into(),
        },
    }
}

fn file_type(stat: &FileStat) -> char {
    match SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => '-',
        SFlag::S_IFDIR => 'd',
        SFlag::S_IFLNK => 'l',
        SFlag::S_IFIFO => 'p',
        SFlag::S_IFSOCK => 's',
        SFlag::S_IFCHR => 'c',
        SFlag::S_IFBLK => 'b',
        _ => '?',
    }
}

/// `ls -l`'s nine permission characters.
fn permissions(mode: u32) -> String {
    let bit = |mask: u32, c: char| if mode & mask != 0 { c } else { '-' };
    let special = |exec: bool, special: bool, lower: char, upper: char| match (exec, special) {
        (true, true) => lower,
        (false, true) => upper,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(mode & 0o100 != 0, mode & 0o4000 != 0, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(mode & 0o010 != 0, mode & 0o2000 != 0, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(mode & 0o001 != 0, mode & 0o1000 != 0, 't', 'T'),
    ]
    .into_iter()
    .collect()
}

/// A directory's entry names, sorted bytewise (`ls` in the C locale), without `.` and `..`.
fn dir_entries(dir: &OwnedFd, client: &str) -> Result<Vec<OsString>, FileError> {
    // Dir takes ownership of the fd it reads; give it a duplicate opened for reading.
    let readable = openat(
        dir.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| map_errno(e, "open", client))?;
    let mut reader =
        nix::dir::Dir::from_fd(readable).map_err(|e| map_errno(e, "read directory", client))?;
    let mut names = Vec::new();
    for entry in reader.iter() {
        let entry = entry.map_err(|e| map_errno(e, "read directory", client))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(OsStr::from_bytes(name).to_owned());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Removes `name` in `dir` (recursively for a directory, never following symlinks). A missing
/// entry is no error.
fn remove_entry(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    client: &str,
    depth: usize,
) -> Result<(), FileError> {
    let stat = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(map_errno(e, "inspect", client)),
    };
    if file_type(&stat) == 'd' {
        if depth >= MAX_DEPTH {
            return Err(FileError::TooDeep(client.to_owned()));
        }
        match openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(sub) => remove_contents(sub, client, depth + 1)?,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(map_errno(e, "open", client)),
        }
        match nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(map_errno(e, "remove directory", client)),
        }
    } else {
        match nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(map_errno(e, "remove", client)),
        }
    }
}

fn remove_contents(dir: OwnedFd, client: &str, depth: usize) -> Result<(), FileError> {
    for name in dir_entries(&dir, client)? {
        remove_entry(dir.as_fd(), &name, client, depth)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_render_like_ls() {
        assert_eq!(permissions(0o744), "rwxr--r--");
        assert_eq!(permissions(0o1777), "rwxrwxrwt");
        assert_eq!(permissions(0o1770), "rwxrwx--T");
        assert_eq!(permissions(0o4755), "rwsr-xr-x");
        assert_eq!(permissions(0o2644), "rw-r-Sr--");
        assert_eq!(permissions(0), "---------");
    }
}
