//! Orchestration helper: send a command and await its reply event (request/reply over
//! the bus), matched by correlation id, with a timeout.
//!
//! ```text
//!   Requester ── command (correlation-id = c, reply-to = R) ──▶ topic T ──▶ responder
//!       ▲                                                                  │
//!       └──────────── reply (correlation-id = c) ◀── topic R ◀─────────────┘
//! ```
//!
//! A [`Requester`] owns one subscription to its reply topic in a consumer group of its own
//! (so every requester instance sees every reply and keeps the ones it waits for), started
//! at the topic's end. [`Requester::connect`] returns once that subscription provably
//! receives: it publishes a probe to the reply topic and waits to see it, so a reply
//! cannot slip past before the consumer is positioned. Consumers that share the reply
//! topic should ignore the probe type ([`PROBE_TYPE`]) — typed handlers that dispatch by
//! `ce-type` do.
//!
//! Replies nobody waits for (late, after a timeout; or for another instance) are
//! acknowledged and dropped. For a long-running flow that must survive restarts, use a
//! [saga](crate::saga) instead: its waiting state is persisted.
//!
//! # Examples
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use herald_core::{Event, Inbound, JsonCodec, Router, memory::MemoryBroker};
//! use herald_patterns::request::{Requester, RequesterConfig, responder};
//!
//! #[derive(serde::Serialize, serde::Deserialize)] struct GetStock { sku: String }
//! impl Event for GetStock { const TYPE: &'static str = "inv.GetStock"; const VERSION: u32 = 1; }
//! #[derive(serde::Serialize, serde::Deserialize)] struct Stock { sku: String, units: u32 }
//! impl Event for Stock { const TYPE: &'static str = "inv.Stock"; const VERSION: u32 = 1; }
//!
//! let broker = MemoryBroker::new();
//! let inventory = Router::new()
//!     .route("stock", "inv.queries", "inventory", responder(JsonCodec, broker.clone(),
//!         |q: GetStock, _: Inbound| async move { Ok(Stock { sku: q.sku, units: 7 }) }))
//!     .start(broker.clone());
//! let requester = Requester::connect(broker.clone(), broker.clone(), "inv.replies", RequesterConfig::default()).await?;
//! let stock: Stock = requester
//!     .request_event(&JsonCodec, "inv.queries", &GetStock { sku: "apple".into() }, Duration::from_secs(5))
//!     .await?;
//! assert_eq!(stock.units, 7);
//! requester.close().await;
//! inventory.shutdown().await?;
//! # Ok(()) }
//! ```

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use herald_core::{
    Codec, CodecError, Error, Event, HandlerError, Inbound, Message, Publisher, StartFrom,
    SubscribeSpec, Subscriber,
};
use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tower::Service;

use crate::dispatch::group_name;

/// The header naming the topic a reply goes to.
pub const REPLY_TO: &str = "reply-to";

/// The CloudEvents type of the probe a requester publishes to its reply topic while
/// connecting.
pub const PROBE_TYPE: &str = "herald.patterns.RequesterProbe.v1";

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestErrorKind {
    /// No reply within the timeout.
    Timeout,
    /// The request could not be published.
    Publish,
    /// The reply subscription could not be made or ended.
    Subscribe,
    /// The request or the reply could not be encoded / decoded.
    Codec,
    /// Someone already waits for this correlation id.
    DuplicateCorrelation,
    /// The requester was closed.
    Closed,
}

impl fmt::Display for RequestErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Timeout => "no reply in time",
            Self::Publish => "request not published",
            Self::Subscribe => "reply subscription failed",
            Self::Codec => "cannot encode or decode",
            Self::DuplicateCorrelation => "correlation id already awaited",
            Self::Closed => "requester closed",
        })
    }
}

/// A failed request.
pub type RequestError = Error<RequestErrorKind>;

