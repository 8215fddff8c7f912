//! The scripted task driver: what runs when an exec arrives. A test double, not a shell.
//!
//! **Trident's wrappers are understood structurally, not as shell scripts.** The Nomad backend
//! sends fixed bash scripts with the caller's strings as their own argv elements
//! (`trident_backends::nomad::commands`). Before anything else, an argv is matched against the
//! inverse decoders of that module, which accept exactly the shapes its builders produce:
//! - the interactive command ([`commands::decode_interactive`]): the decoded user command runs in
//!   the toy shell below, with the decoded variables plus `CODEOCEAN=true` (visible to
//!   `printenv`), and its stderr goes to the stderr fifo when one is named: the command waits for
//!   it (as the script does, [`commands::STDERR_MAIN_WAIT_S`]) and takes its name away;
//! - the stderr reader ([`commands::decode_stderr_reader`]): creates the fifo in the fake's
//!   per-allocation registry (a bounded channel), waits for the command to take its name (at most
//!   [`commands::STDERR_READER_WAIT_S`], then removes it itself) and copies what arrives to its
//!   stdout until every writer is gone;
//! - the file update ([`commands::decode_update_files`]): the deletes (`./*` and `.` empty the
//!   working directory), then the tar archive on stdin is extracted;
//! - listings and file headers ([`commands::decode_list`]): GNU `ls` output from [`Fs`];
//! - downloads ([`commands::decode_download`]): `cat` of the file.
//!
//! Privilege (`setuser`) is not modelled: everything runs as root. Any other argv goes to the toy
//! shell as before.
//!
//! The argv is normally `["/bin/bash", "-c", "<script>"]`. The script is split into simple
//! commands joined by `;`, `&&`, `||` or newlines; words use bash's quoting (single quotes,
//! double quotes with `\" \\ \$ \``, backslash). There is no expansion (no variables, globs,
//! command substitution), no pipes, redirections or background jobs: a script using them fails
//! with exit 2 and says so on stderr. Leading `VAR=value` words are dropped.
//!
//! Commands understood (all else: `command not found` on stderr, exit 127):
//! - wrappers: `bash|sh -c <script>` (a nested shell: its `exit` ends only it), `env [VAR=v]…
//!   <cmd>`, `/sbin/setuser <user> <cmd>`, `unset …`, `true`, `false`, `:`;
//! - files (`poseidon.md` §4.5–4.7): `tar --extract|-x … --file=/dev/stdin|-f -` (reads a ustar
//!   archive from stdin, `--verbose` lists names), `rm [-r] [-f] <path>…` (`<dir>/*` removes a
//!   directory's children), `ls -l --time-style=+%s -1 --literal [--recursive|-R] <path>`,
//!   `cat <file>…`, `mkdir [-p] <dir>…`, `pwd`;
//! - workloads: `echo [-n] [-e] …`, `cat` (copies stdin to stdout until stdin closes), `sleep N`
//!   (tokio time; fractions allowed), `exit N`, `kill -<n> $$`, `trap '' QUIT` and `trap - QUIT`
//!   (whether the terminal's Ctrl-\ ends the process, see `super::exec`), `head -c N /dev/zero`
//!   (N zero bytes), `head -n N`
//!   (the first N lines of stdin),
//!   `allocate-memory <MiB>`: more than the task's memory limit OOM-kills the container (the
//!   allocation restarts with an `oom_killed` task event; the exec ends with 137), otherwise
//!   exits 0.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use trident_backends::nomad::commands::{self, StderrFifo};

use super::FakeNomad;
use super::fs::{FILE_SIZE_MAX, Fs, WORKDIR, read_tar};

/// Output of a running command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// How a command ends: go on with its status, or leave the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Status(i32),
    Exit(i32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    /// `;` or a newline.
    Then,
    And,
    Or,
}

