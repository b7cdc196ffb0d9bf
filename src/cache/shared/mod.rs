//! The shared second tier: what CloudBase said about a token, kept in Redis for every
//! replica, and purges fanned out to all of them (`[cache.redis]`).
//!
//! Redis is an accelerator, never a dependency for serving. Every call is bounded by
//! `timeout` and answers [`Lookup::Skipped`] rather than an error; after
//! `breaker_failures` consecutive failures a `breaker` skips Redis for
//! `breaker_cooldown`; the caller then goes to CloudBase exactly as without Redis. What is
//! stored is authenticated (`codec`: versioned, HMAC-SHA256 bound to its key), so a
//! value nobody with `hmac_key` wrote never becomes an identity. Names in Redis: `keys`.
//!
//! Purge races. A replica that asked CloudBase before a purge must not store the old answer
//! after it, or the purged token would be served again by every replica. The local cache
//! solves this with a generation counter; here the same counter lives in Redis
//! (`{prefix}purges`, bumped by every purge): [`SharedTier::get`] returns it in the
//! [`Ticket`] of a miss, and [`SharedTier::put`] stores only if it is unchanged (checked
//! and written in one Lua script). Purge-all bumps `{prefix}generation`, which every value
//! carries: one `INCR` instead of a `SCAN` over the keyspace, atomic, and old values simply
//! expire. Reads are one `MGET`, writes and purges one script each: one round trip per
//! call. The scripts touch keys they compute (`prefix + digest`), which Redis Cluster
//! forbids: a single primary (with replicas, Sentinel or a managed failover) is supported,
//! Cluster is not.
//!
//! Purges reach the other replicas through pub/sub (`subscriber`); a replica that lost
//! its subscription drops its whole local cache when it is back, since it may have missed
//! purges. Pub/sub does not say when a subscriber has acted on a message, only how many
//! received it, so each replica confirms every purge it carried out (adding its id to a
//! short-lived set, `{prefix}confirmed:{n}`), and a purge returns once every replica that
//! received it has confirmed, or after [`CONFIRM_WITHIN`] ([`Reach`]). That is what lets a
//! sign-out through one replica be refused by the very next request on any other: without
//! it, a request overtaking the message (a busy replica reads its HTTP socket before its
//! Redis one) is served from that replica's cache. The price: a purge takes a few Redis
//! round trips more, and up to a second when a replica is frozen.
//!
//! The counters and the generation must not be evicted: run Redis with a `volatile-*`
//! `maxmemory-policy` (entries and indexes have TTLs, the counters do not) or `noeviction`.
//! If they are lost anyway, stored values read as misses (their generation no longer
//! matches): safe, only slower.

mod codec;
mod keys;
mod subscriber;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};

pub use codec::{Claims, Invalid, SharedEntry, SharedGroup, SharedVerdict};
pub use keys::{parse_message, Invalidation};
pub use subscriber::{OnInvalidation, Subscription};

use super::breaker::{Breaker, Permit, Transition};
use crate::cache::TokenKey;
use crate::config::{RedisSettings, REDACTED_HMAC_KEY};
use crate::metrics::{Metrics, RedisLookup, RedisPurge, RedisWrite};
use codec::Codec;
use keys::Keys;

/// Bound on opening a connection (the command connection reconnects in the background, so
/// a slow handshake delays no request beyond `timeout`; the subscriber waits this long).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Purges are rare operator actions where reaching Redis matters more than latency: they
/// get at least this long, and do not consult the breaker.
const PURGE_TIMEOUT_FLOOR: Duration = Duration::from_secs(1);
/// How long a purge waits for the replicas that received it to confirm they carried it out
/// (the fleet's promise: a purge reaches every replica within a second).
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(1);
/// How long Redis keeps the set of replicas that confirmed a purge.
const CONFIRMED_TTL_MS: u64 = 10_000;

/// Unix milliseconds now.
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What a read of the shared tier gave.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A value written by a replica with this `hmac_key`, unexpired, of the current
    /// generation.
    Hit(SharedEntry),
    /// Nothing usable (absent, expired, purged, or [`Invalid`] and counted). Ask CloudBase,
    /// then [`SharedTier::put`] the answer with this ticket.
    Miss(Ticket),
    /// Redis was not asked or did not answer; ask CloudBase and store nothing in Redis.
    Skipped(Skip),
}

