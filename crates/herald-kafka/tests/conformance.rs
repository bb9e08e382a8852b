//! herald's transport conformance suite against the Kafka-protocol broker at
//! `HERALD_KAFKA_BROKERS`.

mod common;

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use herald_core::{Publisher, Subscriber};
use herald_testkit::conformance::{Features, TransportFactory};

struct KafkaFactory;

impl TransportFactory for KafkaFactory {
    fn features(&self) -> Features {
        Features::default()
            .max_payload(1 << 20)
            .receive_timeout(Duration::from_secs(30))
    }

    fn publisher(&self) -> BoxFuture<'_, Arc<dyn Publisher>> {
        Box::pin(async { Arc::new(common::publisher().await) as Arc<dyn Publisher> })
    }

    fn subscriber(&self) -> BoxFuture<'_, Arc<dyn Subscriber>> {
        Box::pin(async { Arc::new(common::subscriber().await) as Arc<dyn Subscriber> })
    }

    fn create_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(common::create_topic(topic, 4))
    }
}

herald_testkit::conformance_tests!(KafkaFactory);
