//! Trace-context propagation: carry a trace from a publish to the handling of the message.
//!
//! herald-core speaks [`tracing`] only. How a `tracing` span becomes a W3C `traceparent`
//! (and back) depends on the tracing backend, so it sits behind a small [`Propagator`]
//! trait:
//!
//! * [`inject`](Propagator::inject) writes the context of a span (the publish span) into a
//!   message's [`Headers`] — `traceparent` / `tracestate` ([`names::TRACEPARENT`],
//!   [`names::TRACESTATE`]);
//! * [`extract`](Propagator::extract) makes the context carried in headers the (remote)
//!   parent of a span (the process span);
//! * [`link`](Propagator::link) adds the context carried in headers to a span as a link.
//!
//! `herald-otel` implements it with OpenTelemetry's W3C `TraceContextPropagator` and
//! `tracing-opentelemetry`. Without a backend, [`NoopPropagator`] does nothing and the
//! spans are plain `tracing` spans (still useful for logs).
//!
//! The [`TracingPublisher`](crate::middleware::trace::TracingPublisher) and the
//! [`TraceLayer`](crate::middleware::trace::TraceLayer) use the propagator they were given,
//! or else the process-wide one of [`global_propagator`], which
//! [`set_global_propagator`] replaces (`herald_otel::install()` does that).
//!
//! # Examples
//! A propagator that copies a request id into the headers, to show the shape:
//! ```
//! use herald_core::{Headers, propagation::{Propagator, set_global_propagator}};
//! struct RequestId;
//! impl Propagator for RequestId {
//!     fn inject(&self, _span: &tracing::Span, headers: &mut Headers) {
//!         headers.insert("x-request-id", "r-1");
//!     }
//!     fn extract(&self, _headers: &Headers, _span: &tracing::Span) {}
//! }
//! let mut h = Headers::new();
//! RequestId.inject(&tracing::Span::none(), &mut h);
//! assert_eq!(h.get_str("x-request-id"), Some("r-1"));
//! # let _ = set_global_propagator;
//! ```

use std::sync::{Arc, RwLock};

use crate::{Headers, message::names};

/// Moves trace context between `tracing` spans and message headers; see the
/// [module docs](self).
///
/// Implementations must be cheap and must not fail loudly: a header that does not parse
/// is ignored (the span then starts a new trace), never an error or a panic — the
/// headers come from the wire.
pub trait Propagator: Send + Sync {
    /// Writes the context of `span` into `headers`, replacing any trace-context headers
    /// already there.
    fn inject(&self, span: &tracing::Span, headers: &mut Headers);

    /// Makes the context carried in `headers` the parent of `span`. Call it before the
    /// span is first entered. Does nothing when the headers carry no valid context.
    fn extract(&self, headers: &Headers, span: &tracing::Span);

    /// Adds the context carried in `headers` to `span` as a link (a publish span links
    /// to the creation context a message already carries). Does nothing by default.
    fn link(&self, headers: &Headers, span: &tracing::Span) {
        let _ = (headers, span);
    }
}

impl<P: Propagator + ?Sized> Propagator for Arc<P> {
    fn inject(&self, span: &tracing::Span, headers: &mut Headers) {
        (**self).inject(span, headers)
    }
    fn extract(&self, headers: &Headers, span: &tracing::Span) {
        (**self).extract(headers, span)
    }
    fn link(&self, headers: &Headers, span: &tracing::Span) {
        (**self).link(headers, span)
    }
}

/// The propagator that does nothing: spans stay local, headers are left alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopPropagator;

impl Propagator for NoopPropagator {
    fn inject(&self, _span: &tracing::Span, _headers: &mut Headers) {}
    fn extract(&self, _headers: &Headers, _span: &tracing::Span) {}
}

static GLOBAL: RwLock<Option<Arc<dyn Propagator>>> = RwLock::new(None);

/// Replaces the process-wide propagator used by tracing middleware that was not given
/// one of its own.
pub fn set_global_propagator(propagator: Arc<dyn Propagator>) {
    *GLOBAL.write().unwrap_or_else(|p| p.into_inner()) = Some(propagator);
}

/// The process-wide propagator: the last one [`set_global_propagator`] set, else
/// [`NoopPropagator`].
pub fn global_propagator() -> Arc<dyn Propagator> {
    GLOBAL
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| Arc::new(NoopPropagator))
}

/// Whether `headers` carry a W3C `traceparent` (any value; validity is the propagator's
/// business).
pub fn has_trace_context(headers: &Headers) -> bool {
    headers.get(names::TRACEPARENT).is_some()
}

/// Removes the W3C trace-context headers (`traceparent`, `tracestate`).
pub fn clear_trace_context(headers: &mut Headers) {
    headers.remove(names::TRACEPARENT);
    headers.remove(names::TRACESTATE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagator_is_object_safe_and_noop_is_default() {
        let p: Arc<dyn Propagator> = global_propagator();
        let mut h = Headers::new();
        p.inject(&tracing::Span::none(), &mut h);
        assert!(h.is_empty());
        p.extract(&h, &tracing::Span::none());
        p.link(&h, &tracing::Span::none());
    }

    #[test]
    fn trace_context_helpers() {
        let mut h = Headers::new();
        assert!(!has_trace_context(&h));
        h.insert(
            names::TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        h.insert(names::TRACESTATE, "a=b");
        h.insert("other", "x");
        assert!(has_trace_context(&h));
        clear_trace_context(&mut h);
        assert!(!has_trace_context(&h));
        assert_eq!(h.len(), 1);
    }
}
