//! Broker fixtures: where the tests find Kafka, NATS, Redis and PostgreSQL.
//!
//! Each fixture takes its address from an environment variable (`HERALD_KAFKA_BROKERS`,
//! `HERALD_NATS_URL`, `HERALD_REDIS_URL`, `HERALD_POSTGRES_URL` — what `ci/brokers.sh up`
//! prints); else starts a container with `testcontainers-modules` when a Docker daemon
//! answers; else panics with a message saying how to start one. There is no silent skip:
//! a test that needs a broker fails when none can be had.

use std::sync::Arc;

use testcontainers_modules::testcontainers::{
    ContainerAsync, Image, core::ContainerPort, runners::AsyncRunner,
};
use tokio::sync::OnceCell;

const HOWTO: &str = "run `eval \"$(bash ci/brokers.sh up)\"` in the repository to start every \
broker on this machine and export the HERALD_* variables, or start a Docker daemon so the \
fixture can use testcontainers";

/// A container kept alive for the rest of the test process.
type Kept = Arc<dyn std::any::Any + Send + Sync>;

async fn from_env_or_container<I, R, F>(
    var: &str,
    what: &str,
    cell: &'static OnceCell<(String, Kept)>,
    image: impl FnOnce() -> R,
    port: u16,
    url: F,
) -> String
where
    I: Image + 'static,
    R: AsyncRunner<I>,
    F: FnOnce(&str, u16) -> String,
{
    if let Ok(v) = std::env::var(var)
        && !v.trim().is_empty()
    {
        return v;
    }
    let (url_s, _) = cell
        .get_or_init(|| async {
            let container: ContainerAsync<I> = match image().start().await {
                Ok(c) => c,
                Err(e) => panic!(
                    "{what} is needed: {var} is not set and no container could be started ({e}); {HOWTO}"
                ),
            };
            let host = container
                .get_host()
                .await
                .map(|h| h.to_string())
                .unwrap_or_else(|_| "127.0.0.1".into());
            let port = match container.ports().await {
                Ok(p) => p
                    .map_to_host_port_ipv4(ContainerPort::Tcp(port))
                    .unwrap_or_default(),
                Err(e) => panic!("{what} container has no mapped port: {e}"),
            };
            (url(&host, port), Arc::new(container) as Kept)
        })
        .await;
    url_s.clone()
}

/// Kafka bootstrap servers (`host:port`).
pub async fn kafka_brokers() -> String {
    static CELL: OnceCell<(String, Kept)> = OnceCell::const_new();
    from_env_or_container(
        "HERALD_KAFKA_BROKERS",
        "Kafka",
        &CELL,
        testcontainers_modules::kafka::apache::Kafka::default,
        9092,
        |h, p| format!("{h}:{p}"),
    )
    .await
}

/// NATS server URL with JetStream enabled.
pub async fn nats_url() -> String {
    static CELL: OnceCell<(String, Kept)> = OnceCell::const_new();
    from_env_or_container(
        "HERALD_NATS_URL",
        "NATS with JetStream",
        &CELL,
        || {
            use testcontainers_modules::{
                nats::{Nats, NatsServerCmd},
                testcontainers::ImageExt,
            };
            Nats::default().with_cmd(&NatsServerCmd::default().with_jetstream())
        },
        4222,
        |h, p| format!("nats://{h}:{p}"),
    )
    .await
}

/// Redis URL.
pub async fn redis_url() -> String {
    static CELL: OnceCell<(String, Kept)> = OnceCell::const_new();
    from_env_or_container(
        "HERALD_REDIS_URL",
        "Redis",
        &CELL,
        testcontainers_modules::redis::Redis::default,
        6379,
        |h, p| format!("redis://{h}:{p}"),
    )
    .await
}

/// PostgreSQL URL.
pub async fn postgres_url() -> String {
    static CELL: OnceCell<(String, Kept)> = OnceCell::const_new();
    from_env_or_container(
        "HERALD_POSTGRES_URL",
        "PostgreSQL",
        &CELL,
        testcontainers_modules::postgres::Postgres::default,
        5432,
        |h, p| format!("postgres://postgres:postgres@{h}:{p}/postgres"),
    )
    .await
}

/// The Tansu binary (`HERALD_TANSU_BIN`, printed by `ci/brokers.sh up`), for tests that
/// need a Kafka-protocol broker of their own: a dedicated port, a TLS endpoint, a restart.
///
/// # Panics
/// When the variable is unset or names no executable file: there is no silent skip.
pub fn tansu_bin() -> std::path::PathBuf {
    let bin = std::env::var("HERALD_TANSU_BIN").unwrap_or_default();
    let path = std::path::PathBuf::from(bin.trim());
    if bin.trim().is_empty() || !path.is_file() {
        panic!("a Tansu binary is needed: HERALD_TANSU_BIN is unset or not a file; {HOWTO}");
    }
    path
}
