//! The validation cache: token digest -> what CloudBase said about the token.
//!
//! Keys are SHA-256 digests of the token, so a raw token never sits in the cache (nor in a
//! heap dump of it). Entries are positive (an [`Identity`]) or negative (CloudBase called the
//! token invalid). Freshness is tracked with `tokio::time` (so tests can pause time) and
//! checked on every hit; the `entries` (two moka caches) bound memory and drop entries
//! once even their stale window has passed.
//! A positive entry is fresh until the earliest of `ttl`, the token's `exp` and the next
//! group expiry, computed to the nanosecond against a [`UnixClock`]; on every hit a token
//! whose `exp` has come is refused whatever the entry says, so no clock skew between
//! tokio's clock and Unix time can serve a token past its `exp`.
//!
//! A miss starts one *flight* per token, run as its own task: concurrent requests for the
//! same token wait on it, a client that disconnects does not cancel it, and its result is
//! stored before the flight is forgotten. Transport errors, timeouts and 5xx are never
//! stored; `stale_if_error` may then serve a recently expired positive entry. When the two
//! calls disagree, a definitive "no" from either wins over an error from the other, and
//! answers naming two different users are treated as a CloudBase fault.
//!
//! Traced (`[telemetry]`), a flight is a span (`cloudbase validate`, with a client span
//! per CloudBase call under it) whose parent is the request that started it; the calls
//! carry that span as `traceparent`. A request that joins a flight already in the air did
//! not cause those calls: its span gets a link to the flight's span instead of children.
//!
//! With `[cache.redis]` the flight asks the shared second tier (`shared`) before CloudBase,
//! so the requests for one token on one replica cost one Redis read, and writes CloudBase's
//! answer back there; purges reach every replica through it (`tiers`).
//!
//! Flights are bounded (`cloudbase.max_in_flight` calls open at once): every made-up token
//! misses, so without a bound a flood of them while CloudBase is slow opens a socket and a
//! task per token (measured: 700 MB and 19 600 descriptors). A miss that finds no free slot
//! is answered at once as if CloudBase had failed — a stale entry if `stale_if_error` has
//! one, else "unavailable" — and counted as `shed`; joining a flight already in the air
//! needs no slot. The trade-off: under such a flood some real users' first requests are
//! refused with 503 for a moment, instead of everyone waiting on an exhausted process.

mod breaker;
mod entries;
mod identity;
// The shared second tier on Redis (`[cache.redis]`), and how this cache uses it.
pub mod shared;
mod tiers;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::{FutureExt, Shared};
use http::StatusCode;
use tokio::time::Instant;

pub use entries::{estimated_entry_bytes, KeyHasher, NEGATIVE_ENTRY_BYTES};
pub use identity::{
    encode_header_value, encode_list_element, Grant, HeaderFields, Identity, SharedIdentity,
};
pub use tiers::Purged;

use crate::clock::{remaining, unix_secs, UnixClock};
use crate::config::{CacheSettings, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_IN_FLIGHT};
use crate::identity_headers::IdentityMapping;
use crate::jwt::jwt_exp;
use crate::metrics::{CacheLookup, CloudbaseEndpoint, CloudbaseOutcome, Metrics};
use crate::telemetry::trace::{Kind, RequestTrace, Span, SpanLink};
use breaker::{Breaker, Transition};
use cloudbase_auth::types::{Introspection, UserProfile};
use cloudbase_auth::{CallOptions, Client, Error as ApiError};
use entries::{Entries, Entry, Negative, Positive};
use shared::{Claims, SharedEntry, SharedTier, SharedVerdict};

/// Cache key: SHA-256 of the token.
pub type TokenKey = [u8; 32];

