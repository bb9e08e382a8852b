use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Instant as StdInstant,
};

use futures::StreamExt;

use super::*;
use crate::{
    SubscribeSpec, Subscriber, handler_fn,
    memory::MemoryBroker,
    middleware::{Backoff, DeadLetterLayer, RetryLayer, Stack},
};

fn policy(immediate: u32, delayed: u32) -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        multiplier: 2.0,
        max: Duration::from_secs(5),
        jitter: 0.0,
        immediate_attempts: immediate,
        delayed_attempts: delayed,
    }
}

async fn next_within(sub: &mut crate::Subscription, d: Duration) -> crate::Delivery {
    tokio::time::timeout(d, sub.next())
        .await
        .expect("a delivery in time")
        .expect("stream open")
        .expect("no error")
}

#[test]
fn headers_roundtrip_through_a_retry_message() {
    let cfg = RetryTopics::new(
        "orders",
        Arc::new(MemoryBroker::new()),
        [Duration::from_millis(100), Duration::from_secs(2)],
    );
    let original = Message::with_id("id-1", "p")
        .with_key("k")
        .with_type("OrderCreated.v1")
        .with_header("herald-due-at", "1"); // stale: replaced
    let origin = Origin::new("orders")
        .with("partition", 3)
        .with("offset", 77);
    let err = HandlerError::transient("db busy");
    let m = retry_message(&cfg, &original, &origin, 2, 2, false, Some(&err));
    assert_eq!(m.id, "id-1");
    assert_eq!(m.headers.get_all(headers::DUE_AT).count(), 1);
    let due = due_at_millis(&m).unwrap();
    let wait = due - now_millis();
    assert!((1500..=2000).contains(&wait), "due in {wait} ms");
    assert_eq!(m.header("herald-original-offset"), Some("77"));
    assert_eq!(m.header("herald-error"), Some("db busy"));
    let (back, o, attempts) = restore(&cfg, 2, &m);
    assert_eq!(attempts, 2);
    assert_eq!(o, origin);
    assert_eq!(back.ce_type(), Some("OrderCreated.v1"));
    assert!(back.headers.iter().all(|(n, _)| !n.starts_with("herald-")));
    assert_eq!(Ticket::of(&o), Ticket(vec![3, 77]));
}

#[test]
fn due_at_reads_millis_and_rfc3339() {
    let m = Message::new("").with_header(headers::DUE_AT, "2024-01-02T03:04:05.678Z");
    assert_eq!(due_at_millis(&m), Some(1_704_164_645_678));
    let m = Message::new("").with_header(headers::DUE_AT, "1704164645678");
    assert_eq!(due_at_millis(&m), Some(1_704_164_645_678));
    assert_eq!(
        due_at_millis(&Message::new("").with_header(headers::DUE_AT, "soon")),
        None
    );
}

#[test]
fn from_policy_draws_one_fixed_delay_per_level() {
    let cfg = RetryTopics::from_policy("t", Arc::new(MemoryBroker::new()), &policy(3, 2));
    assert_eq!(cfg.levels(), 2);
    assert_eq!(cfg.delay(1), Duration::from_millis(80)); // delay(3)
    assert_eq!(cfg.delay(2), Duration::from_millis(160)); // delay(4)
    assert_eq!(cfg.delay(9), Duration::from_millis(160));
}

