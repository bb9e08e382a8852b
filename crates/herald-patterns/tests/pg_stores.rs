//! The PostgreSQL stores against a real database: compare-and-swap under contention,
//! persisted deadlines, idempotency marks.

use std::sync::Arc;

use herald_patterns::{
    cqrs::{Applied, Change, Mark, PgReadModelStore, ReadModelStore},
    saga::{
        PgSagaStore, SagaRecord, SagaState, SagaStatus, SagaStore, SagaStoreErrorKind, is_conflict,
    },
};
use serde_json::json;

fn record(saga: &str, id: &str, version: u64, deadline: Option<i64>) -> SagaRecord {
    SagaRecord {
        saga: saga.into(),
        id: id.into(),
        version,
        state: SagaState {
            status: SagaStatus::Running,
            step: 0,
            attempts: 0,
            deadline_ms: deadline,
            failure: None,
            data: json!({"n": version}),
            outbox: vec![],
            outbox_due_ms: None,
            history: vec![],
            started_ms: 0,
            updated_ms: 0,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saga_store_compare_and_swap_has_one_winner() {
    let url = herald_testkit::fixtures::postgres_url().await;
    let store = Arc::new(PgSagaStore::connect(&url).await.unwrap());
    let saga = herald_testkit::unique("pgsaga");
    store
        .save(&record(&saga, "a", 1, None), None)
        .await
        .unwrap();
    assert!(is_conflict(
        &store
            .save(&record(&saga, "a", 1, None), None)
            .await
            .unwrap_err()
    ));

    // Ten writers that all loaded version 1: exactly one advances it.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (store, saga) = (store.clone(), saga.clone());
            tokio::spawn(async move {
                store
                    .save(&record(&saga, "a", 2, Some(1_000)), Some(1))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(e) => assert_eq!(e.kind(), SagaStoreErrorKind::Conflict),
        }
    }
    assert_eq!(won, 1);
    let r = store.load(&saga, "a").await.unwrap().unwrap();
    assert_eq!(r.version, 2);
    assert_eq!(r.state.data, json!({"n": 2}));

    store
        .save(&record(&saga, "b", 1, Some(5_000)), None)
        .await
        .unwrap();
    store
        .save(&record(&saga, "c", 1, None), None)
        .await
        .unwrap();
    let due: Vec<_> = store
        .due(&saga, 5_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(due, ["a", "b"], "earliest deadline first, none without one");
    assert_eq!(store.due(&saga, 999, 10).await.unwrap().len(), 0);
    let page: Vec<_> = store
        .list(&saga, Some("a"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(page, ["b", "c"]);
    assert!(store.load(&saga, "zz").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_model_store_commits_marks_with_documents() {
    let url = herald_testkit::fixtures::postgres_url().await;
    let store = Arc::new(PgReadModelStore::connect(&url).await.unwrap());
    let ns = herald_testkit::unique("pgrm");
    let m1 = Mark::MessageId("m1".into());
    let change = |v, body, mark| Change {
        key: "k",
        expected_version: v,
        body,
        mark,
    };
    assert_eq!(
        store
            .commit(&ns, change(None, Some(json!(1)), &m1))
            .await
            .unwrap(),
        Applied::Applied
    );
    assert_eq!(
        store
            .commit(&ns, change(Some(1), Some(json!(9)), &m1))
            .await
            .unwrap(),
        Applied::Duplicate
    );
    let m2 = Mark::MessageId("m2".into());
    // A stale version is a conflict, and the mark is rolled back with it.
    assert_eq!(
        store
            .commit(&ns, change(None, Some(json!(2)), &m2))
            .await
            .unwrap(),
        Applied::Conflict
    );
    assert!(!store.seen(&ns, &m2).await.unwrap());
    assert_eq!(
        store
            .commit(&ns, change(Some(1), Some(json!(2)), &m2))
            .await
            .unwrap(),
        Applied::Applied
    );
    let d = store.get(&ns, "k").await.unwrap().unwrap();
    assert_eq!((d.version, d.body), (2, json!(2)));

    // The same message applied concurrently: one commit wins.
    let m3 = Mark::MessageId("m3".into());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, ns, m3) = (store.clone(), ns.clone(), m3.clone());
            tokio::spawn(async move {
                store
                    .commit(
                        &ns,
                        Change {
                            key: "other",
                            expected_version: None,
                            body: Some(json!("x")),
                            mark: &m3,
                        },
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        if t.await.unwrap() == Applied::Applied {
            applied += 1;
        }
    }
    assert_eq!(applied, 1);

    let p = |position| Mark::Position {
        lane: "t|partition=1".into(),
        position,
    };
    let (p7, p6) = (p(7), p(6));
    assert_eq!(
        store.commit(&ns, change(Some(2), None, &p7)).await.unwrap(),
        Applied::Applied
    );
    assert!(store.get(&ns, "k").await.unwrap().is_none(), "deleted");
    assert_eq!(
        store
            .commit(&ns, change(None, Some(json!(3)), &p6))
            .await
            .unwrap(),
        Applied::Duplicate
    );
    assert_eq!(
        store.checkpoints(&ns).await.unwrap(),
        vec![("t|partition=1".to_owned(), 7)]
    );
    assert_eq!(store.list(&ns).await.unwrap().len(), 1);
    store.clear(&ns).await.unwrap();
    assert!(store.list(&ns).await.unwrap().is_empty());
    assert!(store.checkpoints(&ns).await.unwrap().is_empty());
    assert!(!store.seen(&ns, &m1).await.unwrap());
}
