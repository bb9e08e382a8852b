//! Bad input on the memory broker, Kafka (Tansu) and NATS JetStream: every case ends in a
//! typed error or a dead-letter entry with a reason — never a panic, never a hang — and a
//! good message on the same route is handled afterwards (the consumer is not stuck).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use herald_avro::{AvroCodec, DirectoryRegistry, ParsedSchema, wire};
use herald_chaos::{Collector, within};
use herald_core::{
    Codec, Event, Inbound, JsonCodec, Message, PublishErrorKind, Publisher, Router, Running,
    SubscribeErrorKind, SubscribeSpec, Subscriber, dlq_topic, memory::MemoryBroker,
    middleware::DeadLetterLayer, typed,
};
use herald_kafka::{KafkaAdmin, KafkaConfig, KafkaPublisher, KafkaSubscriber};
use herald_nats::{NatsBroker, NatsConfig};
use herald_testkit::{fixtures, unique};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::sync::mpsc;
use tower::Layer;

/// How long any single step may take before the test calls it a hang.
const STEP: Duration = Duration::from_secs(60);

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
struct Ping {
    n: i64,
    note: String,
}

impl Event for Ping {
    const TYPE: &'static str = "Ping";
    const VERSION: u32 = 1;
}

const PING_AVSC: &str = r#"{"type":"record","name":"Ping","fields":[{"name":"n","type":"long"},{"name":"note","type":"string"}]}"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Memory,
    Kafka,
    Nats,
}

struct Rig {
    transport: Transport,
    publisher: Arc<dyn Publisher>,
    subscriber: Arc<dyn Subscriber>,
    kafka: Option<KafkaConfig>,
    nats: Option<NatsBroker>,
}

impl Rig {
    async fn new(transport: Transport) -> Self {
        match transport {
            Transport::Memory => {
                let b = MemoryBroker::new();
                Self {
                    transport,
                    publisher: Arc::new(b.clone()),
                    subscriber: Arc::new(b),
                    kafka: None,
                    nats: None,
                }
            }
            Transport::Kafka => {
                let config = KafkaConfig::new(fixtures::kafka_brokers().await);
                let publisher = KafkaPublisher::from_config(config.clone())
                    .build()
                    .expect("kafka publisher");
                let subscriber = KafkaSubscriber::from_config(config.clone())
                    .build()
                    .expect("kafka subscriber");
                Self {
                    transport,
                    publisher: Arc::new(publisher),
                    subscriber: Arc::new(subscriber),
                    kafka: Some(config),
                    nats: None,
                }
            }
            Transport::Nats => {
                let url = fixtures::nats_url().await;
                let b = NatsBroker::connect(NatsConfig::new(&url))
                    .await
                    .expect("nats connect");
                Self {
                    transport,
                    publisher: Arc::new(b.clone()),
                    subscriber: Arc::new(b.clone()),
                    kafka: None,
                    nats: Some(b),
                }
            }
        }
    }

    /// A fresh topic with its dead-letter topic provisioned.
    async fn topic(&self, prefix: &str) -> String {
        let topic = unique(prefix);
        if let Some(cfg) = &self.kafka {
            let admin = KafkaAdmin::new(cfg).expect("kafka admin");
            within("ensure kafka topic", STEP, admin.ensure_topic(&topic, 1, 1))
                .await
                .expect("ensure_topic hung")
                .expect("ensure_topic");
        }
        if let Some(b) = &self.nats {
            within("ensure nats topic", STEP, b.ensure_topic(&topic))
                .await
                .expect("ensure_topic hung")
                .expect("ensure_topic");
        }
        topic
    }

    async fn publish(&self, topic: &str, m: Message) -> Result<(), herald_core::PublishError> {
        within(
            format!("{:?} publish", self.transport),
            STEP,
            self.publisher.publish(topic, vec![m]),
        )
        .await
        .unwrap_or_else(|h| panic!("{h}"))
    }
}

/// A typed route (JSON or Avro) behind the dead-letter layer, plus a reader of its DLQ.
struct Route {
    topic: String,
    running: Option<Running>,
    handled: mpsc::UnboundedReceiver<Arc<Message>>,
    dlq: Collector,
    next: i64,
}

