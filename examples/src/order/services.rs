//! The four services. Each is its own set of routes in its own consumer group, with its
//! own state, and has two faces:
//!
//! | service | choreography: reacts to | orchestration: executes |
//! |---|---|---|
//! | orders | `PlaceOrder` (command side), `ShipmentScheduled`, `InventoryReleased`, `InventoryRejected` | `PlaceOrder`, `ConfirmOrder`, `CancelOrder` |
//! | inventory | `OrderPlaced`, `PaymentFailed` | `ReserveInventory`, `ReleaseInventory` |
//! | payments | `InventoryReserved` | `ProcessPayment`, `RefundPayment` |
//! | shipping | `PaymentSucceeded` | `ScheduleShipment` |
//!
//! Every service is idempotent per order (a repeated request gets the same answer), every
//! route sits behind the core stack (retry → dead-letter), and the payments routes also
//! behind the dedupe middleware with the memory dedupe store.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use herald::{
    HandlerError, Inbound, JsonCodec, Message, PublishError, Publisher, RouteConfig, Router,
    handler::BoxHandler,
    middleware::{Backoff, DeadLetterLayer, Next, RetryLayer, Stack, dedupe::DedupeLayer, from_fn},
    patterns::{
        cqrs::{CommandSide, Decision, Rejection},
        request::responder,
    },
    typed,
};
use tower::Layer;

use super::{CATALOG, Mode, Topics, boxed, by_type, events::*, payment_declined, publish_caused};

/// Counters the summary reports.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages any route sent to a dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Deliveries that reached the payments routes (before dedupe).
    pub payment_deliveries: AtomicU64,
    /// Times the payments handler actually ran (after dedupe).
    pub payment_runs: AtomicU64,
    /// Duplicate deliveries injected on purpose (a producer retrying with the same id).
    pub duplicates_injected: AtomicU64,
}

impl Stats {
    fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }

    /// Dead-lettered so far.
    pub fn dead_lettered(&self) -> u64 {
        Self::get(&self.dead_lettered)
    }

    /// Deliveries the dedupe middleware acknowledged without running the handler.
    pub fn duplicates_suppressed(&self) -> u64 {
        Self::get(&self.payment_deliveries).saturating_sub(Self::get(&self.payment_runs))
    }

    /// Duplicates injected.
    pub fn duplicates_injected(&self) -> u64 {
        Self::get(&self.duplicates_injected)
    }
}

/// The standard stack of every route: dead-letter outermost (counted), three quick
/// in-process attempts for transient failures.
pub fn stack(publisher: &Arc<dyn Publisher>, stats: &Arc<Stats>) -> Stack {
    let s = stats.clone();
    Stack::new()
        .dead_letter(DeadLetterLayer::new(publisher.clone()).policy(
            move |i: &Inbound, e: &HandlerError| {
                s.dead_lettered.fetch_add(1, Ordering::Relaxed);
                tracing::info!(route = %i.route.handler, error = %e, "dead-lettered");
                Some(herald::dlq_topic(&i.route.topic))
            },
        ))
        .retry(RetryLayer::new(Backoff {
            initial: Duration::from_millis(20),
            immediate_attempts: 3,
            delayed_attempts: 0,
            ..Default::default()
        }))
}

fn route(name: &str, topic: &str, group: &str) -> RouteConfig {
    RouteConfig::new(name, topic, group).concurrency(8)
}

/// A publisher that publishes some messages twice with the same id — a producer retrying
/// after a lost acknowledgement — for every order whose number is a multiple of 5.
#[derive(Clone)]
pub struct Duplicating {
    inner: Arc<dyn Publisher>,
    types: Vec<String>,
    stats: Arc<Stats>,
}

impl Duplicating {
    /// Duplicates messages of CloudEvents types `types`.
    pub fn new(inner: Arc<dyn Publisher>, types: Vec<String>, stats: Arc<Stats>) -> Self {
        Self {
            inner,
            types,
            stats,
        }
    }
}

fn order_number(m: &Message) -> Option<u32> {
    m.key_str()?.strip_prefix("o-")?.parse().ok()
}

impl Publisher for Duplicating {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let dup = m
                .ce_type()
                .is_some_and(|t| self.types.iter().any(|x| x == t))
                && order_number(&m).is_some_and(|n| n % 5 == 0);
            if dup {
                self.stats
                    .duplicates_injected
                    .fetch_add(1, Ordering::Relaxed);
                out.push(m.clone());
            }
            out.push(m);
        }
        self.inner.publish(topic, out)
    }
}

// ───────────────────────────── inventory ─────────────────────────────

