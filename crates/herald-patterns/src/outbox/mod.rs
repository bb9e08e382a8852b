//! The transactional outbox on PostgreSQL: persist and publish in one atomic step.
//!
//! A command handler that writes its state and then publishes an event can lose the
//! event (a crash between the two) or publish one for a write that rolled back. With the
//! outbox the handler appends the event to an outbox table **inside its own
//! transaction** ([`Outbox::append`]); the rows commit or roll back with its writes. A
//! [`Relay`] then publishes committed rows through any [`Publisher`](herald_core::Publisher)
//! and marks them sent once the broker acknowledged them. It is the inbox's twin: the
//! inbox (dedupe store) makes *handling* exactly-once in effect, the outbox makes
//! *publishing* at-least-once and never-for-a-rollback.
//!
//! # Example
//! ```no_run
//! # async fn demo(pool: deadpool_postgres::Pool, pg: tokio_postgres::Config,
//! #     broker: std::sync::Arc<dyn herald_core::Publisher>) -> Result<(), Box<dyn std::error::Error>> {
//! use herald_core::Message;
//! use herald_patterns::outbox::{Outbox, Relay};
//!
//! let outbox = Outbox::with_table("orders_outbox")?;
//! let mut client = pool.get().await?;
//! outbox.migrate(&client).await?; // idempotent
//!
//! // In the command handler: the state change and the event commit together.
//! let tx = client.transaction().await?;
//! tx.execute("INSERT INTO orders (id) VALUES ($1)", &[&"o-1"]).await?;
//! let msg = Message::new(r#"{"order_id":"o-1"}"#).with_key("o-1").with_type("OrderCreated");
//! outbox.append(&tx, "orders", &[msg]).await?;
//! tx.commit().await?; // NOTIFY wakes the relay now
//!
//! // Somewhere (same process or a separate one): publish what committed.
//! let relay = Relay::new(outbox.clone(), pool.clone(), broker).listen(pg).spawn();
//! // ...
//! relay.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # The table
//! One row per message, created by [`Outbox::migrate`] (idempotent, safe to run from
//! several processes at once; schema and table name come from [`OutboxConfig`]):
//!
//! | column            | type          | meaning                                              |
//! |-------------------|---------------|------------------------------------------------------|
//! | `id`              | `bigserial`   | append order; the relay publishes a key in `id` order |
//! | `message_id`      | `text`        | [`Message::id`](herald_core::Message::id), fixed when the row is written |
//! | `topic`           | `text`        | where to publish                                     |
//! | `key`             | `bytea` null  | the ordering key                                     |
//! | `headers`         | `bytea`       | the ordered header multimap, binary-safe (see below) |
//! | `payload`         | `bytea`       | the payload                                          |
//! | `created_at`      | `timestamptz` | when the row was written                             |
//! | `sent_at`         | `timestamptz` null | when the broker acknowledged it                 |
//! | `attempts`        | `int`         | publish attempts so far                              |
//! | `last_error`      | `text` null   | the last publish error                               |
//! | `next_attempt_at` | `timestamptz` null | a failed row is retried no earlier than this    |
//!
//! `headers` holds a version byte `0x01`, then for each entry in order a 4-byte
//! big-endian name length, the UTF-8 name, a 4-byte big-endian value length and the value.
//!
//! Because the message id is stored, a row published again after a relay crash keeps
//! its id: NATS drops it inside its duplicate window (`Nats-Msg-Id`) and herald's dedupe
//! middleware drops it at the consumer.
//!
//! # Ordering, several relays, failures
//! See [`Relay`]: rows of one `(topic, key)` are published in `id` order, also with
//! several relays running; a failing row holds back the younger rows of its key only.
//!
//! # Retention
//! Sent rows stay until [`Outbox::purge_sent`] deletes them, or the relay's periodic
//! purge ([`RelayConfig::purge`]) does.
//!
//! # Metrics
//! Through the [`metrics`] facade, labelled `table` (`schema.table`) and, for the
//! counters, `topic`:
//!
//! | name                                  | kind      | meaning                                 |
//! |---------------------------------------|-----------|-----------------------------------------|
//! | `herald_outbox_pending_rows`          | gauge     | unsent rows, refreshed by the relay     |
//! | `herald_outbox_relay_lag_seconds`     | histogram | row written → broker acknowledged       |
//! | `herald_outbox_published_total`       | counter   | rows published and marked sent          |
//! | `herald_outbox_publish_failures_total`| counter   | row publish attempts that failed        |

