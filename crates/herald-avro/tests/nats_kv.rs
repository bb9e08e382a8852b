//! The NATS KV registry against a real NATS server with JetStream.
//!
//! The server comes from `herald_testkit::fixtures::nats_url` (`HERALD_NATS_URL`, else a
//! container, else a loud failure). Each test uses its own bucket.

use std::sync::Arc;

use herald_avro::{
    AvroCodec, CompatibilityMode, ErrorKind, NatsKvRegistry, ParsedSchema, Rule, SchemaRegistry,
};

/// A registry on a fresh bucket, deleted when the guard drops.
struct Bucket {
    registry: NatsKvRegistry,
    name: String,
    client: async_nats::Client,
}

impl Bucket {
    async fn new() -> Self {
        let url = herald_testkit::fixtures::nats_url().await;
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach NATS at {url} ({e}); set HERALD_NATS_URL"));
        let name = format!("herald-test-{}", uuid::Uuid::new_v4().simple());
        let registry = NatsKvRegistry::connect(client.clone(), &name)
            .await
            .expect("bucket");
        Self {
            registry,
            name,
            client,
        }
    }

    async fn delete(self) {
        let js = async_nats::jetstream::new(self.client);
        js.delete_key_value(&self.name)
            .await
            .expect("delete bucket");
    }
}

const V1: &str = r#"{"type":"record","name":"Paid","fields":[{"name":"id","type":"string"}]}"#;
const V2: &str = r#"{"type":"record","name":"Paid","fields":[{"name":"id","type":"string"},
    {"name":"amount","type":"long","default":0}]}"#;
const V2_SPACED: &str = r#"{ "type": "record", "name": "Paid", "fields": [ {"name": "id", "type": "string"},
    {"name": "amount", "type": "long", "default": 0} ] }"#;
const BREAKING: &str = r#"{"type":"record","name":"Paid","fields":[{"name":"id","type":"int"},
    {"name":"payer","type":"string"}]}"#;

#[tokio::test]
async fn register_versions_and_lookups() {
    let b = Bucket::new().await;
    let r = &b.registry;
    let s = "payments.paid-value";
    let id1 = r.register(s, V1).await.expect("v1");
    assert_eq!(
        r.register(s, V1).await.expect("v1 again"),
        id1,
        "same schema, same id"
    );
    let id2 = r.register(s, V2).await.expect("v2");
    assert_ne!(id1, id2);
    assert_eq!(r.register(s, V2_SPACED).await.expect("v2 reformatted"), id2);
    assert_eq!(r.versions(s).await.expect("versions"), vec![1, 2]);
    let latest = r.latest(s).await.expect("latest");
    assert_eq!(
        (latest.version, latest.id, latest.subject.as_str()),
        (2, id2, s)
    );
    assert_eq!(r.version(s, 1).await.expect("v1").schema, V1);
    assert_eq!(r.schema_by_id(id1).await.expect("by id"), V1);
    assert_eq!(r.lookup(s, V2_SPACED).await.expect("lookup").version, 2);

    // The same schema under another subject keeps its id.
    assert_eq!(r.register("other-value", V1).await.expect("other"), id1);
    assert_eq!(r.versions("other-value").await.expect("versions"), vec![1]);
    b.delete().await;
}

#[tokio::test]
async fn compatibility_is_enforced() {
    let b = Bucket::new().await;
    let r = &b.registry;
    let s = "payments.paid-value";
    assert_eq!(
        r.compatibility(s).await.expect("default"),
        CompatibilityMode::Backward
    );
    r.register(s, V1).await.expect("v1");
    let e = r.register(s, BREAKING).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");
    let rules: Vec<_> = e
        .violations()
        .iter()
        .map(|v| (v.rule, v.path.as_str()))
        .collect();
    assert_eq!(
        rules,
        [
            (Rule::TypeMismatch, "/fields/0/type"),
            (Rule::ReaderFieldMissingDefault, "/fields/1")
        ]
    );
    assert_eq!(
        r.versions(s).await.expect("versions"),
        vec![1],
        "nothing was registered"
    );

    r.set_compatibility(Some(s), CompatibilityMode::None)
        .await
        .expect("set");
    assert_eq!(
        r.compatibility(s).await.expect("mode"),
        CompatibilityMode::None
    );
    r.register(s, BREAKING)
        .await
        .expect("NONE accepts anything");

    r.set_compatibility(None, CompatibilityMode::Forward)
        .await
        .expect("global");
    assert_eq!(
        r.compatibility("fresh-value").await.expect("mode"),
        CompatibilityMode::Forward
    );
    b.delete().await;
}

#[tokio::test]
async fn unknown_ids_and_subjects() {
    let b = Bucket::new().await;
    let r = &b.registry;
    assert_eq!(
        r.schema_by_id(99).await.map(drop).unwrap_err().kind(),
        ErrorKind::UnknownSchemaId
    );
    assert_eq!(
        r.latest("nope").await.map(drop).unwrap_err().kind(),
        ErrorKind::UnknownSubject
    );
    assert_eq!(
        r.versions("nope").await.map(drop).unwrap_err().kind(),
        ErrorKind::UnknownSubject
    );
    r.register("s", V1).await.expect("v1");
    assert_eq!(
        r.version("s", 7).await.map(drop).unwrap_err().kind(),
        ErrorKind::UnknownSubject
    );
    assert_eq!(
        r.lookup("s", V2).await.map(drop).unwrap_err().kind(),
        ErrorKind::UnknownSubject
    );
    assert_eq!(
        r.register("s", "{not json")
            .await
            .map(drop)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidSchema
    );
    b.delete().await;
}

#[tokio::test]
async fn concurrent_registrations_agree() {
    let b = Bucket::new().await;
    let registry = Arc::new(b.registry);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let r = registry.clone();
            tokio::spawn(async move {
                let schema = if i % 2 == 0 {
                    V1.to_owned()
                } else {
                    V1.replace(':', " : ")
                };
                r.register("race-value", &schema).await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("join").expect("register"));
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    assert_eq!(
        registry.versions("race-value").await.expect("versions"),
        vec![1]
    );
    let js = async_nats::jetstream::new(b.client);
    js.delete_key_value(&b.name).await.expect("delete bucket");
}

#[tokio::test]
async fn codec_over_nats() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Paid {
        id: String,
        amount: i64,
    }
    let b = Bucket::new().await;
    let registry: Arc<dyn SchemaRegistry> =
        Arc::new(NatsKvRegistry::new(b.registry.store().clone(), &b.name));
    let writer = AvroCodec::new(registry.clone());
    let v1 = writer
        .bind(
            "payments.paid",
            Arc::new(ParsedSchema::parse(V1).expect("v1")),
        )
        .await
        .expect("bind");
    #[derive(serde::Serialize)]
    struct PaidV1<'a> {
        id: &'a str,
    }
    let frame = v1.encode(&PaidV1 { id: "p-1" }).expect("encode");
    // A fresh codec: the writer's schema must come from the bucket.
    let reader = AvroCodec::new(registry);
    let v2 = ParsedSchema::parse(V2).expect("v2");
    let got: Paid = reader.decode_with(&v2, &frame).await.expect("decode");
    assert_eq!(
        got,
        Paid {
            id: "p-1".into(),
            amount: 0
        }
    );
    b.delete().await;
}
