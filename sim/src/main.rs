//! `trident-sim`: runs simulation seeds.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "trident-sim: the simulation harness is not built yet.\n\
         Planned usage: trident-sim --seed N | --seeds A..B [--minutes M] [--faults kind,...] [--trace]"
    );
    ExitCode::from(2)
}
