//! Request/reply over every transport: the requester's subscription is live before the
//! first request (its probe came back), concurrent requests get their own replies, and a
//! request nobody answers times out.

mod patterns_support;

use std::time::Duration;

use herald_core::{Event, Inbound, JsonCodec, Message, RouteConfig, Router};
use herald_patterns::request::{RequestErrorKind, Requester, RequesterConfig, responder};
use patterns_support::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Quote {
    sku: String,
    qty: u32,
}
impl Event for Quote {
    const TYPE: &'static str = "test.rr.Quote";
    const VERSION: u32 = 1;
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Price {
    sku: String,
    cents: u64,
}
impl Event for Price {
    const TYPE: &'static str = "test.rr.Price";
    const VERSION: u32 = 1;
}

async fn run(kind: Kind) {
    let prefix = herald_testkit::unique(&format!("rr-{kind:?}").to_lowercase());
    let (requests, replies, void) = (
        format!("{prefix}-quotes"),
        format!("{prefix}-replies"),
        format!("{prefix}-void"),
    );
    let tr = transport(kind, &[requests.clone(), replies.clone(), void.clone()]).await;
    let pricing = Router::new()
        .route_with(
            RouteConfig::new("pricing", &requests, format!("{prefix}-pricing")).concurrency(8),
            responder(
                JsonCodec,
                tr.publisher.clone(),
                |q: Quote, _: Inbound| async move {
                    Ok(Price {
                        cents: u64::from(q.qty) * 125,
                        sku: q.sku,
                    })
                },
            ),
        )
        .start(tr.subscriber.clone());
    let started = std::time::Instant::now();
    let requester = Requester::connect(
        tr.publisher.clone(),
        tr.subscriber.clone(),
        &replies,
        RequesterConfig::default().group_prefix(format!("{prefix}-req")),
    )
    .await
    .unwrap();
    let connected = started.elapsed();
    let started = std::time::Instant::now();
    let calls = (1..=20u32).map(|qty| {
        let (r, requests) = (requester.clone(), requests.clone());
        async move {
            let quote = Quote {
                sku: format!("sku-{qty}"),
                qty,
            };
            let p: Price = r
                .request_event(&JsonCodec, &requests, &quote, Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!(
                p,
                Price {
                    sku: format!("sku-{qty}"),
                    cents: u64::from(qty) * 125
                }
            );
        }
    });
    futures::future::join_all(calls).await;
    println!(
        "{kind:?}: connected in {:.0} ms, 20 concurrent round trips in {:.0} ms",
        connected.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    let err = requester
        .request(&void, Message::new("{}"), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RequestErrorKind::Timeout);
    requester.close().await;
    pricing.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_reply_memory() {
    run(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_reply_kafka() {
    run(Kind::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_reply_nats() {
    run(Kind::Nats).await;
}
