//! End to end on the memory transport: the router with the standard middleware stack.
//! Failures end in `<topic>.dlq` with the right headers, the consumer lives on,
//! transient failures that recover are not dead-lettered, and nothing is lost when the
//! dead-letter publish fails.
//!
//! The tests run on tokio's paused clock: backoff waits, handler timeouts and broker
//! redelivery delays (the memory broker schedules them on tokio's clock) pass at once.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use herald_core::{
    Delivery, ErrorClass, HandlerError, Inbound, Message, PublishError, PublishErrorKind,
    Publisher, Router, RouterError, SubscribeSpec, Subscriber, Subscription, handler_fn,
    memory::MemoryBroker,
    middleware::{
        Backoff, BreakerConfig, BreakerLayer, DeadLetterLayer, RetryLayer, Stack,
        dead_letter::error::PublishFailed,
    },
};
use tokio::{sync::mpsc, time::Instant};

const TOPIC: &str = "orders";
const DLQ: &str = "orders.dlq";
const GROUP: &str = "billing";
const HANDLER: &str = "charge";
const DEADLINE: Duration = Duration::from_secs(600);

fn retry(immediate: u32, delayed: u32) -> RetryLayer {
    RetryLayer::new(Backoff {
        initial: Duration::from_millis(100),
        multiplier: 2.0,
        max: Duration::from_secs(10),
        jitter: 0.0,
        immediate_attempts: immediate,
        delayed_attempts: delayed,
    })
}

fn stack(publisher: Arc<dyn Publisher>, immediate: u32, delayed: u32) -> Stack {
    Stack::new()
        .dead_letter(DeadLetterLayer::new(publisher))
        .retry(retry(immediate, delayed))
        .timeout(Duration::from_millis(50))
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("deadline passed waiting for {what}"))
}

async fn next(sub: &mut Subscription, what: &str) -> Delivery {
    within(what, sub.next())
        .await
        .unwrap_or_else(|| panic!("stream ended waiting for {what}"))
        .expect("delivery")
}

/// Polls `cond` until it holds or the deadline passes.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "deadline passed waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn msg(payload: &str) -> Message {
    Message::new(payload.to_owned())
        .with_key("customer-7")
        .with_header("correlation-id", "flow-1")
}

fn header<'a>(d: &'a Delivery, name: &str) -> &'a str {
    d.message
        .header(name)
        .unwrap_or_else(|| panic!("no {name} header"))
}

