//! The Redis store: `SET key token NX PX lease` to claim, Lua to settle.
//!
//! Each key is one Redis string under [`RedisDedupeConfig::key_prefix`]:
//!
//! | value | meaning | expires |
//! |---|---|---|
//! | absent | never seen, abandoned, or forgotten | — |
//! | a claim token (UUID) | in progress | when the lease ends (`PX`) |
//! | `done` | handled | after the retention |
//!
//! * **Claim**: `SET k token NX PX lease`, pipelined with a `GET k` in the same round trip:
//!   `OK` → [`Claim::New`]; otherwise `done` → [`Claim::Duplicate`], a token →
//!   [`Claim::InProgress`]. [`begin_many`](DedupeStore::begin_many) sends every key in
//!   one pipeline.
//! * **Complete / abandon**: a small Lua script compares the stored token with the
//!   caller's and only then sets `done` with the retention TTL (or deletes the key), so a
//!   worker whose lease ran out cannot settle another worker's claim.
//! * **Atomic completion** ([`RedisDedupe::complete_with`], [`atomic`]): the handler's
//!   own Redis writes and the `done` mark are applied by one script, all or none, if the
//!   token still holds the key — exactly-once effects for effects that are Redis writes.
//!
//! Redis cannot tell that a claim took over an expired lease (the old value just
//! vanished), so [`ClaimToken::took_over_expired_lease`] is always `false` here.
//! Durability is Redis's: with neither RDB nor AOF, a restart forgets every key and the
//! messages in flight then are handled again.

use std::{
    fmt,
    future::Future,
    sync::{Arc, LazyLock},
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use herald_core::{
    HandlerError, Inbound,
    dedupe::{Claim, ClaimToken, DedupeError, DedupeErrorKind, DedupeStore, lease_millis},
};
use redis::{
    AsyncCommands, RedisError, RetryMethod, Script, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tower_service::Service;

use crate::handler::{Settings, settings_builders};

const DONE: &str = "done";

static COMPLETE: LazyLock<Script> = LazyLock::new(|| Script::new(COMPLETE_LUA));
static ABANDON: LazyLock<Script> = LazyLock::new(|| Script::new(ABANDON_LUA));
static APPLY: LazyLock<Script> = LazyLock::new(|| Script::new(APPLY_LUA));

/// KEYS[1] = key, ARGV[1] = token, ARGV[2] = retention (ms).
const COMPLETE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
  return 1
end
return 0
";

/// KEYS[1] = key, ARGV[1] = token.
const ABANDON_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// KEYS[1] = key, ARGV[1] = token, ARGV[2] = retention (ms), ARGV[3] = number of
/// commands, then per command its argument count and arguments.
const APPLY_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  local argc = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + argc))
  i = i + 1 + argc
end
redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
return 1
";

/// Settings of a [`RedisDedupe`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisDedupeConfig {
    /// Prepended to every key. Default `herald:dedupe:`.
    pub key_prefix: String,
    /// How long a completed key is remembered. Default 7 days.
    pub retention: Duration,
    /// Deadline of each connection attempt. Default 2 s.
    pub connection_timeout: Duration,
    /// Deadline of each command's answer. Default 2 s.
    pub response_timeout: Duration,
}

impl Default for RedisDedupeConfig {
    fn default() -> Self {
        Self {
            key_prefix: "herald:dedupe:".into(),
            retention: Duration::from_secs(7 * 24 * 3600),
            connection_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
        }
    }
}

impl RedisDedupeConfig {
    /// Sets the key prefix.
    pub fn key_prefix(mut self, p: impl Into<String>) -> Self {
        self.key_prefix = p.into();
        self
    }

    /// Sets the retention of completed keys.
    pub fn retention(mut self, d: Duration) -> Self {
        self.retention = d;
        self
    }
}

/// A [`DedupeStore`] in Redis; see the [module docs](self).
///
/// Cheap to clone: clones share the connection.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), herald_core::dedupe::DedupeError> {
/// use std::{sync::Arc, time::Duration};
/// use herald_core::middleware::dedupe::DedupeLayer;
/// use herald_dedupe::redis::{RedisDedupe, RedisDedupeConfig};
///
/// let store = RedisDedupe::connect(
///     "redis://127.0.0.1:6379",
///     RedisDedupeConfig::default().key_prefix("billing:dedupe:").retention(Duration::from_secs(86_400)),
/// ).await?;
/// let layer = DedupeLayer::new(Arc::new(store));
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisDedupe {
    conn: ConnectionManager,
    config: Arc<RedisDedupeConfig>,
}

