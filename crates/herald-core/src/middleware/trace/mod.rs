//! Tracing: one span per publish and per delivery, linked across services.
//!
//! * [`TracingPublisher`] wraps a [`Publisher`](crate::Publisher): each `publish` call runs
//!   in a `publish {topic}` span (kind producer) whose context is injected into every
//!   message's `traceparent`/`tracestate` headers.
//! * [`TraceLayer`] builds [`Trace`]: each delivery runs in a `process {topic}` span (kind
//!   consumer) whose parent is the context extracted from the message's headers, so the
//!   consumer's work continues the producer's trace.
//!
//! Both follow the OpenTelemetry messaging semantic conventions. The span attributes are
//! `tracing` fields, which `tracing-opentelemetry` turns into OpenTelemetry attributes
//! (`otel.name`, `otel.kind` and `otel.status_code` are its special fields):
//!
//! | field | process span | publish span |
//! |---|---|---|
//! | `messaging.system` | the layer's system | the publisher's system |
//! | `messaging.operation.type` / `.name` | `process` | `publish` |
//! | `messaging.destination.name` | the topic | the topic |
//! | `messaging.consumer.group.name` | the route's group | — |
//! | `messaging.message.id` | the message id | the message id (single-message publish) |
//! | `messaging.batch.message_count` | — | the batch size (batches of 2 or more) |
//! | `messaging.message.conversation_id` | the `correlation-id` header | — |
//! | `messaging.message.body.size` | payload bytes | — |
//! | `messaging.destination.partition.id` | [`Origin`](crate::Origin)'s `partition` | — |
//! | `messaging.kafka.offset` | `offset`, when the system is `kafka` | — |
//! | `herald.offset` / `herald.sequence` | `offset` (other systems) / `sequence` (NATS) | — |
//! | `herald.handler` | the route's handler name | — |
//! | `herald.attempt` | the broker's delivery attempt (1, 2, …) | — |
//! | `herald.outcome` | `ok`, `dead_lettered`, `redelivered`, `error`, `fatal` | `ok`, `error` |
//! | `error.type` | the error class on failure | the publish error kind on failure |
//!
//! A delivery that failed is marked as an error (`otel.status_code` = `ERROR`, with the
//! error's message) even when the dead-letter layer turned it into an acknowledgement:
//! its outcome is then `dead_lettered` (the [`Stack`](super::Stack) puts a probe inside
//! the dead-letter layer that tells the trace layer).
//!
//! # One trace from producer to replay
//! ```text
//! service A: publish orders ───────────────────────────────────────────┐ traceparent
//! service B:   └ process orders (attempt 1) ✗ redeliver               │ (remote parent)
//!              └ process orders (attempt 2) ✗ spent                    │
//!                  └ publish orders.dlq   (DLQ message keeps A's traceparent)
//! replay:      └ publish orders           (parent: the message's context)
//! service B:   └ process orders (attempt 1) ✓
//! ```
//! A message that already carries a trace context keeps it: the creation context of a
//! message is not overwritten when it is republished (dead-lettered, replayed, relayed
//! from an outbox). The publish span then *links* to that context, and when it has no
//! parent of its own (a replay tool outside any span) and publishes one message, takes
//! the message's context as its parent, so the republish joins the original trace.
//! [`TracingPublisher::replace_context`] turns this off.
//!
//! Put the trace layer outermost, so the process span covers every other layer — the
//! retry waits, the dead-letter publish (a child of the process span) — and the log lines
//! of every layer carry its fields. The [`Stack`](super::Stack)'s trace slot does that.
//!
//! # Logs
//! The layer emits structured events inside the process span: `debug` when a delivery
//! arrives and when it succeeds, `info` when a redelivery is requested, `warn` for a
//! failure, `error` for a fatal one. They carry ids, names, attempt numbers, the outcome
//! and the error — **never payloads, keys or header values** unless payload logging is
//! turned on ([`TraceLayer::log_payloads`]).
//!
//! # Examples
//! ```
//! use std::sync::Arc;
//! use herald_core::{handler_fn, memory::MemoryBroker, Inbound, Router};
//! use herald_core::middleware::{DeadLetterLayer, Stack};
//! use herald_core::middleware::trace::{TraceLayer, TracingPublisher};
//!
//! let broker = MemoryBroker::new();
//! // Everything this service publishes — its own messages and dead letters — is traced.
//! let publisher = Arc::new(TracingPublisher::new(broker.clone(), "memory"));
//! let stack = Stack::new()
//!     .trace(TraceLayer::new("memory"))
//!     .dead_letter(DeadLetterLayer::new(publisher.clone()));
//! let router = Router::new().route("billing", "orders", "billing",
//!     stack.service(handler_fn(|_: Inbound| async { Ok(()) })));
//! # let _ = router;
//! ```

mod layer;
mod publisher;

