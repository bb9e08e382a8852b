//! The circuit breaker's state machine on tokio's paused clock.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use herald_core::{
    ErrorClass, HandlerError, Inbound, Message, Origin, RouteInfo, handler_fn,
    middleware::{
        Breaker, BreakerConfig, BreakerHook, BreakerLayer, BreakerState, breaker::error::Rejected,
    },
};
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt, util::BoxCloneSyncService};

fn inbound() -> Inbound {
    let route = Arc::new(RouteInfo {
        handler: "reserve".into(),
        topic: "orders".into(),
        group: "inventory".into(),
    });
    Inbound::new(Message::new("x"), Origin::new("orders"), 1, route)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Ok,
    Transient,
    Permanent,
    /// Wait for `release`, then succeed.
    Hang,
}

/// A handler whose answer the test switches, counting its calls.
#[derive(Clone)]
struct Dependency {
    mode: Arc<Mutex<Mode>>,
    calls: Arc<AtomicU32>,
    release: Arc<Notify>,
}

impl Dependency {
    fn new() -> Self {
        Self {
            mode: Arc::new(Mutex::new(Mode::Ok)),
            calls: Arc::default(),
            release: Arc::new(Notify::new()),
        }
    }
    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
    fn service(&self) -> Handler {
        let me = self.clone();
        Handler::new(handler_fn(move |_: Inbound| {
            me.calls.fetch_add(1, Ordering::SeqCst);
            let mode = *me.mode.lock().unwrap();
            let release = me.release.clone();
            async move {
                match mode {
                    Mode::Ok => Ok(()),
                    Mode::Transient => Err(HandlerError::transient("dependency down")),
                    Mode::Permanent => Err(HandlerError::permanent("bad message")),
                    Mode::Hang => {
                        release.notified().await;
                        Ok(())
                    }
                }
            }
        }))
    }
}

type Handler = BoxCloneSyncService<Inbound, (), HandlerError>;

type Changes = Arc<Mutex<Vec<(String, BreakerState, BreakerState)>>>;

fn breaker(dep: &Dependency, cfg: BreakerConfig) -> (Breaker<Handler>, Changes) {
    let changes: Changes = Arc::default();
    let c = changes.clone();
    let layer = BreakerLayer::new(cfg).on_state_change(
        move |route: &RouteInfo, from: BreakerState, to: BreakerState| {
            c.lock().unwrap().push((route.handler.clone(), from, to));
        },
    );
    (layer.layer(dep.service()), changes)
}

fn cfg(threshold: u32) -> BreakerConfig {
    BreakerConfig {
        failure_threshold: threshold,
        open_for: Duration::from_secs(30),
        half_open_trials: 1,
        half_open_wait: Duration::from_secs(2),
    }
}

async fn call<S>(svc: &S) -> Result<(), HandlerError>
where
    S: Service<Inbound, Response = (), Error = HandlerError> + Clone,
{
    svc.clone().oneshot(inbound()).await
}

