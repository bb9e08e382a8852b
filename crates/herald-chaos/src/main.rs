//! `herald-chaos`: fault-injection driver for herald consumers (see `ci/chaos.sh`).
//!
//! `herald-chaos run` publishes numbered messages to a dedicated broker (a Tansu or
//! `nats-server` instance it starts on a free port) while one or more consumer processes
//! (`herald-chaos consume`, this same binary) apply each message as one row of a
//! PostgreSQL ledger through the transactional dedupe store
//! (`herald_dedupe::postgres::transactional`). Faults: consumers SIGKILLed, the broker
//! restarted, PostgreSQL cut off behind a TCP proxy, consumers joining and leaving, a
//! handler slower than the broker's redelivery deadline. Afterwards it counts what was
//! lost and applied twice, prints a table, and exits 1 when either is non-zero.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};
use herald_core::{Inbound, Message, Publisher, RouteConfig, Router};
use herald_dedupe::postgres::{PgDedupe, PgDedupeConfig, handler_error, transactional};
use herald_kafka::{KafkaAdmin, KafkaConfig, KafkaPublisher, KafkaSubscriber};
use herald_nats::{NatsBroker, NatsConfig};
use rand::Rng;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    sync::watch,
    task::{JoinHandle, JoinSet},
    time::Instant,
};
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "herald fault-injection driver")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the scenarios and print the table.
    Run(RunArgs),
    /// One consumer process (started by `run`).
    Consume(ConsumeArgs),
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// Small scale: every scenario in a few minutes.
    #[arg(long)]
    quick: bool,
    /// Messages per scenario (default 50 000, or 5 000 with --quick).
    #[arg(long)]
    messages: Option<u64>,
    /// Only these scenarios (default: all).
    #[arg(long, value_enum)]
    scenario: Vec<Scenario>,
    /// Only these transports (default: both).
    #[arg(long, value_enum)]
    transport: Vec<Transport>,
    /// PostgreSQL (the dedupe store), reached directly by the driver and through a proxy
    /// by the consumers.
    #[arg(
        long,
        env = "HERALD_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pg: String,
    /// The Tansu binary.
    #[arg(long, env = "HERALD_TANSU_BIN", default_value = "tansu")]
    tansu_bin: PathBuf,
    /// The nats-server binary.
    #[arg(
        long,
        env = "HERALD_NATS_SERVER_BIN",
        default_value = "/usr/sbin/nats-server"
    )]
    nats_bin: PathBuf,
    /// Where the brokers keep files and logs.
    #[arg(long, default_value = "/tmp/herald-chaos")]
    work_dir: PathBuf,
}

#[derive(Parser, Clone, Debug)]
struct ConsumeArgs {
    #[arg(long, value_enum)]
    transport: Transport,
    #[arg(long)]
    broker: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    pg: String,
    #[arg(long)]
    inbox: String,
    #[arg(long)]
    effects: String,
    /// Every Nth message (by number) is slow on its first delivery.
    #[arg(long, default_value_t = 0)]
    slow_every: u64,
    #[arg(long, default_value_t = 0)]
    slow_ms: u64,
    /// NATS ack_wait / Kafka max.poll.interval.ms, in ms (0: adapter default).
    #[arg(long, default_value_t = 0)]
    deadline_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Transport {
    Kafka,
    Nats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Kill,
    BrokerRestart,
    PgOutage,
    Rebalance,
    Slow,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Kill => "consumer SIGKILL x5",
            Self::BrokerRestart => "broker restart/outage",
            Self::PgOutage => "postgres down 10 s",
            Self::Rebalance => "rebalance",
            Self::Slow => "slow handler",
        }
    }
}

fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Consume(a) => rt.block_on(consume(a)),
        Cmd::Run(a) => {
            let ok = rt.block_on(run(a))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// The consumer process.

fn line(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

async fn consume(a: ConsumeArgs) -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // `dup` for each duplicate the dedupe store caught, as it happens.
    let _ = herald_dedupe::probe::on_duplicate(|n| {
        for _ in 0..n {
            line("dup");
        }
    });
    let store = PgDedupe::connect(
        &a.pg,
        PgDedupeConfig::default()
            .table(a.inbox.clone())
            .pool_size(8),
    )?;
    // The driver migrated the inbox before starting consumers.
    let sql = Arc::new(format!("INSERT INTO {} (msg_id) VALUES ($1)", a.effects));
    let (every, slow) = (a.slow_every, Duration::from_millis(a.slow_ms));
    let handler = transactional(store, move |tx, inbound: Inbound| {
        let sql = sql.clone();
        Box::pin(async move {
            line("run");
            if every > 0 && inbound.attempt <= 1 {
                let n: u64 = std::str::from_utf8(&inbound.message.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1);
                if n.is_multiple_of(every) {
                    tokio::time::sleep(slow).await;
                }
            }
            tx.execute(sql.as_str(), &[&inbound.message.id])
                .await
                .map_err(handler_error)?;
            Ok(())
        })
    })
    .map_result(|r| {
        if r.is_ok() {
            line("ok");
        }
        r
    });
    let route = RouteConfig::new("ledger", &a.topic, &a.group).concurrency(8);
    let router = Router::new()
        .route_with(route, handler)
        .drain_timeout(Duration::from_secs(10));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        let _ = term.recv().await;
    };
    match a.transport {
        Transport::Nats => {
            let mut cfg = NatsConfig::new(&a.broker);
            cfg.connection.max_reconnects = None;
            if a.deadline_ms > 0 {
                cfg.consumer.ack_wait = Duration::from_millis(a.deadline_ms);
            }
            if a.slow_every > 0 {
                // Let the deadline bite: no AckProgress for slow deliveries.
                cfg.consumer.progress_heartbeats = false;
            }
            let broker = NatsBroker::connect(cfg).await?;
            router.run(broker, stop).await?;
        }
        Transport::Kafka => {
            let mut b = KafkaSubscriber::from_config(KafkaConfig::new(&a.broker))
                .session_timeout(Duration::from_secs(3))
                .heartbeat_interval(Duration::from_millis(500));
            if a.slow_every > 0 {
                b = b.max_poll_interval(Duration::from_millis(a.deadline_ms));
            }
            router.run(Arc::new(b.build()?), stop).await?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Driver plumbing: counters, consumer children, the PostgreSQL proxy, dedicated brokers.

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    run: AtomicU64,
    dup: AtomicU64,
}

struct ConsumerProc {
    child: Child,
    reader: JoinHandle<()>,
}

/// This binary, copied into the work dir so a rebuild during a run cannot pull it away
/// from under the consumers the run still has to start.
static CONSUMER_EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn spawn_consumer(
    a: &ConsumeArgs,
    counters: &Arc<Counters>,
    log: &std::path::Path,
) -> Result<ConsumerProc, BoxError> {
    let exe = CONSUMER_EXE
        .get()
        .cloned()
        .ok_or("consumer exe not prepared")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = Command::new(&exe);
    cmd.arg("consume")
        .args([
            "--transport",
            match a.transport {
                Transport::Kafka => "kafka",
                Transport::Nats => "nats",
            },
        ])
        .args([
            "--broker", &a.broker, "--topic", &a.topic, "--group", &a.group,
        ])
        .args(["--pg", &a.pg, "--inbox", &a.inbox, "--effects", &a.effects])
        .args([
            "--slow-every",
            &a.slow_every.to_string(),
            "--slow-ms",
            &a.slow_ms.to_string(),
        ])
        .args(["--deadline-ms", &a.deadline_ms.to_string()])
        .env(
            "RUST_LOG",
            std::env::var("HERALD_CHAOS_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting consumer {}: {e}", exe.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let c = counters.clone();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            match l.as_str() {
                "ok" => c.ok.fetch_add(1, Ordering::Relaxed),
                "run" => c.run.fetch_add(1, Ordering::Relaxed),
                "dup" => c.dup.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
        }
    });
    Ok(ConsumerProc { child, reader })
}

impl ConsumerProc {
    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let _ = self.reader.await;
    }

    /// SIGTERM (graceful leave), then SIGKILL after 20 s.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        let _ = self.reader.await;
    }
}

fn free_port() -> Result<u16, BoxError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn wait_port(port: u16, within: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("nothing listens on 127.0.0.1:{port} after {within:?}").into())
}

/// A TCP proxy in front of PostgreSQL that can be taken down (listener closed, every
/// connection cut) and brought back on the same port.
struct Proxy {
    port: u16,
    upstream: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Result<Self, BoxError> {
        let mut p = Self {
            port: free_port()?,
            upstream,
            task: None,
        };
        p.up().await?;
        Ok(p)
    }

