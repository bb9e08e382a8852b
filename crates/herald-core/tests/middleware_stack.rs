//! The `Stack` builder: the documented order, the dedupe slot taking any layer, the
//! closure middleware, and the policies' object safety.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use herald_core::{
    ErrorClass, HandlerError, Inbound, Message, Origin, PublishError, Publisher, RouteInfo, Router,
    handler_fn,
    memory::MemoryBroker,
    middleware::{
        Backoff, BreakerConfig, BreakerLayer, DeadLetterLayer, DeadLetterPolicy,
        DefaultDeadLetterPolicy, FromFnLayer, Next, RetryLayer, Stack, from_fn,
    },
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, layer::util::Identity};

fn inbound() -> Inbound {
    let route = Arc::new(RouteInfo {
        handler: "h".into(),
        topic: "orders".into(),
        group: "g".into(),
    });
    Inbound::new(Message::new("x"), Origin::new("orders"), 1, route)
}

/// What the router needs of a handler.
fn assert_handler<S>(_: &S)
where
    S: Service<Inbound, Response = (), Error = HandlerError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
}

/// A layer generic over any service, that does nothing.
#[derive(Clone)]
struct Passthrough;
impl<S> Layer<S> for Passthrough {
    type Service = S;
    fn layer(&self, inner: S) -> S {
        inner
    }
}

/// A layer with its own service type and bounds, as the dedupe layer has.
#[derive(Clone)]
struct Counting(Arc<AtomicU32>);
#[derive(Clone)]
struct CountingService<S> {
    inner: S,
    n: Arc<AtomicU32>,
}
impl<S> Layer<S> for Counting {
    type Service = CountingService<S>;
    fn layer(&self, inner: S) -> CountingService<S> {
        CountingService {
            inner,
            n: self.0.clone(),
        }
    }
}
impl<S> Service<Inbound> for CountingService<S>
where
    S: Service<Inbound, Response = (), Error = HandlerError>,
{
    type Response = ();
    type Error = HandlerError;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, i: Inbound) -> S::Future {
        self.n.fetch_add(1, Ordering::SeqCst);
        self.inner.call(i)
    }
}

fn ok_handler() -> impl Service<Inbound, Response = (), Error = HandlerError, Future = impl Send>
+ Clone
+ Send
+ Sync
+ 'static {
    handler_fn(|_: Inbound| async { Ok(()) })
}

#[test]
fn dedupe_slot_takes_any_layer_and_the_result_is_a_router_handler() {
    let broker = MemoryBroker::new();
    let full = || {
        Stack::new()
            .dead_letter(DeadLetterLayer::new(Arc::new(broker.clone())))
            .breaker(BreakerLayer::default())
            .retry(RetryLayer::default())
            .timeout(Duration::from_secs(1))
    };
    let a = full().service(ok_handler());
    let b = full().dedupe(Identity::new()).service(ok_handler());
    let c = full().dedupe(Passthrough).service(ok_handler());
    let d = full()
        .dedupe(Counting(Arc::default()))
        .service(ok_handler());
    let e = full()
        .dedupe(from_fn(|i: Inbound, next: Next| next.run(i)))
        .service(ok_handler());
    let f = full()
        .dedupe(tower::layer::layer_fn(|s| s))
        .service(ok_handler());
    let g = Stack::new().catch_panic(false).service(ok_handler());
    assert_handler(&a);
    assert_handler(&b);
    assert_handler(&c);
    assert_handler(&d);
    assert_handler(&e);
    assert_handler(&f);
    assert_handler(&g);
    let _router = Router::new()
        .route("a", "orders", "a", a)
        .route("d", "orders", "d", d)
        .route("e", "orders", "e", e);
    // A stack is itself a layer, below outer layers in a ServiceBuilder.
    let outer = ServiceBuilder::new()
        .layer(from_fn(|i: Inbound, next: Next| next.run(i)))
        .layer(full())
        .service(ok_handler());
    assert_handler(&outer);
}

