//! The argv of every command the Nomad backend runs in an allocation, and the tar archive of a
//! file update: caller strings (the user's command, environment variables, paths) must travel as
//! argv elements of their own, never interpolated into the fixed scripts, and must come back
//! exactly through a POSIX shell-word parser and through the backend's own decoders.
//!
//! The input is text fields separated by the byte `0xFF` (never part of UTF-8 text, so seeds are
//! readable): the first holds flags (`p`: privileged, `f`: with a stderr fifo, `r`: recursive
//! listings), the last is the command, each one between is a variable `NAME=value` (split at the
//! first `=`; names may break the shell-name rule, values hold any text, NUL included). Every
//! field after the flags is also a path. Pure and fast: no process is spawned (the unit tests of
//! `commands.rs` run the built argv on bash).
//!
//! Properties of the interactive execution ([`interactive_argv`]), for requests the builder
//! accepts (and it must accept exactly those with valid names and no NUL):
//! - the last element is the command, byte for byte;
//! - before it come the variables as `NAME=value` elements, in order, preceded by their count;
//! - everything before the count is the argv of an empty request with the same flag and fifo:
//!   no byte of the request reaches the scripts.
//!
//! Properties of the file commands, for every path: the listing, header and download argv are
//! refused exactly for a NUL byte, end in `--` and the path itself, and decode back to the same
//! path and flags; the update argv carries the delete paths cleaned (Go's `path.Clean`), `./*`
//! kept, and decodes back to them; the tar archive of the paths (each path's own bytes as its
//! content) reads back with an independent tar reader as exactly those entries: cleaned names
//! (long ones through GNU long-name entries), directories for paths ending in `/`, contents,
//! modes and modification time.
//!
//! For every argv built: [`display_argv`] (single-quoted words for logs) splits back into the
//! same argv under POSIX shell rules ([`shlex::split`]), and into the same through the
//! hand-written splitter below.

use std::io::Read as _;

use trident_backends::ExecutionRequest;
use trident_backends::nomad::commands::{
    DIRECTORY_MODE, FILE_MODE, StderrFifo, clean_path, decode_download, decode_list,
    decode_update_files, display_argv, download_argv, file_header_argv, interactive_argv,
    list_files_argv, tar_archive, update_files_argv,
};

/// Separates the fields of an input.
const SEPARATOR: u8 = 0xFF;

/// Runs the target on `data`.
pub fn run(data: &[u8]) {
    let fields: Vec<String> = data
        .split(|&byte| byte == SEPARATOR)
        .map(|field| String::from_utf8_lossy(field).into_owned())
        .collect();
    let (flags, rest) = fields.split_first().expect("split yields a field");
    let (command, variables) = rest.split_last().unwrap_or((flags, &[]));
    let fifo = flags.contains('f').then(|| StderrFifo::for_execution(7));
    let request = ExecutionRequest {
        command: command.clone(),
        environment: variables
            .iter()
            .map(|variable| {
                let (name, value) = variable.split_once('=').unwrap_or((variable, ""));
                (name.to_owned(), value.to_owned())
            })
            .collect(),
        privileged: flags.contains('p'),
    };
    check(&request, fifo.as_ref());
    let paths: Vec<String> = rest.to_vec();
    let privileged = flags.contains('p');
    for path in &paths {
        check_file_commands(path, flags.contains('r'), privileged);
    }
    check_update(&paths);
}

fn check_file_commands(path: &str, recursive: bool, privileged: bool) {
    let has_nul = path.contains('\0');
    for (argv, header_only) in [
        (list_files_argv(path, recursive, privileged), false),
        (file_header_argv(path, privileged), true),
    ] {
        let Ok(argv) = argv else {
            assert!(has_nul, "{path:?} refused");
            continue;
        };
        assert!(!has_nul);
        assert!(argv.ends_with(&["--".to_owned(), path.to_owned()]));
        let listing = decode_list(&argv).expect("a listing decodes");
        assert_eq!(listing.path, path);
        assert_eq!(listing.privileged, privileged);
        assert_eq!(listing.header_only, header_only);
        assert_eq!(listing.recursive, recursive && !header_only);
        assert_shell_round_trip(&argv);
    }
    match download_argv(path, privileged) {
        Ok(argv) => {
            assert!(!has_nul);
            assert!(argv.ends_with(&["--".to_owned(), path.to_owned()]));
            let download = decode_download(&argv).expect("a download decodes");
            assert_eq!(
                (download.path.as_str(), download.privileged),
                (path, privileged)
            );
            assert_shell_round_trip(&argv);
        }
        Err(_) => assert!(has_nul, "{path:?} refused"),
    }
}