/// Splits a script into words and separators with bash's quoting rules.
fn tokenize(script: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = script.chars().peekable();
    let finish = |tokens: &mut Vec<Token>, word: &mut String, in_word: &mut bool| {
        if *in_word {
            tokens.push(Token::Word(std::mem::take(word)));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => finish(&mut tokens, &mut word, &mut in_word),
            '\n' | ';' => {
                finish(&mut tokens, &mut word, &mut in_word);
                tokens.push(Token::Then);
            }
            '&' if chars.peek() == Some(&'&') => {
                chars.next();
                finish(&mut tokens, &mut word, &mut in_word);
                tokens.push(Token::And);
            }
            '|' if chars.peek() == Some(&'|') => {
                chars.next();
                finish(&mut tokens, &mut word, &mut in_word);
                tokens.push(Token::Or);
            }
            '|' | '&' | '<' | '>' | '(' | ')' | '`' => {
                return Err(format!("the fake shell does not support `{c}`"));
            }
            '$' if matches!(chars.peek(), Some('(')) => {
                return Err("the fake shell does not support `$(`".into());
            }
            '#' if !in_word => {
                for next in chars.by_ref() {
                    if next == '\n' {
                        tokens.push(Token::Then);
                        break;
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(inner) => word.push(inner),
                        None => return Err("unexpected EOF while looking for matching `''".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(escaped @ ('"' | '\\' | '$' | '`')) => word.push(escaped),
                            Some('\n') => {}
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => {
                                return Err("unexpected EOF while looking for matching `\"'".into());
                            }
                        },
                        Some(inner) => word.push(inner),
                        None => return Err("unexpected EOF while looking for matching `\"'".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(escaped) => word.push(escaped),
                }
            }
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    finish(&mut tokens, &mut word, &mut in_word);
    Ok(tokens)
}

/// `echo -e` escapes.
fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            i += 1;
            match bytes[i] {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'\\' => out.push(b'\\'),
                b'x' => {
                    let hex: String = text[i + 1..]
                        .chars()
                        .take(2)
                        .take_while(char::is_ascii_hexdigit)
                        .collect();
                    if let Ok(value) = u8::from_str_radix(&hex, 16) {
                        out.push(value);
                        i += hex.len();
                    } else {
                        out.extend_from_slice(b"\\x");
                    }
                }
                other => {
                    out.push(b'\\');
                    out.push(other);
                }
            }
        } else {
            out.push(bytes[i]);
        }
        i += 1;
    }
    out
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    })
}

/// One exec's process: its stdin, its output and the container it runs in.
pub(crate) struct Process {
    pub(crate) nomad: FakeNomad,
    pub(crate) alloc_id: String,
    pub(crate) incarnation: u64,
    pub(crate) memory_limit_mb: i64,
    /// `None` once stdin reached EOF.
    pub(crate) stdin: Option<mpsc::Receiver<Vec<u8>>>,
    pub(crate) out: mpsc::Sender<Output>,
    /// Where stderr goes instead of `out`: the write end of a stderr fifo.
    pub(crate) stderr_to: Option<mpsc::Sender<Vec<u8>>>,
    /// The variables the command sees (`printenv`).
    pub(crate) environment: Vec<(String, String)>,
    /// Set by `trap '' QUIT`: the terminal's Ctrl-\ (SIGQUIT) is ignored. Shared with the exec
    /// session, which plays the terminal.
    pub(crate) quit_ignored: Arc<AtomicBool>,
}

/// Chunks a fifo holds before its writer waits (a pipe's buffer).
const FIFO_BOUND: usize = 16;
/// How often a waiting script looks for its fifo again (the scripts' `sleep 0.01`).
const FIFO_POLL: Duration = Duration::from_millis(10);

/// Removes a reader's fifo name when the reader ends, however it ends.
struct FifoName {
    nomad: FakeNomad,
    alloc_id: String,
    path: String,
}

impl Drop for FifoName {
    fn drop(&mut self) {
        drop(self.nomad.take_fifo(&self.alloc_id, &self.path));
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("alloc_id", &self.alloc_id)
            .finish_non_exhaustive()
    }
}

impl Process {
    async fn stdout(&self, bytes: impl Into<Vec<u8>>) {
        let bytes = bytes.into();
        if !bytes.is_empty() {
            // A consumer that went away is not the process's problem.
            let _ = self.out.send(Output::Stdout(bytes)).await;
        }
    }

