//! The relay: publishes committed outbox rows.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use deadpool_postgres::Pool;
use futures::{StreamExt, future::BoxFuture, stream::BoxStream};
use herald_core::{Message, PublishError, PublishErrorKind, Publisher};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_postgres::{
    AsyncMessage, IsolationLevel, NoTls, Socket,
    tls::{MakeTlsConnect, TlsConnect},
    types::Type,
};

use super::{Outbox, OutboxError, error, headers};

/// Settings of a [`Relay`].
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use herald_patterns::outbox::{Purge, RelayConfig};
/// let config = RelayConfig {
///     poll_interval: Duration::from_secs(5),
///     purge: Some(Purge { every: Duration::from_secs(3600), older_than: Duration::from_secs(7 * 86_400) }),
///     ..Default::default()
/// };
/// # let _ = config;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// The most rows one round claims. Default 500.
    pub batch_size: usize,
    /// How often the relay looks for rows when nothing wakes it (the fallback to
    /// `LISTEN`/`NOTIFY`). Default 1 s.
    pub poll_interval: Duration,
    /// The first retry delay of a failed row; it doubles with each attempt. Default 500 ms.
    pub retry_backoff: Duration,
    /// The longest retry delay. Default 60 s.
    pub max_retry_backoff: Duration,
    /// How soon to look again when rows were held back because another relay publishes
    /// older rows of their key. Default 20 ms.
    pub contention_backoff: Duration,
    /// How long to wait after a database error. Default 1 s.
    pub error_backoff: Duration,
    /// How long one `publish` call may take before its rows count as failed. Default 30 s.
    pub publish_timeout: Duration,
    /// How often the `herald_outbox_pending_rows` gauge is refreshed. Default 5 s.
    pub gauge_interval: Duration,
    /// Periodic deletion of sent rows; `None` (the default) keeps them until
    /// [`Outbox::purge_sent`] is called.
    pub purge: Option<Purge>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            retry_backoff: Duration::from_millis(500),
            max_retry_backoff: Duration::from_secs(60),
            contention_backoff: Duration::from_millis(20),
            error_backoff: Duration::from_secs(1),
            publish_timeout: Duration::from_secs(30),
            gauge_interval: Duration::from_secs(5),
            purge: None,
        }
    }
}

/// The relay's periodic purge of sent rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Purge {
    /// How often to purge.
    pub every: Duration,
    /// Delete rows sent longer ago than this.
    pub older_than: Duration,
}

/// Totals of a spawned relay since it started; see [`RelayHandle::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Rounds run (including empty ones).
    pub rounds: u64,
    /// Rows published and marked sent.
    pub published: u64,
    /// Row publish attempts that failed.
    pub failed: u64,
    /// Claimed rows held back behind an older unsent row of their key.
    pub held: u64,
    /// Rounds that failed with a database error.
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    rounds: AtomicU64,
    published: AtomicU64,
    failed: AtomicU64,
    held: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn add(&self, round: &Result<Round, OutboxError>) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        match round {
            Ok(r) => {
                self.published
                    .fetch_add(r.published as u64, Ordering::Relaxed);
                self.failed.fetch_add(r.failed as u64, Ordering::Relaxed);
                self.held.fetch_add(r.held as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self) -> RelayStats {
        RelayStats {
            rounds: self.rounds.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// What one [`Relay::run_once`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Round {
    /// Rows claimed (locked) by the round.
    pub claimed: usize,
    /// Rows the broker acknowledged and that were marked sent.
    pub published: usize,
    /// Rows whose publish failed (marked for a retry).
    pub failed: usize,
    /// Claimed rows held back behind an older unsent row of their key.
    pub held: usize,
    /// The soonest retry of a row that failed in this round.
    pub retry_in: Option<Duration>,
}

type Notifications = BoxStream<'static, Result<AsyncMessage, tokio_postgres::Error>>;
type Connect = Arc<
    dyn Fn() -> BoxFuture<
            'static,
            Result<(tokio_postgres::Client, Notifications), tokio_postgres::Error>,
        > + Send
        + Sync,
>;

#[doc = include_str!("relay.md")]
///
/// # Examples
/// ```no_run
/// # async fn demo(pool: deadpool_postgres::Pool, pg: tokio_postgres::Config,
/// #     broker: std::sync::Arc<dyn herald_core::Publisher>) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use herald_patterns::outbox::{Outbox, Relay, RelayConfig};
/// let outbox = Outbox::with_table("orders_outbox")?;
/// let relay = Relay::new(outbox, pool, broker)
///     .config(RelayConfig { poll_interval: Duration::from_secs(5), ..Default::default() })
///     .listen(pg)
///     .spawn();
/// tokio::signal::ctrl_c().await?;
/// relay.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Relay {
    outbox: Outbox,
    pool: Pool,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
    connect: Option<Connect>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("outbox", &self.outbox)
            .field("config", &self.config)
            .field("listen", &self.connect.is_some())
            .finish_non_exhaustive()
    }
}

/// A claimed row.
struct Row {
    id: i64,
    message_id: String,
    topic: String,
    key: Option<Bytes>,
    headers: Vec<u8>,
    payload: Bytes,
}

/// A row ready to publish.
struct Ready<'r> {
    id: i64,
    chain: usize,
    topic: &'r str,
    message: Message,
}

