//! The store goes away mid-run: the dedupe middleware nacks (no ack without a claim),
//! nothing is lost, and work resumes when the store is back.
//!
//! The outage is made on instances these tests own — never the shared services: a
//! `redis-server` started on a free port (killed and started again), and a TCP proxy in
//! front of the shared PostgreSQL (cut and restored).

mod common;

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use herald_core::{
    Inbound, Message, Publisher, RouteConfig, Router,
    dedupe::{Claim, ClaimToken, DedupeError, DedupeStore},
    handler_fn,
    memory::MemoryBroker,
    middleware::dedupe::DedupeLayer,
};
use herald_dedupe::{
    postgres::{PgDedupe, PgDedupeConfig},
    redis::{RedisDedupe, RedisDedupeConfig},
};
use tokio::{net::TcpListener, sync::watch};
use tower::{Layer, ServiceExt};

const BATCH: usize = 100;
const WAIT: Duration = Duration::from_secs(60);

/// Passes every call through and counts the store's `Unavailable` answers.
struct Observed {
    inner: Arc<dyn DedupeStore>,
    unavailable: AtomicU64,
}

impl Observed {
    fn note<T>(&self, r: Result<T, DedupeError>) -> Result<T, DedupeError> {
        if let Err(e) = &r
            && e.is_retriable()
        {
            self.unavailable.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
}

impl DedupeStore for Observed {
    fn begin<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, DedupeError>> {
        Box::pin(async move { self.note(self.inner.begin(key, lease).await) })
    }
    fn complete<'a>(&'a self, c: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
        Box::pin(async move { self.note(self.inner.complete(c).await) })
    }
    fn abandon<'a>(&'a self, c: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
        Box::pin(async move { self.note(self.inner.abandon(c).await) })
    }
}

struct Harness {
    broker: MemoryBroker,
    topic: String,
    group: String,
    handled: Arc<Mutex<HashMap<String, usize>>>,
    store: Arc<Observed>,
    nacks: Arc<AtomicU64>,
    running: herald_core::Running,
}

impl Harness {
    fn start(store: Arc<dyn DedupeStore>) -> Self {
        let broker = MemoryBroker::new();
        let topic = herald_testkit::unique("outage");
        let group = herald_testkit::unique("g");
        let handled: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let store = Arc::new(Observed {
            inner: store,
            unavailable: AtomicU64::new(0),
        });
        let h = handled.clone();
        let dedupe = DedupeLayer::new(store.clone())
            .unavailable_delay(Duration::from_millis(100))
            .store_timeout(Duration::from_secs(1))
            .layer(handler_fn(move |i: Inbound| {
                *h.lock().unwrap().entry(i.message.id.clone()).or_default() += 1;
                async { Ok(()) }
            }));
        // Counts what the router nacks: every Err the dedupe layer returns.
        let nacks = Arc::new(AtomicU64::new(0));
        let n = nacks.clone();
        let handler = handler_fn(move |i: Inbound| {
            let (svc, n) = (dedupe.clone(), n.clone());
            async move {
                let r = svc.oneshot(i).await;
                if let Err(e) = &r {
                    assert!(
                        e.redelivery().is_some(),
                        "a store failure must ask for redelivery: {e}"
                    );
                    n.fetch_add(1, Ordering::SeqCst);
                }
                r
            }
        });
        let running = Router::new()
            .route_with(
                RouteConfig::new("outage", &topic, &group).concurrency(4),
                handler,
            )
            .start(broker.clone());
        Self {
            broker,
            topic,
            group,
            handled,
            store,
            nacks,
            running,
        }
    }

    async fn publish(&self) -> Vec<String> {
        let msgs: Vec<Message> = (0..BATCH)
            .map(|i| Message::new(format!("m{i}")).with_key(format!("k{i}")))
            .collect();
        let ids = msgs.iter().map(|m| m.id.clone()).collect();
        self.broker.publish(&self.topic, msgs).await.unwrap();
        ids
    }

    fn handled(&self, ids: &[String]) -> usize {
        let h = self.handled.lock().unwrap();
        ids.iter().filter(|id| h.contains_key(*id)).count()
    }

    fn lag(&self) -> u64 {
        self.broker.lag(&self.topic, &self.group)
    }

    async fn all_handled(&self, ids: &[String], what: &str) {
        common::eventually(WAIT, what, || async {
            (self.handled(ids) == ids.len() && self.lag() == 0).then_some(())
        })
        .await;
    }

