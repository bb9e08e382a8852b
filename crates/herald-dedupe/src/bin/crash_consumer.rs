//! A consumer for herald-dedupe's crash tests (`tests/crash.rs`); not a tool.
//!
//! It consumes a durable queue kept in a PostgreSQL table through herald's `Router`,
//! and applies each message exactly once through one of the dedupe stores' exactly-once
//! forms. The tests SIGKILL it at random points and start it again; when the queue is
//! drained it exits 0.
//!
//! ```text
//! herald-dedupe-crash-consumer <mode> <postgres-url> <queue-table> <inbox-table-or-prefix> <effects> [redis-url]
//!   mode pg:    postgres::transactional — INSERT INTO <effects>(msg_id) in the inbox's transaction
//!   mode redis: redis::atomic           — RPUSH <effects> msg_id with the completion
//! ```
//!
//! The queue (the "broker") hands out rows with a lease (`FOR UPDATE SKIP LOCKED`), marks
//! a row consumed on ack, and hands a row out again when its lease runs out — so a killed
//! consumer's messages are redelivered, as a broker would. Each duplicate the dedupe store
//! catches is printed as a `duplicate` line.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, future::BoxFuture};
use herald_core::{
    AckError, AckErrorKind, Acker, Delivery, Inbound, Message, Origin, RouteConfig, Router,
    SubscribeError, SubscribeErrorKind, SubscribeSpec, Subscriber, Subscription,
};
use herald_dedupe::{
    postgres::{PgDedupe, PgDedupeConfig, handler_error, transactional},
    redis::{RedisDedupe, RedisDedupeConfig, atomic},
};

/// How long a handed-out queue row stays invisible to others.
const QUEUE_LEASE: Duration = Duration::from_secs(2);
const BATCH: i64 = 8;

#[derive(Clone)]
struct PgQueue {
    pool: deadpool_postgres::Pool,
    table: String,
}

fn sub_err(e: impl std::fmt::Display) -> SubscribeError {
    SubscribeError::new(SubscribeErrorKind::Connection, e.to_string())
}

impl PgQueue {
    async fn fetch(&self) -> Result<Vec<Delivery>, SubscribeError> {
        let c = self.pool.get().await.map_err(sub_err)?;
        let rows = c
            .query(
                &format!(
                    "UPDATE {t} SET locked_until = now() + $1::bigint * interval '1 millisecond', \
                       attempts = attempts + 1 \
                     WHERE seq IN (SELECT seq FROM {t} WHERE NOT consumed \
                       AND (locked_until IS NULL OR locked_until < now()) \
                       ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED) \
                     RETURNING seq, msg_id, payload, attempts",
                    t = self.table
                ),
                &[&(QUEUE_LEASE.as_millis() as i64), &BATCH],
            )
            .await
            .map_err(sub_err)?;
        let mut out: Vec<(i64, Delivery)> = rows
            .iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let msg = Message::with_id(r.get::<_, String>(1), r.get::<_, String>(2));
                let attempt: i32 = r.get(3);
                let acker = QueueAcker {
                    queue: self.clone(),
                    seq,
                };
                let d = Delivery::new(
                    msg,
                    Origin::new(self.table.clone()).with("sequence", seq),
                    u32::try_from(attempt).unwrap_or(1),
                    Box::new(acker),
                );
                (seq, d)
            })
            .collect();
        out.sort_by_key(|(s, _)| *s);
        Ok(out.into_iter().map(|(_, d)| d).collect())
    }

    async fn drained(&self) -> Result<bool, SubscribeError> {
        let c = self.pool.get().await.map_err(sub_err)?;
        let row = c
            .query_one(
                &format!(
                    "SELECT NOT EXISTS (SELECT 1 FROM {} WHERE NOT consumed)",
                    self.table
                ),
                &[],
            )
            .await
            .map_err(sub_err)?;
        Ok(row.get(0))
    }
}

struct QueueAcker {
    queue: PgQueue,
    seq: i64,
}

