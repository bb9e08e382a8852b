//! The error behind a caught panic.

use std::fmt;

/// A handler panicked. It is the source of the
/// [`Permanent`](crate::ErrorClass::Permanent) [`HandlerError`](crate::HandlerError) the
/// [`CatchPanic`](super::CatchPanic) middleware returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Panicked {
    message: String,
}

impl Panicked {
    /// A panic with `message` (the panic payload when it is a string).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The panic message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler panicked: {}", self.message)
    }
}

impl std::error::Error for Panicked {}