#[derive(Debug, Default)]
struct InventoryState {
    stock: HashMap<String, i64>,
    reservations: HashMap<String, (String, i64)>,
}

/// Stock and reservations.
#[derive(Debug)]
pub struct Inventory {
    state: Mutex<InventoryState>,
}

impl Default for Inventory {
    fn default() -> Self {
        Self {
            state: Mutex::new(InventoryState {
                stock: CATALOG.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect(),
                reservations: HashMap::new(),
            }),
        }
    }
}

/// What a reservation request came to.
enum Reservation {
    Reserved,
    Rejected(String),
}

impl Inventory {
    fn lock(&self) -> std::sync::MutexGuard<'_, InventoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reserve(&self, order_id: &str, sku: &str, qty: i64) -> Reservation {
        let mut st = self.lock();
        if st.reservations.contains_key(order_id) {
            return Reservation::Reserved;
        }
        let Some(on_hand) = st.stock.get_mut(sku) else {
            return Reservation::Rejected(format!("unknown sku {sku}"));
        };
        if *on_hand < qty {
            return Reservation::Rejected(format!("only {on_hand} {sku} left"));
        }
        *on_hand -= qty;
        st.reservations
            .insert(order_id.to_owned(), (sku.to_owned(), qty));
        Reservation::Reserved
    }

    fn release(&self, order_id: &str) {
        let mut st = self.lock();
        if let Some((sku, qty)) = st.reservations.remove(order_id) {
            *st.stock.entry(sku).or_default() += qty;
        }
    }

    /// Confirms a shipped order's reservation: the units leave for good.
    fn commit(&self, order_id: &str) {
        self.lock().reservations.remove(order_id);
    }

    /// The stock of `sku`.
    pub fn level(&self, sku: &str) -> StockLevel {
        let st = self.lock();
        StockLevel {
            sku: sku.to_owned(),
            available: st.stock.get(sku).copied().unwrap_or(0),
            reserved: st
                .reservations
                .values()
                .filter(|(s, _)| s == sku)
                .map(|(_, q)| q)
                .sum(),
        }
    }

    /// The routes of the inventory service.
    pub fn router(
        self: &Arc<Self>,
        mode: Mode,
        t: &Topics,
        publisher: &Arc<dyn Publisher>,
        stack: &Stack,
    ) -> Router {
        let group = t.group("inventory");
        let p = publisher.clone();
        let evt = t.inventory_evt.clone();
        let me = self.clone();
        let reserve = move |order_id: String,
                            number: u32,
                            sku: String,
                            qty: i64,
                            amount_cents: i64,
                            cause: Arc<Message>| {
            let (me, p, evt) = (me.clone(), p.clone(), evt.clone());
            async move {
                match me.reserve(&order_id, &sku, qty) {
                    Reservation::Reserved => {
                        let ev = InventoryReserved {
                            order_id,
                            number,
                            sku,
                            qty,
                            amount_cents,
                        };
                        publish_caused(&p, &evt, &cause, &ev).await
                    }
                    Reservation::Rejected(reason) => {
                        let ev = InventoryRejected {
                            order_id,
                            number,
                            reason,
                        };
                        publish_caused(&p, &evt, &cause, &ev).await
                    }
                }
            }
        };
        let (me, p2, evt2) = (self.clone(), publisher.clone(), t.inventory_evt.clone());
        let release = move |order_id: String, number: u32, reason: String, cause: Arc<Message>| {
            let (me, p, evt) = (me.clone(), p2.clone(), evt2.clone());
            async move {
                me.release(&order_id);
                publish_caused(
                    &p,
                    &evt,
                    &cause,
                    &InventoryReleased {
                        order_id,
                        number,
                        reason,
                    },
                )
                .await
            }
        };
        let mut r = Router::new();
        match mode {
            Mode::Choreography => {
                let res = reserve.clone();
                let on_placed = typed(JsonCodec, move |e: OrderPlaced, i: Inbound| {
                    res(
                        e.order_id,
                        e.number,
                        e.sku,
                        e.qty,
                        e.amount_cents,
                        i.message,
                    )
                });
                let rel = release.clone();
                let on_failed = typed(JsonCodec, move |e: PaymentFailed, i: Inbound| {
                    rel(
                        e.order_id,
                        e.number,
                        format!("payment failed: {}", e.reason),
                        i.message,
                    )
                });
                let me = self.clone();
                let on_shipped = typed(JsonCodec, move |e: ShipmentScheduled, _: Inbound| {
                    me.commit(&e.order_id);
                    async { Ok(()) }
                });
                r = r
                    .route_with(
                        route("inventory", &t.orders_evt, &group),
                        stack.service(by_type(vec![(
                            OrderPlaced::ce_type_str(),
                            boxed(on_placed),
                        )])),
                    )
                    .route_with(
                        route("inventory", &t.payments_evt, &group),
                        stack.service(by_type(vec![(
                            PaymentFailed::ce_type_str(),
                            boxed(on_failed),
                        )])),
                    )
                    .route_with(
                        route("inventory", &t.shipping_evt, &group),
                        stack.service(by_type(vec![(
                            ShipmentScheduled::ce_type_str(),
                            boxed(on_shipped),
                        )])),
                    );
            }
            Mode::Orchestration => {
                let res = reserve.clone();
                let on_reserve = typed(JsonCodec, move |c: ReserveInventory, i: Inbound| {
                    res(
                        c.order_id,
                        c.number,
                        c.sku,
                        c.qty,
                        c.amount_cents,
                        i.message,
                    )
                });
                let rel = release.clone();
                let on_release = typed(JsonCodec, move |c: ReleaseInventory, i: Inbound| {
                    rel(c.order_id, c.number, c.reason, i.message)
                });
                let me = self.clone();
                let on_shipped = typed(JsonCodec, move |e: ShipmentScheduled, _: Inbound| {
                    me.commit(&e.order_id);
                    async { Ok(()) }
                });
                r = r
                    .route_with(
                        route("inventory", &t.inventory_cmd, &group),
                        stack.service(by_type(vec![
                            (ReserveInventory::ce_type_str(), boxed(on_reserve)),
                            (ReleaseInventory::ce_type_str(), boxed(on_release)),
                        ])),
                    )
                    .route_with(
                        route("inventory", &t.shipping_evt, &group),
                        stack.service(by_type(vec![(
                            ShipmentScheduled::ce_type_str(),
                            boxed(on_shipped),
                        )])),
                    );
            }
        }
        // Stock queries, answered over request/reply in both modes.
        let me = self.clone();
        r.route_with(
            route("inventory-query", &t.inventory_query, &group),
            stack.service(responder(
                JsonCodec,
                publisher.clone(),
                move |q: GetStock, _: Inbound| {
                    let level = me.level(&q.sku);
                    async move { Ok(level) }
                },
            )),
        )
    }
}

