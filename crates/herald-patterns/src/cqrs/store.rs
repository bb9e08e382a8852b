//! Read-model stores: the [`ReadModelStore`] contract and the memory store.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    sync::{Arc, Mutex},
};

use futures::future::BoxFuture;
use herald_core::Error;

/// What makes applying an event idempotent: the record committed with the document.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Mark {
    /// The message id was applied (a set of applied ids per namespace).
    MessageId(String),
    /// Everything up to `position` in `lane` was applied (one checkpoint per lane).
    Position {
        /// The ordered stream the position belongs to, e.g. `orders|partition=3`.
        lane: String,
        /// The position in it (offset, sequence).
        position: i64,
    },
}

/// A stored document and its version.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// 1 when created, +1 per change.
    pub version: u64,
    /// The read model, as JSON.
    pub body: serde_json::Value,
}

/// One atomic change: a document write (or none) and the idempotency mark.
#[derive(Clone, Debug)]
pub struct Change<'a> {
    /// The document's key.
    pub key: &'a str,
    /// The version the change was computed from (`None`: the document did not exist).
    pub expected_version: Option<u64>,
    /// The new body (`None`: delete, or nothing to write when there was no document).
    pub body: Option<serde_json::Value>,
    /// Committed with the write; a mark already there makes the change a duplicate.
    pub mark: &'a Mark,
}

/// The outcome of [`ReadModelStore::commit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Written, mark recorded.
    Applied,
    /// The mark was there already: the event was applied before; nothing written.
    Duplicate,
    /// The document changed since it was read: read it again and recompute.
    Conflict,
}

/// Why a read-model store operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReadModelErrorKind {
    /// The store cannot be reached. Transient.
    Unavailable,
    /// A stored document does not decode as the read model.
    Corrupt,
    /// Anything else.
    Other,
}

impl fmt::Display for ReadModelErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "read-model store unavailable",
            Self::Corrupt => "read-model document corrupt",
            Self::Other => "read-model store error",
        })
    }
}

/// A failed read-model store operation.
pub type ReadModelError = Error<ReadModelErrorKind>;

/// Stores read-model documents per namespace (a projection, or one generation of it),
/// with the idempotency marks committed atomically alongside.
///
/// `commit` is all-or-nothing: the mark is recorded exactly when the document write is,
/// so an event is applied at most once per namespace however often it is delivered.
pub trait ReadModelStore: Send + Sync {
    /// The document `key` of namespace `ns`.
    fn get<'a>(
        &'a self,
        ns: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Document>, ReadModelError>>;

    /// Whether `mark` was committed in `ns` (a fast path; `commit` checks again).
    fn seen<'a>(
        &'a self,
        ns: &'a str,
        mark: &'a Mark,
    ) -> BoxFuture<'a, Result<bool, ReadModelError>>;

    /// Writes `change` and its mark atomically.
    fn commit<'a>(
        &'a self,
        ns: &'a str,
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<Applied, ReadModelError>>;

    /// Every document of `ns`, by key.
    fn list<'a>(
        &'a self,
        ns: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Document)>, ReadModelError>>;

    /// Removes every document, mark and checkpoint of `ns` (before a rebuild).
    fn clear<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<(), ReadModelError>>;

    /// The position checkpoints of `ns`, by lane.
    fn checkpoints<'a>(
        &'a self,
        ns: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, ReadModelError>>;
}

impl<T: ReadModelStore + ?Sized> ReadModelStore for Arc<T> {
    fn get<'a>(
        &'a self,
        ns: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Document>, ReadModelError>> {
        (**self).get(ns, key)
    }
    fn seen<'a>(
        &'a self,
        ns: &'a str,
        mark: &'a Mark,
    ) -> BoxFuture<'a, Result<bool, ReadModelError>> {
        (**self).seen(ns, mark)
    }
    fn commit<'a>(
        &'a self,
        ns: &'a str,
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<Applied, ReadModelError>> {
        (**self).commit(ns, change)
    }
    fn list<'a>(
        &'a self,
        ns: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Document)>, ReadModelError>> {
        (**self).list(ns)
    }
    fn clear<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<(), ReadModelError>> {
        (**self).clear(ns)
    }
    fn checkpoints<'a>(
        &'a self,
        ns: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, ReadModelError>> {
        (**self).checkpoints(ns)
    }
}

#[derive(Default)]
struct Namespace {
    docs: BTreeMap<String, Document>,
    seen: HashSet<String>,
    checkpoints: HashMap<String, i64>,
}

/// Read models in process memory. Clones share the documents.
#[derive(Clone, Default)]
pub struct MemoryReadModelStore {
    inner: Arc<Mutex<HashMap<String, Namespace>>>,
}

impl fmt::Debug for MemoryReadModelStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryReadModelStore")
            .field("namespaces", &self.lock().len())
            .finish()
    }
}

