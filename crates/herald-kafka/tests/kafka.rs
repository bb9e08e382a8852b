//! Kafka-specific behaviour against the real broker at `HERALD_KAFKA_BROKERS`: size and
//! timeout errors, provisioning, the CloudEvents wire format, per-key order under
//! concurrency, backpressure and in-place redelivery.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use herald_core::{
    Delivery, Inbound, Message, PublishErrorKind, Publisher, RouteConfig, Router, SubscribeSpec,
    Subscriber, Subscription, handler_fn,
};
use herald_kafka::{
    AdminErrorKind, KafkaAdmin, KafkaConfig, KafkaPublisher, KafkaSubscriber, wire,
};
use herald_testkit::unique;
use rdkafka::{
    ClientConfig, Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::{Header, Headers as _, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use tokio::time::{Instant, timeout};

const RECEIVE: Duration = Duration::from_secs(30);

async fn next(sub: &mut Subscription) -> Delivery {
    match timeout(RECEIVE, sub.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("subscription error: {e}"),
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("nothing received within {RECEIVE:?}"),
    }
}

/// A message over the size limit fails with `MessageTooLarge`; the next one goes through.
///
/// Tansu accepts records of any size (20 MiB went through in a probe), so the limit
/// tested is the producer's `message.max.bytes`, which librdkafka enforces before
/// sending, exactly like a broker's `max.message.bytes` would refuse it.
#[tokio::test]
async fn too_large_message_is_typed_and_the_producer_keeps_working() {
    let topic = unique("hk-large");
    common::create_topic(&topic, 1).await;
    let publisher = KafkaPublisher::builder(common::brokers().await)
        .message_max_bytes(64 * 1024)
        .build()
        .expect("publisher");
    let err = publisher
        .publish(&topic, vec![Message::new(vec![7u8; 128 * 1024])])
        .await
        .expect_err("a 128 KiB message over a 64 KiB limit must fail");
    assert_eq!(err.kind(), PublishErrorKind::MessageTooLarge, "{err}");
    assert!(!err.is_retriable());
    // A batch stops at the message that cannot be sent: the small one before it goes
    // out, the one after it does not.
    let before = Message::new("before").with_key("k");
    let after = Message::new("after").with_key("k");
    let err = publisher
        .publish(
            &topic,
            vec![
                before.clone(),
                Message::new(vec![0u8; 100 * 1024]).with_key("k"),
                after.clone(),
            ],
        )
        .await
        .expect_err("batch with an oversized message");
    assert_eq!(err.kind(), PublishErrorKind::MessageTooLarge);
    publisher
        .publish(&topic, vec![Message::new("small").with_key("k")])
        .await
        .expect("the producer still works after a refused message");

    let mut sub = common::subscriber()
        .await
        .subscribe(SubscribeSpec::new(&topic, unique("g")))
        .await
        .expect("subscribe");
    let got: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            let d = next(&mut sub).await;
            v.push(String::from_utf8_lossy(&d.message.payload).into_owned());
            d.ack().await.expect("ack");
        }
        v
    };
    assert_eq!(
        got,
        ["before", "small"],
        "the message after the refused one was not sent"
    );
    sub.close().await.expect("close");
}

/// A publisher pointed at a port where nothing listens fails with `Timeout` within the
/// delivery timeout.
#[tokio::test]
async fn unreachable_broker_times_out_within_the_delivery_timeout() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let delivery_timeout = Duration::from_secs(2);
    let publisher = KafkaPublisher::builder(format!("127.0.0.1:{port}"))
        .delivery_timeout(delivery_timeout)
        .build()
        .expect("publisher");
    let started = Instant::now();
    let err = publisher
        .publish("nowhere", vec![Message::new("x"), Message::new("y")])
        .await
        .expect_err("nothing listens");
    let took = started.elapsed();
    // The delivery timed out; librdkafka said why meanwhile, and the error carries it.
    assert_eq!(err.kind(), PublishErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("Connection refused"), "{err}");
    assert!(err.is_retriable());
    assert!(
        took >= delivery_timeout,
        "failed before the timeout: {took:?}"
    );
    assert!(
        took < delivery_timeout + Duration::from_secs(3),
        "took {took:?} for a {delivery_timeout:?} delivery timeout"
    );
    // close is bounded as well: nothing is queued any more.
    timeout(Duration::from_secs(5), publisher.close())
        .await
        .expect("close is bounded")
        .expect("close");
    let err = publisher
        .publish("nowhere", vec![Message::new("z")])
        .await
        .expect_err("closed");
    assert_eq!(err.kind(), PublishErrorKind::Closed);
}

