//! Metrics recorded by the stack, checked with a `DebuggingRecorder` against scripted runs
//! whose counts are known exactly.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use herald_core::{
    HandlerError, Inbound, Message, Origin, PublishError, PublishErrorKind, Publisher, RouteConfig,
    RouteInfo, Router, handler_fn,
    memory::MemoryBroker,
    middleware::{
        Backoff, BreakerConfig, BreakerLayer, DeadLetterLayer, RetryLayer, Stack,
        metrics::{BreakerMetrics, MeteredPublisher, MetricsLayer, names},
    },
};
use metrics_util::{
    CompositeKey, MetricKind,
    debugging::{DebugValue, DebuggingRecorder},
};
use tower::{Layer, ServiceExt};

type Snap = Vec<(CompositeKey, DebugValue)>;

/// Runs `f` on a current-thread runtime with a recorder of its own, and returns what was
/// recorded. Every task of the runtime runs on this thread, so the local recorder sees
/// them all, and tests running in parallel do not mix their numbers.
fn recorded<F: std::future::Future<Output = ()>>(f: impl FnOnce() -> F) -> Snap {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f());
    });
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| (k, v))
        .collect()
}

fn matching<'a>(
    snap: &'a Snap,
    kind: MetricKind,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a DebugValue> + 'a {
    snap.iter()
        .filter(move |(k, _)| k.kind() == kind && k.key().name() == name)
        .filter(move |(k, _)| {
            labels
                .iter()
                .all(|(n, v)| k.key().labels().any(|l| l.key() == *n && l.value() == *v))
        })
        .map(|(_, v)| v)
}

fn counter(snap: &Snap, name: &str, labels: &[(&str, &str)]) -> u64 {
    matching(snap, MetricKind::Counter, name, labels)
        .map(|v| match v {
            DebugValue::Counter(c) => *c,
            _ => 0,
        })
        .sum()
}

fn gauge(snap: &Snap, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    matching(snap, MetricKind::Gauge, name, labels)
        .map(|v| match v {
            DebugValue::Gauge(g) => g.0,
            _ => f64::NAN,
        })
        .next()
}

fn histogram_count(snap: &Snap, name: &str, labels: &[(&str, &str)]) -> usize {
    matching(snap, MetricKind::Histogram, name, labels)
        .map(|v| match v {
            DebugValue::Histogram(h) => h.len(),
            _ => 0,
        })
        .sum()
}

