//! The error behind a failed dead-letter publish.

use std::fmt;

use crate::{HandlerError, PublishError};

/// Publishing a failed message to its dead-letter topic failed. It is the source of the
/// [`Transient`](crate::ErrorClass::Transient) error, with
/// [`redeliver_after`](HandlerError::redeliver_after) set, that
/// [`DeadLetter`](super::DeadLetter) returns then — the message is redelivered, not lost.
#[derive(Debug)]
pub struct PublishFailed {
    topic: String,
    handler_error: HandlerError,
    source: PublishError,
}

impl PublishFailed {
    /// Publishing to `topic` failed with `source` while dead-lettering `handler_error`.
    pub fn new(
        topic: impl Into<String>,
        handler_error: HandlerError,
        source: PublishError,
    ) -> Self {
        Self {
            topic: topic.into(),
            handler_error,
            source,
        }
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The handler's error that was to be dead-lettered.
    pub fn handler_error(&self) -> &HandlerError {
        &self.handler_error
    }

    /// The publish error.
    pub fn publish_error(&self) -> &PublishError {
        &self.source
    }
}

impl fmt::Display for PublishFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dead-letter publish to {} failed: {} (handler error: {})",
            self.topic, self.source, self.handler_error
        )
    }
}

impl std::error::Error for PublishFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
