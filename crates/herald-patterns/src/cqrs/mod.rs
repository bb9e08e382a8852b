//! CQRS: a command side that validates and emits events, and projections that build read
//! models from events.
//!
//! ```text
//!   command ─▶ CommandSide::handler ─ decide: validate ─▶ events ─▶ topic ─▶ Projector ─▶ ReadModelStore ◀─ queries
//!                                    └ rejected ─▶ CommandRejected (or the DLQ)
//! ```
//!
//! # Command side
//! [`CommandSide::handler`] decodes a command, calls a `decide` function that validates it
//! against whatever state it needs and returns the events it causes ([`Decision`]), and
//! publishes them caused by the command (same correlation id). A [`Rejection`] is either
//! published as a [`CommandRejected`] event (with [`CommandSide::rejections`]) or treated as
//! a permanent failure (dead-letter queue).
//!
//! # Projections
//! A [`Projection<M>`] says, per event type, which read-model document an event touches
//! and how it changes it. A [`Projector`] runs it: one route per topic in the projection's
//! consumer group, and for each event *load document → apply → commit* with the
//! idempotency mark in the same atomic write ([`ReadModelStore::commit`]):
//!
//! * [`Idempotency::MessageId`] (default): the store remembers applied message ids, so a
//!   redelivered event — after a crash, a rebalance, a replay — changes nothing. Works
//!   with any concurrency and any redelivery order.
//! * [`Idempotency::Position`]: one checkpoint per ordered lane (topic + partition, or
//!   the stream), so the store stays small. It relies on events of a lane being applied
//!   in order: the projector runs each route with concurrency 1, and a failing event must
//!   be retried in place (retry middleware) — a nack that lets younger events pass would
//!   make the older one look applied when it comes back.
//!
//! Resuming is the consumer group's job: a restarted projector continues from the
//! group's committed position, and anything delivered again is recognised by its mark.
//! Rebuilding is replaying: [`Projector::rebuild`] clears a namespace and consumes the
//! topics from the earliest retained message in a fresh consumer group — into the live
//! namespace, or a new one to swap to once it has caught up.
//!
//! # Examples
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_core::{Codec, Event, JsonCodec, Publisher, memory::MemoryBroker};
//! use herald_patterns::cqrs::{MemoryReadModelStore, Projection, Projector};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Deposited { account: String, cents: i64 }
//! impl Event for Deposited { const TYPE: &'static str = "bank.Deposited"; const VERSION: u32 = 1; }
//!
//! #[derive(serde::Serialize, serde::Deserialize, Clone, Default, Debug, PartialEq)]
//! struct Balance { cents: i64 }
//!
//! let projection = Projection::<Balance>::new("balances")
//!     .on("bank", |e: &Deposited| e.account.clone(), |doc, e: &Deposited, _meta| {
//!         doc.get_or_insert_with(Balance::default).cents += e.cents;
//!     });
//! let broker = MemoryBroker::new();
//! let projector = Projector::new(projection, MemoryReadModelStore::new());
//! let running = projector.start(broker.clone());
//! for cents in [100, 250] {
//!     let m = JsonCodec.to_message(&Deposited { account: "a-1".into(), cents }).await?;
//!     broker.publish("bank", vec![m.with_key("a-1")]).await?;
//! }
//! let balance = herald_patterns::wait_for(std::time::Duration::from_secs(5), || async {
//!     projector.get("a-1").await.ok().flatten().filter(|b| b.cents == 350)
//! }).await;
//! assert_eq!(balance, Some(Balance { cents: 350 }));
//! running.shutdown().await?;
//! # Ok(()) }
//! ```

mod postgres;
mod store;

