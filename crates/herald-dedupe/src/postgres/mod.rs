//! The PostgreSQL store: an inbox table, and the transactional form.
//!
//! One row per key in `herald_inbox` (schema and table configurable), created by
//! [`PgDedupe::migrate`] from the migration this crate ships
//! (`migrations/0001_herald_inbox.sql`):
//!
//! ```sql
//! herald_inbox(key text PRIMARY KEY, token uuid, state text, lease_until timestamptz,
//!              completed_at timestamptz)
//! ```
//!
//! * **Claim**: `INSERT … ON CONFLICT (key) DO UPDATE … WHERE (state <> 'done' AND
//!   lease_until < now()) OR (state = 'done' AND completed_at < now() - retention)` —
//!   one statement that inserts a new claim, takes over an expired lease, or re-claims a
//!   key past its retention, and otherwise leaves the row alone (then `done` →
//!   [`Claim::Duplicate`], `in_progress` → [`Claim::InProgress`]). Times are the
//!   database's clock, so workers' clocks do not matter.
//! * **Complete / abandon**: `UPDATE`/`DELETE … WHERE key = $1 AND token = $2 AND
//!   state = 'in_progress'` — a stale token matches nothing ([`DedupeErrorKind::LeaseLost`]).
//!   A claim whose lease ran out but that nobody took over can still be completed.
//! * **Retention**: completed keys older than [`PgDedupeConfig::retention`] are treated as
//!   forgotten by claims; [`PgDedupe::purge_completed`] deletes old `done` rows to reclaim
//!   space (run it from a periodic task).
//! * **Transactional form** ([`PgDedupe::begin_in`], [`transactional`]): the inbox row is
//!   inserted as `done` inside the handler's own transaction, so the handler's writes and
//!   "seen" commit or roll back together — exactly-once effects on this database. A
//!   concurrent duplicate waits on the row lock and then sees the outcome.

mod transactional;

use std::{fmt, str::FromStr, sync::Arc, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use futures::future::BoxFuture;
use herald_core::{
    ErrorClass, HandlerError,
    dedupe::{Claim, ClaimToken, DedupeError, DedupeErrorKind, DedupeStore, lease_millis},
};
use tokio_postgres::{NoTls, Transaction};
use uuid::Uuid;

pub use transactional::{Transactional, transactional};

/// The inbox migration, with `{table}` and `{index}` placeholders.
pub const MIGRATION: &str = include_str!("../../migrations/0001_herald_inbox.sql");

/// Settings of a [`PgDedupe`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgDedupeConfig {
    /// The schema of the inbox table. Default `public`.
    pub schema: String,
    /// The inbox table. Default `herald_inbox`.
    pub table: String,
    /// How long a completed key is remembered. Default 7 days.
    pub retention: Duration,
    /// Connections in the pool [`PgDedupe::connect`] builds. Default 16.
    pub pool_size: usize,
    /// Deadline to get a connection from that pool (wait, connect, recycle). Default 5 s.
    pub pool_timeout: Duration,
}

impl Default for PgDedupeConfig {
    fn default() -> Self {
        Self {
            schema: "public".into(),
            table: "herald_inbox".into(),
            retention: Duration::from_secs(7 * 24 * 3600),
            pool_size: 16,
            pool_timeout: Duration::from_secs(5),
        }
    }
}

impl PgDedupeConfig {
    /// Sets the schema.
    pub fn schema(mut self, s: impl Into<String>) -> Self {
        self.schema = s.into();
        self
    }

    /// Sets the table.
    pub fn table(mut self, t: impl Into<String>) -> Self {
        self.table = t.into();
        self
    }

    /// Sets the retention of completed keys.
    pub fn retention(mut self, d: Duration) -> Self {
        self.retention = d;
        self
    }

    /// Sets the pool size of [`PgDedupe::connect`].
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }
}

/// What [`PgDedupe::begin_in`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxClaim {
    /// The row is inserted as `done` in the transaction: handle the message in it and
    /// commit (or roll back, and the key is free again).
    Claimed,
    /// The key was handled and committed before: acknowledge without handling.
    Duplicate,
    /// A non-transactional claim holds the key (mixed use of both forms): redeliver later.
    InProgress,
}

