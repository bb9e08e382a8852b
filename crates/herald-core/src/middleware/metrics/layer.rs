//! [`MetricsLayer`]: the metrics configuration.

use tower_layer::Layer;

use super::Metrics;

/// Builds [`Metrics`] services.
///
/// Put it in the [`Stack`](crate::middleware::Stack)'s metrics slot
/// ([`Stack::metrics`](crate::middleware::Stack::metrics)) to also get the counts only
/// the inside of the stack knows (failed attempts, retries, dead-lettered messages); see
/// the [module docs](super).
///
/// # Examples
/// ```
/// use herald_core::{handler_fn, Inbound, middleware::metrics::MetricsLayer};
/// use tower::Layer;
/// let handler = MetricsLayer::new().layer(handler_fn(|_: Inbound| async { Ok(()) }));
/// # let _ = handler;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct MetricsLayer {
    _priv: (),
}

impl MetricsLayer {
    /// A metrics layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics::new(inner)
    }
}