fn partitions_of(brokers: &str, topic: &str) -> Option<usize> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("metadata client");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
}

/// `ensure_topic` creates the topic and its `.dlq`; a second call finds both. (Tansu
/// accepts any name and replication factor, so broker refusals are tested against the
/// mock cluster in `tests/mock.rs`.)
#[tokio::test]
async fn ensure_topic_creates_topic_and_dlq_once() {
    let brokers = common::brokers().await;
    let admin = KafkaAdmin::new(&KafkaConfig::new(&brokers)).expect("admin");
    let topic = unique("hk-admin");
    let first = admin.ensure_topic(&topic, 3, 1).await.expect("create");
    assert!(first.topic_created && first.dlq_created, "{first:?}");
    let again = admin
        .ensure_topic(&topic, 3, 1)
        .await
        .expect("exists is success");
    assert!(!again.topic_created && !again.dlq_created, "{again:?}");
    let b = brokers.clone();
    let (t, d) = (topic.clone(), format!("{topic}.dlq"));
    let (tp, dp) =
        tokio::task::spawn_blocking(move || (partitions_of(&b, &t), partitions_of(&b, &d)))
            .await
            .expect("join");
    assert_eq!(tp, Some(3));
    assert_eq!(dp, Some(3));

    let err = admin
        .ensure_topic(&topic, 0, 1)
        .await
        .expect_err("0 partitions");
    assert_eq!(err.kind(), AdminErrorKind::Invalid);

    admin
        .delete_topics(&[&topic, &format!("{topic}.dlq")])
        .await
        .expect("delete");
}

/// On the wire, herald speaks the CloudEvents Kafka binding; records of foreign
/// producers get a deterministic id that survives redelivery.
#[tokio::test]
async fn wire_format_is_the_cloudevents_kafka_binding() {
    let brokers = common::brokers().await;
    let topic = unique("hk-wire");
    common::create_topic(&topic, 1).await;
    let publisher = common::publisher().await;
    let mut m = Message::new("{}")
        .with_key("k")
        .with_type("herald.test.Thing.v1")
        .with_content_type("application/json");
    m.headers.append("x-trace", "a");
    m.headers.append("x-trace", "b");
    let id = m.id.clone();
    publisher.publish(&topic, vec![m]).await.expect("publish");

    // Read the raw record with plain rdkafka.
    let b = brokers.clone();
    let t = topic.clone();
    let headers = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("group.id", unique("raw"))
            .create()
            .expect("raw consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&t, 0, Offset::Beginning)
            .expect("tpl");
        c.assign(&tpl).expect("assign");
        let deadline = std::time::Instant::now() + RECEIVE;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "raw consumer got nothing"
            );
            if let Some(r) = c.poll(Duration::from_millis(200)) {
                let msg = r.expect("raw record");
                assert_eq!(msg.key(), Some(&b"k"[..]));
                return msg
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
            }
        }
    })
    .await
    .expect("join");
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "ce_id",
            "ce_specversion",
            "ce_type",
            "content-type",
            "x-trace",
            "x-trace"
        ]
    );
    assert_eq!(headers[0].1, id.as_bytes());
    assert_eq!(headers[1].1, b"1.0");
    assert_eq!(headers[2].1, b"herald.test.Thing.v1");
    assert_eq!(headers[4].1, b"a");
    assert_eq!(headers[5].1, b"b");

    // A record from a producer that knows nothing of herald.
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("raw producer");
    let delivered = raw
        .send(
            FutureRecord::to(&topic)
                .payload("foreign")
                .key("k")
                .headers(OwnedHeaders::new().insert(Header {
                    key: "origin",
                    value: Some("legacy"),
                })),
            Duration::from_secs(10),
        )
        .await
        .expect("raw publish");

    let mut sub = common::subscriber()
        .await
        .subscribe(SubscribeSpec::new(&topic, unique("g")))
        .await
        .expect("subscribe");
    let d = next(&mut sub).await;
    assert_eq!(d.message.id, id);
    assert_eq!(d.message.ce_type(), Some("herald.test.Thing.v1"));
    assert_eq!(d.message.header("ce-specversion"), Some("1.0"));
    d.ack().await.expect("ack");
    let d = next(&mut sub).await;
    let expected = wire::fallback_id(&topic, delivered.partition, delivered.offset);
    assert_eq!(d.message.id, expected);
    assert_eq!(d.message.header("origin"), Some("legacy"));
    assert_eq!(d.origin.get("offset"), Some(delivered.offset));
    d.nack(Duration::ZERO).await.expect("nack");
    let d = next(&mut sub).await;
    assert_eq!(d.attempt, 2);
    assert_eq!(d.message.id, expected, "a redelivery keeps the id");
    d.ack().await.expect("ack");
    sub.close().await.expect("close");
}