impl fmt::Debug for RedisDedupe {
    /// The connection (whose URL may hold a password) is not printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDedupe")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Maps a Redis error: anything the client would retry or reconnect for is
/// [`DedupeErrorKind::Unavailable`].
pub fn map_error(e: RedisError) -> DedupeError {
    let kind =
        if e.is_io_error() || e.is_timeout() || !matches!(e.retry_method(), RetryMethod::NoRetry) {
            DedupeErrorKind::Unavailable
        } else {
            DedupeErrorKind::Other
        };
    DedupeError::new(kind, "redis").with_source(e)
}

impl RedisDedupe {
    /// Connects to `url` (`redis://[:password@]host:port[/db]`) with a reconnecting
    /// [`ConnectionManager`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), herald_core::dedupe::DedupeError> {
    /// use herald_dedupe::redis::{RedisDedupe, RedisDedupeConfig};
    /// let store = RedisDedupe::connect("redis://127.0.0.1:6379", RedisDedupeConfig::default()).await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub async fn connect(url: &str, config: RedisDedupeConfig) -> Result<Self, DedupeError> {
        let client = redis::Client::open(url).map_err(|e| {
            DedupeError::new(DedupeErrorKind::Other, "invalid Redis URL").with_source(e)
        })?;
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connection_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client, mcfg)
            .await
            .map_err(map_error)?;
        Ok(Self::new(conn, config))
    }

    /// A store over an existing connection.
    pub fn new(conn: ConnectionManager, config: RedisDedupeConfig) -> Self {
        Self {
            conn,
            config: Arc::new(config),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RedisDedupeConfig {
        &self.config
    }

    /// The connection (shared with the store), e.g. for a handler's own reads.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The Redis key that holds `key`.
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.config.key_prefix)
    }

    fn retention_ms(&self) -> u64 {
        lease_millis(self.config.retention)
    }

    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim, DedupeError> {
        let rk = self.redis_key(key);
        // The key may vanish between a refused SET and the GET (abandoned or expired):
        // try again a few times, then report it as in progress (redelivered shortly).
        for _ in 0..3 {
            let token = ClaimToken::generate(key);
            let mut p = redis::pipe();
            p.cmd("SET")
                .arg(&rk)
                .arg(token.token().to_string())
                .arg("NX")
                .arg("PX")
                .arg(lease_millis(lease))
                .cmd("GET")
                .arg(&rk);
            let (set, value): (Option<String>, Option<String>) = p
                .query_async(&mut self.conn.clone())
                .await
                .map_err(map_error)?;
            if set.is_some() {
                return Ok(Claim::New(token));
            }
            match value.as_deref() {
                Some(DONE) => return Ok(Claim::Duplicate),
                Some(_) => return Ok(Claim::InProgress),
                None => continue,
            }
        }
        Ok(Claim::InProgress)
    }

    async fn settle(&self, claim: &ClaimToken, done: bool) -> Result<(), DedupeError> {
        let script = if done { &*COMPLETE } else { &*ABANDON };
        let mut inv = script.key(self.redis_key(claim.key()));
        inv.arg(claim.token().to_string());
        if done {
            inv.arg(self.retention_ms());
        }
        let held: i64 = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map_error)?;
        if held == 1 {
            Ok(())
        } else {
            Err(DedupeError::lease_lost(claim))
        }
    }

    /// Completes `claim` and applies `writes` in one atomic step, if `claim` still holds
    /// its key: either the writes and the `done` mark both happen, or neither does (the
    /// claim was lost: [`DedupeErrorKind::LeaseLost`]).
    ///
    /// The writes run inside a Lua script: use commands that cannot fail on valid input
    /// (`SADD`, `RPUSH`, `HSET`, `INCRBY`, `SET` …). Redis does not roll a script back, so
    /// a command that errors half-way leaves the earlier ones applied and the claim
    /// unsettled. On [`DedupeErrorKind::Unavailable`] the outcome is unknown: the
    /// redelivery finds the key either done (applied) or still claimed until the lease ends
    /// (not applied), never applied twice.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(store: herald_dedupe::redis::RedisDedupe, token: herald_core::dedupe::ClaimToken) -> Result<(), herald_core::dedupe::DedupeError> {
    /// let mut writes = redis::pipe();
    /// writes.cmd("RPUSH").arg("applied").arg(token.key());
    /// store.complete_with(&token, &writes).await?;
    /// # Ok(()) }
    /// ```
    pub async fn complete_with(
        &self,
        claim: &ClaimToken,
        writes: &redis::Pipeline,
    ) -> Result<(), DedupeError> {
        let mut inv = APPLY.key(self.redis_key(claim.key()));
        inv.arg(claim.token().to_string()).arg(self.retention_ms());
        let cmds: Vec<_> = writes.cmd_iter().collect();
        inv.arg(cmds.len());
        for cmd in cmds {
            inv.arg(cmd.args_iter().len());
            for a in cmd.args_iter() {
                match a {
                    redis::Arg::Simple(bytes) => {
                        inv.arg(bytes);
                    }
                    _ => {
                        return Err(DedupeError::new(
                            DedupeErrorKind::Other,
                            "complete_with: cursor arguments cannot be applied",
                        ));
                    }
                }
            }
        }
        let held: i64 = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map_error)?;
        if held == 1 {
            Ok(())
        } else {
            Err(DedupeError::lease_lost(claim))
        }
    }

    /// Forgets `key` whatever its state (an operator's "handle this again").
    pub async fn forget(&self, key: &str) -> Result<(), DedupeError> {
        let _: i64 = self
            .conn
            .clone()
            .del(self.redis_key(key))
            .await
            .map_err(map_error)?;
        Ok(())
    }
}

