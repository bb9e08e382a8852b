//! [`KafkaSubscriber`]: consumer groups behind herald's [`Subscriber`], with offsets
//! committed in order per partition after the handler acknowledged.
//!
//! # How a subscription runs
//! ```text
//!  librdkafka ──poll──▶ Subscription stream ──────────────────────────▶ handler
//!      ▲    └──poll──▶ driver task (only while the stream does not poll)   │
//!      │ commit (async,    │  └── pause / resume (max_in_flight)            │ ack / nack
//!      │ every interval)   ▼                                                ▼
//!      └────────────── per-partition trackers ◀───────────────── done(offset)
//! ```
//! * The subscription's stream polls librdkafka itself: a record is copied once and
//!   handed to the handler on the handler's own task, with no hand-off between threads.
//!   librdkafka wakes a waiting stream when its queue fills.
//! * A driver task per subscription commits, and polls in the stream's place whenever
//!   the stream has not polled for a check period (100 ms) — while joining, while
//!   handlers are busy, or when nobody polls the subscription — so rebalances and
//!   `max.poll.interval.ms` are always served. Both sides poll under one lock and queue
//!   what they took in order, so records of a partition reach the handler in order
//!   whichever side polled.
//! * `ack` marks the offset done in its partition's tracker; the commit position is the
//!   lowest contiguous done offset + 1, so a later offset is never committed while an
//!   earlier one is unfinished. Every `commit_interval` (and after every `commit_every`
//!   acks if set) the driver commits the positions that moved — never per message —
//!   asynchronously to consumption: the commit runs on a blocking thread, one at a time,
//!   so its result is known and a refused commit is sent again at the next one.
//!   (librdkafka reports results of manual asynchronous commits to nobody unless a C
//!   callback is configured.)
//! * `nack(delay)` redelivers in place: the message is yielded again after `delay` with
//!   `attempt + 1`; its offset stays uncommitted meanwhile, so a crash redelivers it.
//!   Younger messages of the partition keep flowing (their commits wait for it).
//! * The stream never holds more than `max_in_flight` unsettled deliveries. At that
//!   count nobody takes records (librdkafka's prefetch queue is bounded by
//!   `queued.max.messages.kbytes`); if the subscription stays full for `pause_after`
//!   (1 s), it pauses every assigned partition and polls again — so rebalances are
//!   served and slow handlers never trip `max.poll.interval.ms` — and resumes once half
//!   the deliveries have settled. (Pausing discards librdkafka's prefetched records,
//!   which is why a brief stall does not pause.)
//! * On revocation whichever side polled synchronously commits what is done for the revoked
//!   partitions, then drops their trackers: late acks of revoked partitions commit
//!   nothing (they return [`AckErrorKind::Closed`]) and their queued deliveries are
//!   discarded — the new owner redelivers them.
//! * [`Subscription::close`] stops fetching, commits what finished synchronously and
//!   leaves the group. Dropping the subscription does the same in the background.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt, future::BoxFuture, task::AtomicWaker};
use herald_core::{
    AckError, AckErrorKind, Acker, Delivery, Origin, StartFrom, SubscribeError, SubscribeErrorKind,
    SubscribeSpec, Subscriber, Subscription,
};
use rdkafka::{
    ClientContext, Offset, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::{KafkaError, KafkaResult},
    message::{BorrowedMessage, Message as _},
};
use tokio::{
    sync::{Notify, mpsc, watch},
    time::MissedTickBehavior,
};

use crate::{
    config::{KafkaConfig, ms},
    context,
    error::{ConfigError, ConfigErrorKind, config_error, subscribe_error},
    tracker::PartitionTracker,
    wire::Raw,
};

/// Default `session.timeout.ms`: 6 s (librdkafka: 45 s). Short sessions make a group
/// notice a dead member quickly, and some brokers (Tansu) need them for a fast first
/// join; 6 s is the smallest a stock Kafka broker accepts
/// (`group.min.session.timeout.ms`).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// Default `heartbeat.interval.ms`: 1 s (librdkafka: 3 s); keep it well below the
/// session timeout.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default `fetch.queue.backoff.ms`: 20 ms (librdkafka: 1 s). librdkafka stops fetching a
/// partition whose prefetch queue is over `queued.min.messages` /
/// `queued.max.messages.kbytes` and looks again only after this backoff; with its default a
/// consumer that is merely slower than the broker drains its queue and then sits idle for
/// up to a second (measured: a 0.8 s stall in every 300 000-record drain).
pub const DEFAULT_FETCH_QUEUE_BACKOFF: Duration = Duration::from_millis(20);
/// Default [`SubscriberSettings::commit_interval`]: 1 s.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`SubscriberSettings::join_timeout`]: 30 s.
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`SubscriberSettings::pause_after`]: 1 s.
pub const DEFAULT_PAUSE_AFTER: Duration = Duration::from_secs(1);
/// Default [`SubscriberSettings::close_timeout`]: 30 s.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The most records one poll round takes from librdkafka (under the fetch lock): the
/// stream's per refill, the driver's per wake-up before it looks at its timers again.
const DRAIN_BUDGET: usize = 128;

