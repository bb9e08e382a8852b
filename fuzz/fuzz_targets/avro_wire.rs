//! The Confluent wire-format decoder: `split` then `check_datum` against a few schemas.
//! Neither may panic, loop or allocate without bound on any input.
#![no_main]

use std::sync::OnceLock;

use herald_avro::{ParsedSchema, wire};
use libfuzzer_sys::fuzz_target;

const SCHEMAS: &[&str] = &[
    r#"{"type":"record","name":"Ping","fields":[{"name":"n","type":"long"},{"name":"note","type":"string"}]}"#,
    r#"{"type":"record","name":"Order","fields":[
        {"name":"id","type":"string"},
        {"name":"lines","type":{"type":"array","items":{"type":"record","name":"Line","fields":[
            {"name":"sku","type":"string"},{"name":"qty","type":"int"},{"name":"price","type":"double"}]}}},
        {"name":"tags","type":{"type":"map","values":"string"}},
        {"name":"note","type":["null","string"],"default":null},
        {"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","PAID"]}},
        {"name":"digest","type":{"type":"fixed","name":"Digest","size":4}},
        {"name":"raw","type":"bytes"},
        {"name":"flag","type":"boolean"},
        {"name":"ratio","type":"float"}]}"#,
    r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","Node"]}]}"#,
    r#"{"type":"array","items":{"type":"array","items":"null"}}"#,
];

fn schemas() -> &'static [ParsedSchema] {
    static S: OnceLock<Vec<ParsedSchema>> = OnceLock::new();
    S.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|s| ParsedSchema::parse(s).expect("fuzz schema parses"))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok((id, datum)) = wire::split(data) {
        let schemas = schemas();
        let schema = &schemas[id as usize % schemas.len()];
        let _ = wire::check_datum(schema, datum);
        // Re-framing is the identity.
        assert_eq!(wire::frame(id, datum), data);
    }
});
