//! The in-memory transport: a broker inside the process, and a real adapter.
//!
//! It keeps Kafka's shape so code moves to a broker unchanged:
//! * a topic has partitions (4 by default); a message's key picks its partition by hash,
//!   keyless messages go round-robin;
//! * a consumer group's members split the partitions between them (competing consumers);
//!   every group gets every message (fan-out); a new group starts at the oldest retained
//!   message unless it asks for [`StartFrom::Latest`];
//! * delivery is at-least-once: an unacknowledged or nacked message comes back — a nack
//!   after its delay, a dropped subscription's messages to the members that take over its
//!   partitions, with the attempt number counting every delivery;
//! * a message leaves memory once every group that existed when it was published has
//!   acknowledged it; a topic holds at most [`MemoryConfig::capacity`] messages and a
//!   full topic makes `publish` wait — it never drops.
//!
//! Nothing survives the process: this is the embedded default and the transport of
//! tests, not a broker.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use tokio::{sync::Notify, time::Instant};

use crate::{
    AckError, AckErrorKind, Acker, Delivery, Message, Origin, PublishError, PublishErrorKind,
    Publisher, StartFrom, SubscribeError, SubscribeErrorKind, SubscribeSpec, Subscriber,
    Subscription,
};

/// Settings of a [`MemoryBroker`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Partitions of each new topic.
    pub partitions: usize,
    /// The most messages a topic retains before `publish` waits.
    pub capacity: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            partitions: 4,
            capacity: 65_536,
        }
    }
}

impl MemoryConfig {
    /// Sets the partition count (at least 1).
    pub fn partitions(mut self, n: usize) -> Self {
        self.partitions = n.max(1);
        self
    }

    /// Sets the capacity (at least 1).
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }
}

/// An in-process broker; both [`Publisher`] and [`Subscriber`]. Clones share the broker.
///
/// # Examples
/// ```
/// use herald_core::memory::{MemoryBroker, MemoryConfig};
/// let broker = MemoryBroker::with_config(MemoryConfig::default().partitions(8));
/// # let _ = broker;
/// ```
#[derive(Clone, Default)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    config: MemoryConfig,
    state: Mutex<State>,
    /// Woken when a topic frees space.
    space: Notify,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Topic>,
    next_member: u64,
}

struct Topic {
    partitions: Vec<Partition>,
    groups: HashMap<String, Group>,
    retained: usize,
    round_robin: usize,
}

struct Partition {
    /// Offset of `log[0]`.
    base: u64,
    log: VecDeque<Message>,
}

impl Partition {
    fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }
}

struct Group {
    members: Vec<Member>,
    parts: Vec<GroupPartition>,
    notify: Arc<Notify>,
}

struct Member {
    id: u64,
    in_flight: usize,
    max_in_flight: usize,
}

#[derive(Default)]
struct GroupPartition {
    owner: Option<u64>,
    /// Bumped at every reassignment; settles from an older epoch only record acks.
    epoch: u64,
    /// Every offset below is acknowledged.
    committed: u64,
    /// The next offset never yet delivered in this epoch.
    next: u64,
    /// Acknowledged offsets at or above `committed`.
    acked: BTreeSet<u64>,
    /// Nacked offsets waiting for their due time.
    redeliver: Vec<(Instant, u64)>,
    /// One past the highest offset ever delivered: below it, a delivery is a redelivery.
    delivered_end: u64,
    /// Delivery counts of unacknowledged offsets delivered more than once (the common
    /// first delivery costs no map entry).
    redelivered: HashMap<u64, u32>,
}

impl GroupPartition {
    /// Records an ack of `offset`; returns whether the commit moved.
    fn ack(&mut self, offset: u64) -> bool {
        if offset != self.committed {
            if offset > self.committed {
                self.acked.insert(offset);
            }
            return false;
        }
        // In-order ack (the usual case): no set insert/remove.
        self.forget(offset);
        self.committed += 1;
        while self.acked.remove(&self.committed) {
            self.forget(self.committed);
            self.committed += 1;
        }
        true
    }

