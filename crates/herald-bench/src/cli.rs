//! Command line of the harness.

use std::fmt;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

/// Which broker a run talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Kafka protocol through rdkafka (`HERALD_KAFKA_BROKERS`).
    Kafka,
    /// NATS JetStream through async-nats (`HERALD_NATS_URL`).
    Nats,
    /// herald's in-process transport (herald only: there is no raw client).
    Memory,
}

/// What a run times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Publish `messages` and wait until the broker acknowledged every one.
    Publish,
    /// Drain `messages` pre-filled messages, one ack (or stored offset) per message.
    Consume,
    /// Publish and consume concurrently; until the last message is handled.
    Roundtrip,
}

/// Who does the work in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// herald's `Publisher` / `Subscriber` over the adapter.
    Herald,
    /// The raw client (rdkafka / async-nats), written the way an expert would.
    Raw,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line, then a summary line.
    Json,
    /// A human-readable table.
    Table,
}

macro_rules! display_lowercase {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let v = self.to_possible_value().expect("no skipped variants");
                f.write_str(v.get_name())
            }
        }
    )*};
}
display_lowercase!(Transport, Scenario, System);

/// herald against the raw client, same broker, same settings, same run.
///
/// Each round runs herald and the raw client one after the other (the order alternates
/// between rounds), each in a fresh child process, on a fresh topic/stream, after a
/// warm-up. Broker addresses come from `HERALD_KAFKA_BROKERS` and `HERALD_NATS_URL`
/// (`eval "$(bash ci/brokers.sh up)"`).
#[derive(Clone, Debug, Parser)]
#[command(name = "herald-bench", version)]
pub struct Args {
    /// The broker.
    #[arg(long, value_enum)]
    pub transport: Transport,
    /// What to time.
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Messages timed per run (the warm-up comes on top).
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Partitions of each fresh Kafka topic (and of each memory topic).
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Rounds; each round runs herald and raw once.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// The raw client's bound of unacknowledged publishes (and herald-nats'
    /// `max_pending_acks`). Default: Kafka 10 000, NATS 256, memory 1 000.
    #[arg(long)]
    pub window: Option<usize>,
    /// herald's `publish` calls in flight at once. A call resolves when its whole batch
    /// is acknowledged, so one call at a time empties the pipeline at every batch end;
    /// the raw client's sliding window never does. Two calls of half a window each keep
    /// at most a window unacknowledged, as on the raw side.
    #[arg(long, default_value_t = 2)]
    pub calls: usize,
    /// herald's messages per `publish` call. Default: the window divided by `--calls`.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Untimed messages sent (and consumed) before the timed ones. Default: a tenth of
    /// `--messages`, between 100 and 10 000.
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Distinct message keys, used round-robin.
    #[arg(long, default_value_t = 64)]
    pub keys: usize,
    /// Make the raw client carry herald's envelope too, to separate the envelope's cost
    /// from the adapter's: it publishes the CloudEvents id and specversion headers, and
    /// the raw Kafka consumer reads each record's id (as a consumer that dedupes must).
    #[arg(long)]
    pub raw_envelope: bool,
    /// herald's `SubscribeSpec::max_in_flight` (its default is 256); on NATS also the raw
    /// consumer's `max_ack_pending` and pull batch, so both sides keep the same settings.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Give herald's messages ids from a thread-local RNG (`Message::with_id`) instead of
    /// `Message::new`, whose UUIDv7 costs a getrandom syscall: separates the transport's
    /// cost from the id's.
    #[arg(long)]
    pub fast_ids: bool,
    /// Tokio worker threads in each run (1: a current-thread runtime). Default: memory 1,
    /// brokers 2.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds a single run may take before it counts as failed.
    #[arg(long, default_value_t = 300)]
    pub run_timeout: u64,
    /// Internal: run one system once and print its result line.
    #[arg(long, value_enum, hide = true)]
    pub child: Option<System>,
    /// Internal: the round a child runs in.
    #[arg(long, hide = true, default_value_t = 1)]
    pub round: usize,
}