    async fn stderr(&self, text: impl Into<Vec<u8>>) {
        match &self.stderr_to {
            // A reader that went away: the write fails, as with EPIPE.
            Some(fifo) => drop(fifo.send(text.into()).await),
            None => drop(self.out.send(Output::Stderr(text.into())).await),
        }
    }

    async fn read_stdin(&mut self) -> Option<Vec<u8>> {
        let chunk = self.stdin.as_mut()?.recv().await;
        if chunk.is_none() {
            self.stdin = None;
        }
        chunk
    }

    /// Runs `f` on the container's file system; `None` when the container is gone.
    fn with_fs<R>(&self, f: impl FnOnce(&mut Fs, i64) -> R) -> Option<R> {
        let mut state = self.nomad.lock();
        let now_s = state.now_s();
        let alloc = state
            .alloc_mut(&self.alloc_id)
            .filter(|alloc| alloc.incarnation == self.incarnation)?;
        Some(f(&mut alloc.fs, now_s))
    }

    /// Runs an exec's argv and returns its exit code: Trident's wrappers by their decoded
    /// meaning (see the module documentation), anything else in the toy shell.
    pub(crate) async fn run_argv(&mut self, argv: &[String]) -> i32 {
        if let Some(decoded) = commands::decode_interactive(argv) {
            return self.interactive(decoded).await;
        }
        if let Some(fifo) = commands::decode_stderr_reader(argv) {
            return self.stderr_reader(&fifo).await;
        }
        if let Some(delete) = commands::decode_update_files(argv) {
            return self.update_files(&delete).await;
        }
        if let Some(listing) = commands::decode_list(argv) {
            let path = listing.path.as_str();
            let listed = self.with_fs(|fs, _| {
                if listing.header_only {
                    fs.ls_entry(path)
                } else {
                    fs.ls(path, listing.recursive)
                }
            });
            return match listed {
                Some(Ok(listing)) => {
                    self.stdout(listing).await;
                    0
                }
                Some(Err(message)) => {
                    self.stderr(message).await;
                    2
                }
                None => 137,
            };
        }
        if let Some(download) = commands::decode_download(argv) {
            return self.cat(&["--", &download.path]).await;
        }
        match self.command(argv).await {
            Flow::Status(code) | Flow::Exit(code) => code,
        }
    }

    /// The interactive wrapper: stderr onto the fifo, the variables, then the command.
    async fn interactive(&mut self, decoded: commands::DecodedExecution) -> i32 {
        if let Some(fifo) = &decoded.fifo {
            // tokio's clock (turmoil's simulated time in the simulation), not the wall clock.
            let deadline = tokio::time::Instant::now()
                + Duration::from_secs(u64::from(commands::STDERR_MAIN_WAIT_S));
            loop {
                if let Some(writer) = self.nomad.take_fifo(&self.alloc_id, fifo.path()) {
                    self.stderr_to = Some(writer);
                    break;
                }
                // tokio's clock (turmoil's simulated time in the simulation), not the wall clock.
                if tokio::time::Instant::now() >= deadline {
                    // No reader: stderr stays on the terminal, as in the script.
                    break;
                }
                tokio::time::sleep(FIFO_POLL).await;
            }
        }
        self.environment = decoded.request.environment;
        self.environment
            .push(("CODEOCEAN".to_owned(), "true".to_owned()));
        self.script(&decoded.request.command).await
    }

