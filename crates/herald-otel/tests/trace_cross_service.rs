//! One trace across services, checked with OpenTelemetry's in-memory span exporter.
//!
//! "Service A" publishes, "service B" consumes, and (for the replay) an "ops" tool
//! republishes a dead letter. Each runs on a thread of its own with its own tracer
//! provider and `tracing` subscriber, so nothing but the message headers carries the
//! trace from one to the other — as between processes. Every scenario runs on memory,
//! Kafka and NATS.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use common::Transport;
use futures::StreamExt;
use herald_core::{
    HandlerError, Inbound, Message, Publisher, RouteConfig, Router, SubscribeSpec, handler_fn,
    middleware::{
        Backoff, DeadLetterLayer, RetryLayer, Stack,
        trace::{TraceLayer, TracingPublisher},
    },
    propagation::Propagator,
};
use herald_otel::OtelPropagator;
use opentelemetry::{
    KeyValue, Value,
    trace::{SpanId, SpanKind, Status, TraceId, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    trace::{InMemorySpanExporter, SdkTracerProvider, SpanData},
};
use tracing::{Dispatch, Instrument};
use tracing_subscriber::prelude::*;

/// One "service": its tracer provider, exporter and subscriber.
struct Service {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    dispatch: Dispatch,
}

impl Service {
    fn new(name: &'static str) -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_resource(Resource::builder_empty().with_service_name(name).build())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer(name)));
        Self {
            exporter,
            provider,
            dispatch: Dispatch::new(subscriber),
        }
    }

    /// Runs `f` to completion on a current-thread runtime of the calling thread, with this
    /// service's subscriber: every task of that runtime traces into this service.
    fn run<F: std::future::Future>(&self, f: F) -> F::Output {
        tracing::dispatcher::with_default(&self.dispatch, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f)
        })
    }

    fn spans(&self) -> Vec<SpanData> {
        let _ = self.provider.force_flush();
        self.exporter.get_finished_spans().expect("finished spans")
    }
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    let mut v: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    v.sort_by_key(|s| s.start_time);
    v
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv: &KeyValue| &kv.value)
}

fn attr_str(span: &SpanData, key: &str) -> String {
    attr(span, key)
        .map(|v| v.as_str().into_owned())
        .unwrap_or_default()
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// What service B's handler does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Fails the first delivery (transient), succeeds on the redelivery.
    FailOnce,
    /// Fails until `replayed` is set: retried, dead-lettered, then (if `replay`) replayed
    /// and handled.
    FailUntilReplayed { replay: bool },
}

struct Run {
    a: Service,
    b: Service,
    ops: Service,
    topic: String,
    group: String,
    message_id: String,
    dead_letter: Option<Message>,
}

