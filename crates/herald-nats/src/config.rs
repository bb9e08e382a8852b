//! Configuration: the connection, and the stream, consumer and publish settings herald
//! provisions and uses.
//!
//! Every struct has public fields, `Default` and serde, and is built with
//! `..Default::default()`. Secrets ([`Secret`]) print as `<redacted>` in `Debug`.
//!
//! # Examples
//! ```
//! use std::time::Duration;
//! use herald_nats::config::{Auth, ConnectionConfig, ConsumerSettings, NatsConfig, Secret};
//!
//! let config = NatsConfig {
//!     connection: ConnectionConfig {
//!         servers: vec!["nats://127.0.0.1:4222".into()],
//!         auth: Auth::UserPassword { user: "svc".into(), password: Secret::new("hunter2") },
//!         ..Default::default()
//!     },
//!     consumer: ConsumerSettings { ack_wait: Duration::from_secs(10), ..Default::default() },
//!     ..Default::default()
//! };
//! assert!(!format!("{config:?}").contains("hunter2"));
//! ```

use std::{fmt, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// A secret string (token, password, nkey seed, credentials). `Debug` never prints it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Everything herald needs to talk to NATS.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    /// How to connect.
    pub connection: ConnectionConfig,
    /// Settings of the streams herald creates (one per topic, see [`crate::mapping`]).
    pub stream: StreamSettings,
    /// Settings of the durable pull consumers herald creates (one per consumer group).
    pub consumer: ConsumerSettings,
    /// Publishing.
    pub publish: PublishSettings,
    /// Create a topic's stream (and its dead-letter stream) on first publish or subscribe.
    /// Off: publishing to a topic without a stream fails with
    /// [`UnknownTopic`](herald_core::PublishErrorKind::UnknownTopic) and subscribing with
    /// [`UnknownTopic`](herald_core::SubscribeErrorKind::UnknownTopic); create them with
    /// [`NatsBroker::ensure_topic`](crate::NatsBroker::ensure_topic). Consumers are always
    /// created or updated on subscribe. Default: on.
    pub auto_provision: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            connection: ConnectionConfig::default(),
            stream: StreamSettings::default(),
            consumer: ConsumerSettings::default(),
            publish: PublishSettings::default(),
            auto_provision: true,
        }
    }
}

impl NatsConfig {
    /// The default configuration for one server URL (or a comma-separated list).
    pub fn new(url: &str) -> Self {
        Self {
            connection: ConnectionConfig {
                servers: url
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// How to authenticate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Auth {
    /// No authentication.
    #[default]
    None,
    /// A token.
    Token {
        /// The token.
        token: Secret,
    },
    /// A user name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: Secret,
    },
    /// An nkey seed (`SU…`).
    NKey {
        /// The seed.
        seed: Secret,
    },
    /// A `.creds` file (JWT plus nkey seed), read at connect time.
    CredentialsFile {
        /// Its path.
        path: PathBuf,
    },
    /// The contents of a `.creds` file.
    Credentials {
        /// The JWT and seed, as in the file.
        creds: Secret,
    },
}

/// TLS settings. A `tls://` URL or a server that requires TLS enables TLS as well.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// Refuse to connect without TLS.
    pub require_tls: bool,
    /// PEM files of extra root certificates to trust (a private CA).
    pub ca_certs: Vec<PathBuf>,
    /// PEM client certificate for mutual TLS; needs [`client_key`](Self::client_key).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key: Option<PathBuf>,
    /// Start TLS before the server's INFO (servers configured with `handshake_first`).
    pub tls_first: bool,
}

/// The connection: servers, identity, timeouts and reconnection.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionConfig {
    /// Server URLs, e.g. `nats://127.0.0.1:4222`, `tls://nats.example:4222`.
    pub servers: Vec<String>,
    /// The connection name the server shows in monitoring.
    pub name: Option<String>,
    /// Authentication.
    pub auth: Auth,
    /// TLS.
    pub tls: TlsConfig,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// How long JetStream API requests (stream and consumer management) may take.
    pub request_timeout: Duration,
    /// Client PING interval; a dead connection is noticed after two missed PONGs.
    pub ping_interval: Duration,
    /// Reconnect attempts before giving up; `None` retries forever (the default — a
    /// service should ride out a broker restart).
    pub max_reconnects: Option<usize>,
    /// Keep retrying the first connect instead of failing at once.
    pub retry_on_initial_connect: bool,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".into()],
            name: None,
            auth: Auth::None,
            tls: TlsConfig::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            max_reconnects: None,
            retry_on_initial_connect: false,
        }
    }
}

/// Where a stream keeps its messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Storage {
    /// On disk (the default): survives a server restart.
    #[default]
    File,
    /// In memory: faster, lost on restart.
    Memory,
}

/// When a stream drops messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Retention {
    /// Keep messages until a limit (age, bytes, count) is reached (the default; the only
    /// policy that lets any number of consumer groups read a topic, and replay).
    #[default]
    Limits,
    /// Keep a message until every consumer group that existed when it arrived acked it.
    Interest,
    /// Delete a message once acked; the server allows a single consumer group per topic.
    WorkQueue,
}