/// Settings of a [`Requester`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RequesterConfig {
    /// Prefix of the requester's own consumer group (`<prefix>-<uuid>`). Default
    /// `requester`.
    pub group_prefix: String,
    /// How long [`Requester::connect`] waits for its probe. Default 60 s (a Kafka group
    /// join can take seconds).
    pub ready_timeout: Duration,
    /// How often the probe is published while connecting. Default 500 ms.
    pub probe_every: Duration,
}

impl Default for RequesterConfig {
    fn default() -> Self {
        Self {
            group_prefix: "requester".into(),
            ready_timeout: Duration::from_secs(60),
            probe_every: Duration::from_millis(500),
        }
    }
}

impl RequesterConfig {
    /// Sets the prefix of the requester's consumer group.
    pub fn group_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.group_prefix = prefix.into();
        self
    }

    /// Sets how long connecting waits for the probe.
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Message>>>>;

/// Sends commands and awaits their replies; see the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct Requester {
    inner: Arc<Inner>,
}

struct Inner {
    publisher: Arc<dyn Publisher>,
    reply_topic: String,
    group: String,
    pending: Pending,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requester")
            .field("reply_topic", &self.inner.reply_topic)
            .field("group", &self.inner.group)
            .finish_non_exhaustive()
    }
}

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Message>>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl Requester {
    /// Subscribes to `reply_topic` in a fresh group and waits until the subscription
    /// receives.
    pub async fn connect<S: Subscriber + 'static>(
        publisher: impl Publisher + 'static,
        subscriber: S,
        reply_topic: &str,
        config: RequesterConfig,
    ) -> Result<Self, RequestError> {
        let group = group_name(&format!(
            "{}-{}",
            config.group_prefix,
            uuid::Uuid::now_v7().simple()
        ));
        let spec = SubscribeSpec::new(reply_topic, &group).start(StartFrom::Latest);
        let mut sub = subscriber.subscribe(spec).await.map_err(|e| {
            RequestError::new(RequestErrorKind::Subscribe, reply_topic.to_owned()).with_source(e)
        })?;
        let pending: Pending = Arc::default();
        let (stop, mut stop_rx) = watch::channel(false);
        let p = pending.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = async { let _ = stop_rx.wait_for(|s| *s).await; } => break,
                    next = sub.next() => match next {
                        Some(Ok(d)) => {
                            if let Some(c) = d.message.correlation_id()
                                && let Some(tx) = lock(&p).remove(c)
                            {
                                let _ = tx.send(d.message.clone());
                            }
                            if let Err(e) = d.ack().await {
                                tracing::debug!(error = %e, "ack of a reply failed");
                            }
                        }
                        Some(Err(e)) if e.is_retriable() => {
                            tracing::warn!(error = %e, "reply subscription error; continuing");
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "reply subscription failed");
                            break;
                        }
                        None => break,
                    }
                }
            }
            let _ = sub.close().await;
            // Waiters get `Closed` when their sender drops.
            lock(&p).clear();
        });
        let requester = Self {
            inner: Arc::new(Inner {
                publisher: Arc::new(publisher),
                reply_topic: reply_topic.to_owned(),
                group,
                pending,
                stop,
                task: Mutex::new(Some(task)),
            }),
        };
        requester.probe(&config).await?;
        Ok(requester)
    }

    async fn probe(&self, config: &RequesterConfig) -> Result<(), RequestError> {
        let corr = format!("probe-{}", uuid::Uuid::now_v7());
        let mut waiting = self.expect(&corr)?;
        let end = tokio::time::Instant::now() + config.ready_timeout;
        loop {
            let m = Message::new("{}")
                .with_type(PROBE_TYPE)
                .with_content_type("application/json")
                .with_correlation_id(corr.clone())
                .with_key(corr.clone());
            self.inner
                .publisher
                .publish(&self.inner.reply_topic, vec![m])
                .await
                .map_err(|e| {
                    RequestError::new(RequestErrorKind::Publish, "probe").with_source(e)
                })?;
            match tokio::time::timeout(config.probe_every, &mut waiting.rx).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(_)) => {
                    return Err(RequestError::new(
                        RequestErrorKind::Closed,
                        "while connecting",
                    ));
                }
                Err(_) if tokio::time::Instant::now() >= end => {
                    return Err(RequestError::new(
                        RequestErrorKind::Timeout,
                        format!(
                            "reply subscription on {} not live after {:?}",
                            self.inner.reply_topic, config.ready_timeout
                        ),
                    ));
                }
                Err(_) => {
                    // Re-register: the probe's sender is still in the map.
                }
            }
        }
    }

    /// The topic replies must go to (also set as the `reply-to` header of requests).
    pub fn reply_topic(&self) -> &str {
        &self.inner.reply_topic
    }

    /// Registers interest in the reply with `correlation_id`. Register *before* sending
    /// the command, then [`wait`](PendingReply::wait).
    pub fn expect(&self, correlation_id: &str) -> Result<PendingReply, RequestError> {
        let (tx, rx) = oneshot::channel();
        let mut p = lock(&self.inner.pending);
        if p.contains_key(correlation_id) {
            return Err(RequestError::new(
                RequestErrorKind::DuplicateCorrelation,
                correlation_id.to_owned(),
            ));
        }
        p.insert(correlation_id.to_owned(), tx);
        Ok(PendingReply {
            rx,
            correlation_id: correlation_id.to_owned(),
            pending: self.inner.pending.clone(),
        })
    }

    /// Publishes `message` to `topic` and waits up to `timeout` for its reply.
    ///
    /// The message's correlation id is used (a fresh one is set if it has none), and its
    /// `reply-to` header is set to the reply topic.
    pub async fn request(
        &self,
        topic: &str,
        mut message: Message,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let corr = match message.correlation_id() {
            Some(c) => c.to_owned(),
            None => {
                let c = uuid::Uuid::now_v7().to_string();
                message.set_correlation_id(c.clone());
                c
            }
        };
        message
            .headers
            .insert(REPLY_TO, self.inner.reply_topic.clone());
        let waiting = self.expect(&corr)?;
        self.inner
            .publisher
            .publish(topic, vec![message])
            .await
            .map_err(|e| {
                RequestError::new(RequestErrorKind::Publish, topic.to_owned()).with_source(e)
            })?;
        waiting.wait(timeout).await
    }

    /// Encodes `request`, sends it, and decodes the reply as `R`.
    pub async fn request_event<Q: Event, R: Event, C: Codec>(
        &self,
        codec: &C,
        topic: &str,
        request: &Q,
        timeout: Duration,
    ) -> Result<R, RequestError> {
        let m = codec.to_message(request).await.map_err(codec_err)?;
        let reply = self.request(topic, m, timeout).await?;
        codec.decode::<R>(&reply.payload).await.map_err(codec_err)
    }

    /// Stops the reply subscription. Waiting requests fail with `Closed`.
    pub async fn close(&self) {
        self.inner.stop.send_replace(true);
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

fn codec_err(e: CodecError) -> RequestError {
    RequestError::new(RequestErrorKind::Codec, e.to_string()).with_source(e)
}

/// A reply being waited for; dropping it stops waiting.
#[derive(Debug)]
pub struct PendingReply {
    rx: oneshot::Receiver<Message>,
    correlation_id: String,
    pending: Pending,
}

impl PendingReply {
    /// The correlation id.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// Waits up to `timeout` for the reply.
    pub async fn wait(mut self, timeout: Duration) -> Result<Message, RequestError> {
        match tokio::time::timeout(timeout, &mut self.rx).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(_)) => Err(RequestError::new(
                RequestErrorKind::Closed,
                self.correlation_id.clone(),
            )),
            Err(_) => Err(RequestError::new(
                RequestErrorKind::Timeout,
                format!("{} after {timeout:?}", self.correlation_id),
            )),
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        // Close first so the map's sender reads as closed; a newer waiter that registered
        // the same id after this one got its reply keeps its entry.
        self.rx.close();
        let mut p = lock(&self.pending);
        if p.get(&self.correlation_id).is_some_and(|tx| tx.is_closed()) {
            p.remove(&self.correlation_id);
        }
    }
}

