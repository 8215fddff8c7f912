//! libFuzzer entry of the `client_frames` target; the body is [`trident_fuzz::client_frames::run`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trident_fuzz::client_frames::run(data));