impl Route {
    async fn wait_handled(&mut self, id: &str) -> Arc<Message> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            match tokio::time::timeout_at(deadline, self.handled.recv()).await {
                Ok(Some(m)) if m.id == id => return m,
                Ok(Some(_)) => {}
                Ok(None) => panic!("handler channel closed while waiting for {id}"),
                Err(_) => panic!("message {id} on {} not handled within {STEP:?}", self.topic),
            }
        }
    }

    async fn wait_dead_lettered(&mut self, id: &str) -> Message {
        let id = id.to_owned();
        self.dlq
            .wait_for(STEP, |m| m.id == id)
            .await
            .unwrap_or_else(|h| panic!("{h}"))
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            within("router shutdown", STEP, r.shutdown())
                .await
                .expect("router shutdown hung")
                .expect("router shutdown");
        }
    }
}

async fn json_route(rig: &Rig) -> Route {
    let topic = rig.topic("chaos-json").await;
    let (tx, handled) = mpsc::unbounded_channel();
    let handler = typed(JsonCodec, move |_p: Ping, inbound: Inbound| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(inbound.message.clone());
            Ok(())
        }
    });
    start_route(rig, topic, handled, handler).await
}

async fn start_route<H>(
    rig: &Rig,
    topic: String,
    handled: mpsc::UnboundedReceiver<Arc<Message>>,
    handler: H,
) -> Route
where
    H: tower::Service<Inbound, Response = (), Error = herald_core::HandlerError>
        + Clone
        + Send
        + Sync
        + 'static,
    H::Future: Send + 'static,
{
    let svc = DeadLetterLayer::new(rig.publisher.clone()).layer(handler);
    let group = unique("g");
    let running = Router::new()
        .route("ledger", &topic, &group, svc)
        .start(rig.subscriber.clone());
    let dlq = within(
        "subscribe to the DLQ",
        STEP,
        Collector::start(
            rig.subscriber.as_ref(),
            SubscribeSpec::new(dlq_topic(&topic), unique("ops")),
        ),
    )
    .await
    .expect("dlq subscribe hung")
    .expect("dlq subscribe");
    Route {
        topic,
        running: Some(running),
        handled,
        dlq,
        next: 0,
    }
}

/// Publishes a good JSON ping and waits until the handler saw it.
async fn good_json(rig: &Rig, route: &mut Route) -> Arc<Message> {
    route.next += 1;
    let m = JsonCodec
        .to_message(&Ping {
            n: route.next,
            note: "good".into(),
        })
        .await
        .expect("encode");
    good(rig, route, m).await
}

async fn good(rig: &Rig, route: &mut Route, m: Message) -> Arc<Message> {
    let id = m.id.clone();
    let topic = route.topic.clone();
    rig.publish(&topic, m).await.expect("good publish");
    route.wait_handled(&id).await
}

/// Publishes `bad`, expects it dead-lettered with a permanent error whose reason starts
/// with `reason`, then proves the route still handles a good message.
async fn bad_payload(rig: &Rig, route: &mut Route, bad: Message, reason: &str) {
    let id = bad.id.clone();
    let topic = route.topic.clone();
    rig.publish(&topic, bad).await.expect("bad payload publish");
    let parked = route.wait_dead_lettered(&id).await;
    let err = parked.header("herald-error").unwrap_or_default().to_owned();
    assert!(
        err.starts_with(reason),
        "{:?}: DLQ reason {err:?} does not start with {reason:?}",
        rig.transport
    );
    assert_eq!(parked.header("herald-error-class"), Some("permanent"));
    assert_eq!(parked.header("herald-original-topic"), Some(topic.as_str()));
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    // Neither a JSON value nor a Confluent frame can start with 0xff.
    v[0] = 0xff;
    v
}

