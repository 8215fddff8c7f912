//! libFuzzer entry of the `exec_frames` target; the body is [`trident_fuzz::exec_frames::run`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trident_fuzz::exec_frames::run(data));