/// Maps a PostgreSQL error: a lost or refused connection, server shutdown, resource
/// exhaustion, serialization failure or deadlock is [`DedupeErrorKind::Unavailable`].
pub fn map_error(e: tokio_postgres::Error) -> DedupeError {
    DedupeError::new(classify(&e), "postgres").with_source(e)
}

fn classify(e: &tokio_postgres::Error) -> DedupeErrorKind {
    if e.is_closed() {
        return DedupeErrorKind::Unavailable;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        let transient = c.starts_with("08") // connection exception
            || c.starts_with("53") // insufficient resources
            || c.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
            || c == "40001" // serialization failure
            || c == "40P01" // deadlock
            || c == "55P03"; // lock not available
        return if transient {
            DedupeErrorKind::Unavailable
        } else {
            DedupeErrorKind::Other
        };
    }
    // No SQLSTATE: a client-side failure. I/O and connect errors are transient.
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.is::<std::io::Error>() {
            return DedupeErrorKind::Unavailable;
        }
        src = s.source();
    }
    if e.to_string().contains("connect") {
        DedupeErrorKind::Unavailable
    } else {
        DedupeErrorKind::Other
    }
}

/// Maps a pool error: a timeout or a connection failure is unavailable.
pub fn map_pool_error(e: PoolError) -> DedupeError {
    match e {
        PoolError::Backend(e) => map_error(e),
        PoolError::Timeout(t) => DedupeError::new(
            DedupeErrorKind::Unavailable,
            format!("postgres pool timed out ({t:?})"),
        ),
        PoolError::Closed => DedupeError::new(DedupeErrorKind::Unavailable, "postgres pool closed"),
        other => DedupeError::new(DedupeErrorKind::Other, "postgres pool").with_source(other),
    }
}

/// A handler error from a PostgreSQL error inside a handler: Transient when the database
/// was unavailable (see [`map_error`]), else Permanent.
pub fn handler_error(e: tokio_postgres::Error) -> HandlerError {
    let class = match classify(&e) {
        DedupeErrorKind::Unavailable => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    };
    HandlerError::from_error(class, e)
}

fn quote_ident(s: &str) -> Result<String, DedupeError> {
    if s.is_empty() || s.len() > 63 || s.contains('\0') {
        return Err(DedupeError::new(
            DedupeErrorKind::Other,
            format!("invalid SQL identifier {s:?}: 1 to 63 bytes, no NUL"),
        ));
    }
    Ok(format!("\"{}\"", s.replace('"', "\"\"")))
}

/// The SQL of one configured table.
#[derive(Debug)]
struct Sql {
    table: String,
    index: String,
    claim: String,
    claim_many: String,
    claim_done: String,
    state: String,
    complete: String,
    complete_many: String,
    abandon: String,
    purge: String,
}