/// `<TYPE>.v<VERSION>` as an owned string, for [`by_type`].
trait CeType {
    fn ce_type_str() -> String;
}

impl<E: herald::Event> CeType for E {
    fn ce_type_str() -> String {
        E::ce_type()
    }
}

// ───────────────────────────── payments ─────────────────────────────

/// The payment ledger: one outcome per order.
#[derive(Debug, Default)]
pub struct Payments {
    ledger: Mutex<HashMap<String, Result<i64, String>>>,
    refunded: Mutex<Vec<String>>,
}

impl Payments {
    fn charge(&self, order_id: &str, number: u32, amount_cents: i64) -> Result<i64, String> {
        let mut l = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        l.entry(order_id.to_owned())
            .or_insert_with(|| {
                if payment_declined(number) {
                    Err("card declined".to_owned())
                } else {
                    Ok(amount_cents)
                }
            })
            .clone()
    }

    /// The routes of the payments service: dedupe (memory store) inside the dead-letter
    /// layer, with a counter outside it to show what dedupe suppressed.
    pub fn router(
        self: &Arc<Self>,
        mode: Mode,
        t: &Topics,
        publisher: &Arc<dyn Publisher>,
        stack: &Stack,
        stats: &Arc<Stats>,
    ) -> Router {
        let group = t.group("payments");
        let (me, p, evt, s) = (
            self.clone(),
            publisher.clone(),
            t.payments_evt.clone(),
            stats.clone(),
        );
        let charge =
            move |order_id: String, number: u32, amount_cents: i64, cause: Arc<Message>| {
                let (me, p, evt, s) = (me.clone(), p.clone(), evt.clone(), s.clone());
                async move {
                    s.payment_runs.fetch_add(1, Ordering::Relaxed);
                    match me.charge(&order_id, number, amount_cents) {
                        Ok(amount_cents) => {
                            let ev = PaymentSucceeded {
                                order_id,
                                number,
                                amount_cents,
                            };
                            publish_caused(&p, &evt, &cause, &ev).await
                        }
                        Err(reason) => {
                            publish_caused(
                                &p,
                                &evt,
                                &cause,
                                &PaymentFailed {
                                    order_id,
                                    number,
                                    reason,
                                },
                            )
                            .await
                        }
                    }
                }
            };
        let handler: BoxHandler = match mode {
            Mode::Choreography => {
                let c = charge.clone();
                by_type(vec![(
                    InventoryReserved::ce_type_str(),
                    boxed(typed(JsonCodec, move |e: InventoryReserved, i: Inbound| {
                        c(e.order_id, e.number, e.amount_cents, i.message)
                    })),
                )])
            }
            Mode::Orchestration => {
                let c = charge.clone();
                let (me, p, evt) = (self.clone(), publisher.clone(), t.payments_evt.clone());
                by_type(vec![
                    (
                        ProcessPayment::ce_type_str(),
                        boxed(typed(JsonCodec, move |c2: ProcessPayment, i: Inbound| {
                            c(c2.order_id, c2.number, c2.amount_cents, i.message)
                        })),
                    ),
                    (
                        RefundPayment::ce_type_str(),
                        boxed(typed(JsonCodec, move |r: RefundPayment, i: Inbound| {
                            let (me, p, evt) = (me.clone(), p.clone(), evt.clone());
                            async move {
                                me.refunded
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push(r.order_id.clone());
                                let ev = PaymentRefunded {
                                    order_id: r.order_id,
                                    number: r.number,
                                };
                                publish_caused(&p, &evt, &i.message, &ev).await
                            }
                        })),
                    ),
                ])
            }
        };
        let topic = match mode {
            Mode::Choreography => &t.inventory_evt,
            Mode::Orchestration => &t.payments_cmd,
        };
        let deduped = stack
            .clone()
            .dedupe(DedupeLayer::new(Arc::new(
                herald::dedupe::MemoryDedupe::default(),
            )))
            .service(handler);
        let s = stats.clone();
        let counted = from_fn(move |i: Inbound, next: Next| {
            let s = s.clone();
            async move {
                // Count only what the handler would act on, so the difference is dedupe's.
                let t = i.message.ce_type().unwrap_or_default();
                if t == InventoryReserved::ce_type_str() || t == ProcessPayment::ce_type_str() {
                    s.payment_deliveries.fetch_add(1, Ordering::Relaxed);
                }
                next.run(i).await
            }
        })
        .layer(deduped);
        Router::new().route_with(route("payments", topic, &group), counted)
    }
}

