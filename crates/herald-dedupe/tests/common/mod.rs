//! The dedupe store contract suite: the same cases run against every backend.
//!
//! A backend's test file calls [`contract_tests!`] with an async factory
//! `fn(retention: Duration) -> Arc<dyn DedupeStore>` (a fresh store: new key prefix or
//! table per call) and the [`Caps`] of the backend.
#![allow(dead_code)]

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use herald_core::dedupe::{Claim, ClaimToken, DedupeErrorKind, DedupeStore};
use tokio::sync::Barrier;

/// What a backend can do beyond the contract.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Whether a claim that took over an expired lease says so.
    pub reports_takeover: bool,
}

/// Polls `f` until it returns `Some`, or panics after `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn key(name: &str) -> String {
    format!("{name}:{}", uuid::Uuid::new_v4())
}

const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(10);

fn new(c: Claim) -> ClaimToken {
    match c {
        Claim::New(t) => t,
        other => panic!("expected a new claim, got {other:?}"),
    }
}

pub async fn claim_complete_duplicate(store: Arc<dyn DedupeStore>, _: Caps) {
    let k = key("ccd");
    let t = new(store.begin(&k, LONG).await.unwrap());
    assert_eq!(t.key(), k);
    assert!(!t.took_over_expired_lease());
    assert_eq!(store.begin(&k, LONG).await.unwrap(), Claim::InProgress);
    store.complete(&t).await.unwrap();
    assert_eq!(store.begin(&k, LONG).await.unwrap(), Claim::Duplicate);
    assert_eq!(store.begin(&k, LONG).await.unwrap(), Claim::Duplicate);
    // A second complete with the same token no longer holds a claim.
    let e = store.complete(&t).await.unwrap_err();
    assert_eq!(e.kind(), DedupeErrorKind::LeaseLost);
    // Other keys are independent.
    assert!(store.begin(&key("other"), LONG).await.unwrap().is_new());
}

pub async fn concurrent_claims_yield_one_new(store: Arc<dyn DedupeStore>, _: Caps) {
    let k = key("race");
    let barrier = Arc::new(Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, k, barrier) = (store.clone(), k.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.begin(&k, LONG).await.unwrap()
            })
        })
        .collect();
    let mut new = 0;
    let mut in_progress = 0;
    for t in tasks {
        match t.await.unwrap() {
            Claim::New(_) => new += 1,
            Claim::InProgress => in_progress += 1,
            Claim::Duplicate => panic!("nothing was completed"),
        }
    }
    assert_eq!((new, in_progress), (1, 15));
}

pub async fn lease_expiry_lets_another_worker_claim(store: Arc<dyn DedupeStore>, caps: Caps) {
    let k = key("lease");
    let started = Instant::now();
    let a = new(store.begin(&k, SHORT).await.unwrap());
    assert_eq!(store.begin(&k, LONG).await.unwrap(), Claim::InProgress);
    let b = eventually(WAIT, "the lease to run out", || async {
        store.begin(&k, LONG).await.unwrap().token().cloned()
    })
    .await;
    assert!(
        started.elapsed() >= SHORT - Duration::from_millis(50),
        "claimed again after {:?}, before the {SHORT:?} lease ended",
        started.elapsed()
    );
    assert_ne!(a.token(), b.token());
    if caps.reports_takeover {
        assert!(
            b.took_over_expired_lease(),
            "the backend should report the takeover"
        );
    }
    store.complete(&b).await.unwrap();
    assert_eq!(store.begin(&k, LONG).await.unwrap(), Claim::Duplicate);
}

pub async fn stale_token_cannot_settle(store: Arc<dyn DedupeStore>, _: Caps) {
    let k = key("stale");
    let a = new(store.begin(&k, SHORT).await.unwrap());
    let b = eventually(WAIT, "another worker to take the key over", || async {
        store.begin(&k, LONG).await.unwrap().token().cloned()
    })
    .await;
    let e = store.complete(&a).await.unwrap_err();
    assert_eq!(e.kind(), DedupeErrorKind::LeaseLost, "{e}");
    assert!(!e.is_retriable());
    let e = store.abandon(&a).await.unwrap_err();
    assert_eq!(e.kind(), DedupeErrorKind::LeaseLost, "{e}");
    // The stale worker changed nothing: B still holds the key.
    assert_eq!(store.begin(&k, LONG).await.unwrap(), Claim::InProgress);
    store.complete(&b).await.unwrap();
    assert_eq!(store.begin(&k, LONG).await.unwrap(), Claim::Duplicate);
    // Nor can it complete afterwards.
    assert!(store.complete(&a).await.unwrap_err().is_lease_lost());
}

pub async fn abandon_lets_a_new_claim_in(store: Arc<dyn DedupeStore>, _: Caps) {
    let k = key("abandon");
    let a = new(store.begin(&k, LONG).await.unwrap());
    store.abandon(&a).await.unwrap();
    let b = new(store.begin(&k, LONG).await.unwrap());
    assert_ne!(a.token(), b.token());
    assert!(!b.took_over_expired_lease());
    assert!(store.abandon(&a).await.unwrap_err().is_lease_lost());
    assert!(store.complete(&a).await.unwrap_err().is_lease_lost());
    store.complete(&b).await.unwrap();
    assert_eq!(store.begin(&k, LONG).await.unwrap(), Claim::Duplicate);
    // Abandoning a completed key changes nothing.
    assert!(store.abandon(&b).await.unwrap_err().is_lease_lost());
    assert_eq!(store.begin(&k, LONG).await.unwrap(), Claim::Duplicate);
}

