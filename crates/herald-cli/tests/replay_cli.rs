//! `herald dlq` as a process against the real brokers: list and inspect never consume,
//! `replay --dry-run` moves nothing, filters keep what they do not select, and a replay
//! killed midway (SIGKILL) and run again loses nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::Arc,
    time::Duration,
};

use herald_core::{Message, Publisher, message::now_rfc3339};
use herald_kafka::{KafkaAdmin, KafkaConfig, KafkaPublisher};
use herald_nats::{NatsBroker, NatsConfig, mapping};
use herald_testkit::{fixtures, unique};
use serde_json::Value as Json;

#[allow(dead_code, unreachable_pub)]
#[path = "../src/dlq/kafka_read.rs"]
mod kafka_read;

/// The transport flags of one broker.
#[derive(Clone)]
enum Conn {
    Kafka(String),
    Nats(String),
}

impl Conn {
    fn args(&self) -> Vec<String> {
        match self {
            Conn::Kafka(b) => vec![
                "--transport".into(),
                "kafka".into(),
                "--brokers".into(),
                b.clone(),
            ],
            Conn::Nats(u) => vec![
                "--transport".into(),
                "nats".into(),
                "--url".into(),
                u.clone(),
            ],
        }
    }
}

fn herald(cmd: &str, conn: &Conn, topic: &str, extra: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.args(["dlq", cmd])
        .args(conn.args())
        .arg(topic)
        .args(extra);
    c.env_remove("HERALD_TRANSPORT");
    c.output().expect("run herald")
}

fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "herald failed ({:?})\nstdout:\n{out}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn json(o: &Output) -> Json {
    serde_json::from_str(&ok(o)).expect("JSON output")
}

fn list(conn: &Conn, dlq: &str) -> Json {
    json(&herald("list", conn, dlq, &["--format", "json"]))
}

fn total(conn: &Conn, dlq: &str) -> u64 {
    list(conn, dlq)["total"].as_u64().expect("total")
}

