//! [`NatsPublisher`]: JetStream publishing with pipelined PubAcks.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use async_nats::{
    Subject,
    jetstream::{
        self,
        context::{ContextBuilder, PublishAckFuture, PublishErrorKind as NatsKind},
        message::PublishMessage,
    },
};
use futures::future::BoxFuture;
use herald_core::{Message, PublishError, PublishErrorKind, Publisher};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use crate::{broker::Shared, mapping};

/// Publishes to JetStream streams and waits for their PubAcks.
///
/// * Each message goes to `<topic>.<key-token>` ([`crate::mapping`]) with `Nats-Msg-Id` =
///   `ce-id` = the message id, so a republish inside the stream's duplicate window is
///   acknowledged but stored once.
/// * Publishing is pipelined: messages are written without waiting, and up to
///   [`max_pending_acks`](crate::config::PublishSettings::max_pending_acks) PubAcks — per
///   publisher, across concurrent calls — are awaited at once. `publish` returns when every
///   message of the call was acknowledged, or with the first error (later messages of the
///   batch are then not sent; earlier ones may have been stored: publish again, the
///   duplicate window makes that safe).
/// * With [`auto_provision`](crate::NatsConfig::auto_provision) the topic's streams are
///   created on first use.
///
/// Errors: no stream for the subject → [`UnknownTopic`](PublishErrorKind::UnknownTopic);
/// no PubAck in time → [`Timeout`](PublishErrorKind::Timeout); over the server's
/// `max_payload` or the stream's `max_msg_size` →
/// [`MessageTooLarge`](PublishErrorKind::MessageTooLarge); a topic, id or header name
/// NATS cannot carry → [`InvalidMessage`](PublishErrorKind::InvalidMessage).
///
/// # Examples
/// ```no_run
/// # async fn demo(broker: herald_nats::NatsBroker) -> Result<(), herald_core::PublishError> {
/// use herald_core::{Message, Publisher};
/// let publisher = broker.publisher();
/// publisher.publish("orders", vec![Message::new("{}").with_key("o-1")]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsPublisher {
    shared: Arc<Shared>,
    js: jetstream::Context,
    permits: Arc<Semaphore>,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsPublisher")
            .field("settings", &self.shared.config.publish)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl NatsPublisher {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let settings = &shared.config.publish;
        let bound = settings.max_pending_acks.max(1);
        // The context's own in-flight bound is never the limiting one (ours is), so it
        // cannot block a caller that holds unawaited acks.
        let js = ContextBuilder::new()
            .timeout(settings.ack_timeout)
            .ack_timeout(settings.ack_timeout)
            .max_ack_inflight(bound * 2 + 16)
            .backpressure_on_inflight(true)
            .build(shared.client.clone());
        Self {
            permits: Arc::new(Semaphore::new(bound)),
            closed: Arc::new(AtomicBool::new(false)),
            js,
            shared,
        }
    }

    async fn send_all(&self, topic: &str, messages: Vec<Message>) -> Result<(), PublishError> {
        let bound = self.shared.config.publish.max_pending_acks.max(1);
        let timeout = self.shared.config.publish.ack_timeout;
        let mut pending: VecDeque<(PublishAckFuture, OwnedSemaphorePermit, Subject, Instant)> =
            VecDeque::with_capacity(messages.len().min(bound));
        let mut first_err: Option<PublishError> = None;
        for message in messages {
            let out = match mapping::outbound(topic, message) {
                Ok(o) => o,
                Err(e) => {
                    first_err = Some(e);
                    break;
                }
            };
            // A permit per PubAck in flight; when none is free, settle our own oldest first
            // (never wait on a permit while holding unawaited acks of our own).
            let permit = loop {
                match self.permits.clone().try_acquire_owned() {
                    Ok(p) => break Some(p),
                    Err(_) => match pending.pop_front() {
                        Some(p) => {
                            if let Err(e) = settle(p).await {
                                first_err = Some(e);
                                break None;
                            }
                        }
                        None => break self.permits.clone().acquire_owned().await.ok(),
                    },
                }
            };
            if first_err.is_some() {
                break;
            }
            let Some(permit) = permit else {
                first_err = Some(closed());
                break;
            };
            let subject = Subject::from(out.subject);
            let publish = PublishMessage::build()
                .payload(out.payload)
                .headers(out.headers);
            match self.js.send_publish(subject.clone(), publish).await {
                // The PubAck deadline runs from the send, not from when it is awaited: acks
                // lost together (a dropped connection) then expire together instead of one
                // timeout after another.
                Ok(ack) => pending.push_back((ack, permit, subject, Instant::now() + timeout)),
                Err(e) => {
                    first_err = Some(map_error(e, &subject));
                    break;
                }
            }
        }
        while let Some(p) = pending.pop_front() {
            if let Err(e) = settle(p).await
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

async fn settle(
    (ack, permit, subject, deadline): (PublishAckFuture, OwnedSemaphorePermit, Subject, Instant),
) -> Result<(), PublishError> {
    let r = tokio::time::timeout_at(deadline, ack.into_future()).await;
    drop(permit);
    let Ok(r) = r else {
        return Err(PublishError::new(
            PublishErrorKind::Timeout,
            format!("subject {subject}: no PubAck in time"),
        ));
    };
    match r {
        Ok(ack) => {
            if ack.duplicate {
                tracing::debug!(%subject, stream = %ack.stream, seq = ack.sequence, "duplicate dropped by the server");
            }
            Ok(())
        }
        Err(e) => Err(map_error(e, &subject)),
    }
}

fn closed() -> PublishError {
    PublishError::new(PublishErrorKind::Closed, "publisher closed")
}

/// Maps async-nats' publish error to herald's kinds.
pub(crate) fn map_error(e: jetstream::context::PublishError, subject: &str) -> PublishError {
    let kind = match e.kind() {
        NatsKind::StreamNotFound => PublishErrorKind::UnknownTopic,
        NatsKind::TimedOut => PublishErrorKind::Timeout,
        NatsKind::BrokenPipe => PublishErrorKind::Connection,
        NatsKind::MaxPayloadExceeded => PublishErrorKind::MessageTooLarge,
        _ => {
            use std::error::Error as _;
            let api = e
                .source()
                .and_then(|s| s.downcast_ref::<jetstream::Error>())
                .map(|a| a.error_code());
            match api {
                Some(jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
                | Some(jetstream::ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM) => {
                    PublishErrorKind::MessageTooLarge
                }
                Some(jetstream::ErrorCode::STREAM_NOT_FOUND) => PublishErrorKind::UnknownTopic,
                Some(jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED)
                | Some(jetstream::ErrorCode::MEMORY_RESOURCES_EXCEEDED) => PublishErrorKind::Other,
                _ => PublishErrorKind::Other,
            }
        }
    };
    let message = match kind {
        PublishErrorKind::UnknownTopic => format!(
            "no stream captures subject {subject} (create the topic with ensure_topic or enable auto_provision)"
        ),
        _ => format!("subject {subject}: {e}"),
    };
    PublishError::new(kind, message).with_source(e)
}

impl Publisher for NatsPublisher {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            if self.closed.load(Ordering::Acquire) {
                return Err(closed());
            }
            mapping::validate_topic(topic)
                .map_err(|m| PublishError::new(PublishErrorKind::InvalidMessage, m))?;
            if messages.is_empty() {
                return Ok(());
            }
            let auto = self.shared.config.auto_provision;
            if auto && !self.shared.is_known(topic) {
                self.shared
                    .ensure_topic(topic)
                    .await
                    .map_err(crate::error::to_publish)?;
            }
            let r = self.send_all(topic, messages).await;
            if let Err(e) = &r
                && e.kind() == PublishErrorKind::UnknownTopic
            {
                // The stream went away (deleted); provision it again on the next publish.
                self.shared.forget(topic);
            }
            r
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            self.closed.store(true, Ordering::Release);
            // Publishes in progress hold permits until their PubAcks are in.
            let bound = self.shared.config.publish.max_pending_acks.max(1) as u32;
            let _all = self.permits.acquire_many(bound).await;
            Ok(())
        })
    }
}
