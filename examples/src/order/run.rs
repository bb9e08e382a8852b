//! One run of the order flow in one mode: start the services, place the orders, wait for
//! the read model, query it, check every order against its expected outcome.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use herald::{
    Codec, Event, JsonCodec, Publisher,
    patterns::{
        Middleware,
        cqrs::{MemoryReadModelStore, PgReadModelStore, Projector, ReadModelStore},
        request::{Requester, RequesterConfig},
        saga::{MemorySagaStore, PgSagaStore, SagaConfig, SagaEngine, SagaStatus, SagaStore},
        wait_for,
    },
};

use super::{
    CATALOG, Mode, Topics,
    events::{GetStock, InventoryReserved, PlaceOrder, ProcessPayment, StockLevel},
    orchestrator, order, payment_declined,
    read_model::{OrderStatus, OrderView, projection},
    services::{self, Duplicating, Inventory, Orders, Payments, Shipping, Stats},
    transport::Transport,
};

/// Where saga state and the read model live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// Process memory.
    Memory,
    /// PostgreSQL at `HERALD_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
    Postgres,
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Orders to place.
    pub orders: u32,
    /// Stores.
    pub store: StoreKind,
    /// How long to wait for every order to end.
    pub timeout: Duration,
    /// Saga step timeout (orchestration).
    pub step_timeout: Duration,
    /// Prefix of every topic and group of this process's runs.
    pub run_id: String,
}

/// What a run produced.
#[derive(Debug)]
pub struct Report {
    /// The mode.
    pub mode: Mode,
    /// The read model at the end, by order id.
    pub orders: BTreeMap<String, OrderView>,
    /// Stock levels answered by the inventory service over request/reply.
    pub stock: Vec<StockLevel>,
    /// Orders completed.
    pub completed: usize,
    /// Orders cancelled.
    pub cancelled: usize,
    /// Orders whose reserved stock was given back.
    pub compensated: usize,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Duplicate deliveries injected.
    pub duplicates_injected: u64,
    /// Duplicates the payments dedupe middleware acknowledged without charging again.
    pub duplicates_suppressed: u64,
    /// Sagas by status (orchestration).
    pub sagas: BTreeMap<&'static str, usize>,
    /// Query answers from the read model.
    pub queries: Vec<String>,
    /// Time from the first order to the last outcome.
    pub elapsed: Duration,
    /// Every way the outcome differs from what was expected (empty: success).
    pub problems: Vec<String>,
}

