#![doc = include_str!("docs.md")]

mod backlog;
mod due;
mod layer;
mod parked;

pub mod error;

use std::{
    collections::HashSet,
    fmt,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use tower_layer::Layer as _;
use tower_service::Service;

pub use backlog::{Backlog, RecoverError};
pub use due::DueSubscriber;
pub use layer::RetryTopicsLayer;
pub use parked::{
    MemoryParkedKeys, Parked, ParkedKeys, ParkedKeysError, ParkedKeysErrorKind, Ticket,
};

use self::error::ForwardFailed;
use crate::{
    ErrorClass, HandlerError, Headers, Inbound, Message, Origin, PublishError, Publisher,
    RouteConfig, RouteInfo, Router,
    middleware::{RetryPolicy, dead_letter::is_dead_letter_header},
};

/// Header names of messages in retry topics.
pub mod headers {
    use crate::message::names;

    /// When the message becomes due, in milliseconds since the Unix epoch (RFC 3339 is
    /// read too).
    pub const DUE_AT: &str = "herald-due-at";
    /// How many deliveries of the message failed before it was sent here (`0` for a
    /// message that followed its key into the retry path without being handled).
    pub const ATTEMPTS: &str = names::DLQ_ATTEMPTS;
    /// The topic the message was first consumed from.
    pub const ORIGINAL_TOPIC: &str = names::DLQ_ORIGINAL_TOPIC;
    /// Prefix of its position there: `herald-original-partition`, `-offset`, `-sequence`.
    pub const ORIGINAL_PREFIX: &str = names::DLQ_ORIGINAL_PREFIX;
    /// The last error (absent on followers).
    pub const ERROR: &str = names::DLQ_ERROR;
    /// The last error's class.
    pub const ERROR_CLASS: &str = names::DLQ_ERROR_CLASS;
    /// `true` on a message forwarded by ordered retry without being handled, because an
    /// older message of its key was in the retry path.
    pub const FOLLOWER: &str = "herald-retry-follower";
}

/// Whether `name` is a header the retry-topic layer writes (and strips before the
/// handler sees the message): the `herald-*` dead-letter headers plus
/// [`headers::DUE_AT`] and [`headers::FOLLOWER`].
///
/// # Examples
/// ```
/// use herald_core::retry_topics::is_retry_header;
/// assert!(is_retry_header("herald-due-at"));
/// assert!(is_retry_header("herald-attempts"));
/// assert!(is_retry_header("herald-original-offset"));
/// assert!(!is_retry_header("ce-type"));
/// ```
pub fn is_retry_header(name: &str) -> bool {
    name == headers::DUE_AT || name == headers::FOLLOWER || is_dead_letter_header(name)
}

/// The retry topic of `topic` for delayed attempt `level` (1-based): `<topic>.retry.<level>`.
///
/// ```
/// assert_eq!(herald_core::retry_topics::retry_topic("orders", 2), "orders.retry.2");
/// ```
pub fn retry_topic(topic: &str, level: u32) -> String {
    format!("{topic}.retry.{level}")
}

/// The consumer group of retry level `level`'s route: `<group>.retry.<level>`.
///
/// Each level's route consumes in a group of its own: one consumer group whose members
/// subscribe to different topics would make every member's join rebalance them all (on
/// Kafka). The handler still sees the main group in [`Inbound::route`] (dead-letter
/// headers, dedupe keys).
///
/// ```
/// assert_eq!(herald_core::retry_topics::retry_group("billing", 1), "billing.retry.1");
/// ```
pub fn retry_group(group: &str, level: u32) -> String {
    format!("{group}.retry.{level}")
}

/// Splits a retry topic name into its topic and level.
///
/// ```
/// use herald_core::retry_topics::parse_retry_topic;
/// assert_eq!(parse_retry_topic("orders.retry.2"), Some(("orders", 2)));
/// assert_eq!(parse_retry_topic("orders.retry.x"), None);
/// assert_eq!(parse_retry_topic("orders"), None);
/// ```
pub fn parse_retry_topic(name: &str) -> Option<(&str, u32)> {
    let (topic, level) = name.rsplit_once(".retry.")?;
    let level: u32 = level.parse().ok()?;
    (!topic.is_empty() && level > 0).then_some((topic, level))
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_millis() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The message's `herald-due-at` in epoch milliseconds (decimal, or RFC 3339).
pub fn due_at_millis(message: &Message) -> Option<i64> {
    let v = message.header(headers::DUE_AT)?.trim();
    if let Ok(ms) = v.parse::<i64>() {
        return Some(ms);
    }
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A position name as the `&'static str` [`Origin`] wants; each distinct name is
/// allocated once.
fn position_name(name: &str) -> &'static str {
    match name {
        "partition" => "partition",
        "offset" => "offset",
        "sequence" => "sequence",
        other => {
            static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
            let mut set = NAMES
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match set.get(other) {
                Some(n) => n,
                None => {
                    let leaked: &'static str = Box::leak(other.to_owned().into_boxed_str());
                    set.insert(leaked);
                    leaked
                }
            }
        }
    }
}

/// Retry topics for one topic: the delays of its levels, where to publish, and (for
/// ordered retry) the parked-keys store. See the [module docs](self).
///
/// # Examples
/// ```
/// use std::{sync::Arc, time::Duration};
/// use herald_core::{memory::MemoryBroker, retry_topics::RetryTopics};
/// let broker = MemoryBroker::new();
/// let retry = RetryTopics::new("orders", Arc::new(broker), [Duration::from_secs(1), Duration::from_secs(10)]);
/// assert_eq!(retry.topics(), ["orders.retry.1", "orders.retry.2"]);
/// assert_eq!(retry.delay(2), Duration::from_secs(10));
/// ```
#[derive(Clone)]
pub struct RetryTopics {
    topic: String,
    delays: Arc<[Duration]>,
    publisher: Arc<dyn Publisher>,
    parked: Option<Arc<dyn ParkedKeys>>,
    store_retry_delay: Duration,
}

impl fmt::Debug for RetryTopics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryTopics")
            .field("topic", &self.topic)
            .field("delays", &self.delays)
            .field("ordered", &self.parked.is_some())
            .field("store_retry_delay", &self.store_retry_delay)
            .finish_non_exhaustive()
    }
}

