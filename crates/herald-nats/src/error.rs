//! Errors of this adapter: connecting ([`ConnectError`]) and provisioning streams and
//! consumers ([`ProvisionError`]). Publishing, subscribing and acking use herald-core's
//! [`PublishError`], [`SubscribeError`] and [`AckError`](herald_core::AckError).

use std::fmt;

use async_nats::jetstream::{self, ErrorCode};
use herald_core::{PublishError, PublishErrorKind, SubscribeError, SubscribeErrorKind};

/// Why connecting failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The configuration is unusable (bad URL, unreadable credentials, half a client
    /// certificate).
    InvalidConfig,
    /// Authentication or authorization was refused.
    Unauthorized,
    /// The TLS handshake failed.
    Tls,
    /// The server did not answer in time.
    Timeout,
    /// The server could not be reached.
    Connection,
}

impl fmt::Display for ConnectErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidConfig => "invalid NATS connection config",
            Self::Unauthorized => "NATS refused the credentials",
            Self::Tls => "TLS handshake with NATS failed",
            Self::Timeout => "connecting to NATS timed out",
            Self::Connection => "cannot connect to NATS",
        })
    }
}

/// A failed connect.
pub type ConnectError = herald_core::Error<ConnectErrorKind>;

/// Why creating or updating a stream or consumer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProvisionErrorKind {
    /// The topic or group name is not allowed (see [`crate::mapping`]).
    InvalidName,
    /// Another topic or group already maps to the same stream or consumer name
    /// (e.g. `a.b` and `a_b`).
    NameCollision,
    /// Another stream already captures (some of) the topic's subjects.
    SubjectOverlap,
    /// The settings are invalid or conflict with the existing object (e.g. a work-queue
    /// stream with a second consumer group, a storage type that cannot change, a backoff
    /// longer than `max_deliver`).
    InvalidConfig,
    /// The stream does not exist and automatic provisioning is off.
    NotFound,
    /// JetStream is not enabled on the server or account.
    JetStreamUnavailable,
    /// A server limit was hit (streams, consumers, storage).
    ResourcesExceeded,
    /// The server did not answer in time.
    Timeout,
    /// Anything else the server reported.
    Other,
}

impl fmt::Display for ProvisionErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidName => "invalid name",
            Self::NameCollision => "name collision",
            Self::SubjectOverlap => "subjects overlap with an existing stream",
            Self::InvalidConfig => "invalid stream or consumer config",
            Self::NotFound => "stream not found",
            Self::JetStreamUnavailable => "JetStream unavailable",
            Self::ResourcesExceeded => "JetStream resources exceeded",
            Self::Timeout => "JetStream request timed out",
            Self::Other => "provisioning failed",
        })
    }
}

/// A failed stream or consumer provisioning.
pub type ProvisionError = herald_core::Error<ProvisionErrorKind>;

/// The kind of a JetStream API error code.
pub(crate) fn kind_of_code(code: ErrorCode) -> ProvisionErrorKind {
    use ProvisionErrorKind as K;
    match code {
        ErrorCode::STREAM_SUBJECT_OVERLAP => K::SubjectOverlap,
        ErrorCode::STREAM_NOT_FOUND => K::NotFound,
        ErrorCode::JETSTREAM_NOT_ENABLED | ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT => {
            K::JetStreamUnavailable
        }
        ErrorCode::ACCOUNT_RESOURCES_EXCEEDED
        | ErrorCode::INSUFFICIENT_RESOURCES
        | ErrorCode::MAXIMUM_CONSUMERS_LIMIT
        | ErrorCode::MAXIMUM_STREAMS_LIMIT
        | ErrorCode::STORAGE_RESOURCES_EXCEEDED
        | ErrorCode::MEMORY_RESOURCES_EXCEEDED => K::ResourcesExceeded,
        ErrorCode::STREAM_NAME_EXIST | ErrorCode::CONSUMER_NAME_EXIST => K::NameCollision,
        ErrorCode::STREAM_INVALID_CONFIG
        | ErrorCode::STREAM_UPDATE
        | ErrorCode::STREAM_REPLICAS_NOT_UPDATABLE
        | ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED
        | ErrorCode::STREAM_MAX_BYTES_REQUIRED
        | ErrorCode::CONSUMER_CREATE
        | ErrorCode::CONSUMER_MAX_DELIVER_BACKOFF
        | ErrorCode::CONSUMER_MAX_PENDING_ACK_EXCESS
        | ErrorCode::CONSUMER_WQ_REQUIRES_EXPLICIT_ACK
        | ErrorCode::CONSUMER_WQ_CONSUMER_NOT_DELIVER_ALL
        | ErrorCode::CONSUMER_BAD_DURABLE_NAME
        | ErrorCode::CONSUMER_NAME_TOO_LONG
        | ErrorCode::CONSUMER_EXISTING_ACTIVE => K::InvalidConfig,
        // 10099 / 10100: work-queue streams accept one unfiltered consumer / no overlap.
        ErrorCode(10099) | ErrorCode(10100) => K::InvalidConfig,
        _ => K::Other,
    }
}