fn run_scenario(system: &str, script: Script) -> Run {
    let topic = herald_testkit::unique("trace-orders");
    let group = herald_testkit::unique("billing");
    let transport = block(Transport::new(system, &topic));
    let a = Service::new("service-a");
    let b = Service::new("service-b");
    let ops = Service::new("ops");
    let propagator: Arc<dyn Propagator> = Arc::new(OtelPropagator::new());
    let replayed = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::channel::<u32>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();

    // Service B: the consumer, with the standard stack.
    let consumer = {
        let (transport, topic, group, propagator, replayed) = (
            transport.clone(),
            topic.clone(),
            group.clone(),
            propagator.clone(),
            replayed.clone(),
        );
        let dispatch = b.dispatch.clone();
        let system = transport.system();
        std::thread::spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                block(async move {
                    let dlq_publisher = Arc::new(
                        TracingPublisher::new(transport.publisher().await, system)
                            .propagator(propagator.clone()),
                    );
                    let stack = Stack::new()
                        .trace(TraceLayer::new(system).propagator(propagator))
                        .dead_letter(DeadLetterLayer::new(dlq_publisher))
                        .retry(RetryLayer::new(Backoff {
                            initial: Duration::from_millis(50),
                            multiplier: 1.0,
                            jitter: 0.0,
                            immediate_attempts: 1,
                            delayed_attempts: 1,
                            ..Default::default()
                        }));
                    let handler = stack.service(handler_fn(move |i: Inbound| {
                        let done = done_tx.clone();
                        let replayed = replayed.clone();
                        async move {
                            // The handler's own work: a child of the process span.
                            tracing::info_span!("charge card").in_scope(|| ());
                            let ok = match script {
                                Script::FailOnce => i.attempt >= 2,
                                Script::FailUntilReplayed { .. } => replayed.load(Ordering::SeqCst),
                            };
                            if ok {
                                let _ = done.send(i.attempt);
                                Ok(())
                            } else {
                                Err(HandlerError::transient("payment service unavailable"))
                            }
                        }
                    }));
                    let running = Router::new()
                        .route_with(RouteConfig::new("billing", &topic, &group), handler)
                        .start(transport.subscriber().await);
                    let _ = stop_rx.await;
                    running.shutdown().await.expect("router");
                })
            })
        })
    };

    // Service A: publishes inside a request span of its own.
    let message = Message::new(r#"{"order":"o-1"}"#).with_key("o-1");
    let message_id = message.id.clone();
    a.run(async {
        let publisher = TracingPublisher::new(transport.publisher().await, transport.system())
            .propagator(propagator.clone());
        async {
            publisher
                .publish(&topic, vec![message])
                .await
                .expect("publish")
        }
        .instrument(tracing::info_span!("checkout"))
        .await;
    });

    // Ops: take the dead letter and replay it, outside any span.
    let mut dead_letter = None;
    if let Script::FailUntilReplayed { replay } = script {
        let dlq_topic = format!("{topic}.dlq");
        let parked = ops.run(async {
            let sub = transport.subscriber().await;
            let mut dlq = sub
                .subscribe(SubscribeSpec::new(&dlq_topic, "ops"))
                .await
                .expect("subscribe to the DLQ");
            let d = tokio::time::timeout(Duration::from_secs(60), dlq.next())
                .await
                .expect("a dead letter within 60 s")
                .expect("a dead letter")
                .expect("a delivery");
            let m = d.message.clone();
            d.ack().await.expect("ack");
            dlq.close().await.expect("close");
            if !replay {
                return m;
            }
            replayed.store(true, Ordering::SeqCst);
            let publisher = TracingPublisher::new(transport.publisher().await, transport.system())
                .propagator(propagator.clone());
            publisher
                .publish(&topic, vec![m.clone()])
                .await
                .expect("replay");
            m
        });
        dead_letter = Some(parked);
    }

    match script {
        Script::FailOnce => {
            let attempt = done_rx
                .recv_timeout(Duration::from_secs(90))
                .expect("service B handled the message");
            assert_eq!(attempt, 2, "succeeded on the redelivery");
        }
        Script::FailUntilReplayed { replay: true } => {
            done_rx
                .recv_timeout(Duration::from_secs(90))
                .expect("service B handled the replay");
        }
        Script::FailUntilReplayed { replay: false } => {}
    }
    let _ = stop_tx.send(());
    consumer.join().expect("consumer thread");
    block(transport.cleanup(&topic));
    Run {
        a,
        b,
        ops,
        topic,
        group,
        message_id,
        dead_letter,
    }
}

/// Checks the producer side and returns (trace id, publish span id).
fn check_producer(run: &Run, system: &str) -> (TraceId, SpanId) {
    let a = run.a.spans();
    let checkout = named(&a, "checkout");
    let publish = named(&a, &format!("publish {}", run.topic));
    assert_eq!((checkout.len(), publish.len()), (1, 1), "A's spans: {a:#?}");
    let (checkout, publish) = (checkout[0], publish[0]);
    assert_eq!(
        checkout.parent_span_id,
        SpanId::INVALID,
        "checkout is A's root"
    );
    assert_eq!(publish.parent_span_id, checkout.span_context.span_id());
    assert_eq!(
        publish.span_context.trace_id(),
        checkout.span_context.trace_id()
    );
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(attr_str(publish, "messaging.system"), system);
    assert_eq!(attr_str(publish, "messaging.operation.type"), "publish");
    assert_eq!(attr_str(publish, "messaging.destination.name"), run.topic);
    assert_eq!(attr_str(publish, "messaging.message.id"), run.message_id);
    (
        publish.span_context.trace_id(),
        publish.span_context.span_id(),
    )
}

fn check_process(
    span: &SpanData,
    run: &Run,
    system: &str,
    trace: TraceId,
    parent: SpanId,
    attempt: i64,
) {
    assert_eq!(span.span_context.trace_id(), trace, "one trace id");
    assert_eq!(
        span.parent_span_id, parent,
        "the producer's span is the parent"
    );
    assert!(span.parent_span_is_remote, "a remote parent");
    assert_eq!(span.span_kind, SpanKind::Consumer);
    assert_eq!(attr_str(span, "messaging.system"), system);
    assert_eq!(attr_str(span, "messaging.operation.type"), "process");
    assert_eq!(attr_str(span, "messaging.destination.name"), run.topic);
    assert_eq!(attr_str(span, "messaging.consumer.group.name"), run.group);
    assert_eq!(attr_str(span, "messaging.message.id"), run.message_id);
    assert_eq!(attr(span, "herald.attempt"), Some(&Value::I64(attempt)));
}

