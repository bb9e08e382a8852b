//! The order saga: orders, inventory, payments and shipping as separate services
//! (separate handlers, separate consumer groups), first **choreographed** — each service
//! reacts to the others' events — then **orchestrated** by a saga that sends commands and
//! compensates in reverse order. Payment is declined for every order whose number ends in
//! 7; those orders get their stock released and are cancelled. A CQRS read model built from
//! every service's events answers the queries at the end.
//!
//! ```text
//! cargo run -p herald-examples --bin order-saga                                  # both modes, memory, 20 orders
//! cargo run -p herald-examples --bin order-saga -- --mode orchestration --orders 200
//! cargo run -p herald-examples --bin order-saga -- --transport kafka             # HERALD_KAFKA_BROKERS
//! cargo run -p herald-examples --bin order-saga -- --transport nats --store postgres
//! ```
//!
//! It prints a timeline per order and a summary (completed, cancelled, compensated,
//! dead-lettered, duplicates suppressed by the payments dedupe) and exits with status 0
//! only if the read model shows the expected outcome for every order, the inventory's stock
//! adds up, and the one invalid command was dead-lettered.

use std::time::Duration;

use clap::Parser;
use herald_examples::order::{
    Mode,
    run::{Report, RunConfig, StoreKind, run},
    transport::{Transport, TransportKind},
};

/// Which modes to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    /// Choreography, then orchestration.
    Both,
    /// Choreography only.
    Choreography,
    /// Orchestration only.
    Orchestration,
}

/// Orders, inventory, payments and shipping: choreography vs orchestration.
#[derive(Parser, Debug)]
#[command(name = "order-saga")]
struct Args {
    /// Coordination style.
    #[arg(long, value_enum, default_value = "both")]
    mode: ModeArg,
    /// Transport.
    #[arg(long, value_enum, default_value = "memory")]
    transport: TransportKind,
    /// Number of orders.
    #[arg(long, default_value_t = 20)]
    orders: u32,
    /// Where saga state and the read model live.
    #[arg(long, value_enum, default_value = "memory")]
    store: StoreKind,
    /// Seconds to wait for every order to end.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Print at most this many order timelines (all by default).
    #[arg(long)]
    timelines: Option<usize>,
}

fn print_report(r: &Report, timelines: usize) {
    println!("\n=== {} ===", r.mode.as_str());
    for v in r.orders.values().take(timelines) {
        let line: Vec<String> = v
            .sorted_timeline()
            .into_iter()
            .map(|(ms, m)| {
                if ms == 0.0 {
                    m.what
                } else {
                    format!("{} (+{ms:.1} ms)", m.what)
                }
            })
            .collect();
        println!(
            "{} #{:<3} {:<9} {}",
            v.order_id,
            v.number,
            format!("{:?}", v.status()),
            line.join(" → ")
        );
    }
    if r.orders.len() > timelines {
        println!("… {} more orders", r.orders.len() - timelines);
    }
    println!("queries:");
    for q in &r.queries {
        println!("  {q}");
    }
    for s in &r.stock {
        println!(
            "  stock {:<5} available {:>4}, reserved {}",
            s.sku, s.available, s.reserved
        );
    }
    if !r.sagas.is_empty() {
        println!("  sagas: {:?}", r.sagas);
    }
    println!(
        "summary [{}]: {} completed, {} cancelled, {} compensated, {} dead-lettered, {} duplicates suppressed ({} injected), {:.2}s",
        r.mode.as_str(),
        r.completed,
        r.cancelled,
        r.compensated,
        r.dead_lettered,
        r.duplicates_suppressed,
        r.duplicates_injected,
        r.elapsed.as_secs_f64(),
    );
    if r.duplicates_suppressed < r.duplicates_injected {
        println!(
            "  ({} duplicates never reached the consumer: NATS drops a republished message id within its duplicate window)",
            r.duplicates_injected - r.duplicates_suppressed
        );
    }
    for p in &r.problems {
        println!("  MISMATCH: {p}");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let args = Args::parse();
    let modes: &[Mode] = match args.mode {
        ModeArg::Both => &[Mode::Choreography, Mode::Orchestration],
        ModeArg::Choreography => &[Mode::Choreography],
        ModeArg::Orchestration => &[Mode::Orchestration],
    };
    let run_id = format!(
        "order-saga-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    );
    let cfg = RunConfig {
        orders: args.orders,
        store: args.store,
        timeout: Duration::from_secs(args.timeout),
        step_timeout: Duration::from_secs(30),
        run_id,
    };
    let transport = Transport::connect(args.transport).await?;
    println!(
        "order-saga: {} orders on {:?} (stores: {:?}); payment is declined for every order number ending in 7",
        args.orders, args.transport, args.store
    );
    let mut ok = true;
    for mode in modes {
        let report = run(*mode, &transport, &cfg).await?;
        print_report(&report, args.timelines.unwrap_or(usize::MAX));
        ok &= report.problems.is_empty();
    }
    transport.publisher.close().await?;
    if ok {
        println!("\nOK: the read model matches the expected outcome of every order");
        Ok(())
    } else {
        println!("\nFAILED: the read model does not match the expected outcomes");
        std::process::exit(1);
    }
}
