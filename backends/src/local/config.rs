//! Configuration of the local backend: host-wide settings and per-runner specs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::local::SandboxError;

/// How sandbox ids map to host ids.
///
/// A sandbox has its own user namespace. Root inside it (uid 0, used by `privileged` executions
/// and for the files Trident writes) and the unprivileged user that runs commands by default must
/// both be mapped to host ids that are *not* host root, so that nothing a learner's program does
/// runs with host privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdMapConfig {
    /// `Range` when the server runs as root, `SingleId` otherwise.
    #[default]
    Auto,
    /// Map sandbox ids `0..count` to host ids `host_base..host_base + count`. Needs a server with
    /// `CAP_SETUID`/`CAP_SETGID` (root). Take the range from `/etc/subuid` conventions so that it
    /// collides with no real host user. All sandboxes share the range: they cannot see each other
    /// (separate pid, ipc, mount and — without network access — network namespaces).
    Range {
        /// First host id of the range.
        host_base: u32,
        /// Number of ids; must cover the sandbox user's uid and gid.
        count: u32,
    },
    /// The only mapping an unprivileged server can write itself: sandbox uid 0 is the server's own
    /// uid. There is then no second id for the unprivileged user, so "unprivileged" executions run
    /// as uid 0 with an empty capability bounding set and `no_new_privs`: they cannot mount,
    /// change ids or gain privileges, but they can write every file of the workspace and `id -u`
    /// says 0.
    SingleId,
}

/// The id mapping in force (what [`IdMapConfig::Auto`] resolved to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IdMap {
    /// See [`IdMapConfig::Range`].
    Range {
        /// First host id.
        host_base: u32,
        /// Number of ids.
        count: u32,
    },
    /// See [`IdMapConfig::SingleId`]; `host_uid`/`host_gid` are the server's ids.
    SingleId {
        /// The server's effective uid, which is uid 0 inside.
        host_uid: u32,
        /// The server's effective gid, which is gid 0 inside.
        host_gid: u32,
    },
}

impl IdMap {
    /// The default range: the conventional start of `/etc/subuid` allocations.
    pub const DEFAULT_HOST_BASE: u32 = 100_000;
    /// 65536 ids, enough for every id an image may use.
    pub const DEFAULT_COUNT: u32 = 65_536;

    pub(crate) fn resolve(config: IdMapConfig) -> IdMap {
        let euid = nix::unistd::geteuid().as_raw();
        let egid = nix::unistd::getegid().as_raw();
        match config {
            IdMapConfig::Range { host_base, count } => IdMap::Range { host_base, count },
            IdMapConfig::SingleId => IdMap::SingleId {
                host_uid: euid,
                host_gid: egid,
            },
            IdMapConfig::Auto if euid == 0 => IdMap::Range {
                host_base: Self::DEFAULT_HOST_BASE,
                count: Self::DEFAULT_COUNT,
            },
            IdMapConfig::Auto => IdMap::SingleId {
                host_uid: euid,
                host_gid: egid,
            },
        }
    }

    /// The host uid of sandbox uid `inside`, if mapped.
    pub fn host_uid(&self, inside: u32) -> Option<u32> {
        match *self {
            IdMap::Range { host_base, count } => (inside < count)
                .then(|| host_base.checked_add(inside))
                .flatten(),
            IdMap::SingleId { host_uid, .. } => (inside == 0).then_some(host_uid),
        }
    }

    /// The host gid of sandbox gid `inside`, if mapped.
    pub fn host_gid(&self, inside: u32) -> Option<u32> {
        match *self {
            IdMap::Range { .. } => self.host_uid(inside),
            IdMap::SingleId { host_gid, .. } => (inside == 0).then_some(host_gid),
        }
    }

    /// The sandbox uid that host uid `host` appears as, if mapped.
    pub fn inside_uid(&self, host: u32) -> Option<u32> {
        match *self {
            IdMap::Range { host_base, count } => {
                host.checked_sub(host_base).filter(|inside| *inside < count)
            }
            IdMap::SingleId { host_uid, .. } => (host == host_uid).then_some(0),
        }
    }

    /// The sandbox gid that host gid `host` appears as, if mapped.
    pub fn inside_gid(&self, host: u32) -> Option<u32> {
        match *self {
            IdMap::Range { .. } => self.inside_uid(host),
            IdMap::SingleId { host_gid, .. } => (host == host_gid).then_some(0),
        }
    }
}

