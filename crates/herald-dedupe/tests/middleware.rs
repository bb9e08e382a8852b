//! The dedupe middleware end to end: the router, the in-memory transport and a real
//! store (memory here; Redis and PostgreSQL in `outage.rs` and `crash.rs`).

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use herald_core::{
    HandlerError, Inbound, Message, Publisher, RouteConfig, Router, handler_fn,
    memory::MemoryBroker, middleware::dedupe::DedupeLayer,
};
use herald_dedupe::memory::MemoryDedupe;
use tower::Layer;

type Seen = Arc<Mutex<HashMap<(String, String), usize>>>;

fn recording(
    seen: Seen,
    fail_first: bool,
) -> impl tower::Service<
    Inbound,
    Response = (),
    Error = HandlerError,
    Future = futures::future::BoxFuture<'static, Result<(), HandlerError>>,
> + Clone {
    handler_fn(move |i: Inbound| {
        let seen = seen.clone();
        Box::pin(async move {
            let n = {
                let mut s = seen.lock().unwrap();
                let n = s
                    .entry((i.route.group.clone(), i.message.id.clone()))
                    .or_default();
                *n += 1;
                *n
            };
            if fail_first && n == 1 {
                return Err(HandlerError::transient("first attempt fails")
                    .redeliver_after(Duration::from_millis(20)));
            }
            Ok(())
        }) as futures::future::BoxFuture<'static, _>
    })
}

#[tokio::test]
async fn duplicates_are_acked_once_per_group_and_failures_are_retried() {
    let broker = MemoryBroker::new();
    let store = Arc::new(MemoryDedupe::default());
    let topic = herald_testkit::unique("orders");
    let seen: Seen = Arc::default();
    let failing: Seen = Arc::default();
    let layer = DedupeLayer::new(store.clone()).lease(Duration::from_secs(10));
    let router = Router::new()
        .route_with(
            RouteConfig::new("billing", &topic, "billing").concurrency(4),
            layer.layer(recording(seen.clone(), false)),
        )
        .route_with(
            RouteConfig::new("shipping", &topic, "shipping").concurrency(4),
            layer.layer(recording(failing.clone(), true)),
        );
    let running = router.start(broker.clone());

    // 50 messages, each published three times (a publisher retrying).
    let msgs: Vec<Message> = (0..50)
        .map(|i| Message::new(format!("o{i}")).with_key(format!("k{i}")))
        .collect();
    for _ in 0..3 {
        broker.publish(&topic, msgs.clone()).await.unwrap();
    }
    common::eventually(Duration::from_secs(30), "both groups to drain", || async {
        (broker.lag(&topic, "billing") == 0 && broker.lag(&topic, "shipping") == 0).then_some(())
    })
    .await;
    running.shutdown().await.unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 50);
    assert!(
        seen.values().all(|n| *n == 1),
        "billing ran a duplicate: {seen:?}"
    );
    // Shipping failed each message once: the claim was abandoned, the redelivery (or a
    // duplicate copy) claimed it again and succeeded; then the rest were duplicates.
    let failing = failing.lock().unwrap();
    assert_eq!(failing.len(), 50);
    assert!(failing.values().all(|n| *n == 2), "shipping: {failing:?}");
}
