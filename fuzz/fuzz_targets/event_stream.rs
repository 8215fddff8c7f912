//! libFuzzer entry of the `event_stream` target; the body is [`trident_fuzz::event_stream::run`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trident_fuzz::event_stream::run(data));
