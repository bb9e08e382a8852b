//! Prometheus metrics: herald's counters, gauges and histograms served on `/metrics`.
//! Run it with
//!
//! ```text
//! cargo run -p herald-examples --bin prometheus                 # scrape once, print, exit
//! cargo run -p herald-examples --bin prometheus -- --serve      # keep serving until Ctrl-C
//! cargo run -p herald-examples --bin prometheus -- --listen 127.0.0.1:9100
//! ```
//!
//! It installs `metrics-exporter-prometheus` with its HTTP listener, then runs a billing
//! service on the in-memory transport behind the standard stack with the metrics slot set
//! (plus a metered publisher and the breaker's metrics hook): 100 orders, of which three
//! fail once and are retried and one is dead-lettered. Then it scrapes its own `/metrics`
//! and prints the `herald_` lines, e.g.
//!
//! ```text
//! herald_handled_total{handler="billing",topic="orders",group="billing",outcome="ok"} 99
//! herald_retried_total{handler="billing",topic="orders",group="billing",kind="immediate"} 3
//! herald_dead_lettered_total{handler="billing",topic="orders",group="billing",class="permanent"} 1
//! ```

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use clap::Parser;
use herald::{
    HandlerError, Inbound, Message, Publisher, RouteConfig, Router, handler_fn,
    memory::MemoryBroker,
    middleware::{
        Backoff, BreakerConfig, BreakerLayer, DeadLetterLayer, RetryLayer, Stack,
        metrics::{BreakerMetrics, MeteredPublisher, MetricsLayer},
    },
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Serve herald's metrics for Prometheus.
#[derive(Parser, Debug)]
struct Args {
    /// Where `/metrics` is served.
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// Keep serving after the demo run, until Ctrl-C.
    #[arg(long)]
    serve: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // Histograms as Prometheus histograms (buckets) rather than summaries, so they can
    // be aggregated across instances.
    PrometheusBuilder::new()
        .with_http_listener(args.listen)
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0],
        )?
        .install()?;

    let broker = MemoryBroker::new();
    let publisher = Arc::new(MeteredPublisher::new(broker.clone()));
    let stack = Stack::new()
        .metrics(MetricsLayer::new())
        .dead_letter(DeadLetterLayer::new(publisher.clone()))
        .breaker(BreakerLayer::new(BreakerConfig::default()).on_state_change(BreakerMetrics::new()))
        .retry(RetryLayer::new(Backoff {
            initial: Duration::from_millis(5),
            immediate_attempts: 2,
            delayed_attempts: 0,
            ..Default::default()
        }))
        .timeout(Duration::from_secs(5));
    let failed_once = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let handler = stack.service(handler_fn(move |inbound: Inbound| {
        let failed_once = failed_once.clone();
        async move {
            let n: u32 = std::str::from_utf8(&inbound.message.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| HandlerError::permanent("not an order number"))?;
            if n == 99 {
                return Err(HandlerError::permanent("total does not match the items"));
            }
            let first_time = failed_once.lock().map(|mut s| s.insert(n)).unwrap_or(false);
            if [10, 20, 30].contains(&n) && first_time {
                return Err(HandlerError::transient("card processor busy"));
            }
            Ok(())
        }
    }));
    let running = Router::new()
        .route_with(
            RouteConfig::new("billing", "orders", "billing").concurrency(4),
            handler,
        )
        .start(broker.clone());

    let orders = (0..100)
        .map(|i| Message::new(i.to_string()).with_key(format!("o-{i}")))
        .collect();
    publisher.publish("orders", orders).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.lag("orders", "billing") > 0 || broker.retained("orders.dlq") < 1 {
        if tokio::time::Instant::now() > deadline {
            return Err("the orders were not handled in time".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let listen = args.listen;
    let body = tokio::task::spawn_blocking(move || scrape(listen)).await??;
    for line in body.lines().filter(|l| l.starts_with("herald_")) {
        println!("{line}");
    }
    println!("prometheus: metrics served on http://{listen}/metrics");

    if args.serve {
        println!("serving until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    running.shutdown().await?;
    Ok(())
}

/// `GET /metrics` over a plain TCP connection (HTTP/1.0: the server closes when done).
fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut last = None;
    for _ in 0..50 {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
                let mut response = String::new();
                s.read_to_string(&mut response)?;
                let body = response
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b)
                    .unwrap_or("");
                return Ok(body.to_owned());
            }
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no connection")))
}
