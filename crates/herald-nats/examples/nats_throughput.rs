//! Rough throughput check: herald-nats against raw async-nats on the same server, same run.
//!
//! ```text
//! HERALD_NATS_URL=nats://127.0.0.1:4222 cargo run -p herald-nats --example nats_throughput -- 50000 256
//! ```
//! Arguments: message count (default 50 000) and payload size (default 256 bytes). Creates
//! and deletes its own streams. The proper benchmark lives in `herald-bench`; this is a
//! quick look while working on the adapter.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use bytes::Bytes;
use futures::StreamExt;
use herald_core::{Message, Publisher, SubscribeSpec, Subscriber};
use herald_nats::{NatsBroker, NatsConfig, config::AckMode, mapping};

const WINDOW: usize = 256;

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// CPU time of this process so far (user + system), from /proc; zero elsewhere.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|x| x.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10)
}

/// Wall time and CPU time of `f`.
async fn timed<F: std::future::Future<Output = Duration>>(f: F) -> (Duration, Duration) {
    let c = cpu();
    let wall = f.await;
    (wall, cpu() - c)
}

fn report(what: &str, n: usize, raw: (Duration, Duration), herald: (Duration, Duration)) {
    println!(
        "{what:<28} raw {:>8.0} msg/s {:>5.1} us cpu/msg | herald {:>8.0} msg/s {:>5.1} us cpu/msg | wall ratio {:.3} cpu ratio {:.3}",
        rate(n, raw.0),
        raw.1.as_secs_f64() * 1e6 / n as f64,
        rate(n, herald.0),
        herald.1.as_secs_f64() * 1e6 / n as f64,
        raw.0.as_secs_f64() / herald.0.as_secs_f64(),
        raw.1.as_secs_f64() / herald.1.as_secs_f64().max(1e-9),
    );
}

async fn raw_publish(
    js: &jetstream::Context,
    subject: &str,
    n: usize,
    payload: &Bytes,
) -> Duration {
    let start = Instant::now();
    let mut pending = std::collections::VecDeque::with_capacity(WINDOW);
    for _ in 0..n {
        if pending.len() == WINDOW {
            let ack: jetstream::context::PublishAckFuture = pending.pop_front().expect("ack");
            ack.await.expect("puback");
        }
        let id = uuid::Uuid::now_v7().to_string();
        // The same headers herald writes, so the comparison is of code, not of bytes.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("ce-id", id.clone());
        headers.insert("ce-specversion", "1.0");
        let ack = js
            .send_publish(
                subject.to_owned(),
                PublishMessage::build()
                    .payload(payload.clone())
                    .headers(headers)
                    .message_id(id),
            )
            .await
            .expect("publish");
        pending.push_back(ack);
    }
    for ack in pending {
        ack.await.expect("puback");
    }
    start.elapsed()
}

async fn raw_consume(js: &jetstream::Context, stream_name: &str, n: usize) -> Duration {
    let stream = js.get_stream(stream_name).await.expect("stream");
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            max_ack_pending: WINDOW as i64,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let start = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(WINDOW)
        .messages()
        .await
        .expect("messages");
    for _ in 0..n {
        let m = messages.next().await.expect("message").expect("ok");
        m.ack().await.expect("ack");
    }
    start.elapsed()
}

async fn herald_consume(broker: &NatsBroker, topic: &str, group: &str, n: usize) -> Duration {
    let start = Instant::now();
    let mut sub = broker
        .subscribe(SubscribeSpec::new(topic, group).max_in_flight(WINDOW))
        .await
        .expect("subscribe");
    for _ in 0..n {
        let d = sub.next().await.expect("delivery").expect("ok");
        d.ack().await.expect("ack");
    }
    sub.close().await.expect("close");
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let url = std::env::var("HERALD_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let payload = Bytes::from(vec![b'x'; size]);

    let client = async_nats::connect(&url).await.expect("connect");
    let js = jetstream::new(client);
    let raw_stream = format!("bench_raw_{}", std::process::id());
    js.create_stream(stream::Config {
        name: raw_stream.clone(),
        subjects: vec![format!("{raw_stream}.*")],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("raw stream");

    let topic = format!("bench.herald{}", std::process::id());
    let mut modes = Vec::new();
    for mode in [AckMode::Pipelined, AckMode::Confirmed] {
        let mut cfg = NatsConfig::new(&url);
        cfg.consumer.ack_mode = mode;
        modes.push((mode, NatsBroker::connect(cfg).await.expect("connect")));
    }
    let broker = modes[0].1.clone();
    broker.ensure_topic(&topic).await.expect("topic");

    let raw_pub = timed(raw_publish(&js, &format!("{raw_stream}.k"), n, &payload)).await;
    let herald_pub = timed(async {
        let start = Instant::now();
        let batch = 1000;
        let mut left = n;
        while left > 0 {
            let k = left.min(batch);
            let msgs: Vec<_> = (0..k)
                .map(|_| Message::new(payload.clone()).with_key("k"))
                .collect();
            broker.publish(&topic, msgs).await.expect("publish");
            left -= k;
        }
        start.elapsed()
    })
    .await;
    report("publish", n, raw_pub, herald_pub);

    let raw_con = timed(raw_consume(&js, &raw_stream, n)).await;
    for (i, (mode, b)) in modes.iter().enumerate() {
        let d = timed(herald_consume(b, &topic, &format!("g{i}"), n)).await;
        report(&format!("consume ({mode:?} acks)"), n, raw_con, d);
    }

    let _ = js.delete_stream(&raw_stream).await;
    let _ = broker.delete_topic(&topic).await;
    let _ = mapping::stream_name(&topic);
}
