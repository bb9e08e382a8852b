//! The error behind a call the breaker turned away.

use std::{fmt, time::Duration};

use super::BreakerState;

/// The breaker did not call the handler. It is the source of the
/// [`Transient`](crate::ErrorClass::Transient) [`HandlerError`](crate::HandlerError),
/// with [`redeliver_after`](crate::HandlerError::redeliver_after) set, that the
/// [`Breaker`](super::Breaker) returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    state: BreakerState,
    retry_after: Duration,
}

impl Rejected {
    /// A rejection in `state`, to be tried again after `retry_after`.
    pub fn new(state: BreakerState, retry_after: Duration) -> Self {
        Self { state, retry_after }
    }

    /// The breaker's state when it turned the call away.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// When to try again.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            BreakerState::HalfOpen => write!(
                f,
                "circuit breaker half-open and its trial calls are taken; retry in {:?}",
                self.retry_after
            ),
            _ => write!(f, "circuit breaker open; retry in {:?}", self.retry_after),
        }
    }
}

impl std::error::Error for Rejected {}
