//! The poison scenario, end to end on Kafka (retry topics) and NATS (delayed NAK):
//! 1 000 messages, 10 of them poison. The 990 are handled while the 10 are retried — the
//! healthy messages' end-to-end delay is measured and must stay below the first delayed
//! retry, i.e. nothing healthy waits for a poison message beyond its immediate attempts.
//! The 10 land in the DLQ with the right attempts, error, original topic and position
//! (checked with `herald dlq inspect`); then the handler is fixed, `herald dlq replay`
//! runs as a process, the 10 are handled once each (a dedupe store in the stack) and
//! `herald dlq list` shows the DLQ empty.

use std::{
    collections::{BTreeSet, HashMap},
    process::{Command, Output},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use herald_core::{
    HandlerError, Inbound, Message, Origin, Publisher, RouteConfig, Router, Running,
    handler::BoxHandler,
    handler_fn,
    middleware::{
        DeadLetterLayer, Next, RetryLayer, RetryPolicy, Stack, dedupe::DedupeLayer, from_fn,
    },
    retry_topics::RetryTopics,
};
use herald_dedupe::memory::MemoryDedupe;
use herald_kafka::{KafkaAdmin, KafkaConfig, KafkaPublisher, KafkaSubscriber};
use herald_nats::{NatsBroker, NatsConfig};
use herald_testkit::{fixtures, unique};
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer},
};
use serde_json::{Value as Json, json};
use tower::Layer;

#[allow(dead_code, unreachable_pub)]
#[path = "../src/dlq/kafka_read.rs"]
mod kafka_read;

const MESSAGES: usize = 1000;
/// The in-process wait between the two immediate attempts.
const IMMEDIATE_WAIT: Duration = Duration::from_millis(50);
/// The wait before each delayed attempt (both levels / both NAKs).
const DELAYED_WAIT: Duration = Duration::from_secs(1);

/// Two immediate attempts 50 ms apart, then two delayed ones 1 s apart.
struct TestPolicy;

impl RetryPolicy for TestPolicy {
    fn immediate_attempts(&self) -> u32 {
        2
    }
    fn delayed_attempts(&self) -> u32 {
        2
    }
    fn delay(&self, n: u32) -> Duration {
        if n <= 1 { IMMEDIATE_WAIT } else { DELAYED_WAIT }
    }
}

