//! [`NatsBroker`]: one connection, shared by the publisher, subscriber and notifier made
//! from it, plus topic provisioning.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use async_nats::{
    Client, ConnectOptions, ServerAddr,
    jetstream::{self, context::ContextBuilder},
};
use futures::future::BoxFuture;
use herald_core::{
    Message, PublishError, Publisher, SubscribeError, SubscribeSpec, Subscriber, Subscription,
    dlq_topic,
};

use crate::{
    NatsNotifier, NatsPublisher, NatsSubscriber,
    config::{Auth, ConnectionConfig, NatsConfig},
    error::{ConnectError, ConnectErrorKind, ProvisionError, ProvisionErrorKind},
    mapping, provision,
};

/// State shared by every handle made from one [`NatsBroker`].
pub(crate) struct Shared {
    pub(crate) client: Client,
    /// JetStream API requests (provisioning, pulls), bounded by `request_timeout`.
    pub(crate) js: jetstream::Context,
    pub(crate) config: NatsConfig,
    /// Topics whose streams were ensured by this process.
    known: Mutex<HashSet<String>>,
}

impl Shared {
    pub(crate) fn is_known(&self, topic: &str) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
    }

    pub(crate) fn forget(&self, topic: &str) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }

    fn remember(&self, topic: &str) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned());
    }

    /// Creates or updates the stream of `topic` and, unless it is a DLQ topic itself, of
    /// `topic.dlq`.
    pub(crate) async fn ensure_topic(
        &self,
        topic: &str,
    ) -> Result<jetstream::stream::Stream, ProvisionError> {
        let s = &self.config.stream;
        let stream = provision::ensure_stream(&self.js, topic, s, true).await?;
        if !is_dlq(topic) {
            let dlq = dlq_topic(topic);
            let ds = s.dead_letter.as_deref().unwrap_or(s);
            provision::ensure_stream(&self.js, &dlq, ds, true).await?;
            self.remember(&dlq);
        }
        self.remember(topic);
        Ok(stream)
    }

    /// The stream of `topic` for a subscriber: ensured with auto-provisioning, else looked up.
    pub(crate) async fn stream_for(
        &self,
        topic: &str,
    ) -> Result<jetstream::stream::Stream, ProvisionError> {
        if self.config.auto_provision {
            self.ensure_topic(topic).await
        } else {
            provision::ensure_stream(&self.js, topic, &self.config.stream, false).await
        }
    }
}

fn is_dlq(topic: &str) -> bool {
    topic.ends_with(".dlq")
}

/// A connection to NATS with JetStream, and the handles that use it.
///
/// `NatsBroker` is a [`Publisher`] and a [`Subscriber`] itself (through a default
/// [`NatsPublisher`] and [`NatsSubscriber`]); clones share the connection. Make more
/// handles with [`publisher`](Self::publisher), [`subscriber`](Self::subscriber) and
/// [`notifier`](Self::notifier).
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_nats::{NatsBroker, NatsConfig};
/// let broker = NatsBroker::connect(NatsConfig::new("nats://127.0.0.1:4222")).await?;
/// broker.ensure_topic("orders").await?; // streams `orders` and `orders_dlq`
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsBroker {
    pub(crate) shared: Arc<Shared>,
    publisher: NatsPublisher,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("config", &self.shared.config)
            .field("state", &self.shared.client.connection_state())
            .finish_non_exhaustive()
    }
}

