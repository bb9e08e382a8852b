//! [`on_duplicate`]: a callback for every duplicate the dedupe layers catch, without a
//! metrics stack.
//!
//! Crash and fault harnesses run consumers as child processes that may be SIGKILLed at any
//! moment, so a count they keep must leave the process as it happens (a line on stdout),
//! not in a snapshot read at the end. This installs a process-wide `metrics` recorder
//! that forwards increments of [`DUPLICATES`] to a callback and drops every other metric.
//! (`metrics-util`'s recorders keep counts for later reads, which a SIGKILL would lose.)

use std::sync::Arc;

use herald_core::middleware::dedupe::metric_names::DUPLICATES;
use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

/// Installs the process-wide `metrics` recorder: `f` runs with each increment of the
/// dedupe duplicate counter; other metrics are dropped.
///
/// # Errors
/// When a global recorder is already installed.
///
/// # Examples
/// ```
/// herald_dedupe::probe::on_duplicate(|n| println!("{n} duplicate(s)")).ok();
/// ```
pub fn on_duplicate(
    f: impl Fn(u64) + Send + Sync + 'static,
) -> Result<(), metrics::SetRecorderError<impl Recorder>> {
    metrics::set_global_recorder(Probe(Arc::new(Forward(Box::new(f)))))
}

struct Forward(Box<dyn Fn(u64) + Send + Sync>);

impl CounterFn for Forward {
    fn increment(&self, value: u64) {
        (self.0)(value);
    }
    fn absolute(&self, _: u64) {}
}

struct Probe(Arc<Forward>);

impl Recorder for Probe {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        if key.name() == DUPLICATES {
            Counter::from_arc(self.0.clone())
        } else {
            Counter::noop()
        }
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn forwards_duplicate_increments_only() {
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        let probe = Probe(Arc::new(Forward(Box::new(move |n| {
            s.fetch_add(n, Ordering::Relaxed);
        }))));
        metrics::with_local_recorder(&probe, || {
            metrics::counter!(DUPLICATES, "handler" => "h").increment(2);
            metrics::counter!("herald_dedupe_claims_total").increment(5);
            metrics::counter!(DUPLICATES).increment(1);
        });
        assert_eq!(seen.load(Ordering::Relaxed), 3);
    }
}