fn check_update(paths: &[String]) {
    match update_files_argv(paths) {
        Ok(argv) => {
            let cleaned: Vec<String> = paths
                .iter()
                .map(|path| match path.as_str() {
                    "./*" => path.clone(),
                    _ => clean_path(path),
                })
                .collect();
            assert_eq!(decode_update_files(&argv), Some(cleaned));
            assert_shell_round_trip(&argv);
        }
        Err(_) => assert!(
            paths
                .iter()
                .any(|path| path.is_empty() || path.contains('\0')),
            "{paths:?} refused"
        ),
    }

    const MTIME_S: u64 = 1_700_000_000;
    let copy: Vec<(String, Vec<u8>)> = paths
        .iter()
        .map(|path| (path.clone(), path.as_bytes().to_vec()))
        .collect();
    let Ok(archive) = tar_archive(&copy, MTIME_S) else {
        assert!(
            paths.iter().any(|path| {
                let cleaned = clean_path(path);
                path.contains('\0') || path.is_empty() || cleaned == "." || cleaned == "/"
            }),
            "{paths:?} refused"
        );
        return;
    };
    let mut reader = tar::Archive::new(archive.as_slice());
    let mut entries = reader.entries().expect("the archive reads");
    for (path, content) in &copy {
        let mut entry = entries
            .next()
            .expect("an entry per path")
            .expect("the entry reads");
        let directory = path.ends_with('/');
        let mut name = clean_path(path);
        if directory {
            name.push('/');
        }
        assert_eq!(
            String::from_utf8_lossy(&entry.path_bytes()),
            name,
            "the name of {path:?}"
        );
        let header = entry.header();
        assert_eq!(header.mtime().expect("an mtime"), MTIME_S);
        assert_eq!((header.uid().ok(), header.gid().ok()), (Some(0), Some(0)));
        if directory {
            assert!(header.entry_type().is_dir());
            assert_eq!(header.mode().expect("a mode"), DIRECTORY_MODE);
        } else {
            assert!(header.entry_type().is_file());
            assert_eq!(header.mode().expect("a mode"), FILE_MODE);
            let mut read = Vec::new();
            entry.read_to_end(&mut read).expect("the content reads");
            assert_eq!(&read, content);
        }
    }
    assert!(entries.next().is_none(), "an entry nobody sent");
}

fn assert_shell_round_trip(argv: &[String]) {
    let display = display_argv(argv);
    assert_eq!(shlex::split(&display).as_deref(), Some(argv), "{display}");
    assert_eq!(shell_words(&display), argv);
}

fn check(request: &ExecutionRequest, fifo: Option<&StderrFifo>) {
    let valid = !request.command.contains('\0')
        && request
            .environment
            .iter()
            .all(|(name, value)| is_shell_name(name) && !value.contains('\0'));
    let built = interactive_argv(request, fifo);
    let Ok(argv) = built else {
        assert!(!valid, "a valid request was refused: {built:?}");
        return;
    };
    assert!(valid, "an invalid request was accepted: {request:?}");

    let variables = request.environment.len();
    let (command, rest) = argv.split_last().expect("argv is never empty");
    assert_eq!(command, &request.command);
    let (rest, words) = rest.split_at(rest.len() - variables);
    for (word, (name, value)) in words.iter().zip(&request.environment) {
        assert_eq!(word, &format!("{name}={value}"));
    }
    let (count, fixed) = rest.split_last().expect("the count precedes the variables");
    assert_eq!(count, &variables.to_string());
    let empty = ExecutionRequest {
        command: String::new(),
        environment: Vec::new(),
        privileged: request.privileged,
    };
    let skeleton = interactive_argv(&empty, fifo).expect("the empty request is valid");
    assert_eq!(
        fixed,
        &skeleton[..skeleton.len() - 2],
        "request bytes reached the scripts"
    );

    assert_shell_round_trip(&argv);
}

/// `[A-Za-z_][A-Za-z0-9_]*`, written independently of the builder's check.
fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first == '_' || first.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Splits text made of single-quoted words, `\'` escapes and spaces the way a POSIX shell does.
fn shell_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' => words.extend(word.take()),
            '\\' => {
                let escaped = chars.next().expect("a backslash escapes a character");
                word.get_or_insert_default().push(escaped);
            }
            '\'' => {
                let word = word.get_or_insert_default();
                for quoted in chars.by_ref() {
                    if quoted == '\'' {
                        break;
                    }
                    word.push(quoted);
                }
            }
            other => panic!("unquoted {other:?} in {text:?}"),
        }
    }
    words.extend(word);
    words
}