/// A dead-lettered message as the dead-letter layer writes it.
fn dead(i: usize, target: &str, error: &str) -> Message {
    Message::new(format!(r#"{{"n":{i}}}"#))
        .with_key(format!("k{}", i % 3))
        .with_content_type("application/json")
        .with_header("herald-error", error.to_owned())
        .with_header("herald-error-class", "transient")
        .with_header("herald-attempts", "3")
        .with_header("herald-original-topic", target.to_owned())
        .with_header("herald-original-partition", "0")
        .with_header("herald-original-offset", i.to_string())
        .with_header("herald-handler", "billing")
        .with_header("herald-group", "billing")
        .with_header("herald-failed-at", now_rfc3339())
}

/// The ids in `target` (every copy), read without consuming.
async fn target_ids(conn: &Conn, target: &str) -> Vec<String> {
    match conn {
        Conn::Kafka(brokers) => {
            let (b, t) = (brokers.clone(), target.to_owned());
            let group = unique("reader");
            tokio::task::spawn_blocking(move || kafka_read::read_pending(&b, &group, &t))
                .await
                .unwrap()
                .expect("read the target")
                .records
                .into_iter()
                .map(|r| r.message.id)
                .collect()
        }
        Conn::Nats(url) => {
            let broker = NatsBroker::connect(NatsConfig::new(url))
                .await
                .expect("connect");
            let name = mapping::stream_name(target);
            let mut stream = broker.jetstream().get_stream(&name).await.expect("stream");
            let state = stream.info().await.expect("info").state.clone();
            let mut ids = Vec::new();
            if state.messages == 0 {
                return ids;
            }
            for seq in state.first_sequence..=state.last_sequence {
                if let Ok(m) = stream.get_raw_message(seq).await {
                    let msg = mapping::inbound(
                        m.subject.as_str(),
                        Some(&m.headers),
                        m.payload.clone(),
                        &name,
                        seq,
                    );
                    ids.push(msg.id);
                }
            }
            ids
        }
    }
}

/// Creates `topic` and `topic.dlq`; returns a publisher.
async fn provision(conn: &Conn, topic: &str) -> Arc<dyn Publisher> {
    match conn {
        Conn::Kafka(brokers) => {
            KafkaAdmin::new(&KafkaConfig::new(brokers.clone()))
                .expect("admin")
                .ensure_topic(topic, 2, 1)
                .await
                .expect("topics");
            Arc::new(
                KafkaPublisher::builder(brokers.clone())
                    .linger(Duration::from_millis(1))
                    .build()
                    .expect("publisher"),
            )
        }
        Conn::Nats(url) => {
            let broker = NatsBroker::connect(NatsConfig::new(url))
                .await
                .expect("connect");
            broker.ensure_topic(topic).await.expect("streams");
            Arc::new(broker)
        }
    }
}

/// Lines of entries moved (or that would move): `<verb> <id> (<position>) -> <target>`.
fn moved_lines(out: &str, verb: &str) -> usize {
    out.lines()
        .filter(|l| l.starts_with(verb) && l.contains(" -> "))
        .count()
}

async fn replay_scenario(conn: Conn) {
    let target = unique("replay");
    let dlq = format!("{target}.dlq");
    let publisher = provision(&conn, &target).await;
    let entries: Vec<Message> = (0..20)
        .map(|i| dead(i, &target, if i % 2 == 0 { "boom A" } else { "boom B" }))
        .collect();
    let all: BTreeSet<String> = entries.iter().map(|m| m.id.clone()).collect();
    let a_ids: BTreeSet<String> = entries.iter().step_by(2).map(|m| m.id.clone()).collect();
    publisher
        .publish(&dlq, entries.clone())
        .await
        .expect("publish to the DLQ");

    // list: counts by error, twice — reading does not consume.
    for _ in 0..2 {
        let l = list(&conn, &target); // `<topic>` means `<topic>.dlq`
        assert_eq!(l["total"], 20, "{l}");
        let counts: BTreeMap<&str, u64> = l["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| (g["error"].as_str().unwrap(), g["count"].as_u64().unwrap()))
            .collect();
        assert_eq!(counts, BTreeMap::from([("boom A", 10), ("boom B", 10)]));
        assert_eq!(l["groups"][0]["handler"], "billing");
        assert_eq!(l["groups"][0]["original_topic"], target.as_str());
        assert!(l["oldest_failed_at"].is_string());
    }
    let text = ok(&herald("list", &conn, &dlq, &[]));
    assert!(
        text.contains("20 entries") && text.contains("boom B"),
        "{text}"
    );

    // inspect one entry.
    let one = &entries[3];
    let doc = json(&herald(
        "inspect",
        &conn,
        &dlq,
        &["--id", &one.id, "--format", "json"],
    ));
    let e = &doc["entries"][0];
    assert_eq!(doc["entries"].as_array().unwrap().len(), 1);
    assert_eq!(e["id"], one.id.as_str());
    assert_eq!(e["attempts"], 3);
    assert_eq!(e["error"], "boom B");
    assert_eq!(e["original_topic"], target.as_str());
    assert_eq!(e["original_position"]["offset"], 3);
    assert_eq!(e["payload_encoding"], "json");
    assert_eq!(e["payload"]["n"], 3);

    // --dry-run moves nothing.
    let out = ok(&herald("replay", &conn, &dlq, &["--dry-run"]));
    assert_eq!(moved_lines(&out, "would move"), 20, "{out}");
    assert_eq!(total(&conn, &dlq), 20);
    assert!(target_ids(&conn, &target).await.is_empty());

    // Filters that select nothing move nothing.
    let out = ok(&herald(
        "replay",
        &conn,
        &dlq,
        &["--since", "2099-01-01T00:00:00Z"],
    ));
    assert!(out.contains("moved 0 of 20"), "{out}");

    // A filtered replay moves what it selects and keeps the rest. On Kafka the A entries
    // are interleaved with kept B entries: the committed offset cannot pass a kept entry,
    // so the ones moved beyond it are recorded in the commit's metadata — or, on a broker
    // that drops that metadata (Tansu), only each partition's leading A entries move.
    let o = herald("replay", &conn, &dlq, &["--error-contains", "boom A"]);
    let out = ok(&o);
    let prefix_only =
        String::from_utf8_lossy(&o.stderr).contains("does not keep offset-commit metadata");
    let moved: BTreeSet<String> = out
        .lines()
        .filter(|l| l.starts_with("moved ") && l.contains(" -> "))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    assert!(
        moved.is_subset(&a_ids),
        "moved an entry the filter did not select: {out}"
    );
    if prefix_only {
        assert!(matches!(conn, Conn::Kafka(_)));
        assert!(!moved.is_empty() && moved.len() < 10, "{out}");
    } else {
        assert_eq!(moved, a_ids, "{out}");
    }
    println!(
        "replay: filtered replay moved {} of 10 selected entries{}",
        moved.len(),
        if prefix_only {
            " (broker drops offset-commit metadata: prefix only)"
        } else {
            ""
        }
    );
    let l = list(&conn, &dlq);
    let remaining = 20 - moved.len() as u64;
    assert_eq!(l["total"], remaining, "{l}");
    let counts: BTreeMap<&str, u64> = l["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["error"].as_str().unwrap(), g["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        counts.get("boom B"),
        Some(&10),
        "a kept entry was lost: {l}"
    );
    let there: BTreeSet<String> = target_ids(&conn, &target).await.into_iter().collect();
    assert_eq!(there, moved);

    // Interrupted: SIGKILL after three entries moved, then run again.
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["dlq", "replay"])
        .args(conn.args())
        .args([dlq.as_str(), "--rate", "4/s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn replay");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = 0;
    while seen < 3 {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("moved ") && l.contains(" -> ") => seen += 1,
            Some(Ok(_)) => {}
            other => panic!("replay ended before three entries moved: {other:?}"),
        }
    }
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the replay finished before it was killed"
    );
    let left = total(&conn, &dlq);
    assert!(
        left <= remaining - 3,
        "{left} left of {remaining} after three moved"
    );
    assert!(left > 0, "the replay was not interrupted midway");

    let out = ok(&herald("replay", &conn, &dlq, &[]));
    assert_eq!(moved_lines(&out, "moved "), left as usize, "{out}");
    assert_eq!(total(&conn, &dlq), 0);
    let copies = target_ids(&conn, &target).await;
    let there: BTreeSet<String> = copies.iter().cloned().collect();
    assert_eq!(there, all, "every entry reached the target");
    let dups = copies.len() - there.len();
    assert!(
        dups <= 1,
        "{dups} duplicates (at most the entry in flight at the kill)"
    );
    println!("replay: {dups} duplicate(s) after the interrupted run");

    // Replaying an empty DLQ is a no-op.
    let out = ok(&herald("replay", &conn, &dlq, &[]));
    assert!(out.contains("moved 0 of 0"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_kafka_dry_run_filters_and_interrupted_run_lose_nothing() {
    replay_scenario(Conn::Kafka(fixtures::kafka_brokers().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_nats_dry_run_filters_and_interrupted_run_lose_nothing() {
    replay_scenario(Conn::Nats(fixtures::nats_url().await)).await;
}

#[derive(serde::Serialize)]
struct Created {
    order_id: String,
    total: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_inspect_decodes_json_avro_and_hex_and_errors_are_typed() {
    let url = fixtures::nats_url().await;
    let conn = Conn::Nats(url.clone());
    let topic = unique("inspect");
    let dlq = format!("{topic}.dlq");
    let publisher = provision(&conn, &topic).await;

    // An Avro payload in the Confluent wire format, from a schema directory.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("schemas"));
    let subject = dir.join(format!("{topic}-value"));
    std::fs::create_dir_all(&subject).unwrap();
    let schema = r#"{"type":"record","name":"OrderCreated","namespace":"t","fields":[
        {"name":"order_id","type":"string"},{"name":"total","type":"long"}]}"#;
    std::fs::write(subject.join("v1.avsc"), schema).unwrap();
    let registry = Arc::new(herald_avro::DirectoryRegistry::open(&dir).unwrap());
    let codec = herald_avro::AvroCodec::new(registry).auto_register(false);
    let bound = codec
        .bind(
            &topic,
            Arc::new(herald_avro::ParsedSchema::parse(schema).unwrap()),
        )
        .await
        .unwrap();
    let avro = bound
        .encode(&Created {
            order_id: "o-7".into(),
            total: 4200,
        })
        .unwrap();
    let msgs = vec![
        Message::new(avro).with_header("herald-error", "avro"),
        Message::new(vec![0xde, 0xad, 0xbe, 0xef]).with_header("herald-error", "binary"),
        Message::new(r#"{"ok":true}"#).with_header("herald-error", "json"),
    ];
    publisher.publish(&dlq, msgs).await.unwrap();

    let schemas = dir.display().to_string();
    let doc = json(&herald(
        "inspect",
        &conn,
        &dlq,
        &["--format", "json", "--schemas", &schemas],
    ));
    let by_error = |e: &str| {
        doc["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["error"] == e)
            .cloned()
            .unwrap()
    };
    let a = by_error("avro");
    assert_eq!(a["payload_encoding"], "avro", "{a}");
    assert_eq!(a["payload"]["order_id"], "o-7");
    assert_eq!(a["payload"]["total"], 4200);
    let b = by_error("binary");
    assert_eq!(
        (b["payload_encoding"].as_str(), b["payload"].as_str()),
        (Some("hex"), Some("deadbeef"))
    );
    assert_eq!(by_error("json")["payload"]["ok"], true);
    // Without --schemas the Avro frame is hex; text output names the encodings.
    let doc = json(&herald(
        "inspect",
        &conn,
        &dlq,
        &["--format", "json", "--limit", "1"],
    ));
    assert_eq!(doc["entries"].as_array().unwrap().len(), 1);
    assert_eq!(doc["entries"][0]["payload_encoding"], "hex");
    let text = ok(&herald("inspect", &conn, &dlq, &["--schemas", &schemas]));
    assert!(
        text.contains("payload (avro)") && text.contains("deadbeef"),
        "{text}"
    );

    // Bad input exits 2; a missing broker address too.
    let o = herald("list", &Conn::Nats(url.clone()), &unique("missing"), &[]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["dlq", "list", "--transport", "kafka", "x"])
        .env_remove("HERALD_KAFKA_BROKERS")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = herald("replay", &conn, &dlq, &["--rate", "fast"]);
    assert_eq!(o.status.code(), Some(2));
}
