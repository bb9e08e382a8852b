//! [`KafkaLag`]: Kafka consumer lag from committed offsets and high watermarks.

use std::{fmt, sync::Arc, time::Duration};

use herald_core::middleware::metrics::record_consumer_lag;
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    types::RDKafkaErrorCode,
};

use super::{LagError, LagErrorKind, LagMonitor};

pub use rdkafka::ClientConfig as KafkaClientConfig;

/// The lag of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    /// The partition.
    pub partition: i32,
    /// The oldest offset the broker retains.
    pub low_watermark: i64,
    /// The offset the next message will get.
    pub high_watermark: i64,
    /// The group's committed offset (the next offset it will read), if it committed one.
    pub committed: Option<i64>,
    /// `high − committed`, or `high − low` without a commit; never negative.
    pub lag: u64,
}

/// Reads a consumer group's lag per partition: the high watermark (`ListOffsets`) minus
/// the committed offset (`OffsetFetch`), through an rdkafka consumer that never joins the
/// group.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), herald_otel::lag::LagError> {
/// use std::time::Duration;
/// use herald_otel::lag::KafkaLag;
/// let lag = KafkaLag::new("127.0.0.1:9092", "billing")?;
/// let total = lag.record("orders").await?; // sets herald_consumer_lag{topic,group,partition}
/// println!("billing is {total} messages behind");
/// let _monitor = lag.watch("orders", Duration::from_secs(15)); // keeps the gauges fresh
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KafkaLag {
    consumer: Arc<BaseConsumer>,
    group: String,
    timeout: Duration,
}

impl fmt::Debug for KafkaLag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaLag")
            .field("group", &self.group)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn from_kafka(context: &str, e: KafkaError) -> LagError {
    let kind = match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::MessageTimedOut,
        ) => LagErrorKind::Timeout,
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            LagErrorKind::NotFound
        }
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve,
        ) => LagErrorKind::Connection,
        _ => LagErrorKind::Other,
    };
    LagError::new(kind, context).with_source(e)
}

impl KafkaLag {
    /// A reader for `group` on the brokers `bootstrap_servers`.
    pub fn new(bootstrap_servers: &str, group: &str) -> Result<Self, LagError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap_servers);
        Self::from_client_config(config, group)
    }

    /// A reader for `group` with any librdkafka settings (TLS, SASL, …); `group.id` and
    /// `enable.auto.commit` are set here.
    pub fn from_client_config(mut config: ClientConfig, group: &str) -> Result<Self, LagError> {
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let consumer: BaseConsumer = config.create().map_err(|e| {
            LagError::new(LagErrorKind::InvalidConfig, "creating the consumer").with_source(e)
        })?;
        Ok(Self {
            consumer: Arc::new(consumer),
            group: group.to_owned(),
            timeout: Duration::from_secs(10),
        })
    }

    /// How long each broker request may take (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The lag of every partition of `topic`, in partition order.
    pub async fn read(&self, topic: &str) -> Result<Vec<PartitionLag>, LagError> {
        let consumer = self.consumer.clone();
        let topic = topic.to_owned();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || read_blocking(&consumer, &topic, timeout))
            .await
            .map_err(|e| LagError::new(LagErrorKind::Other, "lag task failed").with_source(e))?
    }

    /// The lag of `topic` summed over its partitions.
    pub async fn total(&self, topic: &str) -> Result<u64, LagError> {
        Ok(self.read(topic).await?.iter().map(|p| p.lag).sum())
    }

    /// Reads `topic`'s lag, sets `herald_consumer_lag{topic, group, partition}` for each
    /// partition, and returns the total.
    pub async fn record(&self, topic: &str) -> Result<u64, LagError> {
        let parts = self.read(topic).await?;
        for p in &parts {
            record_consumer_lag(topic, &self.group, p.partition, p.lag);
        }
        Ok(parts.iter().map(|p| p.lag).sum())
    }

    /// Records `topic`'s lag now and every `every`, until the monitor is dropped.
    pub fn watch(&self, topic: &str, every: Duration) -> LagMonitor {
        let this = self.clone();
        let topic = topic.to_owned();
        LagMonitor::spawn(every, move || {
            let this = this.clone();
            let topic = topic.clone();
            async move { this.record(&topic).await }
        })
    }
}

fn read_blocking(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<PartitionLag>, LagError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| from_kafka("fetching metadata", e))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(LagError::new(
            LagErrorKind::NotFound,
            format!("topic {topic}"),
        ));
    };
    if let Some(err) = t.error() {
        let code = RDKafkaErrorCode::from(err);
        let kind = if code == RDKafkaErrorCode::UnknownTopicOrPartition {
            LagErrorKind::NotFound
        } else {
            LagErrorKind::Other
        };
        return Err(LagError::new(kind, format!("topic {topic}: {code}")));
    }
    let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    partitions.sort_unstable();
    if partitions.is_empty() {
        return Err(LagError::new(
            LagErrorKind::NotFound,
            format!("topic {topic} has no partitions"),
        ));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(|e| from_kafka("fetching committed offsets", e))?;
    partitions
        .into_iter()
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| from_kafka("fetching watermarks", e))?;
            let committed = committed
                .find_partition(topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                });
            let lag = (high - committed.unwrap_or(low)).max(0) as u64;
            Ok(PartitionLag {
                partition: p,
                low_watermark: low,
                high_watermark: high,
                committed,
                lag,
            })
        })
        .collect()
}
