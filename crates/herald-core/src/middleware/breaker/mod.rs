//! Circuit breaker: stop calling a handler whose dependency is down.
//!
//! One circuit per handler: every service a [`BreakerLayer`] builds has its own, and the
//! clones of that service (the router's lanes) share it.
//!
//! ```text
//!            N consecutive failures                open_for elapsed
//!  ┌────────┐ ────────────────────► ┌──────┐ ─────────────────────► ┌───────────┐
//!  │ Closed │                       │ Open │                        │ Half-open │
//!  └────────┘ ◄──────┐              └──────┘ ◄───────────────────── └───────────┘
//!        ▲           │                          a trial fails            │
//!        │           └───────────────────────────────────────────────────┘
//!        │                              a trial succeeds
//! ```
//!
//! * **Closed** — calls go through. A failure adds one to a counter, a success resets
//!   it; [`failure_threshold`](BreakerConfig::failure_threshold) *consecutive* failures
//!   open the circuit. (Consecutive failures, not a failure ratio over a window: a
//!   consumer works through a backlog in bursts, and "the last N messages all failed" is
//!   the clearest signal that a dependency, not a message, is broken.)
//! * **Open** — the handler is **not** called. The breaker returns a
//!   [`Transient`](crate::ErrorClass::Transient) error with
//!   [`redeliver_after`](HandlerError::redeliver_after) set to the open time left, so the
//!   router nacks and the broker redelivers the message after the circuit's interval —
//!   it is never dead-lettered for it. After [`open_for`](BreakerConfig::open_for) the
//!   next call moves the circuit to half-open.
//! * **Half-open** — up to [`half_open_trials`](BreakerConfig::half_open_trials) calls
//!   run as trials; others are turned away with
//!   [`half_open_wait`](BreakerConfig::half_open_wait). The first trial to succeed closes
//!   the circuit, the first to fail opens it again for another `open_for`.
//!
//! A **failure** is a [`Transient`](crate::ErrorClass::Transient) error — including the
//! one the retry layer inside returns when a delivery's attempts are spent. A
//! [`Permanent`](crate::ErrorClass::Permanent) error (a bad message) or a
//! [`Fatal`](crate::ErrorClass::Fatal) one says nothing about the dependency: it neither
//! counts nor resets (a trial that ends so frees its slot for another trial). Results of
//! calls that started before the last state change are ignored, so a slow call from the
//! closed period cannot re-open or close a circuit that has moved on.
//!
//! A turned-away message counts as a broker delivery like any other redelivery, so
//! give the retry layer enough [`delayed_attempts`](super::RetryPolicy::delayed_attempts)
//! to outlast an outage of a few open intervals.
//!
//! Read the state with [`Breaker::state`] or a [`BreakerHandle`]; watch the changes with
//! a [`BreakerHook`].
//!
//! # Examples
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::{sync::Arc, time::Duration};
//! use herald_core::{handler_fn, HandlerError, Inbound, Message, Origin, RouteInfo};
//! use herald_core::middleware::{BreakerConfig, BreakerLayer, BreakerState};
//! use tower::{Layer, ServiceExt};
//!
//! let handler = BreakerLayer::new(BreakerConfig { failure_threshold: 2, ..Default::default() })
//!     .layer(handler_fn(|_: Inbound| async { Err::<(), _>(HandlerError::transient("db down")) }));
//! let route = Arc::new(RouteInfo { handler: "h".into(), topic: "t".into(), group: "g".into() });
//! let msg = || Inbound::new(Message::new("x"), Origin::new("t"), 1, route.clone());
//! handler.clone().oneshot(msg()).await.unwrap_err();
//! handler.clone().oneshot(msg()).await.unwrap_err();
//! assert_eq!(handler.state(), BreakerState::Open);
//! let turned_away = handler.clone().oneshot(msg()).await.unwrap_err();
//! assert_eq!(turned_away.redelivery(), Some(Duration::from_secs(30)));
//! # }
//! ```

mod layer;

pub mod error;

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower_service::Service;

pub use layer::{BreakerConfig, BreakerLayer};

use self::error::Rejected;
use crate::{ErrorClass, HandlerError, Inbound, RouteInfo};

/// The state of a circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are turned away and redelivered later.
    Open,
    /// A limited number of trial calls go through.
    HalfOpen,
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        })
    }
}

/// Watches state changes (for metrics, logs, alerts).
///
/// Called after the change, outside the breaker's lock, on the task whose call caused it
/// (the move to half-open happens on the first call after the open interval, not on a
/// timer). Keep it quick. A closure `Fn(&RouteInfo, BreakerState, BreakerState)`
/// implements it.
pub trait BreakerHook: Send + Sync {
    /// The circuit of `route`'s handler went from `from` to `to`. Does nothing by default.
    fn on_state_change(&self, route: &RouteInfo, from: BreakerState, to: BreakerState) {
        let _ = (route, from, to);
    }
}

