//! The compatibility checker, table-driven: each pair is judged in all seven modes, and
//! every rule is exercised in both directions.

use std::collections::HashSet;

use herald_avro::{
    CompatibilityMode, ParsedSchema, Rule,
    compat::{Direction, SchemaVersion, can_read, check},
};

/// A record `t.R` with these fields.
fn rec(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"R","namespace":"t","fields":[{fields}]}}"#)
}

/// A record with one field `f` of this type.
fn one(ty: &str) -> String {
    rec(&format!(r#"{{"name":"f","type":{ty}}}"#))
}

const LIST: &str = r#"{"type":"record","name":"Node","fields":[
    {"name":"value","type":"int"},
    {"name":"next","type":["null","Node"],"default":null}]}"#;

struct Case {
    name: &'static str,
    old: String,
    new: String,
    /// Expected (rule, path) when the new schema reads old data.
    backward: Vec<(Rule, &'static str)>,
    /// Expected (rule, path) when the old schema reads new data.
    forward: Vec<(Rule, &'static str)>,
}

fn case(
    name: &'static str,
    old: impl Into<String>,
    new: impl Into<String>,
    backward: &[(Rule, &'static str)],
    forward: &[(Rule, &'static str)],
) -> Case {
    Case {
        name,
        old: old.into(),
        new: new.into(),
        backward: backward.to_vec(),
        forward: forward.to_vec(),
    }
}

use Rule::{
    FixedSizeMismatch as FSM, MissingEnumSymbols as MES, MissingUnionBranch as MUB,
    NameMismatch as NM, ReaderFieldMissingDefault as RFMD, TypeMismatch as TM,
};

fn cases() -> Vec<Case> {
    let f0 = "/fields/0/type";
    vec![
        // --- fields and defaults
        case(
            "identical",
            one(r#""string""#),
            one(r#""string""#),
            &[],
            &[],
        ),
        case(
            "add field with default",
            one(r#""string""#),
            rec(r#"{"name":"f","type":"string"},{"name":"g","type":"int","default":0}"#),
            &[],
            &[],
        ),
        case(
            "add field without default",
            one(r#""string""#),
            rec(r#"{"name":"f","type":"string"},{"name":"g","type":"int"}"#),
            &[(RFMD, "/fields/1")],
            &[],
        ),
        case(
            "remove field that had a default",
            rec(r#"{"name":"f","type":"string"},{"name":"g","type":"int","default":0}"#),
            one(r#""string""#),
            &[],
            &[],
        ),
        case(
            "remove field without default",
            rec(r#"{"name":"f","type":"string"},{"name":"g","type":"int"}"#),
            one(r#""string""#),
            &[],
            &[(RFMD, "/fields/1")],
        ),
        case(
            "add union field with null default",
            one(r#""string""#),
            rec(
                r#"{"name":"f","type":"string"},{"name":"g","type":["null","string"],"default":null}"#,
            ),
            &[],
            &[],
        ),
        case(
            "several violations at once",
            rec(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#),
            rec(
                r#"{"name":"a","type":"int"},{"name":"b","type":"boolean"},{"name":"c","type":"long"}"#,
            ),
            &[
                (TM, "/fields/0/type"),
                (TM, "/fields/1/type"),
                (RFMD, "/fields/2"),
            ],
            &[(TM, "/fields/0/type"), (TM, "/fields/1/type")],
        ),
        // --- field aliases
        case(
            "rename field, new has alias",
            one(r#""long""#),
            rec(r#"{"name":"amount","type":"long","aliases":["f"]}"#),
            &[],
            &[(RFMD, "/fields/0")],
        ),
        case(
            "rename field, old has alias",
            rec(r#"{"name":"amount","type":"long","aliases":["f"]}"#),
            one(r#""long""#),
            &[(RFMD, "/fields/0")],
            &[],
        ),
        case(
            "rename field without alias",
            one(r#""long""#),
            rec(r#"{"name":"amount","type":"long"}"#),
            &[(RFMD, "/fields/0")],
            &[(RFMD, "/fields/0")],
        ),
        // --- numeric promotions and string <-> bytes
        case(
            "int to long",
            one(r#""int""#),
            one(r#""long""#),
            &[],
            &[(TM, f0)],
        ),
        case(
            "int to float",
            one(r#""int""#),
            one(r#""float""#),
            &[],
            &[(TM, f0)],
        ),
        case(
            "int to double",
            one(r#""int""#),
            one(r#""double""#),
            &[],
            &[(TM, f0)],
        ),
        case(
            "long to float",
            one(r#""long""#),
            one(r#""float""#),
            &[],
            &[(TM, f0)],
        ),
        case(
            "long to double",
            one(r#""long""#),
            one(r#""double""#),
            &[],
            &[(TM, f0)],
        ),
        case(
            "float to double",
            one(r#""float""#),
            one(r#""double""#),
            &[],
            &[(TM, f0)],
        ),
        case(
            "long to int",
            one(r#""long""#),
            one(r#""int""#),
            &[(TM, f0)],
            &[],
        ),
        case(
            "double to float",
            one(r#""double""#),
            one(r#""float""#),
            &[(TM, f0)],
            &[],
        ),
        case(
            "string to bytes",
            one(r#""string""#),
            one(r#""bytes""#),
            &[],
            &[],
        ),
        case(
            "bytes to string",
            one(r#""bytes""#),
            one(r#""string""#),
            &[],
            &[],
        ),
        case(
            "string to int",
            one(r#""string""#),
            one(r#""int""#),
            &[(TM, f0)],
            &[(TM, f0)],
        ),
        case(
            "boolean to null",
            one(r#""boolean""#),
            one(r#""null""#),
            &[(TM, f0)],
            &[(TM, f0)],
        ),
        case(
            "top-level int to long",
            r#""int""#,
            r#""long""#,
            &[],
            &[(TM, "/")],
        ),
        case(
            "logical types read as their base type",
            one(r#"{"type":"long","logicalType":"timestamp-millis"}"#),
            one(r#""long""#),
            &[],
            &[],
        ),
        case(
            "decimal bytes to bytes",
            one(r#"{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}"#),
            one(r#""bytes""#),
            &[],
            &[],
        ),
        // --- named types: names, aliases, namespaces
        case(
            "rename record with alias on new",
            rec(r#"{"name":"f","type":"int"}"#),
            r#"{"type":"record","name":"R2","namespace":"t","aliases":["t.R"],"fields":[{"name":"f","type":"int"}]}"#,
            &[],
            &[(NM, "/name")],
        ),
        case(
            "rename record with unqualified alias",
            rec(r#"{"name":"f","type":"int"}"#),
            r#"{"type":"record","name":"R2","namespace":"u","aliases":["R"],"fields":[{"name":"f","type":"int"}]}"#,
            &[],
            &[(NM, "/name")],
        ),
        case(
            "rename record without alias",
            rec(r#"{"name":"f","type":"int"}"#),
            r#"{"type":"record","name":"R2","namespace":"t","fields":[{"name":"f","type":"int"}]}"#,
            &[(NM, "/name")],
            &[(NM, "/name")],
        ),
        case(
            "namespace change only (unqualified names match)",
            rec(r#"{"name":"f","type":"int"}"#),
            r#"{"type":"record","name":"R","namespace":"other","fields":[{"name":"f","type":"int"}]}"#,
            &[],
            &[],
        ),
        // --- enums
        case(
            "enum adds a symbol",
            one(r#"{"type":"enum","name":"E","symbols":["A","B"]}"#),
            one(r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#),
            &[],
            &[(MES, "/fields/0/type/symbols")],
        ),
        case(
            "enum removes a symbol",
            one(r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#),
            one(r#"{"type":"enum","name":"E","symbols":["A","B"]}"#),
            &[(MES, "/fields/0/type/symbols")],
            &[],
        ),
        case(
            "enum partial overlap",
            one(r#"{"type":"enum","name":"E","symbols":["A","B"]}"#),
            one(r#"{"type":"enum","name":"E","symbols":["B","C"]}"#),
            &[(MES, "/fields/0/type/symbols")],
            &[(MES, "/fields/0/type/symbols")],
        ),
        case(
            "enum adds a symbol, both have an enum default",
            one(r#"{"type":"enum","name":"E","symbols":["U","A"],"default":"U"}"#),
            one(r#"{"type":"enum","name":"E","symbols":["U","A","B"],"default":"U"}"#),
            &[],
            &[],
        ),
        case(
            "enum removes a symbol, new has an enum default",
            one(r#"{"type":"enum","name":"E","symbols":["U","A","B"]}"#),
            one(r#"{"type":"enum","name":"E","symbols":["U","A"],"default":"U"}"#),
            &[],
            &[],
        ),
        case(
            "enum rename with alias",
            one(r#"{"type":"enum","name":"E","symbols":["A"]}"#),
            one(r#"{"type":"enum","name":"E2","aliases":["E"],"symbols":["A"]}"#),
            &[],
            &[(NM, "/fields/0/type/name")],
        ),
        case(
            "enum rename and new symbol",
            one(r#"{"type":"enum","name":"E","symbols":["A"]}"#),
            one(r#"{"type":"enum","name":"E2","symbols":["A","B"]}"#),
            &[(NM, "/fields/0/type/name")],
            &[(NM, "/fields/0/type/name"), (MES, "/fields/0/type/symbols")],
        ),
        // --- fixed
        case(
            "fixed size change",
            one(r#"{"type":"fixed","name":"F","size":16}"#),
            one(r#"{"type":"fixed","name":"F","size":32}"#),
            &[(FSM, "/fields/0/type/size")],
            &[(FSM, "/fields/0/type/size")],
        ),
        case(
            "fixed rename",
            one(r#"{"type":"fixed","name":"F","size":16}"#),
            one(r#"{"type":"fixed","name":"G","size":16}"#),
            &[(NM, "/fields/0/type/name")],
            &[(NM, "/fields/0/type/name")],
        ),
        case(
            "fixed to bytes",
            one(r#"{"type":"fixed","name":"F","size":16}"#),
            one(r#""bytes""#),
            &[(TM, f0)],
            &[(TM, f0)],
        ),
        // --- unions on either side
        case(
            "widen to nullable union",
            one(r#""string""#),
            one(r#"["null","string"]"#),
            &[],
            &[(TM, f0)],
        ),
        case(
            "narrow from nullable union",
            one(r#"["null","string"]"#),
            one(r#""string""#),
            &[(TM, f0)],
            &[],
        ),
        case(
            "union adds a branch",
            one(r#"["null","string"]"#),
            one(r#"["null","string","int"]"#),
            &[],
            &[(MUB, f0)],
        ),
        case(
            "union removes a branch",
            one(r#"["null","string","int"]"#),
            one(r#"["null","string"]"#),
            &[(MUB, f0)],
            &[],
        ),
        case(
            "union branch promotion",
            one(r#"["null","int"]"#),
            one(r#"["null","long"]"#),
            &[],
            &[(MUB, f0)],
        ),
        case(
            "union of records evolves with defaults",
            one(r#"["null",{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}]"#),
            one(
                r#"["null",{"type":"record","name":"A","fields":[{"name":"x","type":"int"},{"name":"y","type":"string","default":""}]}]"#,
            ),
            &[],
            &[],
        ),
        case(
            "reader union lacks a record the writer's shape needs",
            one(r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}"#),
            one(
                r#"["null",{"type":"record","name":"A","fields":[{"name":"x","type":"int"},{"name":"y","type":"string"}]}]"#,
            ),
            &[(MUB, f0)],
            &[(TM, f0)],
        ),
        case(
            "single-branch union to its type",
            one(r#"["string"]"#),
            one(r#""string""#),
            &[],
            &[],
        ),
        // --- arrays and maps
        case(
            "array items promoted",
            one(r#"{"type":"array","items":"int"}"#),
            one(r#"{"type":"array","items":"long"}"#),
            &[],
            &[(TM, "/fields/0/type/items")],
        ),
        case(
            "array items incompatible",
            one(r#"{"type":"array","items":"string"}"#),
            one(r#"{"type":"array","items":"int"}"#),
            &[(TM, "/fields/0/type/items")],
            &[(TM, "/fields/0/type/items")],
        ),
        case(
            "map values promoted",
            one(r#"{"type":"map","values":"int"}"#),
            one(r#"{"type":"map","values":"long"}"#),
            &[],
            &[(TM, "/fields/0/type/values")],
        ),
        case(
            "array to map",
            one(r#"{"type":"array","items":"int"}"#),
            one(r#"{"type":"map","values":"int"}"#),
            &[(TM, f0)],
            &[(TM, f0)],
        ),
        case(
            "array of records gains a required field",
            one(
                r#"{"type":"array","items":{"type":"record","name":"L","fields":[{"name":"sku","type":"string"}]}}"#,
            ),
            one(
                r#"{"type":"array","items":{"type":"record","name":"L","fields":[{"name":"sku","type":"string"},{"name":"qty","type":"int"}]}}"#,
            ),
            &[(RFMD, "/fields/0/type/items/fields/1")],
            &[],
        ),
        // --- nested and recursive records
        case(
            "nested record field added without default",
            one(r#"{"type":"record","name":"N","fields":[{"name":"a","type":"int"}]}"#),
            one(
                r#"{"type":"record","name":"N","fields":[{"name":"a","type":"int"},{"name":"b","type":"int"}]}"#,
            ),
            &[(RFMD, "/fields/0/type/fields/1")],
            &[],
        ),
        case("recursive type, identical", LIST, LIST, &[], &[]),
        case(
            "recursive type gains a field with default",
            LIST,
            r#"{"type":"record","name":"Node","fields":[
                {"name":"value","type":"int"},
                {"name":"next","type":["null","Node"],"default":null},
                {"name":"label","type":"string","default":""}]}"#,
            &[],
            &[],
        ),
        case(
            "recursive type gains a required field: reported once",
            LIST,
            r#"{"type":"record","name":"Node","fields":[
                {"name":"value","type":"int"},
                {"name":"next","type":["null","Node"],"default":null},
                {"name":"label","type":"string"}]}"#,
            &[(RFMD, "/fields/2")],
            &[],
        ),
        case(
            "recursive type changes its value type",
            LIST,
            r#"{"type":"record","name":"Node","fields":[
                {"name":"value","type":"string"},
                {"name":"next","type":["null","Node"],"default":null}]}"#,
            &[(TM, "/fields/0/type")],
            &[(TM, "/fields/0/type")],
        ),
        case(
            "top-level enum to record",
            r#"{"type":"enum","name":"R","symbols":["A"]}"#,
            rec(r#"{"name":"f","type":"int","default":0}"#),
            &[(TM, "/")],
            &[(TM, "/")],
        ),
    ]
}

fn parse(s: &str, what: &str) -> ParsedSchema {
    ParsedSchema::parse(s).unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
fn table_in_every_mode() {
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for c in &cases {
        let (old, new) = (parse(&c.old, c.name), parse(&c.new, c.name));
        let expect = |d: &[(Rule, &str)]| {
            d.iter()
                .map(|(r, p)| (*r, p.to_string()))
                .collect::<Vec<_>>()
        };
        // Each direction on its own.
        let got_back: Vec<_> = can_read(&new, &old)
            .into_iter()
            .map(|i| (i.rule, i.path))
            .collect();
        let got_fwd: Vec<_> = can_read(&old, &new)
            .into_iter()
            .map(|i| (i.rule, i.path))
            .collect();
        assert_eq!(
            got_back,
            expect(&c.backward),
            "{}: backward (new reads old)",
            c.name
        );
        assert_eq!(
            got_fwd,
            expect(&c.forward),
            "{}: forward (old reads new)",
            c.name
        );
        // Every mode.
        for mode in CompatibilityMode::ALL {
            let got = check(
                mode,
                SchemaVersion {
                    label: "new",
                    schema: &new,
                },
                &[SchemaVersion {
                    label: "old",
                    schema: &old,
                }],
            );
            let mut want = Vec::new();
            if mode.checks_backward() {
                want.extend(
                    expect(&c.backward)
                        .into_iter()
                        .map(|p| (Direction::Backward, p)),
                );
            }
            if mode.checks_forward() {
                want.extend(
                    expect(&c.forward)
                        .into_iter()
                        .map(|p| (Direction::Forward, p)),
                );
            }
            let got_pairs: Vec<_> = got
                .iter()
                .map(|v| (v.direction, (v.rule, v.path.clone())))
                .collect();
            assert_eq!(got_pairs, want, "{} in {mode}", c.name);
            assert_eq!(
                got.is_empty(),
                want.is_empty(),
                "{} verdict in {mode}",
                c.name
            );
            for v in &got {
                assert_eq!((v.new.as_str(), v.against.as_str()), ("new", "old"));
                assert!(
                    !v.message.is_empty() && !v.message.contains('\n'),
                    "{}: {}",
                    c.name,
                    v.message
                );
            }
        }
    }
}

#[test]
fn every_rule_is_exercised_in_both_directions() {
    let cases = cases();
    let all = [RFMD, TM, MES, MUB, NM, FSM];
    let back: HashSet<Rule> = cases
        .iter()
        .flat_map(|c| c.backward.iter().map(|p| p.0))
        .collect();
    let fwd: HashSet<Rule> = cases
        .iter()
        .flat_map(|c| c.forward.iter().map(|p| p.0))
        .collect();
    for r in all {
        assert!(back.contains(&r), "{r} never expected backward");
        assert!(fwd.contains(&r), "{r} never expected forward");
    }
}

fn versions<'a>(schemas: &'a [ParsedSchema], labels: &'a [&'a str]) -> Vec<SchemaVersion<'a>> {
    labels
        .iter()
        .zip(schemas)
        .map(|(label, schema)| SchemaVersion { label, schema })
        .collect()
}

#[test]
fn transitive_modes_compare_with_every_earlier_version() {
    // v1 has x: string; v2 dropped it; v3 brings x back as an int with a default.
    let schemas = [
        parse(&one(r#""string""#), "v1"),
        parse(&rec(r#"{"name":"g","type":"int","default":0}"#), "v2"),
        parse(
            &rec(r#"{"name":"g","type":"int","default":0},{"name":"f","type":"int","default":0}"#),
            "v3",
        ),
    ];
    let labels = ["v1", "v2", "v3"];
    let all = versions(&schemas, &labels);
    let (new, previous) = (all[2], &all[..2]);
    assert!(check(CompatibilityMode::Backward, new, previous).is_empty());
    let t = check(CompatibilityMode::BackwardTransitive, new, previous);
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(
        (t[0].rule, t[0].path.as_str(), t[0].against.as_str()),
        (TM, "/fields/1/type", "v1")
    );
    assert!(check(CompatibilityMode::Forward, new, previous).is_empty());
    let ft = check(CompatibilityMode::FullTransitive, new, previous);
    assert!(ft.iter().all(|v| v.against == "v1"), "{ft:?}");
    assert_eq!(ft.len(), 2, "{ft:?}"); // f: int <- string, and string <- int
    assert!(check(CompatibilityMode::None, new, previous).is_empty());
    assert!(check(CompatibilityMode::FullTransitive, all[0], &[]).is_empty());
}

#[test]
fn modes_parse_case_insensitively() {
    for m in CompatibilityMode::ALL {
        assert_eq!(
            m.as_str().to_lowercase().parse::<CompatibilityMode>().ok(),
            Some(m)
        );
        assert_eq!(m.to_string(), m.as_str());
    }
    assert_eq!(
        "Full-Transitive".parse::<CompatibilityMode>().ok(),
        Some(CompatibilityMode::FullTransitive)
    );
    assert!("sideways".parse::<CompatibilityMode>().is_err());
    let json = serde_json::to_string(&CompatibilityMode::BackwardTransitive).unwrap_or_default();
    assert_eq!(json, r#""BACKWARD_TRANSITIVE""#);
}

#[test]
fn deeply_recursive_mutual_types_terminate() {
    let a = r#"{"type":"record","name":"A","fields":[
        {"name":"b","type":["null",{"type":"record","name":"B","fields":[
            {"name":"a","type":["null","A"],"default":null},
            {"name":"bs","type":{"type":"array","items":"B"},"default":[]}]}],"default":null},
        {"name":"m","type":{"type":"map","values":"A"},"default":{}}]}"#;
    let (r, w) = (parse(a, "a"), parse(a, "a"));
    assert!(can_read(&r, &w).is_empty());
}
