//! The in-memory file system of one allocation, with the three operations the Nomad backend's
//! file commands need (`reference/poseidon.md` §4.5–4.7): extract a tar archive, remove paths,
//! list in GNU `ls -l --time-style=+%s -1 --literal` form.
//!
//! Paths are absolute and normalised (`/a/b`); relative paths resolve against the task's working
//! directory `/workspace`. Every allocation starts with `/`, `/tmp` and `/workspace`; a restarted
//! container starts over with exactly those (a clean file system, `poseidon.md` §4.9).

use std::collections::BTreeMap;

/// The working directory of the task (the image's `WORKDIR`).
pub(crate) const WORKDIR: &str = "/workspace";

/// The largest file the fake stores: a bound on what one test can make it hold.
pub(crate) const FILE_SIZE_MAX: usize = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    File(Vec<u8>),
    Dir,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`0o1777`).
    mode: u32,
    mtime_s: i64,
}

/// The file system of one allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fs {
    nodes: BTreeMap<String, Node>,
}

/// Resolves `path` against the working directory and removes `.`, `..` and repeated slashes.
pub(crate) fn normalize(path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{WORKDIR}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    let cut = path
        .rfind('/')
        .expect("normalised paths start with a slash");
    Some(if cut == 0 { "/" } else { &path[..cut] })
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether `path` lies strictly below `dir`.
fn is_below(path: &str, dir: &str) -> bool {
    if dir == "/" {
        return path != "/";
    }
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

impl Fs {
    pub(crate) fn new(now_s: i64) -> Self {
        let mut nodes = BTreeMap::new();
        for (path, mode) in [("/", 0o755), ("/tmp", 0o1777), (WORKDIR, 0o755)] {
            nodes.insert(
                path.to_owned(),
                Node {
                    kind: Kind::Dir,
                    mode,
                    mtime_s: now_s,
                },
            );
        }
        Fs { nodes }
    }

    fn is_dir(&self, path: &str) -> bool {
        matches!(
            self.nodes.get(path),
            Some(Node {
                kind: Kind::Dir,
                ..
            })
        )
    }

    /// Creates `path`'s missing parents as directories; `Err` when one of them is a file.
    fn make_parents(&mut self, path: &str, now_s: i64) -> Result<(), &'static str> {
        let Some(dir) = parent(path) else {
            return Ok(());
        };
        match self.nodes.get(dir) {
            Some(Node {
                kind: Kind::Dir, ..
            }) => Ok(()),
            Some(_) => Err("Not a directory"),
            None => {
                self.make_parents(dir, now_s)?;
                self.nodes.insert(
                    dir.to_owned(),
                    Node {
                        kind: Kind::Dir,
                        mode: 0o755,
                        mtime_s: now_s,
                    },
                );
                Ok(())
            }
        }
    }

    /// Creates or replaces a regular file (parents created as needed).
    pub(crate) fn write_file(
        &mut self,
        path: &str,
        content: Vec<u8>,
        mode: u32,
        mtime_s: i64,
    ) -> Result<(), &'static str> {
        let path = normalize(path);
        self.make_parents(&path, mtime_s)?;
        if self.is_dir(&path) {
            return Err("Is a directory");
        }
        self.nodes.insert(
            path,
            Node {
                kind: Kind::File(content),
                mode,
                mtime_s,
            },
        );
        Ok(())
    }

    /// Creates a directory (or updates an existing one's mode, as tar does).
    pub(crate) fn make_dir(
        &mut self,
        path: &str,
        mode: u32,
        mtime_s: i64,
    ) -> Result<(), &'static str> {
        let path = normalize(path);
        self.make_parents(&path, mtime_s)?;
        match self.nodes.get_mut(&path) {
            Some(Node {
                kind: Kind::File(_),
                ..
            }) => Err("File exists"),
            Some(node) => {
                node.mode = mode;
                Ok(())
            }
            None => {
                self.nodes.insert(
                    path,
                    Node {
                        kind: Kind::Dir,
                        mode,
                        mtime_s,
                    },
                );
                Ok(())
            }
        }
    }

    /// A file's content: `Err` with the `cat` message when it is missing or a directory.
    pub(crate) fn read_file(&self, path: &str) -> Result<&[u8], &'static str> {
        match self.nodes.get(&normalize(path)) {
            Some(Node {
                kind: Kind::File(content),
                ..
            }) => Ok(content),
            Some(_) => Err("Is a directory"),
            None => Err("No such file or directory"),
        }
    }

    /// Removes `path` and, with `recursive`, everything below it. A trailing `/*` removes the
    /// directory's children instead (the unquoted glob Poseidon sends for "everything").
    /// Returns the `rm` error text for a path that could not be removed.
    pub(crate) fn remove(
        &mut self,
        path: &str,
        recursive: bool,
        force: bool,
    ) -> Result<(), String> {
        if let Some(dir) = path.strip_suffix("/*") {
            let dir = normalize(if dir.is_empty() { "/" } else { dir });
            let children: Vec<String> = self
                .nodes
                .keys()
                .filter(|p| parent(p) == Some(dir.as_str()))
                .cloned()
                .collect();
            if children.is_empty() && !force {
                return Err(format!(
                    "rm: cannot remove '{path}': No such file or directory"
                ));
            }
            for child in children {
                self.remove(&child, recursive, force)?;
            }
            return Ok(());
        }
        let target = normalize(path);
        match self.nodes.get(&target) {
            None if force => Ok(()),
            None => Err(format!("rm: cannot remove '{path}': No such file or directory")),
            Some(Node { kind: Kind::Dir, .. }) if !recursive => {
                Err(format!("rm: cannot remove '{path}': Is a directory"))
            }
            Some(_) if target == "/" => Err(
                "rm: it is dangerous to operate recursively on '/'\nrm: use --no-preserve-root to override this failsafe"
                    .to_owned(),
            ),
            Some(_) => {
                self.nodes
                    .retain(|p, _| p != &target && !is_below(p, &target));
                Ok(())
            }
        }
    }

    fn ls_line(&self, path: &str, node: &Node, shown_name: &str) -> String {
        let (type_char, size, links) = match &node.kind {
            Kind::File(content) => ('-', content.len(), 1),
            Kind::Dir => {
                let subdirs = self
                    .nodes
                    .iter()
                    .filter(|(p, n)| parent(p) == Some(path) && n.kind == Kind::Dir && *p != path)
                    .count();
                ('d', 4096, 2 + subdirs)
            }
        };
        format!(
            "{type_char}{} {links} root root {size} {} {shown_name}\n",
            permissions(node.mode),
            node.mtime_s
        )
    }

    fn children(&self, dir: &str) -> Vec<(&String, &Node)> {
        self.nodes
            .iter()
            .filter(|(p, _)| p.as_str() != dir && parent(p) == Some(dir))
            .collect()
    }

    fn list_dir(&self, dir: &str, header: Option<&str>, recursive: bool, out: &mut String) {
        if let Some(header) = header {
            out.push_str(&format!("{header}:\n"));
        }
        let children = self.children(dir);
        let blocks: usize = children
            .iter()
            .map(|(_, node)| match &node.kind {
                Kind::File(content) => content.len().div_ceil(4096) * 4,
                Kind::Dir => 4,
            })
            .sum();
        out.push_str(&format!("total {blocks}\n"));
        for (path, node) in &children {
            out.push_str(&self.ls_line(path, node, base_name(path)));
        }
        if recursive {
            for (path, node) in children {
                if node.kind == Kind::Dir {
                    out.push('\n');
                    let shown = match header {
                        Some(h) if h.ends_with('/') => format!("{h}{}", base_name(path)),
                        Some(h) => format!("{h}/{}", base_name(path)),
                        None => path.clone(),
                    };
                    self.list_dir(path, Some(&shown), true, out);
                }
            }
        }
    }

    /// `ls -l --time-style=+%s -1 --literal [--recursive] <arg>` in GNU form: `Ok(stdout)` or
    /// `Err(stderr)` (exit 2).
    pub(crate) fn ls(&self, arg: &str, recursive: bool) -> Result<String, String> {
        let path = normalize(arg);
        let Some(node) = self.nodes.get(&path) else {
            return Err(format!(
                "ls: cannot access '{arg}': No such file or directory\n"
            ));
        };
        let mut out = String::new();
        match node.kind {
            Kind::File(_) => out.push_str(&self.ls_line(&path, node, arg)),
            Kind::Dir => self.list_dir(&path, recursive.then_some(arg), recursive, &mut out),
        }
        Ok(out)
    }
}