/// Proof of what the purge counters were when a miss was read; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
    purges: u64,
}

/// Why Redis was left out of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("circuit breaker open")]
    BreakerOpen,
    #[error("no answer within the timeout")]
    Timeout,
    #[error("Redis failed")]
    Failed,
}

/// What [`SharedTier::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Stored,
    /// A purge happened since the lookup that issued the ticket: the answer may predate it.
    Superseded,
    /// The entry's life is already over; nothing to store.
    Expired,
    Skipped(Skip),
}

/// How far a purge got: what Redis deleted, and the replicas it reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// Entries deleted from Redis (a purge of everything deletes none: it retires the
    /// generation every entry was written under).
    pub removed: u64,
    /// Replicas subscribed when it was published, the purging one included.
    pub replicas: u64,
    /// Of those, how many confirmed carrying it out within [`CONFIRM_WITHIN`].
    pub confirmed: u64,
}

/// Why the tier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cache.redis.url: {0}")]
    Url(#[source] redis::RedisError),
    #[error("cache.redis.hmac_key is the placeholder `check` prints; set the real key")]
    PlaceholderKey,
}

/// The shared tier. Cheap to clone.
#[derive(Clone)]
pub struct SharedTier {
    inner: Arc<Inner>,
}

struct Inner {
    /// Opens the subscriber's connections.
    client: redis::Client,
    /// Commands: one multiplexed connection, reconnected in the background.
    conn: ConnectionManager,
    keys: Keys,
    codec: Codec,
    timeout: Duration,
    breaker: Breaker,
    scripts: Scripts,
    metrics: Arc<Metrics>,
    /// A [`Subscription`] is running.
    subscribing: AtomicBool,
    /// And it is subscribed now.
    subscribed: AtomicBool,
    /// This process's id among the replicas, in purge confirmations.
    replica: String,
}

struct Scripts {
    put: Script,
    purge_token: Script,
    purge_sub: Script,
    purge_all: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            // KEYS: entry, purges counter, [sub index]. ARGV: value, ttl ms, purges seen,
            // token digest (hex). Stores only if no purge happened since the lookup.
            put: Script::new(
                r"
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if KEYS[3] then
  redis.call('SADD', KEYS[3], ARGV[4])
  if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[3], ARGV[2])
  end
end
return 1",
            ),
            // Each purge script returns {entries deleted, subscribers reached, purge number}
            // and publishes `{purge number} {message}`.
            // KEYS: entry, purges counter. ARGV: channel, message.
            purge_token: Script::new(
                r"
local n = redis.call('DEL', KEYS[1])
local p = redis.call('INCR', KEYS[2])
local r = redis.call('PUBLISH', ARGV[1], p .. ' ' .. ARGV[2])
return {n, r, p}",
            ),
            // KEYS: sub index, purges counter. ARGV: key prefix, channel, message.
            purge_sub: Script::new(
                r"
local n = 0
for _, digest in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  n = n + redis.call('DEL', ARGV[1] .. digest)
end
redis.call('DEL', KEYS[1])
local p = redis.call('INCR', KEYS[2])
local r = redis.call('PUBLISH', ARGV[2], p .. ' ' .. ARGV[3])
return {n, r, p}",
            ),
            // KEYS: generation, purges counter. ARGV: channel, message.
            purge_all: Script::new(
                r"
redis.call('INCR', KEYS[1])
local p = redis.call('INCR', KEYS[2])
local r = redis.call('PUBLISH', ARGV[1], p .. ' ' .. ARGV[2])
return {0, r, p}",
            ),
        }
    }
}

