//! Fault injection with librdkafka's mock cluster, for failures the real broker cannot be
//! made to produce on demand: broker-side produce refusals, failed offset commits, an
//! unknown topic.

use std::time::Duration;

use futures::StreamExt;
use herald_core::{Message, PublishErrorKind, Publisher, SubscribeSpec, Subscriber};
use herald_kafka::{AdminErrorKind, KafkaAdmin, KafkaConfig, KafkaPublisher, KafkaSubscriber};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    mocking::MockCluster,
    types::{RDKafkaApiKey, RDKafkaRespErr},
};
use tokio::time::{Instant, timeout};

fn publisher(brokers: &str) -> KafkaPublisher {
    KafkaPublisher::builder(brokers)
        .linger(Duration::from_millis(1))
        .delivery_timeout(Duration::from_secs(5))
        .build()
        .expect("publisher")
}

/// A broker that refuses a produce request fails that publish with the matching kind;
/// the producer keeps working. (After an authorization refusal librdkafka keeps the
/// topic in error until its metadata is refreshed, so recovery is shown on another
/// topic there.)
#[tokio::test]
async fn broker_refusals_of_a_produce_are_typed() {
    for (refusal, kind, next_topic) in [
        (
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
            PublishErrorKind::Unauthorized,
            "u",
        ),
        (
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
            PublishErrorKind::MessageTooLarge,
            "t",
        ),
    ] {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic("t", 1, 1).expect("topic");
        mock.create_topic("u", 1, 1).expect("topic");
        let p = publisher(&mock.bootstrap_servers());
        p.publish("t", vec![Message::new("warm-up")])
            .await
            .expect("first publish");
        mock.request_errors(RDKafkaApiKey::Produce, &[refusal]);
        let err = p
            .publish("t", vec![Message::new("a")])
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), kind, "{err}");
        assert!(!err.is_retriable());
        p.publish(next_topic, vec![Message::new("b")])
            .await
            .expect("the producer keeps working");
    }
}

/// Transient produce errors are retried by the idempotent producer without duplicates
/// or a failed publish.
#[tokio::test]
async fn transient_produce_errors_are_retried() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("t", 1, 1).expect("topic");
    let p = publisher(&mock.bootstrap_servers());
    p.publish("t", vec![Message::new("warm-up")])
        .await
        .expect("first publish");
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    p.publish("t", (0..5).map(|i| Message::new(format!("m{i}"))).collect())
        .await
        .expect("retried to success");
}

/// A topic the cluster reports as unknown fails the publish with `UnknownTopic`, well
/// within the delivery timeout.
#[tokio::test]
async fn unknown_topic_is_typed() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.topic_error(
        "missing",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
    )
    .expect("topic error");
    let p = KafkaPublisher::builder(mock.bootstrap_servers())
        .delivery_timeout(Duration::from_secs(10))
        .set("topic.metadata.propagation.max.ms", "500")
        .build()
        .expect("publisher");
    let started = Instant::now();
    let err = p
        .publish("missing", vec![Message::new("x")])
        .await
        .expect_err("unknown topic");
    assert_eq!(err.kind(), PublishErrorKind::UnknownTopic, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

fn committed(brokers: &str, group: &str, topic: &str) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("offset reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
    match got.find_partition(topic, 0)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// An offset commit the broker refuses is sent again at the next commit, so the
/// group's position still reaches the acknowledged offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commit_is_retried() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("t", 1, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    publisher(&brokers)
        .publish(
            "t",
            (0..10).map(|i| Message::new(format!("m{i}"))).collect(),
        )
        .await
        .expect("publish");
    // The first three commits fail.
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 3],
    );
    let subscriber = KafkaSubscriber::builder(&brokers)
        .commit_interval(Duration::from_millis(100))
        .build()
        .expect("subscriber");
    let mut sub = subscriber
        .subscribe(SubscribeSpec::new("t", "g"))
        .await
        .expect("subscribe");
    for _ in 0..10 {
        let d = timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("delivery in time")
            .expect("stream open")
            .expect("delivery");
        d.ack().await.expect("ack");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let b = brokers.clone();
        let c = tokio::task::spawn_blocking(move || committed(&b, "g", "t"))
            .await
            .expect("join");
        if c == Some(10) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed offset stuck at {c:?} after refused commits"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sub.close().await.expect("close");
}

/// The mock cluster does not implement CreateTopics: provisioning fails with a typed
/// `Timeout` within the admin timeout instead of hanging.
#[tokio::test]
async fn admin_failure_is_typed_and_bounded() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let admin = KafkaAdmin::with_timeout(
        &KafkaConfig::new(mock.bootstrap_servers()),
        Duration::from_secs(3),
    )
    .expect("admin");
    let started = Instant::now();
    match admin.ensure_topic("orders", 3, 1).await {
        Ok(e) => panic!("the mock cluster accepted CreateTopics: {e:?}"),
        Err(err) => {
            assert_eq!(err.kind(), AdminErrorKind::Timeout, "{err:?}");
            assert!(err.kind().is_retriable());
        }
    }
    assert!(started.elapsed() < Duration::from_secs(6));
}