/// The digest used as cache key. SHA-256 rather than BLAKE3: for a JWT-sized token (under
/// BLAKE3's 1 KiB chunk, so none of its SIMD parallelism applies) SHA-256 on CPUs with
/// SHA extensions is 2.7x faster (`cargo bench --features bench-compare --bench
/// cache_hot_path -- digest`).
pub fn token_key(token: &str) -> TokenKey {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// A boxed future; used on the miss path only, where one allocation is nothing next to
/// a network call.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The two CloudBase calls validation needs. Implemented by [`Client`]; benches and tests
/// put an in-process stand-in behind it.
pub trait AuthApi: Send + Sync + 'static {
    fn introspect<'a>(
        &'a self,
        token: &'a str,
        opts: &'a CallOptions,
    ) -> BoxFuture<'a, Result<Introspection, ApiError>>;
    fn user_me<'a>(
        &'a self,
        token: &'a str,
        opts: &'a CallOptions,
    ) -> BoxFuture<'a, Result<UserProfile, ApiError>>;
}

impl AuthApi for Client {
    fn introspect<'a>(
        &'a self,
        token: &'a str,
        opts: &'a CallOptions,
    ) -> BoxFuture<'a, Result<Introspection, ApiError>> {
        Box::pin(Client::introspect(self, token, opts))
    }

    fn user_me<'a>(
        &'a self,
        token: &'a str,
        opts: &'a CallOptions,
    ) -> BoxFuture<'a, Result<UserProfile, ApiError>> {
        Box::pin(Client::user_me(self, token, opts))
    }
}

/// What validation concluded.
#[derive(Debug, Clone)]
pub enum Validation {
    Valid(SharedIdentity),
    /// Invalid, expired or revoked.
    Invalid,
    /// CloudBase could not answer and nothing usable was cached.
    Unavailable,
}

/// A fetch's result, shared by every request waiting on the flight.
type Fetched = Option<Entry>;
type Flight = Shared<BoxFuture<'static, Fetched>>;

/// The validation cache and the CloudBase calls behind it. Cheap to clone.
#[derive(Clone)]
pub struct IdentityCache {
    inner: Arc<Inner>,
}

struct Inner {
    entries: Entries,
    /// With the flight's span, for the requests that join it to link to.
    flights: Mutex<HashMap<TokenKey, (Flight, Option<SpanLink>)>>,
    /// Bumped by every purge; a flight that started before a purge does not store.
    generation: AtomicU64,
    /// What a configuration reload may change ([`IdentityCache::reconfigure`]); loaded
    /// once per flight, never on a hit.
    tuning: ArcSwap<Tuning>,
    metrics: Arc<Metrics>,
    /// Unix time, for `exp` and group expiries.
    clock: UnixClock,
    /// `[cache.redis]`: asked on a local miss before CloudBase; purges go through it.
    shared: Option<SharedTier>,
}

/// The part of the cache a reload may change: a flight keeps the one it started with.
struct Tuning {
    api: Arc<dyn AuthApi>,
    settings: CacheSettings,
    fields: HeaderFields,
    /// One permit per CloudBase call that may be open; a flight holds two.
    calls: Arc<tokio::sync::Semaphore>,
    /// Stops asking a CloudBase that keeps failing (`cloudbase.breaker_*`); `None`: never.
    breaker: Option<Breaker>,
    /// The breaker's settings, for its log line.
    breaker_failures: u32,
    breaker_cooldown: Duration,
}

impl Tuning {
    fn new(
        settings: &CacheSettings,
        mapping: &IdentityMapping,
        limits: Limits,
        api: Arc<dyn AuthApi>,
        metrics: &Arc<Metrics>,
    ) -> Tuning {
        let permits = limits.max_in_flight.clamp(
            CALLS_PER_FLIGHT as usize,
            tokio::sync::Semaphore::MAX_PERMITS,
        );
        Tuning {
            api,
            settings: settings.clone(),
            fields: HeaderFields::new(mapping, limits.max_header_bytes, Some(metrics.clone())),
            calls: Arc::new(tokio::sync::Semaphore::new(permits)),
            breaker: (limits.breaker_failures > 0)
                .then(|| Breaker::new(limits.breaker_failures, limits.breaker_cooldown)),
            breaker_failures: limits.breaker_failures,
            breaker_cooldown: limits.breaker_cooldown,
        }
    }
}

