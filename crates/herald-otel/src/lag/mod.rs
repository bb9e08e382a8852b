//! Consumer lag: how far a consumer group is behind, as gauges.
//!
//! Lag is read from the broker with its own client, outside the adapters (which only
//! translate), and recorded through herald-core's
//! [`record_consumer_lag`](herald_core::middleware::metrics::record_consumer_lag) /
//! [`record_consumer_pending`](herald_core::middleware::metrics::record_consumer_pending):
//!
//! | reader | feature | gauge | value |
//! |---|---|---|---|
//! | `KafkaLag` | `kafka` | `herald_consumer_lag{topic, group, partition}` | high watermark − committed offset (− low watermark when the group has committed nothing) |
//! | `NatsLag` | `nats` | `herald_consumer_pending{stream, consumer}` | `num_pending` + `num_ack_pending` of the durable consumer (the stream's message count while the consumer does not exist) |
//!
//! The in-memory transport has [`MemoryBroker::lag`](herald_core::memory::MemoryBroker::lag).
//!
//! Kafka's number moves when the group *commits*: herald's Kafka subscriber commits on an
//! interval, so a consumer that finished its work reads 0 one commit interval later.
//! NATS's moves with each acknowledgement.
//!
//! Read once (each reader's `read`, or `record` to also set the gauges) or keep the
//! gauges fresh with a [`LagMonitor`] (each reader's `watch`).
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;

use std::{fmt, future::Future, time::Duration};

use tokio::task::JoinHandle;

#[cfg(feature = "kafka")]
#[doc(inline)]
pub use kafka::{KafkaLag, PartitionLag};
#[cfg(feature = "nats")]
#[doc(inline)]
pub use nats::{ConsumerPending, NatsLag};

/// Why reading lag failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LagErrorKind {
    /// The broker could not be reached.
    Connection,
    /// The broker did not answer in time.
    Timeout,
    /// The topic or stream does not exist.
    NotFound,
    /// The client could not be built from its configuration.
    InvalidConfig,
    /// Anything else the broker reported.
    Other,
}

impl fmt::Display for LagErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connection => "lag: connection failed",
            Self::Timeout => "lag: timed out",
            Self::NotFound => "lag: not found",
            Self::InvalidConfig => "lag: invalid config",
            Self::Other => "lag: read failed",
        })
    }
}

/// A failed lag read.
pub type LagError = herald_core::Error<LagErrorKind>;

/// Refreshes lag gauges on an interval in a background task; stops when dropped.
///
/// A failed read is logged (`warn`) and tried again at the next tick; the gauges keep
/// their last value meanwhile.
#[derive(Debug)]
pub struct LagMonitor {
    task: JoinHandle<()>,
}

impl LagMonitor {
    /// Calls `read` now and then every `every` (at least 10 ms).
    pub fn spawn<F, Fut>(every: Duration, mut read: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64, LagError>> + Send + 'static,
    {
        let every = every.max(Duration::from_millis(10));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = read().await {
                    tracing::warn!(error = %e, "reading consumer lag failed");
                }
            }
        });
        Self { task }
    }

    /// Stops refreshing.
    pub fn stop(self) {}
}

impl Drop for LagMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}