/// How long a delivery waits for redelivery when the parked-keys store could not be
/// reached.
pub const DEFAULT_STORE_RETRY_DELAY: Duration = Duration::from_secs(1);

impl RetryTopics {
    /// Retry topics `<topic>.retry.1 …` with one fixed delay per level, publishing through
    /// `publisher`.
    pub fn new(
        topic: impl Into<String>,
        publisher: Arc<dyn Publisher>,
        delays: impl IntoIterator<Item = Duration>,
    ) -> Self {
        Self {
            topic: topic.into(),
            delays: delays.into_iter().collect(),
            publisher,
            parked: None,
            store_retry_delay: DEFAULT_STORE_RETRY_DELAY,
        }
    }

    /// Retry topics matching a [`RetryPolicy`]: one level per
    /// [`delayed_attempts`](RetryPolicy::delayed_attempts), level `n` waiting
    /// `policy.delay(I + n − 1)` (`I` = immediate attempts) — the wait the retry layer
    /// asks for before delivery `n + 1`. Each level's delay is drawn **once**, here (a
    /// jittered policy gets one jittered value per level), because a level must have one
    /// fixed delay for its messages to become due in order.
    ///
    /// # Examples
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use herald_core::{memory::MemoryBroker, middleware::Backoff, retry_topics::RetryTopics};
    /// let policy = Backoff { initial: Duration::from_millis(100), multiplier: 2.0, jitter: 0.0,
    ///     immediate_attempts: 2, delayed_attempts: 3, ..Default::default() };
    /// let retry = RetryTopics::from_policy("orders", Arc::new(MemoryBroker::new()), &policy);
    /// assert_eq!(retry.levels(), 3);
    /// assert_eq!(retry.delay(1), Duration::from_millis(200)); // delay(2)
    /// assert_eq!(retry.delay(3), Duration::from_millis(800)); // delay(4)
    /// ```
    pub fn from_policy(
        topic: impl Into<String>,
        publisher: Arc<dyn Publisher>,
        policy: &dyn RetryPolicy,
    ) -> Self {
        let immediate = policy.immediate_attempts().max(1);
        let delays: Vec<Duration> = (1..=policy.delayed_attempts())
            .map(|n| policy.delay(immediate.saturating_add(n - 1)))
            .collect();
        Self::new(topic, publisher, delays)
    }

    /// Turns on ordered retry over `store`: while a key has a message in the retry path,
    /// later messages of the key follow it there instead of overtaking it.
    pub fn ordered(mut self, store: Arc<dyn ParkedKeys>) -> Self {
        self.parked = Some(store);
        self
    }

