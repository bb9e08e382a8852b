//! The dedupe middleware against a scriptable in-process store: what each store answer
//! and each handler outcome turns into, and the metrics it records. (The real backends
//! run the same layer in `herald-dedupe`'s tests.)

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use herald_core::{
    ErrorClass, HandlerError, Inbound, Message, Origin, RouteInfo,
    dedupe::{Claim, ClaimToken, DedupeError, DedupeErrorKind, DedupeStore},
    handler_fn,
    middleware::dedupe::{DedupeLayer, MissingKey, metric_names},
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Layer, ServiceExt};

#[derive(Debug, Clone, PartialEq)]
enum Slot {
    Held(ClaimToken),
    Done,
}

/// A store whose failures the test switches on.
#[derive(Default)]
struct Scripted {
    keys: Mutex<HashMap<String, Slot>>,
    log: Mutex<Vec<String>>,
    down: AtomicBool,
    hang: AtomicBool,
    complete_fails: AtomicBool,
    takeover: AtomicBool,
    leases: Mutex<Vec<Duration>>,
}

impl Scripted {
    fn log(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
    fn calls(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
    fn state(&self, key: &str) -> Option<Slot> {
        self.keys.lock().unwrap().get(key).cloned()
    }
    async fn gate(&self) -> Result<(), DedupeError> {
        if self.hang.load(Ordering::SeqCst) {
            futures::future::pending::<()>().await;
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(DedupeError::new(DedupeErrorKind::Unavailable, "down"));
        }
        Ok(())
    }
}

impl DedupeStore for Scripted {
    fn begin<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, DedupeError>> {
        Box::pin(async move {
            self.gate().await?;
            self.log(format!("begin {key}"));
            self.leases.lock().unwrap().push(lease);
            let mut m = self.keys.lock().unwrap();
            Ok(match m.get(key) {
                Some(Slot::Done) => Claim::Duplicate,
                Some(Slot::Held(_)) => Claim::InProgress,
                None => {
                    let t = ClaimToken::generate(key)
                        .with_takeover(self.takeover.load(Ordering::SeqCst));
                    m.insert(key.to_owned(), Slot::Held(t.clone()));
                    Claim::New(t)
                }
            })
        })
    }

    fn complete<'a>(&'a self, claim: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
        Box::pin(async move {
            self.gate().await?;
            self.log(format!("complete {}", claim.key()));
            if self.complete_fails.load(Ordering::SeqCst) {
                return Err(DedupeError::lease_lost(claim));
            }
            let mut m = self.keys.lock().unwrap();
            match m.get(claim.key()) {
                Some(Slot::Held(t)) if t == claim => {
                    m.insert(claim.key().to_owned(), Slot::Done);
                    Ok(())
                }
                _ => Err(DedupeError::lease_lost(claim)),
            }
        })
    }

    fn abandon<'a>(&'a self, claim: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
        Box::pin(async move {
            self.gate().await?;
            self.log(format!("abandon {}", claim.key()));
            let mut m = self.keys.lock().unwrap();
            match m.get(claim.key()) {
                Some(Slot::Held(t)) if t == claim => {
                    m.remove(claim.key());
                    Ok(())
                }
                _ => Err(DedupeError::lease_lost(claim)),
            }
        })
    }
}

fn route() -> Arc<RouteInfo> {
    Arc::new(RouteInfo {
        handler: "billing-handler".into(),
        topic: "orders".into(),
        group: "billing".into(),
    })
}

fn inbound(msg: &Message) -> Inbound {
    Inbound::new(msg.clone(), Origin::new("orders"), 1, route())
}

/// A handler counting its calls and answering with `result`.
fn counting(
    calls: Arc<AtomicU32>,
    result: Result<(), HandlerError>,
) -> impl tower::Service<
    Inbound,
    Response = (),
    Error = HandlerError,
    Future = BoxFuture<'static, Result<(), HandlerError>>,
> + Clone {
    handler_fn(move |_: Inbound| {
        calls.fetch_add(1, Ordering::SeqCst);
        let r = result.clone();
        Box::pin(async move { r }) as BoxFuture<'static, _>
    })
}