    fn forget(&mut self, offset: u64) {
        if !self.redelivered.is_empty() {
            self.redelivered.remove(&offset);
        }
    }

    /// Counts a delivery of `offset`; returns its attempt number.
    fn count_delivery(&mut self, offset: u64) -> u32 {
        if offset >= self.delivered_end {
            self.delivered_end = offset + 1;
            return 1;
        }
        let n = self.redelivered.entry(offset).or_insert(1);
        *n += 1;
        *n
    }
}

fn closed(what: &str) -> SubscribeError {
    SubscribeError::new(SubscribeErrorKind::Closed, what.to_owned())
}

impl MemoryBroker {
    /// A broker with default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// A broker with `config`.
    pub fn with_config(config: MemoryConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                ..Default::default()
            }),
        }
    }

    /// Messages retained by `topic` (published and not yet acknowledged by every group).
    pub fn retained(&self, topic: &str) -> usize {
        self.inner
            .lock()
            .topics
            .get(topic)
            .map_or(0, |t| t.retained)
    }

    /// Messages of `topic` not yet acknowledged by `group` (its lag).
    pub fn lag(&self, topic: &str, group: &str) -> u64 {
        let st = self.inner.lock();
        let Some(t) = st.topics.get(topic) else {
            return 0;
        };
        match t.groups.get(group) {
            Some(g) => t
                .partitions
                .iter()
                .zip(&g.parts)
                .map(|(p, gp)| p.end() - gp.committed - gp.acked.len() as u64)
                .sum(),
            None => t.partitions.iter().map(|p| p.log.len() as u64).sum(),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent state (every mutation is a
        // single step), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn topic<'a>(&self, st: &'a mut State, name: &str) -> &'a mut Topic {
        let n = self.config.partitions;
        // Looked up first so a publish to a known topic allocates no key.
        if !st.topics.contains_key(name) {
            st.topics.insert(name.to_owned(), Self::new_topic(n));
        }
        st.topics.get_mut(name).expect("inserted above")
    }

    fn new_topic(n: usize) -> Topic {
        Topic {
            partitions: (0..n)
                .map(|_| Partition {
                    base: 0,
                    log: VecDeque::new(),
                })
                .collect(),
            groups: HashMap::new(),
            retained: 0,
            round_robin: 0,
        }
    }
}

fn partition_for(key: Option<&[u8]>, n: usize, rr: &mut usize) -> usize {
    match key {
        Some(k) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            k.hash(&mut h);
            (h.finish() % n as u64) as usize
        }
        None => {
            *rr = (*rr + 1) % n;
            *rr
        }
    }
}

/// Drops the messages of partition `pi` (the one an ack moved) that every group has
/// acknowledged; returns how many.
fn trim_partition(t: &mut Topic, pi: usize) -> usize {
    let Some(p) = t.partitions.get_mut(pi) else {
        return 0;
    };
    let low = t
        .groups
        .values()
        .map(|g| g.parts[pi].committed)
        .min()
        .unwrap_or(p.base);
    let mut freed = 0;
    while p.base < low && !p.log.is_empty() {
        p.log.pop_front();
        p.base += 1;
        freed += 1;
    }
    t.retained -= freed;
    freed
}

fn rebalance(g: &mut Group) {
    let n = g.members.len();
    for (pi, gp) in g.parts.iter_mut().enumerate() {
        let owner = (n > 0).then(|| g.members[pi % n].id);
        if owner != gp.owner {
            gp.owner = owner;
            gp.epoch += 1;
            // The new owner starts again from the last commit; what the old owner had
            // in flight is delivered again (at-least-once), acknowledged offsets are not.
            gp.next = gp.committed;
            gp.redeliver.clear();
        }
    }
    g.notify.notify_waiters();
}