impl SharedTier {
    /// Builds the tier without connecting: the gateway starts, and serves, with Redis down.
    /// Must be called inside the Tokio runtime.
    pub fn new(settings: &RedisSettings, metrics: Arc<Metrics>) -> Result<SharedTier, SetupError> {
        if settings.hmac_key.expose() == REDACTED_HMAC_KEY {
            return Err(SetupError::PlaceholderKey);
        }
        let client = redis::Client::open(settings.url.expose()).map_err(SetupError::Url)?;
        // Our own `timeout` bounds every call; the manager's retries only pace reconnects
        // in the background, and each failed call starts a new one.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None)
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(SetupError::Url)?;
        metrics.set_redis_breaker_open(false);
        Ok(SharedTier {
            inner: Arc::new(Inner {
                client,
                conn,
                keys: Keys::new(&settings.key_prefix),
                codec: Codec::new(settings.hmac_key.expose().as_bytes()),
                timeout: settings.timeout,
                breaker: Breaker::new(settings.breaker_failures, settings.breaker_cooldown),
                scripts: Scripts::new(),
                metrics,
                subscribing: AtomicBool::new(false),
                subscribed: AtomicBool::new(false),
                replica: uuid::Uuid::new_v4().simple().to_string(),
            }),
        })
    }

    /// Reads what a replica stored for `key`. One `MGET`, bounded by `timeout`.
    pub async fn get(&self, key: &TokenKey) -> Lookup {
        let inner = &self.inner;
        let Some(permit) = inner.breaker.admit() else {
            inner.metrics.redis_lookup(RedisLookup::Skipped);
            return Lookup::Skipped(Skip::BreakerOpen);
        };
        let entry_key = inner.keys.entry(key);
        let mut cmd = redis::cmd("MGET");
        cmd.arg(inner.keys.generation())
            .arg(inner.keys.purges())
            .arg(&entry_key);
        let cmd = &cmd;
        type Read = (Option<u64>, Option<u64>, Option<Vec<u8>>);
        let read = inner
            .call(Some(permit), inner.timeout, |mut c| async move {
                cmd.query_async::<Read>(&mut c).await
            })
            .await;
        let (generation, purges, value) = match read {
            Ok(read) => read,
            Err(skip) => {
                inner.metrics.redis_lookup(RedisLookup::Error);
                return Lookup::Skipped(skip);
            }
        };
        let ticket = Ticket {
            generation: generation.unwrap_or(0),
            purges: purges.unwrap_or(0),
        };
        let Some(value) = value else {
            inner.metrics.redis_lookup(RedisLookup::Miss);
            return Lookup::Miss(ticket);
        };
        match inner.codec.decode(&entry_key, &value) {
            Ok(record)
                if record.generation == ticket.generation
                    && record.entry.expires_at_ms > unix_now_ms() =>
            {
                inner.metrics.redis_lookup(match record.entry.verdict {
                    SharedVerdict::Positive(_) => RedisLookup::Hit,
                    SharedVerdict::Negative => RedisLookup::NegativeHit,
                });
                Lookup::Hit(record.entry)
            }
            // Written before a purge of everything, or just expired.
            Ok(_) => {
                inner.metrics.redis_lookup(RedisLookup::Miss);
                Lookup::Miss(ticket)
            }
            Err(reason) => {
                tracing::warn!(%reason, "a value in Redis was refused");
                inner.metrics.redis_lookup(RedisLookup::Invalid);
                Lookup::Miss(ticket)
            }
        }
    }

    /// Stores CloudBase's answer for `key` until `entry.expires_at_ms` (the Redis TTL is
    /// the entry's remaining life), unless a purge happened since `ticket` was issued.
    /// Positive entries are added to their `sub`'s index.
    pub async fn put(&self, key: &TokenKey, entry: &SharedEntry, ticket: Ticket) -> Put {
        let inner = &self.inner;
        let ttl_ms = entry.expires_at_ms.saturating_sub(unix_now_ms());
        if ttl_ms <= 0 {
            return Put::Expired;
        }
        let Some(permit) = inner.breaker.admit() else {
            inner.metrics.redis_write(RedisWrite::Skipped);
            return Put::Skipped(Skip::BreakerOpen);
        };
        let entry_key = inner.keys.entry(key);
        let value = inner.codec.encode(&entry_key, ticket.generation, entry);
        let mut invocation = inner.scripts.put.prepare_invoke();
        invocation.key(&entry_key).key(inner.keys.purges());
        if let SharedVerdict::Positive(claims) = &entry.verdict {
            invocation.key(inner.keys.sub_index(&claims.sub));
        }
        invocation
            .arg(value)
            .arg(ttl_ms)
            .arg(ticket.purges)
            .arg(keys::hex(key));
        let invocation = &invocation;
        let stored = inner
            .call(Some(permit), inner.timeout, |mut c| async move {
                invocation.invoke_async::<bool>(&mut c).await
            })
            .await;
        let (metric, put) = match stored {
            Ok(true) => (RedisWrite::Stored, Put::Stored),
            Ok(false) => (RedisWrite::Superseded, Put::Superseded),
            Err(skip) => (RedisWrite::Error, Put::Skipped(skip)),
        };
        inner.metrics.redis_write(metric);
        put
    }