/// What to do with a round's claimed rows.
struct Plan<'r> {
    ready: Vec<Ready<'r>>,
    /// `(id, topic, error)` of rows failing before any publish.
    failed: Vec<(i64, String, String)>,
    held: usize,
}

impl Relay {
    /// A relay for `outbox`, claiming rows through `pool` and publishing with `publisher`.
    /// Without [`listen`](Self::listen) it only polls.
    pub fn new(outbox: Outbox, pool: Pool, publisher: Arc<dyn Publisher>) -> Self {
        describe_metrics();
        Self {
            outbox,
            pool,
            publisher,
            config: RelayConfig::default(),
            connect: None,
        }
    }

    /// Sets the configuration.
    pub fn config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// Wakes on `NOTIFY` through a dedicated connection made from `pg` without TLS.
    pub fn listen(self, pg: tokio_postgres::Config) -> Self {
        self.listen_tls(pg, NoTls)
    }

    /// Wakes on `NOTIFY` through a dedicated connection made from `pg` with `tls`.
    pub fn listen_tls<T>(mut self, pg: tokio_postgres::Config, tls: T) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        self.connect = Some(Arc::new(move || {
            let pg = pg.clone();
            let tls = tls.clone();
            Box::pin(async move {
                let (client, mut conn) = pg.connect(tls).await?;
                let messages: Notifications =
                    futures::stream::poll_fn(move |cx| conn.poll_message(cx)).boxed();
                Ok((client, messages))
            })
        }));
        self
    }

    /// Runs the relay on a task until [`RelayHandle::shutdown`] (or the handle is dropped).
    pub fn spawn(self) -> RelayHandle {
        let (stop_tx, stop_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let listening = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let task =
            tokio::spawn(self.run_loop(stop_rx, wake.clone(), listening.clone(), counters.clone()));
        RelayHandle {
            stop: stop_tx,
            wake,
            listening,
            counters,
            task,
        }
    }

    /// Runs the relay until `shutdown` resolves, then stops gracefully.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(relay: herald_patterns::outbox::Relay) {
    /// relay.run(async { tokio::signal::ctrl_c().await.ok(); }).await;
    /// # }
    /// ```
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let handle = self.spawn();
        shutdown.await;
        handle.shutdown().await;
    }

    async fn run_loop(
        self,
        mut stop: watch::Receiver<bool>,
        wake: Arc<Notify>,
        listening: Arc<AtomicBool>,
        counters: Arc<Counters>,
    ) {
        let table = self.outbox.label().to_owned();
        let listener = self.connect.clone().map(|connect| {
            tokio::spawn(listen_loop(
                connect,
                self.outbox.sql().listen.clone(),
                table.clone(),
                wake.clone(),
                listening.clone(),
                stop.clone(),
                self.config.error_backoff,
            ))
        });
        let mut next_gauge = Instant::now();
        let mut next_purge = self.config.purge.map(|p| Instant::now() + p.every);
        tracing::info!(table = %table, "outbox relay started");
        loop {
            // Asked to stop, or the handle was dropped.
            if *stop.borrow() || stop.has_changed().is_err() {
                break;
            }
            let now = Instant::now();
            if now >= next_gauge {
                next_gauge = now + self.config.gauge_interval;
                self.refresh_gauge().await;
            }
            if let (Some(at), Some(purge)) = (next_purge, self.config.purge)
                && now >= at
            {
                next_purge = Some(now + purge.every);
                self.purge(purge.older_than).await;
            }
            let poll = self.config.poll_interval;
            let round = self.run_once().await;
            counters.add(&round);
            let wait = match round {
                // A full batch that made progress: more may be waiting.
                Ok(r) if r.claimed >= self.config.batch_size && r.published > 0 => Duration::ZERO,
                Ok(r) => {
                    let mut wait = poll;
                    if r.held > 0 {
                        wait = wait.min(self.config.contention_backoff);
                    }
                    if let Some(retry) = r.retry_in {
                        wait = wait.min(retry);
                    }
                    wait
                }
                Err(e) => {
                    tracing::warn!(table = %table, error = %e, "outbox relay round failed");
                    self.config.error_backoff.min(poll)
                }
            };
            if wait.is_zero() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                r = stop.changed() => {
                    // The handle was dropped: stop as if asked to.
                    if r.is_err() {
                        break;
                    }
                }
            }
        }
        if let Some(listener) = listener {
            listener.abort();
            let _ = listener.await;
        }
        listening.store(false, Ordering::Release);
        tracing::info!(table = %table, "outbox relay stopped");
    }

    async fn refresh_gauge(&self) {
        let client = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "outbox gauge: no connection");
                return;
            }
        };
        match self.outbox.pending(&client).await {
            Ok(n) => metrics::gauge!("herald_outbox_pending_rows", "table" => self.outbox.label().to_owned())
                .set(n as f64),
            Err(e) => tracing::debug!(error = %e, "outbox gauge: count failed"),
        }
    }

    async fn purge(&self, older_than: Duration) {
        let result = match self.pool.get().await {
            Ok(client) => self.outbox.purge_sent(&client, older_than).await,
            Err(e) => Err(error::pool(e)),
        };
        match result {
            Ok(n) => tracing::debug!(table = %self.outbox.label(), rows = n, "outbox purge"),
            Err(e) => {
                tracing::warn!(table = %self.outbox.label(), error = %e, "outbox purge failed")
            }
        }
    }

    /// Runs one round: claim a batch, publish it, mark it, commit. See [`Relay`].
    ///
    /// [`spawn`](Self::spawn) calls this in a loop; call it yourself to drive a relay
    /// from your own schedule.
    pub async fn run_once(&self) -> Result<Round, OutboxError> {
        let sql = self.outbox.sql();
        let mut conn = self.pool.get().await.map_err(error::pool)?;
        let tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(|e| error::db("begin", e))?;
        let claim = tx
            .prepare_typed_cached(&sql.claim, &[Type::INT8])
            .await
            .map_err(|e| error::db("prepare claim", e))?;
        let limit = i64::try_from(self.config.batch_size.max(1)).unwrap_or(i64::MAX);
        let rows = tx
            .query(&claim, &[&limit])
            .await
            .map_err(|e| error::db("claim", e))?;
        let mut round = Round {
            claimed: rows.len(),
            ..Round::default()
        };
        if rows.is_empty() {
            tx.commit().await.map_err(|e| error::db("commit", e))?;
            return Ok(round);
        }
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            claimed.push(read_row(row).map_err(|e| error::db("read claimed row", e))?);
        }
        drop(rows);

        // Step 2: hold back rows behind an older unsent row of their key outside the set.
        let gaps = self.gaps(&tx, &claimed).await?;

        let plan = self.plan(&claimed, &gaps);
        round.held += plan.held;
        let mut failed = plan.failed;

        // Step 3: publish, one call per topic, topics concurrently.
        let mut by_topic: Vec<(&str, Vec<Ready>)> = Vec::new();
        for r in plan.ready {
            match by_topic.iter_mut().find(|(t, _)| *t == r.topic) {
                Some((_, v)) => v.push(r),
                None => by_topic.push((r.topic, vec![r])),
            }
        }
        let outcomes = futures::future::join_all(
            by_topic
                .into_iter()
                .map(|(topic, rows)| self.publish_topic(topic, rows)),
        )
        .await;
        let mut sent: Vec<(i64, &str)> = Vec::new();
        for o in outcomes {
            sent.extend(o.sent);
            round.held += o.held;
            failed.extend(o.failed);
        }

        // Step 4: mark and commit.
        let mut lags = Vec::new();
        if !sent.is_empty() {
            let ids: Vec<i64> = sent.iter().map(|(id, _)| *id).collect();
            let stmt = tx
                .prepare_typed_cached(&sql.mark_sent, &[Type::INT8_ARRAY])
                .await
                .map_err(|e| error::db("prepare mark sent", e))?;
            for row in tx
                .query(&stmt, &[&ids])
                .await
                .map_err(|e| error::db("mark sent", e))?
            {
                if let Ok(Some(lag)) = row.try_get::<_, Option<f64>>(0) {
                    lags.push(lag);
                }
            }
        }
        if !failed.is_empty() {
            let ids: Vec<i64> = failed.iter().map(|(id, _, _)| *id).collect();
            let errs: Vec<&str> = failed.iter().map(|(_, _, e)| e.as_str()).collect();
            let base = self.config.retry_backoff.as_secs_f64();
            let max = self.config.max_retry_backoff.as_secs_f64();
            let stmt = tx
                .prepare_typed_cached(
                    &sql.mark_failed,
                    &[
                        Type::INT8_ARRAY,
                        Type::TEXT_ARRAY,
                        Type::FLOAT8,
                        Type::FLOAT8,
                    ],
                )
                .await
                .map_err(|e| error::db("prepare mark failed", e))?;
            for row in tx
                .query(&stmt, &[&ids, &errs, &base, &max])
                .await
                .map_err(|e| error::db("mark failed", e))?
            {
                if let Ok(Some(secs)) = row.try_get::<_, Option<f64>>(0) {
                    let d = Duration::from_secs_f64(secs.clamp(0.0, 86_400.0));
                    round.retry_in = Some(round.retry_in.map_or(d, |r| r.min(d)));
                }
            }
        }
        tx.commit().await.map_err(|e| error::db("commit", e))?;

        let table = self.outbox.label().to_owned();
        let hist = metrics::histogram!("herald_outbox_relay_lag_seconds", "table" => table.clone());
        for lag in lags {
            hist.record(lag);
        }
        let mut per_topic: HashMap<&str, u64> = HashMap::new();
        for (_, topic) in &sent {
            *per_topic.entry(topic).or_default() += 1;
        }
        for (topic, n) in per_topic {
            metrics::counter!("herald_outbox_published_total", "table" => table.clone(), "topic" => topic.to_owned())
                .increment(n);
        }
        let mut per_topic: HashMap<&str, u64> = HashMap::new();
        for (_, topic, _) in &failed {
            *per_topic.entry(topic).or_default() += 1;
        }
        for (topic, n) in per_topic {
            metrics::counter!("herald_outbox_publish_failures_total", "table" => table.clone(), "topic" => topic.to_owned())
                .increment(n);
        }
        round.published = sent.len();
        round.failed = failed.len();
        if round.failed > 0 {
            tracing::warn!(table = %table, failed = round.failed, published = round.published,
                "outbox rows failed to publish; they will be retried");
        }
        Ok(round)
    }

    /// Splits the claimed rows into the ones to publish (as messages, chained by key),
    /// the ones that fail before publishing (undecodable) and the ones held back.
    fn plan<'r>(&self, claimed: &'r [Row], gaps: &HashMap<(&str, &[u8]), i64>) -> Plan<'r> {
        let mut plan = Plan {
            ready: Vec::with_capacity(claimed.len()),
            failed: Vec::new(),
            held: 0,
        };
        // Chains: one per (topic, key); keyless rows are chains of one.
        let mut chain_of: HashMap<(&str, &[u8]), usize> = HashMap::new();
        let mut broken: Vec<bool> = Vec::new();
        for row in claimed {
            let chain = match &row.key {
                Some(k) => *chain_of.entry((&row.topic, &k[..])).or_insert(broken.len()),
                None => broken.len(),
            };
            if chain == broken.len() {
                broken.push(false);
            }
            let gap = row
                .key
                .as_ref()
                .and_then(|k| gaps.get(&(row.topic.as_str(), &k[..])).copied());
            if broken[chain] || gap.is_some_and(|g| row.id > g) {
                plan.held += 1;
                continue;
            }
            match headers::decode(&row.headers) {
                Ok(h) => {
                    let mut message = Message::with_id(row.message_id.clone(), row.payload.clone());
                    message.key = row.key.clone();
                    message.headers = h;
                    plan.ready.push(Ready {
                        id: row.id,
                        chain,
                        topic: &row.topic,
                        message,
                    });
                }
                Err(e) => {
                    tracing::error!(table = %self.outbox.label(), id = row.id, error = %e,
                        "outbox row cannot be decoded; it holds back its key");
                    broken[chain] = true;
                    plan.failed.push((row.id, row.topic.clone(), e.to_string()));
                }
            }
        }
        plan
    }

    /// For each claimed `(topic, key)`: the oldest unsent row of the key, outside the
    /// claimed set, that is older than the key's youngest claimed row.
    async fn gaps<'r>(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        claimed: &'r [Row],
    ) -> Result<HashMap<(&'r str, &'r [u8]), i64>, OutboxError> {
        let mut keys: Vec<(&str, &[u8], i64)> = Vec::new();
        let mut index: HashMap<(&str, &[u8]), usize> = HashMap::new();
        for row in claimed {
            let Some(key) = &row.key else { continue };
            match index.get(&(row.topic.as_str(), &key[..])) {
                Some(&i) => keys[i].2 = keys[i].2.max(row.id),
                None => {
                    index.insert((&row.topic, key), keys.len());
                    keys.push((&row.topic, key, row.id));
                }
            }
        }
        let mut gaps = HashMap::new();
        if keys.is_empty() {
            return Ok(gaps);
        }
        let topics: Vec<&str> = keys.iter().map(|k| k.0).collect();
        let key_bytes: Vec<&[u8]> = keys.iter().map(|k| k.1).collect();
        let max_ids: Vec<i64> = keys.iter().map(|k| k.2).collect();
        let ids: Vec<i64> = claimed.iter().map(|r| r.id).collect();
        let stmt = tx
            .prepare_typed_cached(
                &self.outbox.sql().gaps,
                &[
                    Type::TEXT_ARRAY,
                    Type::BYTEA_ARRAY,
                    Type::INT8_ARRAY,
                    Type::INT8_ARRAY,
                ],
            )
            .await
            .map_err(|e| error::db("prepare gap check", e))?;
        let rows = tx
            .query(&stmt, &[&topics, &key_bytes, &max_ids, &ids])
            .await
            .map_err(|e| error::db("gap check", e))?;
        for row in rows {
            let ord: i64 = row.try_get(0).map_err(|e| error::db("gap check", e))?;
            let gap: Option<i64> = row.try_get(1).map_err(|e| error::db("gap check", e))?;
            let slot = usize::try_from(ord - 1).ok().and_then(|i| keys.get(i));
            if let (Some(gap), Some(&(topic, key, _))) = (gap, slot) {
                gaps.insert((topic, key), gap);
            }
        }
        Ok(gaps)
    }

    /// Publishes one topic's rows; on a per-message rejection, again chain by chain.
    async fn publish_topic<'t>(&self, topic: &'t str, rows: Vec<Ready<'t>>) -> TopicOutcome<'t> {
        let mut out = TopicOutcome::default();
        let messages: Vec<Message> = rows.iter().map(|r| r.message.clone()).collect();
        let err = match self.publish(topic, messages).await {
            Ok(()) => {
                out.sent = rows.iter().map(|r| (r.id, topic)).collect();
                return out;
            }
            Err(e) => e,
        };
        if !matches!(
            err.kind(),
            PublishErrorKind::MessageTooLarge | PublishErrorKind::InvalidMessage
        ) {
            let msg = err.to_string();
            out.failed = rows
                .iter()
                .map(|r| (r.id, topic.to_owned(), msg.clone()))
                .collect();
            return out;
        }
        tracing::debug!(topic, error = %err, "outbox batch rejected; publishing key by key");
        let mut chains: Vec<(usize, Vec<Ready<'t>>)> = Vec::new();
        for r in rows {
            match chains.iter_mut().find(|(c, _)| *c == r.chain) {
                Some((_, v)) => v.push(r),
                None => chains.push((r.chain, vec![r])),
            }
        }
        for (_, chain) in chains {
            let mut it = chain.into_iter();
            for r in it.by_ref() {
                match self.publish(topic, vec![r.message]).await {
                    Ok(()) => out.sent.push((r.id, topic)),
                    Err(e) => {
                        out.failed.push((r.id, topic.to_owned(), e.to_string()));
                        break;
                    }
                }
            }
            out.held += it.count();
        }
        out
    }

    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), PublishError> {
        match tokio::time::timeout(
            self.config.publish_timeout,
            self.publisher.publish(topic, messages),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(PublishError::new(
                PublishErrorKind::Timeout,
                format!(
                    "no acknowledgement within {:?}",
                    self.config.publish_timeout
                ),
            )),
        }
    }
}