/// Bounds of the cache that come from outside `[cache]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `cloudbase.max_in_flight`: CloudBase calls open at once (at least 2).
    pub max_in_flight: usize,
    /// `identity.max_header_bytes`: the most bytes of one encoded identity header value.
    pub max_header_bytes: usize,
    /// `cloudbase.breaker_failures`: failed validations in a row that stop CloudBase being
    /// asked for `breaker_cooldown`; 0: never.
    pub breaker_failures: u32,
    /// `cloudbase.breaker_cooldown`.
    pub breaker_cooldown: Duration,
}

impl Limits {
    /// The limits `config` sets.
    pub fn from_config(config: &crate::config::Config) -> Limits {
        Limits {
            max_in_flight: config.cloudbase.max_in_flight,
            max_header_bytes: config.identity.max_header_bytes,
            breaker_failures: config.cloudbase.breaker_failures,
            breaker_cooldown: config.cloudbase.breaker_cooldown,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        let cloudbase = crate::config::CloudbaseSettings::default();
        Limits {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            breaker_failures: cloudbase.breaker_failures,
            breaker_cooldown: cloudbase.breaker_cooldown,
        }
    }
}

/// CloudBase calls one flight makes at once (introspect and `/user/me`, concurrently).
const CALLS_PER_FLIGHT: u32 = 2;

impl std::fmt::Debug for IdentityCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityCache")
            .field("entries", &self.entry_count())
            .finish_non_exhaustive()
    }
}

impl IdentityCache {
    /// `mapping` is the configured identity headers (`identity.headers`), whose values
    /// each entry renders once. The [`Limits`] are the defaults.
    pub fn new(
        settings: &CacheSettings,
        mapping: &IdentityMapping,
        api: Arc<dyn AuthApi>,
        metrics: Arc<Metrics>,
    ) -> IdentityCache {
        Self::with_options(
            settings,
            mapping,
            Limits::default(),
            api,
            metrics,
            UnixClock::System,
        )
    }

    /// Like [`IdentityCache::new`], reading Unix time from `clock` (tests control it).
    pub fn with_clock(
        settings: &CacheSettings,
        mapping: &IdentityMapping,
        api: Arc<dyn AuthApi>,
        metrics: Arc<Metrics>,
        clock: UnixClock,
    ) -> IdentityCache {
        Self::with_options(settings, mapping, Limits::default(), api, metrics, clock)
    }

    /// Like [`IdentityCache::new`], with the given [`Limits`].
    pub fn with_limits(
        settings: &CacheSettings,
        mapping: &IdentityMapping,
        limits: Limits,
        api: Arc<dyn AuthApi>,
        metrics: Arc<Metrics>,
    ) -> IdentityCache {
        Self::with_options(settings, mapping, limits, api, metrics, UnixClock::System)
    }

    /// The cache with every option: [`Limits`] and the Unix clock.
    pub fn with_options(
        settings: &CacheSettings,
        mapping: &IdentityMapping,
        limits: Limits,
        api: Arc<dyn AuthApi>,
        metrics: Arc<Metrics>,
        clock: UnixClock,
    ) -> IdentityCache {
        Self::build(settings, mapping, limits, api, metrics, clock, None)
    }

    /// Like [`IdentityCache::with_limits`], over the shared tier when `shared` is given:
    /// asked on every local miss before CloudBase, and every purge goes through it to the
    /// other replicas (the composition root builds it from `[cache.redis]`).
    pub fn with_shared(
        settings: &CacheSettings,
        mapping: &IdentityMapping,
        limits: Limits,
        api: Arc<dyn AuthApi>,
        metrics: Arc<Metrics>,
        shared: Option<SharedTier>,
    ) -> IdentityCache {
        Self::build(
            settings,
            mapping,
            limits,
            api,
            metrics,
            UnixClock::System,
            shared,
        )
    }

    fn build(
        settings: &CacheSettings,
        mapping: &IdentityMapping,
        limits: Limits,
        api: Arc<dyn AuthApi>,
        metrics: Arc<Metrics>,
        clock: UnixClock,
        shared: Option<SharedTier>,
    ) -> IdentityCache {
        let entries = Entries::new(settings);
        let tuning = Tuning::new(settings, mapping, limits, api, &metrics);
        IdentityCache {
            inner: Arc::new(Inner {
                entries,
                flights: Mutex::default(),
                generation: AtomicU64::new(0),
                tuning: ArcSwap::from_pointee(tuning),
                metrics,
                clock,
                shared,
            }),
        }
    }

