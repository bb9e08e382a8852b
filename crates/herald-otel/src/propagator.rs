//! [`OtelPropagator`]: herald's [`Propagator`] on OpenTelemetry.

use std::{fmt, sync::Arc};

use herald_core::{
    Headers,
    propagation::{Propagator, clear_trace_context, set_global_propagator},
};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes into herald [`Headers`] for an OpenTelemetry [`TextMapPropagator`]. Each `set`
/// replaces every value of the name.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut Headers);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

/// Reads herald [`Headers`] for an OpenTelemetry [`TextMapPropagator`]. A value that is
/// not UTF-8 reads as missing.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a Headers);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get_str(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| n).collect()
    }
}

/// herald's [`Propagator`] on OpenTelemetry: the W3C trace context
/// ([`TraceContextPropagator`]) by default, or any [`TextMapPropagator`].
///
/// * `inject` takes the OpenTelemetry context of a `tracing` span (through
///   [`OpenTelemetrySpanExt::context`]) and writes `traceparent`/`tracestate`. A span
///   without OpenTelemetry data (no `tracing-opentelemetry` layer, or a disabled span)
///   writes nothing.
/// * `extract` parses the headers and makes the remote context the span's parent
///   ([`OpenTelemetrySpanExt::set_parent`]); a missing or malformed `traceparent` is
///   ignored — the span starts a new trace.
/// * `link` adds the remote context as a span link.
///
/// # Examples
/// ```
/// use herald_core::{Headers, propagation::Propagator};
/// use herald_otel::OtelPropagator;
/// let mut headers = Headers::new();
/// headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
/// let cx = OtelPropagator::new().context_of(&headers);
/// use opentelemetry::trace::TraceContextExt;
/// assert_eq!(cx.span().span_context().trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
/// ```
#[derive(Clone)]
pub struct OtelPropagator {
    inner: Arc<dyn TextMapPropagator + Send + Sync>,
}

impl Default for OtelPropagator {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for OtelPropagator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelPropagator")
            .field("fields", &self.inner.fields().collect::<Vec<_>>())
            .finish()
    }
}

impl OtelPropagator {
    /// The W3C trace-context propagator.
    pub fn new() -> Self {
        Self::with(TraceContextPropagator::new())
    }

    /// Any OpenTelemetry propagator, e.g. a `TextMapCompositePropagator` of trace context
    /// and baggage.
    pub fn with(propagator: impl TextMapPropagator + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(propagator),
        }
    }

    /// The OpenTelemetry context carried in `headers` (an empty one when there is none).
    pub fn context_of(&self, headers: &Headers) -> Context {
        self.inner.extract(&HeaderExtractor(headers))
    }

    fn remote(&self, headers: &Headers) -> Option<Context> {
        let cx = self.context_of(headers);
        cx.span().span_context().is_valid().then_some(cx)
    }
}

impl Propagator for OtelPropagator {
    fn inject(&self, span: &tracing::Span, headers: &mut Headers) {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return;
        }
        clear_trace_context(headers);
        self.inner.inject_context(&cx, &mut HeaderInjector(headers));
    }

    fn extract(&self, headers: &Headers, span: &tracing::Span) {
        if let Some(cx) = self.remote(headers)
            && let Err(e) = span.set_parent(cx)
        {
            tracing::trace!(error = %e, "could not set the remote parent");
        }
    }

    fn link(&self, headers: &Headers, span: &tracing::Span) {
        if let Some(cx) = self.remote(headers) {
            span.add_link(cx.span().span_context().clone());
        }
    }
}

/// Makes an [`OtelPropagator`] (W3C trace context) herald's global propagator, the one
/// the trace layer and the tracing publisher use unless given their own; returns it.
///
/// Call it once at start-up, next to installing the `tracing-opentelemetry` layer.
pub fn install() -> Arc<OtelPropagator> {
    let p = Arc::new(OtelPropagator::new());
    set_global_propagator(p.clone());
    p
}
