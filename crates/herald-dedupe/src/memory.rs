//! The in-process store: a `moka` cache. For one process and for tests.
//!
//! Claims live in a concurrent cache: an in-progress key expires when its lease ends, a
//! done key when its retention ends. Nothing survives a restart and nothing is shared
//! between processes, so this store dedupes redeliveries within one process only (a
//! nack, an in-process retry of the broker, a replay while the process runs). When the
//! cache is full (`max_keys`) the least useful keys are evicted early and their messages
//! would be handled again on a redelivery.

use std::{
    fmt,
    time::{Duration, Instant},
};

use futures::future::{BoxFuture, ready};
use herald_core::dedupe::{Claim, ClaimToken, DedupeError, DedupeStore};
use moka::{Expiry, future::Cache, ops::compute::Op};
use uuid::Uuid;

/// Settings of a [`MemoryDedupe`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryDedupeConfig {
    /// How long a completed key is remembered. Default 24 h.
    pub retention: Duration,
    /// How many keys (in progress and done) are kept at most. Default 1 000 000.
    pub max_keys: u64,
}

impl Default for MemoryDedupeConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            max_keys: 1_000_000,
        }
    }
}

impl MemoryDedupeConfig {
    /// Sets the retention of completed keys.
    pub fn retention(mut self, d: Duration) -> Self {
        self.retention = d;
        self
    }

    /// Sets the key capacity.
    pub fn max_keys(mut self, n: u64) -> Self {
        self.max_keys = n;
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    InProgress(Uuid),
    Done,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    state: State,
    /// When the lease (in progress) or the retention (done) ends.
    until: Instant,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.until > now
    }
}

/// How long an expired claim lingers in the cache so the next claim can tell it took
/// over an expired lease (the entry is already claimable then: [`Entry::live`] decides).
const TAKEOVER_GRACE: Duration = Duration::from_secs(60);

struct UntilExpiry;

impl UntilExpiry {
    fn ttl(v: &Entry, now: Instant) -> Option<Duration> {
        let left = v.until.saturating_duration_since(now);
        Some(match v.state {
            State::InProgress(_) => left + TAKEOVER_GRACE,
            State::Done => left,
        })
    }
}

impl Expiry<String, Entry> for UntilExpiry {
    fn expire_after_create(&self, _: &String, v: &Entry, now: Instant) -> Option<Duration> {
        Self::ttl(v, now)
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Self::ttl(v, now)
    }
}

/// A [`DedupeStore`] in process memory; see the [module docs](self).
///
/// Cheap to clone: clones share the cache.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use herald_core::dedupe::{Claim, DedupeStore};
/// use herald_dedupe::memory::{MemoryDedupe, MemoryDedupeConfig};
///
/// let store = MemoryDedupe::new(MemoryDedupeConfig::default().retention(Duration::from_secs(600)));
/// let Claim::New(token) = store.begin("g:1", Duration::from_secs(30)).await.unwrap() else { panic!() };
/// assert_eq!(store.begin("g:1", Duration::from_secs(30)).await.unwrap(), Claim::InProgress);
/// store.complete(&token).await.unwrap();
/// assert_eq!(store.begin("g:1", Duration::from_secs(30)).await.unwrap(), Claim::Duplicate);
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryDedupe {
    cache: Cache<String, Entry>,
    config: MemoryDedupeConfig,
}

impl Default for MemoryDedupe {
    fn default() -> Self {
        Self::new(MemoryDedupeConfig::default())
    }
}

impl fmt::Debug for MemoryDedupe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryDedupe")
            .field("config", &self.config)
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl MemoryDedupe {
    /// A store with `config`.
    pub fn new(config: MemoryDedupeConfig) -> Self {
        let cache = Cache::builder()
            .max_capacity(config.max_keys)
            .expire_after(UntilExpiry)
            .build();
        Self { cache, config }
    }

    /// The settings.
    pub fn config(&self) -> &MemoryDedupeConfig {
        &self.config
    }

    /// Approximate number of keys held (expired ones may linger until the cache's
    /// housekeeping runs).
    pub fn len(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Whether the store holds no keys (approximate, like [`len`](Self::len)).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn claim(&self, key: &str, lease: Duration) -> Claim {
        let token = Uuid::new_v4();
        let mut outcome = Claim::InProgress;
        let lease = Duration::from_millis(herald_core::dedupe::lease_millis(lease));
        self.cache
            .entry_by_ref(key)
            .and_compute_with(|old| {
                let now = Instant::now();
                let fresh = Entry {
                    state: State::InProgress(token),
                    until: now + lease,
                };
                let op = match old.map(|e| e.into_value()) {
                    None => {
                        outcome = Claim::New(ClaimToken::new(key, token));
                        Op::Put(fresh)
                    }
                    Some(e) if !e.live(now) => {
                        let took_over = matches!(e.state, State::InProgress(_));
                        outcome = Claim::New(ClaimToken::new(key, token).with_takeover(took_over));
                        Op::Put(fresh)
                    }
                    Some(Entry {
                        state: State::Done, ..
                    }) => {
                        outcome = Claim::Duplicate;
                        Op::Nop
                    }
                    Some(_) => Op::Nop,
                };
                ready(op)
            })
            .await;
        outcome
    }

    /// Applies `done` (complete) or removal (abandon) if `claim` still holds its key.
    async fn settle(&self, claim: &ClaimToken, done: bool) -> Result<(), DedupeError> {
        let mut held = false;
        let retention = self.config.retention;
        self.cache
            .entry_by_ref(claim.key())
            .and_compute_with(|old| {
                let now = Instant::now();
                let op = match old.map(|e| e.into_value()) {
                    Some(e) if e.live(now) && e.state == State::InProgress(claim.token()) => {
                        held = true;
                        if done {
                            Op::Put(Entry {
                                state: State::Done,
                                until: now + retention,
                            })
                        } else {
                            Op::Remove
                        }
                    }
                    _ => Op::Nop,
                };
                ready(op)
            })
            .await;
        if held {
            Ok(())
        } else {
            Err(DedupeError::lease_lost(claim))
        }
    }
}

impl DedupeStore for MemoryDedupe {
    fn begin<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, DedupeError>> {
        Box::pin(async move { Ok(self.claim(key, lease).await) })
    }

    fn complete<'a>(&'a self, claim: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
        Box::pin(self.settle(claim, true))
    }

    fn abandon<'a>(&'a self, claim: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
        Box::pin(self.settle(claim, false))
    }
}
