//! Criterion micro-benchmarks of herald's hot paths, each beside the raw library call it
//! wraps:
//!
//! * `headers/*`: herald headers ⇄ rdkafka `OwnedHeaders` and async-nats `HeaderMap`.
//!   herald-nats' mapping is public (`mapping::outbound` / `inbound`); herald-kafka's
//!   (`wire::to_kafka_headers`) is crate-private, so `kafka_map` runs a line-for-line
//!   copy of it over the public `Headers` API.
//! * `envelope/*`: `JsonCodec.to_message` (id, CloudEvents headers, time, JSON) against
//!   `serde_json::to_vec` alone.
//! * `avro/*`: herald-avro encode/decode (Confluent frame, cached writer schema, bounded
//!   pre-check) against apache-avro's `to_avro_datum`/`from_avro_datum` with serde, and
//!   against apache-avro's fastest path (a prebuilt `GenericDatumWriter`/`Reader` with
//!   direct serde).
//! * `dedupe/*`: the memory store's claim (`begin` + `complete`) and duplicate check.
//! * `memory/*`: the memory transport, subscribe + ack and the router's dispatch, per
//!   message on a current-thread runtime.
//!
//! Run: `cargo bench -p herald-bench --bench hot_paths` (add `-- --quick` for a fast pass).

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use apache_avro::{Schema, reader::datum::GenericDatumReader, writer::datum::GenericDatumWriter};
use async_nats::HeaderMap;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::{FutureExt, StreamExt};
use herald_avro::{AvroCodec, BoundSchema, DirectoryRegistry, ParsedSchema};
use herald_core::{
    Codec, Event, Inbound, JsonCodec, Message, Publisher, RouteConfig, Router, SubscribeSpec,
    Subscriber,
    dedupe::{Claim, DedupeStore},
    handler_fn,
    memory::{MemoryBroker, MemoryConfig},
    message::names,
};
use herald_dedupe::memory::MemoryDedupe;
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// The event used throughout.

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Item {
    sku: String,
    qty: i32,
    price_cents: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OrderCreated {
    order_id: String,
    customer_id: String,
    total_cents: i64,
    currency: String,
    items: Vec<Item>,
    note: Option<String>,
}

impl Event for OrderCreated {
    const TYPE: &'static str = "herald.bench.OrderCreated";
    const VERSION: u32 = 1;
}

const SCHEMA: &str = r#"{
  "type": "record", "name": "OrderCreated", "namespace": "herald.bench",
  "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "customer_id", "type": "string"},
    {"name": "total_cents", "type": "long"},
    {"name": "currency", "type": "string"},
    {"name": "items", "type": {"type": "array", "items": {
      "type": "record", "name": "Item",
      "fields": [
        {"name": "sku", "type": "string"},
        {"name": "qty", "type": "int"},
        {"name": "price_cents", "type": "long"}
      ]}}},
    {"name": "note", "type": ["null", "string"], "default": null}
  ]
}"#;

fn order() -> OrderCreated {
    OrderCreated {
        order_id: "o-000123456".into(),
        customer_id: "c-987654".into(),
        total_cents: 12_345,
        currency: "EUR".into(),
        items: (0..3)
            .map(|i| Item {
                sku: format!("sku-{i:04}"),
                qty: i + 1,
                price_cents: 1_000 * i64::from(i + 1),
            })
            .collect(),
        note: Some("leave at the door".into()),
    }
}

fn ce_message() -> Message {
    let mut m = Message::with_id("0190b6c6-7e7f-7a55-9d1c-3a8e5c1d2f40", vec![0u8; 256])
        .with_key("o-000123456")
        .with_type("herald.bench.OrderCreated.v1")
        .with_source("bench")
        .with_content_type("application/json")
        .with_time("2026-01-01T00:00:00Z")
        .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    m.headers.insert(names::CE_SPECVERSION, "1.0");
    m
}

// ---------------------------------------------------------------------------------------
// Headers.

