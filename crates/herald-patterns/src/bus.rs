//! The event bus: modules of one service publish typed domain events and react to each
//! other's, independently.
//!
//! ```text
//!                     publish(OrderPlaced)
//!   orders module ──────────────▶ topic "<prefix>shop.OrderPlaced" ──┬──▶ group <bus>-inventory ──▶ inventory module
//!                                                                  ├──▶ group <bus>-payments  ──▶ payments module
//!                                                                  └──▶ group <bus>-audit     ──▶ audit module
//! ```
//!
//! * Each event type goes to its own topic (`<topic prefix><Event::TYPE>`, or one set
//!   with [`EventBusBuilder::route`]); versions of a type share the topic, so an
//!   [upcaster](crate::upcast) can turn old ones into the current version.
//! * Each module subscribes in its **own consumer group**: every module gets every event,
//!   and a module that fails or lags holds back only itself. Its failures go through
//!   the bus [`Middleware`] — give it the core retry / dead-letter stack and a failing
//!   subscriber's message lands in `<topic>.dlq` while the others carry on.
//! * The bus runs on any transport: the in-memory broker for an in-process bus, Kafka or
//!   NATS when modules live in different processes. Delivery is at-least-once, so
//!   handlers are idempotent or sit behind the dedupe middleware.
//!
//! # Examples
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_core::{Event, memory::MemoryBroker};
//! use herald_patterns::bus::EventBus;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct UserRegistered { user: String }
//! impl Event for UserRegistered { const TYPE: &'static str = "app.UserRegistered"; const VERSION: u32 = 1; }
//!
//! let broker = MemoryBroker::new();
//! let bus = EventBus::builder(broker.clone()).name("app").build();
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! bus.module("mailer", move |m| {
//!     let tx = tx.clone();
//!     m.on(move |ev: UserRegistered, _ctx| {
//!         let tx = tx.clone();
//!         async move { tx.send(format!("welcome {}", ev.user)).ok(); Ok(()) }
//!     });
//! });
//! let running = bus.start(broker.clone());
//! bus.publish(&UserRegistered { user: "ada".into() }).await?;
//! assert_eq!(rx.recv().await.as_deref(), Some("welcome ada"));
//! running.shutdown().await?;
//! # Ok(()) }
//! ```

use std::{
    any::Any,
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    sync::{Arc, Mutex},
};

use futures::future::BoxFuture;
use herald_core::{
    Codec, Event, HandlerError, Inbound, JsonCodec, Message, PublishError, Publisher, RouteConfig,
    RouteInfo, Router, Running, Subscriber, handler::BoxHandler, handler_fn,
};

use crate::{
    dispatch::{Middleware, TypeTable, group_name},
    upcast::Upcasters,
};

type Erased = Arc<dyn Fn(Inbound) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync>;

struct Subscription {
    module: String,
    topic: String,
    accepts: Vec<String>,
    name: &'static str,
    handler: Erased,
}

struct Inner<C> {
    name: String,
    publisher: Arc<dyn Publisher>,
    codec: Arc<C>,
    topic_prefix: String,
    routes: HashMap<&'static str, String>,
    upcasters: Upcasters,
    middleware: Option<Middleware>,
    concurrency: usize,
    subscriptions: Mutex<Vec<Subscription>>,
    modules: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
}

/// An event bus; see the [module docs](self). Cheap to clone: clones share the bus.
pub struct EventBus<C = JsonCodec> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for EventBus<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> fmt::Debug for EventBus<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("name", &self.inner.name)
            .field("topic_prefix", &self.inner.topic_prefix)
            .finish_non_exhaustive()
    }
}

/// Builds an [`EventBus`].
pub struct EventBusBuilder<C = JsonCodec> {
    name: String,
    publisher: Arc<dyn Publisher>,
    codec: C,
    topic_prefix: String,
    routes: HashMap<&'static str, String>,
    upcasters: Upcasters,
    middleware: Option<Middleware>,
    concurrency: usize,
}