impl Publisher for MemoryBroker {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            if topic.is_empty() {
                return Err(PublishError::new(
                    PublishErrorKind::InvalidMessage,
                    "empty topic name",
                ));
            }
            let cap = self.inner.config.capacity;
            let mut pending = messages.into_iter().peekable();
            while pending.peek().is_some() {
                let space = self.inner.space.notified();
                tokio::pin!(space);
                space.as_mut().enable();
                {
                    let mut st = self.inner.lock();
                    let t = self.inner.topic(&mut st, topic);
                    let room = cap.saturating_sub(t.retained);
                    if room > 0 {
                        let n = t.partitions.len();
                        for m in pending.by_ref().take(room) {
                            let p = partition_for(m.key.as_deref(), n, &mut t.round_robin);
                            t.partitions[p].log.push_back(m);
                            t.retained += 1;
                        }
                        for g in t.groups.values() {
                            g.notify.notify_waiters();
                        }
                        continue;
                    }
                }
                // Full: wait for a consumer to free space; never drop.
                space.await;
            }
            Ok(())
        })
    }
}

impl Subscriber for MemoryBroker {
    fn subscribe(
        &self,
        spec: SubscribeSpec,
    ) -> BoxFuture<'_, Result<Subscription, SubscribeError>> {
        Box::pin(async move {
            if spec.topic.is_empty() || spec.group.is_empty() {
                return Err(SubscribeError::new(
                    SubscribeErrorKind::InvalidConfig,
                    "empty topic or group name",
                ));
            }
            let (member, notify) = {
                let mut st = self.inner.lock();
                st.next_member += 1;
                let id = st.next_member;
                let t = self.inner.topic(&mut st, &spec.topic);
                let ends: Vec<(u64, u64)> =
                    t.partitions.iter().map(|p| (p.base, p.end())).collect();
                let g = t.groups.entry(spec.group.clone()).or_insert_with(|| Group {
                    members: Vec::new(),
                    parts: ends
                        .iter()
                        .map(|&(base, end)| {
                            let start = match spec.start {
                                StartFrom::Latest => end,
                                _ => base,
                            };
                            GroupPartition {
                                committed: start,
                                next: start,
                                ..Default::default()
                            }
                        })
                        .collect(),
                    notify: Arc::new(Notify::new()),
                });
                g.members.push(Member {
                    id,
                    in_flight: 0,
                    max_in_flight: spec.max_in_flight,
                });
                rebalance(g);
                (id, g.notify.clone())
            };
            let handle = Arc::new(MemberHandle {
                broker: self.inner.clone(),
                origin_topic: Arc::from(spec.topic.as_str()),
                topic: spec.topic,
                group: spec.group,
                id: member,
            });
            let state = StreamState {
                presence: Presence(handle),
                notify,
                buf: VecDeque::new(),
            };
            let stream = futures::stream::unfold(state, |mut s| async move {
                let d = s.next().await;
                d.map(|d| (d, s))
            })
            .boxed();
            // `Subscription::close` drops the stream first, which leaves the group.
            let close = Box::pin(async { Ok(()) });
            Ok(Subscription::new(stream, close))
        })
    }
}

/// A member's presence in its group; leaving happens once, on close or on drop.
struct MemberHandle {
    broker: Arc<Inner>,
    topic: String,
    /// The topic as deliveries carry it: one allocation for all of them.
    origin_topic: Arc<str>,
    group: String,
    id: u64,
}

impl MemberHandle {
    fn leave(&self) {
        let mut st = self.broker.lock();
        if let Some(g) = st
            .topics
            .get_mut(&self.topic)
            .and_then(|t| t.groups.get_mut(&self.group))
        {
            let before = g.members.len();
            g.members.retain(|m| m.id != self.id);
            if g.members.len() != before {
                rebalance(g);
            }
        }
    }
}

/// Owned by the delivery stream: dropping the stream (or closing the subscription) leaves
/// the group, and the partitions move to the remaining members.
struct Presence(Arc<MemberHandle>);

impl Drop for Presence {
    fn drop(&mut self) {
        self.0.leave();
    }
}

struct StreamState {
    presence: Presence,
    notify: Arc<Notify>,
    buf: VecDeque<Delivery>,
}

const BATCH: usize = 64;

