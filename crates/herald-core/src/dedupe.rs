//! Idempotent consumers: the [`DedupeStore`] contract.
//!
//! Delivery is at-least-once, so a handler may see the same message again: after a
//! crash before the ack, a rebalance, a nack, a publisher retry or a dead-letter replay.
//! A dedupe store remembers which messages were handled so the
//! [dedupe middleware](crate::middleware::dedupe) can acknowledge a repeat without running
//! the handler again.
//!
//! # The claim protocol
//!
//! ```text
//!             begin(key, lease)
//!   absent ─────────────────────────▶ in progress (token T, until now + lease)
//!     ▲  ▲                               │        │              │
//!     │  │   abandon(T)                  │        │ lease runs   │ complete(T)
//!     │  └───────────────────────────────┘        │ out          ▼
//!     │                                           ▼           done (kept for the
//!     │     retention runs out            claimable again      backend's retention)
//!     └─────────────────────────────────────────────────────────┘
//! ```
//!
//! * [`begin`](DedupeStore::begin) answers [`Claim::New`] with a [`ClaimToken`] to the one
//!   caller that gets the key, [`Claim::Duplicate`] once the key is done, and
//!   [`Claim::InProgress`] while someone else holds an unexpired lease.
//! * A lease that runs out lets another worker claim the key (the first worker is
//!   presumed dead). The token is a **fencing token**: unique per claim, so a worker
//!   whose lease expired and was taken over cannot [`complete`](DedupeStore::complete) or
//!   [`abandon`](DedupeStore::abandon) the new holder's claim — it gets
//!   [`DedupeErrorKind::LeaseLost`]. Whether a claim whose lease ran out but that nobody
//!   took over may still be completed is up to the backend (PostgreSQL allows it; Redis
//!   and memory forget the claim when the lease ends).
//! * How long completed keys are kept (the *retention*) is backend configuration. After
//!   it a key is forgotten and a late redelivery runs the handler again, so keep it
//!   longer than the longest redelivery horizon (broker retention, DLQ replay window).
//!
//! The store gives **at-most-one-concurrent and at-least-once** handling, not
//! exactly-once effects: a worker that dies after its side effects but before
//! `complete` leaves the key to be claimed again when its lease ends. Exactly-once effects
//! need the "seen" mark to commit together with the effects — the transactional form of
//! the PostgreSQL backend in `herald-dedupe`.
//!
//! # Implementing a store
//! Methods return [`BoxFuture`] so the trait is object safe and the middleware holds an
//! `Arc<dyn DedupeStore>`. Map "the store cannot be reached" to
//! [`DedupeErrorKind::Unavailable`]: the middleware nacks and the broker redelivers — it
//! never acknowledges a message it holds no claim for. Override
//! [`begin_many`](DedupeStore::begin_many) and [`complete_many`](DedupeStore::complete_many)
//! when the backend can batch (a Redis pipeline, one SQL statement).
//!
//! # Examples
//! ```
//! # async fn demo(store: &dyn herald_core::dedupe::DedupeStore) -> Result<(), herald_core::dedupe::DedupeError> {
//! use std::time::Duration;
//! use herald_core::dedupe::Claim;
//!
//! match store.begin("billing:0190c6e2-…", Duration::from_secs(30)).await? {
//!     Claim::New(token) => {
//!         // … handle the message …
//!         store.complete(&token).await?;
//!     }
//!     Claim::Duplicate => { /* handled before: acknowledge */ }
//!     Claim::InProgress => { /* another worker has it: redeliver later */ }
//! }
//! # Ok(()) }
//! ```

use std::{fmt, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use uuid::Uuid;

use crate::Error;

/// Why a dedupe store operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DedupeErrorKind {
    /// The store cannot be reached or did not answer in time (connection refused,
    /// dropped, pool exhausted, timeout). Transient: try again later.
    Unavailable,
    /// The claim is no longer held by this token: its lease ran out and it was taken
    /// over (or forgotten), or it was already completed or abandoned.
    LeaseLost,
    /// Anything else the store reported (a bad query, a script error, bad config).
    Other,
}

impl fmt::Display for DedupeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "dedupe store unavailable",
            Self::LeaseLost => "dedupe lease lost",
            Self::Other => "dedupe store error",
        })
    }
}

/// A failed dedupe store operation.
pub type DedupeError = Error<DedupeErrorKind>;