impl<C> fmt::Debug for EventBusBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBusBuilder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl EventBus<JsonCodec> {
    /// A builder publishing through `publisher`, JSON-encoded, named `bus`.
    pub fn builder(publisher: impl Publisher + 'static) -> EventBusBuilder<JsonCodec> {
        EventBusBuilder {
            name: "bus".into(),
            publisher: Arc::new(publisher),
            codec: JsonCodec,
            topic_prefix: String::new(),
            routes: HashMap::new(),
            upcasters: Upcasters::new(),
            middleware: None,
            concurrency: 1,
        }
    }
}

impl<C: Codec> EventBusBuilder<C> {
    /// Names the bus: the prefix of every module's consumer group (`<name>-<module>`) and
    /// the CloudEvents `source` of what it publishes. Default `bus`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Encodes events with `codec` instead of JSON.
    pub fn codec<C2: Codec>(self, codec: C2) -> EventBusBuilder<C2> {
        EventBusBuilder {
            name: self.name,
            publisher: self.publisher,
            codec,
            topic_prefix: self.topic_prefix,
            routes: self.routes,
            upcasters: self.upcasters,
            middleware: self.middleware,
            concurrency: self.concurrency,
        }
    }

    /// Prepends `prefix` to every derived topic name.
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// Sends `E` to `topic` instead of `<prefix><E::TYPE>` (several types may share one
    /// topic when their relative order matters).
    pub fn route<E: Event>(mut self, topic: impl Into<String>) -> Self {
        self.routes.insert(E::TYPE, topic.into());
        self
    }

    /// Upcast chains consulted for every event a module receives.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Middleware around every module's handler (retry, dead-letter, metrics…).
    pub fn middleware(mut self, middleware: Middleware) -> Self {
        self.middleware = Some(middleware);
        self
    }

    /// How many events each module handles at once (per-key order is kept). Default 1.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The bus.
    pub fn build(self) -> EventBus<C> {
        EventBus {
            inner: Arc::new(Inner {
                name: self.name,
                publisher: self.publisher,
                codec: Arc::new(self.codec),
                topic_prefix: self.topic_prefix,
                routes: self.routes,
                upcasters: self.upcasters,
                middleware: self.middleware,
                concurrency: self.concurrency,
                subscriptions: Mutex::new(Vec::new()),
                modules: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// A part of a service that reacts to events: registered with [`EventBus::register`].
///
/// # Examples
/// ```
/// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
/// use herald_core::{Event, JsonCodec};
/// use herald_patterns::bus::{Module, Subscriptions};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderPlaced { total: u64 }
/// # impl Event for OrderPlaced { const TYPE: &'static str = "shop.OrderPlaced"; const VERSION: u32 = 1; }
///
/// #[derive(Default)]
/// struct Revenue { total: AtomicU64 }
///
/// impl Module for Revenue {
///     fn name(&self) -> &str { "revenue" }
///     fn subscribe(self: Arc<Self>, on: &mut Subscriptions<JsonCodec>) {
///         on.on(move |ev: OrderPlaced, _ctx| {
///             let me = self.clone();
///             async move { me.total.fetch_add(ev.total, Ordering::Relaxed); Ok(()) }
///         });
///     }
/// }
/// ```
pub trait Module<C: Codec = JsonCodec>: Send + Sync + 'static {
    /// The module's name: its consumer group is `<bus name>-<name>`.
    fn name(&self) -> &str;

    /// Subscribes the module's handlers.
    fn subscribe(self: Arc<Self>, on: &mut Subscriptions<C>);
}

/// Where a module adds its handlers.
pub struct Subscriptions<C = JsonCodec> {
    bus: EventBus<C>,
    module: String,
    added: Vec<Subscription>,
}

impl<C> fmt::Debug for Subscriptions<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriptions")
            .field("module", &self.module)
            .field("handlers", &self.added.len())
            .finish()
    }
}

impl<C: Codec> Subscriptions<C> {
    /// Handles every `E` (any version the bus's upcasters know, upcast to `E`).
    pub fn on<E, F, Fut>(&mut self, f: F) -> &mut Self
    where
        E: Event,
        F: Fn(E, EventContext<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let chain = self
            .bus
            .inner
            .upcasters
            .for_type::<E, C>(&self.bus.inner.codec);
        let bus = self.bus.clone();
        let f = Arc::new(f);
        let accepts = chain.accepts();
        let handler: Erased = Arc::new(move |inbound: Inbound| {
            let decode = chain.decode(&inbound.message);
            let ctx = EventContext {
                bus: bus.clone(),
                inbound,
            };
            let f = f.clone();
            Box::pin(async move {
                let ev = decode.await?;
                f(ev, ctx).await
            })
        });
        self.added.push(Subscription {
            module: self.module.clone(),
            topic: self.bus.topic_for::<E>(),
            accepts,
            name: E::TYPE,
            handler,
        });
        self
    }

    /// The bus, to publish from outside a handler.
    pub fn bus(&self) -> &EventBus<C> {
        &self.bus
    }
}

/// What a module's handler gets besides the event: the message and the bus.
pub struct EventContext<C = JsonCodec> {
    bus: EventBus<C>,
    inbound: Inbound,
}

impl<C> fmt::Debug for EventContext<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventContext")
            .field("inbound", &self.inbound)
            .finish_non_exhaustive()
    }
}

