//! NATS JetStream: herald-nats against raw async-nats on the same streams.
//!
//! * Streams are created identically for both sides by herald's
//!   [`NatsBroker::ensure_topic`] (file storage, limits retention, 2-minute duplicate
//!   window, subjects `<topic>.*`), fresh per run, and deleted afterwards. Both sides
//!   publish to the same subjects (`<topic>.<key>`, [`mapping::subject`]).
//! * Raw publish: `send_publish` with a `Nats-Msg-Id` (a UUIDv7, as herald's ids — the
//!   server's duplicate detection is JetStream's counterpart of Kafka's idempotent
//!   producer), the PubAck futures collected into a `FuturesUnordered` of at most `window`;
//!   herald's publisher gets `max_pending_acks = window`.
//! * Raw consume: a durable pull consumer with herald's settings (explicit ack,
//!   `max_ack_pending` = herald's `max_in_flight` (`--max-in-flight`, default 256), ack
//!   wait 30 s), read with `stream().max_messages_per_batch(min(256, max_in_flight))`
//!   (herald's `fetch_batch` clamped the same way), `ack()` per message.
//!   herald runs with its default [`AckMode`](herald_nats::config::AckMode).

use std::{future::IntoFuture as _, hint::black_box, time::Duration, time::Instant};

use async_nats::{
    HeaderMap, Subject,
    jetstream::{self, consumer::pull, message::PublishMessage},
};
use futures::{StreamExt, stream::FuturesUnordered};
use herald_core::{Subscriber, message::names};
use herald_nats::{NatsBroker, NatsConfig, mapping};

use crate::{
    cli::{Scenario, System},
    herald_side,
    workload::{Measured, Result, Workload, drain_limit, env, unique},
};

/// Runs one system once.
pub async fn run(system: System, scenario: Scenario, w: &Workload) -> Result<Measured> {
    let url = env("HERALD_NATS_URL")?;
    let mut config = NatsConfig::new(&url);
    config.publish.max_pending_acks = w.window;
    let broker = NatsBroker::connect(config).await?;
    let topic = unique(scenario, system, "");
    broker.ensure_topic(&topic).await?;
    let r = run_on(system, scenario, w, &broker, &url, &topic).await;
    if let Err(e) = broker.delete_topic(&topic).await {
        eprintln!("herald-bench: deleting {topic}: {e}");
    }
    r
}

async fn run_on(
    system: System,
    scenario: Scenario,
    w: &Workload,
    broker: &NatsBroker,
    url: &str,
    topic: &str,
) -> Result<Measured> {
    let group = format!("{topic}-g");
    let total = w.warmup + w.messages;
    match (system, scenario) {
        (System::Herald, Scenario::Publish) => {
            let p = broker.publisher();
            let m = herald_side::publish_run(&p, topic, w).await?;
            check_stored(broker, topic, total).await?;
            Ok(m)
        }
        (System::Raw, Scenario::Publish) => {
            let raw = Raw::connect(url, topic, w).await?;
            raw.publish(w, 0, w.warmup).await?;
            let start = Instant::now();
            raw.publish(w, w.warmup, total).await?;
            let m = Measured::since(start, w.messages);
            check_stored(broker, topic, total).await?;
            Ok(m)
        }
        (System::Herald, Scenario::Consume) => {
            herald_side::publish(&broker.publisher(), topic, w, 0, total).await?;
            let mut sub = broker.subscriber().subscribe(w.spec(topic, &group)).await?;
            let m = herald_side::consume(&mut sub, w).await?;
            sub.close().await?;
            Ok(m)
        }
        (System::Raw, Scenario::Consume) => {
            herald_side::publish(&broker.publisher(), topic, w, 0, total).await?;
            let raw = Raw::connect(url, topic, w).await?;
            let mut messages = raw.consumer(topic, &group, w.max_in_flight).await?;
            raw_drain(&mut messages, w, w.warmup).await?;
            let start = Instant::now();
            raw_drain(&mut messages, w, w.messages).await?;
            let m = Measured::since(start, w.messages);
            raw.client.flush().await?;
            Ok(m)
        }
        (System::Herald, Scenario::Roundtrip) => {
            let mut sub = broker.subscriber().subscribe(w.spec(topic, &group)).await?;
            let m = herald_side::roundtrip(broker.publisher(), &mut sub, topic, w).await?;
            sub.close().await?;
            Ok(m)
        }
        (System::Raw, Scenario::Roundtrip) => {
            let raw = Raw::connect(url, topic, w).await?;
            let mut messages = raw.consumer(topic, &group, w.max_in_flight).await?;
            raw.publish(w, 0, w.warmup).await?;
            raw_drain(&mut messages, w, w.warmup).await?;
            let (publisher, w2) = (raw.clone(), w.clone());
            let start = Instant::now();
            let task = tokio::spawn(async move { publisher.publish(&w2, w2.warmup, total).await });
            raw_drain(&mut messages, w, w.messages).await?;
            let m = Measured::since(start, w.messages);
            task.await??;
            raw.client.flush().await?;
            Ok(m)
        }
    }
}