/// A router handler answering requests: decodes `Q`, calls `f`, and publishes its reply
/// to the request's `reply-to` topic, caused by the request (so it carries the
/// correlation id).
///
/// A request without `reply-to` is a permanent failure (it goes to the dead-letter queue).
pub fn responder<Q, R, C, P, F, Fut>(codec: C, publisher: P, f: F) -> Responder<Q, C, F>
where
    Q: Event,
    R: Event,
    C: Codec,
    P: Publisher + 'static,
    F: Fn(Q, Inbound) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
{
    Responder {
        codec: Arc::new(codec),
        publisher: Arc::new(publisher),
        f,
        _q: std::marker::PhantomData,
    }
}

/// See [`responder`].
pub struct Responder<Q, C, F> {
    codec: Arc<C>,
    publisher: Arc<dyn Publisher>,
    f: F,
    _q: std::marker::PhantomData<fn() -> Q>,
}

impl<Q, C, F: Clone> Clone for Responder<Q, C, F> {
    fn clone(&self) -> Self {
        Self {
            codec: self.codec.clone(),
            publisher: self.publisher.clone(),
            f: self.f.clone(),
            _q: std::marker::PhantomData,
        }
    }
}

impl<Q, C, F> fmt::Debug for Responder<Q, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

impl<Q, R, C, F, Fut> Service<Inbound> for Responder<Q, C, F>
where
    Q: Event,
    R: Event,
    C: Codec,
    F: Fn(Q, Inbound) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let codec = self.codec.clone();
        let publisher = self.publisher.clone();
        let f = self.f.clone();
        Box::pin(async move {
            let Some(reply_to) = inbound.message.header(REPLY_TO).map(str::to_owned) else {
                return Err(HandlerError::permanent("request without a reply-to header"));
            };
            let q = codec.decode::<Q>(&inbound.message.payload).await?;
            let cause = inbound.message.clone();
            let r = f(q, inbound).await?;
            let mut m = codec.to_message(&r).await?.caused_by(&cause);
            m.key = cause.key.clone();
            publisher.publish(&reply_to, vec![m]).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use herald_core::{JsonCodec, Router, memory::MemoryBroker};

    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Add {
        a: i64,
        b: i64,
    }
    impl Event for Add {
        const TYPE: &'static str = "t.Add";
        const VERSION: u32 = 1;
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Sum {
        s: i64,
    }
    impl Event for Sum {
        const TYPE: &'static str = "t.Sum";
        const VERSION: u32 = 1;
    }

    #[tokio::test]
    async fn concurrent_requests_get_their_own_replies_and_silence_times_out() {
        let broker = MemoryBroker::new();
        let running = Router::new()
            .route_with(
                herald_core::RouteConfig::new("adder", "calc", "adder").concurrency(4),
                responder(JsonCodec, broker.clone(), |q: Add, _| async move {
                    Ok(Sum { s: q.a + q.b })
                }),
            )
            .start(broker.clone());
        let r = Requester::connect(
            broker.clone(),
            broker.clone(),
            "calc.replies",
            RequesterConfig::default(),
        )
        .await
        .unwrap();
        let calls = (0..50).map(|i| {
            let r = r.clone();
            async move {
                let s: Sum = r
                    .request_event(
                        &JsonCodec,
                        "calc",
                        &Add { a: i, b: 1000 },
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap();
                assert_eq!(s.s, i + 1000);
            }
        });
        futures::future::join_all(calls).await;
        // Nobody answers on "void".
        let err = r
            .request("void", Message::new("{}"), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), RequestErrorKind::Timeout);
        // A correlation id cannot be awaited twice.
        let _p = r.expect("c-1").unwrap();
        assert_eq!(
            r.expect("c-1").unwrap_err().kind(),
            RequestErrorKind::DuplicateCorrelation
        );
        r.close().await;
        running.shutdown().await.unwrap();
    }
}