impl DedupeError {
    /// Whether the same operation may succeed later (the store was unavailable).
    pub fn is_retriable(&self) -> bool {
        matches!(self.kind(), DedupeErrorKind::Unavailable)
    }

    /// Whether this is [`DedupeErrorKind::LeaseLost`].
    pub fn is_lease_lost(&self) -> bool {
        matches!(self.kind(), DedupeErrorKind::LeaseLost)
    }

    /// A [`DedupeErrorKind::LeaseLost`] error for `claim`.
    pub fn lease_lost(claim: &ClaimToken) -> Self {
        Self::new(
            DedupeErrorKind::LeaseLost,
            format!(
                "key {:?} is no longer held by token {}",
                claim.key(),
                claim.token()
            ),
        )
    }
}

/// Proof of a claim on a key: the key and a unique fencing token.
///
/// Only the holder of the current token can [`complete`](DedupeStore::complete) or
/// [`abandon`](DedupeStore::abandon) the claim. Tokens are random UUIDs, unique per claim.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClaimToken {
    key: String,
    token: Uuid,
    took_over: bool,
}

impl ClaimToken {
    /// A token for `key` with a fresh random fencing token; for store implementations.
    pub fn generate(key: impl Into<String>) -> Self {
        Self::new(key, Uuid::new_v4())
    }

    /// A token for `key` with the given fencing token; for store implementations.
    pub fn new(key: impl Into<String>, token: Uuid) -> Self {
        Self {
            key: key.into(),
            token,
            took_over: false,
        }
    }

    /// Marks this claim as having taken over another worker's expired lease; for store
    /// implementations that can tell.
    pub fn with_takeover(mut self, took_over: bool) -> Self {
        self.took_over = took_over;
        self
    }

    /// The claimed key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fencing token.
    pub fn token(&self) -> Uuid {
        self.token
    }

    /// Whether this claim took over another worker's expired lease (only backends that
    /// can tell set it: memory and PostgreSQL do, Redis cannot — its leases just vanish).
    pub fn took_over_expired_lease(&self) -> bool {
        self.took_over
    }
}

/// The answer to [`DedupeStore::begin`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "a New claim must be completed or abandoned"]
pub enum Claim {
    /// This caller holds the key until the lease ends: handle the message, then
    /// [`complete`](DedupeStore::complete) (or [`abandon`](DedupeStore::abandon) on failure).
    New(ClaimToken),
    /// The key was completed within the retention: the message was handled already.
    Duplicate,
    /// Another worker holds an unexpired claim on the key.
    InProgress,
}

impl Claim {
    /// The token of a [`Claim::New`].
    pub fn token(&self) -> Option<&ClaimToken> {
        match self {
            Self::New(t) => Some(t),
            _ => None,
        }
    }

    /// Whether this is [`Claim::New`].
    pub fn is_new(&self) -> bool {
        matches!(self, Self::New(_))
    }
}

/// Remembers which keys were handled; see the [module docs](self) for the protocol.
///
/// * Implementations are `Send + Sync` and shared behind an `Arc`; every method may be
///   called concurrently, from many processes, for the same key — exactly one concurrent
///   [`begin`](Self::begin) of an absent key gets [`Claim::New`].
/// * Methods return [`BoxFuture`] so the trait is object safe (`Arc<dyn DedupeStore>`).
/// * A store that cannot be reached answers [`DedupeErrorKind::Unavailable`]; callers
///   treat that as "unknown" and must not acknowledge the message.
/// * `complete` and `abandon` with a token that no longer holds the key answer
///   [`DedupeErrorKind::LeaseLost`] and change nothing.
pub trait DedupeStore: Send + Sync {
    /// Claims `key` for `lease` (rounded up to whole milliseconds).
    ///
    /// # Examples
    /// ```
    /// # async fn demo(store: std::sync::Arc<dyn herald_core::dedupe::DedupeStore>) {
    /// use std::time::Duration;
    /// let claim = store.begin("group:message-id", Duration::from_secs(30)).await;
    /// # let _ = claim;
    /// # }
    /// ```
    fn begin<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, DedupeError>>;

    /// Marks the claimed key done: later `begin`s answer [`Claim::Duplicate`] for the
    /// backend's retention.
    fn complete<'a>(&'a self, claim: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>>;