impl Sql {
    fn new(schema: &str, table: &str) -> Result<Self, DedupeError> {
        let t = format!("{}.{}", quote_ident(schema)?, quote_ident(table)?);
        let mut index_name = format!("{table}_done_idx");
        while index_name.len() > 63 {
            index_name.pop();
        }
        let index = quote_ident(&index_name)?;
        // $ret: retention in ms. Expired lease, or done past retention: claimable.
        let claimable = |ret: &str| {
            format!(
                "WHERE (t.state <> 'done' AND t.lease_until < now()) \
                 OR (t.state = 'done' AND t.completed_at < now() - {ret}::bigint * interval '1 millisecond')"
            )
        };
        let claim = format!(
            "WITH old AS (SELECT state FROM {t} WHERE key = $1), \
             claimed AS (INSERT INTO {t} AS t (key, token, state, lease_until) \
               VALUES ($1, $2, 'in_progress', now() + $3::bigint * interval '1 millisecond') \
               ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, state = 'in_progress', \
                 lease_until = EXCLUDED.lease_until, completed_at = NULL {} \
               RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM claimed) AS claimed, (SELECT state FROM old) AS old_state",
            claimable("$4")
        );
        let claim_many = format!(
            "WITH input AS (SELECT * FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS i(key, token, ord)), \
             old AS (SELECT t.key, t.state FROM {t} t JOIN input i ON t.key = i.key), \
             claimed AS (INSERT INTO {t} AS t (key, token, state, lease_until) \
               SELECT key, token, 'in_progress', now() + $3::bigint * interval '1 millisecond' \
               FROM input ORDER BY key \
               ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, state = 'in_progress', \
                 lease_until = EXCLUDED.lease_until, completed_at = NULL {} \
               RETURNING t.key) \
             SELECT (c.key IS NOT NULL) AS claimed, o.state AS old_state \
             FROM input i LEFT JOIN claimed c ON c.key = i.key LEFT JOIN old o ON o.key = i.key \
             ORDER BY i.ord",
            claimable("$4")
        );
        let claim_done = format!(
            "WITH old AS (SELECT state FROM {t} WHERE key = $1), \
             claimed AS (INSERT INTO {t} AS t (key, token, state, completed_at) \
               VALUES ($1, $2, 'done', now()) \
               ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, state = 'done', \
                 lease_until = NULL, completed_at = now() {} \
               RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM claimed) AS claimed, (SELECT state FROM old) AS old_state",
            claimable("$3")
        );
        Ok(Self {
            state: format!("SELECT state FROM {t} WHERE key = $1"),
            complete: format!(
                "UPDATE {t} SET state = 'done', lease_until = NULL, completed_at = now() \
                 WHERE key = $1 AND token = $2 AND state = 'in_progress'"
            ),
            complete_many: format!(
                "UPDATE {t} AS t SET state = 'done', lease_until = NULL, completed_at = now() \
                 FROM unnest($1::text[], $2::uuid[]) AS i(key, token) \
                 WHERE t.key = i.key AND t.token = i.token AND t.state = 'in_progress' \
                 RETURNING t.key, t.token"
            ),
            abandon: format!(
                "DELETE FROM {t} WHERE key = $1 AND token = $2 AND state = 'in_progress'"
            ),
            purge: format!(
                "DELETE FROM {t} WHERE state = 'done' \
                 AND completed_at < now() - $1::bigint * interval '1 millisecond'"
            ),
            claim,
            claim_many,
            claim_done,
            table: t,
            index,
        })
    }
}

/// A [`DedupeStore`] in a PostgreSQL inbox table; see the [module docs](self).
///
/// Cheap to clone: clones share the pool.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), herald_core::dedupe::DedupeError> {
/// use std::sync::Arc;
/// use herald_core::middleware::dedupe::DedupeLayer;
/// use herald_dedupe::postgres::{PgDedupe, PgDedupeConfig};
///
/// let store = PgDedupe::connect("postgres://postgres@127.0.0.1/app", PgDedupeConfig::default())?;
/// store.migrate().await?;
/// let layer = DedupeLayer::new(Arc::new(store));
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgDedupe {
    pool: Pool,
    config: Arc<PgDedupeConfig>,
    sql: Arc<Sql>,
}

impl fmt::Debug for PgDedupe {
    /// The pool (whose config may hold a password) is not printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDedupe")
            .field("table", &self.sql.table)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PgDedupe {
    /// A store over `pool`. Fails only on an invalid schema or table name.
    pub fn new(pool: Pool, config: PgDedupeConfig) -> Result<Self, DedupeError> {
        let sql = Sql::new(&config.schema, &config.table)?;
        Ok(Self {
            pool,
            config: Arc::new(config),
            sql: Arc::new(sql),
        })
    }

    /// A store with its own pool to `url` (`postgres://user[:password]@host[:port]/db`,
    /// or key=value form), without TLS. Connections are made lazily.
    pub fn connect(url: &str, config: PgDedupeConfig) -> Result<Self, DedupeError> {
        let mut pg = tokio_postgres::Config::from_str(url).map_err(|e| {
            DedupeError::new(DedupeErrorKind::Other, "invalid PostgreSQL URL").with_source(e)
        })?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(config.pool_timeout);
        }
        let mgr = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let t = Some(config.pool_timeout);
        let pool = Pool::builder(mgr)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(t)
            .create_timeout(t)
            .recycle_timeout(t)
            .build()
            .map_err(|e| {
                DedupeError::new(DedupeErrorKind::Other, "postgres pool").with_source(e)
            })?;
        Self::new(pool, config)
    }

    /// The pool (shared with the store).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The settings.
    pub fn config(&self) -> &PgDedupeConfig {
        &self.config
    }

    /// The quoted, schema-qualified table name.
    pub fn table(&self) -> &str {
        &self.sql.table
    }

