//! The argv of an interactive execution ([`interactive_argv`]): the user's command and the
//! environment variables must travel as argv elements of their own, never interpolated into the
//! fixed scripts.
//!
//! The input is text fields separated by the byte `0xFF` (never part of UTF-8 text, so seeds are
//! readable): the first holds flags (`p`: privileged, `f`: with a stderr fifo), the last is the
//! command, each one between is a variable `NAME=value` (split at the first `=`; names may break
//! the shell-name rule, values hold any text, NUL included). Pure and fast: no process is
//! spawned (the unit tests of `commands.rs` run the built argv on bash).
//!
//! Properties, for requests the builder accepts (and it must accept exactly those with valid
//! names and no NUL):
//! - the last element is the command, byte for byte;
//! - before it come the variables as `NAME=value` elements, in order, preceded by their count;
//! - everything before the count is the argv of an empty request with the same flag and fifo:
//!   no byte of the request reaches the scripts;
//! - [`display_argv`] (single-quoted words for logs) splits back into the same argv under POSIX
//!   shell quoting rules.

use trident_backends::ExecutionRequest;
use trident_backends::nomad::commands::{StderrFifo, display_argv, interactive_argv};

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

    assert_eq!(shell_words(&display_argv(&argv)), argv);
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
