//! The event bus: modules react independently; a failing module's events go through the
//! core retry → dead-letter path while the other modules get every event.

mod patterns_support;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use herald_core::{
    Event, HandlerError, SubscribeSpec,
    middleware::{Backoff, DeadLetterLayer, RetryLayer, Stack},
};
use herald_patterns::{
    Middleware,
    bus::{EventBus, EventContext, Module, Subscriptions},
};
use patterns_support::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
struct OrderPlaced {
    order: u32,
}
impl Event for OrderPlaced {
    const TYPE: &'static str = "test.bus.OrderPlaced";
    const VERSION: u32 = 1;
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct StockReserved {
    order: u32,
}
impl Event for StockReserved {
    const TYPE: &'static str = "test.bus.StockReserved";
    const VERSION: u32 = 1;
}

/// Reserves stock for every order and announces it.
#[derive(Default)]
struct Inventory {
    reserved: Mutex<BTreeSet<u32>>,
}

impl Module for Inventory {
    fn name(&self) -> &str {
        "inventory"
    }
    fn subscribe(self: Arc<Self>, on: &mut Subscriptions) {
        on.on(move |ev: OrderPlaced, ctx: EventContext| {
            let me = self.clone();
            async move {
                me.reserved.lock().unwrap().insert(ev.order);
                ctx.publish(&StockReserved { order: ev.order }).await
            }
        });
    }
}

/// What audit saw and the correlation id it saw it under.
type AuditLine = (String, Option<String>);

async fn run(kind: Kind) {
    let prefix = herald_testkit::unique(&format!("bus-{kind:?}").to_lowercase());
    let topic_prefix = format!("{prefix}-");
    let placed = format!("{topic_prefix}{}", OrderPlaced::TYPE);
    let reserved = format!("{topic_prefix}{}", StockReserved::TYPE);
    let tr = transport(kind, &[placed.clone(), reserved.clone()]).await;
    retain_all(&tr, &[placed.clone(), reserved.clone()]).await;

    // Two fast in-process retries, no broker redelivery, then the dead-letter topic.
    let stack = Stack::new()
        .dead_letter(DeadLetterLayer::new(tr.publisher.clone()))
        .retry(RetryLayer::new(Backoff {
            initial: Duration::from_millis(5),
            immediate_attempts: 2,
            delayed_attempts: 0,
            ..Default::default()
        }));
    let bus = EventBus::builder(tr.publisher.clone())
        .name(&prefix)
        .topic_prefix(&topic_prefix)
        .middleware(Middleware::layer(stack))
        .concurrency(4)
        .build();
    let inventory = bus.register(Inventory::default());
    assert!(bus.get::<Inventory>("inventory").is_some());

    // The mailer fails on every order divisible by 10: its failures must not hold up
    // anyone else.
    let mailed: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
    let m = mailed.clone();
    bus.module("mailer", move |s| {
        let m = m.clone();
        s.on(move |ev: OrderPlaced, _| {
            let m = m.clone();
            async move {
                if ev.order.is_multiple_of(10) {
                    return Err(HandlerError::transient("smtp down"));
                }
                m.lock().unwrap().insert(ev.order);
                Ok(())
            }
        });
    });
    // Audit sees both event types, the second caused by the first.
    let audit: Arc<Mutex<Vec<AuditLine>>> = Arc::default();
    let a = audit.clone();
    bus.module("audit", move |s| {
        let a2 = a.clone();
        s.on(move |ev: OrderPlaced, ctx: EventContext| {
            let a = a2.clone();
            async move {
                a.lock().unwrap().push((
                    format!("placed {}", ev.order),
                    ctx.message().correlation_id().map(str::to_owned),
                ));
                Ok(())
            }
        });
        let a3 = a.clone();
        s.on(move |ev: StockReserved, ctx: EventContext| {
            let a = a3.clone();
            async move {
                a.lock().unwrap().push((
                    format!("reserved {}", ev.order),
                    ctx.message().correlation_id().map(str::to_owned),
                ));
                Ok(())
            }
        });
    });
    let running = bus.start(tr.subscriber.clone());
    for order in 1..=30 {
        let m = herald_core::Codec::to_message(&herald_core::JsonCodec, &OrderPlaced { order })
            .await
            .unwrap()
            .with_key(format!("o-{order}"))
            .with_correlation_id(format!("flow-{order}"));
        bus.publish_message::<OrderPlaced>(m).await.unwrap();
    }
    let (inv, mailed2, audit2) = (inventory.clone(), mailed.clone(), audit.clone());
    wait(60, "every module's work", || {
        let (inv, mailed, audit) = (inv.clone(), mailed2.clone(), audit2.clone());
        async move {
            (inv.reserved.lock().unwrap().len() == 30
                && mailed.lock().unwrap().len() == 27
                && audit.lock().unwrap().len() == 60)
                .then_some(())
        }
    })
    .await;
    // Causation: each StockReserved carries its order's correlation id.
    for (what, corr) in audit.lock().unwrap().iter() {
        let n = what.rsplit(' ').next().unwrap();
        assert_eq!(
            corr.as_deref(),
            Some(format!("flow-{n}").as_str()),
            "{what}"
        );
    }

    // The three failing orders are in the dead-letter topic, named after the mailer.
    let mut dlq = tr
        .subscriber
        .subscribe(SubscribeSpec::new(
            herald_core::dlq_topic(&placed),
            format!("{prefix}-dlq"),
        ))
        .await
        .unwrap();
    let mut dead = BTreeSet::new();
    while dead.len() < 3 {
        let d = tokio::time::timeout(Duration::from_secs(60), dlq.next())
            .await
            .expect("3 dead letters")
            .unwrap()
            .unwrap();
        assert_eq!(
            d.message.header("herald-handler"),
            Some(format!("{prefix}.mailer").as_str())
        );
        assert_eq!(
            d.message.header("herald-group"),
            Some(bus.group_of("mailer").as_str())
        );
        let ev: OrderPlaced = serde_json::from_slice(&d.message.payload).unwrap();
        dead.insert(ev.order);
        d.ack().await.unwrap();
    }
    assert_eq!(dead, BTreeSet::from([10, 20, 30]));
    dlq.close().await.unwrap();
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_module_is_dead_lettered_alone_memory() {
    run(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_module_is_dead_lettered_alone_kafka() {
    run(Kind::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_module_is_dead_lettered_alone_nats() {
    run(Kind::Nats).await;
}
