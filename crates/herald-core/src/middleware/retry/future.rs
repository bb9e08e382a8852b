//! The response future of [`Retry`](super::Retry).

use futures::future::BoxFuture;

use crate::HandlerError;

/// The future [`Retry`](super::Retry) returns: the retry loop, boxed (it awaits the
/// inner service, sleeps and awaits again).
pub type ResponseFuture = BoxFuture<'static, Result<(), HandlerError>>;
