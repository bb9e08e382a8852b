//! The harness end to end: the binary re-executes itself per run, prints one JSON line
//! per run and a summary, and fails loudly when a run cannot do its work.

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str], env: &[(&str, &str)]) -> (bool, Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run herald-bench");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `transport` × `scenario` for 2 rounds of `messages` and checks the output shape.
fn check(transport: &str, scenario: &str, messages: usize, env: &[(&str, &str)]) {
    let raw = transport != "memory";
    let n = messages.to_string();
    let (ok, lines, stderr) = bench(
        &[
            "--transport",
            transport,
            "--scenario",
            scenario,
            "--messages",
            &n,
            "--size",
            "64",
            "--rounds",
            "2",
            "--warmup",
            "50",
            "--format",
            "json",
        ],
        env,
    );
    assert!(ok, "{transport} {scenario} failed: {stderr}");
    let per_round = if raw { 2 } else { 1 };
    assert_eq!(lines.len(), 2 * per_round + 1, "{lines:?}");
    let (runs, summary) = lines.split_at(lines.len() - 1);
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r["transport"], transport);
        assert_eq!(r["scenario"], scenario);
        assert_eq!(r["messages"], messages);
        assert_eq!(r["size"], 64);
        assert_eq!(r["round"], i / per_round + 1);
        assert!(r["seconds"].as_f64().unwrap() > 0.0);
        assert!(r["msgs_per_sec"].as_f64().unwrap() > 0.0);
        assert!(
            r["peak_rss_bytes"].as_u64().unwrap() > 1 << 20,
            "VmHWM read"
        );
    }
    let systems: Vec<_> = runs.iter().map(|r| r["system"].as_str().unwrap()).collect();
    if raw {
        // herald first in odd rounds, raw first in even ones.
        assert_eq!(systems, ["herald", "raw", "raw", "herald"]);
    } else {
        assert_eq!(systems, ["herald", "herald"]);
    }
    let s = &summary[0];
    assert_eq!(s["summary"], true);
    assert_eq!(s["transport"], transport);
    assert_eq!(s["scenario"], scenario);
    if raw {
        assert!(s["ratio_median"].as_f64().unwrap() > 0.0);
    } else {
        assert!(s["ratio_median"].is_null());
    }
}

#[test]
fn memory_every_scenario() {
    for scenario in ["publish", "consume", "roundtrip"] {
        check("memory", scenario, 2_000, &[]);
    }
}

#[tokio::test]
async fn kafka_every_scenario() {
    let brokers = herald_testkit::fixtures::kafka_brokers().await;
    for scenario in ["publish", "consume", "roundtrip"] {
        check(
            "kafka",
            scenario,
            500,
            &[("HERALD_KAFKA_BROKERS", &brokers)],
        );
    }
}

#[tokio::test]
async fn nats_every_scenario() {
    let url = herald_testkit::fixtures::nats_url().await;
    for scenario in ["publish", "consume", "roundtrip"] {
        check("nats", scenario, 500, &[("HERALD_NATS_URL", &url)]);
    }
}

#[test]
fn a_missing_broker_fails_the_run() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args([
            "--transport",
            "nats",
            "--scenario",
            "publish",
            "--messages",
            "10",
            "--rounds",
            "1",
        ])
        .env("HERALD_NATS_URL", "nats://127.0.0.1:1")
        .output()
        .expect("run herald-bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nats publish herald round 1 failed"),
        "{stderr}"
    );
}

#[test]
fn memory_has_no_raw_client() {
    let (ok, _, stderr) = bench(
        &[
            "--transport",
            "memory",
            "--scenario",
            "publish",
            "--messages",
            "10",
            "--child",
            "raw",
        ],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("no raw client"), "{stderr}");
}