/// Settings of every stream herald creates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamSettings {
    /// Storage (default [`Storage::File`]).
    pub storage: Storage,
    /// Retention (default [`Retention::Limits`]).
    pub retention: Retention,
    /// Within this window a message id (`Nats-Msg-Id`) is stored once; a republish is
    /// acknowledged as a duplicate and dropped. Default 2 minutes.
    pub duplicate_window: Duration,
    /// Drop messages older than this; `None` keeps them (subject to the other limits).
    pub max_age: Option<Duration>,
    /// Largest stream size in bytes; `None` is unlimited.
    pub max_bytes: Option<i64>,
    /// Most messages kept; `None` is unlimited.
    pub max_messages: Option<i64>,
    /// Largest message the stream accepts; `None` leaves it to the server's `max_payload`.
    pub max_message_size: Option<i32>,
    /// Replicas (clustered servers only).
    pub replicas: usize,
    /// Settings of dead-letter streams (`<topic>.dlq`); `None` uses these settings. A DLQ
    /// usually wants a longer `max_age` than the topic.
    pub dead_letter: Option<Box<StreamSettings>>,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            storage: Storage::File,
            retention: Retention::Limits,
            duplicate_window: Duration::from_secs(120),
            max_age: None,
            max_bytes: None,
            max_messages: None,
            max_message_size: None,
            replicas: 1,
            dead_letter: None,
        }
    }
}

/// How acks and nacks are sent — a throughput / duplicate trade-off.
///
/// A lost ack never loses a message: the server redelivers it (at-least-once), so a lost
/// ack means a duplicate, which idempotent handlers or the dedupe middleware absorb.
/// Waiting for the server to confirm every ack costs a round trip per message on the
/// handler's path (about ten times fewer messages per second for a sequential handler);
/// not waiting leaves a window — a connection that drops right after an ack was written
/// — in which a handled message comes back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AckMode {
    /// `ack`/`nack` resolve once the ack is written to the connection (what raw
    /// `async-nats` `ack()` does). [`Subscription::close`](herald_core::Subscription::close)
    /// then confirms them all with one round trip: it repeats the last ack as a
    /// double-ack (AckAck), and the server, which applies a consumer's acks in order,
    /// answers it only after every earlier one. So a graceful shutdown or consumer restart
    /// never redelivers acknowledged work; only acks caught in a dropped connection can
    /// be lost. The default.
    #[default]
    Pipelined,
    /// `ack`/`nack` wait for the server's confirmation (AckAck, a `double_ack`): `Ok`
    /// means the server recorded it, `Err` that it may be redelivered. One round trip per
    /// settle; for handlers whose next step must not run before the ack is durable.
    Confirmed,
}

/// Settings of the durable pull consumer herald creates per consumer group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumerSettings {
    /// How long the server waits for an ack before redelivering. Default 30 s.
    pub ack_wait: Duration,
    /// The server's delivery limit; `None` (the default) is unlimited.
    ///
    /// Policy lives in herald's middleware: the retry budget and the dead-letter decision
    /// are taken from the attempt number this adapter reports. A server-side limit at or
    /// below that budget would make the server stop delivering a message herald has not
    /// dead-lettered yet — it stays in the stream, silently skipped. Leave it unlimited, or
    /// set it above the retry budget as a safety net (the adapter logs the server's
    /// max-deliveries advisory when it fires).
    pub max_deliver: Option<u32>,
    /// Redelivery delays the server applies to deliveries that were not acked in time
    /// (entry `n` for the `n`-th redelivery, the last repeating). Needs `max_deliver`
    /// unlimited or larger than the list. A `nack(delay)` always uses its own delay.
    pub backoff: Vec<Duration>,
    /// Send AckProgress (`+WPI`) for deliveries held longer than a quarter of the
    /// effective ack wait, so a slow handler keeps its message instead of having it
    /// redelivered to another member. Default on.
    pub progress_heartbeats: bool,
    /// How acks are sent; see [`AckMode`].
    pub ack_mode: AckMode,
    /// Messages asked for per pull request (capped by the subscription's
    /// `max_in_flight`). Default 256.
    pub fetch_batch: usize,
    /// How long one pull request waits on the server. Default 30 s.
    pub fetch_expires: Duration,
    /// Idle heartbeat the server sends on a waiting pull request; a missed one re-issues
    /// the pull. Default 5 s.
    pub idle_heartbeat: Duration,
    /// How long `close` waits for outstanding ack confirmations. Default 10 s.
    pub close_timeout: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            backoff: Vec::new(),
            progress_heartbeats: true,
            ack_mode: AckMode::Pipelined,
            fetch_batch: 256,
            fetch_expires: Duration::from_secs(30),
            idle_heartbeat: Duration::from_secs(5),
            close_timeout: Duration::from_secs(10),
        }
    }
}

impl ConsumerSettings {
    /// The shortest time the server may wait for an ack: `ack_wait`, or the shortest
    /// backoff entry when that is lower. Progress heartbeats are paced from it.
    pub fn effective_ack_wait(&self) -> Duration {
        self.backoff
            .iter()
            .copied()
            .fold(self.ack_wait, Duration::min)
            .max(Duration::from_millis(100))
    }
}

/// Publishing settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PublishSettings {
    /// The most PubAcks one publisher awaits at once, across concurrent `publish` calls:
    /// publishing is pipelined up to this bound. Default 256.
    pub max_pending_acks: usize,
    /// How long to wait for a PubAck. Default 5 s.
    pub ack_timeout: Duration,
}

impl Default for PublishSettings {
    fn default() -> Self {
        Self {
            max_pending_acks: 256,
            ack_timeout: Duration::from_secs(5),
        }
    }
}