/// Host-wide settings of the local backend, one per server.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where runners live on the host: `<state_dir>/<sandbox id>/{workspace,root}`. It is hidden
    /// inside sandboxes (an empty read-only tmpfs is mounted over it) so that no runner can read
    /// another's workspace through the read-only host root.
    pub state_dir: PathBuf,
    /// The init program: the `trident-sandbox-init` binary of this crate, or the server's own
    /// executable if its `main` calls [`crate::local::init::run_if_requested`] first.
    pub init_program: PathBuf,
    /// How sandbox ids map to host ids.
    pub id_map: IdMapConfig,
    /// The uid that runs unprivileged executions inside the sandbox (Poseidon's images use a user
    /// `user`; 1000 is the usual first user id). Its host id owns the workspace directory.
    pub sandbox_uid: u32,
    /// The gid of [`HostConfig::sandbox_uid`].
    pub sandbox_gid: u32,
    /// Where the workspace appears inside the sandbox and the executions' working directory. It
    /// must be a single top-level component (like `/workspace`), so that its mount point lives in
    /// the sandbox's own root tmpfs and is never created on a host file system.
    pub workspace_mount: PathBuf,
    /// Name of the cgroup (in every hierarchy used) under which sandboxes get their cgroups.
    pub cgroup_parent: String,
    /// Per-core clock in MHz used to turn an environment's `cpu_mhz` into a hard CFS quota. `None`
    /// (the default, like Nomad without `cpu_hard_limit`) sets only a relative share.
    pub cpu_hard_limit_core_mhz: Option<u32>,
    /// Further host paths hidden inside sandboxes (beside `state_dir`): a directory is covered
    /// by an empty read-only tmpfs, a file (the server's configuration file, say) by a `nodev`
    /// bind of `/dev/null` that cannot be opened.
    pub hidden_paths: Vec<PathBuf>,
    /// Upper bound on a sandbox's start (init start, namespace and mount setup).
    pub create_timeout: Duration,
}

impl HostConfig {
    /// A configuration with defaults for everything but the state dir and the init program.
    pub fn new(state_dir: impl Into<PathBuf>, init_program: impl Into<PathBuf>) -> HostConfig {
        HostConfig {
            state_dir: state_dir.into(),
            init_program: init_program.into(),
            id_map: IdMapConfig::Auto,
            sandbox_uid: 1000,
            sandbox_gid: 1000,
            workspace_mount: PathBuf::from("/workspace"),
            cgroup_parent: "trident".to_owned(),
            cpu_hard_limit_core_mhz: None,
            hidden_paths: Vec::new(),
            create_timeout: Duration::from_secs(10),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), SandboxError> {
        let invalid = |reason: String| Err(SandboxError::InvalidConfig(reason));
        if !self.state_dir.is_absolute() {
            return invalid(format!("state_dir {:?} must be absolute", self.state_dir));
        }
        if !self.init_program.is_absolute() {
            return invalid(format!(
                "init_program {:?} must be absolute",
                self.init_program
            ));
        }
        if workspace_mount_name(&self.workspace_mount).is_none() {
            return invalid(format!(
                "workspace_mount {:?} must be one absolute top-level component like /workspace",
                self.workspace_mount
            ));
        }
        if !is_valid_name(&self.cgroup_parent) {
            return invalid(format!(
                "cgroup_parent {:?} must be 1 to 64 characters of [A-Za-z0-9._-]",
                self.cgroup_parent
            ));
        }
        Ok(())
    }
}

/// The single component of a valid workspace mount point (`/workspace` → `workspace`).
pub(crate) fn workspace_mount_name(mount: &Path) -> Option<String> {
    let text = mount.to_str()?;
    let name = text.strip_prefix('/')?;
    (is_valid_name(name) && name != "." && name != "..").then(|| name.to_owned())
}

/// Names used as path components on the host (sandbox ids, cgroup names): no separators, no
/// surprises.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Resource limits of one sandbox (shared by all its executions, like a container's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes (Poseidon's `memoryLimit` is MB). A breach kills the process that
    /// the kernel's OOM killer picks in the sandbox (exit 137, "Killed"), as in Docker; the
    /// sandbox survives.
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes (tasks) in the sandbox, init included.
    pub pids_max: Option<u64>,
    /// CPU in MHz (Poseidon's `cpuLimit`). Mapped like Nomad's Docker driver maps it: a relative
    /// share (cgroup v1 `cpu.shares` = MHz, clamped to 2..=262144; v2 `cpu.weight` from those
    /// shares with runc's formula `1 + (shares - 2) * 9999 / 262142`), plus a hard CFS quota of
    /// `period * MHz / core MHz` when [`HostConfig::cpu_hard_limit_core_mhz`] is set.
    pub cpu_mhz: Option<u32>,
    /// Size of the `/dev/shm` tmpfs in bytes; its pages count against the memory limit.
    /// `/tmp` is not bounded by it any more: it is a host directory of the runner (so that file
    /// operations can reach it, see [`crate::local::Workspace::with_tmp`]), bounded like the
    /// workspace by [`Limits::workspace_bytes`].
    pub tmp_bytes: u64,
    /// Bytes the workspace and `/tmp` may hold together. When set (and the server runs as root,
    /// see [`crate::local::Capabilities::workspace_quota`]), the runner's host directory is a
    /// tmpfs of this size: a write beyond it fails with `ENOSPC` ("No space left on device")
    /// inside the sandbox and with a clear error in file operations. Its pages are memory:
    /// what the sandbox writes there counts against its memory limit (as in go-judge's tmpfs
    /// workspaces). `None`: bounded only by the state dir's file system.
    pub workspace_bytes: Option<u64>,
    /// Files and directories the workspace and `/tmp` may hold together (the tmpfs's inode
    /// count), with [`Limits::workspace_bytes`]. `None`: no bound of its own.
    pub workspace_files: Option<u64>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: None,
            pids_max: None,
            cpu_mhz: None,
            tmp_bytes: 64 * 1024 * 1024,
            workspace_bytes: None,
            workspace_files: None,
        }
    }
}

