//! Consumer lag against the real brokers: publish 1 000 messages, read a lag of 1 000
//! while nothing is acknowledged, consume, read 0 — on Kafka (committed offsets vs high
//! watermarks), NATS (consumer info) and memory (`MemoryBroker::lag`). The gauges are
//! checked with a `DebuggingRecorder`.

mod common;

use std::{sync::Arc, time::Duration};

use common::{Transport, eventually};
use herald_core::{
    Inbound, Message, Publisher, RouteConfig, Router, handler_fn, middleware::metrics::names,
};
use herald_otel::lag::{KafkaLag, NatsLag};
use metrics_util::{
    MetricKind,
    debugging::{DebugValue, DebuggingRecorder, Snapshotter},
};
use tokio::sync::watch;

const N: usize = 1000;

fn messages() -> Vec<Message> {
    (0..N)
        .map(|i| Message::new(format!("{i}")).with_key(format!("k{}", i % 17)))
        .collect()
}

/// Runs `f` on a current-thread runtime with a recorder of its own.
fn with_recorder<F: std::future::Future<Output = ()>>(f: impl FnOnce(Snapshotter) -> F) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f(snapshotter));
    });
}

/// The sum of the gauges named `name` whose labels include `labels`, as last set (a
/// snapshot drains the recorder; gauges not set since read as absent).
fn gauge_sum(s: &Snapshotter, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for (k, _, _, v) in s.snapshot().into_vec() {
        if k.kind() == MetricKind::Gauge
            && k.key().name() == name
            && labels
                .iter()
                .all(|(n, val)| k.key().labels().any(|l| l.key() == *n && l.value() == *val))
            && let DebugValue::Gauge(g) = v
        {
            *found.get_or_insert(0.0) += g.0;
        }
    }
    found
}

/// A router whose handler waits for `gate` before acknowledging anything.
fn gated_router(topic: &str, group: &str, gate: watch::Receiver<bool>) -> Router {
    Router::new().route_with(
        RouteConfig::new("lag", topic, group).concurrency(4),
        handler_fn(move |_: Inbound| {
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok(())
            }
        }),
    )
}

#[test]
fn lag_kafka_committed_offsets_against_high_watermarks() {
    with_recorder(|snap| async move {
        let topic = herald_testkit::unique("lag-orders");
        let group = herald_testkit::unique("lag-billing");
        let transport = Transport::new("kafka", &topic).await;
        let Transport::Kafka { brokers } = &transport else {
            unreachable!()
        };
        // One record per batch: Tansu, the Kafka-protocol broker of the test machine,
        // answers ListOffsets(latest) with the last *batch's* base offset + 1, which
        // undercounts batched records. Real Kafka does not; the reader is the same.
        let publisher = herald_kafka::KafkaPublisher::builder(brokers.clone())
            .batch_messages(1)
            .linger(Duration::ZERO)
            .build()
            .expect("publisher");
        publisher
            .publish(&topic, messages())
            .await
            .expect("publish");

        let lag = KafkaLag::new(brokers, &group).expect("lag reader");
        let parts = lag.read(&topic).await.expect("read lag");
        assert_eq!(parts.len(), 3, "one entry per partition");
        assert!(
            parts.iter().all(|p| p.committed.is_none()),
            "nothing committed yet: {parts:?}"
        );
        assert_eq!(
            parts.iter().map(|p| p.lag).sum::<u64>(),
            N as u64,
            "{parts:?}"
        );
        assert_eq!(lag.record(&topic).await.expect("record"), N as u64);
        let labels = [("topic", topic.as_str()), ("group", group.as_str())];
        assert_eq!(
            gauge_sum(&snap, names::CONSUMER_LAG, &labels),
            Some(N as f64)
        );

        // Consume with the gate shut: nothing is acknowledged, so nothing is committed.
        let (open, gate) = watch::channel(false);
        let monitor = lag.watch(&topic, Duration::from_millis(100));
        let running = gated_router(&topic, &group, gate).start(transport.subscriber().await);
        eventually("the monitor reports 1 000", 60, || async {
            gauge_sum(&snap, names::CONSUMER_LAG, &labels) == Some(N as f64)
        })
        .await;
        assert_eq!(lag.total(&topic).await.expect("read lag"), N as u64);

        open.send_replace(true);
        eventually("lag 0", 60, || async {
            lag.total(&topic).await.ok() == Some(0)
        })
        .await;
        let parts = lag.read(&topic).await.expect("read lag");
        assert!(
            parts.iter().all(|p| p.committed == Some(p.high_watermark)),
            "{parts:?}"
        );
        eventually("the monitor reports 0", 10, || async {
            gauge_sum(&snap, names::CONSUMER_LAG, &labels) == Some(0.0)
        })
        .await;
        drop(monitor);
        running.shutdown().await.expect("router");
        transport.cleanup(&topic).await;
    });
}

