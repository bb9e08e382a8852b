//! [`NatsSubscriber`]: a durable pull consumer per consumer group, explicit acks,
//! progress heartbeats, graceful close.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll, ready},
    time::Duration,
};

use async_nats::{
    Client, Subject,
    jetstream::{
        self,
        consumer::{
            PullConsumer,
            pull::{MessagesErrorKind, Stream as PullStream},
        },
        message::AckKind,
    },
};
use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt, future::BoxFuture};
use herald_core::{
    AckError, AckErrorKind, Acker, Delivery, Origin, SubscribeError, SubscribeErrorKind,
    SubscribeSpec, Subscriber, Subscription,
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
    time::{Instant, MissedTickBehavior, Sleep},
};
use tokio_util::sync::PollSemaphore;

use crate::{
    broker::Shared,
    config::{AckMode, ConsumerSettings},
    error, mapping, provision,
};

const ACK: Bytes = Bytes::from_static(b"+ACK");
const NAK: Bytes = Bytes::from_static(b"-NAK");
const PROGRESS: Bytes = Bytes::from_static(b"+WPI");

/// Subscribes consumer groups to topics through JetStream durable pull consumers.
///
/// * Group `g` on topic `t` is the durable consumer `consumer_name(g)` of `t`'s stream
///   ([`crate::mapping`]), created on first subscribe and updated to the configured
///   [`ConsumerSettings`] afterwards (its position is kept). Members of a group share the
///   consumer and so compete for messages; each group gets every message.
/// * [`SubscribeSpec::max_in_flight`] is the consumer's `max_ack_pending` and this
///   member's local bound: it stops handing out deliveries while that many are
///   unsettled. [`SubscribeSpec::start`] is the deliver policy of a new consumer
///   (`all` / `new`).
/// * Messages are pulled in batches ([`ConsumerSettings::fetch_batch`], at most
///   `max_in_flight`) as the subscription is polled — no task in between. One ticker task
///   per subscription sends AckProgress for handed-out deliveries held longer than a
///   quarter of the ack wait (see [`ConsumerSettings::progress_heartbeats`]). Messages
///   fetched but not yet handed out are not extended; since fetching stops at
///   `max_in_flight`, keep it near the handler concurrency when handlers are slow.
/// * [`Delivery::attempt`] is the server's delivery count; `nack(d)` is a NAK with delay
///   `d` (a plain NAK for zero); a delivery dropped unsettled is NAKed at once.
/// * A pull interrupted by a reconnect or a missed heartbeat is re-issued; the stream only
///   ends with an error when the consumer is deleted or refuses the pull.
/// * [`Subscription::close`] stops pulling, NAKs what was fetched but not handed out,
///   confirms the acks sent so far (see [`AckMode`]) and flushes.
///
/// # Examples
/// ```no_run
/// # async fn demo(broker: herald_nats::NatsBroker) -> Result<(), Box<dyn std::error::Error>> {
/// use futures::StreamExt;
/// use herald_core::{SubscribeSpec, Subscriber};
/// let mut sub = broker.subscriber().subscribe(SubscribeSpec::new("orders", "billing")).await?;
/// while let Some(delivery) = sub.next().await {
///     let delivery = delivery?;
///     println!("{} attempt {}", delivery.origin, delivery.attempt);
///     delivery.ack().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsSubscriber {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSubscriber")
            .field("settings", &self.shared.config.consumer)
            .finish_non_exhaustive()
    }
}

