//! `[cache]`: the validation cache, and `[cache.redis]`, the tier the replicas share.

use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::ser;
use super::validate::{duration, size, Errors};
use crate::secret::{Secret, SecretUrl};

/// `[cache]` as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    max_entries: Option<u64>,
    max_memory: Option<String>,
    ttl: Option<String>,
    negative_ttl: Option<String>,
    stale_if_error: Option<String>,
    /// `[cache.redis]`; absent = no shared tier.
    redis: Option<RawRedis>,
}

/// `[cache.redis]` as written. No `Debug`: `url` and `hmac_key` hold secrets.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    url: Option<String>,
    key_prefix: Option<String>,
    timeout: Option<String>,
    hmac_key: Option<String>,
    breaker_failures: Option<u64>,
    breaker_cooldown: Option<String>,
}

/// `[cache]`, validated. `Default` holds the defaults; `Serialize` is the effective
/// configuration's `[cache]` table.
#[derive(Debug, Clone, Serialize)]
pub struct CacheSettings {
    /// Most entries of each kind: tokens CloudBase vouched for, and (apart) tokens it
    /// refused. Default 100 000.
    pub max_entries: u64,
    /// Most bytes the positive entries take, by the cache's estimate of each (identity,
    /// header values, key and bookkeeping). Default 256 MiB; at least 1 MiB.
    #[serde(serialize_with = "ser::size")]
    pub max_memory: u64,
    /// Upper bound of a positive entry's life; never beyond the token's `exp`. Default 60 s.
    #[serde(serialize_with = "ser::duration")]
    pub ttl: Duration,
    /// Life of a "CloudBase said invalid" entry. Default 5 s.
    #[serde(serialize_with = "ser::duration")]
    pub negative_ttl: Duration,
    /// How long past its expiry a positive entry may be served while CloudBase fails.
    /// Default 0 (off).
    #[serde(serialize_with = "ser::duration")]
    pub stale_if_error: Duration,
    /// `[cache.redis]`: the shared second tier. `None` (default): each replica alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSettings>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_entries: 100_000,
            max_memory: 256 << 20,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            stale_if_error: Duration::ZERO,
            redis: None,
        }
    }
}

/// `[cache.redis]`: what every replica shares through Redis (see `cache::shared`).
/// `Default` holds the defaults of the optional keys (`url` and `hmac_key` are required).
#[derive(Debug, Clone, Serialize)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS), `user:password@` allowed; printed redacted.
    #[serde(serialize_with = "ser::secret_url")]
    pub url: SecretUrl,
    /// Starts every key and the purge channel. Default `cloudbase-gateway:`.
    pub key_prefix: String,
    /// Bound on each Redis command; past it Redis is skipped for that request. Default 50 ms.
    #[serde(serialize_with = "ser::duration")]
    pub timeout: Duration,
    /// Authenticates every stored value. Required; at least [`MIN_HMAC_KEY_BYTES`] bytes.
    /// Printed as [`REDACTED_HMAC_KEY`].
    #[serde(serialize_with = "redacted_hmac_key")]
    pub hmac_key: Secret,
    /// Consecutive failures after which Redis is skipped for `breaker_cooldown`. Default 5.
    pub breaker_failures: u32,
    /// How long Redis is skipped once the breaker opens. Default 5 s.
    #[serde(serialize_with = "ser::duration")]
    pub breaker_cooldown: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: SecretUrl::default(),
            key_prefix: "cloudbase-gateway:".to_owned(),
            timeout: Duration::from_millis(50),
            hmac_key: Secret::default(),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
        }
    }
}

/// The smallest `cache.max_memory`: below it a cache holds too few identities to be one.
const MIN_CACHE_MEMORY: u64 = 1 << 20;

/// Shortest `cache.redis.hmac_key` accepted: 32 bytes, HMAC-SHA256's own output size.
pub const MIN_HMAC_KEY_BYTES: usize = 32;

