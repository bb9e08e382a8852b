//! The `herald` binary: exit codes 0 / 100 / 2 (/ 1), output formats, the repo's schemas.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
};

fn herald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .output()
        .expect("run herald")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh directory per call.
fn tmp() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "herald-cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

fn rec(name: &str, fields: &str) -> String {
    format!(r#"{{"type":"record","name":"{name}","namespace":"t","fields":[{fields}]}}"#)
}

fn repo_schemas() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas")
        .display()
        .to_string()
}

const A: &str = r#"{"name":"id","type":"string"}"#;
const B_DEFAULT: &str = r#"{"name":"n","type":"int","default":0}"#;
const B_REQUIRED: &str = r#"{"name":"n","type":"int"}"#;

#[test]
fn compatible_exits_0() {
    let d = tmp();
    let old = write(&d, "v1.avsc", &rec("OrderPlaced", A));
    let new = write(
        &d,
        "v2.avsc",
        &rec("OrderPlaced", &format!("{A},{B_DEFAULT}")),
    );
    let o = herald(&["schema", "check", &new, "--against", &old, "--mode", "FULL"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
}

#[test]
fn incompatible_exits_100_with_one_line_per_violation() {
    let d = tmp();
    let old = write(&d, "v1.avsc", &rec("OrderPlaced", A));
    let new = write(
        &d,
        "v2.avsc",
        &rec(
            "OrderPlaced",
            &format!(r#"{{"name":"id","type":"int"}},{B_REQUIRED}"#),
        ),
    );
    let o = herald(&[
        "schema",
        "check",
        &new,
        "--against",
        &old,
        "--mode",
        "backward",
    ]);
    assert_eq!(code(&o), 100, "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(&format!("{new}: /fields/0/type: TYPE_MISMATCH: ")),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!("{new}: /fields/1: READER_FIELD_MISSING_DEFAULT: ")),
        "{}",
        lines[1]
    );
    assert!(lines[0].contains(&old));
}

#[test]
fn json_output() {
    let d = tmp();
    let old = write(
        &d,
        "v1.avsc",
        &rec("OrderPlaced", &format!("{A},{B_REQUIRED}")),
    );
    let new = write(&d, "v2.avsc", &rec("OrderPlaced", A));
    let o = herald(&[
        "schema",
        "check",
        &new,
        "--against",
        &old,
        "--mode",
        "Forward",
        "--format",
        "json",
    ]);
    assert_eq!(code(&o), 100);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(doc["compatible"], false);
    let v = &doc["violations"][0];
    assert_eq!(v["rule"], "READER_FIELD_MISSING_DEFAULT");
    assert_eq!(v["path"], "/fields/1");
    assert_eq!(v["against"], old.as_str());
    assert_eq!(v["direction"], "forward");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));

    let ok = herald(&[
        "schema",
        "check",
        &old,
        "--against",
        &old,
        "--mode",
        "full_transitive",
        "--format",
        "json",
    ]);
    assert_eq!(code(&ok), 0);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&ok)).expect("json");
    assert_eq!(
        doc,
        serde_json::json!({"compatible": true, "violations": []})
    );
}