/// The raw client of one run: its own connection, the JetStream context, the subjects.
#[derive(Clone)]
struct Raw {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Vec<Subject>,
}

impl Raw {
    async fn connect(url: &str, topic: &str, w: &Workload) -> Result<Self> {
        let client = async_nats::connect(url).await?;
        // The context's own in-flight bound is above the window, so the window binds.
        let js = jetstream::context::ContextBuilder::new()
            .max_ack_inflight(w.window * 2 + 16)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let subjects = w
            .keys
            .iter()
            .map(|k| Subject::from(mapping::subject(topic, Some(k))))
            .collect();
        Ok(Self {
            client,
            js,
            subjects,
        })
    }

    /// Publishes messages `from..to` with at most `window` PubAcks outstanding.
    async fn publish(&self, w: &Workload, from: usize, to: usize) -> Result<()> {
        let mut acks = FuturesUnordered::new();
        for i in from..to {
            if acks.len() >= w.window
                && let Some(r) = acks.next().await
            {
                let _: jetstream::publish::PublishAck = r?;
            }
            let id = uuid::Uuid::now_v7().to_string();
            let message = if w.raw_envelope {
                let mut h = HeaderMap::new();
                h.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                h.insert(names::CE_ID, id.as_str());
                h.insert(names::CE_SPECVERSION, "1.0");
                PublishMessage::build()
                    .payload(w.payload.clone())
                    .headers(h)
            } else {
                PublishMessage::build()
                    .payload(w.payload.clone())
                    .message_id(&id)
            };
            let subject = self.subjects[i % self.subjects.len()].clone();
            let ack = self.js.send_publish(subject, message).await?;
            acks.push(ack.into_future());
        }
        while let Some(r) = acks.next().await {
            r?;
        }
        Ok(())
    }

    /// A durable pull consumer with herald's consumer settings, and its message stream.
    async fn consumer(
        &self,
        topic: &str,
        group: &str,
        max_in_flight: usize,
    ) -> Result<pull::Stream> {
        let stream = self.js.get_stream(mapping::stream_name(topic)).await?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(mapping::consumer_name(group)),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: i64::try_from(max_in_flight).unwrap_or(i64::MAX),
                ..Default::default()
            })
            .await?;
        Ok(consumer
            .stream()
            .max_messages_per_batch(max_in_flight.min(256))
            .expires(Duration::from_secs(30))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await?)
    }
}

/// Handles `n` messages: checks the payload size, acks each one.
async fn raw_drain(messages: &mut pull::Stream, w: &Workload, n: usize) -> Result<()> {
    let size = w.payload.len();
    let mut done = 0usize;
    let work = async {
        while done < n {
            let m = messages
                .next()
                .await
                .ok_or("the pull stream ended early")??;
            let len = black_box(m.payload.len());
            if len != size {
                return Err(format!("payload of {len} bytes, expected {size}").into());
            }
            m.ack().await?;
            done += 1;
        }
        Ok::<_, crate::workload::BoxError>(())
    };
    let limit = drain_limit(n);
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("raw handled {done} of {n} messages in {limit:?}").into()),
    }
}

/// Checks that the stream holds exactly `expected` messages (duplicate window: no
/// duplicates; nothing lost).
async fn check_stored(broker: &NatsBroker, topic: &str, expected: usize) -> Result<()> {
    let mut stream = broker
        .jetstream()
        .get_stream(mapping::stream_name(topic))
        .await?;
    let stored = stream.info().await?.state.messages;
    if stored != expected as u64 {
        return Err(format!("the stream holds {stored} messages, expected {expected}").into());
    }
    Ok(())
}
