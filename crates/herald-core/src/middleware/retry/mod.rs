//! Retry: immediate attempts with backoff, then broker redelivery, then give up.
//!
//! [`Retry`] calls the inner handler again while its [`RetryPolicy`] allows, in two
//! stages:
//!
//! 1. **Immediate attempts** — up to [`immediate_attempts`](RetryPolicy::immediate_attempts)
//!    calls within one delivery, with the policy's backoff between them
//!    (`tokio::time::sleep`, so tests can run on tokio's paused clock). Each call gets
//!    [`Inbound::local_attempt`] = 1, 2, …. These waits hold the consumer's lane, so
//!    keep them short.
//! 2. **Delayed attempts** — when a delivery's immediate attempts are spent and the
//!    broker delivered it fewer than `1 + `[`delayed_attempts`](RetryPolicy::delayed_attempts)
//!    times ([`Inbound::attempt`]), the error is returned with
//!    [`redeliver_after`](HandlerError::redeliver_after) set to the next wait. The router
//!    nacks with that delay and the transport redelivers later (NATS: `nak` with delay;
//!    Kafka: in-place or retry topics) without holding the consumer meanwhile.
//!
//! When both are spent the error is returned **as is** — no redelivery — and the
//! dead-letter layer outside takes it. Errors the policy does not retry (by default
//! anything not [`Transient`](crate::ErrorClass::Transient)), [`Fatal`](crate::ErrorClass::Fatal)
//! errors, and errors that already ask for a redelivery pass through untouched.
//!
//! Delayed attempts rely on the broker's delivery count: a redelivery caused by something
//! else (an open circuit breaker, a failed dead-letter publish, a restart) counts too.
//!
//! # Examples
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
//! use std::time::Duration;
//! use herald_core::{handler_fn, HandlerError, Inbound, Message, Origin, RouteInfo};
//! use herald_core::middleware::{Backoff, RetryLayer};
//! use tower::{Layer, ServiceExt};
//!
//! let calls = Arc::new(AtomicU32::new(0));
//! let c = calls.clone();
//! let handler = RetryLayer::new(Backoff { immediate_attempts: 3, delayed_attempts: 1, ..Default::default() })
//!     .layer(handler_fn(move |_: Inbound| {
//!         c.fetch_add(1, Ordering::SeqCst);
//!         async { Err::<(), _>(HandlerError::transient("db busy")) }
//!     }));
//! let route = Arc::new(RouteInfo { handler: "h".into(), topic: "t".into(), group: "g".into() });
//! let first = Inbound::new(Message::new("x"), Origin::new("t"), 1, route.clone());
//! let err = handler.clone().oneshot(first).await.unwrap_err();
//! assert_eq!(calls.load(Ordering::SeqCst), 3);          // three in-process calls
//! assert!(err.redelivery().is_some());                  // then: come back later
//! let second = Inbound::new(Message::new("x"), Origin::new("t"), 2, route);
//! let err = handler.oneshot(second).await.unwrap_err();
//! assert_eq!(err.redelivery(), None);                   // spent: for the dead-letter layer
//! # }
//! ```

mod layer;
mod policy;

pub mod future;

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use tower::ServiceExt;
use tower_service::Service;

pub use layer::RetryLayer;
pub use policy::{Backoff, RetryPolicy};

use crate::{ErrorClass, HandlerError, Inbound};

use self::future::ResponseFuture;

/// Retries the inner handler under a [`RetryPolicy`]; see the [module docs](self).
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<dyn RetryPolicy>,
}

impl<S> Retry<S> {
    /// Wraps `inner`, retrying under `policy`.
    pub fn new(inner: S, policy: impl RetryPolicy + 'static) -> Self {
        Self::from_arc(inner, Arc::new(policy))
    }

