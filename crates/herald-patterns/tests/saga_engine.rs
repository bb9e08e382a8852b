//! Saga engine behaviour on the memory transport: concurrent engines, abandoned outboxes,
//! unconfirmed compensations.

mod patterns_support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use herald_core::{
    Codec, Inbound, JsonCodec, Message, Origin, PublishError, PublishErrorKind, Publisher,
    RouteInfo, SubscribeSpec, Subscriber, memory::MemoryBroker,
};
use herald_patterns::saga::{MemorySagaStore, Saga, SagaConfig, SagaEngine, SagaStatus, SagaStore};
use patterns_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_on_every_event_cannot_advance_a_saga_twice() {
    let prefix = herald_testkit::unique("twice");
    let t = Topics::new(&prefix);
    let tr = transport(Kind::Memory, &t.all()).await;
    let world = World::new();
    let svc = services(&world, &t, &tr.publisher, Services::ALL).start(tr.subscriber.clone());
    let store = Arc::new(MemorySagaStore::new());
    let name = format!("{prefix}-saga");
    // Two engines in *different* groups: both receive every event and race to apply it.
    let engines: Vec<_> = ["a", "b"]
        .iter()
        .map(|g| {
            SagaEngine::with_config(
                order_saga(&name, &t, Timeouts::default()),
                store.clone(),
                tr.publisher.clone(),
                SagaConfig::default()
                    .group(format!("{prefix}-{g}"))
                    .concurrency(4),
            )
        })
        .collect();
    let running: Vec<_> = engines
        .iter()
        .map(|e| e.start(tr.subscriber.clone()))
        .collect();
    place_orders(&tr.publisher, &t, 1..=100).await;
    let w = world.clone();
    wait(60, "every outcome", || {
        let w = w.clone();
        async move { (w.outcomes().len() == 100).then_some(()) }
    })
    .await;
    // One distinct command per step and order: no transition was applied twice.
    check_outcomes(&world, &engines[0], 100).await;
    let (a, b) = (engines[0].stats(), engines[1].stats());
    println!("engine a {a:?}\nengine b {b:?}");
    // Every transition was saved by exactly one of them; the other saw a conflict or found
    // the event already applied.
    assert_eq!(
        a.transitions + b.transitions,
        store_transitions(&store, &name).await
    );
    assert!(a.ignored + b.ignored + a.conflicts + b.conflicts > 0);
    for r in running {
        r.shutdown().await.unwrap();
    }
    svc.shutdown().await.unwrap();
}

/// Saved transitions according to the stored histories (start + one per step change).
async fn store_transitions(store: &MemorySagaStore, saga: &str) -> u64 {
    let mut n = 0;
    for r in store.list(saga, None, 10_000).await.unwrap() {
        let mut versions: Vec<u64> = r.state.history.iter().map(|h| h.version).collect();
        versions.dedup();
        n += versions.len() as u64;
    }
    n
}

/// A publisher that fails while `down` is set.
#[derive(Clone)]
struct Flaky {
    inner: MemoryBroker,
    down: Arc<AtomicBool>,
}

impl Publisher for Flaky {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(PublishError::new(PublishErrorKind::Connection, "down"))
            });
        }
        self.inner.publish(topic, messages)
    }
}