impl Fs {
    /// `ls -l --time-style=+%s -1 --literal --directory --dereference <arg>`: the entry itself,
    /// a directory as one line (there are no symlinks to follow).
    pub(crate) fn ls_entry(&self, arg: &str) -> Result<String, String> {
        let path = normalize(arg);
        match self.nodes.get(&path) {
            Some(node) => Ok(self.ls_line(&path, node, arg)),
            None => Err(format!(
                "ls: cannot access '{arg}': No such file or directory\n"
            )),
        }
    }
}

/// `rwxr--r--` from mode bits, with `s`/`S` and `t`/`T` for the special bits.
fn permissions(mode: u32) -> String {
    let mut text = String::with_capacity(9);
    for (shift, special, special_char) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 0o7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        let exec = bits & 1 != 0;
        text.push(match (mode & special != 0, exec) {
            (true, true) => special_char,
            (true, false) => special_char.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    text
}

/// One entry of a tar archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TarEntry {
    pub(crate) name: String,
    pub(crate) is_dir: bool,
    pub(crate) mode: u32,
    pub(crate) mtime_s: i64,
    pub(crate) content: Vec<u8>,
}

fn octal(field: &[u8]) -> Option<u64> {
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn c_string(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Reads a ustar archive (with GNU `L` long names and PAX `path` records, what Go's
/// `archive/tar` writes for long names). Regular files (`0`, NUL) and directories (`5`) are
/// returned; other entry types are skipped. `Err` is GNU tar's message for a broken archive.
pub(crate) fn read_tar(archive: &[u8]) -> Result<Vec<TarEntry>, String> {
    const BLOCK: usize = 512;
    let mut entries = Vec::new();
    let mut offset = 0;
    let mut long_name: Option<String> = None;
    if archive.is_empty() {
        return Err("tar: This does not look like a tar archive\ntar: Exiting with failure status due to previous errors\n".into());
    }
    while offset + BLOCK <= archive.len() {
        let header = &archive[offset..offset + BLOCK];
        if header.iter().all(|&b| b == 0) {
            return Ok(entries);
        }
        let checksum_ok = octal(&header[148..156]).is_some_and(|stored| {
            let sum: u64 = header
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u64::from(b)
                    }
                })
                .sum();
            sum == stored
        });
        let size = octal(&header[124..136]);
        let (true, Some(size)) = (checksum_ok, size) else {
            return Err("tar: This does not look like a tar archive\ntar: Exiting with failure status due to previous errors\n".into());
        };
        let size =
            usize::try_from(size).map_err(|_| "tar: archive entry too large\n".to_owned())?;
        if size > FILE_SIZE_MAX {
            return Err("tar: archive entry too large for the fake\n".into());
        }
        let data_start = offset + BLOCK;
        let data_end = data_start + size;
        if data_end > archive.len() {
            return Err(
                "tar: Unexpected EOF in archive\ntar: Error is not recoverable: exiting now\n"
                    .into(),
            );
        }
        let data = &archive[data_start..data_end];
        offset = data_start + size.div_ceil(BLOCK) * BLOCK;
        let typeflag = header[156];
        match typeflag {
            b'L' => {
                long_name = Some(c_string(data));
                continue;
            }
            b'x' => {
                long_name = pax_path(data).or(long_name);
                continue;
            }
            b'g' => continue,
            _ => {}
        }
        let name = long_name.take().unwrap_or_else(|| {
            let name = c_string(&header[0..100]);
            let prefix = if &header[257..262] == b"ustar" {
                c_string(&header[345..500])
            } else {
                String::new()
            };
            if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            }
        });
        let mode =
            u32::try_from(octal(&header[100..108]).unwrap_or(0o644) & 0o7777).unwrap_or(0o644);
        let mtime_s = i64::try_from(octal(&header[136..148]).unwrap_or(0)).unwrap_or(0);
        match typeflag {
            b'0' | 0 => entries.push(TarEntry {
                name,
                is_dir: false,
                mode,
                mtime_s,
                content: data.to_vec(),
            }),
            b'5' => entries.push(TarEntry {
                name,
                is_dir: true,
                mode,
                mtime_s,
                content: Vec::new(),
            }),
            _ => {}
        }
    }
    // GNU tar accepts an archive that ends without its two zero blocks.
    Ok(entries)
}