// ───────────────────────────── shipping ─────────────────────────────

/// Booked shipments.
#[derive(Debug, Default)]
pub struct Shipping {
    booked: Mutex<HashMap<String, String>>,
}

impl Shipping {
    fn book(&self, order_id: &str, number: u32) -> String {
        self.booked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(order_id.to_owned())
            .or_insert_with(|| format!("TRK-{number:05}"))
            .clone()
    }

    /// The routes of the shipping service.
    pub fn router(
        self: &Arc<Self>,
        mode: Mode,
        t: &Topics,
        publisher: &Arc<dyn Publisher>,
        stack: &Stack,
    ) -> Router {
        let (me, p, evt) = (self.clone(), publisher.clone(), t.shipping_evt.clone());
        let ship = move |order_id: String, number: u32, cause: Arc<Message>| {
            let (me, p, evt) = (me.clone(), p.clone(), evt.clone());
            async move {
                let tracking = me.book(&order_id, number);
                let ev = ShipmentScheduled {
                    order_id,
                    number,
                    tracking,
                };
                publish_caused(&p, &evt, &cause, &ev).await
            }
        };
        let group = t.group("shipping");
        match mode {
            Mode::Choreography => Router::new().route_with(
                route("shipping", &t.payments_evt, &group),
                stack.service(by_type(vec![(
                    PaymentSucceeded::ce_type_str(),
                    boxed(typed(JsonCodec, move |e: PaymentSucceeded, i: Inbound| {
                        ship(e.order_id, e.number, i.message)
                    })),
                )])),
            ),
            Mode::Orchestration => Router::new().route_with(
                route("shipping", &t.shipping_cmd, &group),
                stack.service(by_type(vec![(
                    ScheduleShipment::ce_type_str(),
                    boxed(typed(JsonCodec, move |c: ScheduleShipment, i: Inbound| {
                        ship(c.order_id, c.number, i.message)
                    })),
                )])),
            ),
        }
    }
}

// ───────────────────────────── orders ─────────────────────────────

/// The orders service's own table (the write side).
#[derive(Debug, Default)]
pub struct Orders {
    status: Mutex<HashMap<String, &'static str>>,
}

