//! Errors of this crate and the translation of librdkafka's error codes into herald's
//! typed kinds.
//!
//! Publishing, subscribing and acknowledging use herald-core's [`PublishError`],
//! [`SubscribeError`] and [`AckError`]; building a client and administering topics add
//! [`ConfigError`] and [`AdminError`], the same `Error<Kind>` shape.

use std::fmt;

use herald_core::{PublishError, PublishErrorKind, SubscribeError, SubscribeErrorKind};
use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};

pub use herald_core::{AckError, AckErrorKind};

/// Why a client could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// A property has an invalid name or value (librdkafka rejected it, or herald could
    /// not read a value it needs).
    InvalidProperty,
    /// librdkafka could not create the client.
    ClientCreation,
}

impl fmt::Display for ConfigErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidProperty => "invalid Kafka client property",
            Self::ClientCreation => "cannot create Kafka client",
        })
    }
}

/// A client could not be built.
pub type ConfigError = herald_core::Error<ConfigErrorKind>;

/// Why a topic operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminErrorKind {
    /// The broker refused: authentication or authorization failed.
    Unauthorized,
    /// The broker refused the request itself: invalid topic name, partition count,
    /// replication factor, or a topic policy.
    Invalid,
    /// The topic does not exist (deleting).
    UnknownTopic,
    /// The broker did not answer within the admin timeout.
    Timeout,
    /// The broker could not be reached.
    Connection,
    /// Anything else the broker reported.
    Other,
}

impl AdminErrorKind {
    /// Whether trying the same operation again may succeed.
    pub fn is_retriable(self) -> bool {
        matches!(self, Self::Timeout | Self::Connection | Self::Other)
    }
}

impl fmt::Display for AdminErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unauthorized => "not authorized",
            Self::Invalid => "request refused by the broker",
            Self::UnknownTopic => "unknown topic",
            Self::Timeout => "admin request timed out",
            Self::Connection => "broker unreachable",
            Self::Other => "admin request failed",
        })
    }
}

/// A topic operation failed.
pub type AdminError = herald_core::Error<AdminErrorKind>;

/// A client-creation error. librdkafka's message for a bad property quotes its value,
/// so for secret properties the value (and the original error) is left out.
pub(crate) fn config_error(e: KafkaError) -> ConfigError {
    match e {
        KafkaError::ClientConfig(_, desc, key, value) => {
            let message = if crate::config::is_secret(&key) {
                format!("{key}: invalid value or unknown property (value redacted)")
            } else {
                format!("{key}={value}: {desc}")
            };
            ConfigError::new(ConfigErrorKind::InvalidProperty, message)
        }
        e => ConfigError::new(ConfigErrorKind::ClientCreation, e.to_string()).with_source(e),
    }
}

/// The librdkafka error code carried by an error, if any.
pub(crate) fn code_of(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    match e {
        KafkaError::AdminOp(c) => Some(*c),
        other => other.rdkafka_error_code(),
    }
}

fn is_auth(c: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        c,
        C::Authentication
            | C::SaslAuthenticationFailed
            | C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::DelegationTokenAuthorizationFailed
            | C::IllegalSASLState
            | C::UnsupportedSASLMechanism
    )
}

fn is_connection(c: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        c,
        C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::BrokerNotAvailable
            | C::NetworkException
            | C::SSL
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
    )
}

fn is_unknown_topic(c: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        c,
        C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition | C::UnknownTopicId
    )
}

fn is_timeout(c: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        c,
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut
    )
}

/// The publish kind of a librdkafka error code.
pub(crate) fn publish_kind(c: RDKafkaErrorCode) -> PublishErrorKind {
    use RDKafkaErrorCode as C;
    match c {
        C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidRecord => {
            PublishErrorKind::MessageTooLarge
        }
        c if is_timeout(c) => PublishErrorKind::Timeout,
        c if is_unknown_topic(c) => PublishErrorKind::UnknownTopic,
        c if is_auth(c) => PublishErrorKind::Unauthorized,
        c if is_connection(c) => PublishErrorKind::Connection,
        C::InvalidTopic | C::InvalidArgument | C::BadMessage | C::InvalidMessage => {
            PublishErrorKind::InvalidMessage
        }
        C::PurgeQueue | C::PurgeInflight => PublishErrorKind::Closed,
        _ => PublishErrorKind::Other,
    }
}

pub(crate) fn publish_error(e: KafkaError) -> PublishError {
    let kind = match &e {
        KafkaError::Nul(_) => PublishErrorKind::InvalidMessage,
        KafkaError::Canceled => PublishErrorKind::Closed,
        other => code_of(other).map_or(PublishErrorKind::Other, publish_kind),
    };
    PublishError::new(kind, e.to_string()).with_source(e)
}

