//! Metrics: counters, gauges and histograms through the [`metrics`] facade.
//!
//! herald records through the `metrics` crate's macros and installs no recorder: a
//! service picks its exporter (`metrics-exporter-prometheus`, an OpenTelemetry bridge, a
//! test's `DebuggingRecorder`) and everything herald records lands there. Without a
//! recorder, recording costs next to nothing.
//!
//! | piece | records |
//! |---|---|
//! | [`MetricsLayer`] / [`Metrics`] | deliveries by outcome, their duration, in-flight deliveries, dead-lettered messages |
//! | the [`Stack`](super::Stack)'s probes ([`probe`]) | failed handler attempts and retries, as they happen inside the stack |
//! | [`MeteredPublisher`] | published messages, failed publishes, publish duration |
//! | [`BreakerMetrics`] (a [`BreakerHook`](super::BreakerHook)) | circuit-breaker state changes and the current state |
//! | [`record_consumer_lag`] / [`record_consumer_pending`] | consumer lag, read by `herald-otel`'s `lag` module |
//! | the dedupe layer | its own `herald_dedupe_*` counters (see [`dedupe`](super::dedupe)) |
//!
//! # The metrics
//! Every delivery metric has the labels `handler`, `topic` and `group` of its route.
//!
//! | name | type | extra labels | what |
//! |---|---|---|---|
//! | `herald_handled_total` | counter | `outcome` | deliveries the stack finished, by [outcome](#outcomes) |
//! | `herald_handler_duration_seconds` | histogram | `outcome` | time from the stack taking a delivery to its result, in-process retries included |
//! | `herald_in_flight` | gauge | — | deliveries inside the stack now |
//! | `herald_failed_total` | counter | `class` | failed handler attempts (`transient`, `permanent`, `fatal`), timeouts and panics included |
//! | `herald_retried_total` | counter | `kind` | retries the retry layer scheduled: `immediate` (in process) or `redelivery` (nack with delay) |
//! | `herald_dead_lettered_total` | counter | `class` | failures the dead-letter layer took (published to the DLQ, or dropped by its policy) |
//! | `herald_breaker_state_changes_total` | counter | `from`, `to` | circuit-breaker transitions (`closed`, `open`, `half-open`) |
//! | `herald_breaker_state` | gauge | — | the circuit's state after its last change: 0 closed, 1 half-open, 2 open |
//! | `herald_published_total` | counter | `topic` only | messages the broker accepted |
//! | `herald_publish_failures_total` | counter | `topic`, `kind` | messages of failed publish calls, by [`PublishErrorKind`] |
//! | `herald_publish_duration_seconds` | histogram | `topic` only | how long publish calls took |
//! | `herald_consumer_lag` | gauge | `topic`, `group`, `partition` | Kafka: high watermark − committed offset |
//! | `herald_consumer_pending` | gauge | `stream`, `consumer` | NATS: `num_pending` + `num_ack_pending` |
//!
//! Duplicates the dedupe layer acknowledged are counted once, by that layer, as
//! `herald_dedupe_duplicates_total`; here they are deliveries with outcome `ok`.
//!
//! # Outcomes
//! | `outcome` | the delivery | the router then |
//! |---|---|---|
//! | `ok` | the handler succeeded (or dedupe acknowledged a duplicate) | acks |
//! | `dead_lettered` | failed for good and the dead-letter layer took it | acks |
//! | `redelivered` | middleware asked for a redelivery: a delayed retry, an open breaker, a key in progress, a failed DLQ publish | nacks with the delay |
//! | `error` | failed and nothing rewrote the error (no dead-letter layer) | nacks after 1 s |
//! | `fatal` | a fatal error | stops the consumer |
//!
//! # Where the counts come from
//! The [`Metrics`] service sits outside the dead-letter layer and sees one result per
//! delivery. Failed attempts, retries and dead-lettering happen *inside* the stack, so the
//! [`Stack`](super::Stack) puts two probes there when its metrics slot is set: one just
//! inside the retry layer (each call is one attempt), one just inside the dead-letter layer
//! (the failure the dead-letter layer is handed), and it counts the retry policy's
//! backoff decisions (the retry layer asks for exactly one delay per retry it schedules).
//! The policy itself is untouched: the probes only watch. A [`MetricsLayer`] used on its
//! own (without the stack) records the per-delivery metrics only.
//!
//! ```text
//! trace → metrics → dead_letter → ⟨probe: dead-lettered⟩ → dedupe → breaker
//!       → retry (⟨counts retries⟩) → ⟨probe: failed attempts⟩ → timeout → catch_panic → handler
//! ```
//!
//! # Examples
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use herald_core::{handler_fn, memory::MemoryBroker, Inbound};
//! use herald_core::middleware::{BreakerConfig, BreakerLayer, DeadLetterLayer, RetryLayer, Stack};
//! use herald_core::middleware::metrics::{BreakerMetrics, MeteredPublisher, MetricsLayer};
//!
//! let broker = MemoryBroker::new();
//! let publisher = Arc::new(MeteredPublisher::new(broker.clone()));
//! let stack = Stack::new()
//!     .metrics(MetricsLayer::new())
//!     .dead_letter(DeadLetterLayer::new(publisher.clone()))
//!     .breaker(BreakerLayer::new(BreakerConfig::default()).on_state_change(BreakerMetrics::new()))
//!     .retry(RetryLayer::default());
//! let handler = stack.service(handler_fn(|_: Inbound| async { Ok(()) }));
//! # let _ = handler;
//! # }
//! ```
//!
//! [`PublishErrorKind`]: crate::PublishErrorKind

