//! The outbox table, `append` inside the caller's transaction, `NOTIFY` on commit only,
//! purge, and the relay's per-key logic (failures, rows held by another relay, corrupt
//! rows) against real PostgreSQL, publishing to the in-memory transport.

mod outbox_support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::{StreamExt, future::BoxFuture};
use herald_core::{
    Headers, Message, PublishError, PublishErrorKind, Publisher, SubscribeSpec, Subscriber,
    memory::MemoryBroker,
};
use herald_patterns::outbox::{Outbox, OutboxErrorKind, Relay, RelayConfig};
use outbox_support::*;
use tokio_postgres::AsyncMessage;

const WAIT: Duration = Duration::from_secs(30);

/// The memory broker, with failures injected in front of it: messages whose payload
/// starts with `poison` are rejected as too large, and the first `outages` calls fail
/// as a lost connection.
struct Faulty {
    broker: MemoryBroker,
    outages: AtomicUsize,
    calls: AtomicUsize,
}

impl Faulty {
    fn new(broker: MemoryBroker, outages: usize) -> Arc<Self> {
        Arc::new(Self {
            broker,
            outages: AtomicUsize::new(outages),
            calls: AtomicUsize::new(0),
        })
    }
}

impl Publisher for Faulty {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self
            .outages
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Box::pin(async {
                Err(PublishError::new(
                    PublishErrorKind::Connection,
                    "injected outage",
                ))
            });
        }
        if messages.iter().any(|m| m.payload.starts_with(b"poison")) {
            return Box::pin(async {
                Err(PublishError::new(
                    PublishErrorKind::MessageTooLarge,
                    "injected: too large",
                ))
            });
        }
        self.broker.publish(topic, messages)
    }
}

fn fast() -> RelayConfig {
    RelayConfig {
        poll_interval: Duration::from_millis(50),
        retry_backoff: Duration::from_millis(20),
        max_retry_backoff: Duration::from_millis(100),
        ..RelayConfig::default()
    }
}

async fn append(pool: &deadpool_postgres::Pool, outbox: &Outbox, topic: &str, msgs: &[Message]) {
    let mut client = pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    outbox.append(&tx, topic, msgs).await.expect("append");
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_concurrently() {
    let pool = pool(6).await;
    let outbox = Outbox::new(herald_patterns::outbox::OutboxConfig {
        schema: SCHEMA.into(),
        table: herald_testkit::unique("outbox-migrate"),
        channel: None,
    })
    .expect("config");
    let runs = (0..4).map(|_| {
        let (pool, outbox) = (pool.clone(), outbox.clone());
        tokio::spawn(async move {
            let client = pool.get().await.expect("connection");
            outbox.migrate(&client).await
        })
    });
    for r in futures::future::join_all(runs).await {
        r.expect("task").expect("concurrent migrate");
    }
    let client = pool.get().await.expect("connection");
    outbox.migrate(&client).await.expect("migrate again");
    let cols: Vec<String> = client
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&outbox.schema(), &outbox.table()],
        )
        .await
        .expect("columns")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for c in [
        "id",
        "message_id",
        "topic",
        "key",
        "headers",
        "payload",
        "created_at",
        "sent_at",
        "attempts",
        "last_error",
    ] {
        assert!(cols.iter().any(|x| x == c), "column {c} missing: {cols:?}");
    }
    drop(client);
    drop_table(&pool, &outbox).await;
}

