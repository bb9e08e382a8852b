//! librdkafka callbacks forwarded to `tracing`.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use rdkafka::{ClientContext, config::RDKafkaLogLevel, error::KafkaError, types::RDKafkaErrorCode};

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

/// The last client-level error librdkafka reported (a refused login, a failed TLS
/// handshake, every broker down) and when.
#[derive(Clone, Debug)]
pub(crate) struct ClientFault {
    pub(crate) code: Option<RDKafkaErrorCode>,
    pub(crate) reason: String,
    pub(crate) at: Instant,
}

/// The context of herald's producers and admin clients. It keeps the last client-level
/// error, because librdkafka reports those only to this callback: a produce to a broker
/// that refuses the login just times out, and the publisher names the cause with it.
#[derive(Clone, Debug, Default)]
pub(crate) struct HeraldContext {
    faults: Arc<Mutex<Faults>>,
}

/// The last specific fault (a connection refused, a failed handshake or login) and the
/// last "every broker is down", which follows the specific one and says less.
#[derive(Debug, Default)]
struct Faults {
    specific: Option<ClientFault>,
    all_down: Option<ClientFault>,
}

impl HeraldContext {
    /// The most telling client-level error reported at or after `since`.
    pub(crate) fn fault_since(&self, since: Instant) -> Option<ClientFault> {
        let f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let recent = |f: &Option<ClientFault>| f.as_ref().filter(|f| f.at >= since).cloned();
        recent(&f.specific).or_else(|| recent(&f.all_down))
    }
}

impl ClientContext for HeraldContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, e: KafkaError, reason: &str) {
        error(&e, reason);
        let fault = ClientFault {
            code: crate::error::code_of(&e),
            reason: reason.to_owned(),
            at: Instant::now(),
        };
        let mut f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        if fault.code == Some(RDKafkaErrorCode::AllBrokersDown) {
            f.all_down = Some(fault);
        } else {
            f.specific = Some(fault);
        }
    }
}
