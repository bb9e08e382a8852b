//! The PostgreSQL read-model store.

use std::fmt;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;

use super::store::{
    Applied, Change, Document, Mark, ReadModelError, ReadModelErrorKind, ReadModelStore,
};
use crate::pg::{self, MigrateError};

/// Read models in PostgreSQL: three tables named after a prefix (default `herald_rm`):
///
/// ```sql
/// CREATE TABLE herald_rm_doc        (ns TEXT, key TEXT, version BIGINT, body JSONB, updated_at TIMESTAMPTZ, PRIMARY KEY (ns, key));
/// CREATE TABLE herald_rm_seen       (ns TEXT, message_id TEXT, PRIMARY KEY (ns, message_id));
/// CREATE TABLE herald_rm_checkpoint (ns TEXT, lane TEXT, position BIGINT, PRIMARY KEY (ns, lane));
/// ```
///
/// A commit is one transaction: insert the mark (a conflicting message id, or a
/// checkpoint not below the position, makes it a duplicate), then write the document
/// with a version check, then commit — so a document and its marks never disagree.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_patterns::cqrs::PgReadModelStore;
/// let store = PgReadModelStore::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgReadModelStore {
    pool: Pool,
    prefix: String,
}

impl fmt::Debug for PgReadModelStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgReadModelStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn db_err(e: tokio_postgres::Error) -> ReadModelError {
    let kind = if pg::is_unavailable(&e) {
        ReadModelErrorKind::Unavailable
    } else {
        ReadModelErrorKind::Other
    };
    ReadModelError::new(kind, "postgres").with_source(e)
}

fn pool_err(e: deadpool_postgres::PoolError) -> ReadModelError {
    ReadModelError::new(ReadModelErrorKind::Unavailable, "postgres pool").with_source(e)
}

fn migrate_err(e: MigrateError) -> ReadModelError {
    let kind = if e.is_unavailable() {
        ReadModelErrorKind::Unavailable
    } else {
        ReadModelErrorKind::Other
    };
    ReadModelError::new(kind, "creating the read-model tables").with_source(e)
}

fn i64_of(v: u64) -> Result<i64, ReadModelError> {
    i64::try_from(v).map_err(|_| ReadModelError::new(ReadModelErrorKind::Other, "version overflow"))
}

impl PgReadModelStore {
    /// Connects to `url` and creates the `herald_rm_*` tables if needed.
    pub async fn connect(url: &str) -> Result<Self, ReadModelError> {
        let pool = pg::pool(url).map_err(|e| {
            ReadModelError::new(ReadModelErrorKind::Other, "postgres pool").with_source(e)
        })?;
        Self::new(pool).await
    }

    /// Uses `pool` and the `herald_rm_*` tables.
    pub async fn new(pool: Pool) -> Result<Self, ReadModelError> {
        Self::with_prefix(pool, "herald_rm").await
    }

    /// Uses `pool` and tables `<prefix>_doc`, `<prefix>_seen`, `<prefix>_checkpoint`.
    pub async fn with_prefix(pool: Pool, prefix: &str) -> Result<Self, ReadModelError> {
        if !pg::valid_ident(prefix) || prefix.len() > 48 {
            return Err(ReadModelError::new(
                ReadModelErrorKind::Other,
                format!("invalid table prefix {prefix:?}"),
            ));
        }
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {prefix}_doc (
                ns TEXT NOT NULL, key TEXT NOT NULL, version BIGINT NOT NULL, body JSONB NOT NULL,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (ns, key));
             CREATE TABLE IF NOT EXISTS {prefix}_seen (
                ns TEXT NOT NULL, message_id TEXT NOT NULL, PRIMARY KEY (ns, message_id));
             CREATE TABLE IF NOT EXISTS {prefix}_checkpoint (
                ns TEXT NOT NULL, lane TEXT NOT NULL, position BIGINT NOT NULL, PRIMARY KEY (ns, lane));"
        );
        pg::migrate(&pool, prefix, &ddl)
            .await
            .map_err(migrate_err)?;
        Ok(Self {
            pool,
            prefix: prefix.to_owned(),
        })
    }
}

impl ReadModelStore for PgReadModelStore {
    fn get<'a>(
        &'a self,
        ns: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Document>, ReadModelError>> {
        Box::pin(async move {
            let c = self.pool.get().await.map_err(pool_err)?;
            let sql = format!(
                "SELECT version, body FROM {}_doc WHERE ns = $1 AND key = $2",
                self.prefix
            );
            let row = c.query_opt(&sql, &[&ns, &key]).await.map_err(db_err)?;
            Ok(row.map(|r| Document {
                version: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
                body: r.get(1),
            }))
        })
    }