impl DedupeStore for RedisDedupe {
    fn begin<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, DedupeError>> {
        Box::pin(self.claim(key, lease))
    }

    fn complete<'a>(&'a self, claim: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
        Box::pin(self.settle(claim, true))
    }

    fn abandon<'a>(&'a self, claim: &'a ClaimToken) -> BoxFuture<'a, Result<(), DedupeError>> {
        Box::pin(self.settle(claim, false))
    }

    /// One pipeline: `SET NX PX` + `GET` per distinct key.
    fn begin_many<'a>(
        &'a self,
        keys: &'a [String],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, DedupeError>> {
        Box::pin(async move {
            let ms = lease_millis(lease);
            let (unique, slots) = crate::batch::distinct(keys);
            let tokens: Vec<ClaimToken> = unique.iter().map(|k| ClaimToken::generate(*k)).collect();
            let mut p = redis::pipe();
            for t in &tokens {
                let rk = self.redis_key(t.key());
                p.cmd("SET")
                    .arg(&rk)
                    .arg(t.token().to_string())
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .cmd("GET")
                    .arg(&rk);
            }
            let values: Vec<Value> = if tokens.is_empty() {
                Vec::new()
            } else {
                p.query_async(&mut self.conn.clone())
                    .await
                    .map_err(map_error)?
            };
            if values.len() != 2 * tokens.len() {
                return Err(DedupeError::new(
                    DedupeErrorKind::Other,
                    format!(
                        "batch claim answered {} replies for {} keys",
                        values.len(),
                        tokens.len()
                    ),
                ));
            }
            let answers: Vec<Claim> = tokens
                .into_iter()
                .zip(values.chunks(2))
                .map(|(t, pair)| match pair {
                    [Value::Okay, _] => Claim::New(t),
                    [_, v] if value_is(v, DONE) => Claim::Duplicate,
                    _ => Claim::InProgress,
                })
                .collect();
            let out = crate::batch::expand(&slots, &answers);
            Ok(out)
        })
    }

    /// One pipeline of the complete script (`EVAL`, so a restarted server needs no reload).
    fn complete_many<'a>(
        &'a self,
        claims: &'a [ClaimToken],
    ) -> BoxFuture<'a, Vec<Result<(), DedupeError>>> {
        Box::pin(async move {
            if claims.is_empty() {
                return Vec::new();
            }
            let mut p = redis::pipe();
            for c in claims {
                p.cmd("EVAL")
                    .arg(COMPLETE_LUA)
                    .arg(1)
                    .arg(self.redis_key(c.key()))
                    .arg(c.token().to_string())
                    .arg(self.retention_ms());
            }
            match p.query_async::<Vec<i64>>(&mut self.conn.clone()).await {
                Ok(held) => claims
                    .iter()
                    .zip(held)
                    .map(|(c, h)| {
                        if h == 1 {
                            Ok(())
                        } else {
                            Err(DedupeError::lease_lost(c))
                        }
                    })
                    .collect(),
                Err(e) => {
                    let e = map_error(e);
                    claims.iter().map(|_| Err(e.clone())).collect()
                }
            }
        })
    }
}

