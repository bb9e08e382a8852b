//! How herald's topics, keys, groups and headers map onto NATS — decided once, here.
//!
//! # Topics → streams and subjects
//! * A topic is one or more subject tokens joined by `.` (`orders`, `shop.orders`): no
//!   empty token, no whitespace or control characters, no `*` or `>`, not starting with
//!   `$` (reserved by the server). Anything else is rejected with a typed error.
//! * Topic `t` is stored in the stream named [`stream_name(t)`](stream_name): every
//!   character outside `[A-Za-z0-9_-]` becomes `_` (`orders` → `orders`,
//!   `orders.dlq` → `orders_dlq`). Two topics that sanitise to the same name (`a.b` and
//!   `a_b`) collide: the second one is refused with
//!   [`NameCollision`](crate::ProvisionErrorKind::NameCollision) instead of sharing a stream.
//! * The stream captures the subjects [`stream_subject(t)`](stream_subject) = `t.*` —
//!   exactly one token below the topic. (Not `t.>`: that would overlap the dead-letter
//!   topic `t.dlq`'s subjects `t.dlq.*`, and the server refuses overlapping streams.)
//! * The dead-letter topic of `t` is `t.dlq` ([`herald_core::dlq_topic`]), a topic like any
//!   other: stream `t_dlq`, subjects `t.dlq.*`.
//!
//! # Keys → subject tokens
//! A message with key `k` is published on `t.<token>` ([`subject`]):
//! * a key of 1–64 characters from `[A-Za-z0-9_-]` (other than `_`) is its own token:
//!   `orders.o-17`;
//! * any other key becomes `h_` + 16 hex digits of its FNV-1a hash: `orders.h_8c3f…`;
//! * a message without key goes to `t._`.
//!
//! Whenever the token is not the key itself, the exact key bytes travel in the
//! `herald-key` header, so [`Message::key`](herald_core::Message::key) round-trips exactly
//! (binary keys included). Hash collisions only put two keys on one subject; nothing
//! depends on a subject holding a single key.
//!
//! # Groups → durable consumers
//! Consumer group `g` is the durable pull consumer [`consumer_name(g)`](consumer_name),
//! sanitised like stream names. Its description records the group
//! (`herald group <g>`), so two groups that sanitise alike are refused rather than merged.
//!
//! # Headers (CloudEvents NATS binding)
//! herald's canonical header names (`ce-id`, `ce-type`, `content-type`, `traceparent`, …)
//! are already the NATS binding's spelling and are written as they are, in order; values
//! of one name keep their order. On publish the adapter writes:
//! * `ce-id` and `Nats-Msg-Id` = the message id (so the server's duplicate window drops a
//!   republished message), and `ce-specversion: 1.0`;
//! * `herald-key` when the subject token is not the key (see above);
//! * every header of the message, except those four names, which the adapter owns.
//!
//! On consume the id is restored from `ce-id`, else `Nats-Msg-Id`, else
//! `<stream>-<sequence>` (messages published by other clients); the four adapter headers
//! are removed. NATS carries header values as text without line breaks or surrounding
//! whitespace, so a value that is not such text (binary, multi-line, padded) is sent as
//! `=?b64?` + base64 and decoded on receipt — values starting with `=?b64?` themselves are
//! encoded too, so decoding is unambiguous. Header names must be printable ASCII without
//! `:`; others are refused with
//! [`InvalidMessage`](herald_core::PublishErrorKind::InvalidMessage). The server keeps a
//! message's headers as a map: the order *between different names* is not preserved.

use std::{borrow::Cow, fmt::Write as _};

use async_nats::{HeaderMap, HeaderName, HeaderValue, header::NATS_MESSAGE_ID};
use bytes::Bytes;
use herald_core::{Headers, Message, PublishError, PublishErrorKind, message::names};

/// The subject token of messages without key.
pub const KEYLESS_TOKEN: &str = "_";

/// Marker of a base64-encoded header value.
pub const BASE64_MARKER: &str = "=?b64?";

/// The server's deduplication header.
const MSG_ID: &str = "Nats-Msg-Id";

/// The CloudEvents spec version the adapter writes.
const SPECVERSION: &str = "1.0";