#[tokio::test(start_paused = true)]
async fn closed_open_half_open_closed() {
    let dep = Dependency::new();
    let (svc, changes) = breaker(&dep, cfg(3));
    dep.set(Mode::Transient);

    // Two failures, a success (resets), then three in a row open it.
    call(&svc).await.unwrap_err();
    call(&svc).await.unwrap_err();
    dep.set(Mode::Ok);
    call(&svc).await.unwrap();
    assert_eq!(svc.handle().consecutive_failures(), 0);
    dep.set(Mode::Transient);
    for n in 1..=3 {
        assert_eq!(svc.state(), BreakerState::Closed, "before failure {n}");
        call(&svc).await.unwrap_err();
    }
    assert_eq!(svc.state(), BreakerState::Open);
    assert_eq!(dep.calls(), 6);

    // Open: the handler is not called; the message is sent back for the time left.
    tokio::time::advance(Duration::from_secs(10)).await;
    let err = call(&svc).await.unwrap_err();
    assert_eq!(dep.calls(), 6, "an open breaker must not call the handler");
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(err.redelivery(), Some(Duration::from_secs(20)));
    assert!(
        err.message().starts_with("circuit breaker open"),
        "{}",
        err.message()
    );
    let source = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<Rejected>())
        .expect("typed source");
    assert_eq!(source.state(), BreakerState::Open);

    // After the open interval, one trial goes through; its success closes the circuit.
    tokio::time::advance(Duration::from_secs(20)).await;
    dep.set(Mode::Ok);
    call(&svc).await.unwrap();
    assert_eq!(dep.calls(), 7);
    assert_eq!(svc.state(), BreakerState::Closed);
    call(&svc).await.unwrap();
    assert_eq!(dep.calls(), 8);

    let seen = changes.lock().unwrap().clone();
    let reserve = |f, t| ("reserve".to_owned(), f, t);
    assert_eq!(
        seen,
        [
            reserve(BreakerState::Closed, BreakerState::Open),
            reserve(BreakerState::Open, BreakerState::HalfOpen),
            reserve(BreakerState::HalfOpen, BreakerState::Closed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_trial_failure_reopens_for_a_full_interval() {
    let dep = Dependency::new();
    let (svc, changes) = breaker(&dep, cfg(1));
    dep.set(Mode::Transient);
    call(&svc).await.unwrap_err();
    assert_eq!(svc.state(), BreakerState::Open);

    tokio::time::advance(Duration::from_secs(30)).await;
    let err = call(&svc).await.unwrap_err();
    assert_eq!(err.message(), "dependency down", "the trial ran and failed");
    assert_eq!(dep.calls(), 2);
    assert_eq!(svc.state(), BreakerState::Open);

    // A fresh interval started at the failed trial.
    tokio::time::advance(Duration::from_secs(1)).await;
    let err = call(&svc).await.unwrap_err();
    assert_eq!(err.redelivery(), Some(Duration::from_secs(29)));
    assert_eq!(dep.calls(), 2);

    assert_eq!(
        changes
            .lock()
            .unwrap()
            .iter()
            .map(|c| (c.1, c.2))
            .collect::<Vec<_>>(),
        [
            (BreakerState::Closed, BreakerState::Open),
            (BreakerState::Open, BreakerState::HalfOpen),
            (BreakerState::HalfOpen, BreakerState::Open),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_a_limited_number_of_trials_through() {
    let dep = Dependency::new();
    let (svc, _) = breaker(
        &dep,
        BreakerConfig {
            half_open_trials: 2,
            ..cfg(1)
        },
    );
    dep.set(Mode::Transient);
    call(&svc).await.unwrap_err();
    tokio::time::advance(Duration::from_secs(30)).await;

    // Two trials hang; the third call is turned away with the half-open wait.
    dep.set(Mode::Hang);
    let trial1 = tokio::spawn({
        let s = svc.clone();
        async move { s.oneshot(inbound()).await }
    });
    let trial2 = tokio::spawn({
        let s = svc.clone();
        async move { s.oneshot(inbound()).await }
    });
    while dep.calls() < 3 {
        tokio::task::yield_now().await;
    }
    assert_eq!(svc.state(), BreakerState::HalfOpen);
    let err = call(&svc).await.unwrap_err();
    assert_eq!(dep.calls(), 3, "only two trials may run");
    assert_eq!(err.redelivery(), Some(Duration::from_secs(2)));
    assert!(err.message().contains("half-open"), "{}", err.message());

    dep.release.notify_waiters();
    trial1.await.unwrap().unwrap();
    trial2.await.unwrap().unwrap();
    assert_eq!(svc.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_neither_count_nor_reset() {
    let dep = Dependency::new();
    let (svc, _) = breaker(&dep, cfg(2));
    dep.set(Mode::Transient);
    call(&svc).await.unwrap_err();
    dep.set(Mode::Permanent);
    for _ in 0..5 {
        call(&svc).await.unwrap_err();
    }
    assert_eq!(
        svc.state(),
        BreakerState::Closed,
        "bad messages say nothing of the dependency"
    );
    assert_eq!(
        svc.handle().consecutive_failures(),
        1,
        "and do not reset the count"
    );
    dep.set(Mode::Transient);
    call(&svc).await.unwrap_err();
    assert_eq!(svc.state(), BreakerState::Open);

    // A permanent result of a trial frees the slot; the next trial decides.
    tokio::time::advance(Duration::from_secs(30)).await;
    dep.set(Mode::Permanent);
    call(&svc).await.unwrap_err();
    assert_eq!(svc.state(), BreakerState::HalfOpen);
    dep.set(Mode::Ok);
    call(&svc).await.unwrap();
    assert_eq!(svc.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn clones_share_a_circuit_and_each_built_service_has_its_own() {
    let dep = Dependency::new();
    dep.set(Mode::Transient);
    let layer = BreakerLayer::new(cfg(2));
    let a = layer.layer(dep.service());
    let b = layer.layer(dep.service());
    let a2 = a.clone();
    call(&a).await.unwrap_err();
    call(&a2).await.unwrap_err();
    assert_eq!(a.state(), BreakerState::Open, "clones count together");
    assert_eq!(a2.state(), BreakerState::Open);
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "another handler's circuit is untouched"
    );
    let handle = a.handle();
    tokio::time::advance(Duration::from_secs(30)).await;
    dep.set(Mode::Ok);
    call(&a2).await.unwrap();
    assert_eq!(handle.state(), BreakerState::Closed);
}

#[test]
fn breaker_hook_is_object_safe() {
    struct Count(AtomicU32);
    impl BreakerHook for Count {
        fn on_state_change(&self, _: &RouteInfo, _: BreakerState, _: BreakerState) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let hooks: Vec<Arc<dyn BreakerHook>> = vec![
        Arc::new(Count(AtomicU32::new(0))),
        Arc::new(herald_core::middleware::DefaultBreakerHook),
    ];
    let route = RouteInfo {
        handler: "h".into(),
        topic: "t".into(),
        group: "g".into(),
    };
    for h in &hooks {
        h.on_state_change(&route, BreakerState::Closed, BreakerState::Open);
    }
}
