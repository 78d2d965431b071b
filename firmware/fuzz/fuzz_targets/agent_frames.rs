//! Fuzz target: see `agent_checks::agent_frames`.
#![no_main]

#[path = "../agent_checks.rs"]
mod agent_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| agent_checks::agent_frames(data));