#[test]
fn lag_kafka_unknown_topic_is_not_found() {
    with_recorder(|_| async {
        let brokers = herald_testkit::fixtures::kafka_brokers().await;
        let lag = KafkaLag::new(&brokers, "nobody")
            .expect("lag reader")
            .timeout(Duration::from_secs(5));
        let topic = herald_testkit::unique("lag-missing");
        // Tansu may auto-create topics on a metadata request; accept that as 0 lag.
        match lag.read(&topic).await {
            Err(e) => assert_eq!(e.kind(), herald_otel::lag::LagErrorKind::NotFound, "{e}"),
            Ok(parts) => assert_eq!(parts.iter().map(|p| p.lag).sum::<u64>(), 0),
        }
    });
}

#[test]
fn lag_nats_pending_plus_ack_pending() {
    with_recorder(|snap| async move {
        let topic = herald_testkit::unique("lag-orders");
        let group = herald_testkit::unique("lag-billing");
        let transport = Transport::new("nats", &topic).await;
        let Transport::Nats { url } = &transport else {
            unreachable!()
        };
        transport
            .publisher()
            .await
            .publish(&topic, messages())
            .await
            .expect("publish");

        let client = herald_nats::async_nats::connect(url.as_str())
            .await
            .expect("connect");
        let lag = NatsLag::from_client(client);
        let stream = herald_nats::mapping::stream_name(&topic);
        let consumer = herald_nats::mapping::consumer_name(&group);

        // Before the group's consumer exists: everything retained is pending.
        let p = lag.read(&stream, &consumer).await.expect("read");
        assert!(!p.exists);
        assert_eq!(p.total(), N as u64);

        // The consumer exists and holds deliveries, but acknowledges nothing.
        let (open, gate) = watch::channel(false);
        let running = gated_router(&topic, &group, gate).start(transport.subscriber().await);
        eventually("the consumer exists", 30, || async {
            lag.read(&stream, &consumer)
                .await
                .is_ok_and(|p| p.exists && p.num_ack_pending > 0)
        })
        .await;
        let p = lag.read(&stream, &consumer).await.expect("read");
        assert_eq!(p.total(), N as u64, "{p:?}");
        assert_eq!(
            lag.record(&stream, &consumer).await.expect("record"),
            N as u64
        );
        let labels = [("stream", stream.as_str()), ("consumer", consumer.as_str())];
        assert_eq!(
            gauge_sum(&snap, names::CONSUMER_PENDING, &labels),
            Some(N as f64)
        );

        open.send_replace(true);
        eventually("nothing pending", 60, || async {
            lag.read(&stream, &consumer).await.ok().map(|p| p.total()) == Some(0)
        })
        .await;
        assert_eq!(lag.record(&stream, &consumer).await.expect("record"), 0);
        running.shutdown().await.expect("router");
        transport.cleanup(&topic).await;
    });
}

#[test]
fn lag_nats_unknown_stream_is_not_found() {
    with_recorder(|_| async {
        let url = herald_testkit::fixtures::nats_url().await;
        let lag = NatsLag::from_client(
            herald_nats::async_nats::connect(url.as_str())
                .await
                .expect("connect"),
        );
        let e = lag
            .read(&herald_testkit::unique("lag_missing"), "nobody")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), herald_otel::lag::LagErrorKind::NotFound, "{e}");
    });
}

#[test]
fn lag_memory_counts_unacknowledged() {
    with_recorder(|_| async {
        let transport = Transport::new("memory", "orders").await;
        let Transport::Memory(broker) = transport.clone() else {
            unreachable!()
        };
        broker.publish("orders", messages()).await.expect("publish");
        assert_eq!(broker.lag("orders", "billing"), N as u64);
        let (open, gate) = watch::channel(false);
        let running = gated_router("orders", "billing", gate).start(Arc::new(broker.clone()));
        tokio::task::yield_now().await;
        assert_eq!(broker.lag("orders", "billing"), N as u64);
        open.send_replace(true);
        eventually("lag 0", 10, || async {
            broker.lag("orders", "billing") == 0
        })
        .await;
        running.shutdown().await.expect("router");
    });
}
