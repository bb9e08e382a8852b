//! The NATS JetStream adapter of herald: herald-core's
//! [`Publisher`](herald_core::Publisher) and [`Subscriber`](herald_core::Subscriber)
//! contract on `async-nats`.
//!
//! Services normally use it through the `herald` facade (feature `nats`); adapter and
//! middleware authors depend on `herald-core`.
//!
//! # Highlights
//! * One stream per topic, one durable pull consumer per consumer group, decided once in
//!   [`mapping`]: topic `orders` is stream `orders` over subjects `orders.*`, key `o-1` is
//!   subject `orders.o-1`, group `billing` is consumer `billing`.
//! * [`NatsPublisher`]: pipelined JetStream publishing with a bounded number of PubAcks
//!   in flight; `Nats-Msg-Id` = message id, so the server's duplicate window drops a
//!   republished message.
//! * [`NatsSubscriber`]: batched pulls, explicit acks, `nack(delay)` as a NAK with delay,
//!   attempt numbers from the server's delivery count, AckProgress heartbeats for slow
//!   handlers, a graceful close that returns unhandled messages and confirms the acks
//!   with one round trip.
//! * CloudEvents NATS binding (`ce-id`, `ce-type`, … headers), exact key round-trip,
//!   binary-safe header values.
//! * Provisioning with typed errors: [`NatsBroker::ensure_topic`] creates a topic's stream
//!   and its dead-letter stream (`<topic>.dlq`), refusing name collisions and subject
//!   overlaps.
//! * [`NatsNotifier`]: at-most-once core-NATS notifications for signals that may be lost.
//! * Credentials files, nkeys, tokens, user/password and (mutual) TLS; secrets redacted.
//!
//! # Non-goals
//! * Policy. Retry budgets, dead-lettering, dedupe and circuit breaking are herald-core
//!   middleware; this crate only translates (it reports attempts, honours nack delays and
//!   provides the DLQ stream).
//! * Push consumers, ordered consumers, key-value and object stores: use `async-nats`
//!   directly through [`NatsBroker::client`] / [`NatsBroker::jetstream`].
//! * Administration beyond what a service needs (its topics' streams and its groups'
//!   consumers).
//!
//! # Quick start
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_core::{handler_fn, Inbound, Message, Publisher, Router};
//! use herald_nats::{NatsBroker, NatsConfig};
//!
//! // Connect (streams are created on first use; see `NatsConfig::auto_provision`).
//! let broker = NatsBroker::connect(NatsConfig::new("nats://127.0.0.1:4222")).await?;
//! broker.ensure_topic("orders").await?; // streams `orders` and `orders_dlq`
//!
//! // Consume: group "billing" is the durable consumer `billing` of stream `orders`.
//! let router = Router::new().route("bill", "orders", "billing",
//!     handler_fn(|inbound: Inbound| async move {
//!         println!("{} (attempt {})", inbound.message.id, inbound.attempt);
//!         Ok(())
//!     }));
//! let running = router.start(broker.clone());
//!
//! // Publish: resolves once JetStream stored the message (PubAck).
//! broker.publish("orders", vec![Message::new(r#"{"order":1}"#).with_key("o-1")]).await?;
//!
//! running.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Topics, keys and groups
//! Topic `t` → stream `t` with `.` and other unsafe characters replaced by `_`, capturing
//! `t.*`; key → the last subject token (or a hash of it, with the key in `herald-key`);
//! group → durable consumer. Collisions are refused, not merged. See [`mapping`].
//!
//! # Delivery semantics
//! At-least-once. A delivery is acknowledged only when the handler's result is settled;
//! unacknowledged deliveries come back after `ack_wait` (or at once when dropped), nacked
//! ones after their delay, with [`Delivery::attempt`](herald_core::Delivery::attempt) counting
//! every delivery. With one member per group, messages arrive in publish order (one
//! stream, one consumer sequence) — per key too — until one is nacked or redelivered;
//! the router then keeps per-key order within the member. Members of a group compete for
//! messages regardless of key (NATS has no partitions), so with several members per-key
//! order across the group is not guaranteed. The server's `max_deliver` is
//! unlimited by default so that the dead-letter decision stays with herald's middleware
//! (see [`ConsumerSettings::max_deliver`](config::ConsumerSettings::max_deliver)).
//! How acks are confirmed is a throughput / duplicate trade-off: see
//! [`AckMode`](config::AckMode). See [`NatsSubscriber`].
//!
//! # Publishing
//! Pipelined, bounded, typed errors, duplicate-window deduplication. See [`NatsPublisher`].
//!
//! # Configuration
//! [`NatsConfig`] mirrors the server objects: connection, stream settings (file storage
//! and a 2-minute duplicate window by default), consumer settings (`ack_wait`,
//! `max_deliver`, `backoff`, progress heartbeats, ack mode), publish settings. See
//! [`config`].
//!
//! # Errors
//! Publishing, subscribing and acking use herald-core's errors; connecting and
//! provisioning have [`ConnectError`] and [`ProvisionError`]. See [`error`].
//!
//! # Features
//! This crate has no optional features. It builds `async-nats` with its defaults and
//! works with nats-server 2.9 and later.

mod broker;
pub mod config;
pub mod error;
pub mod mapping;
mod notifier;
mod provision;
mod publisher;
mod subscriber;

#[doc(inline)]
pub use broker::NatsBroker;
#[doc(inline)]
pub use config::NatsConfig;
pub use error::{ConnectError, ConnectErrorKind, ProvisionError, ProvisionErrorKind};
pub use notifier::{NatsNotifier, Notifications};
pub use publisher::NatsPublisher;
pub use subscriber::NatsSubscriber;

/// Re-exported so callers can reach the underlying client without a version clash.
pub use async_nats;
