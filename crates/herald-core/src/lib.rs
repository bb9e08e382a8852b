//! The core of herald: the message model, the `Publisher`/`Subscriber` contract, the
//! router, the middleware, and the in-memory transport.
//!
//! Adapter and middleware authors depend on this crate; services depend on the `herald`
//! facade, which re-exports it.
//!
//! # Highlights
//! * One contract for every transport — [`Publisher`], [`Subscriber`], [`Delivery`] —
//!   with at-least-once delivery, per-key order and explicit `ack`/`nack(delay)`.
//! * A [`Router`] that runs `tower` handlers with bounded concurrency, per-key order and
//!   a graceful drain, and defines once what a handler result means.
//! * Middleware written once for every transport: retry with backoff, dead-letter
//!   routing, timeout, circuit breaker, panic isolation, dedupe ([`middleware`]).
//! * Typed, versioned [`Event`]s through a [`Codec`] ([`JsonCodec`] here; Avro in
//!   `herald-avro`), carried with CloudEvents attributes in binary content mode.
//! * The [`memory`] transport: a real adapter that passes the same conformance suite as
//!   Kafka and NATS.
//!
//! # Non-goals
//! * Exactly-once delivery: delivery is at-least-once; exactly-once *effects* come from
//!   the dedupe middleware and a transactional store.
//! * Broker administration beyond creating what a service needs.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_core::{memory::MemoryBroker, typed, Codec, Event, Inbound, JsonCodec, Publisher, Router};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderCreated { order_id: String }
//! impl Event for OrderCreated { const TYPE: &'static str = "OrderCreated"; const VERSION: u32 = 1; }
//!
//! let broker = MemoryBroker::new();
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let router = Router::new().route("billing", "orders", "billing",
//!     typed(JsonCodec, move |ev: OrderCreated, _: Inbound| {
//!         let tx = tx.clone();
//!         async move { tx.send(ev.order_id).ok(); Ok(()) }
//!     }));
//! let running = router.start(broker.clone());
//! let msg = JsonCodec.to_message(&OrderCreated { order_id: "o-1".into() }).await?.with_key("o-1");
//! broker.publish("orders", vec![msg]).await?;
//! assert_eq!(rx.recv().await.as_deref(), Some("o-1"));
//! running.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Messages
//! A [`Message`] has a UUIDv7 id stable across retries, the DLQ and replay; an ordering
//! key; ordered multimap [`Headers`]; and a payload. See [`message`].
//!
//! # Delivery semantics
//! At-least-once, acknowledged after the handler finished, per-key order. See
//! [`Publisher`] and [`Subscriber`].
//!
//! # Errors
//! Each operation has an `Error<Kind>` ([`PublishError`], [`SubscribeError`],
//! [`AckError`], [`CodecError`]); handler failures are [`HandlerError`]s classified
//! Transient / Permanent / Fatal. See [`error`].
//!
//! # Features
//! This crate has no optional features.

pub mod codec;
pub mod dedupe;
pub mod error;
pub mod handler;
pub mod memory;
pub mod message;
pub mod middleware;
pub mod propagation;
pub mod retry_topics;
pub mod router;
pub mod transport;

#[doc(inline)]
pub use codec::{Codec, CodecError, CodecErrorKind, Event, JsonCodec};
pub use error::{
    AckError, AckErrorKind, BoxError, Error, ErrorClass, HandlerError, PublishError,
    PublishErrorKind, SubscribeError, SubscribeErrorKind,
};
#[doc(inline)]
pub use handler::{Inbound, RouteInfo, handler_fn, typed};
#[doc(inline)]
pub use message::{HeaderName, Headers, Message};
#[doc(inline)]
pub use router::{RouteConfig, Router, RouterError, Running};
#[doc(inline)]
pub use transport::{
    Acker, Delivery, Origin, Publisher, StartFrom, SubscribeSpec, Subscriber, Subscription,
    dlq_topic, settled,
};
