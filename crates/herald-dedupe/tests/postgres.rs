//! The contract suite on PostgreSQL, plus migration, purge and the transactional form.

mod common;

use std::{sync::Arc, time::Duration};

use herald_core::dedupe::{Claim, DedupeStore};
use herald_dedupe::postgres::{PgDedupe, PgDedupeConfig, TxClaim};

fn table() -> String {
    herald_testkit::unique("herald_inbox").replace('-', "_")
}

async fn store_with(config: PgDedupeConfig) -> PgDedupe {
    let url = herald_testkit::fixtures::postgres_url().await;
    let s = PgDedupe::connect(&url, config).expect("pool");
    s.migrate().await.expect("migrate");
    s
}

async fn store(retention: Duration) -> PgDedupe {
    store_with(
        PgDedupeConfig::default()
            .table(table())
            .retention(retention),
    )
    .await
}

async fn make(retention: Duration) -> Arc<dyn DedupeStore> {
    Arc::new(store(retention).await)
}

contract_tests!(
    make,
    common::Caps {
        reports_takeover: true
    }
);

#[tokio::test]
async fn migrate_is_idempotent_and_concurrent_safe() {
    let schema = herald_testkit::unique("herald_s").replace('-', "_");
    let cfg = PgDedupeConfig::default()
        .schema(schema.clone())
        .table("inbox");
    let s = store_with(cfg.clone()).await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.migrate().await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(s.table(), format!("\"{schema}\".\"inbox\""));
    assert!(s.begin("k", Duration::from_secs(5)).await.unwrap().is_new());
    let c = s.pool().get().await.unwrap();
    let cols: Vec<String> = c
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 'inbox' ORDER BY ordinal_position",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        cols,
        ["key", "token", "state", "lease_until", "completed_at"]
    );
    c.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn purge_deletes_only_old_completed_rows() {
    let s = store(Duration::from_secs(3600)).await;
    for k in ["a", "b"] {
        let t = s
            .begin(k, Duration::from_secs(30))
            .await
            .unwrap()
            .token()
            .cloned()
            .unwrap();
        s.complete(&t).await.unwrap();
    }
    let _held = s.begin("c", Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        s.purge_completed(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    let c = s.pool().get().await.unwrap();
    c.execute(
        &format!(
            "UPDATE {} SET completed_at = now() - interval '2 hours' WHERE key = 'a'",
            s.table()
        ),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        s.purge_completed(Duration::from_secs(3600)).await.unwrap(),
        1
    );
    assert!(
        s.begin("a", Duration::from_secs(30))
            .await
            .unwrap()
            .is_new()
    );
    assert_eq!(
        s.begin("b", Duration::from_secs(30)).await.unwrap(),
        Claim::Duplicate
    );
    assert_eq!(
        s.begin("c", Duration::from_secs(30)).await.unwrap(),
        Claim::InProgress
    );
}

#[tokio::test]
async fn begin_in_commits_and_rolls_back_with_the_transaction() {
    let s = store(Duration::from_secs(3600)).await;
    let effects = format!("{}_fx", s.config().table);
    let mut c = s.pool().get().await.unwrap();
    c.batch_execute(&format!("CREATE TABLE \"{effects}\" (key text)"))
        .await
        .unwrap();

    // Rolled back: neither the effect nor the inbox row stays.
    let tx = c.transaction().await.unwrap();
    assert_eq!(s.begin_in(&tx, "k1").await.unwrap(), TxClaim::Claimed);
    tx.execute(&format!("INSERT INTO \"{effects}\" VALUES ('k1')"), &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // Committed: both stay.
    let tx = c.transaction().await.unwrap();
    assert_eq!(s.begin_in(&tx, "k1").await.unwrap(), TxClaim::Claimed);
    tx.execute(&format!("INSERT INTO \"{effects}\" VALUES ('k1')"), &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let tx = c.transaction().await.unwrap();
    assert_eq!(s.begin_in(&tx, "k1").await.unwrap(), TxClaim::Duplicate);
    tx.rollback().await.unwrap();
    assert_eq!(
        s.begin("k1", Duration::from_secs(5)).await.unwrap(),
        Claim::Duplicate
    );
    let n: i64 = c
        .query_one(&format!("SELECT count(*) FROM \"{effects}\""), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    // A non-transactional claim in progress: InProgress.
    let _held = s.begin("k2", Duration::from_secs(30)).await.unwrap();
    let tx = c.transaction().await.unwrap();
    assert_eq!(s.begin_in(&tx, "k2").await.unwrap(), TxClaim::InProgress);
    tx.rollback().await.unwrap();
    c.batch_execute(&format!("DROP TABLE \"{effects}\""))
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_transactions_on_one_key_commit_once() {
    let s = store(Duration::from_secs(3600)).await;
    // Two transactions race for the key; the second waits on the row lock and then sees
    // the first's outcome: a duplicate after a commit, a claim after a rollback.
    for first_commits in [true, false] {
        let key = common::key("tx-race");
        let mut c1 = s.pool().get().await.unwrap();
        let tx1 = c1.transaction().await.unwrap();
        assert_eq!(s.begin_in(&tx1, &key).await.unwrap(), TxClaim::Claimed);
        let (s2, k2) = (s.clone(), key.clone());
        let second = tokio::spawn(async move {
            let mut c2 = s2.pool().get().await.unwrap();
            let tx2 = c2.transaction().await.unwrap();
            let r = s2.begin_in(&tx2, &k2).await.unwrap();
            tx2.commit().await.unwrap();
            r
        });
        // The second transaction is blocked on the row lock until the first ends.
        // (Asked on another connection: inside a transaction the activity view is a snapshot.)
        let table = s.config().table.clone();
        let observer = s.pool().get().await.unwrap();
        common::eventually(
            Duration::from_secs(10),
            "the second claim to wait on the lock",
            || {
                let (c3, table) = (&observer, table.clone());
                async move {
                    let waiting: i64 = c3
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity \
                         WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0",
                            &[&table],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    (waiting > 0).then_some(())
                }
            },
        )
        .await;
        assert!(
            !second.is_finished(),
            "the duplicate must wait for the first transaction"
        );
        if first_commits {
            tx1.commit().await.unwrap();
            assert_eq!(second.await.unwrap(), TxClaim::Duplicate);
        } else {
            tx1.rollback().await.unwrap();
            assert_eq!(second.await.unwrap(), TxClaim::Claimed);
        }
    }
}

#[tokio::test]
async fn invalid_names_and_urls_are_errors_not_panics() {
    let e = PgDedupe::connect(
        "postgres://x@127.0.0.1/db",
        PgDedupeConfig::default().table(""),
    )
    .unwrap_err();
    assert!(!e.is_retriable());
    assert!(PgDedupe::connect("::not a url::", PgDedupeConfig::default()).is_err());
    // Nothing listens on this port: unavailable, not a panic.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let s = PgDedupe::connect(
        &format!("postgres://postgres@127.0.0.1:{port}/test"),
        PgDedupeConfig::default(),
    )
    .unwrap();
    let e = s.begin("k", Duration::from_secs(1)).await.unwrap_err();
    assert!(e.is_retriable(), "{e:?}");
}
