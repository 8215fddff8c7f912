//! `trident`: the Trident server binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("{}", trident_server::PLANNED_USAGE);
    ExitCode::from(2)
}
