//! The error behind a failed forward to a retry topic.

use std::fmt;

use crate::{HandlerError, PublishError};

/// Publishing a message to its retry topic failed. It is the source of the
/// [`Transient`](crate::ErrorClass::Transient) error, with
/// [`redeliver_after`](HandlerError::redeliver_after) set, that
/// [`RetryTopic`](super::RetryTopic) returns then: the router nacks and the transport
/// redelivers the message in place — it is never acknowledged unforwarded.
#[derive(Debug)]
pub struct ForwardFailed {
    topic: String,
    handler_error: Option<HandlerError>,
    source: PublishError,
}

impl ForwardFailed {
    /// Publishing to `topic` failed with `source`; `handler_error` is the failure being
    /// retried (`None` for a message following its key without being handled).
    pub fn new(
        topic: impl Into<String>,
        handler_error: Option<HandlerError>,
        source: PublishError,
    ) -> Self {
        Self {
            topic: topic.into(),
            handler_error,
            source,
        }
    }

    /// The retry topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The handler's error that was being retried, if the message was handled.
    pub fn handler_error(&self) -> Option<&HandlerError> {
        self.handler_error.as_ref()
    }

    /// The publish error.
    pub fn publish_error(&self) -> &PublishError {
        &self.source
    }
}

impl fmt::Display for ForwardFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "publishing to retry topic {} failed: {}",
            self.topic, self.source
        )?;
        if let Some(e) = &self.handler_error {
            write!(f, " (handler error: {e})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ForwardFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
