//! The OpenTelemetry propagator on its own: W3C round trip, `tracestate`, and headers from
//! the wire that are missing, malformed or not UTF-8 (ignored: a new trace starts).

use herald_core::{Headers, message::names, propagation::Propagator};
use herald_otel::OtelPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::prelude::*;

const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Runs `f` under an OpenTelemetry subscriber; returns its output and the spans it ended.
fn with_otel<T>(f: impl FnOnce() -> T) -> (T, Vec<opentelemetry_sdk::trace::SpanData>) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
    let out = tracing::subscriber::with_default(subscriber, f);
    // Read before the provider is dropped: shutting it down empties the exporter.
    let spans = exporter.get_finished_spans().expect("spans");
    drop(provider);
    (out, spans)
}

#[test]
fn trace_context_round_trips_with_tracestate() {
    let p = OtelPropagator::new();
    let ((), spans) = with_otel(|| {
        let mut incoming = Headers::new();
        incoming.insert(names::TRACEPARENT, TP);
        incoming.insert(names::TRACESTATE, "vendor=abc");
        let span = tracing::info_span!("process");
        p.extract(&incoming, &span);
        let mut outgoing = Headers::new();
        outgoing.insert(names::TRACEPARENT, "stale");
        outgoing.append(names::TRACEPARENT, "stale too");
        span.in_scope(|| {
            let child = tracing::info_span!("publish");
            p.inject(&child, &mut outgoing);
        });
        assert_eq!(
            outgoing.get_all(names::TRACEPARENT).count(),
            1,
            "replaced, not appended"
        );
        let tp = outgoing.get_str(names::TRACEPARENT).unwrap();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert_ne!(tp, TP, "a new span id");
        assert_eq!(outgoing.get_str(names::TRACESTATE), Some("vendor=abc"));
    });
    let process = spans.iter().find(|s| s.name == "process").unwrap();
    assert_eq!(
        process.span_context.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(process.parent_span_id.to_string(), "b7ad6b7169203331");
    assert!(process.parent_span_is_remote);
}

#[test]
fn trace_bad_headers_start_a_new_trace() {
    let p = OtelPropagator::new();
    let bad: Vec<Headers> = vec![
        Headers::new(),
        [(names::TRACEPARENT, "garbage")].into_iter().collect(),
        [(
            names::TRACEPARENT,
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        )]
        .into_iter()
        .collect(),
        [(
            names::TRACEPARENT,
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )]
        .into_iter()
        .collect(),
        [(names::TRACEPARENT, vec![0xff_u8, 0xfe, 0x00])]
            .into_iter()
            .collect(),
        [(names::TRACEPARENT, "0".repeat(10_000))]
            .into_iter()
            .collect(),
    ];
    let ((), spans) = with_otel(|| {
        for h in &bad {
            assert!(!p.context_of(h).span().span_context().is_valid());
            let span = tracing::info_span!("process");
            p.extract(h, &span);
            p.link(h, &span);
            span.in_scope(|| {});
        }
    });
    assert_eq!(spans.len(), bad.len());
    for s in &spans {
        assert_eq!(
            s.parent_span_id,
            opentelemetry::trace::SpanId::INVALID,
            "a root span"
        );
        assert!(s.links.is_empty());
    }
}

#[test]
fn trace_inject_without_an_otel_layer_writes_nothing() {
    let p = OtelPropagator::new();
    let mut h = Headers::new();
    p.inject(&tracing::info_span!("publish"), &mut h);
    p.inject(&tracing::Span::none(), &mut h);
    assert!(h.is_empty());
    let span = tracing::info_span!("x");
    assert!(!span.context().span().span_context().is_valid());
}

#[test]
fn trace_install_sets_the_global_propagator() {
    herald_otel::install();
    let ((), spans) = with_otel(|| {
        let span = tracing::info_span!("publish");
        let mut h = Headers::new();
        herald_core::propagation::global_propagator().inject(&span, &mut h);
        assert!(
            h.get_str(names::TRACEPARENT)
                .is_some_and(|v| v.starts_with("00-"))
        );
    });
    assert_eq!(spans.len(), 1);
}
