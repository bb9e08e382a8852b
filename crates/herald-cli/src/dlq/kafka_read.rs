//! Reads what a Kafka consumer group has not consumed yet, without consuming it.
//!
//! For each partition of the topic: from the group's committed offset (the low watermark
//! when there is none, or when retention moved past it) to the partition's end, with a
//! consumer that assigns the partitions itself — it never joins the group and never
//! commits. The end is where the fetch reports end of partition (librdkafka's partition
//! EOF, from the fetch response's high watermark): some Kafka-protocol brokers (Tansu)
//! answer ListOffsets with the last *batch*'s offset, so the watermark query alone
//! would stop early. Offsets recorded as done in the commit's metadata (see
//! [`encode_done`]) are skipped.
//!
//! Self-contained (herald-core, herald-kafka, rdkafka) so the integration tests can
//! include it: it is also the [`Backlog`](herald_core::retry_topics::Backlog) that rebuilds
//! ordered retry's parked keys from Kafka retry topics.

use std::{
    collections::{BTreeMap, BTreeSet},
    panic::{AssertUnwindSafe, catch_unwind},
    time::{Duration, Instant},
};

use bytes::Bytes;
use herald_core::{Headers, Message};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::{BorrowedMessage, Headers as _, Message as _},
    types::RDKafkaErrorCode,
};

/// How long one broker request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long reading may go without receiving anything before it gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Prefix of the commit metadata that lists offsets done beyond the committed one.
pub(crate) const DONE_PREFIX: &str = "herald-done:";

/// One record read.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) message: Message,
}

/// A partition's state as read.
#[derive(Clone, Debug, Default)]
pub(crate) struct Part {
    /// Every offset read from the committed position to the high watermark, in order
    /// (including offsets skipped because the metadata marks them done).
    pub(crate) offsets: Vec<i64>,
    /// Offsets done beyond the committed position.
    pub(crate) done: BTreeSet<i64>,
    /// The offset after the last one read (where reading started when nothing was).
    pub(crate) high: i64,
}

impl Part {
    /// Where the committed offset goes after `done` changed: the first offset read that is
    /// not done, or the high watermark when all are; and the metadata listing the done
    /// offsets beyond it.
    pub(crate) fn commit_position(&self) -> (i64, String) {
        let pos = self
            .offsets
            .iter()
            .copied()
            .find(|o| !self.done.contains(o))
            .unwrap_or(self.high);
        let beyond: BTreeSet<i64> = self.done.range(pos..).copied().collect();
        (pos, encode_done(&beyond))
    }
}

/// Everything read from one topic.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pending {
    /// The records not consumed and not marked done, per partition in offset order.
    pub(crate) records: Vec<Record>,
    /// Per partition.
    pub(crate) parts: BTreeMap<i32, Part>,
}

/// `herald-done:3-5,9` for {3, 4, 5, 9}; empty for none.
pub(crate) fn encode_done(done: &BTreeSet<i64>) -> String {
    if done.is_empty() {
        return String::new();
    }
    let mut out = String::from(DONE_PREFIX);
    let mut it = done.iter().copied().peekable();
    let mut first = true;
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end += 1;
            it.next();
        }
        if !first {
            out.push(',');
        }
        first = false;
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
    }
    out
}

/// The offsets listed by [`encode_done`]; anything else (other tools' metadata) is none.
pub(crate) fn decode_done(s: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    let Some(list) = s.strip_prefix(DONE_PREFIX) else {
        return out;
    };
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let range = match part.split_once('-') {
            Some((a, b)) => a.parse::<i64>().ok().zip(b.parse::<i64>().ok()),
            None => part.parse::<i64>().ok().map(|a| (a, a)),
        };
        match range {
            // Bounded: metadata is small, but never trust its ranges with memory.
            Some((a, b)) if a <= b && b - a < 1_000_000 => out.extend(a..=b),
            _ => return BTreeSet::new(),
        }
    }
    out
}

/// A consumer of `group` that never commits by itself.
pub(crate) fn consumer(brokers: &str, group: &str) -> Result<BaseConsumer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("allow.auto.create.topics", "false")
        .create()
}

fn header_at<H: rdkafka::message::Headers>(h: &H, i: usize) -> Option<(String, Bytes)> {
    // rdkafka panics on a header name that is not UTF-8 (a foreign producer can send one).
    let hd = catch_unwind(AssertUnwindSafe(|| h.try_get(i)))
        .ok()
        .flatten()?;
    Some((
        hd.key.to_owned(),
        Bytes::copy_from_slice(hd.value.unwrap_or_default()),
    ))
}

