//! Shared helpers of the outbox tests: PostgreSQL pools on fresh tables, event payloads
//! that carry their key and sequence, and the per-key order check.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::{HashMap, HashSet},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use deadpool_postgres::{Manager, Pool};
use futures::StreamExt;
use herald_core::{Message, Publisher, SubscribeSpec, Subscriber, Subscription};
use herald_patterns::outbox::{Outbox, OutboxConfig, Relay, RelayConfig};
use tokio::time::Instant;

/// The schema every outbox test table lives in.
pub const SCHEMA: &str = "herald_outbox_test";

/// The PostgreSQL connection config of the test database.
pub async fn pg_config() -> tokio_postgres::Config {
    let url = herald_testkit::fixtures::postgres_url().await;
    tokio_postgres::Config::from_str(&url).expect("HERALD_POSTGRES_URL is a valid URL")
}

/// A pool of `size` connections to the test database.
pub async fn pool(size: usize) -> Pool {
    let mgr = Manager::new(pg_config().await, tokio_postgres::NoTls);
    Pool::builder(mgr)
        .max_size(size)
        .build()
        .expect("pool builds")
}

/// A migrated outbox on a fresh table.
pub async fn fresh_outbox(pool: &Pool, prefix: &str) -> Outbox {
    let outbox = Outbox::new(OutboxConfig {
        schema: SCHEMA.into(),
        table: herald_testkit::unique(prefix),
        channel: None,
    })
    .expect("valid outbox config");
    let client = pool.get().await.expect("connection");
    outbox.migrate(&client).await.expect("migrate");
    outbox
}

/// Drops the test table (best effort).
pub async fn drop_table(pool: &Pool, outbox: &Outbox) {
    if let Ok(client) = pool.get().await {
        let _ = client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS \"{}\".\"{}\"",
                outbox.schema(),
                outbox.table()
            ))
            .await;
    }
}

/// An event of `key` with sequence `seq` (written by transaction `tx`).
pub fn event(key: &str, seq: u64, tx: u64) -> Message {
    Message::new(format!("{key}|{seq}|{tx}"))
        .with_key(key.to_owned())
        .with_type("herald.test.OutboxEvent.v1")
}

/// `(key, seq)` of an event payload.
pub fn parse(message: &Message) -> (String, u64) {
    let s = std::str::from_utf8(&message.payload).expect("test payloads are UTF-8");
    let mut parts = s.split('|');
    let key = parts.next().expect("key").to_owned();
    let seq = parts.next().expect("seq").parse().expect("seq is a number");
    (key, seq)
}

/// What a consumer saw: every message in arrival order.
#[derive(Default)]
pub struct Seen {
    pub messages: Vec<Message>,
    pub at: Vec<Instant>,
    ids: HashSet<String>,
}

impl Seen {
    pub fn push(&mut self, message: Message, at: Instant) {
        self.ids.insert(message.id.clone());
        self.at.push(at);
        self.messages.push(message);
    }

    pub fn distinct_ids(&self) -> &HashSet<String> {
        &self.ids
    }

    /// Deliveries beyond the first of each id.
    pub fn duplicates(&self) -> usize {
        self.messages.len() - self.ids.len()
    }

    /// Checks per-key order on the wire: the first occurrences of a key's messages have
    /// strictly increasing sequence numbers, and a repeated id carries the same payload
    /// as its first occurrence (a re-send, not a new event).
    pub fn assert_per_key_order(&self) {
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut first: HashMap<&str, &Message> = HashMap::new();
        for m in &self.messages {
            if let Some(prev) = first.get(m.id.as_str()) {
                assert_eq!(
                    prev.payload, m.payload,
                    "a re-sent id must carry the same event"
                );
                assert_eq!(prev.key, m.key, "a re-sent id must carry the same key");
                continue;
            }
            first.insert(&m.id, m);
            let (key, seq) = parse(m);
            if let Some(&before) = last.get(&key) {
                assert!(
                    seq > before,
                    "key {key}: event {seq} arrived after event {before}"
                );
            }
            last.insert(key, seq);
        }
    }
}

/// Receives from `sub` (acking each delivery) until `done(seen)` holds; panics at the
/// deadline.
pub async fn receive_until(
    sub: &mut Subscription,
    seen: &mut Seen,
    deadline: Duration,
    mut done: impl FnMut(&Seen) -> bool,
) {
    let until = Instant::now() + deadline;
    while !done(seen) {
        let next = tokio::time::timeout_at(until, sub.next()).await;
        let delivery = match next {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
            Ok(None) => panic!("subscription ended"),
            Err(_) => panic!(
                "deadline of {deadline:?} passed with {} messages ({} distinct)",
                seen.messages.len(),
                seen.distinct_ids().len()
            ),
        };
        let at = Instant::now();
        let (message, _, _, acker) = delivery.into_parts();
        acker.ack().await.expect("ack");
        seen.push(message, at);
    }
}

