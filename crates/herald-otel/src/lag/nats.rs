//! [`NatsLag`]: a JetStream consumer's pending messages.

use std::{fmt, time::Duration};

use async_nats::jetstream::{
    self,
    context::{ConsumerInfoErrorKind, GetStreamErrorKind},
};
use herald_core::middleware::metrics::record_consumer_pending;

use super::{LagError, LagErrorKind, LagMonitor};

/// What a JetStream consumer has not finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumerPending {
    /// Messages not yet delivered to the consumer (`num_pending`).
    pub num_pending: u64,
    /// Messages delivered but not acknowledged (`num_ack_pending`).
    pub num_ack_pending: u64,
    /// Whether the consumer exists. While it does not, `num_pending` is the stream's
    /// message count: a group starts from the oldest retained message.
    pub exists: bool,
}

impl ConsumerPending {
    /// `num_pending + num_ack_pending`.
    pub fn total(&self) -> u64 {
        self.num_pending + self.num_ack_pending
    }
}

/// Reads a JetStream consumer's pending counts (`CONSUMER.INFO`).
///
/// Names are the server's: with herald-nats, topic `orders` is stream
/// `herald_nats::mapping::stream_name("orders")` and group `billing` is consumer
/// `herald_nats::mapping::consumer_name("billing")`.
///
/// # Examples
/// ```no_run
/// # async fn demo(client: async_nats::Client) -> Result<(), herald_otel::lag::LagError> {
/// use herald_otel::lag::NatsLag;
/// let lag = NatsLag::from_client(client);
/// let pending = lag.record("orders", "billing").await?; // sets herald_consumer_pending{stream,consumer}
/// # let _ = pending; Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsLag {
    js: jetstream::Context,
}

impl fmt::Debug for NatsLag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsLag").finish_non_exhaustive()
    }
}

fn other(
    context: &str,
    kind: LagErrorKind,
    e: impl std::error::Error + Send + Sync + 'static,
) -> LagError {
    LagError::new(kind, context).with_source(e)
}

impl NatsLag {
    /// A reader over a JetStream context.
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// A reader over a client connection.
    pub fn from_client(client: async_nats::Client) -> Self {
        Self::new(jetstream::new(client))
    }

    /// The pending counts of `consumer` on `stream`.
    pub async fn read(&self, stream: &str, consumer: &str) -> Result<ConsumerPending, LagError> {
        let s = self.js.get_stream(stream).await.map_err(|e| {
            let kind = match e.kind() {
                GetStreamErrorKind::JetStream(api)
                    if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    LagErrorKind::NotFound
                }
                GetStreamErrorKind::Request => LagErrorKind::Connection,
                _ => LagErrorKind::Other,
            };
            other(&format!("stream {stream}"), kind, e)
        })?;
        match s.consumer_info(consumer).await {
            Ok(info) => Ok(ConsumerPending {
                num_pending: info.num_pending,
                num_ack_pending: info.num_ack_pending as u64,
                exists: true,
            }),
            Err(e) => {
                match e.kind() {
                    ConsumerInfoErrorKind::NotFound => self.missing(s).await,
                    ConsumerInfoErrorKind::JetStream(api)
                        if api.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
                    {
                        self.missing(s).await
                    }
                    ConsumerInfoErrorKind::StreamNotFound => Err(other(
                        &format!("stream {stream}"),
                        LagErrorKind::NotFound,
                        e,
                    )),
                    ConsumerInfoErrorKind::TimedOut => Err(other(
                        &format!("consumer {consumer}"),
                        LagErrorKind::Timeout,
                        e,
                    )),
                    ConsumerInfoErrorKind::Request | ConsumerInfoErrorKind::NoResponders => Err(
                        other(&format!("consumer {consumer}"), LagErrorKind::Connection, e),
                    ),
                    _ => Err(other(
                        &format!("consumer {consumer}"),
                        LagErrorKind::Other,
                        e,
                    )),
                }
            }
        }
    }

    async fn missing(
        &self,
        stream: jetstream::stream::Stream,
    ) -> Result<ConsumerPending, LagError> {
        let info = stream
            .get_info()
            .await
            .map_err(|e| other("stream info", LagErrorKind::Other, e))?;
        Ok(ConsumerPending {
            num_pending: info.state.messages,
            num_ack_pending: 0,
            exists: false,
        })
    }

    /// Reads the counts, sets `herald_consumer_pending{stream, consumer}` to their sum,
    /// and returns it.
    pub async fn record(&self, stream: &str, consumer: &str) -> Result<u64, LagError> {
        let total = self.read(stream, consumer).await?.total();
        record_consumer_pending(stream, consumer, total);
        Ok(total)
    }

    /// Records the counts now and every `every`, until the monitor is dropped.
    pub fn watch(&self, stream: &str, consumer: &str, every: Duration) -> LagMonitor {
        let this = self.clone();
        let (stream, consumer) = (stream.to_owned(), consumer.to_owned());
        LagMonitor::spawn(every, move || {
            let this = this.clone();
            let (stream, consumer) = (stream.clone(), consumer.clone());
            async move { this.record(&stream, &consumer).await }
        })
    }
}
