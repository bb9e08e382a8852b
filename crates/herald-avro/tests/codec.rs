//! The codec through the Confluent wire format: round trips between schema versions, the
//! core `Codec` trait, and malformed input.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use bytes::Bytes;
use herald_avro::{
    AvroCodec, BoundSchema, ConfluentRegistry, DirectoryRegistry, ErrorKind, ParsedSchema,
    SchemaRegistry, Value, wire,
};
use herald_core::{Codec, CodecErrorKind, Event};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

const V1: &str = r#"{"type":"record","name":"OrderCreated","namespace":"herald.test","fields":[
    {"name":"order_id","type":"string"},
    {"name":"customer","type":"string"},
    {"name":"total_cents","type":"long"},
    {"name":"status","type":{"type":"enum","name":"Status","symbols":["UNKNOWN","NEW","PAID"],"default":"UNKNOWN"}},
    {"name":"note","type":["null","string"],"default":null},
    {"name":"lines","type":{"type":"array","items":{"type":"record","name":"Line","fields":[
        {"name":"sku","type":"string"},{"name":"qty","type":"int"}]}}}
]}"#;

/// v2: a new field with a default, a new enum symbol, a new line field with a default.
const V2: &str = r#"{"type":"record","name":"OrderCreated","namespace":"herald.test","fields":[
    {"name":"order_id","type":"string"},
    {"name":"customer","type":"string"},
    {"name":"total_cents","type":"long"},
    {"name":"status","type":{"type":"enum","name":"Status","symbols":["UNKNOWN","NEW","PAID","SHIPPED"],"default":"UNKNOWN"}},
    {"name":"note","type":["null","string"],"default":null},
    {"name":"lines","type":{"type":"array","items":{"type":"record","name":"Line","fields":[
        {"name":"sku","type":"string"},{"name":"qty","type":"int"},
        {"name":"gift","type":"boolean","default":false}]}}},
    {"name":"currency","type":"string","default":"EUR"}
]}"#;

