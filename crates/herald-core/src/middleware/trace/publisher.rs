//! [`TracingPublisher`]: the publish span and the injected trace context.

use std::{borrow::Cow, fmt, sync::Arc};

use futures::future::BoxFuture;
use tracing::{Instrument, Span, field};

use crate::{
    Message, PublishError, Publisher,
    propagation::{Propagator, global_propagator, has_trace_context},
};

/// A [`Publisher`] that runs each `publish` call in a `publish {topic}` span and injects
/// that span's context into the messages; see the [module docs](super).
///
/// * A message without trace context gets the publish span's `traceparent` (and
///   `tracestate`).
/// * A message that already carries one keeps it (it is its creation context: a dead
///   letter, a replay, an outbox relay); the publish span links to it and, when the span
///   has no parent of its own and the batch is that one message, takes it as its parent.
///   [`replace_context`](Self::replace_context) makes every message get the publish
///   span's context instead.
///
/// # Examples
/// ```
/// # async fn demo() -> Result<(), herald_core::PublishError> {
/// use herald_core::{Message, Publisher, memory::MemoryBroker, middleware::trace::TracingPublisher};
/// let publisher = TracingPublisher::new(MemoryBroker::new(), "memory");
/// publisher.publish("orders", vec![Message::new("x")]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TracingPublisher<P> {
    inner: P,
    system: Cow<'static, str>,
    propagator: Option<Arc<dyn Propagator>>,
    replace: bool,
}

impl<P> TracingPublisher<P> {
    /// Wraps `inner`, a publisher of the messaging system `system` (`kafka`, `nats`,
    /// `memory`, …).
    pub fn new(inner: P, system: impl Into<Cow<'static, str>>) -> Self {
        Self {
            inner,
            system: system.into(),
            propagator: None,
            replace: false,
        }
    }

    /// Uses `propagator` instead of the [global one](crate::propagation::global_propagator).
    pub fn propagator(mut self, propagator: Arc<dyn Propagator>) -> Self {
        self.propagator = Some(propagator);
        self
    }

    /// Whether a trace context a message already carries is replaced by the publish
    /// span's (default `false`: it is kept).
    pub fn replace_context(mut self, replace: bool) -> Self {
        self.replace = replace;
        self
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

impl<P: fmt::Debug> fmt::Debug for TracingPublisher<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracingPublisher")
            .field("inner", &self.inner)
            .field("system", &self.system)
            .field("own_propagator", &self.propagator.is_some())
            .field("replace_context", &self.replace)
            .finish()
    }
}

/// The `publish {topic}` span for a batch of `messages`.
pub(crate) fn publish_span(system: &str, topic: &str, messages: &[Message]) -> Span {
    let span = tracing::info_span!(
        "publish",
        otel.name = %format_args!("publish {topic}"),
        otel.kind = "producer",
        otel.status_code = field::Empty,
        otel.status_description = field::Empty,
        messaging.system = %system,
        messaging.operation.type = "publish",
        messaging.operation.name = "publish",
        messaging.destination.name = %topic,
        messaging.message.id = field::Empty,
        messaging.batch.message_count = field::Empty,
        herald.outcome = field::Empty,
        error.type = field::Empty,
    );
    match messages {
        [one] => {
            span.record("messaging.message.id", one.id.as_str());
        }
        many => {
            span.record("messaging.batch.message_count", many.len() as i64);
        }
    }
    span
}

impl<P: Publisher> Publisher for TracingPublisher<P> {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        mut messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        let propagator = self.propagator.clone().unwrap_or_else(global_propagator);
        let span = publish_span(&self.system, topic, &messages);
        if !self.replace {
            if let [one] = messages.as_slice()
                && has_trace_context(&one.headers)
                && Span::current().is_none()
            {
                propagator.extract(&one.headers, &span);
            }
            for m in messages.iter().filter(|m| has_trace_context(&m.headers)) {
                propagator.link(&m.headers, &span);
            }
        }
        for m in &mut messages {
            if self.replace || !has_trace_context(&m.headers) {
                propagator.inject(&span, &mut m.headers);
            }
        }
        let n = messages.len();
        let fut = span.in_scope(|| self.inner.publish(topic, messages));
        Box::pin(async move {
            let result = fut.instrument(span.clone()).await;
            match &result {
                Ok(()) => {
                    span.record("herald.outcome", "ok");
                    tracing::debug!(parent: &span, messages = n, "published");
                }
                Err(e) => {
                    span.record("herald.outcome", "error");
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_description", e.to_string());
                    span.record(
                        "error.type",
                        crate::middleware::metrics::publish_kind_label(e.kind()),
                    );
                    tracing::debug!(parent: &span, messages = n, error = %e, "publish failed");
                }
            }
            result
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        self.inner.close()
    }
}
