//! Replays every committed corpus (`corpus/<target>/*`) through the target's body, on the
//! stable toolchain and without libFuzzer: `cargo test --manifest-path fuzz/Cargo.toml --locked`.
//! A crash the fuzzer finds becomes a regression test by adding its (minimised) input to the
//! target's corpus.

use std::path::{Path, PathBuf};

fn replay(target: &str, run: fn(&[u8])) {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&directory)
        .unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seeds", directory.display());
    for file in files {
        let data = std::fs::read(&file).expect("a corpus file reads");
        eprintln!("{target}: {}", file.display());
        run(&data);
    }
}

#[test]
fn event_stream_corpus_replays() {
    replay("event_stream", trident_fuzz::event_stream::run);
}

#[test]
fn manager_corpus_replays() {
    replay("manager", trident_fuzz::manager::run);
}

#[test]
fn api_bodies_corpus_replays() {
    replay("api_bodies", trident_fuzz::api_bodies::run);
}

#[test]
fn ls_parser_corpus_replays() {
    replay("ls_parser", trident_fuzz::ls_parser::run);
}

#[test]
fn command_argv_corpus_replays() {
    replay("command_argv", trident_fuzz::command_argv::run);
}

#[test]
fn workspace_paths_corpus_replays() {
    replay("workspace_paths", trident_fuzz::workspace_paths::run);
}

#[test]
fn tracker_corpus_replays() {
    replay("tracker", trident_fuzz::tracker::run);
}

#[test]
fn exec_frames_corpus_replays() {
    replay("exec_frames", trident_fuzz::exec_frames::run);
}

#[test]
fn client_frames_corpus_replays() {
    replay("client_frames", trident_fuzz::client_frames::run);
}
