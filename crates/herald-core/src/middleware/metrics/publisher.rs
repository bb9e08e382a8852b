//! [`MeteredPublisher`]: publish metrics.

use std::fmt;

use futures::future::BoxFuture;

use super::names;
use crate::{Message, PublishError, PublishErrorKind, Publisher};

/// The `kind` label value of a publish error kind: `timeout`, `message_too_large`,
/// `unknown_topic`, `unauthorized`, `connection`, `invalid_message`, `closed`, `other`.
pub fn publish_kind_label(kind: PublishErrorKind) -> &'static str {
    match kind {
        PublishErrorKind::Timeout => "timeout",
        PublishErrorKind::MessageTooLarge => "message_too_large",
        PublishErrorKind::UnknownTopic => "unknown_topic",
        PublishErrorKind::Unauthorized => "unauthorized",
        PublishErrorKind::Connection => "connection",
        PublishErrorKind::InvalidMessage => "invalid_message",
        PublishErrorKind::Closed => "closed",
        _ => "other",
    }
}

/// A [`Publisher`] that records `herald_published_total{topic}`,
/// `herald_publish_failures_total{topic, kind}` and
/// `herald_publish_duration_seconds{topic}` around another one.
///
/// A failed call counts every message of its batch as failed: a batch is not atomic and
/// the transport does not say which messages made it (see [`Publisher`]).
///
/// Wrap the publisher a service uses and the one its dead-letter layer uses; combine it
/// with [`TracingPublisher`](crate::middleware::trace::TracingPublisher) in either order.
///
/// # Examples
/// ```
/// # async fn demo() -> Result<(), herald_core::PublishError> {
/// use herald_core::{Message, Publisher, memory::MemoryBroker, middleware::metrics::MeteredPublisher};
/// let publisher = MeteredPublisher::new(MemoryBroker::new());
/// publisher.publish("orders", vec![Message::new("x")]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MeteredPublisher<P> {
    inner: P,
}

impl<P> MeteredPublisher<P> {
    /// Wraps `inner`.
    pub fn new(inner: P) -> Self {
        Self { inner }
    }

    /// The inner publisher.
    pub fn get_ref(&self) -> &P {
        &self.inner
    }

    /// Unwraps the inner publisher.
    pub fn into_inner(self) -> P {
        self.inner
    }
}

impl<P: fmt::Debug> fmt::Debug for MeteredPublisher<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeteredPublisher")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<P: Publisher> Publisher for MeteredPublisher<P> {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        let n = messages.len() as u64;
        let start = tokio::time::Instant::now();
        let fut = self.inner.publish(topic, messages);
        Box::pin(async move {
            let result = fut.await;
            metrics::histogram!(names::PUBLISH_DURATION, "topic" => topic.to_owned())
                .record(start.elapsed().as_secs_f64());
            match &result {
                Ok(()) => {
                    metrics::counter!(names::PUBLISHED, "topic" => topic.to_owned()).increment(n)
                }
                Err(e) => metrics::counter!(
                    names::PUBLISH_FAILURES,
                    "topic" => topic.to_owned(),
                    "kind" => publish_kind_label(e.kind())
                )
                .increment(n),
            }
            result
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        self.inner.close()
    }
}