    /// A configuration reload: from the next flight on, CloudBase is asked through `api`
    /// (when given; `None` keeps the client in use),
    /// identities are rendered with `mapping` and kept for `settings`' TTLs, and at most
    /// `limits` calls are open (flights in the air finish as they started). The capacity
    /// (`max_entries`, `max_memory`) stays as built. With `drop_entries` (the header
    /// mapping or CloudBase changed, so what is held was rendered for another mapping or
    /// vouched for by another CloudBase) every entry of this replica goes, and flights in
    /// the air store nothing; returns how many entries went. Other replicas reload on
    /// their own, and the shared tier keeps CloudBase's claims, which each replica renders
    /// under its own mapping.
    pub fn reconfigure(
        &self,
        settings: &CacheSettings,
        mapping: &IdentityMapping,
        limits: Limits,
        api: Option<Arc<dyn AuthApi>>,
        drop_entries: bool,
    ) -> u64 {
        let api = api.unwrap_or_else(|| self.inner.tuning.load().api.clone());
        let tuning = Tuning::new(settings, mapping, limits, api, &self.inner.metrics);
        self.inner.tuning.store(Arc::new(tuning));
        if drop_entries {
            self.invalidate(shared::Invalidation::All)
        } else {
            0
        }
    }

    /// Validates `token`, from the cache when fresh, else by asking CloudBase (one flight
    /// per token however many requests wait). `request_id` is passed on to CloudBase.
    pub async fn validate(&self, token: &str, request_id: Option<&str>) -> Validation {
        self.validate_traced(token, request_id, None).await
    }

    /// [`IdentityCache::validate`] for a traced request: a flight it starts is a span
    /// under `trace`; a flight it joins is linked from it.
    pub async fn validate_traced(
        &self,
        token: &str,
        request_id: Option<&str>,
        trace: Option<&RequestTrace>,
    ) -> Validation {
        let key = token_key(token);
        let cached = self.inner.entries.get(&key);
        let clock = &self.inner.clock;
        match &cached {
            Some(Entry::Positive(p)) if Instant::now() < p.fresh_until => {
                // Fresh entries end at or before `exp`; this holds even if the system clock
                // and tokio's clock drift apart.
                if p.identity.exp.is_some_and(|exp| clock.has_reached(exp)) {
                    self.inner.metrics.cache_lookup(CacheLookup::Miss);
                    return Validation::Invalid;
                }
                self.inner.metrics.cache_lookup(CacheLookup::Hit);
                return Validation::Valid(p.identity.clone());
            }
            Some(Entry::Negative(n)) if Instant::now() < n.fresh_until => {
                self.inner.metrics.cache_lookup(CacheLookup::NegativeHit);
                return Validation::Invalid;
            }
            _ => {}
        }
        let exp = jwt_exp(token);
        if exp.is_some_and(|exp| clock.has_reached(exp)) {
            // Dead by its own claim: no CloudBase call, nothing cached.
            self.inner.metrics.cache_lookup(CacheLookup::Miss);
            return Validation::Invalid;
        }
        match self.flight(key, token, exp, request_id, trace).await {
            Some(entry) => {
                self.inner.metrics.cache_lookup(CacheLookup::Miss);
                match &entry {
                    // `exp` may have come while CloudBase was answering.
                    Entry::Positive(p) if p.identity.exp.is_some_and(|e| clock.has_reached(e)) => {
                        Validation::Invalid
                    }
                    Entry::Positive(p) => Validation::Valid(p.identity.clone()),
                    Entry::Negative(_) => Validation::Invalid,
                }
            }
            None => {
                let stale = match cached {
                    Some(Entry::Positive(p))
                        if Instant::now() < p.stale_until
                            && p.identity.exp.is_none_or(|exp| !clock.has_reached(exp)) =>
                    {
                        Some(p.identity)
                    }
                    _ => None,
                };
                match stale {
                    Some(identity) => {
                        self.inner.metrics.cache_lookup(CacheLookup::Stale);
                        Validation::Valid(identity)
                    }
                    None => {
                        self.inner.metrics.cache_lookup(CacheLookup::Miss);
                        Validation::Unavailable
                    }
                }
            }
        }
    }

