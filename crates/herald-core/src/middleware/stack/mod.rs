//! [`Stack`]: the standard middleware, in the standard order, in one place.
//!
//! ```text
//! outermost                                                                     innermost
//! trace → metrics → dead_letter → [dedupe] → breaker → retry → timeout → catch_panic → handler
//! ```
//!
//! Each slot is optional; the builder puts whatever is set in this order, whatever
//! order the builder methods were called in. See the [middleware docs](super) for why
//! the order is what it is.
//!
//! * **trace** is outermost so that its process span covers everything the stack does
//!   for a delivery: the retry waits, the dead-letter publish, the log lines of every
//!   layer ([`trace`](super::trace)).
//! * **metrics** sits just inside it and sees one result per delivery. When it is set,
//!   the stack also places the metrics probes inside itself — one just inside the
//!   dead-letter layer, one just inside the retry layer — and counts the retry policy's
//!   decisions, so that failed attempts, retries and dead-lettered messages are counted
//!   where they happen ([`metrics`](super::metrics)). The probes only watch; policy stays
//!   in its layer. (With trace set, the probe inside the dead-letter layer also tells the
//!   trace layer, so a dead-lettered delivery's span is marked failed.)
//!
//! `Stack` is itself a [`tower::Layer`], so it composes with other layers: a layer
//! applied *after* the stack (further out in a `ServiceBuilder`, or wrapping
//! `stack.service(h)`) runs before the trace layer.
//!
//! # Examples
//! ```
//! use std::{sync::Arc, time::Duration};
//! use herald_core::{handler_fn, memory::MemoryBroker, Inbound, Router};
//! use herald_core::middleware::{Backoff, BreakerLayer, DeadLetterLayer, RetryLayer, Stack};
//! use herald_core::middleware::{metrics::MetricsLayer, trace::TraceLayer};
//!
//! let broker = MemoryBroker::new();
//! let stack = Stack::new()
//!     .trace(TraceLayer::new("memory"))
//!     .metrics(MetricsLayer::new())
//!     .dead_letter(DeadLetterLayer::new(Arc::new(broker.clone())))
//!     .breaker(BreakerLayer::default())
//!     .retry(RetryLayer::new(Backoff::default()))
//!     .timeout(Duration::from_secs(10));
//! let router = Router::new()
//!     .route("billing", "orders", "billing", stack.service(handler_fn(|_: Inbound| async { Ok(()) })))
//!     .route("audit", "orders", "audit", stack.service(handler_fn(|_: Inbound| async { Ok(()) })));
//! # let _ = router;
//! ```
//!
//! Each [`service`](Stack::service) call builds fresh services, so the two routes above
//! have a circuit breaker each, while the retry policy and the dead-letter publisher are
//! shared.
//!
//! Without a dead-letter layer nothing turns a spent failure into `Ok`: the router nacks
//! it with its default delay and the message comes back for as long as it fails. Set
//! one in every production stack.

use std::{fmt, time::Duration};

use tower::{layer::util::Identity, util::Either};
use tower_layer::Layer;

use super::{
    breaker::{Breaker, BreakerLayer},
    catch_panic::{CatchPanic, CatchPanicLayer},
    dead_letter::{DeadLetter, DeadLetterLayer},
    metrics::{
        Metrics, MetricsLayer,
        probe::{CountRetries, Probe, ProbeLayer, ProbePoint},
    },
    retry::{Retry, RetryLayer},
    timeout::{Timeout, TimeoutLayer},
    trace::{Trace, TraceLayer},
};

/// The handler with the catch-panic slot applied.
pub type CatchPanicSlot<S> = Either<CatchPanic<S>, S>;
/// [`CatchPanicSlot`] with the timeout slot applied.
pub type TimeoutSlot<S> = Either<Timeout<CatchPanicSlot<S>>, CatchPanicSlot<S>>;
/// [`TimeoutSlot`] with the attempt probe applied (set with the metrics slot).
pub type AttemptProbeSlot<S> = Either<Probe<TimeoutSlot<S>>, TimeoutSlot<S>>;
/// [`AttemptProbeSlot`] with the retry slot applied.
pub type RetrySlot<S> = Either<Retry<AttemptProbeSlot<S>>, AttemptProbeSlot<S>>;
/// [`RetrySlot`] with the breaker slot applied: what the dedupe layer wraps.
pub type BreakerSlot<S> = Either<Breaker<RetrySlot<S>>, RetrySlot<S>>;
/// [`BreakerSlot`] with the dedupe layer `D` applied.
pub type DedupeSlot<D, S> = <D as Layer<BreakerSlot<S>>>::Service;
/// [`DedupeSlot`] with the dead-letter probe applied (set with the dead-letter slot and
/// the metrics or trace slot).
pub type DeadLetterProbeSlot<D, S> = Either<Probe<DedupeSlot<D, S>>, DedupeSlot<D, S>>;
/// [`DeadLetterProbeSlot`] with the dead-letter slot applied.
pub type DeadLetterSlot<D, S> =
    Either<DeadLetter<DeadLetterProbeSlot<D, S>>, DeadLetterProbeSlot<D, S>>;
/// [`DeadLetterSlot`] with the metrics slot applied.
pub type MetricsSlot<D, S> = Either<Metrics<DeadLetterSlot<D, S>>, DeadLetterSlot<D, S>>;
/// The whole stack around a handler `S`, with dedupe layer `D`: [`MetricsSlot`] with the
/// trace slot applied.
pub type Stacked<D, S> = Either<Trace<MetricsSlot<D, S>>, MetricsSlot<D, S>>;

