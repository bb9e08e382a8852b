//! [`DedupeLayer`]: the dedupe configuration.

use std::{fmt, sync::Arc, time::Duration};

use tower_layer::Layer;

use super::Dedupe;
use crate::{Inbound, dedupe::DedupeStore};

/// Extracts the dedupe key from a delivery; `None` means "no key" (see [`MissingKey`]).
pub type KeyFn = Arc<dyn Fn(&Inbound) -> Option<String> + Send + Sync>;

/// What to do with a delivery the key function returns `None` for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingKey {
    /// Run the handler without dedupe (the key function exempts such messages).
    #[default]
    Bypass,
    /// Fail with a [`Permanent`](crate::ErrorClass::Permanent) error (straight to the
    /// dead-letter queue): every message must carry its idempotency key.
    Reject,
}

/// The default key: `"{group}:{message id}"`.
pub fn default_key(inbound: &Inbound) -> Option<String> {
    Some(format!("{}:{}", inbound.route.group, inbound.message.id))
}

/// Builds [`Dedupe`] services that share one store and one configuration.
///
/// | setting | default | what |
/// |---|---|---|
/// | key | `"{group}:{message id}"` | [`key_fn`](Self::key_fn) |
/// | lease | 30 s | how long a claim holds before another worker may take it over |
/// | in-progress delay | 2 s | redelivery delay while another worker holds the key |
/// | unavailable delay | 5 s | redelivery delay while the store cannot be reached |
/// | store timeout | 5 s | a store call slower than this counts as unavailable |
/// | missing key | [`MissingKey::Bypass`] | what a `None` key means |
///
/// # Examples
/// ```
/// use std::{sync::Arc, time::Duration};
/// use herald_core::{handler_fn, Inbound, dedupe::DedupeStore, middleware::dedupe::DedupeLayer};
/// use tower::Layer;
/// # fn demo(store: Arc<dyn DedupeStore>) {
/// // A business idempotency key from a header instead of the message id.
/// let layer = DedupeLayer::new(store)
///     .key_fn(|i: &Inbound| i.message.header("idempotency-key").map(|k| format!("payments:{k}")))
///     .lease(Duration::from_secs(60));
/// let handler = layer.layer(handler_fn(|_: Inbound| async { Ok(()) }));
/// # let _ = handler;
/// # }
/// ```
#[derive(Clone)]
pub struct DedupeLayer {
    pub(super) store: Arc<dyn DedupeStore>,
    pub(super) key: KeyFn,
    pub(super) lease: Duration,
    pub(super) in_progress_delay: Duration,
    pub(super) unavailable_delay: Duration,
    pub(super) store_timeout: Duration,
    pub(super) missing_key: MissingKey,
}

impl DedupeLayer {
    /// A layer over `store` with the defaults in the table above.
    pub fn new(store: Arc<dyn DedupeStore>) -> Self {
        Self {
            store,
            key: Arc::new(default_key),
            lease: Duration::from_secs(30),
            in_progress_delay: Duration::from_secs(2),
            unavailable_delay: Duration::from_secs(5),
            store_timeout: Duration::from_secs(5),
            missing_key: MissingKey::Bypass,
        }
    }

    /// Uses `f` for the key: e.g. a business idempotency key from a header or the
    /// decoded payload. Include the consumer group (or handler name) when several groups
    /// share one store, or they will dedupe each other's messages.
    pub fn key_fn(
        mut self,
        f: impl Fn(&Inbound) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key = Arc::new(f);
        self
    }

    /// How long a claim holds. Make it longer than the handler's worst-case time
    /// **including** the retries and timeouts inside the dedupe layer; a handler still
    /// running when its lease ends may run concurrently with a redelivery.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The redelivery delay when another worker holds the key.
    pub fn in_progress_delay(mut self, d: Duration) -> Self {
        self.in_progress_delay = d;
        self
    }

    /// The redelivery delay when the store cannot be reached.
    pub fn unavailable_delay(mut self, d: Duration) -> Self {
        self.unavailable_delay = d;
        self
    }

    /// The deadline of each store call; a slower call counts as unavailable.
    pub fn store_timeout(mut self, d: Duration) -> Self {
        self.store_timeout = d;
        self
    }

    /// What a `None` key means.
    pub fn missing_key(mut self, m: MissingKey) -> Self {
        self.missing_key = m;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn DedupeStore> {
        &self.store
    }

    /// The lease.
    pub fn lease_duration(&self) -> Duration {
        self.lease
    }
}

impl fmt::Debug for DedupeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupeLayer")
            .field("lease", &self.lease)
            .field("in_progress_delay", &self.in_progress_delay)
            .field("unavailable_delay", &self.unavailable_delay)
            .field("store_timeout", &self.store_timeout)
            .field("missing_key", &self.missing_key)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for DedupeLayer {
    type Service = Dedupe<S>;

    fn layer(&self, inner: S) -> Dedupe<S> {
        Dedupe::new(inner, self.clone())
    }
}
