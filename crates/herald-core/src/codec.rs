//! Typed events: the [`Event`] trait, the [`Codec`] trait and the [`JsonCodec`].

use std::{fmt, future::Future};

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, HandlerError, Message, message::names};

/// A typed, versioned event or command carried as a message payload.
///
/// Events are past-tense facts (`OrderCreated`), commands imperative
/// (`ReserveInventory`). `TYPE` and `VERSION` go into the CloudEvents `type` attribute as
/// `<TYPE>.v<VERSION>`, so consumers can route and upcast by version.
///
/// # Examples
/// ```
/// use herald_core::Event;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderCreated { order_id: String, total_cents: i64 }
/// impl Event for OrderCreated {
///     const TYPE: &'static str = "herald.examples.OrderCreated";
///     const VERSION: u32 = 1;
/// }
/// assert_eq!(OrderCreated::ce_type(), "herald.examples.OrderCreated.v1");
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The fully qualified type name.
    const TYPE: &'static str;
    /// The schema version.
    const VERSION: u32;

    /// The CloudEvents `type` attribute: `<TYPE>.v<VERSION>`.
    fn ce_type() -> String {
        format!("{}.v{}", Self::TYPE, Self::VERSION)
    }
}

/// Why encoding or decoding failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecErrorKind {
    /// The bytes are not a valid frame or document.
    Malformed,
    /// The payload's schema is unknown (e.g. an unknown schema id).
    UnknownSchema,
    /// The datum does not match its schema, or cannot be read with the reader's.
    SchemaMismatch,
    /// The schema registry could not be reached.
    Registry,
    /// The value cannot be encoded.
    Encode,
}

impl fmt::Display for CodecErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed payload",
            Self::UnknownSchema => "unknown schema",
            Self::SchemaMismatch => "schema mismatch",
            Self::Registry => "schema registry unavailable",
            Self::Encode => "cannot encode",
        })
    }
}

/// An encoding or decoding failure.
pub type CodecError = Error<CodecErrorKind>;

impl From<CodecError> for HandlerError {
    /// A payload that cannot be decoded will not decode next time either: permanent,
    /// except when the registry was unreachable.
    fn from(e: CodecError) -> Self {
        let class = if e.kind() == CodecErrorKind::Registry {
            crate::ErrorClass::Transient
        } else {
            crate::ErrorClass::Permanent
        };
        HandlerError::from_error(class, e)
    }
}

/// Turns typed events into payload bytes and back.
///
/// Methods are async because a schema-registry codec may fetch a schema; the JSON codec
/// is ready at once.
pub trait Codec: Send + Sync + 'static {
    /// The content type written to the `content-type` header.
    fn content_type(&self) -> &str;

    /// Encodes an event.
    fn encode<E: Event>(&self, event: &E)
    -> impl Future<Output = Result<Bytes, CodecError>> + Send;

    /// Decodes an event.
    fn decode<E: Event>(
        &self,
        payload: &Bytes,
    ) -> impl Future<Output = Result<E, CodecError>> + Send;

    /// A message holding `event`, with `ce-type`, `content-type` and `ce-time` set.
    fn to_message<E: Event>(
        &self,
        event: &E,
    ) -> impl Future<Output = Result<Message, CodecError>> + Send {
        async move {
            let payload = self.encode(event).await?;
            let mut m = Message::new(payload)
                .with_type(E::ce_type())
                .with_content_type(self.content_type());
            m.headers.insert(names::CE_SPECVERSION, "1.0");
            m.stamp_time();
            Ok(m)
        }
    }
}

/// JSON through `serde_json`.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn content_type(&self) -> &str {
        "application/json"
    }

    fn encode<E: Event>(
        &self,
        event: &E,
    ) -> impl Future<Output = Result<Bytes, CodecError>> + Send {
        let r = serde_json::to_vec(event)
            .map(Bytes::from)
            .map_err(|e| CodecError::new(CodecErrorKind::Encode, E::TYPE).with_source(e));
        std::future::ready(r)
    }

    fn decode<E: Event>(
        &self,
        payload: &Bytes,
    ) -> impl Future<Output = Result<E, CodecError>> + Send {
        let r = serde_json::from_slice(payload).map_err(|e| {
            let kind = if e.is_data() {
                CodecErrorKind::SchemaMismatch
            } else {
                CodecErrorKind::Malformed
            };
            CodecError::new(kind, format!("decoding {}", E::TYPE)).with_source(e)
        });
        std::future::ready(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Ping {
        n: u32,
    }
    impl Event for Ping {
        const TYPE: &'static str = "test.Ping";
        const VERSION: u32 = 2;
    }

    #[tokio::test]
    async fn json_roundtrip_and_errors() {
        let m = JsonCodec.to_message(&Ping { n: 7 }).await.unwrap();
        assert_eq!(m.ce_type(), Some("test.Ping.v2"));
        assert_eq!(m.content_type(), Some("application/json"));
        assert!(m.ce_time().is_some());
        let p: Ping = JsonCodec.decode(&m.payload).await.unwrap();
        assert_eq!(p, Ping { n: 7 });
        let bad = JsonCodec
            .decode::<Ping>(&Bytes::from_static(b"\xff{"))
            .await;
        assert_eq!(bad.unwrap_err().kind(), CodecErrorKind::Malformed);
        let wrong = JsonCodec
            .decode::<Ping>(&Bytes::from_static(b"{\"n\":\"x\"}"))
            .await;
        let err = wrong.unwrap_err();
        assert_eq!(err.kind(), CodecErrorKind::SchemaMismatch);
        assert_eq!(
            HandlerError::from(err).class(),
            crate::ErrorClass::Permanent
        );
    }
}
