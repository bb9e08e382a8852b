//! Sagas (process managers): a typed state machine per correlation id, driven by events,
//! issuing commands, with per-step timeouts and compensation in reverse order.
//!
//! A [`Saga<D>`] is a definition: the event that starts an instance (and its id), then
//! ordered steps. Each step sends a command, waits for a reply event that says success or
//! failure, may time out, and may name the command that undoes it. A [`SagaEngine`] runs
//! the definition against a transport and a [`SagaStore`]:
//!
//! ```text
//!   OrderPlaced ─▶ start ─▶ step 0: ReserveInventory ─▶ InventoryReserved ─▶ step 1: ProcessPayment ─▶ PaymentSucceeded ─▶ … ─▶ completed
//!                                                                                    │
//!                                                          PaymentFailed / timeout ◀─┘
//!                                                                   │
//!                           compensating: ReleaseInventory (step 0) ─▶ InventoryReleased ─▶ compensated ─▶ CancelOrder
//! ```
//!
//! # Correlation
//! An instance's id is its correlation id. Every command the engine sends carries it in
//! the `correlation-id` header (and as the key); participants answer with
//! [`Message::caused_by`], which copies it, and the engine finds the instance from the
//! reply's header. Events of a type the current step does not expect are acknowledged and
//! ignored: a late reply, a duplicate, an event for a step already compensated.
//!
//! # Failure and compensation
//! A reply the step classifies as a failure, or its deadline passing, turns the instance
//! to [`SagaStatus::Compensating`]: the compensations of the completed steps are issued
//! newest first. A timed-out step is compensated too — its command may still take effect
//! later, so compensations must be idempotent and accept "nothing to undo". A compensation
//! with [`StepBuilder::confirmed_by`] waits for its confirmation (re-issued after
//! [`StepBuilder::compensation_timeout`], up to [`StepBuilder::compensation_attempts`],
//! then [`SagaStatus::Failed`]); one without proceeds at once, in order.
//!
//! # Persistence and concurrency
//! State lives in the [`SagaStore`], never only in memory, and every change is a
//! compare-and-swap on the record's version: two engines (two processes, or a redelivery
//! racing the original) that loaded the same version cannot both advance it — the loser
//! gets a conflict, reloads, and finds the event already applied. A transition's commands
//! are saved *with* the state in the record's outbox, published after the save, then
//! cleared; whoever loads a record with a non-empty outbox publishes it first (same
//! message ids, so consumers dedupe), and any engine's ticker republishes an outbox left
//! behind by a crash. Step deadlines are persisted too, and the ticker of any engine
//! fires them — a saga whose engine died resumes on another one.
//!
//! # Observability
//! [`SagaEngine::stats`] counts transitions, compare-and-swap conflicts, republished
//! outboxes and ignored deliveries; the counter `herald_saga_transitions_total` (labels
//! `saga`, `status`) goes through the `metrics` facade. Each instance keeps a bounded
//! history ([`SagaView::history`]): what was sent, what answered, when.
//!
//! # Examples
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use herald_core::{Event, memory::MemoryBroker};
//! use herald_patterns::saga::{MemorySagaStore, Saga, SagaEngine};
//!
//! #[derive(serde::Serialize, serde::Deserialize)] struct OrderPlaced { order: String }
//! impl Event for OrderPlaced { const TYPE: &'static str = "shop.OrderPlaced"; const VERSION: u32 = 1; }
//! #[derive(serde::Serialize, serde::Deserialize)] struct Charge { order: String }
//! impl Event for Charge { const TYPE: &'static str = "shop.Charge"; const VERSION: u32 = 1; }
//! #[derive(serde::Serialize, serde::Deserialize)] struct Charged { ok: bool }
//! impl Event for Charged { const TYPE: &'static str = "shop.Charged"; const VERSION: u32 = 1; }
//! #[derive(serde::Serialize, serde::Deserialize, Clone)] struct Data { order: String }
//!
//! let saga = Saga::<Data>::new("checkout")
//!     .start_on("orders", |ev: &OrderPlaced| Some((ev.order.clone(), Data { order: ev.order.clone() })))
//!     .step("charge", |s| s
//!         .command("payments.commands", |d: &Data| Charge { order: d.order.clone() })
//!         .on_reply("payments.events", |_d, ev: Charged| ev.ok)
//!         .timeout(Duration::from_secs(30)));
//! let broker = MemoryBroker::new();
//! let engine = SagaEngine::new(saga, MemorySagaStore::new(), broker.clone());
//! let running = engine.start(broker.clone());
//! // … participants handle `payments.commands` and answer on `payments.events` …
//! running.shutdown().await?;
//! # Ok(()) }
//! ```

mod postgres;
mod store;

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use herald_core::{
    Codec, CodecError, Event, HandlerError, Inbound, JsonCodec, Message, Publisher, RouteConfig,
    RouteInfo, Router, RouterError, Running, Subscriber, handler::BoxHandler, handler_fn,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{sync::watch, task::JoinHandle};

pub use postgres::PgSagaStore;
pub use store::{
    HistoryEntry, MemorySagaStore, SagaFailure, SagaRecord, SagaState, SagaStatus, SagaStore,
    SagaStoreError, SagaStoreErrorKind, StoredMessage, is_conflict,
};

use crate::{
    dispatch::{Middleware, TypeTable, group_name, millis, now_ms, transient},
    upcast::Upcasters,
};

/// What a reply means for its step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// The step succeeded: go to the next one.
    Success,
    /// The step failed, with a reason: compensate.
    Failure(String),
    /// Not a reply to act on (e.g. an interim status): acknowledge and keep waiting.
    Ignore,
}

