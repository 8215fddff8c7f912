//! libFuzzer entry of the `tracker` target; the body is [`trident_fuzz::tracker::run`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trident_fuzz::tracker::run(data));
