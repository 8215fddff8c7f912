//! The command-line client as a new user meets it: the README's quick start, run as written
//! (only the alias points at this build and the server at the test's), and input that ends.

use std::process::{Command, Stdio};

use trident_tests::{Server, server_binary};

/// The indented shell lines of the README's "Quick start" up to its first paragraph.
fn quick_start() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README");
    let section = readme
        .split("## Quick start")
        .nth(1)
        .expect("a Quick start section");
    section
        .lines()
        .skip_while(|line| !line.starts_with("    "))
        .take_while(|line| line.starts_with("    ") || line.is_empty())
        .filter(|line| !line.is_empty())
        .map(|line| line.trim_start().to_owned())
        .collect()
}

/// Runs `script` in bash with `trident` aliased to this build, talking to `server`.
fn bash(server: &Server, script: &str, directory: &std::path::Path) -> (String, String, bool) {
    let base = server.url("");
    let base = base.trim_end_matches("/api/v1");
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!("shopt -s expand_aliases\nset -e\n{script}"))
        .current_dir(directory)
        .env("TRIDENT_SERVER", base)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.success(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_works_as_written() {
    let server = Server::start(&[]).await;
    let lines = quick_start();
    assert!(
        lines.iter().any(|line| line.starts_with("alias trident=")),
        "the quick start defines the alias: {lines:?}"
    );
    let binary = server_binary();
    let script: Vec<String> = lines
        .iter()
        .map(|line| {
            if line.starts_with("alias trident=") {
                format!("alias trident={:?}", binary.display().to_string())
            } else {
                line.clone()
            }
        })
        .collect();
    let directory = tempfile::tempdir().expect("a working directory");
    let (stdout, stderr, ok) = bash(&server, &script.join("\n"), directory.path());
    assert!(ok, "the quick start failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("environment 10 created"), "{stdout}");
    assert!(stdout.contains("Hello, Ada!"), "{stdout}\n{stderr}");
    assert!(stderr.contains("exit code 0"), "{stderr}");
    // `trident stats`: the header and environment 10's row with its target of 2.
    let row = stdout
        .lines()
        .find(|line| line.split_whitespace().next() == Some("10"))
        .unwrap_or_else(|| panic!("no row for environment 10 in:\n{stdout}"));
    assert_eq!(row.split_whitespace().nth(1), Some("2"), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_piped_input_reaches_the_command() {
    let server = Server::start(&[]).await;
    server.environment(4, 1, 128).await;
    let binary = server_binary();
    let directory = tempfile::tempdir().expect("a working directory");
    // `sort` reads to the end of its input: without the end passed on, it would wait until the
    // runner's inactivity timeout.
    let script = format!(
        "printf 'pear\\napple\\n' | {:?} run --env 4 --wait 30 -- sort",
        binary.display().to_string()
    );
    let started = std::time::Instant::now();
    let (stdout, stderr, ok) = bash(&server, &script, directory.path());
    assert!(ok, "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .collect();
    let sorted: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|line| *line == "apple" || *line == "pear")
        .collect();
    // The terminal echoes the input first, then sort prints it in order.
    assert_eq!(
        sorted,
        ["pear", "apple", "apple", "pear"],
        "{stdout:?} in {:?}",
        started.elapsed()
    );
    assert!(stderr.contains("exit code 0"), "{stderr}");
}
