//! [`Stack`]: the standard middleware, in the standard order, in one place.
//!
//! ```text
//! outermost                                                              innermost
//! dead_letter → [dedupe] → breaker → retry → timeout → catch_panic → handler
//! ```
//!
//! Each slot is optional; the builder puts whatever is set in this order, whatever
//! order the builder methods were called in. Tracing and metrics layers will sit
//! outside `dead_letter`. See the [middleware docs](super) for why the order is what it
//! is.
//!
//! `Stack` is itself a [`tower::Layer`], so it composes with other layers: a layer
//! applied *after* the stack (further out in a `ServiceBuilder`, or wrapping
//! `stack.service(h)`) runs before the dead-letter layer.
//!
//! # Examples
//! ```
//! use std::{sync::Arc, time::Duration};
//! use herald_core::{handler_fn, memory::MemoryBroker, Inbound, Router};
//! use herald_core::middleware::{Backoff, BreakerLayer, DeadLetterLayer, RetryLayer, Stack};
//!
//! let broker = MemoryBroker::new();
//! let stack = Stack::new()
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
    retry::{Retry, RetryLayer},
    timeout::{Timeout, TimeoutLayer},
};

/// The handler with the catch-panic slot applied.
pub type CatchPanicSlot<S> = Either<CatchPanic<S>, S>;
/// [`CatchPanicSlot`] with the timeout slot applied.
pub type TimeoutSlot<S> = Either<Timeout<CatchPanicSlot<S>>, CatchPanicSlot<S>>;
/// [`TimeoutSlot`] with the retry slot applied.
pub type RetrySlot<S> = Either<Retry<TimeoutSlot<S>>, TimeoutSlot<S>>;
/// [`RetrySlot`] with the breaker slot applied: what the dedupe layer wraps.
pub type BreakerSlot<S> = Either<Breaker<RetrySlot<S>>, RetrySlot<S>>;
/// [`BreakerSlot`] with the dedupe layer `D` applied.
pub type DedupeSlot<D, S> = <D as Layer<BreakerSlot<S>>>::Service;
/// The whole stack around a handler `S`, with dedupe layer `D`.
pub type Stacked<D, S> = Either<DeadLetter<DedupeSlot<D, S>>, DedupeSlot<D, S>>;

/// Builds the standard middleware stack; see the [module docs](self).
///
/// A new stack has only `catch_panic` on. Type parameter `D` is the dedupe slot:
/// [`Identity`] until [`dedupe`](Self::dedupe) sets a layer.
//
// To add a slot (tracing, metrics): add an `Option<…Layer>` field, a setter, a
// `…Slot<D, S>` alias wrapping `Stacked<D, S>` (or whichever slot it sits outside of),
// and one more `option(...)` step at the right place in `Layer::layer` below.
#[derive(Clone)]
pub struct Stack<D = Identity> {
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
    /// Sets the dead-letter layer (outermost).
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
        let s = option(self.catch_panic.then_some(&CatchPanicLayer::new()), handler);
        let s = option(self.timeout.as_ref(), s);
        let s = option(self.retry.as_ref(), s);
        let s = option(self.breaker.as_ref(), s);
        let s = self.dedupe.layer(s);
        option(self.dead_letter.as_ref(), s)
    }
}

impl<D> fmt::Debug for Stack<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("dead_letter", &self.dead_letter)
            .field("dedupe", &std::any::type_name::<D>())
            .field("breaker", &self.breaker)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("catch_panic", &self.catch_panic)
            .finish()
    }
}