    /// Deletes the entry of one token and tells every replica; returns once they confirmed
    /// (see [`Reach`]).
    pub async fn purge_token(&self, key: &TokenKey) -> Result<Reach, Skip> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.purge_token.prepare_invoke();
        invocation
            .key(inner.keys.entry(key))
            .key(inner.keys.purges())
            .arg(inner.keys.channel())
            .arg(Invalidation::Token(*key).message());
        inner.purge(&invocation).await
    }

    /// Deletes every entry of user `sub` (through its index) and tells every replica;
    /// returns once they confirmed.
    pub async fn purge_sub(&self, sub: &str) -> Result<Reach, Skip> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.purge_sub.prepare_invoke();
        invocation
            .key(inner.keys.sub_index(sub))
            .key(inner.keys.purges())
            .arg(inner.keys.prefix())
            .arg(inner.keys.channel())
            .arg(Invalidation::Sub(sub.to_owned()).message());
        inner.purge(&invocation).await
    }

    /// Makes every stored entry a miss (a new generation) and tells every replica;
    /// returns once they confirmed.
    pub async fn purge_all(&self) -> Result<Reach, Skip> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.purge_all.prepare_invoke();
        invocation
            .key(inner.keys.generation())
            .key(inner.keys.purges())
            .arg(inner.keys.channel())
            .arg(Invalidation::All.message());
        inner.purge(&invocation).await
    }

    /// Starts listening for purges published by any replica (this one included); `on` gets
    /// each, and [`Invalidation::All`] whenever the subscription is (re)established. See
    /// the `subscriber` module.
    pub fn subscribe(&self, on: impl Fn(Invalidation) + Send + Sync + 'static) -> Subscription {
        subscriber::start(self.inner.clone(), Arc::new(on))
    }

    /// Redis is being skipped (breaker not closed) or purges from other replicas are not
    /// arriving (subscription down). For `/readyz`'s body: the gateway serves regardless.
    pub fn degraded(&self) -> bool {
        let inner = &self.inner;
        !inner.breaker.is_closed()
            || (inner.subscribing.load(Ordering::Acquire)
                && !inner.subscribed.load(Ordering::Acquire))
    }
}

