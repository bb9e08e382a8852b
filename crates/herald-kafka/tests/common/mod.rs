//! Helpers shared by the integration tests: the broker address, topics, clients.
#![allow(dead_code)]

use std::time::Duration;

use herald_kafka::{KafkaAdmin, KafkaConfig, KafkaPublisher, KafkaSubscriber};

/// The Kafka-protocol broker of `HERALD_KAFKA_BROKERS` (see `ci/brokers.sh`).
pub async fn brokers() -> String {
    herald_testkit::fixtures::kafka_brokers().await
}

/// Creates `topic` (and its `.dlq`) with `partitions` partitions.
pub async fn create_topic(topic: &str, partitions: i32) {
    let admin = KafkaAdmin::new(&KafkaConfig::new(brokers().await)).expect("admin client");
    admin
        .ensure_topic(topic, partitions, 1)
        .await
        .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
}

/// A publisher with a short linger and room for 1 MiB payloads (librdkafka's own
/// `message.max.bytes` default is 1 000 000).
pub async fn publisher() -> KafkaPublisher {
    KafkaPublisher::builder(brokers().await)
        .linger(Duration::from_millis(1))
        .message_max_bytes(4 << 20)
        .delivery_timeout(Duration::from_secs(20))
        .build()
        .expect("publisher")
}

/// A subscriber with herald's defaults and a quick commit interval.
pub async fn subscriber() -> KafkaSubscriber {
    KafkaSubscriber::builder(brokers().await)
        .commit_interval(Duration::from_millis(200))
        .build()
        .expect("subscriber")
}