impl<C: Codec> EventContext<C> {
    /// The message being handled.
    pub fn message(&self) -> &Message {
        &self.inbound.message
    }

    /// The delivery (origin, attempt, route).
    pub fn inbound(&self) -> &Inbound {
        &self.inbound
    }

    /// The bus.
    pub fn bus(&self) -> &EventBus<C> {
        &self.bus
    }

    /// Publishes a follow-up event: same key, same correlation id, caused by this one.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<(), HandlerError> {
        let mut m = self
            .bus
            .message(event)
            .await?
            .caused_by(&self.inbound.message);
        m.key = self.inbound.message.key.clone();
        self.bus
            .inner
            .publisher
            .publish(&self.bus.topic_for::<E>(), vec![m])
            .await
            .map_err(HandlerError::from)
    }
}

impl<C: Codec> EventBus<C> {
    /// The bus's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The topic `E` is published to.
    pub fn topic_for<E: Event>(&self) -> String {
        match self.inner.routes.get(E::TYPE) {
            Some(t) => t.clone(),
            None => format!("{}{}", self.inner.topic_prefix, E::TYPE),
        }
    }

    /// The consumer group of `module`.
    pub fn group_of(&self, module: &str) -> String {
        group_name(&format!("{}-{}", self.inner.name, module))
    }

    async fn message<E: Event>(&self, event: &E) -> Result<Message, HandlerError> {
        let m = self.inner.codec.to_message(event).await?;
        Ok(m.with_source(self.inner.name.clone()))
    }

    /// Publishes `event` (no key: spread over partitions).
    pub async fn publish<E: Event>(&self, event: &E) -> Result<(), BusError> {
        let m = self.encode(event).await?;
        self.publish_message::<E>(m).await
    }

    /// Publishes `event` with an ordering key (events of one aggregate keep their order).
    pub async fn publish_keyed<E: Event>(&self, key: &str, event: &E) -> Result<(), BusError> {
        let m = self.encode(event).await?.with_key(key.to_owned());
        self.publish_message::<E>(m).await
    }

    async fn encode<E: Event>(&self, event: &E) -> Result<Message, BusError> {
        let m = self
            .inner
            .codec
            .to_message(event)
            .await
            .map_err(BusError::Encode)?;
        Ok(m.with_source(self.inner.name.clone()))
    }

    /// Publishes a prepared message of type `E` (e.g. with a correlation id set).
    pub async fn publish_message<E: Event>(&self, message: Message) -> Result<(), BusError> {
        self.inner
            .publisher
            .publish(&self.topic_for::<E>(), vec![message])
            .await
            .map_err(BusError::Publish)
    }

    /// Registers a module; keeps it so [`get`](Self::get) can find it.
    pub fn register<M: Module<C>>(&self, module: M) -> Arc<M> {
        let module = Arc::new(module);
        let name = module.name().to_owned();
        self.lock_modules().insert(name.clone(), module.clone());
        let mut subs = Subscriptions {
            bus: self.clone(),
            module: name,
            added: Vec::new(),
        };
        module.clone().subscribe(&mut subs);
        self.lock_subscriptions().extend(subs.added);
        module
    }

    /// Registers an ad-hoc module from a closure.
    pub fn module(&self, name: &str, f: impl FnOnce(&mut Subscriptions<C>)) {
        let mut subs = Subscriptions {
            bus: self.clone(),
            module: name.to_owned(),
            added: Vec::new(),
        };
        f(&mut subs);
        self.lock_subscriptions().extend(subs.added);
    }

