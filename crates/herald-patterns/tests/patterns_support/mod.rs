//! Shared by the pattern tests: transports, and a small order domain (inventory, payments,
//! shipping, orders) whose services run as separate routes in separate consumer groups.
#![allow(dead_code, missing_docs, unreachable_pub)]

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use herald_core::{
    Codec, Event, HandlerError, Inbound, JsonCodec, Message, Publisher, RouteConfig, Router,
    Subscriber, typed,
};
use herald_patterns::saga::{Saga, SagaEngine, SagaStatus};
use serde::{Deserialize, Serialize};

// ───────────────────────────── transports ─────────────────────────────

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Kafka,
    Nats,
}

#[derive(Clone)]
pub struct Transport {
    pub kind: Kind,
    pub publisher: Arc<dyn Publisher>,
    pub subscriber: Arc<dyn Subscriber>,
    pub memory: Option<herald_core::memory::MemoryBroker>,
}

/// A transport of `kind`, with `topics` (and their `.dlq`) provisioned where the broker
/// needs it.
pub async fn transport(kind: Kind, topics: &[String]) -> Transport {
    match kind {
        Kind::Memory => {
            let b = herald_core::memory::MemoryBroker::new();
            Transport {
                kind,
                publisher: Arc::new(b.clone()),
                subscriber: Arc::new(b.clone()),
                memory: Some(b),
            }
        }
        Kind::Kafka => {
            let brokers = herald_testkit::fixtures::kafka_brokers().await;
            let cfg = herald_kafka::KafkaConfig::new(brokers);
            let admin = herald_kafka::KafkaAdmin::new(&cfg).expect("kafka admin");
            for t in topics {
                admin.ensure_topic(t, 4, 1).await.expect("kafka topic");
            }
            let publisher = herald_kafka::KafkaPublisher::from_config(cfg.clone())
                .linger(Duration::from_millis(2))
                .build()
                .expect("kafka publisher");
            let subscriber = herald_kafka::KafkaSubscriber::from_config(cfg)
                .build()
                .expect("kafka subscriber");
            Transport {
                kind,
                publisher: Arc::new(publisher),
                subscriber: Arc::new(subscriber),
                memory: None,
            }
        }
        Kind::Nats => {
            let url = herald_testkit::fixtures::nats_url().await;
            let b = herald_nats::NatsBroker::connect(herald_nats::NatsConfig::new(&url))
                .await
                .expect("nats connect");
            for t in topics {
                b.ensure_topic(t).await.expect("nats topic");
            }
            Transport {
                kind,
                publisher: Arc::new(b.clone()),
                subscriber: Arc::new(b),
                memory: None,
            }
        }
    }
}

/// The memory transport forgets a message once every existing group acknowledged it, so
/// nothing could be replayed from the earliest offset. A group that joins and never
/// consumes keeps everything — the stand-in for Kafka / JetStream retention.
pub async fn retain_all(tr: &Transport, topics: &[String]) {
    if tr.kind != Kind::Memory {
        return;
    }
    for t in topics {
        let sub = tr
            .subscriber
            .subscribe(herald_core::SubscribeSpec::new(
                t.clone(),
                "retention-anchor",
            ))
            .await
            .unwrap();
        sub.close().await.unwrap();
    }
}

pub async fn wait<T, F, Fut>(secs: u64, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match herald_patterns::wait_for(Duration::from_secs(secs), f).await {
        Some(v) => v,
        None => panic!("timed out after {secs}s waiting for {what}"),
    }
}

// ───────────────────────────── the order domain ─────────────────────────────

macro_rules! event {
    ($name:ident { $($f:ident : $t:ty),* $(,)? }) => {
        #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
        pub struct $name { $(pub $f: $t),* }
        impl Event for $name {
            const TYPE: &'static str = concat!("test.orders.", stringify!($name));
            const VERSION: u32 = 1;
        }
    };
}

event!(OrderPlaced {
    order_id: String,
    number: u32,
    sku: String,
    qty: i64,
    amount_cents: i64
});
event!(ReserveInventory {
    order_id: String,
    sku: String,
    qty: i64
});
event!(InventoryReserved { order_id: String });
event!(InventoryRejected {
    order_id: String,
    reason: String
});
event!(ReleaseInventory { order_id: String });
event!(InventoryReleased { order_id: String });
event!(ProcessPayment {
    order_id: String,
    number: u32,
    amount_cents: i64
});
event!(PaymentSucceeded { order_id: String });
event!(PaymentFailed {
    order_id: String,
    reason: String
});
event!(RefundPayment { order_id: String });
event!(PaymentRefunded { order_id: String });
event!(ScheduleShipment { order_id: String });
event!(ShipmentScheduled { order_id: String });
event!(ConfirmOrder { order_id: String });
event!(CancelOrder {
    order_id: String,
    reason: String
});