/// v3 reads v1 data through a field alias and a promotion: `customer` → `buyer`, long → double.
const V3: &str = r#"{"type":"record","name":"OrderCreated","namespace":"herald.test","fields":[
    {"name":"order_id","type":"string"},
    {"name":"buyer","type":"string","aliases":["customer"]},
    {"name":"total_cents","type":"double"}
]}"#;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
enum StatusV1 {
    UNKNOWN,
    NEW,
    PAID,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
enum StatusV2 {
    UNKNOWN,
    NEW,
    PAID,
    SHIPPED,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct LineV1 {
    sku: String,
    qty: i32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct LineV2 {
    sku: String,
    qty: i32,
    gift: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OrderV1 {
    order_id: String,
    customer: String,
    total_cents: i64,
    status: StatusV1,
    note: Option<String>,
    lines: Vec<LineV1>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OrderV2 {
    order_id: String,
    customer: String,
    total_cents: i64,
    status: StatusV2,
    note: Option<String>,
    lines: Vec<LineV2>,
    currency: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OrderV3 {
    order_id: String,
    buyer: String,
    total_cents: f64,
}

impl Event for OrderV2 {
    const TYPE: &'static str = "herald.test.OrderCreated";
    const VERSION: u32 = 2;
}

/// A schema directory `orders-value/v1..v3.avsc` (ids 1, 2, 3), built once per test binary.
fn schema_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("herald-avro-codec-{}", std::process::id()));
        let subject = dir.join("orders-value");
        std::fs::create_dir_all(&subject).expect("temp dir");
        for (n, s) in [V1, V2, V3].iter().enumerate() {
            std::fs::write(subject.join(format!("v{}.avsc", n + 1)), s).expect("write schema");
        }
        dir
    })
}

struct Fixture {
    codec: AvroCodec,
    v1: BoundSchema,
    v2: BoundSchema,
    v3: BoundSchema,
}

async fn fixture() -> Fixture {
    let registry = Arc::new(DirectoryRegistry::open(schema_dir()).expect("registry"));
    let codec = AvroCodec::new(registry).auto_register(false);
    let bind = |text: &str| {
        let schema = Arc::new(ParsedSchema::parse(text).expect("schema"));
        let codec = &codec;
        async move { codec.bind("orders", schema).await.expect("bind") }
    };
    let (v1, v2, v3) = (bind(V1).await, bind(V2).await, bind(V3).await);
    Fixture { codec, v1, v2, v3 }
}

fn order_v1() -> OrderV1 {
    OrderV1 {
        order_id: "o-1".into(),
        customer: "ada".into(),
        total_cents: 12_345,
        status: StatusV1::PAID,
        note: Some("leave at door".into()),
        lines: vec![
            LineV1 {
                sku: "sku-1".into(),
                qty: 2,
            },
            LineV1 {
                sku: "sku-2".into(),
                qty: 1,
            },
        ],
    }
}

#[tokio::test]
async fn directory_ids_are_deterministic() {
    let f = fixture().await;
    assert_eq!((f.v1.id(), f.v2.id(), f.v3.id()), (1, 2, 3));
    assert_eq!(f.v1.subject(), "orders-value");
}

#[tokio::test]
async fn v1_writer_v2_reader() {
    let f = fixture().await;
    let sent = order_v1();
    let frame = f.v1.encode(&sent).expect("encode");
    assert_eq!(
        &frame[..5],
        &[0, 0, 0, 0, 1],
        "magic byte and big-endian id 1"
    );
    let got: OrderV2 = f
        .codec
        .decode_with(f.v2.schema(), &frame)
        .await
        .expect("decode");
    assert_eq!(got.order_id, sent.order_id);
    assert_eq!(got.customer, sent.customer);
    assert_eq!(got.total_cents, sent.total_cents);
    assert_eq!(got.status, StatusV2::PAID);
    assert_eq!(got.note, sent.note);
    assert_eq!(got.lines.len(), 2);
    for (g, s) in got.lines.iter().zip(&sent.lines) {
        assert_eq!(
            (g.sku.as_str(), g.qty, g.gift),
            (s.sku.as_str(), s.qty, false)
        );
    }
    assert_eq!(
        got.currency, "EUR",
        "the reader's default fills the new field"
    );
}

#[tokio::test]
async fn v2_writer_v1_reader() {
    let f = fixture().await;
    let sent = OrderV2 {
        order_id: "o-2".into(),
        customer: "grace".into(),
        total_cents: -5,
        status: StatusV2::SHIPPED,
        note: None,
        lines: vec![LineV2 {
            sku: "s".into(),
            qty: 7,
            gift: true,
        }],
        currency: "USD".into(),
    };
    let frame = f.v2.encode(&sent).expect("encode");
    let got: OrderV1 = f
        .codec
        .decode_with(f.v1.schema(), &frame)
        .await
        .expect("decode");
    assert_eq!(got.order_id, sent.order_id);
    assert_eq!(got.customer, sent.customer);
    assert_eq!(got.total_cents, sent.total_cents);
    assert_eq!(
        got.status,
        StatusV1::UNKNOWN,
        "an unknown symbol falls back to the reader's enum default"
    );
    assert_eq!(got.note, None);
    assert_eq!(
        got.lines,
        vec![LineV1 {
            sku: "s".into(),
            qty: 7
        }]
    );
}

#[tokio::test]
async fn reader_field_alias_and_promotion() {
    let f = fixture().await;
    let frame = f.v1.encode(&order_v1()).expect("encode");
    let got: OrderV3 = f
        .codec
        .decode_with(f.v3.schema(), &frame)
        .await
        .expect("decode");
    assert_eq!(
        got,
        OrderV3 {
            order_id: "o-1".into(),
            buyer: "ada".into(),
            total_cents: 12_345.0
        }
    );
}

#[tokio::test]
async fn generic_values_in_the_writers_shape() {
    let f = fixture().await;
    let frame = f.v1.encode(&order_v1()).expect("encode");
    let Value::Record(fields) = f.codec.decode_value(None, &frame).await.expect("decode") else {
        panic!("not a record");
    };
    assert_eq!(
        fields[0],
        ("order_id".to_string(), Value::String("o-1".into()))
    );
    assert_eq!(fields.len(), 6);
}

#[tokio::test]
async fn core_codec_trait() {
    let registry = Arc::new(DirectoryRegistry::open(schema_dir()).expect("registry"));
    let v2 = Arc::new(ParsedSchema::parse(V2).expect("schema"));
    let codec = AvroCodec::new(registry)
        .auto_register(false)
        .with_event::<OrderV2>("orders", v2);
    let ev = OrderV2 {
        order_id: "o-9".into(),
        customer: "c".into(),
        total_cents: 1,
        status: StatusV2::NEW,
        note: None,
        lines: vec![],
        currency: "CHF".into(),
    };
    let msg = codec.to_message(&ev).await.expect("to_message");
    assert_eq!(msg.content_type(), Some("application/avro"));
    assert_eq!(&msg.payload[..5], &[0, 0, 0, 0, 2]);
    let back: OrderV2 = Codec::decode(&codec, &msg.payload).await.expect("decode");
    assert_eq!(back, ev);
    let bad = Codec::decode::<OrderV2>(&codec, &Bytes::from_static(b"\x01\x00")).await;
    assert_eq!(bad.map(drop).unwrap_err().kind(), CodecErrorKind::Malformed);
    let unknown = Codec::decode::<OrderV2>(&codec, &Bytes::from(wire::frame(77, &[]))).await;
    assert_eq!(
        unknown.map(drop).unwrap_err().kind(),
        CodecErrorKind::UnknownSchema
    );

    // An event type without a declared schema.
    #[derive(Serialize, Deserialize)]
    struct Undeclared;
    impl Event for Undeclared {
        const TYPE: &'static str = "Undeclared";
        const VERSION: u32 = 1;
    }
    let e = codec.encode(&Undeclared).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), CodecErrorKind::UnknownSchema);
}