impl StreamState {
    async fn next(&mut self) -> Option<Result<Delivery, SubscribeError>> {
        loop {
            if let Some(d) = self.buf.pop_front() {
                return Some(Ok(d));
            }
            let notify = self.notify.clone();
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let due = match self.fill() {
                Ok(due) => due,
                Err(e) => return Some(Err(e)),
            };
            if !self.buf.is_empty() {
                continue;
            }
            match due {
                Some(at) => {
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    /// Moves available deliveries into `buf`; returns the earliest future redelivery time.
    fn fill(&mut self) -> Result<Option<Instant>, SubscribeError> {
        let h = &self.presence.0;
        let mut st = h.broker.lock();
        let t = st
            .topics
            .get_mut(&h.topic)
            .ok_or_else(|| closed("topic gone"))?;
        let g = t
            .groups
            .get_mut(&h.group)
            .ok_or_else(|| closed("group gone"))?;
        let me = g
            .members
            .iter_mut()
            .find(|m| m.id == h.id)
            .ok_or_else(|| closed("member left"))?;
        let mut room = me.max_in_flight.saturating_sub(me.in_flight).min(BATCH);
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        let mut taken = 0;
        for (pi, gp) in g.parts.iter_mut().enumerate() {
            if gp.owner != Some(h.id) {
                continue;
            }
            let p = &t.partitions[pi];
            let take = |gp: &mut GroupPartition, off: u64, buf: &mut VecDeque<Delivery>| {
                let Some(m) = off.checked_sub(p.base).and_then(|i| p.log.get(i as usize)) else {
                    return;
                };
                let n = gp.count_delivery(off);
                let acker = MemoryAcker {
                    handle: Some(h.clone()),
                    partition: pi,
                    offset: off,
                    epoch: gp.epoch,
                };
                let origin = Origin::new(h.origin_topic.clone())
                    .with("partition", pi as i64)
                    .with("offset", off as i64);
                buf.push_back(Delivery::new(m.clone(), origin, n, Box::new(acker)));
            };
            // Due redeliveries first, oldest offset first.
            gp.redeliver.sort_unstable_by_key(|&(_, off)| off);
            let mut i = 0;
            while i < gp.redeliver.len() && room > 0 {
                let (at, off) = gp.redeliver[i];
                if at <= now {
                    gp.redeliver.remove(i);
                    if !gp.acked.contains(&off) && off >= gp.committed {
                        take(gp, off, &mut self.buf);
                        room -= 1;
                        taken += 1;
                    }
                } else {
                    earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    i += 1;
                }
            }
            // Acks from a previous owner may have moved the commit past `next`.
            gp.next = gp.next.max(gp.committed);
            while room > 0 && gp.next < p.end() {
                let off = gp.next;
                gp.next += 1;
                if gp.acked.contains(&off) {
                    continue;
                }
                take(gp, off, &mut self.buf);
                room -= 1;
                taken += 1;
            }
        }
        if let Some(me) = g.members.iter_mut().find(|m| m.id == h.id) {
            me.in_flight += taken;
        }
        Ok(earliest)
    }
}

struct MemoryAcker {
    handle: Option<Arc<MemberHandle>>,
    partition: usize,
    offset: u64,
    epoch: u64,
}

impl MemoryAcker {
    fn settle(&mut self, ack: bool, delay: Duration) -> Result<(), AckError> {
        let Some(h) = self.handle.take() else {
            return Ok(());
        };
        let mut st = h.broker.lock();
        let Some(t) = st.topics.get_mut(&h.topic) else {
            return Err(AckError::new(AckErrorKind::Closed, "topic gone"));
        };
        let Some(g) = t.groups.get_mut(&h.group) else {
            return Err(AckError::new(AckErrorKind::Closed, "group gone"));
        };
        // Whether this member's stream may be waiting for room.
        let mut wake = false;
        if let Some(me) = g.members.iter_mut().find(|m| m.id == h.id) {
            wake = me.in_flight >= me.max_in_flight;
            me.in_flight = me.in_flight.saturating_sub(1);
        }
        let gp = &mut g.parts[self.partition];
        let current = gp.epoch == self.epoch;
        // An ack is a fact whoever owns the partition now: record it.
        let moved = ack && gp.ack(self.offset);
        if !ack && current {
            gp.redeliver.push((Instant::now() + delay, self.offset));
            wake = true;
        }
        // Waking costs a lock in `Notify`: only when a stream may wait for this settle.
        if wake {
            g.notify.notify_waiters();
        }
        if moved {
            let full = t.retained >= h.broker.config.capacity;
            if trim_partition(t, self.partition) > 0 && full {
                h.broker.space.notify_waiters();
            }
        }
        if !current && !ack {
            return Err(AckError::new(
                AckErrorKind::Closed,
                "partition was reassigned; the new owner redelivers",
            ));
        }
        Ok(())
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        // Dropped unsettled: same as nack(0).
        let _ = self.settle(false, Duration::ZERO);
    }
}

impl Acker for MemoryAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), AckError>> {
        let r = self.settle(true, Duration::ZERO);
        crate::settled(r)
    }

    fn nack(mut self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), AckError>> {
        let r = self.settle(false, delay);
        crate::settled(r)
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, StreamExt};

    use super::*;
    use crate::Message;

    const WITHIN: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn an_ack_wakes_a_stream_waiting_at_max_in_flight() {
        let broker = MemoryBroker::with_config(MemoryConfig::default().partitions(1));
        broker
            .publish("t", (0..5).map(|i| Message::new(format!("{i}"))).collect())
            .await
            .unwrap();
        let mut sub = broker
            .subscribe(SubscribeSpec::new("t", "g").max_in_flight(2))
            .await
            .unwrap();
        let first = sub.next().await.unwrap().unwrap();
        let _second = sub.next().await.unwrap().unwrap();
        // Two unsettled: the stream waits for room, not for messages.
        let third = sub.next();
        tokio::pin!(third);
        assert!(
            third.as_mut().now_or_never().is_none(),
            "past max_in_flight"
        );
        first.ack().await.unwrap();
        let third = tokio::time::timeout(WITHIN, third)
            .await
            .expect("the ack did not wake the waiting stream")
            .unwrap()
            .unwrap();
        assert_eq!(third.message.payload, "2");
    }

    #[tokio::test]
    async fn an_ack_wakes_a_publisher_waiting_on_a_full_topic() {
        let broker = MemoryBroker::with_config(MemoryConfig::default().partitions(1).capacity(3));
        let mut sub = broker
            .subscribe(SubscribeSpec::new("t", "g"))
            .await
            .unwrap();
        broker
            .publish("t", (0..3).map(|i| Message::new(format!("{i}"))).collect())
            .await
            .unwrap();
        let fourth = broker.publish("t", vec![Message::new("3")]);
        tokio::pin!(fourth);
        assert!(
            fourth.as_mut().now_or_never().is_none(),
            "the topic is full"
        );
        assert_eq!(broker.retained("t"), 3);
        let d = sub.next().await.unwrap().unwrap();
        d.ack().await.unwrap();
        tokio::time::timeout(WITHIN, fourth)
            .await
            .expect("the ack did not wake the waiting publisher")
            .unwrap();
        assert_eq!(broker.retained("t"), 3);
    }

    #[tokio::test]
    async fn redeliveries_count_attempts_and_first_deliveries_start_at_one() {
        let broker = MemoryBroker::new();
        broker.publish("t", vec![Message::new("x")]).await.unwrap();
        let mut sub = broker
            .subscribe(SubscribeSpec::new("t", "g"))
            .await
            .unwrap();
        for attempt in 1..=3 {
            let d = sub.next().await.unwrap().unwrap();
            assert_eq!(d.attempt, attempt);
            d.nack(Duration::ZERO).await.unwrap();
        }
        let d = sub.next().await.unwrap().unwrap();
        assert_eq!(d.attempt, 4);
        d.ack().await.unwrap();
        broker.publish("t", vec![Message::new("y")]).await.unwrap();
        let d = sub.next().await.unwrap().unwrap();
        assert_eq!((d.attempt, &d.message.payload[..]), (1, &b"y"[..]));
        d.ack().await.unwrap();
        assert_eq!(broker.lag("t", "g"), 0);
        assert_eq!(broker.retained("t"), 0);
    }
}
