//! Two relays on one outbox table at once: no row is published by both, and per-key
//! order holds — with many keys and with one hot key.
//!
//! Real PostgreSQL; the relays publish to the in-memory transport, which records every
//! publish, so a row published twice would show up as a duplicate delivery.

mod outbox_support;

use std::{sync::Arc, time::Duration};

use herald_core::{SubscribeSpec, Subscriber, memory::MemoryBroker};
use herald_patterns::outbox::{Outbox, Relay, RelayConfig, RelayHandle};
use outbox_support::*;

async fn start(outbox: &Outbox, broker: &MemoryBroker, batch: usize) -> RelayHandle {
    // Each relay has its own pool and listener, as a separate process would.
    Relay::new(outbox.clone(), pool(2).await, Arc::new(broker.clone()))
        .config(RelayConfig {
            batch_size: batch,
            contention_backoff: Duration::from_millis(5),
            ..RelayConfig::default()
        })
        .listen(pg_config().await)
        .spawn()
}

async fn run(keys: u64, total: u64, per_tx: u64, batch: usize, name: &str) {
    let pool = pool(4).await;
    let outbox = fresh_outbox(&pool, name).await;
    let broker = MemoryBroker::new();
    let mut sub = broker
        .subscribe(SubscribeSpec::new("t", "check").max_in_flight(50_000))
        .await
        .expect("subscribe");
    let a = start(&outbox, &broker, batch).await;
    let b = start(&outbox, &broker, batch).await;

    // One writer per key group keeps each key's appends serialized.
    let writers = 4.min(keys);
    let tasks = (0..writers).map(|w| {
        let (pool, outbox) = (pool.clone(), outbox.clone());
        tokio::spawn(async move {
            let mut client = pool.get().await.expect("connection");
            let mine: Vec<u64> = (0..keys).filter(|k| k % writers == w).collect();
            let mut seq = vec![0u64; mine.len()];
            let mut n = 0;
            let my_total = total / writers;
            while n < my_total {
                let msgs: Vec<_> = (0..per_tx.min(my_total - n))
                    .map(|i| {
                        let j = ((n + i) as usize) % mine.len();
                        seq[j] += 1;
                        event(&format!("k{}", mine[j]), seq[j], n)
                    })
                    .collect();
                n += msgs.len() as u64;
                let tx = client.transaction().await.expect("begin");
                outbox.append(&tx, "t", &msgs).await.expect("append");
                tx.commit().await.expect("commit");
            }
        })
    });
    for t in futures::future::join_all(tasks).await {
        t.expect("writer");
    }
    let total = total - total % writers;

    let mut seen = Seen::default();
    receive_until(&mut sub, &mut seen, Duration::from_secs(120), |s| {
        s.distinct_ids().len() as u64 >= total
    })
    .await;
    wait_drained(&pool, &outbox, Duration::from_secs(30)).await;
    drain(&mut sub, &mut seen, Duration::from_millis(300)).await;
    let (sa, sb) = (a.stats(), b.stats());
    a.shutdown().await;
    b.shutdown().await;

    println!("{name}: relay A {sa:?}\n{name}: relay B {sb:?}");
    assert_eq!(seen.distinct_ids().len() as u64, total);
    assert_eq!(
        seen.duplicates(),
        0,
        "a row was published by both relays (no crash happened)"
    );
    assert_eq!(
        sa.published + sb.published,
        total,
        "each row marked sent exactly once"
    );
    seen.assert_per_key_order();
    if keys > 1 {
        assert!(
            sa.published > 0 && sb.published > 0,
            "both relays took part: {} / {}",
            sa.published,
            sb.published
        );
    }
    drop_table(&pool, &outbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_many_keys() {
    run(200, 20_000, 50, 100, "outbox-2relays").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_one_hot_key() {
    run(1, 3_000, 20, 100, "outbox-2relays-hot").await;
}