#[tokio::test]
async fn encode_rejects_values_that_do_not_fit() {
    let f = fixture().await;
    #[derive(Serialize)]
    struct Wrong {
        order_id: u8,
    }
    let e = f.v1.encode(&Wrong { order_id: 1 }).map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Encode);
}

async fn decode_err(payload: &[u8]) -> ErrorKind {
    let f = fixture().await;
    match f.codec.decode_with::<OrderV1>(f.v1.schema(), payload).await {
        Ok(v) => panic!("decoded garbage into {v:?}"),
        Err(e) => e.kind(),
    }
}

#[tokio::test]
async fn wrong_magic_byte() {
    assert_eq!(
        decode_err(&[1, 0, 0, 0, 1, 2]).await,
        ErrorKind::WrongMagicByte
    );
    assert_eq!(
        decode_err(b"{\"json\":true}").await,
        ErrorKind::WrongMagicByte
    );
}

#[tokio::test]
async fn truncated_header() {
    assert_eq!(decode_err(&[0, 0, 0]).await, ErrorKind::TruncatedHeader);
    assert_eq!(decode_err(&[]).await, ErrorKind::TruncatedHeader);
}

#[tokio::test]
async fn unknown_schema_id() {
    assert_eq!(
        decode_err(&wire::frame(4242, &[0])).await,
        ErrorKind::UnknownSchemaId
    );
}

