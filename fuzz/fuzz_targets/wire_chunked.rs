#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bourse_fuzz::wire_chunked(data));
