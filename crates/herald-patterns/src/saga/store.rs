//! Saga state: the [`SagaStore`] contract, the persisted [`SagaRecord`], and the memory
//! store.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures::future::BoxFuture;
use herald_core::{Error, Message};
use serde::{Deserialize, Serialize};

/// Where a saga instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Executing its steps.
    Running,
    /// A step failed or timed out: undoing the completed steps, newest first.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step failed and every compensation was issued (and confirmed where asked).
    Compensated,
    /// A compensation was not confirmed after its last attempt: needs an operator.
    Failed,
}

impl SagaStatus {
    /// Whether the saga has ended (no more events move it).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Failed)
    }

    /// The status as stored: `running`, `compensating`, `completed`, `compensated`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a saga left the happy path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaFailure {
    /// The step that failed.
    pub step: String,
    /// The reason the participant gave, or the timeout.
    pub reason: String,
    /// Whether the step timed out (rather than answering with a failure).
    pub timed_out: bool,
}

/// One line of a saga's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The record version this entry produced.
    pub version: u64,
    /// What happened.
    pub note: String,
}

/// A message waiting in a saga's own outbox: saved together with the state change that
/// produced it, published right after, and republished by whoever finds it still there.
///
/// Bytes are hex-encoded so the state stays plain JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Destination topic.
    pub topic: String,
    /// Message id (kept across republishing, so consumers can dedupe).
    pub id: String,
    /// Key, hex.
    pub key: Option<String>,
    /// Headers in order, values hex.
    pub headers: Vec<(String, String)>,
    /// Payload, hex.
    pub payload: String,
}

impl StoredMessage {
    /// Captures `message` for `topic`.
    pub fn from_message(topic: &str, message: &Message) -> Self {
        Self {
            topic: topic.to_owned(),
            id: message.id.clone(),
            key: message.key.as_ref().map(hex::encode),
            headers: message
                .headers
                .iter()
                .map(|(n, v)| (n.to_owned(), hex::encode(v)))
                .collect(),
            payload: hex::encode(&message.payload),
        }
    }

    /// The message back; [`SagaStoreErrorKind::Corrupt`] if the hex is damaged.
    pub fn to_message(&self) -> Result<Message, SagaStoreError> {
        let bad = |e: hex::FromHexError| {
            SagaStoreError::new(SagaStoreErrorKind::Corrupt, "outbox message is not hex")
                .with_source(e)
        };
        let mut m = Message::with_id(
            self.id.clone(),
            Bytes::from(hex::decode(&self.payload).map_err(bad)?),
        );
        if let Some(k) = &self.key {
            m.key = Some(Bytes::from(hex::decode(k).map_err(bad)?));
        }
        for (n, v) in &self.headers {
            m.headers
                .append(n.clone(), Bytes::from(hex::decode(v).map_err(bad)?));
        }
        Ok(m)
    }
}

/// The persisted state of one saga instance (besides the identity and version columns).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    /// Where the saga is.
    pub status: SagaStatus,
    /// Running: the step awaiting its reply. Compensating: the step whose compensation is
    /// awaiting confirmation.
    pub step: usize,
    /// Compensating: how many times the current compensation was issued.
    pub attempts: u32,
    /// When the current step (or compensation) times out, in ms since the Unix epoch.
    pub deadline_ms: Option<i64>,
    /// Why the saga is compensating, if it is.
    pub failure: Option<SagaFailure>,
    /// The saga's data, as JSON.
    pub data: serde_json::Value,
    /// Commands and events of the last transition not yet confirmed as published.
    pub outbox: Vec<StoredMessage>,
    /// When a still-full outbox is presumed abandoned (its writer crashed) and any
    /// instance's ticker republishes it.
    pub outbox_due_ms: Option<i64>,
    /// What happened, oldest first (bounded).
    pub history: Vec<HistoryEntry>,
    /// When the saga started, ms since the Unix epoch.
    pub started_ms: i64,
    /// When the state last changed.
    pub updated_ms: i64,
}

