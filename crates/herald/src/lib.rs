//! herald: event-driven services on Apache Kafka and NATS JetStream, with one contract.
//!
//! This is the facade: the only crate a service needs in its `Cargo.toml`. It re-exports
//! [`herald_core`] and, behind features, the adapters, the Avro codec, the dedupe stores
//! and the patterns.
//!
//! # Highlights
//! * One [`Publisher`] / [`Subscriber`] contract, at-least-once, per-key order; the
//!   in-memory transport, Kafka (`rdkafka`) and NATS JetStream (`async-nats`) pass the same
//!   conformance suite.
//! * A [`Router`] running `tower` handlers behind middleware written once: retry with
//!   backoff, dead-letter queue, idempotent-consumer dedupe, circuit breaker, timeout,
//!   panic isolation.
//! * Typed, versioned [`Event`]s as JSON or Avro (Confluent wire format).
//!
//! # Non-goals
//! Exactly-once delivery (herald gives at-least-once delivery and exactly-once *effects*
//! through dedupe), and broker administration beyond what a service needs.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald::{memory::MemoryBroker, Codec, Event, Inbound, JsonCodec, Publisher, Router, typed};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderCreated { order_id: String }
//! impl Event for OrderCreated { const TYPE: &'static str = "OrderCreated"; const VERSION: u32 = 1; }
//!
//! let broker = MemoryBroker::new();
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let running = Router::new()
//!     .route("billing", "orders", "billing", typed(JsonCodec, move |ev: OrderCreated, _: Inbound| {
//!         let tx = tx.clone();
//!         async move { tx.send(ev.order_id).ok(); Ok(()) }
//!     }))
//!     .start(broker.clone());
//! let msg = JsonCodec.to_message(&OrderCreated { order_id: "o-1".into() }).await?;
//! broker.publish("orders", vec![msg.with_key("o-1")]).await?;
//! assert_eq!(rx.recv().await.as_deref(), Some("o-1"));
//! running.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Transports
//! [`memory`] always; `kafka` and `nats` behind features. See [`herald_core::transport`].
//!
//! # Features
//! | feature | effect | default |
//! |---|---|---|
//! | `kafka` | the Kafka adapter, [`kafka`] | no |
//! | `nats` | the NATS JetStream adapter, [`nats`] | no |
//! | `avro` | the Avro codec and schema registries, [`avro`] | no |
//! | `dedupe` | dedupe stores ([`dedupe`]), memory backend | no |
//! | `redis` | the Redis dedupe store | no |
//! | `postgres` | the PostgreSQL dedupe store and inbox | no |
//! | `patterns` | event bus, saga, CQRS, outbox, [`patterns`] | no |
//! | `otel` | OpenTelemetry propagation and consumer-lag readers, [`otel`] | no |
//! | `full` | all of the above | no |

#![cfg_attr(docsrs, feature(doc_cfg))]

pub use herald_core::*;

#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub use herald_kafka as kafka;

#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use herald_nats as nats;

#[cfg(feature = "avro")]
#[cfg_attr(docsrs, doc(cfg(feature = "avro")))]
pub use herald_avro as avro;

#[cfg(feature = "dedupe")]
#[cfg_attr(docsrs, doc(cfg(feature = "dedupe")))]
pub use herald_dedupe as dedupe;

#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub use herald_otel as otel;

#[cfg(feature = "patterns")]
#[cfg_attr(docsrs, doc(cfg(feature = "patterns")))]
pub use herald_patterns as patterns;

/// The README's Rust snippets run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