impl From<bool> for StepOutcome {
    /// `true` is success, `false` a failure without a reason.
    fn from(ok: bool) -> Self {
        if ok {
            Self::Success
        } else {
            Self::Failure("failed".into())
        }
    }
}

impl From<Result<(), String>> for StepOutcome {
    fn from(r: Result<(), String>) -> Self {
        match r {
            Ok(()) => Self::Success,
            Err(reason) => Self::Failure(reason),
        }
    }
}

/// Bounds of saga data: serializable (it is persisted as JSON) and shareable.
pub trait SagaData: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> SagaData for T {}

type MakeFn<D> = Arc<
    dyn Fn(&D, Option<&SagaFailure>) -> BoxFuture<'static, Result<Message, CodecError>>
        + Send
        + Sync,
>;

struct CommandDef<D> {
    topic: String,
    type_name: &'static str,
    make: MakeFn<D>,
}

impl<D> Clone for CommandDef<D> {
    fn clone(&self) -> Self {
        Self {
            topic: self.topic.clone(),
            type_name: self.type_name,
            make: self.make.clone(),
        }
    }
}

type StartFn<D> = Arc<
    dyn Fn(Arc<Message>) -> BoxFuture<'static, Result<Option<(String, D)>, HandlerError>>
        + Send
        + Sync,
>;
type ApplyFn<D> = Arc<
    dyn Fn(D, Arc<Message>) -> BoxFuture<'static, Result<(D, StepOutcome), HandlerError>>
        + Send
        + Sync,
>;

struct Rule<F> {
    topic: String,
    accepts: Vec<String>,
    name: &'static str,
    f: F,
}

struct CompensationDef<D> {
    command: CommandDef<D>,
    confirms: Vec<Rule<ApplyFn<D>>>,
    timeout: Duration,
    attempts: u32,
}

struct StepDef<D> {
    name: String,
    command: Option<CommandDef<D>>,
    replies: Vec<Rule<ApplyFn<D>>>,
    timeout: Option<Duration>,
    compensation: Option<CompensationDef<D>>,
}

/// A saga definition; see the [module docs](self).
pub struct Saga<D, C = JsonCodec> {
    name: String,
    codec: Arc<C>,
    upcasters: Upcasters,
    starts: Vec<Rule<StartFn<D>>>,
    steps: Vec<StepDef<D>>,
    on_completed: Vec<CommandDef<D>>,
    on_compensated: Vec<CommandDef<D>>,
    on_failed: Vec<CommandDef<D>>,
}

impl<D, C> fmt::Debug for Saga<D, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saga")
            .field("name", &self.name)
            .field(
                "steps",
                &self.steps.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<D: SagaData> Saga<D, JsonCodec> {
    /// A saga named `name` (the store key and default consumer group), JSON-encoded.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_codec(name, JsonCodec)
    }
}

fn command_def<D, E, C, F>(codec: &Arc<C>, topic: &str, f: F) -> CommandDef<D>
where
    D: SagaData,
    E: Event,
    C: Codec,
    F: Fn(&D, Option<&SagaFailure>) -> E + Send + Sync + 'static,
{
    let codec = codec.clone();
    CommandDef {
        topic: topic.to_owned(),
        // The last segment reads well in a timeline: `sent ReserveInventory`.
        type_name: short(E::TYPE),
        make: Arc::new(move |d, failure| {
            let ev = f(d, failure);
            let codec = codec.clone();
            Box::pin(async move { codec.to_message(&ev).await })
        }),
    }
}

fn apply_rule<D, E, C, F>(
    codec: &Arc<C>,
    upcasters: &Upcasters,
    topic: &str,
    f: F,
) -> Rule<ApplyFn<D>>
where
    D: SagaData,
    E: Event,
    C: Codec,
    F: Fn(&mut D, E) -> StepOutcome + Send + Sync + 'static,
{
    let chain = upcasters.for_type::<E, C>(codec);
    let accepts = chain.accepts();
    let f = Arc::new(f);
    Rule {
        topic: topic.to_owned(),
        accepts,
        name: E::TYPE,
        f: Arc::new(move |mut d: D, m: Arc<Message>| {
            let decode = chain.decode(&m);
            let f = f.clone();
            Box::pin(async move {
                let ev = decode.await?;
                let outcome = f(&mut d, ev);
                Ok((d, outcome))
            })
        }),
    }
}