#[tokio::test]
async fn due_subscriber_yields_by_due_time_per_partition() {
    let broker = MemoryBroker::new();
    let now = now_millis();
    // Two keys (so, most likely, two partitions); the first published is due last.
    let late = Message::new("late")
        .with_key("a")
        .with_header(headers::DUE_AT, (now + 400).to_string());
    let early = Message::new("early")
        .with_key("b")
        .with_header(headers::DUE_AT, now.to_string());
    broker
        .publish("t.retry.1", vec![late, early])
        .await
        .unwrap();
    let subscriber = DueSubscriber::new(broker.clone());
    let mut sub = subscriber
        .subscribe(SubscribeSpec::new("t.retry.1", "g"))
        .await
        .unwrap();
    let started = StdInstant::now();
    let first = next_within(&mut sub, Duration::from_secs(2)).await;
    let second = next_within(&mut sub, Duration::from_secs(2)).await;
    let waited = started.elapsed();
    let order: Vec<_> = [&first, &second]
        .iter()
        .map(|d| String::from_utf8_lossy(&d.message.payload).into_owned())
        .collect();
    if first.origin.get("partition") != second.origin.get("partition") {
        assert_eq!(order, ["early", "late"]);
    }
    assert!(waited >= Duration::from_millis(350), "held only {waited:?}");
    first.ack().await.unwrap();
    second.ack().await.unwrap();
    sub.close().await.unwrap();
    // Other topics pass through untouched.
    broker
        .publish(
            "t",
            vec![Message::new("x").with_header(headers::DUE_AT, (now + 60_000).to_string())],
        )
        .await
        .unwrap();
    let mut plain = subscriber
        .subscribe(SubscribeSpec::new("t", "g"))
        .await
        .unwrap();
    next_within(&mut plain, Duration::from_secs(1))
        .await
        .ack()
        .await
        .unwrap();
}

type Seen = Arc<Mutex<Vec<(String, u32, Origin)>>>;

#[tokio::test]
async fn poison_goes_through_each_level_then_to_the_dlq() {
    let broker = MemoryBroker::new();
    let p = policy(2, 2);
    let retry = RetryTopics::from_policy("orders", Arc::new(broker.clone()), &p);
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let handler = Stack::new()
        .dead_letter(DeadLetterLayer::new(Arc::new(broker.clone())))
        .retry(RetryLayer::new(p))
        .service(handler_fn(move |i: Inbound| {
            let payload = String::from_utf8_lossy(&i.message.payload).into_owned();
            s.lock()
                .unwrap()
                .push((payload.clone(), i.attempt, (*i.origin).clone()));
            async move {
                if payload == "poison" {
                    Err(HandlerError::transient("poison"))
                } else {
                    Ok(())
                }
            }
        }));
    let running = retry
        .routes(
            Router::new(),
            RouteConfig::new("billing", "orders", "billing").concurrency(4),
            handler,
        )
        .start(retry.subscriber(broker.clone()));
    let mut msgs = vec![Message::new("poison").with_key("k0")];
    msgs.extend((0..20).map(|i| Message::new(format!("ok-{i}")).with_key(format!("k{i}"))));
    let poison_id = msgs[0].id.clone();
    broker.publish("orders", msgs).await.unwrap();

    let mut dlq = broker
        .subscribe(SubscribeSpec::new("orders.dlq", "ops"))
        .await
        .unwrap();
    let dead = next_within(&mut dlq, Duration::from_secs(5)).await;
    let m = dead.message.clone();
    assert_eq!(m.id, poison_id);
    assert_eq!(m.header("herald-original-topic"), Some("orders"));
    assert_eq!(m.header("herald-attempts"), Some("4")); // 2 deliveries before + 2 in process
    assert_eq!(m.header("herald-handler"), Some("billing"));
    assert_eq!(m.header("herald-error"), Some("poison"));
    assert!(m.header("herald-due-at").is_none());
    dead.ack().await.unwrap();
    running.shutdown().await.unwrap();

    let seen = seen.lock().unwrap();
    let poison: Vec<_> = seen.iter().filter(|(p, _, _)| p == "poison").collect();
    // Three deliveries of two in-process attempts each, every one from the main topic's
    // point of view.
    let attempts: Vec<u32> = poison.iter().map(|(_, a, _)| *a).collect();
    assert_eq!(attempts, [1, 1, 2, 2, 3, 3]);
    let first = &poison[0].2;
    assert!(
        poison
            .iter()
            .all(|(_, _, o)| o == first && &*o.topic == "orders")
    );
    assert_eq!(
        m.header("herald-original-offset"),
        first.get("offset").map(|o| o.to_string()).as_deref()
    );
    assert_eq!(
        seen.iter().filter(|(p, _, _)| p.starts_with("ok-")).count(),
        20
    );
}