/// Per-key order holds with 4 partitions and 8 concurrent handlers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_with_router_concurrency_8() {
    let topic = unique("hk-order");
    common::create_topic(&topic, 4).await;
    let publisher = common::publisher().await;
    let keys: Vec<String> = (0..24).map(|k| format!("key-{k}")).collect();
    let per_key = 80;
    let mut batch = Vec::new();
    for i in 0..per_key {
        for k in &keys {
            batch.push(Message::new(format!("{k}:{i}")).with_key(k.clone()));
        }
    }
    let total = batch.len();
    publisher.publish(&topic, batch).await.expect("publish");

    let seen: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
    let partitions_seen: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (s, ps, a, pk) = (
        seen.clone(),
        partitions_seen.clone(),
        active.clone(),
        peak.clone(),
    );
    let router = Router::new().route_with(
        RouteConfig::new("order", &topic, unique("g")).concurrency(8),
        handler_fn(move |i: Inbound| {
            let (s, ps, a, pk) = (s.clone(), ps.clone(), a.clone(), pk.clone());
            async move {
                use std::sync::atomic::Ordering::SeqCst;
                let now = a.fetch_add(1, SeqCst) + 1;
                pk.fetch_max(now, SeqCst);
                let text = String::from_utf8_lossy(&i.message.payload).into_owned();
                let (k, n) = text.split_once(':').expect("k:n");
                // Uneven handler times shuffle completion order across keys.
                tokio::time::sleep(Duration::from_micros(
                    50 * (n.len() as u64 + k.len() as u64 % 3),
                ))
                .await;
                let p = i.origin.get("partition").expect("partition");
                let prev = ps.lock().expect("lock").insert(k.to_owned(), p);
                assert!(
                    prev.is_none_or(|q| q == p),
                    "key {k} seen on two partitions"
                );
                s.lock()
                    .expect("lock")
                    .entry(k.to_owned())
                    .or_default()
                    .push(n.parse().expect("n"));
                a.fetch_sub(1, SeqCst);
                Ok(())
            }
        }),
    );
    let running = router.start(common::subscriber().await);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: usize = seen.lock().expect("lock").values().map(Vec::len).sum();
        if n >= total {
            break;
        }
        assert!(Instant::now() < deadline, "handled {n} of {total}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.expect("shutdown");
    let seen = seen.lock().expect("lock");
    let want: Vec<usize> = (0..per_key).collect();
    for k in &keys {
        assert_eq!(seen[k], want, "order of {k}");
    }
    let used: std::collections::HashSet<i64> = partitions_seen
        .lock()
        .expect("lock")
        .values()
        .copied()
        .collect();
    assert!(used.len() > 1, "keys spread over partitions: {used:?}");
    assert!(
        peak.load(std::sync::atomic::Ordering::SeqCst) > 1,
        "handlers ran concurrently"
    );
}

/// The subscription stops yielding at `max_in_flight` unsettled deliveries and goes on
/// once they are settled.
#[tokio::test]
async fn backpressure_holds_at_max_in_flight() {
    let topic = unique("hk-bp");
    common::create_topic(&topic, 2).await;
    let publisher = common::publisher().await;
    let msgs: Vec<_> = (0..200)
        .map(|i| Message::new(format!("m{i}")).with_key(format!("k{i}")))
        .collect();
    publisher.publish(&topic, msgs).await.expect("publish");
    let max = 16;
    let mut sub = common::subscriber()
        .await
        .subscribe(SubscribeSpec::new(&topic, unique("g")).max_in_flight(max))
        .await
        .expect("subscribe");
    let mut held = Vec::new();
    for _ in 0..max {
        held.push(next(&mut sub).await);
    }
    // Every delivery is unsettled: nothing more may come while they are held.
    let extra = timeout(Duration::from_secs(2), sub.next()).await;
    assert!(
        extra.is_err(),
        "a delivery beyond max_in_flight was yielded"
    );
    for d in held.drain(..) {
        d.ack().await.expect("ack");
    }
    let mut got = max;
    while got < 200 {
        next(&mut sub).await.ack().await.expect("ack");
        got += 1;
    }
    sub.close().await.expect("close");
}

