//! Panic isolation: a panicking handler fails one message, not the consumer.
//!
//! [`CatchPanic`] turns a panic — in the handler's future or in its `call` — into a
//! [`Permanent`](crate::ErrorClass::Permanent) [`HandlerError`] whose message reads
//! `handler panicked: <panic message>` and whose source is an [`error::Panicked`]. A
//! panic is a bug that the same input will hit again, so it is not retried: the
//! dead-letter layer takes the message and the consumer goes on with the next one.
//!
//! The process's panic hook still runs (the default one prints the panic to stderr),
//! and the handler's state is whatever the panic left behind: the panic is caught with
//! [`std::panic::AssertUnwindSafe`], so a handler that shares state
//! across messages must tolerate a poisoned lock or a half-done update. Panics abort
//! instead of unwinding under `panic = "abort"`; nothing can catch them there.
//!
//! # Examples
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use herald_core::{handler_fn, Inbound, Message, Origin, RouteInfo, ErrorClass};
//! use herald_core::middleware::CatchPanicLayer;
//! use tower::{Layer, ServiceExt};
//!
//! let handler = CatchPanicLayer::new().layer(handler_fn(|i: Inbound| async move {
//!     let n: u32 = std::str::from_utf8(&i.message.payload).unwrap().parse().expect("a number");
//!     let _ = n;
//!     Ok(())
//! }));
//! let route = Arc::new(RouteInfo { handler: "h".into(), topic: "t".into(), group: "g".into() });
//! # std::panic::set_hook(Box::new(|_| {}));
//! let err = handler.oneshot(Inbound::new(Message::new("x"), Origin::new("t"), 1, route)).await.unwrap_err();
//! assert_eq!(err.class(), ErrorClass::Permanent);
//! assert!(err.message().starts_with("handler panicked: a number"));
//! # }
//! ```

mod layer;

pub mod error;
pub mod future;

use std::{
    any::Any,
    panic::AssertUnwindSafe,
    task::{Context, Poll},
};

use tower_service::Service;

pub use layer::CatchPanicLayer;

use crate::{ErrorClass, HandlerError, Inbound};

use self::{error::Panicked, future::ResponseFuture};

/// Turns panics of the inner handler into permanent errors; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S> CatchPanic<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
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

pub(crate) fn panic_error(payload: Box<dyn Any + Send>) -> HandlerError {
    let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic payload is not a string".to_owned()
    };
    HandlerError::from_error(ErrorClass::Permanent, Panicked::new(message))
}

impl<S> Service<Inbound> for CatchPanic<S>
where
    S: Service<Inbound, Response = (), Error = HandlerError>,
{
    type Response = ();
    type Error = HandlerError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.poll_ready(cx))) {
            Ok(p) => p,
            Err(payload) => Poll::Ready(Err(panic_error(payload))),
        }
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(inbound))) {
            Ok(fut) => ResponseFuture::future(fut),
            Err(payload) => ResponseFuture::panicked(panic_error(payload)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, task::Poll};

    use tower::ServiceExt;

    use super::*;
    use crate::{Message, Origin, RouteInfo};

    /// Panics in `call` itself (not in the future) when the payload says so.
    #[derive(Clone)]
    struct PanicsInCall;
    impl Service<Inbound> for PanicsInCall {
        type Response = ();
        type Error = HandlerError;
        type Future = std::future::Ready<Result<(), HandlerError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, i: Inbound) -> Self::Future {
            if &i.message.payload[..] == b"boom" {
                std::panic::panic_any(format!("call blew up on {}", i.message.id));
            }
            std::future::ready(Ok(()))
        }
    }

    fn inbound(payload: &'static str) -> Inbound {
        let route = Arc::new(RouteInfo {
            handler: "h".into(),
            topic: "t".into(),
            group: "g".into(),
        });
        Inbound::new(Message::with_id("m1", payload), Origin::new("t"), 1, route)
    }

    #[tokio::test]
    async fn panic_in_call_is_caught_and_service_lives_on() {
        let mut svc = CatchPanic::new(PanicsInCall);
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(inbound("boom"))
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert_eq!(err.message(), "handler panicked: call blew up on m1");
        svc.ready()
            .await
            .unwrap()
            .call(inbound("ok"))
            .await
            .unwrap();
    }

    #[test]
    fn non_string_payload_gets_a_placeholder() {
        let e = panic_error(Box::new(42u8));
        assert_eq!(
            e.message(),
            "handler panicked: panic payload is not a string"
        );
    }
}