/// What herald itself reads to run a subscription (librdkafka properties live in
/// [`KafkaConfig`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberSettings {
    /// How often finished offsets are committed (in the background). Default 1 s.
    pub commit_interval: Duration,
    /// Also commit after this many acks (`None`: only on the interval).
    pub commit_every: Option<usize>,
    /// How long `subscribe` waits for the group to assign partitions (the first
    /// rebalance); `subscribe` fails with [`SubscribeErrorKind::Connection`] after it.
    /// `Duration::ZERO` returns at once and lets the join finish in the background.
    /// Default 30 s.
    pub join_timeout: Duration,
    /// How long `close` waits for the final commit and leaving the group. Default 30 s.
    pub close_timeout: Duration,
    /// How long the subscription may stay full (`max_in_flight` unsettled) before its
    /// partitions are paused. Until then nobody takes records (librdkafka's prefetch
    /// queue is bounded); pausing also lets herald poll again, so
    /// rebalances are served while handlers are slow, at the price of refetching what
    /// librdkafka had prefetched. Default 1 s.
    pub pause_after: Duration,
}

impl Default for SubscriberSettings {
    fn default() -> Self {
        Self {
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            commit_every: None,
            join_timeout: DEFAULT_JOIN_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            pause_after: DEFAULT_PAUSE_AFTER,
        }
    }
}

/// Builds a [`KafkaSubscriber`].
///
/// | setting | librdkafka property | herald default |
/// |---|---|---|
/// | — (forced) | `enable.auto.commit` | `false` (herald commits) |
/// | — (forced) | `enable.auto.offset.store` | `false` |
/// | — (per subscription) | `group.id` | [`SubscribeSpec::group`] |
/// | — (per subscription) | `auto.offset.reset` | from [`SubscribeSpec::start`]: `earliest` / `latest` |
/// | [`session_timeout`](Self::session_timeout) | `session.timeout.ms` | 6 s |
/// | [`heartbeat_interval`](Self::heartbeat_interval) | `heartbeat.interval.ms` | 1 s |
/// | — | `fetch.queue.backoff.ms` | 20 ms (librdkafka: 1 s; see [`DEFAULT_FETCH_QUEUE_BACKOFF`]) |
/// | [`max_poll_interval`](Self::max_poll_interval) | `max.poll.interval.ms` | librdkafka's (300 s); herald polls continuously |
/// | [`commit_interval`](Self::commit_interval) | — | 1 s |
/// | [`commit_every`](Self::commit_every) | — | off |
/// | [`join_timeout`](Self::join_timeout) | — | 30 s |
/// | [`close_timeout`](Self::close_timeout) | — | 30 s |
/// | [`pause_after`](Self::pause_after) | — | 1 s |
/// | [`set`](Self::set) | any | — |
#[derive(Clone)]
pub struct SubscriberBuilder {
    config: KafkaConfig,
    settings: SubscriberSettings,
}

impl fmt::Debug for SubscriberBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriberBuilder")
            .field("config", &self.config)
            .field("settings", &self.settings)
            .finish()
    }
}

impl SubscriberBuilder {
    /// A builder over `config` (brokers plus pass-through properties).
    pub fn new(config: KafkaConfig) -> Self {
        let mut b = Self {
            config: KafkaConfig::new(config.brokers),
            settings: SubscriberSettings::default(),
        };
        for (k, v) in config.properties {
            b = b.set(k, v);
        }
        b
    }

    /// Sets any librdkafka property (TLS, SASL, fetch tuning…); later calls win.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key, value);
        self
    }

    /// `session.timeout.ms`: how long the group waits for a silent member.
    pub fn session_timeout(self, d: Duration) -> Self {
        self.set("session.timeout.ms", ms(d))
    }

    /// `heartbeat.interval.ms`.
    pub fn heartbeat_interval(self, d: Duration) -> Self {
        self.set("heartbeat.interval.ms", ms(d))
    }

    /// `max.poll.interval.ms`. herald's driver polls continuously and pauses partitions
    /// for backpressure, so slow handlers do not trip it.
    pub fn max_poll_interval(self, d: Duration) -> Self {
        self.set("max.poll.interval.ms", ms(d))
    }

    /// How often finished offsets are committed.
    pub fn commit_interval(mut self, d: Duration) -> Self {
        self.settings.commit_interval = d.max(Duration::from_millis(1));
        self
    }

    /// Also commit after every `n` acks.
    pub fn commit_every(mut self, n: usize) -> Self {
        self.settings.commit_every = (n > 0).then_some(n);
        self
    }

    /// How long `subscribe` waits for the first partition assignment.
    pub fn join_timeout(mut self, d: Duration) -> Self {
        self.settings.join_timeout = d;
        self
    }

    /// How long `close` waits for the final commit and the group leave.
    pub fn close_timeout(mut self, d: Duration) -> Self {
        self.settings.close_timeout = d;
        self
    }

    /// How long the subscription may stay full before its partitions are paused.
    pub fn pause_after(mut self, d: Duration) -> Self {
        self.settings.pause_after = d;
        self
    }

    /// Replaces the herald settings at once.
    pub fn settings(mut self, s: SubscriberSettings) -> Self {
        self.settings = s;
        self
    }

    /// The effective librdkafka settings, without the per-subscription `group.id` and
    /// `auto.offset.reset`.
    pub fn effective_config(&self) -> KafkaConfig {
        let mut c = KafkaConfig::new(self.config.brokers.clone());
        c.insert("session.timeout.ms", ms(DEFAULT_SESSION_TIMEOUT));
        c.insert("heartbeat.interval.ms", ms(DEFAULT_HEARTBEAT_INTERVAL));
        c.insert("fetch.queue.backoff.ms", ms(DEFAULT_FETCH_QUEUE_BACKOFF));
        for (k, v) in &self.config.properties {
            c.insert(k.clone(), v.clone());
        }
        for (k, v) in [
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
        ] {
            if c.get(k).is_some_and(|old| old != v) {
                tracing::warn!(property = k, "herald forces {k}={v} on its consumers");
            }
            c.insert(k, v);
        }
        c
    }

    /// Checks the properties and creates the subscriber; consumers are created per
    /// subscription.
    pub fn build(self) -> Result<KafkaSubscriber, ConfigError> {
        let config = self.effective_config();
        let mut probe = config.to_client_config();
        probe.set("group.id", "herald-config-check");
        probe.create_native_config().map_err(config_error)?;
        if config.brokers.trim().is_empty() {
            return Err(ConfigError::new(
                ConfigErrorKind::InvalidProperty,
                "no bootstrap servers",
            ));
        }
        Ok(KafkaSubscriber {
            inner: Arc::new(SubscriberInner {
                config,
                settings: self.settings,
            }),
        })
    }
}

