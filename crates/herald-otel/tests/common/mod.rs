//! Transports for the tests: memory, Kafka and NATS behind one small interface, each
//! client made on the runtime that uses it.
#![allow(dead_code, missing_docs)]

use std::{sync::Arc, time::Duration};

use herald_core::{Publisher, Subscriber, memory::MemoryBroker};
use herald_kafka::{KafkaAdmin, KafkaConfig, KafkaPublisher, KafkaSubscriber};
use herald_nats::{NatsBroker, NatsConfig};

#[derive(Clone, Debug)]
pub enum Transport {
    Memory(MemoryBroker),
    Kafka { brokers: String },
    Nats { url: String },
}

impl Transport {
    /// The transport of `system` (`memory`, `kafka`, `nats`) with `topic` (and its `.dlq`)
    /// created.
    pub async fn new(system: &str, topic: &str) -> Self {
        match system {
            "memory" => Self::Memory(MemoryBroker::new()),
            "kafka" => {
                let brokers = herald_testkit::fixtures::kafka_brokers().await;
                KafkaAdmin::new(&KafkaConfig::new(&brokers))
                    .expect("admin client")
                    .ensure_topic(topic, 3, 1)
                    .await
                    .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
                Self::Kafka { brokers }
            }
            "nats" => {
                let url = herald_testkit::fixtures::nats_url().await;
                let b = NatsBroker::connect(NatsConfig::new(&url))
                    .await
                    .expect("connect to NATS");
                b.ensure_topic(topic).await.expect("ensure topic");
                Self::Nats { url }
            }
            other => panic!("unknown system {other}"),
        }
    }

    pub fn system(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Kafka { .. } => "kafka",
            Self::Nats { .. } => "nats",
        }
    }

    /// A publisher made on the current runtime.
    pub async fn publisher(&self) -> Arc<dyn Publisher> {
        match self {
            Self::Memory(b) => Arc::new(b.clone()),
            Self::Kafka { brokers } => Arc::new(
                KafkaPublisher::builder(brokers.clone())
                    .linger(Duration::from_millis(1))
                    .delivery_timeout(Duration::from_secs(20))
                    .build()
                    .expect("publisher"),
            ),
            Self::Nats { url } => Arc::new(
                NatsBroker::connect(NatsConfig::new(url))
                    .await
                    .expect("connect to NATS"),
            ),
        }
    }

    /// A subscriber made on the current runtime.
    pub async fn subscriber(&self) -> Arc<dyn Subscriber> {
        match self {
            Self::Memory(b) => Arc::new(b.clone()),
            Self::Kafka { brokers } => Arc::new(
                KafkaSubscriber::builder(brokers.clone())
                    .commit_interval(Duration::from_millis(100))
                    .build()
                    .expect("subscriber"),
            ),
            Self::Nats { url } => Arc::new(
                NatsBroker::connect(NatsConfig::new(url))
                    .await
                    .expect("connect to NATS"),
            ),
        }
    }

    /// Deletes the topic where the broker keeps it.
    pub async fn cleanup(&self, topic: &str) {
        match self {
            Self::Memory(_) => {}
            Self::Kafka { brokers } => {
                if let Ok(a) = KafkaAdmin::new(&KafkaConfig::new(brokers)) {
                    let dlq = format!("{topic}.dlq");
                    let _ = a.delete_topics(&[topic, &dlq]).await;
                }
            }
            Self::Nats { url } => {
                if let Ok(b) = NatsBroker::connect(NatsConfig::new(url)).await {
                    let _ = b.delete_topic(topic).await;
                }
            }
        }
    }
}

/// Polls `cond` until it holds, failing after `secs` seconds.
pub async fn eventually<F, Fut>(what: &str, secs: u64, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
