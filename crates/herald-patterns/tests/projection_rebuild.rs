//! CQRS projections: a live projection that stops and resumes from its checkpoint, fed
//! duplicate deliveries, and a rebuild from the topics (a fresh consumer group from the
//! earliest offset) that matches it — on every transport, in memory and PostgreSQL stores.

mod patterns_support;

use std::{collections::BTreeMap, sync::Arc};

use herald_core::{Codec, Event, JsonCodec, Message};
use herald_patterns::cqrs::{
    Idempotency, MemoryReadModelStore, PgReadModelStore, Projection, Projector, ReadModelStore,
};
use patterns_support::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Deposited {
    account: String,
    cents: i64,
}
impl Event for Deposited {
    const TYPE: &'static str = "test.bank.Deposited";
    const VERSION: u32 = 1;
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Withdrawn {
    account: String,
    cents: i64,
}
impl Event for Withdrawn {
    const TYPE: &'static str = "test.bank.Withdrawn";
    const VERSION: u32 = 1;
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
struct Account {
    balance: i64,
    movements: u32,
    /// The newest message id applied (UUIDv7 ids sort by creation): independent of the
    /// order events of different topics are applied in, so live and rebuilt agree.
    newest: String,
}

fn projection(
    name: &str,
    deposits: &str,
    withdrawals: &str,
    mode: Idempotency,
) -> Projection<Account> {
    Projection::<Account>::new(name)
        .idempotency(mode)
        .on(
            deposits,
            |e: &Deposited| e.account.clone(),
            |doc, e: &Deposited, meta| {
                let a = doc.get_or_insert_with(Account::default);
                a.balance += e.cents;
                a.movements += 1;
                a.newest = a.newest.clone().max(meta.id.clone());
            },
        )
        .on(
            withdrawals,
            |e: &Withdrawn| e.account.clone(),
            |doc, e: &Withdrawn, meta| {
                let a = doc.get_or_insert_with(Account::default);
                a.balance -= e.cents;
                a.movements += 1;
                a.newest = a.newest.clone().max(meta.id.clone());
            },
        )
}

/// `n` events over 20 accounts: (topic, message), and the model they must produce.
async fn events(
    n: u32,
    deposits: &str,
    withdrawals: &str,
) -> (Vec<(String, Message)>, BTreeMap<String, (i64, u32)>) {
    let mut out = Vec::new();
    let mut want: BTreeMap<String, (i64, u32)> = BTreeMap::new();
    for i in 0..n {
        let account = format!("acct-{:02}", i % 20);
        let cents = i64::from(i % 97 + 1);
        let e = want.entry(account.clone()).or_default();
        e.1 += 1;
        let m = if i % 3 == 0 {
            e.0 -= cents;
            (
                withdrawals.to_owned(),
                JsonCodec
                    .to_message(&Withdrawn {
                        account: account.clone(),
                        cents,
                    })
                    .await
                    .unwrap(),
            )
        } else {
            e.0 += cents;
            (
                deposits.to_owned(),
                JsonCodec
                    .to_message(&Deposited {
                        account: account.clone(),
                        cents,
                    })
                    .await
                    .unwrap(),
            )
        };
        out.push((m.0, m.1.with_key(account)));
    }
    (out, want)
}

async fn publish(tr: &Transport, events: &[(String, Message)]) {
    for chunk in events.chunks(25) {
        for (topic, m) in chunk {
            tr.publisher.publish(topic, vec![m.clone()]).await.unwrap();
        }
    }
}

fn summary(m: &BTreeMap<String, Account>) -> BTreeMap<String, (i64, u32)> {
    m.iter()
        .map(|(k, a)| (k.clone(), (a.balance, a.movements)))
        .collect()
}

async fn run(kind: Kind, store: Arc<dyn ReadModelStore>, mode: Idempotency) {
    let prefix = herald_testkit::unique(&format!("proj-{kind:?}").to_lowercase());
    let (deposits, withdrawals) = (
        format!("{prefix}-deposits"),
        format!("{prefix}-withdrawals"),
    );
    let tr = transport(kind, &[deposits.clone(), withdrawals.clone()]).await;
    retain_all(&tr, &[deposits.clone(), withdrawals.clone()]).await;
    let (evs, want) = events(400, &deposits, &withdrawals).await;
    let (first, second) = evs.split_at(200);

    // Live projection over the first half, then stopped.
    let name = format!("{prefix}-accounts");
    let live = Projector::with_store(
        projection(&name, &deposits, &withdrawals, mode),
        store.clone(),
    );
    let running = live.start(tr.subscriber.clone());
    publish(&tr, first).await;
    let p = live.clone();
    wait(120, "the first half applied", || {
        let p = p.clone();
        async move { (p.stats().applied == 200).then_some(()) }
    })
    .await;
    running.shutdown().await.unwrap();

    // Second half, and (message-id mode) every 10th event of the whole run published again
    // — a producer retry: same message id, new position. Position checkpoints only
    // recognise redeliveries of the same position, so that mode gets none.
    publish(&tr, second).await;
    let dupes: Vec<_> = match mode {
        Idempotency::MessageId => evs.iter().step_by(10).cloned().collect(),
        Idempotency::Position => Vec::new(),
    };
    publish(&tr, &dupes).await;

    // Resumed: same namespace, same group, a fresh process as far as it knows.
    let resumed = Projector::with_store(
        projection(&name, &deposits, &withdrawals, mode),
        store.clone(),
    );
    let running = resumed.start(tr.subscriber.clone());
    // The republished events change nothing in the model, so the model can be complete
    // before the last of them is handled: wait for them too. At least the republished
    // ones count as duplicates (a transport may also redeliver a few) — except on NATS,
    // whose server drops a republished message id within its duplicate window before any
    // consumer sees it.
    let republished = match (mode, kind) {
        (Idempotency::MessageId, Kind::Nats) | (Idempotency::Position, _) => 0,
        (Idempotency::MessageId, _) => dupes.len() as u64,
    };
    let r = resumed.clone();
    let want2 = want.clone();
    let live_model = wait(
        120,
        "the resumed projection to reach the expected model and see the republished events",
        || {
            let (r, want) = (r.clone(), want2.clone());
            async move {
                let all = r.all().await.ok()?;
                (summary(&all) == want && r.stats().duplicates >= republished).then_some(all)
            }
        },
    )
    .await;
    let stats = resumed.stats();
    assert_eq!(
        stats.applied, 200,
        "only the second half is new to the resumed projector: {stats:?}"
    );
    assert!(stats.duplicates >= republished, "{stats:?}");

    // Rebuilt from the topics into a new namespace, in a fresh group from the earliest
    // offset: the same model, duplicates and all.
    let rebuild_ns = format!("{name}-rebuild");
    let (rebuilt, rebuilding) = resumed
        .rebuild(tr.subscriber.clone(), &rebuild_ns)
        .await
        .unwrap();
    assert_ne!(rebuilt.group_name(), resumed.group_name());
    let rb = rebuilt.clone();
    let lm = live_model.clone();
    let rebuilt_model = wait(120, "the rebuilt projection to match the live one", || {
        let (rb, lm) = (rb.clone(), lm.clone());
        async move {
            let all = rb.all().await.ok()?;
            (all == lm).then_some(all)
        }
    })
    .await;
    assert_eq!(summary(&rebuilt_model), want);
    assert_eq!(rebuilt.stats().applied, 400);
    println!(
        "{kind:?} {mode:?}: live {:?}, rebuilt {:?}",
        resumed.stats(),
        rebuilt.stats()
    );
    rebuilding.shutdown().await.unwrap();
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilt_matches_live_memory_transport_postgres_store() {
    let store = PgReadModelStore::connect(&herald_testkit::fixtures::postgres_url().await)
        .await
        .unwrap();
    run(Kind::Memory, Arc::new(store), Idempotency::MessageId).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilt_matches_live_memory_transport_memory_store_positions() {
    run(
        Kind::Memory,
        Arc::new(MemoryReadModelStore::new()),
        Idempotency::Position,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilt_matches_live_kafka() {
    let store = PgReadModelStore::connect(&herald_testkit::fixtures::postgres_url().await)
        .await
        .unwrap();
    run(Kind::Kafka, Arc::new(store), Idempotency::MessageId).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilt_matches_live_nats() {
    run(
        Kind::Nats,
        Arc::new(MemoryReadModelStore::new()),
        Idempotency::MessageId,
    )
    .await;
}
