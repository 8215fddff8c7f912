//! Path confinement of the local backend's file operations ([`Workspace::check`], which runs
//! the lexical resolution every operation starts with; the kernel's `openat2(RESOLVE_BENEATH)`
//! that follows is not exercised here) and the Nomad backend's [`clean_path`].
//!
//! [`Workspace::check`] is compared with an independent model of the module's rules: a path
//! with NUL is invalid; after lexical cleaning (`.` and empty components vanish, `..` removes the
//! previous component) a `..` with nothing left to remove is an escape; a relative path is
//! reachable; an absolute one only below `/workspace`, or below `/tmp` when the workspace has
//! one. The model's resolved components never contain `..`, `.` or `/`, so agreement means the
//! real resolution never leaves its base either.
//!
//! [`clean_path`] must be idempotent, keep a path absolute iff it was, never leave `.` or empty
//! components, and never leave `..` in an absolute path (nor anywhere but a leading run in a
//! relative one).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::LazyLock;

use trident_backends::local::config::IdMap;
use trident_backends::local::{FileError, Workspace};
use trident_backends::nomad::commands::clean_path;

/// Workspaces without and with a `/tmp`, opened once on the system's temporary directory (only
/// as an fd: `check` never touches a file).
static WORKSPACES: LazyLock<[Workspace; 2]> = LazyLock::new(|| {
    let open = || {
        Workspace::open(
            &std::env::temp_dir(),
            PathBuf::from("/workspace"),
            IdMap::SingleId {
                host_uid: 0,
                host_gid: 0,
            },
            0,
        )
        .expect("the temporary directory opens")
    };
    let tmp: OwnedFd = File::open(std::env::temp_dir())
        .expect("the temporary directory opens")
        .into();
    [open(), open().with_tmp(tmp)]
});

/// What the model expects of a path.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Reachable,
    Invalid,
    Escape,
    Unreachable,
}

/// Runs the target on `data`.
pub fn run(data: &[u8]) {
    let path = String::from_utf8_lossy(data);
    for (workspace, has_tmp) in WORKSPACES.iter().zip([false, true]) {
        let expected = model(&path, has_tmp);
        let actual = match workspace.check(&path) {
            Ok(()) => Expected::Reachable,
            Err(FileError::Invalid(_)) => Expected::Invalid,
            Err(FileError::Escape(_)) => Expected::Escape,
            Err(FileError::Unreachable(_)) => Expected::Unreachable,
            Err(other) => panic!("check touched the file system: {other}"),
        };
        assert_eq!(actual, expected, "{path:?} (with /tmp: {has_tmp})");
    }
    if !path.contains('\0') {
        check_clean_path(&path);
    }
}

fn model(path: &str, has_tmp: bool) -> Expected {
    if path.contains('\0') {
        return Expected::Invalid;
    }
    let mut components: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if components.pop().is_none() {
                    return Expected::Escape;
                }
            }
            name => components.push(name),
        }
    }
    assert!(
        components
            .iter()
            .all(|name| !matches!(*name, "" | "." | "..") && !name.contains('/'))
    );
    if !path.starts_with('/') {
        return Expected::Reachable;
    }
    match components.first() {
        Some(&"workspace") => Expected::Reachable,
        Some(&"tmp") if has_tmp => Expected::Reachable,
        _ => Expected::Unreachable,
    }
}

fn check_clean_path(path: &str) {
    let clean = clean_path(path);
    assert_eq!(clean_path(&clean), clean, "not idempotent for {path:?}");
    assert_eq!(clean.starts_with('/'), path.starts_with('/'));
    if clean == "." || clean == "/" {
        return;
    }
    let body = clean.strip_prefix('/').unwrap_or(&clean);
    let parts: Vec<&str> = body.split('/').collect();
    assert!(
        parts.iter().all(|part| !part.is_empty() && *part != "."),
        "{path:?} → {clean:?}"
    );
    let leading_up = parts.iter().take_while(|part| **part == "..").count();
    assert!(
        parts[leading_up..].iter().all(|part| *part != ".."),
        "{path:?} → {clean:?}"
    );
    if clean.starts_with('/') {
        assert_eq!(leading_up, 0, "{path:?} → {clean:?} climbs above /");
    }
}
