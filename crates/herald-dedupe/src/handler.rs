//! What the handler helpers (`postgres::transactional`, `redis::atomic`) share: the key,
//! the delays and the metrics, the same as the dedupe middleware's.

use std::{sync::Arc, time::Duration};

use herald_core::{
    ErrorClass, HandlerError, Inbound,
    dedupe::DedupeError,
    middleware::dedupe::{KeyFn, default_key, metric_names},
};

#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) key: KeyFn,
    /// Only the Redis helper holds a lease; the PostgreSQL one holds a row lock.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) lease: Duration,
    pub(crate) in_progress_delay: Duration,
    pub(crate) unavailable_delay: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            key: Arc::new(default_key),
            lease: Duration::from_secs(30),
            in_progress_delay: Duration::from_secs(2),
            unavailable_delay: Duration::from_secs(5),
        }
    }
}

impl Settings {
    /// The key, or a Permanent error: these helpers have nothing to run without one.
    pub(crate) fn key(&self, inbound: &Inbound) -> Result<String, HandlerError> {
        (self.key)(inbound)
            .ok_or_else(|| HandlerError::permanent("dedupe: the message has no idempotency key"))
    }

    pub(crate) fn unavailable(
        &self,
        handler: &str,
        op: &'static str,
        e: DedupeError,
    ) -> HandlerError {
        metrics::counter!(metric_names::STORE_ERRORS, "handler" => handler.to_owned(), "op" => op)
            .increment(1);
        tracing::warn!(handler, op, error = %e, "dedupe store call failed; redelivering");
        HandlerError::from_error(ErrorClass::Transient, e).redeliver_after(self.unavailable_delay)
    }

    pub(crate) fn in_progress(&self, handler: &str, key: &str) -> HandlerError {
        metrics::counter!(metric_names::IN_PROGRESS, "handler" => handler.to_owned()).increment(1);
        HandlerError::transient(format!(
            "dedupe: key {key:?} is being handled by another worker"
        ))
        .redeliver_after(self.in_progress_delay)
    }

    pub(crate) fn duplicate(&self, handler: &str, key: &str) {
        metrics::counter!(metric_names::DUPLICATES, "handler" => handler.to_owned()).increment(1);
        tracing::debug!(key, "dedupe: duplicate, acknowledged without handling");
    }

    pub(crate) fn claimed(&self, handler: &str, took_over: bool) {
        metrics::counter!(metric_names::CLAIMS, "handler" => handler.to_owned()).increment(1);
        if took_over {
            metrics::counter!(metric_names::LEASE_EXPIRIES, "handler" => handler.to_owned(), "seen_by" => "taker")
                .increment(1);
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn lease_lost(&self, handler: &str) {
        metrics::counter!(metric_names::LEASE_EXPIRIES, "handler" => handler.to_owned(), "seen_by" => "holder")
            .increment(1);
    }
}

/// Builder methods shared by the handler helpers.
macro_rules! settings_builders {
    () => {
        /// Uses `f` for the dedupe key instead of `"{group}:{message id}"`. A `None` key is
        /// a Permanent error (straight to the dead-letter queue).
        pub fn key_fn(
            mut self,
            f: impl Fn(&herald_core::Inbound) -> Option<String> + Send + Sync + 'static,
        ) -> Self {
            self.settings.key = std::sync::Arc::new(f);
            self
        }

        /// The redelivery delay when another worker holds the key. Default 2 s.
        pub fn in_progress_delay(mut self, d: std::time::Duration) -> Self {
            self.settings.in_progress_delay = d;
            self
        }

        /// The redelivery delay when the store cannot be reached. Default 5 s.
        pub fn unavailable_delay(mut self, d: std::time::Duration) -> Self {
            self.settings.unavailable_delay = d;
            self
        }
    };
}

pub(crate) use settings_builders;
