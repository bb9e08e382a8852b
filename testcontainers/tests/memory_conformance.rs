//! The conformance suite on the in-memory transport.

use std::sync::Arc;

use futures::future::BoxFuture;
use herald_core::{Publisher, Subscriber, memory::MemoryBroker};
use herald_testkit::conformance::{Features, TransportFactory};

#[derive(Default)]
struct Memory(MemoryBroker);

impl TransportFactory for Memory {
    fn features(&self) -> Features {
        Features::default()
    }
    fn publisher(&self) -> BoxFuture<'_, Arc<dyn Publisher>> {
        Box::pin(async { Arc::new(self.0.clone()) as Arc<dyn Publisher> })
    }
    fn subscriber(&self) -> BoxFuture<'_, Arc<dyn Subscriber>> {
        Box::pin(async { Arc::new(self.0.clone()) as Arc<dyn Subscriber> })
    }
    fn create_topic<'a>(&'a self, _topic: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

herald_testkit::conformance_tests!(Memory::default());
