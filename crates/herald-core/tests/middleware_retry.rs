//! The retry layer on tokio's paused clock: attempt counts, backoff delays within the
//! jitter bounds, delayed redelivery, and what is never retried.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use herald_core::{
    ErrorClass, HandlerError, Inbound, Message, Origin, RouteInfo, handler_fn,
    middleware::{Backoff, Retry, RetryLayer, RetryPolicy},
};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

fn inbound(attempt: u32) -> Inbound {
    let route = Arc::new(RouteInfo {
        handler: "h".into(),
        topic: "orders".into(),
        group: "g".into(),
    });
    Inbound::new(Message::new("x"), Origin::new("orders"), attempt, route)
}

/// A handler that records when it was called and answers from a script (the last entry
/// repeats).
#[derive(Clone)]
struct Scripted {
    calls: Arc<Mutex<Vec<(Instant, u32, u32)>>>,
    script: Arc<Vec<Result<(), HandlerError>>>,
}

impl Scripted {
    fn new(script: Vec<Result<(), HandlerError>>) -> Self {
        Self {
            calls: Arc::default(),
            script: Arc::new(script),
        }
    }
    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
    fn times(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().iter().map(|c| c.0).collect()
    }
    fn service(
        &self,
    ) -> impl Service<Inbound, Response = (), Error = HandlerError, Future = impl Send + 'static>
    + Clone
    + Send
    + 'static {
        let me = self.clone();
        handler_fn(move |i: Inbound| {
            let n = {
                let mut calls = me.calls.lock().unwrap();
                calls.push((Instant::now(), i.attempt, i.local_attempt));
                calls.len()
            };
            let r = me.script[(n - 1).min(me.script.len() - 1)].clone();
            async move { r }
        })
    }
}

fn no_jitter(immediate: u32, delayed: u32) -> Backoff {
    Backoff {
        initial: Duration::from_millis(100),
        multiplier: 2.0,
        max: Duration::from_secs(30),
        jitter: 0.0,
        immediate_attempts: immediate,
        delayed_attempts: delayed,
    }
}

