//! [`DeadLetterLayer`]: the dead-letter configuration.

use std::{fmt, sync::Arc, time::Duration};

use tower_layer::Layer;

use super::{DeadLetter, DeadLetterPolicy, DefaultDeadLetterPolicy};
use crate::Publisher;

/// How long a message waits for redelivery when publishing it to the dead-letter topic
/// failed.
pub const DEFAULT_PUBLISH_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Builds [`DeadLetter`] services that publish through one [`Publisher`].
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use herald_core::{handler_fn, memory::MemoryBroker, Inbound, middleware::DeadLetterLayer};
/// use tower::Layer;
/// let broker = MemoryBroker::new();
/// let handler = DeadLetterLayer::new(Arc::new(broker.clone()))
///     .layer(handler_fn(|_: Inbound| async { Ok(()) }));
/// # let _ = handler;
/// ```
#[derive(Clone)]
pub struct DeadLetterLayer {
    pub(super) publisher: Arc<dyn Publisher>,
    pub(super) policy: Arc<dyn DeadLetterPolicy>,
    pub(super) publish_retry_delay: Duration,
}

impl DeadLetterLayer {
    /// Dead-letters to `<topic>.dlq` through `publisher`.
    pub fn new(publisher: Arc<dyn Publisher>) -> Self {
        Self {
            publisher,
            policy: Arc::new(DefaultDeadLetterPolicy),
            publish_retry_delay: DEFAULT_PUBLISH_RETRY_DELAY,
        }
    }

    /// Picks the topic with `policy` instead.
    pub fn policy(mut self, policy: impl DeadLetterPolicy + 'static) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// How long a message waits for redelivery when the dead-letter publish failed
    /// (default [`DEFAULT_PUBLISH_RETRY_DELAY`]).
    pub fn publish_retry_delay(mut self, delay: Duration) -> Self {
        self.publish_retry_delay = delay;
        self
    }
}

impl fmt::Debug for DeadLetterLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterLayer")
            .field("publish_retry_delay", &self.publish_retry_delay)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for DeadLetterLayer {
    type Service = DeadLetter<S>;

    fn layer(&self, inner: S) -> DeadLetter<S> {
        DeadLetter {
            inner,
            publisher: self.publisher.clone(),
            policy: self.policy.clone(),
            publish_retry_delay: self.publish_retry_delay,
        }
    }
}
