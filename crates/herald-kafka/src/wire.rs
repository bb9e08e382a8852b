//! Translation between herald's [`Message`] and Kafka records: the CloudEvents Kafka
//! binding for headers, and one copy of a consumed record into a shared buffer.
//!
//! # Headers (CloudEvents Kafka protocol binding, binary content mode)
//! herald keeps CloudEvents attributes under canonical names (`ce-id`, `ce-type`, …) in
//! [`Message::headers`]; on Kafka they are spelled with an underscore:
//!
//! | herald | Kafka record |
//! |---|---|
//! | [`Message::id`] | header `ce_id` |
//! | — | header `ce_specversion: 1.0` (always written) |
//! | header `ce-<attr>` | header `ce_<attr>` |
//! | header `content-type` | header `content-type` (unchanged) |
//! | any other header | same name, same bytes, same order, duplicates kept |
//! | [`Message::key`] | record key (`None` ↔ null key) |
//! | [`Message::payload`] | record value (a null value reads as empty) |
//!
//! On consume the mapping runs backwards: `ce_id` becomes [`Message::id`] (it is not
//! repeated in the headers); a record without a UTF-8 `ce_id` (written by a non-herald
//! producer) gets the deterministic id `<topic>-<partition>-<offset>`, so every
//! redelivery of it carries the same id and dedupe works. A header with a null value
//! reads as an empty value.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::{BufMut, Bytes};
use herald_core::{HeaderName, Headers, Message, message::names};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};

/// Kafka spelling of the id attribute.
pub const KAFKA_CE_ID: &str = "ce_id";
/// Kafka spelling of the spec version attribute.
pub const KAFKA_CE_SPECVERSION: &str = "ce_specversion";
/// The CloudEvents spec version herald writes.
pub const SPECVERSION: &str = "1.0";

const CANONICAL_PREFIX: &str = names::CE_PREFIX; // "ce-"
const KAFKA_PREFIX: &str = "ce_";

/// Whether a header name is unusable on Kafka (librdkafka treats names as C strings).
pub(crate) fn bad_header_name(name: &str) -> bool {
    name.as_bytes().contains(&0)
}

/// Builds the Kafka headers of `m`: `ce_id`, `ce_specversion`, then every header of
/// `m` in order with `ce-` names spelled `ce_`. `buf` is scratch space reused across
/// messages.
pub(crate) fn to_kafka_headers(m: &Message, buf: &mut String) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(m.headers.len() + 2);
    h = h.insert(Header {
        key: KAFKA_CE_ID,
        value: Some(m.id.as_bytes()),
    });
    h = h.insert(Header {
        key: KAFKA_CE_SPECVERSION,
        value: Some(SPECVERSION.as_bytes()),
    });
    for (name, value) in m.headers.iter() {
        if name == names::CE_ID || name == names::CE_SPECVERSION {
            continue;
        }
        let key = match name.strip_prefix(CANONICAL_PREFIX) {
            Some(attr) => {
                buf.clear();
                buf.push_str(KAFKA_PREFIX);
                buf.push_str(attr);
                buf.as_str()
            }
            None => name,
        };
        h = h.insert(Header {
            key,
            value: Some(&value[..]),
        });
    }
    h
}

/// A consumed record copied once into one shared buffer: the payload, the key and the
/// headers (`[name_len u32][name][value_len u32 | u32::MAX for null][value]`…).
///
/// The delivered [`Message`] slices its payload, key and header values out of the
/// buffer without further copies, and a nacked delivery rebuilds its message from the
/// same buffer.
#[derive(Clone, Debug)]
pub(crate) struct Raw {
    block: Bytes,
    payload_len: usize,
    key_len: Option<usize>,
    header_count: usize,
}

const NULL: u32 = u32::MAX;

/// Bytes reserved per header when a record is copied: the framing plus a `ce_id` and
/// its UUID fit; larger headers grow the buffer.
const HEADER_SIZE_GUESS: usize = 64;

