//! Helpers shared by the integration tests.
#![allow(dead_code, missing_docs)]

use std::sync::{Arc, Mutex};

use herald_nats::{NatsBroker, NatsConfig};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,herald_nats=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub async fn url() -> String {
    herald_testkit::fixtures::nats_url().await
}

pub async fn connect(config: NatsConfig) -> NatsBroker {
    NatsBroker::connect(config).await.expect("connect to NATS")
}

pub async fn config() -> NatsConfig {
    NatsConfig::new(&url().await)
}

pub async fn broker() -> NatsBroker {
    connect(config().await).await
}

/// Deletes the streams of the topics it was told about when dropped (on a thread of its
/// own, since drop cannot await).
#[derive(Clone, Default)]
pub struct Cleanup {
    topics: Arc<Mutex<Vec<String>>>,
    url: Arc<Mutex<Option<String>>>,
}

impl Cleanup {
    pub fn add(&self, url: &str, topic: &str) {
        *self.url.lock().unwrap() = Some(url.to_owned());
        self.topics.lock().unwrap().push(topic.to_owned());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if Arc::strong_count(&self.topics) > 1 {
            return;
        }
        let topics = std::mem::take(&mut *self.topics.lock().unwrap());
        let Some(url) = self.url.lock().unwrap().clone() else {
            return;
        };
        if topics.is_empty() {
            return;
        }
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(b) = NatsBroker::connect(NatsConfig::new(&url)).await {
                    for t in topics {
                        let _ = b.delete_topic(&t).await;
                    }
                }
            });
        })
        .join();
    }
}

/// A nats-server of the test's own (never the shared one): a free port, its own store
/// directory; killed and its directory removed on drop.
pub struct OwnServer {
    pub port: u16,
    pub dir: std::path::PathBuf,
    args: Vec<String>,
    child: Option<std::process::Child>,
}

impl OwnServer {
    pub async fn start(extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(herald_testkit::unique("herald-nats-store"));
        std::fs::create_dir_all(&dir).expect("store dir");
        let mut s = Self {
            port,
            dir,
            args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        s.spawn().await;
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let bin = std::env::var("HERALD_NATS_SERVER_BIN")
            .unwrap_or_else(|_| "/usr/sbin/nats-server".into());
        let child = std::process::Command::new(&bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (set HERALD_NATS_SERVER_BIN): {e}"));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "own nats-server did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Kills the server (SIGKILL, no graceful shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server with SIGTERM (it flushes its store) and waits for it to exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Stops it (`graceful`: SIGTERM, else SIGKILL), keeps it down for `downtime` (the
    /// outage being simulated), and starts it again on the same port and store.
    pub async fn restart(&mut self, graceful: bool, downtime: std::time::Duration) {
        if graceful {
            self.terminate();
        } else {
            self.kill();
        }
        tokio::time::sleep(downtime).await;
        self.spawn().await;
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `cond` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: std::time::Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
