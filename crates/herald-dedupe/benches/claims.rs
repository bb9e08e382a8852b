//! Claims per second of each dedupe backend, single and batched.
//!
//! ```text
//! cargo bench -p herald-dedupe --features full --bench claims -- --quick
//! ```
//!
//! One iteration of `single` is `begin` + `complete` of a fresh key (one claim, two round
//! trips); one iteration of `batch100` is `begin_many` + `complete_many` of 100 fresh keys.
//! Throughput is reported in claims per second. Redis and PostgreSQL are the ones at
//! `HERALD_REDIS_URL` / `HERALD_POSTGRES_URL` (see `ci/brokers.sh`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_core::dedupe::{Claim, ClaimToken, DedupeStore};
use herald_dedupe::{
    memory::MemoryDedupe,
    postgres::{PgDedupe, PgDedupeConfig},
    redis::{RedisDedupe, RedisDedupeConfig},
};

const LEASE: Duration = Duration::from_secs(30);
const BATCH: usize = 100;

static N: AtomicU64 = AtomicU64::new(0);

fn fresh() -> String {
    format!("bench:{}", N.fetch_add(1, Ordering::Relaxed))
}

async fn single(store: &dyn DedupeStore) {
    let Claim::New(t) = store.begin(&fresh(), LEASE).await.expect("begin") else {
        panic!("a fresh key must be new")
    };
    store.complete(&t).await.expect("complete");
}

async fn batch(store: &dyn DedupeStore) {
    let keys: Vec<String> = (0..BATCH).map(|_| fresh()).collect();
    let claims = store.begin_many(&keys, LEASE).await.expect("begin_many");
    let tokens: Vec<ClaimToken> = claims
        .into_iter()
        .filter_map(|c| c.token().cloned())
        .collect();
    assert_eq!(tokens.len(), BATCH);
    for r in store.complete_many(&tokens).await {
        r.expect("complete");
    }
}

fn bench_store(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: Arc<dyn DedupeStore>,
) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    g.bench_function("single", |b| b.to_async(rt).iter(|| single(&*store)));
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("batch100", |b| b.to_async(rt).iter(|| batch(&*store)));
    g.finish();
}

fn claims(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    N.store(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        Ordering::Relaxed,
    );

    bench_store(c, &rt, "memory", Arc::new(MemoryDedupe::default()));

    let redis = rt.block_on(async {
        let url = herald_testkit::fixtures::redis_url().await;
        let prefix = format!("{}:", herald_testkit::unique("bench"));
        RedisDedupe::connect(
            &url,
            RedisDedupeConfig::default()
                .key_prefix(prefix)
                .retention(Duration::from_secs(300)),
        )
        .await
        .expect("Redis")
    });
    bench_store(c, &rt, "redis", Arc::new(redis));

    let table = herald_testkit::unique("bench_inbox").replace('-', "_");
    let pg = rt.block_on(async {
        let url = herald_testkit::fixtures::postgres_url().await;
        let s =
            PgDedupe::connect(&url, PgDedupeConfig::default().table(table.clone())).expect("pool");
        s.migrate().await.expect("migrate");
        s
    });
    bench_store(c, &rt, "postgres", Arc::new(pg.clone()));
    rt.block_on(async {
        let c = pg.pool().get().await.expect("connection");
        c.batch_execute(&format!("DROP TABLE {}", pg.table()))
            .await
            .expect("drop");
    });
}

criterion_group!(benches, claims);
criterion_main!(benches);