/// Consumes Kafka topics in consumer groups; each [`subscribe`](Subscriber::subscribe)
/// is one group member (its own librdkafka consumer).
///
/// * At-least-once: an offset is committed only after its delivery was acked, in order
///   per partition (see the [module docs](self)).
/// * Messages of one key come from one partition, in order; partitions are consumed
///   concurrently and interleave in the stream.
/// * `auto.offset.reset` follows [`SubscribeSpec::start`].
/// * `subscribe` waits for the first partition assignment (see
///   [`SubscriberSettings::join_timeout`]), so messages published after it returns are
///   seen even with [`StartFrom::Latest`].
///
/// Cheap to clone.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::StreamExt;
/// use herald_core::{SubscribeSpec, Subscriber};
/// use herald_kafka::KafkaSubscriber;
///
/// let subscriber = KafkaSubscriber::builder("127.0.0.1:9092").build()?;
/// let mut sub = subscriber.subscribe(SubscribeSpec::new("orders", "billing")).await?;
/// while let Some(delivery) = sub.next().await {
///     let delivery = delivery?;
///     println!("{:?}", delivery.message);
///     delivery.ack().await?;
/// }
/// sub.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KafkaSubscriber {
    inner: Arc<SubscriberInner>,
}

struct SubscriberInner {
    config: KafkaConfig,
    settings: SubscriberSettings,
}

impl fmt::Debug for KafkaSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSubscriber")
            .field("config", &self.inner.config)
            .field("settings", &self.inner.settings)
            .finish()
    }
}

impl KafkaSubscriber {
    /// A builder for `brokers` with herald's defaults.
    pub fn builder(brokers: impl Into<String>) -> SubscriberBuilder {
        SubscriberBuilder::new(KafkaConfig::new(brokers))
    }

    /// A builder over shared settings (TLS, SASL…).
    pub fn from_config(config: KafkaConfig) -> SubscriberBuilder {
        SubscriberBuilder::new(config)
    }

    /// A subscriber for `brokers` with the defaults.
    pub fn new(brokers: impl Into<String>) -> Result<Self, ConfigError> {
        Self::builder(brokers).build()
    }

    /// The herald settings.
    pub fn settings(&self) -> &SubscriberSettings {
        &self.inner.settings
    }

    async fn start(&self, spec: SubscribeSpec) -> Result<Subscription, SubscribeError> {
        if spec.topic.is_empty() || spec.group.is_empty() {
            return Err(SubscribeError::new(
                SubscribeErrorKind::InvalidConfig,
                "empty topic or group name",
            ));
        }
        let settings = self.inner.settings.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let max = spec.max_in_flight.max(1);
        let shared = Arc::new(Shared {
            topic: Arc::from(spec.topic.as_str()),
            tracks: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            events: AtomicU64::new(0),
            fetch: Mutex::new(Fetched::default()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: max,
            resume_at: max / 2,
            paused: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            room: Notify::new(),
            commit_now: Notify::new(),
            acks: AtomicUsize::new(0),
            commit_every: settings.commit_every.unwrap_or(0),
            assigned: watch::Sender::new(false),
            tx,
            stream_waker: AtomicWaker::new(),
            stream_parked: AtomicBool::new(false),
            stream_polls: AtomicU64::new(0),
            data: Notify::new(),
            stop: Notify::new(),
            fatal: Mutex::new(None),
        });
        let mut cc = self.inner.config.to_client_config();
        cc.set("group.id", &spec.group);
        cc.set(
            "auto.offset.reset",
            match spec.start {
                StartFrom::Latest => "latest",
                _ => "earliest",
            },
        );
        let mut consumer: BaseConsumer<ConsumerCtx> = cc
            .create_with_context(ConsumerCtx {
                shared: shared.clone(),
            })
            .map_err(|e| {
                // Through `config_error`, which keeps secret values out of the message.
                let e = config_error(e);
                SubscribeError::new(SubscribeErrorKind::InvalidConfig, e.message().to_owned())
            })?;
        // Wakes whoever waits for records: the parked stream, or the driver when it polls
        // (the callback holds only `Shared`, which does not hold the consumer).
        let on_data = shared.clone();
        consumer.set_nonempty_callback(move || on_data.on_data());
        consumer
            .subscribe(&[spec.topic.as_str()])
            .map_err(subscribe_error)?;
        let consumer = Arc::new(consumer);
        let mut assigned = shared.assigned.subscribe();
        let driver = tokio::spawn(drive(consumer.clone(), shared.clone(), settings.clone()));
        let mut stream = KafkaStream {
            consumer,
            rx,
            buf: VecDeque::new(),
            err: None,
            shared: shared.clone(),
            ended: false,
        };
        if !settings.join_timeout.is_zero() {
            // Dropping `stream` on the error paths makes the driver leave the group.
            let deadline = tokio::time::Instant::now() + settings.join_timeout;
            loop {
                tokio::select! {
                    joined = async { assigned.wait_for(|a| *a).await.is_ok() } => {
                        if joined {
                            break;
                        }
                        drop(stream);
                        return Err(match driver.await {
                            Ok(Err(e)) => e,
                            _ => SubscribeError::new(SubscribeErrorKind::Closed, "the consumer stopped while joining"),
                        });
                    }
                    // Before the first assignment only errors can arrive; one that will
                    // not go away (unknown topic, authorization) fails the subscribe.
                    item = stream.rx.recv() => match item {
                        Some(Item::Err(e)) if !e.is_retriable() => return Err(e),
                        Some(Item::Err(e)) => tracing::debug!(error = %e, "while joining"),
                        Some(Item::Msg(p)) => stream.buf.push_back(p),
                        Some(Item::End) | None => {
                            drop(stream);
                            return Err(match driver.await {
                                Ok(Err(e)) => e,
                                _ => SubscribeError::new(SubscribeErrorKind::Closed, "the consumer stopped while joining"),
                            });
                        }
                    },
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(SubscribeError::new(
                            SubscribeErrorKind::Connection,
                            format!(
                                "group {} got no partition assignment for {} within {:?}",
                                spec.group, spec.topic, settings.join_timeout
                            ),
                        ));
                    }
                }
            }
        }
        let close = Box::pin(async move {
            match driver.await {
                Ok(r) => r,
                Err(e) => Err(SubscribeError::new(
                    SubscribeErrorKind::Other,
                    e.to_string(),
                )),
            }
        });
        Ok(Subscription::new(stream.boxed(), close))
    }
}

