//! The trace layer and the tracing publisher with plain `tracing` (no OpenTelemetry): the
//! span names and fields, the propagator calls, kept creation contexts, and what the logs
//! leave out. The cross-service OpenTelemetry tests live in `herald-otel`.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use herald_core::{
    HandlerError, Headers, Inbound, Message, Origin, Publisher, RouteInfo, Router, SubscribeSpec,
    Subscriber, handler_fn,
    memory::MemoryBroker,
    message::names,
    middleware::{
        Backoff, DeadLetterLayer, RetryLayer, Stack,
        trace::{TraceLayer, TracingPublisher},
    },
    propagation::Propagator,
};
use tower::{Layer, ServiceExt};
use tracing::{
    Subscriber as TracingSubscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{layer::Context, prelude::*, registry::LookupSpan};

#[derive(Clone, Debug, Default)]
struct SpanRec {
    name: String,
    fields: BTreeMap<String, String>,
    parent: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct EventRec {
    span: Option<u64>,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Captured {
    spans: Arc<Mutex<BTreeMap<u64, SpanRec>>>,
    events: Arc<Mutex<Vec<EventRec>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);
impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: TracingSubscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Captured {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut rec = SpanRec {
            name: attrs.metadata().name().to_owned(),
            ..Default::default()
        };
        attrs.record(&mut Fields(&mut rec.fields));
        rec.parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.id().into_u64());
        self.spans.lock().unwrap().insert(id.into_u64(), rec);
    }
    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, _ctx: Context<'_, S>) {
        if let Some(rec) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut rec.fields));
        }
    }
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut rec = EventRec {
            span: ctx.event_span(event).map(|s| s.id().into_u64()),
            ..Default::default()
        };
        event.record(&mut Fields(&mut rec.fields));
        self.events.lock().unwrap().push(rec);
    }
}

impl Captured {
    fn spans_named(&self, otel_name: &str) -> Vec<(u64, SpanRec)> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s.fields.get("otel.name").map(String::as_str) == Some(otel_name))
            .map(|(id, s)| (*id, s.clone()))
            .collect()
    }
}

/// Runs `f` on a current-thread runtime under a capturing subscriber (thread-local, so
/// parallel tests don't mix).
fn captured<F: std::future::Future<Output = ()>>(f: impl FnOnce() -> F) -> Captured {
    let cap = Captured::default();
    let subscriber = tracing_subscriber::registry()
        .with(cap.clone())
        .with(tracing_subscriber::filter::LevelFilter::TRACE);
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f());
    });
    cap
}

/// A propagator that writes a fixed `traceparent` and remembers what it was asked to
/// extract and link.
#[derive(Default)]
struct Fake {
    injected: Mutex<u32>,
    extracted: Mutex<Vec<Option<String>>>,
    linked: Mutex<Vec<String>>,
}
const FAKE_TP: &str = "00-11111111111111111111111111111111-2222222222222222-01";
impl Propagator for Fake {
    fn inject(&self, _span: &tracing::Span, headers: &mut Headers) {
        *self.injected.lock().unwrap() += 1;
        headers.insert(names::TRACEPARENT, FAKE_TP);
    }
    fn extract(&self, headers: &Headers, _span: &tracing::Span) {
        self.extracted
            .lock()
            .unwrap()
            .push(headers.get_str(names::TRACEPARENT).map(str::to_owned));
    }
    fn link(&self, headers: &Headers, _span: &tracing::Span) {
        self.linked
            .lock()
            .unwrap()
            .push(headers.get_str(names::TRACEPARENT).unwrap_or("").to_owned());
    }
}

fn route() -> Arc<RouteInfo> {
    Arc::new(RouteInfo {
        handler: "billing".into(),
        topic: "orders".into(),
        group: "billing-g".into(),
    })
}

