//! Runnable herald examples, and the modules they share.
//!
//! Binaries (run with `cargo run -p herald-examples --bin <name>`):
//!
//! 1. `quickstart` — publish typed events and handle them through the router, in memory.
//! 2. `order-saga` — orders, inventory, payments and shipping as separate services,
//!    choreographed and orchestrated (a saga with compensation), with a CQRS read model,
//!    dedupe, the dead-letter queue and request/reply; on memory, Kafka or NATS. See
//!    [`order`].
//!
//! # Features
//! This crate has no optional features; it builds the `herald` facade with `full`.

pub mod order;