#[tokio::test]
async fn a_saved_but_unpublished_outbox_is_republished_by_the_ticker() {
    let broker = MemoryBroker::new();
    let t = Topics::new("outbox");
    let down = Arc::new(AtomicBool::new(true));
    let store = MemorySagaStore::new();
    let engine = SagaEngine::with_config(
        order_saga("outbox-saga", &t, Timeouts::default()),
        store.clone(),
        Flaky {
            inner: broker.clone(),
            down: down.clone(),
        },
        SagaConfig::default().outbox_grace(Duration::ZERO),
    );
    let start = JsonCodec
        .to_message(&order(1))
        .await
        .unwrap()
        .with_key("o-0001");
    let route = Arc::new(RouteInfo {
        handler: "saga".into(),
        topic: t.orders.clone(),
        group: "g".into(),
    });
    // The state is saved, publishing the command fails: the handler reports a transient
    // error, as a crash between save and publish would leave it.
    let err = engine
        .handle(Inbound::new(
            start.clone(),
            Origin::new(t.orders.as_str()),
            1,
            route.clone(),
        ))
        .await
        .unwrap_err();
    assert!(err.is_retriable());
    let rec = store.load("outbox-saga", "o-0001").await.unwrap().unwrap();
    assert_eq!(rec.state.outbox.len(), 1);
    assert!(rec.wake_at().is_some());

    down.store(false, Ordering::SeqCst);
    assert_eq!(engine.tick().await.unwrap(), 1);
    let rec = store.load("outbox-saga", "o-0001").await.unwrap().unwrap();
    assert!(rec.state.outbox.is_empty());
    assert_eq!(rec.state.outbox_due_ms, None);
    assert_eq!(
        rec.wake_at(),
        rec.state.deadline_ms,
        "only the step deadline is left"
    );
    let mut sub = broker
        .subscribe(SubscribeSpec::new(&t.inventory_cmd, "check"))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let cmd: ReserveInventory = JsonCodec.decode(&d.message.payload).await.unwrap();
    assert_eq!(cmd.order_id, "o-0001");
    assert_eq!(d.message.correlation_id(), Some("o-0001"));
    assert_eq!(d.message.causation_id(), Some(start.id.as_str()));
    d.ack().await.unwrap();

    // The redelivered start event changes nothing: the instance exists.
    engine
        .handle(Inbound::new(
            start,
            Origin::new(t.orders.as_str()),
            2,
            route,
        ))
        .await
        .unwrap();
    assert_eq!(
        store
            .load("outbox-saga", "o-0001")
            .await
            .unwrap()
            .unwrap()
            .version,
        rec.version
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_compensation_is_reissued_then_the_saga_fails() {
    let broker = MemoryBroker::new();
    let prefix = herald_testkit::unique("unconfirmed");
    let t = Topics::new(&prefix);
    // Payments decline order 7; inventory reserves but never confirms a release.
    let world = World::new();
    let p: Arc<dyn Publisher> = Arc::new(broker.clone());
    let svc = services(&world, &t, &p, Services::ALL).start(broker.clone());
    let saga = Saga::<OrderData>::new(format!("{prefix}-saga"))
        .start_on(&t.orders, |e: &OrderPlaced| {
            Some((
                e.order_id.clone(),
                OrderData {
                    order_id: e.order_id.clone(),
                    number: e.number,
                    sku: e.sku.clone(),
                    qty: e.qty,
                    ..Default::default()
                },
            ))
        })
        .step("reserve", |s| {
            s.command(&t.inventory_cmd, |d: &OrderData| ReserveInventory {
                order_id: d.order_id.clone(),
                sku: d.sku.clone(),
                qty: d.qty,
            })
            .on_success(&t.inventory_evt, |_, _: InventoryReserved| {})
            .compensate(&t.inventory_cmd, |d| ReleaseInventory {
                order_id: d.order_id.clone(),
            })
            // Confirmed by an event nobody sends.
            .confirmed_by::<ShipmentScheduled>(&t.shipping_evt)
            .compensation_timeout(Duration::from_millis(200))
            .compensation_attempts(3)
        })
        .step("pay", |s| {
            s.command(&t.payments_cmd, |d: &OrderData| ProcessPayment {
                order_id: d.order_id.clone(),
                number: d.number,
                amount_cents: 1,
            })
            .on_success(&t.payments_evt, |_, _: PaymentSucceeded| {})
            .on_failure(&t.payments_evt, |_, e: PaymentFailed| e.reason)
        })
        .on_failed(&t.order_cmd, |d, f| CancelOrder {
            order_id: d.order_id.clone(),
            reason: format!("stuck: {}", f.reason),
        });
    let engine = SagaEngine::with_config(
        saga,
        MemorySagaStore::new(),
        broker.clone(),
        SagaConfig::default().tick(Duration::from_millis(50)),
    );
    let running = engine.start(broker.clone());
    let o = order(7);
    broker
        .publish(
            &t.orders,
            vec![
                JsonCodec
                    .to_message(&o)
                    .await
                    .unwrap()
                    .with_key(o.order_id.clone()),
            ],
        )
        .await
        .unwrap();
    let e = engine.clone();
    let v = wait(30, "the saga to fail", || {
        let e = e.clone();
        async move {
            e.get("o-0007")
                .await
                .ok()
                .flatten()
                .filter(|v| v.status == SagaStatus::Failed)
        }
    })
    .await;
    assert_eq!(v.failure.unwrap().step, "pay");
    let w = world.clone();
    wait(10, "the failure to reach orders", || {
        let w = w.clone();
        async move { (w.outcomes().get("o-0007") == Some(&Outcome::Cancelled)).then_some(()) }
    })
    .await;
    // Issued once, re-issued twice: three distinct release commands.
    assert_eq!(world.distinct("o-0007", "ReleaseInventory"), 3);
    running.shutdown().await.unwrap();
    svc.shutdown().await.unwrap();
}
