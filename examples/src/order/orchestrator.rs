//! The orchestrated variant's coordinator: a saga per order.
//!
//! ```text
//! OrderPlaced ─▶ reserve: ReserveInventory ─▶ InventoryReserved ─▶ pay: ProcessPayment ─▶ PaymentSucceeded ─▶ ship: ScheduleShipment ─▶ ShipmentScheduled ─▶ ConfirmOrder
//!                          └▶ InventoryRejected ─▶ CancelOrder      └▶ PaymentFailed ─▶ ReleaseInventory ─▶ InventoryReleased ─▶ CancelOrder
//! ```

use std::time::Duration;

use herald::patterns::saga::Saga;
use serde::{Deserialize, Serialize};

use super::{Topics, events::*};

/// What the saga keeps per order.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct OrderSagaData {
    /// Order id.
    pub order_id: String,
    /// Number.
    pub number: u32,
    /// SKU.
    pub sku: String,
    /// Units.
    pub qty: i64,
    /// Total in cents.
    pub amount_cents: i64,
    /// Tracking code once shipped.
    pub tracking: Option<String>,
}

/// The order saga of run topics `t`; every step times out after `step_timeout`.
pub fn order_saga(t: &Topics, step_timeout: Duration) -> Saga<OrderSagaData> {
    let (inv_cmd, inv_evt) = (t.inventory_cmd.clone(), t.inventory_evt.clone());
    let (pay_cmd, pay_evt) = (t.payments_cmd.clone(), t.payments_evt.clone());
    let (ship_cmd, ship_evt) = (t.shipping_cmd.clone(), t.shipping_evt.clone());
    Saga::<OrderSagaData>::new(format!("{}-order-saga", t.prefix))
        .start_on(&t.orders_evt, |e: &OrderPlaced| {
            Some((
                e.order_id.clone(),
                OrderSagaData {
                    order_id: e.order_id.clone(),
                    number: e.number,
                    sku: e.sku.clone(),
                    qty: e.qty,
                    amount_cents: e.amount_cents,
                    tracking: None,
                },
            ))
        })
        .step("reserve", |s| {
            s.command(&inv_cmd, |d: &OrderSagaData| ReserveInventory {
                order_id: d.order_id.clone(),
                number: d.number,
                sku: d.sku.clone(),
                qty: d.qty,
                amount_cents: d.amount_cents,
            })
            .on_success(&inv_evt, |_, _: InventoryReserved| {})
            .on_failure(&inv_evt, |_, e: InventoryRejected| e.reason)
            .timeout(step_timeout)
            .compensate(&inv_cmd, |d| ReleaseInventory {
                order_id: d.order_id.clone(),
                number: d.number,
                reason: "order saga compensating".into(),
            })
            .confirmed_by::<InventoryReleased>(&inv_evt)
            .compensation_timeout(step_timeout)
        })
        .step("pay", |s| {
            s.command(&pay_cmd, |d: &OrderSagaData| ProcessPayment {
                order_id: d.order_id.clone(),
                number: d.number,
                amount_cents: d.amount_cents,
            })
            .on_success(&pay_evt, |_, _: PaymentSucceeded| {})
            .on_failure(&pay_evt, |_, e: PaymentFailed| e.reason)
            .timeout(step_timeout)
            .compensate(&pay_cmd, |d| RefundPayment {
                order_id: d.order_id.clone(),
                number: d.number,
            })
            .confirmed_by::<PaymentRefunded>(&pay_evt)
            .compensation_timeout(step_timeout)
        })
        .step("ship", |s| {
            s.command(&ship_cmd, |d: &OrderSagaData| ScheduleShipment {
                order_id: d.order_id.clone(),
                number: d.number,
            })
            .on_success(&ship_evt, |d, e: ShipmentScheduled| {
                d.tracking = Some(e.tracking)
            })
            .timeout(step_timeout)
        })
        .on_completed(&t.orders_cmd, |d| ConfirmOrder {
            order_id: d.order_id.clone(),
            number: d.number,
        })
        .on_compensated(&t.orders_cmd, |d, f| CancelOrder {
            order_id: d.order_id.clone(),
            number: d.number,
            reason: format!("{} failed: {}", f.step, f.reason),
        })
}