/// The `path` record of a PAX extended header (`<len> path=<value>\n` records).
fn pax_path(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    text.lines().find_map(|line| {
        let (_, record) = line.split_once(' ')?;
        record.strip_prefix("path=").map(str::to_owned)
    })
}

/// Builds a ustar archive (for tests and the dev client): `(name, None)` is a directory,
/// `(name, Some(content))` a file with mode 0744, as Poseidon builds them.
pub fn build_tar(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, content) in entries {
        let mut header = [0u8; 512];
        let name_bytes = name.as_bytes();
        assert!(name_bytes.len() <= 100, "build_tar writes short names only");
        header[..name_bytes.len()].copy_from_slice(name_bytes);
        let (mode, size, flag) = match content {
            Some(content) => (0o744, content.len(), b'0'),
            None => (0o1777, 0, b'5'),
        };
        header[100..107].copy_from_slice(format!("{mode:07o}").as_bytes());
        header[108..115].copy_from_slice(b"0000000");
        header[116..123].copy_from_slice(b"0000000");
        header[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        header[136..147].copy_from_slice(format!("{:011o}", 1_700_000_000u64).as_bytes());
        header[156] = flag;
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&header);
        if let Some(content) = content {
            out.extend_from_slice(content);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_resolves_relative_paths_against_the_workdir() {
        assert_eq!(normalize("a/./b/../c"), "/workspace/a/c");
        assert_eq!(normalize("/tmp//x/"), "/tmp/x");
        assert_eq!(normalize("/.."), "/");
    }

    #[test]
    fn tar_round_trip_and_gnu_ls_format() {
        let archive = build_tar(&[
            ("/workspace/dir/", None),
            ("/workspace/dir/a.txt", Some(b"hello")),
            ("b.txt", Some(b"")),
        ]);
        let entries = read_tar(&archive).expect("valid archive");
        assert_eq!(entries.len(), 3);
        let mut fs = Fs::new(5);
        for entry in entries {
            if entry.is_dir {
                fs.make_dir(&entry.name, entry.mode, entry.mtime_s)
                    .expect("dir");
            } else {
                fs.write_file(&entry.name, entry.content, entry.mode, entry.mtime_s)
                    .expect("file");
            }
        }
        assert_eq!(
            fs.ls("/workspace", true).expect("listing"),
            "/workspace:\ntotal 4\n-rwxr--r-- 1 root root 0 1700000000 b.txt\n\
             drwxrwxrwt 2 root root 4096 1700000000 dir\n\n\
             /workspace/dir:\ntotal 4\n-rwxr--r-- 1 root root 5 1700000000 a.txt\n"
        );
        assert_eq!(
            fs.ls("dir/a.txt", false).expect("file listing"),
            "-rwxr--r-- 1 root root 5 1700000000 dir/a.txt\n"
        );
        assert!(fs.ls("missing", false).is_err());
        fs.remove("/workspace/*", true, true).expect("glob removal");
        assert_eq!(fs.ls("/workspace", false).expect("empty"), "total 0\n");
    }

    #[test]
    fn garbage_is_not_a_tar_archive() {
        assert!(read_tar(&[1u8; 1024]).is_err());
        assert!(read_tar(&[]).is_err());
    }
}
