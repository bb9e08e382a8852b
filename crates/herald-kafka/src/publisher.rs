//! [`KafkaPublisher`]: an idempotent `acks=all` producer behind herald's [`Publisher`].

use std::{
    collections::VecDeque,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use herald_core::{Message, PublishError, PublishErrorKind, Publisher};
use rdkafka::{
    error::KafkaError,
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer},
    types::RDKafkaErrorCode,
    util::Timeout,
};
use tokio::time::Instant;

use crate::{
    config::{KafkaConfig, ms},
    context::HeraldContext,
    error::{ConfigError, ConfigErrorKind, config_error, publish_error, publish_kind},
    wire,
};

/// How long `publish` waits past the delivery timeout before it gives up on a delivery
/// report itself (librdkafka reports every message within the delivery timeout; this is
/// a safety net, never the normal path).
const REPORT_GRACE: Duration = Duration::from_secs(5);

/// Default of [`PublisherBuilder::delivery_timeout`]: 30 s (librdkafka's own default is
/// 300 s, which reads as a hang).
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Default of [`PublisherBuilder::linger`]: librdkafka's 5 ms.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(5);

/// Property aliases librdkafka accepts; herald stores the canonical name so a default
/// and a user's alias never both reach librdkafka.
const PRODUCER_ALIASES: &[(&str, &str)] = &[
    ("delivery.timeout.ms", "message.timeout.ms"),
    ("queue.buffering.max.ms", "linger.ms"),
    ("request.required.acks", "acks"),
    ("compression.codec", "compression.type"),
];

fn canonical<'a>(key: &'a str, aliases: &[(&'static str, &'static str)]) -> &'a str {
    aliases
        .iter()
        .find(|(alias, _)| *alias == key)
        .map_or(key, |(_, canon)| canon)
}

/// Builds a [`KafkaPublisher`].
///
/// | setting | librdkafka property | herald default |
/// |---|---|---|
/// | — (forced) | `enable.idempotence` | `true` |
/// | — (forced) | `acks` | `all` |
/// | [`linger`](Self::linger) | `linger.ms` | 5 ms |
/// | [`batch_messages`](Self::batch_messages) | `batch.num.messages` | librdkafka's (10 000) |
/// | [`batch_bytes`](Self::batch_bytes) | `batch.size` | librdkafka's (1 MB) |
/// | [`delivery_timeout`](Self::delivery_timeout) | `message.timeout.ms` (= `delivery.timeout.ms`) | 30 s |
/// | [`message_max_bytes`](Self::message_max_bytes) | `message.max.bytes` | librdkafka's (1 000 000) |
/// | [`compression`](Self::compression) | `compression.type` | none |
/// | [`set`](Self::set) | any | — |
///
/// `enable.idempotence` and `acks` are forced because [`Publisher::publish`] promises a
/// durable, duplicate-free, per-key-ordered write.
#[derive(Clone)]
pub struct PublisherBuilder {
    config: KafkaConfig,
}

impl fmt::Debug for PublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherBuilder")
            .field("config", &self.config)
            .finish()
    }
}

impl PublisherBuilder {
    /// A builder over `config` (brokers plus pass-through properties).
    pub fn new(config: KafkaConfig) -> Self {
        let mut b = Self {
            config: KafkaConfig::new(config.brokers),
        };
        for (k, v) in config.properties {
            b = b.set(k, v);
        }
        b
    }