/// The hook that does nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultBreakerHook;

impl BreakerHook for DefaultBreakerHook {}

impl<F> BreakerHook for F
where
    F: Fn(&RouteInfo, BreakerState, BreakerState) + Send + Sync,
{
    fn on_state_change(&self, route: &RouteInfo, from: BreakerState, to: BreakerState) {
        self(route, from, to)
    }
}

#[derive(Clone, Copy, Debug)]
enum Circuit {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trials: u32 },
}

impl Circuit {
    fn state(&self) -> BreakerState {
        match self {
            Self::Closed { .. } => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

struct Machine {
    circuit: Circuit,
    /// Bumped at every state change; a result counts only in the generation it began in.
    generation: u64,
}

struct Shared {
    config: BreakerConfig,
    hook: Arc<dyn BreakerHook>,
    machine: Mutex<Machine>,
}

type Change = Option<(BreakerState, BreakerState)>;

enum Admission {
    Call { generation: u64, trial: bool },
    Reject(Rejected),
}

#[derive(Clone, Copy)]
enum Outcome {
    Success,
    Failure,
    Neutral,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Machine> {
        // Every update is a single assignment, so a poisoned lock holds a valid state.
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(m: &mut Machine, to: Circuit) -> Change {
        let from = m.circuit.state();
        m.circuit = to;
        m.generation += 1;
        Some((from, to.state()))
    }

    fn notify(&self, route: &RouteInfo, change: Change) {
        if let Some((from, to)) = change
            && from != to
        {
            match to {
                BreakerState::Open => {
                    tracing::warn!(handler = %route.handler, %from, %to, "circuit breaker opened")
                }
                _ => tracing::info!(handler = %route.handler, %from, %to, "circuit breaker"),
            }
            self.hook.on_state_change(route, from, to);
        }
    }

    fn admit(&self, route: &RouteInfo) -> Admission {
        let now = Instant::now();
        let (admission, change) = {
            let mut m = self.lock();
            let mut change = None;
            if let Circuit::Open { until } = m.circuit
                && now >= until
            {
                change = Self::set(&mut m, Circuit::HalfOpen { trials: 0 });
            }
            let generation = m.generation;
            let admission = match &mut m.circuit {
                Circuit::Closed { .. } => Admission::Call {
                    generation,
                    trial: false,
                },
                Circuit::Open { until } => {
                    Admission::Reject(Rejected::new(BreakerState::Open, *until - now))
                }
                Circuit::HalfOpen { trials } if *trials < self.config.half_open_trials.max(1) => {
                    *trials += 1;
                    Admission::Call {
                        generation,
                        trial: true,
                    }
                }
                Circuit::HalfOpen { .. } => Admission::Reject(Rejected::new(
                    BreakerState::HalfOpen,
                    self.config.half_open_wait,
                )),
            };
            (admission, change)
        };
        self.notify(route, change);
        admission
    }

    fn complete(&self, route: &RouteInfo, generation: u64, trial: bool, outcome: Outcome) {
        let change = {
            let mut m = self.lock();
            if m.generation != generation {
                return;
            }
            let reopen = Circuit::Open {
                until: Instant::now() + self.config.open_for,
            };
            match (&mut m.circuit, outcome) {
                (Circuit::Closed { failures }, Outcome::Success) => {
                    *failures = 0;
                    None
                }
                (Circuit::Closed { failures }, Outcome::Failure) => {
                    *failures += 1;
                    if *failures >= self.config.failure_threshold.max(1) {
                        Self::set(&mut m, reopen)
                    } else {
                        None
                    }
                }
                (Circuit::HalfOpen { .. }, Outcome::Success) if trial => {
                    Self::set(&mut m, Circuit::Closed { failures: 0 })
                }
                (Circuit::HalfOpen { .. }, Outcome::Failure) if trial => Self::set(&mut m, reopen),
                (Circuit::HalfOpen { trials }, Outcome::Neutral) if trial => {
                    *trials = trials.saturating_sub(1);
                    None
                }
                _ => None,
            }
        };
        self.notify(route, change);
    }
}

/// Reads a circuit's state from outside the service (metrics, health checks).
#[derive(Clone)]
pub struct BreakerHandle {
    shared: Arc<Shared>,
}

impl BreakerHandle {
    /// The state now. An open circuit whose interval has passed reads `Open` until the
    /// next call moves it to half-open.
    pub fn state(&self) -> BreakerState {
        self.shared.lock().circuit.state()
    }

    /// Consecutive failures counted while closed (0 otherwise).
    pub fn consecutive_failures(&self) -> u32 {
        match self.shared.lock().circuit {
            Circuit::Closed { failures } => failures,
            _ => 0,
        }
    }
}

impl fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerHandle")
            .field("state", &self.state())
            .finish()
    }
}

/// A circuit breaker around a handler; see the [module docs](self).
#[derive(Clone)]
pub struct Breaker<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Breaker<S> {
    /// Wraps `inner` in a new, closed circuit.
    pub fn new(inner: S, config: BreakerConfig) -> Self {
        Self::with_hook(inner, config, Arc::new(DefaultBreakerHook))
    }

    /// Wraps `inner` in a new, closed circuit watched by `hook`.
    pub fn with_hook(inner: S, config: BreakerConfig, hook: Arc<dyn BreakerHook>) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                config,
                hook,
                machine: Mutex::new(Machine {
                    circuit: Circuit::Closed { failures: 0 },
                    generation: 0,
                }),
            }),
        }
    }

    /// The circuit's state now.
    pub fn state(&self) -> BreakerState {
        self.handle().state()
    }

    /// A handle that reads the state of this circuit (shared with every clone).
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            shared: self.shared.clone(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.shared.config
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

impl<S: fmt::Debug> fmt::Debug for Breaker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("inner", &self.inner)
            .field("state", &self.state())
            .field("config", &self.shared.config)
            .finish()
    }
}

