//! The in-process transport: herald only (there is no raw client to compare with).
//!
//! * publish: a topic whose capacity holds every message (nobody consumes, and a full
//!   topic makes `publish` wait), `publish` calls of `window` messages;
//! * consume: a pre-filled topic drained with `subscribe` + `ack()` per delivery;
//! * roundtrip: the default capacity (65 536), the publisher and the subscriber on the
//!   same runtime — by default a current-thread one, so it measures one core.

use herald_core::{
    Subscriber,
    memory::{MemoryBroker, MemoryConfig},
};

use crate::{
    cli::{Scenario, System},
    herald_side,
    workload::{Measured, Result, Workload, unique},
};

/// Runs herald once.
pub async fn run(scenario: Scenario, w: &Workload) -> Result<Measured> {
    let topic = unique(scenario, System::Herald, "");
    let total = w.warmup + w.messages;
    let partitions = usize::try_from(w.partitions).unwrap_or(1);
    let config = MemoryConfig::default().partitions(partitions);
    let spec = w.spec(&topic, "bench");
    match scenario {
        Scenario::Publish => {
            let broker = MemoryBroker::with_config(config.capacity(total));
            let m = herald_side::publish_run(&broker, &topic, w).await?;
            let retained = broker.retained(&topic);
            if retained != total {
                return Err(
                    format!("the topic holds {retained} messages, expected {total}").into(),
                );
            }
            Ok(m)
        }
        Scenario::Consume => {
            let broker = MemoryBroker::with_config(config.capacity(total));
            herald_side::publish(&broker, &topic, w, 0, total).await?;
            let mut sub = broker.subscribe(spec).await?;
            let m = herald_side::consume(&mut sub, w).await?;
            sub.close().await?;
            Ok(m)
        }
        Scenario::Roundtrip => {
            let broker = MemoryBroker::with_config(config);
            let mut sub = broker.subscribe(spec).await?;
            let m = herald_side::roundtrip(broker.clone(), &mut sub, &topic, w).await?;
            sub.close().await?;
            let lag = broker.lag(&topic, "bench");
            if lag != 0 {
                return Err(format!("{lag} messages left unacknowledged").into());
            }
            Ok(m)
        }
    }
}