impl<D: SagaData, C: Codec> Saga<D, C> {
    /// A saga encoding its commands with `codec`.
    pub fn with_codec(name: impl Into<String>, codec: C) -> Self {
        Self {
            name: name.into(),
            codec: Arc::new(codec),
            upcasters: Upcasters::new(),
            starts: Vec::new(),
            steps: Vec::new(),
            on_completed: Vec::new(),
            on_compensated: Vec::new(),
            on_failed: Vec::new(),
        }
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Upcast chains for the events this saga decodes. Set before adding rules.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Starts an instance for every `E` on `topic` for which `f` returns the instance id
    /// and initial data. A second start with an existing id is ignored.
    pub fn start_on<E, F>(self, topic: &str, f: F) -> Self
    where
        E: Event,
        F: Fn(&E) -> Option<(String, D)> + Send + Sync + 'static,
    {
        self.start_on_message(topic, move |e: &E, _m: &Message| f(e))
    }

    /// [`start_on`](Self::start_on) with the message too (its key, headers).
    pub fn start_on_message<E, F>(mut self, topic: &str, f: F) -> Self
    where
        E: Event,
        F: Fn(&E, &Message) -> Option<(String, D)> + Send + Sync + 'static,
    {
        let chain = self.upcasters.for_type::<E, C>(&self.codec);
        let accepts = chain.accepts();
        let f = Arc::new(f);
        self.starts.push(Rule {
            topic: topic.to_owned(),
            accepts,
            name: E::TYPE,
            f: Arc::new(move |m: Arc<Message>| {
                let decode = chain.decode(&m);
                let f = f.clone();
                Box::pin(async move {
                    let ev = decode.await?;
                    Ok(f(&ev, &m))
                })
            }),
        });
        self
    }

    /// Adds the next step, built by `f`.
    pub fn step(
        mut self,
        name: &str,
        f: impl FnOnce(StepBuilder<D, C>) -> StepBuilder<D, C>,
    ) -> Self {
        let b = f(StepBuilder {
            codec: self.codec.clone(),
            upcasters: self.upcasters.clone(),
            def: StepDef {
                name: name.to_owned(),
                command: None,
                replies: Vec::new(),
                timeout: None,
                compensation: None,
            },
        });
        self.steps.push(b.def);
        self
    }

    /// Sends `f(data)` to `topic` when every step succeeded.
    pub fn on_completed<E, F>(mut self, topic: &str, f: F) -> Self
    where
        E: Event,
        F: Fn(&D) -> E + Send + Sync + 'static,
    {
        self.on_completed
            .push(command_def(&self.codec, topic, move |d, _| f(d)));
        self
    }

    /// Sends `f(data, failure)` to `topic` when the saga is compensated.
    pub fn on_compensated<E, F>(mut self, topic: &str, f: F) -> Self
    where
        E: Event,
        F: Fn(&D, &SagaFailure) -> E + Send + Sync + 'static,
    {
        self.on_compensated
            .push(command_def(&self.codec, topic, move |d, fail| {
                f(d, fail.unwrap_or(&UNKNOWN_FAILURE))
            }));
        self
    }

    /// Sends `f(data, failure)` to `topic` when a compensation was not confirmed after its
    /// last attempt (the saga is [`SagaStatus::Failed`]).
    pub fn on_failed<E, F>(mut self, topic: &str, f: F) -> Self
    where
        E: Event,
        F: Fn(&D, &SagaFailure) -> E + Send + Sync + 'static,
    {
        self.on_failed
            .push(command_def(&self.codec, topic, move |d, fail| {
                f(d, fail.unwrap_or(&UNKNOWN_FAILURE))
            }));
        self
    }

    /// The topics this saga listens on.
    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .starts
            .iter()
            .map(|r| r.topic.clone())
            .chain(self.steps.iter().flat_map(|s| {
                s.replies.iter().map(|r| r.topic.clone()).chain(
                    s.compensation
                        .iter()
                        .flat_map(|c| c.confirms.iter().map(|r| r.topic.clone())),
                )
            }))
            .collect();
        t.sort();
        t.dedup();
        t
    }
}

static UNKNOWN_FAILURE: SagaFailure = SagaFailure {
    step: String::new(),
    reason: String::new(),
    timed_out: false,
};

/// Builds one step of a [`Saga`].
pub struct StepBuilder<D, C = JsonCodec> {
    codec: Arc<C>,
    upcasters: Upcasters,
    def: StepDef<D>,
}

impl<D, C> fmt::Debug for StepBuilder<D, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepBuilder")
            .field("name", &self.def.name)
            .finish_non_exhaustive()
    }
}

impl<D: SagaData, C: Codec> StepBuilder<D, C> {
    /// The command the step sends when it begins: `f(data)` to `topic`.
    pub fn command<E, F>(mut self, topic: &str, f: F) -> Self
    where
        E: Event,
        F: Fn(&D) -> E + Send + Sync + 'static,
    {
        self.def.command = Some(command_def(&self.codec, topic, move |d, _| f(d)));
        self
    }

    /// A reply `E` on `topic`; `f` updates the data and says what the reply means.
    pub fn on_reply<E, F, O>(mut self, topic: &str, f: F) -> Self
    where
        E: Event,
        F: Fn(&mut D, E) -> O + Send + Sync + 'static,
        O: Into<StepOutcome>,
    {
        self.def.replies.push(apply_rule(
            &self.codec,
            &self.upcasters,
            topic,
            move |d: &mut D, e: E| f(d, e).into(),
        ));
        self
    }

    /// A reply `E` on `topic` that means success; `f` records what it needs in the data.
    pub fn on_success<E, F>(self, topic: &str, f: F) -> Self
    where
        E: Event,
        F: Fn(&mut D, E) + Send + Sync + 'static,
    {
        self.on_reply(topic, move |d: &mut D, e: E| {
            f(d, e);
            StepOutcome::Success
        })
    }

    /// A reply `E` on `topic` that means failure; `f` gives the reason.
    pub fn on_failure<E, F>(self, topic: &str, f: F) -> Self
    where
        E: Event,
        F: Fn(&mut D, E) -> String + Send + Sync + 'static,
    {
        self.on_reply(topic, move |d: &mut D, e: E| StepOutcome::Failure(f(d, e)))
    }

    /// Fails the step (and compensates, this step included) if no reply came within `d`.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.def.timeout = Some(d);
        self
    }

    /// The command that undoes this step: `f(data)` to `topic`.
    pub fn compensate<E, F>(mut self, topic: &str, f: F) -> Self
    where
        E: Event,
        F: Fn(&D) -> E + Send + Sync + 'static,
    {
        let command = command_def(&self.codec, topic, move |d, _| f(d));
        match &mut self.def.compensation {
            Some(c) => c.command = command,
            None => {
                self.def.compensation = Some(CompensationDef {
                    command,
                    confirms: Vec::new(),
                    timeout: Duration::from_secs(30),
                    attempts: 3,
                })
            }
        }
        self
    }

    /// Waits for `E` on `topic` after issuing the compensation before compensating the
    /// previous step. Call after [`compensate`](Self::compensate).
    pub fn confirmed_by<E: Event>(mut self, topic: &str) -> Self {
        let rule = apply_rule(&self.codec, &self.upcasters, topic, |_: &mut D, _: E| {
            StepOutcome::Success
        });
        if let Some(c) = &mut self.def.compensation {
            c.confirms.push(rule);
        }
        self
    }

    /// How long to wait for a compensation's confirmation before issuing it again.
    /// Default 30 s.
    pub fn compensation_timeout(mut self, d: Duration) -> Self {
        if let Some(c) = &mut self.def.compensation {
            c.timeout = d;
        }
        self
    }

    /// How many times a compensation is issued without confirmation before the saga is
    /// [`Failed`](SagaStatus::Failed). Default 3.
    pub fn compensation_attempts(mut self, n: u32) -> Self {
        if let Some(c) = &mut self.def.compensation {
            c.attempts = n.max(1);
        }
        self
    }
}

