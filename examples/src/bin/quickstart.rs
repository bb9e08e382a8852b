//! Quickstart: publish typed events and handle them through the router, on the in-memory
//! transport. Run it with
//!
//! ```text
//! cargo run -p herald-examples --bin quickstart
//! ```
//!
//! It publishes five `OrderCreated` events, a `billing` handler prints each one, and the
//! router shuts down gracefully once all five are handled.

use std::time::Duration;

use herald::{Codec, Event, Inbound, JsonCodec, Publisher, Router, memory::MemoryBroker, typed};
use serde::{Deserialize, Serialize};

/// A new order was placed.
#[derive(Serialize, Deserialize, Debug)]
struct OrderCreated {
    order_id: String,
    customer: String,
    total_cents: i64,
}

impl Event for OrderCreated {
    const TYPE: &'static str = "herald.examples.orders.OrderCreated";
    const VERSION: u32 = 1;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = MemoryBroker::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();

    let billing = typed(JsonCodec, move |ev: OrderCreated, inbound: Inbound| {
        let done = done_tx.clone();
        async move {
            println!(
                "handled OrderCreated order={} customer={} total={}.{:02} (attempt {}, {})",
                ev.order_id,
                ev.customer,
                ev.total_cents / 100,
                ev.total_cents % 100,
                inbound.attempt,
                inbound.origin,
            );
            done.send(()).ok();
            Ok(())
        }
    });
    let running = Router::new()
        .route("billing", "orders", "billing", billing)
        .start(broker.clone());

    for i in 1..=5 {
        let ev = OrderCreated {
            order_id: format!("o-{i}"),
            customer: format!("c-{}", i % 2),
            total_cents: 1000 + i * 250,
        };
        let msg = JsonCodec
            .to_message(&ev)
            .await?
            .with_key(ev.order_id.clone());
        broker.publish("orders", vec![msg]).await?;
        println!("published OrderCreated order={}", ev.order_id);
    }
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
            .await?
            .ok_or("router stopped early")?;
    }
    running.shutdown().await?;
    println!("quickstart: 5 published, 5 handled");
    Ok(())
}