/// publish (A) → process ✗ → redelivery → process ✓ (B): one trace, both process spans
/// children of A's publish span, the handler's work a child of each.
fn fail_once_then_succeed(system: &str) {
    let run = run_scenario(system, Script::FailOnce);
    let (trace, publish) = check_producer(&run, system);
    let b = run.b.spans();
    let process = named(&b, &format!("process {}", run.topic));
    assert_eq!(process.len(), 2, "B's spans: {b:#?}");
    check_process(process[0], &run, system, trace, publish, 1);
    check_process(process[1], &run, system, trace, publish, 2);
    assert!(matches!(process[0].status, Status::Error { .. }));
    assert_eq!(attr_str(process[0], "herald.outcome"), "redelivered");
    assert_eq!(process[1].status, Status::Unset);
    assert_eq!(attr_str(process[1], "herald.outcome"), "ok");
    let charge = named(&b, "charge card");
    assert_eq!(charge.len(), 2);
    for (c, p) in charge.iter().zip(&process) {
        assert_eq!(c.parent_span_id, p.span_context.span_id());
        assert_eq!(c.span_context.trace_id(), trace);
    }
    // Nothing of B's started a trace of its own.
    assert!(
        b.iter().all(|s| s.span_context.trace_id() == trace),
        "B's spans: {b:#?}"
    );
}

/// publish (A) → process ✗ → process ✗ → DLQ publish (child of the failing process span,
/// the dead letter keeping A's traceparent) → replay (ops) → process ✓ — one trace.
///
/// Without `replay`, stops after the dead letter: NATS drops a republished message whose
/// id (`Nats-Msg-Id`) it saw within the stream's duplicate window (2 minutes by
/// default), so a replay right away is not delivered there.
fn retry_dead_letter_and_replay(system: &str, replay: bool) {
    let run = run_scenario(system, Script::FailUntilReplayed { replay });
    let (trace, publish) = check_producer(&run, system);
    let b = run.b.spans();
    let process = named(&b, &format!("process {}", run.topic));
    assert_eq!(
        process.len(),
        if replay { 3 } else { 2 },
        "B's spans: {b:#?}"
    );
    check_process(process[0], &run, system, trace, publish, 1);
    check_process(process[1], &run, system, trace, publish, 2);
    assert_eq!(attr_str(process[1], "herald.outcome"), "dead_lettered");
    assert!(
        matches!(&process[1].status, Status::Error { description } if description == "payment service unavailable")
    );
    assert_eq!(attr_str(process[1], "error.type"), "transient");
    if replay {
        // The replay is a new delivery of a new record: attempt 1 again.
        check_process(process[2], &run, system, trace, publish, 1);
        assert_eq!(attr_str(process[2], "herald.outcome"), "ok");
    }

    let dlq = named(&b, &format!("publish {}.dlq", run.topic));
    assert_eq!(dlq.len(), 1, "B's spans: {b:#?}");
    assert_eq!(
        dlq[0].parent_span_id,
        process[1].span_context.span_id(),
        "child of the failing process span"
    );
    assert_eq!(dlq[0].span_context.trace_id(), trace);
    assert_eq!(dlq[0].span_kind, SpanKind::Producer);
    assert!(
        dlq[0]
            .links
            .iter()
            .any(|l| l.span_context.span_id() == publish),
        "the DLQ publish links to the message's creation context"
    );

    // The dead letter still carries A's context.
    let parked = run.dead_letter.as_ref().expect("a dead letter");
    let tp = parked.traceparent().expect("a traceparent");
    assert_eq!(tp, format!("00-{trace}-{publish}-01"));

    if !replay {
        return;
    }
    // The replay publish continues the trace: its parent is the message's context.
    let ops = run.ops.spans();
    let replay = named(&ops, &format!("publish {}", run.topic));
    assert_eq!(replay.len(), 1, "ops spans: {ops:#?}");
    assert_eq!(replay[0].span_context.trace_id(), trace);
    assert_eq!(replay[0].parent_span_id, publish);
    assert!(
        b.iter()
            .chain(&ops)
            .all(|s| s.span_context.trace_id() == trace)
    );
}

#[test]
fn trace_memory_fail_once_then_succeed() {
    fail_once_then_succeed("memory");
}

#[test]
fn trace_kafka_fail_once_then_succeed() {
    fail_once_then_succeed("kafka");
}

#[test]
fn trace_nats_fail_once_then_succeed() {
    fail_once_then_succeed("nats");
}

#[test]
fn trace_memory_retry_dead_letter_and_replay() {
    retry_dead_letter_and_replay("memory", true);
}

#[test]
fn trace_kafka_retry_dead_letter_and_replay() {
    retry_dead_letter_and_replay("kafka", true);
}

#[test]
fn trace_nats_retry_and_dead_letter() {
    retry_dead_letter_and_replay("nats", false);
}