    async fn up(&mut self) -> Result<(), BoxError> {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await?;
        let upstream = self.upstream;
        self.task = Some(tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        // As the client and server sockets do: without it, Nagle's
                        // algorithm meets delayed ACKs and every round trip waits ~40 ms.
                        let _ = inbound.set_nodelay(true);
                        let _ = up.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut up).await;
                    }
                });
            }
        }));
        Ok(())
    }

    async fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

/// A broker process the driver owns.
struct BrokerProc {
    transport: Transport,
    port: u16,
    child: Option<Child>,
    cmd: Vec<String>,
    log: PathBuf,
    /// A proxy clients reach the broker through (Kafka outage), and the port it listens on.
    front: Option<Proxy>,
}

impl BrokerProc {
    /// Starts a broker on a free port. With `fronted` (Kafka only), clients reach it
    /// through a proxy the driver can cut: Tansu advertises the proxy's address.
    async fn start(transport: Transport, args: &RunArgs, fronted: bool) -> Result<Self, BoxError> {
        let port = free_port()?;
        let front = if fronted {
            Some(Proxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await?)
        } else {
            None
        };
        let dir = args
            .work_dir
            .join(format!("{transport:?}-{port}").to_lowercase());
        std::fs::create_dir_all(&dir)?;
        let cmd = match transport {
            Transport::Nats => vec![
                args.nats_bin.display().to_string(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-js".into(),
                "-sd".into(),
                dir.join("js").display().to_string(),
            ],
            Transport::Kafka => {
                let advertised = front.as_ref().map_or(port, |p| p.port);
                vec![
                    args.tansu_bin.display().to_string(),
                    "broker".into(),
                    "--listener-url".into(),
                    format!("tcp://127.0.0.1:{port}"),
                    "--advertised-listener-url".into(),
                    format!("tcp://127.0.0.1:{advertised}"),
                    "--storage-engine".into(),
                    "memory://tansu/".into(),
                ]
            }
        };
        let mut b = Self {
            transport,
            port,
            child: None,
            cmd,
            log: dir.join("broker.log"),
            front,
        };
        b.spawn().await?;
        Ok(b)
    }

    fn url(&self) -> String {
        let port = self.front.as_ref().map_or(self.port, |p| p.port);
        match self.transport {
            Transport::Nats => format!("nats://127.0.0.1:{port}"),
            Transport::Kafka => format!("127.0.0.1:{port}"),
        }
    }

    async fn spawn(&mut self) -> Result<(), BoxError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.cmd[0]))?;
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(30)).await
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        if let Some(f) = self.front.as_mut() {
            f.down().await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios.

struct Row {
    scenario: &'static str,
    transport: Transport,
    published: u64,
    acknowledged: u64,
    handled: u64,
    rows: u64,
    lost: u64,
    dup_effects: u64,
    dup_deliveries: u64,
    recover: Option<f64>,
    note: String,
}

/// How long publishing a scenario's messages takes (paced).
const PUBLISH_SPAN: Duration = Duration::from_secs(20);

/// Effects progress, polled from PostgreSQL directly (not through the proxy).
#[derive(Clone, Copy, Default, Debug)]
struct Progress {
    rows: u64,
    distinct: u64,
}

async fn pg(url: &str) -> Result<tokio_postgres::Client, BoxError> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

async fn progress(c: &tokio_postgres::Client, effects: &str) -> Result<Progress, BoxError> {
    let r = c
        .query_one(
            &format!("SELECT count(*), count(DISTINCT msg_id) FROM {effects}"),
            &[],
        )
        .await?;
    Ok(Progress {
        rows: r.get::<_, i64>(0) as u64,
        distinct: r.get::<_, i64>(1) as u64,
    })
}

/// Waits until at least `n` distinct rows exist (or the deadline passes).
async fn wait_rows(rx: &mut watch::Receiver<Progress>, n: u64, deadline: Instant) -> bool {
    loop {
        if rx.borrow().distinct >= n {
            return true;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return false;
        }
    }
}

/// Seconds from now until the ledger grows past its current size.
async fn recover_secs(rx: &mut watch::Receiver<Progress>, n: u64, deadline: Instant) -> f64 {
    let start = Instant::now();
    let now = rx.borrow().distinct;
    if now >= n {
        return 0.0;
    }
    wait_rows(rx, now + 1, deadline).await;
    start.elapsed().as_secs_f64()
}

async fn publisher_for(transport: Transport, url: &str) -> Result<Arc<dyn Publisher>, BoxError> {
    Ok(match transport {
        Transport::Kafka => Arc::new(KafkaPublisher::from_config(KafkaConfig::new(url)).build()?),
        Transport::Nats => {
            let mut cfg = NatsConfig::new(url);
            cfg.connection.max_reconnects = None;
            Arc::new(NatsBroker::connect(cfg).await?)
        }
    })
}

async fn provision(transport: Transport, url: &str, topic: &str) -> Result<(), BoxError> {
    match transport {
        Transport::Kafka => {
            KafkaAdmin::new(&KafkaConfig::new(url))?
                .ensure_topic(topic, 3, 1)
                .await?;
        }
        Transport::Nats => {
            NatsBroker::connect(NatsConfig::new(url))
                .await?
                .ensure_topic(topic)
                .await?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_lines)]
async fn scenario(
    s: Scenario,
    transport: Transport,
    n: u64,
    args: &RunArgs,
    broker: &mut BrokerProc,
    proxy: &mut Proxy,
) -> Result<Row, BoxError> {
    let tag = format!("{:?}_{:?}_{}", s, transport, std::process::id()).to_lowercase();
    let suffix: u32 = rand::rng().random();
    let tag = format!("{tag}_{suffix:08x}");
    let topic = format!("chaos-{}", tag.replace('_', "-"));
    let effects = format!("chaos_fx_{tag}");
    let inbox = format!("chaos_inbox_{tag}");
    let direct = pg(&args.pg).await?;
    direct
        .batch_execute(&format!("CREATE TABLE {effects} (msg_id text NOT NULL)"))
        .await?;
    PgDedupe::connect(&args.pg, PgDedupeConfig::default().table(inbox.clone()))?
        .migrate()
        .await?;
    provision(transport, &broker.url(), &topic).await?;

    let proxied = {
        let mut u = args.pg.clone();
        // postgres://user@127.0.0.1:5432/db -> the proxy's port.
        u = u.replace(":5432", &format!(":{}", proxy.port));
        u
    };
    let (slow_every, slow_ms, deadline_ms) = match (s, transport) {
        (Scenario::Slow, Transport::Nats) => ((n / 5).max(1), 3_000, 1_000),
        (Scenario::Slow, Transport::Kafka) => ((n / 5).max(1), 8_000, 4_000),
        // A killed member's unacked deliveries come back after ack_wait: 5 s, not 30 s.
        (_, Transport::Nats) => (0, 0, 5_000),
        _ => (0, 0, 0),
    };
    let cargs = ConsumeArgs {
        transport,
        broker: broker.url(),
        topic: topic.clone(),
        group: format!("chaos-{}", tag.replace('_', "-")),
        pg: proxied,
        inbox,
        effects: effects.clone(),
        slow_every,
        slow_ms,
        deadline_ms,
    };
    let counters = Arc::new(Counters::default());
    let log = args.work_dir.join(format!("consumer-{tag}.log"));
    let members = match s {
        Scenario::Rebalance => 3,
        Scenario::Slow => 2,
        _ => 1,
    };
    let mut consumers = Vec::new();
    for _ in 0..members {
        consumers.push(spawn_consumer(&cargs, &counters, &log)?);
    }

    // Progress watcher.
    let (ptx, mut prx) = watch::channel(Progress::default());
    let watcher = {
        let effects = effects.clone();
        let url = args.pg.clone();
        tokio::spawn(async move {
            let Ok(c) = pg(&url).await else { return };
            loop {
                if let Ok(p) = progress(&c, &effects).await {
                    ptx.send_replace(p);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Publisher: every message retried (same id) until the broker acknowledged it.
    let published = Arc::new(AtomicU64::new(0));
    let publisher = publisher_for(transport, &broker.url()).await?;
    let pub_task = {
        let published = published.clone();
        let topic = topic.clone();
        let tag = tag.clone();
        tokio::spawn(async move {
            // Paced over PUBLISH_SPAN, so the faults hit while messages are still being
            // published and fetched (unpaced, the whole run sits in the consumer's prefetch
            // buffer within a second, and a broker restart would test only commits).
            let batches = n.div_ceil(250).max(1);
            let started = Instant::now();
            let mut k = 0;
            let mut b = 0;
            while k < n {
                tokio::time::sleep_until(started + PUBLISH_SPAN.mul_f64(b as f64 / batches as f64))
                    .await;
                b += 1;
                let end = (k + 250).min(n);
                let batch: Vec<Message> = (k..end)
                    .map(|i| {
                        Message::with_id(format!("{tag}-{i}"), (i + 1).to_string())
                            .with_key(format!("k{}", i % 32))
                    })
                    .collect();
                while publisher.publish(&topic, batch.clone()).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                published.fetch_add(end - k, Ordering::Relaxed);
                k = end;
            }
        })
    };

    let deadline = Instant::now() + Duration::from_secs(if args.quick { 300 } else { 1200 });
    let mut recover: Option<f64> = None;
    let mut note = String::new();
    let mut worst = |r: f64| recover = Some(recover.map_or(r, |x: f64| x.max(r)));
    match s {
        Scenario::Kill => {
            let mut points: Vec<u64> = (0..5)
                .map(|_| rand::rng().random_range(n / 20..n * 19 / 20))
                .collect();
            points.sort_unstable();
            for p in points {
                if !wait_rows(&mut prx, p, deadline).await {
                    break;
                }
                if let Some(c) = consumers.pop() {
                    c.kill().await;
                }
                consumers.push(spawn_consumer(&cargs, &counters, &log)?);
                worst(recover_secs(&mut prx, n, deadline).await);
            }
        }
        Scenario::BrokerRestart => {
            if wait_rows(&mut prx, n / 3, deadline).await {
                note = format!(
                    "at {} rows, {} published",
                    prx.borrow().distinct,
                    published.load(Ordering::Relaxed)
                );
                match broker.front.as_mut() {
                    // Kafka: unreachable for 10 s — every connection cut, nothing
                    // accepted — while its storage stays. (Tansu with durable storage,
                    // built from crates.io, was tried: after a restart its group
                    // coordinator stops answering heartbeats and hands the sole member
                    // 2 of 3 partitions, so the run stalls for the broker's sake.)
                    Some(front) => {
                        front.down().await;
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        front.up().await?;
                    }
                    None => {
                        broker.kill().await;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        broker.spawn().await?;
                    }
                }
                worst(recover_secs(&mut prx, n, deadline).await);
            }
        }
        Scenario::PgOutage => {
            if wait_rows(&mut prx, n / 3, deadline).await {
                note = format!("cut at {} rows", prx.borrow().distinct);
                proxy.down().await;
                tokio::time::sleep(Duration::from_secs(10)).await;
                proxy.up().await?;
                worst(recover_secs(&mut prx, n, deadline).await);
            }
        }
        Scenario::Rebalance => {
            let every = Duration::from_secs(3);
            let mut changes = 0;
            while prx.borrow().distinct < n && Instant::now() < deadline {
                tokio::time::sleep(every).await;
                if prx.borrow().distinct >= n {
                    break;
                }
                // Oldest member leaves gracefully, a new one joins.
                let old = consumers.remove(0);
                old.stop().await;
                consumers.push(spawn_consumer(&cargs, &counters, &log)?);
                changes += 1;
                worst(recover_secs(&mut prx, n, deadline).await);
            }
            note = format!("{changes} leave+join");
        }
        Scenario::Slow => {
            note = format!(
                "every {slow_every}th msg {slow_ms} ms, {} {deadline_ms} ms",
                match transport {
                    Transport::Nats => "ack_wait",
                    Transport::Kafka => "max.poll.interval",
                }
            );
        }
    }
    let finished = wait_rows(&mut prx, n, deadline).await;
    if !finished {
        note = format!("{note} TIMED OUT").trim().to_owned();
    }
    let _ = tokio::time::timeout_at(deadline, pub_task).await;
    // A settle window for late redeliveries (a slow first delivery, a rebalance).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for c in consumers {
        c.stop().await;
    }
    watcher.abort();
    let p = progress(&direct, &effects).await?;
    // The figures are taken: leave the shared database as it was.
    let _ = direct
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {effects}; DROP TABLE IF EXISTS {}",
            cargs.inbox
        ))
        .await;
    let published = published.load(Ordering::Relaxed);
    Ok(Row {
        scenario: s.name(),
        transport,
        published,
        acknowledged: counters.ok.load(Ordering::Relaxed),
        handled: counters.run.load(Ordering::Relaxed),
        rows: p.rows,
        lost: n.saturating_sub(p.distinct),
        dup_effects: p.rows - p.distinct,
        dup_deliveries: counters.dup.load(Ordering::Relaxed),
        recover,
        note,
    })
}

fn print_table(rows: &[Row]) {
    println!(
        "| {:<20} | {:<9} | {:>9} | {:>12} | {:>9} | {:>9} | {:>4} | {:>17} | {:>21} | {:>15} | note",
        "scenario",
        "transport",
        "published",
        "acknowledged",
        "handled",
        "rows",
        "lost",
        "duplicate effects",
        "duplicate deliveries",
        "recover seconds"
    );
    println!("|{}|", ["---"; 11].join("|"));
    for r in rows {
        println!(
            "| {:<20} | {:<9} | {:>9} | {:>12} | {:>9} | {:>9} | {:>4} | {:>17} | {:>21} | {:>15} | {}",
            r.scenario,
            format!("{:?}", r.transport).to_lowercase(),
            r.published,
            r.acknowledged,
            r.handled,
            r.rows,
            r.lost,
            r.dup_effects,
            r.dup_deliveries,
            r.recover.map_or("-".to_owned(), |s| format!("{s:.1}")),
            r.note
        );
    }
}

fn not_run(s: Scenario, t: Transport, why: &str) -> Row {
    Row {
        scenario: s.name(),
        transport: t,
        published: 0,
        acknowledged: 0,
        handled: 0,
        rows: 0,
        lost: 0,
        dup_effects: 0,
        dup_deliveries: 0,
        recover: None,
        note: format!("not run: {why}"),
    }
}

async fn run(args: RunArgs) -> Result<bool, BoxError> {
    let n = args
        .messages
        .unwrap_or(if args.quick { 5_000 } else { 50_000 });
    let scenarios = if args.scenario.is_empty() {
        vec![
            Scenario::Kill,
            Scenario::BrokerRestart,
            Scenario::PgOutage,
            Scenario::Rebalance,
            Scenario::Slow,
        ]
    } else {
        args.scenario.clone()
    };
    let transports = if args.transport.is_empty() {
        vec![Transport::Kafka, Transport::Nats]
    } else {
        args.transport.clone()
    };
    std::fs::create_dir_all(&args.work_dir)?;
    let exe = args.work_dir.join("herald-chaos-consumer");
    std::fs::copy(std::env::current_exe()?, &exe)?;
    let _ = CONSUMER_EXE.set(exe);
    let mut proxy = Proxy::start("127.0.0.1:5432".parse()?).await?;
    let mut rows = Vec::new();
    let mut ok = true;
    for &t in &transports {
        let mut broker = BrokerProc::start(t, &args, false).await?;
        for &s in &scenarios {
            // Kafka: the broker becomes unreachable instead of restarting (see
            // Scenario::BrokerRestart), on a Tansu of its own behind a proxy.
            let mut fronted = None;
            if s == Scenario::BrokerRestart && t == Transport::Kafka {
                fronted = Some(BrokerProc::start(t, &args, true).await?);
            }
            let on = match fronted.as_mut() {
                Some(b) => b,
                None => &mut broker,
            };
            let started = Instant::now();
            eprintln!("chaos: {} on {t:?} ({n} messages)…", s.name());
            match scenario(s, t, n, &args, on, &mut proxy).await {
                Ok(r) => {
                    eprintln!(
                        "chaos: {} on {t:?}: lost {} dup effects {} in {:.1}s",
                        s.name(),
                        r.lost,
                        r.dup_effects,
                        started.elapsed().as_secs_f64()
                    );
                    ok &= r.lost == 0 && r.dup_effects == 0 && r.published == n;
                    rows.push(r);
                }
                Err(e) => {
                    ok = false;
                    eprintln!("chaos: {} on {t:?} failed: {e}", s.name());
                    let mut r = not_run(s, t, "");
                    r.note = format!("ERROR: {e}");
                    r.lost = n;
                    rows.push(r);
                }
            }
            if let Some(mut b) = fronted {
                b.kill().await;
            }
            // A scenario may leave the broker down if it failed mid-restart.
            if broker.child.is_none() {
                broker.spawn().await?;
            }
        }
        broker.kill().await;
    }
    proxy.down().await;
    print_table(&rows);
    Ok(ok)
}
