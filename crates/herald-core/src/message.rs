//! The message model: [`Message`], its [`Headers`] and the CloudEvents attributes.

use std::{borrow::Cow, fmt};

use bytes::Bytes;

/// Header names herald reads and writes. Transport adapters translate these canonical
/// names to each binding's spelling (Kafka: `ce_id`; NATS: `ce-id`).
pub mod names {
    /// CloudEvents `id` (the message id; adapters write it from [`Message::id`](super::Message::id)).
    pub const CE_ID: &str = "ce-id";
    /// CloudEvents `type`, e.g. `herald.examples.OrderCreated.v1`.
    pub const CE_TYPE: &str = "ce-type";
    /// CloudEvents `source`, the producing service.
    pub const CE_SOURCE: &str = "ce-source";
    /// CloudEvents `specversion`, always `1.0`.
    pub const CE_SPECVERSION: &str = "ce-specversion";
    /// CloudEvents `time`, RFC 3339.
    pub const CE_TIME: &str = "ce-time";
    /// CloudEvents `subject`.
    pub const CE_SUBJECT: &str = "ce-subject";
    /// CloudEvents `datacontenttype` (binary mode: the `content-type` header).
    pub const CONTENT_TYPE: &str = "content-type";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// Links every message of one business flow.
    pub const CORRELATION_ID: &str = "correlation-id";
    /// The id of the message that caused this one.
    pub const CAUSATION_ID: &str = "causation-id";
    /// Prefix shared by all CloudEvents extension attributes in canonical form.
    pub const CE_PREFIX: &str = "ce-";

    /// Dead-letter: the error that sent the message there.
    pub const DLQ_ERROR: &str = "herald-error";
    /// Dead-letter: the error class (`transient`, `permanent`, `fatal`).
    pub const DLQ_ERROR_CLASS: &str = "herald-error-class";
    /// Dead-letter: how many attempts were made.
    pub const DLQ_ATTEMPTS: &str = "herald-attempts";
    /// Dead-letter: the topic the message was consumed from.
    pub const DLQ_ORIGINAL_TOPIC: &str = "herald-original-topic";
    /// Dead-letter: prefix of the position attributes (`herald-original-partition`,
    /// `herald-original-offset`, `herald-original-sequence`).
    pub const DLQ_ORIGINAL_PREFIX: &str = "herald-original-";
    /// Dead-letter: the handler that failed.
    pub const DLQ_HANDLER: &str = "herald-handler";
    /// Dead-letter: the consumer group of the handler that failed.
    pub const DLQ_GROUP: &str = "herald-group";
    /// Dead-letter: when the message was dead-lettered, RFC 3339.
    pub const DLQ_FAILED_AT: &str = "herald-failed-at";
    /// The message key, carried as a header by transports whose addressing cannot hold
    /// arbitrary key bytes (NATS subjects).
    pub const KEY: &str = "herald-key";

    /// The names herald itself sets and reads besides the id: held as these constants
    /// (see [`HeaderName`](super::HeaderName)) wherever a message is built or decoded.
    pub const WELL_KNOWN: &[&str] = &[
        CE_TYPE,
        CE_SOURCE,
        CE_SPECVERSION,
        CE_TIME,
        CE_SUBJECT,
        CONTENT_TYPE,
        TRACEPARENT,
        TRACESTATE,
        CORRELATION_ID,
        CAUSATION_ID,
    ];

    /// The constant of [`WELL_KNOWN`] equal to `name`, so an adapter decoding a message
    /// keeps the name without copying it.
    pub fn well_known(name: &str) -> Option<&'static str> {
        WELL_KNOWN.iter().copied().find(|k| *k == name)
    }
}

/// A header name. The well-known names of [`names`] are held as those constants, so
/// setting or decoding them copies nothing; any other name is an owned string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeaderName(Cow<'static, str>);

