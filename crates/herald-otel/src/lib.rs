//! OpenTelemetry for herald: one trace from the producer to the consumer, across
//! services, through W3C trace context in message headers — plus consumer-lag gauges.
//!
//! herald-core traces with [`tracing`] only and leaves the mapping between `tracing` spans
//! and W3C `traceparent` headers to a [`Propagator`](herald_core::propagation::Propagator).
//! This crate is that mapping for OpenTelemetry, through `tracing-opentelemetry`.
//!
//! # Highlights
//! * [`OtelPropagator`]: injects the context of the publish span into `traceparent` /
//!   `tracestate`, and makes the context in a delivery's headers the remote parent of its
//!   process span ([`OpenTelemetrySpanExt::set_parent`](tracing_opentelemetry::OpenTelemetrySpanExt::set_parent)).
//! * [`install`]: makes it herald's global propagator, so `TraceLayer` and
//!   `TracingPublisher` use it without further wiring.
//! * [`HeaderInjector`] / [`HeaderExtractor`]: herald [`Headers`](herald_core::Headers) as
//!   an OpenTelemetry carrier, for any other propagator.
//! * [`lag`]: consumer lag per Kafka partition (`kafka` feature) and pending messages per
//!   NATS consumer (`nats` feature), as `metrics` gauges.
//!
//! # Non-goals
//! * Choosing an exporter or a sampler: set up `opentelemetry_sdk` and
//!   `opentelemetry-otlp` (or any exporter) as you would anyway; see
//!   `examples/src/bin/otlp.rs`.
//! * Metrics through OpenTelemetry: herald records through the `metrics` facade; bridge it
//!   or use `metrics-exporter-prometheus` (see `examples/src/bin/prometheus.rs`).
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use opentelemetry::trace::TracerProvider as _;
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! use tracing_subscriber::prelude::*;
//! use herald_core::{handler_fn, memory::MemoryBroker, Inbound, Router};
//! use herald_core::middleware::{DeadLetterLayer, Stack, trace::{TraceLayer, TracingPublisher}};
//!
//! // The usual OpenTelemetry setup (an OTLP exporter in production).
//! let provider = SdkTracerProvider::builder()
//!     .with_simple_exporter(InMemorySpanExporter::default())
//!     .build();
//! let subscriber = tracing_subscriber::registry()
//!     .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("billing")));
//! let _guard = tracing::subscriber::set_default(subscriber);
//!
//! // herald: propagate W3C trace context through message headers.
//! herald_otel::install();
//! let broker = MemoryBroker::new();
//! let publisher = Arc::new(TracingPublisher::new(broker.clone(), "memory"));
//! let stack = Stack::new()
//!     .trace(TraceLayer::new("memory"))
//!     .dead_letter(DeadLetterLayer::new(publisher.clone()));
//! let router = Router::new().route("billing", "orders", "billing",
//!     stack.service(handler_fn(|_: Inbound| async { Ok(()) })));
//! # let _ = router;
//! ```
//!
//! # Propagation
//! Publish: `TracingPublisher` opens `publish {topic}` and asks the propagator to inject
//! its context into each message that carries none (a message that already has one —
//! a dead letter, a replay — keeps it, and the publish span links to it). Consume:
//! `TraceLayer` opens `process {topic}` and asks the propagator to make the message's
//! context its parent. Retries and redeliveries each get a process span under the same
//! producer span; a dead-letter publish is a child of the failing process span; a replay
//! continues the original trace. See [`OtelPropagator`] and herald-core's
//! `middleware::trace`.
//!
//! # Lag
//! See [`lag`].
//!
//! # Features
//! | feature | effect | default |
//! |---|---|---|
//! | `kafka` | `lag::KafkaLag` (brings in rdkafka) | off |
//! | `nats` | `lag::NatsLag` (brings in async-nats) | off |

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod lag;
mod propagator;

#[doc(inline)]
pub use propagator::{HeaderExtractor, HeaderInjector, OtelPropagator, install};