    /// Wraps `inner` with a shared policy.
    pub fn from_arc(inner: S, policy: Arc<dyn RetryPolicy>) -> Self {
        Self { inner, policy }
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

    /// The policy.
    pub fn policy(&self) -> &Arc<dyn RetryPolicy> {
        &self.policy
    }
}

impl<S: fmt::Debug> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Service<Inbound> for Retry<S>
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
        // Keep the service that was polled ready for the first call; the copy left behind
        // is polled again by the next caller.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let policy = self.policy.clone();
        Box::pin(async move {
            let immediate = policy.immediate_attempts().max(1);
            let mut n: u32 = 1;
            loop {
                let mut req = inbound.clone();
                req.local_attempt = n;
                super::attempts::record(n);
                let result = if n == 1 {
                    inner.call(req).await
                } else {
                    match inner.ready().await {
                        Ok(svc) => svc.call(req).await,
                        Err(e) => Err(e),
                    }
                };
                let err = match result {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                };
                if err.class() == ErrorClass::Fatal
                    || err.redelivery().is_some()
                    || !policy.retries(&err)
                {
                    return Err(err);
                }
                if n < immediate {
                    let wait = policy.delay(n);
                    tracing::debug!(
                        handler = %inbound.route.handler, message_id = %inbound.message.id,
                        attempt = inbound.attempt, local_attempt = n, error = %err, ?wait,
                        "retrying in process"
                    );
                    tokio::time::sleep(wait).await;
                    n += 1;
                    continue;
                }
                let delivery = inbound.attempt.max(1);
                if delivery < policy.delayed_attempts().saturating_add(1) {
                    let wait = policy.delay(immediate.saturating_add(delivery - 1));
                    tracing::debug!(
                        handler = %inbound.route.handler, message_id = %inbound.message.id,
                        attempt = delivery, error = %err, ?wait,
                        "immediate attempts spent; asking for a redelivery"
                    );
                    return Err(err.redeliver_after(wait));
                }
                tracing::debug!(
                    handler = %inbound.route.handler, message_id = %inbound.message.id,
                    attempt = delivery, error = %err, "retries spent"
                );
                return Err(err);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Mutex,
            atomic::{AtomicU32, Ordering},
        },
        time::Duration,
    };

    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::{Message, Origin, RouteInfo, handler_fn};

    fn inbound(attempt: u32) -> Inbound {
        let route = Arc::new(RouteInfo {
            handler: "h".into(),
            topic: "t".into(),
            group: "g".into(),
        });
        Inbound::new(Message::new("x"), Origin::new("t"), attempt, route)
    }

    fn fixed(immediate: u32, delayed: u32) -> Backoff {
        Backoff {
            initial: Duration::from_millis(10),
            multiplier: 2.0,
            max: Duration::from_secs(10),
            jitter: 0.0,
            immediate_attempts: immediate,
            delayed_attempts: delayed,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn local_attempt_counts_up_and_delivery_attempt_stays() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let svc = RetryLayer::new(fixed(4, 0)).layer(handler_fn(move |i: Inbound| {
            s.lock().unwrap().push((i.attempt, i.local_attempt));
            async { Err::<(), _>(HandlerError::transient("x")) }
        }));
        let err = svc.oneshot(inbound(2)).await.unwrap_err();
        assert_eq!(err.redelivery(), None);
        assert_eq!(*seen.lock().unwrap(), [(2, 1), (2, 2), (2, 3), (2, 4)]);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_immediate_attempts_still_calls_once() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let svc = RetryLayer::new(fixed(0, 0)).layer(handler_fn(move |_: Inbound| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(HandlerError::transient("x")) }
        }));
        svc.oneshot(inbound(1)).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_and_preset_redelivery_pass_through() {
        for (err, calls_expected) in [
            (HandlerError::fatal("creds"), 1),
            (
                HandlerError::transient("later").redeliver_after(Duration::from_secs(7)),
                1,
            ),
        ] {
            let calls = Arc::new(AtomicU32::new(0));
            let c = calls.clone();
            let e2 = err.clone();
            let svc = RetryLayer::new(fixed(5, 5)).layer(handler_fn(move |_: Inbound| {
                c.fetch_add(1, Ordering::SeqCst);
                let e = e2.clone();
                async move { Err::<(), _>(e) }
            }));
            let got = svc.oneshot(inbound(1)).await.unwrap_err();
            assert_eq!(calls.load(Ordering::SeqCst), calls_expected);
            assert_eq!(got.class(), err.class());
            assert_eq!(got.redelivery(), err.redelivery());
        }
    }
}
