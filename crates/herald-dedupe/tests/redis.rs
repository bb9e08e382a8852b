//! The contract suite on Redis, plus the Redis specifics: key prefix, atomic completion.

mod common;

use std::{sync::Arc, time::Duration};

use herald_core::dedupe::{Claim, DedupeStore};
use herald_dedupe::redis::{RedisDedupe, RedisDedupeConfig};
use redis::AsyncCommands;

async fn store(retention: Duration) -> RedisDedupe {
    let url = herald_testkit::fixtures::redis_url().await;
    let prefix = format!("{}:", herald_testkit::unique("herald-dedupe-test"));
    RedisDedupe::connect(
        &url,
        RedisDedupeConfig::default()
            .key_prefix(prefix)
            .retention(retention),
    )
    .await
    .expect("connect to Redis")
}

async fn make(retention: Duration) -> Arc<dyn DedupeStore> {
    Arc::new(store(retention).await)
}

contract_tests!(
    make,
    common::Caps {
        reports_takeover: false
    }
);

#[tokio::test]
async fn keys_live_under_the_prefix_with_ttls() {
    let s = store(Duration::from_secs(600)).await;
    let mut conn = s.connection();
    let t = s
        .begin("g:1", Duration::from_secs(30))
        .await
        .unwrap()
        .token()
        .cloned()
        .unwrap();
    let rk = s.redis_key("g:1");
    assert!(rk.starts_with(&s.config().key_prefix));
    let v: String = conn.get(&rk).await.unwrap();
    assert_eq!(v, t.token().to_string());
    let ttl: i64 = conn.pttl(&rk).await.unwrap();
    assert!((1..=30_000).contains(&ttl), "lease TTL {ttl}");
    s.complete(&t).await.unwrap();
    let v: String = conn.get(&rk).await.unwrap();
    assert_eq!(v, "done");
    let ttl: i64 = conn.pttl(&rk).await.unwrap();
    assert!(ttl > 30_000 && ttl <= 600_000, "retention TTL {ttl}");
    s.forget("g:1").await.unwrap();
    assert!(
        s.begin("g:1", Duration::from_secs(30))
            .await
            .unwrap()
            .is_new()
    );
}

#[tokio::test]
async fn complete_with_applies_writes_only_with_the_current_token() {
    let s = store(Duration::from_secs(600)).await;
    let mut conn = s.connection();
    let list = format!("{}applied", s.config().key_prefix);

    let t = s
        .begin("m1", Duration::from_secs(30))
        .await
        .unwrap()
        .token()
        .cloned()
        .unwrap();
    let mut writes = redis::pipe();
    writes.cmd("RPUSH").arg(&list).arg("m1");
    writes
        .cmd("HSET")
        .arg(format!("{list}:h"))
        .arg("f")
        .arg(b"\x00bin\xff".as_slice());
    s.complete_with(&t, &writes).await.unwrap();
    assert_eq!(
        s.begin("m1", Duration::from_secs(30)).await.unwrap(),
        Claim::Duplicate
    );
    let bin: Vec<u8> = conn.hget(format!("{list}:h"), "f").await.unwrap();
    assert_eq!(bin, b"\x00bin\xff");

    // A stale token: nothing applied, LeaseLost.
    let a = s
        .begin("m2", Duration::from_millis(100))
        .await
        .unwrap()
        .token()
        .cloned()
        .unwrap();
    let b = common::eventually(Duration::from_secs(5), "lease expiry", || async {
        s.begin("m2", Duration::from_secs(30))
            .await
            .unwrap()
            .token()
            .cloned()
    })
    .await;
    let mut stale = redis::pipe();
    stale.cmd("RPUSH").arg(&list).arg("m2-stale");
    assert!(
        s.complete_with(&a, &stale)
            .await
            .unwrap_err()
            .is_lease_lost()
    );
    let mut fresh = redis::pipe();
    fresh.cmd("RPUSH").arg(&list).arg("m2");
    s.complete_with(&b, &fresh).await.unwrap();
    let applied: Vec<String> = conn.lrange(&list, 0, -1).await.unwrap();
    assert_eq!(applied, ["m1", "m2"]);
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let e = RedisDedupe::connect(
        &format!("redis://127.0.0.1:{port}"),
        RedisDedupeConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(e.is_retriable(), "{e:?}");
    let e = RedisDedupe::connect("not a url", RedisDedupeConfig::default())
        .await
        .unwrap_err();
    assert!(!e.is_retriable());
}