use std::{
    collections::BTreeMap,
    fmt,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use herald_core::{
    Codec, Event, HandlerError, Inbound, JsonCodec, Message, Origin, Publisher, RouteConfig,
    RouteInfo, Router, Running, Subscriber, handler::BoxHandler, handler_fn,
};
pub use postgres::PgReadModelStore;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
pub use store::{
    Applied, Change, Document, Mark, MemoryReadModelStore, ReadModelError, ReadModelErrorKind,
    ReadModelStore,
};
use tower::Service;

use crate::{
    dispatch::{Middleware, TypeTable, group_name, transient},
    upcast::Upcasters,
};

// ───────────────────────────── command side ─────────────────────────────

/// The events a command causes.
#[derive(Clone, Debug)]
pub struct Decision<E> {
    /// The ordering key of the events (default: the command's key).
    pub key: Option<String>,
    /// The events, in order.
    pub events: Vec<E>,
}

impl<E> Default for Decision<E> {
    fn default() -> Self {
        Self {
            key: None,
            events: Vec::new(),
        }
    }
}

impl<E> Decision<E> {
    /// No events yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// One event.
    pub fn event(e: E) -> Self {
        Self {
            key: None,
            events: vec![e],
        }
    }

    /// Adds an event.
    pub fn emit(mut self, e: E) -> Self {
        self.events.push(e);
        self
    }

    /// Sets the ordering key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// Why a command was not accepted.
#[derive(Clone, Debug)]
pub enum Rejection {
    /// The command is invalid (validation failed): it will never be accepted.
    Invalid(String),
    /// Deciding failed for a reason that may pass (a store was down): retry.
    Failed(HandlerError),
}

impl Rejection {
    /// An invalid command.
    pub fn invalid(reason: impl fmt::Display) -> Self {
        Self::Invalid(reason.to_string())
    }
}

/// Published when a command is rejected (with [`CommandSide::rejections`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRejected {
    /// The command's CloudEvents type.
    pub command_type: String,
    /// The command's message id.
    pub command_id: String,
    /// The command's key.
    pub key: Option<String>,
    /// Why.
    pub reason: String,
}

impl Event for CommandRejected {
    const TYPE: &'static str = "herald.CommandRejected";
    const VERSION: u32 = 1;
}

/// Why a direct [`CommandSide::execute`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The command was rejected.
    #[error("command rejected: {0}")]
    Rejected(String),
    /// Deciding, encoding or publishing failed.
    #[error(transparent)]
    Failed(#[from] HandlerError),
}

/// The write side: validates commands and publishes the events they cause.
pub struct CommandSide<C = JsonCodec> {
    publisher: Arc<dyn Publisher>,
    codec: Arc<C>,
    source: String,
    rejections: Option<String>,
}

impl<C> Clone for CommandSide<C> {
    fn clone(&self) -> Self {
        Self {
            publisher: self.publisher.clone(),
            codec: self.codec.clone(),
            source: self.source.clone(),
            rejections: self.rejections.clone(),
        }
    }
}

impl<C> fmt::Debug for CommandSide<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandSide")
            .field("source", &self.source)
            .field("rejections", &self.rejections)
            .finish_non_exhaustive()
    }
}

impl CommandSide<JsonCodec> {
    /// A command side publishing JSON events through `publisher`, as service `source`.
    pub fn new(publisher: impl Publisher + 'static, source: impl Into<String>) -> Self {
        Self::with_codec(publisher, source, JsonCodec)
    }
}

impl<C: Codec> CommandSide<C> {
    /// A command side with `codec`.
    pub fn with_codec(
        publisher: impl Publisher + 'static,
        source: impl Into<String>,
        codec: C,
    ) -> Self {
        Self {
            publisher: Arc::new(publisher),
            codec: Arc::new(codec),
            source: source.into(),
            rejections: None,
        }
    }

    /// Publishes rejections as [`CommandRejected`] to `topic` instead of failing them to
    /// the dead-letter queue.
    pub fn rejections(mut self, topic: impl Into<String>) -> Self {
        self.rejections = Some(topic.into());
        self
    }