#[test]
fn trace_process_span_has_the_messaging_attributes() {
    let fake = Arc::new(Fake::default());
    let f2 = fake.clone();
    let cap = captured(|| async move {
        let svc = TraceLayer::new("kafka")
            .propagator(f2)
            .layer(handler_fn(|_: Inbound| async {
                tracing::info!("inside the handler");
                Ok(())
            }));
        let msg = Message::with_id("m-1", "secret payload")
            .with_key("customer-42")
            .with_correlation_id("flow-7")
            .with_header(names::TRACEPARENT, FAKE_TP)
            .with_header("authorization", "Bearer hunter2");
        let origin = Origin::new("orders")
            .with("partition", 3)
            .with("offset", 42);
        svc.oneshot(Inbound::new(msg, origin, 2, route()))
            .await
            .unwrap();
    });
    let spans = cap.spans_named("process orders");
    assert_eq!(spans.len(), 1);
    let (id, s) = &spans[0];
    let f = |k: &str| s.fields.get(k).cloned().unwrap_or_default();
    assert_eq!(s.name, "process");
    assert_eq!(s.parent, None, "a consumer span has no local parent");
    assert_eq!(f("otel.kind"), "consumer");
    assert_eq!(f("messaging.system"), "kafka");
    assert_eq!(f("messaging.operation.type"), "process");
    assert_eq!(f("messaging.destination.name"), "orders");
    assert_eq!(f("messaging.consumer.group.name"), "billing-g");
    assert_eq!(f("messaging.message.id"), "m-1");
    assert_eq!(f("messaging.message.conversation_id"), "flow-7");
    assert_eq!(f("messaging.destination.partition.id"), "3");
    assert_eq!(f("messaging.kafka.offset"), "42");
    assert_eq!(f("messaging.message.body.size"), "14");
    assert_eq!(f("herald.handler"), "billing");
    assert_eq!(f("herald.attempt"), "2");
    assert_eq!(f("herald.outcome"), "ok");
    assert!(!s.fields.contains_key("otel.status_code"));
    assert_eq!(*fake.extracted.lock().unwrap(), [Some(FAKE_TP.to_owned())]);
    // The handler's log line belongs to the process span.
    let events = cap.events.lock().unwrap();
    let inside = events
        .iter()
        .find(|e| e.fields.get("message").map(String::as_str) == Some("inside the handler"))
        .unwrap();
    assert_eq!(inside.span, Some(*id));
    // No payload, key or header value anywhere in spans or events.
    let all = format!("{:?} {:?}", cap.spans.lock().unwrap(), *events);
    for secret in ["secret payload", "hunter2", "customer-42"] {
        assert!(!all.contains(secret), "{secret} leaked into the logs");
    }
}

#[test]
fn trace_payload_logging_is_opt_in_and_bounded() {
    let cap = captured(|| async {
        let svc = TraceLayer::new("memory")
            .log_payloads_up_to(6)
            .layer(handler_fn(|_: Inbound| async { Ok(()) }));
        let msg = Message::new("secret payload");
        svc.oneshot(Inbound::new(
            msg,
            Origin::new("orders").with("sequence", 9),
            1,
            route(),
        ))
        .await
        .unwrap();
    });
    let events = cap.events.lock().unwrap();
    let p = events
        .iter()
        .find(|e| e.fields.contains_key("payload"))
        .expect("a payload event");
    assert_eq!(p.fields["payload"], "secret");
    assert_eq!(p.fields["truncated"], "true");
    let (_, s) = &cap.spans_named("process orders")[0];
    assert_eq!(s.fields["herald.sequence"], "9");
    assert!(!s.fields.contains_key("messaging.kafka.offset"));
}

#[test]
fn trace_failures_mark_the_span_and_log_the_error() {
    let cap = captured(|| async {
        let svc = TraceLayer::new("nats").layer(handler_fn(|i: Inbound| async move {
            match &i.message.payload[..] {
                b"later" => {
                    Err(HandlerError::transient("busy").redeliver_after(Duration::from_secs(1)))
                }
                _ => Err(HandlerError::permanent("bad total")),
            }
        }));
        svc.clone()
            .oneshot(Inbound::new(
                Message::new("later"),
                Origin::new("a"),
                1,
                route(),
            ))
            .await
            .unwrap_err();
        svc.oneshot(Inbound::new(
            Message::new("bad"),
            Origin::new("b"),
            1,
            route(),
        ))
        .await
        .unwrap_err();
    });
    let (_, a) = &cap.spans_named("process a")[0];
    assert_eq!(a.fields["herald.outcome"], "redelivered");
    assert_eq!(a.fields["otel.status_code"], "ERROR");
    let (b_id, b) = &cap.spans_named("process b")[0];
    assert_eq!(b.fields["herald.outcome"], "error");
    assert_eq!(b.fields["error.type"], "permanent");
    assert_eq!(b.fields["otel.status_description"], "bad total");
    let events = cap.events.lock().unwrap();
    assert!(events.iter().any(|e| {
        e.span == Some(*b_id)
            && e.fields.get("message").map(String::as_str) == Some("handling failed")
            && e.fields
                .get("error")
                .is_some_and(|v| v.contains("bad total"))
    }));
}