#[tokio::test]
async fn a_failed_forward_is_redelivered_not_lost() {
    /// Fails every publish to a retry topic the first `n` times.
    struct Flaky {
        inner: MemoryBroker,
        fail: AtomicU32,
    }
    impl Publisher for Flaky {
        fn publish<'a>(
            &'a self,
            topic: &'a str,
            messages: Vec<Message>,
        ) -> BoxFuture<'a, Result<(), PublishError>> {
            if topic.contains(".retry.")
                && self
                    .fail
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Box::pin(async {
                    Err(PublishError::new(crate::PublishErrorKind::Timeout, "down"))
                });
            }
            self.inner.publish(topic, messages)
        }
    }
    let broker = MemoryBroker::new();
    let flaky = Arc::new(Flaky {
        inner: broker.clone(),
        fail: AtomicU32::new(2),
    });
    let retry = RetryTopics::new("t", flaky, [Duration::from_millis(10)]);
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = retry.layer().layer(handler_fn(move |_: Inbound| {
        c.fetch_add(1, Ordering::SeqCst);
        async {
            Err::<(), _>(HandlerError::transient("x").redeliver_after(Duration::from_millis(5)))
        }
    }));
    use tower::ServiceExt;
    let route = Arc::new(RouteInfo {
        handler: "h".into(),
        topic: "t".into(),
        group: "g".into(),
    });
    let inbound = Inbound::new(Message::new("m"), Origin::new("t"), 1, route);
    let err = svc.clone().oneshot(inbound.clone()).await.unwrap_err();
    assert!(err.redelivery().is_some());
    assert!(
        std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<ForwardFailed>())
            .is_some()
    );
    svc.clone().oneshot(inbound.clone()).await.unwrap_err();
    svc.oneshot(inbound).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn ordered_retry_keeps_key_order_and_other_keys_flow() {
    let broker = MemoryBroker::new();
    let store = Arc::new(MemoryParkedKeys::new());
    let p = policy(1, 3);
    let retry = RetryTopics::new(
        "orders",
        Arc::new(broker.clone()),
        [
            Duration::from_millis(150),
            Duration::from_millis(150),
            Duration::from_millis(150),
        ],
    )
    .ordered(store.clone());
    let order: Arc<Mutex<Vec<(String, StdInstant)>>> = Arc::default();
    let fails = Arc::new(Mutex::new(HashMap::from([("A-3".to_owned(), 2u32)])));
    let (o, f) = (order.clone(), fails.clone());
    let handler = Stack::new()
        .dead_letter(DeadLetterLayer::new(Arc::new(broker.clone())))
        .retry(RetryLayer::new(p))
        .service(handler_fn(move |i: Inbound| {
            let name = String::from_utf8_lossy(&i.message.payload).into_owned();
            let fail = {
                let mut f = f.lock().unwrap();
                match f.get_mut(&name) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        true
                    }
                    _ => false,
                }
            };
            if !fail {
                o.lock().unwrap().push((name, StdInstant::now()));
            }
            async move {
                if fail {
                    Err(HandlerError::transient("not yet"))
                } else {
                    Ok(())
                }
            }
        }));
    let running = retry
        .routes(
            Router::new(),
            RouteConfig::new("h", "orders", "g").concurrency(4),
            handler,
        )
        .start(retry.subscriber(broker.clone()));
    let started = StdInstant::now();
    let mut msgs = Vec::new();
    for i in 1..=6 {
        msgs.push(Message::new(format!("A-{i}")).with_key("A"));
        msgs.push(Message::new(format!("B-{i}")).with_key("B"));
    }
    broker.publish("orders", msgs).await.unwrap();
    let deadline = StdInstant::now() + Duration::from_secs(10);
    while order.lock().unwrap().len() < 12 {
        assert!(
            StdInstant::now() < deadline,
            "not all handled: {:?}",
            order.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.shutdown().await.unwrap();
    let order = order.lock().unwrap();
    let a: Vec<_> = order
        .iter()
        .filter(|(n, _)| n.starts_with('A'))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(a, ["A-1", "A-2", "A-3", "A-4", "A-5", "A-6"]);
    let b_done = order
        .iter()
        .filter(|(n, _)| n.starts_with('B'))
        .map(|(_, t)| *t)
        .max()
        .unwrap();
    let a3 = order.iter().find(|(n, _)| n == "A-3").unwrap().1;
    assert!(b_done < a3, "B waited for A");
    assert!(
        b_done - started < Duration::from_millis(150),
        "B delayed: {:?}",
        b_done - started
    );
    assert!(store.is_empty(), "keys left parked: {store:?}");
}

#[tokio::test]
async fn recover_parks_what_the_retry_topics_hold() {
    struct Fixed(Vec<Message>);
    impl Backlog for Fixed {
        fn unconsumed<'a>(
            &'a self,
            topic: &'a str,
            _group: &'a str,
        ) -> BoxFuture<'a, Result<Vec<Message>, crate::SubscribeError>> {
            assert_eq!(
                _group,
                if topic == "t.retry.2" {
                    "g.retry.2"
                } else {
                    "g.retry.1"
                }
            );
            let v = if topic == "t.retry.2" {
                self.0.clone()
            } else {
                Vec::new()
            };
            Box::pin(async move { Ok(v) })
        }
    }
    let store = Arc::new(MemoryParkedKeys::new());
    let cfg = RetryTopics::new("t", Arc::new(MemoryBroker::new()), [Duration::ZERO; 2])
        .ordered(store.clone());
    let origin = |off| Origin::new("t").with("partition", 0).with("offset", off);
    let msgs = vec![
        retry_message(
            &cfg,
            &Message::new("1").with_key("A"),
            &origin(4),
            2,
            2,
            false,
            None,
        ),
        retry_message(
            &cfg,
            &Message::new("2").with_key("A"),
            &origin(9),
            0,
            2,
            true,
            None,
        ),
        retry_message(&cfg, &Message::new("3"), &origin(11), 2, 2, false, None),
    ];
    store.park(b"stale", &Ticket(vec![1]), 1).await.unwrap();
    let n = cfg.recover(&Fixed(msgs), "g").await.unwrap();
    assert_eq!(n, 2);
    assert_eq!(store.len(), 1);
    let p = store
        .lookup(&namespaced("g", "t", b"A"), &Ticket(vec![0, 9]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (p.count, p.head, p.head_level, p.mine),
        (2, Ticket(vec![0, 4]), 2, Some(2))
    );
    let plain = RetryTopics::new("t", Arc::new(MemoryBroker::new()), [Duration::ZERO]);
    assert!(matches!(
        plain.recover(&Fixed(vec![]), "g").await,
        Err(RecoverError::NotOrdered)
    ));
}

