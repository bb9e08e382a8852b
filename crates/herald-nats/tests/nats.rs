//! NATS-specific behaviour against a real server: progress heartbeats, nack delays, the
//! dead-letter path, duplicate window, provisioning errors, wire format, notifier, auth.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use herald_core::{
    Delivery, HandlerError, Inbound, Message, PublishErrorKind, Publisher, Router, StartFrom,
    SubscribeErrorKind, SubscribeSpec, Subscriber, Subscription, handler_fn,
    middleware::{Backoff, DeadLetterLayer, RetryLayer},
};
use herald_nats::{
    ConnectErrorKind, NatsBroker, NatsConfig, ProvisionErrorKind,
    config::{AckMode, Auth, Retention, Secret},
    mapping,
};
use herald_testkit::unique;
use tokio::time::{Instant, timeout};
use tower::Layer;

async fn next(sub: &mut Subscription, within: Duration, what: &str) -> Delivery {
    match timeout(within, sub.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("{what}: subscription error: {e}"),
        Ok(None) => panic!("{what}: subscription ended"),
        Err(_) => panic!("{what}: nothing within {within:?}"),
    }
}

/// Asserts that nothing arrives for `d` (a negative check: the wait is the point).
async fn nothing_for(sub: &mut Subscription, d: Duration, what: &str) {
    if let Ok(Some(r)) = timeout(d, sub.next()).await {
        match r {
            Ok(d) => panic!(
                "{what}: unexpected delivery {:?} attempt {}",
                d.message, d.attempt
            ),
            Err(e) => panic!("{what}: subscription error {e}"),
        }
    }
}

struct Env {
    broker: NatsBroker,
    cleanup: common::Cleanup,
    url: String,
}

impl Env {
    async fn new(tweak: impl FnOnce(&mut NatsConfig)) -> Self {
        common::init_tracing();
        let url = common::url().await;
        let mut cfg = NatsConfig::new(&url);
        tweak(&mut cfg);
        Self {
            broker: common::connect(cfg).await,
            cleanup: common::Cleanup::default(),
            url,
        }
    }

    fn topic(&self, prefix: &str) -> String {
        let t = unique(prefix);
        self.cleanup.add(&self.url, &t);
        t
    }