    fn retention_ms(&self) -> i64 {
        i64::try_from(lease_millis(self.config.retention)).unwrap_or(i64::MAX)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DedupeError> {
        self.pool.get().await.map_err(map_pool_error)
    }

    /// Creates the schema (if missing), the inbox table and its index. Idempotent, and
    /// safe to run from many processes at once (an advisory lock serialises them).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(store: herald_dedupe::postgres::PgDedupe) -> Result<(), herald_core::dedupe::DedupeError> {
    /// store.migrate().await?; // at startup, every time
    /// # Ok(()) }
    /// ```
    pub async fn migrate(&self) -> Result<(), DedupeError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_error)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('herald_dedupe_migrate'))",
            &[],
        )
        .await
        .map_err(map_error)?;
        let has_schema = tx
            .query_opt(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1",
                &[&self.config.schema],
            )
            .await
            .map_err(map_error)?
            .is_some();
        if !has_schema {
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(&self.config.schema)?
            ))
            .await
            .map_err(map_error)?;
        }
        let ddl = MIGRATION
            .replace("{table}", &self.sql.table)
            .replace("{index}", &self.sql.index);
        tx.batch_execute(&ddl).await.map_err(map_error)?;
        tx.commit().await.map_err(map_error)
    }

    /// Deletes `done` rows completed more than `older_than` ago; returns how many.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(store: herald_dedupe::postgres::PgDedupe) -> Result<(), herald_core::dedupe::DedupeError> {
    /// let purged = store.purge_completed(store.config().retention).await?;
    /// # let _ = purged; Ok(()) }
    /// ```
    pub async fn purge_completed(&self, older_than: Duration) -> Result<u64, DedupeError> {
        let ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let st = client
            .prepare_cached(&self.sql.purge)
            .await
            .map_err(map_error)?;
        client.execute(&st, &[&ms]).await.map_err(map_error)
    }

    /// The transactional claim: inserts `key` as `done` inside `tx`, so it commits or
    /// rolls back with the handler's own writes in that transaction.
    ///
    /// [`TxClaim::Claimed`]: handle the message in `tx`, then commit. [`TxClaim::Duplicate`]:
    /// a committed transaction handled it already — acknowledge without handling. A
    /// concurrent transaction holding the same key makes this call wait for it to finish
    /// (the row lock), then answer accordingly. Use it at read committed (the default); at
    /// repeatable read or serializable a concurrent duplicate fails with a serialization
    /// error ([`DedupeErrorKind::Unavailable`]: retry).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(store: herald_dedupe::postgres::PgDedupe, msg_id: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// use herald_dedupe::postgres::TxClaim;
    /// let mut client = store.pool().get().await?;
    /// let tx = client.transaction().await?;
    /// if store.begin_in(&tx, &format!("billing:{msg_id}")).await? == TxClaim::Claimed {
    ///     tx.execute("INSERT INTO invoices (message_id) VALUES ($1)", &[&msg_id]).await?;
    /// }
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn begin_in(&self, tx: &Transaction<'_>, key: &str) -> Result<TxClaim, DedupeError> {
        let row = tx
            .query_one(
                &self.sql.claim_done,
                &[&key, &Uuid::new_v4(), &self.retention_ms()],
            )
            .await
            .map_err(map_error)?;
        let claimed: bool = row.get(0);
        if claimed {
            return Ok(TxClaim::Claimed);
        }
        let old: Option<String> = row.get(1);
        let state = match old {
            Some(s) => Some(s),
            // The conflicting row was committed after this statement's snapshot; a new
            // statement sees it.
            None => tx
                .query_opt(&self.sql.state, &[&key])
                .await
                .map_err(map_error)?
                .map(|r| r.get::<_, String>(0)),
        };
        Ok(match state.as_deref() {
            Some("done") => TxClaim::Duplicate,
            _ => TxClaim::InProgress,
        })
    }

    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim, DedupeError> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(&self.sql.claim)
            .await
            .map_err(map_error)?;
        let token = ClaimToken::generate(key);
        let lease_ms = i64::try_from(lease_millis(lease)).unwrap_or(i64::MAX);
        let row = client
            .query_one(
                &st,
                &[&key, &token.token(), &lease_ms, &self.retention_ms()],
            )
            .await
            .map_err(map_error)?;
        Ok(decode_claim(row.get(0), row.get(1), token))
    }

    async fn settle(&self, claim: &ClaimToken, done: bool) -> Result<(), DedupeError> {
        let client = self.client().await?;
        let sql = if done {
            &self.sql.complete
        } else {
            &self.sql.abandon
        };
        let st = client.prepare_cached(sql).await.map_err(map_error)?;
        let n = client
            .execute(&st, &[&claim.key(), &claim.token()])
            .await
            .map_err(map_error)?;
        if n == 1 {
            Ok(())
        } else {
            Err(DedupeError::lease_lost(claim))
        }
    }

    async fn claim_many(
        &self,
        keys: &[String],
        lease: Duration,
    ) -> Result<Vec<Claim>, DedupeError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (unique, slots) = crate::batch::distinct(keys);
        let tokens: Vec<ClaimToken> = unique.iter().map(|k| ClaimToken::generate(*k)).collect();
        let ids: Vec<Uuid> = tokens.iter().map(ClaimToken::token).collect();
        let lease_ms = i64::try_from(lease_millis(lease)).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let st = client
            .prepare_cached(&self.sql.claim_many)
            .await
            .map_err(map_error)?;
        let rows = client
            .query(&st, &[&unique, &ids, &lease_ms, &self.retention_ms()])
            .await
            .map_err(map_error)?;
        if rows.len() != tokens.len() {
            return Err(DedupeError::new(
                DedupeErrorKind::Other,
                format!(
                    "batch claim answered {} rows for {} keys",
                    rows.len(),
                    tokens.len()
                ),
            ));
        }
        let answers: Vec<Claim> = rows
            .iter()
            .zip(tokens)
            .map(|(r, t)| decode_claim(r.get(0), r.get(1), t))
            .collect();
        let out = crate::batch::expand(&slots, &answers);
        Ok(out)
    }

    async fn complete_batch(
        &self,
        claims: &[ClaimToken],
    ) -> Result<Vec<Result<(), DedupeError>>, DedupeError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = claims.iter().map(ClaimToken::key).collect();
        let ids: Vec<Uuid> = claims.iter().map(ClaimToken::token).collect();
        let client = self.client().await?;
        let st = client
            .prepare_cached(&self.sql.complete_many)
            .await
            .map_err(map_error)?;
        let rows = client.query(&st, &[&keys, &ids]).await.map_err(map_error)?;
        let done: std::collections::HashSet<(String, Uuid)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(claims
            .iter()
            .map(|c| {
                if done.contains(&(c.key().to_owned(), c.token())) {
                    Ok(())
                } else {
                    Err(DedupeError::lease_lost(c))
                }
            })
            .collect())
    }
}

