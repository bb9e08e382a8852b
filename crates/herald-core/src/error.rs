//! Errors: one `Error<Kind>` pair per operation, and the handler error with its class.

use std::{error::Error as StdError, fmt, sync::Arc, time::Duration};

/// A boxed source error.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// An error with a cloneable kind, a message and an optional source.
///
/// `PublishError`, `SubscribeError` and `AckError` are this type with their own kind enum.
#[derive(Clone)]
pub struct Error<K> {
    kind: K,
    message: String,
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

impl<K: Clone + fmt::Display> Error<K> {
    /// An error of `kind` with a message.
    pub fn new(kind: K, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// The kind.
    pub fn kind(&self) -> K {
        self.kind.clone()
    }

    /// The message (without the kind).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<K: fmt::Display> fmt::Display for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.kind, self.message)
        }
    }
}

impl<K: fmt::Display + fmt::Debug> fmt::Debug for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl<K: fmt::Display + fmt::Debug> StdError for Error<K> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

/// Why a publish failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// The broker did not confirm in time (delivery timeout, PubAck timeout).
    Timeout,
    /// The message exceeds the broker's size limit.
    MessageTooLarge,
    /// The topic does not exist (and is not created automatically).
    UnknownTopic,
    /// Authentication or authorization failed.
    Unauthorized,
    /// The connection to the broker failed.
    Connection,
    /// The message is invalid (e.g. an empty topic name).
    InvalidMessage,
    /// The publisher was closed.
    Closed,
    /// Anything else the broker reported.
    Other,
}

impl fmt::Display for PublishErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Timeout => "publish timed out",
            Self::MessageTooLarge => "message too large",
            Self::UnknownTopic => "unknown topic",
            Self::Unauthorized => "not authorized",
            Self::Connection => "connection failed",
            Self::InvalidMessage => "invalid message",
            Self::Closed => "publisher closed",
            Self::Other => "publish failed",
        })
    }
}

/// A failed publish.
pub type PublishError = Error<PublishErrorKind>;

impl PublishError {
    /// Whether trying the same publish again may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self.kind,
            PublishErrorKind::Timeout | PublishErrorKind::Connection | PublishErrorKind::Other
        )
    }
}

/// Why subscribing or receiving failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeErrorKind {
    /// The topic does not exist.
    UnknownTopic,
    /// The subscription's settings are invalid or conflict with the broker's.
    InvalidConfig,
    /// Authentication or authorization failed.
    Unauthorized,
    /// The connection to the broker failed.
    Connection,
    /// The subscription was closed.
    Closed,
    /// Anything else the broker reported.
    Other,
}

impl fmt::Display for SubscribeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownTopic => "unknown topic",
            Self::InvalidConfig => "invalid subscription config",
            Self::Unauthorized => "not authorized",
            Self::Connection => "connection failed",
            Self::Closed => "subscription closed",
            Self::Other => "subscription failed",
        })
    }
}

/// A failed subscribe or receive.
pub type SubscribeError = Error<SubscribeErrorKind>;

impl SubscribeError {
    /// Whether the stream may yield more deliveries after this error.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self.kind,
            SubscribeErrorKind::Connection | SubscribeErrorKind::Other
        )
    }
}

/// Why an ack or nack failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckErrorKind {
    /// The connection to the broker failed; the message will be redelivered.
    Connection,
    /// The subscription is closed or the partition was revoked; the message will be
    /// redelivered to whoever owns it now.
    Closed,
    /// Anything else.
    Other,
}

impl fmt::Display for AckErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connection => "ack failed: connection",
            Self::Closed => "ack failed: subscription closed",
            Self::Other => "ack failed",
        })
    }
}

/// A failed ack or nack.
pub type AckError = Error<AckErrorKind>;

/// How a handler failure should be treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// May succeed if tried again: retried, then dead-lettered.
    Transient,
    /// Will fail again (decode failure, validation): straight to the dead-letter queue.
    Permanent,
    /// The consumer cannot go on (e.g. lost credentials): the subscription stops and the
    /// message is left unacknowledged.
    Fatal,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Fatal => "fatal",
        })
    }
}

/// A handler's failure.
///
/// What a handler result means is defined once, in the [`Router`](crate::Router):
/// `Ok` acknowledges; `Err` is retried by the retry middleware if the class is
/// [`Transient`](ErrorClass::Transient), dead-lettered once retries are spent or at once
/// for [`Permanent`](ErrorClass::Permanent), and stops the subscription for
/// [`Fatal`](ErrorClass::Fatal). An error with [`redeliver_after`](Self::redeliver_after)
/// set is handed back to the broker (`nack` with that delay) instead of dead-lettered.
#[derive(Clone)]
pub struct HandlerError {
    class: ErrorClass,
    message: Arc<str>,
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
    redeliver_after: Option<Duration>,
}

impl HandlerError {
    /// A transient failure.
    pub fn transient(message: impl fmt::Display) -> Self {
        Self::new(ErrorClass::Transient, message)
    }

    /// A permanent failure.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self::new(ErrorClass::Permanent, message)
    }

    /// A fatal failure.
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self::new(ErrorClass::Fatal, message)
    }

    /// A failure of `class`.
    pub fn new(class: ErrorClass, message: impl fmt::Display) -> Self {
        Self {
            class,
            message: message.to_string().into(),
            source: None,
            redeliver_after: None,
        }
    }

    /// Wraps an error as `class`, keeping it as the source.
    pub fn from_error(class: ErrorClass, err: impl Into<BoxError>) -> Self {
        let err = err.into();
        Self {
            class,
            message: err.to_string().into(),
            source: Some(Arc::from(err)),
            redeliver_after: None,
        }
    }

    /// Asks the broker to redeliver after `delay` instead of dead-lettering.
    pub fn redeliver_after(mut self, delay: Duration) -> Self {
        self.redeliver_after = Some(delay);
        self
    }

    /// The delay for broker redelivery, if set.
    pub fn redelivery(&self) -> Option<Duration> {
        self.redeliver_after
    }

    /// The class.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// Whether the class is [`ErrorClass::Transient`].
    pub fn is_retriable(&self) -> bool {
        self.class == ErrorClass::Transient
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.class, self.message)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("class", &self.class)
            .field("message", &self.message)
            .field("redeliver_after", &self.redeliver_after)
            .finish()
    }
}

impl StdError for HandlerError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

impl From<PublishError> for HandlerError {
    /// A failed publish inside a handler is transient when the publish is retriable.
    fn from(e: PublishError) -> Self {
        let class = if e.is_retriable() {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        };
        Self::from_error(class, e)
    }
}
