//! Dead-letter routing: a message that cannot be handled is parked, not lost.
//!
//! [`DeadLetter`] looks at the result of everything inside it. An `Err` that asks for no
//! redelivery ([`HandlerError::redelivery`] is `None`) and is not
//! [`Fatal`](crate::ErrorClass::Fatal) — a permanent failure, or a transient one whose
//! retries are spent — is published to a dead-letter topic (by default `<topic>.dlq`,
//! see [`DeadLetterPolicy`]) and turned into `Ok(())`, so the router acknowledges the
//! original. Everything else passes through: `Ok`, errors that ask for a redelivery
//! (the retry layer's delayed attempts, an open circuit breaker), and fatal errors.
//!
//! The dead-letter message is the original — same id, key, payload and headers — plus
//! these headers ([`message::names`](crate::message::names)):
//!
//! | header | value |
//! |---|---|
//! | `herald-error` | the error's message |
//! | `herald-error-class` | `transient`, `permanent` |
//! | `herald-attempts` | [`Inbound::total_attempts`] as a decimal: broker deliveries before the last one, plus the in-process attempts of the last one |
//! | `herald-original-topic` | the topic it was consumed from |
//! | `herald-original-<name>` | each position value of [`Origin`](crate::Origin) (`partition`, `offset`, `sequence`) |
//! | `herald-handler` | the route's handler name |
//! | `herald-group` | the route's consumer group |
//! | `herald-failed-at` | when it was dead-lettered, RFC 3339 |
//!
//! A message dead-lettered again after a replay gets fresh values: herald's dead-letter
//! headers are **replaced**, never appended (see [`is_dead_letter_header`]).
//!
//! If the publish itself fails, the layer returns a
//! [`Transient`](crate::ErrorClass::Transient) error ([`error::PublishFailed`]) with
//! [`redeliver_after`](HandlerError::redeliver_after) set (5 s unless
//! [`publish_retry_delay`](DeadLetterLayer::publish_retry_delay) says otherwise): the
//! original is redelivered and handled again, never acknowledged unpublished.
//!
//! `herald-attempts` counts the in-process attempts the retry layer made inside this
//! layer even though this layer sits outside it (the two layers share a task-local
//! counter); previous deliveries count one each, since what happened inside them is not
//! recorded anywhere.
//!
//! # Examples
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use herald_core::{handler_fn, memory::MemoryBroker, HandlerError, Inbound, Message, Publisher,
//!     Router, Subscriber, SubscribeSpec};
//! use herald_core::middleware::DeadLetterLayer;
//! use tower::Layer;
//!
//! let broker = MemoryBroker::new();
//! let handler = DeadLetterLayer::new(Arc::new(broker.clone()))
//!     .layer(handler_fn(|_: Inbound| async { Err::<(), _>(HandlerError::permanent("bad total")) }));
//! let running = Router::new().route("billing", "orders", "billing", handler).start(broker.clone());
//! broker.publish("orders", vec![Message::new("{}")]).await?;
//!
//! let mut dlq = broker.subscribe(SubscribeSpec::new("orders.dlq", "ops")).await?;
//! let parked = dlq.next().await.unwrap()?;
//! assert_eq!(parked.message.header("herald-error"), Some("bad total"));
//! assert_eq!(parked.message.header("herald-handler"), Some("billing"));
//! parked.ack().await?;
//! running.shutdown().await?;
//! # Ok(()) }
//! ```

mod layer;
mod policy;

pub mod error;

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use tower_service::Service;

pub use layer::{DEFAULT_PUBLISH_RETRY_DELAY, DeadLetterLayer};
pub use policy::{DeadLetterPolicy, DefaultDeadLetterPolicy};

use self::error::PublishFailed;
use crate::{
    ErrorClass, HandlerError, Headers, Inbound, Message, Publisher,
    message::{names, now_rfc3339},
};

/// Whether `name` is one of the headers the dead-letter layer writes (and replaces when
/// a message is dead-lettered again).
///
/// # Examples
/// ```
/// use herald_core::middleware::dead_letter::is_dead_letter_header;
/// assert!(is_dead_letter_header("herald-error"));
/// assert!(is_dead_letter_header("herald-original-offset"));
/// assert!(!is_dead_letter_header("herald-key"));
/// assert!(!is_dead_letter_header("ce-id"));
/// ```
pub fn is_dead_letter_header(name: &str) -> bool {
    matches!(
        name,
        names::DLQ_ERROR
            | names::DLQ_ERROR_CLASS
            | names::DLQ_ATTEMPTS
            | names::DLQ_ORIGINAL_TOPIC
            | names::DLQ_HANDLER
            | names::DLQ_GROUP
            | names::DLQ_FAILED_AT
    ) || name.starts_with(names::DLQ_ORIGINAL_PREFIX)
}

/// The dead-letter message for `inbound` failing with `error`: the original message with
/// the dead-letter headers of the [module docs](self), replacing any from an earlier
/// dead-lettering.
pub fn dead_letter_message(inbound: &Inbound, error: &HandlerError) -> Message {
    let original = &*inbound.message;
    let mut headers: Headers = original
        .headers
        .iter()
        .filter(|(n, _)| !is_dead_letter_header(n))
        .map(|(n, v)| (n.to_owned(), v.clone()))
        .collect();
    headers.append(names::DLQ_ERROR, error.message().to_owned());
    headers.append(names::DLQ_ERROR_CLASS, error.class().to_string());
    headers.append(names::DLQ_ATTEMPTS, inbound.total_attempts().to_string());
    headers.append(names::DLQ_ORIGINAL_TOPIC, inbound.origin.topic.to_string());
    for (name, value) in &inbound.origin.position {
        headers.append(
            format!("{}{name}", names::DLQ_ORIGINAL_PREFIX),
            value.to_string(),
        );
    }
    headers.append(names::DLQ_HANDLER, inbound.route.handler.clone());
    headers.append(names::DLQ_GROUP, inbound.route.group.clone());
    headers.append(names::DLQ_FAILED_AT, now_rfc3339());
    Message {
        id: original.id.clone(),
        key: original.key.clone(),
        headers,
        payload: original.payload.clone(),
    }
}

/// Publishes spent failures to a dead-letter topic; see the [module docs](self).
#[derive(Clone)]
pub struct DeadLetter<S> {
    inner: S,
    publisher: Arc<dyn Publisher>,
    policy: Arc<dyn DeadLetterPolicy>,
    publish_retry_delay: Duration,
}

impl<S> DeadLetter<S> {
    /// Wraps `inner`, dead-lettering to `<topic>.dlq` through `publisher`. Use
    /// [`DeadLetterLayer`] for the other settings.
    pub fn new(inner: S, publisher: Arc<dyn Publisher>) -> Self {
        tower_layer::Layer::layer(&DeadLetterLayer::new(publisher), inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for DeadLetter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("inner", &self.inner)
            .field("publish_retry_delay", &self.publish_retry_delay)
            .finish_non_exhaustive()
    }
}

impl<S> Service<Inbound> for DeadLetter<S>
where
    S: Service<Inbound, Response = (), Error = HandlerError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let fut = self.inner.call(inbound.clone());
        let publisher = self.publisher.clone();
        let policy = self.policy.clone();
        let retry_delay = self.publish_retry_delay;
        Box::pin(async move {
            let (result, local) = super::attempts::observe(inbound.local_attempt, fut).await;
            let err = match result {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if err.class() == ErrorClass::Fatal || err.redelivery().is_some() {
                return Err(err);
            }
            let mut last = inbound;
            last.local_attempt = last.local_attempt.max(local);
            let Some(topic) = policy.topic(&last, &err) else {
                tracing::warn!(
                    handler = %last.route.handler, message_id = %last.message.id,
                    error = %err, "dead-letter policy dropped the failed message"
                );
                return Ok(());
            };
            let dead = dead_letter_message(&last, &err);
            match publisher.publish(&topic, vec![dead]).await {
                Ok(()) => {
                    tracing::warn!(
                        handler = %last.route.handler, message_id = %last.message.id,
                        attempts = last.total_attempts(), error = %err, dlq = %topic,
                        "message dead-lettered"
                    );
                    Ok(())
                }
                Err(pe) => {
                    tracing::error!(
                        handler = %last.route.handler, message_id = %last.message.id,
                        error = %err, publish_error = %pe, dlq = %topic, ?retry_delay,
                        "dead-letter publish failed; the message will be redelivered"
                    );
                    Err(HandlerError::from_error(
                        ErrorClass::Transient,
                        PublishFailed::new(topic, err, pe),
                    )
                    .redeliver_after(retry_delay))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Origin, RouteInfo};

    fn inbound(message: Message, attempt: u32, local: u32) -> Inbound {
        let route = Arc::new(RouteInfo {
            handler: "billing".into(),
            topic: "orders".into(),
            group: "g1".into(),
        });
        let origin = Origin::new("orders")
            .with("partition", 2)
            .with("offset", 41);
        let mut i = Inbound::new(message, origin, attempt, route);
        i.local_attempt = local;
        i
    }

    #[test]
    fn headers_are_added_and_replaced_not_appended() {
        let original = Message::with_id("id-1", "payload")
            .with_key("k")
            .with_header("ce-type", "OrderCreated.v1")
            .with_header("herald-error", "old error")
            .with_header("herald-original-sequence", "7")
            .with_header("herald-key", "k");
        let m = dead_letter_message(
            &inbound(original, 3, 2),
            &HandlerError::permanent("bad total"),
        );
        assert_eq!(m.id, "id-1");
        assert_eq!(m.key_str(), Some("k"));
        assert_eq!(&m.payload[..], b"payload");
        assert_eq!(m.header("ce-type"), Some("OrderCreated.v1"));
        assert_eq!(m.header("herald-key"), Some("k"));
        assert_eq!(m.headers.get_all("herald-error").count(), 1);
        assert_eq!(m.header("herald-error"), Some("bad total"));
        assert_eq!(m.header("herald-error-class"), Some("permanent"));
        assert_eq!(m.header("herald-attempts"), Some("4"));
        assert_eq!(m.header("herald-original-topic"), Some("orders"));
        assert_eq!(m.header("herald-original-partition"), Some("2"));
        assert_eq!(m.header("herald-original-offset"), Some("41"));
        assert_eq!(m.header("herald-original-sequence"), None);
        assert_eq!(m.header("herald-handler"), Some("billing"));
        assert_eq!(m.header("herald-group"), Some("g1"));
        let at = m.header("herald-failed-at").unwrap();
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).unwrap();
    }
}
