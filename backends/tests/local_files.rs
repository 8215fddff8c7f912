//! The local backend's file operations: confinement to the workspace, Poseidon's modes and
//! listing format. Most tests need no sandbox (the operations run on the host); the last ones
//! check that a sandbox's commands see the files as Poseidon's would.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use trident_backends::local::config::IdMap;
use trident_backends::local::{
    ExecSpec, FileError, HostConfig, SandboxHost, SandboxSpec, Workspace,
};

/// A workspace in a temporary directory, next to an "outside" directory that must stay
/// untouched. Ids: host root is the sandbox's root (as when the server runs as root with a
/// single-id map).
struct Fixture {
    dir: tempfile::TempDir,
    workspace: Workspace,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir(dir.path().join("ws")).expect("workspace");
        std::fs::create_dir(dir.path().join("outside")).expect("outside");
        std::fs::write(dir.path().join("outside/secret"), "secret").expect("secret");
        let id_map = IdMap::SingleId {
            host_uid: nix::unistd::geteuid().as_raw(),
            host_gid: nix::unistd::getegid().as_raw(),
        };
        let workspace = Workspace::open(
            &dir.path().join("ws"),
            PathBuf::from("/workspace"),
            id_map,
            1000,
        )
        .expect("open the workspace");
        Fixture { dir, workspace }
    }

    fn ws(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    fn secret_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(self.outside().join("secret")).expect("still there"),
            "secret"
        );
        assert_eq!(
            std::fs::read_dir(self.outside()).expect("outside").count(),
            1
        );
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn copy_creates_files_0744_and_directories_01777_with_parents() {
    let f = Fixture::new();
    f.workspace
        .copy("relative/file/path.txt", b"content")
        .expect("copy");
    f.workspace.copy("dir/", b"ignored").expect("mkdir");
    f.workspace.copy("./dot.txt", b"").expect("copy");
    let file = f.ws().join("relative/file/path.txt");
    assert_eq!(std::fs::read(&file).expect("written"), b"content");
    assert_eq!(mode(&file), 0o744);
    assert_eq!(mode(&f.ws().join("relative")), 0o1777);
    assert_eq!(mode(&f.ws().join("relative/file")), 0o1777);
    assert_eq!(mode(&f.ws().join("dir")), 0o1777);
    assert!(
        std::fs::read_dir(f.ws().join("dir"))
            .expect("dir")
            .next()
            .is_none()
    );
    assert_eq!(std::fs::read(f.ws().join("dot.txt")).expect("written"), b"");
    // Replacing a file truncates it.
    f.workspace
        .copy("relative/file/path.txt", b"new")
        .expect("copy");
    assert_eq!(std::fs::read(&file).expect("written"), b"new");
}

#[test]
fn absolute_paths_reach_the_workspace_and_tmp_and_nothing_else() {
    let f = Fixture::new();
    // The workspace's mount point inside the sandbox names the workspace itself …
    f.workspace.copy("/workspace/a.txt", b"a").expect("copy");
    assert_eq!(std::fs::read(f.ws().join("a.txt")).expect("written"), b"a");
    // … `/tmp` is unreachable while no /tmp handle is given …
    assert!(matches!(
        f.workspace.copy("/tmp/absolute/file/path.txt", b"b"),
        Err(FileError::Unreachable(_))
    ));
    // … and reaches the given directory once one is.
    std::fs::create_dir(f.dir.path().join("tmp")).expect("tmp");
    let tmp = std::fs::File::open(f.dir.path().join("tmp")).expect("open tmp");
    let ws = Workspace::open(
        &f.ws(),
        PathBuf::from("/workspace"),
        IdMap::SingleId {
            host_uid: nix::unistd::geteuid().as_raw(),
            host_gid: nix::unistd::getegid().as_raw(),
        },
        1000,
    )
    .expect("open")
    .with_tmp(tmp.into());
    ws.copy("/tmp/absolute/file/path.txt", b"b").expect("copy");
    assert_eq!(
        std::fs::read(f.dir.path().join("tmp/absolute/file/path.txt")).expect("written"),
        b"b"
    );
    assert!(!f.ws().join("tmp").exists(), "not in the workspace");
    assert_eq!(
        ws.list("/tmp/", true)
            .expect("list")
            .into_iter()
            .map(|e| e.name)
            .collect::<Vec<_>>(),
        [
            "/tmp/absolute",
            "/tmp/absolute/file",
            "/tmp/absolute/file/path.txt"
        ]
    );
    // `..` is cleaned before the classification, and cannot climb out of /tmp's parent.
    ws.copy("/workspace/../tmp/x.txt", b"x").expect("copy");
    assert!(f.dir.path().join("tmp/x.txt").is_file());
    assert!(matches!(
        ws.copy("/tmp/../../x", b"x"),
        Err(FileError::Escape(_))
    ));
    // Every other absolute path is out of reach, for every operation.
    for path in [
        "/",
        "/etc/passwd",
        "/proc/1/environ",
        "/home/user/x",
        "/tmpx/a",
    ] {
        assert!(
            matches!(ws.copy(path, b"x"), Err(FileError::Unreachable(_))),
            "{path}"
        );
        assert!(
            matches!(ws.open_file(path), Err(FileError::Unreachable(_))),
            "{path}"
        );
        assert!(
            matches!(ws.list(path, false), Err(FileError::Unreachable(_))),
            "{path}"
        );
        assert!(
            matches!(ws.delete(path), Err(FileError::Unreachable(_))),
            "{path}"
        );
        assert!(matches!(ws.check(path), Err(FileError::Unreachable(_))));
    }
    assert!(!Path::new("/tmp/absolute/file/path.txt").exists());
    f.secret_untouched();
}

