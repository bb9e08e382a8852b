//! The order saga on every transport: 200 orders, payment fails for every order whose
//! number ends in 7 (10 %) → exactly those orders are cancelled with their stock released,
//! every other order completes; every command is issued once per order.

mod patterns_support;

use herald_patterns::saga::{MemorySagaStore, SagaConfig, SagaEngine};
use patterns_support::*;

async fn run(kind: Kind, n: u32) {
    let prefix = herald_testkit::unique(&format!("saga-{kind:?}").to_lowercase());
    let t = Topics::new(&prefix);
    let tr = transport(kind, &t.all()).await;
    let world = World::new();
    let services = services(&world, &t, &tr.publisher, Services::ALL).start(tr.subscriber.clone());
    let engine = SagaEngine::with_config(
        order_saga(&format!("{prefix}-saga"), &t, Timeouts::default()),
        MemorySagaStore::new(),
        tr.publisher.clone(),
        SagaConfig::default().concurrency(16),
    );
    let running = engine.start(tr.subscriber.clone());
    let started = std::time::Instant::now();
    place_orders(&tr.publisher, &t, 1..=n).await;
    let w = world.clone();
    wait(180, "every order's outcome", || {
        let w = w.clone();
        async move { (w.outcomes().len() == n as usize).then_some(()) }
    })
    .await;
    let elapsed = started.elapsed();
    check_outcomes(&world, &engine, n).await;
    let cancelled = (1..=n).filter(|&i| payment_fails(i)).count();
    assert_eq!(cancelled, n as usize / 10);
    println!(
        "{kind:?}: {n} orders ({cancelled} compensated) in {:.2}s",
        elapsed.as_secs_f64()
    );
    running.shutdown().await.unwrap();
    services.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saga_200_orders_memory() {
    run(Kind::Memory, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saga_200_orders_kafka() {
    run(Kind::Kafka, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saga_200_orders_nats() {
    run(Kind::Nats, 200).await;
}