/// One saga instance as stored: identity, version and state.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaRecord {
    /// The saga type's name.
    pub saga: String,
    /// The instance id: the correlation id of its messages.
    pub id: String,
    /// Optimistic-concurrency version: 1 when created, +1 at every save.
    pub version: u64,
    /// The state.
    pub state: SagaState,
}

impl SagaRecord {
    /// When the ticker must look at this instance: the earlier of the step deadline and
    /// the outbox's due time.
    pub fn wake_at(&self) -> Option<i64> {
        match (self.state.deadline_ms, self.state.outbox_due_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Why a saga store operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SagaStoreErrorKind {
    /// Optimistic concurrency: the instance changed since it was loaded (or already
    /// exists, on create). Load it again and retry.
    Conflict,
    /// The store cannot be reached. Transient.
    Unavailable,
    /// A stored record cannot be read back.
    Corrupt,
    /// Anything else.
    Other,
}

impl fmt::Display for SagaStoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Conflict => "saga version conflict",
            Self::Unavailable => "saga store unavailable",
            Self::Corrupt => "saga record corrupt",
            Self::Other => "saga store error",
        })
    }
}

/// A failed saga store operation.
pub type SagaStoreError = Error<SagaStoreErrorKind>;

/// Whether `e` is a [`SagaStoreErrorKind::Conflict`].
pub fn is_conflict(e: &SagaStoreError) -> bool {
    e.kind() == SagaStoreErrorKind::Conflict
}

/// Persists saga instances with optimistic concurrency.
///
/// * `save` with `expected = None` creates the instance and answers
///   [`Conflict`](SagaStoreErrorKind::Conflict) if it exists; with `Some(v)` it replaces
///   the instance only if the stored version is still `v` (the record carries the new
///   version, `v + 1`), else `Conflict`. Two engines that loaded the same version cannot
///   both advance it: one save wins, the other reloads and reconsiders.
/// * `due` lists instances whose [`wake_at`](SagaRecord::wake_at) is at or before `now_ms`
///   — persisted deadlines, so any engine's ticker takes over from a crashed one.
/// * Implementations are shared (`Arc<dyn SagaStore>`) and called concurrently.
pub trait SagaStore: Send + Sync {
    /// The instance `id` of saga `saga`.
    fn load<'a>(
        &'a self,
        saga: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<SagaRecord>, SagaStoreError>>;

    /// Creates (`expected = None`) or compare-and-swaps (`Some(version)`) `record`.
    fn save<'a>(
        &'a self,
        record: &'a SagaRecord,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<(), SagaStoreError>>;

    /// Up to `limit` instances of `saga` to wake at `now_ms`, earliest first.
    fn due<'a>(
        &'a self,
        saga: &'a str,
        now_ms: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<SagaRecord>, SagaStoreError>>;

    /// Up to `limit` instances of `saga` with ids after `after`, by id (paging).
    fn list<'a>(
        &'a self,
        saga: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<SagaRecord>, SagaStoreError>>;
}

impl<T: SagaStore + ?Sized> SagaStore for Arc<T> {
    fn load<'a>(
        &'a self,
        saga: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<SagaRecord>, SagaStoreError>> {
        (**self).load(saga, id)
    }
    fn save<'a>(
        &'a self,
        record: &'a SagaRecord,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<(), SagaStoreError>> {
        (**self).save(record, expected)
    }
    fn due<'a>(
        &'a self,
        saga: &'a str,
        now_ms: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<SagaRecord>, SagaStoreError>> {
        (**self).due(saga, now_ms, limit)
    }
    fn list<'a>(
        &'a self,
        saga: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<SagaRecord>, SagaStoreError>> {
        (**self).list(saga, after, limit)
    }
}

/// Saga state in process memory: for tests and single-process services (nothing survives
/// a restart). Clones share the state.
#[derive(Clone, Default)]
pub struct MemorySagaStore {
    records: Arc<Mutex<BTreeMap<(String, String), SagaRecord>>>,
}