    /// Sets any librdkafka property (TLS, SASL, tuning…); later calls win.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        let key = canonical(&key, PRODUCER_ALIASES).to_owned();
        self.config.insert(key, value);
        self
    }

    /// How long the producer waits to fill a batch (`linger.ms`).
    pub fn linger(self, d: Duration) -> Self {
        self.set("linger.ms", ms(d))
    }

    /// The most messages in one produce batch (`batch.num.messages`).
    pub fn batch_messages(self, n: usize) -> Self {
        self.set("batch.num.messages", n.to_string())
    }

    /// The most bytes in one produce batch (`batch.size`).
    pub fn batch_bytes(self, n: usize) -> Self {
        self.set("batch.size", n.to_string())
    }

    /// The longest a message may wait for the broker's acknowledgement, retries
    /// included (`message.timeout.ms`); `publish` fails with
    /// [`PublishErrorKind::Timeout`] after it. Every wait of `publish` is bounded by it.
    pub fn delivery_timeout(self, d: Duration) -> Self {
        self.set("message.timeout.ms", ms(d))
    }

    /// The largest message the producer accepts (`message.max.bytes`); larger ones fail
    /// at once with [`PublishErrorKind::MessageTooLarge`]. Keep it at or below the
    /// broker's and topic's `max.message.bytes`.
    pub fn message_max_bytes(self, n: usize) -> Self {
        self.set("message.max.bytes", n.to_string())
    }

    /// Compression codec: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub fn compression(self, codec: &str) -> Self {
        self.set("compression.type", codec)
    }

    /// The effective settings (defaults, then yours, then the forced ones).
    pub fn effective_config(&self) -> KafkaConfig {
        let mut c = KafkaConfig::new(self.config.brokers.clone());
        c.insert("linger.ms", ms(DEFAULT_LINGER));
        c.insert("message.timeout.ms", ms(DEFAULT_DELIVERY_TIMEOUT));
        for (k, v) in &self.config.properties {
            c.insert(k.clone(), v.clone());
        }
        for (k, v) in [("enable.idempotence", "true"), ("acks", "all")] {
            if c.get(k).is_some_and(|old| old != v) {
                tracing::warn!(property = k, "herald forces {k}={v} on its producer");
            }
            c.insert(k, v);
        }
        c
    }

    /// Creates the producer. Fails on an invalid property; does not contact the broker.
    pub fn build(self) -> Result<KafkaPublisher, ConfigError> {
        let config = self.effective_config();
        let delivery_timeout = config
            .millis("message.timeout.ms")?
            .unwrap_or(DEFAULT_DELIVERY_TIMEOUT);
        if delivery_timeout.is_zero() {
            return Err(ConfigError::new(
                ConfigErrorKind::InvalidProperty,
                "message.timeout.ms 0 (infinite) is not allowed: publish must be bounded",
            ));
        }
        let context = HeraldContext::default();
        let producer: FutureProducer<HeraldContext> = config
            .to_client_config()
            .create_with_context(context.clone())
            .map_err(config_error)?;
        Ok(KafkaPublisher {
            producer,
            context,
            delivery_timeout,
            closed: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// Publishes to Kafka: an idempotent producer with `acks=all`.
///
/// * The key picks the partition with librdkafka's default partitioner
///   (`consistent_random`: CRC32 of the key bytes; keyless messages go to a random
///   partition). Set `partitioner` to `murmur2_random` to place keys as the Java client
///   does.
/// * [`publish`](Publisher::publish) hands every message of the batch to librdkafka
///   first and then awaits all delivery reports, so a batch pipelines; it resolves when
///   every message is acknowledged by all in-sync replicas, or with the first error.
///   Messages after a message that could not even be queued (too large, invalid) are not
///   sent, so per-key order survives a failed batch.
/// * Headers follow the CloudEvents Kafka binding (see [`crate::wire`]).
/// * Every wait is bounded by the delivery timeout: no `publish` hangs. A delivery that
///   timed out while librdkafka reported a client-level error (every broker down, a
///   refused login, a failed TLS handshake) fails as
///   [`Connection`](PublishErrorKind::Connection) or
///   [`Unauthorized`](PublishErrorKind::Unauthorized), with librdkafka's reason.
///
/// Cheap to clone; clones share the producer.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_core::{Message, Publisher};
/// use herald_kafka::KafkaPublisher;
/// use std::time::Duration;
///
/// let publisher = KafkaPublisher::builder("127.0.0.1:9092")
///     .linger(Duration::from_millis(2))
///     .delivery_timeout(Duration::from_secs(10))
///     .build()?;
/// publisher
///     .publish("orders", vec![Message::new("{}").with_key("order-1")])
///     .await?;
/// publisher.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer<HeraldContext>,
    /// Shares its state with the producer's context (rdkafka keeps that one private).
    context: HeraldContext,
    delivery_timeout: Duration,
    closed: Arc<AtomicBool>,
}

impl fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("delivery_timeout", &self.delivery_timeout)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn is_queue_full(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    )
}

fn invalid(msg: impl Into<String>) -> PublishError {
    PublishError::new(PublishErrorKind::InvalidMessage, msg)
}

impl KafkaPublisher {
    /// A builder for `brokers` with herald's defaults.
    pub fn builder(brokers: impl Into<String>) -> PublisherBuilder {
        PublisherBuilder::new(KafkaConfig::new(brokers))
    }

    /// A builder over shared settings (TLS, SASL…).
    pub fn from_config(config: KafkaConfig) -> PublisherBuilder {
        PublisherBuilder::new(config)
    }

    /// A publisher for `brokers` with the defaults.
    pub fn new(brokers: impl Into<String>) -> Result<Self, ConfigError> {
        Self::builder(brokers).build()
    }

    /// The delivery timeout every `publish` is bounded by.
    pub fn delivery_timeout(&self) -> Duration {
        self.delivery_timeout
    }

    async fn settle(&self, f: DeliveryFuture, deadline: Instant) -> Result<(), PublishError> {
        match tokio::time::timeout_at(deadline, f).await {
            Ok(r) => report(r),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// A timeout says little on its own: when librdkafka reported a client-level error
    /// meanwhile (a refused login, a failed TLS handshake), the error names it, and takes
    /// its kind when that is an authentication or connection failure.
    fn explain(&self, e: PublishError, since: std::time::Instant) -> PublishError {
        if e.kind() != PublishErrorKind::Timeout {
            return e;
        }
        let Some(fault) = self.context.fault_since(since) else {
            return e;
        };
        let kind = match fault.code.map(publish_kind) {
            Some(k @ (PublishErrorKind::Unauthorized | PublishErrorKind::Connection)) => k,
            _ => PublishErrorKind::Timeout,
        };
        let message = format!("{}; the client reported: {}", e.message(), fault.reason);
        PublishError::new(kind, message).with_source(e)
    }

    fn timed_out(&self) -> PublishError {
        PublishError::new(
            PublishErrorKind::Timeout,
            format!(
                "no delivery report within the delivery timeout ({:?})",
                self.delivery_timeout
            ),
        )
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<(), PublishError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PublishError::new(
                PublishErrorKind::Closed,
                "publisher is closed",
            ));
        }
        if topic.is_empty() || topic.as_bytes().contains(&0) {
            return Err(invalid("empty topic name or a NUL byte in it"));
        }
        if let Some((n, _)) = messages
            .iter()
            .flat_map(|m| m.headers.iter())
            .find(|(n, _)| wire::bad_header_name(n))
        {
            return Err(invalid(format!("header name {n:?} contains a NUL byte")));
        }
        let started = std::time::Instant::now();
        let deadline = Instant::now() + self.delivery_timeout + REPORT_GRACE;
        let mut pending: VecDeque<DeliveryFuture> = VecDeque::with_capacity(messages.len());
        let mut first_err: Option<PublishError> = None;
        let mut scratch = String::new();
        'messages: for m in &messages {
            let headers = wire::to_kafka_headers(m, &mut scratch);
            let mut record = FutureRecord::<[u8], [u8]>::to(topic)
                .payload(&m.payload[..])
                .headers(headers);
            if let Some(k) = &m.key {
                record = record.key(&k[..]);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(f) => {
                        pending.push_back(f);
                        break;
                    }
                    Err((e, r)) if is_queue_full(&e) => {
                        // librdkafka's queue is full: wait for our oldest delivery (or a
                        // moment, if the queue is full of other publishers' messages).
                        record = r;
                        if let Some(f) = pending.pop_front() {
                            if let Err(e) = self.settle(f, deadline).await {
                                first_err = Some(e);
                                break 'messages;
                            }
                        } else if Instant::now() >= deadline {
                            first_err = Some(PublishError::new(
                                PublishErrorKind::Timeout,
                                "the producer queue stayed full for the delivery timeout",
                            ));
                            break 'messages;
                        } else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    Err((e, _)) => {
                        first_err = Some(publish_error(e));
                        break 'messages;
                    }
                }
            }
        }
        // One timer for the whole batch rather than one per delivery report (a timer entry
        // per message showed in profiles).
        let reports = async {
            for f in pending.drain(..) {
                if let Err(e) = report(f.await) {
                    first_err.get_or_insert(e);
                }
            }
        };
        if tokio::time::timeout_at(deadline, reports).await.is_err() {
            first_err.get_or_insert_with(|| self.timed_out());
        }
        match first_err {
            Some(e) => Err(self.explain(e, started)),
            None => Ok(()),
        }
    }
}

/// A delivery report as herald's result.
fn report(r: <DeliveryFuture as std::future::Future>::Output) -> Result<(), PublishError> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(publish_error(e)),
        Err(_canceled) => Err(PublishError::new(
            PublishErrorKind::Closed,
            "the producer went away before reporting delivery",
        )),
    }
}

impl Publisher for KafkaPublisher {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(self.publish_batch(topic, messages))
    }

    /// Stops accepting messages and waits (at most the delivery timeout) until every
    /// queued message is delivered.
    fn close(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            self.closed.store(true, Ordering::Release);
            let producer = self.producer.clone();
            let timeout = self.delivery_timeout;
            let flushed =
                tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
                    .await
                    .map_err(|e| PublishError::new(PublishErrorKind::Other, e.to_string()))?;
            flushed.map_err(|e| {
                PublishError::new(
                    PublishErrorKind::Timeout,
                    format!("messages still queued after {timeout:?}"),
                )
                .with_source(e)
            })
        })
    }
}