    /// How long a delivery waits for redelivery when the parked-keys store failed
    /// (default [`DEFAULT_STORE_RETRY_DELAY`]).
    pub fn store_retry_delay(mut self, d: Duration) -> Self {
        self.store_retry_delay = d;
        self
    }

    /// The main topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The number of retry levels.
    pub fn levels(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX)
    }

    /// The delay of `level` (1-based; levels past the last use the last delay).
    pub fn delay(&self, level: u32) -> Duration {
        let i = usize::try_from(level.max(1) - 1).unwrap_or(usize::MAX);
        self.delays
            .get(i)
            .or(self.delays.last())
            .copied()
            .unwrap_or_default()
    }

    /// The retry topic names, level 1 first — create them like the main topic.
    pub fn topics(&self) -> Vec<String> {
        (1..=self.levels())
            .map(|n| retry_topic(&self.topic, n))
            .collect()
    }

    /// The parked-keys store, when ordered.
    pub fn parked_keys(&self) -> Option<&Arc<dyn ParkedKeys>> {
        self.parked.as_ref()
    }

    /// The layer for the main topic's route.
    pub fn layer(&self) -> RetryTopicsLayer {
        RetryTopicsLayer::new(self.clone(), None)
    }

    /// The layer for the route of retry topic `level`.
    pub fn level_layer(&self, level: u32) -> RetryTopicsLayer {
        RetryTopicsLayer::new(self.clone(), Some(level.max(1)))
    }

    /// Wraps a subscriber so retry-topic deliveries wait until due ([`DueSubscriber`]).
    /// Start the router with it.
    pub fn subscriber<S>(&self, inner: S) -> DueSubscriber<S> {
        DueSubscriber::new(inner)
    }

    /// Adds the main route `main` (its topic set to this one's) and one route per retry
    /// level — named `<name>.retry.<n>`, in group [`retry_group`]`(group, n)`, with the
    /// same concurrency and in-flight bound —
    /// all running `handler` (usually a [`Stack`](crate::middleware::Stack) with the
    /// dead-letter and retry layers) under the matching retry-topic layer.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::{sync::Arc, time::Duration};
    /// use herald_core::{handler_fn, memory::MemoryBroker, Inbound, Router, RouteConfig};
    /// use herald_core::middleware::{Backoff, DeadLetterLayer, RetryLayer, Stack};
    /// use herald_core::retry_topics::RetryTopics;
    ///
    /// let broker = MemoryBroker::new();
    /// let policy = Backoff { immediate_attempts: 2, delayed_attempts: 2, ..Default::default() };
    /// let retry = RetryTopics::from_policy("orders", Arc::new(broker.clone()), &policy);
    /// let stack = Stack::new()
    ///     .dead_letter(DeadLetterLayer::new(Arc::new(broker.clone())))
    ///     .retry(RetryLayer::new(policy));
    /// let handler = stack.service(handler_fn(|_: Inbound| async { Ok(()) }));
    /// let router = retry.routes(Router::new(), RouteConfig::new("billing", "orders", "billing"), handler);
    /// let running = router.start(retry.subscriber(broker.clone()));
    /// running.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn routes<S>(&self, router: Router, main: RouteConfig, handler: S) -> Router
    where
        S: Service<Inbound, Response = (), Error = HandlerError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        let mut main = main;
        main.topic = self.topic.clone();
        let mut router = router.route_with(main.clone(), self.layer().layer(handler.clone()));
        for n in 1..=self.levels() {
            let cfg = RouteConfig::new(
                format!("{}.retry.{n}", main.name),
                retry_topic(&self.topic, n),
                retry_group(&main.group, n),
            )
            .concurrency(main.concurrency)
            .max_in_flight(main.max_in_flight);
            router = router.route_with(cfg, self.level_layer(n).layer(handler.clone()));
        }
        router
    }

    /// Rebuilds the parked-keys store from the retry topics: forgets everything, then
    /// parks every message that the level routes of `group` (groups
    /// [`retry_group`]`(group, n)`) have not consumed yet from `<topic>.retry.1 …`
    /// (read through `backlog`, without consuming). Returns how many messages were
    /// parked. Call it before starting the routes, when the store does not survive a
    /// restart ([`MemoryParkedKeys`]); see the [module docs](self#surviving-a-restart-or-a-rebalance).
    ///
    /// # Errors
    /// [`RecoverError::NotOrdered`] without a store; the backlog's or the store's error.
    pub async fn recover(&self, backlog: &dyn Backlog, group: &str) -> Result<usize, RecoverError> {
        let store = self.parked.as_ref().ok_or(RecoverError::NotOrdered)?;
        store.clear().await.map_err(RecoverError::Store)?;
        let mut parked = 0;
        for level in 1..=self.levels() {
            let topic = retry_topic(&self.topic, level);
            let level_group = retry_group(group, level);
            let unconsumed = backlog
                .unconsumed(&topic, &level_group)
                .await
                .map_err(RecoverError::Backlog)?;
            for message in unconsumed {
                let (_, origin, _) = restore(self, level, &message);
                let Some(key) = message.key.as_deref() else {
                    continue;
                };
                let ticket = Ticket::of(&origin);
                if ticket.is_empty() {
                    continue;
                }
                let nskey = namespaced(group, &self.topic, key);
                store
                    .park(&nskey, &ticket, level)
                    .await
                    .map_err(RecoverError::Store)?;
                parked += 1;
            }
        }
        tracing::info!(topic = %self.topic, %group, parked, "parked keys rebuilt from the retry topics");
        Ok(parked)
    }
}

