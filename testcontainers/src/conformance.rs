//! The transport conformance suite: what every [`Publisher`]/[`Subscriber`] must do.
//!
//! An adapter provides a [`TransportFactory`] and expands
//! [`conformance_tests!`](crate::conformance_tests!) in its tests; each case is one `#[tokio::test]`. Cases that
//! do not apply to a transport (see [`Features`]) pass with a printed reason.
//!
//! The cases: roundtrip with key, headers and id preserved; per-key order; nack →
//! redelivery with attempt + 1 no earlier than the delay; an ack survives a consumer
//! restart; competing consumers split a stream with nothing lost; fan-out to two groups;
//! graceful router shutdown acknowledges finished work; empty and 1 MiB payloads.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::{StreamExt, future::BoxFuture};
use herald_core::{
    Delivery, Inbound, Message, Publisher, Router, SubscribeSpec, Subscriber, Subscription,
    handler_fn,
};
use tokio::time::{Instant, timeout};

use crate::unique;

/// What a transport supports; cases that need more pass with a printed reason.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Features {
    /// The largest payload the transport accepts as configured for the tests; the
    /// payload case sends `min(1 MiB, max_payload)`.
    pub max_payload: usize,
    /// How long a receive may take before the case fails (broker joins can be slow).
    pub receive_timeout: Duration,
}

impl Default for Features {
    fn default() -> Self {
        Self {
            max_payload: 1 << 20,
            receive_timeout: Duration::from_secs(30),
        }
    }
}

impl Features {
    /// Sets the largest payload.
    pub fn max_payload(mut self, n: usize) -> Self {
        self.max_payload = n;
        self
    }

    /// Sets the receive timeout.
    pub fn receive_timeout(mut self, d: Duration) -> Self {
        self.receive_timeout = d;
        self
    }
}

/// Makes clients of one transport for the suite.
pub trait TransportFactory: Send + Sync + 'static {
    /// What the transport supports.
    fn features(&self) -> Features;
    /// A publisher.
    fn publisher(&self) -> BoxFuture<'_, Arc<dyn Publisher>>;
    /// A subscriber. Each call is a new client, so "restart a consumer" means calling
    /// this again.
    fn subscriber(&self) -> BoxFuture<'_, Arc<dyn Subscriber>>;
    /// Creates `topic` (with at least 4 partitions where partitions exist) if the
    /// transport needs topics created before use.
    fn create_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, ()>;
}

/// Expands the suite into one `#[tokio::test]` per case for the factory expression.
///
/// ```ignore
/// herald_testkit::conformance_tests!(MemoryFactory::default());
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            roundtrip_preserves_id_key_headers,
            per_key_order,
            nack_redelivers_with_next_attempt,
            ack_survives_consumer_restart,
            competing_consumers_split_nothing_lost,
            fan_out_to_two_groups,
            graceful_shutdown_acknowledges_finished,
            empty_and_large_payloads,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                $crate::conformance::$case(&factory).await;
            }
        )*
    };
}

async fn next_delivery(sub: &mut Subscription, f: &Features, what: &str) -> Delivery {
    match timeout(f.receive_timeout, sub.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("{what}: subscription error: {e}"),
        Ok(None) => panic!("{what}: subscription ended"),
        Err(_) => panic!("{what}: nothing received within {:?}", f.receive_timeout),
    }
}

async fn setup(f: &dyn TransportFactory, name: &str) -> (String, Arc<dyn Publisher>) {
    let topic = unique(name);
    f.create_topic(&topic).await;
    (topic, f.publisher().await)
}

async fn subscribe(f: &dyn TransportFactory, topic: &str, group: &str) -> Subscription {
    f.subscriber()
        .await
        .subscribe(SubscribeSpec::new(topic, group))
        .await
        .unwrap_or_else(|e| panic!("subscribe {topic}/{group}: {e}"))
}