/// A nacked message is redelivered in place and its offset stays uncommitted: after a
/// restart the group starts again at it, even though younger messages were acked.
#[tokio::test]
async fn nacked_offset_stays_uncommitted() {
    let topic = unique("hk-nack");
    common::create_topic(&topic, 1).await;
    let group = unique("g");
    let publisher = common::publisher().await;
    let msgs: Vec<_> = (0..5)
        .map(|i| Message::new(format!("m{i}")).with_key("k"))
        .collect();
    let first_id = msgs[0].id.clone();
    publisher.publish(&topic, msgs).await.expect("publish");
    let subscriber = KafkaSubscriber::builder(common::brokers().await)
        .commit_interval(Duration::from_millis(50))
        .build()
        .expect("subscriber");
    let mut sub = subscriber
        .subscribe(SubscribeSpec::new(&topic, &group))
        .await
        .expect("subscribe");
    let d = next(&mut sub).await;
    assert_eq!(d.message.id, first_id);
    d.nack(Duration::from_secs(600)).await.expect("nack");
    for _ in 1..5 {
        next(&mut sub).await.ack().await.expect("ack");
    }
    sub.close().await.expect("close");

    let mut sub = subscriber
        .subscribe(SubscribeSpec::new(&topic, &group))
        .await
        .expect("resubscribe");
    let d = next(&mut sub).await;
    assert_eq!(
        d.message.id, first_id,
        "the group restarts at the unfinished offset"
    );
    assert_eq!(d.origin.get("offset"), Some(0));
    d.ack().await.expect("ack");
    for i in 1..5 {
        let d = next(&mut sub).await;
        assert_eq!(&d.message.payload[..], format!("m{i}").as_bytes());
        d.ack().await.expect("ack");
    }
    sub.close().await.expect("close");
    // Everything is committed now: a third member sees only what comes next.
    let mut sub = subscriber
        .subscribe(SubscribeSpec::new(&topic, &group))
        .await
        .expect("resubscribe");
    publisher
        .publish(&topic, vec![Message::new("next").with_key("k")])
        .await
        .expect("publish");
    let d = next(&mut sub).await;
    assert_eq!(&d.message.payload[..], b"next");
    d.ack().await.expect("ack");
    sub.close().await.expect("close");
}

/// A subscription that waits for records, or that nobody polls, for longer than
/// `max.poll.interval.ms` stays in its group: herald keeps polling librdkafka (which
/// would otherwise leave the group and report `MaxPollExceeded` on the next poll).
/// Everything published meanwhile arrives in order, without an error.
#[tokio::test]
async fn an_unpolled_subscription_keeps_its_place_in_the_group() {
    let topic = unique("hk-idle");
    common::create_topic(&topic, 1).await;
    let publisher = common::publisher().await;
    let subscriber = KafkaSubscriber::builder(common::brokers().await)
        .session_timeout(Duration::from_secs(6))
        .max_poll_interval(Duration::from_secs(6))
        .commit_interval(Duration::from_millis(200))
        .build()
        .expect("subscriber");
    let mut sub = subscriber
        .subscribe(SubscribeSpec::new(&topic, unique("g")))
        .await
        .expect("subscribe");
    // Polled, with nothing to deliver, for 1.5 × max.poll.interval.ms: no error either.
    match timeout(Duration::from_secs(9), sub.next()).await {
        Err(_) => {}
        Ok(Some(Ok(d))) => panic!("unexpected delivery at offset {:?}", d.origin.get("offset")),
        Ok(Some(Err(e))) => panic!("the waiting subscription reported an error: {e}"),
        Ok(None) => panic!("the subscription ended"),
    }
    let msgs: Vec<_> = (0..20)
        .map(|i| Message::new(format!("m{i}")).with_key("k"))
        .collect();
    publisher.publish(&topic, msgs).await.expect("publish");
    // Not polled for 1.5 × max.poll.interval.ms.
    tokio::time::sleep(Duration::from_secs(9)).await;
    for i in 0..20 {
        let d = next(&mut sub).await;
        assert_eq!(&d.message.payload[..], format!("m{i}").as_bytes());
        assert_eq!(d.attempt, 1);
        d.ack().await.expect("ack");
    }
    // Nothing else is pending: no error item (a left group reports one) and no
    // redelivery.
    match timeout(Duration::from_secs(2), sub.next()).await {
        Err(_) => {}
        Ok(Some(Ok(d))) => panic!("unexpected delivery at offset {:?}", d.origin.get("offset")),
        Ok(Some(Err(e))) => panic!("the subscription reported an error: {e}"),
        Ok(None) => panic!("the subscription ended"),
    }
    sub.close().await.expect("close");
}
