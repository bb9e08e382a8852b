//! [`ParkedKeys`]: which keys have messages in the retry path, for ordered retry.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, Mutex},
};

use futures::future::BoxFuture;

use crate::{Error, Origin};

/// Why a [`ParkedKeys`] operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParkedKeysErrorKind {
    /// The store cannot be reached or did not answer in time: try again later.
    Unavailable,
    /// Anything else the store reported.
    Other,
}

impl fmt::Display for ParkedKeysErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "parked-keys store unavailable",
            Self::Other => "parked-keys store error",
        })
    }
}

/// A failed [`ParkedKeys`] operation.
pub type ParkedKeysError = Error<ParkedKeysErrorKind>;

impl ParkedKeysError {
    /// Whether the same operation may succeed later.
    pub fn is_retriable(&self) -> bool {
        matches!(self.kind(), ParkedKeysErrorKind::Unavailable)
    }
}

/// The place of a message in its key's order: its position on the **original** topic
/// (Kafka and memory: partition, offset; NATS: stream sequence), compared value by value.
///
/// Messages of one key sit in one partition (one subject), so their positions order them
/// exactly as they were published. The ticket stays with a message through every retry
/// level (it travels in the `herald-original-<name>` headers).
///
/// # Examples
/// ```
/// use herald_core::{Origin, retry_topics::Ticket};
/// let a = Ticket::of(&Origin::new("orders").with("partition", 2).with("offset", 41));
/// let b = Ticket::of(&Origin::new("orders").with("partition", 2).with("offset", 42));
/// assert!(a < b);
/// assert!(Ticket::of(&Origin::new("orders")).is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub Vec<i64>);

impl Ticket {
    /// The ticket of a message at `origin` (its position values, in order).
    pub fn of(origin: &Origin) -> Self {
        Self(origin.position.iter().map(|(_, v)| *v).collect())
    }

    /// Whether the origin had no position (such messages are not ordered).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// What a store knows of one key: how many of its messages are in the retry path, the
/// oldest one (the head: the only one that may be handled) and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Parked {
    /// Messages of the key in the retry path.
    pub count: u64,
    /// The oldest one's ticket.
    pub head: Ticket,
    /// The retry level the oldest one was last sent to.
    pub head_level: u32,
    /// The level of the ticket asked about, if it is parked.
    pub mine: Option<u32>,
}

impl Parked {
    /// A record; for store implementations.
    pub fn new(count: u64, head: Ticket, head_level: u32, mine: Option<u32>) -> Self {
        Self {
            count,
            head,
            head_level,
            mine,
        }
    }
}

/// The set of keys that have messages in the retry path, with their messages' tickets
/// and retry levels — what ordered retry needs to keep per-key order.
///
/// Keys arrive namespaced by the layer (`<group> NUL <topic> NUL <key bytes>`), so one
/// store can serve every route of a service.
///
/// * [`park`](Self::park) records that message `ticket` of `key` now sits at retry
///   `level` (insert or move);
/// * [`release`](Self::release) forgets it (it was handled, or dead-lettered); releasing
///   a ticket that is not there is not an error;
/// * [`lookup`](Self::lookup) returns the key's [`Parked`] record (`None`: not parked),
///   including whether `ticket` itself is parked;
/// * [`clear`](Self::clear) forgets everything (before a rebuild, see
///   [`RetryTopics::recover`](super::RetryTopics::recover)).
///
/// Methods return boxed futures so the trait is object safe (the layer holds an
/// `Arc<dyn ParkedKeys>`, shared by every route, lane and in-flight message — it is never
/// cloned). Map "cannot reach the store" to [`ParkedKeysErrorKind::Unavailable`]: the
/// layer then nacks the delivery (it comes back later) and never decides without the
/// store.
///
/// # Which store
/// The store must be **shared by every process that consumes the topic and its retry
/// topics in the group**: partitions of the main topic and of each retry topic are
/// assigned independently, so the message that parks a key and the messages that follow
/// it may be consumed by different processes. [`MemoryParkedKeys`] is one process's
/// memory: right for a single consumer process (and for the memory transport, whose
/// topics live and die with it); after a restart rebuild it with
/// [`RetryTopics::recover`](super::RetryTopics::recover). Several processes need a shared,
/// durable store (Redis or PostgreSQL — the connection handling of `herald-dedupe`'s
/// stores is the natural base), which also survives restarts without a rebuild.
pub trait ParkedKeys: Send + Sync {
    /// Records that `ticket` of `key` sits at retry `level` (inserts or moves it).
    fn park<'a>(
        &'a self,
        key: &'a [u8],
        ticket: &'a Ticket,
        level: u32,
    ) -> BoxFuture<'a, Result<(), ParkedKeysError>>;

    /// Forgets `ticket` of `key`; the key is no longer parked when it was the last one.
    fn release<'a>(
        &'a self,
        key: &'a [u8],
        ticket: &'a Ticket,
    ) -> BoxFuture<'a, Result<(), ParkedKeysError>>;

    /// The key's record, with `mine` set when `ticket` is parked; `None` when the key has
    /// nothing in the retry path.
    fn lookup<'a>(
        &'a self,
        key: &'a [u8],
        ticket: &'a Ticket,
    ) -> BoxFuture<'a, Result<Option<Parked>, ParkedKeysError>>;

    /// Forgets every key.
    fn clear(&self) -> BoxFuture<'_, Result<(), ParkedKeysError>>;
}