impl Args {
    /// The raw client's window.
    pub fn window(&self) -> usize {
        self.window
            .unwrap_or(match self.transport {
                Transport::Kafka => 10_000,
                Transport::Nats => 256,
                Transport::Memory => 1_000,
            })
            .max(1)
    }

    /// herald's batch size.
    pub fn batch(&self) -> usize {
        self.batch
            .unwrap_or_else(|| self.window().div_ceil(self.calls.max(1)))
            .max(1)
    }

    /// Untimed warm-up messages.
    pub fn warmup(&self) -> usize {
        self.warmup
            .unwrap_or_else(|| (self.messages / 10).clamp(100, 10_000))
    }

    /// Tokio worker threads.
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or(match self.transport {
                Transport::Memory => 1,
                _ => 2,
            })
            .max(1)
    }

    /// The systems compared on this transport.
    pub fn systems(&self) -> &'static [System] {
        match self.transport {
            Transport::Memory => &[System::Herald],
            _ => &[System::Herald, System::Raw],
        }
    }

    /// The arguments that make a child process run `system` in `round`.
    pub fn child_args(&self, system: System, round: usize) -> Vec<String> {
        let mut v = vec![
            "--transport".into(),
            self.transport.to_string(),
            "--scenario".into(),
            self.scenario.to_string(),
            "--messages".into(),
            self.messages.to_string(),
            "--size".into(),
            self.size.to_string(),
            "--partitions".into(),
            self.partitions.to_string(),
            "--window".into(),
            self.window().to_string(),
            "--batch".into(),
            self.batch().to_string(),
            "--calls".into(),
            self.calls.to_string(),
            "--warmup".into(),
            self.warmup().to_string(),
            "--keys".into(),
            self.keys.to_string(),
            "--threads".into(),
            self.threads().to_string(),
            "--max-in-flight".into(),
            self.max_in_flight.to_string(),
            "--child".into(),
            system.to_string(),
            "--round".into(),
            round.to_string(),
        ];
        if self.raw_envelope {
            v.push("--raw-envelope".into());
        }
        if self.fast_ids {
            v.push("--fast-ids".into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Args {
        let mut argv = vec!["herald-bench"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn defaults_per_transport() {
        let a = parse(&["--transport", "kafka", "--scenario", "publish"]);
        assert_eq!(a.window(), 10_000);
        assert_eq!(a.warmup(), 10_000);
        assert_eq!(a.threads(), 2);
        assert_eq!(a.systems(), [System::Herald, System::Raw]);
        let m = parse(&[
            "--transport",
            "memory",
            "--scenario",
            "roundtrip",
            "--messages",
            "500",
        ]);
        assert_eq!(m.window(), 1_000);
        assert_eq!(m.warmup(), 100);
        assert_eq!(m.threads(), 1);
        assert_eq!(m.systems(), [System::Herald]);
    }

    #[test]
    fn child_args_round_trip() {
        let a = parse(&[
            "--transport",
            "nats",
            "--scenario",
            "consume",
            "--messages",
            "1234",
            "--raw-envelope",
            "--format",
            "json",
        ]);
        let mut argv = vec!["herald-bench".to_string()];
        argv.extend(a.child_args(System::Raw, 3));
        let c = Args::try_parse_from(argv).unwrap();
        assert_eq!(c.child, Some(System::Raw));
        assert_eq!(c.round, 3);
        assert_eq!(c.transport, Transport::Nats);
        assert_eq!(c.scenario, Scenario::Consume);
        assert_eq!(c.messages, 1234);
        assert_eq!(c.window(), a.window());
        assert_eq!(c.calls, 2);
        assert_eq!(c.batch(), 128, "the batch defaults to the window / calls");
        assert_eq!(c.warmup(), a.warmup());
        assert!(c.raw_envelope);
    }

    #[test]
    fn names_are_lowercase() {
        assert_eq!(Transport::Nats.to_string(), "nats");
        assert_eq!(Scenario::Roundtrip.to_string(), "roundtrip");
        assert_eq!(System::Raw.to_string(), "raw");
        assert_eq!(
            serde_json::to_string(&System::Herald).unwrap(),
            "\"herald\""
        );
    }
}
