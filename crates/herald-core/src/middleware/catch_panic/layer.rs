//! [`CatchPanicLayer`]: builds [`CatchPanic`].

use tower_layer::Layer;

use super::CatchPanic;

/// Builds [`CatchPanic`] services. It has no settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct CatchPanicLayer {
    _priv: (),
}

impl CatchPanicLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic::new(inner)
    }
}