#[tokio::test]
async fn permanent_errors_skip_the_retry_topics() {
    /// Records the topics published to.
    struct Recording {
        inner: MemoryBroker,
        topics: Mutex<Vec<String>>,
    }
    impl Publisher for Recording {
        fn publish<'a>(
            &'a self,
            topic: &'a str,
            messages: Vec<Message>,
        ) -> BoxFuture<'a, Result<(), PublishError>> {
            self.topics.lock().unwrap().push(topic.to_owned());
            self.inner.publish(topic, messages)
        }
    }
    let broker = MemoryBroker::new();
    let recording = Arc::new(Recording {
        inner: broker.clone(),
        topics: Mutex::default(),
    });
    let p = policy(3, 2);
    let retry = RetryTopics::from_policy("orders", recording.clone(), &p);
    let handler = Stack::new()
        .dead_letter(DeadLetterLayer::new(recording.clone()))
        .retry(RetryLayer::new(p))
        .service(handler_fn(|_: Inbound| async {
            Err::<(), _>(HandlerError::permanent("bad total"))
        }));
    let running = retry
        .routes(
            Router::new(),
            RouteConfig::new("billing", "orders", "billing"),
            handler,
        )
        .start(retry.subscriber(broker.clone()));
    broker
        .publish("orders", vec![Message::new("{}")])
        .await
        .unwrap();
    let mut dlq = broker
        .subscribe(SubscribeSpec::new("orders.dlq", "ops"))
        .await
        .unwrap();
    let dead = next_within(&mut dlq, Duration::from_secs(5)).await;
    assert_eq!(dead.message.header("herald-attempts"), Some("1"));
    assert_eq!(dead.message.header("herald-error-class"), Some("permanent"));
    assert_eq!(dead.message.header("herald-group"), Some("billing"));
    dead.ack().await.unwrap();
    running.shutdown().await.unwrap();
    assert_eq!(*recording.topics.lock().unwrap(), ["orders.dlq"]);
}