#[test]
fn dot_dot_escapes_are_rejected() {
    let f = Fixture::new();
    for path in [
        "../x",
        "a/../../x",
        "/../x",
        "/workspace/../../x",
        "./../outside/secret",
    ] {
        match f.workspace.copy(path, b"pwned") {
            Err(FileError::Escape(p)) => assert_eq!(p, path),
            other => panic!("{path}: expected an escape error, got {other:?}"),
        }
        assert!(
            matches!(f.workspace.open_file(path), Err(FileError::Escape(_))),
            "{path}"
        );
        assert!(
            matches!(f.workspace.delete(path), Err(FileError::Escape(_))),
            "{path}"
        );
        assert!(
            matches!(f.workspace.list(path, true), Err(FileError::Escape(_))),
            "{path}"
        );
    }
    // `..` that stays inside is cleaned like path.Clean.
    f.workspace.copy("a/../inside.txt", b"ok").expect("copy");
    assert!(f.ws().join("inside.txt").is_file());
    f.secret_untouched();
}

#[test]
fn symlinks_out_of_the_workspace_are_rejected() {
    let f = Fixture::new();
    symlink(f.outside(), f.ws().join("abs")).expect("absolute symlink");
    symlink("../outside", f.ws().join("rel")).expect("relative symlink");
    std::fs::create_dir(f.ws().join("sub")).expect("sub");
    // A chain: chain1 → sub/chain2 → ../../outside
    symlink("sub/chain2", f.ws().join("chain1")).expect("chain");
    symlink("../../outside", f.ws().join("sub/chain2")).expect("chain");
    for link in ["abs", "rel", "chain1", "/workspace/rel"] {
        let inner = format!("{link}/secret");
        assert!(
            matches!(
                f.workspace.open_file(&inner),
                Err(FileError::SymlinkEscape(_))
            ),
            "read through {link}"
        );
        assert!(
            matches!(
                f.workspace.copy(&inner, b"pwned"),
                Err(FileError::SymlinkEscape(_))
            ),
            "write through {link}"
        );
        assert!(
            matches!(
                f.workspace.copy(&format!("{link}/new/"), b""),
                Err(FileError::SymlinkEscape(_))
            ),
            "mkdir through {link}"
        );
        assert!(
            matches!(
                f.workspace.list(&format!("{link}/"), true),
                Err(FileError::SymlinkEscape(_))
            ),
            "list through {link}"
        );
        assert!(
            matches!(f.workspace.delete(&inner), Err(FileError::SymlinkEscape(_))),
            "delete through {link}"
        );
    }
    // A symlink to a file outside cannot be read either.
    symlink(f.outside().join("secret"), f.ws().join("file-link")).expect("symlink");
    assert!(matches!(
        f.workspace.open_file("file-link"),
        Err(FileError::SymlinkEscape(_))
    ));
    f.secret_untouched();
}

