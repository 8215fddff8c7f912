//! cgroups: which hierarchy enforces which limit on this host, sandbox cgroups and per-execution
//! cgroups.
//!
//! Hosts differ: pure cgroup v2 (current distributions), pure v1 (older ones), and hybrids (v1
//! controllers plus a v2 mount that has few or no controllers, like this project's machines:
//! memory, pids and cpu in v1, `/sys/fs/cgroup/unified` with only `hugetlb`). So the choice is
//! made per controller at run time from `/proc/self/mountinfo`: v2 if the v2 hierarchy offers the
//! controller, else the v1 hierarchy that has it, else none (and the sandbox falls back to an
//! rlimit where one exists; [`crate::local::Capabilities`] says which).
//!
//! Each execution also gets a cgroup of its own in the *tracking* hierarchy (v2 if mounted and
//! `cgroup.kill` exists — it needs no controller — else a v1 hierarchy), so that killing an
//! execution reaches every process it started, including those that left its process group.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::local::config::{Limits, cpu};

/// A cgroup version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy hierarchies, one per controller (group).
    V1,
    /// The unified hierarchy.
    V2,
}

/// A mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Its version.
    pub version: CgroupVersion,
    /// Where it is mounted.
    pub mount: PathBuf,
}

/// The hierarchy chosen for each purpose on this host.
#[derive(Debug, Clone, Default)]
pub struct CgroupLayout {
    /// Enforces the memory limit.
    pub memory: Option<Hierarchy>,
    /// Enforces the process limit.
    pub pids: Option<Hierarchy>,
    /// Enforces the CPU share/quota.
    pub cpu: Option<Hierarchy>,
    /// Holds per-execution cgroups, for killing whole process trees.
    pub tracking: Option<Hierarchy>,
    /// The parent cgroup's name in every hierarchy.
    pub parent: String,
}

/// One line of `/proc/self/mountinfo` that is a cgroup mount of a hierarchy's root.
#[derive(Debug, PartialEq, Eq)]
struct CgroupMount {
    version: CgroupVersion,
    mount: PathBuf,
    /// v1: the controllers from the super options; v2: empty (read from cgroup.controllers).
    controllers: Vec<String>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let value = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok());
            if let Some(value) = value {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the cgroup mounts out of a mountinfo text (pure, for tests).
fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(mount_point), Some(fstype), Some(super_opts)) =
            (left.get(3), left.get(4), right.first(), right.get(2))
        else {
            continue;
        };
        // A bind of a sub-cgroup (or a cgroup namespace view) is not the hierarchy's root.
        if *root != "/" {
            continue;
        }
        let version = match *fstype {
            "cgroup2" => CgroupVersion::V2,
            "cgroup" => CgroupVersion::V1,
            _ => continue,
        };
        let controllers = match version {
            CgroupVersion::V2 => Vec::new(),
            CgroupVersion::V1 => super_opts
                .split(',')
                .filter(|o| matches!(*o, "memory" | "pids" | "cpu" | "cpuacct" | "freezer"))
                .map(str::to_owned)
                .collect(),
        };
        mounts.push(CgroupMount {
            version,
            mount: PathBuf::from(unescape(mount_point)),
            controllers,
        });
    }
    mounts
}

