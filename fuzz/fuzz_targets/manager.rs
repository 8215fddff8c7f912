//! libFuzzer entry of the `manager` target; the body is [`trident_fuzz::manager::run`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trident_fuzz::manager::run(data));