/// herald's message from a record: the CloudEvents Kafka binding backwards (`ce_id` is the
/// id, `ce_x` headers are `ce-x`), as herald-kafka's subscriber does.
pub(crate) fn to_message(topic: &str, msg: &BorrowedMessage<'_>) -> Message {
    let mut id = None;
    let mut headers = Headers::new();
    if let Some(h) = msg.headers() {
        for i in 0..h.count() {
            let Some((name, value)) = header_at(h, i) else {
                continue;
            };
            if name == "ce_id" {
                if let Ok(s) = std::str::from_utf8(&value) {
                    id = Some(s.to_owned());
                    continue;
                }
            } else if name == "ce_specversion" {
                continue;
            }
            match name.strip_prefix("ce_") {
                Some(attr) => headers.append(format!("ce-{attr}"), value),
                None => headers.append(name, value),
            }
        }
    }
    Message {
        id: id.unwrap_or_else(|| {
            herald_kafka::wire::fallback_id(topic, msg.partition(), msg.offset())
        }),
        key: msg.key().map(Bytes::copy_from_slice),
        headers,
        payload: Bytes::copy_from_slice(msg.payload().unwrap_or_default()),
    }
}

/// Reads the records of `topic` that `group` has not consumed (see the module docs).
/// Blocking.
pub(crate) fn read_pending(brokers: &str, group: &str, topic: &str) -> Result<Pending, String> {
    let c = consumer(brokers, group).map_err(|e| format!("creating a consumer: {e}"))?;
    let md = c
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Err(format!("topic {topic} does not exist"));
    };
    if let Some(err) = t.error() {
        let code = RDKafkaErrorCode::from(err);
        return Err(match code {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                format!("topic {topic} does not exist")
            }
            other => format!("metadata of {topic}: {other}"),
        });
    }
    let partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    let mut ask = TopicPartitionList::new();
    for p in &partitions {
        ask.add_partition(topic, *p);
    }
    let committed = c
        .committed_offsets(ask, REQUEST_TIMEOUT)
        .map_err(|e| format!("committed offsets of {group} on {topic}: {e}"))?;
    let mut pending = Pending::default();
    let mut assign = TopicPartitionList::new();
    let mut open: BTreeSet<i32> = BTreeSet::new();
    for p in partitions {
        let (low, _) = c
            .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
            .map_err(|e| format!("watermarks of {topic}/{p}: {e}"))?;
        let (start, done) = match committed.find_partition(topic, p) {
            Some(e) => {
                let start = match e.offset() {
                    Offset::Offset(o) => o.max(low),
                    _ => low,
                };
                let meta =
                    catch_unwind(AssertUnwindSafe(|| e.metadata().to_owned())).unwrap_or_default();
                (start, decode_done(&meta))
            }
            None => (low, BTreeSet::new()),
        };
        pending.parts.insert(
            p,
            Part {
                offsets: Vec::new(),
                done,
                high: start,
            },
        );
        assign
            .add_partition_offset(topic, p, Offset::Offset(start))
            .map_err(|e| format!("assigning {topic}/{p}: {e}"))?;
        open.insert(p);
    }
    if open.is_empty() {
        return Ok(pending);
    }
    c.assign(&assign)
        .map_err(|e| format!("assigning {topic}: {e}"))?;
    let mut last_progress = Instant::now();
    while !open.is_empty() {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                last_progress = Instant::now();
                let (p, o) = (msg.partition(), msg.offset());
                let Some(part) = pending.parts.get_mut(&p) else {
                    continue;
                };
                if o < part.high {
                    continue;
                }
                part.offsets.push(o);
                part.high = o + 1;
                if !part.done.contains(&o) {
                    pending.records.push(Record {
                        partition: p,
                        offset: o,
                        message: to_message(topic, &msg),
                    });
                }
            }
            // The end of what the partition held when the fetch answered.
            Some(Err(KafkaError::PartitionEOF(p))) => {
                last_progress = Instant::now();
                open.remove(&p);
            }
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            None => {
                if last_progress.elapsed() > STALL_TIMEOUT {
                    return Err(format!(
                        "reading {topic}: nothing received for {STALL_TIMEOUT:?} while partitions {:?} were not read to their end",
                        open.iter().collect::<Vec<_>>()
                    ));
                }
            }
        }
    }
    let _ = c.unassign();
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_offsets_roundtrip_as_ranges() {
        let done: BTreeSet<i64> = [3, 4, 5, 9, 11, 12].into_iter().collect();
        let s = encode_done(&done);
        assert_eq!(s, "herald-done:3-5,9,11-12");
        assert_eq!(decode_done(&s), done);
        assert!(decode_done("").is_empty());
        assert!(decode_done("someone else's metadata").is_empty());
        assert!(decode_done("herald-done:5-2").is_empty());
        assert!(decode_done("herald-done:0-99999999999").is_empty());
        assert_eq!(encode_done(&BTreeSet::new()), "");
    }

    #[test]
    fn commit_position_stops_at_the_first_entry_not_done() {
        let mut part = Part {
            offsets: vec![10, 11, 12, 13, 14],
            done: BTreeSet::new(),
            high: 15,
        };
        assert_eq!(part.commit_position(), (10, String::new()));
        part.done.extend([10, 11, 13]);
        assert_eq!(part.commit_position(), (12, "herald-done:13".to_owned()));
        part.done.extend([12, 14]);
        assert_eq!(part.commit_position(), (15, String::new()));
    }
}