/// Checks the dead-letter headers every parked message carries.
fn assert_dead_letter(d: &Delivery, original: &Message, error: &str, class: &str, attempts: u32) {
    assert_eq!(d.message.id, original.id, "same id");
    assert_eq!(d.message.key, original.key, "same key");
    assert_eq!(d.message.payload, original.payload, "same payload");
    assert_eq!(
        header(d, "correlation-id"),
        "flow-1",
        "original headers kept"
    );
    assert_eq!(header(d, "herald-error"), error);
    assert_eq!(header(d, "herald-error-class"), class);
    assert_eq!(header(d, "herald-attempts"), attempts.to_string());
    assert_eq!(header(d, "herald-original-topic"), TOPIC);
    header(d, "herald-original-partition")
        .parse::<u32>()
        .expect("partition");
    header(d, "herald-original-offset")
        .parse::<u64>()
        .expect("offset");
    assert_eq!(header(d, "herald-handler"), HANDLER);
    assert_eq!(header(d, "herald-group"), GROUP);
    time::OffsetDateTime::parse(
        header(d, "herald-failed-at"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339 failed-at");
    for name in [
        "herald-error",
        "herald-error-class",
        "herald-attempts",
        "herald-original-topic",
        "herald-original-partition",
        "herald-original-offset",
        "herald-handler",
        "herald-group",
        "herald-failed-at",
    ] {
        assert_eq!(d.message.headers.get_all(name).count(), 1, "one {name}");
    }
}

/// Runs a route whose handler fails on payloads starting with `fail` (as `failure`
/// says) and reports every other payload on a channel.
struct Harness {
    broker: MemoryBroker,
    handled: mpsc::UnboundedReceiver<String>,
    calls: Arc<AtomicU32>,
    running: herald_core::Running,
}

fn start<F, Fut>(stack: Stack, broker: MemoryBroker, failure: F) -> Harness
where
    F: Fn(Inbound) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let (tx, handled) = mpsc::unbounded_channel();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let handler = handler_fn(move |i: Inbound| {
        let payload = String::from_utf8_lossy(&i.message.payload).into_owned();
        let tx = tx.clone();
        let failure = failure.clone();
        if payload.starts_with("fail") {
            c.fetch_add(1, Ordering::SeqCst);
        }
        async move {
            if payload.starts_with("fail") {
                return failure(i).await;
            }
            tx.send(payload).ok();
            Ok(())
        }
    });
    let running = Router::new()
        .route(HANDLER, TOPIC, GROUP, stack.service(handler))
        .start(broker.clone());
    Harness {
        broker,
        handled,
        calls,
        running,
    }
}

impl Harness {
    async fn publish(&self, payloads: &[&str]) -> Vec<Message> {
        let msgs: Vec<Message> = payloads.iter().map(|p| msg(p)).collect();
        self.broker.publish(TOPIC, msgs.clone()).await.unwrap();
        msgs
    }

    async fn dlq(&self) -> Subscription {
        self.broker
            .subscribe(SubscribeSpec::new(DLQ, "ops"))
            .await
            .unwrap()
    }

    async fn handled(&mut self, what: &str) -> String {
        within(what, self.handled.recv())
            .await
            .expect("router alive")
    }

    async fn all_acked(&self) {
        let b = self.broker.clone();
        eventually("every message acked", move || b.lag(TOPIC, GROUP) == 0).await;
    }
}

#[tokio::test(start_paused = true)]
async fn panicking_handler_is_dead_lettered_and_the_consumer_lives_on() {
    let broker = MemoryBroker::new();
    let mut h = start(
        stack(Arc::new(broker.clone()), 3, 2),
        broker.clone(),
        |_: Inbound| async { panic!("ledger invariant broken") },
    );
    let sent = h.publish(&["fail-1", "after-1", "fail-2", "after-2"]).await;
    let mut dlq = h.dlq().await;
    for original in [&sent[0], &sent[2]] {
        let d = next(&mut dlq, "a dead letter").await;
        assert_dead_letter(
            &d,
            original,
            "handler panicked: ledger invariant broken",
            "permanent",
            1,
        );
        d.ack().await.unwrap();
    }
    assert_eq!(h.handled("after-1").await, "after-1");
    assert_eq!(h.handled("after-2").await, "after-2");
    assert_eq!(h.calls.load(Ordering::SeqCst), 2, "a panic is not retried");
    h.all_acked().await;
    h.running.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn timed_out_handler_is_dead_lettered_after_its_retries() {
    let broker = MemoryBroker::new();
    let mut h = start(
        stack(Arc::new(broker.clone()), 2, 1),
        broker.clone(),
        |_: Inbound| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        },
    );
    let started = Instant::now();
    let sent = h.publish(&["fail-slow", "after"]).await;
    let mut dlq = h.dlq().await;
    let d = next(&mut dlq, "the dead letter").await;
    // Two deliveries of two attempts: the dead-lettering delivery is the 2nd, after two
    // in-process attempts → 1 + 2.
    assert_dead_letter(&d, &sent[0], "handler timed out after 50ms", "transient", 3);
    assert_eq!(h.calls.load(Ordering::SeqCst), 4);
    // 4 × 50 ms timeouts + 2 × 100 ms in-process waits + 200 ms redelivery delay.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(h.handled("after").await, "after");
    h.all_acked().await;
    h.running.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn permanent_failure_is_dead_lettered_at_once() {
    let broker = MemoryBroker::new();
    let mut h = start(
        stack(Arc::new(broker.clone()), 3, 3),
        broker.clone(),
        |_: Inbound| async { Err(HandlerError::permanent("total must be positive")) },
    );
    let sent = h.publish(&["fail", "after"]).await;
    let mut dlq = h.dlq().await;
    let d = next(&mut dlq, "the dead letter").await;
    assert_dead_letter(&d, &sent[0], "total must be positive", "permanent", 1);
    assert_eq!(h.calls.load(Ordering::SeqCst), 1);
    assert_eq!(h.handled("after").await, "after");
    h.all_acked().await;
    h.running.shutdown().await.unwrap();
}

/// Fails the first `n` attempts it sees (in-process or redelivered), then succeeds.
fn fail_first(n: u32) -> impl Fn(Inbound) -> BoxFuture<'static, Result<(), HandlerError>> + Clone {
    let seen = Arc::new(AtomicU32::new(0));
    move |_| {
        let k = seen.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            if k <= n {
                Err(HandlerError::transient(format!("attempt {k} failed")))
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn transient_failure_recovering_on_the_third_attempt_is_not_dead_lettered() {
    // In process: three immediate attempts in one delivery.
    // Across deliveries: one attempt per delivery, two broker redeliveries.
    for (immediate, delayed) in [(3, 0), (1, 2)] {
        let broker = MemoryBroker::new();
        let succeeded = Arc::new(Mutex::new(Vec::new()));
        let s = succeeded.clone();
        let fail = fail_first(2);
        let mut h = start(
            stack(Arc::new(broker.clone()), immediate, delayed),
            broker.clone(),
            move |i: Inbound| {
                let s = s.clone();
                let r = fail(i.clone());
                async move {
                    let r = r.await;
                    if r.is_ok() {
                        s.lock().unwrap().push((i.attempt, i.local_attempt));
                    }
                    r
                }
            },
        );
        h.publish(&["fail-then-recover", "after"]).await;
        assert_eq!(h.handled("after").await, "after");
        h.all_acked().await;
        assert_eq!(
            h.calls.load(Ordering::SeqCst),
            3,
            "({immediate}, {delayed})"
        );
        let expected = if immediate == 3 { (1, 3) } else { (3, 1) };
        assert_eq!(*succeeded.lock().unwrap(), [expected]);
        assert_eq!(broker.retained(DLQ), 0, "nothing dead-lettered");
        h.running.shutdown().await.unwrap();
    }
}

/// A dead-letter destination that refuses the first `failures` publishes.
struct Flaky {
    inner: MemoryBroker,
    failures: AtomicU32,
}

impl Publisher for Flaky {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Box::pin(async {
                Err(PublishError::new(
                    PublishErrorKind::Connection,
                    "dead-letter broker unreachable",
                ))
            });
        }
        self.inner.publish(topic, messages)
    }
}

#[tokio::test(start_paused = true)]
async fn failed_dead_letter_publish_redelivers_instead_of_losing() {
    let broker = MemoryBroker::new();
    let flaky = Arc::new(Flaky {
        inner: broker.clone(),
        failures: AtomicU32::new(2),
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let mut h = start(
        stack(flaky.clone(), 1, 0),
        broker.clone(),
        move |i: Inbound| {
            s.lock().unwrap().push((Instant::now(), i.attempt));
            async { Err(HandlerError::permanent("unknown currency")) }
        },
    );
    let sent = h.publish(&["fail", "after"]).await;
    let mut dlq = h.dlq().await;
    let d = next(&mut dlq, "the dead letter").await;
    // Two refused publishes → two redeliveries → the third delivery is parked.
    assert_dead_letter(&d, &sent[0], "unknown currency", "permanent", 3);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|s| s.1).collect::<Vec<_>>(),
        [1, 2, 3],
        "the broker redelivered the message"
    );
    for pair in seen.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= Duration::from_secs(5),
            "redelivered after the publish retry delay"
        );
    }
    assert_eq!(flaky.failures.load(Ordering::SeqCst), 0);
    assert_eq!(h.handled("after").await, "after");
    h.all_acked().await;
    h.running.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dead_letter_publish_error_is_transient_with_a_redelivery() {
    use tower::{Layer, ServiceExt};
    let broker = MemoryBroker::new();
    let flaky = Arc::new(Flaky {
        inner: broker.clone(),
        failures: AtomicU32::new(1),
    });
    let svc = DeadLetterLayer::new(flaky)
        .publish_retry_delay(Duration::from_secs(3))
        .layer(handler_fn(|_: Inbound| async {
            Err::<(), _>(HandlerError::permanent("bad"))
        }));
    let route = Arc::new(herald_core::RouteInfo {
        handler: HANDLER.into(),
        topic: TOPIC.into(),
        group: GROUP.into(),
    });
    let inbound = Inbound::new(msg("x"), herald_core::Origin::new(TOPIC), 1, route);
    let err = svc.clone().oneshot(inbound.clone()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(err.redelivery(), Some(Duration::from_secs(3)));
    let source = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<PublishFailed>())
        .expect("typed source");
    assert_eq!(source.topic(), DLQ);
    assert_eq!(source.handler_error().message(), "bad");
    // The next try gets through.
    svc.oneshot(inbound).await.unwrap();
    assert_eq!(broker.retained(DLQ), 1);
}

#[tokio::test(start_paused = true)]
async fn replayed_dead_letter_gets_fresh_headers() {
    let broker = MemoryBroker::new();
    let failures = Arc::new(AtomicU32::new(0));
    let f = failures.clone();
    let h = start(
        stack(Arc::new(broker.clone()), 1, 0),
        broker.clone(),
        move |_: Inbound| {
            let n = f.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Err(HandlerError::permanent(format!("failure #{n}"))) }
        },
    );
    let sent = h.publish(&["fail"]).await;
    let mut dlq = h.dlq().await;
    let first = next(&mut dlq, "the first dead letter").await;
    assert_dead_letter(&first, &sent[0], "failure #1", "permanent", 1);
    let first_offset = header(&first, "herald-original-offset").to_owned();

    // Replay: the parked message, herald headers and all, goes back to the topic.
    broker
        .publish(TOPIC, vec![first.message.clone()])
        .await
        .unwrap();
    first.ack().await.unwrap();
    let second = next(&mut dlq, "the second dead letter").await;
    assert_dead_letter(&second, &sent[0], "failure #2", "permanent", 1);
    // The position is the replayed copy's, not the first one's.
    assert_ne!(header(&second, "herald-original-offset"), first_offset);
    second.ack().await.unwrap();
    h.running.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn open_breaker_redelivers_instead_of_dead_lettering() {
    let broker = MemoryBroker::new();
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let d2 = down.clone();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a = attempts.clone();
    let stack = Stack::new()
        .dead_letter(DeadLetterLayer::new(Arc::new(broker.clone())))
        .breaker(BreakerLayer::new(BreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_secs(10),
            ..Default::default()
        }))
        .retry(retry(1, 0));
    let mut h = start(stack, broker.clone(), move |i: Inbound| {
        a.lock().unwrap().push(i.attempt);
        let down = d2.load(Ordering::SeqCst);
        async move {
            if down {
                Err(HandlerError::transient("payment provider down"))
            } else {
                Ok(())
            }
        }
    });
    // The first failure is dead-lettered (no retries configured) and opens the circuit.
    h.publish(&["fail-1"]).await;
    let mut dlq = h.dlq().await;
    let parked = next(&mut dlq, "the first failure").await;
    assert_eq!(header(&parked, "herald-error"), "payment provider down");
    parked.ack().await.unwrap();
    down.store(false, Ordering::SeqCst);
    // This one arrives while the circuit is open: turned away, redelivered after the
    // open interval, then handled by the trial call.
    let started = Instant::now();
    h.publish(&["fail-2", "after"]).await;
    assert_eq!(h.handled("after").await, "after");
    h.all_acked().await;
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        *attempts.lock().unwrap(),
        [1, 2],
        "fail-2 ran once, on its redelivery"
    );
    assert_eq!(
        broker.retained(DLQ),
        0,
        "only the first failure was dead-lettered"
    );
    h.running.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn fatal_error_is_not_dead_lettered_and_stops_the_router() {
    let broker = MemoryBroker::new();
    let h = start(
        stack(Arc::new(broker.clone()), 3, 3),
        broker.clone(),
        |_: Inbound| async { Err(HandlerError::fatal("credentials revoked")) },
    );
    h.publish(&["fail"]).await;
    let r = within("the router to stop", h.running.wait()).await;
    assert!(matches!(r, Err(RouterError::Fatal { .. })), "{r:?}");
    assert_eq!(h.calls.load(Ordering::SeqCst), 1);
    assert_eq!(broker.retained(DLQ), 0);
    assert_eq!(broker.lag(TOPIC, GROUP), 1, "left unacknowledged");
}