/// The store key of `key` for `group` on `topic`.
fn namespaced(group: &str, topic: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + topic.len() + key.len() + 2);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// Reads a retry-topic message of `level`: the message without the retry headers, its
/// original origin, and how many deliveries failed before it was sent.
fn restore(cfg: &RetryTopics, level: u32, m: &Message) -> (Message, Origin, u32) {
    let attempts = m
        .header(headers::ATTEMPTS)
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(level);
    let topic = m
        .header(headers::ORIGINAL_TOPIC)
        .filter(|t| !t.is_empty())
        .unwrap_or(&cfg.topic);
    let mut origin = Origin::new(topic);
    let mut kept = Headers::new();
    for (name, value) in m.headers.iter() {
        if let Some(pos) = name.strip_prefix(headers::ORIGINAL_PREFIX)
            && name != headers::ORIGINAL_TOPIC
            && let Some(v) = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
        {
            origin = origin.with(position_name(pos), v);
        }
        if !is_retry_header(name) {
            kept.append(name, value.clone());
        }
    }
    let message = Message {
        id: m.id.clone(),
        key: m.key.clone(),
        headers: kept,
        payload: m.payload.clone(),
    };
    (message, origin, attempts)
}

/// The retry-topic copy of `msg`.
fn retry_message(
    cfg: &RetryTopics,
    msg: &Message,
    origin: &Origin,
    attempts: u32,
    level: u32,
    follower: bool,
    error: Option<&HandlerError>,
) -> Message {
    let mut h: Headers = msg
        .headers
        .iter()
        .filter(|(n, _)| !is_retry_header(n))
        .map(|(n, v)| (n.to_owned(), v.clone()))
        .collect();
    let delay = i64::try_from(cfg.delay(level).as_millis()).unwrap_or(i64::MAX);
    h.append(headers::ATTEMPTS, attempts.to_string());
    h.append(
        headers::DUE_AT,
        now_millis().saturating_add(delay).to_string(),
    );
    h.append(headers::ORIGINAL_TOPIC, origin.topic.to_string());
    for (name, value) in &origin.position {
        h.append(
            format!("{}{name}", headers::ORIGINAL_PREFIX),
            value.to_string(),
        );
    }
    if follower {
        h.append(headers::FOLLOWER, "true");
    }
    if let Some(e) = error {
        h.append(headers::ERROR, e.message().to_owned());
        h.append(headers::ERROR_CLASS, e.class().to_string());
    }
    Message {
        id: msg.id.clone(),
        key: msg.key.clone(),
        headers: h,
        payload: msg.payload.clone(),
    }
}

/// Whether the stack asked for a later delivery (which retry topics provide).
fn wants_delay(e: &HandlerError) -> bool {
    e.redelivery().is_some() && e.class() != ErrorClass::Fatal
}

/// Sends a message on a retry path: publishes it to `level`'s topic.
async fn forward(cfg: &RetryTopics, m: Message, level: u32) -> Result<(), PublishError> {
    let topic = retry_topic(&cfg.topic, level);
    cfg.publisher.publish(&topic, vec![m]).await
}

fn store_error(cfg: &RetryTopics, e: ParkedKeysError) -> HandlerError {
    HandlerError::from_error(ErrorClass::Transient, e).redeliver_after(cfg.store_retry_delay)
}

