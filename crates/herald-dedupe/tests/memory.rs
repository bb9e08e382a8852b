//! The contract suite on the in-process store.

mod common;

use std::{sync::Arc, time::Duration};

use herald_core::dedupe::DedupeStore;
use herald_dedupe::memory::{MemoryDedupe, MemoryDedupeConfig};

async fn make(retention: Duration) -> Arc<dyn DedupeStore> {
    Arc::new(MemoryDedupe::new(
        MemoryDedupeConfig::default().retention(retention),
    ))
}

contract_tests!(
    make,
    common::Caps {
        reports_takeover: true
    }
);

#[tokio::test]
async fn clones_share_state() {
    let a = MemoryDedupe::default();
    let b = a.clone();
    let t = a.begin("k", Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        b.begin("k", Duration::from_secs(5)).await.unwrap(),
        herald_core::dedupe::Claim::InProgress
    );
    b.complete(t.token().unwrap()).await.unwrap();
    assert_eq!(
        a.begin("k", Duration::from_secs(5)).await.unwrap(),
        herald_core::dedupe::Claim::Duplicate
    );
}