/// Payment fails for every order whose number ends in 7: a deterministic 10 %.
pub fn payment_fails(number: u32) -> bool {
    number % 10 == 7
}

pub const SKUS: [&str; 4] = ["apple", "pear", "plum", "fig"];
pub const INITIAL_STOCK: i64 = 100_000;

pub fn order(n: u32) -> OrderPlaced {
    OrderPlaced {
        order_id: format!("o-{n:04}"),
        number: n,
        sku: SKUS[(n as usize) % SKUS.len()].into(),
        qty: i64::from(n % 5 + 1),
        amount_cents: 1_000 + i64::from(n) * 7,
    }
}

#[derive(Clone, Debug)]
pub struct Topics {
    pub orders: String,
    pub order_cmd: String,
    pub inventory_cmd: String,
    pub inventory_evt: String,
    pub payments_cmd: String,
    pub payments_evt: String,
    pub shipping_cmd: String,
    pub shipping_evt: String,
    pub prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        let t = |s: &str| format!("{prefix}-{s}");
        Self {
            orders: t("orders"),
            order_cmd: t("order-cmd"),
            inventory_cmd: t("inventory-cmd"),
            inventory_evt: t("inventory-evt"),
            payments_cmd: t("payments-cmd"),
            payments_evt: t("payments-evt"),
            shipping_cmd: t("shipping-cmd"),
            shipping_evt: t("shipping-evt"),
            prefix: prefix.to_owned(),
        }
    }

    pub fn all(&self) -> Vec<String> {
        vec![
            self.orders.clone(),
            self.order_cmd.clone(),
            self.inventory_cmd.clone(),
            self.inventory_evt.clone(),
            self.payments_cmd.clone(),
            self.payments_evt.clone(),
            self.shipping_cmd.clone(),
            self.shipping_evt.clone(),
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Confirmed,
    Cancelled,
}

/// What the services did, for assertions.
#[derive(Default)]
pub struct World {
    pub stock: Mutex<HashMap<String, i64>>,
    pub reservations: Mutex<HashMap<String, (String, i64)>>,
    /// (order, command type) → distinct command message ids handled.
    pub commands: Mutex<BTreeMap<(String, &'static str), HashSet<String>>>,
    /// Service log in handling order: (order, command type).
    pub log: Mutex<Vec<(String, &'static str)>>,
    pub outcomes: Mutex<HashMap<String, Outcome>>,
}

impl World {
    pub fn new() -> Arc<Self> {
        let w = Self::default();
        {
            let mut s = w.stock.lock().unwrap();
            for sku in SKUS {
                s.insert(sku.into(), INITIAL_STOCK);
            }
        }
        Arc::new(w)
    }

    fn record(&self, order: &str, kind: &'static str, msg: &Message) {
        self.commands
            .lock()
            .unwrap()
            .entry((order.to_owned(), kind))
            .or_default()
            .insert(msg.id.clone());
        self.log.lock().unwrap().push((order.to_owned(), kind));
    }

    /// Distinct command ids handled for `(order, kind)`.
    pub fn distinct(&self, order: &str, kind: &'static str) -> usize {
        self.commands
            .lock()
            .unwrap()
            .get(&(order.to_owned(), kind))
            .map_or(0, HashSet::len)
    }

    pub fn outcomes(&self) -> HashMap<String, Outcome> {
        self.outcomes.lock().unwrap().clone()
    }
}

async fn reply<E: Event>(
    publisher: &Arc<dyn Publisher>,
    topic: &str,
    cause: &Message,
    ev: &E,
) -> Result<(), HandlerError> {
    let mut m = JsonCodec.to_message(ev).await?.caused_by(cause);
    m.key = cause.key.clone();
    publisher.publish(topic, vec![m]).await?;
    Ok(())
}

/// Which services to run.
#[derive(Clone, Copy, Debug)]
pub struct Services {
    pub inventory: bool,
    pub payments: bool,
    pub shipping: bool,
    pub orders: bool,
}

impl Services {
    pub const ALL: Self = Self {
        inventory: true,
        payments: true,
        shipping: true,
        orders: true,
    };
}

/// The participants, each a route in its own consumer group, idempotent per order.
pub fn services(
    world: &Arc<World>,
    t: &Topics,
    publisher: &Arc<dyn Publisher>,
    which: Services,
) -> Router {
    let g = |s: &str| format!("{}-{s}", t.prefix);
    let mut r = Router::new();
    if which.inventory {
        let (w, p, evt) = (world.clone(), publisher.clone(), t.inventory_evt.clone());
        let reserve = typed(JsonCodec, move |c: ReserveInventory, i: Inbound| {
            let (w, p, evt) = (w.clone(), p.clone(), evt.clone());
            async move {
                w.record(&c.order_id, "ReserveInventory", &i.message);
                {
                    let mut res = w.reservations.lock().unwrap();
                    if !res.contains_key(&c.order_id) {
                        *w.stock.lock().unwrap().entry(c.sku.clone()).or_default() -= c.qty;
                        res.insert(c.order_id.clone(), (c.sku.clone(), c.qty));
                    }
                }
                reply(
                    &p,
                    &evt,
                    &i.message,
                    &InventoryReserved {
                        order_id: c.order_id,
                    },
                )
                .await
            }
        });
        let (w, p, evt) = (world.clone(), publisher.clone(), t.inventory_evt.clone());
        let release = typed(JsonCodec, move |c: ReleaseInventory, i: Inbound| {
            let (w, p, evt) = (w.clone(), p.clone(), evt.clone());
            async move {
                w.record(&c.order_id, "ReleaseInventory", &i.message);
                if let Some((sku, qty)) = w.reservations.lock().unwrap().remove(&c.order_id) {
                    *w.stock.lock().unwrap().entry(sku).or_default() += qty;
                }
                reply(
                    &p,
                    &evt,
                    &i.message,
                    &InventoryReleased {
                        order_id: c.order_id,
                    },
                )
                .await
            }
        });
        r = r.route_with(
            RouteConfig::new("inventory", &t.inventory_cmd, g("inventory")).concurrency(8),
            by_type(vec![
                (ReserveInventory::ce_type(), boxed(reserve)),
                (ReleaseInventory::ce_type(), boxed(release)),
            ]),
        );
    }
    if which.payments {
        let (w, p, evt) = (world.clone(), publisher.clone(), t.payments_evt.clone());
        let pay = typed(JsonCodec, move |c: ProcessPayment, i: Inbound| {
            let (w, p, evt) = (w.clone(), p.clone(), evt.clone());
            async move {
                w.record(&c.order_id, "ProcessPayment", &i.message);
                if payment_fails(c.number) {
                    let ev = PaymentFailed {
                        order_id: c.order_id,
                        reason: "card declined".into(),
                    };
                    reply(&p, &evt, &i.message, &ev).await
                } else {
                    reply(
                        &p,
                        &evt,
                        &i.message,
                        &PaymentSucceeded {
                            order_id: c.order_id,
                        },
                    )
                    .await
                }
            }
        });
        let (w, p, evt) = (world.clone(), publisher.clone(), t.payments_evt.clone());
        let refund = typed(JsonCodec, move |c: RefundPayment, i: Inbound| {
            let (w, p, evt) = (w.clone(), p.clone(), evt.clone());
            async move {
                w.record(&c.order_id, "RefundPayment", &i.message);
                reply(
                    &p,
                    &evt,
                    &i.message,
                    &PaymentRefunded {
                        order_id: c.order_id,
                    },
                )
                .await
            }
        });
        r = r.route_with(
            RouteConfig::new("payments", &t.payments_cmd, g("payments")).concurrency(8),
            by_type(vec![
                (ProcessPayment::ce_type(), boxed(pay)),
                (RefundPayment::ce_type(), boxed(refund)),
            ]),
        );
    }
    if which.shipping {
        let (w, p, evt) = (world.clone(), publisher.clone(), t.shipping_evt.clone());
        let ship = typed(JsonCodec, move |c: ScheduleShipment, i: Inbound| {
            let (w, p, evt) = (w.clone(), p.clone(), evt.clone());
            async move {
                w.record(&c.order_id, "ScheduleShipment", &i.message);
                reply(
                    &p,
                    &evt,
                    &i.message,
                    &ShipmentScheduled {
                        order_id: c.order_id,
                    },
                )
                .await
            }
        });
        r = r.route_with(
            RouteConfig::new("shipping", &t.shipping_cmd, g("shipping")).concurrency(8),
            ship,
        );
    }
    if which.orders {
        let w = world.clone();
        let confirm = typed(JsonCodec, move |c: ConfirmOrder, i: Inbound| {
            let w = w.clone();
            async move {
                w.record(&c.order_id, "ConfirmOrder", &i.message);
                w.outcomes
                    .lock()
                    .unwrap()
                    .entry(c.order_id)
                    .or_insert(Outcome::Confirmed);
                Ok(())
            }
        });
        let w = world.clone();
        let cancel = typed(JsonCodec, move |c: CancelOrder, i: Inbound| {
            let w = w.clone();
            async move {
                w.record(&c.order_id, "CancelOrder", &i.message);
                w.outcomes
                    .lock()
                    .unwrap()
                    .entry(c.order_id)
                    .or_insert(Outcome::Cancelled);
                Ok(())
            }
        });
        r = r.route_with(
            RouteConfig::new("orders", &t.order_cmd, g("orders")).concurrency(8),
            by_type(vec![
                (ConfirmOrder::ce_type(), boxed(confirm)),
                (CancelOrder::ce_type(), boxed(cancel)),
            ]),
        );
    }
    r
}

type Boxed = herald_core::handler::BoxHandler;

fn boxed<S>(s: S) -> Boxed
where
    S: tower::Service<Inbound, Response = (), Error = HandlerError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    Boxed::new(s)
}

/// Dispatches by `ce-type`; other types are acknowledged.
fn by_type(
    handlers: Vec<(String, Boxed)>,
) -> impl tower::Service<
    Inbound,
    Response = (),
    Error = HandlerError,
    Future = futures::future::BoxFuture<'static, Result<(), HandlerError>>,
> + Clone
+ Send
+ Sync
+ 'static {
    use tower::ServiceExt;
    let handlers = Arc::new(handlers);
    herald_core::handler_fn(move |i: Inbound| {
        let handlers = handlers.clone();
        Box::pin(async move {
            let t = i.message.ce_type().unwrap_or_default().to_owned();
            match handlers.iter().find(|(ty, _)| *ty == t) {
                Some((_, h)) => h.clone().oneshot(i).await,
                None => Ok(()),
            }
        }) as futures::future::BoxFuture<'static, Result<(), HandlerError>>
    })
}

/// The data the order saga keeps.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct OrderData {
    pub order_id: String,
    pub number: u32,
    pub sku: String,
    pub qty: i64,
    pub amount_cents: i64,
    pub reserved: bool,
    pub paid: bool,
    pub shipped: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub step: Duration,
    pub ship: Duration,
    pub compensation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            step: Duration::from_secs(120),
            ship: Duration::from_secs(120),
            compensation: Duration::from_secs(120),
        }
    }
}