impl HeaderName {
    /// A name from a constant, without a copy.
    pub const fn from_static(name: &'static str) -> Self {
        Self(Cow::Borrowed(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for HeaderName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for HeaderName {
    fn from(name: &str) -> Self {
        match names::well_known(name) {
            Some(known) => Self::from_static(known),
            None => Self(Cow::Owned(name.to_owned())),
        }
    }
}

impl From<&String> for HeaderName {
    fn from(name: &String) -> Self {
        Self::from(name.as_str())
    }
}

impl From<String> for HeaderName {
    fn from(name: String) -> Self {
        Self(Cow::Owned(name))
    }
}

impl From<Cow<'_, str>> for HeaderName {
    fn from(name: Cow<'_, str>) -> Self {
        match name {
            Cow::Borrowed(n) => Self::from(n),
            Cow::Owned(n) => Self::from(n),
        }
    }
}

impl From<HeaderName> for String {
    fn from(name: HeaderName) -> Self {
        name.0.into_owned()
    }
}

/// An ordered multimap of header name → bytes.
///
/// Order is preserved and a name may appear more than once (Kafka allows it). Lookups
/// with [`get`](Self::get) return the **last** value of a name, which is what "set"
/// means on a multimap that was appended to. Well-known names are kept without a copy
/// (see [`HeaderName`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(HeaderName, Bytes)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a value; existing values of the same name stay.
    pub fn append(&mut self, name: impl Into<HeaderName>, value: impl Into<Bytes>) {
        self.entries.push((name.into(), value.into()));
    }

    /// Replaces every value of `name` with one value.
    pub fn insert(&mut self, name: impl Into<HeaderName>, value: impl Into<Bytes>) {
        let name = name.into();
        self.remove(&name);
        self.entries.push((name, value.into()));
    }

    /// The last value of `name`.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.entries
            .iter()
            .rev()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v)
    }

    /// The last value of `name` if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Bytes> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n.as_str() == name)
            .map(|(_, v)| v)
    }

    /// Removes every value of `name`; returns whether any was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(n, _)| n.as_str() != name);
        before != self.entries.len()
    }

    /// All entries in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Bytes)> {
        self.entries.iter().map(|(n, v)| (&**n, v))
    }

    /// Number of entries (a name appearing twice counts twice).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total bytes of names and values, for size limits.
    pub fn byte_len(&self) -> usize {
        self.entries.iter().map(|(n, v)| n.len() + v.len()).sum()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (n, v) in &self.entries {
            match std::str::from_utf8(v) {
                Ok(s) => m.entry(n, &s),
                Err(_) => m.entry(n, &format_args!("<{} bytes>", v.len())),
            };
        }
        m.finish()
    }
}

impl<N: Into<HeaderName>, V: Into<Bytes>> FromIterator<(N, V)> for Headers {
    fn from_iter<T: IntoIterator<Item = (N, V)>>(iter: T) -> Self {
        Self {
            entries: iter
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        }
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a Bytes);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (HeaderName, Bytes)>,
        fn(&'a (HeaderName, Bytes)) -> (&'a str, &'a Bytes),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(n, v)| (&**n, v))
    }
}

/// A message: an id, an optional ordering key, headers and a payload.
///
/// * `id` is a UUIDv7 string made by [`Message::new`]; it stays the same across retries,
///   the dead-letter queue and replay, and is the default dedupe key.
/// * `key` orders messages: the same key goes to the same Kafka partition / NATS subject,
///   and is handled in order.
/// * CloudEvents attributes (binary content mode) live in the headers under the canonical
///   names of [`names`]; read and write them with the typed accessors.
///
/// # Examples
/// ```
/// use herald_core::Message;
/// let m = Message::new("{\"order\":1}")
///     .with_key("order-1")
///     .with_type("herald.examples.OrderCreated.v1")
///     .with_content_type("application/json")
///     .with_correlation_id("flow-7");
/// assert_eq!(m.ce_type(), Some("herald.examples.OrderCreated.v1"));
/// assert_eq!(m.correlation_id(), Some("flow-7"));
/// assert_eq!(m.id.len(), 36);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The message id, a UUIDv7 string by default.
    pub id: String,
    /// The ordering key.
    pub key: Option<Bytes>,
    /// Headers, including CloudEvents attributes.
    pub headers: Headers,
    /// The payload.
    pub payload: Bytes,
}

impl fmt::Debug for Message {
    /// Payloads are never printed: they may hold personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field(
                "key",
                &self.key.as_ref().map(|k| String::from_utf8_lossy(k)),
            )
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// A new UUIDv7 message id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Message {
    /// A message with a fresh UUIDv7 id and the given payload.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self::with_id(new_id(), payload)
    }

    /// A message with a given id (replay, tests, outbox rows whose id was fixed earlier).
    pub fn with_id(id: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            id: id.into(),
            key: None,
            headers: Headers::new(),
            payload: payload.into(),
        }
    }

    /// Sets the ordering key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets (replaces) a header.
    pub fn with_header(mut self, name: impl Into<HeaderName>, value: impl Into<Bytes>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The key as UTF-8, if it is.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_ref().and_then(|k| std::str::from_utf8(k).ok())
    }

    /// A header as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }
}

