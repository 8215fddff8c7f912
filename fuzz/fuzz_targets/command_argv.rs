//! libFuzzer entry of the `command_argv` target; the body is [`trident_fuzz::command_argv::run`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trident_fuzz::command_argv::run(data));