impl NatsSubscriber {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

fn invalid(m: String) -> SubscribeError {
    SubscribeError::new(SubscribeErrorKind::InvalidConfig, m)
}

impl Subscriber for NatsSubscriber {
    fn subscribe(
        &self,
        spec: SubscribeSpec,
    ) -> BoxFuture<'_, Result<Subscription, SubscribeError>> {
        Box::pin(async move {
            mapping::validate_topic(&spec.topic).map_err(invalid)?;
            mapping::validate_group(&spec.group).map_err(invalid)?;
            let shared = &self.shared;
            let settings = shared.config.consumer.clone();
            let stream = shared
                .stream_for(&spec.topic)
                .await
                .map_err(error::to_subscribe)?;
            let consumer = provision::ensure_consumer(&stream, &spec, &settings)
                .await
                .map_err(error::to_subscribe)?;
            let stream_name: Arc<str> = consumer.cached_info().stream_name.as_str().into();
            let consumer_name = consumer.cached_info().name.clone();
            let max_in_flight = spec.max_in_flight.max(1);
            let pull = PullParams::new(&settings, max_in_flight);
            let messages = open_messages(consumer.clone(), pull).await?;

            let client = shared.client.clone();
            let state = Arc::new(SubState {
                client: client.clone(),
                mode: settings.ack_mode,
                probe: OnceLock::new(),
                returning: Mutex::new(Vec::new()),
                inflight: settings
                    .progress_heartbeats
                    .then(|| Mutex::new(InFlight::default())),
                request_timeout: shared.config.connection.request_timeout,
            });
            let mut tasks = Tasks(Vec::new());
            if settings.progress_heartbeats {
                let period = settings.effective_ack_wait() / 4;
                tasks
                    .0
                    .push(tokio::spawn(progress_loop(state.clone(), period)));
            }
            if settings.max_deliver.is_some() {
                let subject = format!(
                    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream_name}.{consumer_name}"
                );
                match client.subscribe(subject).await {
                    Ok(sub) => tasks.0.push(tokio::spawn(watch_max_deliveries(
                        sub,
                        spec.topic.clone(),
                        spec.group.clone(),
                    ))),
                    Err(e) => tracing::warn!(error = %e, "cannot watch max-deliveries advisories"),
                }
            }

            let deliveries = Deliveries {
                state: state.clone(),
                consumer,
                pull,
                topic: Arc::from(spec.topic.as_str()),
                stream_name,
                messages: Some(messages),
                reopen: None,
                wait: None,
                backoff: INITIAL_BACKOFF,
                permits: PollSemaphore::new(Arc::new(Semaphore::new(max_in_flight))),
                permit: None,
                done: false,
            };
            let close_timeout = settings.close_timeout;
            // `Subscription::close` drops the stream first (which returns what it fetched
            // but did not hand out), then runs this.
            let close = async move {
                let _tasks = tasks;
                let returning =
                    std::mem::take(&mut *state.returning.lock().unwrap_or_else(|p| p.into_inner()));
                for r in returning {
                    let _ = r.await;
                }
                state.confirm_acks(close_timeout).await;
                match tokio::time::timeout(state.request_timeout, state.client.flush()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(SubscribeError::new(
                        SubscribeErrorKind::Connection,
                        format!("flushing acks on close: {e}"),
                    )
                    .with_source(e)),
                    Err(_) => Err(SubscribeError::new(
                        SubscribeErrorKind::Connection,
                        "flushing acks on close timed out",
                    )),
                }
            };
            Ok(Subscription::new(Box::pin(deliveries), Box::pin(close)))
        })
    }
}

/// Aborts the subscription's helper tasks when dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Pull request settings.
#[derive(Clone, Copy, Debug)]
struct PullParams {
    batch: usize,
    expires: Duration,
    heartbeat: Duration,
}

impl PullParams {
    fn new(settings: &ConsumerSettings, max_in_flight: usize) -> Self {
        let expires = settings.fetch_expires.max(Duration::from_secs(1));
        Self {
            batch: settings.fetch_batch.clamp(1, max_in_flight),
            expires,
            heartbeat: settings
                .idle_heartbeat
                .min(expires / 2)
                .max(Duration::from_millis(500)),
        }
    }
}

async fn open_messages(
    consumer: PullConsumer,
    p: PullParams,
) -> Result<PullStream, SubscribeError> {
    consumer
        .stream()
        .max_messages_per_batch(p.batch)
        .expires(p.expires)
        .heartbeat(p.heartbeat)
        .messages()
        .await
        .map_err(|e| {
            SubscribeError::new(
                SubscribeErrorKind::Connection,
                format!("pulling messages: {e}"),
            )
            .with_source(e)
        })
}

/// State shared by the stream, the ticker and the ackers of one subscription.
struct SubState {
    client: Client,
    mode: AckMode,
    /// An ack subject of this consumer (the first delivery's), for the confirmation
    /// probe on close ([`AckMode::Pipelined`]).
    probe: OnceLock<Subject>,
    /// The task returning fetched-but-not-handed-out messages, for close to wait on.
    returning: Mutex<Vec<JoinHandle<()>>>,
    /// Handed-out deliveries, for progress heartbeats.
    inflight: Option<Mutex<InFlight>>,
    request_timeout: Duration,
}

impl SubState {
    fn untrack(&self, slot: u32) {
        if slot == UNTRACKED {
            return;
        }
        if let Some(m) = &self.inflight {
            m.lock().unwrap_or_else(|p| p.into_inner()).remove(slot);
        }
    }

