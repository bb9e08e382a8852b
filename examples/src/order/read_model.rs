//! The orders read model (the query side of CQRS): one document per order, built from
//! every service's events, with a timeline.
//!
//! Events of one order arrive on four topics, so they may be applied in any order; the
//! view keeps facts (flags), not a state machine, and derives its status from them.

use herald::patterns::cqrs::{EventMeta, Projection};
use serde::{Deserialize, Serialize};

use super::{Topics, events::*};

/// Where an order stands, derived from the facts the view collected.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OrderStatus {
    /// Accepted, nothing else known yet.
    Placed,
    /// Stock reserved.
    Reserved,
    /// Charged.
    Paid,
    /// Shipment booked.
    Shipped,
    /// Done.
    Completed,
    /// Cancelled.
    Cancelled,
}

/// One line of an order's timeline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Moment {
    /// CloudEvents time of the event (RFC 3339).
    pub at: String,
    /// What happened.
    pub what: String,
}

/// The view of one order.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct OrderView {
    /// Order id.
    pub order_id: String,
    /// Number.
    pub number: u32,
    /// Customer.
    pub customer: String,
    /// SKU.
    pub sku: String,
    /// Units.
    pub qty: i64,
    /// Total in cents.
    pub amount_cents: i64,
    /// Stock was reserved.
    pub reserved: bool,
    /// Reserved stock was given back (compensation).
    pub released: bool,
    /// Charged.
    pub paid: bool,
    /// Why the payment failed, if it did.
    pub payment_failed: Option<String>,
    /// Tracking code, once shipped.
    pub tracking: Option<String>,
    /// The order completed.
    pub completed: bool,
    /// Why the order was cancelled, if it was.
    pub cancelled: Option<String>,
    /// What happened, in arrival order (sort by `at` to read it in event-time order).
    pub timeline: Vec<Moment>,
}

impl OrderView {
    /// The status the facts add up to.
    pub fn status(&self) -> OrderStatus {
        if self.cancelled.is_some() {
            OrderStatus::Cancelled
        } else if self.completed {
            OrderStatus::Completed
        } else if self.tracking.is_some() {
            OrderStatus::Shipped
        } else if self.paid {
            OrderStatus::Paid
        } else if self.reserved {
            OrderStatus::Reserved
        } else {
            OrderStatus::Placed
        }
    }

    /// Whether the order reached an end.
    /// Whether every event of the order's end has been applied: a completed order has
    /// its shipment, a cancelled one its released stock. Events of different topics reach
    /// the projection in no particular order, so `is_final` alone can come early.
    pub fn is_settled(&self) -> bool {
        match self.status() {
            OrderStatus::Completed => self.tracking.is_some(),
            OrderStatus::Cancelled => self.released || !self.reserved,
            _ => false,
        }
    }

    /// Whether the order reached an end state.
    pub fn is_final(&self) -> bool {
        matches!(
            self.status(),
            OrderStatus::Completed | OrderStatus::Cancelled
        )
    }

    /// The timeline sorted by event time, each moment with its offset in milliseconds
    /// from the first.
    pub fn sorted_timeline(&self) -> Vec<(f64, Moment)> {
        let parse = |s: &str| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp_nanos())
                .unwrap_or(0)
        };
        let mut t: Vec<(i128, Moment)> = self
            .timeline
            .iter()
            .map(|m| (parse(&m.at), m.clone()))
            .collect();
        t.sort_by_key(|(at, _)| *at);
        let first = t.first().map_or(0, |(at, _)| *at);
        t.into_iter()
            .map(|(at, m)| ((at - first) as f64 / 1e6, m))
            .collect()
    }
}

fn note<'a>(
    doc: &'a mut Option<OrderView>,
    order_id: &str,
    meta: &EventMeta,
    what: String,
) -> &'a mut OrderView {
    let v = doc.get_or_insert_with(|| OrderView {
        order_id: order_id.to_owned(),
        ..Default::default()
    });
    v.timeline.push(Moment {
        at: meta.time.clone().unwrap_or_default(),
        what,
    });
    v
}

/// The `orders-view` projection over the run's event topics.
pub fn projection(name: &str, t: &Topics) -> Projection<OrderView> {
    Projection::<OrderView>::new(name)
        .on(
            &t.orders_evt,
            |e: &OrderPlaced| e.order_id.clone(),
            |doc, e: &OrderPlaced, m| {
                let v = note(
                    doc,
                    &e.order_id,
                    m,
                    format!("placed ({} × {}, {} ct)", e.qty, e.sku, e.amount_cents),
                );
                v.number = e.number;
                v.customer = e.customer.clone();
                v.sku = e.sku.clone();
                v.qty = e.qty;
                v.amount_cents = e.amount_cents;
            },
        )
        .on(
            &t.inventory_evt,
            |e: &InventoryReserved| e.order_id.clone(),
            |doc, e: &InventoryReserved, m| {
                note(doc, &e.order_id, m, "stock reserved".into()).reserved = true;
            },
        )
        .on(
            &t.inventory_evt,
            |e: &InventoryRejected| e.order_id.clone(),
            |doc, e: &InventoryRejected, m| {
                note(doc, &e.order_id, m, format!("stock rejected: {}", e.reason));
            },
        )
        .on(
            &t.inventory_evt,
            |e: &InventoryReleased| e.order_id.clone(),
            |doc, e: &InventoryReleased, m| {
                note(doc, &e.order_id, m, "stock released (compensation)".into()).released = true;
            },
        )
        .on(
            &t.payments_evt,
            |e: &PaymentSucceeded| e.order_id.clone(),
            |doc, e: &PaymentSucceeded, m| {
                note(doc, &e.order_id, m, "paid".into()).paid = true;
            },
        )
        .on(
            &t.payments_evt,
            |e: &PaymentFailed| e.order_id.clone(),
            |doc, e: &PaymentFailed, m| {
                note(doc, &e.order_id, m, format!("payment failed: {}", e.reason)).payment_failed =
                    Some(e.reason.clone());
            },
        )
        .on(
            &t.payments_evt,
            |e: &PaymentRefunded| e.order_id.clone(),
            |doc, e: &PaymentRefunded, m| {
                note(doc, &e.order_id, m, "refunded (compensation)".into());
            },
        )
        .on(
            &t.shipping_evt,
            |e: &ShipmentScheduled| e.order_id.clone(),
            |doc, e: &ShipmentScheduled, m| {
                note(doc, &e.order_id, m, format!("shipped {}", e.tracking)).tracking =
                    Some(e.tracking.clone());
            },
        )
        .on(
            &t.orders_evt,
            |e: &OrderCompleted| e.order_id.clone(),
            |doc, e: &OrderCompleted, m| {
                note(doc, &e.order_id, m, "completed".into()).completed = true;
            },
        )
        .on(
            &t.orders_evt,
            |e: &OrderCancelled| e.order_id.clone(),
            |doc, e: &OrderCancelled, m| {
                note(doc, &e.order_id, m, format!("cancelled: {}", e.reason)).cancelled =
                    Some(e.reason.clone());
            },
        )
}
