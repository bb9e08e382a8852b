//! The transport contract: [`Publisher`], [`Subscriber`], [`Delivery`].
//!
//! Every adapter (memory, Kafka, NATS) implements these and passes the conformance
//! suite in `herald-testkit`. The semantics below hold for all of them.

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, future::BoxFuture, stream::BoxStream};
use smallvec::SmallVec;

use crate::{AckError, Message, PublishError, SubscribeError};

/// Publishes messages to topics.
///
/// * `publish` resolves when the broker has **durably accepted** every message
///   (Kafka: acks=all with the idempotent producer; NATS: the JetStream PubAck; memory:
///   appended to the topic). An `Err` means some messages may not have been accepted:
///   a batch is **not atomic**, so publish again (message ids make the retry safe for
///   consumers that dedupe, and NATS drops repeats by `Nats-Msg-Id`).
/// * Messages with the same key keep their order.
/// * Publishers are `Send + Sync` and cheap to share behind an `Arc`; concurrent
///   `publish` calls are allowed.
/// * Dropping the returned future does not recall messages already handed to the broker.
///
/// # Examples
/// ```
/// # async fn demo() -> Result<(), herald_core::PublishError> {
/// use herald_core::{Message, Publisher, memory::MemoryBroker};
/// let broker = MemoryBroker::new();
/// broker.publish("orders", vec![Message::new("hello").with_key("o-1")]).await?;
/// # Ok(()) }
/// ```
pub trait Publisher: Send + Sync {
    /// Publishes `messages` to `topic` and waits for the broker to accept them.
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PublishError>>;

    /// Flushes and releases resources. Publishing after `close` fails with
    /// [`PublishErrorKind::Closed`](crate::PublishErrorKind::Closed). The default does nothing.
    fn close(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async { Ok(()) })
    }
}

impl<P: Publisher + ?Sized> Publisher for Arc<P> {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        (**self).publish(topic, messages)
    }
    fn close(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        (**self).close()
    }
}

impl<P: Publisher + ?Sized> Publisher for Box<P> {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        (**self).publish(topic, messages)
    }
    fn close(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        (**self).close()
    }
}

/// Where a subscription starts when its group has no committed position yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartFrom {
    /// The oldest retained message (the default: nothing published before the first
    /// subscribe is missed).
    #[default]
    Earliest,
    /// Only messages published after the subscription starts.
    Latest,
}

/// What to subscribe to.
///
/// # Examples
/// ```
/// use herald_core::SubscribeSpec;
/// let spec = SubscribeSpec::new("orders", "billing").max_in_flight(64);
/// assert_eq!(spec.group, "billing");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeSpec {
    /// The topic.
    pub topic: String,
    /// The consumer group: members of one group compete for messages; each group gets
    /// every message.
    pub group: String,
    /// Where a new group starts.
    pub start: StartFrom,
    /// How many unacknowledged deliveries this subscriber may hold at once; the stream
    /// stops yielding (and the adapter stops fetching) at that count.
    pub max_in_flight: usize,
}

impl SubscribeSpec {
    /// Subscribe `group` to `topic`, from the earliest message, 256 in flight.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            start: StartFrom::Earliest,
            max_in_flight: 256,
        }
    }

    /// Sets where a new group starts.
    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Sets the in-flight bound (at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
}

/// Where a delivery came from: its topic and a transport-specific position.
///
/// The position is a short list of named numbers — `partition`/`offset` on Kafka and
/// memory, `sequence` on NATS — so core need not know broker terms. The dead-letter
/// middleware copies each as `herald-original-<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The topic (shared: an adapter hands out one allocation for all its deliveries).
    pub topic: Arc<str>,
    /// Named position values, e.g. `[("partition", 3), ("offset", 42)]`. Held inline for
    /// up to three (every adapter's positions fit): no allocation per delivery.
    pub position: SmallVec<[(&'static str, i64); 3]>,
}

impl Origin {
    /// An origin with no position.
    pub fn new(topic: impl Into<Arc<str>>) -> Self {
        Self {
            topic: topic.into(),
            position: SmallVec::new(),
        }
    }

    /// Adds a named position value.
    pub fn with(mut self, name: &'static str, value: i64) -> Self {
        self.position.push((name, value));
        self
    }

    /// A named position value.
    pub fn get(&self, name: &str) -> Option<i64> {
        self.position
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.topic)?;
        for (n, v) in &self.position {
            write!(f, " {n}={v}")?;
        }
        Ok(())
    }
}

/// Settles one delivery with the broker. Adapters implement this; users call
/// [`Delivery::ack`] / [`Delivery::nack`].
///
/// Exactly one of `ack`/`nack` is called, once: both take `self`. A delivery dropped
/// without either is treated as a nack with no delay by every adapter (it is redelivered).
pub trait Acker: Send + 'static {
    /// The message was handled: do not redeliver it.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), AckError>>;
    /// The message was not handled: redeliver it no earlier than `delay` from now.
    fn nack(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), AckError>>;
}