#[tokio::test(start_paused = true)]
async fn exact_attempts_and_jittered_delays_within_bounds() {
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        multiplier: 3.0,
        max: Duration::from_secs(30),
        jitter: 0.3,
        immediate_attempts: 5,
        delayed_attempts: 0,
    };
    // Several runs, so more than one jitter draw is checked per wait.
    for _ in 0..20 {
        let h = Scripted::new(vec![Err(HandlerError::transient("busy"))]);
        let svc = RetryLayer::new(backoff.clone()).layer(h.service());
        let err = svc.oneshot(inbound(1)).await.unwrap_err();
        assert_eq!(err.message(), "busy");
        assert_eq!(err.redelivery(), None, "no delayed attempts configured");
        assert_eq!(h.count(), 5);
        let local: Vec<u32> = h.calls.lock().unwrap().iter().map(|c| c.2).collect();
        assert_eq!(local, [1, 2, 3, 4, 5]);
        for (n, pair) in h.times().windows(2).enumerate() {
            let waited = pair[1] - pair[0];
            let (lo, hi) = backoff.delay_bounds(n as u32 + 1);
            // tokio's timer has millisecond resolution: a sleep may end up to 1 ms late.
            assert!(
                waited >= lo && waited <= hi + Duration::from_millis(1),
                "wait {} was {waited:?}, bounds {lo:?}..={hi:?}",
                n + 1
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_steps_are_observed_with_advance() {
    let h = Scripted::new(vec![Err(HandlerError::transient("busy"))]);
    let svc = RetryLayer::new(no_jitter(3, 0)).layer(h.service());
    let task = tokio::spawn(svc.oneshot(inbound(1)));
    let settle = || async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    };
    settle().await;
    assert_eq!(h.count(), 1);
    tokio::time::advance(Duration::from_millis(99)).await;
    settle().await;
    assert_eq!(h.count(), 1, "second attempt before the 100 ms wait passed");
    tokio::time::advance(Duration::from_millis(2)).await;
    settle().await;
    assert_eq!(h.count(), 2);
    tokio::time::advance(Duration::from_millis(198)).await;
    settle().await;
    assert_eq!(h.count(), 2, "third attempt before the 200 ms wait passed");
    tokio::time::advance(Duration::from_millis(2)).await;
    settle().await;
    assert_eq!(h.count(), 3);
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
}

#[tokio::test(start_paused = true)]
async fn spent_immediate_attempts_ask_for_redelivery_then_give_up() {
    let policy = no_jitter(3, 2);
    // In-process waits are delay(1), delay(2); delivery k's redelivery is delay(3 + k - 1).
    let expected = [
        (1, Some(policy.base_delay(3))),
        (2, Some(policy.base_delay(4))),
        (3, None),
    ];
    for (attempt, redelivery) in expected {
        let h = Scripted::new(vec![Err(HandlerError::transient("busy"))]);
        let svc = RetryLayer::new(policy.clone()).layer(h.service());
        let start = Instant::now();
        let err = svc.oneshot(inbound(attempt)).await.unwrap_err();
        assert_eq!(h.count(), 3, "delivery {attempt}");
        assert_eq!(err.redelivery(), redelivery, "delivery {attempt}");
        assert_eq!(err.class(), ErrorClass::Transient);
        // Only the two in-process waits were slept; the redelivery wait is the broker's.
        assert!(start.elapsed() < Duration::from_millis(302));
        let attempts: Vec<u32> = h.calls.lock().unwrap().iter().map(|c| c.1).collect();
        assert_eq!(
            attempts, [attempt; 3],
            "the broker attempt is passed on unchanged"
        );
    }
    assert_eq!(policy.base_delay(3), Duration::from_millis(400));
    assert_eq!(policy.base_delay(4), Duration::from_millis(800));
}

#[tokio::test(start_paused = true)]
async fn permanent_is_never_retried() {
    let h = Scripted::new(vec![Err(HandlerError::permanent("bad total"))]);
    let svc = RetryLayer::new(no_jitter(5, 5)).layer(h.service());
    let start = Instant::now();
    let err = svc.oneshot(inbound(1)).await.unwrap_err();
    assert_eq!(h.count(), 1);
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(
        err.redelivery(),
        None,
        "permanent: straight to the dead-letter layer"
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn permanent_after_transient_stops_retrying() {
    let h = Scripted::new(vec![
        Err(HandlerError::transient("busy")),
        Err(HandlerError::permanent("bad")),
        Ok(()),
    ]);
    let svc = RetryLayer::new(no_jitter(5, 5)).layer(h.service());
    let err = svc.oneshot(inbound(1)).await.unwrap_err();
    assert_eq!(h.count(), 2);
    assert_eq!(err.message(), "bad");
    assert_eq!(err.redelivery(), None);
}

#[tokio::test(start_paused = true)]
async fn transient_succeeding_on_third_attempt_is_ok() {
    let h = Scripted::new(vec![
        Err(HandlerError::transient("busy")),
        Err(HandlerError::transient("busy")),
        Ok(()),
    ]);
    let svc = RetryLayer::new(no_jitter(3, 0)).layer(h.service());
    let start = Instant::now();
    svc.oneshot(inbound(1)).await.unwrap();
    assert_eq!(h.count(), 3);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed <= Duration::from_millis(302),
        "{elapsed:?}"
    );
}

/// A policy with state: counts how often it was asked. Not `Clone`, so the layer cannot
/// be cloning it.
#[derive(Default)]
struct Counting {
    asked: AtomicU32,
}

impl RetryPolicy for Counting {
    fn retries(&self, error: &HandlerError) -> bool {
        self.asked.fetch_add(1, Ordering::SeqCst);
        error.class() != ErrorClass::Fatal
    }
    fn immediate_attempts(&self) -> u32 {
        2
    }
    fn delayed_attempts(&self) -> u32 {
        0
    }
    fn delay(&self, _n: u32) -> Duration {
        Duration::from_millis(5)
    }
}

#[test]
fn retry_policy_is_object_safe() {
    let boxed: Box<dyn RetryPolicy> = Box::new(Backoff::default());
    assert_eq!(boxed.immediate_attempts(), 3);
    let shared: Arc<dyn RetryPolicy> = Arc::new(Counting::default());
    let policies: Vec<Arc<dyn RetryPolicy>> = vec![shared, Arc::new(Backoff::default())];
    assert_eq!(policies.len(), 2);
    // `Arc<dyn RetryPolicy>` is itself a policy.
    let _layer = RetryLayer::new(Arc::<dyn RetryPolicy>::from(boxed));
}

#[tokio::test(start_paused = true)]
async fn one_policy_is_shared_by_every_clone_and_call() {
    let policy = Arc::new(Counting::default());
    let h = Scripted::new(vec![Err(HandlerError::permanent(
        "custom policy retries this",
    ))]);
    let svc: Retry<_> = RetryLayer::from_arc(policy.clone()).layer(h.service());
    svc.clone().oneshot(inbound(1)).await.unwrap_err();
    svc.clone().oneshot(inbound(1)).await.unwrap_err();
    // Two calls × two attempts, each asking the one shared policy.
    assert_eq!(h.count(), 4);
    assert_eq!(policy.asked.load(Ordering::SeqCst), 4);
    assert!(Arc::ptr_eq(
        svc.policy(),
        &(policy.clone() as Arc<dyn RetryPolicy>)
    ));
}

#[tokio::test(start_paused = true)]
async fn fatal_is_never_retried_even_by_a_policy_that_says_so() {
    struct Everything;
    impl RetryPolicy for Everything {
        fn retries(&self, _: &HandlerError) -> bool {
            true
        }
        fn immediate_attempts(&self) -> u32 {
            5
        }
        fn delayed_attempts(&self) -> u32 {
            5
        }
        fn delay(&self, _: u32) -> Duration {
            Duration::from_millis(1)
        }
    }
    let h = Scripted::new(vec![Err(HandlerError::fatal("credentials revoked"))]);
    let svc = RetryLayer::new(Everything).layer(h.service());
    let err = svc.oneshot(inbound(1)).await.unwrap_err();
    assert_eq!(h.count(), 1);
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert_eq!(err.redelivery(), None);
}