impl Inner {
    /// Runs `op` on the command connection within `bound`, trying once more if the
    /// connection was found broken (the manager reconnects on that first failure, so a
    /// restarted Redis costs no failed call). Reports the outcome to the breaker.
    async fn call<T, Fut>(
        &self,
        permit: Option<Permit<'_>>,
        bound: Duration,
        op: impl Fn(ConnectionManager) -> Fut,
    ) -> Result<T, Skip>
    where
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempts = async {
            match op(self.conn.clone()).await {
                Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                    op(self.conn.clone()).await
                }
                other => other,
            }
        };
        let result = match tokio::time::timeout(bound, attempts).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Redis call failed");
                Err(Skip::Failed)
            }
            Err(_) => Err(Skip::Timeout),
        };
        if let Some(permit) = permit {
            let transition = match &result {
                Ok(_) => permit.succeeded(),
                Err(_) => permit.failed(),
            };
            match transition {
                Some(Transition::Opened) => {
                    tracing::warn!(
                        "Redis failing: the shared tier is skipped for a while (circuit breaker open)"
                    );
                    self.metrics.set_redis_breaker_open(true);
                }
                Some(Transition::Closed) => {
                    tracing::info!("Redis answering again: the shared tier is back in use");
                    self.metrics.set_redis_breaker_open(false);
                }
                None => {}
            }
        }
        result
    }

    /// Runs a purge script, then waits for the replicas it reached to confirm.
    async fn purge(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<Reach, Skip> {
        let bound = self.timeout.max(PURGE_TIMEOUT_FLOOR);
        let published = self
            .call(None, bound, |mut c| async move {
                invocation.invoke_async::<(u64, u64, u64)>(&mut c).await
            })
            .await;
        let (removed, replicas, number) = match published {
            Ok(published) => published,
            Err(skip) => {
                self.metrics.redis_purge(RedisPurge::Error);
                tracing::warn!(%skip, "a purge did not reach Redis: other replicas keep their entries until these expire");
                return Err(skip);
            }
        };
        let confirmed = self.confirmations(number, replicas).await;
        if confirmed < replicas {
            self.metrics.redis_purge(RedisPurge::Unconfirmed);
            tracing::warn!(
                replicas,
                confirmed,
                "a purge was not confirmed by every replica within {CONFIRM_WITHIN:?}: the others may serve the purged entries a while longer"
            );
        } else {
            self.metrics.redis_purge(RedisPurge::Ok);
        }
        Ok(Reach {
            removed,
            replicas,
            confirmed,
        })
    }

    /// How many replicas confirmed purge `number`, waiting until all `replicas` have or
    /// [`CONFIRM_WITHIN`] has passed; polled, first after a millisecond, then less often.
    async fn confirmations(&self, number: u64, replicas: u64) -> u64 {
        let key = self.keys.confirmed(number);
        let deadline = tokio::time::Instant::now() + CONFIRM_WITHIN;
        let bound = self.timeout.max(Duration::from_millis(1));
        let mut pause = Duration::from_millis(1);
        let mut seen = 0;
        loop {
            let mut cmd = redis::cmd("SCARD");
            cmd.arg(&key);
            let cmd = &cmd;
            let counted = self
                .call(None, bound, |mut c| async move {
                    cmd.query_async::<u64>(&mut c).await
                })
                .await;
            // A failed read says nothing new: keep what the last one counted.
            seen = seen.max(counted.unwrap_or(0));
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if seen >= replicas || left.is_zero() {
                return seen.min(replicas);
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Tells the purging replica that this one carried out purge `number` (idempotent: a
    /// set of replica ids, so a retried command counts once).
    pub(super) async fn confirm(&self, number: u64) {
        let key = self.keys.confirmed(number);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .sadd(&key, &self.replica)
            .ignore()
            .pexpire(&key, CONFIRMED_TTL_MS as i64)
            .ignore();
        let pipe = &pipe;
        let bound = self.timeout.max(PURGE_TIMEOUT_FLOOR);
        let confirmed = self
            .call(None, bound, |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await;
        if let Err(skip) = confirmed {
            tracing::debug!(%skip, "could not confirm a purge");
        }
    }

    fn set_subscribed(&self, subscribed: bool) {
        self.subscribed.store(subscribed, Ordering::Release);
        self.metrics.set_redis_subscribed(subscribed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{Secret, SecretUrl};

    fn settings(hmac_key: &str) -> RedisSettings {
        RedisSettings {
            // Nothing listens here: building the tier must not need Redis.
            url: SecretUrl::new("redis://127.0.0.1:1/0"),
            key_prefix: "t:".into(),
            timeout: Duration::from_millis(50),
            hmac_key: Secret::new(hmac_key),
            breaker_failures: 1,
            breaker_cooldown: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn the_tier_builds_with_redis_down_and_refuses_checks_placeholder_key() {
        let metrics = Arc::new(Metrics::new(Vec::<String>::new()));
        let tier = SharedTier::new(&settings(&"k".repeat(32)), metrics.clone())
            .expect("no connection needed to start");
        assert!(!tier.degraded());
        assert!(matches!(
            tier.get(&[0; 32]).await,
            Lookup::Skipped(Skip::Failed | Skip::Timeout)
        ));
        assert!(tier.degraded(), "one failure opens a breaker of 1");
        assert!(matches!(
            SharedTier::new(&settings(REDACTED_HMAC_KEY), metrics),
            Err(SetupError::PlaceholderKey)
        ));
    }
}