/// Records what a slot sees: whether it was called and what came back from inside.
fn probe(
    log: Arc<Mutex<Vec<String>>>,
    name: &'static str,
) -> FromFnLayer<
    impl Fn(Inbound, Next) -> BoxFuture<'static, Result<(), HandlerError>>
    + Clone
    + Send
    + Sync
    + 'static,
> {
    from_fn(move |i: Inbound, next: Next| {
        let log = log.clone();
        Box::pin(async move {
            let r = next.run(i).await;
            let seen = match &r {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("{} redelivery={:?}", e.class(), e.redelivery()),
            };
            log.lock().unwrap().push(format!("{name}: {seen}"));
            r
        }) as BoxFuture<'static, _>
    })
}

#[tokio::test(start_paused = true)]
async fn dedupe_slot_is_inside_dead_letter_and_outside_breaker_and_retry() {
    let broker = MemoryBroker::new();
    let log = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let stack = Stack::new()
        .dead_letter(DeadLetterLayer::new(Arc::new(broker.clone())))
        .dedupe(probe(log.clone(), "dedupe"))
        .breaker(BreakerLayer::new(BreakerConfig {
            failure_threshold: 1,
            ..Default::default()
        }))
        .retry(RetryLayer::new(Backoff {
            immediate_attempts: 3,
            delayed_attempts: 0,
            jitter: 0.0,
            ..Default::default()
        }));
    let svc = stack.service(handler_fn(move |_: Inbound| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(HandlerError::transient("down")) }
    }));
    // 1st message: three attempts inside (retry is inside the slot), one outcome seen by
    // the slot (an error: the dead-letter layer is outside it), then dead-lettered → Ok.
    svc.clone().oneshot(inbound()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // 2nd message: the breaker is open, yet the slot still runs (it is outside the
    // breaker) and sees the rejection, which the dead-letter layer passes through.
    let err = svc.clone().oneshot(inbound()).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(err.redelivery().is_some());
    assert_eq!(
        *log.lock().unwrap(),
        [
            "dedupe: transient redelivery=None",
            "dedupe: transient redelivery=Some(30s)",
        ]
    );
    assert_eq!(broker.retained("orders.dlq"), 1);
}

#[tokio::test(start_paused = true)]
async fn timeout_is_per_attempt_inside_retry() {
    // Attempt 1 takes 80 ms, attempt 2 takes 80 ms and succeeds; the limit is 100 ms.
    // Per attempt, both fit. Over the whole retry loop (160 ms + backoff) it would not.
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = Stack::new()
        .retry(RetryLayer::new(Backoff {
            initial: Duration::from_millis(50),
            jitter: 0.0,
            immediate_attempts: 3,
            delayed_attempts: 0,
            ..Default::default()
        }))
        .timeout(Duration::from_millis(100))
        .service(handler_fn(move |_: Inbound| {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(Duration::from_millis(80)).await;
                if n == 1 {
                    Err(HandlerError::transient("first try fails"))
                } else {
                    Ok(())
                }
            }
        }));
    svc.oneshot(inbound()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A timed-out attempt is retried like any transient failure.
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = Stack::new()
        .retry(RetryLayer::new(Backoff {
            jitter: 0.0,
            immediate_attempts: 3,
            delayed_attempts: 0,
            ..Default::default()
        }))
        .timeout(Duration::from_millis(100))
        .service(handler_fn(move |_: Inbound| {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n < 3 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok(())
            }
        }));
    svc.oneshot(inbound()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn catch_panic_is_inside_retry_so_panics_are_not_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = Stack::new()
        .retry(RetryLayer::default())
        .service(handler_fn(move |_: Inbound| {
            c.fetch_add(1, Ordering::SeqCst);
            async { panic!("bug") }
        }));
    let err = svc.oneshot(inbound()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(err.message(), "handler panicked: bug");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn builder_call_order_does_not_change_the_stack() {
    let run = |stack: Stack| async move {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let svc = stack.service(handler_fn(move |_: Inbound| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }
        }));
        let r = svc.oneshot(inbound()).await;
        (r.is_ok(), calls.load(Ordering::SeqCst))
    };
    let broker = MemoryBroker::new();
    let dl = || DeadLetterLayer::new(Arc::new(broker.clone()));
    let retry = || {
        RetryLayer::new(Backoff {
            immediate_attempts: 2,
            delayed_attempts: 0,
            ..Default::default()
        })
    };
    let a = run(Stack::new()
        .timeout(Duration::from_millis(10))
        .retry(retry())
        .dead_letter(dl()))
    .await;
    let b = run(Stack::new()
        .dead_letter(dl())
        .retry(retry())
        .timeout(Duration::from_millis(10)))
    .await;
    // Either way: two timed-out attempts, then dead-lettered (Ok).
    assert_eq!(a, (true, 2));
    assert_eq!(b, a);
    assert_eq!(broker.retained("orders.dlq"), 2);
}