#[test]
fn symlinks_inside_the_workspace_are_followed_for_reading() {
    let f = Fixture::new();
    f.workspace.copy("real/file.txt", b"data").expect("copy");
    symlink("real", f.ws().join("alias")).expect("symlink");
    let (size, mut file) = f
        .workspace
        .open_file("alias/file.txt")
        .expect("open through the link");
    assert_eq!(size, 4);
    let mut content = String::new();
    std::io::Read::read_to_string(&mut file, &mut content).expect("read");
    assert_eq!(content, "data");
}

#[test]
fn copy_onto_a_symlink_replaces_the_link_instead_of_writing_through_it() {
    let f = Fixture::new();
    symlink(f.outside().join("secret"), f.ws().join("trap")).expect("symlink");
    f.workspace.copy("trap", b"replaced").expect("copy");
    let meta = std::fs::symlink_metadata(f.ws().join("trap")).expect("exists");
    assert!(
        meta.file_type().is_file(),
        "the link was replaced by a file"
    );
    assert_eq!(
        std::fs::read(f.ws().join("trap")).expect("read"),
        b"replaced"
    );
    f.secret_untouched();
}

#[test]
fn delete_removes_files_trees_and_links_but_not_link_targets() {
    let f = Fixture::new();
    f.workspace.copy("tree/a/b/c.txt", b"c").expect("copy");
    f.workspace.copy("single.txt", b"s").expect("copy");
    symlink(f.outside(), f.ws().join("link-to-outside")).expect("symlink");
    f.workspace.delete("single.txt").expect("delete a file");
    assert!(!f.ws().join("single.txt").exists());
    f.workspace.delete("tree").expect("delete a tree");
    assert!(!f.ws().join("tree").exists());
    f.workspace
        .delete("link-to-outside")
        .expect("delete a link");
    assert!(std::fs::symlink_metadata(f.ws().join("link-to-outside")).is_err());
    // A missing path is no error (rm -f).
    f.workspace
        .delete("never/existed")
        .expect("missing is fine");
    f.secret_untouched();
}

#[test]
fn deleting_dot_slash_empties_the_workspace_but_keeps_it() {
    let f = Fixture::new();
    f.workspace.copy("a.txt", b"a").expect("copy");
    f.workspace.copy("d/e/f.txt", b"f").expect("copy");
    symlink(f.outside(), f.ws().join("out")).expect("symlink");
    f.workspace.delete("./").expect("delete contents");
    assert!(f.ws().is_dir());
    assert_eq!(std::fs::read_dir(f.ws()).expect("ws").count(), 0);
    f.secret_untouched();
}

#[test]
fn listing_follows_poseidons_ls_format() {
    let f = Fixture::new();
    assert_eq!(f.workspace.list("./", true).expect("list"), vec![]);
    f.workspace.copy("test.txt", b"").expect("copy");
    let entries = f.workspace.list("./", true).expect("list");
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.name, "./test.txt");
    assert_eq!(e.entry_type, '-');
    assert_eq!(e.permissions, "rwxr--r--");
    assert_eq!((e.owner.as_str(), e.group.as_str()), ("root", "root"));
    assert_eq!(e.size, 0);
    let json = serde_json::to_value(e).expect("json");
    let keys: Vec<&str> = json
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "entryType",
            "group",
            "modificationTime",
            "name",
            "owner",
            "permissions",
            "size"
        ],
        "linkTarget is omitted when empty"
    );
    assert_eq!(json["entryType"], "-");

    f.workspace.copy("sub/inner.txt", b"12345").expect("copy");
    symlink("sub", f.ws().join("link")).expect("symlink");
    let names = |entries: Vec<trident_backends::local::FileHeader>| -> Vec<(String, char)> {
        entries
            .into_iter()
            .map(|e| (e.name, e.entry_type))
            .collect()
    };
    assert_eq!(
        names(f.workspace.list("./", true).expect("list")),
        [
            ("./link".to_owned(), 'l'),
            ("./sub".to_owned(), 'd'),
            ("./test.txt".to_owned(), '-'),
            ("./sub/inner.txt".to_owned(), '-'),
        ],
        "depth first, sorted, symlinked directories not descended into"
    );
    assert_eq!(
        names(f.workspace.list("./", false).expect("list")),
        [
            ("link".to_owned(), 'l'),
            ("sub".to_owned(), 'd'),
            ("test.txt".to_owned(), '-')
        ]
    );
    assert_eq!(
        names(f.workspace.list("sub", true).expect("list")),
        [("sub/inner.txt".to_owned(), '-')]
    );
    let link = f
        .workspace
        .list("link", true)
        .expect("a link lists as itself");
    assert_eq!(link.len(), 1);
    assert_eq!(
        (link[0].name.as_str(), link[0].link_target.as_str()),
        ("link", "sub")
    );
    let file = f
        .workspace
        .list("sub/inner.txt", false)
        .expect("a file lists as itself");
    assert_eq!((file[0].name.as_str(), file[0].size), ("sub/inner.txt", 5));
    assert!(matches!(
        f.workspace.list("nothing", true),
        Err(FileError::NotFound(_))
    ));
}

