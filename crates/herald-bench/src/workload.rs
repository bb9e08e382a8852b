//! What every run shares: the messages, the timing, the peak RSS, names and errors.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_core::{Message, SubscribeSpec};

use crate::cli::{Args, Scenario, System};

/// Errors of a run: anything, with a message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// Result of a run step.
pub type Result<T, E = BoxError> = std::result::Result<T, E>;

/// How long a consumer may see nothing before the run counts as stalled.
pub const STALL: Duration = Duration::from_secs(60);

/// The messages of a run and how they are sent.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Messages timed.
    pub messages: usize,
    /// Untimed messages before them.
    pub warmup: usize,
    /// The raw client's bound of unacknowledged publishes.
    pub window: usize,
    /// herald's messages per `publish` call.
    pub batch: usize,
    /// herald's `publish` calls in flight at once.
    pub calls: usize,
    /// The payload every message carries (deterministic bytes).
    pub payload: Bytes,
    /// Keys, used round-robin.
    pub keys: Vec<Bytes>,
    /// Partitions per topic.
    pub partitions: i32,
    /// Whether the raw client carries herald's envelope headers.
    pub raw_envelope: bool,
    /// herald's subscription in-flight bound (and the NATS raw consumer's).
    pub max_in_flight: usize,
    /// Ids from [`fast_id`] instead of `Message::new`'s.
    pub fast_ids: bool,
}

impl Workload {
    /// The workload `args` describe.
    pub fn from_args(args: &Args) -> Self {
        Self {
            messages: args.messages,
            warmup: args.warmup(),
            window: args.window(),
            batch: args.batch(),
            calls: args.calls.max(1),
            payload: payload(args.size),
            keys: (0..args.keys.max(1))
                .map(|i| Bytes::from(format!("k{i}")))
                .collect(),
            partitions: args.partitions.max(1),
            raw_envelope: args.raw_envelope,
            max_in_flight: args.max_in_flight.max(1),
            fast_ids: args.fast_ids,
        }
    }

    /// The key of message `i`.
    pub fn key(&self, i: usize) -> &Bytes {
        &self.keys[i % self.keys.len()]
    }

    /// herald message `i`: a fresh id (UUIDv7), the key, the shared payload.
    pub fn message(&self, i: usize) -> Message {
        let m = if self.fast_ids {
            Message::with_id(fast_id(), self.payload.clone())
        } else {
            Message::new(self.payload.clone())
        };
        m.with_key(self.key(i).clone())
    }

    /// herald's subscription to `topic` for `group`.
    pub fn spec(&self, topic: &str, group: &str) -> SubscribeSpec {
        SubscribeSpec::new(topic, group).max_in_flight(self.max_in_flight)
    }

    /// herald messages `from..to`.
    pub fn batch(&self, from: usize, to: usize) -> Vec<Message> {
        (from..to).map(|i| self.message(i)).collect()
    }
}

/// A UUIDv7 string from the wall clock and a thread-local RNG, formatted without `fmt`.
pub fn fast_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let id = uuid::Builder::from_unix_timestamp_millis(ms, &rand::random()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    String::from(id.hyphenated().encode_lower(&mut buf))
}

/// `size` deterministic, incompressible-looking bytes.
pub fn payload(size: usize) -> Bytes {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// The timed part of a run.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// Messages timed.
    pub messages: usize,
    /// Seconds they took.
    pub seconds: f64,
}

impl Measured {
    /// `messages` handled since `start`.
    pub fn since(start: Instant, messages: usize) -> Self {
        Self {
            messages,
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}

/// A name no other run uses: `hb-<scenario>-<system>-<pid>-<nanos>` plus `suffix`.
pub fn unique(scenario: Scenario, system: System, suffix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "hb-{scenario}-{system}-{}-{nanos}{suffix}",
        std::process::id()
    )
}

/// An environment variable that must be set, with a how-to when it is not.
pub fn env(name: &str) -> Result<String> {
    std::env::var(name).map_err(|_| {
        format!("{name} is not set: start the brokers with `eval \"$(bash ci/brokers.sh up)\"`")
            .into()
    })
}

/// How long handling `n` messages may take before the run counts as stalled: [`STALL`]
/// plus 1 ms per message (one deadline for the whole loop: a timer per message would
/// cost more than the memory transport's delivery).
pub fn drain_limit(n: usize) -> Duration {
    STALL + Duration::from_millis(n as u64)
}

/// This process's peak resident set size (`VmHWM` of `/proc/self/status`), in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_vm_hwm(&s))
        .unwrap_or(0)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_deterministic_and_sized() {
        assert_eq!(payload(256).len(), 256);
        assert_eq!(payload(256), payload(256));
        let p = payload(256);
        let distinct: std::collections::HashSet<_> = p.iter().collect();
        assert!(distinct.len() > 100, "bytes vary");
    }

    #[test]
    fn vm_hwm_parses() {
        let s = "Name:\tx\nVmPeak:\t  9 kB\nVmHWM:\t   1234 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(s), Some(1234 * 1024));
        assert_eq!(parse_vm_hwm("nothing"), None);
        assert!(peak_rss_bytes() > 0, "linux exposes VmHWM");
    }

    #[test]
    fn messages_cycle_keys_and_get_fresh_ids() {
        let w = Workload {
            messages: 10,
            warmup: 0,
            window: 4,
            batch: 4,
            calls: 1,
            payload: payload(8),
            keys: vec![Bytes::from("a"), Bytes::from("b")],
            partitions: 1,
            raw_envelope: false,
            max_in_flight: 1,
            fast_ids: false,
        };
        let b = w.batch(0, 3);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].key.as_deref(), Some(&b"a"[..]));
        assert_eq!(b[1].key.as_deref(), Some(&b"b"[..]));
        assert_eq!(b[2].key.as_deref(), Some(&b"a"[..]));
        assert_ne!(b[0].id, b[1].id);
        assert_eq!(b[0].payload, w.payload);
    }

    #[test]
    fn fast_ids_are_uuid_v7() {
        let a = fast_id();
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 7);
        assert_ne!(a, fast_id());
    }

    #[test]
    fn unique_names_differ() {
        let a = unique(Scenario::Publish, System::Herald, "");
        let b = unique(Scenario::Publish, System::Herald, "");
        assert_ne!(a, b);
        assert!(a.starts_with("hb-publish-herald-"));
    }
}