/// Settings of a [`SagaEngine`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SagaConfig {
    /// The consumer group of the engine's routes; default: the saga's name.
    pub group: Option<String>,
    /// Deliveries handled at once per topic (one instance's messages are still serialized
    /// by their key). Default 8.
    pub concurrency: usize,
    /// How often the ticker looks for due deadlines and abandoned outboxes. Default 250 ms.
    pub tick: Duration,
    /// The most instances one tick handles. Default 100.
    pub due_batch: usize,
    /// How long a saved-but-unpublished outbox may wait before any ticker republishes it
    /// (the writer is presumed dead). Default 5 s.
    pub outbox_grace: Duration,
    /// Compare-and-swap retries before an event is handed back for redelivery. Default 8.
    pub conflict_retries: u32,
    /// History entries kept per instance. Default 64.
    pub history_limit: usize,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            group: None,
            concurrency: 8,
            tick: Duration::from_millis(250),
            due_batch: 100,
            outbox_grace: Duration::from_secs(5),
            conflict_retries: 8,
            history_limit: 64,
        }
    }
}

impl SagaConfig {
    /// Sets the consumer group.
    pub fn group(mut self, g: impl Into<String>) -> Self {
        self.group = Some(g.into());
        self
    }
    /// Sets the concurrency.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
    /// Sets the ticker period.
    pub fn tick(mut self, d: Duration) -> Self {
        self.tick = d;
        self
    }
    /// Sets the outbox grace.
    pub fn outbox_grace(mut self, d: Duration) -> Self {
        self.outbox_grace = d;
        self
    }
}

#[derive(Clone, Copy, Debug)]
enum RuleRef {
    Start(usize),
    Reply(usize, usize),
    Confirm(usize, usize),
}

enum Input {
    Message(Arc<Message>, Vec<RuleRef>),
    Timeout,
}

#[derive(Default)]
struct Counters {
    transitions: std::sync::atomic::AtomicU64,
    conflicts: std::sync::atomic::AtomicU64,
    republished: std::sync::atomic::AtomicU64,
    ignored: std::sync::atomic::AtomicU64,
}

/// Counters of a [`SagaEngine`] since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SagaStats {
    /// State changes saved (starts, steps, compensations, timeouts).
    pub transitions: u64,
    /// Saves that lost a compare-and-swap race and were retried on fresh state.
    pub conflicts: u64,
    /// Outboxes this engine published that another writer had saved (or a crash left).
    pub republished: u64,
    /// Deliveries that did not apply (duplicates, late replies, unknown instances).
    pub ignored: u64,
}

struct EngineInner<D, C> {
    counters: Counters,
    saga: Saga<D, C>,
    table: HashMap<String, TypeTable<RuleRef>>,
    store: Arc<dyn SagaStore>,
    publisher: Arc<dyn Publisher>,
    config: SagaConfig,
    middleware: Option<Middleware>,
}

/// Runs a [`Saga`] on a transport, with state in a [`SagaStore`]. Cheap to clone.
pub struct SagaEngine<D, C = JsonCodec> {
    inner: Arc<EngineInner<D, C>>,
}

impl<D, C> Clone for SagaEngine<D, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<D, C> fmt::Debug for SagaEngine<D, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaEngine")
            .field("saga", &self.inner.saga)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// A saga instance as the engine sees it, with typed data.
#[derive(Clone, Debug)]
pub struct SagaView<D> {
    /// The instance id (correlation id).
    pub id: String,
    /// The record version.
    pub version: u64,
    /// Where it is.
    pub status: SagaStatus,
    /// The current step's name (running or compensating).
    pub step: Option<String>,
    /// The data.
    pub data: D,
    /// Why it compensated, if it did.
    pub failure: Option<SagaFailure>,
    /// What happened.
    pub history: Vec<HistoryEntry>,
}

