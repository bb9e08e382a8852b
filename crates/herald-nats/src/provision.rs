//! Creating, checking and updating the stream of a topic and the consumer of a group.

use async_nats::jetstream::{
    self,
    consumer::{self, AckPolicy, DeliverPolicy, PullConsumer, ReplayPolicy},
    context::{CreateStreamErrorKind, GetStreamErrorKind},
    stream::{self, Stream},
};
use herald_core::{StartFrom, SubscribeSpec};

use crate::{
    config::{ConsumerSettings, Retention, Storage, StreamSettings},
    error::{ProvisionError, ProvisionErrorKind, from_api, from_other},
    mapping,
};

fn storage(s: Storage) -> stream::StorageType {
    match s {
        Storage::Memory => stream::StorageType::Memory,
        _ => stream::StorageType::File,
    }
}

fn retention(r: Retention) -> stream::RetentionPolicy {
    match r {
        Retention::Interest => stream::RetentionPolicy::Interest,
        Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
        _ => stream::RetentionPolicy::Limits,
    }
}

/// The stream config herald wants for `topic`.
pub(crate) fn stream_config(topic: &str, s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: mapping::stream_name(topic),
        description: Some(mapping::stream_description(topic)),
        subjects: vec![mapping::stream_subject(topic)],
        storage: storage(s.storage),
        retention: retention(s.retention),
        duplicate_window: s.duplicate_window,
        max_age: s.max_age.unwrap_or_default(),
        max_bytes: s.max_bytes.unwrap_or(-1),
        max_messages: s.max_messages.unwrap_or(-1),
        max_messages_per_subject: -1,
        max_message_size: s.max_message_size.unwrap_or(-1),
        max_consumers: -1,
        num_replicas: s.replicas.max(1),
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

fn validate_stream_settings(topic: &str, s: &StreamSettings) -> Result<(), ProvisionError> {
    let bad = |m: String| Err(ProvisionError::new(ProvisionErrorKind::InvalidConfig, m));
    if s.duplicate_window.is_zero() {
        return bad(format!(
            "stream of {topic}: duplicate_window must be positive"
        ));
    }
    if let Some(age) = s.max_age
        && age < s.duplicate_window
    {
        return bad(format!(
            "stream of {topic}: duplicate_window {:?} exceeds max_age {age:?}",
            s.duplicate_window
        ));
    }
    Ok(())
}

fn covers(existing: &[String], topic: &str) -> bool {
    let want = mapping::stream_subject(topic);
    let wide = format!("{topic}.>");
    existing.iter().any(|s| *s == want || *s == wide)
}

/// Differences between an existing stream and the wanted one that an update can fix, or
/// an error for those it cannot.
fn needs_update(
    topic: &str,
    have: &stream::Config,
    want: &stream::Config,
) -> Result<bool, ProvisionError> {
    if have.storage != want.storage {
        return Err(ProvisionError::new(
            ProvisionErrorKind::InvalidConfig,
            format!(
                "stream {} of topic {topic} uses {:?} storage; the settings ask for {:?}, which \
                 cannot change on an existing stream",
                have.name, have.storage, want.storage
            ),
        ));
    }
    if have.retention != want.retention {
        return Err(ProvisionError::new(
            ProvisionErrorKind::InvalidConfig,
            format!(
                "stream {} of topic {topic} has {:?} retention; the settings ask for {:?}, which \
                 cannot change on an existing stream",
                have.name, have.retention, want.retention
            ),
        ));
    }
    Ok(have.duplicate_window != want.duplicate_window
        || have.max_age != want.max_age
        || have.max_bytes != want.max_bytes
        || have.max_messages != want.max_messages
        || have.max_message_size != want.max_message_size
        || have.num_replicas != want.num_replicas)
}

/// Returns the stream of `topic`, creating it when `create` and updating settings that
/// differ. Refuses a stream of the same name that holds another topic.
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    topic: &str,
    settings: &StreamSettings,
    create: bool,
) -> Result<Stream, ProvisionError> {
    mapping::validate_topic(topic)
        .map_err(|m| ProvisionError::new(ProvisionErrorKind::InvalidName, m))?;
    validate_stream_settings(topic, settings)?;
    let want = stream_config(topic, settings);
    for _ in 0..3 {
        match js.get_stream(&want.name).await {
            Ok(stream) => {
                let have = &stream.cached_info().config;
                if !covers(&have.subjects, topic) {
                    return Err(ProvisionError::new(
                        ProvisionErrorKind::NameCollision,
                        format!(
                            "topic {topic} maps to stream {}, which exists with subjects {:?} \
                             (another topic that sanitises to the same name, or a stream not \
                             made by herald)",
                            want.name, have.subjects
                        ),
                    ));
                }
                if create && needs_update(topic, have, &want)? {
                    let mut updated = have.clone();
                    updated.duplicate_window = want.duplicate_window;
                    updated.max_age = want.max_age;
                    updated.max_bytes = want.max_bytes;
                    updated.max_messages = want.max_messages;
                    updated.max_message_size = want.max_message_size;
                    updated.num_replicas = want.num_replicas;
                    js.update_stream(updated)
                        .await
                        .map_err(|e| match e.kind() {
                            CreateStreamErrorKind::JetStream(api) => {
                                from_api(&format!("updating stream {}", want.name), api)
                            }
                            k => from_other(
                                &format!("updating stream {}", want.name),
                                matches!(k, CreateStreamErrorKind::TimedOut),
                                e,
                            ),
                        })?;
                    tracing::info!(stream = %want.name, "updated stream settings");
                }
                return Ok(stream);
            }
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(api)
                    if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    if !create {
                        return Err(ProvisionError::new(
                            ProvisionErrorKind::NotFound,
                            format!(
                                "topic {topic} has no stream {} (create it with ensure_topic or \
                                 enable auto_provision)",
                                want.name
                            ),
                        ));
                    }
                    match js.create_stream(want.clone()).await {
                        Ok(stream) => {
                            tracing::info!(stream = %want.name, subject = %want.subjects[0], "created stream");
                            return Ok(stream);
                        }
                        Err(e) => match e.kind() {
                            CreateStreamErrorKind::JetStream(api)
                                if api.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST =>
                            {
                                // Created concurrently (or with other settings): look again.
                                continue;
                            }
                            CreateStreamErrorKind::JetStream(api) => {
                                return Err(from_api(
                                    &format!("creating stream {} for topic {topic}", want.name),
                                    api,
                                ));
                            }
                            k => {
                                return Err(from_other(
                                    &format!("creating stream {}", want.name),
                                    matches!(k, CreateStreamErrorKind::TimedOut),
                                    e,
                                ));
                            }
                        },
                    }
                }
                GetStreamErrorKind::JetStream(api) => {
                    return Err(from_api(&format!("looking up stream {}", want.name), api));
                }
                _ => {
                    let timed_out = e.to_string().contains("timed out");
                    return Err(from_other(
                        &format!("looking up stream {}", want.name),
                        timed_out,
                        e,
                    ));
                }
            },
        }
    }
    Err(ProvisionError::new(
        ProvisionErrorKind::Other,
        format!(
            "stream {} kept changing while it was provisioned",
            want.name
        ),
    ))
}

