//! Client settings shared by the publisher, the subscriber and the admin client:
//! the bootstrap servers plus any librdkafka property, passed through as strings.

use std::{collections::BTreeMap, fmt, time::Duration};

use rdkafka::ClientConfig;

use crate::error::{ConfigError, ConfigErrorKind};

/// Bootstrap servers and librdkafka properties, passed through unchanged.
///
/// Every [librdkafka property] works — TLS (`security.protocol`, `ssl.*`), SASL
/// (`sasl.mechanism`, `sasl.username`, `sasl.password`), client ids, socket tuning.
/// herald types only the settings it reads itself (on the builders); the rest is a
/// string map. Secrets are redacted in `Debug` (see [`is_secret`]).
///
/// # Examples
/// ```
/// use herald_kafka::KafkaConfig;
/// let config = KafkaConfig::new("broker-1:9093,broker-2:9093")
///     .set("security.protocol", "SASL_SSL")
///     .set("sasl.mechanism", "SCRAM-SHA-512")
///     .set("sasl.username", "billing")
///     .set("sasl.password", "s3cr3t");
/// let shown = format!("{config:?}");
/// assert!(shown.contains("sasl.username"));
/// assert!(!shown.contains("s3cr3t"));
/// ```
///
/// [librdkafka property]: https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// Further librdkafka properties (key → value), applied after herald's defaults, so
    /// they override them (except the few a component forces; see its builder).
    pub properties: BTreeMap<String, String>,
}

/// Whether a librdkafka property holds a secret and must never be printed:
/// any key containing `password` or `secret`, plus `sasl.oauthbearer.config`,
/// `sasl.jaas.config`, and the inline private keys `ssl.key.pem` and `ssl_key`.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k == "sasl.oauthbearer.config"
        || k == "sasl.jaas.config"
        || k == "ssl.key.pem"
        || k == "ssl_key"
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let props: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let v = if is_secret(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("properties", &props)
            .finish()
    }
}

impl KafkaConfig {
    /// Settings for `brokers` (`host:port[,host:port…]`).
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: BTreeMap::new(),
        }
    }

    /// Sets a librdkafka property (replacing an earlier value of the same key).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Sets a librdkafka property in place.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.properties.insert(key.into(), value.into());
    }

    /// A property's current value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties.get(key).map(String::as_str)
    }

    /// Takes every property of an existing `rdkafka::ClientConfig`; its
    /// `bootstrap.servers` becomes [`brokers`](Self::brokers).
    pub fn from_client_config(config: &ClientConfig) -> Self {
        let mut out = Self::default();
        for (k, v) in config.config_map() {
            if k == "bootstrap.servers" {
                out.brokers = v.to_owned();
            } else {
                out.properties.insert(k.to_owned(), v.to_owned());
            }
        }
        out
    }

    /// The `rdkafka::ClientConfig` these settings describe.
    pub fn to_client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// A property parsed as milliseconds.
    pub(crate) fn millis(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(|ms| Some(Duration::from_millis(ms)))
                .map_err(|_| {
                    ConfigError::new(
                        ConfigErrorKind::InvalidProperty,
                        format!("{key} must be a number of milliseconds"),
                    )
                }),
        }
    }
}

impl From<&ClientConfig> for KafkaConfig {
    fn from(c: &ClientConfig) -> Self {
        Self::from_client_config(c)
    }
}

pub(crate) fn ms(d: Duration) -> String {
    d.as_millis().min(i32::MAX as u128).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let c = KafkaConfig::new("b:9092")
            .set("sasl.password", "p1")
            .set("ssl.key.password", "p2")
            .set("ssl.keystore.password", "p3")
            .set("sasl.oauthbearer.client.secret", "p4")
            .set("sasl.oauthbearer.config", "principal=x p5")
            .set("client.id", "visible");
        let s = format!("{c:?}");
        for p in ["p1", "p2", "p3", "p4", "p5"] {
            assert!(!s.contains(p), "{p} leaked in {s}");
        }
        assert!(s.contains("visible"));
        assert!(s.contains("<redacted>"));
    }

    #[test]
    fn client_config_roundtrip() {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", "a:1").set("client.id", "x");
        let k = KafkaConfig::from_client_config(&cc);
        assert_eq!(k.brokers, "a:1");
        assert_eq!(k.get("client.id"), Some("x"));
        let back = k.to_client_config();
        assert_eq!(back.get("bootstrap.servers"), Some("a:1"));
        assert_eq!(back.get("client.id"), Some("x"));
    }

    #[test]
    fn millis_parse() {
        let c = KafkaConfig::new("b")
            .set("x.ms", "1500")
            .set("bad.ms", "soon");
        assert_eq!(c.millis("x.ms").unwrap(), Some(Duration::from_millis(1500)));
        assert_eq!(c.millis("none").unwrap(), None);
        assert_eq!(
            c.millis("bad.ms").unwrap_err().kind(),
            ConfigErrorKind::InvalidProperty
        );
    }
}
