//! librdkafka callbacks forwarded to `tracing`.

use rdkafka::{ClientContext, config::RDKafkaLogLevel, error::KafkaError};

/// Forwards librdkafka's log lines and global errors to `tracing` (target `librdkafka`).
pub(crate) fn log(level: RDKafkaLogLevel, fac: &str, line: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{line}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{line}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{line}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{line}"),
    }
}

/// Global client errors (broker down, authentication) are reported per operation as
/// well, so they are logged at `warn`, not `error`.
pub(crate) fn error(error: &KafkaError, reason: &str) {
    tracing::warn!(target: "librdkafka", %error, reason, "Kafka client error");
}

/// The context of herald's producers and admin clients.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HeraldContext;

impl ClientContext for HeraldContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, e: KafkaError, reason: &str) {
        error(&e, reason);
    }
}
