//! libFuzzer entry of the `workspace_paths` target; the body is [`trident_fuzz::workspace_paths::run`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trident_fuzz::workspace_paths::run(data));