/// The subscribe kind of a librdkafka error code.
pub(crate) fn subscribe_kind(c: RDKafkaErrorCode) -> SubscribeErrorKind {
    match c {
        c if is_unknown_topic(c) => SubscribeErrorKind::UnknownTopic,
        c if is_auth(c) => SubscribeErrorKind::Unauthorized,
        c if is_connection(c) || is_timeout(c) => SubscribeErrorKind::Connection,
        RDKafkaErrorCode::InvalidConfig
        | RDKafkaErrorCode::InvalidArgument
        | RDKafkaErrorCode::InvalidSessionTimeout
        | RDKafkaErrorCode::InvalidGroupId
        | RDKafkaErrorCode::InvalidTopic => SubscribeErrorKind::InvalidConfig,
        _ => SubscribeErrorKind::Other,
    }
}

pub(crate) fn subscribe_error(e: KafkaError) -> SubscribeError {
    let kind = match &e {
        KafkaError::ClientConfig(..) | KafkaError::Subscription(_) => {
            SubscribeErrorKind::InvalidConfig
        }
        other => code_of(other).map_or(SubscribeErrorKind::Other, subscribe_kind),
    };
    SubscribeError::new(kind, e.to_string()).with_source(e)
}

/// The admin kind of a librdkafka error code.
pub(crate) fn admin_kind(c: RDKafkaErrorCode) -> AdminErrorKind {
    use RDKafkaErrorCode as C;
    match c {
        c if is_auth(c) => AdminErrorKind::Unauthorized,
        c if is_timeout(c) => AdminErrorKind::Timeout,
        c if is_connection(c) => AdminErrorKind::Connection,
        c if is_unknown_topic(c) => AdminErrorKind::UnknownTopic,
        C::InvalidTopic
        | C::InvalidPartitions
        | C::InvalidReplicationFactor
        | C::InvalidReplicaAssignment
        | C::InvalidConfig
        | C::InvalidRequest
        | C::PolicyViolation
        | C::InvalidArgument
        | C::TopicDeletionDisabled => AdminErrorKind::Invalid,
        _ => AdminErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_codes_map_to_kinds() {
        let k = |c| publish_error(KafkaError::MessageProduction(c)).kind();
        assert_eq!(
            k(RDKafkaErrorCode::MessageSizeTooLarge),
            PublishErrorKind::MessageTooLarge
        );
        assert_eq!(
            k(RDKafkaErrorCode::MessageTimedOut),
            PublishErrorKind::Timeout
        );
        assert_eq!(
            k(RDKafkaErrorCode::UnknownTopicOrPartition),
            PublishErrorKind::UnknownTopic
        );
        assert_eq!(
            k(RDKafkaErrorCode::TopicAuthorizationFailed),
            PublishErrorKind::Unauthorized
        );
        assert_eq!(
            k(RDKafkaErrorCode::AllBrokersDown),
            PublishErrorKind::Connection
        );
        assert_eq!(k(RDKafkaErrorCode::PurgeQueue), PublishErrorKind::Closed);
        assert_eq!(
            k(RDKafkaErrorCode::OutOfOrderSequenceNumber),
            PublishErrorKind::Other
        );
        let e = publish_error(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut,
        ));
        assert!(e.is_retriable());
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn invalid_secret_property_is_not_quoted() {
        let err = crate::KafkaPublisher::builder("127.0.0.1:1")
            .set("sasl.password.typo", "hunter2")
            .build()
            .expect_err("unknown property");
        assert_eq!(err.kind(), ConfigErrorKind::InvalidProperty);
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("sasl.password.typo"));
        let err = crate::KafkaPublisher::builder("127.0.0.1:1")
            .set("linger.ms", "soon")
            .build()
            .expect_err("invalid value");
        assert!(
            err.to_string().contains("soon"),
            "non-secret values are shown: {err}"
        );
    }

    #[test]
    fn consume_and_admin_codes_map_to_kinds() {
        assert_eq!(
            subscribe_error(KafkaError::MessageConsumption(
                RDKafkaErrorCode::UnknownTopicOrPartition
            ))
            .kind(),
            SubscribeErrorKind::UnknownTopic
        );
        assert_eq!(
            subscribe_error(KafkaError::MessageConsumption(
                RDKafkaErrorCode::BrokerTransportFailure
            ))
            .kind(),
            SubscribeErrorKind::Connection
        );
        assert_eq!(
            admin_kind(RDKafkaErrorCode::InvalidReplicationFactor),
            AdminErrorKind::Invalid
        );
        assert_eq!(
            admin_kind(RDKafkaErrorCode::ClusterAuthorizationFailed),
            AdminErrorKind::Unauthorized
        );
        assert!(!AdminErrorKind::Invalid.is_retriable());
    }
}
