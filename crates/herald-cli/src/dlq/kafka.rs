//! The Kafka side of `herald dlq`: read with [`super::kafka_read`], republish
//! with herald-kafka's publisher, and mark entries replayed by committing the replay
//! group's offset (plus the offsets replayed beyond it, in the commit's metadata).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use herald_core::Publisher;
use herald_kafka::KafkaPublisher;
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer},
};

use super::{
    Entry, Position,
    kafka_read::{self, Part},
};
use crate::Failure;

/// Metadata longer than this is not written (brokers refuse more than
/// `offset.metadata.max.bytes`, 4096 by default): the entries it would have listed are
/// shown again and replayed again by the next run (same ids).
const MAX_METADATA: usize = 3000;

pub(crate) struct KafkaDlq {
    brokers: String,
    group: String,
    publisher: Option<KafkaPublisher>,
    /// Partition states of the topic last read.
    parts: BTreeMap<i32, Part>,
    committer: Option<Arc<BaseConsumer>>,
}

impl KafkaDlq {
    pub(crate) fn new(brokers: String, group: String) -> Self {
        Self {
            brokers,
            group,
            publisher: None,
            parts: BTreeMap::new(),
            committer: None,
        }
    }

    pub(crate) async fn read(&mut self, topic: &str) -> Result<Vec<Entry>, Failure> {
        let (brokers, group, t) = (self.brokers.clone(), self.group.clone(), topic.to_owned());
        let pending =
            tokio::task::spawn_blocking(move || kafka_read::read_pending(&brokers, &group, &t))
                .await
                .map_err(|e| Failure::Runtime(e.to_string()))?
                .map_err(|e| {
                    if e.contains("does not exist") {
                        Failure::Input(e)
                    } else {
                        Failure::Runtime(e)
                    }
                })?;
        self.parts = pending.parts;
        Ok(pending
            .records
            .into_iter()
            .map(|r| Entry {
                message: r.message,
                position: Position::Kafka {
                    partition: r.partition,
                    offset: r.offset,
                },
            })
            .collect())
    }

    pub(crate) async fn publish(
        &mut self,
        target: &str,
        batch: &[(&Entry, herald_core::Message)],
    ) -> Result<(), Failure> {
        if self.publisher.is_none() {
            let p = KafkaPublisher::builder(self.brokers.clone())
                .linger(Duration::from_millis(1))
                .build()
                .map_err(|e| Failure::Runtime(format!("Kafka publisher: {e}")))?;
            self.publisher = Some(p);
        }
        let Some(publisher) = &self.publisher else {
            return Err(Failure::Runtime("no publisher".into()));
        };
        let messages = batch.iter().map(|(_, m)| m.clone()).collect();
        publisher
            .publish(target, messages)
            .await
            .map_err(|e| Failure::Runtime(format!("republishing to {target}: {e}")))
    }

    /// Whether the broker keeps offset-commit metadata, where replay records the entries it
    /// moved beyond the committed offset. Some Kafka-protocol brokers (Tansu) drop it.
    /// Commits every partition's current position again, with its current metadata (an
    /// empty record when there is none), and reads it back: nothing changes.
    pub(crate) async fn keeps_metadata(&mut self, topic: &str) -> Result<bool, Failure> {
        let mut tpl = TopicPartitionList::new();
        for (p, part) in &self.parts {
            let (pos, meta) = part.commit_position();
            let meta = if meta.is_empty() {
                kafka_read::DONE_PREFIX.to_owned()
            } else {
                meta
            };
            let mut el = tpl.add_partition(topic, *p);
            el.set_offset(Offset::Offset(pos))
                .map_err(|e| Failure::Runtime(format!("commit position: {e}")))?;
            el.set_metadata(meta);
        }
        if tpl.count() == 0 {
            return Ok(true);
        }
        let committer = self.committer()?;
        let (t, wanted) = (topic.to_owned(), tpl.clone());
        tokio::task::spawn_blocking(move || {
            committer.commit(&tpl, CommitMode::Sync)?;
            let mut ask = TopicPartitionList::new();
            for el in wanted.elements() {
                ask.add_partition(&t, el.partition());
            }
            let got = committer.committed_offsets(ask, kafka_read::REQUEST_TIMEOUT)?;
            Ok::<bool, rdkafka::error::KafkaError>(wanted.elements().iter().all(|w| {
                got.find_partition(&t, w.partition())
                    .is_some_and(|g| g.metadata() == w.metadata())
            }))
        })
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?
        .map_err(|e| Failure::Runtime(format!("checking the replay position: {e}")))
    }

    fn committer(&mut self) -> Result<Arc<BaseConsumer>, Failure> {
        if let Some(c) = &self.committer {
            return Ok(c.clone());
        }
        let c = kafka_read::consumer(&self.brokers, &self.group)
            .map_err(|e| Failure::Runtime(format!("creating the replay consumer: {e}")))?;
        let c = Arc::new(c);
        self.committer = Some(c.clone());
        Ok(c)
    }

    /// Marks `entries` replayed: commits the replay group's new positions.
    pub(crate) async fn remove(&mut self, topic: &str, entries: &[&Entry]) -> Result<(), Failure> {
        let mut touched = Vec::new();
        for e in entries {
            if let Position::Kafka { partition, offset } = e.position
                && let Some(part) = self.parts.get_mut(&partition)
            {
                part.done.insert(offset);
                if !touched.contains(&partition) {
                    touched.push(partition);
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for p in touched {
            let Some(part) = self.parts.get(&p) else {
                continue;
            };
            let (pos, mut meta) = part.commit_position();
            if meta.len() > MAX_METADATA {
                eprintln!(
                    "herald: {topic}/{p}: too many replayed entries behind a kept one to record; \
                     they stay listed and a later replay republishes them again (same ids)"
                );
                meta.clear();
            }
            let mut el = tpl.add_partition(topic, p);
            el.set_offset(Offset::Offset(pos))
                .map_err(|e| Failure::Runtime(format!("commit position: {e}")))?;
            el.set_metadata(meta);
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let committer = self.committer()?;
        tokio::task::spawn_blocking(move || committer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| Failure::Runtime(e.to_string()))?
            .map_err(|e| Failure::Runtime(format!("committing the replay position: {e}")))
    }
}
