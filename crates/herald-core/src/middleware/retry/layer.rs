//! [`RetryLayer`]: the retry configuration.

use std::{fmt, sync::Arc};

use tower_layer::Layer;

use super::{Backoff, Retry, RetryPolicy};

/// Builds [`Retry`] services that share one [`RetryPolicy`].
///
/// # Examples
/// ```
/// use herald_core::{handler_fn, Inbound, middleware::{Backoff, RetryLayer}};
/// use tower::Layer;
/// let handler = RetryLayer::new(Backoff::default())
///     .layer(handler_fn(|_: Inbound| async { Ok(()) }));
/// # let _ = handler;
/// ```
#[derive(Clone)]
pub struct RetryLayer {
    policy: Arc<dyn RetryPolicy>,
}

impl RetryLayer {
    /// A layer retrying under `policy`.
    pub fn new(policy: impl RetryPolicy + 'static) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }

    /// A layer sharing an existing policy (e.g. one that keeps a budget across routes).
    pub fn from_arc(policy: Arc<dyn RetryPolicy>) -> Self {
        Self { policy }
    }

    /// The policy.
    pub fn policy(&self) -> &Arc<dyn RetryPolicy> {
        &self.policy
    }
}

impl Default for RetryLayer {
    /// [`Backoff::default`].
    fn default() -> Self {
        Self::new(Backoff::default())
    }
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::from_arc(inner, self.policy.clone())
    }
}