#[test]
fn download_gives_size_and_content_of_regular_files_only() {
    let f = Fixture::new();
    f.workspace.copy("test.txt", b"Hello").expect("copy");
    let (size, mut file) = f.workspace.open_file("test.txt").expect("open");
    assert_eq!(size, 5);
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut body).expect("read");
    assert_eq!(body, b"Hello");
    assert!(matches!(
        f.workspace.open_file("missing"),
        Err(FileError::NotFound(_))
    ));
    assert!(matches!(
        f.workspace.open_file("/proc/1/environ"),
        Err(FileError::Unreachable(_))
    ));
    f.workspace.copy("dir/", b"").expect("mkdir");
    assert!(matches!(
        f.workspace.open_file("dir"),
        Err(FileError::IsADirectory(_))
    ));
    assert!(matches!(
        f.workspace.open_file("./"),
        Err(FileError::IsADirectory(_))
    ));
    nix::unistd::mkfifo(
        &f.ws().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("fifo");
    assert!(matches!(
        f.workspace.open_file("fifo"),
        Err(FileError::NotAFile(_))
    ));
    // Writing onto a FIFO neither hangs nor succeeds.
    assert!(matches!(
        f.workspace.copy("fifo", b"x"),
        Err(FileError::NotAFile(_))
    ));
}

/// Removes the host's cgroup parent when dropped, also when a test fails. Bind it before the
/// sandbox so that the sandbox (dropped first) is torn down by then.
struct HostGuard(SandboxHost);

impl Drop for HostGuard {
    fn drop(&mut self) {
        self.0.remove_cgroup_parent();
    }
}

async fn sandbox_fixture(
    id: &str,
) -> (
    tempfile::TempDir,
    HostGuard,
    trident_backends::local::Sandbox,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = HostConfig::new(
        dir.path().join("state"),
        env!("CARGO_BIN_EXE_trident-sandbox-init"),
    );
    config.cgroup_parent = format!("trident-files-test-{}-{id}", std::process::id());
    let host = SandboxHost::new(config).await.expect("host");
    let sandbox = host.create(SandboxSpec::new(id)).await.expect("sandbox");
    (dir, HostGuard(host), sandbox)
}

#[tokio::test]
async fn copied_files_are_root_owned_inside_and_usable_by_the_sandbox_user() {
    let (_dir, host, sb) = sandbox_fixture("owned").await;
    let ws = sb.workspace().expect("workspace");
    ws.copy("protectedFolder/", b"").expect("mkdir");
    ws.copy("protectedFolder/file.txt", b"original")
        .expect("copy");
    // 0744 and root-owned: readable by the sandbox user, not executable (as in Poseidon).
    ws.copy("run.sh", b"echo ran as $(id -u)\n").expect("copy");
    let on_host = std::fs::metadata(sb.workspace_dir().join("run.sh")).expect("host view");
    assert_eq!(
        on_host.uid(),
        100_000,
        "owned by the sandbox's root, not host root"
    );
    let mut run = sb
        .exec(ExecSpec::shell(
            "sh run.sh; stat -c '%U:%G %A' run.sh; touch protectedFolder/mine && echo touched; \
             rm -f protectedFolder/file.txt; echo x >> protectedFolder/file.txt; cat protectedFolder/file.txt",
        ))
        .await
        .expect("start");
    let out = run.collect().await.expect("ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.starts_with("ran as 1000\r\nroot:root -rwxr--r--\r\ntouched\r\noriginal"),
        "{stdout}"
    );
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    // Listing from the host names the sandbox's users.
    let mine = ws.list("protectedFolder/mine", false).expect("list");
    assert_eq!(
        (mine[0].owner.as_str(), mine[0].group.as_str()),
        ("user", "user")
    );
    drop(run);
    sb.destroy().await.expect("destroy");
    drop(host);
}