    /// Joins the flight for `key`, starting it if there is none and a CloudBase slot is
    /// free; with none free the flight ends at once with nothing (counted as shed).
    fn flight(
        &self,
        key: TokenKey,
        token: &str,
        exp: Option<i64>,
        request_id: Option<&str>,
        trace: Option<&RequestTrace>,
    ) -> Flight {
        let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((f, span)) = flights.get(&key) {
            if let (Some(trace), Some(span)) = (trace, span) {
                trace.link(span);
            }
            return f.clone();
        }
        // A flight may have ended between the caller's lookup and this lock. It stores its
        // entry before it leaves `flights`, so look again rather than call CloudBase twice.
        if let Some(entry) = self.inner.entries.get(&key) {
            if Instant::now() < entry.fresh_until() {
                let done: BoxFuture<'static, Fetched> = Box::pin(std::future::ready(Some(entry)));
                return done.shared();
            }
        }
        let tuning = self.inner.tuning.load_full();
        let Ok(permit) = tuning
            .calls
            .clone()
            .try_acquire_many_owned(CALLS_PER_FLIGHT)
        else {
            self.inner.metrics.cloudbase_shed();
            let shed: BoxFuture<'static, Fetched> = Box::pin(std::future::ready(None));
            return shed.shared();
        };
        let inner = self.inner.clone();
        let token = token.to_owned();
        let opts = CallOptions {
            request_id: request_id.map(str::to_owned),
            ..CallOptions::default()
        };
        let span = trace.map(|t| t.child("cloudbase validate", Kind::Internal));
        let link = span.as_ref().map(Span::link_target);
        let task = tokio::spawn(async move {
            let generation = inner.generation.load(Ordering::Acquire);
            let entry = inner
                .resolve(&tuning, key, &token, exp, &opts, span.as_ref(), generation)
                .await;
            drop(permit);
            if let Some(span) = &span {
                let result = match &entry {
                    Some(Entry::Positive(_)) => "valid",
                    Some(Entry::Negative(_)) => "invalid",
                    None => "failed",
                };
                span.set("cloudbase_gateway.validation", result);
                span.end();
            }
            if let Some(entry) = &entry {
                if inner.generation.load(Ordering::Acquire) == generation {
                    inner.entries.insert(key, entry.clone());
                    // A purge between that look and this store found nothing to remove;
                    // it still wins.
                    if inner.generation.load(Ordering::Acquire) != generation {
                        inner.entries.remove(&key);
                    }
                }
            }
            inner
                .flights
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            entry
        });
        let flight: Flight =
            (Box::pin(task.map(|r| r.ok().flatten())) as BoxFuture<'static, _>).shared();
        flights.insert(key, (flight.clone(), link));
        flight
    }

    /// The `sub` CloudBase named for `token` when it was last validated, if the cache still
    /// holds that positive entry (fresh or not). Asks no one and counts no lookup: for
    /// callers that need to know whose token it is, not whether it is valid now.
    pub fn cached_sub(&self, token: &str) -> Option<Box<str>> {
        match self.inner.entries.get(&token_key(token))? {
            Entry::Positive(p) => Some(p.identity.sub.clone()),
            Entry::Negative(_) => None,
        }
    }

    /// Entries held now, positive and negative. Brought up to date first (moka counts in
    /// the background), so an insert, purge or eviction so far is counted; an entry counts
    /// until moka's clock passes the end of its life (in production the cache's own clock;
    /// in a paused-time test, later).
    pub fn entry_count(&self) -> u64 {
        self.inner.entries.len()
    }
}

/// What CloudBase said about a token: the local entry, and with `share` the same answer as
/// the shared tier stores it.
struct Answer {
    entry: Entry,
    /// `None` when not asked for, or when the entry is not fresh at all.
    shared: Option<SharedEntry>,
}

impl Inner {
    /// Asks CloudBase about `token` unless the breaker says CloudBase keeps failing (then,
    /// as when it fails: `None`, counted as `breaker_open`), and tells the breaker how it
    /// went: an answer (yes or no) closes it, a failure counts towards opening it.
    async fn fetch(
        &self,
        tuning: &Tuning,
        token: &str,
        exp: Option<i64>,
        opts: &CallOptions,
        flight: Option<&Span>,
        share: bool,
    ) -> Option<Answer> {
        let Some(breaker) = &tuning.breaker else {
            return self.ask(tuning, token, exp, opts, flight, share).await;
        };
        let Some(permit) = breaker.admit() else {
            self.metrics.cloudbase_breaker_open();
            return None;
        };
        let answer = self.ask(tuning, token, exp, opts, flight, share).await;
        let transition = match answer {
            Some(_) => permit.succeeded(),
            None => permit.failed(),
        };
        match transition {
            Some(Transition::Opened) => tracing::warn!(
                cooldown = ?tuning.breaker_cooldown,
                "CloudBase failed {} validations in a row: not asked for the cool-down \
                 (cloudbase.breaker_failures, breaker_cooldown); cache misses are answered \
                 as unavailable meanwhile, then one validation probes it",
                tuning.breaker_failures
            ),
            Some(Transition::Closed) => {
                tracing::info!("CloudBase answered the breaker's probe: asked again")
            }
            None => {}
        }
        answer
    }

