//! Apache Kafka for herald: [`KafkaPublisher`] and [`KafkaSubscriber`] implement
//! herald-core's [`Publisher`](herald_core::Publisher) and
//! [`Subscriber`](herald_core::Subscriber) on rdkafka (librdkafka), so a service moves
//! from the in-memory transport to Kafka by changing its construction code only.
//!
//! Services depend on the `herald` facade (feature `kafka`), which re-exports this crate;
//! adapter and middleware authors depend on `herald-core`.
//!
//! # Highlights
//! * **Durable publish**: an idempotent producer with `acks=all`; a batch pipelines
//!   (every message is queued, then all delivery reports are awaited); typed errors for
//!   a message too large, an unknown topic, authorization and the delivery timeout, which
//!   bounds every wait.
//! * **At-least-once consume, in order per partition**: offsets are committed only
//!   after the handler acknowledged, never past an unfinished offset, asynchronously on
//!   an interval (not per message); in-place redelivery on `nack(delay)`; pause/resume
//!   backpressure at `max_in_flight`; commit on revocation and on close.
//! * **CloudEvents Kafka binding**: `ce_id`, `ce_type`, … headers, `ce_specversion`
//!   always written, the message id restored on consume (see [`wire`]).
//! * **Every librdkafka property** passes through ([`KafkaConfig::set`], the builders'
//!   `set`): TLS, SASL, tuning; secrets are redacted in `Debug`.
//! * [`KafkaAdmin::ensure_topic`] creates a topic and its `.dlq` if missing.
//!
//! # Non-goals
//! * Retry, dead-lettering, dedupe and circuit breaking: they are herald-core
//!   middleware, written once for every transport; this crate translates only.
//! * Kafka transactions / exactly-once: delivery is at-least-once; exactly-once effects
//!   come from the dedupe middleware and a transactional store.
//! * Administration beyond creating (and deleting) topics.
//!
//! # Quick start
//! ```no_run
//! use herald_core::{Inbound, Message, Publisher, Router, RouteConfig, handler_fn};
//! use herald_kafka::{KafkaAdmin, KafkaConfig, KafkaPublisher, KafkaSubscriber};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = KafkaConfig::new("127.0.0.1:9092");
//! // TLS / SASL / any librdkafka property:
//! // let config = config.set("security.protocol", "SASL_SSL").set("sasl.password", "…");
//!
//! // Provision the topic and its dead-letter topic.
//! KafkaAdmin::new(&config)?.ensure_topic("orders", 4, 1).await?;
//!
//! // Publish: resolves when every message is acknowledged by the broker.
//! let publisher = KafkaPublisher::from_config(config.clone()).build()?;
//! publisher
//!     .publish("orders", vec![Message::new(r#"{"order_id":"o-1"}"#).with_key("o-1")])
//!     .await?;
//!
//! // Consume with the router: 8 handlers at once, per-key order kept.
//! let subscriber = KafkaSubscriber::from_config(config).build()?;
//! let router = Router::new().route_with(
//!     RouteConfig::new("billing", "orders", "billing").concurrency(8),
//!     handler_fn(|inbound: Inbound| async move {
//!         println!("{} {:?}", inbound.message.id, inbound.message.payload);
//!         Ok(())
//!     }),
//! );
//! router.run(subscriber, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! publisher.close().await?;
//! # Ok(()) }
//! ```
//! Swapping `KafkaPublisher`/`KafkaSubscriber` for `herald_core::memory::MemoryBroker`
//! is the only change needed to run the same service in memory.
//!
//! # Publishing
//! Keys choose partitions with librdkafka's default partitioner; batching (`linger`,
//! `batch_messages`, `batch_bytes`) and the delivery timeout are configurable. See
//! [`KafkaPublisher`] and [`PublisherBuilder`].
//!
//! # Consuming
//! One [`subscribe`](herald_core::Subscriber::subscribe) is one consumer-group member.
//! Commits, redelivery, backpressure, rebalances and shutdown are described in
//! [`subscriber`]; the settings a broker may need (`session.timeout.ms` 6 s and
//! `heartbeat.interval.ms` 1 s by default, for fast joins) in [`SubscriberBuilder`].
//!
//! # Configuration
//! [`KafkaConfig`] holds the brokers and librdkafka properties shared by all clients;
//! the builders add what herald reads itself. See [`config`].
//!
//! # Errors
//! Publishing, subscribing and acknowledging return herald-core's `PublishError`,
//! `SubscribeError` and `AckError` with librdkafka's codes translated to their kinds;
//! building a client returns [`ConfigError`], topic administration [`AdminError`]. See
//! [`error`].
//!
//! # Features
//! This crate has no optional features. rdkafka is built with `ssl` and `zstd` and
//! bundles librdkafka 2.12.

pub mod admin;
pub mod config;
mod context;
pub mod error;
pub mod publisher;
pub mod subscriber;
mod tracker;
pub mod wire;

#[doc(inline)]
pub use admin::{Ensured, KafkaAdmin};
#[doc(inline)]
pub use config::KafkaConfig;
pub use error::{AdminError, AdminErrorKind, ConfigError, ConfigErrorKind};
#[doc(inline)]
pub use publisher::{KafkaPublisher, PublisherBuilder};
#[doc(inline)]
pub use subscriber::{KafkaSubscriber, SubscriberBuilder, SubscriberSettings};

/// Result alias of this crate's fallible constructors.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;