#[tokio::test]
async fn rows_commit_and_roll_back_with_the_callers_transaction() {
    let pool = pool(2).await;
    let outbox = fresh_outbox(&pool, "outbox-atomic").await;
    let mut client = pool.get().await.expect("connection");
    client
        .batch_execute("CREATE TEMP TABLE orders (id text PRIMARY KEY)")
        .await
        .expect("orders table");

    let mut headers = Headers::new();
    headers.append("ce-type", "OrderCreated");
    headers.append("bin", Bytes::from_static(&[0, 0xff, b'\r', b'\n', 0]));
    headers.append("bin", Bytes::new());
    let mut msg =
        Message::new(Bytes::from_static(&[1, 0, 2])).with_key(Bytes::from_static(&[0xfe, 0]));
    msg.headers = headers.clone();

    // Rolled back: neither the order nor the event exists.
    let tx = client.transaction().await.expect("begin");
    tx.execute("INSERT INTO orders VALUES ('o-1')", &[])
        .await
        .expect("order");
    outbox
        .append(&tx, "orders", &[msg.clone()])
        .await
        .expect("append");
    tx.rollback().await.expect("rollback");
    assert_eq!(outbox.pending(&client).await.expect("pending"), 0);

    // Committed: both exist, the row holds the message exactly.
    let tx = client.transaction().await.expect("begin");
    tx.execute("INSERT INTO orders VALUES ('o-1')", &[])
        .await
        .expect("order");
    outbox
        .append(&tx, "orders", &[msg.clone()])
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    let row = client
        .query_one(
            &format!(
                "SELECT message_id, topic, key, payload, attempts, sent_at IS NULL FROM \"{}\".\"{}\"",
                outbox.schema(),
                outbox.table()
            ),
            &[],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), msg.id);
    assert_eq!(row.get::<_, String>(1), "orders");
    assert_eq!(row.get::<_, Vec<u8>>(2), vec![0xfe, 0]);
    assert_eq!(row.get::<_, Vec<u8>>(3), vec![1, 0, 2]);
    assert_eq!(row.get::<_, i32>(4), 0);
    assert!(row.get::<_, bool>(5));

    // The relay publishes it unchanged: id, key, binary headers in order, payload.
    let broker = MemoryBroker::new();
    let mut sub = broker
        .subscribe(SubscribeSpec::new("orders", "check"))
        .await
        .expect("subscribe");
    let relay = Relay::new(outbox.clone(), pool.clone(), Arc::new(broker.clone())).config(fast());
    let round = relay.run_once().await.expect("round");
    assert_eq!((round.claimed, round.published, round.failed), (1, 1, 0));
    let got = sub.next().await.expect("a delivery").expect("delivery");
    assert_eq!(got.message, msg);
    got.ack().await.expect("ack");
    assert_eq!(outbox.pending(&client).await.expect("pending"), 0);
    drop(client);
    drop_table(&pool, &outbox).await;
}

#[tokio::test]
async fn append_rejects_bad_input_and_ignores_an_empty_slice() {
    let pool = pool(1).await;
    let outbox = fresh_outbox(&pool, "outbox-input").await;
    let mut client = pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    outbox
        .append(&tx, "t", &[])
        .await
        .expect("empty slice is fine");
    let e = outbox
        .append(&tx, "", &[Message::new("x")])
        .await
        .expect_err("empty topic");
    assert_eq!(e.kind(), OutboxErrorKind::InvalidMessage);
    let e = outbox
        .append(&tx, "t", &[Message::with_id("", "x")])
        .await
        .expect_err("empty id");
    assert_eq!(e.kind(), OutboxErrorKind::InvalidMessage);
    tx.rollback().await.expect("rollback");
    assert!(Outbox::with_table("").is_err());
    assert!(Outbox::with_table("x".repeat(64)).is_err());
    drop(client);
    drop_table(&pool, &outbox).await;
}