/// Receives whatever else arrives until the stream stays quiet for `quiet`.
pub async fn drain(sub: &mut Subscription, seen: &mut Seen, quiet: Duration) {
    while let Ok(Some(Ok(d))) = tokio::time::timeout(quiet, sub.next()).await {
        let at = Instant::now();
        let (message, _, _, acker) = d.into_parts();
        acker.ack().await.expect("ack");
        seen.push(message, at);
    }
}

/// Polls `pending()` until it is zero; panics at the deadline.
pub async fn wait_drained(pool: &Pool, outbox: &Outbox, deadline: Duration) {
    let until = Instant::now() + deadline;
    loop {
        let client = pool.get().await.expect("connection");
        let n = outbox.pending(&client).await.expect("pending");
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "{n} rows still pending after {deadline:?}"
        );
        drop(client);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A small deterministic PRNG (xorshift64*), seeded per test run and printed so a
/// failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn from_env_or_time(var: &str) -> Self {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
                    | 1
            });
        println!("{var}={seed}");
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// The atomicity scenario: 10 000 events in 1 000 transactions from 4 concurrent
/// writers (each owning its keys, as an aggregate's row lock would serialize them), every
/// tenth transaction rolled back, a relay publishing through `publisher` meanwhile.
/// Exactly the 9 000 committed events must arrive at `subscriber`, none of the
/// rolled-back ones, in order per key, without a re-send.
pub async fn committed_only(
    name: &str,
    topic: &str,
    publisher: Arc<dyn Publisher>,
    subscriber: &dyn Subscriber,
) {
    const WRITERS: u64 = 4;
    const TXS: u64 = 1_000;
    const PER_TX: u64 = 10;
    const KEYS_PER_WRITER: u64 = 25;

    let pool = pool(8).await;
    let outbox = fresh_outbox(&pool, name).await;
    let mut sub = subscriber
        .subscribe(SubscribeSpec::new(topic, "check").max_in_flight(2_000))
        .await
        .expect("subscribe");
    let relay = Relay::new(outbox.clone(), pool.clone(), publisher)
        .config(RelayConfig {
            batch_size: 250,
            ..RelayConfig::default()
        })
        .listen(pg_config().await)
        .spawn();

    let started = Instant::now();
    let writers = (0..WRITERS).map(|w| {
        let (pool, outbox, topic) = (pool.clone(), outbox.clone(), topic.to_owned());
        tokio::spawn(async move {
            let mut rng = Rng::from_env_or_time(&format!("OUTBOX_ATOMICITY_SEED_{w}"));
            let mut seq = vec![0u64; KEYS_PER_WRITER as usize];
            let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
            let mut client = pool.get().await.expect("connection");
            for n in (w..TXS).step_by(WRITERS as usize) {
                let msgs: Vec<_> = (0..PER_TX)
                    .map(|_| {
                        let k = rng.range(0, KEYS_PER_WRITER) as usize;
                        seq[k] += 1;
                        event(&format!("w{w}-k{k}"), seq[k], n)
                    })
                    .collect();
                let tx = client.transaction().await.expect("begin");
                outbox.append(&tx, &topic, &msgs).await.expect("append");
                let ids = msgs.into_iter().map(|m| m.id);
                if n % 10 == 7 {
                    tx.rollback().await.expect("rollback");
                    rolled_back.extend(ids);
                } else {
                    tx.commit().await.expect("commit");
                    committed.extend(ids);
                }
            }
            (committed, rolled_back)
        })
    });
    let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
    for w in futures::future::join_all(writers).await {
        let (c, r) = w.expect("writer");
        committed.extend(c);
        rolled_back.extend(r);
    }
    let written = started.elapsed();
    assert_eq!(committed.len(), 9_000);
    assert_eq!(rolled_back.len(), 1_000);

    let mut seen = Seen::default();
    receive_until(&mut sub, &mut seen, Duration::from_secs(120), |s| {
        s.distinct_ids().len() >= 9_000
    })
    .await;
    let received = started.elapsed();
    wait_drained(&pool, &outbox, Duration::from_secs(30)).await;
    drain(&mut sub, &mut seen, Duration::from_millis(500)).await;
    let stats = relay.shutdown().await;
    sub.close().await.expect("close");

    assert!(
        seen.distinct_ids().is_disjoint(&rolled_back),
        "a rolled-back event was published"
    );
    assert_eq!(
        seen.distinct_ids(),
        &committed,
        "exactly the committed events arrive"
    );
    assert_eq!(seen.duplicates(), 0, "no crash, so no re-sends");
    assert_eq!(stats.published, 9_000);
    seen.assert_per_key_order();
    println!(
        "{name}: 9000 committed events arrived in key order, 0 of 1000 rolled back; \
         written in {written:?}, all received by {received:?}; relay {stats:?}"
    );
    drop_table(&pool, &outbox).await;
}