mod breaker;
mod layer;
mod publisher;

pub mod probe;

use std::{
    fmt,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use metrics::Label;
use tower_service::Service;

pub use breaker::{BreakerMetrics, breaker_state_value};
pub use layer::MetricsLayer;
pub use publisher::{MeteredPublisher, publish_kind_label};

use crate::{ErrorClass, HandlerError, Inbound, RouteInfo};

/// Metric names, for dashboards and tests.
pub mod names {
    /// Deliveries the stack finished, by `outcome`.
    pub const HANDLED: &str = "herald_handled_total";
    /// Time from the stack taking a delivery to its result, by `outcome`.
    pub const HANDLER_DURATION: &str = "herald_handler_duration_seconds";
    /// Deliveries inside the stack now.
    pub const IN_FLIGHT: &str = "herald_in_flight";
    /// Failed handler attempts, by `class`.
    pub const FAILED: &str = "herald_failed_total";
    /// Retries the retry layer scheduled, by `kind` (`immediate`, `redelivery`).
    pub const RETRIED: &str = "herald_retried_total";
    /// Failures the dead-letter layer took, by `class`.
    pub const DEAD_LETTERED: &str = "herald_dead_lettered_total";
    /// Circuit-breaker transitions, by `from` and `to`.
    pub const BREAKER_STATE_CHANGES: &str = "herald_breaker_state_changes_total";
    /// The circuit's state: 0 closed, 1 half-open, 2 open.
    pub const BREAKER_STATE: &str = "herald_breaker_state";
    /// Messages the broker accepted, by `topic`.
    pub const PUBLISHED: &str = "herald_published_total";
    /// Messages of failed publish calls, by `topic` and `kind`.
    pub const PUBLISH_FAILURES: &str = "herald_publish_failures_total";
    /// How long publish calls took, by `topic`.
    pub const PUBLISH_DURATION: &str = "herald_publish_duration_seconds";
    /// Kafka consumer lag, by `topic`, `group`, `partition`.
    pub const CONSUMER_LAG: &str = "herald_consumer_lag";
    /// NATS consumer pending messages, by `stream`, `consumer`.
    pub const CONSUMER_PENDING: &str = "herald_consumer_pending";
    /// Duplicates acknowledged by the dedupe layer (recorded there, listed here for
    /// completeness).
    pub const DEDUPE_DUPLICATES: &str = super::super::dedupe::metric_names::DUPLICATES;
}

/// The outcome of one delivery, as the `outcome` label spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler succeeded (or a duplicate was acknowledged).
    Ok,
    /// The dead-letter layer took the failure.
    DeadLettered,
    /// Middleware asked for a redelivery.
    Redelivered,
    /// Failed, and nothing rewrote the error.
    Error,
    /// A fatal error.
    Fatal,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::DeadLettered => "dead_lettered",
            Self::Redelivered => "redelivered",
            Self::Error => "error",
            Self::Fatal => "fatal",
        }
    }

    /// The outcome of a delivery whose stack returned `result`, where `dead_lettered`
    /// says whether the dead-letter layer was handed a failure to take.
    pub fn of(result: &Result<(), HandlerError>, dead_lettered: bool) -> Self {
        match result {
            Ok(()) if dead_lettered => Self::DeadLettered,
            Ok(()) => Self::Ok,
            Err(e) if e.class() == ErrorClass::Fatal => Self::Fatal,
            Err(e) if e.redelivery().is_some() => Self::Redelivered,
            Err(_) => Self::Error,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `class` label value of an error class.
pub fn class_label(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Transient => "transient",
        ErrorClass::Permanent => "permanent",
        ErrorClass::Fatal => "fatal",
    }
}

/// The `handler`, `topic` and `group` labels of a route. The values are shared strings,
/// so cloning the labels does not allocate them again.
pub fn route_labels(route: &RouteInfo) -> Arc<[Label]> {
    let shared = |s: &str| metrics::SharedString::from(Arc::<str>::from(s));
    Arc::from(vec![
        Label::new("handler", shared(&route.handler)),
        Label::new("topic", shared(&route.topic)),
        Label::new("group", shared(&route.group)),
    ])
}

pub(crate) fn with_label(
    labels: &[Label],
    key: &'static str,
    value: impl Into<metrics::SharedString>,
) -> Vec<Label> {
    let mut v = Vec::with_capacity(labels.len() + 1);
    v.extend_from_slice(labels);
    v.push(Label::new(key, value));
    v
}

/// Sets `herald_consumer_lag{topic, group, partition}`: how many messages of a Kafka
/// partition the group has not committed yet.
pub fn record_consumer_lag(topic: &str, group: &str, partition: i32, lag: u64) {
    metrics::gauge!(
        names::CONSUMER_LAG,
        "topic" => topic.to_owned(),
        "group" => group.to_owned(),
        "partition" => partition.to_string()
    )
    .set(lag as f64);
}

/// Sets `herald_consumer_pending{stream, consumer}`: how many messages of a NATS stream
/// the consumer has not acknowledged yet (`num_pending` + `num_ack_pending`).
pub fn record_consumer_pending(stream: &str, consumer: &str, pending: u64) {
    metrics::gauge!(
        names::CONSUMER_PENDING,
        "stream" => stream.to_owned(),
        "consumer" => consumer.to_owned()
    )
    .set(pending as f64);
}

type CachedLabels = Option<(Arc<RouteInfo>, Arc<[Label]>)>;

/// Route labels computed once per route and shared by the clones of one service.
#[derive(Clone, Default)]
struct LabelCache(Arc<Mutex<CachedLabels>>);

impl LabelCache {
    fn get(&self, route: &Arc<RouteInfo>) -> Arc<[Label]> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((r, labels)) = &*slot
            && (Arc::ptr_eq(r, route) || **r == **route)
        {
            return labels.clone();
        }
        let labels = route_labels(route);
        *slot = Some((route.clone(), labels.clone()));
        labels
    }
}