#[tokio::test]
async fn notify_is_delivered_on_commit_only() {
    let pool = pool(2).await;
    let outbox = fresh_outbox(&pool, "outbox-notify").await;
    let (listener, mut conn) = pg_config()
        .await
        .connect(tokio_postgres::NoTls)
        .await
        .expect("listener connection");
    let (tx_n, mut notes) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx_n.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener
        .batch_execute(&format!("LISTEN \"{}\"", outbox.channel()))
        .await
        .expect("listen");

    let mut client = pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    outbox
        .append(&tx, "t", &[Message::new("rolled back")])
        .await
        .expect("append");
    tx.rollback().await.expect("rollback");
    // A marker committed after the rollback: notifications arrive in commit order, so
    // if the rolled-back append had notified, that would come first.
    client
        .execute("SELECT pg_notify($1, 'marker')", &[&outbox.channel()])
        .await
        .expect("marker");
    let first = tokio::time::timeout(WAIT, notes.recv())
        .await
        .expect("marker arrives");
    assert_eq!(
        first,
        Some((outbox.channel().to_owned(), "marker".to_owned()))
    );

    append(&pool, &outbox, "t", &[Message::new("committed")]).await;
    let next = tokio::time::timeout(WAIT, notes.recv())
        .await
        .expect("notification arrives");
    assert_eq!(next, Some((outbox.channel().to_owned(), String::new())));
    drop(listener);
    let _ = driver.await;
    drop(client);
    drop_table(&pool, &outbox).await;
}

#[tokio::test]
async fn purge_deletes_sent_rows_only() {
    let pool = pool(2).await;
    let outbox = fresh_outbox(&pool, "outbox-purge").await;
    let broker = MemoryBroker::new();
    append(&pool, &outbox, "t", &[Message::new("a"), Message::new("b")]).await;
    let relay = Relay::new(outbox.clone(), pool.clone(), Arc::new(broker)).config(fast());
    assert_eq!(relay.run_once().await.expect("round").published, 2);
    append(&pool, &outbox, "t", &[Message::new("c")]).await;

    let client = pool.get().await.expect("connection");
    assert_eq!(
        outbox
            .purge_sent(&client, Duration::from_secs(3600))
            .await
            .expect("purge"),
        0,
        "rows sent just now are younger than an hour"
    );
    assert_eq!(
        outbox
            .purge_sent(&client, Duration::ZERO)
            .await
            .expect("purge"),
        2
    );
    assert_eq!(
        outbox.pending(&client).await.expect("pending"),
        1,
        "unsent row stays"
    );
    let left: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM \"{}\".\"{}\"",
                outbox.schema(),
                outbox.table()
            ),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 1);
    drop(client);
    drop_table(&pool, &outbox).await;
}

#[tokio::test]
async fn a_failing_row_holds_back_its_key_only() {
    let pool = pool(2).await;
    let outbox = fresh_outbox(&pool, "outbox-poison").await;
    let broker = MemoryBroker::new();
    let mut sub = broker
        .subscribe(SubscribeSpec::new("t", "check"))
        .await
        .expect("subscribe");
    append(
        &pool,
        &outbox,
        "t",
        &[
            event("k1", 1, 0),
            Message::new("poison|2|0").with_key("k1"),
            event("k1", 3, 0),
            event("k2", 1, 0),
            event("k2", 2, 0),
        ],
    )
    .await;
    let publisher = Faulty::new(broker.clone(), 0);
    let relay = Relay::new(outbox.clone(), pool.clone(), publisher.clone()).config(fast());

    let r = relay.run_once().await.expect("round");
    assert_eq!(
        (r.claimed, r.published, r.failed, r.held),
        (5, 3, 1, 1),
        "{r:?}"
    );
    let mut seen = Seen::default();
    receive_until(&mut sub, &mut seen, WAIT, |s| s.messages.len() == 3).await;
    let got: Vec<_> = seen.messages.iter().map(parse).collect();
    assert!(
        got.contains(&("k1".into(), 1))
            && got.contains(&("k2".into(), 1))
            && got.contains(&("k2".into(), 2))
    );

    // The poison row waits for its retry; k1's row 3 waits behind it; new k2 rows flow.
    append(&pool, &outbox, "t", &[event("k2", 3, 1)]).await;
    let r = relay.run_once().await.expect("round");
    assert_eq!(r.published, 1, "only k2's new row: {r:?}");
    receive_until(&mut sub, &mut seen, WAIT, |s| s.messages.len() == 4).await;
    assert_eq!(parse(&seen.messages[3]), ("k2".into(), 3));

    let client = pool.get().await.expect("connection");
    let (attempts, last_error): (i32, Option<String>) = {
        let row = client
            .query_one(
                &format!(
                    "SELECT attempts, last_error FROM \"{}\".\"{}\" WHERE payload = 'poison|2|0'",
                    outbox.schema(),
                    outbox.table()
                ),
                &[],
            )
            .await
            .expect("poison row");
        (row.get(0), row.get(1))
    };
    assert!(attempts >= 1);
    assert!(last_error.unwrap_or_default().contains("too large"));

    // Fix the row (an operator would); k1 resumes in order: 2 then 3.
    client
        .execute(
            &format!(
                "UPDATE \"{}\".\"{}\" SET payload = 'k1|2|0' WHERE payload = 'poison|2|0'",
                outbox.schema(),
                outbox.table()
            ),
            &[],
        )
        .await
        .expect("fix");
    let handle = relay.spawn();
    receive_until(&mut sub, &mut seen, WAIT, |s| s.messages.len() == 6).await;
    handle.shutdown().await;
    seen.assert_per_key_order();
    let k1: Vec<u64> = seen
        .messages
        .iter()
        .map(parse)
        .filter(|(k, _)| k == "k1")
        .map(|(_, s)| s)
        .collect();
    assert_eq!(k1, vec![1, 2, 3]);
    assert_eq!(seen.duplicates(), 0);
    drop(client);
    drop_table(&pool, &outbox).await;
}