impl Subscriber for KafkaSubscriber {
    fn subscribe(
        &self,
        spec: SubscribeSpec,
    ) -> BoxFuture<'_, Result<Subscription, SubscribeError>> {
        Box::pin(self.start(spec))
    }
}

/// A delivery on its way to the handler (or back, after a nack).
struct Pending {
    track: Arc<PartitionTracker>,
    offset: i64,
    attempt: u32,
    raw: Raw,
}

/// What reaches the stream through its channel; fetched records take the shared
/// [`Fetched::ready`] queue instead.
enum Item {
    /// A redelivery.
    Msg(Pending),
    Err(SubscribeError),
    End,
}

/// Records taken from librdkafka and not yet in the stream's hands. Every poll of the
/// consumer happens under this lock and puts its records here (or straight into the
/// stream's buffer, when the stream polls), so records reach the handler in the order
/// librdkafka returned them whichever side polled.
#[derive(Default)]
struct Fetched {
    /// Counted in flight, waiting for the stream.
    ready: VecDeque<Pending>,
    /// Not counted: taken while `max_in_flight` were out (librdkafka returned them
    /// while a pause took effect).
    backlog: VecDeque<Pending>,
    cache: TrackCache,
}

/// State shared by the driver, the consumer callbacks, the stream and the ackers.
struct Shared {
    topic: Arc<str>,
    tracks: Mutex<HashMap<i32, Arc<PartitionTracker>>>,
    /// Bumped at every rebalance, so the tracker cache is refreshed.
    generation: AtomicU64,
    /// Events (rebalances, commits, logs) the consumer's callbacks served; see
    /// [`poll_now`].
    events: AtomicU64,
    fetch: Mutex<Fetched>,
    in_flight: AtomicUsize,
    max_in_flight: usize,
    resume_at: usize,
    paused: AtomicBool,
    /// The driver waits for room under `max_in_flight`.
    waiting: AtomicBool,
    room: Notify,
    commit_now: Notify,
    acks: AtomicUsize,
    commit_every: usize,
    assigned: watch::Sender<bool>,
    tx: mpsc::UnboundedSender<Item>,
    /// The stream's task, parked until records (or room) arrive.
    stream_waker: AtomicWaker,
    /// The stream is parked with its waker registered: it polls again as soon as
    /// librdkafka's queue fills, so the driver need not.
    stream_parked: AtomicBool,
    /// Bumped every time the stream polls the consumer; the driver takes over polling
    /// when it stops moving.
    stream_polls: AtomicU64,
    /// librdkafka's queue became non-empty (for the driver, when it polls).
    data: Notify,
    /// A fatal consumer error the stream saw: the driver stops.
    stop: Notify,
    fatal: Mutex<Option<SubscribeError>>,
}

impl Shared {
    fn tracks(&self) -> MutexGuard<'_, HashMap<i32, Arc<PartitionTracker>>> {
        self.tracks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fetched(&self) -> MutexGuard<'_, Fetched> {
        self.fetch.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_assign(&self, tpl: &TopicPartitionList) {
        let mut tracks = self.tracks();
        for e in tpl.elements_for_topic(&self.topic) {
            tracks
                .entry(e.partition())
                .or_insert_with(|| Arc::new(PartitionTracker::new(e.partition())));
        }
        drop(tracks);
        self.generation.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(topic = %self.topic, partitions = tpl.count(), "partitions assigned");
    }

