//! Reliability checks for herald: bad input never panics or wedges a consumer.
//!
//! Highlights:
//! - [`Collector`]: a subscription drained into a channel, so a test can wait (with a
//!   deadline, never a sleep) for the message it expects — the dead-lettered copy of a
//!   bad message, or the good message that proves the consumer is not stuck.
//! - [`within`]: runs a future under a deadline and turns a hang into a typed
//!   [`Hung`] error naming the step, so a wedged adapter fails a test instead of
//!   blocking it forever.
//! - The bad-input suite (`tests/bad_input.rs`) runs every case on the memory broker,
//!   Kafka (Tansu) and NATS JetStream.
//!
//! Non-goals: this crate is test tooling; services never depend on it.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use herald_chaos::{Collector, within};
//! use herald_core::{memory::MemoryBroker, Message, Publisher, SubscribeSpec};
//!
//! let broker = MemoryBroker::new();
//! let mut seen = Collector::start(&broker, SubscribeSpec::new("orders", "probe")).await?;
//! let m = Message::new("{}");
//! let id = m.id.clone();
//! within("publish", Duration::from_secs(5), broker.publish("orders", vec![m])).await??;
//! let got = seen.wait_for(Duration::from_secs(5), |m| m.id == id).await?;
//! assert_eq!(got.payload, "{}");
//! # Ok(()) }
//! ```
//!
//! # Features
//! None.

use std::{fmt, future::Future, time::Duration};

use futures::StreamExt;
use herald_core::{Message, SubscribeError, SubscribeSpec, Subscriber};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

/// A step that did not finish before its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hung {
    /// What was being waited for.
    pub step: String,
    /// The deadline it missed.
    pub after: Duration,
}

impl fmt::Display for Hung {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} did not finish within {:?}", self.step, self.after)
    }
}

impl std::error::Error for Hung {}

/// Runs `fut` with a deadline: `Err(Hung)` when it takes longer than `after`.
pub async fn within<F: Future>(
    step: impl Into<String>,
    after: Duration,
    fut: F,
) -> Result<F::Output, Hung> {
    tokio::time::timeout(after, fut).await.map_err(|_| Hung {
        step: step.into(),
        after,
    })
}

/// A subscription drained into a channel: every delivery is acked and its message kept.
pub struct Collector {
    rx: mpsc::UnboundedReceiver<Result<Message, SubscribeError>>,
    task: JoinHandle<()>,
    spec: SubscribeSpec,
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collector")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// Subscribes with `spec` and starts draining.
    ///
    /// # Errors
    /// The subscribe error, when the subscription cannot be made.
    pub async fn start<S: Subscriber + ?Sized>(
        subscriber: &S,
        spec: SubscribeSpec,
    ) -> Result<Self, SubscribeError> {
        let mut sub = subscriber.subscribe(spec.clone()).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(item) = sub.next().await {
                let out = match item {
                    Ok(d) => {
                        let m = d.message.clone();
                        let _ = d.ack().await;
                        Ok(m)
                    }
                    Err(e) => Err(e),
                };
                if tx.send(out).is_err() {
                    break;
                }
            }
            let _ = sub.close().await;
        });
        Ok(Self { rx, task, spec })
    }

    /// Waits until a message matching `pred` arrives (others are skipped).
    ///
    /// # Errors
    /// [`Hung`] when none arrives within `after` or the subscription ends first; a
    /// subscription error is reported in the `step`.
    pub async fn wait_for(
        &mut self,
        after: Duration,
        mut pred: impl FnMut(&Message) -> bool,
    ) -> Result<Message, Hung> {
        let deadline = Instant::now() + after;
        let mut last_err = None;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(m))) if pred(&m) => return Ok(m),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => last_err = Some(e.to_string()),
                Ok(None) | Err(_) => {
                    return Err(Hung {
                        step: format!(
                            "waiting for a message on {} (group {}){}",
                            self.spec.topic,
                            self.spec.group,
                            last_err
                                .map(|e| format!(", last subscription error: {e}"))
                                .unwrap_or_default()
                        ),
                        after,
                    });
                }
            }
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
