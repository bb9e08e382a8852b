//! [`BreakerLayer`] and [`BreakerConfig`]: the circuit breaker's configuration.

use std::{fmt, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tower_layer::Layer;

use super::{Breaker, BreakerHook, DefaultBreakerHook};

/// When the breaker opens, for how long, and how it probes.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use herald_core::middleware::{BreakerConfig, BreakerLayer};
/// let layer = BreakerLayer::new(BreakerConfig {
///     failure_threshold: 10,
///     open_for: Duration::from_secs(60),
///     ..Default::default()
/// });
/// # let _ = layer;
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker (`0` counts as `1`).
    pub failure_threshold: u32,
    /// How long the breaker stays open before it lets trial calls through.
    pub open_for: Duration,
    /// How many trial calls may run at once while half-open (`0` counts as `1`).
    pub half_open_trials: u32,
    /// The redelivery delay of a message turned away while half-open because the trial
    /// calls are all taken.
    pub half_open_wait: Duration,
}

impl Default for BreakerConfig {
    /// 5 consecutive failures, open for 30 s, 1 trial, 1 s half-open wait.
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
            half_open_trials: 1,
            half_open_wait: Duration::from_secs(1),
        }
    }
}

/// Builds [`Breaker`] services. Each service built gets **its own** circuit (one per
/// handler); clones of that service share it.
#[derive(Clone)]
pub struct BreakerLayer {
    pub(super) config: BreakerConfig,
    pub(super) hook: Arc<dyn BreakerHook>,
}

impl BreakerLayer {
    /// A layer with `config` and no hook.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            hook: Arc::new(DefaultBreakerHook),
        }
    }

    /// Calls `hook` on every state change of every breaker this layer builds.
    ///
    /// # Examples
    /// ```
    /// use herald_core::middleware::{BreakerConfig, BreakerLayer, BreakerState};
    /// let layer = BreakerLayer::new(BreakerConfig::default()).on_state_change(
    ///     |route: &herald_core::RouteInfo, from: BreakerState, to: BreakerState| {
    ///         eprintln!("{}: breaker {from:?} -> {to:?}", route.handler);
    ///     },
    /// );
    /// # let _ = layer;
    /// ```
    pub fn on_state_change(mut self, hook: impl BreakerHook + 'static) -> Self {
        self.hook = Arc::new(hook);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }
}

impl Default for BreakerLayer {
    fn default() -> Self {
        Self::new(BreakerConfig::default())
    }
}

impl fmt::Debug for BreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker::with_hook(inner, self.config.clone(), self.hook.clone())
    }
}
