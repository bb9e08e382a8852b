//! herald's transport conformance suite on NATS JetStream.

mod common;

use std::sync::Arc;

use futures::future::BoxFuture;
use herald_core::{Publisher, Subscriber};
use herald_testkit::conformance::{Features, TransportFactory};

/// A new connection per publisher and subscriber (the suite's "restart a consumer" is a
/// new client); deletes the topics' streams when the case ends.
#[derive(Default)]
struct NatsFactory {
    cleanup: common::Cleanup,
}

impl TransportFactory for NatsFactory {
    fn features(&self) -> Features {
        // The server's default max_payload is 1 MiB for headers and payload together.
        Features::default().max_payload((1 << 20) - 4096)
    }

    fn publisher(&self) -> BoxFuture<'_, Arc<dyn Publisher>> {
        Box::pin(async {
            common::init_tracing();
            Arc::new(common::broker().await.publisher()) as Arc<dyn Publisher>
        })
    }

    fn subscriber(&self) -> BoxFuture<'_, Arc<dyn Subscriber>> {
        Box::pin(async { Arc::new(common::broker().await.subscriber()) as Arc<dyn Subscriber> })
    }

    fn create_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let url = common::url().await;
            self.cleanup.add(&url, topic);
            common::broker()
                .await
                .ensure_topic(topic)
                .await
                .unwrap_or_else(|e| panic!("ensure_topic {topic}: {e}"));
        })
    }
}

herald_testkit::conformance_tests!(NatsFactory::default());