    /// The stderr reader: see the module documentation.
    async fn stderr_reader(&mut self, fifo: &StderrFifo) -> i32 {
        let (writer, mut pipe) = mpsc::channel(FIFO_BOUND);
        if !self.nomad.create_fifo(&self.alloc_id, fifo.path(), writer) {
            self.stderr(format!(
                "mkfifo: cannot create fifo '{}': File exists\n",
                fifo.path()
            ))
            .await;
            return 125;
        }
        let _name = FifoName {
            nomad: self.nomad.clone(),
            alloc_id: self.alloc_id.clone(),
            path: fifo.path().to_owned(),
        };
        // tokio's clock (turmoil's simulated time in the simulation), not the wall clock.
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(u64::from(commands::STDERR_READER_WAIT_S));
        let mut named = true;
        loop {
            tokio::select! {
                biased;
                chunk = pipe.recv() => match chunk {
                    Some(chunk) => self.stdout(chunk).await,
                    // Every writer is gone: `cat` sees end of file.
                    None => return 0,
                },
                () = tokio::time::sleep(FIFO_POLL), if named => {
                    if !self.nomad.fifo_exists(&self.alloc_id, fifo.path()) {
                        named = false;
                    // tokio's clock (turmoil's simulated time in the simulation), not the wall clock.
                    } else if tokio::time::Instant::now() >= deadline {
                        // Nobody took it: remove the name (and with it the last writer).
                        drop(self.nomad.take_fifo(&self.alloc_id, fifo.path()));
                        named = false;
                    }
                }
            }
        }
    }

    /// The update wrapper: deletes, then the archive on stdin.
    async fn update_files(&mut self, delete: &[String]) -> i32 {
        let mut errors = String::new();
        let done = self.with_fs(|fs, _| {
            for path in delete {
                let path = if path == "." { "./*" } else { path.as_str() };
                if let Err(message) = fs.remove(path, true, true) {
                    errors.push_str(&message);
                    errors.push('\n');
                }
            }
        });
        if done.is_none() {
            return 137;
        }
        if !errors.is_empty() {
            // Like the script: a failed delete does not stop the copy.
            self.stderr(errors).await;
        }
        self.tar(&["--extract", "--absolute-names", "--file=/dev/stdin"])
            .await
    }

    /// Runs a script in a (nested) shell; `exit` ends only this shell.
    fn script<'a>(&'a mut self, script: &'a str) -> Pin<Box<dyn Future<Output = i32> + Send + 'a>> {
        Box::pin(async move {
            let tokens = match tokenize(script) {
                Ok(tokens) => tokens,
                Err(message) => {
                    self.stderr(format!("bash: {message}\n")).await;
                    return 2;
                }
            };
            let mut status = 0;
            let mut words: Vec<String> = Vec::new();
            // Whether the next command runs, given the separator before it.
            let mut run_next = true;
            let mut tokens = tokens.into_iter().peekable();
            loop {
                let token = tokens.next();
                match token {
                    Some(Token::Word(word)) => {
                        words.push(word);
                        continue;
                    }
                    separator => {
                        if !words.is_empty() && run_next {
                            match self.command(&std::mem::take(&mut words)).await {
                                Flow::Status(code) => status = code,
                                Flow::Exit(code) => return code,
                            }
                        }
                        words.clear();
                        run_next = match separator {
                            Some(Token::And) => status == 0,
                            Some(Token::Or) => status != 0,
                            _ => true,
                        };
                        if separator.is_none() {
                            return status;
                        }
                    }
                }
            }
        })
    }

