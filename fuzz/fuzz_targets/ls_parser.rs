//! libFuzzer entry of the `ls_parser` target; the body is [`trident_fuzz::ls_parser::run`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trident_fuzz::ls_parser::run(data));
