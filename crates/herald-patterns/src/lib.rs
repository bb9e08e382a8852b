//! Event-driven patterns on herald's contract: an event bus, sagas with compensation,
//! request/reply orchestration, CQRS projections, upcasting, and the transactional outbox.
//!
//! Everything here is built from `herald-core` pieces — `Publisher`, `Subscriber`,
//! `Router`, typed `Event`s through a `Codec` — so it runs unchanged on the in-memory
//! transport, Kafka and NATS JetStream, behind the same middleware as any other route.
//!
//! # Highlights
//! * [`bus::EventBus`]: modules publish typed domain events and react independently, each
//!   in its own consumer group; a failing module goes through the dead-letter path alone.
//! * [`saga`]: a typed state machine per correlation id, driven by events and issuing
//!   commands, with per-step timeouts and compensation in reverse order. State persists in
//!   a [`saga::SagaStore`] (memory, PostgreSQL) with optimistic concurrency, so two
//!   instances cannot advance a saga twice and a crashed instance's sagas — deadlines
//!   included — resume on another.
//! * [`request::Requester`]: await a reply event for a command (correlation id + timeout).
//! * [`cqrs`]: a command side that validates and emits events; projections that build read
//!   models (memory, PostgreSQL), idempotent per message id or per position, resumable,
//!   and rebuildable by replaying a topic in a fresh consumer group.
//! * [`upcast`]: chains that turn old event versions into the current one before a handler
//!   sees them, for changes Avro resolution cannot express.
//! * [`outbox`]: the transactional outbox and its relay.
//!
//! # Non-goals
//! * Event sourcing as the system of record: projections read topics, they do not own an
//!   event store.
//! * Distributed transactions: sagas trade atomicity for compensation.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_core::{Event, memory::MemoryBroker};
//! use herald_patterns::bus::EventBus;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderPlaced { order: String }
//! impl Event for OrderPlaced { const TYPE: &'static str = "shop.OrderPlaced"; const VERSION: u32 = 1; }
//!
//! let broker = MemoryBroker::new();
//! let bus = EventBus::builder(broker.clone()).name("shop").build();
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! bus.module("inventory", move |m| {
//!     let tx = tx.clone();
//!     m.on(move |ev: OrderPlaced, _| {
//!         let tx = tx.clone();
//!         async move { tx.send(ev.order).ok(); Ok(()) }
//!     });
//! });
//! let running = bus.start(broker.clone());
//! bus.publish_keyed("o-1", &OrderPlaced { order: "o-1".into() }).await?;
//! assert_eq!(rx.recv().await.as_deref(), Some("o-1"));
//! running.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Event bus
//! One topic per event type, one consumer group per module, middleware per route. See
//! [`bus`].
//!
//! # Sagas
//! Choreography needs no code from this crate — services react to each other's events
//! with plain routes (or bus modules). Orchestration does: a [`saga::Saga`] definition
//! run by a [`saga::SagaEngine`]. See [`saga`].
//!
//! # Request/reply
//! See [`request`].
//!
//! # CQRS
//! See [`cqrs`].
//!
//! # Upcasting
//! See [`upcast`].
//!
//! # Middleware
//! Every component takes a [`Middleware`] that wraps each of its routes — give it the
//! core retry / dead-letter / dedupe stack so the patterns follow the same policy as any
//! other handler.
//!
//! # Features
//! This crate has no optional features: the PostgreSQL stores are always built.

pub mod bus;
pub mod cqrs;
mod dispatch;
pub mod outbox;
pub mod pg;
pub mod request;
pub mod saga;
pub mod upcast;

use std::{future::Future, time::Duration};

pub use dispatch::Middleware;

/// Polls `f` until it returns `Some` or `deadline` passes (every 20 ms): for tests and
/// examples that wait on a store or read-model condition instead of sleeping.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let n = std::sync::atomic::AtomicU32::new(0);
/// let got = herald_patterns::wait_for(std::time::Duration::from_secs(1), || async {
///     let v = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///     (v >= 3).then_some(v)
/// }).await;
/// assert_eq!(got, Some(3));
/// # }
/// ```
pub async fn wait_for<T, F, Fut>(deadline: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