    /// Commits what is done for the revoked partitions, then forgets their trackers.
    fn on_revoke(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &TopicPartitionList) {
        let mut commit = TopicPartitionList::new();
        {
            let mut tracks = self.tracks();
            for e in tpl.elements_for_topic(&self.topic) {
                if let Some(t) = tracks.remove(&e.partition())
                    && let Some(pos) = t.revoke()
                {
                    let _ = commit.add_partition_offset(
                        &self.topic,
                        t.partition(),
                        Offset::Offset(pos),
                    );
                }
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        if commit.count() == 0 {
            return;
        }
        if consumer.assignment_lost() {
            tracing::warn!(topic = %self.topic, "assignment lost: finished offsets of revoked partitions cannot be committed and will be redelivered");
            return;
        }
        if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
            tracing::warn!(topic = %self.topic, error = %e, "commit on revocation failed; the new owner redelivers from the last commit");
        }
    }

    /// Commits every tracker's position that moved since its last commit.
    fn commit_done<C: Consumer<ConsumerCtx>>(
        &self,
        consumer: &C,
        mode: CommitMode,
    ) -> KafkaResult<()> {
        let mut tpl = TopicPartitionList::new();
        let mut touched = Vec::new();
        for t in self.tracks().values() {
            if let Some(pos) = t.take_commit() {
                tpl.add_partition_offset(&self.topic, t.partition(), Offset::Offset(pos))?;
                touched.push(t.clone());
            }
        }
        if touched.is_empty() {
            return Ok(());
        }
        // A failure of any partition fails the whole call (librdkafka returns the last
        // partition error); committing the others again is harmless.
        let r = consumer.commit(&tpl, mode);
        if r.is_err() {
            for t in touched {
                t.commit_failed();
            }
        }
        r
    }

    /// One unsettled delivery fewer.
    fn release(&self) {
        let before = self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if before == self.max_in_flight {
            // The stream may be parked at the limit.
            self.stream_waker.wake();
        }
        if before.saturating_sub(1) < self.max_in_flight && self.waiting.load(Ordering::SeqCst) {
            self.room.notify_one();
        }
    }

    /// Whether the stream holds `max_in_flight` unsettled deliveries (or more wait).
    fn full(&self, f: &Fetched) -> bool {
        !f.backlog.is_empty() || self.in_flight.load(Ordering::SeqCst) >= self.max_in_flight
    }

    /// Stops fetching: the subscription stayed full for `pause_after`.
    fn pause(&self, consumer: &BaseConsumer<ConsumerCtx>) {
        if self.paused.load(Ordering::SeqCst) {
            return;
        }
        match consumer.assignment().and_then(|tpl| consumer.pause(&tpl)) {
            Ok(()) => {
                self.paused.store(true, Ordering::SeqCst);
                tracing::debug!(topic = %self.topic, max_in_flight = self.max_in_flight, "paused fetching");
            }
            Err(e) => tracing::warn!(error = %e, "pausing partitions failed"),
        }
    }

    /// Fetches again once the backlog is handed out and half the deliveries settled.
    fn maybe_resume(&self, consumer: &BaseConsumer<ConsumerCtx>) {
        if !self.paused.load(Ordering::SeqCst)
            || !self.fetched().backlog.is_empty()
            || self.in_flight.load(Ordering::SeqCst) > self.resume_at
        {
            return;
        }
        match consumer.assignment().and_then(|tpl| consumer.resume(&tpl)) {
            Ok(()) => {
                self.paused.store(false, Ordering::SeqCst);
                tracing::debug!(topic = %self.topic, "resumed fetching");
            }
            Err(e) => tracing::warn!(error = %e, "resuming partitions failed"),
        }
    }

    /// Takes a fetched delivery: into `out` (counted in flight from now on), or into the
    /// backlog while `max_in_flight` are out.
    fn offer(&self, p: Pending, backlog: &mut VecDeque<Pending>, out: &mut VecDeque<Pending>) {
        if !backlog.is_empty() || self.in_flight.load(Ordering::SeqCst) >= self.max_in_flight {
            backlog.push_back(p);
        } else {
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            out.push_back(p);
        }
    }

    /// Moves parked deliveries into `out` while there is room.
    fn unpark(&self, backlog: &mut VecDeque<Pending>, out: &mut VecDeque<Pending>) {
        while self.in_flight.load(Ordering::SeqCst) < self.max_in_flight {
            let Some(p) = backlog.pop_front() else { break };
            if !p.track.is_revoked() {
                self.in_flight.fetch_add(1, Ordering::SeqCst);
                out.push_back(p);
            }
        }
    }

    /// Polls the consumer (without waiting) for up to `budget` records while there is
    /// room, into `out` (a full subscription parks them in the backlog). Stops at the
    /// first error other than a partition EOF and returns it; `Ok(true)` when records
    /// may still be queued in librdkafka.
    fn poll_records(
        &self,
        consumer: &BaseConsumer<ConsumerCtx>,
        f: &mut Fetched,
        out: &mut VecDeque<Pending>,
        budget: usize,
    ) -> Result<bool, KafkaError> {
        let Fetched { backlog, cache, .. } = f;
        for _ in 0..budget {
            if !backlog.is_empty() || self.in_flight.load(Ordering::SeqCst) >= self.max_in_flight {
                // Full: records stay in librdkafka's (bounded) prefetch queue.
                if !self.paused.load(Ordering::SeqCst) {
                    return Ok(true);
                }
            }
            match poll_now(consumer, self) {
                None => return Ok(false),
                Some(Ok(msg)) => {
                    let Some(track) = cache.get(self, msg.partition()) else {
                        // A record of a partition we no longer own, fetched before the
                        // revocation.
                        continue;
                    };
                    let offset = msg.offset();
                    track.delivered(offset);
                    let p = Pending {
                        track: track.clone(),
                        offset,
                        attempt: 1,
                        raw: Raw::capture(&msg),
                    };
                    self.offer(p, backlog, out);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => return Err(e),
            }
        }
        Ok(true)
    }

    fn send(&self, p: Pending) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(Item::Msg(p)).is_err() {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn ack(&self, p: Pending) -> Result<(), AckError> {
        let kept = p.track.done(p.offset);
        self.release();
        if self.commit_every > 0
            && self.acks.fetch_add(1, Ordering::Relaxed) + 1 >= self.commit_every
        {
            self.acks.store(0, Ordering::Relaxed);
            self.commit_now.notify_one();
        }
        if kept { Ok(()) } else { Err(revoked()) }
    }

    fn nack(self: &Arc<Self>, p: Pending, delay: Duration) -> Result<(), AckError> {
        self.release();
        if p.track.is_revoked() {
            return Err(revoked());
        }
        let next = Pending {
            attempt: p.attempt.saturating_add(1),
            ..p
        };
        if delay.is_zero() {
            self.requeue(next);
            return Ok(());
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let shared = self.clone();
                rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    shared.requeue(next);
                });
            }
            // No runtime to wait on (a nack from a plain thread): redeliver now.
            Err(_) => self.requeue(next),
        }
        Ok(())
    }