/// A provisioning error from a JetStream API error.
pub(crate) fn from_api(context: &str, err: jetstream::Error) -> ProvisionError {
    let kind = kind_of_code(err.error_code());
    let hint = match kind {
        ProvisionErrorKind::InvalidConfig
            if matches!(err.error_code(), ErrorCode(10099) | ErrorCode(10100)) =>
        {
            " (work-queue retention allows one consumer group per topic; use limits or interest retention)"
        }
        _ => "",
    };
    ProvisionError::new(kind, format!("{context}: {err}{hint}")).with_source(err)
}

/// A provisioning error from any other failure (transport, timeout).
pub(crate) fn from_other(
    context: &str,
    timed_out: bool,
    err: impl Into<herald_core::BoxError>,
) -> ProvisionError {
    let err = err.into();
    let kind = if timed_out {
        ProvisionErrorKind::Timeout
    } else {
        ProvisionErrorKind::Other
    };
    ProvisionError::new(kind, format!("{context}: {err}")).with_source(err)
}

/// A provisioning failure as a subscribe error.
pub(crate) fn to_subscribe(e: ProvisionError) -> SubscribeError {
    {
        let kind = match e.kind() {
            ProvisionErrorKind::NotFound => SubscribeErrorKind::UnknownTopic,
            ProvisionErrorKind::InvalidName
            | ProvisionErrorKind::NameCollision
            | ProvisionErrorKind::SubjectOverlap
            | ProvisionErrorKind::InvalidConfig => SubscribeErrorKind::InvalidConfig,
            ProvisionErrorKind::Timeout => SubscribeErrorKind::Connection,
            _ => SubscribeErrorKind::Other,
        };
        SubscribeError::new(kind, e.to_string()).with_source(e)
    }
}

/// A provisioning failure as a publish error.
pub(crate) fn to_publish(e: ProvisionError) -> PublishError {
    {
        let kind = match e.kind() {
            ProvisionErrorKind::NotFound => PublishErrorKind::UnknownTopic,
            ProvisionErrorKind::InvalidName => PublishErrorKind::InvalidMessage,
            ProvisionErrorKind::Timeout => PublishErrorKind::Timeout,
            ProvisionErrorKind::NameCollision
            | ProvisionErrorKind::SubjectOverlap
            | ProvisionErrorKind::InvalidConfig => PublishErrorKind::UnknownTopic,
            _ => PublishErrorKind::Other,
        };
        PublishError::new(kind, e.to_string()).with_source(e)
    }
}

/// async-nats' connect error as ours.
pub(crate) fn to_connect(e: async_nats::ConnectError) -> ConnectError {
    {
        use async_nats::ConnectErrorKind as N;
        let kind = match e.kind() {
            N::ServerParse | N::Dns => ConnectErrorKind::InvalidConfig,
            N::Authentication | N::AuthorizationViolation => ConnectErrorKind::Unauthorized,
            N::TimedOut => ConnectErrorKind::Timeout,
            N::Tls => ConnectErrorKind::Tls,
            // async-nats reports a refused server certificate as an I/O error; the rustls
            // error inside says what it is.
            _ if rustls_failure(&e) => ConnectErrorKind::Tls,
            _ => ConnectErrorKind::Connection,
        };
        ConnectError::new(kind, e.to_string()).with_source(e)
    }
}

/// Whether a TLS failure (a `rustls` error, possibly inside an `io::Error`) is somewhere
/// in `e`'s source chain.
fn rustls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::rustls;
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        next = err.source();
    }
    false
}
