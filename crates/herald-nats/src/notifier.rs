//! [`NatsNotifier`]: core-NATS (non-JetStream) notifications, **at most once**.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::Stream;
use herald_core::{Message, PublishError, PublishErrorKind, SubscribeError, SubscribeErrorKind};

use crate::{broker::Shared, mapping};

/// Publishes notifications with plain core NATS: no stream, no PubAck, no redelivery.
///
/// Use it for signals that are worthless once stale — cache invalidations, "something
/// changed, refresh" pings, live progress — never for facts a service must not miss.
///
/// * **At most once**: a notification reaches the listeners connected at that moment;
///   one published while a listener is disconnected, slow (the server drops messages for
///   slow consumers) or not yet subscribed is lost, and nothing tells the publisher.
/// * `notify` returns once the message is handed to the connection, not when anyone has
///   received it; [`flush`](Self::flush) waits until the server has it.
/// * Messages use the same subjects and headers as JetStream publishing
///   ([`crate::mapping`]): `<topic>.<key-token>`. Do not notify on a topic that has a
///   stream: the stream would store the notifications (without acknowledging them to
///   anyone).
///
/// # Examples
/// ```no_run
/// # async fn demo(broker: herald_nats::NatsBroker) -> Result<(), Box<dyn std::error::Error>> {
/// use futures::StreamExt;
/// use herald_core::Message;
/// let notifier = broker.notifier();
/// let mut listener = notifier.listen("cache.invalidate").await?;
/// notifier.notify("cache.invalidate", Message::new("user:42")).await?;
/// let note = listener.next().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsNotifier {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsNotifier").finish_non_exhaustive()
    }
}

fn map_publish_error(e: async_nats::PublishError) -> PublishError {
    let kind = match e.kind() {
        async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
            PublishErrorKind::MessageTooLarge
        }
        _ => PublishErrorKind::Connection,
    };
    PublishError::new(kind, e.to_string()).with_source(e)
}

impl NatsNotifier {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Sends one notification on `topic` (at most once).
    pub async fn notify(&self, topic: &str, message: Message) -> Result<(), PublishError> {
        mapping::validate_topic(topic)
            .map_err(|m| PublishError::new(PublishErrorKind::InvalidMessage, m))?;
        let out = mapping::outbound(topic, message)?;
        self.shared
            .client
            .publish_with_headers(out.subject, out.headers, out.payload)
            .await
            .map_err(map_publish_error)
    }

    /// Sends several notifications on `topic` (at most once each).
    pub async fn notify_all(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<(), PublishError> {
        for m in messages {
            self.notify(topic, m).await?;
        }
        Ok(())
    }

    /// Waits until the server has received everything sent so far.
    pub async fn flush(&self) -> Result<(), PublishError> {
        self.shared.client.flush().await.map_err(|e| {
            PublishError::new(PublishErrorKind::Connection, e.to_string()).with_source(e)
        })
    }

    /// Listens to the notifications of `topic` from now on. Every listener gets every
    /// notification (no groups, no acks).
    pub async fn listen(&self, topic: &str) -> Result<Notifications, SubscribeError> {
        mapping::validate_topic(topic)
            .map_err(|m| SubscribeError::new(SubscribeErrorKind::InvalidConfig, m))?;
        let sub = self
            .shared
            .client
            .subscribe(mapping::stream_subject(topic))
            .await
            .map_err(|e| {
                SubscribeError::new(SubscribeErrorKind::Connection, e.to_string()).with_source(e)
            })?;
        // Make sure the server has the interest before returning, so a notification sent
        // right after `listen` is seen.
        self.shared.client.flush().await.map_err(|e| {
            SubscribeError::new(SubscribeErrorKind::Connection, e.to_string()).with_source(e)
        })?;
        Ok(Notifications {
            sub,
            topic: topic.to_owned(),
        })
    }
}

/// The notifications of one topic; see [`NatsNotifier::listen`]. Dropping it unsubscribes.
pub struct Notifications {
    sub: async_nats::Subscriber,
    topic: String,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Stream for Notifications {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let this = &mut *self;
        Pin::new(&mut this.sub).poll_next(cx).map(|m| {
            m.map(|m| {
                mapping::inbound(
                    m.subject.as_str(),
                    m.headers.as_ref(),
                    m.payload,
                    &this.topic,
                    0,
                )
            })
        })
    }
}
