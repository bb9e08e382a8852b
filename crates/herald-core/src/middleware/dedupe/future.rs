//! The response future of [`Dedupe`](super::Dedupe).

use futures::future::BoxFuture;

use crate::HandlerError;

/// The future [`Dedupe`](super::Dedupe) returns: claim, handle, complete — boxed.
pub type ResponseFuture = BoxFuture<'static, Result<(), HandlerError>>;
