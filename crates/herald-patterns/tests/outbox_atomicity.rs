//! 10 000 events written in 1 000 transactions, 100 of which roll back: exactly the
//! 9 000 committed events arrive, none of the rolled-back ones, in order per key.
//!
//! Real PostgreSQL; here the relay publishes to the in-memory transport (the test is
//! about the outbox and the relay's logic). `outbox_nats.rs` runs the same scenario end
//! to end through NATS JetStream.

mod outbox_support;

use std::sync::Arc;

use herald_core::memory::MemoryBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_committed_events_arrive_in_key_order() {
    let broker = MemoryBroker::new();
    outbox_support::committed_only(
        "outbox-10k-memory",
        "orders",
        Arc::new(broker.clone()),
        &broker,
    )
    .await;
}