#[test]
fn github_output() {
    let d = tmp();
    let old = write(&d, "v1.avsc", &rec("OrderPlaced", A));
    let new = write(
        &d,
        "v2.avsc",
        &rec("OrderPlaced", r#"{"name":"id","type":"long"}"#),
    );
    let o = herald(&[
        "schema",
        "check",
        &new,
        "--against",
        &old,
        "--mode",
        "BACKWARD",
        "--format",
        "github",
    ]);
    assert_eq!(code(&o), 100);
    let out = stdout(&o);
    assert!(out.starts_with("::error file="), "{out}");
    assert!(
        out.contains("title=TYPE_MISMATCH::/fields/0/type: TYPE_MISMATCH: "),
        "{out}"
    );
}

#[test]
fn transitive_modes_use_every_against_file() {
    let d = tmp();
    let v1 = write(
        &d,
        "v1.avsc",
        &rec(
            "OrderPlaced",
            &format!(r#"{A},{{"name":"x","type":"string"}}"#),
        ),
    );
    let v2 = write(&d, "v2.avsc", &rec("OrderPlaced", A));
    let v3 = write(
        &d,
        "v3.avsc",
        &rec(
            "OrderPlaced",
            &format!(r#"{A},{{"name":"x","type":"int","default":0}}"#),
        ),
    );
    let plain = herald(&[
        "schema",
        "check",
        &v3,
        "--against",
        &v1,
        "--against",
        &v2,
        "--mode",
        "BACKWARD",
    ]);
    assert_eq!(code(&plain), 0, "{}", stdout(&plain));
    let t = herald(&[
        "schema",
        "check",
        &v3,
        "--against",
        &v1,
        "--against",
        &v2,
        "--mode",
        "backward_transitive",
    ]);
    assert_eq!(code(&t), 100);
    assert!(
        stdout(&t).contains(&format!("against {v1}")),
        "{}",
        stdout(&t)
    );
}

#[test]
fn invalid_input_exits_2() {
    let d = tmp();
    let good = write(&d, "good.avsc", &rec("OrderPlaced", A));
    let bad = write(
        &d,
        "bad.avsc",
        r#"{"type":"record","name":"X","fields":[{"name":"a","type":"nope"}]}"#,
    );
    let junk = write(&d, "junk.avsc", "{not json");
    let missing = d.join("missing.avsc").display().to_string();
    for (what, args, needle) in [
        (
            "missing file",
            vec![
                "schema",
                "check",
                &missing,
                "--against",
                &good,
                "--mode",
                "BACKWARD",
            ],
            missing.as_str(),
        ),
        (
            "invalid schema",
            vec![
                "schema",
                "check",
                &bad,
                "--against",
                &good,
                "--mode",
                "BACKWARD",
            ],
            bad.as_str(),
        ),
        (
            "unparseable",
            vec![
                "schema",
                "check",
                &good,
                "--against",
                &junk,
                "--mode",
                "BACKWARD",
            ],
            junk.as_str(),
        ),
        (
            "bad mode",
            vec![
                "schema",
                "check",
                &good,
                "--against",
                &good,
                "--mode",
                "sideways",
            ],
            "sideways",
        ),
        (
            "no --against",
            vec!["schema", "check", &good, "--mode", "BACKWARD"],
            "--against",
        ),
        (
            "no --mode",
            vec!["schema", "check", &good, "--against", &good],
            "--mode",
        ),
        (
            "unknown flag",
            vec![
                "schema",
                "check",
                &good,
                "--against",
                &good,
                "--mode",
                "FULL",
                "--wat",
            ],
            "--wat",
        ),
        ("no subcommand", vec![], "Usage"),
        (
            "bad format",
            vec![
                "schema",
                "check",
                &good,
                "--against",
                &good,
                "--mode",
                "FULL",
                "--format",
                "xml",
            ],
            "xml",
        ),
    ] {
        let o = herald(&args);
        assert_eq!(code(&o), 2, "{what}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "{what}: stderr lacks {needle:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn repo_schemas_pass_check_and_lint() {
    let dir = repo_schemas();
    let o = herald(&["schema", "check", "--dir", &dir]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = herald(&["lint", &dir]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn dir_check_orders_versions_numerically_and_reads_config() {
    let d = tmp();
    let fields = |n: usize| {
        (0..n)
            .map(|i| format!(r#"{{"name":"f{i}","type":"int","default":0}}"#))
            .collect::<Vec<_>>()
    };
    for v in 1..=9 {
        write(
            &d,
            &format!("orders-value/v{v}.avsc"),
            &rec("OrderPlaced", &fields(v).join(",")),
        );
    }
    // v10 changes f0's type: only v9 is compared (BACKWARD), so one violation against v9.
    let mut f10 = fields(10);
    f10[0] = r#"{"name":"f0","type":"string","default":""}"#.into();
    let v10 = write(
        &d,
        "orders-value/v10.avsc",
        &rec("OrderPlaced", &f10.join(",")),
    );
    // A second subject whose config allows anything.
    write(&d, "loose-value/v1.avsc", &rec("ThingHappened", A));
    write(&d, "loose-value/v2.avsc", r#""string""#);
    write(&d, "loose-value/config.json", r#"{"compatibility":"none"}"#);

    let o = herald(&["schema", "check", "--dir", &d.display().to_string()]);
    assert_eq!(code(&o), 100, "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with(&format!("{v10}: /fields/0/type: TYPE_MISMATCH: ")),
        "{out}"
    );
    assert!(out.contains("v9.avsc"), "{out}");

    let o = herald(&[
        "schema",
        "check",
        "--dir",
        &d.display().to_string(),
        "--format",
        "json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(doc["violations"].as_array().map(Vec::len), Some(1));
}

#[test]
fn dir_check_invalid_layout_exits_2() {
    let d = tmp();
    write(&d, "s-value/v1.avsc", &rec("OrderPlaced", A));
    write(&d, "s-value/latest.avsc", &rec("OrderPlaced", A));
    let o = herald(&["schema", "check", "--dir", &d.display().to_string()]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("latest.avsc"), "{}", stderr(&o));

    let d = tmp();
    write(&d, "s-value/v1.avsc", "[");
    let o = herald(&["schema", "check", "--dir", &d.display().to_string()]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("v1.avsc"), "{}", stderr(&o));
}

#[test]
fn lint_flags_vague_and_present_tense_names() {
    let d = tmp();
    write(&d, "a-value/v1.avsc", &rec("Updated", A));
    write(&d, "b-value/v1.avsc", &rec("OrderEvent", A));
    write(&d, "c-value/v1.avsc", &rec("ReserveInventory", A));
    write(&d, "d-value/v1.avsc", &rec("InventoryReserved", A));
    let o = herald(&["lint", &d.display().to_string()]);
    assert_eq!(code(&o), 100);
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("a-value/v1.avsc: VAGUE_NAME: "), "{out}");
    assert!(out.contains("b-value/v1.avsc: VAGUE_NAME: "), "{out}");
    assert!(out.contains("c-value/v1.avsc: NOT_PAST_TENSE: "), "{out}");
    let o = herald(&["lint", &d.display().to_string(), "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(doc["clean"], false);
    assert_eq!(doc["findings"][0]["name"], "Updated");
}

#[test]
fn diff_lists_field_changes() {
    let d = tmp();
    let old = write(
        &d,
        "v1.avsc",
        &rec(
            "OrderPlaced",
            &format!(r#"{A},{B_REQUIRED},{{"name":"gone","type":"string"}}"#),
        ),
    );
    let new = write(
        &d,
        "v2.avsc",
        &rec(
            "OrderPlaced",
            &format!(
                r#"{{"name":"id","type":["null","string"],"default":null}},{B_REQUIRED},{{"name":"added","type":"long","default":5}}"#
            ),
        ),
    );
    let o = herald(&["schema", "diff", &old, &new]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "~ id: string -> null | string = null\n+ added: long = 5\n- gone: string\n"
    );
}

#[test]
fn register_with_nats_kv_and_unreachable_registry() {
    let d = tmp();
    let v1 = write(&d, "v1.avsc", &rec("OrderPlaced", A));
    let v2 = write(
        &d,
        "v2.avsc",
        &rec("OrderPlaced", r#"{"name":"id","type":"int"}"#),
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos())
        .unwrap_or_default();
    let bucket = format!("herald-cli-{}-{nanos}", std::process::id());
    let url = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(herald_testkit::fixtures::nats_url());
    let args = |file: &str| {
        [
            "schema",
            "register",
            "--registry",
            url.as_str(),
            "--bucket",
            bucket.as_str(),
            "--subject",
            "orders-value",
            file,
        ]
        .map(str::to_owned)
    };
    let o = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args(&v1))
        .output()
        .expect("run");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("with id 1"), "{}", stdout(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args(&v2))
        .output()
        .expect("run");
    assert_eq!(code(&o), 100, "{}", stderr(&o));
    assert!(stdout(&o).contains("TYPE_MISMATCH"), "{}", stdout(&o));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let client = async_nats::connect(&url).await.expect("nats");
            async_nats::jetstream::new(client)
                .delete_key_value(&bucket)
                .await
                .expect("delete bucket");
        });

    let o = herald(&[
        "schema",
        "register",
        "--registry",
        "http://127.0.0.1:9",
        "--subject",
        "s",
        &v1,
    ]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("unreachable"), "{}", stderr(&o));
}
