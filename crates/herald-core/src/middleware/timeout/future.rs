//! The response future of [`Timeout`](super::Timeout).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::error::Elapsed;
use crate::{ErrorClass, HandlerError};

pin_project! {
    /// Races the handler's future against the limit.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        limit: Duration,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, limit: Duration) -> Self {
        Self {
            inner,
            sleep: tokio::time::sleep(limit),
            limit,
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<(), HandlerError>>,
{
    type Output = Result<(), HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The handler first: a result that is ready when the limit passes still counts.
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(HandlerError::from_error(
                ErrorClass::Transient,
                Elapsed::new(*this.limit),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}
