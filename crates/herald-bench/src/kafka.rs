//! Kafka: herald-kafka against raw rdkafka with the same librdkafka settings.
//!
//! * Producer settings on both sides are herald's effective producer config
//!   (`enable.idempotence=true`, `acks=all`, `linger.ms=5`, `message.timeout.ms=30000`),
//!   taken from [`PublisherBuilder::effective_config`](herald_kafka::PublisherBuilder::effective_config).
//! * Raw publish: a `FutureProducer`, `send_result` for every message with at most
//!   `window` delivery futures outstanding (the oldest is awaited when the window is full
//!   or librdkafka's queue is), then the rest awaited.
//! * Consumer settings on both sides are herald's effective consumer config (session
//!   6 s, heartbeat 1 s, `enable.auto.offset.store=false`); the raw `StreamConsumer`
//!   stores each message's offset after handling it (`store_offset_from_message`) and
//!   auto-commits the stored offsets every second — herald commits what was acked every
//!   second too. With `--raw-envelope` it also reads each record's `ce_id` header into a
//!   string, the work herald does to give every message its id.
//! * Topics are created identically for both (herald's `KafkaAdmin::ensure_topic`), fresh
//!   per run, and deleted afterwards.

use std::{collections::VecDeque, hint::black_box, time::Duration, time::Instant};

use futures::StreamExt;
use herald_core::{Subscriber, dlq_topic};
use herald_kafka::{KafkaAdmin, KafkaConfig, KafkaPublisher, KafkaSubscriber};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer},
    error::KafkaError,
    message::{Header, Headers as _, Message as _, OwnedHeaders},
    producer::{DeliveryFuture, FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
};

use crate::{
    cli::{Scenario, System},
    herald_side,
    workload::{Measured, Result, STALL, Workload, drain_limit, env, unique},
};

/// Runs one system once.
pub async fn run(system: System, scenario: Scenario, w: &Workload) -> Result<Measured> {
    let brokers = env("HERALD_KAFKA_BROKERS")?;
    let config = KafkaConfig::new(&brokers);
    let admin = KafkaAdmin::new(&config)?;
    let topic = unique(scenario, system, "");
    admin.ensure_topic(&topic, w.partitions, 1).await?;
    let r = run_on(system, scenario, w, &config, &topic).await;
    let dlq = dlq_topic(&topic);
    if let Err(e) = admin.delete_topics(&[&topic, &dlq]).await {
        eprintln!("herald-bench: deleting {topic}: {e}");
    }
    r
}

async fn run_on(
    system: System,
    scenario: Scenario,
    w: &Workload,
    config: &KafkaConfig,
    topic: &str,
) -> Result<Measured> {
    let group = format!("{topic}-g");
    let total = w.warmup + w.messages;
    match (system, scenario) {
        (System::Herald, Scenario::Publish) => {
            let p = KafkaPublisher::from_config(config.clone()).build()?;
            let m = herald_side::publish_run(&p, topic, w).await?;
            check_stored(config, topic, w.partitions, total).await?;
            Ok(m)
        }
        (System::Raw, Scenario::Publish) => {
            let p = raw_producer(config)?;
            raw_publish(&p, topic, w, 0, w.warmup).await?;
            let start = Instant::now();
            raw_publish(&p, topic, w, w.warmup, total).await?;
            let m = Measured::since(start, w.messages);
            check_stored(config, topic, w.partitions, total).await?;
            Ok(m)
        }
        (System::Herald, Scenario::Consume) => {
            prefill(config, topic, w).await?;
            let s = KafkaSubscriber::from_config(config.clone()).build()?;
            let mut sub = s.subscribe(w.spec(topic, &group)).await?;
            let m = herald_side::consume(&mut sub, w).await?;
            sub.close().await?;
            Ok(m)
        }
        (System::Raw, Scenario::Consume) => {
            prefill(config, topic, w).await?;
            let c = raw_consumer(config, topic, &group)?;
            raw_drain(&c, w, w.warmup).await?;
            let start = Instant::now();
            raw_drain(&c, w, w.messages).await?;
            let m = Measured::since(start, w.messages);
            raw_close(c).await?;
            Ok(m)
        }
        (System::Herald, Scenario::Roundtrip) => {
            let p = KafkaPublisher::from_config(config.clone()).build()?;
            let s = KafkaSubscriber::from_config(config.clone()).build()?;
            let mut sub = s.subscribe(w.spec(topic, &group)).await?;
            let m = herald_side::roundtrip(p, &mut sub, topic, w).await?;
            sub.close().await?;
            Ok(m)
        }
        (System::Raw, Scenario::Roundtrip) => {
            let p = raw_producer(config)?;
            let c = raw_consumer(config, topic, &group)?;
            raw_publish(&p, topic, w, 0, w.warmup).await?;
            raw_drain(&c, w, w.warmup).await?;
            let (t, w2) = (topic.to_owned(), w.clone());
            let start = Instant::now();
            let task =
                tokio::spawn(async move { raw_publish(&p, &t, &w2, w2.warmup, total).await });
            raw_drain(&c, w, w.messages).await?;
            let m = Measured::since(start, w.messages);
            task.await??;
            raw_close(c).await?;
            Ok(m)
        }
    }
}