    /// Confirms the acks written so far with one round trip: the server handles a
    /// consumer's acks in the order a connection sent them and answers one that asks for
    /// a reply after handling it. The probe is an AckProgress (`+WPI`) with a reply, which
    /// changes nothing for an acked message (and only extends the ack wait of a pending
    /// one); its answer means every earlier ack was applied.
    async fn confirm_acks(&self, timeout: Duration) {
        if self.mode != AckMode::Pipelined {
            return;
        }
        let Some(probe) = self.probe.get().cloned() else {
            return;
        };
        match tokio::time::timeout(timeout, self.client.request(probe, PROGRESS)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(
                error = %e,
                "could not confirm the acks on close; unapplied ones are redelivered"
            ),
            Err(_) => tracing::warn!(
                ?timeout,
                "acks not confirmed in time on close; unapplied ones are redelivered"
            ),
        }
    }

    async fn send(&self, reply: Subject, payload: Bytes) -> Result<(), AckError> {
        if self.mode == AckMode::Confirmed {
            return match tokio::time::timeout(
                self.request_timeout,
                self.client.request(reply, payload),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => {
                    let kind = match e.kind() {
                        async_nats::RequestErrorKind::NoResponders => AckErrorKind::Closed,
                        async_nats::RequestErrorKind::TimedOut => AckErrorKind::Other,
                        _ => AckErrorKind::Connection,
                    };
                    Err(AckError::new(kind, format!("ack not confirmed: {e}")).with_source(e))
                }
                Err(_) => Err(AckError::new(
                    AckErrorKind::Other,
                    "ack not confirmed in time; the message may be redelivered",
                )),
            };
        }
        self.client
            .publish(reply, payload)
            .await
            .map_err(|e| AckError::new(AckErrorKind::Connection, e.to_string()).with_source(e))
    }

    /// NAKs `replies` in the background (fetched messages nobody will handle here).
    fn give_back(&self, replies: Vec<Subject>) {
        if replies.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let n = replies.len();
        let task = rt.spawn(async move {
            for reply in replies {
                let _ = client.publish(reply, NAK).await;
            }
        });
        tracing::debug!(n, "returning fetched messages");
        let mut tasks = self.returning.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

/// The ticker: AckProgress for deliveries held two ticks or more.
async fn progress_loop(state: Arc<SubState>, period: Duration) {
    let Some(inflight) = &state.inflight else {
        return;
    };
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut due = Vec::new();
    loop {
        ticker.tick().await;
        inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due(&mut due);
        for reply in due.drain(..) {
            if let Err(e) = state.client.publish(reply, PROGRESS).await {
                tracing::debug!(error = %e, "sending progress failed");
            }
        }
    }
}

async fn watch_max_deliveries(mut sub: async_nats::Subscriber, topic: String, group: String) {
    while let Some(m) = sub.next().await {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        tracing::error!(
            %topic, %group,
            stream_seq = v.get("stream_seq").and_then(|s| s.as_u64()),
            deliveries = v.get("deliveries").and_then(|s| s.as_u64()),
            "the server stopped redelivering a message (consumer max_deliver reached) that \
             herald did not dead-letter; raise max_deliver above the retry budget"
        );
    }
}

const UNTRACKED: u32 = u32::MAX;

/// The deliveries a subscription has handed out and not settled, for AckProgress.
/// Slots are reused.
#[derive(Default)]
struct InFlight {
    /// Ticks of the progress ticker so far.
    tick: u64,
    slots: Vec<Option<Held>>,
    free: Vec<u32>,
}

struct Held {
    reply: Subject,
    /// The tick at which it was handed out or last extended.
    mark: u64,
}

impl InFlight {
    fn insert(&mut self, reply: Subject) -> u32 {
        let held = Held {
            reply,
            mark: self.tick,
        };
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(held);
                i
            }
            None => {
                self.slots.push(Some(held));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn remove(&mut self, slot: u32) {
        if let Some(s) = self.slots.get_mut(slot as usize)
            && s.take().is_some()
        {
            self.free.push(slot);
        }
    }

    /// Advances one tick and returns the deliveries held for two ticks or more.
    fn due(&mut self, out: &mut Vec<Subject>) {
        self.tick += 1;
        let now = self.tick;
        for h in self.slots.iter_mut().flatten() {
            if now - h.mark >= 2 {
                h.mark = now;
                out.push(h.reply.clone());
            }
        }
    }
}

/// Settles one delivery.
struct NatsAcker {
    state: Arc<SubState>,
    reply: Subject,
    slot: u32,
    _permit: OwnedSemaphorePermit,
    settled: bool,
}

impl NatsAcker {
    async fn settle(mut self: Box<Self>, payload: Bytes) -> Result<(), AckError> {
        self.settled = true;
        self.state.untrack(self.slot);
        self.state.send(self.reply.clone(), payload).await
    }
}

impl Acker for NatsAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), AckError>> {
        Box::pin(self.settle(ACK))
    }

    fn nack(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), AckError>> {
        let payload = if delay.is_zero() {
            NAK
        } else {
            Bytes::from(AckKind::Nak(Some(delay)))
        };
        Box::pin(self.settle(payload))
    }
}

impl Drop for NatsAcker {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Dropped unsettled: hand it back at once rather than after ack_wait.
        self.state.untrack(self.slot);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.state.client.clone();
            let reply = self.reply.clone();
            rt.spawn(async move {
                let _ = client.publish(reply, NAK).await;
            });
        }
    }
}