    fn requeue(&self, p: Pending) {
        if !p.track.is_revoked() {
            self.send(p);
        }
    }

    /// librdkafka's queue became non-empty (its callback, on a librdkafka thread).
    fn on_data(&self) {
        self.stream_parked.store(false, Ordering::SeqCst);
        self.stream_waker.wake();
        self.data.notify_one();
    }
}

fn revoked() -> AckError {
    AckError::new(
        AckErrorKind::Closed,
        "the partition was revoked or the subscription closed; its owner redelivers the message",
    )
}

/// One poll of the consumer that does not wait: a record, an error, or `None` when
/// librdkafka's queue is empty.
///
/// `BaseConsumer::poll` also returns `None` right after serving an event (a rebalance,
/// a commit result, a log line) even when records are queued behind it; the context's
/// callbacks count the events they serve, so such a `None` polls again.
fn poll_now<'c>(
    consumer: &'c BaseConsumer<ConsumerCtx>,
    shared: &Shared,
) -> Option<KafkaResult<BorrowedMessage<'c>>> {
    loop {
        let before = shared.events.load(Ordering::SeqCst);
        match consumer.poll(Duration::ZERO) {
            Some(r) => return Some(r),
            None if shared.events.load(Ordering::SeqCst) != before => {}
            None => return None,
        }
    }
}

/// The partition → tracker map as an array, refreshed after rebalances.
#[derive(Default)]
struct TrackCache {
    generation: u64,
    by_partition: Vec<Option<Arc<PartitionTracker>>>,
}

impl TrackCache {
    fn get(&mut self, shared: &Shared, partition: i32) -> Option<&Arc<PartitionTracker>> {
        let g = shared.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.generation = g;
            self.by_partition.clear();
            for (p, t) in shared.tracks().iter() {
                let Ok(i) = usize::try_from(*p) else { continue };
                if self.by_partition.len() <= i {
                    self.by_partition.resize(i + 1, None);
                }
                self.by_partition[i] = Some(t.clone());
            }
        }
        let i = usize::try_from(partition).ok()?;
        self.by_partition.get(i)?.as_ref()
    }
}

/// How often the driver checks that the stream still polls the consumer; when it has
/// not for a whole period (a busy handler, a stream nobody polls), the driver polls in
/// its place.
const TAKEOVER_CHECK: Duration = Duration::from_millis(100);

/// One round of the driver's own polling: records into [`Fetched::ready`], errors to the
/// stream. `Err` on a fatal error; `Ok(true)` when records may still be queued.
fn driver_round(
    shared: &Shared,
    consumer: &BaseConsumer<ConsumerCtx>,
) -> Result<bool, SubscribeError> {
    let mut f = shared.fetched();
    let mut ready = std::mem::take(&mut f.ready);
    let before = ready.len();
    let r = shared.poll_records(consumer, &mut f, &mut ready, DRAIN_BUDGET);
    let got = ready.len() > before;
    f.ready = ready;
    drop(f);
    if got {
        shared.stream_waker.wake();
    }
    match r {
        Ok(more) => Ok(more),
        Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
            tracing::error!(error = %e, "fatal consumer error; the subscription ends");
            Err(subscribe_error(e))
        }
        Err(e) => {
            tracing::debug!(error = %e, "consumer error");
            let _ = shared.tx.send(Item::Err(subscribe_error(e)));
            Ok(true)
        }
    }
}