async fn json_bad_payloads(transport: Transport) {
    let rig = Rig::new(transport).await;
    let mut route = json_route(&rig).await;
    good_json(&rig, &mut route).await;
    for (i, len) in [1usize, 17, 4096].into_iter().enumerate() {
        let bad = Message::new(random_bytes(i as u64, len)).with_content_type("application/json");
        bad_payload(&rig, &mut route, bad, "malformed payload").await;
        good_json(&rig, &mut route).await;
    }
    // Well-formed JSON of the wrong shape.
    bad_payload(
        &rig,
        &mut route,
        Message::new(r#"{"n":"x"}"#),
        "schema mismatch",
    )
    .await;
    good_json(&rig, &mut route).await;
    // An empty payload.
    bad_payload(
        &rig,
        &mut route,
        Message::new(Bytes::new()),
        "malformed payload",
    )
    .await;
    good_json(&rig, &mut route).await;
    route.stop().await;
}

async fn avro_bad_payloads(transport: Transport) {
    let rig = Rig::new(transport).await;
    let topic = rig.topic("chaos-avro").await;
    let dir = std::env::temp_dir().join(unique("herald-chaos-avro"));
    std::fs::create_dir_all(dir.join(format!("{topic}-value"))).expect("mkdir");
    std::fs::write(dir.join(format!("{topic}-value/v1.avsc")), PING_AVSC).expect("write avsc");
    let registry = Arc::new(DirectoryRegistry::open(&dir).expect("registry"));
    let schema = Arc::new(ParsedSchema::parse(PING_AVSC).expect("schema"));
    let codec = AvroCodec::new(registry)
        .auto_register(false)
        .with_event::<Ping>(topic.clone(), schema.clone());
    let bound = codec.bind(&topic, schema).await.expect("bind");

    let (tx, handled) = mpsc::unbounded_channel();
    let handler = typed(codec, move |_p: Ping, inbound: Inbound| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(inbound.message.clone());
            Ok(())
        }
    });
    let mut route = start_route(&rig, topic, handled, handler).await;

    let good_frame = |n: i64| {
        let f = bound
            .encode(&Ping {
                n,
                note: "good avro".into(),
            })
            .expect("encode");
        Message::new(f).with_content_type("application/avro")
    };
    good(&rig, &mut route, good_frame(1)).await;

    // Random bytes.
    bad_payload(
        &rig,
        &mut route,
        Message::new(random_bytes(7, 64)),
        "malformed payload",
    )
    .await;
    good(&rig, &mut route, good_frame(2)).await;

    // A frame cut inside its 5-byte header.
    let frame = bound
        .encode(&Ping {
            n: 3,
            note: "truncated".repeat(4),
        })
        .expect("encode");
    bad_payload(
        &rig,
        &mut route,
        Message::new(frame[..3].to_vec()),
        "malformed payload",
    )
    .await;
    good(&rig, &mut route, good_frame(3)).await;

    // A frame cut inside its datum.
    bad_payload(
        &rig,
        &mut route,
        Message::new(frame[..frame.len() - 10].to_vec()),
        "schema mismatch",
    )
    .await;
    good(&rig, &mut route, good_frame(4)).await;

    // A schema id the registry does not know.
    let (_, datum) = wire::split(&frame).expect("split");
    bad_payload(
        &rig,
        &mut route,
        Message::new(wire::frame(0x7fff_fff0, datum)),
        "unknown schema",
    )
    .await;
    good(&rig, &mut route, good_frame(5)).await;
    route.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Header, topic and key edge cases on publish.
