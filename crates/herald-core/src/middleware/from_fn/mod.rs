//! One-off middleware from an async closure.
//!
//! [`from_fn`] makes a layer from `Fn(Inbound, Next) -> impl Future<Output =
//! Result<(), HandlerError>>`: do something before, call [`Next::run`] (or don't), do
//! something after, and return a result — which may rewrite the inner one. No service,
//! layer or future type to write.
//!
//! # Examples
//! A log line per message:
//! ```
//! use herald_core::{handler_fn, Inbound, middleware::{from_fn, Next}};
//! use tower::Layer;
//!
//! let logged = from_fn(|inbound: Inbound, next: Next| async move {
//!     let id = inbound.message.id.clone();
//!     let result = next.run(inbound).await;
//!     tracing::info!(%id, ok = result.is_ok(), "handled");
//!     result
//! });
//! let handler = logged.layer(handler_fn(|_: Inbound| async { Ok(()) }));
//! # let _ = handler;
//! ```
//!
//! A guard that rejects without calling the handler:
//! ```
//! use herald_core::{HandlerError, Inbound, middleware::{from_fn, Next}};
//! let require_type = from_fn(|inbound: Inbound, next: Next| async move {
//!     if inbound.message.ce_type().is_none() {
//!         return Err(HandlerError::permanent("message has no ce-type"));
//!     }
//!     next.run(inbound).await
//! });
//! # let _ = require_type;
//! ```

mod layer;

use std::{
    fmt,
    future::Future,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tower::{ServiceExt, util::BoxCloneSyncService};
use tower_service::Service;

pub use layer::FromFnLayer;

use crate::{HandlerError, Inbound};

/// A layer from an async closure; see the [module docs](self).
pub fn from_fn<F, Fut>(f: F) -> FromFnLayer<F>
where
    F: Fn(Inbound, Next) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    FromFnLayer::new(f)
}

/// The rest of the stack, handed to a [`from_fn`] closure.
pub struct Next {
    inner: BoxCloneSyncService<Inbound, (), HandlerError>,
}

impl Next {
    /// Runs the inner middleware and handler.
    pub async fn run(mut self, inbound: Inbound) -> Result<(), HandlerError> {
        self.inner.ready().await?.call(inbound).await
    }
}

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next").finish_non_exhaustive()
    }
}

/// The service [`from_fn`] builds.
#[derive(Clone)]
pub struct FromFn<F, S> {
    f: F,
    inner: S,
}

impl<F, S> FromFn<F, S> {
    /// Wraps `inner` with the closure `f`.
    pub fn new(f: F, inner: S) -> Self {
        Self { f, inner }
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
}

impl<F, S: fmt::Debug> fmt::Debug for FromFn<F, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromFn")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<F, Fut, S> Service<Inbound> for FromFn<F, S>
where
    F: Fn(Inbound, Next) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    S: Service<Inbound, Response = (), Error = HandlerError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        let next = Next {
            inner: BoxCloneSyncService::new(ready),
        };
        Box::pin((self.f)(inbound, next))
    }
}
