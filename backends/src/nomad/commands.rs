//! The commands Trident runs inside a Nomad allocation, as argv lists for the exec endpoint
//! (`reference/nomad-api.md` §7), and the pure codecs around them: the tar archive of a file
//! update and the parser of `ls -l` output into [`FileHeader`]s.
//!
//! Pure: no I/O, no clock, no randomness. Every caller-supplied string (the user's command,
//! environment values, paths) travels as **its own argv element**; the shell scripts below are
//! constants that read those elements as positional parameters (`"$1"`, `"$@"`), so nothing a
//! client sends is ever parsed by a shell except the command itself, by the one `bash -c` that is
//! meant to parse it. This fixes Poseidon's quoting (`reference/poseidon.md` §3: `%q` quoting
//! breaks multi-line commands, unquoted environment values break at spaces, `$` and backticks in
//! listed paths are expanded).
//!
//! # Interactive executions and the stderr fifo
//!
//! Nomad's exec with `tty=true` merges stderr into the terminal. Like Poseidon (§3.1) Trident runs
//! a **second exec** that carries stderr through a named pipe, but with a different hand-shake
//! that never leaves the fifo behind and never blocks forever:
//!
//! 1. The *reader* exec ([`stderr_reader_argv`], `tty=false`, as root) creates the fifo (mode
//!    0600, so the unprivileged user cannot open it by name) and opens it **read-write** at once:
//!    a read-write open of a fifo never blocks, and the reader's own write end keeps the pipe
//!    alive. It then waits (at most [`STDERR_READER_WAIT_S`]) for the fifo's *name* to disappear.
//! 2. The *main* exec ([`interactive_argv`], `tty=true`, as root until `setuser`) waits (at most
//!    [`STDERR_MAIN_WAIT_S`]) for the fifo to exist, opens it write-only as its stderr (does not
//!    block: the reader holds a read end) and **removes the name immediately**. From here on the
//!    pipe has no name; nobody can open it, nothing is left in `/tmp` whatever happens next.
//!    Then it execs the user's command chain with stderr on the pipe.
//! 3. The reader, seeing the name gone (or its wait bound reached: then it removes the name
//!    itself), re-opens the pipe read-only through `/proc/self/fd/3`, closes its read-write
//!    descriptor and execs `cat`. Once every writer (the command and its children) has closed the
//!    pipe, `cat` sees end of file and the reader exec ends.
//!
//! Failure cases: if the reader never starts, the main exec stops waiting after
//! [`STDERR_MAIN_WAIT_S`] and runs with stderr on the terminal (merged, as with
//! `interactivestderr=false`); if the main exec never starts, the reader removes the fifo after
//! [`STDERR_READER_WAIT_S`] and ends. The reader's stdout is the execution's stderr, raw: with
//! `tty=false` there is no terminal to turn `\n` into `\r\n` (Poseidon ran the reader with a tty,
//! so its stderr carried `\r\n`; Trident's local backend uses a pipe, and the Nomad backend now
//! matches it). Fifo names come from the caller ([`StderrFifo::for_execution`]), never from
//! randomness here.
//!
//! The main exec's chain, each step an `exec` so exit codes and signals pass straight through:
//! `bash` (root: unset `NOMAD_*`, attach stderr) → `/sbin/setuser user` (unless privileged:
//! Poseidon's image convention, a script from phusion's baseimage that switches to the user and
//! sets `HOME`/`USER` before exec'ing the rest of its argv) → `bash` (export the request's
//! variables exactly, then `CODEOCEAN=true`) → `/bin/bash -c <command>`.

use std::fmt::Write as _;
use std::sync::LazyLock;

use crate::executor::{ExecutionRequest, FileHeader};

/// The shell every script runs in; images must have it (Poseidon's image requirements, §3.1).
pub const SHELL: &str = "/bin/bash";
/// Poseidon's unprivileged execution: the image's `setuser` script and the user it switches to.
pub const SETUSER: [&str; 2] = ["/sbin/setuser", "user"];
/// `$0` of the fixed scripts, so error messages of the shell name Trident.
const SCRIPT_NAME: &str = "trident";
/// The byte that interrupts an interactive command: Ctrl-\ on the terminal (SIGQUIT).
pub const INTERRUPT_BYTE: u8 = 0x1c;
/// How long the main exec waits for the reader to create the fifo before running with stderr on
/// the terminal. The reader is started first, so this is normally milliseconds.
pub const STDERR_MAIN_WAIT_S: u32 = 10;
/// How long the reader waits for the main exec to take the fifo before giving up and removing
/// it. Longer than [`STDERR_MAIN_WAIT_S`] plus the main exec's connection set-up.
pub const STDERR_READER_WAIT_S: u32 = 30;

/// The main exec's first stage, as root: `$1` is the fifo path (empty: no stderr separation),
/// the rest is the argv to exec.
///
/// `[ -p ]` right before the open keeps the redirection from creating a regular file when the
/// reader gave up at that very moment; should that race still create one, the `rm` removes it.
const MAIN_SCRIPT: &str = r#"unset -v ${!NOMAD_@}
f=$1
shift
if [ -n "$f" ]; then
  for ((i = 0; i < WAIT_TICKS; i++)); do [ -p "$f" ] && break; sleep 0.01; done
  if [ -p "$f" ]; then exec 2>"$f"; rm -f -- "$f"; fi
fi
exec "$@""#;

/// The main exec's last stage, after `setuser`: `$1` is the number of variables, then that many
/// `NAME=value` words, then the command. `export -- "$1"` assigns the word's value literally.
const ENV_SCRIPT: &str = r#"n=$1
shift
for ((; n > 0; n--)); do export -- "$1" || exit 125; shift; done
export CODEOCEAN=true
exec /bin/bash -c "$1""#;

