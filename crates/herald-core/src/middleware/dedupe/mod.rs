//! Dedupe: idempotent consumers over a [`DedupeStore`].
//!
//! [`Dedupe`] claims a key for each delivery before the handler runs, and records it as
//! done after the handler succeeded, so a redelivered message is acknowledged without
//! running the handler twice. The key is `"{group}:{message id}"` by default (the id is
//! stable across retries, the dead-letter queue and replay), or whatever
//! [`DedupeLayer::key_fn`] extracts — e.g. a business idempotency key.
//!
//! | store says | the layer does | the router then |
//! |---|---|---|
//! | [`Claim::New`] | runs the handler | — |
//! | … handler `Ok`, `complete` ok | returns `Ok(())` | acks |
//! | … handler `Ok`, `complete` fails | Transient error, `redeliver_after(unavailable delay)` | nacks |
//! | … handler `Err(e)` | `abandon`s the claim, returns `e` | retries / dead-letters `e` |
//! | [`Claim::Duplicate`] | returns `Ok(())` without calling the handler | acks |
//! | [`Claim::InProgress`] | Transient error, `redeliver_after(in-progress delay)` | nacks |
//! | store unavailable or slow | Transient error, `redeliver_after(unavailable delay)` | nacks |
//!
//! The layer never acknowledges a message it holds no claim for: a store that cannot be
//! reached means "unknown", and the broker redelivers when it is back.
//!
//! # The gap the transactional form closes
//! If the handler's effects are done but `complete` fails (store down, process killed,
//! lease lost), the key is not recorded as done, and the redelivery runs the handler
//! again. The dedupe store narrows at-least-once to "once, except after a crash in that
//! window". Only a store that commits the "seen" mark **in the same transaction** as the
//! handler's effects closes the window — the PostgreSQL backend's transactional form in
//! `herald-dedupe` (`transactional(...)`), or the Redis backend's atomic completion for
//! effects that are Redis writes.
//!
//! A handler dropped mid-flight (panic unwinding through the layer, drain deadline,
//! cancellation) releases its claim with a background `abandon`, so the redelivery need
//! not wait for the lease to run out.
//!
//! # Where it goes in the stack
//! ```text
//! tracing → metrics → dead-letter → dedupe → circuit breaker → timeout → retry → handler
//! ```
//! * Inside dedupe, in-process retries run under one claim: the lease must cover the
//!   handler's worst case including those retries and timeouts.
//! * Put dead-lettering **outside** dedupe. Dedupe then sees the spent error, abandons
//!   the claim, and a later replay of the dead letter (same message id) is claimed and
//!   handled. With dead-lettering inside, dedupe would see `Ok` and mark the key done, and
//!   the replay would be acknowledged as a duplicate.
//!
//! # Metrics
//! Counters through the [`metrics`](https://docs.rs/metrics) facade, labelled `handler`
//! (the route's name):
//!
//! | name | counts |
//! |---|---|
//! | `herald_dedupe_claims_total` | deliveries that got a new claim |
//! | `herald_dedupe_duplicates_total` | deliveries acknowledged as duplicates |
//! | `herald_dedupe_in_progress_total` | deliveries sent back because another worker held the key |
//! | `herald_dedupe_lease_expiries_total` | leases seen to have run out; label `seen_by` = `holder` (complete/abandon got `LeaseLost`) or `taker` (a claim took over an expired lease — only where the backend can tell) |
//! | `herald_dedupe_store_errors_total` | failed store calls; label `op` = `begin` / `complete` / `abandon` |
//!
//! # Examples
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use herald_core::{handler_fn, Inbound, Message, Origin, RouteInfo};
//! use herald_core::dedupe::DedupeStore;
//! use herald_core::middleware::dedupe::DedupeLayer;
//! use tower::{Layer, ServiceExt};
//! # let store: Arc<dyn DedupeStore> = Arc::new(doc_store::Store::default());
//!
//! let handler = DedupeLayer::new(store).layer(handler_fn(|_: Inbound| async { Ok(()) }));
//! let route = Arc::new(RouteInfo { handler: "h".into(), topic: "t".into(), group: "g".into() });
//! let msg = Message::new("x");
//! let first = Inbound::new(msg.clone(), Origin::new("t"), 1, route.clone());
//! handler.clone().oneshot(first).await.unwrap();      // runs the handler
//! let again = Inbound::new(msg, Origin::new("t"), 2, route);
//! handler.oneshot(again).await.unwrap();              // acked as a duplicate
//! # }
//! # mod doc_store {
//! #   use std::{collections::HashMap, sync::Mutex, time::Duration};
//! #   use futures::future::BoxFuture;
//! #   use herald_core::dedupe::*;
//! #   #[derive(Default)] pub struct Store(Mutex<HashMap<String, Option<ClaimToken>>>);
//! #   impl DedupeStore for Store {
//! #     fn begin<'a>(&'a self, key: &'a str, _: Duration) -> BoxFuture<'a, Result<Claim, DedupeError>> {
//! #       let mut m = self.0.lock().unwrap();
//! #       let c = match m.get(key) { Some(Some(_)) => Claim::InProgress, Some(None) => Claim::Duplicate,
//! #         None => { let t = ClaimToken::generate(key); m.insert(key.into(), Some(t.clone())); Claim::New(t) } };
//! #       Box::pin(async move { Ok(c) })
//! #     }
//! #     fn complete<'a>(&'a self, t: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
//! #       self.0.lock().unwrap().insert(t.key().into(), None); Box::pin(async { Ok(()) })
//! #     }
//! #     fn abandon<'a>(&'a self, t: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
//! #       self.0.lock().unwrap().remove(t.key()); Box::pin(async { Ok(()) })
//! #     }
//! #   }
//! # }
//! ```
//!
//! [`DedupeStore`]: crate::dedupe::DedupeStore
//! [`Claim::New`]: crate::dedupe::Claim::New
//! [`Claim::Duplicate`]: crate::dedupe::Claim::Duplicate
//! [`Claim::InProgress`]: crate::dedupe::Claim::InProgress

