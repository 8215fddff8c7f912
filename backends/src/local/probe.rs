//! What this host allows: namespaces, id mapping, and which mechanism enforces each limit.
//!
//! The server prints [`Capabilities`] at start-up so that an operator sees at once whether, say,
//! the memory limit is a cgroup limit (a breach kills like Docker) or only an address-space
//! rlimit (a breach makes allocations fail).

use std::fmt;
use std::path::Path;

use crate::local::SandboxError;
use crate::local::cgroup::{CgroupLayout, CgroupVersion, Hierarchy};
use crate::local::config::IdMap;
use crate::local::init::PROBE_ARG;

/// How a limit is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitMechanism {
    /// A cgroup v2 controller.
    CgroupV2,
    /// A cgroup v1 controller.
    CgroupV1,
    /// A per-process rlimit (memory: `RLIMIT_AS`, allocations fail instead of a kill; pids:
    /// `RLIMIT_NPROC`, counted per uid).
    Rlimit,
    /// Not enforced.
    None,
}

impl LimitMechanism {
    fn of(h: &Option<Hierarchy>, rlimit: bool) -> LimitMechanism {
        match h.as_ref().map(|h| h.version) {
            Some(CgroupVersion::V2) => LimitMechanism::CgroupV2,
            Some(CgroupVersion::V1) => LimitMechanism::CgroupV1,
            None if rlimit => LimitMechanism::Rlimit,
            None => LimitMechanism::None,
        }
    }
}

impl fmt::Display for LimitMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LimitMechanism::CgroupV2 => "cgroup v2",
            LimitMechanism::CgroupV1 => "cgroup v1",
            LimitMechanism::Rlimit => "rlimit",
            LimitMechanism::None => "not enforced",
        })
    }
}

/// How an execution's process tree is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMechanism {
    /// `cgroup.kill` of a per-execution v2 cgroup (atomic, reaches processes that left the
    /// process group), plus the process group.
    CgroupV2,
    /// Kill loop over a per-execution v1 cgroup, plus the process group.
    CgroupV1,
    /// Only the process group (a process that calls `setsid` escapes until the sandbox is
    /// destroyed, which kills its whole pid namespace).
    ProcessGroup,
}

/// What this host allows the local backend to do.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// `uname -r`.
    pub kernel: String,
    /// The id mapping in force.
    pub id_map: IdMap,
    /// How the memory limit is enforced.
    pub memory: LimitMechanism,
    /// How the process limit is enforced.
    pub pids: LimitMechanism,
    /// How the CPU share is enforced.
    pub cpu: LimitMechanism,
    /// How executions are killed.
    pub kill: KillMechanism,
    /// Whether a workspace quota can be enforced: each runner's directory becomes a tmpfs of
    /// the quota's size, which only a server that may mount on the host (root) can make.
    pub workspace_quota: bool,
}

impl Capabilities {
    pub(crate) fn new(layout: &CgroupLayout, id_map: IdMap) -> Capabilities {
        Capabilities {
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            id_map,
            memory: LimitMechanism::of(&layout.memory, true),
            pids: LimitMechanism::of(&layout.pids, true),
            cpu: LimitMechanism::of(&layout.cpu, false),
            kill: match layout.tracking.as_ref().map(|h| h.version) {
                Some(CgroupVersion::V2) => KillMechanism::CgroupV2,
                Some(CgroupVersion::V1) => KillMechanism::CgroupV1,
                None => KillMechanism::ProcessGroup,
            },
            workspace_quota: false,
        }
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = match self.id_map {
            IdMap::Range { host_base, count } => {
                format!(
                    "sandbox ids 0..{count} → host {host_base}..{}",
                    u64::from(host_base) + u64::from(count)
                )
            }
            IdMap::SingleId { host_uid, .. } => format!(
                "single id (sandbox 0 → host {host_uid}; unprivileged executions are uid 0 without capabilities)"
            ),
        };
        let quota = if self.workspace_quota {
            "tmpfs"
        } else {
            "not enforced (needs a server that may mount, i.e. root)"
        };
        write!(
            f,
            "local sandbox: kernel {}, namespaces user+mount+pid+ipc+uts+cgroup(+net), {ids}; memory limit: {}, process limit: {}, cpu share: {}, execution kill: {:?}, workspace quota: {quota}",
            self.kernel, self.memory, self.pids, self.cpu, self.kill
        )
    }
}

