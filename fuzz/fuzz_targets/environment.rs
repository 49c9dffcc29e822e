//! libFuzzer over the `ENGINE_*` environment parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| engine_fuzz::environment(data));