fn is_poison(i: usize) -> bool {
    i % 100 == (7 * (i / 100) + 3) % 100
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[derive(Default)]
struct Record {
    fixed: AtomicBool,
    /// End-to-end delay of each healthy message, ms.
    healthy: Mutex<Vec<i64>>,
    /// Successful handler runs per message id.
    handled: Mutex<HashMap<String, u32>>,
    /// Deliveries per message id, counted outside the whole stack.
    deliveries: Mutex<HashMap<String, u32>>,
    /// Poison messages: their number and the origin of their first delivery.
    poison: Mutex<HashMap<String, (u64, Origin)>>,
}

impl Record {
    fn handled(&self, id: &str) -> u32 {
        self.handled.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

/// The handler: fails poison messages (transient) until fixed.
fn handler(rec: Arc<Record>) -> BoxHandler {
    BoxHandler::new(handler_fn(move |i: Inbound| {
        let rec = rec.clone();
        async move {
            let v: Json = serde_json::from_slice(&i.message.payload)
                .map_err(|e| HandlerError::permanent(format!("not JSON: {e}")))?;
            let n = v["n"].as_u64().unwrap_or(u64::MAX);
            let poison = v["poison"].as_bool().unwrap_or(false);
            if poison && !rec.fixed.load(Ordering::SeqCst) {
                rec.poison
                    .lock()
                    .unwrap()
                    .entry(i.message.id.clone())
                    .or_insert_with(|| (n, (*i.origin).clone()));
                return Err(HandlerError::transient(format!("poison {n}")));
            }
            if !poison && let Some(sent) = v["sent_ms"].as_i64() {
                rec.healthy.lock().unwrap().push(now_ms() - sent);
            }
            *rec.handled
                .lock()
                .unwrap()
                .entry(i.message.id.clone())
                .or_default() += 1;
            Ok(())
        }
    }))
}

/// The full stack — dead-letter, dedupe, retry — with a delivery counter outside it.
fn service(rec: Arc<Record>, dlq: Arc<dyn Publisher>) -> BoxHandler {
    let stack = Stack::new()
        .dead_letter(DeadLetterLayer::new(dlq))
        .dedupe(DedupeLayer::new(Arc::new(MemoryDedupe::default())))
        .retry(RetryLayer::new(TestPolicy))
        .timeout(Duration::from_secs(10));
    let counted = rec.clone();
    BoxHandler::new(
        from_fn(move |i: Inbound, next: Next| {
            *counted
                .deliveries
                .lock()
                .unwrap()
                .entry(i.message.id.clone())
                .or_default() += 1;
            next.run(i)
        })
        .layer(stack.service(handler(rec))),
    )
}

enum Side {
    Kafka(String),
    Nats(String),
}

impl Side {
    fn args(&self) -> Vec<String> {
        match self {
            Side::Kafka(b) => vec![
                "--transport".into(),
                "kafka".into(),
                "--brokers".into(),
                b.clone(),
            ],
            Side::Nats(u) => vec![
                "--transport".into(),
                "nats".into(),
                "--url".into(),
                u.clone(),
            ],
        }
    }

    fn herald(&self, cmd: &str, topic: &str, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["dlq", cmd])
            .args(self.args())
            .arg(topic)
            .args(extra)
            .env_remove("HERALD_TRANSPORT")
            .output()
            .expect("run herald")
    }

    fn json(&self, cmd: &str, topic: &str, extra: &[&str]) -> Json {
        let o = self.herald(cmd, topic, extra);
        assert!(
            o.status.success(),
            "herald dlq {cmd} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).expect("JSON")
    }

    fn dlq_total(&self, topic: &str) -> u64 {
        self.json("list", topic, &["--format", "json"])["total"]
            .as_u64()
            .expect("total")
    }
}

async fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn payload(n: i64, poison: bool) -> String {
    json!({"n": n, "poison": poison, "sent_ms": now_ms()}).to_string()
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the scenario on a started router; `publisher` publishes to the main topic.
async fn scenario(
    side: Side,
    topic: &str,
    group: &str,
    publisher: Arc<dyn Publisher>,
    rec: Arc<Record>,
    running: Running,
) {
    // Warm up: the router has joined once this is handled.
    let warm = Message::new(payload(-1, false)).with_key("warm");
    let warm_id = warm.id.clone();
    publisher.publish(topic, vec![warm]).await.expect("publish");
    wait_for("the router to start", Duration::from_secs(60), || {
        rec.handled(&warm_id) == 1
    })
    .await;
    rec.healthy.lock().unwrap().clear();

    // 1 000 messages at ~500/s, in batches of 10.
    let started = Instant::now();
    let mut poison_ids = BTreeSet::new();
    for batch in 0..MESSAGES / 10 {
        let msgs: Vec<Message> = (batch * 10..batch * 10 + 10)
            .map(|i| {
                let m =
                    Message::new(payload(i as i64, is_poison(i))).with_key(format!("k{}", i % 50));
                if is_poison(i) {
                    poison_ids.insert(m.id.clone());
                }
                m
            })
            .collect();
        publisher.publish(topic, msgs).await.expect("publish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(poison_ids.len(), 10);
    wait_for("the 990 healthy messages", Duration::from_secs(60), || {
        rec.healthy.lock().unwrap().len() == MESSAGES - 10
    })
    .await;
    let healthy_done = started.elapsed();
    let mut delays = rec.healthy.lock().unwrap().clone();
    delays.sort_unstable();
    let (p50, p99, max) = (
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        *delays.last().unwrap(),
    );
    println!(
        "poison[{}]: 990 healthy handled {healthy_done:?} after the first publish; end-to-end delay p50 {p50} ms, p99 {p99} ms, max {max} ms (immediate-retry budget {} ms, first delayed retry {} ms)",
        side.args()[1],
        IMMEDIATE_WAIT.as_millis(),
        DELAYED_WAIT.as_millis()
    );
    // No healthy message waited for a poison one beyond its immediate attempts (plus
    // slack for fetching and a loaded machine) — well below the first delayed retry,
    // which a message held behind a retrying one would have to wait for.
    let bound = IMMEDIATE_WAIT + Duration::from_millis(450);
    assert!(bound < DELAYED_WAIT);
    assert!(
        (max as u128) < bound.as_millis(),
        "a healthy message waited {max} ms (bound {} ms; the delayed retry is {} ms)",
        bound.as_millis(),
        DELAYED_WAIT.as_millis()
    );

    // The 10 reach the DLQ after 2 deliveries + 2 in-process attempts each.
    let dlq = format!("{topic}.dlq");
    let until = Instant::now() + Duration::from_secs(60);
    while side.dlq_total(&dlq) < 10 {
        assert!(
            Instant::now() < until,
            "the poison messages did not reach the DLQ"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dead_by = started.elapsed();
    let doc = side.json("inspect", &dlq, &["--format", "json", "--limit", "100"]);
    let entries = doc["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 10, "{doc}");
    let poison = rec.poison.lock().unwrap().clone();
    for e in entries {
        let id = e["id"].as_str().unwrap();
        assert!(poison_ids.contains(id), "{id} is not a poison message");
        let (n, origin) = &poison[id];
        assert_eq!(e["attempts"], 4, "{e}");
        assert_eq!(e["error"], format!("poison {n}"));
        assert_eq!(e["error_class"], "transient");
        assert_eq!(e["original_topic"], topic);
        assert_eq!(e["handler"], "billing");
        assert_eq!(e["group"], group);
        assert_eq!(&*origin.topic, topic);
        let want: serde_json::Map<String, Json> = origin
            .position
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        assert!(!want.is_empty());
        assert_eq!(e["original_position"], Json::Object(want), "{e}");
        assert_eq!(e["payload"]["n"], *n);
        assert!(e["failed_at"].is_string());
    }
    println!(
        "poison[{}]: the 10 were dead-lettered {dead_by:?} after the first publish",
        side.args()[1]
    );

    // Fix the handler, replay as a process.
    rec.fixed.store(true, Ordering::SeqCst);
    let o = side.herald("replay", &dlq, &[]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "replay failed: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let moved = out
        .lines()
        .filter(|l| l.starts_with("moved ") && l.contains(" -> "))
        .count();
    assert_eq!(moved, 10, "{out}");
    wait_for("the replayed messages", Duration::from_secs(60), || {
        poison_ids.iter().all(|id| rec.handled(id) >= 1)
    })
    .await;
    assert_eq!(
        side.dlq_total(&dlq),
        0,
        "the DLQ is not empty after the replay"
    );

    if let Side::Kafka(brokers) = &side {
        // Lose the replay position and replay again: every message comes back a second
        // time — the dedupe store (same message id) keeps the handler from running twice.
        let before: HashMap<String, u32> = poison_ids
            .iter()
            .map(|id| (id.clone(), rec.deliveries.lock().unwrap()[id]))
            .collect();
        let (b, d) = (brokers.clone(), dlq.clone());
        tokio::task::spawn_blocking(move || {
            let c = kafka_read::consumer(&b, "herald-dlq-replay").unwrap();
            let md = c.fetch_metadata(Some(&d), Duration::from_secs(10)).unwrap();
            let mut tpl = TopicPartitionList::new();
            for p in md.topics()[0].partitions() {
                tpl.add_partition_offset(&d, p.id(), Offset::Offset(0))
                    .unwrap();
            }
            c.commit(&tpl, CommitMode::Sync).unwrap();
        })
        .await
        .unwrap();
        assert_eq!(side.dlq_total(&dlq), 10);
        let o = side.herald("replay", &dlq, &[]);
        assert!(o.status.success());
        wait_for("the duplicate deliveries", Duration::from_secs(60), || {
            let d = rec.deliveries.lock().unwrap();
            before.iter().all(|(id, n)| d[id] > *n)
        })
        .await;
        println!(
            "poison[kafka]: a second replay delivered the 10 again; the dedupe store absorbed them"
        );
    }
    running.shutdown().await.expect("shutdown");
    for id in &poison_ids {
        assert_eq!(rec.handled(id), 1, "{id} handled {} times", rec.handled(id));
    }
    let handled = rec.handled.lock().unwrap();
    assert_eq!(handled.len(), MESSAGES + 1);
    assert!(
        handled.values().all(|n| *n == 1),
        "a message was handled twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_kafka_retry_topics_do_not_block_healthy_traffic_then_dlq_and_replay() {
    let brokers = fixtures::kafka_brokers().await;
    let topic = unique("poison");
    let group = unique("billing");
    let publisher: Arc<dyn Publisher> = Arc::new(
        KafkaPublisher::builder(brokers.clone())
            .linger(Duration::from_millis(1))
            .build()
            .expect("publisher"),
    );
    let retry = RetryTopics::from_policy(topic.clone(), publisher.clone(), &TestPolicy);
    let admin = KafkaAdmin::new(&KafkaConfig::new(brokers.clone())).expect("admin");
    admin.ensure_topic(&topic, 4, 1).await.expect("topic");
    let levels = retry.topics();
    admin
        .create_topics(&levels.iter().map(String::as_str).collect::<Vec<_>>(), 4, 1)
        .await
        .expect("retry topics");
    let subscriber = KafkaSubscriber::builder(brokers.clone())
        .commit_interval(Duration::from_millis(200))
        .set("fetch.wait.max.ms", "50")
        .build()
        .expect("subscriber");
    let rec = Arc::new(Record::default());
    let running = retry
        .routes(
            Router::new(),
            RouteConfig::new("billing", &topic, &group).concurrency(8),
            service(rec.clone(), publisher.clone()),
        )
        .start(retry.subscriber(subscriber));
    scenario(
        Side::Kafka(brokers),
        &topic,
        &group,
        publisher,
        rec,
        running,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_nats_delayed_nak_does_not_block_healthy_traffic_then_dlq_and_replay() {
    let url = fixtures::nats_url().await;
    let topic = unique("poison");
    let group = unique("billing");
    let broker = NatsBroker::connect(NatsConfig::new(&url))
        .await
        .expect("connect");
    broker.ensure_topic(&topic).await.expect("streams");
    let publisher: Arc<dyn Publisher> = Arc::new(broker.clone());
    let rec = Arc::new(Record::default());
    let running = Router::new()
        .route_with(
            RouteConfig::new("billing", &topic, &group).concurrency(8),
            service(rec.clone(), publisher.clone()),
        )
        .start(broker.clone());
    scenario(Side::Nats(url), &topic, &group, publisher, rec, running).await;
}