impl NatsBroker {
    /// Connects with `config`.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), herald_nats::ConnectError> {
    /// use herald_nats::{NatsBroker, NatsConfig};
    /// let broker = NatsBroker::connect(NatsConfig::new("nats://127.0.0.1:4222")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: NatsConfig) -> Result<Self, ConnectError> {
        let client = connect(&config.connection).await?;
        Ok(Self::from_client(client, config))
    }

    /// Uses an existing connection; `config.connection` is ignored.
    pub fn from_client(client: Client, config: NatsConfig) -> Self {
        let js = ContextBuilder::new()
            .timeout(config.connection.request_timeout)
            .build(client.clone());
        let shared = Arc::new(Shared {
            client,
            js,
            config,
            known: Mutex::new(HashSet::new()),
        });
        Self {
            publisher: NatsPublisher::new(shared.clone()),
            shared,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NatsConfig {
        &self.shared.config
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// The JetStream context used for provisioning.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.shared.js
    }

    /// A publisher on this connection with its own PubAck bound
    /// ([`PublishSettings::max_pending_acks`](crate::config::PublishSettings::max_pending_acks)).
    pub fn publisher(&self) -> NatsPublisher {
        NatsPublisher::new(self.shared.clone())
    }

    /// A subscriber on this connection.
    pub fn subscriber(&self) -> NatsSubscriber {
        NatsSubscriber::new(self.shared.clone())
    }

    /// An at-most-once core-NATS notifier on this connection.
    pub fn notifier(&self) -> NatsNotifier {
        NatsNotifier::new(self.shared.clone())
    }

    /// Creates (or updates to the configured settings) the stream of `topic` and of its
    /// dead-letter topic `topic.dlq`; for a topic that is itself a DLQ topic, only its own
    /// stream. Returns the name of `topic`'s stream.
    ///
    /// Fails with [`NameCollision`](ProvisionErrorKind::NameCollision) when another topic
    /// already owns the stream name, [`SubjectOverlap`](ProvisionErrorKind::SubjectOverlap)
    /// when another stream captures the topic's subjects, and
    /// [`InvalidConfig`](ProvisionErrorKind::InvalidConfig) when the existing stream's storage
    /// or retention differ from the settings.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(broker: herald_nats::NatsBroker) -> Result<(), herald_nats::ProvisionError> {
    /// let stream = broker.ensure_topic("orders").await?;
    /// assert_eq!(stream, "orders");
    /// # Ok(()) }
    /// ```
    pub async fn ensure_topic(&self, topic: &str) -> Result<String, ProvisionError> {
        let stream = self.shared.ensure_topic(topic).await?;
        Ok(stream.cached_info().config.name.clone())
    }

    /// Deletes the streams of `topic` and `topic.dlq` (and with them every consumer and
    /// message). Missing streams are not an error.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), ProvisionError> {
        mapping::validate_topic(topic)
            .map_err(|m| ProvisionError::new(ProvisionErrorKind::InvalidName, m))?;
        let mut topics = vec![topic.to_owned()];
        if !is_dlq(topic) {
            topics.push(dlq_topic(topic));
        }
        for t in topics {
            self.shared.forget(&t);
            let name = mapping::stream_name(&t);
            if let Err(e) = self.shared.js.delete_stream(&name).await {
                use async_nats::jetstream::context::DeleteStreamErrorKind as K;
                match e.kind() {
                    K::JetStream(api)
                        if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => {}
                    K::JetStream(api) => {
                        return Err(crate::error::from_api(
                            &format!("deleting stream {name}"),
                            api,
                        ));
                    }
                    _ => {
                        return Err(crate::error::from_other(
                            &format!("deleting stream {name}"),
                            false,
                            e,
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The largest message (headers plus payload) the server accepts.
    pub fn max_payload(&self) -> usize {
        self.shared.client.server_info().max_payload
    }
}

impl Publisher for NatsBroker {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        self.publisher.publish(topic, messages)
    }

    fn close(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        self.publisher.close()
    }
}

impl Subscriber for NatsBroker {
    fn subscribe(
        &self,
        spec: SubscribeSpec,
    ) -> BoxFuture<'_, Result<Subscription, SubscribeError>> {
        Box::pin(async move {
            NatsSubscriber::new(self.shared.clone())
                .subscribe(spec)
                .await
        })
    }
}

/// Opens a connection as `config` says.
pub(crate) async fn connect(config: &ConnectionConfig) -> Result<Client, ConnectError> {
    let invalid = |m: String| ConnectError::new(ConnectErrorKind::InvalidConfig, m);
    if config.servers.is_empty() {
        return Err(invalid("no server URL".into()));
    }
    let servers = config
        .servers
        .iter()
        .map(|s| {
            s.parse::<ServerAddr>()
                .map_err(|e| invalid(format!("server URL {s:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut opts = ConnectOptions::new()
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .ping_interval(config.ping_interval)
        .max_reconnects(config.max_reconnects)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                other => tracing::debug!(event = %other, "NATS event"),
            }
        });
    if let Some(name) = &config.name {
        opts = opts.name(name);
    }
    if config.retry_on_initial_connect {
        opts = opts.retry_on_initial_connect();
    }
    opts = match &config.auth {
        Auth::Token { token } => opts.token(token.expose().to_owned()),
        Auth::UserPassword { user, password } => {
            opts.user_and_password(user.clone(), password.expose().to_owned())
        }
        Auth::NKey { seed } => opts.nkey(seed.expose().to_owned()),
        Auth::CredentialsFile { path } => opts.credentials_file(path).await.map_err(|e| {
            invalid(format!("credentials file {}: {e}", path.display())).with_source(e)
        })?,
        Auth::Credentials { creds } => opts
            .credentials(creds.expose())
            .map_err(|e| invalid(format!("credentials: {e}")).with_source(e))?,
        _ => opts,
    };
    let tls = &config.tls;
    if tls.require_tls {
        opts = opts.require_tls(true);
    }
    for ca in &tls.ca_certs {
        opts = opts.add_root_certificates(ca.clone());
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => opts = opts.add_client_certificate(cert.clone(), key.clone()),
        (None, None) => {}
        _ => {
            return Err(invalid(
                "TLS client_cert and client_key must be set together".into(),
            ));
        }
    }
    if tls.tls_first {
        opts = opts.tls_first();
    }
    opts.connect(servers)
        .await
        .map_err(crate::error::to_connect)
}