/// What one runner asks for.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Unique among live sandboxes; 1 to 64 characters of `[A-Za-z0-9._-]`. It names the
    /// runner's directory and cgroups.
    pub id: String,
    /// Root file system: `None` for the host's root read-only, or a directory (an environment's
    /// image mapped to a configured root file system), also read-only.
    pub rootfs: Option<PathBuf>,
    /// Network access: `true` keeps the host's network namespace; `false` gives a fresh one with
    /// only loopback.
    pub network: bool,
    /// Resource limits.
    pub limits: Limits,
    /// Host name inside the sandbox.
    pub hostname: String,
    /// Remove the workspace (and the runner's directory) on destroy. A workspace with a quota
    /// (a tmpfs, see [`Limits::workspace_bytes`]) goes with the sandbox whatever this says.
    pub wipe_on_destroy: bool,
}

impl SandboxSpec {
    /// A spec with defaults: host root, no network, no limits, workspace wiped on destroy.
    pub fn new(id: impl Into<String>) -> SandboxSpec {
        SandboxSpec {
            id: id.into(),
            rootfs: None,
            network: false,
            limits: Limits::default(),
            hostname: "trident".to_owned(),
            wipe_on_destroy: true,
        }
    }
}

/// CPU mapping, kept pure so that it can be tested and documented in one place.
pub(crate) mod cpu {
    /// The CFS period used for hard limits (the kernel's default, 100 ms).
    pub(crate) const PERIOD_US: u64 = 100_000;

    /// cgroup v1 `cpu.shares` for `mhz` (Nomad's Docker driver passes MHz as shares).
    pub(crate) fn shares(mhz: u32) -> u64 {
        u64::from(mhz).clamp(2, 262_144)
    }

    /// cgroup v2 `cpu.weight` for the same shares (runc's conversion).
    pub(crate) fn weight(mhz: u32) -> u64 {
        1 + (shares(mhz) - 2) * 9_999 / 262_142
    }

    /// CFS quota per [`PERIOD_US`] for `mhz` of a core running at `core_mhz` (at least 1 ms, the
    /// kernel's minimum).
    pub(crate) fn quota_us(mhz: u32, core_mhz: u32) -> u64 {
        (PERIOD_US * u64::from(mhz) / u64::from(core_mhz.max(1))).max(1_000)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn shares_follow_mhz_within_the_kernel_range() {
            assert_eq!(shares(0), 2);
            assert_eq!(shares(20), 20);
            assert_eq!(shares(1_000_000), 262_144);
        }

        #[test]
        fn weight_spans_one_to_ten_thousand() {
            assert_eq!(weight(0), 1);
            assert_eq!(weight(1_000_000), 10_000);
            assert_eq!(weight(1024), 39);
        }

        #[test]
        fn quota_is_the_fraction_of_a_core() {
            assert_eq!(quota_us(1000, 2000), 50_000);
            assert_eq!(quota_us(4000, 2000), 200_000);
            assert_eq!(quota_us(1, 3000), 1_000);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_mapping_round_trips_and_rejects_outside_ids() {
        let map = IdMap::Range {
            host_base: 100_000,
            count: 65_536,
        };
        assert_eq!(map.host_uid(0), Some(100_000));
        assert_eq!(map.host_uid(1000), Some(101_000));
        assert_eq!(map.host_uid(65_536), None);
        assert_eq!(map.inside_uid(101_000), Some(1000));
        assert_eq!(map.inside_uid(0), None);
        assert_eq!(map.inside_uid(165_536), None);
    }

    #[test]
    fn single_mapping_maps_only_root() {
        let map = IdMap::SingleId {
            host_uid: 1234,
            host_gid: 99,
        };
        assert_eq!(map.host_uid(0), Some(1234));
        assert_eq!(map.host_gid(0), Some(99));
        assert_eq!(map.host_uid(1000), None);
        assert_eq!(map.inside_uid(1234), Some(0));
        assert_eq!(map.inside_gid(1234), None);
    }

    #[test]
    fn workspace_mount_must_be_one_top_level_component() {
        assert_eq!(
            workspace_mount_name(Path::new("/workspace")).as_deref(),
            Some("workspace")
        );
        assert_eq!(workspace_mount_name(Path::new("/home/user")), None);
        assert_eq!(workspace_mount_name(Path::new("workspace")), None);
        assert_eq!(workspace_mount_name(Path::new("/..")), None);
        assert_eq!(workspace_mount_name(Path::new("/")), None);
    }

    #[test]
    fn names_reject_separators_and_dots() {
        assert!(is_valid_name("env-1_runner.2"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name(".."));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(&"x".repeat(65)));
    }
}