fn quick(immediate: u32, delayed: u32) -> Backoff {
    Backoff {
        initial: Duration::from_millis(1),
        multiplier: 1.0,
        max: Duration::from_millis(5),
        jitter: 0.0,
        immediate_attempts: immediate,
        delayed_attempts: delayed,
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const ROUTE: [(&str, &str); 3] = [
    ("handler", "billing"),
    ("topic", "orders"),
    ("group", "billing"),
];

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = ROUTE.to_vec();
    v.extend_from_slice(extra);
    v
}

/// 100 messages; three fail once and succeed on an in-process retry; one fails for good
/// and is dead-lettered. Every count is known in advance.
#[test]
fn metric_counts_match_a_scripted_run() {
    let snap = recorded(|| async {
        let broker = MemoryBroker::new();
        let publisher = Arc::new(MeteredPublisher::new(broker.clone()));
        let stack = Stack::new()
            .metrics(MetricsLayer::new())
            .dead_letter(DeadLetterLayer::new(publisher.clone()))
            .breaker(
                BreakerLayer::new(BreakerConfig {
                    failure_threshold: 50,
                    ..Default::default()
                })
                .on_state_change(BreakerMetrics::new()),
            )
            .retry(RetryLayer::new(quick(3, 0)))
            .timeout(Duration::from_secs(5));
        let failed_once = Arc::new(Mutex::new(HashSet::new()));
        let handler = stack.service(handler_fn(move |i: Inbound| {
            let failed_once = failed_once.clone();
            async move {
                let n: u32 = std::str::from_utf8(&i.message.payload)
                    .unwrap()
                    .parse()
                    .unwrap();
                if n == 99 {
                    return Err(HandlerError::permanent("bad total"));
                }
                if [10, 20, 30].contains(&n) && failed_once.lock().unwrap().insert(n) {
                    return Err(HandlerError::transient("db busy"));
                }
                Ok(())
            }
        }));
        let running = Router::new()
            .route_with(
                RouteConfig::new("billing", "orders", "billing").concurrency(4),
                handler,
            )
            .start(broker.clone());
        let messages: Vec<_> = (0..100)
            .map(|i| Message::new(i.to_string()).with_key(format!("k{}", i % 7)))
            .collect();
        publisher.publish("orders", messages).await.unwrap();
        wait_until("all handled", || {
            broker.lag("orders", "billing") == 0 && broker.retained("orders.dlq") == 1
        })
        .await;
        running.shutdown().await.unwrap();
    });

    assert_eq!(
        counter(&snap, names::HANDLED, &ROUTE),
        100,
        "one per delivery"
    );
    assert_eq!(
        counter(&snap, names::HANDLED, &with(&[("outcome", "ok")])),
        99
    );
    assert_eq!(
        counter(
            &snap,
            names::HANDLED,
            &with(&[("outcome", "dead_lettered")])
        ),
        1
    );
    assert_eq!(counter(&snap, names::RETRIED, &ROUTE), 3);
    assert_eq!(
        counter(&snap, names::RETRIED, &with(&[("kind", "immediate")])),
        3
    );
    assert_eq!(
        counter(&snap, names::FAILED, &with(&[("class", "transient")])),
        3
    );
    assert_eq!(
        counter(&snap, names::FAILED, &with(&[("class", "permanent")])),
        1
    );
    assert_eq!(counter(&snap, names::DEAD_LETTERED, &ROUTE), 1);
    assert_eq!(
        counter(
            &snap,
            names::DEAD_LETTERED,
            &with(&[("class", "permanent")])
        ),
        1
    );
    assert_eq!(
        counter(&snap, names::PUBLISHED, &[("topic", "orders")]),
        100
    );
    assert_eq!(
        counter(&snap, names::PUBLISHED, &[("topic", "orders.dlq")]),
        1
    );
    assert_eq!(counter(&snap, names::PUBLISH_FAILURES, &[]), 0);
    assert_eq!(histogram_count(&snap, names::HANDLER_DURATION, &ROUTE), 100);
    assert_eq!(
        histogram_count(&snap, names::PUBLISH_DURATION, &[("topic", "orders")]),
        1
    );
    assert_eq!(gauge(&snap, names::IN_FLIGHT, &ROUTE), Some(0.0));
    assert_eq!(
        counter(&snap, names::BREAKER_STATE_CHANGES, &[]),
        0,
        "50 failures needed"
    );
    // Nothing is counted twice under another name.
    let names_seen: HashSet<_> = snap
        .iter()
        .map(|(k, _)| k.key().name().to_owned())
        .collect();
    assert!(!names_seen.contains("herald_duplicates_total"));
}

/// Delayed retries through the broker, retries spent, and the dead-letter layer taking a
/// transient failure; the outcome of each delivery is counted.
#[test]
fn metric_redelivery_and_spent_retries() {
    let snap = recorded(|| async {
        let broker = MemoryBroker::new();
        let stack = Stack::new()
            .metrics(MetricsLayer::new())
            .dead_letter(DeadLetterLayer::new(Arc::new(broker.clone())))
            .retry(RetryLayer::new(quick(2, 1)));
        let handler = stack.service(handler_fn(|_: Inbound| async {
            Err::<(), _>(HandlerError::transient("down"))
        }));
        let running = Router::new()
            .route("billing", "orders", "billing", handler)
            .start(broker.clone());
        broker
            .publish("orders", vec![Message::new("x")])
            .await
            .unwrap();
        wait_until("dead-lettered", || broker.retained("orders.dlq") == 1).await;
        wait_until("acked", || broker.lag("orders", "billing") == 0).await;
        running.shutdown().await.unwrap();
    });
    // Delivery 1: attempt, immediate retry, attempt, redelivery asked. Delivery 2: attempt,
    // immediate retry, attempt, spent → dead letter.
    assert_eq!(
        counter(&snap, names::FAILED, &with(&[("class", "transient")])),
        4
    );
    assert_eq!(
        counter(&snap, names::RETRIED, &with(&[("kind", "immediate")])),
        2
    );
    assert_eq!(
        counter(&snap, names::RETRIED, &with(&[("kind", "redelivery")])),
        1
    );
    assert_eq!(
        counter(&snap, names::HANDLED, &with(&[("outcome", "redelivered")])),
        1
    );
    assert_eq!(
        counter(
            &snap,
            names::HANDLED,
            &with(&[("outcome", "dead_lettered")])
        ),
        1
    );
    assert_eq!(counter(&snap, names::HANDLED, &ROUTE), 2);
    assert_eq!(
        counter(
            &snap,
            names::DEAD_LETTERED,
            &with(&[("class", "transient")])
        ),
        1
    );
}

/// The breaker hook records each transition and the state gauge.
#[test]
fn metric_breaker_transitions_and_state() {
    let snap = recorded(|| async {
        let route = Arc::new(RouteInfo {
            handler: "billing".into(),
            topic: "orders".into(),
            group: "billing".into(),
        });
        let svc = BreakerLayer::new(BreakerConfig {
            failure_threshold: 2,
            open_for: Duration::from_millis(20),
            ..Default::default()
        })
        .on_state_change(BreakerMetrics::new())
        .layer(handler_fn(|i: Inbound| async move {
            if &i.message.payload[..] == b"ok" {
                Ok(())
            } else {
                Err(HandlerError::transient("down"))
            }
        }));
        let msg = |p: &'static str| {
            Inbound::new(Message::new(p), Origin::new("orders"), 1, route.clone())
        };
        svc.clone().oneshot(msg("x")).await.unwrap_err();
        svc.clone().oneshot(msg("x")).await.unwrap_err(); // closed → open
        svc.clone().oneshot(msg("ok")).await.unwrap_err(); // turned away
        tokio::time::sleep(Duration::from_millis(30)).await;
        svc.clone().oneshot(msg("ok")).await.unwrap(); // open → half-open → closed
    });
    let change = |from, to| {
        counter(
            &snap,
            names::BREAKER_STATE_CHANGES,
            &with(&[("from", from), ("to", to)]),
        )
    };
    assert_eq!(change("closed", "open"), 1);
    assert_eq!(change("open", "half-open"), 1);
    assert_eq!(change("half-open", "closed"), 1);
    assert_eq!(counter(&snap, names::BREAKER_STATE_CHANGES, &ROUTE), 3);
    assert_eq!(
        gauge(&snap, names::BREAKER_STATE, &ROUTE),
        Some(0.0),
        "closed again"
    );
}