#[tokio::test]
async fn a_symlink_planted_by_a_command_does_not_let_file_operations_escape() {
    let (_dir, host, sb) = sandbox_fixture("planted").await;
    let ws = sb.workspace().expect("workspace");
    let mut run = sb
        .exec(ExecSpec::shell(
            "ln -s /etc etc-link; ln -s / root-link; ln -s ../.. up",
        ))
        .await
        .expect("start");
    assert_eq!(run.wait().await.expect("ends").code(), 0);
    for path in ["etc-link/passwd", "root-link/etc/passwd", "up/etc/passwd"] {
        assert!(
            matches!(ws.open_file(path), Err(FileError::SymlinkEscape(_))),
            "{path} escaped"
        );
        assert!(
            matches!(ws.copy(path, b"x"), Err(FileError::SymlinkEscape(_))),
            "{path}"
        );
    }
    drop(run);
    sb.destroy().await.expect("destroy");
    drop(host);
}

#[tokio::test]
async fn files_copied_to_absolute_tmp_paths_are_in_the_sandboxs_tmp() {
    // Poseidon's e2e `TestCopyFilesRoute`: copy `/tmp/absolute/file/path.txt`, then `cat` it.
    let (dir, host, sb) = sandbox_fixture("abs-tmp").await;
    let ws = sb.workspace().expect("workspace");
    ws.copy("/tmp/absolute/file/path.txt", b"Hello from /tmp")
        .expect("copy");
    let mut run = sb
        .exec(ExecSpec::shell(
            "cat /tmp/absolute/file/path.txt; echo; stat -c '%U %a' /tmp/absolute /tmp/absolute/file/path.txt; \
             echo made > /tmp/by-command; mount --bind /workspace /tmp/absolute 2>/dev/null; true",
        ))
        .await
        .expect("start");
    let out = run.collect().await.expect("ends");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello from /tmp\r\nroot 1777\r\nroot 744\r\n"
    );
    // The other way round: what a command writes to /tmp can be read back. It lives in the
    // runner's own directory on the host (not the host's /tmp), and goes with the sandbox.
    let (size, _) = ws.open_file("/tmp/by-command").expect("read back");
    assert_eq!(size, 5);
    assert!(!Path::new("/tmp/by-command").exists());
    let on_host = dir.path().join("state/abs-tmp/tmp/by-command");
    assert!(on_host.is_file(), "{on_host:?}");
    drop(run);
    sb.destroy().await.expect("destroy");
    assert!(!on_host.exists(), "/tmp is removed with the sandbox");
    drop(host);
}

#[tokio::test]
async fn mounts_made_inside_the_sandbox_do_not_redirect_tmp_file_operations() {
    // A privileged command (root inside) may mount over a directory of /tmp; the server resolves
    // /tmp paths by host path, in its own mount namespace, so it never sees that mount.
    let (_dir, host, sb) = sandbox_fixture("tmp-mounts").await;
    let ws = sb.workspace().expect("workspace");
    ws.copy("/tmp/dir/under.txt", b"tmpfs").expect("copy");
    let mut spec = ExecSpec::shell(
        "mount -t tmpfs none /tmp/dir && echo over > /tmp/dir/over.txt && ls /tmp/dir",
    );
    spec.privileged = true;
    let mut run = sb.exec(spec).await.expect("start");
    let out = run.collect().await.expect("ends");
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (0, "over.txt\r\n"),
        "the command's mount took effect inside: {out:?}"
    );
    let names: Vec<String> = ws
        .list("/tmp/dir", false)
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        ["under.txt"],
        "file operations see the tmpfs, not the mount"
    );
    assert!(matches!(
        ws.open_file("/tmp/dir/over.txt"),
        Err(FileError::NotFound(_))
    ));
    drop(run);
    sb.destroy().await.expect("destroy");
    drop(host);
}