fn decode_claim(claimed: bool, old_state: Option<String>, token: ClaimToken) -> Claim {
    if claimed {
        let took_over = old_state.as_deref() == Some("in_progress");
        return Claim::New(token.with_takeover(took_over));
    }
    match old_state.as_deref() {
        Some("done") => Claim::Duplicate,
        // In progress, or committed by a concurrent claim after this statement's snapshot.
        _ => Claim::InProgress,
    }
}

impl DedupeStore for PgDedupe {
    fn begin<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, DedupeError>> {
        Box::pin(self.claim(key, lease))
    }

    fn complete<'a>(&'a self, claim: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
        Box::pin(self.settle(claim, true))
    }

    fn abandon<'a>(&'a self, claim: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
        Box::pin(self.settle(claim, false))
    }

    /// One statement over `unnest` arrays.
    fn begin_many<'a>(
        &'a self,
        keys: &'a [String],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, DedupeError>> {
        Box::pin(self.claim_many(keys, lease))
    }

    /// One `UPDATE … FROM unnest(…)`.
    fn complete_many<'a>(
        &'a self,
        claims: &'a [ClaimToken],
    ) -> BoxFuture<'a, Vec<Result<(), DedupeError>>> {
        Box::pin(async move {
            match self.complete_batch(claims).await {
                Ok(v) => v,
                Err(e) => claims.iter().map(|_| Err(e.clone())).collect(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert!(quote_ident("").is_err());
        assert!(quote_ident(&"x".repeat(64)).is_err());
        let sql = Sql::new("s-1", "inbox-2").unwrap();
        assert_eq!(sql.table, "\"s-1\".\"inbox-2\"");
        let long = Sql::new("public", &"t".repeat(63)).unwrap();
        assert!(long.index.len() <= 65);
    }

    #[test]
    fn migration_has_placeholders() {
        assert!(MIGRATION.contains("{table}"));
        assert!(MIGRATION.contains("{index}"));
    }
}