/// A copy of herald-kafka's crate-private `wire::to_kafka_headers`.
fn kafka_map(m: &Message, buf: &mut String) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(m.headers.len() + 2);
    h = h.insert(Header {
        key: "ce_id",
        value: Some(m.id.as_bytes()),
    });
    h = h.insert(Header {
        key: "ce_specversion",
        value: Some(b"1.0".as_slice()),
    });
    for (name, value) in m.headers.iter() {
        if name == names::CE_ID || name == names::CE_SPECVERSION {
            continue;
        }
        let key = match name.strip_prefix("ce-") {
            Some(attr) => {
                buf.clear();
                buf.push_str("ce_");
                buf.push_str(attr);
                buf.as_str()
            }
            None => name,
        };
        h = h.insert(Header {
            key,
            value: Some(&value[..]),
        });
    }
    h
}

fn bench_headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    g.throughput(Throughput::Elements(1));
    let m = ce_message();

    g.bench_function("kafka_map/herald", |b| {
        let mut buf = String::new();
        b.iter(|| black_box(kafka_map(black_box(&m), &mut buf)))
    });
    g.bench_function("kafka_map/raw", |b| {
        b.iter(|| {
            let h = OwnedHeaders::new_with_capacity(8)
                .insert(Header {
                    key: "ce_id",
                    value: Some(black_box(m.id.as_bytes())),
                })
                .insert(Header {
                    key: "ce_specversion",
                    value: Some(b"1.0".as_slice()),
                })
                .insert(Header {
                    key: "ce_type",
                    value: Some(b"herald.bench.OrderCreated.v1".as_slice()),
                })
                .insert(Header {
                    key: "ce_source",
                    value: Some(b"bench".as_slice()),
                })
                .insert(Header {
                    key: "content-type",
                    value: Some(b"application/json".as_slice()),
                })
                .insert(Header {
                    key: "ce_time",
                    value: Some(b"2026-01-01T00:00:00Z".as_slice()),
                })
                .insert(Header {
                    key: "traceparent",
                    value: Some(
                        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".as_slice(),
                    ),
                });
            black_box(h)
        })
    });

    g.bench_function("nats_outbound/herald", |b| {
        b.iter_batched(
            || m.clone(),
            |m| black_box(herald_nats::mapping::outbound("orders", m).expect("valid")),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("nats_outbound/raw", |b| {
        b.iter_batched(
            || m.clone(),
            |m| {
                let mut h = HeaderMap::new();
                h.insert("ce-type", "herald.bench.OrderCreated.v1");
                h.insert("ce-source", "bench");
                h.insert("content-type", "application/json");
                h.insert("ce-time", "2026-01-01T00:00:00Z");
                h.insert(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                );
                h.insert("Nats-Msg-Id", m.id.as_str());
                h.insert("ce-id", m.id.as_str());
                h.insert("ce-specversion", "1.0");
                let subject = format!("orders.{}", "o-000123456");
                black_box((subject, h, m.payload))
            },
            criterion::BatchSize::SmallInput,
        )
    });

    let out = herald_nats::mapping::outbound("orders", m.clone()).expect("valid");
    g.bench_function("nats_inbound/herald", |b| {
        b.iter(|| {
            black_box(herald_nats::mapping::inbound(
                &out.subject,
                Some(&out.headers),
                out.payload.clone(),
                "orders",
                42,
            ))
        })
    });
    g.bench_function("nats_inbound/raw", |b| {
        // What a raw consumer reads: the id, the type and the content type.
        b.iter(|| {
            let h = black_box(&out.headers);
            let id = h.get("ce-id").map(|v| v.as_str().to_owned());
            let ty = h.get("ce-type").map(|v| v.as_str().to_owned());
            let ct = h.get("content-type").map(|v| v.as_str().to_owned());
            black_box((id, ty, ct, out.payload.clone()))
        })
    });

    let kh = kafka_map(&m, &mut String::new());
    g.bench_function("kafka_read/raw", |b| {
        // Reading every header of a record through rdkafka's API, as herald's capture does.
        b.iter(|| {
            let h = black_box(&kh);
            let mut n = 0usize;
            for i in 0..h.count() {
                let x = h.get(i);
                n += x.key.len() + x.value.map_or(0, <[u8]>::len);
            }
            black_box(n)
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Envelope.

fn bench_envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));
    let ev = order();
    g.bench_function("json_to_message/herald", |b| {
        b.iter(|| {
            black_box(
                JsonCodec
                    .to_message(black_box(&ev))
                    .now_or_never()
                    .expect("ready")
                    .expect("encodes"),
            )
        })
    });
    g.bench_function("json_to_vec/raw", |b| {
        b.iter(|| black_box(serde_json::to_vec(black_box(&ev)).expect("encodes")))
    });
    g.bench_function("message_new/herald", |b| {
        let payload = Bytes::from(vec![0u8; 256]);
        b.iter(|| black_box(Message::new(payload.clone()).with_key("k1")))
    });
    // The id alone: herald's `new_id` (`Uuid::now_v7().to_string()`: uuid without its
    // `fast-rng` feature asks the kernel for random bytes — one getrandom syscall per
    // id) against a UUIDv7 from a thread-local RNG written without `fmt`.
    g.bench_function("new_id/herald", |b| {
        b.iter(|| black_box(herald_core::message::new_id()))
    });
    g.bench_function("new_id/thread_rng", |b| {
        b.iter(|| {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let id = uuid::Builder::from_unix_timestamp_millis(ms, &rand::random()).into_uuid();
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            black_box(String::from(id.hyphenated().encode_lower(&mut buf)))
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Avro.

struct Avro {
    schema: Schema,
    parsed: Arc<ParsedSchema>,
    codec: AvroCodec,
    bound: BoundSchema,
    frame: Bytes,
    datum: Vec<u8>,
}

fn avro() -> Avro {
    let dir = std::env::temp_dir().join(format!("herald-bench-avro-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("orders-value")).expect("temp dir");
    std::fs::write(dir.join("orders-value/v1.avsc"), SCHEMA).expect("schema file");
    let registry = Arc::new(DirectoryRegistry::open(&dir).expect("registry"));
    let parsed = Arc::new(ParsedSchema::parse(SCHEMA).expect("schema"));
    let codec = AvroCodec::new(registry)
        .auto_register(false)
        .with_event::<OrderCreated>("orders", parsed.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let bound = rt
        .block_on(codec.bind("orders", parsed.clone()))
        .expect("bind");
    let frame = rt
        .block_on(Codec::encode(&codec, &order()))
        .expect("encode");
    let _ = std::fs::remove_dir_all(&dir);
    let schema = Schema::parse_str(SCHEMA).expect("schema");
    let datum = frame[5..].to_vec();
    Avro {
        schema,
        parsed,
        codec,
        bound,
        frame,
        datum,
    }
}

#[allow(deprecated)] // to_avro_datum / from_avro_datum: the calls the targets name.
fn bench_avro(c: &mut Criterion) {
    let a = avro();
    let ev = order();
    let mut g = c.benchmark_group("avro");
    g.throughput(Throughput::Elements(1));

    // Encode.
    g.bench_function("encode/herald_codec", |b| {
        b.iter(|| {
            black_box(
                Codec::encode(&a.codec, black_box(&ev))
                    .now_or_never()
                    .expect("ready once bound")
                    .expect("encodes"),
            )
        })
    });
    g.bench_function("encode/herald_bound", |b| {
        b.iter(|| black_box(a.bound.encode(black_box(&ev)).expect("encodes")))
    });
    g.bench_function("encode/raw_to_avro_datum", |b| {
        b.iter(|| {
            let v = apache_avro::to_value(black_box(&ev)).expect("to value");
            black_box(apache_avro::to_avro_datum(&a.schema, v).expect("encodes"))
        })
    });
    let writer = GenericDatumWriter::builder(&a.schema)
        .build()
        .expect("writer");
    g.bench_function("encode/raw_write_ser_prebuilt", |b| {
        b.iter(|| black_box(writer.write_ser_to_vec(black_box(&ev)).expect("encodes")))
    });

    // Decode.
    g.bench_function("decode/herald_codec", |b| {
        b.iter(|| {
            let v: OrderCreated = Codec::decode(&a.codec, black_box(&a.frame))
                .now_or_never()
                .expect("ready once cached")
                .expect("decodes");
            black_box(v)
        })
    });
    g.bench_function("decode/herald_decode_with", |b| {
        b.iter(|| {
            let v: OrderCreated = a
                .codec
                .decode_with(&a.parsed, black_box(&a.frame))
                .now_or_never()
                .expect("ready once cached")
                .expect("decodes");
            black_box(v)
        })
    });
    g.bench_function("decode/raw_from_avro_datum", |b| {
        b.iter(|| {
            let mut r = black_box(&a.datum[..]);
            let v = apache_avro::from_avro_datum(&a.schema, &mut r, None).expect("decodes");
            let o: OrderCreated = apache_avro::from_value(&v).expect("deserializes");
            black_box(o)
        })
    });
    let reader = GenericDatumReader::builder(&a.schema)
        .build()
        .expect("reader");
    g.bench_function("decode/raw_read_deser_prebuilt", |b| {
        b.iter(|| {
            let mut r = black_box(&a.datum[..]);
            let o: OrderCreated = reader.read_deser(&mut r).expect("decodes");
            black_box(o)
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Dedupe.

fn bench_dedupe(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = MemoryDedupe::default();
    let lease = Duration::from_secs(30);
    let mut g = c.benchmark_group("dedupe");
    g.throughput(Throughput::Elements(1));
    let n = AtomicUsize::new(0);
    g.bench_function("memory_claim_complete", |b| {
        b.to_async(&rt).iter(|| async {
            let key = format!("g:{}", n.fetch_add(1, Ordering::Relaxed));
            let Claim::New(token) = store.begin(&key, lease).await.expect("claim") else {
                panic!("fresh key claimed twice")
            };
            store.complete(&token).await.expect("complete");
        })
    });
    rt.block_on(async {
        if let Claim::New(t) = store.begin("g:done", lease).await.expect("claim") {
            store.complete(&t).await.expect("complete");
        }
    });
    g.bench_function("memory_duplicate", |b| {
        b.to_async(&rt).iter(|| async {
            let c = store
                .begin(black_box("g:done"), lease)
                .await
                .expect("claim");
            assert_eq!(c, Claim::Duplicate);
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Memory transport.

const BATCH: usize = 1_000;

fn payload() -> Bytes {
    Bytes::from(vec![7u8; 256])
}

async fn publish_all(broker: &MemoryBroker, topic: &str, n: u64) {
    let payload = payload();
    let mut left = n as usize;
    let mut i = 0usize;
    while left > 0 {
        let k = left.min(BATCH);
        let batch = (0..k)
            .map(|j| Message::new(payload.clone()).with_key(format!("k{}", (i + j) % 64)))
            .collect();
        broker.publish(topic, batch).await.expect("publish");
        left -= k;
        i += k;
    }
}

fn bench_memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("memory");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));

    g.bench_function("publish_subscribe_ack", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let broker = MemoryBroker::with_config(MemoryConfig::default());
                let mut sub = broker
                    .subscribe(SubscribeSpec::new("t", "g"))
                    .await
                    .expect("subscribe");
                let start = Instant::now();
                let p = broker.clone();
                let publisher = tokio::spawn(async move { publish_all(&p, "t", iters).await });
                for _ in 0..iters {
                    let d = sub.next().await.expect("delivery").expect("ok");
                    black_box(d.message.payload.len());
                    d.ack().await.expect("ack");
                }
                let t = start.elapsed();
                publisher.await.expect("publisher");
                t
            })
        })
    });

    g.bench_function("router_dispatch", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let broker = MemoryBroker::with_config(MemoryConfig::default());
                let seen = Arc::new(AtomicUsize::new(0));
                let done = Arc::new(tokio::sync::Notify::new());
                let (s2, d2) = (seen.clone(), done.clone());
                let target = iters as usize;
                let router = Router::new().route_with(
                    RouteConfig::new("bench", "t", "g"),
                    handler_fn(move |i: Inbound| {
                        let (s, d) = (s2.clone(), d2.clone());
                        async move {
                            black_box(i.message.payload.len());
                            if s.fetch_add(1, Ordering::Relaxed) + 1 == target {
                                d.notify_one();
                            }
                            Ok(())
                        }
                    }),
                );
                let running = router.start(broker.clone());
                let start = Instant::now();
                publish_all(&broker, "t", iters).await;
                done.notified().await;
                let t = start.elapsed();
                running.shutdown().await.expect("shutdown");
                t
            })
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_headers,
    bench_envelope,
    bench_avro,
    bench_dedupe,
    bench_memory
);
criterion_main!(benches);