/// Why a topic or group name is refused (a message for the typed errors).
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("empty topic name".into());
    }
    if topic.starts_with('$') {
        return Err(format!(
            "topic {topic:?} starts with `$` (reserved by NATS)"
        ));
    }
    if topic.len() > 200 {
        return Err(format!("topic {topic:?} is longer than 200 bytes"));
    }
    for token in topic.split('.') {
        if token.is_empty() {
            return Err(format!("topic {topic:?} has an empty subject token"));
        }
        if let Some(c) = token
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == '*' || *c == '>')
        {
            return Err(format!("topic {topic:?} contains {c:?}"));
        }
    }
    Ok(())
}

/// Checks a consumer group name.
pub fn validate_group(group: &str) -> Result<(), String> {
    if group.is_empty() {
        return Err("empty consumer group name".into());
    }
    if group.len() > 200 {
        return Err(format!("group {group:?} is longer than 200 bytes"));
    }
    Ok(())
}

fn sanitise(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The stream that stores `topic`: characters outside `[A-Za-z0-9_-]` become `_`.
///
/// ```
/// assert_eq!(herald_nats::mapping::stream_name("orders.dlq"), "orders_dlq");
/// ```
pub fn stream_name(topic: &str) -> String {
    sanitise(topic)
}

/// The subject filter of `topic`'s stream: `<topic>.*`.
pub fn stream_subject(topic: &str) -> String {
    format!("{topic}.*")
}

/// The durable consumer of consumer group `group`.
pub fn consumer_name(group: &str) -> String {
    sanitise(group)
}

/// The description stamped on a group's consumer (used to detect name collisions).
pub fn consumer_description(group: &str) -> String {
    format!("herald group {group}")
}

/// The description stamped on a topic's stream.
pub fn stream_description(topic: &str) -> String {
    format!("herald topic {topic}")
}

/// Whether `key` is used as its own subject token.
fn is_plain_key(key: &[u8]) -> bool {
    (1..=64).contains(&key.len())
        && key != KEYLESS_TOKEN.as_bytes()
        && key
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The subject token of a key (see the module docs).
///
/// ```
/// use herald_nats::mapping::key_token;
/// assert_eq!(key_token(Some(b"o-17")), "o-17");
/// assert_eq!(key_token(None), "_");
/// assert!(key_token(Some(b"a.b")).starts_with("h_"));
/// ```
pub fn key_token(key: Option<&[u8]>) -> Cow<'_, str> {
    match key {
        None => Cow::Borrowed(KEYLESS_TOKEN),
        Some(k) if is_plain_key(k) => {
            // Plain keys are ASCII.
            Cow::Borrowed(std::str::from_utf8(k).unwrap_or(KEYLESS_TOKEN))
        }
        Some(k) => Cow::Owned(format!("h_{:016x}", fnv1a(k))),
    }
}

/// The subject a message with `key` is published on in `topic`.
pub fn subject(topic: &str, key: Option<&[u8]>) -> String {
    let token = key_token(key);
    let mut s = String::with_capacity(topic.len() + 1 + token.len());
    s.push_str(topic);
    s.push('.');
    s.push_str(&token);
    s
}

/// Whether a header value can travel as it is.
fn is_plain_value(v: &[u8]) -> Option<&str> {
    // Fast path for the usual printable-ASCII value (ids, times, content types): one
    // byte scan instead of UTF-8 validation plus a Unicode property walk.
    if let (Some(first), Some(last)) = (v.first(), v.last())
        && v.iter().all(|b| (0x20..0x7f).contains(b))
        && *first != b' '
        && *last != b' '
        && !v.starts_with(BASE64_MARKER.as_bytes())
    {
        return std::str::from_utf8(v).ok();
    }
    plain_by_chars(v)
}

/// [`is_plain_value`] without its ASCII fast path: the rule itself.
fn plain_by_chars(v: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(v).ok()?;
    let plain = !s.starts_with(BASE64_MARKER)
        && !s.starts_with(char::is_whitespace)
        && !s.ends_with(char::is_whitespace)
        && !s.chars().any(|c| c.is_control() && c != '\t');
    plain.then_some(s)
}

/// A header value as NATS text (plain or `=?b64?`-encoded).
pub fn encode_value(v: &[u8]) -> Cow<'_, str> {
    match is_plain_value(v) {
        Some(s) => Cow::Borrowed(s),
        None => {
            let mut s = String::with_capacity(BASE64_MARKER.len() + v.len().div_ceil(3) * 4);
            s.push_str(BASE64_MARKER);
            base64_encode(v, &mut s);
            Cow::Owned(s)
        }
    }
}

