//! [`Backlog`]: what a consumer group has not consumed yet, read without consuming it —
//! the source [`RetryTopics::recover`](super::RetryTopics::recover) rebuilds the
//! parked-keys store from.

use futures::future::BoxFuture;

use super::ParkedKeysError;
use crate::{Message, SubscribeError};

/// Reads the messages of a topic that a consumer group has not consumed yet, without
/// consuming them (no commit, no ack, no group membership).
///
/// On Kafka: for each partition, from the group's committed offset (the earliest
/// retained one when there is none) to the high watermark read at the start, with a
/// consumer that assigns partitions itself and never commits. Transports implement it;
/// it is not part of the [`Subscriber`](crate::Subscriber) contract because not every
/// broker can answer it (NATS does not use retry topics: it redelivers with a delay).
///
/// The trait is object safe; `recover` takes a `&dyn Backlog`.
pub trait Backlog: Send + Sync {
    /// The unconsumed messages of `topic` for `group`, oldest first within each partition.
    fn unconsumed<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Message>, SubscribeError>>;
}

/// Why [`RetryTopics::recover`](super::RetryTopics::recover) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoverError {
    /// The retry topics are not ordered: there is no store to rebuild.
    #[error("ordered retry is off: no parked-keys store to rebuild")]
    NotOrdered,
    /// Reading a retry topic's backlog failed.
    #[error("reading the retry topics: {0}")]
    Backlog(#[source] SubscribeError),
    /// The store failed.
    #[error("rebuilding the parked keys: {0}")]
    Store(#[source] ParkedKeysError),
}