/// Id, key, headers (multi-valued, binary, CloudEvents) and payload arrive unchanged.
pub async fn roundtrip_preserves_id_key_headers(f: &dyn TransportFactory) {
    let feats = f.features();
    let (topic, publisher) = setup(f, "conf-roundtrip").await;
    let mut m = Message::new("payload-1")
        .with_key("key-1")
        .with_type("herald.test.Thing.v1")
        .with_source("conformance")
        .with_content_type("text/plain")
        .with_correlation_id("corr-1");
    m.headers.append("x-multi", "a");
    m.headers.append("x-multi", "b");
    m.headers.append("x-binary", vec![0u8, 159, 146, 150]);
    let sent = m.clone();
    publisher.publish(&topic, vec![m]).await.expect("publish");
    let mut sub = subscribe(f, &topic, &unique("g")).await;
    let d = next_delivery(&mut sub, &feats, "roundtrip").await;
    let got = &d.message;
    assert_eq!(got.id, sent.id, "id preserved");
    assert_eq!(got.key, sent.key, "key preserved");
    assert_eq!(got.payload, sent.payload, "payload preserved");
    assert_eq!(got.ce_type(), sent.ce_type());
    assert_eq!(got.ce_source(), sent.ce_source());
    assert_eq!(got.content_type(), sent.content_type());
    assert_eq!(got.correlation_id(), sent.correlation_id());
    let multi: Vec<_> = got.headers.get_all("x-multi").cloned().collect();
    assert_eq!(
        multi,
        [Bytes::from("a"), Bytes::from("b")],
        "multi-valued header in order"
    );
    assert_eq!(
        got.headers.get("x-binary").map(|b| b.to_vec()),
        Some(vec![0u8, 159, 146, 150]),
        "binary header preserved"
    );
    assert_eq!(d.attempt, 1);
    assert_eq!(&*d.origin.topic, topic);
    d.ack().await.expect("ack");
    sub.close().await.expect("close");
}

/// Messages of one key arrive in publish order.
pub async fn per_key_order(f: &dyn TransportFactory) {
    let feats = f.features();
    let (topic, publisher) = setup(f, "conf-order").await;
    let keys = ["k-a", "k-b", "k-c", "k-d", "k-e"];
    let per_key = 60;
    let mut batch = Vec::new();
    for i in 0..per_key {
        for k in keys {
            batch.push(Message::new(format!("{k}:{i}")).with_key(k));
        }
    }
    let total = batch.len();
    for chunk in batch.chunks(50) {
        publisher
            .publish(&topic, chunk.to_vec())
            .await
            .expect("publish");
    }
    let mut sub = subscribe(f, &topic, &unique("g")).await;
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    for _ in 0..total {
        let d = next_delivery(&mut sub, &feats, "per-key order").await;
        let s = String::from_utf8(d.message.payload.to_vec()).expect("utf8");
        let (k, i) = s.split_once(':').expect("k:i");
        assert_eq!(d.message.key_str(), Some(k));
        seen.entry(k.to_owned())
            .or_default()
            .push(i.parse().expect("num"));
        d.ack().await.expect("ack");
    }
    for k in keys {
        let got = &seen[k];
        let want: Vec<usize> = (0..per_key).collect();
        assert_eq!(got, &want, "order of key {k}");
    }
    sub.close().await.expect("close");
}

/// A nacked message comes back with the same id and attempt + 1, no earlier than the delay.
pub async fn nack_redelivers_with_next_attempt(f: &dyn TransportFactory) {
    let feats = f.features();
    let (topic, publisher) = setup(f, "conf-nack").await;
    let m = Message::new("again").with_key("k");
    let id = m.id.clone();
    publisher.publish(&topic, vec![m]).await.expect("publish");
    let mut sub = subscribe(f, &topic, &unique("g")).await;
    let d = next_delivery(&mut sub, &feats, "first delivery").await;
    assert_eq!(d.attempt, 1);
    let delay = Duration::from_millis(500);
    let nacked_at = Instant::now();
    d.nack(delay).await.expect("nack");
    let d = next_delivery(&mut sub, &feats, "redelivery").await;
    let waited = nacked_at.elapsed();
    assert_eq!(d.message.id, id, "same message");
    assert_eq!(d.attempt, 2, "attempt counts the redelivery");
    assert!(
        waited >= delay,
        "redelivered after {waited:?}, before the {delay:?} delay"
    );
    d.ack().await.expect("ack");
    sub.close().await.expect("close");
}

