//! Relay load generator (being written).
fn main() {}