/// Stream sequence and delivery count from an ack subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>`, or the form
/// with `<domain>.<account hash>.` before the stream and an optional trailing token.
fn ack_info(reply: &str) -> Option<(u64, u64)> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    let mut tokens = [""; 9];
    let mut n = 0;
    for t in rest.split('.') {
        if n < tokens.len() {
            tokens[n] = t;
        }
        n += 1;
    }
    let (delivered, seq) = match n {
        7 => (tokens[2], tokens[3]),
        n if n >= 9 => (tokens[4], tokens[5]),
        _ => return None,
    };
    Some((seq.parse().ok()?, delivered.parse().ok()?))
}

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The stream of deliveries: polls the pull stream directly, re-issues it when
/// interrupted.
struct Deliveries {
    state: Arc<SubState>,
    consumer: PullConsumer,
    pull: PullParams,
    topic: Arc<str>,
    stream_name: Arc<str>,
    messages: Option<PullStream>,
    reopen: Option<BoxFuture<'static, Result<PullStream, SubscribeError>>>,
    wait: Option<Pin<Box<Sleep>>>,
    backoff: Duration,
    permits: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
    done: bool,
}

enum After {
    Continue,
    Reopen,
    Fail(SubscribeError),
}

impl Deliveries {
    fn on_error(&self, e: jetstream::consumer::pull::MessagesError) -> After {
        match e.kind() {
            MessagesErrorKind::MissingHeartbeat | MessagesErrorKind::NoResponders => {
                tracing::warn!(topic = %self.topic, error = %e, "pull interrupted; re-issuing it");
                After::Reopen
            }
            MessagesErrorKind::ConsumerDeleted => After::Fail(SubscribeError::new(
                SubscribeErrorKind::Closed,
                format!("the consumer of topic {} was deleted", self.topic),
            )),
            MessagesErrorKind::PushBasedConsumer | MessagesErrorKind::RequestLimitExceeded => {
                After::Fail(
                    SubscribeError::new(
                        SubscribeErrorKind::InvalidConfig,
                        format!("topic {}: {e}", self.topic),
                    )
                    .with_source(e),
                )
            }
            _ => {
                tracing::debug!(topic = %self.topic, error = %e, "pull stream error");
                After::Continue
            }
        }
    }

    /// Drops the current pull stream, returning what it had fetched.
    fn abandon(&mut self) {
        if let Some(mut m) = self.messages.take() {
            let mut replies = Vec::new();
            while let Some(Some(Ok(msg))) = m.next().now_or_never() {
                if let Some(reply) = msg.message.reply {
                    replies.push(reply);
                }
            }
            // Unsubscribe the pull's inbox first (queued on the connection at once), so the
            // server cannot hand the NAKed messages back to this dead pull.
            drop(m);
            self.state.give_back(replies);
        }
    }

    fn schedule_reopen(&mut self, after: Duration) {
        self.wait = Some(Box::pin(tokio::time::sleep(after)));
    }

    /// A delivery from a pulled message; `Err(permit)` when it is not a JetStream delivery.
    fn make(
        &self,
        msg: jetstream::Message,
        permit: OwnedSemaphorePermit,
    ) -> Result<Delivery, OwnedSemaphorePermit> {
        let jetstream::Message { message, .. } = msg;
        let parsed = message.reply.as_ref().and_then(|r| ack_info(r.as_str()));
        let (Some(reply), Some((seq, delivered))) = (message.reply, parsed) else {
            tracing::warn!(topic = %self.topic, subject = %message.subject,
                "skipping a message that is not a JetStream delivery");
            return Err(permit);
        };
        let attempt = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
        if self.state.probe.get().is_none() {
            let _ = self.state.probe.set(reply.clone());
        }
        let m = mapping::inbound(
            message.subject.as_str(),
            message.headers.as_ref(),
            message.payload,
            &self.stream_name,
            seq,
        );
        let slot = match &self.state.inflight {
            Some(inflight) => inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(reply.clone()),
            None => UNTRACKED,
        };
        let acker = NatsAcker {
            state: self.state.clone(),
            reply,
            slot,
            _permit: permit,
            settled: false,
        };
        let origin = Origin::new(self.topic.clone())
            .with("sequence", i64::try_from(seq).unwrap_or(i64::MAX));
        Ok(Delivery::new(m, origin, attempt, Box::new(acker)))
    }
}

