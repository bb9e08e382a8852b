//! The order domain's messages: commands (imperative) and events (past tense).

use herald::Event;
use serde::{Deserialize, Serialize};

macro_rules! message {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        impl Event for $name {
            const TYPE: &'static str = concat!("herald.examples.orders.", stringify!($name));
            const VERSION: u32 = 1;
        }
    };
}

message!(
    /// Command to the orders service: place an order.
    PlaceOrder {
        /// Order id, e.g. `o-0007`.
        order_id: String,
        /// The order's number (payment fails when it ends in 7).
        number: u32,
        /// Customer.
        customer: String,
        /// Stock-keeping unit.
        sku: String,
        /// Units.
        qty: i64,
        /// Total in cents.
        amount_cents: i64,
    }
);

message!(
    /// An order was accepted.
    OrderPlaced {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
        /// Customer.
        customer: String,
        /// SKU.
        sku: String,
        /// Units.
        qty: i64,
        /// Total in cents.
        amount_cents: i64,
    }
);

message!(
    /// The order was reserved, paid and shipped.
    OrderCompleted {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
    }
);

message!(
    /// The order was cancelled.
    OrderCancelled {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
        /// Why.
        reason: String,
    }
);

message!(
    /// Orchestration: confirm the order (the saga completed).
    ConfirmOrder {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
    }
);

message!(
    /// Orchestration: cancel the order (the saga compensated).
    CancelOrder {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
        /// Why.
        reason: String,
    }
);

message!(
    /// Orchestration: reserve stock.
    ReserveInventory {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
        /// SKU.
        sku: String,
        /// Units.
        qty: i64,
        /// Total in cents (passed along for payment in the choreography).
        amount_cents: i64,
    }
);

message!(
    /// Stock was reserved for an order.
    InventoryReserved {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
        /// SKU.
        sku: String,
        /// Units.
        qty: i64,
        /// Total in cents.
        amount_cents: i64,
    }
);

message!(
    /// Stock could not be reserved.
    InventoryRejected {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
        /// Why.
        reason: String,
    }
);

message!(
    /// Compensation: give the reserved stock back.
    ReleaseInventory {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
        /// Why.
        reason: String,
    }
);

message!(
    /// The reserved stock was given back.
    InventoryReleased {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
        /// Why.
        reason: String,
    }
);

message!(
    /// Orchestration: charge the customer.
    ProcessPayment {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
        /// Total in cents.
        amount_cents: i64,
    }
);

message!(
    /// The customer was charged.
    PaymentSucceeded {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
        /// Charged cents.
        amount_cents: i64,
    }
);

message!(
    /// The charge was declined.
    PaymentFailed {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
        /// Why.
        reason: String,
    }
);

message!(
    /// Compensation: refund a charge.
    RefundPayment {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
    }
);

message!(
    /// A charge was refunded.
    PaymentRefunded {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
    }
);

message!(
    /// Orchestration: ship the order.
    ScheduleShipment {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
    }
);

message!(
    /// A shipment was booked.
    ShipmentScheduled {
        /// Order id.
        order_id: String,
        /// Number.
        number: u32,
        /// Tracking code.
        tracking: String,
    }
);

message!(
    /// Query to the inventory service (request/reply).
    GetStock {
        /// SKU.
        sku: String,
    }
);

message!(
    /// Reply to [`GetStock`].
    StockLevel {
        /// SKU.
        sku: String,
        /// Units on hand and not reserved.
        available: i64,
        /// Units reserved by open orders.
        reserved: i64,
    }
);