#[tokio::test]
async fn from_fn_can_short_circuit_and_rewrite_results() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let handler = handler_fn(move |_: Inbound| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(HandlerError::transient("inner failed")) }
    });
    let guard = from_fn(|i: Inbound, next: Next| async move {
        if i.message.ce_type().is_none() {
            return Err(HandlerError::permanent("no ce-type"));
        }
        next.run(i).await
    });
    let forgive = from_fn(|i: Inbound, next: Next| async move {
        match next.run(i).await {
            Err(e) if e.message() == "inner failed" => Ok(()),
            r => r,
        }
    });
    let svc = ServiceBuilder::new()
        .layer(forgive)
        .layer(guard)
        .service(handler);
    let err = svc.clone().oneshot(inbound()).await.unwrap_err();
    assert_eq!(err.message(), "no ce-type");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "short-circuited");
    let mut typed = inbound();
    typed.message = Arc::new(Message::new("x").with_type("OrderCreated.v1"));
    svc.oneshot(typed).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn dead_letter_policy_is_object_safe_and_closures_fit() {
    let policies: Vec<Arc<dyn DeadLetterPolicy>> = vec![
        Arc::new(DefaultDeadLetterPolicy),
        Arc::new(|i: &Inbound, e: &HandlerError| {
            (e.class() == ErrorClass::Permanent).then(|| format!("{}.poison", i.route.topic))
        }),
    ];
    let i = inbound();
    let e = HandlerError::permanent("x");
    assert_eq!(policies[0].topic(&i, &e).as_deref(), Some("orders.dlq"));
    assert_eq!(policies[1].topic(&i, &e).as_deref(), Some("orders.poison"));
    assert_eq!(policies[1].topic(&i, &HandlerError::transient("x")), None);
}

#[tokio::test]
async fn dead_letter_policy_picks_the_topic_or_drops() {
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, Message)>>);
    impl Publisher for Recorder {
        fn publish<'a>(
            &'a self,
            topic: &'a str,
            messages: Vec<Message>,
        ) -> BoxFuture<'a, Result<(), PublishError>> {
            let mut v = self.0.lock().unwrap();
            v.extend(messages.into_iter().map(|m| (topic.to_owned(), m)));
            Box::pin(async { Ok(()) })
        }
    }
    let rec = Arc::new(Recorder::default());
    let svc = DeadLetterLayer::new(rec.clone())
        .policy(|_: &Inbound, e: &HandlerError| {
            (e.message() != "drop me").then(|| "all.dlq".to_owned())
        })
        .layer(handler_fn(|i: Inbound| async move {
            Err::<(), _>(HandlerError::permanent(String::from_utf8_lossy(
                &i.message.payload,
            )))
        }));
    let mut a = inbound();
    a.message = Arc::new(Message::new("park me"));
    let mut b = inbound();
    b.message = Arc::new(Message::new("drop me"));
    svc.clone().oneshot(a).await.unwrap();
    svc.oneshot(b).await.unwrap();
    let v = rec.0.lock().unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].0, "all.dlq");
    assert_eq!(v[0].1.header("herald-error"), Some("park me"));
}