    /// While the store is down: deliveries are nacked, the handler does not run, nothing
    /// is acked.
    async fn check_outage(&self, ids: &[String]) {
        let before = self.nacks.load(Ordering::SeqCst);
        common::eventually(
            WAIT,
            "deliveries to be nacked while the store is down",
            || async { (self.nacks.load(Ordering::SeqCst) >= before + 20).then_some(()) },
        )
        .await;
        assert!(self.store.unavailable.load(Ordering::SeqCst) > 0);
        assert_eq!(self.handled(ids), 0, "a handler ran without a claim");
        assert_eq!(
            self.lag(),
            BATCH as u64,
            "a message was acked without a claim"
        );
    }

    fn check_once(&self, ids: &[String]) {
        let h = self.handled.lock().unwrap();
        for id in ids {
            assert_eq!(
                h.get(id),
                Some(&1),
                "message {id} handled {:?} times",
                h.get(id)
            );
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A `redis-server` this test owns; killed on drop.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    async fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (it is on this machine kind: apt-get install redis-server)");
        let me = Self {
            port,
            child: Some(child),
        };
        common::eventually(
            Duration::from_secs(10),
            "the own redis-server to answer",
            || async {
                let c = redis::Client::open(me.url()).ok()?;
                let mut conn = c.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .ok()
            },
        )
        .await;
        me
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_nacks_loses_nothing_and_resumes() {
    let port = free_port();
    let mut server = OwnRedis::start(port).await;
    let store = RedisDedupe::connect(
        &server.url(),
        RedisDedupeConfig::default().key_prefix(format!("{}:", herald_testkit::unique("outage"))),
    )
    .await
    .unwrap();
    let h = Harness::start(Arc::new(store));

    let a = h.publish().await;
    h.all_handled(&a, "the first batch before the outage").await;

    server.kill();
    let b = h.publish().await;
    h.check_outage(&b).await;

    let _server = OwnRedis::start(port).await;
    h.all_handled(&b, "the second batch after Redis came back")
        .await;
    h.check_once(&a);
    h.check_once(&b);
    h.running.shutdown().await.unwrap();
}

/// A TCP proxy this test owns in front of the shared PostgreSQL: `cut` drops every
/// connection and refuses new ones; `restore` lets them through again.
struct Proxy {
    port: u16,
    up: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, up_rx) = watch::channel(true);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*up_rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut rx = up_rx.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    // No Nagle delays on top of the clients' own TCP_NODELAY.
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { port, up }
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_nacks_loses_nothing_and_resumes() {
    let url = herald_testkit::fixtures::postgres_url().await;
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => "127.0.0.1".to_owned(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start(format!("{host}:{port}")).await;
    let mut proxied = format!(
        "host=127.0.0.1 port={} user={} dbname={}",
        proxy.port,
        cfg.get_user().unwrap_or("postgres"),
        cfg.get_dbname().unwrap_or("postgres")
    );
    if let Some(pw) = cfg.get_password() {
        proxied.push_str(&format!(" password={}", String::from_utf8_lossy(pw)));
    }
    let table = herald_testkit::unique("outage_inbox").replace('-', "_");
    let store = PgDedupe::connect(
        &proxied,
        PgDedupeConfig::default().table(table.clone()).pool_size(4),
    )
    .unwrap();
    store.migrate().await.unwrap();
    let h = Harness::start(Arc::new(store.clone()));

    let a = h.publish().await;
    h.all_handled(&a, "the first batch before the outage").await;

    proxy.cut();
    let b = h.publish().await;
    h.check_outage(&b).await;

    proxy.restore();
    h.all_handled(&b, "the second batch after PostgreSQL came back")
        .await;
    h.check_once(&a);
    h.check_once(&b);
    // The inbox kept everything: replaying the first batch runs nothing.
    let replay: Vec<Message> = a
        .iter()
        .map(|id| Message::with_id(id.clone(), "again"))
        .collect();
    h.broker.publish(&h.topic, replay).await.unwrap();
    common::eventually(WAIT, "the replay to be acked", || async {
        (h.lag() == 0).then_some(())
    })
    .await;
    h.check_once(&a);
    h.running.shutdown().await.unwrap();
    let c = store.pool().get().await.unwrap();
    c.batch_execute(&format!("DROP TABLE \"{table}\""))
        .await
        .unwrap();
}