/// Reads a header by index; `None` for a header rdkafka cannot represent (it panics on a
/// name that is not UTF-8, which a foreign producer can send).
fn header_at<'a, H: rdkafka::message::Headers>(h: &'a H, i: usize) -> Option<Header<'a, &'a [u8]>> {
    match catch_unwind(AssertUnwindSafe(|| h.try_get(i))) {
        Ok(h) => h,
        Err(_) => {
            tracing::warn!(index = i, "skipping a Kafka header whose name is not UTF-8");
            None
        }
    }
}

impl Raw {
    /// Copies the record's payload, key and headers, in one pass over the headers.
    pub(crate) fn capture(msg: &BorrowedMessage<'_>) -> Self {
        let payload = msg.payload().unwrap_or_default();
        let key = msg.key();
        let headers = msg.headers();
        let count = headers.map_or(0, |h| h.count());
        let mut block = Vec::with_capacity(
            payload.len() + key.map_or(0, <[u8]>::len) + count * HEADER_SIZE_GUESS,
        );
        block.extend_from_slice(payload);
        if let Some(k) = key {
            block.extend_from_slice(k);
        }
        let mut header_count = 0;
        if let Some(h) = headers {
            for i in 0..count {
                let Some(hd) = header_at(h, i) else { continue };
                let (Ok(nl), Ok(vl)) = (
                    u32::try_from(hd.key.len()),
                    u32::try_from(hd.value.map_or(0, <[u8]>::len)),
                ) else {
                    continue;
                };
                block.put_u32_le(nl);
                block.extend_from_slice(hd.key.as_bytes());
                match hd.value {
                    Some(v) if vl != NULL => {
                        block.put_u32_le(vl);
                        block.extend_from_slice(v);
                    }
                    _ => block.put_u32_le(NULL),
                }
                header_count += 1;
            }
        }
        Self {
            block: Bytes::from(block),
            payload_len: payload.len(),
            key_len: key.map(<[u8]>::len),
            header_count,
        }
    }

    /// Builds the herald message (see the module docs for the mapping).
    pub(crate) fn to_message(&self, topic: &str, partition: i32, offset: i64) -> Message {
        let block = &self.block;
        let payload = block.slice(..self.payload_len);
        let mut pos = self.payload_len;
        let key = self.key_len.map(|k| {
            let s = block.slice(pos..pos + k);
            pos += k;
            s
        });
        let mut id = None;
        let mut entries: Vec<(HeaderName, Bytes)> = Vec::with_capacity(self.header_count);
        let read_u32 = |at: usize| -> Option<u32> {
            let b = block.get(at..at + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        for _ in 0..self.header_count {
            let Some(nl) = read_u32(pos) else { break };
            let name_at = pos + 4;
            let name_end = name_at + nl as usize;
            let Some(name) = block.get(name_at..name_end) else {
                break;
            };
            let Some(vl) = read_u32(name_end) else { break };
            let value_at = name_end + 4;
            let value = if vl == NULL {
                pos = value_at;
                value_at..value_at
            } else {
                let end = value_at + vl as usize;
                if end > block.len() {
                    break;
                }
                pos = end;
                value_at..end
            };
            if name == KAFKA_CE_ID.as_bytes()
                && let Ok(s) = std::str::from_utf8(&block[value.clone()])
            {
                id = Some(s.to_owned());
                continue;
            }
            // Well-known names are recognised on their bytes: no UTF-8 check, no copy.
            let name = match known_name(name) {
                Some(n) => HeaderName::from_static(n),
                None => {
                    let Ok(name) = std::str::from_utf8(name) else {
                        break;
                    };
                    HeaderName::from(match name.strip_prefix(KAFKA_PREFIX) {
                        Some(attr) => {
                            let mut n = String::with_capacity(name.len());
                            n.push_str(CANONICAL_PREFIX);
                            n.push_str(attr);
                            n
                        }
                        None => name.to_owned(),
                    })
                }
            };
            let value = if value.is_empty() {
                Bytes::new()
            } else {
                block.slice(value)
            };
            entries.push((name, value));
        }
        let id = id.unwrap_or_else(|| fallback_id(topic, partition, offset));
        Message {
            id,
            key,
            headers: Headers::from_iter(entries),
            payload,
        }
    }

    /// Bytes held (for metrics and tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.block.len()
    }
}

/// The herald name of a well-known header ([`names::WELL_KNOWN`]) from its Kafka
/// spelling (`ce_type` for `ce-type`), compared on bytes: no UTF-8 check, no copy.
fn known_name(kafka: &[u8]) -> Option<&'static str> {
    names::WELL_KNOWN.iter().copied().find(|herald| {
        let h = herald.as_bytes();
        match h.strip_prefix(CANONICAL_PREFIX.as_bytes()) {
            Some(attr) => kafka.strip_prefix(KAFKA_PREFIX.as_bytes()) == Some(attr),
            None => kafka == h,
        }
    })
}

