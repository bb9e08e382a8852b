//! The outbox's error: [`OutboxError`] = herald's [`Error`](herald_core::Error) with an
//! [`OutboxErrorKind`].

use std::fmt;

/// Why an outbox operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboxErrorKind {
    /// The configuration is invalid (an empty or over-long table, schema or channel name).
    InvalidConfig,
    /// A message cannot be stored (an empty topic or message id, a header too large).
    InvalidMessage,
    /// PostgreSQL rejected a statement.
    Database,
    /// No connection to PostgreSQL could be had, or it broke.
    Connection,
    /// A stored row cannot be read back as a message (e.g. undecodable headers).
    Corrupt,
}

impl OutboxErrorKind {
    /// Whether trying the same operation again may succeed.
    pub fn is_retriable(self) -> bool {
        matches!(self, Self::Database | Self::Connection)
    }
}

impl fmt::Display for OutboxErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidConfig => "invalid outbox config",
            Self::InvalidMessage => "invalid outbox message",
            Self::Database => "outbox database error",
            Self::Connection => "outbox connection failed",
            Self::Corrupt => "corrupt outbox row",
        })
    }
}

/// A failed outbox operation.
pub type OutboxError = herald_core::Error<OutboxErrorKind>;

/// Maps a PostgreSQL error: a closed connection is [`OutboxErrorKind::Connection`],
/// anything else [`OutboxErrorKind::Database`].
pub(crate) fn db(what: &str, e: tokio_postgres::Error) -> OutboxError {
    let kind = if e.is_closed() {
        OutboxErrorKind::Connection
    } else {
        OutboxErrorKind::Database
    };
    let msg = match e.as_db_error() {
        Some(d) => format!("{what}: {} ({})", d.message(), d.code().code()),
        None => format!("{what}: {e}"),
    };
    OutboxError::new(kind, msg).with_source(e)
}

/// Maps a pool error to [`OutboxErrorKind::Connection`].
pub(crate) fn pool(e: deadpool_postgres::PoolError) -> OutboxError {
    OutboxError::new(OutboxErrorKind::Connection, format!("no connection: {e}")).with_source(e)
}
