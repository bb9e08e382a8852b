//! [`transactional`]: a handler whose writes and "seen" mark commit together.

use std::{
    fmt,
    task::{Context, Poll},
};

use deadpool_postgres::Transaction;
use futures::future::BoxFuture;
use herald_core::{ErrorClass, HandlerError, Inbound};
use tower_service::Service;

use super::{PgDedupe, TxClaim, map_error, map_pool_error};
use crate::handler::{Settings, settings_builders};

/// A handler running in a PostgreSQL transaction with the inbox row: see [`transactional`].
pub struct Transactional<F> {
    store: PgDedupe,
    f: F,
    settings: Settings,
}

impl<F: Clone> Clone for Transactional<F> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            f: self.f.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<F> fmt::Debug for Transactional<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transactional")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// A handler with exactly-once effects on the store's database.
///
/// For each delivery it takes a connection from the store's pool, opens a transaction,
/// claims the key there ([`PgDedupe::begin_in`]; default key `"{group}:{message id}"`),
/// and then:
///
/// * duplicate — rolls back and returns `Ok(())`: the router acks without running `f`;
/// * claimed — runs `f(&tx, inbound)`; on `Ok` commits (the inbox row and `f`'s writes
///   together), on `Err` rolls back (neither) and returns the error;
/// * database unavailable, or the commit's outcome unknown — a Transient error with
///   `redeliver_after`: the redelivery finds the key done if the commit happened.
///
/// A process killed anywhere in between leaves either both or neither committed, and the
/// redelivery is handled or acked accordingly. Effects outside this database (a publish,
/// an HTTP call) are not covered: publish through the transactional outbox instead.
///
/// `f` returns a boxed future borrowing the transaction (`Box::pin(async move { … })`).
///
/// # Examples
/// ```no_run
/// # fn demo(store: herald_dedupe::postgres::PgDedupe) {
/// use herald_core::{Inbound, Router};
/// use herald_dedupe::postgres::{handler_error, transactional};
///
/// let handler = transactional(store, |tx, inbound: Inbound| {
///     Box::pin(async move {
///         tx.execute(
///             "INSERT INTO payments (message_id, body) VALUES ($1, $2)",
///             &[&inbound.message.id, &&inbound.message.payload[..]],
///         )
///         .await
///         .map_err(handler_error)?;
///         Ok(())
///     })
/// });
/// let router = Router::new().route("payments", "orders", "payments", handler);
/// # let _ = router; }
/// ```
pub fn transactional<F>(store: PgDedupe, f: F) -> Transactional<F>
where
    F: for<'t> Fn(&'t Transaction<'t>, Inbound) -> BoxFuture<'t, Result<(), HandlerError>>
        + Clone
        + Send
        + Sync
        + 'static,
{
    Transactional {
        store,
        f,
        settings: Settings::default(),
    }
}

impl<F> Transactional<F> {
    settings_builders!();
}

impl<F> Service<Inbound> for Transactional<F>
where
    F: for<'t> Fn(&'t Transaction<'t>, Inbound) -> BoxFuture<'t, Result<(), HandlerError>>
        + Clone
        + Send
        + Sync
        + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let s = &this.settings;
            let handler = inbound.route.handler.clone();
            let key = s.key(&inbound)?;
            let mut client = this
                .store
                .pool()
                .get()
                .await
                .map_err(|e| s.unavailable(&handler, "begin", map_pool_error(e)))?;
            let tx = client
                .transaction()
                .await
                .map_err(|e| s.unavailable(&handler, "begin", map_error(e)))?;
            match this.store.begin_in(&tx, &key).await {
                Ok(TxClaim::Claimed) => {}
                Ok(TxClaim::Duplicate) => {
                    s.duplicate(&handler, &key);
                    // Nothing was written; a failed rollback changes nothing either.
                    let _ = tx.rollback().await;
                    return Ok(());
                }
                Ok(TxClaim::InProgress) => {
                    let _ = tx.rollback().await;
                    return Err(s.in_progress(&handler, &key));
                }
                Err(e) => {
                    let _ = tx.rollback().await;
                    return Err(s.unavailable(&handler, "begin", e));
                }
            }
            s.claimed(&handler, false);
            match (this.f)(&tx, inbound).await {
                Ok(()) => tx.commit().await.map_err(|e| {
                    let e = map_error(e);
                    tracing::warn!(key, error = %e, "dedupe: commit failed or its outcome is unknown; redelivering");
                    HandlerError::from_error(ErrorClass::Transient, e)
                        .redeliver_after(s.unavailable_delay)
                }),
                Err(err) => {
                    let _ = tx.rollback().await;
                    Err(err)
                }
            }
        })
    }
}
