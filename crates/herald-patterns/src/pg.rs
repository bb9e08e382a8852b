//! PostgreSQL plumbing shared by the saga store and the read-model store.

use deadpool_postgres::{Pool, Runtime};
use tokio_postgres::NoTls;

/// A connection pool for `url` (`postgres://user@host:port/db`), no TLS, up to 16
/// connections.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = herald_patterns::pg::pool("postgres://postgres@127.0.0.1:5432/test")?;
/// let store = herald_patterns::saga::PgSagaStore::new(pool).await?;
/// # let _ = store; Ok(()) }
/// ```
pub fn pool(url: &str) -> Result<Pool, deadpool_postgres::CreatePoolError> {
    let mut cfg = deadpool_postgres::Config {
        url: Some(url.to_owned()),
        ..Default::default()
    };
    cfg.pool = Some(deadpool_postgres::PoolConfig::new(16));
    cfg.create_pool(Some(Runtime::Tokio1), NoTls)
}

/// Whether `name` is a plain SQL identifier (letters, digits, `_`; not starting with a
/// digit): table names are interpolated, so nothing else is accepted.
pub(crate) fn valid_ident(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether a `tokio_postgres` error means "the database could not be reached" (retry
/// later) rather than "the statement is wrong".
pub(crate) fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            // 08: connection exception; 57P0x: shutdown; 53: insufficient resources;
            // 40001/40P01: serialization failure / deadlock — try again.
            c.starts_with("08")
                || c.starts_with("57P0")
                || c.starts_with("53")
                || c == "40001"
                || c == "40P01"
        }
    }
}

/// Runs `ddl` once per database at a time (an advisory lock keyed by `lock_name`), so
/// services and tests starting in parallel do not race on `CREATE TABLE IF NOT EXISTS`.
pub(crate) async fn migrate(pool: &Pool, lock_name: &str, ddl: &str) -> Result<(), MigrateError> {
    let mut client = pool.get().await.map_err(MigrateError::Pool)?;
    let tx = client.transaction().await.map_err(MigrateError::Db)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1)::bigint)",
        &[&lock_name],
    )
    .await
    .map_err(MigrateError::Db)?;
    tx.batch_execute(ddl).await.map_err(MigrateError::Db)?;
    tx.commit().await.map_err(MigrateError::Db)?;
    Ok(())
}

#[derive(Debug)]
pub(crate) enum MigrateError {
    Pool(deadpool_postgres::PoolError),
    Db(tokio_postgres::Error),
}

impl std::fmt::Display for MigrateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pool(e) => write!(f, "migration: {e}"),
            Self::Db(e) => write!(f, "migration: {e}"),
        }
    }
}

impl std::error::Error for MigrateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Pool(e) => Some(e),
            Self::Db(e) => Some(e),
        }
    }
}

impl MigrateError {
    pub(crate) fn is_unavailable(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::Db(e) => is_unavailable(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn identifiers() {
        assert!(super::valid_ident("herald_saga"));
        assert!(!super::valid_ident("1abc"));
        assert!(!super::valid_ident("a;drop table x"));
        assert!(!super::valid_ident(""));
    }
}
