//! The order domain of the `order-saga` example: orders, inventory, payments and shipping
//! as separate services (separate routes, separate consumer groups), wired either as a
//! choreography or behind an orchestrating saga, plus an orders read model.
//!
//! * [`events`]: the commands and events.
//! * [`services`]: the four services, each with a choreography face (reacting to other
//!   services' events) and an orchestration face (executing commands).
//! * [`orchestrator`]: the saga that drives the orchestrated variant.
//! * [`read_model`]: the CQRS orders view, with a timeline per order.
//! * [`transport`]: memory, Kafka or NATS.
//! * [`run`]: one run of one mode, and its report.

pub mod events;
pub mod orchestrator;
pub mod read_model;
pub mod run;
pub mod services;
pub mod transport;

use std::sync::Arc;

use futures::future::BoxFuture;
use herald::{
    Codec, Event, HandlerError, Inbound, JsonCodec, Message, Publisher, handler::BoxHandler,
};

/// How the services are coordinated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every service reacts to the others' events; no coordinator.
    Choreography,
    /// A saga sends commands and reacts to their replies.
    Orchestration,
}

impl Mode {
    /// `choreography` / `orchestration`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Choreography => "choreography",
            Self::Orchestration => "orchestration",
        }
    }
}

/// Every topic of one run; names carry the run id and the mode so runs never mix.
#[derive(Clone, Debug)]
pub struct Topics {
    /// Prefix of every topic and consumer group of this run.
    pub prefix: String,
    /// Commands to the orders service.
    pub orders_cmd: String,
    /// Events of the orders service.
    pub orders_evt: String,
    /// Commands to the inventory service.
    pub inventory_cmd: String,
    /// Events of the inventory service.
    pub inventory_evt: String,
    /// Queries to the inventory service (request/reply).
    pub inventory_query: String,
    /// Commands to the payments service.
    pub payments_cmd: String,
    /// Events of the payments service.
    pub payments_evt: String,
    /// Commands to the shipping service.
    pub shipping_cmd: String,
    /// Events of the shipping service.
    pub shipping_evt: String,
    /// Replies to this run's requester.
    pub replies: String,
}

impl Topics {
    /// The topics of run `run` in `mode`.
    pub fn new(run: &str, mode: Mode) -> Self {
        let prefix = format!("{run}-{}", mode.as_str());
        let t = |s: &str| format!("{prefix}-{s}");
        Self {
            orders_cmd: t("orders-cmd"),
            orders_evt: t("orders-evt"),
            inventory_cmd: t("inventory-cmd"),
            inventory_evt: t("inventory-evt"),
            inventory_query: t("inventory-query"),
            payments_cmd: t("payments-cmd"),
            payments_evt: t("payments-evt"),
            shipping_cmd: t("shipping-cmd"),
            shipping_evt: t("shipping-evt"),
            replies: t("replies"),
            prefix,
        }
    }

    /// Every topic.
    pub fn all(&self) -> Vec<String> {
        vec![
            self.orders_cmd.clone(),
            self.orders_evt.clone(),
            self.inventory_cmd.clone(),
            self.inventory_evt.clone(),
            self.inventory_query.clone(),
            self.payments_cmd.clone(),
            self.payments_evt.clone(),
            self.shipping_cmd.clone(),
            self.shipping_evt.clone(),
            self.replies.clone(),
        ]
    }

    /// The consumer group of `service` in this run.
    pub fn group(&self, service: &str) -> String {
        format!("{}-{service}", self.prefix)
    }
}

/// The catalog: SKUs and their opening stock.
pub const CATALOG: [(&str, i64); 4] = [
    ("apple", 1_000),
    ("pear", 1_000),
    ("plum", 1_000),
    ("fig", 1_000),
];

/// Payment is declined for every order whose number ends in 7: a deterministic 10 %.
pub fn payment_declined(number: u32) -> bool {
    number % 10 == 7
}

/// The `n`-th order of a run.
pub fn order(n: u32) -> events::PlaceOrder {
    events::PlaceOrder {
        order_id: format!("o-{n:04}"),
        number: n,
        customer: format!("customer-{}", n % 7),
        sku: CATALOG[(n as usize) % CATALOG.len()].0.to_owned(),
        qty: i64::from(n % 3 + 1),
        amount_cents: 1_500 + i64::from(n) * 37,
    }
}

/// Publishes `ev` as a reply to `cause`: same key, same correlation id, caused by it.
pub async fn publish_caused<E: Event>(
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

/// A route handler that dispatches by CloudEvents type; types it does not list are
/// acknowledged (topics carry several event types, each service wants some).
pub fn by_type(handlers: Vec<(String, BoxHandler)>) -> BoxHandler {
    use tower::ServiceExt;
    let handlers = Arc::new(handlers);
    BoxHandler::new(herald::handler_fn(move |i: Inbound| {
        let handlers = handlers.clone();
        let fut: BoxFuture<'static, Result<(), HandlerError>> = Box::pin(async move {
            let t = i.message.ce_type().unwrap_or_default().to_owned();
            match handlers.iter().find(|(ty, _)| *ty == t) {
                Some((_, h)) => h.clone().oneshot(i).await,
                None => Ok(()),
            }
        });
        fut
    }))
}

/// Boxes a handler.
pub fn boxed<S>(s: S) -> BoxHandler
where
    S: tower::Service<Inbound, Response = (), Error = HandlerError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    BoxHandler::new(s)
}