/// The stderr reader: see the module documentation.
const READER_SCRIPT: &str = r#"f=$1
mkfifo -m 0600 -- "$f" || exit 125
exec 3<>"$f"
for ((i = 0; i < WAIT_TICKS; i++)); do [ -e "$f" ] || break; sleep 0.01; done
rm -f -- "$f"
exec 4</proc/self/fd/3 3<&-
exec cat 0<&4 4<&-"#;

/// File update, as root: delete every argument, then extract the tar archive on stdin. `./*`
/// (and `.`) mean the working directory's contents, expanded by the shell as Poseidon did
/// (issue #42), which is the only expansion here. Like Poseidon (`rm …; tar …`) a failed delete
/// does not stop the copy; the exit code is tar's.
const UPDATE_SCRIPT: &str = r#"for p in "$@"; do
  if [ "$p" = "./*" ] || [ "$p" = "." ]; then rm -rf -- ./*; else rm -rf -- "$p"; fi
done
exec tar --extract --absolute-names --file=/dev/stdin"#;

/// Why a command could not be built. The messages are for the client (Poseidon: 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Process arguments cannot carry NUL bytes.
    #[error("{what} contains a NUL byte")]
    NulByte {
        /// Which input.
        what: &'static str,
    },
    /// A variable name must be a shell name: `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("invalid environment variable name {0:?}")]
    VariableName(String),
    /// A path names no file (empty, `.` or `/` as a file to write).
    #[error("invalid path {0:?}")]
    Path(String),
    /// A file is larger than a tar header can describe (8 GiB).
    #[error("file {0:?} is too large for the archive")]
    TooLarge(String),
    /// A path climbs out of where it starts with `..` (above the working directory for a
    /// relative path, above `/` for an absolute one).
    #[error("path {0:?} escapes the workspace")]
    Escape(String),
}

/// Where an execution's stderr fifo lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StderrFifo(String);

impl StderrFifo {
    /// The fifo of one execution: `/tmp/trident-stderr-<nonce as 16 hex digits>.fifo`. The nonce
    /// must be unique among the runner's concurrent executions (an execution id, a counter).
    pub fn for_execution(nonce: u64) -> Self {
        StderrFifo(format!("/tmp/trident-stderr-{nonce:016x}.fifo"))
    }

    /// A fifo at an arbitrary path (tests run the scripts in a temporary directory).
    pub fn at(path: impl Into<String>) -> Self {
        StderrFifo(path.into())
    }

    /// The path.
    pub fn path(&self) -> &str {
        &self.0
    }
}

/// The two execs of an interactive execution with separate stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitCommands {
    /// Runs the command; exec with `tty=true`: stdin and stdout on the terminal.
    pub main: Vec<String>,
    /// Carries the command's stderr; exec with `tty=false`, started first, its stdout is stderr.
    pub stderr_reader: Vec<String>,
}

/// The argv of an interactive execution. With `fifo`, stderr goes to that fifo (pair it with
/// [`stderr_reader_argv`] of the same fifo, or use [`split_execution`]); without, stderr stays
/// on the terminal.
pub fn interactive_argv(
    request: &ExecutionRequest,
    fifo: Option<&StderrFifo>,
) -> Result<Vec<String>, CommandError> {
    reject_nul("the command", &request.command)?;
    for (name, value) in &request.environment {
        if !is_shell_name(name) {
            return Err(CommandError::VariableName(name.clone()));
        }
        reject_nul("an environment variable's value", value)?;
    }
    let fifo_path = fifo.map_or("", StderrFifo::path);
    reject_nul("the fifo path", fifo_path)?;
    let mut argv = vec![
        SHELL.to_owned(),
        "-c".to_owned(),
        with_wait_ticks(MAIN_SCRIPT, STDERR_MAIN_WAIT_S),
        SCRIPT_NAME.to_owned(),
        fifo_path.to_owned(),
    ];
    if !request.privileged {
        argv.extend(SETUSER.map(str::to_owned));
    }
    argv.extend([
        SHELL.to_owned(),
        "-c".to_owned(),
        ENV_SCRIPT.to_owned(),
        SCRIPT_NAME.to_owned(),
        request.environment.len().to_string(),
    ]);
    argv.extend(
        request
            .environment
            .iter()
            .map(|(name, value)| format!("{name}={value}")),
    );
    argv.push(request.command.clone());
    Ok(argv)
}

/// The argv of the stderr reader of `fifo` (exec with `tty=false`, as root).
pub fn stderr_reader_argv(fifo: &StderrFifo) -> Vec<String> {
    vec![
        SHELL.to_owned(),
        "-c".to_owned(),
        with_wait_ticks(READER_SCRIPT, STDERR_READER_WAIT_S),
        SCRIPT_NAME.to_owned(),
        fifo.path().to_owned(),
    ]
}

/// Both execs of an interactive execution with stderr separated through `fifo`.
pub fn split_execution(
    request: &ExecutionRequest,
    fifo: &StderrFifo,
) -> Result<SplitCommands, CommandError> {
    Ok(SplitCommands {
        main: interactive_argv(request, Some(fifo))?,
        stderr_reader: stderr_reader_argv(fifo),
    })
}

/// The argv of a file update (exec with `tty=false`, as root, stdin = [`tar_archive`] then
/// stdin close): deletes `delete` (each path cleaned like Go's `path.Clean`, passed as its own
/// argument), then extracts.
pub fn update_files_argv(delete: &[String]) -> Result<Vec<String>, CommandError> {
    let mut argv = vec![
        SHELL.to_owned(),
        "-c".to_owned(),
        UPDATE_SCRIPT.to_owned(),
        SCRIPT_NAME.to_owned(),
    ];
    for path in delete {
        reject_nul("a path", path)?;
        if path.is_empty() {
            return Err(CommandError::Path(path.clone()));
        }
        // `./*` stays as it is: the script expands it (Poseidon's issue #42).
        argv.push(if path == "./*" {
            path.clone()
        } else {
            clean_path(path)
        });
    }
    Ok(argv)
}

/// The options every listing starts with.
const LS_OPTIONS: [&str; 5] = ["ls", "-l", "--time-style=+%s", "-1", "--literal"];

/// The argv of a listing: `ls -l --time-style=+%s -1 --literal [--recursive] -- <path>`, as the
/// user unless `privileged`. Its stdout goes to [`LsParser`].
pub fn list_files_argv(
    path: &str,
    recursive: bool,
    privileged: bool,
) -> Result<Vec<String>, CommandError> {
    reject_nul("the path", path)?;
    let mut argv = user_prefix(privileged);
    argv.extend(LS_OPTIONS.into_iter().map(str::to_owned));
    if recursive {
        argv.push("--recursive".to_owned());
    }
    argv.push("--".to_owned());
    argv.push(path.to_owned());
    Ok(argv)
}

/// The argv of a download: `cat -- <path>`, as the user unless `privileged`.
pub fn download_argv(path: &str, privileged: bool) -> Result<Vec<String>, CommandError> {
    reject_nul("the path", path)?;
    let mut argv = user_prefix(privileged);
    argv.extend(["cat", "--", path].into_iter().map(str::to_owned));
    Ok(argv)
}

/// The argv of a file's own header, for a download's size: `ls -l --time-style=+%s -1
/// --literal --directory --dereference -- <path>`, as the user unless `privileged`. Its one line
/// goes to [`parse_ls`]: a directory shows as one `d` entry (not its children) and a symlink as
/// the file it points to.
pub fn file_header_argv(path: &str, privileged: bool) -> Result<Vec<String>, CommandError> {
    reject_nul("the path", path)?;
    let mut argv = user_prefix(privileged);
    argv.extend(
        LS_OPTIONS
            .into_iter()
            .chain(["--directory", "--dereference", "--", path])
            .map(str::to_owned),
    );
    Ok(argv)
}

/// Checks a client path of a file operation: no NUL byte, and no `..` that climbs above where
/// the path starts (the working directory for a relative path, `/` for an absolute one). Any
/// other absolute path is allowed: inside an allocation the whole container is the runner's.
pub fn check_path(path: &str) -> Result<(), CommandError> {
    reject_nul("a path", path)?;
    let mut depth = 0usize;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| CommandError::Escape(path.to_owned()))?;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

fn user_prefix(privileged: bool) -> Vec<String> {
    if privileged {
        Vec::new()
    } else {
        SETUSER.map(str::to_owned).to_vec()
    }
}

fn with_wait_ticks(script: &str, wait_s: u32) -> String {
    // 100 ticks of `sleep 0.01` per second.
    script.replace("WAIT_TICKS", &(wait_s * 100).to_string())
}

fn reject_nul(what: &'static str, text: &str) -> Result<(), CommandError> {
    if text.contains('\0') {
        return Err(CommandError::NulByte { what });
    }
    Ok(())
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what bash accepts as a variable name.
fn is_shell_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

/// Go's `path.Clean`: collapses `//`, removes `.` elements and resolves `..` lexically (never
/// above `/` for absolute paths); the empty path becomes `.`.
pub fn clean_path(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if absolute => {}
                _ => parts.push(".."),
            },
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

// ---------------------------------------------------------------------------------------------
// The tar archive of a file update.

const BLOCK: usize = 512;
/// Poseidon's modes (§4.5): files `rwxr--r--`, directories world-writable and sticky (#236).
pub const FILE_MODE: u32 = 0o744;
/// See [`FILE_MODE`].
pub const DIRECTORY_MODE: u32 = 0o1777;
/// The largest size an 11-digit octal size field holds.
const TAR_SIZE_MAX: u64 = 0o777_7777_7777;

/// The tar archive (GNU format) of `copy`: a path ending in `/` is a directory (mode 01777), any
/// other path a regular file (mode 0744) with its bytes; owner and group root (uid/gid 0), names
/// cleaned like Go's `path.Clean`, absolute ones kept absolute, every entry stamped `mtime_s`
/// (the caller's clock). Names longer than 100 bytes use GNU long-name entries.
pub fn tar_archive(copy: &[(String, Vec<u8>)], mtime_s: u64) -> Result<Vec<u8>, CommandError> {
    let mut archive = Vec::new();
    for (path, content) in copy {
        reject_nul("a path", path)?;
        let cleaned = clean_path(path);
        if path.is_empty() || cleaned == "." || cleaned == "/" {
            return Err(CommandError::Path(path.clone()));
        }
        let directory = path.ends_with('/');
        let (name, mode, typeflag, data): (String, u32, u8, &[u8]) = if directory {
            (format!("{cleaned}/"), DIRECTORY_MODE, b'5', &[])
        } else {
            (cleaned, FILE_MODE, b'0', content)
        };
        let size = u64::try_from(data.len()).expect("a slice length fits in u64");
        if size > TAR_SIZE_MAX {
            return Err(CommandError::TooLarge(path.clone()));
        }
        if name.len() > 100 {
            let mut long_name = name.clone().into_bytes();
            long_name.push(0);
            let long_size = u64::try_from(long_name.len()).expect("fits in u64");
            archive.extend_from_slice(&tar_header(b"././@LongLink", 0, long_size, 0, b'L'));
            push_padded(&mut archive, &long_name);
        }
        archive.extend_from_slice(&tar_header(name.as_bytes(), mode, size, mtime_s, typeflag));
        push_padded(&mut archive, data);
    }
    // End of archive: two zero blocks.
    archive.resize(archive.len() + 2 * BLOCK, 0);
    debug_assert_eq!(archive.len() % BLOCK, 0);
    Ok(archive)
}

fn push_padded(archive: &mut Vec<u8>, data: &[u8]) {
    archive.extend_from_slice(data);
    let padding = (BLOCK - data.len() % BLOCK) % BLOCK;
    archive.resize(archive.len() + padding, 0);
}

/// One GNU tar header. `name` longer than 100 bytes is cut (a long-name entry precedes it).
fn tar_header(name: &[u8], mode: u32, size: u64, mtime_s: u64, typeflag: u8) -> [u8; BLOCK] {
    fn octal(field: &mut [u8], value: u64) {
        // Digits fill the field but the last byte, which is NUL.
        let digits = field.len() - 1;
        let text = format!("{value:0digits$o}");
        assert_eq!(text.len(), digits, "value {value} fits its tar field");
        field[..digits].copy_from_slice(text.as_bytes());
        field[digits] = 0;
    }
    let mut header = [0u8; BLOCK];
    let name_len = name.len().min(100);
    header[..name_len].copy_from_slice(&name[..name_len]);
    octal(&mut header[100..108], u64::from(mode));
    octal(&mut header[108..116], 0); // uid: root
    octal(&mut header[116..124], 0); // gid: root
    octal(&mut header[124..136], size);
    octal(&mut header[136..148], mtime_s.min(TAR_SIZE_MAX));
    header[156] = typeflag;
    // GNU magic and version: "ustar  \0".
    header[257..265].copy_from_slice(b"ustar  \0");
    header[265..269].copy_from_slice(b"root");
    header[297..301].copy_from_slice(b"root");
    // The checksum is computed with its own field as spaces, then written as six octal digits,
    // NUL, space.
    header[148..156].fill(b' ');
    let checksum: u32 = header.iter().map(|&byte| u32::from(byte)).sum();
    let text = format!("{checksum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
    header
}

// ---------------------------------------------------------------------------------------------
// The `ls -l` parser (Poseidon's `pkg/nullio/ls2json.go`).

/// Poseidon's header-line expression, anchored at the line's start (ls starts every entry line
/// with its type; Poseidon's unanchored search could also match inside a recursive listing's
/// directory line). The mark after the permissions also accepts `.` (GNU ls' SELinux context
/// mark), where Poseidon dropped the whole line; only `+` (an ACL) is kept in `permissions`.
static HEADER_LINE: LazyLock<regex_lite::Regex> = LazyLock::new(|| {
    regex_lite::Regex::new(
        r"^([-aAbcCdDlMnpPsw?])([-rwxXsStT]{9})([+.]?) +\d+ +(.+?) +(.+?) +(\d+) +(\d+) +(.*)$",
    )
    .expect("the expression is valid")
});

/// The longest line kept while waiting for its end; longer lines are dropped (a name is at most
/// 255 bytes, a recursive directory line at most `PATH_MAX`).
pub const LS_LINE_BYTES_MAX: usize = 64 << 10;

/// Turns `ls -l --time-style=+%s -1 --literal [--recursive]` output into [`FileHeader`]s,
/// chunk by chunk, exactly as Poseidon's `ls2json` does:
///
/// - a line `<dir>:` (a recursive listing's section header) sets the prefix of the following
///   names to `<dir>` with one trailing `/` (so `./:` gives `./name`);
/// - an entry line gives type, permissions (with `+` appended for an ACL), owner, group, size,
///   modification time and name; a symlink's `a -> b` is split into name and `linkTarget` when
///   it contains ` -> ` exactly once (an unreadable link has no arrow: empty target, issue #596;
///   more than one arrow: the whole text stays the name);
/// - any other line (`total 4`, empty lines) is ignored.
///
/// Differences from Poseidon, each a fix: entry lines are recognised before section headers (a
/// file named `x:` was taken for a directory), a last line without newline is parsed at
/// [`LsParser::finish`], and a number too large for `i64` drops its line instead of the listing.
#[derive(Clone, Debug, Default)]
pub struct LsParser {
    directory_prefix: String,
    partial: Vec<u8>,
    partial_too_long: bool,
}

impl LsParser {
    /// A parser at the start of a listing.
    pub fn new() -> Self {
        LsParser::default()
    }

    /// Parses the complete lines of `chunk` (a line may span chunks) into `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<FileHeader>) {
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            let (line, tail) = rest.split_at(end);
            rest = &tail[1..];
            if self.partial.is_empty() && !self.partial_too_long {
                self.parse_line(line, out);
            } else {
                self.extend_partial(line);
                let partial = std::mem::take(&mut self.partial);
                if !std::mem::take(&mut self.partial_too_long) {
                    self.parse_line(&partial, out);
                }
            }
        }
        self.extend_partial(rest);
    }

    /// Parses a last line that had no newline.
    pub fn finish(mut self, out: &mut Vec<FileHeader>) {
        let partial = std::mem::take(&mut self.partial);
        if !self.partial_too_long && !partial.is_empty() {
            self.parse_line(&partial, out);
        }
    }

    fn extend_partial(&mut self, bytes: &[u8]) {
        if self.partial.len() + bytes.len() > LS_LINE_BYTES_MAX {
            self.partial.clear();
            self.partial_too_long = true;
        } else if !self.partial_too_long {
            self.partial.extend_from_slice(bytes);
        }
    }

    fn parse_line(&mut self, line: &[u8], out: &mut Vec<FileHeader>) {
        if line.is_empty() {
            return;
        }
        let line = String::from_utf8_lossy(line);
        if let Some(header) = self.parse_entry(&line) {
            out.push(header);
        } else if let Some(directory) = line.strip_suffix(':') {
            let directory = directory.strip_suffix('/').unwrap_or(directory);
            self.directory_prefix = format!("{directory}/");
        }
    }

    fn parse_entry(&self, line: &str) -> Option<FileHeader> {
        let captures = HEADER_LINE.captures(line)?;
        let entry_type = captures[1]
            .chars()
            .next()
            .expect("group 1 is one character");
        let mut permissions = captures[2].to_owned();
        if &captures[3] == "+" {
            permissions.push('+');
        }
        let size = captures[6].parse().ok()?;
        let modification_time = captures[7].parse().ok()?;
        let mut name = format!("{}{}", self.directory_prefix, &captures[8]);
        let mut link_target = String::new();
        if entry_type == 'l' {
            let parts: Vec<&str> = name.split(" -> ").collect();
            if let [link, target] = parts[..] {
                let (link, target) = (link.to_owned(), target.to_owned());
                name = link;
                link_target = target;
            }
        }
        Some(FileHeader {
            name,
            entry_type,
            link_target,
            size,
            modification_time,
            permissions,
            owner: captures[4].to_owned(),
            group: captures[5].to_owned(),
        })
    }
}

/// Parses a whole listing at once.
pub fn parse_ls(output: &[u8]) -> Vec<FileHeader> {
    let mut parser = LsParser::new();
    let mut headers = Vec::new();
    parser.feed(output, &mut headers);
    parser.finish(&mut headers);
    headers
}

/// Renders argv the way a log line should show it: each element single-quoted for a POSIX
/// shell. For logs and error messages only; nothing built here is ever parsed by a shell.
pub fn display_argv(argv: &[String]) -> String {
    let mut text = String::new();
    for (index, arg) in argv.iter().enumerate() {
        if index > 0 {
            text.push(' ');
        }
        let _ = write!(text, "'{}'", arg.replace('\'', r"'\''"));
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Decoding: the inverses of the builders above.
//
// A stand-in for Nomad (the fake in `trident-sim`, fuzz targets) has no bash to run the wrapper
// scripts with; it recognises them *structurally* instead: each decoder accepts exactly the argv
// shapes its builder produces (the fixed scripts compared byte for byte, the caller's strings
// taken from their own elements) and answers `None` for anything else. `decode(build(x)) == x`
// for every valid `x` (tests below).

/// An interactive execution, recovered from the argv of [`interactive_argv`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedExecution {
    /// The request: command, variables in order, privilege.
    pub request: ExecutionRequest,
    /// The fifo its stderr goes to, if separated.
    pub fifo: Option<StderrFifo>,
}

/// A listing, recovered from the argv of [`list_files_argv`] or [`file_header_argv`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedListing {
    /// The path as given.
    pub path: String,
    /// `--recursive`.
    pub recursive: bool,
    /// `--directory --dereference`: the path's own header ([`file_header_argv`]).
    pub header_only: bool,
    /// Run as root (no `setuser`).
    pub privileged: bool,
}

/// A download, recovered from the argv of [`download_argv`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedDownload {
    /// The path as given.
    pub path: String,
    /// Run as root (no `setuser`).
    pub privileged: bool,
}

/// `argv` without its leading `[SHELL, "-c", script, SCRIPT_NAME]`, if it starts so.
fn strip_script<'a>(argv: &'a [String], script: &str) -> Option<&'a [String]> {
    match argv {
        [shell, dash_c, text, name, rest @ ..]
            if shell == SHELL && dash_c == "-c" && text == script && name == SCRIPT_NAME =>
        {
            Some(rest)
        }
        _ => None,
    }
}

/// `argv` without its `setuser` prefix, and whether it had none (privileged).
fn strip_user_prefix(argv: &[String]) -> (bool, &[String]) {
    match argv {
        [setuser, user, rest @ ..] if setuser == SETUSER[0] && user == SETUSER[1] => (false, rest),
        _ => (true, argv),
    }
}

/// The inverse of [`interactive_argv`].
pub fn decode_interactive(argv: &[String]) -> Option<DecodedExecution> {
    let rest = strip_script(argv, &with_wait_ticks(MAIN_SCRIPT, STDERR_MAIN_WAIT_S))?;
    let (fifo_path, rest) = rest.split_first()?;
    let (privileged, rest) = strip_user_prefix(rest);
    let rest = strip_script(rest, ENV_SCRIPT)?;
    let (count_text, rest) = rest.split_first()?;
    let count: usize = count_text.parse().ok()?;
    if count.to_string() != *count_text || rest.len() != count.checked_add(1)? {
        return None;
    }
    let (assignments, command) = rest.split_at(count);
    let environment = assignments
        .iter()
        .map(|word| {
            let (name, value) = word.split_once('=')?;
            is_shell_name(name).then(|| (name.to_owned(), value.to_owned()))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(DecodedExecution {
        request: ExecutionRequest {
            command: command[0].clone(),
            environment,
            privileged,
        },
        fifo: (!fifo_path.is_empty()).then(|| StderrFifo::at(fifo_path.clone())),
    })
}

/// The inverse of [`stderr_reader_argv`]: the fifo it reads.
pub fn decode_stderr_reader(argv: &[String]) -> Option<StderrFifo> {
    match strip_script(argv, &with_wait_ticks(READER_SCRIPT, STDERR_READER_WAIT_S))? {
        [path] => Some(StderrFifo::at(path.clone())),
        _ => None,
    }
}

/// The inverse of [`update_files_argv`]: the paths to delete, as the builder passed them
/// (cleaned; `./*` and `.` mean the working directory's contents).
pub fn decode_update_files(argv: &[String]) -> Option<Vec<String>> {
    strip_script(argv, UPDATE_SCRIPT).map(<[String]>::to_vec)
}

/// The inverse of [`list_files_argv`] and [`file_header_argv`].
pub fn decode_list(argv: &[String]) -> Option<DecodedListing> {
    let (privileged, rest) = strip_user_prefix(argv);
    if rest.len() < LS_OPTIONS.len() || rest[..LS_OPTIONS.len()] != LS_OPTIONS {
        return None;
    }
    let (recursive, header_only, path) = match &rest[LS_OPTIONS.len()..] {
        [dashes, path] if dashes == "--" => (false, false, path),
        [flag, dashes, path] if flag == "--recursive" && dashes == "--" => (true, false, path),
        [directory, dereference, dashes, path]
            if directory == "--directory" && dereference == "--dereference" && dashes == "--" =>
        {
            (false, true, path)
        }
        _ => return None,
    };
    Some(DecodedListing {
        path: path.clone(),
        recursive,
        header_only,
        privileged,
    })
}

/// The inverse of [`download_argv`].
pub fn decode_download(argv: &[String]) -> Option<DecodedDownload> {
    let (privileged, rest) = strip_user_prefix(argv);
    match rest {
        [cat, dashes, path] if cat == "cat" && dashes == "--" => Some(DecodedDownload {
            path: path.clone(),
            privileged,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec!['=', '\'', '"', '$', '\n', ' ', '/', '.', '-', '*']),
                any::<char>().prop_filter("no NUL", |c| *c != '\0'),
            ],
            0..24,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z_][A-Za-z0-9_]{0,8}"
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn interactive_round_trips(
            command in text(),
            environment in prop::collection::vec((name(), text()), 0..4),
            privileged in any::<bool>(),
            fifo in prop::option::of(1u64..),
        ) {
            let request = ExecutionRequest { command, environment, privileged };
            let fifo = fifo.map(StderrFifo::for_execution);
            let argv = interactive_argv(&request, fifo.as_ref()).expect("valid");
            prop_assert_eq!(
                decode_interactive(&argv),
                Some(DecodedExecution { request, fifo: fifo.clone() })
            );
            prop_assert_eq!(decode_stderr_reader(&argv), None);
            prop_assert_eq!(decode_update_files(&argv), None);
            prop_assert_eq!(decode_list(&argv), None);
            prop_assert_eq!(decode_download(&argv), None);
            if let Some(fifo) = fifo {
                let reader = stderr_reader_argv(&fifo);
                prop_assert_eq!(decode_stderr_reader(&reader), Some(fifo));
                prop_assert_eq!(decode_interactive(&reader), None);
            }
        }

        #[test]
        fn file_commands_round_trip(
            path in text(),
            paths in prop::collection::vec(text().prop_filter("not empty", |p| !p.is_empty()), 0..4),
            recursive in any::<bool>(),
            privileged in any::<bool>(),
        ) {
            let update = update_files_argv(&paths).expect("valid");
            let cleaned: Vec<String> = paths
                .iter()
                .map(|p| if p == "./*" { p.clone() } else { clean_path(p) })
                .collect();
            prop_assert_eq!(decode_update_files(&update), Some(cleaned));
            prop_assert_eq!(decode_interactive(&update), None);
            let list = list_files_argv(&path, recursive, privileged).expect("valid");
            prop_assert_eq!(
                decode_list(&list),
                Some(DecodedListing { path: path.clone(), recursive, header_only: false, privileged })
            );
            let header = file_header_argv(&path, privileged).expect("valid");
            prop_assert_eq!(
                decode_list(&header),
                Some(DecodedListing {
                    path: path.clone(),
                    recursive: false,
                    header_only: true,
                    privileged,
                })
            );
            let download = download_argv(&path, privileged).expect("valid");
            prop_assert_eq!(
                decode_download(&download),
                Some(DecodedDownload { path, privileged })
            );
            prop_assert_eq!(decode_list(&download), None);
        }
    }

    #[test]
    fn foreign_shapes_are_not_decoded() {
        let argv = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            decode_interactive(&argv(&["/bin/bash", "-c", "echo hi"])),
            None
        );
        assert_eq!(decode_download(&argv(&["cat", "x"])), None);
        assert_eq!(decode_list(&argv(&["ls", "-l", "x"])), None);
        // A count that disagrees with the words that follow.
        let mut main = interactive_argv(
            &ExecutionRequest {
                command: "true".into(),
                environment: vec![("A".into(), "1".into())],
                privileged: true,
            },
            None,
        )
        .expect("valid");
        let count = main.len() - 3;
        main[count] = "2".into();
        assert_eq!(decode_interactive(&main), None);
        main[count] = "01".into();
        assert_eq!(decode_interactive(&main), None);
    }

    #[test]
    fn escaping_paths_are_refused_and_others_pass() {
        for path in [
            "../x",
            "a/../../x",
            "/../x",
            "/workspace/../../x",
            "../",
            "..",
        ] {
            assert_eq!(
                check_path(path),
                Err(CommandError::Escape(path.to_owned())),
                "{path}"
            );
        }
        for path in [
            "x",
            "./",
            "./*",
            "a/../b",
            "/tmp/x",
            "/workspace/../etc",
            "/",
        ] {
            assert_eq!(check_path(path), Ok(()), "{path}");
        }
        assert!(matches!(
            check_path("a\0b"),
            Err(CommandError::NulByte { .. })
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    fn request(command: &str, environment: &[(&str, &str)], privileged: bool) -> ExecutionRequest {
        ExecutionRequest {
            command: command.to_owned(),
            environment: environment
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            privileged,
        }
    }

    /// Runs argv on this machine's bash, as the exec endpoint would (no shell in between).
    fn run(argv: &[String], extra_env: &[(&str, &str)]) -> std::process::Output {
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        for (name, value) in extra_env {
            command.env(name, value);
        }
        command.output().expect("bash runs")
    }

    #[test]
    fn clean_path_matches_go_path_clean() {
        for (input, expected) in [
            ("", "."),
            (".", "."),
            ("./", "."),
            ("a/b/", "a/b"),
            ("a//b/./c/..", "a/b"),
            ("/../a", "/a"),
            ("../../a", "../../a"),
            ("a/../..", ".."),
            ("/", "/"),
            ("//x//", "/x"),
            ("./test.txt", "test.txt"),
        ] {
            assert_eq!(clean_path(input), expected, "clean({input:?})");
        }
    }

    #[test]
    fn unprivileged_argv_goes_through_setuser_and_privileged_does_not() {
        let argv = interactive_argv(&request("id", &[], false), None).expect("valid");
        let setuser = argv
            .iter()
            .position(|arg| arg == SETUSER[0])
            .expect("setuser");
        assert_eq!(argv[setuser + 1], SETUSER[1]);
        assert_eq!(argv[setuser + 2], SHELL);
        let argv = interactive_argv(&request("id", &[], true), None).expect("valid");
        assert!(!argv.iter().any(|arg| arg == SETUSER[0]));
        let listing = list_files_argv("/x", true, false).expect("valid");
        assert_eq!(listing[..2], SETUSER.map(str::to_owned));
        assert_eq!(
            download_argv("-f", true).expect("valid"),
            ["cat", "--", "-f"]
        );
    }

    #[test]
    fn bad_names_and_nul_bytes_are_rejected() {
        assert_eq!(
            interactive_argv(&request("x", &[("A-B", "1")], true), None),
            Err(CommandError::VariableName("A-B".into()))
        );
        assert_eq!(
            interactive_argv(&request("x", &[("1A", "1")], true), None),
            Err(CommandError::VariableName("1A".into()))
        );
        assert!(matches!(
            interactive_argv(&request("a\0b", &[], true), None),
            Err(CommandError::NulByte { .. })
        ));
        assert!(matches!(
            tar_archive(&[("/".into(), Vec::new())], 0),
            Err(CommandError::Path(_))
        ));
    }

    #[test]
    fn environment_is_exact_codeocean_is_set_and_nomad_variables_are_gone() {
        let value = "two words\nline 'single' \"double\" $HOME `id` \\ end";
        let argv = interactive_argv(
            &request(
                r#"printf '%s|%s|%s|' "$V" "$CODEOCEAN" "$NOMAD_TASK_NAME"; env | grep -c '^NOMAD_'"#,
                &[("V", value), ("CODEOCEAN", "false")],
                true,
            ),
            None,
        )
        .expect("valid");
        let output = run(
            &argv,
            &[("NOMAD_TASK_NAME", "default-task"), ("NOMAD_X", "1")],
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("{value}|true||0\n")
        );
        // grep -c exits 1 when it counts nothing: the exit code comes through.
        assert_eq!(output.status.code(), Some(1));
    }

    #[test]
    fn stderr_goes_through_the_fifo_and_the_fifo_is_gone_afterwards() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let fifo = StderrFifo::at(directory.path().join("e.fifo").to_str().expect("utf-8"));
        let commands = split_execution(
            &request("echo out; echo err >&2; echo more >&2; exit 3", &[], true),
            &fifo,
        )
        .expect("valid");
        let reader = Command::new(&commands.stderr_reader[0])
            .args(&commands.stderr_reader[1..])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the reader starts");
        let main = run(&commands.main, &[]);
        let reader = reader.wait_with_output().expect("the reader ends");
        assert_eq!(main.stdout, b"out\n");
        assert_eq!(main.stderr, b"");
        assert_eq!(main.status.code(), Some(3));
        assert_eq!(reader.stdout, b"err\nmore\n");
        assert!(reader.status.success());
        assert_eq!(
            std::fs::read_dir(directory.path())
                .expect("readable")
                .count(),
            0,
            "no fifo is left behind"
        );
    }

    #[test]
    fn update_argv_passes_paths_as_arguments_and_expands_only_the_workspace_glob() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let root = directory.path();
        let weird = root.join("a b $(touch pwned) 'q'");
        std::fs::create_dir(&weird).expect("created");
        std::fs::write(root.join("keep"), b"x").expect("written");
        let argv =
            update_files_argv(&[format!("{}/", weird.display()), "gone".into()]).expect("valid");
        assert_eq!(argv.last().map(String::as_str), Some("gone"));
        let output = Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(root)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("runs");
        assert!(!weird.exists());
        assert!(!root.join("pwned").exists());
        assert!(root.join("keep").exists());
        // An empty stdin is not a tar archive, which tar may or may not mind; the deletes ran.
        let _ = output;
        let argv = update_files_argv(&["./*".into()]).expect("valid");
        let output = Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(root)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("runs");
        let _ = output;
        assert_eq!(std::fs::read_dir(root).expect("readable").count(), 0);
    }

    #[test]
    fn tar_headers_have_poseidons_modes_and_valid_checksums() {
        let archive = tar_archive(
            &[
                ("dir/".into(), b"ignored".to_vec()),
                ("./a/../f.txt".into(), b"hello".to_vec()),
            ],
            1_700_000_000,
        )
        .expect("valid");
        assert_eq!(archive.len(), 5 * BLOCK);
        assert_eq!(&archive[..4], b"dir/");
        assert_eq!(&archive[100..107], b"0001777");
        assert_eq!(archive[156], b'5');
        assert_eq!(&archive[124..135], b"00000000000");
        let file = &archive[BLOCK..];
        assert_eq!(&file[..6], b"f.txt\0");
        assert_eq!(&file[100..107], b"0000744");
        assert_eq!(&file[124..135], b"00000000005");
        assert_eq!(&archive[2 * BLOCK..2 * BLOCK + 5], b"hello");
        for header in [&archive[..BLOCK], &archive[BLOCK..2 * BLOCK]] {
            let stored = u32::from_str_radix(
                std::str::from_utf8(&header[148..154]).expect("octal digits"),
                8,
            )
            .expect("octal");
            let computed: u32 = header
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u32::from(b)
                    }
                })
                .sum();
            assert_eq!(stored, computed);
        }
    }

    #[test]
    fn ls_parser_follows_ls2json() {
        let output = b"total 12\n\
            -rwxr--r-- 1 root root 5 1700000000 a b.txt\n\
            drwxrwxrwt+ 2 root root 4096 1700000001 dir\n\
            lrwxrwxrwx 1 user user 3 1700000002 link -> a b.txt\n\
            lrwxrwxrwx 1 user user 3 1700000002 unreadable\n\
            crw-rw-rw- 1 root root 1, 3 1700000003 null\n\
            -rw-r--r--. 1 root root 0 1700000004 colon:\n\
            \n\
            ./dir/:\n\
            total 0\n\
            prw------- 1 root root 0 1700000005 p\n";
        let headers = parse_ls(output);
        let summary: Vec<_> = headers
            .iter()
            .map(|h| {
                (
                    h.name.as_str(),
                    h.entry_type,
                    h.link_target.as_str(),
                    h.size,
                    h.permissions.as_str(),
                    h.group.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("a b.txt", '-', "", 5, "rwxr--r--", "root"),
                ("dir", 'd', "", 4096, "rwxrwxrwt+", "root"),
                ("link", 'l', "a b.txt", 3, "rwxrwxrwx", "user"),
                ("unreadable", 'l', "", 3, "rwxrwxrwx", "user"),
                // The regex's lazy groups take "root 1," as the group of a device, as Poseidon's.
                ("null", 'c', "", 3, "rw-rw-rw-", "root 1,"),
                ("colon:", '-', "", 0, "rw-r--r--", "root"),
                ("./dir/p", 'p', "", 0, "rw-------", "root"),
            ]
        );
        assert_eq!(headers[0].modification_time, 1_700_000_000);
        // Any chunking gives the same result.
        for split in 0..output.len() {
            let mut parser = LsParser::new();
            let mut chunked = Vec::new();
            parser.feed(&output[..split], &mut chunked);
            parser.feed(&output[split..], &mut chunked);
            parser.finish(&mut chunked);
            assert_eq!(chunked, headers, "split at {split}");
        }
    }

    #[test]
    fn overlong_lines_are_dropped_without_losing_the_next_one() {
        let mut output = vec![b'x'; LS_LINE_BYTES_MAX + 10];
        output.extend_from_slice(b"\n-rw-r--r-- 1 a b 1 2 ok\n");
        let mut parser = LsParser::new();
        let mut headers = Vec::new();
        for chunk in output.chunks(1000) {
            parser.feed(chunk, &mut headers);
        }
        parser.finish(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].name, "ok");
    }

    fn command_text() -> impl Strategy<Value = String> {
        // Any characters but NUL, weighted towards the ones shells care about.
        let special = prop::sample::select(vec![
            '\'', '"', '\\', '$', '`', '\n', '\r', '\t', ' ', '!', '*', '?', '[', ']', '{', '}',
            '(', ')', ';', '&', '|', '<', '>', '#', '~', '%', '=', 'é', '\u{1b}', '\u{7f}',
        ]);
        let any = any::<char>().prop_filter("no NUL", |c| *c != '\0');
        prop::collection::vec(prop_oneof![special, any], 0..40)
            .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The command reaches the final `bash -c` byte for byte: bash's own
        /// `BASH_EXECUTION_STRING` (the `-c` argument) is printed before the rest of the
        /// command, which is never parsed because of the `exit`.
        #[test]
        fn the_command_reaches_bash_unchanged(tail in command_text()) {
            let command = format!("printf %s \"$BASH_EXECUTION_STRING\"; exit 0\n{tail}");
            let argv = interactive_argv(&request(&command, &[], true), None).expect("valid");
            let output = run(&argv, &[]);
            prop_assert_eq!(String::from_utf8_lossy(&output.stdout), command);
        }

        /// Environment values arrive exactly, whatever they contain.
        #[test]
        fn environment_values_reach_the_command_unchanged(value in command_text()) {
            let argv = interactive_argv(
                &request("printf %s \"$TRIDENT_VALUE\"", &[("TRIDENT_VALUE", &value)], true),
                None,
            )
            .expect("valid");
            let output = run(&argv, &[]);
            prop_assert_eq!(String::from_utf8_lossy(&output.stdout), value);
        }
    }
}
