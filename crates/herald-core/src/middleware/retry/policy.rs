//! The retry decisions: [`RetryPolicy`] and its standard implementation, [`Backoff`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ErrorClass, HandlerError};

/// Decides which failures are retried, how often and after what delay.
///
/// The retry layer asks the policy, per delivery:
/// 1. [`retries`](Self::retries) — may this error be tried again at all?
/// 2. [`immediate_attempts`](Self::immediate_attempts) — how many in-process calls a
///    delivery gets (the first one included);
/// 3. [`delayed_attempts`](Self::delayed_attempts) — how many broker redeliveries follow
///    once a delivery's in-process calls are spent;
/// 4. [`delay`](Self::delay) — the `n`-th wait of one backoff sequence (see below).
///
/// # The delay sequence
/// One sequence serves both kinds of wait. With `I` immediate attempts, the wait after
/// in-process attempt `n` failed (`n < I`) is `delay(n)`; when the in-process attempts of
/// broker delivery `k` are spent, the message is redelivered after `delay(I + k - 1)`.
/// So with `I = 3` the waits are `delay(1)`, `delay(2)` in process, then `delay(3)`,
/// `delay(4)`, … between broker deliveries: short waits hold the consumer, long ones
/// are the broker's business.
///
/// # Sharing and cloning
/// The layer keeps the policy in an `Arc<dyn RetryPolicy>`. Building the service
/// ([`RetryLayer::layer`](tower_layer::Layer::layer)), cloning it (the router clones the
/// handler once per concurrency lane) and each call (its future holds a clone for the
/// retries) clone only the `Arc`: **the policy itself is never cloned**. One policy value
/// therefore serves every lane and every in-flight message of the routes it was layered
/// onto, which is why it must be `Send + Sync`; state it keeps (a retry budget, a
/// counter) is shared by all of them and needs interior mutability.
///
/// The trait is object safe and stays so (a test holds it as `dyn RetryPolicy`).
///
/// # Examples
/// A policy that retries everything but `Fatal`, three times, one second apart, and
/// never asks the broker for a redelivery:
/// ```
/// use std::time::Duration;
/// use herald_core::{ErrorClass, HandlerError, middleware::{RetryLayer, RetryPolicy}};
///
/// struct Stubborn;
/// impl RetryPolicy for Stubborn {
///     fn retries(&self, e: &HandlerError) -> bool { e.class() != ErrorClass::Fatal }
///     fn immediate_attempts(&self) -> u32 { 3 }
///     fn delayed_attempts(&self) -> u32 { 0 }
///     fn delay(&self, _n: u32) -> Duration { Duration::from_secs(1) }
/// }
/// let layer = RetryLayer::new(Stubborn);
/// # let _ = layer;
/// ```
pub trait RetryPolicy: Send + Sync {
    /// Whether `error` may be retried. The default retries only
    /// [`ErrorClass::Transient`]. [`Fatal`](ErrorClass::Fatal) errors are never retried,
    /// whatever this says: the consumer must stop.
    fn retries(&self, error: &HandlerError) -> bool {
        error.class() == ErrorClass::Transient
    }

    /// In-process calls per delivery, the first included (`0` counts as `1`).
    fn immediate_attempts(&self) -> u32;

    /// Broker redeliveries after the first delivery: the message is delivered at most
    /// `1 + delayed_attempts()` times before the error is returned for good.
    fn delayed_attempts(&self) -> u32;

    /// The `n`-th wait of the backoff sequence, `n >= 1` (see the trait docs).
    fn delay(&self, n: u32) -> Duration;
}