impl fmt::Debug for MemorySagaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySagaStore")
            .field("records", &self.lock().len())
            .finish()
    }
}

impl MemorySagaStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), SagaRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SagaStore for MemorySagaStore {
    fn load<'a>(
        &'a self,
        saga: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<SagaRecord>, SagaStoreError>> {
        let r = self.lock().get(&(saga.to_owned(), id.to_owned())).cloned();
        Box::pin(std::future::ready(Ok(r)))
    }

    fn save<'a>(
        &'a self,
        record: &'a SagaRecord,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<(), SagaStoreError>> {
        let mut m = self.lock();
        let key = (record.saga.clone(), record.id.clone());
        let current = m.get(&key).map(|r| r.version);
        let r = if current == expected {
            m.insert(key, record.clone());
            Ok(())
        } else {
            Err(SagaStoreError::new(
                SagaStoreErrorKind::Conflict,
                format!(
                    "{}/{}: expected version {expected:?}, found {current:?}",
                    record.saga, record.id
                ),
            ))
        };
        Box::pin(std::future::ready(r))
    }

    fn due<'a>(
        &'a self,
        saga: &'a str,
        now_ms: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<SagaRecord>, SagaStoreError>> {
        let mut v: Vec<SagaRecord> = self
            .lock()
            .values()
            .filter(|r| r.saga == saga && r.wake_at().is_some_and(|w| w <= now_ms))
            .cloned()
            .collect();
        v.sort_by_key(|r| r.wake_at());
        v.truncate(limit);
        Box::pin(std::future::ready(Ok(v)))
    }

    fn list<'a>(
        &'a self,
        saga: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<SagaRecord>, SagaStoreError>> {
        let v: Vec<SagaRecord> = self
            .lock()
            .values()
            .filter(|r| r.saga == saga && after.is_none_or(|a| r.id.as_str() > a))
            .take(limit)
            .cloned()
            .collect();
        Box::pin(std::future::ready(Ok(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64, deadline: Option<i64>) -> SagaRecord {
        SagaRecord {
            saga: "s".into(),
            id: "a".into(),
            version,
            state: SagaState {
                status: SagaStatus::Running,
                step: 0,
                attempts: 0,
                deadline_ms: deadline,
                failure: None,
                data: serde_json::Value::Null,
                outbox: vec![],
                outbox_due_ms: None,
                history: vec![],
                started_ms: 0,
                updated_ms: 0,
            },
        }
    }

    #[tokio::test]
    async fn compare_and_swap() {
        let s = MemorySagaStore::new();
        s.save(&record(1, None), None).await.unwrap();
        assert!(is_conflict(
            &s.save(&record(1, None), None).await.unwrap_err()
        ));
        s.save(&record(2, Some(10)), Some(1)).await.unwrap();
        // A second writer that also loaded version 1 loses.
        assert!(is_conflict(
            &s.save(&record(2, None), Some(1)).await.unwrap_err()
        ));
        assert_eq!(s.load("s", "a").await.unwrap().unwrap().version, 2);
        assert_eq!(s.due("s", 9, 10).await.unwrap().len(), 0);
        assert_eq!(s.due("s", 10, 10).await.unwrap().len(), 1);
        assert_eq!(s.list("s", None, 10).await.unwrap().len(), 1);
        assert_eq!(s.list("s", Some("a"), 10).await.unwrap().len(), 0);
    }

    #[test]
    fn stored_messages_round_trip_bytes() {
        let m = Message::new(vec![0u8, 255, 1])
            .with_key(vec![0xffu8])
            .with_header("bin", vec![0u8, 1])
            .with_correlation_id("c");
        let s = StoredMessage::from_message("t", &m);
        let back = s.to_message().unwrap();
        assert_eq!(back, m);
        let mut bad = s;
        bad.payload = "zz".into();
        assert_eq!(
            bad.to_message().unwrap_err().kind(),
            SagaStoreErrorKind::Corrupt
        );
    }
}