/// A header value from NATS text: `=?b64?` values are decoded (a malformed one is kept as
/// text).
pub fn decode_value(s: &str) -> Bytes {
    if let Some(enc) = s.strip_prefix(BASE64_MARKER)
        && let Some(raw) = base64_decode(enc)
    {
        return Bytes::from(raw);
    }
    Bytes::copy_from_slice(s.as_bytes())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(input: &[u8], out: &mut String) {
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover sextet cannot come from whole bytes.
    (bits < 6).then_some(out)
}

fn is_adapter_header(name: &str) -> bool {
    name == names::CE_ID || name == names::CE_SPECVERSION || name == names::KEY || name == MSG_ID
}

fn invalid(msg: String) -> PublishError {
    PublishError::new(PublishErrorKind::InvalidMessage, msg)
}

/// A message ready for NATS: subject, headers, payload.
#[derive(Debug)]
pub struct Outbound {
    /// The subject (`<topic>.<key-token>`).
    pub subject: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The payload.
    pub payload: Bytes,
}

static CE_ID: HeaderName = HeaderName::from_static(names::CE_ID);
static CE_SPECVERSION: HeaderName = HeaderName::from_static(names::CE_SPECVERSION);
static HERALD_KEY: HeaderName = HeaderName::from_static(names::KEY);

/// Translates a message for publishing on `topic` (already validated).
pub fn outbound(topic: &str, message: Message) -> Result<Outbound, PublishError> {
    let Message {
        id,
        key,
        headers,
        payload,
    } = message;
    if id.is_empty() || is_plain_value(id.as_bytes()).is_none() {
        return Err(invalid(format!(
            "message id {id:?} is empty or not header-safe text"
        )));
    }
    // The duplicate-window id. A dead-letter or retry-topic publish is a new event about
    // the same message (it may legitimately happen again after a replay, inside the
    // window), so its id includes the hop's timestamp; plain republishes keep the bare id
    // and are dropped by the server.
    // Only the token-safe characters of the hop's timestamp are used: these headers may
    // come from outside and a CR/LF must not reach the header map.
    let stamp = |v: &str| -> String {
        v.chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.' | '+' | '_'))
            .collect()
    };
    let window_id = match (
        headers.get_str(herald_core::message::names::DLQ_FAILED_AT),
        headers.get_str(herald_core::retry_topics::headers::DUE_AT),
    ) {
        (Some(at), _) => format!("{id}:dlq:{}", stamp(at)),
        (None, Some(due)) => format!("{id}:retry:{}", stamp(due)),
        (None, None) => id.clone(),
    };
    let subject = subject(topic, key.as_deref());
    let mut map = HeaderMap::new();
    for (name, value) in headers.iter() {
        if is_adapter_header(name) {
            continue;
        }
        let n: HeaderName = name
            .parse()
            .map_err(|_| invalid(format!("header name {name:?} is not valid on NATS")))?;
        map.append(n, HeaderValue::from(encode_value(value).into_owned()));
    }
    if let Some(k) = key.as_deref()
        && !is_plain_key(k)
    {
        map.insert(
            HERALD_KEY.clone(),
            HeaderValue::from(encode_value(k).into_owned()),
        );
    }
    map.insert(NATS_MESSAGE_ID, HeaderValue::from(window_id));
    map.insert(CE_ID.clone(), HeaderValue::from(id));
    map.insert(CE_SPECVERSION.clone(), HeaderValue::from(SPECVERSION));
    Ok(Outbound {
        subject,
        headers: map,
        payload,
    })
}

/// Restores a herald message from a stored NATS message of `stream` at `sequence`.
pub fn inbound(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
    stream: &str,
    sequence: u64,
) -> Message {
    let mut id = None;
    let mut msg_id = None;
    let mut key_header = None;
    let mut out = Headers::new();
    if let Some(map) = headers {
        for (name, values) in map.iter() {
            let n: &str = name.as_ref();
            if n == names::CE_ID {
                id = values.last().map(|v| v.as_str().to_owned());
            } else if n == MSG_ID {
                msg_id = values.last().map(|v| v.as_str().to_owned());
            } else if n == names::KEY {
                key_header = values.last().map(|v| decode_value(v.as_str()));
            } else if n == names::CE_SPECVERSION {
                // Written by every adapter; not part of the message's own headers.
            } else {
                for v in values {
                    out.append(n, decode_value(v.as_str()));
                }
            }
        }
    }
    let key = key_header.or_else(|| {
        let token = subject.rsplit('.').next().unwrap_or(KEYLESS_TOKEN);
        (token != KEYLESS_TOKEN).then(|| Bytes::copy_from_slice(token.as_bytes()))
    });
    let id = id
        .filter(|s| !s.is_empty())
        .or(msg_id.filter(|s| !s.is_empty()));
    let id = id.unwrap_or_else(|| {
        let mut s = String::with_capacity(stream.len() + 21);
        let _ = write!(s, "{stream}-{sequence}");
        s
    });
    Message {
        id,
        key,
        headers: out,
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ascii_fast_path_agrees_with_the_rule() {
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for a in 0..=255u8 {
            cases.push(vec![a]);
            for b in 0..=255u8 {
                cases.push(vec![a, b]);
            }
        }
        for s in [
            "",
            "abc",
            " abc",
            "abc ",
            "a b",
            "a\tb",
            "\tab",
            "ab\t",
            "=?b64?x",
            "x=?b64?",
            "2026-11-27T15:00:00Z",
            "ünïcode",
            "a\u{85}b",
            "a\u{a0}",
            "\u{3000}a",
            "a\x7fb",
        ] {
            cases.push(s.as_bytes().to_vec());
        }
        for v in &cases {
            assert_eq!(is_plain_value(v), plain_by_chars(v), "{v:?}");
        }
    }

    fn window_id(m: Message) -> String {
        let out = outbound("orders", m).expect("outbound");
        out.headers
            .get(NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_owned())
            .expect("msg id")
    }

    #[test]
    fn dead_letter_and_retry_hops_get_their_own_duplicate_window_id() {
        let m = Message::with_id("id-1", "x");
        assert_eq!(window_id(m.clone()), "id-1");
        let dlq = m
            .clone()
            .with_header("herald-failed-at", "2026-11-27T13:00:00Z");
        assert_eq!(window_id(dlq), "id-1:dlq:2026-11-27T13:00:00Z");
        let retry = m.clone().with_header("herald-due-at", "1764248400000");
        assert_eq!(window_id(retry), "id-1:retry:1764248400000");
        let hostile = m.with_header("herald-failed-at", "2026\r\nX-Evil: 1");
        assert_eq!(window_id(hostile), "id-1:dlq:2026X-Evil:1");
    }

    #[test]
    fn topic_validation() {
        assert!(validate_topic("orders").is_ok());
        assert!(validate_topic("shop.orders.dlq").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "$JS.x", "a\tb"] {
            assert!(validate_topic(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn stream_names_are_sanitised() {
        assert_eq!(stream_name("orders"), "orders");
        assert_eq!(stream_name("orders.dlq"), "orders_dlq");
        assert_eq!(stream_name("a/b\\c"), "a_b_c");
        assert_eq!(
            stream_name("a.b"),
            stream_name("a_b"),
            "the documented collision"
        );
        assert_eq!(stream_subject("orders.dlq"), "orders.dlq.*");
        assert_eq!(consumer_name("billing.v2"), "billing_v2");
    }

    #[test]
    fn key_tokens() {
        assert_eq!(subject("orders", Some(b"o-1")), "orders.o-1");
        assert_eq!(subject("orders", None), "orders._");
        let hashed = subject("orders", Some(b"_"));
        assert!(hashed.starts_with("orders.h_"), "{hashed}");
        for k in [&b"a.b"[..], b"a b", b"*", b">", &[0xff, 0], &[b'x'; 65]] {
            let t = key_token(Some(k));
            assert!(t.starts_with("h_") && t.len() == 18, "{t}");
        }
        assert_eq!(key_token(Some(b"a.b")), key_token(Some(b"a.b")), "stable");
        assert_ne!(key_token(Some(b"a.b")), key_token(Some(b"a.c")));
    }

    #[test]
    fn base64_roundtrip() {
        for len in 0..40usize {
            let v: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let mut s = String::new();
            base64_encode(&v, &mut s);
            assert_eq!(base64_decode(&s).as_deref(), Some(&v[..]));
        }
        let mut s = String::new();
        base64_encode(b"hello", &mut s);
        assert_eq!(s, "aGVsbG8");
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("a!b").is_none());
    }

    #[test]
    fn header_values_encode_when_needed() {
        assert_eq!(encode_value(b"plain text"), "plain text");
        for v in [
            &b"\x00\x9f"[..],
            b"a\r\nb",
            b" padded",
            b"x ",
            b"=?b64?abc",
            b"\x01",
        ] {
            let e = encode_value(v);
            assert!(e.starts_with(BASE64_MARKER), "{e}");
            assert_eq!(decode_value(&e), Bytes::copy_from_slice(v));
        }
        assert_eq!(decode_value("=?b64?!!"), Bytes::from_static(b"=?b64?!!"));
    }

    fn roundtrip(m: Message) -> Message {
        let out = outbound("orders", m).expect("outbound");
        inbound(&out.subject, Some(&out.headers), out.payload, "orders", 7)
    }

    #[test]
    fn message_roundtrip() {
        let mut m = Message::new("p")
            .with_key("k-1")
            .with_type("t.v1")
            .with_content_type("text/plain");
        m.headers.append("x-multi", "a");
        m.headers.append("x-multi", "b");
        m.headers.append("x-bin", vec![0u8, 159, 146, 150]);
        let out = outbound("orders", m.clone()).expect("outbound");
        assert_eq!(out.subject, "orders.k-1");
        assert_eq!(
            out.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(m.id.as_str())
        );
        assert_eq!(
            out.headers.get("ce-id").map(|v| v.as_str()),
            Some(m.id.as_str())
        );
        assert_eq!(
            out.headers.get("ce-specversion").map(|v| v.as_str()),
            Some("1.0")
        );
        assert!(
            out.headers.get("herald-key").is_none(),
            "plain key rides in the subject"
        );
        let got = roundtrip(m.clone());
        assert_eq!(got.id, m.id);
        assert_eq!(got.key, m.key);
        assert_eq!(got.payload, m.payload);
        assert_eq!(got.ce_type(), Some("t.v1"));
        let multi: Vec<_> = got.headers.get_all("x-multi").cloned().collect();
        assert_eq!(multi, ["a", "b"]);
        assert_eq!(
            got.headers.get("x-bin").map(|b| b.to_vec()),
            Some(vec![0, 159, 146, 150])
        );
        assert!(got.headers.get("ce-specversion").is_none());
        assert_eq!(got.headers.len(), m.headers.len());
    }

    #[test]
    fn keys_roundtrip_exactly() {
        for key in [
            None,
            Some(Bytes::from_static(b"_")),
            Some(Bytes::from_static(b"a.b c")),
            Some(Bytes::from_static(&[0, 255, 10])),
            Some(Bytes::from(vec![b'k'; 100])),
            Some(Bytes::from_static(b"plain_Key-9")),
        ] {
            let mut m = Message::new("x");
            m.key = key.clone();
            assert_eq!(roundtrip(m).key, key);
        }
    }

    #[test]
    fn id_fallbacks() {
        let m = inbound("orders._", None, Bytes::new(), "orders", 42);
        assert_eq!(m.id, "orders-42");
        assert_eq!(m.key, None);
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", "abc");
        assert_eq!(
            inbound("orders.k", Some(&h), Bytes::new(), "orders", 1).id,
            "abc"
        );
        h.insert("ce-id", "def");
        assert_eq!(
            inbound("orders.k", Some(&h), Bytes::new(), "orders", 1).id,
            "def"
        );
    }

    #[test]
    fn bad_messages_are_refused() {
        let m = Message::new("x").with_header("bad name", "v");
        assert_eq!(
            outbound("t", m).expect_err("bad name").kind(),
            PublishErrorKind::InvalidMessage
        );
        let m = Message::with_id("", "x");
        assert_eq!(
            outbound("t", m).expect_err("empty id").kind(),
            PublishErrorKind::InvalidMessage
        );
    }
}
