//! The error behind a timed-out attempt.

use std::{fmt, time::Duration};

/// An attempt ran longer than its limit. It is the source of the
/// [`Transient`](crate::ErrorClass::Transient) [`HandlerError`](crate::HandlerError) the
/// [`Timeout`](super::Timeout) middleware returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed {
    limit: Duration,
}

impl Elapsed {
    /// An elapsed `limit`.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }

    /// The limit that passed.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler timed out after {:?}", self.limit)
    }
}

impl std::error::Error for Elapsed {}