impl Stream for Deliveries {
    type Item = Result<Delivery, SubscribeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(w) = this.wait.as_mut() {
                ready!(w.as_mut().poll(cx));
                this.wait = None;
                this.reopen = Some(Box::pin(open_messages(this.consumer.clone(), this.pull)));
            }
            if let Some(r) = this.reopen.as_mut() {
                match ready!(r.as_mut().poll(cx)) {
                    Ok(m) => {
                        tracing::debug!(topic = %this.topic, "pull re-issued");
                        this.messages = Some(m);
                        this.backoff = INITIAL_BACKOFF;
                    }
                    Err(e) => {
                        tracing::warn!(topic = %this.topic, error = %e, "re-issuing the pull failed");
                        let b = this.backoff;
                        this.backoff = (b * 2).min(MAX_BACKOFF);
                        this.schedule_reopen(b);
                    }
                }
                this.reopen = None;
                continue;
            }
            let Some(messages) = this.messages.as_mut() else {
                this.schedule_reopen(Duration::ZERO);
                continue;
            };
            let permit = match this.permit.take() {
                Some(p) => p,
                None => match ready!(this.permits.poll_acquire(cx)) {
                    Some(p) => p,
                    None => return Poll::Ready(None),
                },
            };
            let next = match messages.poll_next_unpin(cx) {
                Poll::Pending => {
                    this.permit = Some(permit);
                    return Poll::Pending;
                }
                Poll::Ready(n) => n,
            };
            let after = match next {
                Some(Ok(msg)) => match this.make(msg, permit) {
                    Ok(d) => return Poll::Ready(Some(Ok(d))),
                    Err(p) => {
                        this.permit = Some(p);
                        After::Continue
                    }
                },
                Some(Err(e)) => {
                    this.permit = Some(permit);
                    this.on_error(e)
                }
                None => {
                    this.permit = Some(permit);
                    After::Reopen
                }
            };
            match after {
                After::Continue => {}
                After::Reopen => {
                    this.abandon();
                    let b = this.backoff;
                    this.backoff = (b * 2).min(MAX_BACKOFF);
                    this.schedule_reopen(b);
                }
                After::Fail(e) => {
                    this.done = true;
                    this.abandon();
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        // Closed or dropped: what was fetched but not handed out goes back at once.
        self.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_marks_due_after_two_ticks() {
        let mut f = InFlight::default();
        let a = f.insert(Subject::from("a"));
        let mut out = Vec::new();
        f.due(&mut out);
        assert!(out.is_empty(), "one tick is too early");
        let b = f.insert(Subject::from("b"));
        f.due(&mut out);
        assert_eq!(out, [Subject::from("a")]);
        out.clear();
        f.due(&mut out);
        assert_eq!(out, [Subject::from("b")]);
        out.clear();
        f.remove(a);
        f.remove(a);
        f.remove(b);
        assert_eq!(f.free.len(), 2, "a slot is freed once");
        let c = f.insert(Subject::from("c"));
        assert!(c == a || c == b, "slots are reused");
        f.due(&mut out);
        f.due(&mut out);
        assert_eq!(out, [Subject::from("c")]);
    }

    #[test]
    fn ack_subjects_parse() {
        assert_eq!(
            ack_info("$JS.ACK.orders.billing.3.42.40.1700000000000000000.5"),
            Some((42, 3))
        );
        assert_eq!(
            ack_info("$JS.ACK.hub.ACCHASH.orders.billing.2.7.6.1700000000000000000.0.tok"),
            Some((7, 2))
        );
        assert_eq!(
            ack_info("$JS.ACK.hub.ACCHASH.orders.billing.2.7.6.17.0"),
            Some((7, 2))
        );
        for bad in [
            "orders.k",
            "$JS.ACK.a.b.c",
            "$JS.ACK.s.c.x.1.1.1.1",
            "$JS.ACK.s.c.1.-1.1.1.1",
        ] {
            assert_eq!(ack_info(bad), None, "{bad}");
        }
    }

    #[test]
    fn pull_params_respect_the_in_flight_bound() {
        let s = ConsumerSettings::default();
        let p = PullParams::new(&s, 8);
        assert_eq!(p.batch, 8);
        assert!(p.heartbeat <= p.expires / 2);
        let p = PullParams::new(&s, 10_000);
        assert_eq!(p.batch, 256);
    }
}
