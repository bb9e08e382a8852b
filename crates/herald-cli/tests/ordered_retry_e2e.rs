//! Ordered retry: keys A and B interleaved, A's 3rd message fails twice then succeeds.
//! A is handled 1..n exactly in order while B is never delayed by A — in memory (fast) and
//! on Kafka; and on Kafka the parked keys survive a restart, rebuilt from the retry
//! topics' unconsumed messages.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use herald_core::{
    HandlerError, Inbound, Message, Publisher, RouteConfig, Router, SubscribeError,
    handler::BoxHandler,
    handler_fn,
    memory::MemoryBroker,
    middleware::{Backoff, DeadLetterLayer, RetryLayer, Stack},
    retry_topics::{Backlog, MemoryParkedKeys, RetryTopics},
};
use herald_kafka::{KafkaAdmin, KafkaConfig, KafkaPublisher, KafkaSubscriber};
use herald_testkit::{fixtures, unique};

#[allow(dead_code, unreachable_pub)]
#[path = "../src/dlq/kafka_read.rs"]
mod kafka_read;

/// What the handler saw: each successful message and when, and each failure.
#[derive(Default)]
struct Log {
    handled: Mutex<Vec<(String, Instant)>>,
    /// Remaining failures per message name.
    fail: Mutex<HashMap<String, u32>>,
    /// Messages failing until this is set.
    stuck: Mutex<Vec<String>>,
    unstuck: AtomicBool,
}

impl Log {
    fn names(&self, prefix: char) -> Vec<String> {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn count(&self) -> usize {
        self.handled.lock().unwrap().len()
    }

    fn when(&self, name: &str) -> Option<Instant> {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
    }
}

fn handler(log: Arc<Log>, dlq: Arc<dyn Publisher>) -> BoxHandler {
    let policy = Backoff {
        initial: Duration::from_millis(10),
        multiplier: 1.0,
        jitter: 0.0,
        immediate_attempts: 1,
        delayed_attempts: 50,
        ..Default::default()
    };
    let stack = Stack::new()
        .dead_letter(DeadLetterLayer::new(dlq))
        .retry(RetryLayer::new(policy));
    BoxHandler::new(stack.service(handler_fn(move |i: Inbound| {
        let log = log.clone();
        async move {
            let name = String::from_utf8_lossy(&i.message.payload).into_owned();
            let fail = {
                let mut f = log.fail.lock().unwrap();
                match f.get_mut(&name) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        true
                    }
                    _ => false,
                }
            } || (log.stuck.lock().unwrap().contains(&name)
                && !log.unstuck.load(Ordering::SeqCst));
            if fail {
                return Err(HandlerError::transient(format!("{name} not yet")));
            }
            log.handled.lock().unwrap().push((name, Instant::now()));
            Ok(())
        }
    })))
}

async fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const N: usize = 8;

/// A1, B1, A2, B2, … ; A3 fails twice.
fn interleaved() -> Vec<Message> {
    let mut v = Vec::new();
    for i in 1..=N {
        v.push(Message::new(format!("A{i}")).with_key("A"));
        v.push(Message::new(format!("B{i}")).with_key("B"));
    }
    v
}

/// Publishes the interleaved messages and checks order and B's delay.
async fn a3_fails_twice<P: Publisher>(
    publisher: &P,
    topic: &str,
    log: &Log,
    level_delay: Duration,
    transport: &str,
) {
    log.fail.lock().unwrap().insert("A3".into(), 2);
    let started = Instant::now();
    publisher
        .publish(topic, interleaved())
        .await
        .expect("publish");
    wait_for("all messages", Duration::from_secs(60), || {
        log.count() > 2 * N /* and the warm-up */
    })
    .await;
    let a = log.names('A');
    let want: Vec<String> = (1..=N).map(|i| format!("A{i}")).collect();
    assert_eq!(a, want, "A out of order");
    let b = log.names('B');
    assert_eq!(b, (1..=N).map(|i| format!("B{i}")).collect::<Vec<_>>());
    let b_done = log.when(&format!("B{N}")).unwrap();
    let a3 = log.when("A3").unwrap();
    assert!(b_done < a3, "B waited for A's retries");
    let b_delay = b_done - started;
    println!(
        "ordered_retry[{transport}]: B done {b_delay:?} after publishing, A3 after {:?} (two delayed retries of {level_delay:?})",
        a3 - started
    );
    assert!(b_delay < level_delay, "B delayed by {b_delay:?}");
    assert!(
        a3 - started >= level_delay * 2,
        "A3 did not go through two delayed retries"
    );
}

#[tokio::test]
async fn ordered_retry_memory_keeps_key_order_and_other_keys_flow() {
    let broker = MemoryBroker::new();
    let store = Arc::new(MemoryParkedKeys::new());
    let delay = Duration::from_millis(200);
    let retry =
        RetryTopics::new("orders", Arc::new(broker.clone()), [delay; 2]).ordered(store.clone());
    let log = Arc::new(Log::default());
    let running = retry
        .routes(
            Router::new(),
            RouteConfig::new("h", "orders", "g").concurrency(4),
            handler(log.clone(), Arc::new(broker.clone())),
        )
        .start(retry.subscriber(broker.clone()));
    // Warm-up.
    broker
        .publish("orders", vec![Message::new("W")])
        .await
        .unwrap();
    wait_for("warm-up", Duration::from_secs(5), || log.count() == 1).await;
    a3_fails_twice(&broker, "orders", &log, delay, "memory").await;
    running.shutdown().await.unwrap();
    assert!(store.is_empty(), "keys left parked: {store:?}");
}

