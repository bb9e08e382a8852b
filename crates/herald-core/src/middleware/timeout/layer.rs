//! [`TimeoutLayer`]: the timeout configuration.

use std::time::Duration;

use tower_layer::Layer;

use super::Timeout;

/// Builds [`Timeout`] services with one limit per attempt.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// Each attempt may run at most `limit`.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }

    /// The limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout::new(inner, self.limit)
    }
}