#[tokio::test]
async fn garbage_datums_are_typed_errors() {
    let cases: &[(&str, Vec<u8>)] = &[
        ("random bytes", vec![0xff; 24]),
        ("empty datum", vec![]),
        // order_id claims 2^62 bytes: must not allocate.
        (
            "huge string length",
            vec![0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ),
        // Valid strings, then an enum index out of range.
        ("bad enum index", vec![2, b'o', 2, b'c', 2, 40]),
        // Valid prefix, then `lines` claims 2^40 items.
        (
            "huge array count",
            vec![
                2, b'o', 2, b'c', 2, 2, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40,
            ],
        ),
        ("trailing bytes", {
            let f = fixture().await;
            let mut v = f.v1.encode(&order_v1()).expect("encode")[5..].to_vec();
            v.extend_from_slice(&[1, 2, 3]);
            v
        }),
    ];
    for (what, datum) in cases {
        assert_eq!(
            decode_err(&wire::frame(1, datum)).await,
            ErrorKind::InvalidDatum,
            "{what}"
        );
    }
}

#[tokio::test]
async fn many_zero_byte_items_are_bounded() {
    let registry = Arc::new(DirectoryRegistry::open(schema_dir()).expect("registry"));
    let codec = AvroCodec::new(registry);
    let nulls =
        Arc::new(ParsedSchema::parse(r#"{"type":"array","items":"null"}"#).expect("schema"));
    // 2^62 nulls in one block: zero bytes each.
    let datum = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0];
    assert!(wire::check_datum(&nulls, &datum).is_err());
    let ok = BoundSchema::new("nulls", 1, nulls.clone())
        .encode(&vec![(); 3])
        .expect("encode");
    wire::check_datum(&nulls, &ok[5..]).expect("three nulls are fine");
    drop(codec);
}

#[tokio::test]
async fn unreachable_registry() {
    // Port 9 (discard) on localhost: nothing listens there.
    let registry = Arc::new(ConfluentRegistry::new("http://127.0.0.1:9").expect("client"));
    let e = registry.schema_by_id(1).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RegistryUnavailable, "{e}");
    assert!(e.is_retriable());
    let codec = AvroCodec::new(registry);
    let e = codec
        .decode_value(None, &wire::frame(1, &[]))
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RegistryUnavailable);
    let core: herald_core::CodecError = e.into();
    assert_eq!(core.kind(), CodecErrorKind::Registry);
}

fn status() -> impl Strategy<Value = StatusV1> {
    prop_oneof![
        Just(StatusV1::UNKNOWN),
        Just(StatusV1::NEW),
        Just(StatusV1::PAID)
    ]
}

prop_compose! {
    fn order()(
        order_id in ".{0,24}",
        customer in "\\PC{0,16}",
        total_cents in any::<i64>(),
        status in status(),
        note in proptest::option::of(".{0,12}"),
        lines in proptest::collection::vec(("[a-z0-9-]{1,8}", any::<i32>()), 0..6),
    ) -> OrderV1 {
        let lines = lines.into_iter().map(|(sku, qty)| LineV1 { sku, qty }).collect();
        OrderV1 { order_id, customer, total_cents, status, note, lines }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn generated_records_round_trip_across_versions(sent in order()) {
        runtime().block_on(async {
            let f = fixture().await;
            let frame = f.v1.encode(&sent).expect("encode");
            let same: OrderV1 = f.codec.decode_with(f.v1.schema(), &frame).await.expect("v1 -> v1");
            assert_eq!(&same, &sent);
            let up: OrderV2 = f.codec.decode_with(f.v2.schema(), &frame).await.expect("v1 -> v2");
            assert_eq!((&up.order_id, &up.customer, up.total_cents), (&sent.order_id, &sent.customer, sent.total_cents));
            assert_eq!(up.note, sent.note);
            assert_eq!(up.currency, "EUR");
            assert_eq!(up.lines.iter().map(|l| (&l.sku, l.qty)).collect::<Vec<_>>(),
                       sent.lines.iter().map(|l| (&l.sku, l.qty)).collect::<Vec<_>>());
            let back: OrderV1 = f.codec.decode_with(f.v1.schema(), &f.v2.encode(&up).expect("encode v2"))
                .await.expect("v2 -> v1");
            assert_eq!(back, sent);
        });
    }

    #[test]
    fn random_bytes_after_a_valid_header_never_panic(datum in proptest::collection::vec(any::<u8>(), 0..64)) {
        runtime().block_on(async {
            let f = fixture().await;
            let frame = wire::frame(1, &datum);
            match f.codec.decode_with::<OrderV2>(f.v2.schema(), &frame).await {
                Ok(_) => {}
                Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidDatum, "{e}"),
            }
        });
    }
}
