//! Timeout: bound each handler attempt.
//!
//! [`Timeout`] fails an attempt that runs longer than its limit with a
//! [`Transient`](crate::ErrorClass::Transient) [`HandlerError`] whose message reads
//! `handler timed out after <limit>` and whose source is an [`error::Elapsed`]. The
//! handler's future is dropped at that point, so a handler must be cancel safe (it
//! usually is: a dropped database future rolls back).
//!
//! In the [standard order](super) the timeout sits **inside** retry: the limit applies to
//! each attempt, not to the attempts and backoff waits together.
//!
//! # Examples
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::{sync::Arc, time::Duration};
//! use herald_core::{handler_fn, Inbound, Message, Origin, RouteInfo, ErrorClass};
//! use herald_core::middleware::TimeoutLayer;
//! use tower::{Layer, ServiceExt};
//!
//! let slow = handler_fn(|_: Inbound| async {
//!     tokio::time::sleep(Duration::from_secs(60)).await;
//!     Ok(())
//! });
//! let handler = TimeoutLayer::new(Duration::from_secs(5)).layer(slow);
//! let route = Arc::new(RouteInfo { handler: "h".into(), topic: "t".into(), group: "g".into() });
//! let err = handler.oneshot(Inbound::new(Message::new("x"), Origin::new("t"), 1, route)).await.unwrap_err();
//! assert_eq!(err.class(), ErrorClass::Transient);
//! assert_eq!(err.message(), "handler timed out after 5s");
//! # }
//! ```

mod layer;

pub mod error;
pub mod future;

use std::{
    task::{Context, Poll},
    time::Duration,
};

use tower_service::Service;

pub use layer::TimeoutLayer;

use crate::{HandlerError, Inbound};

use self::future::ResponseFuture;

/// Fails attempts that run longer than a limit; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    limit: Duration,
}

impl<S> Timeout<S> {
    /// Wraps `inner`, limiting each call to `limit`.
    pub fn new(inner: S, limit: Duration) -> Self {
        Self { inner, limit }
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

    /// The limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

impl<S> Service<Inbound> for Timeout<S>
where
    S: Service<Inbound, Response = (), Error = HandlerError>,
{
    type Response = ();
    type Error = HandlerError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        ResponseFuture::new(self.inner.call(inbound), self.limit)
    }
}
