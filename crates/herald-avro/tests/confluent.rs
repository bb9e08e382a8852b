//! The Confluent client against an in-test HTTP stub serving responses in the shapes of
//! Confluent's documented API.

use std::sync::{Arc, Mutex};

use herald_avro::{
    AvroCodec, CompatibilityMode, ConfluentRegistry, ErrorKind, ParsedSchema, SchemaRegistry,
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const V1: &str = r#"{"type":"record","name":"Paid","fields":[{"name":"id","type":"string"}]}"#;
const V2: &str = r#"{"type":"record","name":"Paid","fields":[{"name":"id","type":"string"},{"name":"amount","type":"long","default":0}]}"#;

type Log = Arc<Mutex<Vec<String>>>;

/// The recorded responses: (status, JSON body) for a method and path (query stripped).
fn respond(method: &str, path: &str) -> (u16, String) {
    let not_found = |code: u32, message: &str| {
        (
            404,
            json!({"error_code": code, "message": message}).to_string(),
        )
    };
    match (method, path) {
        ("GET", "/schemas/ids/1") => (200, json!({ "schema": V1 }).to_string()),
        ("GET", "/schemas/ids/2") => (200, json!({ "schema": V2 }).to_string()),
        ("GET", "/schemas/ids/503") => (503, json!({"error_code": 50003, "message": "Error while forwarding the request to the leader"}).to_string()),
        ("GET", p) if p.starts_with("/schemas/ids/") => not_found(40403, "Schema not found"),
        ("POST", "/subjects/payments.paid-value/versions") => (200, json!({ "id": 2 }).to_string()),
        ("POST", "/subjects/payments.paid-value") => (
            200,
            json!({"subject": "payments.paid-value", "id": 1, "version": 1, "schema": V1}).to_string(),
        ),
        ("POST", "/subjects/broken-value/versions") => (
            409,
            json!({"error_code": 409, "message": "Schema being registered is incompatible with an earlier schema for subject \"broken-value\""}).to_string(),
        ),
        ("GET", "/subjects/payments.paid-value/versions/latest") => (
            200,
            json!({"subject": "payments.paid-value", "id": 2, "version": 2, "schema": V2}).to_string(),
        ),
        ("GET", "/subjects/payments.paid-value/versions/1") => (
            200,
            json!({"subject": "payments.paid-value", "id": 1, "version": 1, "schema": V1}).to_string(),
        ),
        ("GET", "/subjects/payments.paid-value/versions") => (200, "[1,2]".into()),
        ("GET", "/config/payments.paid-value") => (200, json!({"compatibilityLevel": "FULL_TRANSITIVE"}).to_string()),
        ("GET", "/config/other-value") => not_found(40408, "Subject 'other-value' does not have subject-level compatibility configured"),
        ("GET", "/config") => (200, json!({"compatibilityLevel": "BACKWARD"}).to_string()),
        ("GET", p) if p.starts_with("/subjects/missing-value") => not_found(40401, "Subject 'missing-value' not found."),
        _ => not_found(404, "unrouted"),
    }
}

/// Serves `respond` on a random port, one request per connection; returns the base URL.
async fn stub(log: Log) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, len) = loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut parts = head.split_whitespace();
                let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let path = target.split('?').next().unwrap_or("");
                let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
                log.lock()
                    .expect("log")
                    .push(format!("{method} {target} {body}").trim_end().to_owned());
                let (status, body) = respond(method, path);
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

async fn registry() -> (ConfluentRegistry, Log) {
    let log = Log::default();
    let url = stub(log.clone()).await;
    (ConfluentRegistry::new(url).expect("client"), log)
}

#[tokio::test]
async fn reads() {
    let (r, log) = registry().await;
    let s = "payments.paid-value";
    assert_eq!(r.schema_by_id(1).await.expect("by id"), V1);
    let latest = r.latest(s).await.expect("latest");
    assert_eq!(
        (latest.id, latest.version, latest.schema.as_str()),
        (2, 2, V2)
    );
    assert_eq!(r.version(s, 1).await.expect("v1").id, 1);
    assert_eq!(r.versions(s).await.expect("versions"), vec![1, 2]);
    assert_eq!(
        r.compatibility(s).await.expect("config"),
        CompatibilityMode::FullTransitive
    );
    assert_eq!(
        r.compatibility("other-value").await.expect("global"),
        CompatibilityMode::Backward
    );
    let log = log.lock().expect("log").clone();
    assert!(
        log.iter().any(|l| l.starts_with("GET /schemas/ids/1")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l == "GET /config"),
        "fell back to the global config: {log:?}"
    );
}

#[tokio::test]
async fn writes() {
    let (r, log) = registry().await;
    let s = "payments.paid-value";
    assert_eq!(r.register(s, V2).await.expect("register"), 2);
    let found = r.lookup(s, V1).await.expect("lookup");
    assert_eq!((found.id, found.version), (1, 1));
    let log = log.lock().expect("log").clone();
    let post = log
        .iter()
        .find(|l| l.starts_with("POST /subjects/payments.paid-value/versions"))
        .expect("POST");
    let body: serde_json::Value =
        serde_json::from_str(post.splitn(3, ' ').nth(2).unwrap_or("{}")).expect("json body");
    assert_eq!(body["schema"], V2);
}

#[tokio::test]
async fn errors() {
    let (r, _) = registry().await;
    let kind = |e: herald_avro::Error| e.kind();
    assert_eq!(
        kind(r.schema_by_id(404).await.map(drop).unwrap_err()),
        ErrorKind::UnknownSchemaId
    );
    assert_eq!(
        kind(r.latest("missing-value").await.map(drop).unwrap_err()),
        ErrorKind::UnknownSubject
    );
    assert_eq!(
        kind(r.versions("missing-value").await.map(drop).unwrap_err()),
        ErrorKind::UnknownSubject
    );
    assert_eq!(
        kind(r.register("broken-value", V1).await.map(drop).unwrap_err()),
        ErrorKind::Incompatible
    );
    let e = r.schema_by_id(503).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RegistryUnavailable, "{e}");
    assert!(e.is_retriable());
}

#[tokio::test]
async fn codec_fetches_each_writer_schema_once() {
    let (r, log) = registry().await;
    let codec = AvroCodec::new(Arc::new(r));
    let v2 = ParsedSchema::parse(V2).expect("v2");
    #[derive(serde::Serialize)]
    struct PaidV1 {
        id: String,
    }
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Paid {
        id: String,
        amount: i64,
    }
    let v1 = herald_avro::BoundSchema::new(
        "payments.paid-value",
        1,
        Arc::new(ParsedSchema::parse(V1).expect("v1")),
    );
    let frame = v1.encode(&PaidV1 { id: "p".into() }).expect("encode");
    for _ in 0..3 {
        let got: Paid = codec.decode_with(&v2, &frame).await.expect("decode");
        assert_eq!(
            got,
            Paid {
                id: "p".into(),
                amount: 0
            }
        );
    }
    let fetches = log
        .lock()
        .expect("log")
        .iter()
        .filter(|l| l.starts_with("GET /schemas/ids/1"))
        .count();
    assert_eq!(fetches, 1);
}