mod layer;

pub mod future;

use std::{
    fmt,
    future::Future,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tower_service::Service;

pub use layer::{DedupeLayer, KeyFn, MissingKey, default_key};

use self::future::ResponseFuture;
use crate::{
    ErrorClass, HandlerError, Inbound,
    dedupe::{Claim, ClaimToken, DedupeError, DedupeErrorKind, DedupeStore},
};

/// Metric names, for dashboards and tests.
pub mod metric_names {
    /// Deliveries that got a new claim.
    pub const CLAIMS: &str = "herald_dedupe_claims_total";
    /// Deliveries acknowledged as duplicates.
    pub const DUPLICATES: &str = "herald_dedupe_duplicates_total";
    /// Deliveries sent back because another worker held the key.
    pub const IN_PROGRESS: &str = "herald_dedupe_in_progress_total";
    /// Leases seen to have run out.
    pub const LEASE_EXPIRIES: &str = "herald_dedupe_lease_expiries_total";
    /// Failed store calls.
    pub const STORE_ERRORS: &str = "herald_dedupe_store_errors_total";
}

/// Dedupes the inner handler over a [`DedupeStore`]; see the [module docs](self).
#[derive(Clone)]
pub struct Dedupe<S> {
    inner: S,
    config: Arc<DedupeLayer>,
}

impl<S> Dedupe<S> {
    /// Wraps `inner` with the settings of `layer`.
    pub fn new(inner: S, layer: DedupeLayer) -> Self {
        Self {
            inner,
            config: Arc::new(layer),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The settings.
    pub fn layer(&self) -> &DedupeLayer {
        &self.config
    }
}

impl<S: fmt::Debug> fmt::Debug for Dedupe<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedupe")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S> Service<Inbound> for Dedupe<S>
where
    S: Service<Inbound, Response = (), Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, inbound: Inbound) -> ResponseFuture {
        // Keep the service that was polled ready; the copy left behind is polled again by
        // the next caller.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        Box::pin(run(inner, self.config.clone(), inbound))
    }
}

async fn run<S>(mut inner: S, cfg: Arc<DedupeLayer>, inbound: Inbound) -> Result<(), HandlerError>
where
    S: Service<Inbound, Response = (), Error = HandlerError>,
{
    let Some(key) = (cfg.key)(&inbound) else {
        return match cfg.missing_key {
            MissingKey::Bypass => inner.call(inbound).await,
            MissingKey::Reject => Err(HandlerError::permanent(
                "dedupe: the message has no idempotency key",
            )),
        };
    };
    let handler = inbound.route.handler.clone();
    let claim = match timed(cfg.store_timeout, cfg.store.begin(&key, cfg.lease)).await {
        Ok(c) => c,
        Err(e) => {
            store_error(&handler, "begin", &e);
            return Err(unavailable(e, cfg.unavailable_delay));
        }
    };
    let token = match claim {
        Claim::New(t) => t,
        Claim::Duplicate => {
            metrics::counter!(metric_names::DUPLICATES, "handler" => handler).increment(1);
            tracing::debug!(key, "dedupe: duplicate, acknowledged without handling");
            return Ok(());
        }
        Claim::InProgress => {
            metrics::counter!(metric_names::IN_PROGRESS, "handler" => handler).increment(1);
            tracing::debug!(key, "dedupe: another worker holds the key; redeliver later");
            return Err(HandlerError::transient(format!(
                "dedupe: key {key:?} is being handled by another worker"
            ))
            .redeliver_after(cfg.in_progress_delay));
        }
    };
    metrics::counter!(metric_names::CLAIMS, "handler" => handler.clone()).increment(1);
    if token.took_over_expired_lease() {
        metrics::counter!(metric_names::LEASE_EXPIRIES, "handler" => handler.clone(), "seen_by" => "taker")
            .increment(1);
        tracing::warn!(
            key,
            "dedupe: took over an expired lease; a worker died or overran it"
        );
    }
    let mut guard = AbandonOnDrop {
        store: cfg.store.clone(),
        token: Some(token),
    };
    let result = inner.call(inbound).await;
    let Some(token) = guard.token.take() else {
        // Unreachable: only this function takes the token.
        return result;
    };
    match result {
        Ok(()) => match timed(cfg.store_timeout, cfg.store.complete(&token)).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if e.is_lease_lost() {
                    lease_lost(&handler);
                }
                store_error(&handler, "complete", &e);
                tracing::warn!(key = token.key(), error = %e,
                    "dedupe: handled but not recorded as done; the redelivery will handle it again");
                Err(HandlerError::from_error(ErrorClass::Transient, e)
                    .redeliver_after(cfg.unavailable_delay))
            }
        },
        Err(err) => {
            if let Err(e) = timed(cfg.store_timeout, cfg.store.abandon(&token)).await {
                if e.is_lease_lost() {
                    lease_lost(&handler);
                }
                store_error(&handler, "abandon", &e);
                tracing::warn!(key = token.key(), error = %e,
                    "dedupe: could not release the claim; it frees when the lease ends");
            }
            Err(err)
        }
    }
}

