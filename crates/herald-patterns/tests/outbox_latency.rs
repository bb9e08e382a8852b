//! Figures: the commit-to-publish delay with `LISTEN`/`NOTIFY` (polling set to 5 s, so
//! a fast publish proves the notification woke the relay), and the relay's throughput.
//!
//! Real PostgreSQL; the relay publishes to the in-memory transport so the figures are
//! the outbox's own cost (the NATS figures are in `outbox_nats.rs`).

mod outbox_support;

use std::{sync::Arc, time::Duration};

use herald_core::{SubscribeSpec, Subscriber, memory::MemoryBroker};
use herald_patterns::outbox::{Relay, RelayConfig};
use outbox_support::*;
use tokio::time::Instant;

const POLL: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_the_relay_well_before_the_poll_interval() {
    let pool = pool(4).await;
    let outbox = fresh_outbox(&pool, "outbox-latency").await;
    let broker = MemoryBroker::new();
    let mut sub = broker
        .subscribe(SubscribeSpec::new("t", "check"))
        .await
        .expect("subscribe");
    let relay = Relay::new(outbox.clone(), pool.clone(), Arc::new(broker.clone()))
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
            .append(&tx, "t", &[event("k", i + 1, i)])
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
        "latency (LISTEN/NOTIFY, poll {POLL:?}, memory transport): median {median:?}, p99 {p99:?}, max {:?}",
        delays[delays.len() - 1]
    );
    assert!(
        median < Duration::from_secs(1),
        "median commit-to-publish {median:?} is not far below the poll interval"
    );
    drop(client);
    drop_table(&pool, &outbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_throughput() {
    const ROWS: u64 = 20_000;
    let pool = pool(4).await;
    let outbox = fresh_outbox(&pool, "outbox-throughput").await;
    let broker = MemoryBroker::new();
    let mut client = pool.get().await.expect("connection");
    for t in 0..ROWS / 1_000 {
        let msgs: Vec<_> = (0..1_000)
            .map(|i| event(&format!("k{}", i % 100), t * 1_000 + i + 1, t))
            .collect();
        let tx = client.transaction().await.expect("begin");
        outbox.append(&tx, "t", &msgs).await.expect("append");
        tx.commit().await.expect("commit");
    }
    drop(client);

    let started = Instant::now();
    let relay = Relay::new(outbox.clone(), pool.clone(), Arc::new(broker.clone()))
        .config(RelayConfig::default())
        .spawn();
    wait_drained(&pool, &outbox, Duration::from_secs(300)).await;
    let took = started.elapsed();
    let stats = relay.shutdown().await;
    assert_eq!(stats.published, ROWS);
    println!(
        "throughput (one relay, batch 500, memory transport): {ROWS} rows in {took:?} = {:.0} rows/s",
        ROWS as f64 / took.as_secs_f64()
    );
    drop_table(&pool, &outbox).await;
}
