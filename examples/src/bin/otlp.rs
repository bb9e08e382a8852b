//! OTLP tracing: one trace from the publish to the handling of each message, exported to an
//! OpenTelemetry collector over OTLP/HTTP. Run it with
//!
//! ```text
//! cargo run -p herald-examples --bin otlp
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 cargo run -p herald-examples --bin otlp
//! ```
//!
//! It wires the `tracing-opentelemetry` layer to an OTLP exporter, installs herald's W3C
//! propagator (`herald_otel::install`), publishes three orders through a
//! `TracingPublisher` inside a `checkout` span, and handles them behind the standard stack
//! with its trace slot: one order fails once and is redelivered, one is dead-lettered. The
//! consumer's process spans are children of the publish spans; the dead-letter publish is
//! a child of the failing process span. It prints each message's `traceparent`.
//!
//! Without a collector (the default endpoint, `http://127.0.0.1:4318`, usually has none)
//! the SDK logs `BatchSpanProcessor.ExportError` and the example still exits normally:
//! tracing never takes a service down.

use std::{sync::Arc, time::Duration};

use herald::{
    HandlerError, Inbound, Message, Publisher, Router, handler_fn,
    memory::MemoryBroker,
    middleware::{
        Backoff, DeadLetterLayer, RetryLayer, Stack,
        trace::{TraceLayer, TracingPublisher},
    },
};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::Instrument;
use tracing_subscriber::{EnvFilter, prelude::*};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:4318".to_owned());
    // The OTLP/HTTP exporter uses a blocking client: build it before the async runtime.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_timeout(Duration::from_secs(2))
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("herald-otlp-example")
                .build(),
        )
        .build();
    tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with(tracing_subscriber::fmt::layer().with_target(false))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("herald-examples")))
        .init();
    // herald's trace layer and tracing publisher now read and write W3C trace context.
    herald_otel::install();

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run())?;
    drop(runtime);

    // Flushes what is left. Export failures (no collector) are logged by the SDK above,
    // not raised: tracing never takes a service down.
    match provider.shutdown() {
        Ok(()) => println!("otlp: tracer provider shut down; spans sent to {endpoint}"),
        Err(e) => println!("otlp: shutting down the tracer provider failed: {e}"),
    }
    Ok(())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let broker = MemoryBroker::new();
    let publisher = Arc::new(TracingPublisher::new(broker.clone(), "memory"));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();

    let stack = Stack::new()
        .trace(TraceLayer::new("memory"))
        .dead_letter(DeadLetterLayer::new(publisher.clone()))
        .retry(RetryLayer::new(Backoff {
            initial: Duration::from_millis(50),
            immediate_attempts: 1,
            delayed_attempts: 1,
            ..Default::default()
        }));
    let handler = stack.service(handler_fn(move |inbound: Inbound| {
        let done = done_tx.clone();
        async move {
            let order = String::from_utf8_lossy(&inbound.message.payload).into_owned();
            tracing::info!(
                traceparent = inbound.message.traceparent().unwrap_or("-"),
                attempt = inbound.attempt,
                "billing {order}"
            );
            let outcome = match order.as_str() {
                "o-2" if inbound.attempt == 1 => {
                    Err(HandlerError::transient("card processor busy"))
                }
                "o-3" => Err(HandlerError::permanent("total does not match the items")),
                _ => Ok(()),
            };
            if outcome.is_ok() || inbound.attempt > 1 || order == "o-3" {
                done.send(order).ok();
            }
            outcome
        }
    }));
    let running = Router::new()
        .route("billing", "orders", "billing", handler)
        .start(broker.clone());

    async {
        for i in 1..=3 {
            let msg = Message::new(format!("o-{i}")).with_key(format!("o-{i}"));
            publisher.publish("orders", vec![msg]).await?;
        }
        Ok::<_, herald::PublishError>(())
    }
    .instrument(tracing::info_span!("checkout"))
    .await?;

    let mut handled = Vec::new();
    while handled.len() < 3 {
        let order = tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
            .await?
            .ok_or("router stopped early")?;
        handled.push(order);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.retained("orders.dlq") < 1 || broker.lag("orders", "billing") > 0 {
        if tokio::time::Instant::now() > deadline {
            return Err("the dead letter was not published in time".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.shutdown().await?;
    handled.sort();
    println!("otlp: 3 published, handled {handled:?}, 1 dead-lettered");
    Ok(())
}