    async fn publish_events<E: Event>(
        &self,
        topic: &str,
        cause: Option<&Message>,
        key: Option<String>,
        events: &[E],
    ) -> Result<Vec<Message>, HandlerError> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let mut m = self
                .codec
                .to_message(e)
                .await?
                .with_source(self.source.clone());
            if let Some(c) = cause {
                m = m.caused_by(c);
            }
            m.key = key
                .clone()
                .map(bytes::Bytes::from)
                .or_else(|| cause.and_then(|c| c.key.clone()));
            out.push(m);
        }
        if !out.is_empty() {
            self.publisher.publish(topic, out.clone()).await?;
        }
        Ok(out)
    }

    /// Validates `command` with `decide` and publishes its events to `events_topic`
    /// (in-process callers: an HTTP handler, a CLI).
    pub async fn execute<Q, E, F, Fut>(
        &self,
        command: Q,
        events_topic: &str,
        decide: F,
    ) -> Result<Vec<Message>, CommandError>
    where
        Q: Event,
        E: Event,
        F: FnOnce(Q) -> Fut,
        Fut: Future<Output = Result<Decision<E>, Rejection>>,
    {
        match decide(command).await {
            Ok(d) => Ok(self
                .publish_events(events_topic, None, d.key, &d.events)
                .await?),
            Err(Rejection::Invalid(r)) => Err(CommandError::Rejected(r)),
            Err(Rejection::Failed(e)) => Err(CommandError::Failed(e)),
        }
    }

    /// A router handler for commands `Q`: decode, `decide`, publish the events to
    /// `events_topic` caused by the command.
    pub fn handler<Q, E, F, Fut>(&self, events_topic: &str, decide: F) -> CommandHandler<Q, C, F>
    where
        Q: Event,
        E: Event,
        F: Fn(Q, Inbound) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Decision<E>, Rejection>> + Send + 'static,
    {
        CommandHandler {
            side: self.clone(),
            events_topic: events_topic.to_owned(),
            decide,
            _q: std::marker::PhantomData,
        }
    }
}

/// See [`CommandSide::handler`].
pub struct CommandHandler<Q, C, F> {
    side: CommandSide<C>,
    events_topic: String,
    decide: F,
    _q: std::marker::PhantomData<fn() -> Q>,
}

impl<Q, C, F: Clone> Clone for CommandHandler<Q, C, F> {
    fn clone(&self) -> Self {
        Self {
            side: self.side.clone(),
            events_topic: self.events_topic.clone(),
            decide: self.decide.clone(),
            _q: std::marker::PhantomData,
        }
    }
}

impl<Q, C, F> fmt::Debug for CommandHandler<Q, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandHandler")
            .field("events_topic", &self.events_topic)
            .finish_non_exhaustive()
    }
}

impl<Q, E, C, F, Fut> Service<Inbound> for CommandHandler<Q, C, F>
where
    Q: Event,
    E: Event,
    C: Codec,
    F: Fn(Q, Inbound) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Decision<E>, Rejection>> + Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let q: Q = this.side.codec.decode(&inbound.message.payload).await?;
            let cause = inbound.message.clone();
            match (this.decide)(q, inbound).await {
                Ok(d) => {
                    this.side
                        .publish_events(&this.events_topic, Some(&cause), d.key, &d.events)
                        .await?;
                    Ok(())
                }
                Err(Rejection::Failed(e)) => Err(e),
                Err(Rejection::Invalid(reason)) => match &this.side.rejections {
                    Some(topic) => {
                        let r = CommandRejected {
                            command_type: cause.ce_type().unwrap_or_default().to_owned(),
                            command_id: cause.id.clone(),
                            key: cause.key_str().map(str::to_owned),
                            reason,
                        };
                        this.side
                            .publish_events(topic, Some(&cause), None, &[r])
                            .await?;
                        Ok(())
                    }
                    None => Err(HandlerError::permanent(format!(
                        "command rejected: {reason}"
                    ))),
                },
            }
        })
    }
}

// ───────────────────────────── projections ─────────────────────────────

/// Bounds of a read model: stored as JSON.
pub trait ReadModel: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> ReadModel for T {}

/// How a projection recognises an event it already applied; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Idempotency {
    /// Remember every applied message id (any order, any concurrency).
    #[default]
    MessageId,
    /// One checkpoint per ordered lane (in-order application only).
    Position,
}