/// The in-flight gauge goes up while a handler runs and back down after, also when the
/// delivery's future is dropped.
#[test]
fn metric_in_flight_gauge_follows_deliveries() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A snapshot drains what it reports (a gauge restarts from 0), so add them up.
    let total = std::cell::Cell::new(0.0);
    let in_flight = |s: &metrics_util::debugging::Snapshotter| {
        let snap: Snap = s
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(k, _, _, v)| (k, v))
            .collect();
        total.set(total.get() + gauge(&snap, names::IN_FLIGHT, &ROUTE).unwrap_or(0.0));
        Some(total.get())
    };
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (entered_tx, mut entered_rx) = tokio::sync::mpsc::unbounded_channel();
            let release = Arc::new(tokio::sync::Notify::new());
            let r2 = release.clone();
            let svc = MetricsLayer::new().layer(handler_fn(move |_: Inbound| {
                let entered = entered_tx.clone();
                let release = r2.clone();
                async move {
                    entered.send(()).unwrap();
                    release.notified().await;
                    Ok(())
                }
            }));
            let route = Arc::new(RouteInfo {
                handler: "billing".into(),
                topic: "orders".into(),
                group: "billing".into(),
            });
            let msg = || Inbound::new(Message::new("x"), Origin::new("orders"), 1, route.clone());
            let a = tokio::spawn(svc.clone().oneshot(msg()));
            let b = tokio::spawn(svc.clone().oneshot(msg()));
            entered_rx.recv().await.unwrap();
            entered_rx.recv().await.unwrap();
            assert_eq!(in_flight(&snapshotter), Some(2.0));
            b.abort();
            let _ = b.await;
            assert_eq!(in_flight(&snapshotter), Some(1.0));
            release.notify_one();
            a.await.unwrap().unwrap();
            assert_eq!(in_flight(&snapshotter), Some(0.0));
        });
    });
}