/// Serves the subscription in the background: commits finished offsets, and polls the
/// consumer whenever the stream does not (while joining, while handlers are busy or the
/// subscription is full — so rebalances and `max.poll.interval.ms` are served). When
/// the stream is dropped, commits and leaves the group.
async fn drive(
    consumer: Arc<BaseConsumer<ConsumerCtx>>,
    shared: Arc<Shared>,
    settings: SubscriberSettings,
) -> Result<(), SubscribeError> {
    let mut failure = None;
    let mut committing: Option<tokio::task::JoinHandle<()>> = None;
    {
        let start = tokio::time::Instant::now() + settings.commit_interval;
        let mut tick = tokio::time::interval_at(start, settings.commit_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(TAKEOVER_CHECK);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The driver polls until the stream shows it does.
        let mut takeover = true;
        let mut last_polls = shared.stream_polls.load(Ordering::SeqCst);
        let mut more = true;
        // When the subscription became full (`max_in_flight` unsettled).
        let mut full_since: Option<tokio::time::Instant> = None;
        'run: loop {
            // Full: stop taking records from librdkafka (its prefetch queue is bounded) and
            // wait for room; if that takes longer than `pause_after`, pause the partitions
            // and poll again, so rebalances and `max.poll.interval.ms` are served.
            let mut full = shared.full(&shared.fetched());
            if full {
                shared.waiting.store(true, Ordering::SeqCst);
                // An ack may have made room before `waiting` was visible to it.
                full = shared.full(&shared.fetched());
            }
            if !full {
                shared.waiting.store(false, Ordering::SeqCst);
                full_since = None;
            }
            let pause_at = *full_since
                .get_or_insert_with(|| tokio::time::Instant::now() + settings.pause_after);
            let paused = shared.paused.load(Ordering::SeqCst);
            let may_poll = takeover && (!full || paused);
            tokio::select! {
                biased;
                _ = shared.tx.closed() => break,
                _ = shared.stop.notified() => {
                    failure = shared.fatal.lock().unwrap_or_else(|p| p.into_inner()).take();
                    break;
                }
                _ = tick.tick() => {
                    commit_in_background(&mut committing, &shared, &consumer);
                    shared.unpark_ready();
                    shared.maybe_resume(&consumer);
                }
                _ = shared.commit_now.notified() => {
                    commit_in_background(&mut committing, &shared, &consumer);
                }
                _ = check.tick() => {
                    let polls = shared.stream_polls.load(Ordering::SeqCst);
                    // A parked stream is woken by librdkafka itself; one that moved is
                    // polling. Wake a parked one anyway: an event served without a record
                    // (librdkafka signals only an empty queue turning non-empty) must not
                    // leave records queued behind it.
                    let parked = shared.stream_parked.swap(false, Ordering::SeqCst);
                    if parked {
                        shared.stream_waker.wake();
                    }
                    let was = takeover;
                    takeover = polls == last_polls && !parked;
                    last_polls = polls;
                    if takeover {
                        // Poll at least once a period even with nothing queued: polling is
                        // what keeps the member within `max.poll.interval.ms`.
                        more = true;
                        if !was {
                            tracing::trace!(topic = %shared.topic, "the stream stopped polling; the driver polls");
                        }
                    }
                }
                _ = shared.room.notified() => {
                    shared.unpark_ready();
                    shared.maybe_resume(&consumer);
                }
                _ = tokio::time::sleep_until(pause_at), if full && !paused => {
                    shared.pause(&consumer);
                }
                _ = async {}, if may_poll && more => {
                    match driver_round(&shared, &consumer) {
                        Ok(m) => more = m,
                        Err(e) => {
                            failure = Some(e.clone());
                            let _ = shared.tx.send(Item::Err(e));
                            break 'run;
                        }
                    }
                    tokio::task::yield_now().await;
                }
                _ = shared.data.notified(), if may_poll => {
                    more = true;
                }
            }
        }
    }
    // Stop fetching, commit what finished, leave the group (the revocation during the
    // close commits acks that arrived in between).
    let s = shared.clone();
    let closing = async move {
        if let Some(c) = committing.take() {
            let _ = c.await;
        }
        tokio::task::spawn_blocking(move || {
            let r = s.commit_done(&*consumer, CommitMode::Sync);
            // The last reference (the stream drops its own first): dropping it closes
            // the consumer and leaves the group.
            drop(consumer);
            r
        })
        .await
    };
    let result = match tokio::time::timeout(settings.close_timeout, closing).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(subscribe_error(e)),
        Ok(Err(e)) => Err(SubscribeError::new(
            SubscribeErrorKind::Other,
            e.to_string(),
        )),
        Err(_) => Err(SubscribeError::new(
            SubscribeErrorKind::Connection,
            format!(
                "closing the consumer took longer than {:?}",
                settings.close_timeout
            ),
        )),
    };
    let _ = shared.tx.send(Item::End);
    match failure {
        Some(e) => Err(e),
        None => result,
    }
}

impl Shared {
    /// Moves parked deliveries to the stream's ready queue while there is room.
    fn unpark_ready(&self) {
        let mut f = self.fetched();
        if f.backlog.is_empty() {
            return;
        }
        let Fetched { ready, backlog, .. } = &mut *f;
        self.unpark(backlog, ready);
        drop(f);
        self.stream_waker.wake();
    }
}

/// Commits finished offsets on a blocking thread, one commit at a time, so polling never
/// waits for the broker and a failed commit is known (and sent again next time).
fn commit_in_background(
    committing: &mut Option<tokio::task::JoinHandle<()>>,
    shared: &Arc<Shared>,
    consumer: &Arc<BaseConsumer<ConsumerCtx>>,
) {
    if committing.as_ref().is_some_and(|c| !c.is_finished()) {
        // The next tick picks up what moved meanwhile.
        return;
    }
    let (s, c) = (shared.clone(), consumer.clone());
    *committing = Some(tokio::task::spawn_blocking(move || {
        if let Err(e) = s.commit_done(&*c, CommitMode::Sync) {
            tracing::warn!(topic = %s.topic, error = %e, "offset commit failed; sent again at the next commit");
        }
    }));
}

