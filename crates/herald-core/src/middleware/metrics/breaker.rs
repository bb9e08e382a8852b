//! [`BreakerMetrics`]: circuit-breaker metrics through the breaker's hook.

use std::{fmt, sync::Arc};

use super::{names, route_labels, with_label};
use crate::{
    RouteInfo,
    middleware::{BreakerHook, BreakerState},
};

/// The value of `herald_breaker_state` for a state: 0 closed, 1 half-open, 2 open.
pub fn breaker_state_value(state: BreakerState) -> f64 {
    match state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    }
}

/// A [`BreakerHook`] that records `herald_breaker_state_changes_total{handler, topic,
/// group, from, to}` and sets the `herald_breaker_state{handler, topic, group}` gauge
/// (0 closed, 1 half-open, 2 open), then calls the hook it was [chained](Self::chain)
/// to, if any.
///
/// The breaker calls its hook on changes only, so the gauge appears with the first
/// change of a circuit; until then read "no series" as closed.
///
/// # Examples
/// ```
/// use herald_core::middleware::{BreakerConfig, BreakerLayer, BreakerState, metrics::BreakerMetrics};
/// let layer = BreakerLayer::new(BreakerConfig::default()).on_state_change(
///     BreakerMetrics::new().chain(|route: &herald_core::RouteInfo, _from: BreakerState, to: BreakerState| {
///         eprintln!("{}: circuit {to}", route.handler);
///     }),
/// );
/// # let _ = layer;
/// ```
#[derive(Clone, Default)]
pub struct BreakerMetrics {
    next: Option<Arc<dyn BreakerHook>>,
}

impl BreakerMetrics {
    /// A hook that only records metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also calls `hook` after recording.
    pub fn chain(mut self, hook: impl BreakerHook + 'static) -> Self {
        self.next = Some(Arc::new(hook));
        self
    }
}

impl fmt::Debug for BreakerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerMetrics")
            .field("chained", &self.next.is_some())
            .finish()
    }
}

impl BreakerHook for BreakerMetrics {
    fn on_state_change(&self, route: &RouteInfo, from: BreakerState, to: BreakerState) {
        let labels = route_labels(route);
        let mut change = with_label(&labels, "from", from.to_string());
        change.push(metrics::Label::new("to", to.to_string()));
        metrics::counter!(names::BREAKER_STATE_CHANGES, change).increment(1);
        metrics::gauge!(names::BREAKER_STATE, labels.to_vec()).set(breaker_state_value(to));
        if let Some(next) = &self.next {
            next.on_state_change(route, from, to);
        }
    }
}
