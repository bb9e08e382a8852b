//! [`TraceLayer`]: the tracing configuration.

use std::{borrow::Cow, fmt, sync::Arc};

use tower_layer::Layer;

use super::Trace;
use crate::propagation::{Propagator, global_propagator};

/// How many payload bytes a payload log line shows at most, by default.
pub const DEFAULT_PAYLOAD_LOG_LIMIT: usize = 1024;

/// Builds [`Trace`] services.
///
/// | setting | default | what |
/// |---|---|---|
/// | system | set by [`new`](Self::new) | `messaging.system`: `kafka`, `nats`, `memory` … |
/// | propagator | the [global one](crate::propagation::global_propagator) at call time | how the remote parent is read from the headers |
/// | payload logging | off | [`log_payloads`](Self::log_payloads): a `debug` event with the payload (up to [`DEFAULT_PAYLOAD_LOG_LIMIT`] bytes) |
///
/// # Examples
/// ```
/// use herald_core::{handler_fn, Inbound, middleware::trace::TraceLayer};
/// use tower::Layer;
/// let handler = TraceLayer::new("kafka").layer(handler_fn(|_: Inbound| async { Ok(()) }));
/// # let _ = handler;
/// ```
#[derive(Clone)]
pub struct TraceLayer {
    pub(super) system: Cow<'static, str>,
    pub(super) propagator: Option<Arc<dyn Propagator>>,
    pub(super) payload_limit: Option<usize>,
}

impl TraceLayer {
    /// Traces deliveries of the messaging system `system` (the `messaging.system`
    /// attribute: `kafka`, `nats`, `memory`, …).
    pub fn new(system: impl Into<Cow<'static, str>>) -> Self {
        Self {
            system: system.into(),
            propagator: None,
            payload_limit: None,
        }
    }

    /// Uses `propagator` instead of the global one.
    pub fn propagator(mut self, propagator: Arc<dyn Propagator>) -> Self {
        self.propagator = Some(propagator);
        self
    }

    /// Logs each payload (as lossy UTF-8, at most [`DEFAULT_PAYLOAD_LOG_LIMIT`] bytes) in a
    /// `debug` event of the process span. **Off by default**: payloads may hold personal
    /// data or secrets. Turn it on for debugging only.
    pub fn log_payloads(self, on: bool) -> Self {
        self.log_payloads_up_to(if on { DEFAULT_PAYLOAD_LOG_LIMIT } else { 0 })
    }

    /// Like [`log_payloads`](Self::log_payloads) with a byte limit; `0` turns it off.
    pub fn log_payloads_up_to(mut self, limit: usize) -> Self {
        self.payload_limit = (limit > 0).then_some(limit);
        self
    }

    /// The `messaging.system` value.
    pub fn system(&self) -> &str {
        &self.system
    }

    pub(super) fn resolved_propagator(&self) -> Arc<dyn Propagator> {
        self.propagator.clone().unwrap_or_else(global_propagator)
    }
}

impl fmt::Debug for TraceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceLayer")
            .field("system", &self.system)
            .field("own_propagator", &self.propagator.is_some())
            .field("payload_limit", &self.payload_limit)
            .finish()
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Trace<S> {
        Trace::new(inner, self.clone())
    }
}
