//! The outbox end to end through NATS JetStream (real server, `herald-nats`):
//!
//! * the 10 000-event / 1 000-transaction / 100-rollback scenario;
//! * the relay **process** killed with SIGKILL at random points five times while events
//!   are written: nothing is lost, re-sends are bounded and keep their message id;
//! * a message the server refuses (over `max_payload`) holds back its key only;
//! * figures: commit-to-publish latency with `LISTEN`/`NOTIFY` (polling at 5 s) and the
//!   relay's throughput.
//!
//! The relay process of the kill test is this test binary run again with the ignored
//! test `relay_child_process` selected; it gets its settings through `HERALD_OUTBOX_CHILD_*`
//! variables.

mod outbox_support;

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use herald_core::{Message, SubscribeSpec, Subscriber};
use herald_nats::{NatsBroker, NatsConfig};
use herald_patterns::outbox::{Outbox, OutboxConfig, Relay, RelayConfig};
use outbox_support::*;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    time::Instant,
};

/// A broker whose streams keep ids for `duplicate_window` (NATS drops a republished id
/// inside it).
async fn nats(duplicate_window: Duration) -> NatsBroker {
    let mut config = NatsConfig::new(&herald_testkit::fixtures::nats_url().await);
    config.stream.duplicate_window = duplicate_window;
    NatsBroker::connect(config).await.expect("connect to NATS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_committed_events_arrive_through_nats() {
    let broker = nats(Duration::from_secs(120)).await;
    let topic = herald_testkit::unique("outbox-10k");
    broker.ensure_topic(&topic).await.expect("stream");
    committed_only(
        "outbox-10k-nats",
        &topic,
        Arc::new(broker.publisher()),
        &broker,
    )
    .await;
    broker.delete_topic(&topic).await.expect("delete stream");
}

const KILLS: usize = 5;
const KILL_BATCH: usize = 100;
/// The shortest duplicate window NATS allows: re-sends that come later than it are
/// stored again, so the test sees what the relay put on the wire (the default two
/// minutes would drop every re-send at the server).
const KILL_DUP_WINDOW: Duration = Duration::from_millis(100);

/// Starts a relay process and waits until it says it runs.
async fn relay_process(outbox: &Outbox, pg_url: &str, nats_url: &str) -> Child {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args([
            "relay_child_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("HERALD_OUTBOX_CHILD_SCHEMA", outbox.schema())
        .env("HERALD_OUTBOX_CHILD_TABLE", outbox.table())
        .env("HERALD_OUTBOX_CHILD_BATCH", KILL_BATCH.to_string())
        .env(
            "HERALD_OUTBOX_CHILD_DUP_MS",
            KILL_DUP_WINDOW.as_millis().to_string(),
        )
        .env("HERALD_POSTGRES_URL", pg_url)
        .env("HERALD_NATS_URL", nats_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the relay process");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("outbox relay child ready") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "the relay process did not come up");
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

async fn sent_rows(pool: &deadpool_postgres::Pool, outbox: &Outbox) -> i64 {
    let client = pool.get().await.expect("connection");
    client
        .query_one(
            &format!(
                "SELECT count(*) FROM \"{}\".\"{}\" WHERE sent_at IS NOT NULL",
                outbox.schema(),
                outbox.table()
            ),
            &[],
        )
        .await
        .expect("count")
        .get(0)
}

/// Which of `ids` are still unsent.
async fn still_unsent(
    pool: &deadpool_postgres::Pool,
    outbox: &Outbox,
    ids: &[String],
) -> Vec<String> {
    let client = pool.get().await.expect("connection");
    client
        .query(
            &format!(
                "SELECT message_id FROM \"{}\".\"{}\" WHERE sent_at IS NULL AND message_id = ANY($1)",
                outbox.schema(),
                outbox.table()
            ),
            &[&ids],
        )
        .await
        .expect("unsent rows")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits (up to `deadline`) for the worst moment to crash: a relay is inside a round
/// (its claim's `FOR UPDATE` holds the table's `RowShareLock` until commit) and a message
/// received since `since` still has its row unsent — published, not yet marked. Reads
/// `pg_locks` and the table only, so it takes no lock a relay could trip over.
async fn published_not_marked(
    pool: &deadpool_postgres::Pool,
    outbox: &Outbox,
    seen: &Mutex<Seen>,
    since: usize,
    deadline: Duration,
) -> Option<Vec<String>> {
    let client = pool.get().await.expect("connection");
    let sql = format!(
        "SELECT EXISTS (
             SELECT 1 FROM pg_locks l
             WHERE l.relation = '\"{schema}\".\"{table}\"'::regclass
               AND l.mode = 'RowShareLock' AND l.pid <> pg_backend_pid())
           AND EXISTS (
             SELECT 1 FROM \"{schema}\".\"{table}\"
             WHERE sent_at IS NULL AND message_id = ANY($1)),
           (SELECT array_agg(message_id) FROM \"{schema}\".\"{table}\"
             WHERE sent_at IS NULL AND message_id = ANY($1))",
        schema = outbox.schema(),
        table = outbox.table()
    );
    let stmt = client.prepare(&sql).await.expect("prepare");
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        let recent: Vec<String> = {
            let seen = seen.lock().expect("seen");
            let from = since.max(seen.messages.len().saturating_sub(500));
            seen.messages[from.min(seen.messages.len())..]
                .iter()
                .map(|m| m.id.clone())
                .collect()
        };
        if !recent.is_empty() {
            let row = client.query_one(&stmt, &[&recent]).await.expect("probe");
            if row.get::<_, bool>(0) {
                return row.get(1);
            }
        }
        tokio::task::yield_now().await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_process_killed_five_times_loses_nothing() {
    const TXS: u64 = 1_000;
    const PER_TX: u64 = 10;
    const KEYS: u64 = 100;

    let pg_url = herald_testkit::fixtures::postgres_url().await;
    let nats_url = herald_testkit::fixtures::nats_url().await;
    let pool = pool(4).await;
    let outbox = fresh_outbox(&pool, "outbox-kill").await;
    let broker = nats(KILL_DUP_WINDOW).await;
    let topic = herald_testkit::unique("outbox-kill");
    broker.ensure_topic(&topic).await.expect("stream");
    let mut sub = broker
        .subscribe(SubscribeSpec::new(&topic, "check").max_in_flight(2_000))
        .await
        .expect("subscribe");
    let mut rng = Rng::from_env_or_time("OUTBOX_KILL_SEED");

    // The consumer runs throughout, so the test sees what reached the broker while a
    // relay round is still open.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let receiver = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let d = tokio::select! {
                    d = sub.next() => d,
                    _ = stop_rx.changed() => break,
                };
                let d = d.expect("the subscription runs").expect("delivery");
                let at = Instant::now();
                let (message, _, _, acker) = d.into_parts();
                acker.ack().await.expect("ack");
                seen.lock().expect("seen").push(message, at);
            }
            sub.close().await.expect("close");
        })
    };

    // The writer: 10 000 events in 1 000 transactions over ~8 s, so every kill lands
    // while rows are being written and published.
    let writer = {
        let (pool, outbox, topic) = (pool.clone(), outbox.clone(), topic.clone());
        tokio::spawn(async move {
            let mut client = pool.get().await.expect("connection");
            let mut seq = vec![0u64; KEYS as usize];
            let mut ids = Vec::new();
            for n in 0..TXS {
                let msgs: Vec<Message> = (0..PER_TX)
                    .map(|i| {
                        let k = ((n * PER_TX + i) * 7 % KEYS) as usize;
                        seq[k] += 1;
                        event(&format!("k{k}"), seq[k], n)
                    })
                    .collect();
                let tx = client.transaction().await.expect("begin");
                outbox.append(&tx, &topic, &msgs).await.expect("append");
                tx.commit().await.expect("commit");
                ids.extend(msgs.into_iter().map(|m| m.id));
                // Pacing of the workload, not a wait for a condition.
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
            ids
        })
    };

    let mut unmarked = 0;
    let mut resend_expected: Vec<String> = Vec::new();
    for kill in 1..=KILLS {
        let mut child = relay_process(&outbox, &pg_url, &nats_url).await;
        let since = seen.lock().expect("seen").messages.len();
        // A random point of the run, then the next moment this relay has published rows
        // it has not marked sent yet.
        let life = Duration::from_millis(rng.range(100, 1_200));
        tokio::time::sleep(life).await;
        let hit = published_not_marked(&pool, &outbox, &seen, since, Duration::from_secs(3)).await;
        child.start_kill().expect("SIGKILL");
        let status = child.wait().await.expect("reap");
        // Rows this relay published but did not mark: the next relay must send them again.
        let orphans = match &hit {
            Some(ids) => still_unsent(&pool, &outbox, ids).await,
            None => Vec::new(),
        };
        unmarked += usize::from(hit.is_some());
        // A supervisor's restart delay; longer than twice the duplicate window, so the
        // stream stores the re-sends and the test can count them.
        tokio::time::sleep(KILL_DUP_WINDOW * 4).await;
        println!(
            "kill {kill}: relay process SIGKILLed {life:?} after start, {} ({status}); {} rows \
             sent so far; {} rows it had published were left unmarked",
            if hit.is_some() {
                "as soon as it had published rows not yet marked"
            } else {
                "at a random point"
            },
            sent_rows(&pool, &outbox).await,
            orphans.len()
        );
        resend_expected.extend(orphans);
    }
    let mut last = relay_process(&outbox, &pg_url, &nats_url).await;
    let written = writer.await.expect("writer");
    assert_eq!(written.len() as u64, TXS * PER_TX);

    let until = Instant::now() + Duration::from_secs(180);
    while seen.lock().expect("seen").distinct_ids().len() < written.len() {
        assert!(Instant::now() < until, "not every event arrived in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_drained(&pool, &outbox, Duration::from_secs(60)).await;
    // Whatever else is on its way (late re-sends) arrives within a quiet second.
    let mut count = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = seen.lock().expect("seen").messages.len();
        if now == count {
            break;
        }
        count = now;
    }
    last.start_kill().expect("stop the last relay");
    let _ = last.wait().await;
    stop_tx.send(true).expect("stop the consumer");
    receiver.await.expect("consumer");

    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    let written: std::collections::HashSet<String> = written.into_iter().collect();
    assert_eq!(
        seen.distinct_ids(),
        &written,
        "no event lost, none invented"
    );
    let dups = seen.duplicates();
    println!(
        "kill test: {} events, {} deliveries, {dups} re-sends after {KILLS} SIGKILLs \
         ({unmarked} aimed at a round in progress, {} rows orphaned; bound {})",
        written.len(),
        seen.messages.len(),
        resend_expected.len(),
        KILLS * KILL_BATCH
    );
    assert!(
        dups <= KILLS * KILL_BATCH,
        "re-sends are bounded by one batch per crash"
    );
    // The rows a killed relay had published but not marked were unsent after the kill
    // and are sent now: a later relay published them again, under the id fixed when the
    // row was written. The stream either stored that re-send (two deliveries of one id,
    // identical — checked below) or dropped it by `Nats-Msg-Id` inside its window.
    let twice = resend_expected
        .iter()
        .filter(|id| seen.messages.iter().filter(|m| &m.id == *id).count() >= 2)
        .count();
    println!(
        "kill test: {} rows orphaned by a kill were re-sent: {twice} delivered twice with \
         the same id, {} dropped by NATS's duplicate window",
        resend_expected.len(),
        resend_expected.len() - twice
    );
    // Per key, first occurrences in order; every repeat is the same event (same id,
    // key and payload) as its first occurrence.
    seen.assert_per_key_order();
    broker.delete_topic(&topic).await.expect("delete stream");
    drop_table(&pool, &outbox).await;
}

/// The relay process of `relay_process_killed_five_times_loses_nothing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the relay process spawned by relay_process_killed_five_times_loses_nothing"]
async fn relay_child_process() {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: this is the relay process of the kill test, not a test")
        })
    };
    let outbox = Outbox::new(OutboxConfig {
        schema: var("HERALD_OUTBOX_CHILD_SCHEMA"),
        table: var("HERALD_OUTBOX_CHILD_TABLE"),
        channel: None,
    })
    .expect("outbox config");
    let dup_ms: u64 = var("HERALD_OUTBOX_CHILD_DUP_MS").parse().expect("a number");
    let batch: usize = var("HERALD_OUTBOX_CHILD_BATCH").parse().expect("a number");
    let broker = nats(Duration::from_millis(dup_ms)).await;
    let relay = Relay::new(outbox, pool(2).await, Arc::new(broker.publisher()))
        .config(RelayConfig {
            batch_size: batch,
            poll_interval: Duration::from_millis(200),
            ..RelayConfig::default()
        })
        .listen(pg_config().await)
        .spawn();
    println!("outbox relay child ready");
    // Runs until SIGKILLed.
    std::future::pending::<()>().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nats_refuses_holds_back_its_key_only() {
    let pool = pool(2).await;
    let outbox = fresh_outbox(&pool, "outbox-nats-large").await;
    let broker = nats(Duration::from_secs(120)).await;
    let topic = herald_testkit::unique("outbox-large");
    broker.ensure_topic(&topic).await.expect("stream");
    let mut sub = broker
        .subscribe(SubscribeSpec::new(&topic, "check"))
        .await
        .expect("subscribe");
    let too_large = Message::new(vec![b'x'; broker.max_payload() + 1]).with_key("k1");
    let mut client = pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    outbox
        .append(
            &tx,
            &topic,
            &[
                event("k1", 1, 0),
                too_large.clone(),
                event("k1", 3, 0),
                event("k2", 1, 0),
                event("k2", 2, 0),
            ],
        )
        .await
        .expect("append");
    tx.commit().await.expect("commit");

    let relay = Relay::new(outbox.clone(), pool.clone(), Arc::new(broker.publisher()));
    let r = relay.run_once().await.expect("round");
    assert_eq!((r.published, r.failed, r.held), (3, 1, 1), "{r:?}");
    let mut seen = Seen::default();
    receive_until(&mut sub, &mut seen, Duration::from_secs(30), |s| {
        s.messages.len() == 3
    })
    .await;
    let err: Option<String> = client
        .query_one(
            &format!(
                "SELECT last_error FROM \"{}\".\"{}\" WHERE message_id = $1",
                outbox.schema(),
                outbox.table()
            ),
            &[&too_large.id],
        )
        .await
        .expect("row")
        .get(0);
    println!("refused row: {err:?}");
    assert!(err.is_some_and(|e| e.contains("too large")));

    // An operator removes the row; k1 resumes.
    client
        .execute(
            &format!(
                "DELETE FROM \"{}\".\"{}\" WHERE message_id = $1",
                outbox.schema(),
                outbox.table()
            ),
            &[&too_large.id],
        )
        .await
        .expect("delete");
    assert_eq!(relay.run_once().await.expect("round").published, 1);
    receive_until(&mut sub, &mut seen, Duration::from_secs(30), |s| {
        s.messages.len() == 4
    })
    .await;
    seen.assert_per_key_order();
    sub.close().await.expect("close");
    broker.delete_topic(&topic).await.expect("delete stream");
    drop(client);
    drop_table(&pool, &outbox).await;
}

const POLL: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_throughput_through_nats() {
    let pool = pool(4).await;
    let broker = nats(Duration::from_secs(120)).await;

    // Latency: one event per transaction, each awaited at the consumer.
    let outbox = fresh_outbox(&pool, "outbox-nats-latency").await;
    let topic = herald_testkit::unique("outbox-latency");
    broker.ensure_topic(&topic).await.expect("stream");
    let mut sub = broker
        .subscribe(SubscribeSpec::new(&topic, "check"))
        .await
        .expect("subscribe");
    let relay = Relay::new(outbox.clone(), pool.clone(), Arc::new(broker.publisher()))
        .config(RelayConfig {
            poll_interval: POLL,
            ..RelayConfig::default()
        })
        .listen(pg_config().await)
        .spawn();
    let until = Instant::now() + Duration::from_secs(30);
    while !relay.is_listening() {
        assert!(Instant::now() < until, "the relay never started listening");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut client = pool.get().await.expect("connection");
    let mut seen = Seen::default();
    let mut delays = Vec::new();
    for i in 0..200u64 {
        let tx = client.transaction().await.expect("begin");
        outbox
            .append(&tx, &topic, &[event("k", i + 1, i)])
            .await
            .expect("append");
        tx.commit().await.expect("commit");
        let committed = Instant::now();
        receive_until(&mut sub, &mut seen, POLL * 3, |s| {
            s.messages.len() as u64 > i
        })
        .await;
        delays.push(seen.at[i as usize] - committed);
    }
    relay.shutdown().await;
    seen.assert_per_key_order();
    delays.sort();
    let median = delays[delays.len() / 2];
    let p99 = delays[delays.len() * 99 / 100];
    println!(
        "latency (LISTEN/NOTIFY, poll {POLL:?}, NATS JetStream, commit -> consumer): \
         median {median:?}, p99 {p99:?}, max {:?}",
        delays[delays.len() - 1]
    );
    assert!(
        median < Duration::from_secs(1),
        "median commit-to-publish {median:?} is not far below the poll interval"
    );
    sub.close().await.expect("close");
    broker.delete_topic(&topic).await.expect("delete stream");
    drop_table(&pool, &outbox).await;

    // Throughput: a backlog of 20 000 rows over 100 keys, one relay.
    const ROWS: u64 = 20_000;
    let outbox = fresh_outbox(&pool, "outbox-nats-throughput").await;
    let topic = herald_testkit::unique("outbox-throughput");
    broker.ensure_topic(&topic).await.expect("stream");
    for t in 0..ROWS / 1_000 {
        let msgs: Vec<_> = (0..1_000)
            .map(|i| event(&format!("k{}", i % 100), t * 1_000 + i + 1, t))
            .collect();
        let tx = client.transaction().await.expect("begin");
        outbox.append(&tx, &topic, &msgs).await.expect("append");
        tx.commit().await.expect("commit");
    }
    let started = Instant::now();
    let relay = Relay::new(outbox.clone(), pool.clone(), Arc::new(broker.publisher())).spawn();
    wait_drained(&pool, &outbox, Duration::from_secs(300)).await;
    let took = started.elapsed();
    let stats = relay.shutdown().await;
    assert_eq!(stats.published, ROWS);
    println!(
        "throughput (one relay, batch 500, NATS JetStream PubAcks): {ROWS} rows in {took:?} = {:.0} rows/s",
        ROWS as f64 / took.as_secs_f64()
    );
    let mut sub = broker
        .subscribe(SubscribeSpec::new(&topic, "check").max_in_flight(5_000))
        .await
        .expect("subscribe");
    let mut seen = Seen::default();
    receive_until(&mut sub, &mut seen, Duration::from_secs(120), |s| {
        s.distinct_ids().len() as u64 >= ROWS
    })
    .await;
    seen.assert_per_key_order();
    sub.close().await.expect("close");
    broker.delete_topic(&topic).await.expect("delete stream");
    drop(client);
    drop_table(&pool, &outbox).await;
}
