//! Upcasting: v1 events on a topic are handled by v2 handlers — a plain route, an event-bus
//! module and a projection — while an unknown type goes to the dead-letter queue.

mod patterns_support;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use herald_core::{
    Codec, Event, Inbound, JsonCodec, Message, Router, SubscribeSpec,
    middleware::{DeadLetterLayer, Stack},
};
use herald_patterns::{
    bus::EventBus,
    cqrs::{MemoryReadModelStore, Projection, Projector},
    upcast::{Upcaster, Upcasters, upcasted},
};
use patterns_support::*;
use serde::{Deserialize, Serialize};

/// v1: a total in euros (a float) and one name field.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct OrderPlacedV1 {
    id: String,
    customer: String,
    total_euros: f64,
}
impl Event for OrderPlacedV1 {
    const TYPE: &'static str = "test.shop.OrderPlaced";
    const VERSION: u32 = 1;
}

/// v2: integer cents, the name split — nothing Avro resolution could derive.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct OrderPlacedV2 {
    id: String,
    first_name: String,
    last_name: String,
    total_cents: i64,
}
impl Event for OrderPlacedV2 {
    const TYPE: &'static str = "test.shop.OrderPlaced";
    const VERSION: u32 = 2;
}

fn chain() -> Upcaster<OrderPlacedV2> {
    Upcaster::<OrderPlacedV2>::new(JsonCodec)
        .step(|v1: OrderPlacedV1| {
            let (first, last) = v1.customer.split_once(' ').unwrap_or((&v1.customer, ""));
            OrderPlacedV2 {
                id: v1.id,
                first_name: first.to_owned(),
                last_name: last.to_owned(),
                total_cents: (v1.total_euros * 100.0).round() as i64,
            }
        })
        .build()
}

/// 20 orders, odd ones written by an old v1 producer; the v2 view of each.
async fn mixed() -> (Vec<Message>, BTreeMap<String, OrderPlacedV2>) {
    let mut msgs = Vec::new();
    let mut want = BTreeMap::new();
    for i in 0..20 {
        let id = format!("o-{i:02}");
        let v2 = OrderPlacedV2 {
            id: id.clone(),
            first_name: "Ada".into(),
            last_name: format!("L{i}"),
            total_cents: 1_000 + i * 25,
        };
        let m = if i % 2 == 1 {
            let v1 = OrderPlacedV1 {
                id: id.clone(),
                customer: format!("Ada L{i}"),
                total_euros: (1_000 + i * 25) as f64 / 100.0,
            };
            JsonCodec.to_message(&v1).await.unwrap()
        } else {
            JsonCodec.to_message(&v2).await.unwrap()
        };
        assert_eq!(
            m.ce_type().unwrap(),
            if i % 2 == 1 {
                "test.shop.OrderPlaced.v1"
            } else {
                "test.shop.OrderPlaced.v2"
            }
        );
        msgs.push(m.with_key(id.clone()));
        want.insert(id, v2);
    }
    (msgs, want)
}

async fn run(kind: Kind) {
    let prefix = herald_testkit::unique(&format!("upcast-{kind:?}").to_lowercase());
    let bus_prefix = format!("{prefix}-");
    let topic = format!("{bus_prefix}{}", OrderPlacedV2::TYPE);
    let tr = transport(kind, std::slice::from_ref(&topic)).await;
    // Published before the consumers join: keep it on the memory transport too.
    retain_all(&tr, std::slice::from_ref(&topic)).await;
    let (mut msgs, want) = mixed().await;
    // A type nobody upcasts: the plain route dead-letters it, the others ignore it.
    msgs.push(
        Message::new(r#"{"x":1}"#)
            .with_type("test.shop.Unrelated.v1")
            .with_key("zz"),
    );
    tr.publisher.publish(&topic, msgs).await.unwrap();

    // 1. A plain route with a v2 handler, behind the dead-letter layer.
    let seen: Arc<Mutex<BTreeMap<String, OrderPlacedV2>>> = Arc::default();
    let s = seen.clone();
    let handler = upcasted(chain(), move |ev: OrderPlacedV2, _: Inbound| {
        let s = s.clone();
        async move {
            s.lock().unwrap().insert(ev.id.clone(), ev);
            Ok(())
        }
    });
    let stack = Stack::new().dead_letter(DeadLetterLayer::new(tr.publisher.clone()));
    let plain = Router::new()
        .route(
            "v2-handler",
            &topic,
            &format!("{prefix}-plain"),
            stack.service(handler),
        )
        .start(tr.subscriber.clone());

    // 2. An event-bus module and 3. a projection, both consulting the same upcasters.
    let upcasters = Upcasters::new().with(chain());
    let bus = EventBus::builder(tr.publisher.clone())
        .name(format!("{prefix}-bus"))
        .topic_prefix(&bus_prefix)
        .upcasters(upcasters.clone())
        .build();
    assert_eq!(bus.topic_for::<OrderPlacedV2>(), topic);
    let bus_seen: Arc<Mutex<BTreeMap<String, OrderPlacedV2>>> = Arc::default();
    let bs = bus_seen.clone();
    bus.module("billing", move |m| {
        let bs = bs.clone();
        m.on(move |ev: OrderPlacedV2, _| {
            let bs = bs.clone();
            async move {
                bs.lock().unwrap().insert(ev.id.clone(), ev);
                Ok(())
            }
        });
    });
    let bus_running = bus.start(tr.subscriber.clone());
    let projector = Projector::new(
        Projection::<i64>::new(format!("{prefix}-revenue"))
            .upcasters(upcasters)
            .on(
                &topic,
                |e: &OrderPlacedV2| e.last_name.clone(),
                |doc, e: &OrderPlacedV2, _| {
                    *doc.get_or_insert(0) += e.total_cents;
                },
            ),
        MemoryReadModelStore::new(),
    );
    let proj_running = projector.start(tr.subscriber.clone());

    let (s, bs, p) = (seen.clone(), bus_seen.clone(), projector.clone());
    wait(60, "all three consumers to see 20 orders", || {
        let (s, bs, p) = (s.clone(), bs.clone(), p.clone());
        async move {
            let n = p.all().await.ok()?.len();
            (s.lock().unwrap().len() == 20 && bs.lock().unwrap().len() == 20 && n == 20)
                .then_some(())
        }
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), want);
    assert_eq!(*bus_seen.lock().unwrap(), want);
    let revenue = projector.all().await.unwrap();
    for v in want.values() {
        assert_eq!(revenue[&v.last_name], v.total_cents);
    }

    // The unrelated type went to the plain route's dead-letter topic.
    let mut dlq = tr
        .subscriber
        .subscribe(SubscribeSpec::new(
            herald_core::dlq_topic(&topic),
            format!("{prefix}-dlq"),
        ))
        .await
        .unwrap();
    let d = tokio::time::timeout(std::time::Duration::from_secs(60), dlq.next())
        .await
        .expect("a dead letter")
        .unwrap()
        .unwrap();
    assert_eq!(d.message.ce_type(), Some("test.shop.Unrelated.v1"));
    assert!(
        d.message
            .header("herald-error")
            .unwrap()
            .contains("no upcaster")
    );
    d.ack().await.unwrap();
    dlq.close().await.unwrap();

    plain.shutdown().await.unwrap();
    bus_running.shutdown().await.unwrap();
    proj_running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v1_events_reach_v2_handlers_memory() {
    run(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v1_events_reach_v2_handlers_kafka() {
    run(Kind::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v1_events_reach_v2_handlers_nats() {
    run(Kind::Nats).await;
}