#[tokio::test]
async fn new_claim_runs_then_completes_and_a_repeat_is_acked_without_running() {
    let store = Arc::new(Scripted::default());
    let calls = Arc::new(AtomicU32::new(0));
    let svc = DedupeLayer::new(store.clone()).layer(counting(calls.clone(), Ok(())));
    let msg = Message::new("x");
    svc.clone().oneshot(inbound(&msg)).await.unwrap();
    let key = format!("billing:{}", msg.id);
    assert_eq!(store.state(&key), Some(Slot::Done));
    svc.oneshot(inbound(&msg)).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the duplicate must not run the handler"
    );
    assert_eq!(
        store.calls(),
        [
            format!("begin {key}"),
            format!("complete {key}"),
            format!("begin {key}")
        ]
    );
    assert_eq!(*store.leases.lock().unwrap(), [Duration::from_secs(30); 2]);
}

#[tokio::test]
async fn in_progress_is_a_transient_error_with_redelivery() {
    let store = Arc::new(Scripted::default());
    let msg = Message::new("x");
    let key = format!("billing:{}", msg.id);
    let Claim::New(_held) = store.begin(&key, Duration::from_secs(30)).await.unwrap() else {
        panic!()
    };
    let calls = Arc::new(AtomicU32::new(0));
    let svc = DedupeLayer::new(store.clone())
        .in_progress_delay(Duration::from_millis(1500))
        .layer(counting(calls.clone(), Ok(())));
    let e = svc.oneshot(inbound(&msg)).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient);
    assert_eq!(e.redelivery(), Some(Duration::from_millis(1500)));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn store_down_never_acks_and_never_runs_the_handler() {
    let store = Arc::new(Scripted::default());
    store.down.store(true, Ordering::SeqCst);
    let calls = Arc::new(AtomicU32::new(0));
    let svc = DedupeLayer::new(store.clone())
        .unavailable_delay(Duration::from_secs(7))
        .layer(counting(calls.clone(), Ok(())));
    let e = svc
        .clone()
        .oneshot(inbound(&Message::new("x")))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient);
    assert_eq!(e.redelivery(), Some(Duration::from_secs(7)));
    let source = std::error::Error::source(&e).expect("the store error is the source");
    assert!(source.to_string().contains("unavailable"), "{source}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_store_times_out_as_unavailable() {
    let store = Arc::new(Scripted::default());
    store.hang.store(true, Ordering::SeqCst);
    let calls = Arc::new(AtomicU32::new(0));
    let svc = DedupeLayer::new(store.clone())
        .store_timeout(Duration::from_secs(2))
        .layer(counting(calls.clone(), Ok(())));
    let e = svc.oneshot(inbound(&Message::new("x"))).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient);
    assert!(e.redelivery().is_some());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn failed_complete_is_transient_with_redelivery() {
    let store = Arc::new(Scripted::default());
    store.complete_fails.store(true, Ordering::SeqCst);
    let calls = Arc::new(AtomicU32::new(0));
    let svc = DedupeLayer::new(store.clone()).layer(counting(calls.clone(), Ok(())));
    let e = svc.oneshot(inbound(&Message::new("x"))).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran");
    assert_eq!(e.class(), ErrorClass::Transient);
    assert_eq!(e.redelivery(), Some(Duration::from_secs(5)));
}