async fn publish_edges(transport: Transport) {
    let rig = Rig::new(transport).await;
    let mut route = json_route(&rig).await;
    good_json(&rig, &mut route).await;
    let ping = |note: &str| Ping {
        n: 0,
        note: note.into(),
    };

    // Header values that are not UTF-8 arrive byte for byte.
    let raw: &[u8] = &[0xff, 0x00, 0xfe, b'=', b'?', 0x80];
    let m = JsonCodec
        .to_message(&ping("binary header"))
        .await
        .expect("encode")
        .with_header("x-binary", Bytes::from_static(raw))
        .with_header("x-latin1", Bytes::from_static(b"caf\xe9"));
    let got = good(&rig, &mut route, m).await;
    assert_eq!(got.headers.get("x-binary").map(|b| &b[..]), Some(raw));
    assert_eq!(
        got.headers.get("x-latin1").map(|b| &b[..]),
        Some(&b"caf\xe9"[..])
    );
    good_json(&rig, &mut route).await;

    // A 64 KiB header value.
    let big = "h".repeat(64 * 1024);
    let m = JsonCodec
        .to_message(&ping("big header"))
        .await
        .expect("encode")
        .with_header("x-big", big.clone());
    let id = m.id.clone();
    let outcome = rig.publish(&route.topic, m).await;
    eprintln!("{transport:?}: 64 KiB header publish -> {outcome:?}");
    match (transport, outcome) {
        // NATS caps all headers of a message at 64 KiB (server error 10097).
        (Transport::Nats, Err(e)) => {
            assert_eq!(e.kind(), PublishErrorKind::MessageTooLarge, "{e:?}")
        }
        (Transport::Nats, Ok(())) => panic!("NATS accepted a 64 KiB header"),
        // Kafka only bounds the whole record (message.max.bytes, 1 MB): it travels intact.
        (_, Ok(())) => {
            let got = route.wait_handled(&id).await;
            assert_eq!(got.header("x-big").map(str::len), Some(big.len()));
        }
        (_, Err(e)) => panic!("{transport:?} rejected a 64 KiB header: {e:?}"),
    }
    good_json(&rig, &mut route).await;

    // A 1 MiB key.
    let key = Bytes::from(vec![b'k'; 1024 * 1024]);
    let m = JsonCodec
        .to_message(&ping("big key"))
        .await
        .expect("encode")
        .with_key(key.clone());
    let id = m.id.clone();
    let outcome = rig.publish(&route.topic, m).await;
    eprintln!("{transport:?}: 1 MiB key publish -> {outcome:?}");
    match (transport, outcome) {
        (Transport::Memory, Ok(())) => {
            let got = route.wait_handled(&id).await;
            assert_eq!(got.key.as_ref(), Some(&key));
        }
        (Transport::Memory, Err(e)) => panic!("memory rejected a 1 MiB key: {e}"),
        (_, Ok(())) => panic!("{transport:?} accepted a 1 MiB key past its 1 MiB message limit"),
        (_, Err(e)) => assert_eq!(
            e.kind(),
            PublishErrorKind::MessageTooLarge,
            "1 MiB key: {e:?}"
        ),
    }
    good_json(&rig, &mut route).await;

    // An empty topic name: publish and subscribe fail with a typed error.
    let outcome = rig
        .publish(
            "",
            JsonCodec
                .to_message(&ping("nowhere"))
                .await
                .expect("encode"),
        )
        .await;
    eprintln!("{transport:?}: publish to \"\" -> {outcome:?}");
    let e = outcome.expect_err("publishing to an empty topic must fail");
    assert_eq!(e.kind(), PublishErrorKind::InvalidMessage, "{e:?}");

    let outcome = within(
        format!("{transport:?} subscribe to \"\""),
        STEP,
        rig.subscriber
            .subscribe(SubscribeSpec::new("", unique("g"))),
    )
    .await
    .unwrap_or_else(|h| panic!("{h}"));
    let e = outcome.expect_err("subscribing to an empty topic must fail");
    eprintln!("{transport:?}: subscribe to \"\" -> {e:?}");
    assert_eq!(e.kind(), SubscribeErrorKind::InvalidConfig, "{e:?}");
    good_json(&rig, &mut route).await;
    route.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_json_bad_payloads_are_dead_lettered() {
    json_bad_payloads(Transport::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_json_bad_payloads_are_dead_lettered() {
    json_bad_payloads(Transport::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_json_bad_payloads_are_dead_lettered() {
    json_bad_payloads(Transport::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_avro_bad_frames_are_dead_lettered() {
    avro_bad_payloads(Transport::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_avro_bad_frames_are_dead_lettered() {
    avro_bad_payloads(Transport::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_avro_bad_frames_are_dead_lettered() {
    avro_bad_payloads(Transport::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_publish_edges_are_typed() {
    publish_edges(Transport::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_publish_edges_are_typed() {
    publish_edges(Transport::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_publish_edges_are_typed() {
    publish_edges(Transport::Nats).await;
}

/// Header values with CR/LF — including in `herald-failed-at`, which the NATS adapter
/// folds into its duplicate-window id — are carried byte for byte or refused with a
/// typed error, never a panic.
async fn newline_headers(transport: Transport) {
    let rig = Rig::new(transport).await;
    let mut route = json_route(&rig).await;
    let m = JsonCodec
        .to_message(&Ping {
            n: 0,
            note: "crlf".into(),
        })
        .await
        .expect("encode")
        .with_header("x-crlf", "a\r\nb")
        .with_header("herald-failed-at", "2026-11-27T13:00:00Z\r\nx: y");
    let id = m.id.clone();
    let topic = route.topic.clone();
    let publish = tokio::spawn({
        let publisher = rig.publisher.clone();
        async move { publisher.publish(&topic, vec![m]).await }
    });
    let outcome = within("publish with CR/LF headers", STEP, publish)
        .await
        .expect("publish hung")
        .unwrap_or_else(|e| panic!("{transport:?}: publish panicked: {e}"));
    match outcome {
        Ok(()) => {
            let got = route.wait_handled(&id).await;
            assert_eq!(got.header("x-crlf"), Some("a\r\nb"));
        }
        Err(e) => assert_eq!(e.kind(), PublishErrorKind::InvalidMessage, "{e:?}"),
    }
    good_json(&rig, &mut route).await;
    route.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_newline_headers_are_safe() {
    newline_headers(Transport::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_newline_headers_are_safe() {
    newline_headers(Transport::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_newline_headers_are_safe() {
    newline_headers(Transport::Nats).await;
}