#[tokio::test]
async fn an_outage_fails_the_batch_and_the_retry_keeps_order() {
    let pool = pool(3).await;
    let outbox = fresh_outbox(&pool, "outbox-outage").await;
    let broker = MemoryBroker::new();
    let mut sub = broker
        .subscribe(SubscribeSpec::new("t", "check"))
        .await
        .expect("subscribe");
    let msgs: Vec<Message> = (0..20)
        .map(|i| event(&format!("k{}", i % 3), i, 0))
        .collect();
    append(&pool, &outbox, "t", &msgs).await;
    let publisher = Faulty::new(broker.clone(), 3);
    let relay = Relay::new(outbox.clone(), pool.clone(), publisher.clone()).config(fast());

    let r = relay.run_once().await.expect("round");
    assert_eq!(
        (r.published, r.failed),
        (0, 20),
        "an outage fails the whole batch: {r:?}"
    );
    assert!(r.retry_in.is_some());
    let handle = relay.spawn();
    let mut seen = Seen::default();
    receive_until(&mut sub, &mut seen, WAIT, |s| s.distinct_ids().len() == 20).await;
    wait_drained(&pool, &outbox, WAIT).await;
    let stats = handle.stats();
    handle.shutdown().await;
    assert!(
        stats.failed >= 2,
        "the other injected outages were hit too: {stats:?}"
    );
    assert!(publisher.calls.load(Ordering::Relaxed) >= 4);
    seen.assert_per_key_order();
    assert_eq!(seen.duplicates(), 0);
    drop_table(&pool, &outbox).await;
}