fn value_is(v: &Value, s: &str) -> bool {
    match v {
        Value::BulkString(b) => b.as_slice() == s.as_bytes(),
        Value::SimpleString(x) => x == s,
        _ => false,
    }
}

/// A handler whose effects are Redis writes, applied exactly once: see [`atomic`].
pub struct Atomic<F> {
    store: RedisDedupe,
    f: F,
    settings: Settings,
}

impl<F: Clone> Clone for Atomic<F> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            f: self.f.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<F> fmt::Debug for Atomic<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Atomic")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// A handler that computes its Redis writes and has them applied together with the
/// `done` mark ([`RedisDedupe::complete_with`]): exactly-once effects on Redis.
///
/// For each delivery: claim the key (default `"{group}:{message id}"`); a duplicate is
/// acknowledged without calling `f`; otherwise `f` reads what it needs (through
/// [`RedisDedupe::connection`] or elsewhere) and returns the writes as a
/// [`redis::Pipeline`], which are applied atomically with the completion. If `f` fails the
/// claim is abandoned and the error returned; if the claim was lost meanwhile (the lease
/// ran out) nothing is applied and the message is redelivered.
///
/// # Examples
/// ```no_run
/// # async fn demo(store: herald_dedupe::redis::RedisDedupe) {
/// use herald_core::{Inbound, Router};
/// use herald_dedupe::redis::atomic;
/// let handler = atomic(store, |inbound: Inbound| async move {
///     let mut writes = redis::pipe();
///     writes.cmd("HINCRBY").arg("totals").arg("orders").arg(1);
///     writes.cmd("RPUSH").arg("seen").arg(inbound.message.id.as_str());
///     Ok(writes)
/// });
/// let router = Router::new().route("totals", "orders", "totals", handler);
/// # let _ = router; }
/// ```
pub fn atomic<F, Fut>(store: RedisDedupe, f: F) -> Atomic<F>
where
    F: Fn(Inbound) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<redis::Pipeline, HandlerError>> + Send + 'static,
{
    Atomic {
        store,
        f,
        settings: Settings::default(),
    }
}

impl<F> Atomic<F> {
    settings_builders!();

    /// How long a claim holds while `f` runs. Default 30 s.
    pub fn lease(mut self, d: Duration) -> Self {
        self.settings.lease = d;
        self
    }
}

impl<F, Fut> Service<Inbound> for Atomic<F>
where
    F: Fn(Inbound) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<redis::Pipeline, HandlerError>> + Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let s = &this.settings;
            let handler = inbound.route.handler.clone();
            let key = s.key(&inbound)?;
            let token = match this.store.begin(&key, s.lease).await {
                Ok(Claim::New(t)) => t,
                Ok(Claim::Duplicate) => {
                    s.duplicate(&handler, &key);
                    return Ok(());
                }
                Ok(Claim::InProgress) => return Err(s.in_progress(&handler, &key)),
                Err(e) => return Err(s.unavailable(&handler, "begin", e)),
            };
            s.claimed(&handler, false);
            match (this.f)(inbound).await {
                Ok(writes) => match this.store.complete_with(&token, &writes).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        if e.is_lease_lost() {
                            s.lease_lost(&handler);
                        }
                        Err(s.unavailable(&handler, "complete", e))
                    }
                },
                Err(err) => {
                    if let Err(e) = this.store.abandon(&token).await {
                        if e.is_lease_lost() {
                            s.lease_lost(&handler);
                        }
                        tracing::warn!(key, error = %e, "dedupe: could not release the claim");
                    }
                    Err(err)
                }
            }
        })
    }
}