/// The consumer config herald wants for `spec`.
pub(crate) fn consumer_config(
    spec: &SubscribeSpec,
    s: &ConsumerSettings,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(mapping::consumer_name(&spec.group)),
        description: Some(mapping::consumer_description(&spec.group)),
        deliver_policy: match spec.start {
            StartFrom::Latest => DeliverPolicy::New,
            _ => DeliverPolicy::All,
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: s.ack_wait,
        max_deliver: s.max_deliver.map_or(-1, i64::from),
        backoff: s.backoff.clone(),
        max_ack_pending: i64::try_from(spec.max_in_flight).unwrap_or(i64::MAX),
        replay_policy: ReplayPolicy::Instant,
        ..Default::default()
    }
}

fn validate_consumer_settings(s: &ConsumerSettings) -> Result<(), ProvisionError> {
    let bad = |m: String| Err(ProvisionError::new(ProvisionErrorKind::InvalidConfig, m));
    if s.ack_wait < std::time::Duration::from_millis(100) {
        return bad(format!("ack_wait {:?} is below 100 ms", s.ack_wait));
    }
    if let Some(n) = s.max_deliver {
        if n == 0 {
            return bad("max_deliver must be at least 1 (or None for unlimited)".into());
        }
        if !s.backoff.is_empty() && n as usize <= s.backoff.len() {
            return bad(format!(
                "max_deliver {n} must exceed the {} backoff entries",
                s.backoff.len()
            ));
        }
    }
    if s.backoff.iter().any(|d| d.is_zero()) {
        return bad("backoff entries must be positive".into());
    }
    Ok(())
}