    async fn stream_messages(&self, topic: &str) -> u64 {
        let mut s = self
            .broker
            .jetstream()
            .get_stream(mapping::stream_name(topic))
            .await
            .expect("stream");
        s.info().await.expect("info").state.messages
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_delivery_without_progress_is_redelivered() {
    let env = Env::new(|c| {
        c.consumer.ack_wait = Duration::from_secs(1);
        c.consumer.progress_heartbeats = false;
    })
    .await;
    let topic = env.topic("stall");
    env.broker
        .publish(&topic, vec![Message::new("slow")])
        .await
        .expect("publish");
    let mut sub = env
        .broker
        .subscribe(SubscribeSpec::new(&topic, unique("g")))
        .await
        .expect("subscribe");
    let first = next(&mut sub, Duration::from_secs(10), "first").await;
    assert_eq!(first.attempt, 1);
    let held_at = Instant::now();
    // Keep `first` unsettled and silent: past ack_wait the server gives it out again.
    let again = next(&mut sub, Duration::from_secs(10), "redelivery").await;
    assert_eq!(again.message.id, first.message.id);
    assert_eq!(again.attempt, 2);
    assert!(
        held_at.elapsed() >= Duration::from_millis(900),
        "redelivered after {:?}",
        held_at.elapsed()
    );
    again.ack().await.expect("ack");
    first
        .ack()
        .await
        .expect("late ack of the first delivery is harmless");
    sub.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_heartbeats_keep_a_slow_handlers_message() {
    let env = Env::new(|c| c.consumer.ack_wait = Duration::from_secs(1)).await;
    let topic = env.topic("progress");
    env.broker
        .publish(&topic, vec![Message::new("slow")])
        .await
        .expect("publish");
    let group = unique("g");
    let mut sub = env
        .broker
        .subscribe(SubscribeSpec::new(&topic, &group))
        .await
        .expect("subscribe");
    let first = next(&mut sub, Duration::from_secs(10), "first").await;
    // Held for three times ack_wait: AckProgress keeps it ours.
    nothing_for(&mut sub, Duration::from_secs(3), "while held with progress").await;
    first.ack().await.expect("ack");
    nothing_for(&mut sub, Duration::from_millis(1500), "after ack").await;
    sub.close().await.expect("close");
    let info = env
        .broker
        .jetstream()
        .get_stream(mapping::stream_name(&topic))
        .await
        .expect("stream")
        .consumer_info(mapping::consumer_name(&group))
        .await
        .expect("consumer");
    assert_eq!(info.num_redelivered, 0, "the server never redelivered it");
    assert_eq!(info.num_ack_pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_delay_is_honoured_directly_and_through_the_router() {
    let env = Env::new(|_| {}).await;
    let topic = env.topic("nack");
    env.broker
        .publish(&topic, vec![Message::new("x").with_key("k")])
        .await
        .expect("publish");
    let mut sub = env
        .broker
        .subscribe(SubscribeSpec::new(&topic, unique("g")))
        .await
        .expect("subscribe");
    let d = next(&mut sub, Duration::from_secs(10), "first").await;
    let delay = Duration::from_millis(1500);
    let at = Instant::now();
    d.nack(delay).await.expect("nack");
    let d = next(&mut sub, Duration::from_secs(10), "redelivery").await;
    assert!(
        at.elapsed() >= delay,
        "redelivered after {:?}",
        at.elapsed()
    );
    assert_eq!(d.attempt, 2);
    d.ack().await.expect("ack");
    sub.close().await.expect("close");

    // A handler error with redeliver_after becomes a NAK with that delay.
    let seen: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let s = seen.clone();
    let router = Router::new().route(
        "h",
        &topic,
        &unique("g"),
        handler_fn(move |i: Inbound| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push((i.attempt, Instant::now()));
                if i.attempt == 1 {
                    Err(HandlerError::transient("later").redeliver_after(Duration::from_secs(1)))
                } else {
                    Ok(())
                }
            }
        }),
    );
    let running = router.start(env.broker.clone());
    common::eventually(Duration::from_secs(15), "two attempts", || {
        let n = seen.lock().unwrap().len();
        async move { n >= 2 }
    })
    .await;
    running.shutdown().await.expect("shutdown");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|(a, _)| *a).collect::<Vec<_>>(), [1, 2]);
    let gap = seen[1].1 - seen[0].1;
    assert!(
        gap >= Duration::from_secs(1),
        "router redelivery after {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_spent_land_in_the_dlq_stream_with_dead_letter_headers() {
    // Herald's budget: 3 deliveries (1 + 2 delayed). The server's max_deliver (5) is a
    // safety net above it, so the server never gives up before herald dead-letters.
    let env = Env::new(|c| c.consumer.max_deliver = Some(5)).await;
    let topic = env.topic("dlq");
    let group = unique("g");
    let attempts: Arc<Mutex<Vec<u32>>> = Arc::default();
    let a = attempts.clone();
    let handler = DeadLetterLayer::new(Arc::new(env.broker.publisher())).layer(
        RetryLayer::new(Backoff {
            initial: Duration::from_millis(300),
            multiplier: 1.0,
            max: Duration::from_secs(1),
            jitter: 0.0,
            immediate_attempts: 1,
            delayed_attempts: 2,
        })
        .layer(handler_fn(move |i: Inbound| {
            a.lock().unwrap().push(i.attempt);
            async { Err::<(), _>(HandlerError::transient("always fails")) }
        })),
    );
    let running = Router::new()
        .route("payments", &topic, &group, handler)
        .start(env.broker.clone());
    let msg = Message::new("poison").with_key("o-9").with_type("t.v1");
    let id = msg.id.clone();
    env.broker
        .publish(&topic, vec![msg])
        .await
        .expect("publish");

    let mut dlq = env
        .broker
        .subscribe(SubscribeSpec::new(herald_core::dlq_topic(&topic), "ops"))
        .await
        .expect("subscribe dlq");
    let parked = next(&mut dlq, Duration::from_secs(20), "dead letter").await;
    assert_eq!(parked.message.id, id, "same id");
    assert_eq!(parked.message.key.as_deref(), Some(&b"o-9"[..]));
    assert_eq!(parked.message.payload, Bytes::from_static(b"poison"));
    assert_eq!(parked.message.ce_type(), Some("t.v1"));
    let h = |n: &str| parked.message.header(n).map(str::to_owned);
    assert_eq!(h("herald-error").as_deref(), Some("always fails"));
    assert_eq!(h("herald-error-class").as_deref(), Some("transient"));
    assert_eq!(h("herald-attempts").as_deref(), Some("3"));
    assert_eq!(h("herald-original-topic").as_deref(), Some(topic.as_str()));
    assert_eq!(h("herald-original-sequence").as_deref(), Some("1"));
    assert_eq!(h("herald-handler").as_deref(), Some("payments"));
    assert_eq!(h("herald-group").as_deref(), Some(group.as_str()));
    assert!(h("herald-failed-at").is_some());
    parked.ack().await.expect("ack");
    dlq.close().await.expect("close dlq");
    assert_eq!(
        env.stream_messages(&herald_core::dlq_topic(&topic)).await,
        1
    );

    // The original was acknowledged after dead-lettering: nothing pending for the group.
    let js = env.broker.jetstream().clone();
    let stream = mapping::stream_name(&topic);
    let consumer = mapping::consumer_name(&group);
    common::eventually(Duration::from_secs(10), "original acknowledged", || {
        let js = js.clone();
        let (stream, consumer) = (stream.clone(), consumer.clone());
        async move {
            match js.get_stream(&stream).await {
                Ok(s) => s
                    .consumer_info(&consumer)
                    .await
                    .map(|i| i.num_ack_pending == 0 && i.num_pending == 0)
                    .unwrap_or(false),
                Err(_) => false,
            }
        }
    })
    .await;
    running.shutdown().await.expect("shutdown");
    assert_eq!(
        *attempts.lock().unwrap(),
        [1, 2, 3],
        "the adapter's attempt numbers drive the retry budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_inside_the_duplicate_window_is_stored_once() {
    let env = Env::new(|_| {}).await;
    let topic = env.topic("dup");
    let m = Message::new("once").with_key("k");
    env.broker
        .publish(&topic, vec![m.clone()])
        .await
        .expect("publish");
    env.broker
        .publish(&topic, vec![m.clone()])
        .await
        .expect("republish is acknowledged");
    env.broker
        .publish(&topic, vec![m.clone(), m.clone(), Message::new("other")])
        .await
        .expect("batch with repeats");
    assert_eq!(
        env.stream_messages(&topic).await,
        2,
        "one copy of the repeated id, one other"
    );
    let mut sub = env
        .broker
        .subscribe(SubscribeSpec::new(&topic, unique("g")))
        .await
        .expect("subscribe");
    let a = next(&mut sub, Duration::from_secs(10), "a").await;
    let b = next(&mut sub, Duration::from_secs(10), "b").await;
    assert_eq!(a.message.id, m.id);
    assert_ne!(b.message.id, m.id);
    a.ack().await.expect("ack");
    b.ack().await.expect("ack");
    nothing_for(&mut sub, Duration::from_millis(500), "no third").await;
    sub.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_errors_are_typed() {
    let env = Env::new(|_| {}).await;
    let b = &env.broker;

    // Two topics that sanitise to one stream name.
    let base = env.topic("coll");
    let dotted = format!("{base}.a");
    let underscored = format!("{base}_a");
    env.cleanup.add(&env.url, &dotted);
    env.cleanup.add(&env.url, &underscored);
    assert_eq!(
        b.ensure_topic(&dotted).await.expect("first"),
        format!("{base}_a")
    );
    let e = b.ensure_topic(&underscored).await.expect_err("collision");
    assert_eq!(e.kind(), ProvisionErrorKind::NameCollision, "{e}");

    // Another stream already captures the topic's subjects.
    let topic = env.topic("ovl");
    let raw = format!("raw_{}", mapping::stream_name(&topic));
    b.jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: raw.clone(),
            subjects: vec![format!("{topic}.>")],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("raw stream");
    let e = b.ensure_topic(&topic).await.expect_err("overlap");
    assert_eq!(e.kind(), ProvisionErrorKind::SubjectOverlap, "{e}");
    b.jetstream().delete_stream(&raw).await.expect("delete raw");

    // Retention cannot change on an existing stream.
    let topic = env.topic("ret");
    b.ensure_topic(&topic).await.expect("limits");
    let wq = common::connect({
        let mut c = NatsConfig::new(&env.url);
        c.stream.retention = Retention::WorkQueue;
        c
    })
    .await;
    let e = wq.ensure_topic(&topic).await.expect_err("retention change");
    assert_eq!(e.kind(), ProvisionErrorKind::InvalidConfig, "{e}");

    // A work-queue topic takes a single consumer group.
    let topic = env.topic("wq");
    wq.ensure_topic(&topic).await.expect("work queue");
    let s1 = wq
        .subscribe(SubscribeSpec::new(&topic, "one"))
        .await
        .expect("first group");
    let e = wq
        .subscribe(SubscribeSpec::new(&topic, "two"))
        .await
        .expect_err("second group");
    assert_eq!(e.kind(), SubscribeErrorKind::InvalidConfig, "{e}");
    s1.close().await.expect("close");

    // Two groups that sanitise to one consumer name.
    let topic = env.topic("grp");
    let s1 = b
        .subscribe(SubscribeSpec::new(&topic, "g.1"))
        .await
        .expect("g.1");
    let e = b
        .subscribe(SubscribeSpec::new(&topic, "g_1"))
        .await
        .expect_err("g_1");
    assert_eq!(e.kind(), SubscribeErrorKind::InvalidConfig, "{e}");
    s1.close().await.expect("close");

    // Without auto-provisioning a missing topic is unknown.
    let manual = common::connect({
        let mut c = NatsConfig::new(&env.url);
        c.auto_provision = false;
        c
    })
    .await;
    let missing = unique("missing");
    let e = manual
        .publish(&missing, vec![Message::new("x")])
        .await
        .expect_err("publish");
    assert_eq!(e.kind(), PublishErrorKind::UnknownTopic, "{e}");
    let e = manual
        .subscribe(SubscribeSpec::new(&missing, "g"))
        .await
        .expect_err("subscribe");
    assert_eq!(e.kind(), SubscribeErrorKind::UnknownTopic, "{e}");

    // Names NATS cannot carry.
    let e = b
        .publish("bad topic", vec![Message::new("x")])
        .await
        .expect_err("bad topic");
    assert_eq!(e.kind(), PublishErrorKind::InvalidMessage);
    let e = b.ensure_topic("a.*").await.expect_err("wildcard");
    assert_eq!(e.kind(), ProvisionErrorKind::InvalidName);

    // Consumer settings the server would refuse are refused first.
    let bad = common::connect({
        let mut c = NatsConfig::new(&env.url);
        c.consumer.max_deliver = Some(2);
        c.consumer.backoff = vec![Duration::from_secs(1); 3];
        c
    })
    .await;
    let topic = env.topic("bo");
    let e = bad
        .subscribe(SubscribeSpec::new(&topic, "g"))
        .await
        .expect_err("backoff");
    assert_eq!(e.kind(), SubscribeErrorKind::InvalidConfig, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_as_too_large() {
    let env = Env::new(|c| c.stream.max_message_size = Some(1024)).await;
    let topic = env.topic("big");
    let e = env
        .broker
        .publish(&topic, vec![Message::new(vec![0u8; 2 << 20])])
        .await
        .expect_err("over max_payload");
    assert_eq!(e.kind(), PublishErrorKind::MessageTooLarge, "{e}");
    let e = env
        .broker
        .publish(&topic, vec![Message::new(vec![0u8; 4096])])
        .await
        .expect_err("over the stream's max_msg_size");
    assert_eq!(e.kind(), PublishErrorKind::MessageTooLarge, "{e}");
    env.broker
        .publish(&topic, vec![Message::new(vec![0u8; 100])])
        .await
        .expect("small one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_format_follows_the_mapping() {
    let env = Env::new(|_| {}).await;
    let topic = env.topic("wire");
    let plain = Message::new("a").with_key("o-1").with_type("t.v1");
    let binary = Message::new("b").with_key(vec![0u8, 0xff, b'.']);
    let keyless = Message::new("c");
    env.broker
        .publish(&topic, vec![plain.clone(), binary.clone(), keyless.clone()])
        .await
        .expect("publish");
    let stream = env
        .broker
        .jetstream()
        .get_stream(mapping::stream_name(&topic))
        .await
        .expect("stream");
    let raw1 = stream.get_raw_message(1).await.expect("seq 1");
    assert_eq!(raw1.subject.as_str(), format!("{topic}.o-1"));
    assert_eq!(
        raw1.headers.get("ce-id").map(|v| v.as_str()),
        Some(plain.id.as_str())
    );
    assert_eq!(
        raw1.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(plain.id.as_str())
    );
    assert_eq!(
        raw1.headers.get("ce-specversion").map(|v| v.as_str()),
        Some("1.0")
    );
    assert_eq!(
        raw1.headers.get("ce-type").map(|v| v.as_str()),
        Some("t.v1")
    );
    assert!(raw1.headers.get("herald-key").is_none());
    let raw2 = stream.get_raw_message(2).await.expect("seq 2");
    assert!(
        raw2.subject.as_str().starts_with(&format!("{topic}.h_")),
        "{}",
        raw2.subject
    );
    assert!(raw2.headers.get("herald-key").is_some());
    let raw3 = stream.get_raw_message(3).await.expect("seq 3");
    assert_eq!(raw3.subject.as_str(), format!("{topic}._"));

    // A message from a plain client: id from the stream position, key from the subject.
    env.broker
        .jetstream()
        .publish(format!("{topic}.k-7"), Bytes::from_static(b"foreign"))
        .await
        .expect("raw publish")
        .await
        .expect("raw ack");

    let mut sub = env
        .broker
        .subscribe(SubscribeSpec::new(&topic, unique("g")))
        .await
        .expect("subscribe");
    for want in [&plain, &binary, &keyless] {
        let d = next(&mut sub, Duration::from_secs(10), "wire").await;
        assert_eq!(d.message.id, want.id);
        assert_eq!(d.message.key, want.key);
        d.ack().await.expect("ack");
    }
    let d = next(&mut sub, Duration::from_secs(10), "foreign").await;
    assert_eq!(d.message.id, format!("{}-4", mapping::stream_name(&topic)));
    assert_eq!(d.message.key_str(), Some("k-7"));
    assert_eq!(d.origin.get("sequence"), Some(4));
    d.ack().await.expect("ack");
    sub.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_unsettled_deliveries_and_start_latest_skips_history() {
    let env = Env::new(|_| {}).await;
    let topic = env.topic("bound");
    let msgs: Vec<_> = (0..10).map(|i| Message::new(format!("m{i}"))).collect();
    env.broker.publish(&topic, msgs).await.expect("publish");
    let mut sub = env
        .broker
        .subscribe(SubscribeSpec::new(&topic, unique("g")).max_in_flight(3))
        .await
        .expect("subscribe");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut sub, Duration::from_secs(10), "held").await);
    }
    nothing_for(
        &mut sub,
        Duration::from_millis(800),
        "a fourth while three are held",
    )
    .await;
    held.remove(0).ack().await.expect("ack");
    held.push(next(&mut sub, Duration::from_secs(10), "after one ack").await);
    for d in held {
        d.ack().await.expect("ack");
    }
    sub.close().await.expect("close");

    let mut late = env
        .broker
        .subscribe(SubscribeSpec::new(&topic, unique("late")).start(StartFrom::Latest))
        .await
        .expect("subscribe latest");
    let fresh = Message::new("fresh");
    env.broker
        .publish(&topic, vec![fresh.clone()])
        .await
        .expect("publish");
    let d = next(&mut late, Duration::from_secs(10), "latest").await;
    assert_eq!(d.message.id, fresh.id, "history skipped");
    d.ack().await.expect("ack");
    late.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_returns_fetched_messages_at_once() {
    // ack_wait is long: anything returned quickly was NAKed by close, not timed out.
    let env = Env::new(|c| c.consumer.ack_wait = Duration::from_secs(60)).await;
    let topic = env.topic("drain");
    let group = unique("g");
    let msgs: Vec<_> = (0..10).map(|i| Message::new(format!("m{i}"))).collect();
    env.broker.publish(&topic, msgs).await.expect("publish");
    let mut sub = env
        .broker
        .subscribe(SubscribeSpec::new(&topic, &group))
        .await
        .expect("subscribe");
    let first = next(&mut sub, Duration::from_secs(10), "first").await;
    first.ack().await.expect("ack");
    // Let the pump fetch the rest into its buffer before closing.
    let js = env.broker.jetstream().clone();
    let (stream, consumer) = (mapping::stream_name(&topic), mapping::consumer_name(&group));
    common::eventually(Duration::from_secs(10), "rest fetched", || {
        let js = js.clone();
        let (stream, consumer) = (stream.clone(), consumer.clone());
        async move {
            let Ok(s) = js.get_stream(&stream).await else {
                return false;
            };
            s.consumer_info(&consumer)
                .await
                .map(|i| i.num_ack_pending == 9)
                .unwrap_or(false)
        }
    })
    .await;
    sub.close().await.expect("close");
    let other = common::broker().await;
    let mut sub = other
        .subscribe(SubscribeSpec::new(&topic, &group))
        .await
        .expect("resubscribe");
    for _ in 0..9 {
        next(&mut sub, Duration::from_secs(5), "returned message")
            .await
            .ack()
            .await
            .expect("ack");
    }
    sub.close().await.expect("close");
}

async fn acks_survive_restart_with(mode: AckMode) {
    let env = Env::new(|c| {
        c.consumer.ack_mode = mode;
        c.consumer.close_timeout = Duration::from_secs(5);
    })
    .await;
    let topic = env.topic("ackmode");
    let group = unique("g");
    let msgs: Vec<_> = (0..20).map(|i| Message::new(format!("m{i}"))).collect();
    env.broker.publish(&topic, msgs).await.expect("publish");
    let mut sub = env
        .broker
        .subscribe(SubscribeSpec::new(&topic, &group))
        .await
        .expect("subscribe");
    for _ in 0..20 {
        next(&mut sub, Duration::from_secs(10), "first run")
            .await
            .ack()
            .await
            .expect("ack");
    }
    let closing = Instant::now();
    sub.close().await.expect("close");
    // Pipelined: close confirms the acks with one double-ack, answered at once.
    assert!(
        closing.elapsed() < Duration::from_secs(2),
        "{mode:?}: close took {:?}",
        closing.elapsed()
    );
    // …and when close returns, the server has applied every ack (checked at once, no polling).
    let info = env
        .broker
        .jetstream()
        .get_stream(mapping::stream_name(&topic))
        .await
        .expect("stream")
        .consumer_info(mapping::consumer_name(&group))
        .await
        .expect("consumer");
    assert_eq!(
        (info.num_ack_pending, info.ack_floor.stream_sequence),
        (0, 20),
        "{mode:?}"
    );
    let other = common::connect({
        let mut c = NatsConfig::new(&env.url);
        c.consumer.ack_mode = mode;
        c
    })
    .await;
    let mut sub = other
        .subscribe(SubscribeSpec::new(&topic, &group))
        .await
        .expect("resubscribe");
    let sentinel = Message::new("sentinel");
    env.broker
        .publish(&topic, vec![sentinel.clone()])
        .await
        .expect("sentinel");
    let d = next(&mut sub, Duration::from_secs(10), "after restart").await;
    assert_eq!(
        d.message.id, sentinel.id,
        "{mode:?}: an acked message came back"
    );
    d.ack().await.expect("ack");
    sub.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ack_mode_keeps_acks_across_a_consumer_restart() {
    for mode in [AckMode::Confirmed, AckMode::Pipelined] {
        acks_survive_restart_with(mode).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifier_is_at_most_once() {
    let env = Env::new(|_| {}).await;
    let topic = unique("note");
    let notifier = env.broker.notifier();
    notifier
        .notify(&topic, Message::new("before"))
        .await
        .expect("notify");
    notifier.flush().await.expect("flush");
    let mut listener = notifier.listen(&topic).await.expect("listen");
    let after = Message::new("after").with_key("user-42");
    notifier
        .notify(&topic, after.clone())
        .await
        .expect("notify");
    let got = timeout(Duration::from_secs(5), listener.next())
        .await
        .expect("in time")
        .expect("a notification");
    assert_eq!(got.id, after.id, "the one sent before listening is gone");
    assert_eq!(got.key_str(), Some("user-42"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_used_and_refused_ones_are_typed() {
    common::init_tracing();
    let server = common::OwnServer::start(&["--user", "herald", "--pass", "s3cret"]).await;
    let mut cfg = NatsConfig::new(&server.url());
    cfg.connection.auth = Auth::UserPassword {
        user: "herald".into(),
        password: Secret::new("wrong"),
    };
    let e = NatsBroker::connect(cfg.clone())
        .await
        .expect_err("wrong password");
    assert_eq!(e.kind(), ConnectErrorKind::Unauthorized, "{e}");
    assert!(!format!("{cfg:?}").contains("wrong"), "password redacted");
    cfg.connection.auth = Auth::UserPassword {
        user: "herald".into(),
        password: Secret::new("s3cret"),
    };
    let broker = NatsBroker::connect(cfg).await.expect("right password");
    broker.ensure_topic("auth.ok").await.expect("provision");
    broker
        .publish("auth.ok", vec![Message::new("x")])
        .await
        .expect("publish");

    let mut cfg = NatsConfig::new(&server.url());
    cfg.connection.tls.client_cert = Some("/nonexistent.pem".into());
    let e = NatsBroker::connect(cfg)
        .await
        .expect_err("half a client certificate");
    assert_eq!(e.kind(), ConnectErrorKind::InvalidConfig);
}
