//! Probes: what the [`Stack`](crate::middleware::Stack) puts inside itself so that the
//! [`Metrics`](super::Metrics) and [`Trace`](crate::middleware::trace::Trace) layers
//! outside learn what happened within a delivery.
//!
//! The metrics layer opens a task-local scope around the rest of the stack; the probes
//! write into it:
//!
//! * a [`Probe`] at [`ProbePoint::Attempt`], just inside the retry layer, sees each
//!   handler attempt and counts the failed ones (`herald_failed_total`);
//! * a [`Probe`] at [`ProbePoint::DeadLetter`], just inside the dead-letter layer, notes
//!   whether the dead-letter layer was handed a failure to take (a non-fatal error that
//!   asks for no redelivery) — the metrics layer then counts `herald_dead_lettered_total`
//!   if the delivery ended `Ok`, and the trace layer marks the process span failed;
//! * [`CountRetries`] wraps the retry layer's [`RetryPolicy`] and counts each
//!   [`delay`](RetryPolicy::delay) the retry layer asks for — it asks exactly once per
//!   retry it schedules (`herald_retried_total`). Every decision is passed to the wrapped
//!   policy unchanged.
//!
//! Outside a metrics scope the probes do nothing but call through. They are public so
//! that the [`Stack`](crate::middleware::Stack)'s type aliases can name them; a
//! hand-built stack may place them the same way.

use std::{
    cell::Cell,
    fmt,
    future::Future,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use metrics::Label;
use tower_layer::Layer;
use tower_service::Service;

use super::{class_label, names, route_labels, with_label};
use crate::{
    ErrorClass, HandlerError, Inbound,
    middleware::{RetryLayer, RetryPolicy},
};

struct Scope {
    labels: Arc<[Label]>,
    dead_letter: Cell<Option<ErrorClass>>,
}

tokio::task_local! {
    static SCOPE: Scope;
}

/// Runs `fut` in a fresh scope; returns its output and the class of the failure the
/// dead-letter probe saw, if any.
pub(crate) async fn observe<F: Future>(
    labels: Arc<[Label]>,
    fut: F,
) -> (F::Output, Option<ErrorClass>) {
    let scope = Scope {
        labels,
        dead_letter: Cell::new(None),
    };
    SCOPE
        .scope(scope, async move {
            let out = fut.await;
            let dl = SCOPE.try_with(|s| s.dead_letter.get()).ok().flatten();
            (out, dl)
        })
        .await
}

fn scope_labels() -> Option<Arc<[Label]>> {
    SCOPE.try_with(|s| s.labels.clone()).ok()
}

/// Where a [`Probe`] sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProbePoint {
    /// Just inside the retry layer: every call is one handler attempt.
    Attempt,
    /// Just inside the dead-letter layer: sees the failure it is handed.
    DeadLetter,
}

/// Builds [`Probe`]s; see the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub struct ProbeLayer {
    point: ProbePoint,
    metrics: bool,
    trace: bool,
}

impl ProbeLayer {
    /// A layer placing probes at `point` that report to a metrics layer outside.
    pub fn new(point: ProbePoint) -> Self {
        Self {
            point,
            metrics: true,
            trace: false,
        }
    }

    /// Whether the probes report to a [`Metrics`](super::Metrics) layer outside them
    /// (default `true`).
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Whether a dead-letter probe also reports to a
    /// [`Trace`](crate::middleware::trace::Trace) layer outside it, which then marks the
    /// process span of a dead-lettered delivery as failed (default `false`).
    pub fn trace(mut self, on: bool) -> Self {
        self.trace = on;
        self
    }
}

impl<S> Layer<S> for ProbeLayer {
    type Service = Probe<S>;

    fn layer(&self, inner: S) -> Probe<S> {
        Probe {
            inner,
            config: *self,
        }
    }
}

/// Watches results inside the stack for the metrics and trace layers; see the
/// [module docs](self).
#[derive(Clone)]
pub struct Probe<S> {
    inner: S,
    config: ProbeLayer,
}

impl<S> Probe<S> {
    /// Where it sits.
    pub fn point(&self) -> ProbePoint {
        self.config.point
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Probe<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe")
            .field("config", &self.config)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S> Service<Inbound> for Probe<S>
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
        let config = self.config;
        let route = inbound.route.clone();
        let fut = self.inner.call(inbound);
        Box::pin(async move {
            let result = fut.await;
            match config.point {
                ProbePoint::Attempt if config.metrics => {
                    if let Err(e) = &result {
                        let labels = scope_labels().unwrap_or_else(|| route_labels(&route));
                        metrics::counter!(
                            names::FAILED,
                            with_label(&labels, "class", class_label(e.class()))
                        )
                        .increment(1);
                    }
                }
                ProbePoint::Attempt => {}
                ProbePoint::DeadLetter => {
                    let taken = match &result {
                        Err(e) if e.class() != ErrorClass::Fatal && e.redelivery().is_none() => {
                            Some(e)
                        }
                        _ => None,
                    };
                    if config.metrics {
                        let class = taken.map(HandlerError::class);
                        let _ = SCOPE.try_with(|s| s.dead_letter.set(class));
                    }
                    if config.trace
                        && let Some(e) = taken
                    {
                        crate::middleware::trace::note_dead_letter(e);
                    }
                }
            }
            result
        })
    }
}

/// A [`RetryPolicy`] that counts the retries the retry layer schedules and otherwise
/// defers to the policy it wraps; see the [module docs](self).
pub struct CountRetries {
    inner: Arc<dyn RetryPolicy>,
}

impl CountRetries {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn RetryPolicy>) -> Self {
        Self { inner }
    }

    /// A retry layer like `layer`, whose policy is wrapped in `CountRetries`.
    pub fn layer(layer: &RetryLayer) -> RetryLayer {
        RetryLayer::from_arc(Arc::new(Self::new(layer.policy().clone())))
    }
}

impl fmt::Debug for CountRetries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountRetries").finish_non_exhaustive()
    }
}

impl RetryPolicy for CountRetries {
    fn retries(&self, error: &HandlerError) -> bool {
        self.inner.retries(error)
    }

    fn immediate_attempts(&self) -> u32 {
        self.inner.immediate_attempts()
    }

    fn delayed_attempts(&self) -> u32 {
        self.inner.delayed_attempts()
    }

    fn delay(&self, n: u32) -> Duration {
        if let Some(labels) = scope_labels() {
            // Waits 1 .. immediate-1 separate in-process attempts; later ones are the
            // broker redeliveries (see `RetryPolicy`'s delay sequence).
            let kind = if n < self.inner.immediate_attempts().max(1) {
                "immediate"
            } else {
                "redelivery"
            };
            metrics::counter!(names::RETRIED, with_label(&labels, "kind", kind)).increment(1);
        }
        self.inner.delay(n)
    }
}