    /// Asks CloudBase about `token`. `None`: CloudBase failed (nothing to cache).
    /// `flight`: the flight's span, under which each call gets its own. `share`: also
    /// make the answer for the shared tier.
    async fn ask(
        &self,
        tuning: &Tuning,
        token: &str,
        exp: Option<i64>,
        opts: &CallOptions,
        flight: Option<&Span>,
        share: bool,
    ) -> Option<Answer> {
        let traced = |name: &'static str| {
            let span = flight.map(|f| f.child(name, Kind::Client));
            let mut opts = opts.clone();
            if let Some(span) = &span {
                let headers = span.headers();
                opts.traceparent = headers.traceparent;
                opts.tracestate = headers.tracestate;
            }
            (opts, span)
        };
        let (introspect_opts, introspect_span) = traced("cloudbase introspect");
        let (user_me_opts, user_me_span) = traced("cloudbase user_me");
        let (introspection, profile) = tokio::join!(
            self.timed(
                CloudbaseEndpoint::Introspect,
                tuning.api.introspect(token, &introspect_opts),
                Introspection::is_active,
                introspect_span,
            ),
            self.timed(
                CloudbaseEndpoint::UserMe,
                tuning.api.user_me(token, &user_me_opts),
                |_| true,
                user_me_span,
            ),
        );
        // Read before the Unix time, so the entry ends a hair early, never late.
        let now = Instant::now();
        let unix_now = self.clock.now();
        let negative = || {
            let life = tuning.settings.negative_ttl;
            Answer {
                entry: Entry::Negative(Negative {
                    fresh_until: now + life,
                }),
                shared: (share && !life.is_zero()).then(|| SharedEntry {
                    verdict: SharedVerdict::Negative,
                    expires_at_ms: expires_at_ms(unix_now, life),
                }),
            }
        };
        // A definitive "no" from either call decides, whatever the other one did: CloudBase
        // has said the token is not valid, and a failure of the other call cannot undo it.
        let refused = match &introspection {
            Ok(i) => !i.is_active(),
            Err(e) => is_rejection(e),
        } || matches!(&profile, Err(e) if is_rejection(e));
        if refused {
            return Some(negative());
        }
        let (Ok(introspection), Ok(profile)) = (introspection, profile) else {
            return None;
        };
        if introspection.sub.as_deref() != Some(profile.sub.as_str()) {
            // Only a CloudBase or network fault can pair one user's introspection with
            // another's profile: no identity is made from it, and nothing is stored.
            self.metrics.cloudbase_sub_mismatch();
            tracing::warn!(
                request_id = opts.request_id.as_deref().unwrap_or(""),
                introspect_sub = introspection.sub.as_deref().unwrap_or(""),
                user_me_sub = %profile.sub,
                "CloudBase /token/introspect and /user/me named different users; not validated"
            );
            return None;
        }
        let identity = Identity::new(
            &introspection,
            &profile,
            exp,
            &tuning.fields,
            unix_secs(unix_now),
        );
        let (positive, fresh) = self.positive(tuning, identity, tuning.settings.ttl, now, unix_now);
        let shared = (share && !fresh.is_zero()).then(|| SharedEntry {
            verdict: SharedVerdict::Positive(Box::new(Claims::from_answers(
                &introspection,
                &profile,
                exp,
            ))),
            expires_at_ms: expires_at_ms(unix_now, fresh),
        });
        Some(Answer {
            entry: Entry::Positive(positive),
            shared,
        })
    }