impl<P: ParkedKeys + ?Sized> ParkedKeys for Arc<P> {
    fn park<'a>(
        &'a self,
        key: &'a [u8],
        ticket: &'a Ticket,
        level: u32,
    ) -> BoxFuture<'a, Result<(), ParkedKeysError>> {
        (**self).park(key, ticket, level)
    }
    fn release<'a>(
        &'a self,
        key: &'a [u8],
        ticket: &'a Ticket,
    ) -> BoxFuture<'a, Result<(), ParkedKeysError>> {
        (**self).release(key, ticket)
    }
    fn lookup<'a>(
        &'a self,
        key: &'a [u8],
        ticket: &'a Ticket,
    ) -> BoxFuture<'a, Result<Option<Parked>, ParkedKeysError>> {
        (**self).lookup(key, ticket)
    }
    fn clear(&self) -> BoxFuture<'_, Result<(), ParkedKeysError>> {
        (**self).clear()
    }
}

/// [`ParkedKeys`] in this process's memory: a map of key → (ticket → level).
///
/// Lost on restart: rebuild it with [`RetryTopics::recover`](super::RetryTopics::recover)
/// before starting the routes. Not shared between processes (see the trait docs).
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), herald_core::retry_topics::ParkedKeysError> {
/// use herald_core::retry_topics::{MemoryParkedKeys, ParkedKeys, Ticket};
/// let store = MemoryParkedKeys::new();
/// store.park(b"A", &Ticket(vec![0, 7]), 1).await?;
/// store.park(b"A", &Ticket(vec![0, 9]), 1).await?;
/// let p = store.lookup(b"A", &Ticket(vec![0, 9])).await?.expect("parked");
/// assert_eq!((p.count, p.head.clone(), p.mine), (2, Ticket(vec![0, 7]), Some(1)));
/// store.release(b"A", &Ticket(vec![0, 7])).await?;
/// store.release(b"A", &Ticket(vec![0, 9])).await?;
/// assert!(store.lookup(b"A", &Ticket::default()).await?.is_none());
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryParkedKeys {
    keys: Arc<Mutex<KeyMap>>,
}

/// Key → (ticket → level).
type KeyMap = HashMap<Vec<u8>, BTreeMap<Ticket, u32>>;

impl fmt::Debug for MemoryParkedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryParkedKeys")
            .field("keys", &self.len())
            .finish()
    }
}

impl MemoryParkedKeys {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, KeyMap> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many keys are parked.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no key is parked.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// How many messages are parked in all.
    pub fn messages(&self) -> usize {
        self.map().values().map(BTreeMap::len).sum()
    }
}

impl ParkedKeys for MemoryParkedKeys {
    fn park<'a>(
        &'a self,
        key: &'a [u8],
        ticket: &'a Ticket,
        level: u32,
    ) -> BoxFuture<'a, Result<(), ParkedKeysError>> {
        self.map()
            .entry(key.to_vec())
            .or_default()
            .insert(ticket.clone(), level);
        Box::pin(std::future::ready(Ok(())))
    }

    fn release<'a>(
        &'a self,
        key: &'a [u8],
        ticket: &'a Ticket,
    ) -> BoxFuture<'a, Result<(), ParkedKeysError>> {
        let mut map = self.map();
        if let Some(tickets) = map.get_mut(key) {
            tickets.remove(ticket);
            if tickets.is_empty() {
                map.remove(key);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn lookup<'a>(
        &'a self,
        key: &'a [u8],
        ticket: &'a Ticket,
    ) -> BoxFuture<'a, Result<Option<Parked>, ParkedKeysError>> {
        let found = self.map().get(key).and_then(|tickets| {
            let (head, level) = tickets.first_key_value()?;
            Some(Parked::new(
                tickets.len() as u64,
                head.clone(),
                *level,
                tickets.get(ticket).copied(),
            ))
        });
        Box::pin(std::future::ready(Ok(found)))
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), ParkedKeysError>> {
        self.map().clear();
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_object_safe() {
        let store: Arc<dyn ParkedKeys> = Arc::new(MemoryParkedKeys::new());
        let _also: Box<dyn ParkedKeys> = Box::new(store);
    }

    #[tokio::test]
    async fn head_is_the_oldest_and_moves_with_park() {
        let s = MemoryParkedKeys::new();
        let (t1, t2) = (Ticket(vec![1, 5]), Ticket(vec![1, 9]));
        s.park(b"k", &t2, 1).await.unwrap();
        s.park(b"k", &t1, 1).await.unwrap();
        s.park(b"k", &t1, 3).await.unwrap(); // moved up a level
        let p = s.lookup(b"k", &t2).await.unwrap().unwrap();
        assert_eq!(p.count, 2);
        assert_eq!(p.head, t1);
        assert_eq!(p.head_level, 3);
        assert_eq!(p.mine, Some(1));
        assert!(s.lookup(b"other", &t1).await.unwrap().is_none());
        s.release(b"k", &Ticket(vec![7])).await.unwrap(); // not there: fine
        s.release(b"k", &t1).await.unwrap();
        let p = s.lookup(b"k", &t1).await.unwrap().unwrap();
        assert_eq!((p.count, p.head, p.mine), (1, t2.clone(), None));
        s.release(b"k", &t2).await.unwrap();
        assert!(s.is_empty());
        s.park(b"k", &t2, 1).await.unwrap();
        s.clear().await.unwrap();
        assert_eq!(s.messages(), 0);
    }
}
