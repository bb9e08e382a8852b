//! Result lines, the summary and the table.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cli::{Scenario, System, Transport};

/// One timed run of one system: the line a child prints and the harness re-prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// herald or raw.
    pub system: System,
    /// The broker.
    pub transport: Transport,
    /// What was timed.
    pub scenario: Scenario,
    /// The round (1-based).
    pub round: usize,
    /// Messages timed.
    pub messages: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Wall-clock seconds of the timed part.
    pub seconds: f64,
    /// `messages / seconds`.
    pub msgs_per_sec: f64,
    /// The child process's peak resident set (`VmHWM`), whole run including warm-up.
    pub peak_rss_bytes: u64,
}

/// The last line: medians over the rounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Always `true`: tells the summary apart from run lines.
    pub summary: bool,
    /// The broker.
    pub transport: Transport,
    /// What was timed.
    pub scenario: Scenario,
    /// Median over rounds of herald msgs/s ÷ raw msgs/s of the same round (`null` on the
    /// memory transport, which has no raw client).
    pub ratio_median: Option<f64>,
    /// Median herald msgs/s.
    pub herald_msgs_per_sec_median: f64,
    /// Median raw msgs/s (`null` on memory).
    pub raw_msgs_per_sec_median: Option<f64>,
    /// Highest herald peak RSS over the rounds.
    pub herald_peak_rss_bytes: u64,
    /// Highest raw peak RSS over the rounds (`null` on memory).
    pub raw_peak_rss_bytes: Option<u64>,
    /// Rounds run.
    pub rounds: usize,
    /// Messages timed per run.
    pub messages: usize,
    /// Payload bytes.
    pub size: usize,
    /// The raw client's in-flight window.
    pub window: usize,
    /// herald's messages per `publish` call.
    pub batch: usize,
    /// herald's `publish` calls in flight.
    pub calls: usize,
    /// Untimed warm-up messages per run.
    pub warmup: usize,
    /// Partitions per topic.
    pub partitions: i32,
    /// Whether the raw client carried herald's envelope headers.
    pub raw_envelope: bool,
}

/// The median (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The settings a summary records.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Raw window.
    pub window: usize,
    /// herald batch.
    pub batch: usize,
    /// herald calls in flight.
    pub calls: usize,
    /// Warm-up messages.
    pub warmup: usize,
    /// Partitions.
    pub partitions: i32,
    /// Raw client carries the envelope.
    pub raw_envelope: bool,
}

