//! A NATS server restarted in the middle of a 10 000-message publish + consume run: the
//! client reconnects and every message is handled (duplicates allowed and counted, no
//! losses). Uses a nats-server of its own, never the shared one.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use herald_core::{Inbound, Message, Publisher, RouteConfig, Router, handler_fn};
use herald_nats::NatsConfig;
use tokio::time::Instant;

const TOTAL: usize = 10_000;
const BATCH: usize = 100;

async fn run(graceful: bool) {
    common::init_tracing();
    let mut server = common::OwnServer::start(&[]).await;
    let mut cfg = NatsConfig::new(&server.url());
    cfg.consumer.ack_wait = Duration::from_secs(3);
    cfg.consumer.idle_heartbeat = Duration::from_secs(1);
    cfg.publish.ack_timeout = Duration::from_secs(2);
    cfg.connection.request_timeout = Duration::from_secs(3);
    let broker = common::connect(cfg).await;
    let topic = "restart.orders";
    broker.ensure_topic(topic).await.expect("ensure");

    let handled: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let h = handled.clone();
    let router = Router::new()
        .route_with(
            RouteConfig::new("count", topic, "counter").concurrency(4),
            handler_fn(move |i: Inbound| {
                let h = h.clone();
                async move {
                    *h.lock().unwrap().entry(i.message.id.clone()).or_default() += 1;
                    Ok(())
                }
            }),
        )
        .drain_timeout(Duration::from_secs(10));
    let running = router.start(broker.clone());

    let published = Arc::new(AtomicUsize::new(0));
    let publish_errors = Arc::new(AtomicUsize::new(0));
    let ids: Vec<Vec<Message>> = (0..TOTAL / BATCH)
        .map(|b| {
            (0..BATCH)
                .map(|i| {
                    Message::new(format!("m{}", b * BATCH + i)).with_key(format!("k{}", i % 16))
                })
                .collect()
        })
        .collect();
    let all_ids: Vec<String> = ids.iter().flatten().map(|m| m.id.clone()).collect();
    let publisher = {
        let broker = broker.clone();
        let published = published.clone();
        let errors = publish_errors.clone();
        tokio::spawn(async move {
            for batch in ids {
                // A failed batch is published again with the same ids: the duplicate
                // window stores each message once.
                loop {
                    match broker.publish(topic, batch.clone()).await {
                        Ok(()) => break,
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(error = %e, "publish failed; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                published.fetch_add(batch.len(), Ordering::Relaxed);
            }
        })
    };

    let started = Instant::now();
    // Restart while both sides are busy.
    common::eventually(Duration::from_secs(60), "a third handled", || {
        let n = handled.lock().unwrap().len();
        async move { n >= TOTAL / 3 }
    })
    .await;
    let at_restart = (
        published.load(Ordering::Relaxed),
        handled.lock().unwrap().len(),
    );
    // Down long enough for publishes to time out and pulls to miss heartbeats.
    server.restart(graceful, Duration::from_secs(3)).await;
    let restarted = Instant::now();

    publisher.await.expect("publisher task");
    common::eventually(Duration::from_secs(120), "every message handled", || {
        let n = handled.lock().unwrap().len();
        async move { n >= TOTAL }
    })
    .await;
    let done = started.elapsed();
    running.shutdown().await.expect("shutdown");

    let handled = handled.lock().unwrap();
    let missing = all_ids
        .iter()
        .filter(|id| !handled.contains_key(*id))
        .count();
    assert_eq!(missing, 0, "lost messages");
    assert_eq!(handled.len(), TOTAL, "only our messages");
    let deliveries: u32 = handled.values().sum();
    let duplicates = deliveries as usize - TOTAL;
    println!(
        "restart ({}): published {}/handled {} at restart; all {TOTAL} handled in {done:?} \
         ({:?} after the restart); {duplicates} duplicate deliveries; {} publish retries",
        if graceful { "SIGTERM" } else { "SIGKILL" },
        at_restart.0,
        at_restart.1,
        restarted.elapsed(),
        publish_errors.load(Ordering::Relaxed),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_run_loses_nothing() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restarted_gracefully_mid_run_loses_nothing() {
    run(true).await;
}
