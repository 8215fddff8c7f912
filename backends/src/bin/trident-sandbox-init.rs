//! The local backend's sandbox init, as a program of its own.
//!
//! The sandbox is entered by re-executing a program rather than by running Rust code in a child
//! forked from the (multi-threaded) server: after `fork` in a threaded process only
//! async-signal-safe calls are allowed, and an init that lives as long as a runner needs far more
//! than that (allocation, JSON, poll loops). See `trident_backends::local::init`.

fn main() {
    trident_backends::local::init::run_if_requested();
    eprintln!(
        "trident-sandbox-init is started by Trident's local backend (argument {}); it is not meant to be run by hand",
        trident_backends::local::init::INIT_ARG
    );
    std::process::exit(2);
}