/// Publishes `sentinel` and returns the first delivery's payload the subscription sees.
async fn first_after_restart(
    f: &dyn TransportFactory,
    publisher: &Arc<dyn Publisher>,
    topic: &str,
    group: &str,
) -> Bytes {
    let feats = f.features();
    let mut sub = subscribe(f, topic, group).await;
    publisher
        .publish(topic, vec![Message::new("sentinel").with_key("k")])
        .await
        .expect("publish sentinel");
    let d = next_delivery(&mut sub, &feats, "after restart").await;
    let p = d.message.payload.clone();
    d.ack().await.expect("ack");
    sub.close().await.expect("close");
    p
}

/// Acknowledged messages are not delivered again to a restarted consumer of the group.
pub async fn ack_survives_consumer_restart(f: &dyn TransportFactory) {
    let feats = f.features();
    let (topic, publisher) = setup(f, "conf-restart").await;
    let group = unique("g");
    let msgs: Vec<_> = (0..10)
        .map(|i| Message::new(format!("m{i}")).with_key("k"))
        .collect();
    publisher.publish(&topic, msgs).await.expect("publish");
    let mut sub = subscribe(f, &topic, &group).await;
    for _ in 0..10 {
        next_delivery(&mut sub, &feats, "first run")
            .await
            .ack()
            .await
            .expect("ack");
    }
    sub.close().await.expect("close");
    let first = first_after_restart(f, &publisher, &topic, &group).await;
    assert_eq!(
        &first[..],
        b"sentinel",
        "an acked message was delivered again"
    );
}