impl MemoryReadModelStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Namespace>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(v))
}

impl ReadModelStore for MemoryReadModelStore {
    fn get<'a>(
        &'a self,
        ns: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Document>, ReadModelError>> {
        ready(Ok(self
            .lock()
            .get(ns)
            .and_then(|n| n.docs.get(key).cloned())))
    }

    fn seen<'a>(
        &'a self,
        ns: &'a str,
        mark: &'a Mark,
    ) -> BoxFuture<'a, Result<bool, ReadModelError>> {
        let st = self.lock();
        let seen = st.get(ns).is_some_and(|n| match mark {
            Mark::MessageId(id) => n.seen.contains(id),
            Mark::Position { lane, position } => {
                n.checkpoints.get(lane).is_some_and(|c| c >= position)
            }
        });
        ready(Ok(seen))
    }

    fn commit<'a>(
        &'a self,
        ns: &'a str,
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<Applied, ReadModelError>> {
        let mut st = self.lock();
        let n = st.entry(ns.to_owned()).or_default();
        let dup = match change.mark {
            Mark::MessageId(id) => n.seen.contains(id),
            Mark::Position { lane, position } => {
                n.checkpoints.get(lane).is_some_and(|c| c >= position)
            }
        };
        if dup {
            return ready(Ok(Applied::Duplicate));
        }
        let current = n.docs.get(change.key).map(|d| d.version);
        if current != change.expected_version {
            return ready(Ok(Applied::Conflict));
        }
        match (change.body, current) {
            (Some(body), v) => {
                n.docs.insert(
                    change.key.to_owned(),
                    Document {
                        version: v.unwrap_or(0) + 1,
                        body,
                    },
                );
            }
            (None, Some(_)) => {
                n.docs.remove(change.key);
            }
            (None, None) => {}
        }
        match change.mark {
            Mark::MessageId(id) => {
                n.seen.insert(id.clone());
            }
            Mark::Position { lane, position } => {
                n.checkpoints.insert(lane.clone(), *position);
            }
        }
        ready(Ok(Applied::Applied))
    }

    fn list<'a>(
        &'a self,
        ns: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Document)>, ReadModelError>> {
        let v = self
            .lock()
            .get(ns)
            .map(|n| n.docs.iter().map(|(k, d)| (k.clone(), d.clone())).collect())
            .unwrap_or_default();
        ready(Ok(v))
    }

    fn clear<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<(), ReadModelError>> {
        self.lock().remove(ns);
        ready(Ok(()))
    }

    fn checkpoints<'a>(
        &'a self,
        ns: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, ReadModelError>> {
        let mut v: Vec<(String, i64)> = self
            .lock()
            .get(ns)
            .map(|n| n.checkpoints.iter().map(|(k, p)| (k.clone(), *p)).collect())
            .unwrap_or_default();
        v.sort();
        ready(Ok(v))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn marks_make_commits_idempotent() {
        let s = MemoryReadModelStore::new();
        let m1 = Mark::MessageId("m1".into());
        let c = |v, body, mark| Change {
            key: "k",
            expected_version: v,
            body,
            mark,
        };
        assert_eq!(
            s.commit("ns", c(None, Some(json!(1)), &m1)).await.unwrap(),
            Applied::Applied
        );
        assert_eq!(
            s.commit("ns", c(Some(1), Some(json!(2)), &m1))
                .await
                .unwrap(),
            Applied::Duplicate
        );
        let m2 = Mark::MessageId("m2".into());
        assert_eq!(
            s.commit("ns", c(None, Some(json!(2)), &m2)).await.unwrap(),
            Applied::Conflict
        );
        assert!(!s.seen("ns", &m2).await.unwrap());
        assert_eq!(
            s.commit("ns", c(Some(1), Some(json!(2)), &m2))
                .await
                .unwrap(),
            Applied::Applied
        );
        assert_eq!(s.get("ns", "k").await.unwrap().unwrap().body, json!(2));
        let p = |position| Mark::Position {
            lane: "t|partition=0".into(),
            position,
        };
        let (p5, p4) = (p(5), p(4));
        assert_eq!(
            s.commit("ns", c(Some(2), None, &p5)).await.unwrap(),
            Applied::Applied
        );
        assert!(s.get("ns", "k").await.unwrap().is_none());
        assert_eq!(
            s.commit("ns", c(None, Some(json!(3)), &p5)).await.unwrap(),
            Applied::Duplicate
        );
        assert_eq!(
            s.commit("ns", c(None, Some(json!(3)), &p4)).await.unwrap(),
            Applied::Duplicate
        );
        assert_eq!(
            s.checkpoints("ns").await.unwrap(),
            vec![("t|partition=0".into(), 5)]
        );
        s.clear("ns").await.unwrap();
        assert!(s.list("ns").await.unwrap().is_empty());
    }
}