macro_rules! attr {
    ($(#[$doc:meta])* $get:ident, $with:ident, $set:ident, $name:expr) => {
        impl Message {
            $(#[$doc])*
            pub fn $get(&self) -> Option<&str> {
                self.headers.get_str($name)
            }
            $(#[$doc])*
            ///
            /// Builder form.
            pub fn $with(mut self, value: impl Into<String>) -> Self {
                self.$set(value);
                self
            }
            $(#[$doc])*
            ///
            /// Setter form.
            pub fn $set(&mut self, value: impl Into<String>) {
                self.headers.insert($name, Bytes::from(value.into()));
            }
        }
    };
}

attr!(
    /// CloudEvents `type`.
    ce_type, with_type, set_type, names::CE_TYPE
);
attr!(
    /// CloudEvents `source`.
    ce_source, with_source, set_source, names::CE_SOURCE
);
attr!(
    /// CloudEvents `subject`.
    ce_subject, with_subject, set_subject, names::CE_SUBJECT
);
attr!(
    /// CloudEvents `time` (RFC 3339).
    ce_time, with_time, set_time, names::CE_TIME
);
attr!(
    /// Content type of the payload (CloudEvents `datacontenttype`).
    content_type, with_content_type, set_content_type, names::CONTENT_TYPE
);
attr!(
    /// W3C `traceparent`.
    traceparent, with_traceparent, set_traceparent, names::TRACEPARENT
);
attr!(
    /// The correlation id linking one business flow.
    correlation_id, with_correlation_id, set_correlation_id, names::CORRELATION_ID
);
attr!(
    /// The id of the message that caused this one.
    causation_id, with_causation_id, set_causation_id, names::CAUSATION_ID
);

impl Message {
    /// A message caused by `cause`: carries its correlation id (or its id when it has
    /// none) and names it as the causation.
    pub fn caused_by(mut self, cause: &Message) -> Self {
        let corr = cause.correlation_id().unwrap_or(&cause.id).to_owned();
        self.set_correlation_id(corr);
        self.set_causation_id(cause.id.clone());
        // No `traceparent` copy: the publish span injects the current context, which is
        // the handler's span, so the follow-on message is its child.
        self
    }

    /// Stamps `ce-time` with the current time if it is not set.
    pub fn stamp_time(&mut self) {
        if self.ce_time().is_none() {
            self.set_time(now_rfc3339());
        }
    }
}

/// The current time in RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_header_names_are_not_copied() {
        let borrowed = |n: &HeaderName| matches!(n.0, Cow::Borrowed(_));
        // From any `&str`, however short-lived, a well-known name becomes the constant.
        let owned_text = String::from("ce-type");
        assert!(borrowed(&HeaderName::from(owned_text.as_str())));
        assert!(borrowed(&HeaderName::from(&owned_text)));
        assert!(borrowed(&HeaderName::from(Cow::Borrowed("traceparent"))));
        assert!(!borrowed(&HeaderName::from("x-tenant")));
        // Whatever the representation, names compare and look up by their text.
        assert_eq!(
            HeaderName::from("ce-type"),
            HeaderName::from(owned_text.clone())
        );
        let mut h = Headers::new();
        h.append(owned_text, "a");
        h.append("x-tenant", "t");
        assert_eq!(h.get_str(names::CE_TYPE), Some("a"));
        assert_eq!(h.get_str("x-tenant"), Some("t"));
        assert_eq!(names::well_known("ce-type"), Some(names::CE_TYPE));
        assert_eq!(names::well_known("ce-typ"), None);
        assert_eq!(
            names::well_known(names::CE_ID),
            None,
            "the id is not a header"
        );
    }

    #[test]
    fn headers_are_an_ordered_multimap() {
        let mut h = Headers::new();
        h.append("a", "1");
        h.append("b", "2");
        h.append("a", "3");
        assert_eq!(h.get_str("a"), Some("3"));
        assert_eq!(h.get_all("a").count(), 2);
        let names: Vec<_> = h.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b", "a"]);
        h.insert("a", "4");
        assert_eq!(h.get_all("a").count(), 1);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn non_utf8_header_is_bytes_not_str() {
        let mut h = Headers::new();
        h.append("bin", vec![0xff, 0xfe]);
        assert!(h.get("bin").is_some());
        assert!(h.get_str("bin").is_none());
        assert!(format!("{h:?}").contains("<2 bytes>"));
    }

    #[test]
    fn causation_links_flow() {
        let a = Message::new("a").with_correlation_id("c1");
        let b = Message::new("b").caused_by(&a);
        assert_eq!(b.correlation_id(), Some("c1"));
        assert_eq!(b.causation_id(), Some(a.id.as_str()));
        let c = Message::new("c").caused_by(&Message::with_id("x", ""));
        assert_eq!(c.correlation_id(), Some("x"));
    }

    #[test]
    fn ids_are_uuid_v7() {
        let id = Message::new("").id;
        let u = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(u.get_version_num(), 7);
    }
}
