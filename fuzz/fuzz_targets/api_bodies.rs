//! libFuzzer entry of the `api_bodies` target; the body is [`trident_fuzz::api_bodies::run`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trident_fuzz::api_bodies::run(data));