/// Creates the group's durable pull consumer, or updates the settings of an existing one
/// (its position and start policy stay as they are).
pub(crate) async fn ensure_consumer(
    stream: &Stream,
    spec: &SubscribeSpec,
    settings: &ConsumerSettings,
) -> Result<PullConsumer, ProvisionError> {
    validate_consumer_settings(settings)?;
    let mut want = consumer_config(spec, settings);
    let name = want.durable_name.clone().unwrap_or_default();
    let stream_name = stream.cached_info().config.name.clone();
    match stream.consumer_info(&name).await {
        Ok(info) => {
            let have = &info.config;
            if let Some(desc) = &have.description
                && desc.starts_with("herald group ")
                && Some(desc) != want.description.as_ref()
            {
                return Err(ProvisionError::new(
                    ProvisionErrorKind::NameCollision,
                    format!(
                        "group {} maps to consumer {name} of stream {stream_name}, which belongs \
                         to another group ({desc})",
                        spec.group
                    ),
                ));
            }
            if have.deliver_subject.is_some() || have.ack_policy != AckPolicy::Explicit {
                return Err(ProvisionError::new(
                    ProvisionErrorKind::InvalidConfig,
                    format!(
                        "consumer {name} of stream {stream_name} exists but is not an \
                         explicit-ack pull consumer"
                    ),
                ));
            }
            // The start policy only applies to a new consumer; keep what it was made with.
            want.deliver_policy = have.deliver_policy;
            want.replay_policy = have.replay_policy;
        }
        Err(e) => {
            use async_nats::jetstream::context::ConsumerInfoErrorKind as K;
            match e.kind() {
                K::NotFound => {}
                K::JetStream(api)
                    if api.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND => {}
                K::JetStream(api) => {
                    return Err(from_api(&format!("looking up consumer {name}"), api));
                }
                K::StreamNotFound => {
                    return Err(ProvisionError::new(
                        ProvisionErrorKind::NotFound,
                        format!("stream {stream_name} disappeared"),
                    ));
                }
                k => {
                    return Err(from_other(
                        &format!("looking up consumer {name}"),
                        matches!(k, K::TimedOut),
                        e,
                    ));
                }
            }
        }
    }
    stream.create_consumer(want).await.map_err(|e| {
        use async_nats::jetstream::stream::ConsumerErrorKind as K;
        let what = format!("creating consumer {name} on stream {stream_name}");
        match e.kind() {
            K::JetStream(api) => from_api(&what, api),
            k => from_other(&what, matches!(k, K::TimedOut), e),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn stream_config_follows_the_mapping() {
        let c = stream_config("orders.dlq", &StreamSettings::default());
        assert_eq!(c.name, "orders_dlq");
        assert_eq!(c.subjects, ["orders.dlq.*"]);
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert_eq!(c.storage, stream::StorageType::File);
    }

    #[test]
    fn consumer_settings_are_validated() {
        let ok = ConsumerSettings::default();
        assert!(validate_consumer_settings(&ok).is_ok());
        let bad = ConsumerSettings {
            max_deliver: Some(2),
            backoff: vec![Duration::from_secs(1); 2],
            ..Default::default()
        };
        assert_eq!(
            validate_consumer_settings(&bad)
                .expect_err("backoff")
                .kind(),
            ProvisionErrorKind::InvalidConfig
        );
        let bad = ConsumerSettings {
            max_deliver: Some(0),
            ..Default::default()
        };
        assert!(validate_consumer_settings(&bad).is_err());
    }

    #[test]
    fn consumer_config_from_spec() {
        let spec = SubscribeSpec::new("orders", "billing.v2")
            .start(StartFrom::Latest)
            .max_in_flight(8);
        let c = consumer_config(&spec, &ConsumerSettings::default());
        assert_eq!(c.durable_name.as_deref(), Some("billing_v2"));
        assert_eq!(c.deliver_policy, DeliverPolicy::New);
        assert_eq!(c.max_ack_pending, 8);
        assert_eq!(c.max_deliver, -1);
    }
}