async fn kafka_setup(topic: &str, levels: usize) -> (String, Arc<dyn Publisher>, KafkaSubscriber) {
    let brokers = fixtures::kafka_brokers().await;
    let admin = KafkaAdmin::new(&KafkaConfig::new(brokers.clone())).expect("admin");
    admin.ensure_topic(topic, 2, 1).await.expect("topic");
    let names: Vec<String> = (1..=levels).map(|n| format!("{topic}.retry.{n}")).collect();
    admin
        .create_topics(&names.iter().map(String::as_str).collect::<Vec<_>>(), 2, 1)
        .await
        .expect("retry topics");
    let publisher: Arc<dyn Publisher> = Arc::new(
        KafkaPublisher::builder(brokers.clone())
            .linger(Duration::from_millis(1))
            .build()
            .expect("publisher"),
    );
    let subscriber = KafkaSubscriber::builder(brokers.clone())
        .commit_interval(Duration::from_millis(100))
        .set("fetch.wait.max.ms", "50")
        .build()
        .expect("subscriber");
    (brokers, publisher, subscriber)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_retry_kafka_keeps_key_order_and_other_keys_flow() {
    let topic = unique("ordered");
    let group = unique("g");
    let delay = Duration::from_millis(700);
    let (_, publisher, subscriber) = kafka_setup(&topic, 2).await;
    let store = Arc::new(MemoryParkedKeys::new());
    let retry =
        RetryTopics::new(topic.clone(), publisher.clone(), [delay; 2]).ordered(store.clone());
    let log = Arc::new(Log::default());
    let running = retry
        .routes(
            Router::new(),
            RouteConfig::new("h", &topic, &group).concurrency(4),
            handler(log.clone(), publisher.clone()),
        )
        .start(retry.subscriber(subscriber));
    publisher
        .publish(&topic, vec![Message::new("W")])
        .await
        .unwrap();
    wait_for("the router to join", Duration::from_secs(60), || {
        log.count() == 1
    })
    .await;
    a3_fails_twice(&publisher, &topic, &log, delay, "kafka").await;
    running.shutdown().await.unwrap();
    assert!(store.is_empty(), "keys left parked: {store:?}");
}

/// Herald's Kafka [`Backlog`]: what a group has not consumed, read without consuming.
struct KafkaBacklog(String);

impl Backlog for KafkaBacklog {
    fn unconsumed<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Message>, SubscribeError>> {
        let (b, g, t) = (self.0.clone(), group.to_owned(), topic.to_owned());
        Box::pin(async move {
            let pending = tokio::task::spawn_blocking(move || kafka_read::read_pending(&b, &g, &t))
                .await
                .map_err(|e| {
                    SubscribeError::new(herald_core::SubscribeErrorKind::Other, e.to_string())
                })?
                .map_err(|e| SubscribeError::new(herald_core::SubscribeErrorKind::Other, e))?;
            Ok(pending.records.into_iter().map(|r| r.message).collect())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_retry_kafka_rebuilds_parked_keys_after_a_restart() {
    let topic = unique("ordered");
    let group = unique("g");
    let delay = Duration::from_millis(300);
    let (brokers, publisher, subscriber) = kafka_setup(&topic, 2).await;
    let log = Arc::new(Log::default());
    log.stuck.lock().unwrap().push("A2".into());
    let start = |store: Arc<MemoryParkedKeys>| {
        let retry = RetryTopics::new(topic.clone(), publisher.clone(), [delay; 2]).ordered(store);
        let running = retry
            .routes(
                Router::new(),
                RouteConfig::new("h", &topic, &group).concurrency(4),
                handler(log.clone(), publisher.clone()),
            )
            .start(retry.subscriber(subscriber.clone()));
        (retry, running)
    };

    // A2 keeps failing: A3 and A4 follow it into the retry path; B flows.
    let first = Arc::new(MemoryParkedKeys::new());
    let (_, running) = start(first.clone());
    let msgs: Vec<Message> = ["A1", "B1", "A2", "B2", "A3", "B3", "A4", "B4"]
        .iter()
        .map(|n| Message::new(*n).with_key(&n[..1]))
        .collect();
    publisher.publish(&topic, msgs).await.unwrap();
    wait_for(
        "A1, the Bs and three parked A messages",
        Duration::from_secs(60),
        || log.count() == 5 && first.messages() == 3,
    )
    .await;
    running.shutdown().await.expect("shutdown");
    assert_eq!(log.names('A'), ["A1"]);

    // Restart with an empty store, rebuilt from the retry topics.
    let second = Arc::new(MemoryParkedKeys::new());
    let retry =
        RetryTopics::new(topic.clone(), publisher.clone(), [delay; 2]).ordered(second.clone());
    let parked = retry
        .recover(&KafkaBacklog(brokers), &group)
        .await
        .expect("recover");
    assert!(parked >= 3, "rebuilt {parked} parked messages");
    assert_eq!(second.len(), 1, "only A is parked: {second:?}");
    let (_, running) = start(second.clone());
    // A5, published after the restart, must follow A2 — not overtake it.
    publisher
        .publish(&topic, vec![Message::new("A5").with_key("A")])
        .await
        .unwrap();
    wait_for("A5 to follow its key", Duration::from_secs(60), || {
        second.messages() >= 4
    })
    .await;
    assert_eq!(log.names('A'), ["A1"], "a parked key's message overtook A2");
    log.unstuck.store(true, Ordering::SeqCst);
    wait_for("A2..A5", Duration::from_secs(60), || {
        log.names('A').len() == 5
    })
    .await;
    running.shutdown().await.expect("shutdown");
    assert_eq!(log.names('A'), ["A1", "A2", "A3", "A4", "A5"]);
    assert!(second.is_empty(), "keys left parked: {second:?}");
}
