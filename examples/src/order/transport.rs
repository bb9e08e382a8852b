//! Picking the transport: the in-memory broker, Kafka or NATS JetStream. Everything else
//! in the example is the same code on all three.

use std::{sync::Arc, time::Duration};

use herald::{Publisher, SubscribeSpec, Subscriber, memory::MemoryBroker};

/// Which transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// The in-process broker (no server needed).
    Memory,
    /// Kafka at `HERALD_KAFKA_BROKERS` (default `127.0.0.1:9092`).
    Kafka,
    /// NATS JetStream at `HERALD_NATS_URL` (default `nats://127.0.0.1:4222`).
    Nats,
}

/// A connected transport.
#[derive(Clone)]
pub struct Transport {
    /// Which one.
    pub kind: TransportKind,
    /// Its publisher.
    pub publisher: Arc<dyn Publisher>,
    /// Its subscriber.
    pub subscriber: Arc<dyn Subscriber>,
    admin: Admin,
}

#[derive(Clone)]
enum Admin {
    Memory,
    Kafka(herald::kafka::KafkaConfig),
    Nats(Box<herald::nats::NatsBroker>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl Transport {
    /// Connects to `kind`.
    pub async fn connect(kind: TransportKind) -> Result<Self, Box<dyn std::error::Error>> {
        Ok(match kind {
            TransportKind::Memory => {
                let b = MemoryBroker::new();
                Self {
                    kind,
                    publisher: Arc::new(b.clone()),
                    subscriber: Arc::new(b),
                    admin: Admin::Memory,
                }
            }
            TransportKind::Kafka => {
                let cfg = herald::kafka::KafkaConfig::new(env_or(
                    "HERALD_KAFKA_BROKERS",
                    "127.0.0.1:9092",
                ));
                let publisher = herald::kafka::KafkaPublisher::from_config(cfg.clone())
                    .linger(Duration::from_millis(2))
                    .build()?;
                let subscriber =
                    herald::kafka::KafkaSubscriber::from_config(cfg.clone()).build()?;
                Self {
                    kind,
                    publisher: Arc::new(publisher),
                    subscriber: Arc::new(subscriber),
                    admin: Admin::Kafka(cfg),
                }
            }
            TransportKind::Nats => {
                let url = env_or("HERALD_NATS_URL", "nats://127.0.0.1:4222");
                let b =
                    herald::nats::NatsBroker::connect(herald::nats::NatsConfig::new(&url)).await?;
                Self {
                    kind,
                    publisher: Arc::new(b.clone()),
                    subscriber: Arc::new(b.clone()),
                    admin: Admin::Nats(Box::new(b)),
                }
            }
        })
    }

    /// Creates `topics` and their dead-letter topics where the broker needs it.
    ///
    /// On the memory transport a message is forgotten once every consumer group that
    /// exists has acknowledged it; a group that never consumes (`retention`) keeps the
    /// run's messages until the process ends, as a broker's retention would, so a
    /// consumer that joins late misses nothing.
    pub async fn provision(
        &self,
        topics: &[String],
        retention_group: &str,
    ) -> Result<(), Box<dyn std::error::Error>> {
        match &self.admin {
            Admin::Memory => {
                for t in topics {
                    let sub = self
                        .subscriber
                        .subscribe(SubscribeSpec::new(t.clone(), retention_group))
                        .await?;
                    sub.close().await?;
                }
            }
            Admin::Kafka(cfg) => {
                let admin = herald::kafka::KafkaAdmin::new(cfg)?;
                for t in topics {
                    admin.ensure_topic(t, 4, 1).await?;
                }
            }
            Admin::Nats(b) => {
                for t in topics {
                    b.ensure_topic(t).await?;
                }
            }
        }
        Ok(())
    }
}
