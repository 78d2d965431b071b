//! Fuzz target: see `checks::bfd`.
#![no_main]

// Each target calls one of the shared checks.
#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::bfd(data));
