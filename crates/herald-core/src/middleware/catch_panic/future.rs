//! The response future of [`CatchPanic`](super::CatchPanic).

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll},
};

use futures::{FutureExt, future::CatchUnwind};
use pin_project_lite::pin_project;

use super::panic_error;
use crate::HandlerError;

pin_project! {
    /// The handler's future with its panics caught, or the error of a panic in `call`.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Future { #[pin] future: CatchUnwind<AssertUnwindSafe<F>> },
        Panicked { error: Option<HandlerError> },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F: Future> ResponseFuture<F> {
    pub(super) fn future(future: F) -> Self {
        Self {
            kind: Kind::Future {
                future: AssertUnwindSafe(future).catch_unwind(),
            },
        }
    }

    pub(super) fn panicked(error: HandlerError) -> Self {
        Self {
            kind: Kind::Panicked { error: Some(error) },
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<(), HandlerError>>,
{
    type Output = Result<(), HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Future { future } => match future.poll(cx) {
                Poll::Ready(Ok(r)) => Poll::Ready(r),
                Poll::Ready(Err(payload)) => Poll::Ready(Err(panic_error(payload))),
                Poll::Pending => Poll::Pending,
            },
            KindProj::Panicked { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| HandlerError::permanent("handler panicked")))),
        }
    }
}
