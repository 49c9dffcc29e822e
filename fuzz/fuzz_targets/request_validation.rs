//! libFuzzer over the request validation every backend runs before anything is claimed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| engine_fuzz::request_validation(data));