#[tokio::test]
async fn handler_error_abandons_the_claim_and_passes_through() {
    let store = Arc::new(Scripted::default());
    let calls = Arc::new(AtomicU32::new(0));
    let svc = DedupeLayer::new(store.clone()).layer(counting(
        calls.clone(),
        Err(HandlerError::permanent("bad payload")),
    ));
    let msg = Message::new("x");
    let key = format!("billing:{}", msg.id);
    let e = svc.clone().oneshot(inbound(&msg)).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent);
    assert_eq!(e.message(), "bad payload");
    assert_eq!(e.redelivery(), None);
    assert_eq!(store.state(&key), None, "abandoned: a replay can claim it");
    // A replay of the message (e.g. from the DLQ) runs the handler again.
    let _ = svc.oneshot(inbound(&msg)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn custom_key_and_missing_key_policies() {
    let store = Arc::new(Scripted::default());
    let calls = Arc::new(AtomicU32::new(0));
    let layer = DedupeLayer::new(store.clone()).key_fn(|i: &Inbound| {
        i.message
            .header("idempotency-key")
            .map(|k| format!("pay:{k}"))
    });
    let svc = layer.clone().layer(counting(calls.clone(), Ok(())));
    // Two different messages with one business key: handled once.
    for _ in 0..2 {
        let m = Message::new("x").with_header("idempotency-key", "inv-7");
        svc.clone().oneshot(inbound(&m)).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(store.state("pay:inv-7"), Some(Slot::Done));
    // No key: bypass by default …
    svc.oneshot(inbound(&Message::new("y"))).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // … or reject.
    let strict = layer
        .missing_key(MissingKey::Reject)
        .layer(counting(calls.clone(), Ok(())));
    let e = strict
        .oneshot(inbound(&Message::new("z")))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_dropped_handler_releases_its_claim() {
    let store = Arc::new(Scripted::default());
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let entered_tx = Arc::new(Mutex::new(Some(entered_tx)));
    let svc = DedupeLayer::new(store.clone()).layer(handler_fn(move |_: Inbound| {
        if let Some(tx) = entered_tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
        futures::future::pending::<Result<(), HandlerError>>()
    }));
    let msg = Message::new("x");
    let key = format!("billing:{}", msg.id);
    let task = tokio::spawn(svc.oneshot(inbound(&msg)));
    entered_rx.await.unwrap();
    assert!(matches!(store.state(&key), Some(Slot::Held(_))));
    task.abort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.state(&key).is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the claim was not released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(store.calls().contains(&format!("abandon {key}")));
}

fn counter(
    snapshot: &[(metrics_util::CompositeKey, DebugValue)],
    name: &str,
    labels: &[(&str, &str)],
) -> u64 {
    snapshot
        .iter()
        .filter(|(k, _)| k.key().name() == name)
        .filter(|(k, _)| {
            labels
                .iter()
                .all(|(n, v)| k.key().labels().any(|l| l.key() == *n && l.value() == *v))
        })
        .map(|(_, v)| match v {
            DebugValue::Counter(c) => *c,
            _ => 0,
        })
        .sum()
}

#[test]
fn metrics_count_claims_duplicates_in_progress_and_expiries() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = Arc::new(Scripted::default());
            let calls = Arc::new(AtomicU32::new(0));
            let svc = DedupeLayer::new(store.clone()).layer(counting(calls.clone(), Ok(())));
            let a = Message::new("a");
            svc.clone().oneshot(inbound(&a)).await.unwrap(); // claim
            svc.clone().oneshot(inbound(&a)).await.unwrap(); // duplicate
            let b = Message::new("b");
            let _held = store
                .begin(&format!("billing:{}", b.id), Duration::from_secs(9))
                .await;
            let _ = svc.clone().oneshot(inbound(&b)).await; // in progress
            store.takeover.store(true, Ordering::SeqCst);
            svc.clone()
                .oneshot(inbound(&Message::new("c")))
                .await
                .unwrap(); // claim, taken over
            store.takeover.store(false, Ordering::SeqCst);
            store.complete_fails.store(true, Ordering::SeqCst);
            let _ = svc.clone().oneshot(inbound(&Message::new("d"))).await; // claim, lease lost
            store.down.store(true, Ordering::SeqCst);
            let _ = svc.oneshot(inbound(&Message::new("e"))).await; // store error
        });
    });
    let snap = snapshotter.snapshot().into_vec();
    let snap: Vec<_> = snap.into_iter().map(|(k, _, _, v)| (k, v)).collect();
    let h = [("handler", "billing-handler")];
    assert_eq!(counter(&snap, metric_names::CLAIMS, &h), 3);
    assert_eq!(counter(&snap, metric_names::DUPLICATES, &h), 1);
    assert_eq!(counter(&snap, metric_names::IN_PROGRESS, &h), 1);
    assert_eq!(
        counter(
            &snap,
            metric_names::LEASE_EXPIRIES,
            &[("handler", "billing-handler"), ("seen_by", "taker")]
        ),
        1
    );
    assert_eq!(
        counter(
            &snap,
            metric_names::LEASE_EXPIRIES,
            &[("handler", "billing-handler"), ("seen_by", "holder")]
        ),
        1
    );
    assert_eq!(
        counter(&snap, metric_names::STORE_ERRORS, &[("op", "begin")]),
        1
    );
    assert_eq!(
        counter(&snap, metric_names::STORE_ERRORS, &[("op", "complete")]),
        1
    );
    assert_eq!(
        counter(&snap, "herald_dedupe_claims_total", &h),
        3,
        "the documented name"
    );
}

#[test]
fn the_layer_is_clone_and_debug() {
    let store: Arc<dyn DedupeStore> = Arc::new(Scripted::default());
    let layer = DedupeLayer::new(store).lease(Duration::from_secs(90));
    assert_eq!(layer.clone().lease_duration(), Duration::from_secs(90));
    assert!(format!("{layer:?}").contains("90s"));
}
