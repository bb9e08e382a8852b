//! herald's test kit: broker fixtures and the transport conformance suite.
//!
//! # Highlights
//! * [`fixtures`]: broker addresses from `HERALD_*` variables, else testcontainers when
//!   Docker answers, else a loud failure that says how to start one — never a silent skip.
//! * [`conformance`]: one suite every transport must pass (memory, Kafka, NATS), in the
//!   manner of Watermill's pub/sub tests; [`conformance_tests!`] expands it into one
//!   `#[tokio::test]` per case.
//! * [`unique`]: fresh topic / group / key-prefix names, so tests run in parallel.
//!
//! # Non-goals
//! Mocks of brokers: the suite runs against the real thing.
//!
//! # Example
//! ```no_run
//! use herald_testkit::conformance::{Features, TransportFactory};
//! // In an adapter's tests/conformance.rs:
//! // herald_testkit::conformance_tests!(my_factory());
//! ```
//!
//! # Features
//! This crate has no optional features.

pub mod conformance;
pub mod fixtures;

use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh name: `<prefix>-<pid>-<counter>-<random>`, safe as a Kafka topic, NATS
/// stream/consumer name (after the adapter's mapping), Redis key prefix and SQL suffix.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}-{n}-{}", std::process::id(), &r[..8])
}
