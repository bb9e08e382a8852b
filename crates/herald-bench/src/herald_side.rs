//! The herald side of every transport: only the `Publisher` / `Subscriber` contract, so
//! the same code runs on memory, Kafka and NATS.

use std::{hint::black_box, time::Instant};

use futures::{StreamExt, TryStreamExt, stream};
use herald_core::{Publisher, Subscription};

use crate::workload::{Measured, Result, Workload, drain_limit};

/// Publishes messages `from..to` in `publish` calls of `batch` messages each, `calls` of
/// them in flight at once (each resolves when the broker acknowledged its whole batch) —
/// how a producer that wants throughput uses a batch API.
pub async fn publish<P: Publisher + ?Sized>(
    publisher: &P,
    topic: &str,
    w: &Workload,
    from: usize,
    to: usize,
) -> Result<()> {
    stream::iter((from..to).step_by(w.batch.max(1)))
        .map(|i| publisher.publish(topic, w.batch(i, (i + w.batch).min(to))))
        .buffered(w.calls.max(1))
        .try_for_each(|()| async { Ok(()) })
        .await?;
    Ok(())
}

/// Handles `n` deliveries: checks the payload size, then `ack()`s each one.
pub async fn drain(sub: &mut Subscription, w: &Workload, n: usize) -> Result<()> {
    let size = w.payload.len();
    let mut done = 0usize;
    let work = async {
        while done < n {
            let d = sub.next().await.ok_or("the subscription ended early")??;
            let len = black_box(d.message.payload.len());
            if len != size {
                return Err(format!("payload of {len} bytes, expected {size}").into());
            }
            d.ack().await?;
            done += 1;
        }
        Ok(())
    };
    let limit = drain_limit(n);
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("herald handled {done} of {n} deliveries in {limit:?}").into()),
    }
}

/// Consume scenario on a topic pre-filled with `warmup + messages`: the warm-up
/// deliveries untimed, then the timed ones.
pub async fn consume(sub: &mut Subscription, w: &Workload) -> Result<Measured> {
    drain(sub, w, w.warmup).await?;
    let start = Instant::now();
    drain(sub, w, w.messages).await?;
    Ok(Measured::since(start, w.messages))
}

/// Publish scenario: the warm-up, then the timed messages.
pub async fn publish_run<P: Publisher + ?Sized>(
    publisher: &P,
    topic: &str,
    w: &Workload,
) -> Result<Measured> {
    publish(publisher, topic, w, 0, w.warmup).await?;
    let start = Instant::now();
    publish(publisher, topic, w, w.warmup, w.warmup + w.messages).await?;
    Ok(Measured::since(start, w.messages))
}

/// Roundtrip scenario with a subscription already open: publish and handle the warm-up,
/// then publish (in a task) and handle the timed messages concurrently, until the last
/// one is handled.
pub async fn roundtrip<P: Publisher + Clone + 'static>(
    publisher: P,
    sub: &mut Subscription,
    topic: &str,
    w: &Workload,
) -> Result<Measured> {
    publish(&publisher, topic, w, 0, w.warmup).await?;
    drain(sub, w, w.warmup).await?;
    let (from, to) = (w.warmup, w.warmup + w.messages);
    let (t, w2) = (topic.to_owned(), w.clone());
    let start = Instant::now();
    let task = tokio::spawn(async move { publish(&publisher, &t, &w2, from, to).await });
    drain(sub, w, w.messages).await?;
    let m = Measured::since(start, w.messages);
    task.await??;
    Ok(m)
}
