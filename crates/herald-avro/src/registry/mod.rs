//! Schema registries: the [`SchemaRegistry`] trait and three implementations.
//!
//! | Registry | Backed by | Writes | Compatibility enforced by |
//! |----------|-----------|--------|---------------------------|
//! | [`ConfluentRegistry`] | Confluent's REST API (also Redpanda, Apicurio `ccompat`, Karapace) | yes | the server |
//! | [`DirectoryRegistry`] | `schemas/<subject>/v<N>.avsc` | no | `herald schema check --dir` in CI |
//! | [`NatsKvRegistry`] | a NATS JetStream KV bucket | yes | this crate's [`compat`](crate::compat) checker |
//!
//! Subjects are named by a [`SubjectNameStrategy`].

use std::{fmt, future::Future, pin::Pin};

use serde::{Deserialize, Serialize};

use crate::{compat::CompatibilityMode, error::Result};

pub mod confluent;
pub mod directory;
pub mod nats_kv;

pub use confluent::{ConfluentConfig, ConfluentRegistry};
pub use directory::DirectoryRegistry;
pub use nats_kv::NatsKvRegistry;

/// A boxed future, as [`SchemaRegistry`]'s methods return (the trait stays object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A schema registered under a subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredSchema {
    /// The subject, e.g. `orders.order-created-value`.
    pub subject: String,
    /// The global schema id written into each frame.
    pub id: u32,
    /// The version within the subject, from 1.
    pub version: u32,
    /// The schema text.
    pub schema: String,
}

/// A store of schemas by id and by subject/version — the API Confluent Schema Registry serves.
///
/// Implementations are `Send + Sync` and cheap to share behind an `Arc`; they do not cache
/// (the [`AvroCodec`](crate::AvroCodec) caches parsed schemas by id). Methods return boxed
/// futures so `dyn SchemaRegistry` works. Unknown ids fail with
/// [`ErrorKind::UnknownSchemaId`](crate::ErrorKind::UnknownSchemaId), unknown subjects or
/// versions with [`ErrorKind::UnknownSubject`](crate::ErrorKind::UnknownSubject), network
/// failures with [`ErrorKind::RegistryUnavailable`](crate::ErrorKind::RegistryUnavailable).
pub trait SchemaRegistry: Send + Sync + fmt::Debug {
    /// Registers `schema` under `subject` and returns its id; registering a schema the
    /// subject already holds returns the existing id. Fails with
    /// [`ErrorKind::Incompatible`](crate::ErrorKind::Incompatible) when the subject's
    /// compatibility mode rejects it.
    fn register<'a>(&'a self, subject: &'a str, schema: &'a str) -> BoxFuture<'a, Result<u32>>;

    /// Finds `schema` among `subject`'s versions without registering it.
    fn lookup<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<RegisteredSchema>>;

    /// The schema text with this id.
    fn schema_by_id(&self, id: u32) -> BoxFuture<'_, Result<String>>;

    /// The latest version of `subject`.
    fn latest<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<RegisteredSchema>>;

    /// One version of `subject`.
    fn version<'a>(
        &'a self,
        subject: &'a str,
        version: u32,
    ) -> BoxFuture<'a, Result<RegisteredSchema>>;

    /// The version numbers of `subject`, ascending.
    fn versions<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<Vec<u32>>>;

    /// The compatibility mode `subject` is held to (its own, else the registry's default).
    fn compatibility<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<CompatibilityMode>>;
}

/// How a topic and a record name become a subject, as in Confluent's serializers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SubjectNameStrategy {
    /// `<topic>-value` (or `-key`): one schema lineage per topic. Confluent's default.
    #[default]
    TopicName,
    /// The record's full name: one lineage per event type, across topics.
    RecordName,
    /// `<topic>-<record full name>`: one lineage per event type per topic.
    TopicRecordName,
}

impl SubjectNameStrategy {
    /// The subject for a message value.
    ///
    /// # Examples
    /// ```
    /// use herald_avro::SubjectNameStrategy as S;
    /// let rec = "herald.examples.orders.OrderCreated";
    /// assert_eq!(S::TopicName.subject("orders.order-created", rec), "orders.order-created-value");
    /// assert_eq!(S::RecordName.subject("orders", rec), rec);
    /// assert_eq!(S::TopicRecordName.subject("orders", rec), format!("orders-{rec}"));
    /// ```
    pub fn subject(self, topic: &str, record_full_name: &str) -> String {
        self.subject_for(topic, record_full_name, false)
    }

    /// The subject for a message value, or for its key when `is_key` (`<topic>-key`).
    pub fn subject_for(self, topic: &str, record_full_name: &str, is_key: bool) -> String {
        match self {
            Self::TopicName if is_key => format!("{topic}-key"),
            Self::TopicName => format!("{topic}-value"),
            Self::RecordName => record_full_name.to_owned(),
            Self::TopicRecordName => format!("{topic}-{record_full_name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_object_safe() {
        fn takes(_: Option<&dyn SchemaRegistry>) {}
        takes(None);
    }
}
