//! Fuzzes the HTTP upgrade parser (see `surge::wire::fuzzing`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| surge::wire::fuzzing::upgrade_parse(data));