fn pg_url() -> String {
    std::env::var("HERALD_POSTGRES_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs `mode` on `transport`.
pub async fn run(
    mode: Mode,
    transport: &Transport,
    cfg: &RunConfig,
) -> Result<Report, Box<dyn std::error::Error>> {
    let t = Topics::new(&cfg.run_id, mode);
    transport.provision(&t.all(), &t.group("retention")).await?;
    let p = transport.publisher.clone();
    let sub = transport.subscriber.clone();
    let stats = Arc::new(Stats::default());
    let stack = services::stack(&p, &stats);

    // The four services, each started on its own.
    let inventory = Arc::new(Inventory::default());
    let payments = Arc::new(Payments::default());
    let shipping = Arc::new(Shipping::default());
    let orders = Arc::new(Orders::default());
    // Whoever triggers a payment publishes some of those triggers twice (same id).
    let trigger: Arc<dyn Publisher> = Arc::new(Duplicating::new(
        p.clone(),
        vec![InventoryReserved::ce_type(), ProcessPayment::ce_type()],
        stats.clone(),
    ));
    let inventory_pub = match mode {
        Mode::Choreography => trigger.clone(),
        Mode::Orchestration => p.clone(),
    };
    let mut running = vec![
        orders.router(mode, &t, &p, &stack).start(sub.clone()),
        inventory
            .router(mode, &t, &inventory_pub, &stack)
            .start(sub.clone()),
        payments
            .router(mode, &t, &p, &stack, &stats)
            .start(sub.clone()),
        shipping.router(mode, &t, &p, &stack).start(sub.clone()),
    ];

    // The read model.
    let (rm_store, saga_store): (Arc<dyn ReadModelStore>, Arc<dyn SagaStore>) = match cfg.store {
        StoreKind::Memory => (
            Arc::new(MemoryReadModelStore::new()),
            Arc::new(MemorySagaStore::new()),
        ),
        StoreKind::Postgres => {
            let url = pg_url();
            (
                Arc::new(PgReadModelStore::connect(&url).await?),
                Arc::new(PgSagaStore::connect(&url).await?),
            )
        }
    };
    let view_name = format!("{}-orders-view", t.prefix);
    let projector = Projector::with_store(projection(&view_name, &t), rm_store)
        .middleware(Middleware::layer(stack.clone()));
    running.push(projector.start(sub.clone()));

    // The orchestrator.
    let engine = (mode == Mode::Orchestration).then(|| {
        SagaEngine::with_middleware(
            orchestrator::order_saga(&t, cfg.step_timeout),
            saga_store.clone(),
            trigger.clone(),
            SagaConfig::default().group(t.group("orchestrator")),
            Middleware::layer(stack.clone()),
        )
    });
    let saga_running = engine.as_ref().map(|e| e.start(sub.clone()));

    let requester = Requester::connect(
        p.clone(),
        sub.clone(),
        &t.replies,
        RequesterConfig::default().group_prefix(t.group("requester")),
    )
    .await?;

    // Place the orders, and one invalid command the orders service must reject.
    let started = Instant::now();
    let mut batch = Vec::new();
    for n in 1..=cfg.orders {
        let o = order(n);
        let m = JsonCodec
            .to_message(&o)
            .await?
            .with_key(o.order_id.clone())
            .with_correlation_id(o.order_id.clone());
        batch.push(m);
    }
    let poison = PlaceOrder {
        order_id: "o-invalid".into(),
        number: 0,
        customer: "nobody".into(),
        sku: "apple".into(),
        qty: 0,
        amount_cents: 0,
    };
    batch.push(JsonCodec.to_message(&poison).await?.with_key("o-invalid"));
    p.publish(&t.orders_cmd, batch).await?;

    let n = cfg.orders as usize;
    let pj = projector.clone();
    let views = wait_for(cfg.timeout, || {
        let pj = pj.clone();
        async move {
            let all = pj.all().await.ok()?;
            (all.len() >= n && all.values().filter(|v| v.is_settled()).count() >= n).then_some(all)
        }
    })
    .await;
    let elapsed = started.elapsed();
    let mut problems = Vec::new();
    let views = match views {
        Some(v) => v,
        None => {
            let partial = projector.all().await.unwrap_or_default();
            problems.push(format!(
                "only {} of {n} orders reached an end within {:?}",
                partial.values().filter(|v| v.is_final()).count(),
                cfg.timeout
            ));
            partial
        }
    };
    let s = stats.clone();
    let dlq = wait_for(Duration::from_secs(30), || {
        let s = s.clone();
        async move { (s.dead_lettered() >= 1).then_some(()) }
    })
    .await;
    if dlq.is_none() {
        problems.push("the invalid PlaceOrder was not dead-lettered".into());
    }

    // Queries: the read model, and the inventory service over request/reply.
    let mut queries = Vec::new();
    let mut by_status: BTreeMap<OrderStatus, usize> = BTreeMap::new();
    for v in views.values() {
        *by_status.entry(v.status()).or_default() += 1;
    }
    queries.push(format!("orders by status: {by_status:?}"));
    let mut per_customer: BTreeMap<&str, (usize, i64)> = BTreeMap::new();
    for v in views
        .values()
        .filter(|v| v.status() == OrderStatus::Completed)
    {
        let e = per_customer.entry(v.customer.as_str()).or_default();
        e.0 += 1;
        e.1 += v.amount_cents;
    }
    if let Some((c, (k, cents))) = per_customer.iter().max_by_key(|(_, (_, cents))| *cents) {
        queries.push(format!(
            "best customer: {c} ({k} completed orders, {}.{:02})",
            cents / 100,
            cents % 100
        ));
    }
    // The inventory settles reservations as shipments reach it: ask until nothing is
    // reserved any more (or the timeout), then judge what it says.
    let stock_deadline = tokio::time::Instant::now() + cfg.timeout;
    let stock = loop {
        let mut stock = Vec::new();
        for (sku, _) in CATALOG {
            let level: StockLevel = requester
                .request_event(
                    &JsonCodec,
                    &t.inventory_query,
                    &GetStock { sku: sku.into() },
                    Duration::from_secs(30),
                )
                .await?;
            stock.push(level);
        }
        if stock.iter().all(|l| l.reserved == 0) || tokio::time::Instant::now() > stock_deadline {
            break stock;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every order against its expected outcome.
    let mut sold: HashMap<String, i64> = HashMap::new();
    for num in 1..=cfg.orders {
        let o = order(num);
        let Some(v) = views.get(&o.order_id) else {
            problems.push(format!("{}: missing from the read model", o.order_id));
            continue;
        };
        if payment_declined(num) {
            if v.status() != OrderStatus::Cancelled
                || !v.released
                || v.paid
                || v.tracking.is_some()
                || v.payment_failed.is_none()
            {
                problems.push(format!(
                    "{}: expected cancelled with stock released, got {v:?}",
                    o.order_id
                ));
            }
        } else if v.status() != OrderStatus::Completed
            || !v.paid
            || v.tracking.is_none()
            || v.released
            || !v.reserved
        {
            problems.push(format!("{}: expected completed, got {v:?}", o.order_id));
        } else {
            *sold.entry(o.sku.clone()).or_default() += o.qty;
        }
    }
    for level in &stock {
        let opening = CATALOG
            .iter()
            .find(|(s, _)| *s == level.sku)
            .map_or(0, |(_, n)| *n);
        let expected = opening - sold.get(&level.sku).copied().unwrap_or(0);
        if level.available != expected || level.reserved != 0 {
            problems.push(format!(
                "stock of {}: expected {expected} available and 0 reserved, got {level:?}",
                level.sku
            ));
        }
    }
    let mut sagas = BTreeMap::new();
    if let Some(e) = &engine {
        for v in e.instances().await? {
            *sagas.entry(v.status.as_str()).or_insert(0) += 1;
        }
        let declined = (1..=cfg.orders).filter(|n| payment_declined(*n)).count();
        let done = sagas
            .get(SagaStatus::Completed.as_str())
            .copied()
            .unwrap_or(0);
        let comp = sagas
            .get(SagaStatus::Compensated.as_str())
            .copied()
            .unwrap_or(0);
        if done != n - declined || comp != declined {
            problems.push(format!(
                "sagas: expected {} completed and {declined} compensated, got {sagas:?}",
                n - declined
            ));
        }
    }
    if stats.dead_lettered() != 1 {
        problems.push(format!(
            "expected 1 dead letter (the invalid command), got {}",
            stats.dead_lettered()
        ));
    }

    requester.close().await;
    if let Some(r) = saga_running {
        r.shutdown().await?;
    }
    for r in running {
        r.shutdown().await?;
    }
    Ok(Report {
        mode,
        completed: views
            .values()
            .filter(|v| v.status() == OrderStatus::Completed)
            .count(),
        cancelled: views
            .values()
            .filter(|v| v.status() == OrderStatus::Cancelled)
            .count(),
        compensated: views.values().filter(|v| v.released).count(),
        orders: views,
        stock,
        dead_lettered: stats.dead_lettered(),
        duplicates_injected: stats.duplicates_injected(),
        duplicates_suppressed: stats.duplicates_suppressed(),
        sagas,
        queries,
        elapsed,
        problems,
    })
}