    /// Releases the claim without marking the key done, so the next `begin` gets it (a
    /// retry or a dead-letter replay runs the handler again).
    fn abandon<'a>(&'a self, claim: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>>;

    /// Claims several keys; the answers are in the order of `keys`.
    ///
    /// A key that appears more than once gets one answer per occurrence: the first as if
    /// alone, the later ones [`Claim::InProgress`] when the first got the key. The default
    /// calls [`begin`](Self::begin) for each key in turn; on an error it abandons the
    /// claims it already made (best effort) and returns the error. Backends override it to
    /// claim in one round trip.
    fn begin_many<'a>(
        &'a self,
        keys: &'a [String],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, DedupeError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                match self.begin(key, lease).await {
                    Ok(c) => out.push(c),
                    Err(e) => {
                        for c in &out {
                            if let Claim::New(t) = c {
                                let _ = self.abandon(t).await;
                            }
                        }
                        return Err(e);
                    }
                }
            }
            Ok(out)
        })
    }

    /// Completes several claims; one result per claim, in order (a token that lost its
    /// lease gets [`DedupeErrorKind::LeaseLost`] without failing the others). The
    /// default calls [`complete`](Self::complete) for each in turn.
    fn complete_many<'a>(
        &'a self,
        claims: &'a [ClaimToken],
    ) -> BoxFuture<'a, Vec<Result<(), DedupeError>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(claims.len());
            for c in claims {
                out.push(self.complete(c).await);
            }
            out
        })
    }
}

impl<T: DedupeStore + ?Sized> DedupeStore for Arc<T> {
    fn begin<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, DedupeError>> {
        (**self).begin(key, lease)
    }
    fn complete<'a>(&'a self, claim: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
        (**self).complete(claim)
    }
    fn abandon<'a>(&'a self, claim: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
        (**self).abandon(claim)
    }
    fn begin_many<'a>(
        &'a self,
        keys: &'a [String],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, DedupeError>> {
        (**self).begin_many(keys, lease)
    }
    fn complete_many<'a>(
        &'a self,
        claims: &'a [ClaimToken],
    ) -> BoxFuture<'a, Vec<Result<(), DedupeError>>> {
        (**self).complete_many(claims)
    }
}

impl<T: DedupeStore + ?Sized> DedupeStore for Box<T> {
    fn begin<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, DedupeError>> {
        (**self).begin(key, lease)
    }
    fn complete<'a>(&'a self, claim: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
        (**self).complete(claim)
    }
    fn abandon<'a>(&'a self, claim: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
        (**self).abandon(claim)
    }
    fn begin_many<'a>(
        &'a self,
        keys: &'a [String],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, DedupeError>> {
        (**self).begin_many(keys, lease)
    }
    fn complete_many<'a>(
        &'a self,
        claims: &'a [ClaimToken],
    ) -> BoxFuture<'a, Vec<Result<(), DedupeError>>> {
        (**self).complete_many(claims)
    }
}

/// Milliseconds of `d`, rounded up, at least 1; for backends that speak milliseconds.
pub fn lease_millis(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_object_safe() {
        fn takes(_: Option<&dyn DedupeStore>) {}
        takes(None);
        let _: Option<Arc<dyn DedupeStore>> = None;
    }

    #[test]
    fn error_kinds() {
        let t = ClaimToken::generate("g:1");
        let e = DedupeError::lease_lost(&t);
        assert!(e.is_lease_lost());
        assert!(!e.is_retriable());
        assert!(e.to_string().starts_with("dedupe lease lost"));
        assert!(DedupeError::new(DedupeErrorKind::Unavailable, "down").is_retriable());
        assert!(!DedupeError::new(DedupeErrorKind::Other, "x").is_retriable());
    }

    #[test]
    fn tokens_are_unique() {
        let a = ClaimToken::generate("k");
        let b = ClaimToken::generate("k");
        assert_eq!(a.key(), "k");
        assert_ne!(a.token(), b.token());
        assert!(!a.took_over_expired_lease());
        assert!(a.with_takeover(true).took_over_expired_lease());
    }

    #[test]
    fn millis_round_up() {
        assert_eq!(lease_millis(Duration::from_micros(1)), 1);
        assert_eq!(lease_millis(Duration::ZERO), 1);
        assert_eq!(lease_millis(Duration::from_micros(1500)), 2);
        assert_eq!(lease_millis(Duration::from_secs(30)), 30_000);
    }
}