/// Builds the standard middleware stack; see the [module docs](self).
///
/// A new stack has only `catch_panic` on. Type parameter `D` is the dedupe slot:
/// [`Identity`] until [`dedupe`](Self::dedupe) sets a layer.
//
// To add a slot: add an `Option<…Layer>` field, a setter, a `…Slot<D, S>` alias wrapping
// whichever slot it sits outside of, and one more `option(...)` step at the right place
// in `Layer::layer` below.
#[derive(Clone)]
pub struct Stack<D = Identity> {
    trace: Option<TraceLayer>,
    metrics: Option<MetricsLayer>,
    dead_letter: Option<DeadLetterLayer>,
    dedupe: D,
    breaker: Option<BreakerLayer>,
    retry: Option<RetryLayer>,
    timeout: Option<TimeoutLayer>,
    catch_panic: bool,
}

impl Default for Stack {
    fn default() -> Self {
        Self::new()
    }
}

impl Stack {
    /// A stack with only panic isolation on.
    pub fn new() -> Self {
        Self {
            trace: None,
            metrics: None,
            dead_letter: None,
            dedupe: Identity::new(),
            breaker: None,
            retry: None,
            timeout: None,
            catch_panic: true,
        }
    }
}

impl<D> Stack<D> {
    /// Sets the trace layer (outermost): a process span per delivery with the remote
    /// parent from the message's headers ([`trace`](super::trace)).
    pub fn trace(mut self, layer: TraceLayer) -> Self {
        self.trace = Some(layer);
        self
    }

    /// Sets the metrics layer (inside trace, outside dead-letter), and with it the
    /// metrics probes inside the stack ([`metrics`](super::metrics)).
    pub fn metrics(mut self, layer: MetricsLayer) -> Self {
        self.metrics = Some(layer);
        self
    }

    /// Sets the dead-letter layer (inside trace and metrics).
    pub fn dead_letter(mut self, layer: DeadLetterLayer) -> Self {
        self.dead_letter = Some(layer);
        self
    }

    /// Puts `layer` in the dedupe slot, between dead-letter and breaker. Any
    /// [`tower::Layer`] whose service handles `Inbound` with `HandlerError` fits.
    ///
    /// # Examples
    /// ```
    /// use herald_core::{handler_fn, Inbound, middleware::{from_fn, Next, Stack}};
    /// let stack = Stack::new().dedupe(from_fn(|i: Inbound, next: Next| async move {
    ///     // look up i.message.id in a store …
    ///     next.run(i).await
    /// }));
    /// let handler = stack.service(handler_fn(|_: Inbound| async { Ok(()) }));
    /// # let _ = handler;
    /// ```
    pub fn dedupe<L>(self, layer: L) -> Stack<L> {
        Stack {
            trace: self.trace,
            metrics: self.metrics,
            dead_letter: self.dead_letter,
            dedupe: layer,
            breaker: self.breaker,
            retry: self.retry,
            timeout: self.timeout,
            catch_panic: self.catch_panic,
        }
    }

    /// Sets the circuit breaker. Every [`service`](Self::service) call gets its own
    /// circuit.
    pub fn breaker(mut self, layer: BreakerLayer) -> Self {
        self.breaker = Some(layer);
        self
    }

    /// Sets the retry layer.
    pub fn retry(mut self, layer: RetryLayer) -> Self {
        self.retry = Some(layer);
        self
    }

    /// Limits each attempt to `limit`.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(TimeoutLayer::new(limit));
        self
    }

    /// Turns panic isolation on or off (on by default).
    pub fn catch_panic(mut self, on: bool) -> Self {
        self.catch_panic = on;
        self
    }

    /// Wraps `handler` in the stack.
    pub fn service<S>(&self, handler: S) -> Stacked<D, S>
    where
        D: Layer<BreakerSlot<S>>,
    {
        self.layer(handler)
    }
}

fn option<L: Layer<S>, S>(layer: Option<&L>, inner: S) -> Either<L::Service, S> {
    match layer {
        Some(l) => Either::Left(l.layer(inner)),
        None => Either::Right(inner),
    }
}

impl<S, D> Layer<S> for Stack<D>
where
    D: Layer<BreakerSlot<S>>,
{
    type Service = Stacked<D, S>;

    fn layer(&self, handler: S) -> Self::Service {
        let metered = self.metrics.is_some();
        let s = option(self.catch_panic.then_some(&CatchPanicLayer::new()), handler);
        let s = option(self.timeout.as_ref(), s);
        let attempt_probe = ProbeLayer::new(ProbePoint::Attempt);
        let s = option(metered.then_some(&attempt_probe), s);
        let retry = match &self.retry {
            Some(r) if metered => Some(CountRetries::layer(r)),
            other => other.clone(),
        };
        let s = option(retry.as_ref(), s);
        let s = option(self.breaker.as_ref(), s);
        let s = self.dedupe.layer(s);
        let traced = self.trace.is_some();
        let dead_letter_probe = ProbeLayer::new(ProbePoint::DeadLetter)
            .metrics(metered)
            .trace(traced);
        let s = option(
            ((metered || traced) && self.dead_letter.is_some()).then_some(&dead_letter_probe),
            s,
        );
        let s = option(self.dead_letter.as_ref(), s);
        let s = option(self.metrics.as_ref(), s);
        option(self.trace.as_ref(), s)
    }
}

impl<D> fmt::Debug for Stack<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("trace", &self.trace)
            .field("metrics", &self.metrics)
            .field("dead_letter", &self.dead_letter)
            .field("dedupe", &std::any::type_name::<D>())
            .field("breaker", &self.breaker)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("catch_panic", &self.catch_panic)
            .finish()
    }
}