mod error;
mod headers;
mod relay;
mod schema;

use std::{sync::Arc, time::Duration};

use herald_core::Message;
use tokio_postgres::{Client, Transaction, types::Type};

pub use error::{OutboxError, OutboxErrorKind};
pub use relay::{Purge, Relay, RelayConfig, RelayHandle, RelayStats, Round};

use schema::Sql;

/// Where the outbox lives: a PostgreSQL schema and table, and the `NOTIFY` channel.
///
/// # Examples
/// ```
/// use herald_patterns::outbox::{Outbox, OutboxConfig};
/// let outbox = Outbox::new(OutboxConfig {
///     table: "billing_outbox".into(),
///     ..Default::default()
/// })?;
/// assert_eq!(outbox.channel(), "herald_outbox.public.billing_outbox");
/// # Ok::<(), herald_patterns::outbox::OutboxError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxConfig {
    /// The schema; created by [`Outbox::migrate`] when missing. Default `public`.
    pub schema: String,
    /// The table. Default `herald_outbox`.
    pub table: String,
    /// The `LISTEN`/`NOTIFY` channel. Default `herald_outbox.<schema>.<table>` (a hashed
    /// form when that passes PostgreSQL's 63-byte limit).
    pub channel: Option<String>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            schema: "public".into(),
            table: "herald_outbox".into(),
            channel: None,
        }
    }
}

/// A handle on one outbox table: migrate it, append to it inside a transaction, purge it.
/// Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    schema: String,
    table: String,
    channel: String,
    label: String,
    sql: Sql,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("schema", &self.inner.schema)
            .field("table", &self.inner.table)
            .field("channel", &self.inner.channel)
            .finish()
    }
}

impl Outbox {
    /// An outbox on the configured table. Fails with
    /// [`OutboxErrorKind::InvalidConfig`] for an empty or over-long name.
    pub fn new(config: OutboxConfig) -> Result<Self, OutboxError> {
        schema::check_ident("schema", &config.schema)?;
        schema::check_ident("table", &config.table)?;
        let channel = match config.channel {
            Some(c) => {
                schema::check_ident("channel", &c)?;
                c
            }
            None => schema::derived(
                &format!("herald_outbox.{}.{}", config.schema, config.table),
                "",
            ),
        };
        let sql = Sql::new(&config.schema, &config.table, &channel);
        Ok(Self {
            inner: Arc::new(Inner {
                label: format!("{}.{}", config.schema, config.table),
                schema: config.schema,
                table: config.table,
                channel,
                sql,
            }),
        })
    }