/// Fills the topic with the warm-up and timed messages through herald's publisher
/// (untimed), so both consumers read identical records.
async fn prefill(config: &KafkaConfig, topic: &str, w: &Workload) -> Result<()> {
    let p = KafkaPublisher::from_config(config.clone()).build()?;
    herald_side::publish(&p, topic, w, 0, w.warmup + w.messages).await
}

/// A raw producer with exactly herald's effective producer settings.
fn raw_producer(config: &KafkaConfig) -> Result<FutureProducer> {
    let cc = KafkaPublisher::from_config(config.clone())
        .effective_config()
        .to_client_config();
    Ok(cc.create()?)
}

fn queue_full(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    )
}

async fn settle(f: DeliveryFuture) -> Result<()> {
    match f.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e.into()),
        Err(_) => Err("delivery future canceled".into()),
    }
}

/// Raw publish of messages `from..to`: `send_result` each, at most `window` outstanding.
async fn raw_publish(
    p: &FutureProducer,
    topic: &str,
    w: &Workload,
    from: usize,
    to: usize,
) -> Result<()> {
    let mut inflight: VecDeque<DeliveryFuture> = VecDeque::with_capacity(w.window.min(to - from));
    for i in from..to {
        let id = w.raw_envelope.then(|| uuid::Uuid::now_v7().to_string());
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&w.payload[..])
            .key(&w.key(i)[..]);
        if let Some(id) = &id {
            record = record.headers(
                OwnedHeaders::new_with_capacity(2)
                    .insert(Header {
                        key: "ce_id",
                        value: Some(id.as_bytes()),
                    })
                    .insert(Header {
                        key: "ce_specversion",
                        value: Some(b"1.0".as_slice()),
                    }),
            );
        }
        loop {
            match p.send_result(record) {
                Ok(f) => {
                    inflight.push_back(f);
                    break;
                }
                Err((e, r)) if queue_full(&e) => {
                    record = r;
                    match inflight.pop_front() {
                        Some(f) => settle(f).await?,
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        if inflight.len() >= w.window
            && let Some(f) = inflight.pop_front()
        {
            settle(f).await?;
        }
    }
    for f in inflight {
        settle(f).await?;
    }
    Ok(())
}

/// A raw consumer with herald's effective consumer settings, storing offsets by hand and
/// auto-committing the stored ones every second.
fn raw_consumer(config: &KafkaConfig, topic: &str, group: &str) -> Result<StreamConsumer> {
    let mut cc = KafkaSubscriber::from_config(config.clone())
        .effective_config()
        .to_client_config();
    cc.set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false");
    let c: StreamConsumer = cc.create()?;
    c.subscribe(&[topic])?;
    Ok(c)
}

/// Handles `n` messages: checks the payload size, stores the offset.
async fn raw_drain(c: &StreamConsumer, w: &Workload, n: usize) -> Result<()> {
    let size = w.payload.len();
    let mut stream = c.stream();
    let mut done = 0usize;
    let work = async {
        while done < n {
            let m = stream
                .next()
                .await
                .ok_or("the consumer stream ended early")??;
            let len = black_box(m.payload().map_or(0, <[u8]>::len));
            if len != size {
                return Err(format!("payload of {len} bytes, expected {size}").into());
            }
            if w.raw_envelope {
                // What a consumer that dedupes does: read the message id.
                let id = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "ce_id"))
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .map(str::to_owned)
                    .ok_or("a record without a ce_id header")?;
                black_box(id);
            }
            c.store_offset_from_message(&m)?;
            done += 1;
        }
        Ok(())
    };
    let limit = drain_limit(n);
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("raw handled {done} of {n} messages in {limit:?}").into()),
    }
}

/// Commits the stored offsets and leaves the group. Nothing left to commit (the
/// auto-commit got there first) is success.
async fn raw_close(c: StreamConsumer) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        match c.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => return Err(e),
        }
        drop(c);
        Ok(())
    })
    .await??;
    Ok(())
}

/// Checks that the topic holds exactly `expected` records (idempotent producer: no
/// duplicates, nothing lost) by reading it back from the beginning of every partition.
///
/// Reading, not watermarks: Tansu reports a high watermark that stops at the start of a
/// partition's last batch.
async fn check_stored(
    config: &KafkaConfig,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Result<()> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("{topic}-verify"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let c: BaseConsumer = cc.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let stored = tokio::task::spawn_blocking(move || {
        let mut n = 0usize;
        let deadline = Instant::now() + STALL;
        // Everything expected, then a quiet moment to catch extra (duplicate) records.
        let mut quiet_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now >= deadline || quiet_until.is_some_and(|q| now >= q) {
                break;
            }
            match c.poll(Duration::from_millis(50)) {
                Some(Ok(_)) => {
                    n += 1;
                    if n >= expected && quiet_until.is_none() {
                        quiet_until = Some(Instant::now() + Duration::from_millis(300));
                    }
                }
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        Ok::<_, KafkaError>(n)
    })
    .await??;
    if stored != expected {
        return Err(format!("the topic holds {stored} records, expected {expected}").into());
    }
    Ok(())
}