pub async fn unknown_token_is_lease_lost(store: Arc<dyn DedupeStore>, _: Caps) {
    let t = ClaimToken::generate(key("never"));
    assert!(store.complete(&t).await.unwrap_err().is_lease_lost());
    assert!(store.abandon(&t).await.unwrap_err().is_lease_lost());
}

/// Needs a store whose retention is [`SHORT`].
pub async fn completed_key_forgotten_after_retention(store: Arc<dyn DedupeStore>, _: Caps) {
    let k = key("retention");
    let t = new(store.begin(&k, LONG).await.unwrap());
    store.complete(&t).await.unwrap();
    let done_at = Instant::now();
    assert_eq!(store.begin(&k, LONG).await.unwrap(), Claim::Duplicate);
    let again = eventually(WAIT, "the completed key to be forgotten", || async {
        store.begin(&k, LONG).await.unwrap().token().cloned()
    })
    .await;
    assert!(
        done_at.elapsed() >= SHORT - Duration::from_millis(50),
        "forgotten after {:?}, before the {SHORT:?} retention",
        done_at.elapsed()
    );
    assert!(!again.took_over_expired_lease());
    store.complete(&again).await.unwrap();
}

pub async fn batches(store: Arc<dyn DedupeStore>, _: Caps) {
    let (k1, k2, k3) = (key("b1"), key("b2"), key("b3"));
    let t3 = new(store.begin(&k3, LONG).await.unwrap());
    store.complete(&t3).await.unwrap();
    let keys = vec![k1.clone(), k2.clone(), k1.clone(), k3.clone()];
    let claims = store.begin_many(&keys, LONG).await.unwrap();
    assert_eq!(claims.len(), 4);
    let t1 = claims[0].token().cloned().expect("k1 is new");
    let t2 = claims[1].token().cloned().expect("k2 is new");
    assert_eq!(t1.key(), k1);
    assert_eq!(t2.key(), k2);
    assert_eq!(
        claims[2],
        Claim::InProgress,
        "a repeat in the batch is held by its first"
    );
    assert_eq!(claims[3], Claim::Duplicate);
    // Held by the batch.
    assert_eq!(store.begin(&k1, LONG).await.unwrap(), Claim::InProgress);
    let stale = ClaimToken::generate(k2.clone());
    let results = store.complete_many(&[t1, stale, t2]).await;
    assert!(results[0].is_ok());
    assert!(results[1].as_ref().unwrap_err().is_lease_lost());
    assert!(results[2].is_ok());
    let again = store.begin_many(&keys, LONG).await.unwrap();
    assert!(again.iter().all(|c| *c == Claim::Duplicate), "{again:?}");
    assert!(store.begin_many(&[], LONG).await.unwrap().is_empty());
    assert!(store.complete_many(&[]).await.is_empty());
}

pub async fn concurrent_batches_claim_each_key_once(store: Arc<dyn DedupeStore>, _: Caps) {
    let keys: Vec<String> = (0..200).map(|i| key(&format!("cb{i}"))).collect();
    let barrier = Arc::new(Barrier::new(4));
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let (store, barrier) = (store.clone(), barrier.clone());
            // Overlapping batches in different orders.
            let mut mine: Vec<String> = keys.iter().skip(w * 25).take(125).cloned().collect();
            if w % 2 == 1 {
                mine.reverse();
            }
            tokio::spawn(async move {
                barrier.wait().await;
                let claims = store.begin_many(&mine, LONG).await.unwrap();
                claims
                    .into_iter()
                    .filter_map(|c| c.token().cloned())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut won = std::collections::HashMap::new();
    for t in tasks {
        for tok in t.await.unwrap() {
            *won.entry(tok.key().to_owned()).or_insert(0) += 1;
        }
    }
    assert_eq!(won.len(), 200, "every key claimed");
    assert!(won.values().all(|n| *n == 1), "no key claimed twice");
}

/// Expands the contract suite into one `#[tokio::test]` per case.
///
/// `$make` is an async fn `(retention: Duration) -> Arc<dyn DedupeStore>`.
#[macro_export]
macro_rules! contract_tests {
    ($make:path, $caps:expr) => {
        $crate::contract_tests!(@case $make, $caps, claim_complete_duplicate, ::std::time::Duration::from_secs(3600));
        $crate::contract_tests!(@case $make, $caps, concurrent_claims_yield_one_new, ::std::time::Duration::from_secs(3600));
        $crate::contract_tests!(@case $make, $caps, lease_expiry_lets_another_worker_claim, ::std::time::Duration::from_secs(3600));
        $crate::contract_tests!(@case $make, $caps, stale_token_cannot_settle, ::std::time::Duration::from_secs(3600));
        $crate::contract_tests!(@case $make, $caps, abandon_lets_a_new_claim_in, ::std::time::Duration::from_secs(3600));
        $crate::contract_tests!(@case $make, $caps, unknown_token_is_lease_lost, ::std::time::Duration::from_secs(3600));
        $crate::contract_tests!(@case $make, $caps, completed_key_forgotten_after_retention, ::std::time::Duration::from_millis(300));
        $crate::contract_tests!(@case $make, $caps, batches, ::std::time::Duration::from_secs(3600));
        $crate::contract_tests!(@case $make, $caps, concurrent_batches_claim_each_key_once, ::std::time::Duration::from_secs(3600));
    };
    (@case $make:path, $caps:expr, $name:ident, $retention:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let store = $make($retention).await;
            common::$name(store, $caps).await;
        }
    };
}