fn forward_failed(
    level: u32,
    cfg: &RetryTopics,
    cause: Option<HandlerError>,
    e: PublishError,
) -> HandlerError {
    let delay = cause
        .as_ref()
        .and_then(HandlerError::redelivery)
        .unwrap_or(cfg.store_retry_delay);
    tracing::warn!(topic = %cfg.topic, level, error = %e, "publishing to the retry topic failed; redelivering in place");
    HandlerError::from_error(
        ErrorClass::Transient,
        ForwardFailed::new(retry_topic(&cfg.topic, level), cause, e),
    )
    .redeliver_after(delay)
}

/// Ordering context of one delivery: the store, the namespaced key and the ticket.
struct Order {
    store: Arc<dyn ParkedKeys>,
    key: Vec<u8>,
    ticket: Ticket,
}

fn order_of(cfg: &RetryTopics, group: &str, message: &Message, origin: &Origin) -> Option<Order> {
    let store = cfg.parked.clone()?;
    let key = message.key.as_deref()?;
    let ticket = Ticket::of(origin);
    if ticket.is_empty() {
        return None;
    }
    Some(Order {
        store,
        key: namespaced(group, &cfg.topic, key),
        ticket,
    })
}

/// Sends delayed retries through retry topics; see the [module docs](self).
///
/// On the main topic's route (`level` `None`) it calls the inner handler and publishes a
/// failure that asks for a redelivery to `<topic>.retry.<n>`, then acknowledges; on a
/// retry topic's route it restores the original origin and attempt count first.
#[derive(Clone)]
pub struct RetryTopic<S> {
    inner: S,
    config: RetryTopics,
    level: Option<u32>,
}

impl<S> RetryTopic<S> {
    /// Wraps `inner` for the main route (`level` `None`) or a retry level's route.
    pub fn new(inner: S, config: RetryTopics, level: Option<u32>) -> Self {
        Self {
            inner,
            config,
            level,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The retry level this service runs on (`None`: the main topic).
    pub fn level(&self) -> Option<u32> {
        self.level
    }
}

impl<S: fmt::Debug> fmt::Debug for RetryTopic<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryTopic")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .field("level", &self.level)
            .finish()
    }
}

impl<S> Service<Inbound> for RetryTopic<S>
where
    S: Service<Inbound, Response = (), Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        // Keep the service that was polled ready for this call.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let cfg = self.config.clone();
        match self.level {
            _ if cfg.levels() == 0 => {
                let mut inner = inner;
                Box::pin(inner.call(inbound))
            }
            None => Box::pin(main_side(cfg, inner, inbound)),
            Some(level) => Box::pin(retry_side(cfg, level, inner, inbound)),
        }
    }
}

async fn main_side<S>(cfg: RetryTopics, mut inner: S, inbound: Inbound) -> Result<(), HandlerError>
where
    S: Service<Inbound, Response = (), Error = HandlerError>,
{
    let order = order_of(
        &cfg,
        &inbound.route.group,
        &inbound.message,
        &inbound.origin,
    );
    if let Some(o) = &order {
        let parked = o
            .store
            .lookup(&o.key, &o.ticket)
            .await
            .map_err(|e| store_error(&cfg, e))?;
        if let Some(p) = parked {
            // The key has messages in the retry path: follow them, never overtake.
            let (level, attempts, follower) = match p.mine {
                // This very message was parked and sent before, and is delivered again
                // (a crash between the forward and the ack): send it where it was going.
                Some(level) => (level, level, false),
                None => (p.head_level, 0, true),
            };
            if p.mine.is_none() {
                o.store
                    .park(&o.key, &o.ticket, level)
                    .await
                    .map_err(|e| store_error(&cfg, e))?;
            }
            let m = retry_message(
                &cfg,
                &inbound.message,
                &inbound.origin,
                attempts,
                level,
                follower,
                None,
            );
            if let Err(e) = forward(&cfg, m, level).await {
                if p.mine.is_none() {
                    let _ = o.store.release(&o.key, &o.ticket).await;
                }
                return Err(forward_failed(level, &cfg, None, e));
            }
            tracing::debug!(
                topic = %cfg.topic, message_id = %inbound.message.id, level, count = p.count + 1,
                "key is parked; message follows it into the retry path"
            );
            return Ok(());
        }
    }
    let err = match inner.call(inbound.clone()).await {
        Err(e) if wants_delay(&e) => e,
        other => return other,
    };
    let attempts = inbound.attempt.max(1);
    let level = attempts.min(cfg.levels());
    if let Some(o) = &order {
        // Park before publishing: the retry route must never see a message of a key
        // the store does not know is parked.
        if let Err(se) = o.store.park(&o.key, &o.ticket, level).await {
            tracing::warn!(error = %se, "parked-keys store failed; redelivering in place");
            return Err(err);
        }
    }
    let m = retry_message(
        &cfg,
        &inbound.message,
        &inbound.origin,
        attempts,
        level,
        false,
        Some(&err),
    );
    match forward(&cfg, m, level).await {
        Ok(()) => {
            tracing::debug!(
                topic = %cfg.topic, message_id = %inbound.message.id, level, error = %err,
                "sent to the retry topic"
            );
            Ok(())
        }
        Err(pe) => {
            if let Some(o) = &order {
                let _ = o.store.release(&o.key, &o.ticket).await;
            }
            Err(forward_failed(level, &cfg, Some(err), pe))
        }
    }
}

