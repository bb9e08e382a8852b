//! The NATS side of `herald dlq`: read with an ephemeral ordered consumer (no acks, so
//! nothing is consumed), republish with a replay-specific `Nats-Msg-Id`, and delete the
//! DLQ stream's message by sequence after the PubAck.

use std::time::Duration;

use futures::StreamExt;
use herald_nats::{
    NatsBroker, NatsConfig,
    async_nats::{
        self,
        jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig},
    },
    mapping,
};

use super::{Entry, Position};
use crate::Failure;

/// How long reading may go without receiving anything before it gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) struct NatsDlq {
    broker: NatsBroker,
    /// The DLQ stream last read.
    stream: Option<jetstream::stream::Stream>,
}

fn runtime(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Runtime(format!("{what}: {e}"))
}

impl NatsDlq {
    pub(crate) async fn connect(url: &str) -> Result<Self, Failure> {
        let mut config = NatsConfig::new(url);
        // Never create or reconfigure streams from the CLI.
        config.auto_provision = false;
        let broker = NatsBroker::connect(config)
            .await
            .map_err(|e| runtime(&format!("connecting to {url}"), e))?;
        Ok(Self {
            broker,
            stream: None,
        })
    }

    pub(crate) async fn read(&mut self, topic: &str) -> Result<Vec<Entry>, Failure> {
        mapping::validate_topic(topic).map_err(Failure::Input)?;
        let name = mapping::stream_name(topic);
        let mut stream = match self.broker.jetstream().get_stream(&name).await {
            Ok(s) => s,
            Err(e) => {
                use async_nats::jetstream::context::GetStreamErrorKind as K;
                return Err(match e.kind() {
                    K::JetStream(api)
                        if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                    {
                        Failure::Input(format!("no stream {name} for topic {topic}"))
                    }
                    _ => runtime(&format!("stream {name}"), e),
                });
            }
        };
        let state = stream
            .info()
            .await
            .map_err(|e| runtime(&format!("stream {name}"), e))?
            .state
            .clone();
        self.stream = Some(stream.clone());
        if state.messages == 0 {
            return Ok(Vec::new());
        }
        let last = state.last_sequence;
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                description: Some("herald dlq (read-only)".into()),
                ..Default::default()
            })
            .await
            .map_err(|e| runtime("creating a read-only consumer", e))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| runtime("reading the stream", e))?;
        let mut out = Vec::with_capacity(usize::try_from(state.messages).unwrap_or(0));
        loop {
            let next = tokio::time::timeout(STALL_TIMEOUT, messages.next())
                .await
                .map_err(|_| {
                    runtime(
                        &format!("reading {name}"),
                        format!("nothing received for {STALL_TIMEOUT:?} before sequence {last}"),
                    )
                })?;
            let Some(m) = next else { break };
            let m = m.map_err(|e| runtime(&format!("reading {name}"), e))?;
            let seq = m
                .info()
                .map_err(|e| runtime("message info", e))?
                .stream_sequence;
            if seq > last {
                break;
            }
            let message = mapping::inbound(
                m.subject.as_str(),
                m.headers.as_ref(),
                m.payload.clone(),
                &name,
                seq,
            );
            out.push(Entry {
                message,
                position: Position::Nats { sequence: seq },
            });
            if seq >= last {
                break;
            }
        }
        Ok(out)
    }

    pub(crate) async fn publish(
        &mut self,
        target: &str,
        batch: &[(&Entry, herald_core::Message)],
    ) -> Result<(), Failure> {
        mapping::validate_topic(target).map_err(Failure::Input)?;
        let dlq_stream = self
            .stream
            .as_ref()
            .map(|s| s.cached_info().config.name.clone())
            .unwrap_or_default();
        let js = self.broker.jetstream();
        let mut acks = Vec::with_capacity(batch.len());
        for (entry, message) in batch {
            let Position::Nats { sequence } = entry.position else {
                continue;
            };
            let mut out = mapping::outbound(target, message.clone())
                .map_err(|e| Failure::Input(format!("{}: {e}", message.id)))?;
            // Not the original's Nats-Msg-Id (the target stream's duplicate window would
            // drop it), but one per DLQ entry, so a replay run again is dropped instead.
            out.headers.insert(
                "Nats-Msg-Id",
                format!("{}:replay:{dlq_stream}:{sequence}", message.id).as_str(),
            );
            let ack = js
                .publish_with_headers(out.subject, out.headers, out.payload)
                .await
                .map_err(|e| runtime(&format!("republishing to {target}"), e))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| {
                let msg = e.to_string();
                if msg.contains("no responders") || msg.contains("stream not found") {
                    Failure::Runtime(format!(
                        "republishing to {target}: no stream captures it (create the topic first): {msg}"
                    ))
                } else {
                    runtime(&format!("republishing to {target}"), msg)
                }
            })?;
        }
        Ok(())
    }

    pub(crate) async fn remove(&mut self, entries: &[&Entry]) -> Result<(), Failure> {
        let Some(stream) = &self.stream else {
            return Ok(());
        };
        for e in entries {
            if let Position::Nats { sequence } = e.position {
                // `false`/not found: already gone (a concurrent replay) — fine.
                if let Err(err) = stream.delete_message(sequence).await {
                    let text = err.to_string();
                    if !text.contains("no message found") {
                        return Err(runtime(&format!("deleting sequence {sequence}"), text));
                    }
                }
            }
        }
        Ok(())
    }
}