/// The orchestrated order saga: reserve → pay → ship; compensations confirmed.
pub fn order_saga(name: &str, t: &Topics, to: Timeouts) -> Saga<OrderData> {
    let (inv_cmd, inv_evt) = (t.inventory_cmd.clone(), t.inventory_evt.clone());
    let (pay_cmd, pay_evt) = (t.payments_cmd.clone(), t.payments_evt.clone());
    let (ship_cmd, ship_evt) = (t.shipping_cmd.clone(), t.shipping_evt.clone());
    Saga::<OrderData>::new(name)
        .start_on(&t.orders, |e: &OrderPlaced| {
            Some((
                e.order_id.clone(),
                OrderData {
                    order_id: e.order_id.clone(),
                    number: e.number,
                    sku: e.sku.clone(),
                    qty: e.qty,
                    amount_cents: e.amount_cents,
                    ..Default::default()
                },
            ))
        })
        .step("reserve", |s| {
            s.command(&inv_cmd, |d: &OrderData| ReserveInventory {
                order_id: d.order_id.clone(),
                sku: d.sku.clone(),
                qty: d.qty,
            })
            .on_success(&inv_evt, |d, _: InventoryReserved| d.reserved = true)
            .on_failure(&inv_evt, |_, e: InventoryRejected| e.reason)
            .timeout(to.step)
            .compensate(&inv_cmd, |d| ReleaseInventory {
                order_id: d.order_id.clone(),
            })
            .confirmed_by::<InventoryReleased>(&inv_evt)
            .compensation_timeout(to.compensation)
        })
        .step("pay", |s| {
            s.command(&pay_cmd, |d: &OrderData| ProcessPayment {
                order_id: d.order_id.clone(),
                number: d.number,
                amount_cents: d.amount_cents,
            })
            .on_success(&pay_evt, |d, _: PaymentSucceeded| d.paid = true)
            .on_failure(&pay_evt, |_, e: PaymentFailed| e.reason)
            .timeout(to.step)
            .compensate(&pay_cmd, |d| RefundPayment {
                order_id: d.order_id.clone(),
            })
            .confirmed_by::<PaymentRefunded>(&pay_evt)
            .compensation_timeout(to.compensation)
        })
        .step("ship", |s| {
            s.command(&ship_cmd, |d: &OrderData| ScheduleShipment {
                order_id: d.order_id.clone(),
            })
            .on_success(&ship_evt, |d, _: ShipmentScheduled| d.shipped = true)
            .timeout(to.ship)
        })
        .on_completed(&t.order_cmd, |d| ConfirmOrder {
            order_id: d.order_id.clone(),
        })
        .on_compensated(&t.order_cmd, |d, f| CancelOrder {
            order_id: d.order_id.clone(),
            reason: f.reason.clone(),
        })
}