#[test]
fn trace_publisher_injects_and_keeps_existing_context() {
    let fake = Arc::new(Fake::default());
    let f2 = fake.clone();
    let broker = MemoryBroker::new();
    let b2 = broker.clone();
    let cap = captured(|| async move {
        let publisher = TracingPublisher::new(b2.clone(), "memory").propagator(f2);
        publisher
            .publish("orders", vec![Message::with_id("fresh", "x")])
            .await
            .unwrap();
        let kept = "00-33333333333333333333333333333333-4444444444444444-01";
        publisher
            .publish(
                "orders",
                vec![
                    Message::with_id("old", "y").with_header(names::TRACEPARENT, kept),
                    Message::with_id("new", "z"),
                ],
            )
            .await
            .unwrap();
        let mut sub = b2
            .subscribe(SubscribeSpec::new("orders", "g"))
            .await
            .unwrap();
        let mut seen = BTreeMap::new();
        for _ in 0..3 {
            let d = sub.next().await.unwrap().unwrap();
            seen.insert(
                d.message.id.clone(),
                d.message.traceparent().map(str::to_owned),
            );
            d.ack().await.unwrap();
        }
        assert_eq!(seen["fresh"].as_deref(), Some(FAKE_TP));
        assert_eq!(
            seen["old"].as_deref(),
            Some(kept),
            "a creation context is kept"
        );
        assert_eq!(seen["new"].as_deref(), Some(FAKE_TP));
    });
    assert_eq!(*fake.injected.lock().unwrap(), 2);
    assert_eq!(fake.linked.lock().unwrap().len(), 1);
    // The single kept message of a parentless publish would take it as parent; a batch
    // does not.
    assert!(fake.extracted.lock().unwrap().is_empty());
    let single = cap.spans_named("publish orders");
    assert_eq!(single.len(), 2);
    let one = single
        .iter()
        .find(|(_, s)| s.fields.contains_key("messaging.message.id"))
        .unwrap();
    assert_eq!(one.1.fields["messaging.message.id"], "fresh");
    assert_eq!(one.1.fields["otel.kind"], "producer");
    assert_eq!(one.1.fields["messaging.operation.type"], "publish");
    let batch = single
        .iter()
        .find(|(_, s)| s.fields.contains_key("messaging.batch.message_count"))
        .unwrap();
    assert_eq!(batch.1.fields["messaging.batch.message_count"], "2");
    assert_eq!(batch.1.fields["herald.outcome"], "ok");
}

/// In the stack the trace layer is outermost: the dead-letter publish runs inside the
/// process span (its publish span is a child of it), and the dead letter keeps the
/// original `traceparent`. A parentless single-message republish (a replay) takes the
/// message's context as its parent.
#[test]
fn trace_dead_letter_publish_is_a_child_of_the_process_span() {
    let fake = Arc::new(Fake::default());
    let f2 = fake.clone();
    let original = "00-55555555555555555555555555555555-6666666666666666-01";
    let cap = captured(|| async move {
        let broker = MemoryBroker::new();
        let publisher =
            Arc::new(TracingPublisher::new(broker.clone(), "memory").propagator(f2.clone()));
        let stack = Stack::new()
            .trace(TraceLayer::new("memory").propagator(f2.clone()))
            .dead_letter(DeadLetterLayer::new(publisher.clone()))
            .retry(RetryLayer::new(Backoff {
                immediate_attempts: 1,
                delayed_attempts: 0,
                ..Default::default()
            }));
        let handler = stack.service(handler_fn(|_: Inbound| async {
            Err::<(), _>(HandlerError::permanent("bad"))
        }));
        let running = Router::new()
            .route("billing", "orders", "billing", handler)
            .start(broker.clone());
        broker
            .publish(
                "orders",
                vec![Message::new("x").with_header(names::TRACEPARENT, original)],
            )
            .await
            .unwrap();
        let mut dlq = broker
            .subscribe(SubscribeSpec::new("orders.dlq", "ops"))
            .await
            .unwrap();
        let parked = dlq.next().await.unwrap().unwrap();
        assert_eq!(parked.message.traceparent(), Some(original));
        running.shutdown().await.unwrap();
        // Replay: republish the dead letter outside any span.
        publisher
            .publish("orders", vec![parked.message.clone()])
            .await
            .unwrap();
        parked.ack().await.unwrap();
    });
    let (process_id, process) = cap.spans_named("process orders")[0].clone();
    assert_eq!(process.fields["herald.outcome"], "dead_lettered");
    assert_eq!(process.fields["otel.status_code"], "ERROR");
    assert_eq!(process.fields["error.type"], "permanent");
    let dlq = cap.spans_named("publish orders.dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].1.parent, Some(process_id));
    assert_eq!(
        *fake.injected.lock().unwrap(),
        0,
        "nothing replaced the original context"
    );
    // extract: once by the process span, once by the parentless replay publish.
    assert_eq!(
        *fake.extracted.lock().unwrap(),
        [Some(original.to_owned()), Some(original.to_owned())]
    );
}
