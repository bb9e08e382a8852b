//! The crate's error: one [`Error`] carrying an [`ErrorKind`], a message and a source.

use std::fmt;

use herald_core::{CodecError, CodecErrorKind};

use crate::compat::Violation;

/// A boxed source error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The payload does not start with the Confluent magic byte `0x00`.
    #[error("wrong magic byte")]
    WrongMagicByte,
    /// The payload is shorter than the 5-byte header.
    #[error("truncated header")]
    TruncatedHeader,
    /// The registry knows no schema under the payload's id.
    #[error("unknown schema id")]
    UnknownSchemaId,
    /// The registry knows no such subject or version.
    #[error("unknown subject or version")]
    UnknownSubject,
    /// The datum does not match its writer's schema, or cannot be resolved to the reader's.
    #[error("datum does not match its schema")]
    InvalidDatum,
    /// The value cannot be encoded with the schema.
    #[error("cannot encode")]
    Encode,
    /// The schema text is not a valid Avro schema.
    #[error("invalid schema")]
    InvalidSchema,
    /// The schema breaks the subject's compatibility mode; see [`Error::violations`].
    #[error("incompatible schema")]
    Incompatible,
    /// The schema registry could not be reached (network, timeout, 502/503).
    #[error("schema registry unreachable")]
    RegistryUnavailable,
    /// The schema registry answered with an error not covered above.
    #[error("schema registry error")]
    Registry,
    /// The registry is read-only (the directory registry).
    #[error("registry is read-only")]
    ReadOnly,
    /// A schema directory does not follow `<subject>/v<N>.avsc`, or cannot be read.
    #[error("invalid schema directory")]
    Layout,
    /// The codec has no schema for the event type.
    #[error("no schema for event type")]
    UnknownEventType,
}

/// An error of this crate: a [`ErrorKind`], a one-line message and an optional source.
#[derive(thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    violations: Vec<Violation>,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            violations: Vec::new(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Attaches the compatibility violations behind an [`ErrorKind::Incompatible`].
    pub fn with_violations(mut self, violations: Vec<Violation>) -> Self {
        self.violations = violations;
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message (without the kind).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The violations behind an [`ErrorKind::Incompatible`] error (empty otherwise).
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Whether trying again may succeed: only an unreachable registry.
    pub fn is_retriable(&self) -> bool {
        self.kind == ErrorKind::RegistryUnavailable
    }

    pub(crate) fn avro(kind: ErrorKind, context: impl fmt::Display, e: apache_avro::Error) -> Self {
        Self::new(kind, format!("{context}: {e}")).with_source(e)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("violations", &self.violations.len())
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl From<Error> for CodecError {
    /// Maps onto the core's codec kinds: frame errors are `Malformed`, an unknown id or
    /// event type `UnknownSchema`, datum and compatibility errors `SchemaMismatch`, registry
    /// failures `Registry` (the only transient one for the router).
    fn from(e: Error) -> Self {
        let kind = match e.kind {
            ErrorKind::WrongMagicByte | ErrorKind::TruncatedHeader => CodecErrorKind::Malformed,
            ErrorKind::UnknownSchemaId
            | ErrorKind::UnknownSubject
            | ErrorKind::UnknownEventType => CodecErrorKind::UnknownSchema,
            ErrorKind::InvalidDatum | ErrorKind::Incompatible | ErrorKind::InvalidSchema => {
                CodecErrorKind::SchemaMismatch
            }
            ErrorKind::Encode | ErrorKind::ReadOnly | ErrorKind::Layout => CodecErrorKind::Encode,
            ErrorKind::RegistryUnavailable | ErrorKind::Registry => CodecErrorKind::Registry,
        };
        CodecError::new(kind, e.message.clone()).with_source(e)
    }
}
