//! A group member dies without a clean close; the survivor takes over its partitions.
//!
//! The dying member runs in a child process (this test binary, running the ignored
//! `rebalance_child_member` case) that is killed with SIGKILL mid-stream — no close, no
//! final commit, no group leave: the broker only notices through the session timeout.

mod common;

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use herald_core::{Message, Publisher, SubscribeSpec, Subscriber};
use herald_kafka::KafkaSubscriber;
use herald_testkit::unique;
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use tokio::time::Instant;

const CHILD_ENV: &str = "HERALD_KAFKA_REBALANCE_CHILD";
const PARTITIONS: i32 = 4;
const TOTAL: usize = 20_000;
const CHILD_MAX_IN_FLIGHT: usize = 64;
const PARENT_MAX_IN_FLIGHT: usize = 32;

/// (partition, offset, message number)
type Handled = Arc<Mutex<Vec<(i32, i64, usize)>>>;

/// The member that gets killed. Runs only as the child of
/// `killed_member_is_taken_over_with_bounded_duplicates`; prints `H <partition>
/// <offset> <n>` for every message it handled, before acknowledging it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of killed_member_is_taken_over_with_bounded_duplicates"]
async fn rebalance_child_member() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (topic, group) = spec.split_once(' ').expect("topic group");
    let subscriber = KafkaSubscriber::builder(common::brokers().await)
        .commit_interval(Duration::from_millis(500))
        .build()
        .expect("subscriber");
    let mut sub = subscriber
        .subscribe(SubscribeSpec::new(topic, group).max_in_flight(CHILD_MAX_IN_FLIGHT))
        .await
        .expect("subscribe");
    println!("JOINED");
    while let Some(d) = sub.next().await {
        let Ok(d) = d else { continue };
        tokio::time::sleep(Duration::from_millis(1)).await;
        let n: usize = std::str::from_utf8(&d.message.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("numbered payload");
        println!(
            "H {} {} {n}",
            d.origin.get("partition").expect("partition"),
            d.origin.get("offset").expect("offset")
        );
        let _ = d.ack().await;
    }
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn committed(brokers: &str, group: &str, topic: &str) -> HashMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("offset reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    got.elements()
        .iter()
        .map(|e| {
            let o = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            (e.partition(), o)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_member_is_taken_over_with_bounded_duplicates() {
    let brokers = common::brokers().await;
    let topic = unique("hk-rebalance");
    let group = unique("g");
    common::create_topic(&topic, PARTITIONS).await;

    // The member to be killed joins first.
    let exe = std::env::current_exe().expect("test binary");
    let child = Command::new(exe)
        .args([
            "rebalance_child_member",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{topic} {group}"))
        .env("HERALD_KAFKA_BROKERS", &brokers)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child member");
    let mut child = Killed(child);
    let stdout = child.0.stdout.take().expect("child stdout");
    let by_child: Handled = Arc::default();
    let (joined_tx, joined_rx) = std::sync::mpsc::channel();
    let reader = {
        let by_child = by_child.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest's "test … " prefix shares the first line.
                if line.ends_with("JOINED") {
                    let _ = joined_tx.send(());
                }
                let mut f = line.split(' ');
                if f.next() == Some("H") {
                    let p = f.next().and_then(|v| v.parse().ok()).expect("partition");
                    let o = f.next().and_then(|v| v.parse().ok()).expect("offset");
                    let n = f.next().and_then(|v| v.parse().ok()).expect("n");
                    by_child.lock().expect("lock").push((p, o, n));
                }
            }
        })
    };
    tokio::task::spawn_blocking(move || joined_rx.recv_timeout(Duration::from_secs(60)))
        .await
        .expect("join")
        .expect("the child member joined the group");
    // The survivor joins; `subscribe` returns once the group has rebalanced, so both
    // members own partitions before any message exists (no duplicates come from this
    // first, graceful rebalance).
    let by_parent: Handled = Arc::default();
    let mut sub = common::subscriber()
        .await
        .subscribe(SubscribeSpec::new(&topic, &group).max_in_flight(PARENT_MAX_IN_FLIGHT))
        .await
        .expect("subscribe");
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let survivor = {
        let h = by_parent.clone();
        tokio::spawn(async move {
            loop {
                let d = tokio::select! {
                    _ = &mut stop_rx => break,
                    d = sub.next() => d,
                };
                let Some(d) = d else { break };
                let Ok(d) = d else { continue };
                let n = std::str::from_utf8(&d.message.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .expect("numbered payload");
                let p = d.origin.get("partition").expect("partition") as i32;
                let o = d.origin.get("offset").expect("offset");
                h.lock().expect("lock").push((p, o, n));
                let _ = d.ack().await;
            }
            sub.close().await.expect("close");
        })
    };

    let publisher = common::publisher().await;
    let all: Vec<Message> = (0..TOTAL)
        .map(|i| Message::new(i.to_string()).with_key(format!("k{}", i % 97)))
        .collect();
    for chunk in all.chunks(2_000) {
        publisher
            .publish(&topic, chunk.to_vec())
            .await
            .expect("publish");
    }

    // Kill the child once both members are working (the partitions are split).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let c = by_child.lock().expect("lock").len();
        let p = by_parent.lock().expect("lock").len();
        if p > 0 && c >= 3_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "members never shared the work: child {c}, parent {p}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.0.kill();
    let _ = child.0.wait();
    reader.join().expect("reader thread");
    let (b, t, g) = (brokers.clone(), topic.clone(), group.clone());
    let committed_at_kill = tokio::task::spawn_blocking(move || committed(&b, &g, &t))
        .await
        .expect("join");
    let child_handled = by_child.lock().expect("lock").clone();

    // The survivor takes over and finishes everything.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen: HashSet<usize> = by_parent
            .lock()
            .expect("lock")
            .iter()
            .chain(child_handled.iter())
            .map(|&(_, _, n)| n)
            .collect();
        if seen.len() == TOTAL {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {TOTAL} messages handled after the member died",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(());
    survivor.await.expect("survivor");

    let parent_handled = by_parent.lock().expect("lock").clone();
    let mut times: HashMap<(i32, i64), usize> = HashMap::new();
    for &(p, o, _) in child_handled.iter().chain(parent_handled.iter()) {
        *times.entry((p, o)).or_default() += 1;
    }
    let duplicated: Vec<(i32, i64)> = times
        .iter()
        .filter(|&(_, &n)| n > 1)
        .map(|(&k, _)| k)
        .collect();
    let extra: usize = times.values().map(|n| n - 1).sum();
    // Only offsets that were not committed when the child died come again…
    for &(p, o) in &duplicated {
        let c = committed_at_kill.get(&p).copied().unwrap_or(0);
        assert!(
            o >= c,
            "offset {o} of partition {p} was committed ({c}) and still delivered twice"
        );
    }
    // …and no more than were uncommitted at the child, plus what the survivor had in
    // flight when the takeover revoked its own partitions.
    let mut child_max: HashMap<i32, i64> = HashMap::new();
    for &(p, o, _) in &child_handled {
        let m = child_max.entry(p).or_insert(o);
        *m = (*m).max(o);
    }
    // Summed over every partition the child ever handled: for those it had lost to the
    // parent before it died, the parent's commits are already past the child's work.
    let uncommitted_at_child: i64 = child_max
        .keys()
        .map(|p| {
            let top = child_max.get(p).copied().unwrap_or(-1) + 1;
            (top - committed_at_kill.get(p).copied().unwrap_or(0)).max(0)
        })
        .sum();
    let bound = uncommitted_at_child as usize + PARENT_MAX_IN_FLIGHT;
    println!(
        "child handled {}, parent {}, committed at kill {committed_at_kill:?}, \
         uncommitted at the child {uncommitted_at_child}, redelivered {extra} (bound {bound})",
        child_handled.len(),
        parent_handled.len()
    );
    assert!(
        extra <= bound,
        "{extra} duplicate deliveries, more than the {bound} that were uncommitted or in flight"
    );
    assert_eq!(
        times.len(),
        TOTAL,
        "every offset handled (distinct offsets seen)"
    );
}