    async fn command(&mut self, argv: &[String]) -> Flow {
        let argv: Vec<String> = argv
            .iter()
            .skip_while(|word| is_assignment(word))
            .cloned()
            .collect();
        let Some((name, args)) = argv.split_first() else {
            return Flow::Status(0);
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let code = match name.as_str() {
            "/bin/bash" | "bash" | "/bin/sh" | "sh" | "/usr/bin/bash" => match args.as_slice() {
                ["-c", script, ..] => self.script(script).await,
                _ => {
                    self.stderr("bash: the fake shell runs only `bash -c <script>`\n")
                        .await;
                    2
                }
            },
            "env" | "/usr/bin/env" => {
                let rest: Vec<String> = args
                    .iter()
                    .skip_while(|a| a.starts_with('-') || is_assignment(a))
                    .map(|a| (*a).to_owned())
                    .collect();
                return Box::pin(self.command(&rest)).await;
            }
            "/sbin/setuser" | "setuser" => {
                let rest: Vec<String> = args.iter().skip(1).map(|a| (*a).to_owned()).collect();
                return Box::pin(self.command(&rest)).await;
            }
            "unset" | "true" | ":" => 0,
            "printenv" => self.printenv(&args).await,
            "kill" => match args.as_slice() {
                // The shell kills itself: it ends as signal n ends a process.
                [signal, "$$"] => match signal.strip_prefix('-').map(str::parse::<u8>) {
                    Some(Ok(n)) if (1..128).contains(&n) => return Flow::Exit(128 + i32::from(n)),
                    _ => {
                        self.stderr(format!(
                            "bash: kill: {signal}: invalid signal specification\n"
                        ))
                        .await;
                        1
                    }
                },
                _ => {
                    self.stderr("kill: the fake supports only `kill -<n> $$`\n")
                        .await;
                    1
                }
            },
            "false" => 1,
            "trap" => self.trap(&args).await,
            "exit" => {
                let code = args.first().map_or(Ok(0), |a| a.parse::<i64>());
                return match code {
                    Ok(code) => Flow::Exit((code & 0xff) as i32),
                    Err(_) => {
                        self.stderr(format!(
                            "bash: exit: {}: numeric argument required\n",
                            args[0]
                        ))
                        .await;
                        Flow::Exit(2)
                    }
                };
            }
            "pwd" => {
                self.stdout(format!("{WORKDIR}\n")).await;
                0
            }
            "echo" => self.echo(&args).await,
            "cat" => self.cat(&args).await,
            "sleep" => self.sleep(&args).await,
            "head" => self.head(&args).await,
            "tar" => self.tar(&args).await,
            "rm" => self.rm(&args).await,
            "ls" => self.ls(&args).await,
            "mkdir" => self.mkdir(&args).await,
            "allocate-memory" => self.allocate_memory(&args).await,
            other => {
                self.stderr(format!("bash: line 1: {other}: command not found\n"))
                    .await;
                127
            }
        };
        Flow::Status(code)
    }

    /// `trap '' QUIT` ignores SIGQUIT (the process and what it runs, as bash's children inherit
    /// an ignored signal); `trap - QUIT` restores it.
    async fn trap(&mut self, args: &[&str]) -> i32 {
        match args {
            [action @ ("" | "-"), "QUIT" | "SIGQUIT" | "3"] => {
                self.quit_ignored
                    .store(action.is_empty(), Ordering::Relaxed);
                0
            }
            _ => {
                self.stderr("trap: the fake supports only `trap '' QUIT` and `trap - QUIT`\n")
                    .await;
                1
            }
        }
    }

    async fn printenv(&mut self, args: &[&str]) -> i32 {
        let mut text = Vec::new();
        let mut status = 0;
        if args.is_empty() {
            for (name, value) in &self.environment {
                text.extend_from_slice(format!("{name}={value}\n").as_bytes());
            }
        }
        for name in args {
            match self.environment.iter().rev().find(|(n, _)| n == name) {
                Some((_, value)) => text.extend_from_slice(format!("{value}\n").as_bytes()),
                None => status = 1,
            }
        }
        self.stdout(text).await;
        status
    }

    async fn echo(&mut self, args: &[&str]) -> i32 {
        let mut newline = true;
        let mut escapes = false;
        let mut rest = args;
        while let Some((first, tail)) = rest.split_first() {
            let is_flag = first.len() > 1
                && first.starts_with('-')
                && first[1..].chars().all(|c| matches!(c, 'n' | 'e' | 'E'));
            if !is_flag {
                break;
            }
            newline &= !first.contains('n');
            escapes = first.contains('e');
            rest = tail;
        }
        let text = rest.join(" ");
        let mut bytes = if escapes {
            unescape(&text)
        } else {
            text.into_bytes()
        };
        if newline {
            bytes.push(b'\n');
        }
        self.stdout(bytes).await;
        0
    }

    async fn cat(&mut self, args: &[&str]) -> i32 {
        let files: Vec<&str> = args.iter().copied().filter(|a| *a != "--").collect();
        if files.is_empty() || files == ["-"] {
            while let Some(chunk) = self.read_stdin().await {
                self.stdout(chunk).await;
            }
            return 0;
        }
        let mut status = 0;
        for file in files {
            let content = self.with_fs(|fs, _| fs.read_file(file).map(<[u8]>::to_vec));
            match content {
                Some(Ok(content)) => self.stdout(content).await,
                Some(Err(reason)) => {
                    self.stderr(format!("cat: {file}: {reason}\n")).await;
                    status = 1;
                }
                None => return 137,
            }
        }
        status
    }

    async fn sleep(&mut self, args: &[&str]) -> i32 {
        let seconds = args
            .first()
            .map(|a| a.trim_end_matches('s'))
            .and_then(|a| a.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0);
        match seconds {
            Some(seconds) => {
                tokio::time::sleep(Duration::from_secs_f64(seconds.min(1e9))).await;
                0
            }
            None if args.first() == Some(&"infinity") => {
                std::future::pending::<()>().await;
                0
            }
            None => {
                self.stderr(format!(
                    "sleep: invalid time interval '{}'\n",
                    args.first().unwrap_or(&"")
                ))
                .await;
                1
            }
        }
    }

    async fn head(&mut self, args: &[&str]) -> i32 {
        if let ["-n", count] = args
            && let Ok(lines) = count.parse::<usize>()
        {
            return self.head_lines(lines).await;
        }
        let (count, file) = match args {
            ["-c", count, file] => (count.parse::<u64>().ok(), *file),
            _ => (None, ""),
        };
        match (count, file) {
            (Some(mut left), "/dev/zero") => {
                const CHUNK: u64 = 64 * 1024;
                while left > 0 {
                    let n = left.min(CHUNK);
                    self.stdout(vec![0u8; n as usize]).await;
                    left -= n;
                }
                0
            }
            _ => {
                self.stderr("head: the fake supports only `head -c N /dev/zero` and `head -n N`\n")
                    .await;
                1
            }
        }
    }

    /// `head -n N` on stdin: up to its Nth newline, or all of it if stdin ends first. The rest of
    /// the chunk that holds the Nth newline is dropped, as `head` drops what it read ahead from a
    /// pipe.
    async fn head_lines(&mut self, mut lines: usize) -> i32 {
        while lines > 0 {
            let Some(chunk) = self.read_stdin().await else {
                break;
            };
            let mut end = chunk.len();
            for (index, byte) in chunk.iter().enumerate() {
                if *byte == b'\n' {
                    lines -= 1;
                    if lines == 0 {
                        end = index + 1;
                        break;
                    }
                }
            }
            self.stdout(chunk[..end].to_vec()).await;
        }
        0
    }

    async fn tar(&mut self, args: &[&str]) -> i32 {
        let extract = args.iter().any(|a| {
            *a == "--extract"
                || *a == "-x"
                || (!a.starts_with("--") && a.starts_with('-') && a.contains('x'))
                || *a == "x"
                || *a == "xf"
                || *a == "xvf"
        });
        let verbose = args.iter().any(|a| {
            *a == "--verbose" || (!a.starts_with("--") && a.starts_with('-') && a.contains('v'))
        });
        let from_stdin = args.iter().any(|a| {
            *a == "--file=/dev/stdin" || *a == "--file=-" || *a == "-" || *a == "/dev/stdin"
        });
        if !extract || !from_stdin {
            self.stderr("tar: the fake supports only extracting an archive from stdin\n")
                .await;
            return 2;
        }
        let mut archive = Vec::new();
        while let Some(chunk) = self.read_stdin().await {
            archive.extend_from_slice(&chunk);
            if archive.len() > 2 * FILE_SIZE_MAX {
                self.stderr("tar: archive too large for the fake\n").await;
                return 2;
            }
        }
        let entries = match read_tar(&archive) {
            Ok(entries) => entries,
            Err(message) => {
                self.stderr(message).await;
                return 2;
            }
        };
        let mut listing = String::new();
        let mut errors = String::new();
        let done = self.with_fs(|fs, _| {
            for entry in entries {
                let result = if entry.is_dir {
                    fs.make_dir(&entry.name, entry.mode, entry.mtime_s)
                } else {
                    fs.write_file(&entry.name, entry.content, entry.mode, entry.mtime_s)
                };
                listing.push_str(&entry.name);
                listing.push('\n');
                if let Err(reason) = result {
                    errors.push_str(&format!("tar: {}: Cannot open: {reason}\n", entry.name));
                }
            }
        });
        if done.is_none() {
            return 137;
        }
        if verbose {
            self.stdout(listing).await;
        }
        if errors.is_empty() {
            0
        } else {
            errors.push_str("tar: Exiting with failure status due to previous errors\n");
            self.stderr(errors).await;
            2
        }
    }

    async fn rm(&mut self, args: &[&str]) -> i32 {
        let mut recursive = false;
        let mut force = false;
        let mut paths = Vec::new();
        for arg in args {
            match *arg {
                "--recursive" => recursive = true,
                "--force" => force = true,
                "--" => {}
                flags if flags.starts_with('-') && flags.len() > 1 => {
                    recursive |= flags.contains('r') || flags.contains('R');
                    force |= flags.contains('f');
                }
                path => paths.push(path),
            }
        }
        let mut errors = String::new();
        let done = self.with_fs(|fs, _| {
            for path in paths {
                if let Err(message) = fs.remove(path, recursive, force) {
                    errors.push_str(&message);
                    errors.push('\n');
                }
            }
        });
        if done.is_none() {
            return 137;
        }
        if errors.is_empty() {
            0
        } else {
            self.stderr(errors).await;
            1
        }
    }

    async fn ls(&mut self, args: &[&str]) -> i32 {
        let recursive = args.iter().any(|a| *a == "--recursive" || *a == "-R");
        let paths: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| !a.starts_with('-'))
            .collect();
        let path = paths.first().copied().unwrap_or(".");
        match self.with_fs(|fs, _| fs.ls(path, recursive)) {
            Some(Ok(listing)) => {
                self.stdout(listing).await;
                0
            }
            Some(Err(message)) => {
                self.stderr(message).await;
                2
            }
            None => 137,
        }
    }