struct Failing;
impl Publisher for Failing {
    fn publish<'a>(
        &'a self,
        _topic: &'a str,
        _messages: Vec<Message>,
    ) -> futures::future::BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async { Err(PublishError::new(PublishErrorKind::Timeout, "no ack")) })
    }
}

/// A failed publish counts each message of the batch, by error kind; a dead-letter
/// publish that fails leaves the delivery `redelivered`, not `dead_lettered`.
#[test]
fn metric_publish_failures_and_failed_dead_letter() {
    let snap = recorded(|| async {
        let failing = MeteredPublisher::new(Failing);
        failing
            .publish("orders", vec![Message::new("a"), Message::new("b")])
            .await
            .unwrap_err();

        let broker = MemoryBroker::new();
        let stack = Stack::new()
            .metrics(MetricsLayer::new())
            .dead_letter(DeadLetterLayer::new(Arc::new(MeteredPublisher::new(
                Failing,
            ))));
        let route = Arc::new(RouteInfo {
            handler: "billing".into(),
            topic: "orders".into(),
            group: "billing".into(),
        });
        let svc = stack.service(handler_fn(|_: Inbound| async {
            Err::<(), _>(HandlerError::permanent("bad"))
        }));
        let err = svc
            .oneshot(Inbound::new(
                Message::new("x"),
                Origin::new("orders"),
                1,
                route,
            ))
            .await
            .unwrap_err();
        assert!(err.redelivery().is_some());
        let _ = broker;
    });
    assert_eq!(
        counter(
            &snap,
            names::PUBLISH_FAILURES,
            &[("topic", "orders"), ("kind", "timeout")]
        ),
        2
    );
    assert_eq!(
        counter(
            &snap,
            names::PUBLISH_FAILURES,
            &[("topic", "orders.dlq"), ("kind", "timeout")]
        ),
        1
    );
    assert_eq!(counter(&snap, names::PUBLISHED, &[]), 0);
    assert_eq!(
        counter(&snap, names::HANDLED, &with(&[("outcome", "redelivered")])),
        1
    );
    assert_eq!(counter(&snap, names::DEAD_LETTERED, &[]), 0);
    assert_eq!(
        counter(&snap, names::FAILED, &with(&[("class", "permanent")])),
        1
    );
}

/// A metrics layer alone (no stack) still records the per-delivery metrics.
#[test]
fn metric_layer_alone_records_per_delivery_metrics() {
    let snap = recorded(|| async {
        let broker = MemoryBroker::new();
        let failures = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let f2 = failures.clone();
        let handler = MetricsLayer::new().layer(handler_fn(move |i: Inbound| {
            let failures = f2.clone();
            async move {
                if &i.message.payload[..] == b"fail" {
                    failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Err(HandlerError::transient("x"))
                } else {
                    Ok(())
                }
            }
        }));
        let running = Router::new()
            .route("billing", "orders", "billing", handler)
            .start(broker.clone());
        broker
            .publish("orders", vec![Message::new("a"), Message::new("fail")])
            .await
            .unwrap();
        wait_until("one ok and one failure", || {
            broker.lag("orders", "billing") == 1
                && failures.load(std::sync::atomic::Ordering::SeqCst) >= 1
        })
        .await;
        running.shutdown().await.unwrap();
    });
    assert_eq!(
        counter(&snap, names::HANDLED, &with(&[("outcome", "ok")])),
        1
    );
    assert!(counter(&snap, names::HANDLED, &with(&[("outcome", "error")])) >= 1);
    assert_eq!(
        counter(&snap, names::FAILED, &[]),
        0,
        "failed attempts need the stack's probes"
    );
}