/// The future an [`Acker`] returns when it settled in memory (a Kafka offset, the memory
/// transport): a success costs no allocation (the boxed future has no size), which
/// matters at a million settles a second; an error is boxed as usual.
pub fn settled(result: Result<(), AckError>) -> BoxFuture<'static, Result<(), AckError>> {
    match result {
        Ok(()) => Box::pin(Settled),
        Err(e) => Box::pin(std::future::ready(Err(e))),
    }
}

/// A successful settle, already done (zero-sized).
struct Settled;

impl Future for Settled {
    type Output = Result<(), AckError>;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(()))
    }
}

/// One received message, with its origin, attempt number and the means to settle it.
#[must_use = "a delivery must be acked or nacked"]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// Where it came from.
    pub origin: Origin,
    /// 1 on first delivery, then +1 for each redelivery the broker knows of.
    pub attempt: u32,
    acker: Box<dyn Acker>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("origin", &self.origin)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery; for adapters.
    pub fn new(message: Message, origin: Origin, attempt: u32, acker: Box<dyn Acker>) -> Self {
        Self {
            message,
            origin,
            attempt,
            acker,
        }
    }

    /// Acknowledges: the message will not be delivered again to this group.
    pub async fn ack(self) -> Result<(), AckError> {
        self.acker.ack().await
    }

    /// Negative acknowledgement: redeliver no earlier than `delay` from now, with
    /// `attempt + 1`.
    pub async fn nack(self, delay: Duration) -> Result<(), AckError> {
        self.acker.nack(delay).await
    }

    /// Splits into the message parts and the acker.
    pub fn into_parts(self) -> (Message, Origin, u32, Box<dyn Acker>) {
        (self.message, self.origin, self.attempt, self.acker)
    }
}

/// A live subscription: a stream of deliveries plus a graceful close.
///
/// The stream ends when the subscription is closed or fails for good. Call
/// [`close`](Self::close) to stop fetching and commit what was acknowledged; dropping a
/// subscription without `close` is a crash as far as the broker knows: unacknowledged
/// messages are redelivered to the group, and on Kafka acknowledged-but-uncommitted
/// offsets may be redelivered too.
pub struct Subscription {
    stream: BoxStream<'static, Result<Delivery, SubscribeError>>,
    closer: Option<BoxFuture<'static, Result<(), SubscribeError>>>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// A subscription from a stream and the future that closes it gracefully; for adapters.
    ///
    /// The close future runs only if [`close`](Self::close) is called.
    pub fn new(
        stream: BoxStream<'static, Result<Delivery, SubscribeError>>,
        close: BoxFuture<'static, Result<(), SubscribeError>>,
    ) -> Self {
        Self {
            stream,
            closer: Some(close),
        }
    }

    /// Stops fetching, commits what was acknowledged and leaves the group.
    ///
    /// Deliveries already handed out may still be acked until they are dropped; acks that
    /// arrive after `close` returns are best effort.
    pub async fn close(mut self) -> Result<(), SubscribeError> {
        self.stream = Box::pin(futures::stream::empty());
        match self.closer.take() {
            Some(c) => c.await,
            None => Ok(()),
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Delivery, SubscribeError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

/// Subscribes consumer groups to topics.
///
/// * Delivery is **at-least-once**: a message is redelivered until acked. Handlers must
///   be idempotent or sit behind the dedupe middleware.
/// * Within a group, messages with the same key are delivered in publish order (Kafka:
///   partition; NATS: subject; memory: partition), as long as none is nacked; a nacked
///   message comes back later, after younger ones of its key may have been delivered
///   (use ordered retry where that matters).
/// * Each group receives every message; members of one group share them.
/// * `ack` and `nack` settle a delivery exactly once (both consume it).
///
/// # Examples
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::StreamExt;
/// use herald_core::{Message, Publisher, Subscriber, SubscribeSpec, memory::MemoryBroker};
/// let broker = MemoryBroker::new();
/// broker.publish("orders", vec![Message::new("hi")]).await?;
/// let mut sub = broker.subscribe(SubscribeSpec::new("orders", "g1")).await?;
/// let d = sub.next().await.expect("one message")?;
/// assert_eq!(&d.message.payload[..], b"hi");
/// d.ack().await?;
/// sub.close().await?;
/// # Ok(()) }
/// ```
pub trait Subscriber: Send + Sync {
    /// Joins `spec.group` on `spec.topic`.
    fn subscribe(&self, spec: SubscribeSpec)
    -> BoxFuture<'_, Result<Subscription, SubscribeError>>;
}

impl<S: Subscriber + ?Sized> Subscriber for Arc<S> {
    fn subscribe(
        &self,
        spec: SubscribeSpec,
    ) -> BoxFuture<'_, Result<Subscription, SubscribeError>> {
        (**self).subscribe(spec)
    }
}

/// The conventional dead-letter topic of `topic`: `<topic>.dlq`.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}