/// The subscription's stream of deliveries. It polls the consumer itself, so a record
/// goes from librdkafka to the handler on the handler's own task (no hand-off between
/// threads); the driver polls only when the stream does not.
struct KafkaStream {
    /// Declared first, so it is released before `rx` closes: the driver's reference is
    /// then the last one, and closing the consumer happens on its blocking thread.
    consumer: Arc<BaseConsumer<ConsumerCtx>>,
    rx: mpsc::UnboundedReceiver<Item>,
    /// Deliveries taken and not yet yielded.
    buf: VecDeque<Pending>,
    /// An error met while polling, yielded after the records taken before it.
    err: Option<SubscribeError>,
    shared: Arc<Shared>,
    ended: bool,
}

impl KafkaStream {
    /// Takes what the driver fetched, then polls the consumer. Whether anything (a
    /// delivery or an error) arrived.
    fn fetch(&mut self) -> bool {
        let shared = &*self.shared;
        shared.stream_polls.fetch_add(1, Ordering::Relaxed);
        let mut f = shared.fetched();
        self.buf.append(&mut f.ready);
        let Fetched { backlog, .. } = &mut *f;
        shared.unpark(backlog, &mut self.buf);
        match shared.poll_records(&self.consumer, &mut f, &mut self.buf, DRAIN_BUDGET) {
            Ok(_) => {}
            Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
                tracing::error!(error = %e, "fatal consumer error; the subscription ends");
                let e = subscribe_error(e);
                *shared.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                shared.stop.notify_one();
                self.err = Some(e);
            }
            Err(e) => {
                tracing::debug!(error = %e, "consumer error");
                self.err = Some(subscribe_error(e));
            }
        }
        !self.buf.is_empty() || self.err.is_some()
    }

    fn delivery(&self, p: Pending) -> Delivery {
        let topic = &*self.shared.topic;
        let partition = p.track.partition();
        let message = p.raw.to_message(topic, partition, p.offset);
        let origin = Origin::new(self.shared.topic.clone())
            .with("partition", i64::from(partition))
            .with("offset", p.offset);
        let attempt = p.attempt;
        let acker = KafkaAcker {
            shared: self.shared.clone(),
            pending: Some(p),
        };
        Delivery::new(message, origin, attempt, Box::new(acker))
    }
}

impl Stream for KafkaStream {
    type Item = Result<Delivery, SubscribeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(p) = self.buf.pop_front() {
                if p.track.is_revoked() {
                    // Its partition moved on; the new owner delivers it.
                    self.shared.release();
                    continue;
                }
                return Poll::Ready(Some(Ok(self.delivery(p))));
            }
            if let Some(e) = self.err.take() {
                return Poll::Ready(Some(Err(e)));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Item::Msg(p))) => {
                    self.buf.push_back(p);
                    continue;
                }
                Poll::Ready(Some(Item::Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Item::End) | None) => {
                    self.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            if self.fetch() {
                continue;
            }
            // Nothing queued: park until librdkafka's queue fills (or room appears), then
            // look once more, for what arrived before the waker was in place.
            self.shared.stream_waker.register(cx.waker());
            self.shared.stream_parked.store(true, Ordering::SeqCst);
            if self.fetch() {
                self.shared.stream_parked.store(false, Ordering::SeqCst);
                continue;
            }
            return Poll::Pending;
        }
    }
}

/// Settles one delivery: marks its offset done, or redelivers it in place.
struct KafkaAcker {
    shared: Arc<Shared>,
    pending: Option<Pending>,
}

impl Acker for KafkaAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), AckError>> {
        let r = match self.pending.take() {
            Some(p) => self.shared.ack(p),
            None => Ok(()),
        };
        herald_core::settled(r)
    }

    fn nack(mut self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), AckError>> {
        let r = match self.pending.take() {
            Some(p) => self.shared.nack(p, delay),
            None => Ok(()),
        };
        herald_core::settled(r)
    }
}

impl Drop for KafkaAcker {
    fn drop(&mut self) {
        // Dropped unsettled: a nack without delay.
        if let Some(p) = self.pending.take() {
            let _ = self.shared.nack(p, Duration::ZERO);
        }
    }
}

/// The consumer's callbacks: rebalances.
struct ConsumerCtx {
    shared: Arc<Shared>,
}

impl ClientContext for ConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.shared.events.fetch_add(1, Ordering::SeqCst);
        context::log(level, fac, log_message);
    }

    fn error(&self, e: KafkaError, reason: &str) {
        context::error(&e, reason);
    }
}

/// Commit results are not taken from `commit_callback`: librdkafka reports manual
/// commits there only when a C callback is configured. herald commits synchronously on
/// a blocking thread instead (see [`drive`]), which returns the result.
impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.shared.events.fetch_add(1, Ordering::SeqCst);
        match rebalance {
            Rebalance::Assign(tpl) => self.shared.on_assign(tpl),
            Rebalance::Revoke(tpl) => self.shared.on_revoke(consumer, tpl),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // New partitions follow the subscription's pause state.
            let r = if self.shared.paused.load(Ordering::SeqCst) {
                consumer.pause(tpl)
            } else {
                consumer.resume(tpl)
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "pause/resume of assigned partitions failed");
            }
            self.shared.assigned.send_replace(true);
        }
    }

    /// Results of commits are read where herald commits (see [`drive`]); this only counts
    /// the event for [`poll_now`].
    fn commit_callback(&self, _result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        self.shared.events.fetch_add(1, Ordering::SeqCst);
    }
}