/// Summarises the runs of one transport × scenario.
pub fn summarize(
    transport: Transport,
    scenario: Scenario,
    runs: &[RunResult],
    settings: Settings,
) -> Summary {
    let of = |s: System| runs.iter().filter(move |r| r.system == s);
    let herald: Vec<f64> = of(System::Herald).map(|r| r.msgs_per_sec).collect();
    let raw: Vec<f64> = of(System::Raw).map(|r| r.msgs_per_sec).collect();
    let ratios: Vec<f64> = of(System::Herald)
        .filter_map(|h| {
            of(System::Raw)
                .find(|r| r.round == h.round)
                .map(|r| h.msgs_per_sec / r.msgs_per_sec)
        })
        .collect();
    let first = runs.first();
    Summary {
        summary: true,
        transport,
        scenario,
        ratio_median: median(&ratios),
        herald_msgs_per_sec_median: median(&herald).unwrap_or(0.0),
        raw_msgs_per_sec_median: median(&raw),
        herald_peak_rss_bytes: of(System::Herald)
            .map(|r| r.peak_rss_bytes)
            .max()
            .unwrap_or(0),
        raw_peak_rss_bytes: of(System::Raw).map(|r| r.peak_rss_bytes).max(),
        rounds: runs.iter().map(|r| r.round).max().unwrap_or(0),
        messages: first.map_or(0, |r| r.messages),
        size: first.map_or(0, |r| r.size),
        window: settings.window,
        batch: settings.batch,
        calls: settings.calls,
        warmup: settings.warmup,
        partitions: settings.partitions,
        raw_envelope: settings.raw_envelope,
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// A table of the runs and the summary, for people.
pub fn table(runs: &[RunResult], s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}: {} messages x {} B, raw window {}, herald batch {} x {} calls, warm-up {}, {} partitions{}",
        s.transport,
        s.scenario,
        s.messages,
        s.size,
        s.window,
        s.batch,
        s.calls,
        s.warmup,
        s.partitions,
        if s.raw_envelope {
            ", raw carries the envelope"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "{:>5}  {:<6}  {:>9}  {:>12}  {:>10}",
        "round", "system", "seconds", "msgs/s", "peak RSS"
    );
    for r in runs {
        let _ = writeln!(
            out,
            "{:>5}  {:<6}  {:>9.3}  {:>12.0}  {:>6.1} MiB",
            r.round,
            r.system.to_string(),
            r.seconds,
            r.msgs_per_sec,
            mib(r.peak_rss_bytes)
        );
    }
    let _ = write!(
        out,
        "median: herald {:.0} msgs/s",
        s.herald_msgs_per_sec_median
    );
    if let (Some(raw), Some(ratio)) = (s.raw_msgs_per_sec_median, s.ratio_median) {
        let _ = write!(out, ", raw {raw:.0} msgs/s, herald/raw {ratio:.3}");
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(system: System, round: usize, mps: f64, rss: u64) -> RunResult {
        RunResult {
            system,
            transport: Transport::Kafka,
            scenario: Scenario::Publish,
            round,
            messages: 1000,
            size: 256,
            seconds: 1000.0 / mps,
            msgs_per_sec: mps,
            peak_rss_bytes: rss,
        }
    }

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn ratio_is_the_median_of_paired_rounds() {
        let runs = vec![
            run(System::Herald, 1, 90.0, 10),
            run(System::Raw, 1, 100.0, 20),
            run(System::Raw, 2, 50.0, 30),
            run(System::Herald, 2, 100.0, 5),
            run(System::Herald, 3, 80.0, 7),
            run(System::Raw, 3, 100.0, 8),
        ];
        let settings = Settings {
            window: 10,
            batch: 10,
            calls: 1,
            warmup: 1,
            partitions: 4,
            raw_envelope: false,
        };
        let s = summarize(Transport::Kafka, Scenario::Publish, &runs, settings);
        // Ratios 0.9, 2.0, 0.8 → 0.9; not median(herald) / median(raw) = 90/100.
        assert_eq!(s.ratio_median, Some(0.9));
        assert_eq!(s.herald_msgs_per_sec_median, 90.0);
        assert_eq!(s.raw_msgs_per_sec_median, Some(100.0));
        assert_eq!(s.herald_peak_rss_bytes, 10);
        assert_eq!(s.raw_peak_rss_bytes, Some(30));
        assert_eq!(s.rounds, 3);
        let json: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(json["summary"], true);
        assert_eq!(json["transport"], "kafka");
        assert!(table(&runs, &s).contains("herald/raw 0.900"));
    }

    #[test]
    fn memory_summary_has_no_ratio() {
        let mut r = run(System::Herald, 1, 1e6, 1);
        r.transport = Transport::Memory;
        let settings = Settings {
            window: 1,
            batch: 1,
            calls: 1,
            warmup: 1,
            partitions: 1,
            raw_envelope: false,
        };
        let s = summarize(Transport::Memory, Scenario::Roundtrip, &[r], settings);
        assert_eq!(s.ratio_median, None);
        let json = serde_json::to_value(&s).unwrap();
        assert!(json["ratio_median"].is_null());
    }

    #[test]
    fn run_line_has_the_documented_fields() {
        let v = serde_json::to_value(run(System::Raw, 2, 10.0, 3)).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "messages",
                "msgs_per_sec",
                "peak_rss_bytes",
                "round",
                "scenario",
                "seconds",
                "size",
                "system",
                "transport"
            ]
        );
    }
}