/// What a projection handler knows about the event besides its payload.
#[derive(Clone, Debug)]
pub struct EventMeta {
    /// The message id.
    pub id: String,
    /// The CloudEvents type as published (before upcasting).
    pub ce_type: Option<String>,
    /// The CloudEvents time, RFC 3339.
    pub time: Option<String>,
    /// The key.
    pub key: Option<String>,
    /// The correlation id.
    pub correlation_id: Option<String>,
    /// Where it came from.
    pub origin: Origin,
}

type ApplyDoc<M> = Arc<dyn Fn(&mut Option<M>, &EventMeta) + Send + Sync>;
type DecodeFn<M> = Arc<
    dyn Fn(Arc<Message>) -> BoxFuture<'static, Result<Option<(String, ApplyDoc<M>)>, HandlerError>>
        + Send
        + Sync,
>;

struct Rule<M> {
    topic: String,
    accepts: Vec<String>,
    name: &'static str,
    decode: DecodeFn<M>,
}

/// A projection definition: which document each event touches and how; see the
/// [module docs](self).
pub struct Projection<M, C = JsonCodec> {
    name: String,
    codec: Arc<C>,
    upcasters: Upcasters,
    rules: Vec<Rule<M>>,
    idempotency: Idempotency,
}

impl<M, C> fmt::Debug for Projection<M, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projection")
            .field("name", &self.name)
            .field(
                "events",
                &self
                    .rules
                    .iter()
                    .map(|r| (&r.topic, r.name))
                    .collect::<Vec<_>>(),
            )
            .field("idempotency", &self.idempotency)
            .finish_non_exhaustive()
    }
}

impl<M: ReadModel> Projection<M, JsonCodec> {
    /// A projection named `name` (default namespace and consumer group), JSON-decoded.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_codec(name, JsonCodec)
    }
}

impl<M: ReadModel, C: Codec> Projection<M, C> {
    /// A projection decoding events with `codec`.
    pub fn with_codec(name: impl Into<String>, codec: C) -> Self {
        Self {
            name: name.into(),
            codec: Arc::new(codec),
            upcasters: Upcasters::new(),
            rules: Vec::new(),
            idempotency: Idempotency::default(),
        }
    }

    /// Upcast chains for the events this projection decodes. Set before adding handlers.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Sets how applied events are recognised.
    pub fn idempotency(mut self, i: Idempotency) -> Self {
        self.idempotency = i;
        self
    }

    /// Handles `E` from `topic`: `key` names the document, `apply` changes it (set it to
    /// `None` to delete it).
    pub fn on<E, K, A>(self, topic: &str, key: K, apply: A) -> Self
    where
        E: Event,
        K: Fn(&E) -> String + Send + Sync + 'static,
        A: Fn(&mut Option<M>, &E, &EventMeta) + Send + Sync + 'static,
    {
        self.on_maybe(topic, move |e: &E| Some(key(e)), apply)
    }

