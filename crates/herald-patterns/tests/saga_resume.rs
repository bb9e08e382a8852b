//! A saga engine killed mid-flight: its sagas resume on another engine and finish exactly
//! once, with state (and deadlines) in PostgreSQL.
//!
//! "Killed" = the engine runs on a runtime of its own; its router is aborted with
//! `Running::abort()` and the whole runtime is shut down, dropping every task, pool
//! connection and in-memory state of that instance — nothing of it drains or commits.

mod patterns_support;

use std::{sync::Arc, time::Duration};

use herald_core::{Publisher, Subscriber};
use herald_patterns::saga::{PgSagaStore, SagaConfig, SagaEngine, SagaStatus};
use patterns_support::*;

const N: u32 = 40;

/// Runs engine A on its own runtime (own thread, own PostgreSQL pool) until `kill` fires.
fn spawn_instance_a(
    name: String,
    topics: Topics,
    timeouts: Timeouts,
    publisher: Arc<dyn Publisher>,
    subscriber: Arc<dyn Subscriber>,
    pg_url: String,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (kill, killed) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let store = PgSagaStore::connect(&pg_url).await.unwrap();
            let engine = SagaEngine::with_config(
                order_saga(&name, &topics, timeouts),
                store,
                publisher,
                SagaConfig::default().tick(Duration::from_millis(100)),
            );
            let running = engine.start(subscriber);
            let _ = killed.await;
            // The crash: no drain, no close, no commit.
            running.abort();
        });
        // Drops every task still on this runtime (routes, lanes, pool connections).
        rt.shutdown_timeout(Duration::from_secs(5));
    });
    (kill, thread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_after_step_two_resumes_on_another_instance_and_finishes_once() {
    let pg = herald_testkit::fixtures::postgres_url().await;
    let prefix = herald_testkit::unique("resume");
    let name = format!("{prefix}-saga");
    let t = Topics::new(&prefix);
    let tr = transport(Kind::Memory, &t.all()).await;
    let world = World::new();
    // Shipping is down until instance A is dead: every saga stops after step 2 (pay).
    let no_shipping = Services {
        shipping: false,
        ..Services::ALL
    };
    let others = services(&world, &t, &tr.publisher, no_shipping).start(tr.subscriber.clone());
    let (kill, thread) = spawn_instance_a(
        name.clone(),
        t.clone(),
        Timeouts::default(),
        tr.publisher.clone(),
        tr.subscriber.clone(),
        pg.clone(),
    );

    // Instance B: same saga, same group, its own pool — not started yet.
    let engine_b = SagaEngine::with_config(
        order_saga(&name, &t, Timeouts::default()),
        PgSagaStore::connect(&pg).await.unwrap(),
        tr.publisher.clone(),
        SagaConfig::default().tick(Duration::from_millis(100)),
    );

    place_orders(&tr.publisher, &t, 1..=N).await;
    let e = engine_b.clone();
    let at_kill = wait(60, "every saga past step 2 on instance A", || {
        let e = e.clone();
        async move {
            let v = e.instances().await.ok()?;
            let settled = v.len() == N as usize
                && v.iter().all(|s| {
                    (s.status == SagaStatus::Running && s.step.as_deref() == Some("ship"))
                        || s.status == SagaStatus::Compensated
                });
            settled.then_some(v)
        }
    })
    .await;
    assert!(
        at_kill.iter().all(|s| s.status != SagaStatus::Completed),
        "nothing can complete without shipping"
    );
    kill.send(()).unwrap();
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();

    // Shipping comes up and instance B takes over A's group.
    let shipping = services(
        &world,
        &t,
        &tr.publisher,
        Services {
            inventory: false,
            payments: false,
            shipping: true,
            orders: false,
        },
    )
    .start(tr.subscriber.clone());
    let running_b = engine_b.start(tr.subscriber.clone());
    let w = world.clone();
    wait(60, "every outcome after the takeover", || {
        let w = w.clone();
        async move { (w.outcomes().len() == N as usize).then_some(()) }
    })
    .await;

    check_outcomes(&world, &engine_b, N).await;
    for v in engine_b.instances().await.unwrap() {
        let count = |s: &str| v.history.iter().filter(|h| h.note.contains(s)).count();
        let end = if v.status == SagaStatus::Completed {
            "completed"
        } else {
            "compensated"
        };
        let ends = v.history.iter().filter(|h| h.note == end).count();
        assert_eq!(ends, 1, "{}: {:?}", v.id, v.history);
        assert_eq!(count("sent ReserveInventory"), 1, "{}", v.id);
        assert_eq!(count("sent ProcessPayment"), 1, "{}", v.id);
        if v.status == SagaStatus::Completed {
            assert_eq!(count("sent ScheduleShipment"), 1, "{}", v.id);
            assert_eq!(count("ship: succeeded"), 1, "{}", v.id);
        }
    }
    running_b.shutdown().await.unwrap();
    shipping.shutdown().await.unwrap();
    others.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_instances_deadlines_fire_on_another_and_compensate_in_reverse_order() {
    let pg = herald_testkit::fixtures::postgres_url().await;
    let prefix = herald_testkit::unique("deadline");
    let name = format!("{prefix}-saga");
    let t = Topics::new(&prefix);
    let tr = transport(Kind::Memory, &t.all()).await;
    let world = World::new();
    // Shipping never answers: the "ship" step times out.
    let no_shipping = Services {
        shipping: false,
        ..Services::ALL
    };
    let svc = services(&world, &t, &tr.publisher, no_shipping).start(tr.subscriber.clone());
    let timeouts = Timeouts {
        ship: Duration::from_secs(5),
        ..Timeouts::default()
    };
    let (kill, thread) = spawn_instance_a(
        name.clone(),
        t.clone(),
        timeouts,
        tr.publisher.clone(),
        tr.subscriber.clone(),
        pg.clone(),
    );
    let engine_b = SagaEngine::with_config(
        order_saga(&name, &t, timeouts),
        PgSagaStore::connect(&pg).await.unwrap(),
        tr.publisher.clone(),
        SagaConfig::default().tick(Duration::from_millis(100)),
    );
    place_orders(&tr.publisher, &t, 1..=N).await;
    let e = engine_b.clone();
    wait(
        60,
        "every saga waiting for shipping (or compensated)",
        || {
            let e = e.clone();
            async move {
                let v = e.instances().await.ok()?;
                (v.len() == N as usize
                    && v.iter().all(|s| {
                        (s.status == SagaStatus::Running && s.step.as_deref() == Some("ship"))
                            || s.status == SagaStatus::Compensated
                    }))
                .then_some(())
            }
        },
    )
    .await;
    kill.send(()).unwrap();
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
    assert!(
        world.outcomes().len() < N as usize,
        "the deadlines have not fired yet"
    );

    let running_b = engine_b.start(tr.subscriber.clone());
    let w = world.clone();
    wait(60, "every order cancelled by the timeouts", || {
        let w = w.clone();
        async move { (w.outcomes().len() == N as usize).then_some(()) }
    })
    .await;

    assert!(world.outcomes().values().all(|o| *o == Outcome::Cancelled));
    assert!(
        world.reservations.lock().unwrap().is_empty(),
        "all stock released"
    );
    assert!(
        world
            .stock
            .lock()
            .unwrap()
            .values()
            .all(|s| *s == INITIAL_STOCK),
        "stock back to where it started"
    );
    let log = world.log.lock().unwrap().clone();
    for v in engine_b.instances().await.unwrap() {
        assert_eq!(
            v.status,
            SagaStatus::Compensated,
            "{}: {:?}",
            v.id,
            v.history
        );
        let f = v.failure.clone().unwrap();
        assert_eq!(world.distinct(&v.id, "ReleaseInventory"), 1, "{}", v.id);
        assert_eq!(world.distinct(&v.id, "CancelOrder"), 1, "{}", v.id);
        if f.step == "ship" {
            assert!(f.timed_out);
            assert_eq!(world.distinct(&v.id, "RefundPayment"), 1, "{}", v.id);
            // Reverse order: the payment (step 1) is refunded before the stock (step 0)
            // is released.
            let pos = |kind: &str| {
                log.iter()
                    .position(|(o, k)| o == &v.id && *k == kind)
                    .unwrap()
            };
            assert!(pos("RefundPayment") < pos("ReleaseInventory"), "{}", v.id);
        } else {
            assert_eq!(f.step, "pay");
            assert_eq!(world.distinct(&v.id, "RefundPayment"), 0, "{}", v.id);
        }
    }
    running_b.shutdown().await.unwrap();
    svc.shutdown().await.unwrap();
}