/// Checks that this host lets us create every namespace a sandbox needs, by running the init
/// program in probe mode (a child process, so that the server's own namespaces stay untouched).
pub(crate) async fn probe_namespaces(init_program: &Path) -> Result<(), SandboxError> {
    let output = tokio::process::Command::new(init_program)
        .arg(PROBE_ARG)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| SandboxError::io(format!("run the sandbox init {init_program:?}"), e))?;
    if !output.status.success() {
        return Err(SandboxError::InvalidConfig(format!(
            "the sandbox init {init_program:?} does not support {PROBE_ARG} (exit {:?}); is it trident-sandbox-init?",
            output.status.code()
        )));
    }
    let report: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).map_err(|e| {
        SandboxError::InvalidConfig(format!(
            "unreadable namespace probe from {init_program:?}: {e}"
        ))
    })?;
    if report.is_empty() {
        return Ok(());
    }
    let field = |v: &serde_json::Value, k: &str| {
        v.get(k).and_then(|s| s.as_str()).unwrap_or("?").to_owned()
    };
    let missing: Vec<String> = report.iter().map(|v| field(v, "namespace")).collect();
    let detail = report
        .iter()
        .map(|v| format!("{}: {}", field(v, "namespace"), field(v, "error")))
        .collect::<Vec<_>>()
        .join("; ");
    Err(SandboxError::NamespacesUnavailable {
        hint: namespace_hint(&Sysctls::read(), nix::unistd::geteuid().is_root()),
        missing,
        detail,
    })
}

/// The sysctls that decide whether user namespaces are allowed.
#[derive(Debug, Default)]
pub(crate) struct Sysctls {
    /// Debian/Ubuntu `kernel.unprivileged_userns_clone`.
    pub(crate) unprivileged_userns_clone: Option<u64>,
    /// `user.max_user_namespaces`.
    pub(crate) max_user_namespaces: Option<u64>,
    /// Ubuntu 23.10+ `kernel.apparmor_restrict_unprivileged_userns`.
    pub(crate) apparmor_restrict_unprivileged_userns: Option<u64>,
}

impl Sysctls {
    fn read() -> Sysctls {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        Sysctls {
            unprivileged_userns_clone: read("/proc/sys/kernel/unprivileged_userns_clone"),
            max_user_namespaces: read("/proc/sys/user/max_user_namespaces"),
            apparmor_restrict_unprivileged_userns: read(
                "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            ),
        }
    }
}

/// How to allow the namespaces, from what the host's sysctls say (pure, for tests).
pub(crate) fn namespace_hint(sysctls: &Sysctls, root: bool) -> String {
    let mut hints = Vec::new();
    if sysctls.max_user_namespaces == Some(0) {
        hints.push("sysctl -w user.max_user_namespaces=15000".to_owned());
    }
    if !root && sysctls.unprivileged_userns_clone == Some(0) {
        hints.push("sysctl -w kernel.unprivileged_userns_clone=1".to_owned());
    }
    if !root && sysctls.apparmor_restrict_unprivileged_userns == Some(1) {
        hints.push(
            "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile that allows userns for the server)"
                .to_owned(),
        );
    }
    if hints.is_empty() {
        hints.push(
            "check that the kernel has CONFIG_USER_NS and friends; inside a container, run it with a seccomp profile that allows unshare/clone with namespace flags (e.g. --security-opt seccomp=unconfined) or as --privileged"
                .to_owned(),
        );
    }
    hints.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_names_the_sysctl_that_blocks_unprivileged_user_namespaces() {
        let sysctls = Sysctls {
            unprivileged_userns_clone: Some(0),
            ..Sysctls::default()
        };
        assert!(namespace_hint(&sysctls, false).contains("kernel.unprivileged_userns_clone=1"));
        // Root is not subject to that sysctl.
        assert!(!namespace_hint(&sysctls, true).contains("unprivileged_userns_clone"));
    }

    #[test]
    fn hint_names_a_zero_namespace_budget_and_apparmor() {
        let sysctls = Sysctls {
            max_user_namespaces: Some(0),
            apparmor_restrict_unprivileged_userns: Some(1),
            ..Sysctls::default()
        };
        let hint = namespace_hint(&sysctls, false);
        assert!(hint.contains("user.max_user_namespaces"), "{hint}");
        assert!(
            hint.contains("apparmor_restrict_unprivileged_userns=0"),
            "{hint}"
        );
    }

    #[test]
    fn hint_falls_back_to_containers_and_kernel_config() {
        assert!(namespace_hint(&Sysctls::default(), true).contains("seccomp"));
    }
}