    fn seen<'a>(
        &'a self,
        ns: &'a str,
        mark: &'a Mark,
    ) -> BoxFuture<'a, Result<bool, ReadModelError>> {
        Box::pin(async move {
            let c = self.pool.get().await.map_err(pool_err)?;
            let row = match mark {
                Mark::MessageId(id) => {
                    let sql = format!("SELECT 1 FROM {}_seen WHERE ns = $1 AND message_id = $2", self.prefix);
                    c.query_opt(&sql, &[&ns, id]).await
                }
                Mark::Position { lane, position } => {
                    let sql = format!(
                        "SELECT 1 FROM {}_checkpoint WHERE ns = $1 AND lane = $2 AND position >= $3",
                        self.prefix
                    );
                    c.query_opt(&sql, &[&ns, lane, position]).await
                }
            }
            .map_err(db_err)?;
            Ok(row.is_some())
        })
    }

    fn commit<'a>(
        &'a self,
        ns: &'a str,
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<Applied, ReadModelError>> {
        Box::pin(async move {
            let p = &self.prefix;
            let mut c = self.pool.get().await.map_err(pool_err)?;
            let tx = c.transaction().await.map_err(db_err)?;
            let marked = match change.mark {
                Mark::MessageId(id) => {
                    let sql = format!("INSERT INTO {p}_seen (ns, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING");
                    tx.execute(&sql, &[&ns, id]).await
                }
                Mark::Position { lane, position } => {
                    let sql = format!(
                        "INSERT INTO {p}_checkpoint AS c (ns, lane, position) VALUES ($1, $2, $3)
                         ON CONFLICT (ns, lane) DO UPDATE SET position = EXCLUDED.position
                         WHERE c.position < EXCLUDED.position"
                    );
                    tx.execute(&sql, &[&ns, lane, position]).await
                }
            }
            .map_err(db_err)?;
            if marked == 0 {
                // Dropping the transaction rolls it back.
                return Ok(Applied::Duplicate);
            }
            let written = match (change.expected_version, change.body) {
                (None, Some(body)) => {
                    let sql = format!(
                        "INSERT INTO {p}_doc (ns, key, version, body) VALUES ($1, $2, 1, $3) ON CONFLICT DO NOTHING"
                    );
                    tx.execute(&sql, &[&ns, &change.key, &body])
                        .await
                        .map_err(db_err)?
                        == 1
                }
                (Some(v), Some(body)) => {
                    let sql = format!(
                        "UPDATE {p}_doc SET version = version + 1, body = $3, updated_at = now()
                         WHERE ns = $1 AND key = $2 AND version = $4"
                    );
                    let v = i64_of(v)?;
                    tx.execute(&sql, &[&ns, &change.key, &body, &v])
                        .await
                        .map_err(db_err)?
                        == 1
                }
                (Some(v), None) => {
                    let sql =
                        format!("DELETE FROM {p}_doc WHERE ns = $1 AND key = $2 AND version = $3");
                    let v = i64_of(v)?;
                    tx.execute(&sql, &[&ns, &change.key, &v])
                        .await
                        .map_err(db_err)?
                        == 1
                }
                (None, None) => {
                    let sql = format!("SELECT 1 FROM {p}_doc WHERE ns = $1 AND key = $2");
                    tx.query_opt(&sql, &[&ns, &change.key])
                        .await
                        .map_err(db_err)?
                        .is_none()
                }
            };
            if !written {
                return Ok(Applied::Conflict);
            }
            tx.commit().await.map_err(db_err)?;
            Ok(Applied::Applied)
        })
    }

    fn list<'a>(
        &'a self,
        ns: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Document)>, ReadModelError>> {
        Box::pin(async move {
            let c = self.pool.get().await.map_err(pool_err)?;
            let sql = format!(
                "SELECT key, version, body FROM {}_doc WHERE ns = $1 ORDER BY key",
                self.prefix
            );
            let rows = c.query(&sql, &[&ns]).await.map_err(db_err)?;
            Ok(rows
                .iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        Document {
                            version: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                            body: r.get(2),
                        },
                    )
                })
                .collect())
        })
    }

    fn clear<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<(), ReadModelError>> {
        Box::pin(async move {
            let p = &self.prefix;
            let mut c = self.pool.get().await.map_err(pool_err)?;
            let tx = c.transaction().await.map_err(db_err)?;
            for t in ["doc", "seen", "checkpoint"] {
                let sql = format!("DELETE FROM {p}_{t} WHERE ns = $1");
                tx.execute(&sql, &[&ns]).await.map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)?;
            Ok(())
        })
    }

    fn checkpoints<'a>(
        &'a self,
        ns: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, ReadModelError>> {
        Box::pin(async move {
            let c = self.pool.get().await.map_err(pool_err)?;
            let sql = format!(
                "SELECT lane, position FROM {}_checkpoint WHERE ns = $1 ORDER BY lane",
                self.prefix
            );
            let rows = c.query(&sql, &[&ns]).await.map_err(db_err)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }
}