#[derive(Default)]
struct TopicOutcome<'t> {
    sent: Vec<(i64, &'t str)>,
    failed: Vec<(i64, String, String)>,
    held: usize,
}

fn read_row(row: &tokio_postgres::Row) -> Result<Row, tokio_postgres::Error> {
    Ok(Row {
        id: row.try_get(0)?,
        message_id: row.try_get(1)?,
        topic: row.try_get(2)?,
        key: row.try_get::<_, Option<Vec<u8>>>(3)?.map(Bytes::from),
        headers: row.try_get(4)?,
        payload: Bytes::from(row.try_get::<_, Vec<u8>>(5)?),
    })
}

/// Keeps a `LISTEN` connection up and turns notifications into wake-ups.
async fn listen_loop(
    connect: Connect,
    listen_sql: String,
    table: String,
    wake: Arc<Notify>,
    listening: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
    retry: Duration,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let session = async {
            let (client, mut messages) = connect().await?;
            {
                let listen = client.batch_execute(&listen_sql);
                tokio::pin!(listen);
                loop {
                    tokio::select! {
                        r = &mut listen => { r?; break; }
                        m = messages.next() => match m {
                            Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return Err(e),
                            None => return Ok(()),
                        },
                    }
                }
            }
            listening.store(true, Ordering::Release);
            tracing::debug!(table = %table, "outbox relay listening");
            // Anything committed before LISTEN took effect is picked up by this round.
            wake.notify_one();
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            drop(client);
            Ok::<(), tokio_postgres::Error>(())
        };
        tokio::select! {
            r = session => {
                listening.store(false, Ordering::Release);
                match r {
                    Ok(()) => tracing::warn!(table = %table, "outbox listener connection closed; reconnecting"),
                    Err(e) => tracing::warn!(table = %table, error = %e, "outbox listener failed; polling until it reconnects"),
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Controls a spawned [`Relay`].
///
/// Dropping the handle stops the relay after its current round, without waiting.
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    wake: Arc<Notify>,
    listening: Arc<AtomicBool>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("listening", &self.is_listening())
            .field("finished", &self.is_finished())
            .field("stats", &self.stats())
            .finish()
    }
}

impl RelayHandle {
    /// Lets the round in progress finish (publish, mark, commit), then stops the relay
    /// and its listener. Returns what the relay did, final (a round counts only after it
    /// committed, so [`stats`](Self::stats) read while it runs may lag the table).
    ///
    /// # Panics
    /// Re-raises a panic of the relay task.
    pub async fn shutdown(self) -> RelayStats {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
        self.counters.snapshot()
    }

    /// Starts a round now (e.g. right after a commit when not listening).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether the `LISTEN` connection is up (always false without
    /// [`Relay::listen`]).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// What the relay did so far.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Whether the relay task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

fn describe_metrics() {
    {
        metrics::describe_gauge!(
            "herald_outbox_pending_rows",
            "Outbox rows not yet published"
        );
        metrics::describe_histogram!(
            "herald_outbox_relay_lag_seconds",
            metrics::Unit::Seconds,
            "Delay from writing an outbox row to the broker's acknowledgement"
        );
        metrics::describe_counter!(
            "herald_outbox_published_total",
            "Outbox rows published and marked sent"
        );
        metrics::describe_counter!(
            "herald_outbox_publish_failures_total",
            "Outbox row publish attempts that failed"
        );
    }
}
