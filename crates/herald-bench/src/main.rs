//! `herald-bench`: herald against the raw clients — same broker, same settings, same run.
//!
//! # Highlights
//! * For each round, herald (`Publisher::publish`, `Subscriber::subscribe` + `ack()`) and
//!   the raw client (rdkafka `FutureProducer`/`StreamConsumer`, async-nats JetStream) run
//!   one after the other on the same broker, each on a fresh topic/stream, after a
//!   warm-up; the order alternates between rounds.
//! * Every run is a child process of the harness (it re-executes itself with a hidden
//!   `--child herald|raw`), so peak RSS (`VmHWM`) and allocator state belong to one run.
//! * Both sides get the same broker settings: herald's effective librdkafka config for
//!   the raw rdkafka clients (idempotence, `acks=all`, linger, session timeouts), the same
//!   JetStream streams and consumer settings for NATS, and at-least-once with one ack or
//!   stored offset per message on both sides (see the `kafka` and `nats` modules).
//! * Each run checks its work: the broker holds exactly the published count, each
//!   consumed payload has the right size, the memory topic ends with no lag.
//!
//! # Non-goals
//! * Latency percentiles: this measures throughput.
//! * Remote brokers and clusters: the figures describe the brokers named by the
//!   environment, usually local ones.
//!
//! # Example
//! ```text
//! eval "$(bash ci/brokers.sh up)"
//! cargo build --release -p herald-bench
//! target/release/herald-bench --transport kafka --scenario publish \
//!     --messages 100000 --size 256 --rounds 5 --format json
//! ```
//! prints one line per run,
//! `{"system":"herald","transport":"kafka","scenario":"publish","round":1,"messages":100000,
//! "size":256,"seconds":…,"msgs_per_sec":…,"peak_rss_bytes":…}`, and a last line
//! `{"summary":true,"transport":"kafka","scenario":"publish","ratio_median":…,…}` with the
//! median over rounds of herald msgs/s ÷ raw msgs/s of the same round.
//!
//! # Scenarios
//! * `publish`: the warm-up, then `--messages` published and acknowledged. herald calls
//!   `publish` with batches of `--window / --calls` messages, `--calls` (2) calls in flight;
//!   the raw client keeps at most `--window` publishes unacknowledged (a sliding window).
//!   Both sides therefore have at most a window unacknowledged.
//! * `consume`: the topic is pre-filled (untimed, through herald's publisher, so both
//!   sides read identical records); the warm-up is consumed untimed, then the timed
//!   messages are drained, each acknowledged.
//! * `roundtrip`: with the consumer joined and warmed up, publishing (a task) and
//!   consuming run concurrently; the time ends when the last message is handled.
//!
//! # Transports
//! `kafka` (`HERALD_KAFKA_BROKERS`), `nats` (`HERALD_NATS_URL`), `memory` (herald only).
//!
//! # Features
//! This crate has no optional features.

mod cli;
mod herald_side;
mod kafka;
mod memory;
mod nats;
mod report;
mod workload;

use std::{
    io::Read as _,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use clap::Parser as _;

use crate::{
    cli::{Args, Format, System, Transport},
    report::{RunResult, Settings},
    workload::{Result, Workload},
};

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match args.child {
        Some(system) => child(&args, system),
        None => parent(&args),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One run of one system; prints its result line.
fn child(args: &Args, system: System) -> Result<()> {
    let threads = args.threads();
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    let w = Workload::from_args(args);
    let measured = rt.block_on(async {
        match (args.transport, system) {
            (Transport::Kafka, s) => kafka::run(s, args.scenario, &w).await,
            (Transport::Nats, s) => nats::run(s, args.scenario, &w).await,
            (Transport::Memory, System::Herald) => memory::run(args.scenario, &w).await,
            (Transport::Memory, System::Raw) => {
                Err("the memory transport has no raw client".into())
            }
        }
    })?;
    drop(rt);
    let r = RunResult {
        system,
        transport: args.transport,
        scenario: args.scenario,
        round: args.round,
        messages: measured.messages,
        size: args.size,
        seconds: measured.seconds,
        msgs_per_sec: measured.messages as f64 / measured.seconds.max(1e-9),
        peak_rss_bytes: workload::peak_rss_bytes(),
    };
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// Runs every round, herald and raw alternately, each in a child process.
fn parent(args: &Args) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut runs = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let mut order = args.systems().to_vec();
        if round % 2 == 0 {
            order.reverse();
        }
        for system in order {
            let r = run_child(&exe, args, system, round)?;
            if args.format == Format::Json {
                println!("{}", serde_json::to_string(&r)?);
            }
            runs.push(r);
        }
    }
    let settings = Settings {
        window: args.window(),
        batch: args.batch(),
        calls: args.calls.max(1),
        warmup: args.warmup(),
        partitions: args.partitions,
        raw_envelope: args.raw_envelope,
    };
    let summary = report::summarize(args.transport, args.scenario, &runs, settings);
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&summary)?),
        Format::Table => print!("{}", report::table(&runs, &summary)),
    }
    Ok(())
}

fn run_child(
    exe: &std::path::Path,
    args: &Args,
    system: System,
    round: usize,
) -> Result<RunResult> {
    let what = format!(
        "{} {} {system} round {round}",
        args.transport, args.scenario
    );
    let mut child = Command::new(exe)
        .args(args.child_args(system, round))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(args.run_timeout);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: no result within {} s", args.run_timeout).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out)?;
    }
    if !status.success() {
        return Err(format!("{what} failed ({status})").into());
    }
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("{what}: no result line"))?;
    Ok(serde_json::from_str(line)?)
}