/// What `check` prints for `cache.redis.hmac_key`: long enough that its output stays a
/// valid configuration, and refused when the shared tier starts, so a copied `check` output
/// can never run with a key everyone can read.
pub const REDACTED_HMAC_KEY: &str = "[redacted: the key in force is never printed]";

fn redacted_hmac_key<S: Serializer>(_: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(REDACTED_HMAC_KEY)
}

pub(super) fn validate(raw: RawCache, errors: &mut Errors) -> CacheSettings {
    let d = CacheSettings::default();
    let max_entries = raw.max_entries.unwrap_or(d.max_entries);
    if max_entries == 0 {
        errors.push("cache.max_entries", "must be at least 1");
    }
    let max_memory = size(
        raw.max_memory.as_deref(),
        "cache.max_memory",
        d.max_memory,
        errors,
    );
    if max_memory < MIN_CACHE_MEMORY {
        errors.push(
            "cache.max_memory",
            "must be at least 1MiB (about a thousand identities); bound the count with max_entries",
        );
    }
    CacheSettings {
        max_entries,
        max_memory: max_memory.max(MIN_CACHE_MEMORY),
        ttl: duration(raw.ttl, "cache.ttl", d.ttl, errors),
        negative_ttl: duration(
            raw.negative_ttl,
            "cache.negative_ttl",
            d.negative_ttl,
            errors,
        ),
        stale_if_error: duration(
            raw.stale_if_error,
            "cache.stale_if_error",
            d.stale_if_error,
            errors,
        ),
        redis: raw.redis.map(|r| validate_redis(r, errors)),
    }
}

fn validate_redis(raw: RawRedis, errors: &mut Errors) -> RedisSettings {
    let d = RedisSettings::default();
    let url = SecretUrl::new(raw.url.unwrap_or_default());
    if url.expose().is_empty() {
        errors.push(
            "cache.redis.url",
            "missing: [cache.redis] turns the shared tier on and needs redis:// or rediss://",
        );
    } else if !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://")) {
        errors.push(
            "cache.redis.url",
            format!("{url:?} is not a redis:// or rediss:// URL"),
        );
    } else if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.expose()) {
        // The client's own parser: what it refuses here it would refuse at start.
        errors.push("cache.redis.url", format!("{url:?}: {e}"));
    }
    let key_prefix = raw.key_prefix.unwrap_or(d.key_prefix);
    if key_prefix.is_empty() || key_prefix.len() > 128 || key_prefix.chars().any(char::is_control) {
        errors.push(
            "cache.redis.key_prefix",
            "must be 1 to 128 bytes without control characters",
        );
    }
    let timeout = duration(raw.timeout, "cache.redis.timeout", d.timeout, errors);
    if timeout.is_zero() {
        errors.push("cache.redis.timeout", "must be more than 0");
    }
    let hmac_key = Secret::new(raw.hmac_key.unwrap_or_default());
    if hmac_key.is_empty() {
        errors.push(
            "cache.redis.hmac_key",
            "missing: required with [cache.redis], e.g. \"${CACHE_HMAC_KEY}\" set to `openssl rand -hex 32`",
        );
    } else if hmac_key.expose().len() < MIN_HMAC_KEY_BYTES {
        errors.push(
            "cache.redis.hmac_key",
            format!("must be at least {MIN_HMAC_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`)"),
        );
    }
    let breaker_failures = match raw.breaker_failures {
        None => d.breaker_failures,
        Some(n @ 1..=1000) => n as u32,
        Some(_) => {
            errors.push("cache.redis.breaker_failures", "must be 1 to 1000");
            d.breaker_failures
        }
    };
    let breaker_cooldown = duration(
        raw.breaker_cooldown,
        "cache.redis.breaker_cooldown",
        d.breaker_cooldown,
        errors,
    );
    if breaker_cooldown.is_zero() {
        errors.push("cache.redis.breaker_cooldown", "must be more than 0");
    }
    RedisSettings {
        url,
        key_prefix,
        timeout,
        hmac_key,
        breaker_failures,
        breaker_cooldown,
    }
}
