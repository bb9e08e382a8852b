//! The [`Router`]: subscribes handlers to topics and settles every delivery.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use tokio::{
    sync::{mpsc, watch},
    task::{JoinHandle, JoinSet},
};
use tower::{ServiceExt, util::BoxCloneSyncService};
use tower_service::Service;

use crate::{
    Delivery, ErrorClass, HandlerError, Inbound, RouteInfo, SubscribeError, SubscribeSpec,
    Subscriber, handler::BoxHandler,
};

/// How long a plain `Err` (one no middleware rewrote) waits before redelivery.
pub const DEFAULT_NACK_DELAY: Duration = Duration::from_secs(1);

/// One route's settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RouteConfig {
    /// The handler's name (metrics, logs, DLQ headers).
    pub name: String,
    /// The topic.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// How many deliveries are handled at once. Messages with the same key are always
    /// handled one after another, in order; different keys run in parallel up to this.
    pub concurrency: usize,
    /// The subscription's in-flight bound (see [`SubscribeSpec::max_in_flight`]).
    pub max_in_flight: usize,
}

impl RouteConfig {
    /// A route named `name` for `group` on `topic`, concurrency 1.
    pub fn new(
        name: impl Into<String>,
        topic: impl Into<String>,
        group: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            topic: topic.into(),
            group: group.into(),
            concurrency: 1,
            max_in_flight: 256,
        }
    }

    /// Sets the concurrency (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Sets the subscription's in-flight bound.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
}

struct Route {
    config: RouteConfig,
    handler: BoxHandler,
}

/// Why the router stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// A route could not subscribe, or its subscription failed for good.
    #[error("route {route}: {source}")]
    Subscribe {
        /// The route's name.
        route: String,
        /// The cause.
        #[source]
        source: SubscribeError,
    },
    /// A handler returned a [`Fatal`](ErrorClass::Fatal) error.
    #[error("route {route}: fatal handler error: {source}")]
    Fatal {
        /// The route's name.
        route: String,
        /// The handler's error.
        #[source]
        source: HandlerError,
    },
}