impl Orders {
    /// Moves an order to a final status once; `true` if this call did.
    fn finish(&self, order_id: &str, status: &'static str) -> bool {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match s.get(order_id) {
            Some(&"completed") | Some(&"cancelled") => false,
            _ => {
                s.insert(order_id.to_owned(), status);
                true
            }
        }
    }

    /// The routes of the orders service: the command side for `PlaceOrder` (validates,
    /// emits `OrderPlaced`), and what ends an order in each mode.
    pub fn router(
        self: &Arc<Self>,
        mode: Mode,
        t: &Topics,
        publisher: &Arc<dyn Publisher>,
        stack: &Stack,
    ) -> Router {
        let group = t.group("orders");
        let side = CommandSide::new(publisher.clone(), "orders");
        let me = self.clone();
        let place = side.handler(&t.orders_evt, move |c: PlaceOrder, _: Inbound| {
            let me = me.clone();
            async move {
                if c.qty <= 0 {
                    return Err(Rejection::invalid(format!(
                        "{}: quantity must be positive",
                        c.order_id
                    )));
                }
                if !CATALOG.iter().any(|(s, _)| *s == c.sku) {
                    return Err(Rejection::invalid(format!(
                        "{}: unknown sku {}",
                        c.order_id, c.sku
                    )));
                }
                me.status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(c.order_id.clone())
                    .or_insert("placed");
                let key = c.order_id.clone();
                Ok(Decision::event(OrderPlaced {
                    order_id: c.order_id,
                    number: c.number,
                    customer: c.customer,
                    sku: c.sku,
                    qty: c.qty,
                    amount_cents: c.amount_cents,
                })
                .key(key))
            }
        });
        let (me, p, evt) = (self.clone(), publisher.clone(), t.orders_evt.clone());
        let complete = move |order_id: String, number: u32, cause: Arc<Message>| {
            let (me, p, evt) = (me.clone(), p.clone(), evt.clone());
            async move {
                if me.finish(&order_id, "completed") {
                    publish_caused(&p, &evt, &cause, &OrderCompleted { order_id, number }).await?;
                }
                Ok(())
            }
        };
        let (me, p, evt) = (self.clone(), publisher.clone(), t.orders_evt.clone());
        let cancel = move |order_id: String, number: u32, reason: String, cause: Arc<Message>| {
            let (me, p, evt) = (me.clone(), p.clone(), evt.clone());
            async move {
                if me.finish(&order_id, "cancelled") {
                    publish_caused(
                        &p,
                        &evt,
                        &cause,
                        &OrderCancelled {
                            order_id,
                            number,
                            reason,
                        },
                    )
                    .await?;
                }
                Ok(())
            }
        };
        match mode {
            Mode::Choreography => {
                let (c1, c2) = (cancel.clone(), cancel.clone());
                Router::new()
                    .route_with(
                        route("orders", &t.orders_cmd, &group),
                        stack.service(by_type(vec![(PlaceOrder::ce_type_str(), boxed(place))])),
                    )
                    .route_with(
                        route("orders", &t.shipping_evt, &group),
                        stack.service(by_type(vec![(
                            ShipmentScheduled::ce_type_str(),
                            boxed(typed(JsonCodec, move |e: ShipmentScheduled, i: Inbound| {
                                complete(e.order_id, e.number, i.message)
                            })),
                        )])),
                    )
                    .route_with(
                        route("orders", &t.inventory_evt, &group),
                        stack.service(by_type(vec![
                            (
                                InventoryReleased::ce_type_str(),
                                boxed(typed(JsonCodec, move |e: InventoryReleased, i: Inbound| {
                                    c1(e.order_id, e.number, e.reason, i.message)
                                })),
                            ),
                            (
                                InventoryRejected::ce_type_str(),
                                boxed(typed(JsonCodec, move |e: InventoryRejected, i: Inbound| {
                                    c2(e.order_id, e.number, e.reason, i.message)
                                })),
                            ),
                        ])),
                    )
            }
            Mode::Orchestration => Router::new().route_with(
                route("orders", &t.orders_cmd, &group),
                stack.service(by_type(vec![
                    (PlaceOrder::ce_type_str(), boxed(place)),
                    (
                        ConfirmOrder::ce_type_str(),
                        boxed(typed(JsonCodec, move |c: ConfirmOrder, i: Inbound| {
                            complete(c.order_id, c.number, i.message)
                        })),
                    ),
                    (
                        CancelOrder::ce_type_str(),
                        boxed(typed(JsonCodec, move |c: CancelOrder, i: Inbound| {
                            cancel(c.order_id, c.number, c.reason, i.message)
                        })),
                    ),
                ])),
            ),
        }
    }
}