/// Records per-delivery metrics around the inner service; see the [module docs](self).
#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
    labels: LabelCache,
}

impl<S> Metrics<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            labels: LabelCache::default(),
        }
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

impl<S: fmt::Debug> fmt::Debug for Metrics<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Takes one off the in-flight gauge when the delivery's future finishes or is dropped.
struct InFlight(metrics::Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl<S> Service<Inbound> for Metrics<S>
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
        let labels = self.labels.get(&inbound.route);
        let gauge = metrics::gauge!(names::IN_FLIGHT, labels.to_vec());
        gauge.increment(1.0);
        let in_flight = InFlight(gauge);
        let start = tokio::time::Instant::now();
        let fut = self.inner.call(inbound);
        Box::pin(async move {
            let (result, dead_letter) = probe::observe(labels.clone(), fut).await;
            let outcome = Outcome::of(&result, dead_letter.is_some());
            let with_outcome = with_label(&labels, "outcome", outcome.as_str());
            metrics::histogram!(names::HANDLER_DURATION, with_outcome.clone())
                .record(start.elapsed().as_secs_f64());
            metrics::counter!(names::HANDLED, with_outcome).increment(1);
            if let (Outcome::DeadLettered, Some(class)) = (outcome, dead_letter) {
                metrics::counter!(
                    names::DEAD_LETTERED,
                    with_label(&labels, "class", class_label(class))
                )
                .increment(1);
            }
            drop(in_flight);
            result
        })
    }
}