impl CgroupLayout {
    /// Detects the layout of this host. Only hierarchies this process can write to are used.
    pub fn detect(parent: &str) -> CgroupLayout {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounts = parse_mountinfo(&text);
        let v2 = mounts
            .iter()
            .find(|m| m.version == CgroupVersion::V2 && writable(&m.mount));
        let v2_controllers: Vec<String> = v2
            .map(|m| {
                fs::read_to_string(m.mount.join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let pick = |controller: &str| -> Option<Hierarchy> {
            if let Some(m) = v2.filter(|_| v2_controllers.iter().any(|c| c == controller)) {
                return Some(Hierarchy {
                    version: CgroupVersion::V2,
                    mount: m.mount.clone(),
                });
            }
            mounts
                .iter()
                .find(|m| {
                    m.version == CgroupVersion::V1
                        && m.controllers.iter().any(|c| c == controller)
                        && writable(&m.mount)
                })
                .map(|m| Hierarchy {
                    version: CgroupVersion::V1,
                    mount: m.mount.clone(),
                })
        };
        let memory = pick("memory");
        let pids = pick("pids");
        let cpu = pick("cpu");
        // cgroup.kill exists in every non-root v2 cgroup since Linux 5.14; probe it on the
        // parent after creating it (see `prepare`). Until then, prefer v2 when it exists.
        let tracking = v2
            .map(|m| Hierarchy {
                version: CgroupVersion::V2,
                mount: m.mount.clone(),
            })
            .or_else(|| pids.clone())
            .or_else(|| memory.clone())
            .or_else(|| cpu.clone());
        CgroupLayout {
            memory,
            pids,
            cpu,
            tracking,
            parent: parent.to_owned(),
        }
    }

    /// Creates the parent cgroups and enables the v2 controllers in use. A hierarchy whose
    /// parent cannot be prepared is dropped from the layout (its limit falls back to rlimits).
    pub(crate) fn prepare(&mut self) {
        let parent = self.parent.clone();
        let v2_controllers: Vec<&str> = [
            ("memory", &self.memory),
            ("pids", &self.pids),
            ("cpu", &self.cpu),
        ]
        .into_iter()
        .filter(|(_, h)| h.as_ref().is_some_and(|h| h.version == CgroupVersion::V2))
        .map(|(name, _)| name)
        .collect();
        let prepare_one = |h: &Hierarchy| -> io::Result<()> {
            let dir = h.mount.join(&parent);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if h.version == CgroupVersion::V2 {
                for controller in &v2_controllers {
                    let enable = format!("+{controller}");
                    fs::write(h.mount.join("cgroup.subtree_control"), &enable)?;
                    fs::write(dir.join("cgroup.subtree_control"), &enable)?;
                }
            }
            Ok(())
        };
        for slot in [&mut self.memory, &mut self.pids, &mut self.cpu] {
            if let Some(h) = slot.as_ref()
                && prepare_one(h).is_err()
            {
                *slot = None;
            }
        }
        if let Some(h) = self.tracking.clone() {
            let usable = prepare_one(&h).is_ok()
                && (h.version == CgroupVersion::V1
                    || h.mount.join(&parent).join("cgroup.kill").exists());
            if !usable {
                // Fall back to a v1 hierarchy we already use for a limit.
                self.tracking = [&self.pids, &self.memory, &self.cpu]
                    .into_iter()
                    .flatten()
                    .find(|h| h.version == CgroupVersion::V1)
                    .cloned();
            }
        }
    }

    /// Removes the parent cgroups if they are empty (at shutdown, and in tests).
    pub fn remove_parent(&self) {
        for h in self.hierarchies() {
            let _ = fs::remove_dir(h.mount.join(&self.parent));
        }
    }

    /// The distinct hierarchies in use.
    fn hierarchies(&self) -> Vec<&Hierarchy> {
        let mut out: Vec<&Hierarchy> = Vec::new();
        for h in [&self.memory, &self.pids, &self.cpu, &self.tracking]
            .into_iter()
            .flatten()
        {
            if !out.iter().any(|o| o.mount == h.mount) {
                out.push(h);
            }
        }
        out
    }
}

fn writable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// The cgroups of one sandbox, one directory per hierarchy in use.
#[derive(Debug)]
pub(crate) struct SandboxCgroup {
    dirs: Vec<(Hierarchy, PathBuf)>,
    tracking: Option<(CgroupVersion, PathBuf)>,
    /// Cgroups of released executions that still had exiting processes when released; removed
    /// by the next [`SandboxCgroup::exec_cgroup`], so a long-lived runner does not pile them up.
    released: Arc<Mutex<Vec<PathBuf>>>,
}

/// Upper bound of released execution cgroups awaiting removal; beyond it they wait for the
/// sandbox's destroy, which removes the whole tree.
const RELEASED_MAX: usize = 256;

/// Writes a cgroup file, naming it in the error.
fn write_file(path: &Path, value: &str) -> Result<(), (PathBuf, io::Error)> {
    fs::write(path, value).map_err(|e| (path.to_owned(), e))
}

impl SandboxCgroup {
    /// Creates the sandbox's cgroups and sets the limits.
    pub(crate) fn create(
        layout: &CgroupLayout,
        id: &str,
        limits: &Limits,
        cpu_core_mhz: Option<u32>,
    ) -> Result<SandboxCgroup, (PathBuf, io::Error)> {
        let mut cgroup = SandboxCgroup {
            dirs: Vec::new(),
            tracking: None,
            released: Arc::default(),
        };
        for h in layout.hierarchies() {
            let dir = h.mount.join(&layout.parent).join(id);
            if let Err(e) = fs::create_dir(&dir) {
                cgroup.remove(Duration::ZERO);
                return Err((dir, e));
            }
            cgroup.dirs.push((h.clone(), dir));
        }
        if let Some(t) = &layout.tracking {
            cgroup.tracking = Some((t.version, t.mount.join(&layout.parent).join(id)));
        }
        if let Err(e) = cgroup.set_limits(layout, limits, cpu_core_mhz) {
            cgroup.remove(Duration::ZERO);
            return Err(e);
        }
        Ok(cgroup)
    }

    fn dir_of(&self, h: &Option<Hierarchy>) -> Option<(CgroupVersion, &Path)> {
        let h = h.as_ref()?;
        self.dirs
            .iter()
            .find(|(d, _)| d.mount == h.mount)
            .map(|(d, p)| (d.version, p.as_path()))
    }

    fn set_limits(
        &self,
        layout: &CgroupLayout,
        limits: &Limits,
        cpu_core_mhz: Option<u32>,
    ) -> Result<(), (PathBuf, io::Error)> {
        if let (Some(bytes), Some((version, dir))) =
            (limits.memory_bytes, self.dir_of(&layout.memory))
        {
            match version {
                CgroupVersion::V2 => {
                    write_file(&dir.join("memory.max"), &bytes.to_string())?;
                    // No swap: the limit is the limit, as with Docker's --memory-swap=--memory.
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write_file(&swap, "0")?;
                    }
                }
                CgroupVersion::V1 => {
                    write_file(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write_file(&memsw, &bytes.to_string())?;
                    }
                }
            }
        }
        if let (Some(max), Some((_, dir))) = (limits.pids_max, self.dir_of(&layout.pids)) {
            write_file(&dir.join("pids.max"), &max.to_string())?;
        }
        if let (Some(mhz), Some((version, dir))) = (limits.cpu_mhz, self.dir_of(&layout.cpu)) {
            let quota = cpu_core_mhz.map(|core| cpu::quota_us(mhz, core));
            match version {
                CgroupVersion::V2 => {
                    write_file(&dir.join("cpu.weight"), &cpu::weight(mhz).to_string())?;
                    if let Some(q) = quota {
                        write_file(&dir.join("cpu.max"), &format!("{q} {}", cpu::PERIOD_US))?;
                    }
                }
                CgroupVersion::V1 => {
                    write_file(&dir.join("cpu.shares"), &cpu::shares(mhz).to_string())?;
                    if let Some(q) = quota {
                        write_file(&dir.join("cpu.cfs_period_us"), &cpu::PERIOD_US.to_string())?;
                        write_file(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves a process (host pid) into every cgroup of the sandbox.
    pub(crate) fn add_process(&self, pid: u32) -> Result<(), (PathBuf, io::Error)> {
        for (_, dir) in &self.dirs {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Creates the cgroup of execution number `n` in the tracking hierarchy.
    pub(crate) fn exec_cgroup(&self, n: u64) -> io::Result<Option<ExecCgroup>> {
        let Some((version, dir)) = &self.tracking else {
            return Ok(None);
        };
        if let Ok(mut released) = self.released.lock() {
            released.retain(|dir| !remove_tree(dir));
        }
        let dir = dir.join(format!("exec-{n}"));
        fs::create_dir(&dir)?;
        Ok(Some(ExecCgroup {
            version: *version,
            dir,
            released: Arc::clone(&self.released),
        }))
    }

    /// Kills every process of the sandbox (all hierarchies agree on membership, tracking is
    /// enough).
    pub(crate) fn kill_all(&self) {
        if let Some((version, dir)) = &self.tracking {
            kill_tree(*version, dir);
        }
    }

    /// Whether no process is left in the sandbox's cgroups.
    pub(crate) fn is_empty(&self) -> bool {
        self.dirs.iter().all(|(_, dir)| tree_is_empty(dir))
    }

    /// Removes the cgroups (children first), retrying while processes are still exiting, for at
    /// most `patience`. Returns whether everything is gone.
    pub(crate) fn remove(&mut self, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        loop {
            self.dirs.retain(|(_, dir)| !remove_tree(dir));
            if self.dirs.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The cgroup of one execution.
#[derive(Debug)]
pub(crate) struct ExecCgroup {
    version: CgroupVersion,
    dir: PathBuf,
    released: Arc<Mutex<Vec<PathBuf>>>,
}

impl ExecCgroup {
    /// Opens `cgroup.procs` for the init to pass to the execution, which writes itself into it.
    /// The permission check happens here, at open, with the server's credentials.
    pub(crate) fn open_procs(&self) -> io::Result<std::os::fd::OwnedFd> {
        let file = fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.procs"))?;
        Ok(file.into())
    }

    /// Kills every process in the execution's cgroup.
    pub(crate) fn kill(&self) {
        kill_tree(self.version, &self.dir);
    }

    /// Removes the cgroup if it is empty. Returns whether it is gone.
    pub(crate) fn try_remove(&self) -> bool {
        remove_tree(&self.dir)
    }

    /// Removes the cgroup now or, while its processes are still exiting, hands it to the
    /// sandbox for a later attempt.
    pub(crate) fn release(&self) {
        if !self.try_remove()
            && let Ok(mut released) = self.released.lock()
            && released.len() < RELEASED_MAX
        {
            released.push(self.dir.clone());
        }
    }
}

/// Kills every process in `dir` and below: v2 has `cgroup.kill` (atomic against forks); v1 reads
/// `cgroup.procs` and kills until empty, bounded (a fork bomb is bounded by the pid limit, and
/// killed processes cannot fork).
fn kill_tree(version: CgroupVersion, dir: &Path) {
    if version == CgroupVersion::V2 && fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    const ROUNDS_MAX: usize = 100;
    for _ in 0..ROUNDS_MAX {
        let pids = tree_pids(dir);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // A pid read from cgroup.procs could in theory be reaped and reused before the kill;
            // that needs a full wrap of the pid space in between, which these few microseconds
            // do not allow.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn tree_pids(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for sub in subdirs(dir) {
        pids.extend(tree_pids(&sub));
    }
    pids
}

fn tree_is_empty(dir: &Path) -> bool {
    !dir.exists() || tree_pids(dir).is_empty()
}

/// Removes a cgroup directory and its children (cgroup directories are removed with rmdir even
/// though they show files). Returns whether it is gone.
fn remove_tree(dir: &Path) -> bool {
    for sub in subdirs(dir) {
        remove_tree(&sub);
    }
    match fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:23 / /sys rw,nosuid - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/pids rw,relatime shared:9 - cgroup cgroup rw,pids
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 30 0:31 /sub /mnt/bound rw,relatime - cgroup cgroup rw,freezer
36 1 0:32 / /odd\\040dir rw - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn mountinfo_parsing_finds_v1_controllers_and_v2() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 5, "{mounts:?}");
        assert_eq!(mounts[0].controllers, vec!["cpu".to_owned()]);
        assert_eq!(mounts[1].mount, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(mounts[3].version, CgroupVersion::V2);
        // The bound sub-cgroup is skipped; the escaped space is decoded.
        assert_eq!(mounts[4].mount, PathBuf::from("/odd dir"));
        assert_eq!(
            mounts[4].controllers,
            vec!["cpu".to_owned(), "cpuacct".to_owned()]
        );
    }

    #[test]
    fn unescape_leaves_plain_text_alone() {
        assert_eq!(unescape("/a/b"), "/a/b");
        assert_eq!(unescape("/a\\040b\\011"), "/a b\t");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
    }
}
