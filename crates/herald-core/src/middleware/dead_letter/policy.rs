//! [`DeadLetterPolicy`]: where a failed message goes.

use crate::{HandlerError, Inbound, dlq_topic};

/// Picks the dead-letter topic of a failed message, or drops it.
///
/// The layer keeps the policy in an `Arc` shared by every service it builds and every
/// call; it is never cloned, so it must be `Send + Sync`. A closure
/// `Fn(&Inbound, &HandlerError) -> Option<String>` implements it.
///
/// # Examples
/// One dead-letter topic for a whole service:
/// ```
/// use std::sync::Arc;
/// use herald_core::{memory::MemoryBroker, HandlerError, Inbound, middleware::DeadLetterLayer};
/// let broker = MemoryBroker::new();
/// let layer = DeadLetterLayer::new(Arc::new(broker))
///     .policy(|_: &Inbound, _: &HandlerError| Some("billing.dlq".to_owned()));
/// # let _ = layer;
/// ```
pub trait DeadLetterPolicy: Send + Sync {
    /// The topic to publish the failed message to; `None` drops it (it is acknowledged
    /// and logged, not published). The default is [`dlq_topic`] of the route's topic,
    /// `<topic>.dlq`.
    fn topic(&self, inbound: &Inbound, error: &HandlerError) -> Option<String> {
        let _ = error;
        Some(dlq_topic(&inbound.route.topic))
    }
}

/// The default policy: `<topic>.dlq` for every failure.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultDeadLetterPolicy;

impl DeadLetterPolicy for DefaultDeadLetterPolicy {}

impl<F> DeadLetterPolicy for F
where
    F: Fn(&Inbound, &HandlerError) -> Option<String> + Send + Sync,
{
    fn topic(&self, inbound: &Inbound, error: &HandlerError) -> Option<String> {
        self(inbound, error)
    }
}