/// Exponential backoff with jitter: the standard [`RetryPolicy`].
///
/// The `n`-th wait is `initial × multiplier^(n−1)`, capped at `max`, then scaled by a
/// random factor in `[1 − jitter, 1 + jitter]` and capped at `max` again, so `max` is
/// a hard ceiling. Retries [`Transient`](ErrorClass::Transient) errors only.
///
/// The defaults — 3 immediate attempts, 3 delayed ones, 100 ms × 4, at most 60 s,
/// 20 % jitter — give in-process waits of about 100 ms and 400 ms, then broker
/// redeliveries after about 1.6 s, 6.4 s and 25.6 s: four deliveries, twelve calls and
/// some 34 s before the error is final.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use herald_core::middleware::{Backoff, RetryLayer};
/// let layer = RetryLayer::new(Backoff {
///     initial: Duration::from_millis(50),
///     immediate_attempts: 5,
///     delayed_attempts: 0,
///     ..Default::default()
/// });
/// # let _ = layer;
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Backoff {
    /// The first wait.
    pub initial: Duration,
    /// Growth factor from one wait to the next (values below 1 shrink the waits).
    pub multiplier: f64,
    /// The longest wait, jitter included.
    pub max: Duration,
    /// Random spread as a fraction of the wait, clamped to `0.0..=1.0`; `0.2` means
    /// ±20 %.
    pub jitter: f64,
    /// In-process calls per delivery, the first included.
    pub immediate_attempts: u32,
    /// Broker redeliveries after the first delivery.
    pub delayed_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            multiplier: 4.0,
            max: Duration::from_secs(60),
            jitter: 0.2,
            immediate_attempts: 3,
            delayed_attempts: 3,
        }
    }
}

impl Backoff {
    /// The `n`-th wait before jitter: `initial × multiplier^(n−1)`, capped at `max`.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use herald_core::middleware::Backoff;
    /// let b = Backoff { initial: Duration::from_millis(100), multiplier: 2.0, ..Default::default() };
    /// assert_eq!(b.base_delay(1), Duration::from_millis(100));
    /// assert_eq!(b.base_delay(3), Duration::from_millis(400));
    /// ```
    pub fn base_delay(&self, n: u32) -> Duration {
        let exp = i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The bounds a jittered `n`-th wait falls within.
    pub fn delay_bounds(&self, n: u32) -> (Duration, Duration) {
        let base = self.base_delay(n);
        let j = self.jitter_fraction();
        (base.mul_f64(1.0 - j), base.mul_f64(1.0 + j).min(self.max))
    }

    fn jitter_fraction(&self) -> f64 {
        if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

impl RetryPolicy for Backoff {
    fn immediate_attempts(&self) -> u32 {
        self.immediate_attempts
    }

    fn delayed_attempts(&self) -> u32 {
        self.delayed_attempts
    }

    fn delay(&self, n: u32) -> Duration {
        let base = self.base_delay(n);
        let j = self.jitter_fraction();
        if j == 0.0 {
            return base;
        }
        let factor = rand::random_range((1.0 - j)..=(1.0 + j));
        base.mul_f64(factor).min(self.max)
    }
}

impl<P: RetryPolicy + ?Sized> RetryPolicy for std::sync::Arc<P> {
    fn retries(&self, error: &HandlerError) -> bool {
        (**self).retries(error)
    }
    fn immediate_attempts(&self) -> u32 {
        (**self).immediate_attempts()
    }
    fn delayed_attempts(&self) -> u32 {
        (**self).delayed_attempts()
    }
    fn delay(&self, n: u32) -> Duration {
        (**self).delay(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_delay_grows_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_millis(500),
            ..Default::default()
        };
        let got: Vec<_> = (1..=5).map(|n| b.base_delay(n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 500, 500]);
        assert_eq!(b.base_delay(u32::MAX), Duration::from_millis(500));
        assert_eq!(b.base_delay(0), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_bounds_and_under_max() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_millis(300),
            jitter: 0.5,
            ..Default::default()
        };
        for n in 1..=4 {
            let (lo, hi) = b.delay_bounds(n);
            for _ in 0..200 {
                let d = b.delay(n);
                assert!(d >= lo && d <= hi, "n={n}: {d:?} not in {lo:?}..={hi:?}");
                assert!(d <= b.max);
            }
        }
    }

    #[test]
    fn odd_jitter_values_are_tamed() {
        for jitter in [f64::NAN, -1.0, 7.0] {
            let b = Backoff {
                jitter,
                ..Default::default()
            };
            let d = b.delay(1);
            assert!(d <= Duration::from_millis(200), "{jitter}: {d:?}");
        }
    }

    #[test]
    fn default_retries_only_transient() {
        let b = Backoff::default();
        assert!(b.retries(&HandlerError::transient("x")));
        assert!(!b.retries(&HandlerError::permanent("x")));
        assert!(!b.retries(&HandlerError::fatal("x")));
    }
}