impl QueueAcker {
    async fn settle(self, sql: String, params: i64) -> Result<(), AckError> {
        let ack_err =
            |e: &dyn std::fmt::Display| AckError::new(AckErrorKind::Connection, e.to_string());
        let c = self.queue.pool.get().await.map_err(|e| ack_err(&e))?;
        c.execute(&sql, &[&self.seq, &params])
            .await
            .map_err(|e| ack_err(&e))?;
        Ok(())
    }
}

impl Acker for QueueAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), AckError>> {
        let sql = format!(
            "UPDATE {} SET consumed = true WHERE seq = $1 AND $2::bigint = 0",
            self.queue.table
        );
        Box::pin(self.settle(sql, 0))
    }

    fn nack(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), AckError>> {
        let sql = format!(
            "UPDATE {} SET locked_until = now() + $2::bigint * interval '1 millisecond' WHERE seq = $1",
            self.queue.table
        );
        Box::pin(self.settle(sql, delay.as_millis() as i64))
    }
}

impl Subscriber for PgQueue {
    fn subscribe(
        &self,
        _spec: SubscribeSpec,
    ) -> BoxFuture<'_, Result<Subscription, SubscribeError>> {
        let q = self.clone();
        Box::pin(async move {
            let stream =
                futures::stream::unfold((q, Vec::<Delivery>::new()), |(q, mut buf)| async move {
                    loop {
                        if let Some(d) = buf.pop() {
                            return Some((Ok(d), (q, buf)));
                        }
                        match q.fetch().await {
                            Ok(mut ds) if !ds.is_empty() => {
                                ds.reverse();
                                buf = ds;
                            }
                            Ok(_) => match q.drained().await {
                                Ok(true) => return None,
                                Ok(false) => tokio::time::sleep(Duration::from_millis(50)).await,
                                Err(e) => return Some((Err(e), (q, buf))),
                            },
                            Err(e) => {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                return Some((Err(e), (q, buf)));
                            }
                        }
                    }
                });
            Ok(Subscription::new(
                stream.boxed(),
                Box::pin(async { Ok(()) }),
            ))
        })
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: herald-dedupe-crash-consumer <pg|redis> <postgres-url> <queue-table> <inbox-table-or-prefix> <effects> [redis-url]"
    );
    std::process::exit(2)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        usage();
    }
    let (mode, pg_url, queue, inbox, effects) = (&args[0], &args[1], &args[2], &args[3], &args[4]);
    // A `duplicate` line for each duplicate the dedupe store caught, as it happens.
    let _ = herald_dedupe::probe::on_duplicate(|n| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for _ in 0..n {
            let _ = writeln!(out, "duplicate");
        }
        let _ = out.flush();
    });

    let store = PgDedupe::connect(
        pg_url,
        PgDedupeConfig::default().table(inbox.clone()).pool_size(8),
    )?;
    let queue = PgQueue {
        pool: store.pool().clone(),
        table: format!("\"{queue}\""),
    };
    let route = RouteConfig::new("crash", "queue", "crash").concurrency(4);
    let router = match mode.as_str() {
        "pg" => {
            store.migrate().await?;
            let sql = Arc::new(format!("INSERT INTO \"{effects}\" (msg_id) VALUES ($1)"));
            Router::new().route_with(
                route,
                transactional(store, move |tx, inbound: Inbound| {
                    let sql = sql.clone();
                    Box::pin(async move {
                        tx.execute(sql.as_str(), &[&inbound.message.id])
                            .await
                            .map_err(handler_error)?;
                        Ok(())
                    })
                }),
            )
        }
        "redis" => {
            let url = args.get(5).unwrap_or_else(|| usage());
            let rstore =
                RedisDedupe::connect(url, RedisDedupeConfig::default().key_prefix(inbox.clone()))
                    .await?;
            let list = Arc::new(effects.clone());
            Router::new().route_with(
                route,
                atomic(rstore, move |inbound: Inbound| {
                    let list = list.clone();
                    async move {
                        let mut writes = redis::pipe();
                        writes
                            .cmd("RPUSH")
                            .arg(list.as_str())
                            .arg(inbound.message.id.as_str());
                        Ok(writes)
                    }
                })
                .lease(Duration::from_secs(2))
                .in_progress_delay(Duration::from_millis(200)),
            )
        }
        _ => usage(),
    };
    router.run(queue, futures::future::pending()).await?;
    Ok(())
}
