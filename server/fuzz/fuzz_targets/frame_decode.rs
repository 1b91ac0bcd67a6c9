//! Fuzzes the frame header decoder and unmasking (see `surge::wire::fuzzing`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| surge::wire::fuzzing::frame_decode(data));
