//! Random sequences of publish / ack / nack / consumer crash on the memory transport lose
//! nothing, and every key's messages are first delivered in publish order.

use std::{collections::HashMap, time::Duration};

use futures::{FutureExt, StreamExt};
use herald_core::{
    Delivery, Message, Publisher, SubscribeSpec, Subscriber, Subscription,
    memory::{MemoryBroker, MemoryConfig},
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Publish(u8),
    Receive(u8),
    Ack(u8),
    Nack(u8),
    Crash(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4).prop_map(Op::Publish),
        4 => (0u8..2).prop_map(Op::Receive),
        3 => any::<u8>().prop_map(Op::Ack),
        1 => any::<u8>().prop_map(Op::Nack),
        1 => (0u8..2).prop_map(Op::Crash),
    ]
}

async fn join(broker: &MemoryBroker) -> Subscription {
    broker
        .subscribe(SubscribeSpec::new("t", "g").max_in_flight(8))
        .await
        .expect("subscribe")
}

fn try_next(sub: &mut Subscription) -> Option<Delivery> {
    match sub.next().now_or_never() {
        Some(Some(Ok(d))) => Some(d),
        _ => None,
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let broker = MemoryBroker::with_config(MemoryConfig::default().partitions(3));
        let mut subs = vec![join(&broker).await, join(&broker).await];
        let mut held: Vec<Vec<Delivery>> = vec![Vec::new(), Vec::new()];
        // key -> published sequence numbers; key -> first-delivery order.
        let mut published: HashMap<u8, Vec<u32>> = HashMap::new();
        let mut first_seen: HashMap<u8, Vec<u32>> = HashMap::new();
        let mut acked: HashMap<String, u32> = HashMap::new();
        let mut seq = 0u32;
        let mut ids = HashMap::new();
        let note = |d: &Delivery, first_seen: &mut HashMap<u8, Vec<u32>>| {
            let key = d.message.key.as_ref().expect("key")[0];
            let n: u32 = std::str::from_utf8(&d.message.payload)
                .expect("utf8")
                .parse()
                .expect("num");
            let v = first_seen.entry(key).or_default();
            if !v.contains(&n) {
                v.push(n);
            }
        };
        for op in ops {
            match op {
                Op::Publish(k) => {
                    seq += 1;
                    let m = Message::new(seq.to_string()).with_key(vec![k]);
                    ids.insert(m.id.clone(), seq);
                    published.entry(k).or_default().push(seq);
                    broker.publish("t", vec![m]).await.expect("publish");
                }
                Op::Receive(c) => {
                    let c = c as usize;
                    if let Some(d) = try_next(&mut subs[c]) {
                        note(&d, &mut first_seen);
                        held[c].push(d);
                    }
                }
                Op::Ack(i) | Op::Nack(i) => {
                    let all: usize = held.iter().map(Vec::len).sum();
                    if all == 0 {
                        continue;
                    }
                    let mut i = i as usize % all;
                    let c = if i < held[0].len() {
                        0
                    } else {
                        i -= held[0].len();
                        1
                    };
                    let d = held[c].remove(i);
                    if matches!(op, Op::Ack(_)) {
                        *acked.entry(d.message.id.clone()).or_default() += 1;
                        let _ = d.ack().await;
                    } else {
                        let _ = d.nack(Duration::ZERO).await;
                    }
                }
                Op::Crash(c) => {
                    let c = c as usize;
                    held[c].clear();
                    let fresh = join(&broker).await;
                    drop(std::mem::replace(&mut subs[c], fresh));
                }
            }
        }
        // Drain: settle what is held, then a fresh consumer takes everything left.
        for h in held.iter_mut() {
            for d in h.drain(..) {
                *acked.entry(d.message.id.clone()).or_default() += 1;
                let _ = d.ack().await;
            }
        }
        drop(subs);
        let mut last = join(&broker).await;
        while let Some(d) = try_next(&mut last) {
            note(&d, &mut first_seen);
            *acked.entry(d.message.id.clone()).or_default() += 1;
            d.ack().await.expect("ack");
        }
        for id in ids.keys() {
            prop_assert!(acked.contains_key(id), "message {} lost", ids[id]);
        }
        prop_assert_eq!(broker.lag("t", "g"), 0);
        for (k, want) in &published {
            prop_assert_eq!(
                first_seen.get(k),
                Some(want),
                "first-delivery order of key {}",
                k
            );
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]
    #[test]
    fn nothing_lost_and_per_key_order(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops)?;
    }
}