pub async fn place_orders(
    publisher: &Arc<dyn Publisher>,
    t: &Topics,
    numbers: impl IntoIterator<Item = u32>,
) {
    let mut batch = Vec::new();
    for n in numbers {
        let o = order(n);
        let m = JsonCodec
            .to_message(&o)
            .await
            .unwrap()
            .with_key(o.order_id.clone());
        batch.push(m);
        if batch.len() == 50 {
            publisher
                .publish(&t.orders, std::mem::take(&mut batch))
                .await
                .unwrap();
        }
    }
    if !batch.is_empty() {
        publisher.publish(&t.orders, batch).await.unwrap();
    }
}

/// Checks every order of `1..=n` reached its expected end, exactly once, with its stock
/// back when cancelled.
pub async fn check_outcomes(world: &World, engine: &SagaEngine<OrderData>, n: u32) {
    let outcomes = world.outcomes();
    assert_eq!(outcomes.len(), n as usize, "every order has an outcome");
    let mut expected_stock: HashMap<String, i64> = SKUS
        .iter()
        .map(|s| ((*s).to_owned(), INITIAL_STOCK))
        .collect();
    let views: HashMap<String, _> = engine
        .instances()
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.id.clone(), v))
        .collect();
    assert_eq!(views.len(), n as usize);
    for num in 1..=n {
        let o = order(num);
        let id = &o.order_id;
        let view = &views[id];
        if payment_fails(num) {
            assert_eq!(outcomes[id], Outcome::Cancelled, "{id}");
            assert_eq!(
                view.status,
                SagaStatus::Compensated,
                "{id}: {:?}",
                view.history
            );
            assert!(
                !world.reservations.lock().unwrap().contains_key(id),
                "{id} stock released"
            );
            assert_eq!(world.distinct(id, "ReleaseInventory"), 1, "{id}");
            assert_eq!(
                world.distinct(id, "RefundPayment"),
                0,
                "{id}: a failed payment is not refunded"
            );
            assert_eq!(world.distinct(id, "ScheduleShipment"), 0, "{id}");
            assert_eq!(world.distinct(id, "CancelOrder"), 1, "{id}");
            assert_eq!(world.distinct(id, "ConfirmOrder"), 0, "{id}");
        } else {
            assert_eq!(outcomes[id], Outcome::Confirmed, "{id}");
            assert_eq!(
                view.status,
                SagaStatus::Completed,
                "{id}: {:?}",
                view.history
            );
            assert!(view.data.shipped && view.data.paid && view.data.reserved);
            *expected_stock.get_mut(&o.sku).unwrap() -= o.qty;
            assert_eq!(world.distinct(id, "ReleaseInventory"), 0, "{id}");
            assert_eq!(world.distinct(id, "ScheduleShipment"), 1, "{id}");
            assert_eq!(world.distinct(id, "ConfirmOrder"), 1, "{id}");
            assert_eq!(world.distinct(id, "CancelOrder"), 0, "{id}");
        }
        assert_eq!(world.distinct(id, "ReserveInventory"), 1, "{id}");
        assert_eq!(world.distinct(id, "ProcessPayment"), 1, "{id}");
    }
    assert_eq!(*world.stock.lock().unwrap(), expected_stock, "stock");
}
