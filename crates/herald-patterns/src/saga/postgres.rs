//! The PostgreSQL saga store.

use std::fmt;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use tokio_postgres::Row;

use super::store::{SagaRecord, SagaState, SagaStore, SagaStoreError, SagaStoreErrorKind};
use crate::pg::{self, MigrateError};

/// Saga state in a PostgreSQL table (default `herald_saga`):
///
/// ```sql
/// CREATE TABLE herald_saga (
///   saga TEXT NOT NULL, id TEXT NOT NULL,
///   version BIGINT NOT NULL,        -- optimistic concurrency
///   status TEXT NOT NULL,           -- running | compensating | completed | compensated | failed
///   wake_at BIGINT,                 -- ms since epoch: step deadline or outbox due time
///   state JSONB NOT NULL,           -- SagaState: data, outbox, history…
///   updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
///   PRIMARY KEY (saga, id));
/// CREATE INDEX ON herald_saga (saga, wake_at) WHERE wake_at IS NOT NULL;
/// ```
///
/// An update is `UPDATE … WHERE saga = $1 AND id = $2 AND version = $expected`: zero rows
/// means someone else saved first ([`SagaStoreErrorKind::Conflict`]).
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_patterns::saga::PgSagaStore;
/// let store = PgSagaStore::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgSagaStore {
    pool: Pool,
    table: String,
}

impl fmt::Debug for PgSagaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSagaStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn db_err(e: tokio_postgres::Error) -> SagaStoreError {
    let kind = if pg::is_unavailable(&e) {
        SagaStoreErrorKind::Unavailable
    } else {
        SagaStoreErrorKind::Other
    };
    SagaStoreError::new(kind, "postgres").with_source(e)
}

fn pool_err(e: deadpool_postgres::PoolError) -> SagaStoreError {
    SagaStoreError::new(SagaStoreErrorKind::Unavailable, "postgres pool").with_source(e)
}

fn migrate_err(e: MigrateError) -> SagaStoreError {
    let kind = if e.is_unavailable() {
        SagaStoreErrorKind::Unavailable
    } else {
        SagaStoreErrorKind::Other
    };
    SagaStoreError::new(kind, "creating the saga table").with_source(e)
}

fn version_i64(v: u64) -> Result<i64, SagaStoreError> {
    i64::try_from(v).map_err(|_| SagaStoreError::new(SagaStoreErrorKind::Other, "version overflow"))
}

impl PgSagaStore {
    /// Connects to `url` and creates the table `herald_saga` if needed.
    pub async fn connect(url: &str) -> Result<Self, SagaStoreError> {
        let pool = pg::pool(url).map_err(|e| {
            SagaStoreError::new(SagaStoreErrorKind::Other, "postgres pool").with_source(e)
        })?;
        Self::new(pool).await
    }

    /// Uses `pool` and the table `herald_saga`, creating it if needed.
    pub async fn new(pool: Pool) -> Result<Self, SagaStoreError> {
        Self::with_table(pool, "herald_saga").await
    }

    /// Uses `pool` and `table` (a plain identifier), creating it if needed.
    pub async fn with_table(pool: Pool, table: &str) -> Result<Self, SagaStoreError> {
        if !pg::valid_ident(table) {
            return Err(SagaStoreError::new(
                SagaStoreErrorKind::Other,
                format!("invalid table name {table:?}"),
            ));
        }
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                saga TEXT NOT NULL,
                id TEXT NOT NULL,
                version BIGINT NOT NULL,
                status TEXT NOT NULL,
                wake_at BIGINT,
                state JSONB NOT NULL,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (saga, id));
             CREATE INDEX IF NOT EXISTS {table}_wake ON {table} (saga, wake_at) WHERE wake_at IS NOT NULL;"
        );
        pg::migrate(&pool, table, &ddl).await.map_err(migrate_err)?;
        Ok(Self {
            pool,
            table: table.to_owned(),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    fn record(saga: &str, row: &Row) -> Result<SagaRecord, SagaStoreError> {
        let id: String = row.get("id");
        let version: i64 = row.get("version");
        let state: serde_json::Value = row.get("state");
        let state: SagaState = serde_json::from_value(state).map_err(|e| {
            SagaStoreError::new(SagaStoreErrorKind::Corrupt, format!("{saga}/{id}")).with_source(e)
        })?;
        Ok(SagaRecord {
            saga: saga.to_owned(),
            id,
            version: u64::try_from(version).unwrap_or(0),
            state,
        })
    }
}

impl SagaStore for PgSagaStore {
    fn load<'a>(
        &'a self,
        saga: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<SagaRecord>, SagaStoreError>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_err)?;
            let sql = format!(
                "SELECT id, version, state FROM {} WHERE saga = $1 AND id = $2",
                self.table
            );
            let row = client
                .query_opt(&sql, &[&saga, &id])
                .await
                .map_err(db_err)?;
            row.map(|r| Self::record(saga, &r)).transpose()
        })
    }

    fn save<'a>(
        &'a self,
        record: &'a SagaRecord,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<(), SagaStoreError>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_err)?;
            let state = serde_json::to_value(&record.state).map_err(|e| {
                SagaStoreError::new(SagaStoreErrorKind::Other, "encoding saga state").with_source(e)
            })?;
            let version = version_i64(record.version)?;
            let status = record.state.status.as_str();
            let wake = record.wake_at();
            let n = match expected {
                None => {
                    let sql = format!(
                        "INSERT INTO {} (saga, id, version, status, wake_at, state) VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT (saga, id) DO NOTHING",
                        self.table
                    );
                    client
                        .execute(
                            &sql,
                            &[&record.saga, &record.id, &version, &status, &wake, &state],
                        )
                        .await
                        .map_err(db_err)?
                }
                Some(exp) => {
                    let exp = version_i64(exp)?;
                    let sql = format!(
                        "UPDATE {} SET version = $3, status = $4, wake_at = $5, state = $6, updated_at = now()
                         WHERE saga = $1 AND id = $2 AND version = $7",
                        self.table
                    );
                    client
                        .execute(
                            &sql,
                            &[
                                &record.saga,
                                &record.id,
                                &version,
                                &status,
                                &wake,
                                &state,
                                &exp,
                            ],
                        )
                        .await
                        .map_err(db_err)?
                }
            };
            if n == 1 {
                Ok(())
            } else {
                Err(SagaStoreError::new(
                    SagaStoreErrorKind::Conflict,
                    format!(
                        "{}/{}: expected version {expected:?}",
                        record.saga, record.id
                    ),
                ))
            }
        })
    }

    fn due<'a>(
        &'a self,
        saga: &'a str,
        now_ms: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<SagaRecord>, SagaStoreError>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_err)?;
            let sql = format!(
                "SELECT id, version, state FROM {} WHERE saga = $1 AND wake_at <= $2 ORDER BY wake_at LIMIT $3",
                self.table
            );
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = client
                .query(&sql, &[&saga, &now_ms, &limit])
                .await
                .map_err(db_err)?;
            rows.iter().map(|r| Self::record(saga, r)).collect()
        })
    }

    fn list<'a>(
        &'a self,
        saga: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<SagaRecord>, SagaStoreError>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_err)?;
            let sql = format!(
                "SELECT id, version, state FROM {} WHERE saga = $1 AND ($2::TEXT IS NULL OR id > $2) ORDER BY id LIMIT $3",
                self.table
            );
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = client
                .query(&sql, &[&saga, &after, &limit])
                .await
                .map_err(db_err)?;
            rows.iter().map(|r| Self::record(saga, r)).collect()
        })
    }
}