/// Maps topics and consumer groups to handlers, and runs them.
///
/// The router defines what a handler result means, once for every transport:
///
/// | handler result | router does |
/// |---|---|
/// | `Ok(())` | `ack` |
/// | `Err(e)` with `e.redelivery() == Some(d)` | `nack(d)` — broker redelivers after `d` |
/// | `Err(e)`, class Transient or Permanent | `nack(`[`DEFAULT_NACK_DELAY`]`)` |
/// | `Err(e)`, class Fatal | `nack(0)`, stop every route, [`run`](Self::run) returns the error |
///
/// Middleware rewrites results before the router sees them: the dead-letter layer turns a
/// spent failure into `Ok` after publishing it to `<topic>.dlq`, so in a full stack only
/// delayed redeliveries and fatal errors reach the table's lower rows.
///
/// Deliveries with the same key run one after another in their order; others run
/// concurrently up to [`RouteConfig::concurrency`]. On shutdown the router stops taking
/// deliveries, lets in-flight handlers finish within the drain deadline, settles them,
/// and closes each subscription (which commits on Kafka).
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_core::{handler_fn, memory::MemoryBroker, Message, Publisher, Router};
/// let broker = MemoryBroker::new();
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let router = Router::new().route("print", "greetings", "printer", handler_fn(move |i: herald_core::Inbound| {
///     let tx = tx.clone();
///     async move { tx.send(i.message.payload.clone()).ok(); Ok(()) }
/// }));
/// let running = router.start(broker.clone());
/// broker.publish("greetings", vec![Message::new("hello")]).await?;
/// assert_eq!(&rx.recv().await.unwrap()[..], b"hello");
/// running.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct Router {
    routes: Vec<Route>,
    drain_timeout: Duration,
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field(
                "routes",
                &self.routes.iter().map(|r| &r.config).collect::<Vec<_>>(),
            )
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

impl Router {
    /// A router with no routes and a 30 s drain deadline.
    pub fn new() -> Self {
        Self {
            routes: Vec::new(),
            drain_timeout: Duration::from_secs(30),
        }
    }

    /// Routes `topic` for `group` to `handler`, named `name`, concurrency 1.
    pub fn route<S>(self, name: &str, topic: &str, group: &str, handler: S) -> Self
    where
        S: Service<Inbound, Response = (), Error = HandlerError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        self.route_with(RouteConfig::new(name, topic, group), handler)
    }

    /// Routes with full settings.
    pub fn route_with<S>(mut self, config: RouteConfig, handler: S) -> Self
    where
        S: Service<Inbound, Response = (), Error = HandlerError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        self.routes.push(Route {
            config,
            handler: BoxCloneSyncService::new(handler),
        });
        self
    }

    /// How long shutdown waits for in-flight handlers before abandoning them (they are
    /// then redelivered).
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// Runs every route until `shutdown` resolves, then drains.
    pub async fn run<S>(
        self,
        subscriber: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), RouterError>
    where
        S: Subscriber + Clone + 'static,
    {
        let mut running = self.start(subscriber);
        let stop = running.stop.clone();
        let Some(mut done) = running.join.take() else {
            return Ok(());
        };
        tokio::select! {
            r = &mut done => return r.unwrap_or(Ok(())),
            _ = shutdown => {}
        }
        stop.send_replace(true);
        done.await.unwrap_or(Ok(()))
    }

    /// Starts every route in the background; stop with [`Running::shutdown`].
    pub fn start<S>(self, subscriber: S) -> Running
    where
        S: Subscriber + Clone + 'static,
    {
        let (stop, stop_rx) = watch::channel(false);
        let drain = self.drain_timeout;
        let stop2 = stop.clone();
        let join = tokio::spawn(async move {
            // Route tasks live in a JoinSet owned by this task: aborting it (see
            // `Running::abort`) drops the set, which aborts every route and, through their
            // own sets, every lane.
            let mut routes = JoinSet::new();
            for route in self.routes {
                let sub = subscriber.clone();
                let stop_rx = stop_rx.clone();
                let stop = stop2.clone();
                routes.spawn(async move {
                    let r = run_route(route, sub, stop_rx, drain).await;
                    if r.is_err() {
                        // One route failing for good stops the others.
                        stop.send_replace(true);
                    }
                    r
                });
            }
            let mut first_err = Ok(());
            while let Some(r) = routes.join_next().await {
                if let Ok(Err(e)) = r
                    && first_err.is_ok()
                {
                    first_err = Err(e);
                }
            }
            first_err
        });
        Running {
            stop,
            join: Some(join),
        }
    }
}

/// A started router.
#[derive(Debug)]
pub struct Running {
    stop: watch::Sender<bool>,
    join: Option<JoinHandle<Result<(), RouterError>>>,
}

impl Running {
    /// Stops taking deliveries, drains in-flight handlers and closes subscriptions.
    pub async fn shutdown(mut self) -> Result<(), RouterError> {
        self.stop.send_replace(true);
        match self.join.take() {
            Some(j) => j.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    /// Waits until the router stops by itself (a fatal error or a failed subscription).
    pub async fn wait(mut self) -> Result<(), RouterError> {
        match self.join.take() {
            Some(j) => j.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    /// Stops at once without draining: every route and lane task is aborted, in-flight
    /// deliveries are dropped (and so redelivered) and subscriptions are dropped without
    /// `close` — what a crash looks like to the broker. For tests.
    pub fn abort(mut self) {
        if let Some(j) = self.join.take() {
            j.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropping the handle without `shutdown` still stops the router (with a drain).
        if self.join.is_some() {
            self.stop.send_replace(true);
        }
    }
}

fn lane_of(d: &Delivery, lanes: usize, rr: &mut usize) -> usize {
    match &d.message.key {
        Some(k) => {
            let mut h = DefaultHasher::new();
            k.hash(&mut h);
            (h.finish() % lanes as u64) as usize
        }
        None => {
            *rr = (*rr + 1) % lanes;
            *rr
        }
    }
}

async fn run_route<S: Subscriber>(
    route: Route,
    subscriber: S,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> Result<(), RouterError> {
    let cfg = route.config;
    let info = Arc::new(RouteInfo {
        handler: cfg.name.clone(),
        topic: cfg.topic.clone(),
        group: cfg.group.clone(),
    });
    let spec = SubscribeSpec::new(&cfg.topic, &cfg.group).max_in_flight(cfg.max_in_flight);
    let mut sub = subscriber
        .subscribe(spec)
        .await
        .map_err(|source| RouterError::Subscribe {
            route: cfg.name.clone(),
            source,
        })?;
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<HandlerError>(1);
    let mut lanes = JoinSet::new();
    let mut senders = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency {
        let (tx, rx) = mpsc::channel::<Delivery>(1);
        senders.push(tx);
        lanes.spawn(lane(
            rx,
            route.handler.clone(),
            info.clone(),
            fatal_tx.clone(),
        ));
    }
    drop(fatal_tx);
    let mut rr = 0usize;
    let mut result = Ok(());
    loop {
        tokio::select! {
            biased;
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            Some(err) = fatal_rx.recv() => {
                tracing::error!(route = %cfg.name, error = %err, "fatal handler error; stopping");
                result = Err(RouterError::Fatal { route: cfg.name.clone(), source: err });
                break;
            }
            next = sub.next() => match next {
                Some(Ok(d)) => {
                    let i = lane_of(&d, senders.len(), &mut rr);
                    // Waiting here is the backpressure: a busy lane stops the fetch.
                    if let Err(mpsc::error::SendError(d)) = senders[i].send(d).await {
                        let _ = d.nack(Duration::ZERO).await;
                        break;
                    }
                }
                Some(Err(e)) if e.is_retriable() => {
                    tracing::warn!(route = %cfg.name, error = %e, "subscription error; continuing");
                }
                Some(Err(source)) => {
                    result = Err(RouterError::Subscribe { route: cfg.name.clone(), source });
                    break;
                }
                None => break,
            }
        }
    }
    drop(senders);
    let drained = async { while lanes.join_next().await.is_some() {} };
    if tokio::time::timeout(drain, drained).await.is_err() {
        tracing::warn!(route = %cfg.name, "drain deadline passed; abandoning in-flight deliveries");
    }
    if let Err(e) = sub.close().await {
        tracing::warn!(route = %cfg.name, error = %e, "closing subscription failed");
    }
    if result.is_ok()
        && let Ok(err) = fatal_rx.try_recv()
    {
        result = Err(RouterError::Fatal {
            route: cfg.name.clone(),
            source: err,
        });
    }
    result
}

async fn lane(
    mut rx: mpsc::Receiver<Delivery>,
    mut handler: BoxHandler,
    info: Arc<RouteInfo>,
    fatal: mpsc::Sender<HandlerError>,
) {
    while let Some(d) = rx.recv().await {
        let (message, origin, attempt, acker) = d.into_parts();
        let inbound = Inbound::new(message, origin, attempt, info.clone());
        let result = match handler.ready().await {
            Ok(h) => h.call(inbound).await,
            Err(e) => Err(e),
        };
        let settled = match result {
            Ok(()) => acker.ack().await,
            Err(e) if e.class() == ErrorClass::Fatal => {
                let _ = acker.nack(Duration::ZERO).await;
                let _ = fatal.try_send(e);
                return;
            }
            Err(e) => {
                let delay = e.redelivery().unwrap_or(DEFAULT_NACK_DELAY);
                tracing::debug!(route = %info.handler, error = %e, ?delay, "nack");
                acker.nack(delay).await
            }
        };
        if let Err(e) = settled {
            // The broker redelivers what was not settled; nothing is lost here.
            tracing::warn!(route = %info.handler, error = %e, "settling a delivery failed");
        }
    }
}
