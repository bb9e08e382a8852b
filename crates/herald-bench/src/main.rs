//! Placeholder for the throughput harness.
fn main() {}