#[tokio::test]
async fn rows_behind_a_row_another_relay_holds_wait_for_it() {
    let pool = pool(3).await;
    let outbox = fresh_outbox(&pool, "outbox-held").await;
    let broker = MemoryBroker::new();
    let mut sub = broker
        .subscribe(SubscribeSpec::new("t", "check"))
        .await
        .expect("subscribe");
    append(
        &pool,
        &outbox,
        "t",
        &[
            event("k1", 1, 0),
            event("k1", 2, 0),
            event("k2", 1, 0),
            event("k1", 3, 0),
        ],
    )
    .await;
    // Another relay's round: it holds k1's oldest row locked and has not committed.
    let mut other = pool.get().await.expect("connection");
    let other_tx = other.transaction().await.expect("begin");
    other_tx
        .query(
            &format!(
                "SELECT id FROM \"{}\".\"{}\" WHERE payload = 'k1|1|0' FOR UPDATE",
                outbox.schema(),
                outbox.table()
            ),
            &[],
        )
        .await
        .expect("lock k1's first row");

    let relay = Relay::new(outbox.clone(), pool.clone(), Arc::new(broker.clone())).config(fast());
    let r = relay.run_once().await.expect("round");
    assert_eq!(
        (r.claimed, r.published, r.held),
        (3, 1, 2),
        "k1's younger rows wait behind the locked row, k2 goes: {r:?}"
    );
    let mut seen = Seen::default();
    receive_until(&mut sub, &mut seen, WAIT, |s| s.messages.len() == 1).await;
    assert_eq!(parse(&seen.messages[0]), ("k2".into(), 1));

    // The other relay gives up without publishing (a crash, a rollback).
    other_tx.rollback().await.expect("rollback");
    let r = relay.run_once().await.expect("round");
    assert_eq!(r.published, 3, "{r:?}");
    receive_until(&mut sub, &mut seen, WAIT, |s| s.messages.len() == 4).await;
    seen.assert_per_key_order();
    drop(other);
    drop_table(&pool, &outbox).await;
}

#[tokio::test]
async fn a_corrupt_row_is_a_typed_failure_that_holds_its_key() {
    let pool = pool(2).await;
    let outbox = fresh_outbox(&pool, "outbox-corrupt").await;
    let broker = MemoryBroker::new();
    append(
        &pool,
        &outbox,
        "t",
        &[event("k1", 1, 0), event("k2", 1, 0), event("k1", 2, 0)],
    )
    .await;
    let client = pool.get().await.expect("connection");
    client
        .execute(
            &format!(
                "UPDATE \"{}\".\"{}\" SET headers = '\\x02ff'::bytea WHERE payload = 'k1|1|0'",
                outbox.schema(),
                outbox.table()
            ),
            &[],
        )
        .await
        .expect("corrupt the row");
    let relay = Relay::new(outbox.clone(), pool.clone(), Arc::new(broker)).config(fast());
    let r = relay
        .run_once()
        .await
        .expect("a corrupt row does not fail the round");
    assert_eq!((r.published, r.failed, r.held), (1, 1, 1), "{r:?}");
    let err: Option<String> = client
        .query_one(
            &format!(
                "SELECT last_error FROM \"{}\".\"{}\" WHERE payload = 'k1|1|0'",
                outbox.schema(),
                outbox.table()
            ),
            &[],
        )
        .await
        .expect("row")
        .get(0);
    assert!(err.unwrap_or_default().contains("corrupt"));
    drop(client);
    drop_table(&pool, &outbox).await;
}

#[tokio::test]
async fn shutdown_is_graceful_and_the_relay_purges_periodically() {
    let pool = pool(3).await;
    let outbox = fresh_outbox(&pool, "outbox-shutdown").await;
    let broker = MemoryBroker::new();
    let mut sub = broker
        .subscribe(SubscribeSpec::new("t", "check"))
        .await
        .expect("subscribe");
    let relay = Relay::new(outbox.clone(), pool.clone(), Arc::new(broker.clone()))
        .config(RelayConfig {
            purge: Some(herald_patterns::outbox::Purge {
                every: Duration::from_millis(50),
                older_than: Duration::ZERO,
            }),
            ..fast()
        })
        .listen(pg_config().await)
        .spawn();
    append(&pool, &outbox, "t", &[event("k", 1, 0), event("k", 2, 0)]).await;
    let mut seen = Seen::default();
    receive_until(&mut sub, &mut seen, WAIT, |s| s.messages.len() == 2).await;
    // The periodic purge empties the table of sent rows.
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let client = pool.get().await.expect("connection");
        let n: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM \"{}\".\"{}\"",
                    outbox.schema(),
                    outbox.table()
                ),
                &[],
            )
            .await
            .expect("count")
            .get(0);
        if n == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "sent rows were not purged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(relay.is_listening());
    relay.shutdown().await;
    drop_table(&pool, &outbox).await;
}
