//! Dedupe stores for herald's idempotent consumers: memory, Redis and PostgreSQL.
//!
//! Each backend implements herald-core's [`DedupeStore`] contract (`begin` → New /
//! Duplicate / InProgress, `complete`, `abandon`, with fencing tokens and leases) and
//! plugs into the [dedupe middleware](herald_core::middleware::dedupe).
//!
//! # Highlights
//! * [`memory::MemoryDedupe`] — a `moka` cache: lease expiry for claims, TTL retention
//!   for completed keys. One process; tests.
//! * [`redis::RedisDedupe`] — `SET key token NX PX lease` to claim, Lua to complete or
//!   abandon only with the current token, pipelined batches, configurable key prefix;
//!   [`redis::atomic`] applies a handler's Redis writes together with the "done" mark.
//! * [`postgres::PgDedupe`] — an inbox table with an idempotent migration, lease
//!   takeover in one `INSERT … ON CONFLICT`, retention purge, and the **transactional
//!   form** ([`postgres::transactional`], [`postgres::PgDedupe::begin_in`]): the inbox row
//!   commits in the handler's own transaction — exactly-once effects on that database.
//!
//! # Non-goals
//! * Exactly-once effects outside the store's database: the plain middleware gives
//!   "once, except when a worker dies between its effects and `complete`"; see the
//!   middleware's docs. Publish side effects through the transactional outbox
//!   (`herald-patterns`).
//! * Schema management beyond the one inbox table.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use herald_core::{handler_fn, memory::MemoryBroker, Inbound, Message, Publisher, Router};
//! use herald_core::middleware::dedupe::DedupeLayer;
//! use herald_dedupe::memory::MemoryDedupe;
//! use tower::Layer;
//!
//! let broker = MemoryBroker::new();
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let handler = DedupeLayer::new(Arc::new(MemoryDedupe::default())).layer(handler_fn(
//!     move |i: Inbound| {
//!         let tx = tx.clone();
//!         async move { tx.send(i.message.id.clone()).ok(); Ok(()) }
//!     },
//! ));
//! let running = Router::new().route("bill", "orders", "billing", handler).start(broker.clone());
//! let msg = Message::new("order 1");
//! broker.publish("orders", vec![msg.clone(), msg.clone()]).await?; // published twice
//! assert_eq!(rx.recv().await.as_deref(), Some(msg.id.as_str()));
//! running.shutdown().await?;
//! assert!(rx.try_recv().is_err()); // handled once
//! # Ok(()) }
//! ```
//!
//! # Leases, tokens and retention
//! A claim holds for its lease; a worker that dies lets the lease run out and the next
//! redelivery claims the key. Every claim carries a unique token, and only that token can
//! complete or abandon it. Completed keys are kept for the backend's retention. See
//! [`herald_core::dedupe`].
//!
//! # Backends
//! See [`memory`], [`redis`] and [`postgres`].
//!
//! # Features
//! | feature | effect | default |
//! |---|---|---|
//! | `memory` | [`memory::MemoryDedupe`] (moka) | yes |
//! | `redis` | [`redis::RedisDedupe`] and [`redis::atomic`] (redis 1.8, `ConnectionManager`) | no |
//! | `postgres` | [`postgres::PgDedupe`] and [`postgres::transactional`] (tokio-postgres 0.7, deadpool-postgres 0.14) | no |
//! | `full` | all of the above | no |
//!
//! [`DedupeStore`]: herald_core::dedupe::DedupeStore

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "redis", feature = "postgres"))]
mod batch;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod handler;

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub mod memory;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;

pub mod probe;

#[doc(no_inline)]
pub use herald_core::dedupe::{Claim, ClaimToken, DedupeError, DedupeErrorKind, DedupeStore};

#[cfg(feature = "memory")]
#[doc(inline)]
pub use memory::{MemoryDedupe, MemoryDedupeConfig};

#[cfg(feature = "postgres")]
#[doc(inline)]
pub use postgres::{PgDedupe, PgDedupeConfig};

#[cfg(feature = "redis")]
#[doc(inline)]
pub use redis::{RedisDedupe, RedisDedupeConfig};