    /// A module registered with [`register`](Self::register), by name.
    pub fn get<M: Module<C>>(&self, name: &str) -> Option<Arc<M>> {
        self.lock_modules()
            .get(name)
            .cloned()
            .and_then(|m| m.downcast::<M>().ok())
    }

    /// A router with one route per module and topic (group `<bus>-<module>`), each behind
    /// the bus middleware. Compose it with other routes, or use [`start`](Self::start).
    ///
    /// Takes the subscriptions registered so far: register every module first.
    pub fn router(&self) -> Router {
        let subs = std::mem::take(&mut *self.lock_subscriptions());
        let mut by_route: BTreeMap<(String, String), TypeTable<Erased>> = BTreeMap::new();
        for s in subs {
            by_route
                .entry((s.module, s.topic))
                .or_default()
                .insert(&s.accepts, s.name, s.handler);
        }
        let mut router = Router::new();
        for ((module, topic), table) in by_route {
            let info = RouteInfo {
                handler: format!("{}.{}", self.inner.name, module),
                topic: topic.clone(),
                group: self.group_of(&module),
            };
            let table = Arc::new(table);
            let h = handler_fn(move |inbound: Inbound| {
                let table = table.clone();
                async move {
                    let hs: Vec<Erased> = table.lookup(inbound.message.ce_type()).to_vec();
                    for h in hs {
                        h(inbound.clone()).await?;
                    }
                    Ok(())
                }
            });
            let mut h = BoxHandler::new(h);
            if let Some(mw) = &self.inner.middleware {
                h = mw.apply(&info, h);
            }
            router = router.route_with(
                RouteConfig::new(info.handler, info.topic, info.group)
                    .concurrency(self.inner.concurrency),
                h,
            );
        }
        router
    }

    /// Starts every module's route on `subscriber`.
    pub fn start<S: Subscriber + Clone + 'static>(&self, subscriber: S) -> Running {
        self.router().start(subscriber)
    }

    fn lock_subscriptions(&self) -> std::sync::MutexGuard<'_, Vec<Subscription>> {
        self.inner
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn lock_modules(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn Any + Send + Sync>>> {
        self.inner.modules.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a bus publish failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The event could not be encoded.
    #[error(transparent)]
    Encode(herald_core::CodecError),
    /// The broker did not accept it.
    #[error(transparent)]
    Publish(PublishError),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use herald_core::memory::MemoryBroker;

    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
    struct Ping {
        n: u32,
    }
    impl Event for Ping {
        const TYPE: &'static str = "t.Ping";
        const VERSION: u32 = 1;
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
    struct Pong {
        n: u32,
    }
    impl Event for Pong {
        const TYPE: &'static str = "t.Pong";
        const VERSION: u32 = 1;
    }

    #[tokio::test]
    async fn modules_react_independently_and_chain_events() {
        let broker = MemoryBroker::new();
        let bus = EventBus::builder(broker.clone()).name("t").build();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        bus.module("ponger", |m| {
            m.on(|ev: Ping, ctx| async move { ctx.publish(&Pong { n: ev.n }).await });
        });
        let tx2 = tx.clone();
        bus.module("watcher", move |m| {
            let tx = tx2.clone();
            m.on(move |ev: Pong, ctx: EventContext| {
                let tx = tx.clone();
                async move {
                    let m = ctx.message();
                    tx.send((
                        ev.n,
                        m.correlation_id().map(str::to_owned),
                        m.key_str().map(str::to_owned),
                    ))
                    .ok();
                    Ok(())
                }
            });
        });
        assert_eq!(bus.topic_for::<Ping>(), "t.Ping");
        assert_eq!(bus.group_of("ponger"), "t-ponger");
        let running = bus.start(broker.clone());
        let m = JsonCodec
            .to_message(&Ping { n: 7 })
            .await
            .unwrap()
            .with_key("k1")
            .with_correlation_id("flow-1");
        bus.publish_message::<Ping>(m).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (7, Some("flow-1".into()), Some("k1".into())));
        running.shutdown().await.unwrap();
    }
}
