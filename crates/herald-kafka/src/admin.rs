//! [`KafkaAdmin`]: creates the topics a service needs (and their dead-letter topics).

use std::{fmt, time::Duration};

use herald_core::dlq_topic;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication, TopicResult},
    error::KafkaError,
    types::RDKafkaErrorCode,
};

use crate::{
    config::KafkaConfig,
    context::HeraldContext,
    error::{AdminError, AdminErrorKind, ConfigError, admin_kind, code_of, config_error},
};

/// Default admin request timeout: 30 s.
pub const DEFAULT_ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What [`KafkaAdmin::ensure_topic`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ensured {
    /// The topic was created now (false: it existed).
    pub topic_created: bool,
    /// The dead-letter topic `<topic>.dlq` was created now (false: it existed).
    pub dlq_created: bool,
}

/// Topic provisioning through librdkafka's admin client.
///
/// Creating a topic that already exists is success; a refusal (authorization, invalid
/// partition count or replication factor, a policy) is an [`AdminError`] with its kind.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use herald_kafka::{KafkaAdmin, KafkaConfig};
/// let admin = KafkaAdmin::new(&KafkaConfig::new("127.0.0.1:9092"))?;
/// // orders and orders.dlq, 6 partitions, replication factor 3.
/// admin.ensure_topic("orders", 6, 3).await?;
/// # Ok(()) }
/// ```
pub struct KafkaAdmin {
    client: AdminClient<HeraldContext>,
    timeout: Duration,
}

impl fmt::Debug for KafkaAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaAdmin")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn admin_error(e: KafkaError) -> AdminError {
    let kind = code_of(&e).map_or(AdminErrorKind::Other, admin_kind);
    AdminError::new(kind, e.to_string()).with_source(e)
}

fn refused(topic: &str, code: RDKafkaErrorCode) -> AdminError {
    AdminError::new(admin_kind(code), format!("topic {topic}: {code}"))
}

impl KafkaAdmin {
    /// An admin client for `config`; requests time out after 30 s.
    pub fn new(config: &KafkaConfig) -> Result<Self, ConfigError> {
        Self::with_timeout(config, DEFAULT_ADMIN_TIMEOUT)
    }

    /// An admin client whose requests time out after `timeout`.
    pub fn with_timeout(config: &KafkaConfig, timeout: Duration) -> Result<Self, ConfigError> {
        let client = config
            .to_client_config()
            .create_with_context(HeraldContext::default())
            .map_err(config_error)?;
        Ok(Self { client, timeout })
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    /// Creates `name` and its dead-letter topic `<name>.dlq` with `partitions` and
    /// `replication` if they are missing. Existing topics are left as they are (their
    /// partition count is not changed).
    pub async fn ensure_topic(
        &self,
        name: &str,
        partitions: i32,
        replication: i32,
    ) -> Result<Ensured, AdminError> {
        let dlq = dlq_topic(name);
        let created = self
            .create_topics(&[name, dlq.as_str()], partitions, replication)
            .await?;
        Ok(Ensured {
            topic_created: created[0],
            dlq_created: created[1],
        })
    }

    /// Creates each topic in `names` that is missing; returns, per topic, whether it was
    /// created now.
    pub async fn create_topics(
        &self,
        names: &[&str],
        partitions: i32,
        replication: i32,
    ) -> Result<Vec<bool>, AdminError> {
        if partitions < 1 || replication < 1 {
            return Err(AdminError::new(
                AdminErrorKind::Invalid,
                format!(
                    "partitions ({partitions}) and replication ({replication}) must be at least 1"
                ),
            ));
        }
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(replication)))
            .collect();
        let results = tokio::time::timeout(
            self.timeout + Duration::from_secs(1),
            self.client.create_topics(&topics, &self.options()),
        )
        .await
        .map_err(|_| AdminError::new(AdminErrorKind::Timeout, "create topics timed out"))?
        .map_err(admin_error)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            out.push(outcome(name, &results)?);
        }
        Ok(out)
    }

    /// Deletes topics; a topic that does not exist is success.
    pub async fn delete_topics(&self, names: &[&str]) -> Result<(), AdminError> {
        let results = tokio::time::timeout(
            self.timeout + Duration::from_secs(1),
            self.client.delete_topics(names, &self.options()),
        )
        .await
        .map_err(|_| AdminError::new(AdminErrorKind::Timeout, "delete topics timed out"))?
        .map_err(admin_error)?;
        for r in results {
            if let Err((topic, code)) = r
                && !matches!(
                    code,
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
                )
            {
                return Err(refused(&topic, code));
            }
        }
        Ok(())
    }
}

/// Whether `name` was created now; `TopicAlreadyExists` is success.
fn outcome(name: &str, results: &[TopicResult]) -> Result<bool, AdminError> {
    for r in results {
        match r {
            Ok(t) if t == name => return Ok(true),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) if t == name => return Ok(false),
            Err((t, code)) if t == name => return Err(refused(t, *code)),
            _ => {}
        }
    }
    Err(AdminError::new(
        AdminErrorKind::Other,
        format!("the broker returned no result for topic {name}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn already_exists_is_success_and_refusals_are_typed() {
        let results: Vec<TopicResult> = vec![
            Ok("a".into()),
            Err(("b".into(), RDKafkaErrorCode::TopicAlreadyExists)),
            Err(("c".into(), RDKafkaErrorCode::InvalidReplicationFactor)),
            Err(("d".into(), RDKafkaErrorCode::TopicAuthorizationFailed)),
        ];
        assert!(outcome("a", &results).unwrap());
        assert!(!outcome("b", &results).unwrap());
        assert_eq!(
            outcome("c", &results).unwrap_err().kind(),
            AdminErrorKind::Invalid
        );
        assert_eq!(
            outcome("d", &results).unwrap_err().kind(),
            AdminErrorKind::Unauthorized
        );
        assert_eq!(
            outcome("zz", &results).unwrap_err().kind(),
            AdminErrorKind::Other
        );
    }
}