/// Completes a trial as neutral if its future is dropped before it finished, so a
/// cancelled trial does not hold its slot forever.
struct TrialGuard {
    shared: Arc<Shared>,
    route: Arc<RouteInfo>,
    generation: u64,
    trial: bool,
    done: bool,
}

impl TrialGuard {
    fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.shared
            .complete(&self.route, self.generation, self.trial, outcome);
    }
}

impl Drop for TrialGuard {
    fn drop(&mut self) {
        if !self.done && self.trial {
            self.shared
                .complete(&self.route, self.generation, true, Outcome::Neutral);
        }
    }
}

impl<S> Service<Inbound> for Breaker<S>
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
        let route = inbound.route.clone();
        let (generation, trial) = match self.shared.admit(&route) {
            Admission::Call { generation, trial } => (generation, trial),
            Admission::Reject(rejected) => {
                let wait: Duration = rejected.retry_after();
                let err =
                    HandlerError::from_error(ErrorClass::Transient, rejected).redeliver_after(wait);
                return Box::pin(std::future::ready(Err(err)));
            }
        };
        let guard = TrialGuard {
            shared: self.shared.clone(),
            route,
            generation,
            trial,
            done: false,
        };
        let fut = self.inner.call(inbound);
        Box::pin(async move {
            let result = fut.await;
            let outcome = match &result {
                Ok(()) => Outcome::Success,
                Err(e) if e.class() == ErrorClass::Transient => Outcome::Failure,
                Err(_) => Outcome::Neutral,
            };
            guard.finish(outcome);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::ServiceExt;

    use super::*;
    use crate::{Message, Origin, handler_fn};

    fn inbound() -> Inbound {
        let route = Arc::new(RouteInfo {
            handler: "h".into(),
            topic: "t".into(),
            group: "g".into(),
        });
        Inbound::new(Message::new("x"), Origin::new("t"), 1, route)
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_trial_frees_its_slot() {
        let cfg = BreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_secs(1),
            ..Default::default()
        };
        let fail = Breaker::new(
            handler_fn(|i: Inbound| async move {
                if &i.message.payload[..] == b"hang" {
                    std::future::pending::<()>().await;
                }
                Err::<(), _>(HandlerError::transient("down"))
            }),
            cfg,
        );
        fail.clone().oneshot(inbound()).await.unwrap_err();
        assert_eq!(fail.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut hang = inbound();
        hang.message = Arc::new(Message::new("hang"));
        // The trial hangs and is cancelled.
        let trial = fail.clone().oneshot(hang);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), trial)
                .await
                .is_err()
        );
        assert_eq!(fail.state(), BreakerState::HalfOpen);
        // The slot is free again: the next call is a trial, not turned away.
        let err = fail.clone().oneshot(inbound()).await.unwrap_err();
        assert_eq!(err.message(), "down");
        assert_eq!(fail.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_results_are_ignored() {
        let cfg = BreakerConfig {
            failure_threshold: 1,
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = Arc::new(Mutex::new(Some(rx)));
        let svc = Breaker::new(
            handler_fn(move |i: Inbound| {
                let rx = rx.clone();
                async move {
                    if &i.message.payload[..] == b"slow" {
                        let r = rx.lock().unwrap().take();
                        if let Some(r) = r {
                            let _ = r.await;
                        }
                        return Ok(());
                    }
                    Err(HandlerError::transient("down"))
                }
            }),
            cfg,
        );
        let mut slow = inbound();
        slow.message = Arc::new(Message::new("slow"));
        let slow = tokio::spawn(svc.clone().oneshot(slow));
        tokio::task::yield_now().await;
        svc.clone().oneshot(inbound()).await.unwrap_err();
        assert_eq!(svc.state(), BreakerState::Open);
        tx.send(()).unwrap();
        slow.await.unwrap().unwrap();
        // The slow success began while closed: it does not close the open circuit.
        assert_eq!(svc.state(), BreakerState::Open);
    }
}
