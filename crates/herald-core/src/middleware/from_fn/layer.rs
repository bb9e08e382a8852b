//! [`FromFnLayer`]: a closure as a layer.

use std::fmt;

use tower_layer::Layer;

use super::FromFn;

/// The layer [`from_fn`](super::from_fn) returns.
#[derive(Clone)]
pub struct FromFnLayer<F> {
    f: F,
}

impl<F> FromFnLayer<F> {
    /// A layer running `f` around the inner service.
    pub fn new(f: F) -> Self {
        Self { f }
    }
}

impl<F> fmt::Debug for FromFnLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromFnLayer").finish_non_exhaustive()
    }
}

impl<F: Clone, S> Layer<S> for FromFnLayer<F> {
    type Service = FromFn<F, S>;

    fn layer(&self, inner: S) -> FromFn<F, S> {
        FromFn::new(self.f.clone(), inner)
    }
}