async fn retry_side<S>(
    cfg: RetryTopics,
    level: u32,
    mut inner: S,
    inbound: Inbound,
) -> Result<(), HandlerError>
where
    S: Service<Inbound, Response = (), Error = HandlerError>,
{
    if let Some(due) = due_at_millis(&inbound.message)
        && due > now_millis() + 50
    {
        tracing::warn!(
            topic = %inbound.origin.topic, message_id = %inbound.message.id,
            "retry message handled before it is due: start the router with RetryTopics::subscriber"
        );
    }
    let (message, origin, before) = restore(&cfg, level, &inbound.message);
    // The level route's name and group carry a `.retry.<n>` suffix (see `routes`); the
    // handler sees the main route's.
    let suffix = format!(".retry.{level}");
    let main_name = |s: &str| s.strip_suffix(&suffix).unwrap_or(s).to_owned();
    let route = Arc::new(RouteInfo {
        handler: main_name(&inbound.route.handler),
        topic: cfg.topic.clone(),
        group: main_name(&inbound.route.group),
    });
    let attempt = before.saturating_add(inbound.attempt.max(1));
    let req = Inbound::new(message, origin, attempt, route);
    let order = order_of(&cfg, &req.route.group, &req.message, &req.origin);
    if let Some(o) = &order {
        let parked = o
            .store
            .lookup(&o.key, &o.ticket)
            .await
            .map_err(|e| store_error(&cfg, e))?;
        if let Some(p) = parked
            && p.head < o.ticket
        {
            // An older message of the key is still in the retry path: go where it is.
            let to = p.head_level;
            o.store
                .park(&o.key, &o.ticket, to)
                .await
                .map_err(|e| store_error(&cfg, e))?;
            let m = retry_message(&cfg, &req.message, &req.origin, before, to, true, None);
            if let Err(e) = forward(&cfg, m, to).await {
                let _ = o.store.park(&o.key, &o.ticket, level).await;
                return Err(forward_failed(to, &cfg, None, e));
            }
            tracing::debug!(
                topic = %cfg.topic, message_id = %req.message.id, from = level, to,
                "an older message of the key is still retrying; following it"
            );
            return Ok(());
        }
    }
    let err = match inner.call(req.clone()).await {
        Ok(()) => {
            if let Some(o) = &order {
                o.store
                    .release(&o.key, &o.ticket)
                    .await
                    .map_err(|e| store_error(&cfg, e))?;
            }
            return Ok(());
        }
        Err(e) if wants_delay(&e) => e,
        Err(e) => return Err(e),
    };
    let next = attempt.min(cfg.levels());
    if let Some(o) = &order
        && let Err(se) = o.store.park(&o.key, &o.ticket, next).await
    {
        tracing::warn!(error = %se, "parked-keys store failed; redelivering in place");
        return Err(err);
    }
    let m = retry_message(
        &cfg,
        &req.message,
        &req.origin,
        attempt,
        next,
        false,
        Some(&err),
    );
    match forward(&cfg, m, next).await {
        Ok(()) => {
            tracing::debug!(
                topic = %cfg.topic, message_id = %req.message.id, level = next, error = %err,
                "sent to the next retry topic"
            );
            Ok(())
        }
        Err(pe) => {
            if let Some(o) = &order {
                let _ = o.store.park(&o.key, &o.ticket, level).await;
            }
            Err(forward_failed(next, &cfg, Some(err), pe))
        }
    }
}

#[cfg(test)]
mod tests;