    /// An outbox on `table` in schema `public`.
    ///
    /// # Examples
    /// ```
    /// let outbox = herald_patterns::outbox::Outbox::with_table("orders_outbox")?;
    /// assert_eq!(outbox.table(), "orders_outbox");
    /// # Ok::<(), herald_patterns::outbox::OutboxError>(())
    /// ```
    pub fn with_table(table: impl Into<String>) -> Result<Self, OutboxError> {
        Self::new(OutboxConfig {
            table: table.into(),
            ..OutboxConfig::default()
        })
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The `NOTIFY` channel that [`append`](Self::append) signals.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// `schema.table`, the `table` label of the metrics.
    pub(crate) fn label(&self) -> &str {
        &self.inner.label
    }

    pub(crate) fn sql(&self) -> &Sql {
        &self.inner.sql
    }

    /// Creates the schema, table and indexes if they are missing.
    ///
    /// Idempotent, and safe when several processes migrate at once (an advisory lock
    /// serializes them); runs as one transaction. A deadpool connection derefs to the
    /// `&Client` this takes.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(client: tokio_postgres::Client) -> Result<(), herald_patterns::outbox::OutboxError> {
    /// let outbox = herald_patterns::outbox::Outbox::with_table("orders_outbox")?;
    /// outbox.migrate(&client).await?;
    /// outbox.migrate(&client).await?; // nothing to do the second time
    /// # Ok(()) }
    /// ```
    pub async fn migrate(&self, client: &Client) -> Result<(), OutboxError> {
        client
            .batch_execute(&self.inner.sql.migrate)
            .await
            .map_err(|e| error::db("migrate", e))
    }

    /// Appends `messages` for `topic` inside the caller's transaction, and signals the
    /// relay with `NOTIFY` (PostgreSQL delivers it only if the transaction commits).
    ///
    /// The rows commit or roll back with the caller's other writes. Messages keep their
    /// ids, keys, headers and payloads; their order in the slice is their `id` order, the
    /// order the relay publishes a key in. Append the event **after** the write that
    /// serializes its key (e.g. the update of the aggregate row) so that `id` order is
    /// commit order for the key — see [`Relay`]. An empty slice does nothing.
    ///
    /// Fails with [`OutboxErrorKind::InvalidMessage`] for an empty topic or message id;
    /// a failed statement aborts the caller's transaction, as any failed statement does.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(outbox: herald_patterns::outbox::Outbox, mut client: tokio_postgres::Client)
    /// #     -> Result<(), Box<dyn std::error::Error>> {
    /// use herald_core::Message;
    /// let tx = client.transaction().await?;
    /// // ... the handler's own writes on `tx` ...
    /// outbox.append(&tx, "orders", &[Message::new("created").with_key("o-1")]).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn append(
        &self,
        tx: &Transaction<'_>,
        topic: &str,
        messages: &[Message],
    ) -> Result<(), OutboxError> {
        if messages.is_empty() {
            return Ok(());
        }
        if topic.is_empty() {
            return Err(OutboxError::new(
                OutboxErrorKind::InvalidMessage,
                "the topic is empty",
            ));
        }
        let mut ids = Vec::with_capacity(messages.len());
        let mut keys = Vec::with_capacity(messages.len());
        let mut headers = Vec::with_capacity(messages.len());
        let mut payloads = Vec::with_capacity(messages.len());
        for m in messages {
            if m.id.is_empty() {
                return Err(OutboxError::new(
                    OutboxErrorKind::InvalidMessage,
                    "a message id is empty",
                ));
            }
            ids.push(m.id.as_str());
            keys.push(m.key.as_deref());
            headers.push(headers::encode(&m.headers)?);
            payloads.push(&m.payload[..]);
        }
        let channel = self.inner.channel.as_str();
        let row = tx
            .query_typed_one(
                &self.inner.sql.insert,
                &[
                    (&topic, Type::TEXT),
                    (&ids, Type::TEXT_ARRAY),
                    (&keys, Type::BYTEA_ARRAY),
                    (&headers, Type::BYTEA_ARRAY),
                    (&payloads, Type::BYTEA_ARRAY),
                    (&channel, Type::TEXT),
                ],
            )
            .await
            .map_err(|e| error::db("append", e))?;
        let inserted: i64 = row.try_get(0).map_err(|e| error::db("append", e))?;
        if usize::try_from(inserted).ok() != Some(messages.len()) {
            return Err(OutboxError::new(
                OutboxErrorKind::Database,
                format!("append stored {inserted} of {} rows", messages.len()),
            ));
        }
        Ok(())
    }

    /// How many rows are not sent yet.
    pub async fn pending(&self, client: &Client) -> Result<u64, OutboxError> {
        let row = client
            .query_typed_one(&self.inner.sql.pending, &[])
            .await
            .map_err(|e| error::db("count pending", e))?;
        let n: i64 = row.try_get(0).map_err(|e| error::db("count pending", e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Deletes rows sent more than `older_than` ago; returns how many.
    ///
    /// Deletes in chunks of 10 000 rows, each its own statement, so a large purge does
    /// not hold one long transaction. Unsent rows are never deleted.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(outbox: herald_patterns::outbox::Outbox, client: tokio_postgres::Client)
    /// #     -> Result<(), herald_patterns::outbox::OutboxError> {
    /// let gone = outbox.purge_sent(&client, std::time::Duration::from_secs(7 * 86_400)).await?;
    /// println!("purged {gone} sent rows");
    /// # Ok(()) }
    /// ```
    pub async fn purge_sent(
        &self,
        client: &Client,
        older_than: Duration,
    ) -> Result<u64, OutboxError> {
        const CHUNK: i64 = 10_000;
        let secs = older_than.as_secs_f64();
        let mut total = 0;
        loop {
            let n = client
                .execute_typed(
                    &self.inner.sql.purge,
                    &[(&secs, Type::FLOAT8), (&CHUNK, Type::INT8)],
                )
                .await
                .map_err(|e| error::db("purge", e))?;
            total += n;
            if n < CHUNK as u64 {
                return Ok(total);
            }
        }
    }
}