    /// The positive entry for `identity` made at `now` (`unix_now` in Unix time), and how
    /// long it is fresh: until the earliest of `limit`, `ttl`, the token's `exp` and its
    /// next group expiry. One rule for what CloudBase said and what the shared tier holds.
    fn positive(
        &self,
        tuning: &Tuning,
        identity: Identity,
        limit: Duration,
        now: Instant,
        unix_now: Duration,
    ) -> (Positive, Duration) {
        let now_secs = unix_secs(unix_now);
        let mut fresh = tuning.settings.ttl.min(limit);
        for at in [identity.exp, identity.next_group_expiry(now_secs)]
            .into_iter()
            .flatten()
        {
            fresh = fresh.min(remaining(at, unix_now));
        }
        // Kept through the stale window only if fresh at all: a token past its `exp` (or
        // a `ttl` of zero) is not stored.
        let stale_until = if fresh.is_zero() {
            now
        } else {
            now + fresh + tuning.settings.stale_if_error
        };
        let positive = Positive {
            identity: Arc::new(identity),
            fresh_until: now + fresh,
            stale_until,
            stamp: 0,
        };
        (positive, fresh)
    }

    async fn timed<T>(
        &self,
        endpoint: CloudbaseEndpoint,
        call: BoxFuture<'_, Result<T, ApiError>>,
        accepted: fn(&T) -> bool,
        span: Option<Span>,
    ) -> Result<T, ApiError> {
        let start = Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(v) if accepted(v) => CloudbaseOutcome::Ok,
            Ok(_) => CloudbaseOutcome::Rejected,
            Err(e) if is_rejection(e) => CloudbaseOutcome::Rejected,
            Err(ApiError::Timeout) => CloudbaseOutcome::Timeout,
            Err(ApiError::Transport(_)) => CloudbaseOutcome::Transport,
            Err(_) => CloudbaseOutcome::Error,
        };
        self.metrics
            .cloudbase_call(endpoint, outcome, start.elapsed());
        if let Some(span) = span {
            span.set("cloudbase_gateway.outcome", outcome.as_str());
            if let Err(ApiError::Api { status, .. }) = &result {
                span.set("http.response.status_code", i64::from(status.as_u16()));
            }
            if matches!(
                outcome,
                CloudbaseOutcome::Error | CloudbaseOutcome::Timeout | CloudbaseOutcome::Transport
            ) {
                span.fail(outcome.as_str());
            }
            span.end();
        }
        result
    }
}

/// Unix milliseconds `life` after `unix_now`, rounded down: an entry shared for that long
/// ends early rather than late.
fn expires_at_ms(unix_now: Duration, life: Duration) -> i64 {
    i64::try_from((unix_now + life).as_millis()).unwrap_or(i64::MAX)
}

/// CloudBase refused the token itself (as opposed to failing): an error envelope with a
/// 4xx other than 429, or a token that cannot even be sent.
fn is_rejection(e: &ApiError) -> bool {
    match e {
        ApiError::Api { status, .. } => {
            status.is_client_error() && *status != StatusCode::TOO_MANY_REQUESTS
        }
        ApiError::InvalidInput { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