async fn timed<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, DedupeError>>,
) -> Result<T, DedupeError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(DedupeError::new(
            DedupeErrorKind::Unavailable,
            format!("no answer within {limit:?}"),
        )),
    }
}

fn unavailable(e: DedupeError, delay: Duration) -> HandlerError {
    // Whatever the store's trouble, the message stays unacknowledged and comes back.
    HandlerError::from_error(ErrorClass::Transient, e).redeliver_after(delay)
}

fn store_error(handler: &str, op: &'static str, e: &DedupeError) {
    metrics::counter!(metric_names::STORE_ERRORS, "handler" => handler.to_owned(), "op" => op)
        .increment(1);
    if !e.is_lease_lost() {
        tracing::warn!(handler, op, error = %e, "dedupe store call failed");
    }
}

fn lease_lost(handler: &str) {
    metrics::counter!(metric_names::LEASE_EXPIRIES, "handler" => handler.to_owned(), "seen_by" => "holder")
        .increment(1);
}

/// Releases a claim whose handler never finished (panic, cancellation).
struct AbandonOnDrop {
    store: Arc<dyn DedupeStore>,
    token: Option<ClaimToken>,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let store = self.store.clone();
                rt.spawn(async move {
                    let _ = store.abandon(&token).await;
                });
            }
            Err(_) => tracing::debug!(
                key = token.key(),
                "dedupe: handler dropped outside a runtime; the claim frees when its lease ends"
            ),
        }
    }
}
