//! Crash tests: a consumer process is SIGKILLed at random points while it handles
//! 5 000 messages, then started again until the queue is drained; every message must
//! have been applied exactly once.
//!
//! The message source is a durable queue in a PostgreSQL table (rows handed out with a
//! lease via `FOR UPDATE SKIP LOCKED`, marked consumed on ack, handed out again when a
//! killed consumer's lease runs out) — see `src/bin/crash_consumer.rs`. The point under
//! test is the inbox, not the broker.

mod common;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::Rng;
use redis::AsyncCommands;

const MESSAGES: usize = 5_000;
const KILLS: usize = 8;
const BIN: &str = env!("CARGO_BIN_EXE_herald-dedupe-crash-consumer");

fn name(prefix: &str) -> String {
    herald_testkit::unique(prefix).replace('-', "_")
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}

/// Creates and fills the queue table.
async fn make_queue(c: &tokio_postgres::Client, queue: &str) {
    c.batch_execute(&format!(
        "CREATE TABLE \"{queue}\" (seq bigserial PRIMARY KEY, msg_id text NOT NULL, payload text NOT NULL, \
         locked_until timestamptz, attempts int NOT NULL DEFAULT 0, consumed boolean NOT NULL DEFAULT false)"
    ))
    .await
    .unwrap();
    let ids: Vec<String> = (0..MESSAGES)
        .map(|_| herald_core::message::new_id())
        .collect();
    c.execute(
        &format!("INSERT INTO \"{queue}\" (msg_id, payload) SELECT id, 'p-' || id FROM unnest($1::text[]) AS id"),
        &[&ids],
    )
    .await
    .unwrap();
}

async fn consumed(c: &tokio_postgres::Client, queue: &str) -> i64 {
    c.query_one(
        &format!("SELECT count(*) FROM \"{queue}\" WHERE consumed"),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

fn spawn(args: &[&str], duplicates: &Arc<AtomicU64>) -> Child {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the crash consumer");
    let out = child.stdout.take().unwrap();
    let dups = duplicates.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line == "duplicate" {
                dups.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    child
}

/// Runs the consumer, SIGKILLing it `KILLS` times at random points while work remains,
/// then lets a last run drain the queue. Returns (kills that hit live work, duplicates
/// the dedupe store caught).
async fn run_with_kills(args: &[&str], c: &tokio_postgres::Client, queue: &str) -> (usize, u64) {
    let duplicates = Arc::new(AtomicU64::new(0));
    let mut hits = 0;
    for _ in 0..KILLS {
        let before = consumed(c, queue).await;
        if before as usize >= MESSAGES {
            break;
        }
        let mut child = spawn(args, &duplicates);
        // The random point of the crash, in progress rather than time (a fast consumer
        // would drain the queue before the later kills): after 150–550 more messages,
        // so 8 kills always land before the 5 000 are done.
        let target = before + rand::rng().random_range(150..550);
        let give_up = Instant::now() + Duration::from_secs(20);
        while consumed(c, queue).await < target
            && child.try_wait().unwrap().is_none()
            && Instant::now() < give_up
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix
            hits += 1;
        }
        child.wait().unwrap();
    }
    let mut last = spawn(args, &duplicates);
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = last.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the last run did not drain the queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "the last run failed: {status}");
    assert_eq!(consumed(c, queue).await as usize, MESSAGES);
    (hits, duplicates.load(Ordering::Relaxed))
}

async fn redelivered(c: &tokio_postgres::Client, queue: &str) -> i64 {
    c.query_one(
        &format!("SELECT count(*) FROM \"{queue}\" WHERE attempts > 1"),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_transactional_survives_sigkill_exactly_once() {
    let url = herald_testkit::fixtures::postgres_url().await;
    let c = pg(&url).await;
    let (queue, inbox, effects) = (name("crashq"), name("crash_inbox"), name("crash_fx"));
    make_queue(&c, &queue).await;
    // No unique constraint: a second application would show as a second row.
    c.batch_execute(&format!(
        "CREATE TABLE \"{effects}\" (msg_id text NOT NULL)"
    ))
    .await
    .unwrap();

    let (hits, dups) = run_with_kills(&["pg", &url, &queue, &inbox, &effects], &c, &queue).await;

    let row = c
        .query_one(
            &format!("SELECT count(*), count(DISTINCT msg_id) FROM \"{effects}\""),
            &[],
        )
        .await
        .unwrap();
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
    let doubles: Vec<(String, i64)> = c
        .query(
            &format!("SELECT msg_id, count(*) FROM \"{effects}\" GROUP BY msg_id HAVING count(*) > 1 LIMIT 5"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let missing: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM \"{queue}\" q WHERE NOT EXISTS (SELECT 1 FROM \"{effects}\" e WHERE e.msg_id = q.msg_id)"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let inbox_done: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM \"{inbox}\" WHERE state = 'done'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let again = redelivered(&c, &queue).await;
    eprintln!(
        "postgres crash test: {hits} kills, {again} messages redelivered, {dups} duplicates caught by the inbox"
    );
    assert!(doubles.is_empty(), "applied twice: {doubles:?}");
    assert_eq!(missing, 0, "messages never applied");
    assert_eq!((rows, distinct), (MESSAGES as i64, MESSAGES as i64));
    assert_eq!(inbox_done, MESSAGES as i64);
    assert!(
        hits >= KILLS / 2,
        "only {hits} kills hit a running consumer"
    );
    assert!(
        again > 0,
        "the kills caused no redelivery: the test proved nothing"
    );
    assert!(
        dups > 0,
        "no redelivery of an applied message: the inbox was never put to the test"
    );
    for t in [&queue, &inbox, &effects] {
        c.batch_execute(&format!("DROP TABLE \"{t}\""))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_atomic_completion_survives_sigkill_exactly_once() {
    let url = herald_testkit::fixtures::postgres_url().await;
    let redis_url = herald_testkit::fixtures::redis_url().await;
    let c = pg(&url).await;
    let queue = name("crashq_r");
    let prefix = format!("{}:", herald_testkit::unique("crash-dedupe"));
    let list = format!("{prefix}applied");
    make_queue(&c, &queue).await;

    let (hits, dups) = run_with_kills(
        &["redis", &url, &queue, &prefix, &list, &redis_url],
        &c,
        &queue,
    )
    .await;

    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut r = client.get_multiplexed_async_connection().await.unwrap();
    // A list, not a set: a message applied twice would appear twice.
    let applied: Vec<String> = r.lrange(&list, 0, -1).await.unwrap();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &applied {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let doubles: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    let expected: Vec<String> = c
        .query(&format!("SELECT msg_id FROM \"{queue}\""), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing = expected
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .count();
    let again = redelivered(&c, &queue).await;
    eprintln!(
        "redis crash test: {hits} kills, {again} messages redelivered, {dups} duplicates caught by the store"
    );
    assert!(doubles.is_empty(), "applied twice: {doubles:?}");
    assert_eq!(missing, 0, "messages never applied");
    assert_eq!(applied.len(), MESSAGES);
    assert!(
        hits >= KILLS / 2,
        "only {hits} kills hit a running consumer"
    );
    assert!(
        again > 0,
        "the kills caused no redelivery: the test proved nothing"
    );
    assert!(
        dups > 0,
        "no redelivery of an applied message: the store was never put to the test"
    );
    c.batch_execute(&format!("DROP TABLE \"{queue}\""))
        .await
        .unwrap();
    let keys: Vec<String> = r.keys(format!("{prefix}*")).await.unwrap();
    if !keys.is_empty() {
        let _: () = r.del(keys).await.unwrap();
    }
}