/// Two members of one group split the messages; together they get every one.
pub async fn competing_consumers_split_nothing_lost(f: &dyn TransportFactory) {
    let feats = f.features();
    let (topic, publisher) = setup(f, "conf-compete").await;
    let group = unique("g");
    let seen: Arc<Mutex<[HashSet<String>; 2]>> = Arc::default();
    let mut subs = Vec::new();
    for _ in 0..2 {
        subs.push(subscribe(f, &topic, &group).await);
    }
    let mut tasks = Vec::new();
    for (i, mut sub) in subs.into_iter().enumerate() {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(d)) = sub.next().await {
                seen.lock().expect("lock")[i].insert(d.message.id.clone());
                // A little work per message so one member cannot drain everything alone.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let _ = d.ack().await;
            }
            let _ = sub.close().await;
        }));
    }
    let mut published = HashSet::new();
    let deadline = Instant::now() + feats.receive_timeout * 2;
    let mut round = 0;
    // Publish in rounds until both members have received some (group joins take time).
    loop {
        let batch: Vec<_> = (0..40)
            .map(|i| Message::new(format!("r{round}-{i}")).with_key(format!("key-{i}")))
            .collect();
        published.extend(batch.iter().map(|m| m.id.clone()));
        publisher.publish(&topic, batch).await.expect("publish");
        round += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let both = seen.lock().expect("lock").iter().all(|s| !s.is_empty());
        if both || Instant::now() > deadline {
            break;
        }
    }
    loop {
        let got: HashSet<String> = {
            let s = seen.lock().expect("lock");
            s[0].union(&s[1]).cloned().collect()
        };
        if published.is_subset(&got) {
            break;
        }
        assert!(
            Instant::now() < deadline + feats.receive_timeout,
            "lost {} of {} messages",
            published.difference(&got).count(),
            published.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = seen.lock().expect("lock");
    assert!(
        !s[0].is_empty() && !s[1].is_empty(),
        "one member got nothing: {} / {}",
        s[0].len(),
        s[1].len()
    );
    drop(s);
    for t in tasks {
        t.abort();
    }
}

/// Two groups each get every message.
pub async fn fan_out_to_two_groups(f: &dyn TransportFactory) {
    let feats = f.features();
    let (topic, publisher) = setup(f, "conf-fanout").await;
    let mut a = subscribe(f, &topic, &unique("ga")).await;
    let mut b = subscribe(f, &topic, &unique("gb")).await;
    let msgs: Vec<_> = (0..20)
        .map(|i| Message::new(format!("m{i}")).with_key(format!("k{i}")))
        .collect();
    let ids: HashSet<_> = msgs.iter().map(|m| m.id.clone()).collect();
    publisher.publish(&topic, msgs).await.expect("publish");
    for sub in [&mut a, &mut b] {
        let mut got = HashSet::new();
        while got.len() < ids.len() {
            let d = next_delivery(sub, &feats, "fan-out").await;
            got.insert(d.message.id.clone());
            d.ack().await.expect("ack");
        }
        assert_eq!(got, ids);
    }
    a.close().await.expect("close");
    b.close().await.expect("close");
}

/// Router shutdown acknowledges the handled messages: a restarted group sees none again.
pub async fn graceful_shutdown_acknowledges_finished(f: &dyn TransportFactory) {
    let feats = f.features();
    let (topic, publisher) = setup(f, "conf-shutdown").await;
    let group = unique("g");
    let handled = Arc::new(Mutex::new(HashSet::new()));
    let h = handled.clone();
    let router = Router::new()
        .route_with(
            herald_core::RouteConfig::new("conf", &topic, &group).concurrency(4),
            handler_fn(move |i: Inbound| {
                let h = h.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    h.lock().expect("lock").insert(i.message.id.clone());
                    Ok(())
                }
            }),
        )
        .drain_timeout(Duration::from_secs(10));
    let running = router.start(f.subscriber().await);
    let msgs: Vec<_> = (0..50)
        .map(|i| Message::new(format!("m{i}")).with_key(format!("k{}", i % 7)))
        .collect();
    publisher.publish(&topic, msgs).await.expect("publish");
    let deadline = Instant::now() + feats.receive_timeout;
    while handled.lock().expect("lock").len() < 50 {
        assert!(
            Instant::now() < deadline,
            "router handled only {} of 50",
            handled.lock().expect("lock").len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await.expect("shutdown");
    let first = first_after_restart(f, &publisher, &topic, &group).await;
    assert_eq!(
        &first[..],
        b"sentinel",
        "handled work was delivered again after a graceful shutdown"
    );
}

/// An empty payload and a 1 MiB one (or the transport's largest) arrive intact.
pub async fn empty_and_large_payloads(f: &dyn TransportFactory) {
    let feats = f.features();
    let (topic, publisher) = setup(f, "conf-payload").await;
    let size = feats.max_payload.min(1 << 20);
    if size < 1 << 20 {
        println!("conformance: large payload reduced to {size} bytes (transport limit)");
    }
    let big: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let msgs = vec![
        Message::new(Bytes::new()).with_key("k"),
        Message::new(big.clone()).with_key("k"),
    ];
    publisher.publish(&topic, msgs).await.expect("publish");
    let mut sub = subscribe(f, &topic, &unique("g")).await;
    let d = next_delivery(&mut sub, &feats, "empty payload").await;
    assert!(d.message.payload.is_empty());
    d.ack().await.expect("ack");
    let d = next_delivery(&mut sub, &feats, "large payload").await;
    assert_eq!(d.message.payload.len(), size);
    assert!(d.message.payload[..] == big[..], "large payload intact");
    d.ack().await.expect("ack");
    sub.close().await.expect("close");
}