use std::{
    cell::RefCell,
    fmt,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tower_service::Service;
use tracing::{Instrument, Span, field};

pub use layer::{DEFAULT_PAYLOAD_LOG_LIMIT, TraceLayer};
pub use publisher::TracingPublisher;

use crate::{ErrorClass, HandlerError, Inbound, message::names};

/// The `process {topic}` span of a delivery, with every attribute of the
/// [module docs](self) that is known before handling. It has no parent yet: a
/// [`Propagator`](crate::propagation::Propagator) sets the remote one.
pub fn process_span(system: &str, inbound: &Inbound) -> Span {
    let message = &inbound.message;
    let span = tracing::info_span!(
        parent: None,
        "process",
        otel.name = %format_args!("process {}", inbound.origin.topic),
        otel.kind = "consumer",
        otel.status_code = field::Empty,
        otel.status_description = field::Empty,
        messaging.system = %system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %inbound.origin.topic,
        messaging.consumer.group.name = %inbound.route.group,
        messaging.message.id = %message.id,
        messaging.message.conversation_id = field::Empty,
        messaging.message.body.size = message.payload.len() as i64,
        messaging.destination.partition.id = field::Empty,
        messaging.kafka.offset = field::Empty,
        herald.offset = field::Empty,
        herald.sequence = field::Empty,
        herald.handler = %inbound.route.handler,
        herald.attempt = i64::from(inbound.attempt),
        herald.outcome = field::Empty,
        error.type = field::Empty,
    );
    if let Some(c) = message.header(names::CORRELATION_ID) {
        span.record("messaging.message.conversation_id", c);
    }
    for (name, value) in &inbound.origin.position {
        match *name {
            "partition" => {
                span.record("messaging.destination.partition.id", field::display(value));
            }
            "offset" if system == "kafka" => {
                span.record("messaging.kafka.offset", value);
            }
            "offset" => {
                span.record("herald.offset", value);
            }
            "sequence" => {
                span.record("herald.sequence", value);
            }
            _ => {}
        }
    }
    span
}

tokio::task_local! {
    static DEAD_LETTERED: RefCell<Option<HandlerError>>;
}

/// Notes, for the trace layer around it, that the dead-letter layer was handed `error` to
/// take. Called by the [`Stack`](super::Stack)'s dead-letter probe; does nothing outside a
/// trace layer.
pub(crate) fn note_dead_letter(error: &HandlerError) {
    let _ = DEAD_LETTERED.try_with(|c| *c.borrow_mut() = Some(error.clone()));
}

fn outcome_of(result: &Result<(), HandlerError>, dead_lettered: bool) -> &'static str {
    match result {
        Ok(()) if dead_lettered => "dead_lettered",
        Ok(()) => "ok",
        Err(e) if e.class() == ErrorClass::Fatal => "fatal",
        Err(e) if e.redelivery().is_some() => "redelivered",
        Err(_) => "error",
    }
}

/// Runs each delivery in a process span with the remote parent from its headers; see the
/// [module docs](self).
#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    config: TraceLayer,
}

impl<S> Trace<S> {
    /// Wraps `inner` with the settings of `layer`.
    pub fn new(inner: S, layer: TraceLayer) -> Self {
        Self {
            inner,
            config: layer,
        }
    }

    /// The settings.
    pub fn config(&self) -> &TraceLayer {
        &self.config
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

impl<S: fmt::Debug> fmt::Debug for Trace<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trace")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S> Service<Inbound> for Trace<S>
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
        let span = process_span(&self.config.system, &inbound);
        // The parent must be set before the span is first entered.
        self.config
            .resolved_propagator()
            .extract(&inbound.message.headers, &span);
        tracing::debug!(parent: &span, "message received");
        if let Some(limit) = self.config.payload_limit {
            let payload = &inbound.message.payload;
            let shown = &payload[..payload.len().min(limit)];
            tracing::debug!(
                parent: &span,
                payload = %String::from_utf8_lossy(shown),
                payload_len = payload.len(),
                truncated = payload.len() > limit,
                "message payload"
            );
        }
        let fut = span.in_scope(|| self.inner.call(inbound));
        let start = tokio::time::Instant::now();
        Box::pin(async move {
            let (result, dead_lettered) = DEAD_LETTERED
                .scope(RefCell::new(None), async {
                    let result = fut.instrument(span.clone()).await;
                    let dl = DEAD_LETTERED.with(|c| c.borrow_mut().take());
                    (result, dl)
                })
                .await;
            let outcome = outcome_of(&result, dead_lettered.is_some());
            span.record("herald.outcome", outcome);
            let elapsed_ms = start.elapsed().as_secs_f64() * 1e3;
            match (&result, dead_lettered) {
                (Ok(()), Some(e)) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_description", e.message());
                    span.record("error.type", e.class().to_string());
                    tracing::debug!(parent: &span, error = %e, elapsed_ms, "message dead-lettered");
                }
                (Ok(()), None) => tracing::debug!(parent: &span, elapsed_ms, "message handled"),
                (Err(e), _) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_description", e.message());
                    span.record("error.type", e.class().to_string());
                    let class = e.class();
                    match (class, e.redelivery()) {
                        (ErrorClass::Fatal, _) => {
                            tracing::error!(parent: &span, error = %e, elapsed_ms, "fatal handler error")
                        }
                        (_, Some(delay)) => tracing::info!(
                            parent: &span, error = %e, ?delay, elapsed_ms, "redelivery requested"
                        ),
                        (_, None) => {
                            tracing::warn!(parent: &span, error = %e, %class, elapsed_ms, "handling failed")
                        }
                    }
                }
            }
            result
        })
    }
}