    /// [`on`](Self::on) where `key` may say the event touches no document.
    pub fn on_maybe<E, K, A>(mut self, topic: &str, key: K, apply: A) -> Self
    where
        E: Event,
        K: Fn(&E) -> Option<String> + Send + Sync + 'static,
        A: Fn(&mut Option<M>, &E, &EventMeta) + Send + Sync + 'static,
    {
        let chain = self.upcasters.for_type::<E, C>(&self.codec);
        let accepts = chain.accepts();
        let key = Arc::new(key);
        let apply = Arc::new(apply);
        self.rules.push(Rule {
            topic: topic.to_owned(),
            accepts,
            name: E::TYPE,
            decode: Arc::new(move |m: Arc<Message>| {
                let decode = chain.decode(&m);
                let key = key.clone();
                let apply = apply.clone();
                Box::pin(async move {
                    let e = Arc::new(decode.await?);
                    Ok(key(&e).map(|k| {
                        let f: ApplyDoc<M> =
                            Arc::new(move |doc: &mut Option<M>, meta: &EventMeta| {
                                apply(doc, &e, meta)
                            });
                        (k, f)
                    }))
                })
            }),
        });
        self
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Counters of a [`Projector`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProjectorStats {
    /// Events applied.
    pub applied: u64,
    /// Events recognised as already applied.
    pub duplicates: u64,
    /// Events of a type the projection does not handle, or touching no document.
    pub ignored: u64,
}

#[derive(Default)]
struct Counters {
    applied: AtomicU64,
    duplicates: AtomicU64,
    ignored: AtomicU64,
}

/// Runs a [`Projection`] into a [`ReadModelStore`]. Cheap to clone.
pub struct Projector<M, C = JsonCodec> {
    projection: Arc<Projection<M, C>>,
    table: Arc<BTreeMap<String, TypeTable<usize>>>,
    store: Arc<dyn ReadModelStore>,
    namespace: String,
    group: String,
    middleware: Option<Middleware>,
    concurrency: usize,
    counters: Arc<Counters>,
}

impl<M, C> Clone for Projector<M, C> {
    fn clone(&self) -> Self {
        Self {
            projection: self.projection.clone(),
            table: self.table.clone(),
            store: self.store.clone(),
            namespace: self.namespace.clone(),
            group: self.group.clone(),
            middleware: self.middleware.clone(),
            concurrency: self.concurrency,
            counters: self.counters.clone(),
        }
    }
}

impl<M, C> fmt::Debug for Projector<M, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projector")
            .field("projection", &self.projection)
            .field("namespace", &self.namespace)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

fn corrupt(e: serde_json::Error) -> ReadModelError {
    ReadModelError::new(ReadModelErrorKind::Corrupt, "document does not decode").with_source(e)
}

fn store_err(e: ReadModelError) -> HandlerError {
    match e.kind() {
        ReadModelErrorKind::Unavailable => transient(e),
        _ => HandlerError::from_error(herald_core::ErrorClass::Permanent, e),
    }
}

/// The idempotency lane of an origin: the topic and every position value but the last,
/// which is the position within the lane (`orders|partition=3` + offset; `orders` +
/// sequence).
fn lane_of(origin: &Origin) -> Option<(String, i64)> {
    let (last, rest) = origin.position.split_last()?;
    let mut lane = origin.topic.to_string();
    for (n, v) in rest {
        lane.push_str(&format!("|{n}={v}"));
    }
    Some((lane, last.1))
}

impl<M: ReadModel, C: Codec> Projector<M, C> {
    /// A projector writing into namespace and group `<projection name>`.
    pub fn new(projection: Projection<M, C>, store: impl ReadModelStore + 'static) -> Self {
        Self::with_store(projection, Arc::new(store))
    }

    /// [`new`](Self::new) with a shared store.
    pub fn with_store(projection: Projection<M, C>, store: Arc<dyn ReadModelStore>) -> Self {
        let mut table: BTreeMap<String, TypeTable<usize>> = BTreeMap::new();
        for (i, r) in projection.rules.iter().enumerate() {
            table
                .entry(r.topic.clone())
                .or_default()
                .insert(&r.accepts, r.name, i);
        }
        let concurrency = match projection.idempotency {
            Idempotency::MessageId => 8,
            Idempotency::Position => 1,
        };
        Self {
            namespace: projection.name.clone(),
            group: group_name(&projection.name),
            projection: Arc::new(projection),
            table: Arc::new(table),
            store,
            middleware: None,
            concurrency,
            counters: Arc::default(),
        }
    }

    /// Writes into namespace `ns` instead.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    /// Consumes in `group` instead.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Middleware around the projector's routes.
    pub fn middleware(mut self, mw: Middleware) -> Self {
        self.middleware = Some(mw);
        self
    }

    /// Deliveries applied at once per topic (ignored with [`Idempotency::Position`],
    /// which needs 1). Default 8.
    pub fn concurrency(mut self, n: usize) -> Self {
        if self.projection.idempotency == Idempotency::MessageId {
            self.concurrency = n.max(1);
        }
        self
    }

    /// The namespace written.
    pub fn namespace_name(&self) -> &str {
        &self.namespace
    }

    /// The consumer group.
    pub fn group_name(&self) -> &str {
        &self.group
    }

    /// Counters since this projector was made.
    pub fn stats(&self) -> ProjectorStats {
        ProjectorStats {
            applied: self.counters.applied.load(Ordering::Relaxed),
            duplicates: self.counters.duplicates.load(Ordering::Relaxed),
            ignored: self.counters.ignored.load(Ordering::Relaxed),
        }
    }

    /// One route per topic, each in its own consumer group `<group>.<topic>` when the
    /// projection reads several topics: on Kafka one group spanning several topics
    /// rebalances every member whenever any of them joins or leaves, which stalls a
    /// resuming projector for no benefit (each topic's position is independent anyway).
    pub fn router(&self) -> Router {
        let mut router = Router::new();
        let several = self.table.len() > 1;
        for topic in self.table.keys() {
            let group = if several {
                format!("{}.{topic}", self.group)
            } else {
                self.group.clone()
            };
            let info = RouteInfo {
                handler: format!("projection.{}", self.projection.name),
                topic: topic.clone(),
                group,
            };
            let me = self.clone();
            let mut h = BoxHandler::new(handler_fn(move |inbound: Inbound| {
                let me = me.clone();
                async move { me.handle(inbound).await }
            }));
            if let Some(mw) = &self.middleware {
                h = mw.apply(&info, h);
            }
            router = router.route_with(
                RouteConfig::new(info.handler, info.topic, info.group)
                    .concurrency(self.concurrency),
                h,
            );
        }
        router
    }

    /// Starts consuming.
    pub fn start<S: Subscriber + Clone + 'static>(&self, subscriber: S) -> Running {
        self.router().start(subscriber)
    }

    /// Clears namespace `ns` and starts a projector that fills it from the earliest
    /// retained event of every topic, in a fresh consumer group. Pass the live namespace
    /// to rebuild in place, or a new one to compare or swap to later.
    ///
    /// The rebuild sees what the transport still retains: the whole topic on Kafka
    /// (within `retention.ms`) and JetStream (within the stream's limits). The memory
    /// transport forgets a message once every existing group acknowledged it, so there a
    /// rebuild only sees what some group still holds.
    ///
    /// Whether the rebuild has caught up is the caller's call: compare
    /// [`stats`](Self::stats) with the topic's size, or poll for a known final state.
    pub async fn rebuild<S: Subscriber + Clone + 'static>(
        &self,
        subscriber: S,
        ns: &str,
    ) -> Result<(Projector<M, C>, Running), ReadModelError> {
        self.store.clear(ns).await?;
        let fresh = Self {
            namespace: ns.to_owned(),
            group: group_name(&format!(
                "{}-rebuild-{}",
                self.group,
                uuid::Uuid::now_v7().simple()
            )),
            counters: Arc::default(),
            ..self.clone()
        };
        let running = fresh.start(subscriber);
        Ok((fresh, running))
    }

    /// Applies one delivery (what the projector's routes call).
    pub async fn handle(&self, inbound: Inbound) -> Result<(), HandlerError> {
        let msg = inbound.message.clone();
        let rules = self
            .table
            .get(&inbound.route.topic)
            .map(|t| t.lookup(msg.ce_type()).to_vec())
            .unwrap_or_default();
        if rules.is_empty() {
            self.counters.ignored.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let mark = match self.projection.idempotency {
            Idempotency::MessageId => Mark::MessageId(msg.id.clone()),
            Idempotency::Position => match lane_of(&inbound.origin) {
                Some((lane, position)) => Mark::Position { lane, position },
                None => Mark::MessageId(msg.id.clone()),
            },
        };
        // Fast path for the usual single rule; with several, each commit checks its own mark.
        if rules.len() == 1
            && self
                .store
                .seen(&self.namespace, &mark)
                .await
                .map_err(store_err)?
        {
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let meta = EventMeta {
            id: msg.id.clone(),
            ce_type: msg.ce_type().map(str::to_owned),
            time: msg.ce_time().map(str::to_owned),
            key: msg.key_str().map(str::to_owned),
            correlation_id: msg.correlation_id().map(str::to_owned),
            origin: (*inbound.origin).clone(),
        };
        // Several rules may match one type (rare); each is applied as its own change, the
        // first carrying the mark.
        for (n, i) in rules.iter().enumerate() {
            let rule = &self.projection.rules[*i];
            let Some((key, apply)) = (rule.decode)(msg.clone()).await? else {
                if n == 0 {
                    self.commit_mark_only(&mark).await?;
                }
                continue;
            };
            self.apply_one(&key, &apply, &meta, if n == 0 { Some(&mark) } else { None })
                .await?;
        }
        Ok(())
    }

    async fn commit_mark_only(&self, mark: &Mark) -> Result<(), HandlerError> {
        // A key no document uses: nothing to write, just the mark.
        let change = Change {
            key: "__herald_no_document__",
            expected_version: None,
            body: None,
            mark,
        };
        self.store
            .commit(&self.namespace, change)
            .await
            .map_err(store_err)?;
        self.counters.ignored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn apply_one(
        &self,
        key: &str,
        apply: &ApplyDoc<M>,
        meta: &EventMeta,
        mark: Option<&Mark>,
    ) -> Result<(), HandlerError> {
        let own_mark;
        let mark = match mark {
            Some(m) => m,
            None => {
                own_mark = Mark::MessageId(format!("{}#{key}", meta.id));
                &own_mark
            }
        };
        for _ in 0..16 {
            let current = self
                .store
                .get(&self.namespace, key)
                .await
                .map_err(store_err)?;
            let (version, mut doc) = match current {
                Some(d) => (
                    Some(d.version),
                    Some(serde_json::from_value::<M>(d.body).map_err(|e| store_err(corrupt(e)))?),
                ),
                None => (None, None),
            };
            apply(&mut doc, meta);
            let body = doc
                .map(|d| serde_json::to_value(&d))
                .transpose()
                .map_err(|e| HandlerError::from_error(herald_core::ErrorClass::Permanent, e))?;
            let change = Change {
                key,
                expected_version: version,
                body,
                mark,
            };
            match self
                .store
                .commit(&self.namespace, change)
                .await
                .map_err(store_err)?
            {
                Applied::Applied => {
                    self.counters.applied.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(
                        "herald_projection_applied_total",
                        "projection" => self.projection.name.clone()
                    )
                    .increment(1);
                    return Ok(());
                }
                Applied::Duplicate => {
                    self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Applied::Conflict => continue,
            }
        }
        Err(HandlerError::transient(format!(
            "projection {}: document {key} kept changing",
            self.projection.name
        )))
    }

    /// The document `key`.
    pub async fn get(&self, key: &str) -> Result<Option<M>, ReadModelError> {
        match self.store.get(&self.namespace, key).await? {
            Some(d) => Ok(Some(serde_json::from_value(d.body).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    /// Every document, by key.
    pub async fn all(&self) -> Result<BTreeMap<String, M>, ReadModelError> {
        self.store
            .list(&self.namespace)
            .await?
            .into_iter()
            .map(|(k, d)| Ok((k, serde_json::from_value(d.body).map_err(corrupt)?)))
            .collect()
    }

    /// The position checkpoints ([`Idempotency::Position`]), by lane.
    pub async fn checkpoints(&self) -> Result<Vec<(String, i64)>, ReadModelError> {
        self.store.checkpoints(&self.namespace).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use herald_core::memory::MemoryBroker;

    use super::*;

    #[derive(Serialize, Deserialize, Clone, Debug)]
    struct Added {
        list: String,
        item: String,
    }
    impl Event for Added {
        const TYPE: &'static str = "t.Added";
        const VERSION: u32 = 1;
    }
    #[derive(Serialize, Deserialize, Clone, Debug)]
    struct Dropped {
        list: String,
    }
    impl Event for Dropped {
        const TYPE: &'static str = "t.Dropped";
        const VERSION: u32 = 1;
    }

    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
    struct List {
        items: Vec<String>,
    }

    fn projection(i: Idempotency) -> Projection<List> {
        Projection::<List>::new("lists")
            .idempotency(i)
            .on(
                "lists",
                |e: &Added| e.list.clone(),
                |doc, e: &Added, _| {
                    doc.get_or_insert_with(List::default)
                        .items
                        .push(e.item.clone())
                },
            )
            .on(
                "lists",
                |e: &Dropped| e.list.clone(),
                |doc, _: &Dropped, _| *doc = None,
            )
    }

    async fn deliver(p: &Projector<List>, m: &Message, offset: i64) {
        let origin = Origin::new("lists")
            .with("partition", 0)
            .with("offset", offset);
        let route = Arc::new(RouteInfo {
            handler: "h".into(),
            topic: "lists".into(),
            group: "g".into(),
        });
        p.handle(Inbound::new(m.clone(), origin, 1, route))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn redelivery_changes_nothing_in_both_modes() {
        for mode in [Idempotency::MessageId, Idempotency::Position] {
            let p = Projector::new(projection(mode), MemoryReadModelStore::new());
            let a = JsonCodec
                .to_message(&Added {
                    list: "l".into(),
                    item: "x".into(),
                })
                .await
                .unwrap();
            let b = JsonCodec
                .to_message(&Added {
                    list: "l".into(),
                    item: "y".into(),
                })
                .await
                .unwrap();
            deliver(&p, &a, 0).await;
            deliver(&p, &a, 0).await;
            deliver(&p, &b, 1).await;
            deliver(&p, &a, 0).await;
            let other = Message::new("{}").with_type("t.Unrelated.v1");
            deliver(&p, &other, 2).await;
            assert_eq!(
                p.get("l").await.unwrap().unwrap().items,
                vec!["x", "y"],
                "{mode:?}"
            );
            assert_eq!(p.stats().applied, 2);
            assert_eq!(p.stats().duplicates, 2);
            let d = JsonCodec
                .to_message(&Dropped { list: "l".into() })
                .await
                .unwrap();
            deliver(&p, &d, 3).await;
            assert!(p.get("l").await.unwrap().is_none());
            if mode == Idempotency::Position {
                assert_eq!(
                    p.checkpoints().await.unwrap(),
                    vec![("lists|partition=0".into(), 3)]
                );
            }
        }
    }

    #[tokio::test]
    async fn command_side_validates_and_emits_caused_events() {
        #[derive(Serialize, Deserialize)]
        struct Add {
            list: String,
            item: String,
        }
        impl Event for Add {
            const TYPE: &'static str = "t.Add";
            const VERSION: u32 = 1;
        }
        let broker = MemoryBroker::new();
        let side = CommandSide::new(broker.clone(), "lists-service").rejections("lists.rejected");
        let handler = side.handler("lists", |c: Add, _| async move {
            if c.item.is_empty() {
                return Err(Rejection::invalid("empty item"));
            }
            Ok(Decision::event(Added {
                list: c.list.clone(),
                item: c.item,
            })
            .key(c.list))
        });
        let cmds = Router::new()
            .route("cmd", "lists.cmd", "lists", handler)
            .start(broker.clone());
        let p = Projector::new(
            projection(Idempotency::MessageId),
            MemoryReadModelStore::new(),
        );
        let running = p.start(broker.clone());
        for item in ["a", "", "b"] {
            let m = JsonCodec
                .to_message(&Add {
                    list: "l".into(),
                    item: item.into(),
                })
                .await
                .unwrap()
                .with_key("l")
                .with_correlation_id("flow-9");
            broker.publish("lists.cmd", vec![m]).await.unwrap();
        }
        let got = crate::wait_for(Duration::from_secs(5), || async {
            p.get("l")
                .await
                .ok()
                .flatten()
                .filter(|l| l.items.len() == 2)
        })
        .await;
        assert_eq!(got.unwrap().items, vec!["a", "b"]);
        let mut rejected = broker
            .subscribe(herald_core::SubscribeSpec::new("lists.rejected", "t"))
            .await
            .unwrap();
        use futures::StreamExt;
        let d = tokio::time::timeout(Duration::from_secs(5), rejected.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let r: CommandRejected = JsonCodec.decode(&d.message.payload).await.unwrap();
        assert_eq!(r.reason, "empty item");
        assert_eq!(d.message.correlation_id(), Some("flow-9"));
        d.ack().await.unwrap();
        running.shutdown().await.unwrap();
        cmds.shutdown().await.unwrap();
    }
}