    async fn mkdir(&mut self, args: &[&str]) -> i32 {
        let paths: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| !a.starts_with('-'))
            .collect();
        let mut errors = String::new();
        let done = self.with_fs(|fs, now_s| {
            for path in paths {
                if let Err(reason) = fs.make_dir(path, 0o755, now_s) {
                    errors.push_str(&format!(
                        "mkdir: cannot create directory '{path}': {reason}\n"
                    ));
                }
            }
        });
        if done.is_none() {
            return 137;
        }
        if errors.is_empty() {
            0
        } else {
            self.stderr(errors).await;
            1
        }
    }

    async fn allocate_memory(&mut self, args: &[&str]) -> i32 {
        let Some(mib) = args.first().and_then(|a| a.parse::<i64>().ok()) else {
            self.stderr("allocate-memory: usage: allocate-memory <MiB>\n")
                .await;
            return 2;
        };
        if mib <= self.memory_limit_mb {
            return 0;
        }
        // The container exceeds its limit: Docker's OOM killer takes the whole container, the
        // allocation restarts, and this exec ends with the container (the exec loop sees the new
        // incarnation).
        let killed = self.nomad.lock().oom_kill(&self.alloc_id).is_ok();
        if killed {
            std::future::pending::<()>().await;
        }
        137
    }
}

#[cfg(test)]
mod tests {
    use super::{Token, tokenize, unescape};

    fn words(items: &[&str]) -> Vec<Token> {
        items
            .iter()
            .map(|item| match *item {
                ";" => Token::Then,
                "&&" => Token::And,
                "||" => Token::Or,
                word => Token::Word(word.to_owned()),
            })
            .collect()
    }

    #[test]
    fn tokenizer_follows_bash_quoting() {
        assert_eq!(
            tokenize(r#"rm --recursive --force '/a b' ./* ;tar -x "q\"x\$" && echo ''"#)
                .expect("valid"),
            words(&[
                "rm",
                "--recursive",
                "--force",
                "/a b",
                "./*",
                ";",
                "tar",
                "-x",
                "q\"x$",
                "&&",
                "echo",
                ""
            ])
        );
        assert!(tokenize("cat a | wc").is_err());
        assert!(tokenize("echo 'open").is_err());
    }

    #[test]
    fn echo_escapes() {
        assert_eq!(unescape(r"a\nb\x41\\"), b"a\nbA\\".to_vec());
    }
}