/// The id of a record that carries no `ce_id`: stable across redeliveries.
pub fn fallback_id(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}-{partition}-{offset}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same layout `capture` writes, built from plain parts (a `BorrowedMessage` needs a
    /// live consumer).
    fn raw_from(payload: &[u8], key: Option<&[u8]>, headers: &[(&str, Option<&[u8]>)]) -> Raw {
        let mut block = Vec::new();
        block.extend_from_slice(payload);
        if let Some(k) = key {
            block.extend_from_slice(k);
        }
        for (n, v) in headers {
            block.put_u32_le(n.len() as u32);
            block.extend_from_slice(n.as_bytes());
            match v {
                Some(v) => {
                    block.put_u32_le(v.len() as u32);
                    block.extend_from_slice(v);
                }
                None => block.put_u32_le(NULL),
            }
        }
        Raw {
            block: Bytes::from(block),
            payload_len: payload.len(),
            key_len: key.map(<[u8]>::len),
            header_count: headers.len(),
        }
    }

    fn kafka_pairs(h: &OwnedHeaders) -> Vec<(String, Vec<u8>)> {
        h.iter()
            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
            .collect()
    }

    /// The allocation-free names agree with the general rule (`ce_` → `ce-`, others
    /// unchanged), and the general rule is what a name outside the table gets.
    #[test]
    fn known_names_follow_the_rule() {
        for kafka in [
            "ce_specversion",
            "ce_type",
            "content-type",
            "traceparent",
            "causation-id",
        ] {
            let general = match kafka.strip_prefix(KAFKA_PREFIX) {
                Some(attr) => format!("{CANONICAL_PREFIX}{attr}"),
                None => kafka.to_owned(),
            };
            assert_eq!(
                known_name(kafka.as_bytes()),
                Some(general.as_str()),
                "{kafka}"
            );
        }
        // The canonical spelling of an attribute is not its Kafka spelling.
        assert_eq!(known_name(b"ce-type"), None);
        assert_eq!(known_name(b"ce_"), None);
        assert_eq!(known_name(b"ce_dataschema"), None);
        let raw = raw_from(
            b"p",
            None,
            &[("ce_dataschema", Some(b"s")), ("ce_type", Some(b"t"))],
        );
        let m = raw.to_message("t", 0, 0);
        assert_eq!(m.headers.get_str("ce-dataschema"), Some("s"));
        assert_eq!(m.headers.get_str("ce-type"), Some("t"));
    }

    #[test]
    fn publish_side_maps_ce_names_and_writes_id_and_specversion() {
        let mut m = Message::with_id("id-1", "p")
            .with_type("T")
            .with_content_type("text/plain")
            .with_header(names::CE_SPECVERSION, "0.3")
            .with_header(names::CE_ID, "ignored");
        m.headers.append("x", "1");
        m.headers.append("x", "2");
        m.headers.append("bin", vec![0u8, 255]);
        let h = to_kafka_headers(&m, &mut String::new());
        let pairs = kafka_pairs(&h);
        let names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "ce_id",
                "ce_specversion",
                "ce_type",
                "content-type",
                "x",
                "x",
                "bin"
            ]
        );
        assert_eq!(pairs[0].1, b"id-1");
        assert_eq!(pairs[1].1, b"1.0");
        assert_eq!(pairs[4].1, b"1");
        assert_eq!(pairs[5].1, b"2");
        assert_eq!(pairs[6].1, [0u8, 255]);
    }

    #[test]
    fn consume_side_restores_id_and_canonical_names() {
        let raw = raw_from(
            b"payload",
            Some(b"key"),
            &[
                ("ce_id", Some(b"id-9")),
                ("ce_specversion", Some(b"1.0")),
                ("ce_type", Some(b"T")),
                ("content-type", Some(b"application/json")),
                ("x", Some(b"1")),
                ("x", Some(b"2")),
                ("nul", None),
            ],
        );
        let m = raw.to_message("t", 3, 42);
        assert_eq!(m.id, "id-9");
        assert_eq!(&m.payload[..], b"payload");
        assert_eq!(m.key.as_deref(), Some(&b"key"[..]));
        assert_eq!(m.ce_type(), Some("T"));
        assert_eq!(m.content_type(), Some("application/json"));
        assert_eq!(m.header(names::CE_SPECVERSION), Some("1.0"));
        assert_eq!(m.headers.get(names::CE_ID), None, "id lives in Message::id");
        let xs: Vec<_> = m.headers.get_all("x").cloned().collect();
        assert_eq!(xs, [Bytes::from("1"), Bytes::from("2")]);
        assert_eq!(m.headers.get("nul").map(|v| v.len()), Some(0));
        let names: Vec<_> = m.headers.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["ce-specversion", "ce-type", "content-type", "x", "x", "nul"]
        );
        assert_eq!(raw.len(), raw.block.len());
    }

    #[test]
    fn record_without_ce_id_gets_deterministic_id() {
        let raw = raw_from(b"", None, &[("other", Some(b"v"))]);
        let a = raw.to_message("orders", 1, 7);
        let b = raw.to_message("orders", 1, 7);
        assert_eq!(a.id, "orders-1-7");
        assert_eq!(a.id, b.id);
        assert!(a.key.is_none());
        assert!(a.payload.is_empty());
        // A ce_id that is not UTF-8 keeps the fallback id and the raw header.
        let raw = raw_from(b"", None, &[("ce_id", Some(&[0xff, 0xfe]))]);
        let m = raw.to_message("orders", 0, 1);
        assert_eq!(m.id, "orders-0-1");
        assert_eq!(
            m.headers.get("ce-id").map(|v| v.to_vec()),
            Some(vec![0xff, 0xfe])
        );
    }

    #[test]
    fn truncated_block_is_not_a_panic() {
        let mut raw = raw_from(b"p", None, &[("a", Some(b"1")), ("b", Some(b"2"))]);
        raw.block = raw.block.slice(..raw.block.len() - 3);
        let m = raw.to_message("t", 0, 0);
        assert_eq!(m.headers.len(), 1);
        raw.header_count = 10;
        let _ = raw.to_message("t", 0, 0);
    }

    #[test]
    fn roundtrip_through_owned_headers() {
        let mut m = Message::new("x").with_type("T").with_source("S");
        m.headers.append("k", "v");
        let h = to_kafka_headers(&m, &mut String::new());
        let pairs = kafka_pairs(&h);
        let hs: Vec<(&str, Option<&[u8]>)> = pairs
            .iter()
            .map(|(n, v)| (n.as_str(), Some(&v[..])))
            .collect();
        let back = raw_from(&m.payload, None, &hs).to_message("t", 0, 0);
        assert_eq!(back.id, m.id);
        assert_eq!(back.ce_type(), Some("T"));
        assert_eq!(back.ce_source(), Some("S"));
        assert_eq!(back.header("k"), Some("v"));
    }
}