/// Why an engine operation outside a handler failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] SagaStoreError),
    /// Stored data does not decode as the saga's data type.
    #[error("saga data does not decode: {0}")]
    Data(#[source] serde_json::Error),
    /// Handling a due instance failed.
    #[error(transparent)]
    Handler(#[from] HandlerError),
}

fn store_err(e: SagaStoreError) -> HandlerError {
    match e.kind() {
        SagaStoreErrorKind::Corrupt => {
            HandlerError::from_error(herald_core::ErrorClass::Permanent, e)
        }
        _ => transient(e),
    }
}

impl<D: SagaData, C: Codec> SagaEngine<D, C> {
    /// An engine for `saga` with state in `store`, sending commands through `publisher`.
    pub fn new(
        saga: Saga<D, C>,
        store: impl SagaStore + 'static,
        publisher: impl Publisher + 'static,
    ) -> Self {
        Self::with_config(saga, store, publisher, SagaConfig::default())
    }

    /// [`new`](Self::new) with settings.
    pub fn with_config(
        saga: Saga<D, C>,
        store: impl SagaStore + 'static,
        publisher: impl Publisher + 'static,
        config: SagaConfig,
    ) -> Self {
        Self::build(saga, Arc::new(store), Arc::new(publisher), config, None)
    }

    /// [`with_config`](Self::with_config) with middleware around the engine's routes.
    pub fn with_middleware(
        saga: Saga<D, C>,
        store: Arc<dyn SagaStore>,
        publisher: Arc<dyn Publisher>,
        config: SagaConfig,
        middleware: Middleware,
    ) -> Self {
        Self::build(saga, store, publisher, config, Some(middleware))
    }

    fn build(
        saga: Saga<D, C>,
        store: Arc<dyn SagaStore>,
        publisher: Arc<dyn Publisher>,
        config: SagaConfig,
        middleware: Option<Middleware>,
    ) -> Self {
        let mut table: HashMap<String, TypeTable<RuleRef>> = HashMap::new();
        for (i, r) in saga.starts.iter().enumerate() {
            register(&mut table, r, RuleRef::Start(i));
        }
        for (k, s) in saga.steps.iter().enumerate() {
            for (i, r) in s.replies.iter().enumerate() {
                register(&mut table, r, RuleRef::Reply(k, i));
            }
            if let Some(c) = &s.compensation {
                for (i, r) in c.confirms.iter().enumerate() {
                    register(&mut table, r, RuleRef::Confirm(k, i));
                }
            }
        }
        Self {
            inner: Arc::new(EngineInner {
                counters: Counters::default(),
                saga,
                table,
                store,
                publisher,
                config,
                middleware,
            }),
        }
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.inner.saga.name
    }

    /// The consumer group of the engine's routes.
    pub fn group(&self) -> String {
        self.inner
            .config
            .group
            .clone()
            .unwrap_or_else(|| group_name(&self.inner.saga.name))
    }

    /// One route per topic the saga listens on. Compose it with other routes, run
    /// [`tick`](Self::tick) yourself, or use [`start`](Self::start).
    pub fn router(&self) -> Router {
        let mut router = Router::new();
        let group = self.group();
        let mut topics: Vec<&String> = self.inner.table.keys().collect();
        topics.sort();
        for topic in topics {
            let info = RouteInfo {
                handler: format!("saga.{}", self.inner.saga.name),
                topic: topic.clone(),
                group: group.clone(),
            };
            let engine = self.clone();
            let mut h = BoxHandler::new(handler_fn(move |inbound: Inbound| {
                let engine = engine.clone();
                async move { engine.handle(inbound).await }
            }));
            if let Some(mw) = &self.inner.middleware {
                h = mw.apply(&info, h);
            }
            router = router.route_with(
                RouteConfig::new(info.handler, info.topic, info.group)
                    .concurrency(self.inner.config.concurrency),
                h,
            );
        }
        router
    }

    /// Starts the routes and the ticker.
    pub fn start<S: Subscriber + Clone + 'static>(&self, subscriber: S) -> SagaRunning {
        let running = self.router().start(subscriber);
        let (stop, mut stop_rx) = watch::channel(false);
        let engine = self.clone();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(engine.inner.config.tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = async { let _ = stop_rx.wait_for(|s| *s).await; } => break,
                    _ = every.tick() => {
                        if let Err(e) = engine.tick().await {
                            tracing::warn!(saga = %engine.inner.saga.name, error = %e, "saga tick failed");
                        }
                    }
                }
            }
        });
        SagaRunning {
            router: Some(running),
            ticker: Some(ticker),
            stop,
        }
    }

    /// Handles due instances once: fires passed deadlines and republishes outboxes left
    /// behind. Returns how many instances it looked at.
    pub async fn tick(&self) -> Result<usize, SagaError> {
        let now = now_ms();
        let due = self
            .inner
            .store
            .due(&self.inner.saga.name, now, self.inner.config.due_batch)
            .await?;
        let n = due.len();
        for rec in due {
            let id = rec.id.clone();
            let deadline_passed = rec.state.deadline_ms.is_some_and(|d| d <= now);
            let outbox_due =
                !rec.state.outbox.is_empty() && rec.state.outbox_due_ms.is_some_and(|d| d <= now);
            if outbox_due {
                tracing::info!(saga = %self.inner.saga.name, %id, "republishing an abandoned saga outbox");
                if let Err(e) = self.flush(rec, false).await {
                    tracing::warn!(saga = %self.inner.saga.name, %id, error = %e, "republishing failed");
                }
            }
            if deadline_passed && let Err(e) = self.advance(&id, Input::Timeout).await {
                tracing::warn!(saga = %self.inner.saga.name, %id, error = %e, "timeout handling failed");
            }
        }
        Ok(n)
    }

    /// The instance `id`, typed.
    pub async fn get(&self, id: &str) -> Result<Option<SagaView<D>>, SagaError> {
        match self.inner.store.load(&self.inner.saga.name, id).await? {
            Some(r) => Ok(Some(self.view(r)?)),
            None => Ok(None),
        }
    }

    /// Every instance, by id.
    pub async fn instances(&self) -> Result<Vec<SagaView<D>>, SagaError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .inner
                .store
                .list(&self.inner.saga.name, after.as_deref(), 500)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for r in page {
                out.push(self.view(r)?);
            }
        }
        Ok(out)
    }

    fn view(&self, r: SagaRecord) -> Result<SagaView<D>, SagaError> {
        let data = serde_json::from_value(r.state.data).map_err(SagaError::Data)?;
        let step = match r.state.status {
            SagaStatus::Running | SagaStatus::Compensating => self
                .inner
                .saga
                .steps
                .get(r.state.step)
                .map(|s| s.name.clone()),
            _ => None,
        };
        Ok(SagaView {
            id: r.id,
            version: r.version,
            status: r.state.status,
            step,
            data,
            failure: r.state.failure,
            history: r.state.history,
        })
    }

    /// Handles one delivery (what the engine's routes call).
    pub async fn handle(&self, inbound: Inbound) -> Result<(), HandlerError> {
        let msg = inbound.message.clone();
        let Some(table) = self.inner.table.get(&inbound.route.topic) else {
            return Ok(());
        };
        let refs = table.lookup(msg.ce_type()).to_vec();
        if refs.is_empty() {
            return Ok(());
        }
        for r in &refs {
            if let RuleRef::Start(i) = *r
                && let Some((id, data)) = (self.inner.saga.starts[i].f)(msg.clone()).await?
            {
                return self.start_instance(&id, data, &msg).await;
            }
        }
        let Some(id) = msg.correlation_id() else {
            tracing::debug!(saga = %self.inner.saga.name, "reply without a correlation id; ignored");
            self.bump(&self.inner.counters.ignored);
            return Ok(());
        };
        let id = id.to_owned();
        self.advance(&id, Input::Message(msg, refs)).await
    }

    async fn start_instance(&self, id: &str, data: D, cause: &Message) -> Result<(), HandlerError> {
        let now = now_ms();
        let mut st = SagaState {
            status: SagaStatus::Running,
            step: 0,
            attempts: 0,
            deadline_ms: None,
            failure: None,
            data: serde_json::Value::Null,
            outbox: Vec::new(),
            outbox_due_ms: None,
            history: Vec::new(),
            started_ms: now,
            updated_ms: now,
        };
        let mut t = Transition::new(1, now, id, Some(cause), &self.inner.saga.name);
        let by = cause.ce_type().unwrap_or("?");
        let by = crate::upcast::parse_ce_type(by).map_or(by, |(name, _)| name);
        t.note(format!("started by {}", short(by)));
        self.enter_step(&mut st, &data, 0, &mut t).await?;
        let rec = self.finish(id, st, &data, t)?;
        match self.inner.store.save(&rec, None).await {
            Ok(()) => {
                self.count(&rec);
                self.flush(rec, true).await?;
                Ok(())
            }
            Err(e) if is_conflict(&e) => {
                // Already started (a redelivered or duplicate start): finish what the
                // first start may have left.
                self.bump(&self.inner.counters.ignored);
                if let Some(existing) = self
                    .inner
                    .store
                    .load(&self.inner.saga.name, id)
                    .await
                    .map_err(store_err)?
                {
                    self.flush(existing, false).await?;
                }
                Ok(())
            }
            Err(e) => Err(store_err(e)),
        }
    }

    async fn advance(&self, id: &str, input: Input) -> Result<(), HandlerError> {
        let name = &self.inner.saga.name;
        for _ in 0..=self.inner.config.conflict_retries {
            let Some(rec) = self.inner.store.load(name, id).await.map_err(store_err)? else {
                tracing::debug!(saga = %name, %id, "no such instance; ignored");
                self.bump(&self.inner.counters.ignored);
                return Ok(());
            };
            let Some(rec) = self.flush(rec, false).await? else {
                self.bump(&self.inner.counters.conflicts);
                continue;
            };
            if rec.state.status.is_terminal() {
                self.bump(&self.inner.counters.ignored);
                return Ok(());
            }
            let Some(next) = self.transition(&rec, &input).await? else {
                self.bump(&self.inner.counters.ignored);
                return Ok(());
            };
            match self.inner.store.save(&next, Some(rec.version)).await {
                Ok(()) => {
                    self.count(&next);
                    self.flush(next, true).await?;
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => {
                    self.bump(&self.inner.counters.conflicts);
                    tracing::debug!(saga = %name, %id, "version conflict; reloading");
                    continue;
                }
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(HandlerError::transient(format!(
            "saga {name}/{id}: still conflicting after {} attempts",
            self.inner.config.conflict_retries + 1
        )))
    }

    /// Counters since this engine was made.
    pub fn stats(&self) -> SagaStats {
        let c = &self.inner.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        SagaStats {
            transitions: get(&c.transitions),
            conflicts: get(&c.conflicts),
            republished: get(&c.republished),
            ignored: get(&c.ignored),
        }
    }

    fn bump(&self, a: &std::sync::atomic::AtomicU64) {
        a.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn count(&self, rec: &SagaRecord) {
        self.bump(&self.inner.counters.transitions);
        metrics::counter!(
            "herald_saga_transitions_total",
            "saga" => self.inner.saga.name.clone(),
            "status" => rec.state.status.as_str()
        )
        .increment(1);
    }

    /// Publishes the record's outbox and clears it. `Ok(None)`: someone else changed the
    /// record meanwhile (reload). `own`: the outbox is this engine's latest save.
    async fn flush(&self, rec: SagaRecord, own: bool) -> Result<Option<SagaRecord>, HandlerError> {
        if rec.state.outbox.is_empty() {
            return Ok(Some(rec));
        }
        if !own {
            self.bump(&self.inner.counters.republished);
        }
        let mut batch: Vec<Message> = Vec::new();
        let mut topic: Option<&str> = None;
        for sm in &rec.state.outbox {
            let m = sm.to_message().map_err(store_err)?;
            if topic.is_some_and(|t| t != sm.topic) {
                let t = topic.unwrap_or_default();
                self.inner
                    .publisher
                    .publish(t, std::mem::take(&mut batch))
                    .await?;
            }
            topic = Some(&sm.topic);
            batch.push(m);
        }
        if let Some(t) = topic {
            self.inner.publisher.publish(t, batch).await?;
        }
        let mut cleared = rec.clone();
        cleared.version += 1;
        cleared.state.outbox.clear();
        cleared.state.outbox_due_ms = None;
        match self.inner.store.save(&cleared, Some(rec.version)).await {
            Ok(()) => Ok(Some(cleared)),
            Err(e) if is_conflict(&e) => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }

    fn data_of(&self, rec: &SagaRecord) -> Result<D, HandlerError> {
        serde_json::from_value(rec.state.data.clone())
            .map_err(|e| HandlerError::from_error(herald_core::ErrorClass::Permanent, e))
    }

    /// The next record for `input`, or `None` if the input does not apply.
    async fn transition(
        &self,
        rec: &SagaRecord,
        input: &Input,
    ) -> Result<Option<SagaRecord>, HandlerError> {
        let now = now_ms();
        let mut st = rec.state.clone();
        let mut data = self.data_of(rec)?;
        let steps = &self.inner.saga.steps;
        let cause = match input {
            Input::Message(m, _) => Some(&**m),
            Input::Timeout => None,
        };
        let mut t = Transition::new(rec.version + 1, now, &rec.id, cause, &self.inner.saga.name);
        match (input, st.status) {
            (Input::Message(msg, refs), SagaStatus::Running) => {
                let k = st.step;
                let Some(rule) = refs.iter().find_map(|r| match *r {
                    RuleRef::Reply(s, i) if s == k => steps.get(s).and_then(|s| s.replies.get(i)),
                    _ => None,
                }) else {
                    return Ok(None);
                };
                let (d, outcome) = (rule.f)(data, msg.clone()).await?;
                data = d;
                let step_name = &steps[k].name;
                match outcome {
                    StepOutcome::Ignore => return Ok(None),
                    StepOutcome::Success => {
                        t.note(format!("{step_name}: succeeded ({})", short(rule.name)));
                        self.enter_step(&mut st, &data, k + 1, &mut t).await?;
                    }
                    StepOutcome::Failure(reason) => {
                        t.note(format!(
                            "{step_name}: failed ({}): {reason}",
                            short(rule.name)
                        ));
                        st.failure = Some(SagaFailure {
                            step: step_name.clone(),
                            reason,
                            timed_out: false,
                        });
                        self.compensate_from(&mut st, &data, k.checked_sub(1), &mut t)
                            .await?;
                    }
                }
            }
            (Input::Message(msg, refs), SagaStatus::Compensating) => {
                let j = st.step;
                let Some(rule) = refs.iter().find_map(|r| match *r {
                    RuleRef::Confirm(s, i) if s == j => steps
                        .get(s)
                        .and_then(|s| s.compensation.as_ref())
                        .and_then(|c| c.confirms.get(i)),
                    _ => None,
                }) else {
                    return Ok(None);
                };
                let (d, outcome) = (rule.f)(data, msg.clone()).await?;
                data = d;
                match outcome {
                    StepOutcome::Ignore => return Ok(None),
                    StepOutcome::Failure(reason) => {
                        t.note(format!("{}: compensation refused: {reason}", steps[j].name));
                        self.retry_compensation(&mut st, &data, &mut t).await?;
                    }
                    StepOutcome::Success => {
                        t.note(format!(
                            "{}: compensated ({})",
                            steps[j].name,
                            short(rule.name)
                        ));
                        self.compensate_from(&mut st, &data, j.checked_sub(1), &mut t)
                            .await?;
                    }
                }
            }
            (Input::Timeout, SagaStatus::Running) => {
                if st.deadline_ms.is_none_or(|d| d > now) {
                    return Ok(None);
                }
                let k = st.step;
                let step_name = steps.get(k).map(|s| s.name.clone()).unwrap_or_default();
                let after = steps.get(k).and_then(|s| s.timeout).unwrap_or_default();
                t.note(format!("{step_name}: timed out after {after:?}"));
                st.failure = Some(SagaFailure {
                    step: step_name,
                    reason: format!("no reply within {after:?}"),
                    timed_out: true,
                });
                self.compensate_from(&mut st, &data, Some(k), &mut t)
                    .await?;
            }
            (Input::Timeout, SagaStatus::Compensating) => {
                if st.deadline_ms.is_none_or(|d| d > now) {
                    return Ok(None);
                }
                t.note(format!(
                    "{}: compensation not confirmed in time",
                    steps.get(st.step).map_or("?", |s| s.name.as_str())
                ));
                self.retry_compensation(&mut st, &data, &mut t).await?;
            }
            _ => return Ok(None),
        }
        Ok(Some(self.finish(&rec.id, st, &data, t)?))
    }

    /// Enters step `k` (or completes when `k` is past the last step).
    async fn enter_step(
        &self,
        st: &mut SagaState,
        data: &D,
        k: usize,
        t: &mut Transition<'_>,
    ) -> Result<(), HandlerError> {
        let steps = &self.inner.saga.steps;
        st.attempts = 0;
        match steps.get(k) {
            None => {
                st.status = SagaStatus::Completed;
                st.step = steps.len();
                st.deadline_ms = None;
                t.note("completed".into());
                for c in &self.inner.saga.on_completed {
                    t.emit(c, data, None).await?;
                }
            }
            Some(s) => {
                st.status = SagaStatus::Running;
                st.step = k;
                st.deadline_ms = s.timeout.map(|d| t.now.saturating_add(millis(d)));
                if let Some(c) = &s.command {
                    t.note(format!("{}: sent {}", s.name, c.type_name));
                    t.emit(c, data, None).await?;
                } else {
                    t.note(format!("{}: waiting", s.name));
                }
            }
        }
        Ok(())
    }

    /// Issues compensations from step `from` down to step 0, stopping at the first that
    /// waits for a confirmation; ends the saga as compensated when none is left.
    async fn compensate_from(
        &self,
        st: &mut SagaState,
        data: &D,
        from: Option<usize>,
        t: &mut Transition<'_>,
    ) -> Result<(), HandlerError> {
        let steps = &self.inner.saga.steps;
        st.status = SagaStatus::Compensating;
        if let Some(from) = from {
            for j in (0..=from).rev() {
                let Some(c) = steps.get(j).and_then(|s| s.compensation.as_ref()) else {
                    continue;
                };
                t.note(format!(
                    "{}: compensating with {}",
                    steps[j].name, c.command.type_name
                ));
                t.emit(&c.command, data, st.failure.as_ref()).await?;
                if !c.confirms.is_empty() {
                    st.step = j;
                    st.attempts = 1;
                    st.deadline_ms = Some(t.now.saturating_add(millis(c.timeout)));
                    return Ok(());
                }
            }
        }
        st.status = SagaStatus::Compensated;
        st.deadline_ms = None;
        st.attempts = 0;
        t.note("compensated".into());
        for c in &self.inner.saga.on_compensated {
            t.emit(c, data, st.failure.as_ref()).await?;
        }
        Ok(())
    }

    async fn retry_compensation(
        &self,
        st: &mut SagaState,
        data: &D,
        t: &mut Transition<'_>,
    ) -> Result<(), HandlerError> {
        let j = st.step;
        let Some(c) = self
            .inner
            .saga
            .steps
            .get(j)
            .and_then(|s| s.compensation.as_ref())
        else {
            return self.compensate_from(st, data, j.checked_sub(1), t).await;
        };
        if st.attempts < c.attempts {
            st.attempts += 1;
            st.deadline_ms = Some(t.now.saturating_add(millis(c.timeout)));
            t.note(format!(
                "{}: re-issuing {} (attempt {})",
                self.inner.saga.steps[j].name, c.command.type_name, st.attempts
            ));
            t.emit(&c.command, data, st.failure.as_ref()).await?;
        } else {
            st.status = SagaStatus::Failed;
            st.deadline_ms = None;
            t.note(format!(
                "failed: {} not confirmed after {} attempts",
                c.command.type_name, st.attempts
            ));
            for c in &self.inner.saga.on_failed {
                t.emit(c, data, st.failure.as_ref()).await?;
            }
        }
        Ok(())
    }

    fn finish(
        &self,
        id: &str,
        mut st: SagaState,
        data: &D,
        t: Transition<'_>,
    ) -> Result<SagaRecord, HandlerError> {
        st.data = serde_json::to_value(data)
            .map_err(|e| HandlerError::from_error(herald_core::ErrorClass::Permanent, e))?;
        st.outbox = t
            .out
            .iter()
            .map(|(topic, m)| StoredMessage::from_message(topic, m))
            .collect();
        st.outbox_due_ms = (!st.outbox.is_empty())
            .then(|| t.now.saturating_add(millis(self.inner.config.outbox_grace)));
        st.updated_ms = t.now;
        for note in t.notes {
            st.history.push(HistoryEntry {
                at_ms: t.now,
                version: t.version,
                note,
            });
        }
        let limit = self.inner.config.history_limit.max(1);
        if st.history.len() > limit {
            let drop = st.history.len() - limit;
            st.history.drain(..drop);
        }
        Ok(SagaRecord {
            saga: self.inner.saga.name.clone(),
            id: id.to_owned(),
            version: t.version,
            state: st,
        })
    }
}

/// The last segment of a type name: `shop.orders.OrderPlaced` → `OrderPlaced`.
fn short(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

fn register<F>(table: &mut HashMap<String, TypeTable<RuleRef>>, r: &Rule<F>, rr: RuleRef) {
    table
        .entry(r.topic.clone())
        .or_default()
        .insert(&r.accepts, r.name, rr);
}

/// What one transition produces: messages and history notes.
struct Transition<'a> {
    version: u64,
    now: i64,
    id: &'a str,
    cause: Option<&'a Message>,
    source: &'a str,
    out: Vec<(String, Message)>,
    notes: Vec<String>,
}

impl<'a> Transition<'a> {
    fn new(
        version: u64,
        now: i64,
        id: &'a str,
        cause: Option<&'a Message>,
        source: &'a str,
    ) -> Self {
        Self {
            version,
            now,
            id,
            cause,
            source,
            out: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn note(&mut self, n: String) {
        self.notes.push(n);
    }

    async fn emit<D>(
        &mut self,
        c: &CommandDef<D>,
        data: &D,
        failure: Option<&SagaFailure>,
    ) -> Result<(), HandlerError> {
        let mut m = (c.make)(data, failure).await?;
        if let Some(cause) = self.cause {
            m = m.caused_by(cause);
        }
        m.set_correlation_id(self.id.to_owned());
        if m.key.is_none() {
            m.key = Some(bytes::Bytes::from(self.id.to_owned()));
        }
        m.set_source(self.source.to_owned());
        self.out.push((c.topic.clone(), m));
        Ok(())
    }
}

/// A started [`SagaEngine`]: its routes and its ticker.
#[derive(Debug)]
pub struct SagaRunning {
    router: Option<Running>,
    ticker: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl SagaRunning {
    /// Stops the ticker, drains the routes and closes their subscriptions.
    pub async fn shutdown(mut self) -> Result<(), RouterError> {
        self.stop.send_replace(true);
        if let Some(t) = self.ticker.take() {
            let _ = t.await;
        }
        match self.router.take() {
            Some(r) => r.shutdown().await,
            None => Ok(()),
        }
    }

    /// Stops at once without draining — what a crash looks like. For tests.
    pub fn abort(mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(r) = self.router.take() {
            r.abort();
        }
    }
}

impl Drop for SagaRunning {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
