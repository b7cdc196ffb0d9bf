//! What a request costs the gateway when its token is cached, and why the cache is built
//! the way it is.
//!
//! Run all of it (about four minutes, much of it filling caches with 1 000 000 entries):
//!
//! ```text
//! cargo bench --bench cache_hot_path
//! cargo bench --bench cache_hot_path -- hit/1M     # one group (a literal filter also
//!                                                  # skips the other groups' setup)
//! cargo bench --bench cache_hot_path -- --list     # every benchmark id
//! ```
//!
//! Groups:
//! - `hit/{1k,100k,1M}/{1_thread,all_cores}`: the per-request work on a hit — bearer token
//!   from `Authorization`, SHA-256 digest, lookup, freshness check, identity headers built
//!   (`Identity::apply`) — through the real `IdentityCache` (moka), filled with that many
//!   entries by `validate` against an in-process CloudBase stand-in. Requests rotate over up
//!   to 100 000 tokens spread evenly over the cache, so with 1M entries most lookups miss the
//!   CPU caches (a large population, uniformly active: the worst case). Each request is
//!   timed alone, after its token bytes were read as the server would just have received
//!   them (so ~20 ns of clock reads are included). `all_cores` runs one task per runtime
//!   worker at once and reports time per request with every core busy (ideal:
//!   `1_thread / cores`). `hit/1M/1_thread_hot_1k`: the same 1 000 tokens over and over.
//! - `hit_old_store/{1k,1M}/1_thread`: the same requests, the same identities, the same
//!   steps, on the hand-written store the cache used before moka (`support/old_store.rs`).
//! - `hit_parts/1M/*`: the moka hit split into its steps.
//! - `purge/1M/purge_sub`: `purge_sub` of a user with one token among 1M entries (the
//!   token validated again, untimed, before each purge).
//! - `digest/*`: SHA-256 (the gateway's) vs BLAKE3 (with `--features bench-compare`) of an
//!   800-byte token, and SipHash — not cryptographic — which a map keyed by the raw token
//!   would compute instead, for scale.
//! - `key/100k/*`: the same moka cache keyed by the digest vs by the raw token `String`.
//! - `map/1M/*`: the lookup alone: the old store vs moka with its default hasher (SipHash of
//!   the whole key) vs moka with the gateway's `KeyHasher` (SipHash of 8 bytes, as
//!   configured in `src/cache/entries.rs`); with `--features bench-compare`, also moka's
//!   async cache (`moka::future`) with the gateway's hasher.
//! - `redis/1k/*`: with the shared tier on, over a real `redis-server` the bench starts on a
//!   free port (skipped, with a message, when there is none on PATH): `local_miss_redis_hit`
//!   is a request whose token another replica validated — not in this replica's cache, in
//!   Redis — so one Redis `GET` (a 127.0.0.1 round trip), the HMAC check and the identity
//!   built from the stored claims, then stored locally; `local_hit_tier_on` the first-tier
//!   hit with the tier on (compare `hit/1k/1_thread`: Redis is not asked on a hit). It
//!   asserts (untimed) that the reading replica never called CloudBase.
//! - `validate/*`: the miss path (a fresh token each time, the stand-in answering at once),
//!   one new token validated by 100 concurrent tasks (single flight), and 100 concurrent
//!   hits as the baseline for the latter. It asserts (untimed) that 100 concurrent
//!   requests for one new token make one introspect and one user/me call, and afterwards
//!   that the stand-in saw exactly one of each per distinct token.
//!
//! The stand-in, the tokens and the cache construction are in `benches/support/mod.rs`.

#[path = "support/old_store.rs"]
mod old_store;
// The integration tests' `redis-server` runner (it takes `free_port` from this crate root).
#[allow(dead_code)]
#[path = "../tests/it/support/redis_server.rs"]
mod redis_server;
#[path = "support/mod.rs"]
mod support;

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudbase_auth::types::{Introspection, UserProfile};
use cloudbase_gateway::cache::shared::{Invalidation, Lookup, SharedTier};
use cloudbase_gateway::cache::{
    token_key, HeaderFields, Identity, IdentityCache, KeyHasher, Limits, SharedIdentity, TokenKey,
    Validation,
};
use cloudbase_gateway::clock::UnixClock;
use cloudbase_gateway::config::{IdentityMapping, RedisSettings, Secret, SecretUrl};
use cloudbase_gateway::http::bearer::{bearer, Credentials};
use cloudbase_gateway::metrics::{CacheLookup, Metrics};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt as _;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use old_store::{Kind, Store};
use sha2::Digest;
use support::{jwt_like_token, StandIn};
use tokio::runtime::Runtime;

/// Most tokens a rotation visits; enough that with 1M entries the touched entries and
/// tokens (about 120 MB) do not fit in the CPU caches.
const POOL: u64 = 100_000;

/// Criterion's filter (the first positional argument), read here as a literal substring so
/// that `cargo bench --bench cache_hot_path -- digest` skips the fills of groups it would
/// not run. A filter using regex syntax runs every setup.
fn filter() -> Option<String> {
    const TAKES_VALUE: &[&str] = &[
        "-b",
        "--baseline",
        "--baseline-lenient",
        "-c",
        "--color",
        "--colour",
        "--confidence-level",
        "--format",
        "--load-baseline",
        "--measurement-time",
        "--noise-threshold",
        "--nresamples",
        "--output-format",
        "--plotting-backend",
        "--profile-time",
        "--sample-size",
        "-s",
        "--save-baseline",
        "--significance-level",
        "--warm-up-time",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if TAKES_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

/// Whether a benchmark whose id starts with `prefix` may run under the filter.
fn selected(prefix: &str) -> bool {
    match filter() {
        None => true,
        Some(f) if f.contains(|c: char| "^$.*+?()[]{}|\\".contains(c)) => true,
        Some(f) => prefix.contains(&f) || f.starts_with(prefix),
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
}

/// A request's headers as a client sends them.
fn request_headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::HOST,
        HeaderValue::from_static("api.example.com"),
    );
    h.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static("bench/1.0"),
    );
    h.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

/// Request headers for up to [`POOL`] tokens spread evenly over `0..n`.
fn pool(n: u64) -> Arc<[HeaderMap]> {
    let size = n.min(POOL);
    let step = n / size;
    (0..size)
        .map(|k| request_headers(&jwt_like_token(k * step)))
        .collect()
}

/// Visits every pool slot, in an order that defeats the prefetcher.
fn next_slot(i: usize, len: usize) -> usize {
    (i + 40_503) % len
}

/// One request's auth work on a hit; identity headers go to `out` (cleared first, so its
/// capacity is reused as a request's map would be).
async fn hit(cache: &IdentityCache, names: &IdentityMapping, req: &HeaderMap, out: &mut HeaderMap) {
    let Credentials::Bearer(token) = bearer(req) else {
        panic!("pool tokens are well-formed")
    };
    match cache.validate(token, None).await {
        Validation::Valid(identity) => {
            out.clear();
            identity.apply(names, out);
        }
        other => panic!("expected a hit, got {other:?}"),
    }
}

/// Reads a request's token, as the server has just done receiving it: when the auth work
/// starts the token is in the CPU cache (the cache entry need not be). Untimed.
fn receive(req: &HeaderMap) {
    let token = req.get(AUTHORIZATION).expect("pool requests carry a token");
    black_box(token.as_bytes().iter().fold(0u8, |a, b| a ^ b));
}

/// Runs `ops` hits from pool slot `from` on, timing each alone after [`receive`], and
/// returns the summed time.
async fn timed_hits(
    cache: &IdentityCache,
    names: &IdentityMapping,
    pool: &[HeaderMap],
    from: usize,
    ops: u64,
) -> Duration {
    let mut out = HeaderMap::with_capacity(16);
    let mut busy = Duration::ZERO;
    let mut i = from;
    for _ in 0..ops {
        i = next_slot(i, pool.len());
        let req = &pool[i];
        receive(req);
        let start = Instant::now();
        hit(cache, names, req, &mut out).await;
        busy += start.elapsed();
    }
    busy
}

/// Runs `f(task, ops)` on one task per runtime worker, all at once; each returns its busy
/// time. Returns the time per op with every core busy, scaled to `iters` ops (what
/// criterion divides by).
async fn on_all_workers<F, Fut>(iters: u64, f: F) -> Duration
where
    F: Fn(usize, u64) -> Fut,
    Fut: std::future::Future<Output = Duration> + Send + 'static,
{
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = iters.div_ceil(workers as u64).max(1);
    let tasks: Vec<_> = (0..workers).map(|w| tokio::spawn(f(w, per))).collect();
    let mut slowest = Duration::ZERO;
    for t in tasks {
        slowest = slowest.max(t.await.expect("bench task"));
    }
    slowest.mul_f64(iters as f64 / (per * workers as u64) as f64)
}

fn bench_hit(c: &mut Criterion) {
    let rt = support::production_runtime();
    for (label, n) in [("1k", 1_000u64), ("100k", 100_000), ("1M", 1_000_000)] {
        let hit = selected(&format!("hit/{label}/"));
        let old = n != 100_000 && selected(&format!("hit_old_store/{label}/"));
        let parts = n == 1_000_000 && selected("hit_parts/1M/");
        let purge = n == 1_000_000 && selected("purge/1M/");
        if !(hit || old || parts || purge) {
            continue;
        }
        let config = support::config(n.max(1000));
        let api = Arc::new(StandIn::default());
        let (cache, names) = support::cache(&config, api.clone());
        let started = Instant::now();
        rt.block_on(support::fill(&cache, 0..n));
        assert_eq!(cache.entry_count(), n, "every token is cached");
        assert_eq!(api.calls(), (n, n));
        eprintln!("filled {n} entries in {:.1?}", started.elapsed());
        let pool = pool(n);

        if hit {
            let mut group = c.benchmark_group(format!("hit/{label}"));
            group.throughput(Throughput::Elements(1));
            group.bench_function("1_thread", |b| {
                let (cache, names, pool) = (&cache, &names, &pool);
                b.to_async(&rt).iter_custom(|iters| async move {
                    timed_hits(cache, names, pool, 0, iters).await
                })
            });
            group.bench_function("all_cores", |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (cache, names, pool) = (cache.clone(), names.clone(), pool.clone());
                    on_all_workers(iters, move |w, ops| {
                        let (cache, names, pool) = (cache.clone(), names.clone(), pool.clone());
                        async move {
                            timed_hits(&cache, &names, &pool, w * pool.len() / 2, ops).await
                        }
                    })
                })
            });
            if n == 1_000_000 {
                // A skewed load: the same 1 000 users (and their entries) over and over.
                let hot: Arc<[HeaderMap]> = (0..1000)
                    .map(|k| request_headers(&jwt_like_token(k * 1000)))
                    .collect();
                group.bench_function("1_thread_hot_1k", |b| {
                    let (cache, names, hot) = (&cache, &names, &hot);
                    b.to_async(&rt).iter_custom(|iters| async move {
                        timed_hits(cache, names, hot, 0, iters).await
                    })
                });
            }
            group.finish();
        }
        if old {
            bench_hit_old_store(c, label, &rt, &cache, n, &names, &pool);
        }
        if parts {
            bench_hit_parts(c, &rt, &cache, &names, &pool);
        }
        assert_eq!(api.calls(), (n, n), "hits never call CloudBase");
        if purge {
            bench_purge_sub(c, &rt, &cache);
        }
    }
}

/// A purge by user among 1M entries: one user's one token, validated again (untimed)
/// before each purge.
fn bench_purge_sub(c: &mut Criterion, rt: &Runtime, cache: &IdentityCache) {
    let mut group = c.benchmark_group("purge/1M");
    let next = Cell::new(0u64);
    group.bench_function("purge_sub", |b| {
        b.iter_batched(
            || {
                let token = jwt_like_token(next.get() % POOL);
                next.set(next.get() + 1);
                match rt.block_on(cache.validate(&token, None)) {
                    Validation::Valid(identity) => identity.sub.clone(),
                    other => panic!("expected a valid token, got {other:?}"),
                }
            },
            |sub| {
                // No shared tier: the purge completes without awaiting anything.
                let purged = cache.purge_sub(&sub).now_or_never().expect("local only");
                assert_eq!(purged.local, 1)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// What the old store held per token for a signed-in user (its stale deadline and
/// lifetime left out: a hit never read them).
#[derive(Clone)]
struct OldEntry {
    identity: SharedIdentity,
    fresh_until: tokio::time::Instant,
}

/// The hit path on the old store, over the same identities as `cache` (read from it,
/// untimed) and the same requests.
fn bench_hit_old_store(
    c: &mut Criterion,
    label: &str,
    rt: &Runtime,
    cache: &IdentityCache,
    n: u64,
    names: &IdentityMapping,
    pool: &[HeaderMap],
) {
    let store = Store::new(n);
    let until = tokio::time::Instant::now() + Duration::from_secs(600);
    for i in 0..n {
        let token = jwt_like_token(i);
        let Validation::Valid(identity) = rt.block_on(cache.validate(&token, None)) else {
            unreachable!("every token is cached")
        };
        let entry = OldEntry {
            identity,
            fresh_until: until,
        };
        store.insert(token_key(&token), entry, until, Kind::Positive);
    }
    assert_eq!(store.len(), n, "every token is in the old store");
    let metrics = Metrics::new(Vec::<String>::new());
    let clock = UnixClock::System;
    let mut group = c.benchmark_group(format!("hit_old_store/{label}"));
    group.throughput(Throughput::Elements(1));
    group.bench_function("1_thread", |b| {
        let mut out = HeaderMap::with_capacity(16);
        b.iter_custom(|iters| {
            let mut busy = Duration::ZERO;
            let mut i = 0;
            for _ in 0..iters {
                i = next_slot(i, pool.len());
                let req = &pool[i];
                receive(req);
                let start = Instant::now();
                old_store_hit(&store, &metrics, &clock, names, req, &mut out);
                busy += start.elapsed();
            }
            busy
        })
    });
    group.finish();
}

/// `IdentityCache::validate`'s steps for a fresh positive entry, as they ran on the old
/// store; identity headers go to `out`.
fn old_store_hit(
    store: &Store<OldEntry>,
    metrics: &Metrics,
    clock: &UnixClock,
    names: &IdentityMapping,
    req: &HeaderMap,
    out: &mut HeaderMap,
) {
    let Credentials::Bearer(token) = bearer(req) else {
        panic!("pool tokens are well-formed")
    };
    let entry = store.get(&token_key(token)).expect("cached");
    assert!(tokio::time::Instant::now() < entry.fresh_until, "fresh");
    assert!(
        !entry.identity.exp.is_some_and(|exp| clock.has_reached(exp)),
        "before exp"
    );
    metrics.cache_lookup(CacheLookup::Hit);
    out.clear();
    entry.identity.apply(names, out);
}

/// The 1M hit, step by step, timed the same way.
fn bench_hit_parts(
    c: &mut Criterion,
    rt: &Runtime,
    cache: &IdentityCache,
    names: &IdentityMapping,
    pool: &[HeaderMap],
) {
    let mut group = c.benchmark_group("hit_parts/1M");
    let token = |req: &HeaderMap| -> String {
        match bearer(req) {
            Credentials::Bearer(t) => t.to_owned(),
            _ => unreachable!("pool tokens are well-formed"),
        }
    };
    group.bench_function("bearer", |b| {
        b.iter_custom(|iters| {
            let mut busy = Duration::ZERO;
            let mut i = 0;
            for _ in 0..iters {
                i = next_slot(i, pool.len());
                receive(&pool[i]);
                let start = Instant::now();
                black_box(bearer(&pool[i]));
                busy += start.elapsed();
            }
            busy
        })
    });
    group.bench_function("token_key", |b| {
        // The token is copied out untimed; `receive` already made it hot.
        b.to_async(rt).iter_custom(|iters| async move {
            let mut busy = Duration::ZERO;
            let mut i = 0;
            for _ in 0..iters {
                i = next_slot(i, pool.len());
                let t = token(&pool[i]);
                let start = Instant::now();
                black_box(token_key(&t));
                busy += start.elapsed();
            }
            busy
        })
    });
    group.bench_function("validate", |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let mut busy = Duration::ZERO;
            let mut i = 0;
            for _ in 0..iters {
                i = next_slot(i, pool.len());
                let t = token(&pool[i]);
                let start = Instant::now();
                let v = cache.validate(&t, None).await;
                busy += start.elapsed();
                assert!(matches!(v, Validation::Valid(_)));
            }
            busy
        })
    });
    let identities: Vec<_> = pool
        .iter()
        .map(|req| match rt.block_on(cache.validate(&token(req), None)) {
            Validation::Valid(i) => i,
            _ => unreachable!("pool tokens are cached"),
        })
        .collect();
    group.bench_function("apply_identity_headers", |b| {
        let mut out = HeaderMap::with_capacity(16);
        b.iter_custom(|iters| {
            let mut busy = Duration::ZERO;
            let mut i = 0;
            for _ in 0..iters {
                i = next_slot(i, identities.len());
                let start = Instant::now();
                out.clear();
                identities[i].apply(names, &mut out);
                busy += start.elapsed();
            }
            busy
        })
    });
    group.finish();
}

/// SipHash-1-3 with fixed keys: what std's `RandomState` (and moka's default) computes.
fn siphash(bytes: &[u8]) -> u64 {
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    h.write(bytes);
    h.finish()
}

fn bench_digest(c: &mut Criterion) {
    if !selected("digest/") {
        return;
    }
    let token = jwt_like_token(7);
    let mut group = c.benchmark_group("digest");
    group.throughput(Throughput::Bytes(token.len() as u64));
    let id = |name: &str| BenchmarkId::new(name, format!("{}B", token.len()));
    #[cfg(feature = "bench-compare")]
    group.bench_function(id("blake3"), |b| b.iter(|| blake3::hash(token.as_bytes())));
    group.bench_function(id("sha256_gateway"), |b| {
        b.iter(|| sha2::Sha256::digest(token.as_bytes()))
    });
    group.bench_function(id("siphash13_not_cryptographic"), |b| {
        b.iter(|| siphash(token.as_bytes()))
    });
    group.finish();
}

/// A distinct identity per entry, as the cache would hold.
fn identity(n: u64) -> Arc<Identity> {
    let config = support::config(1000);
    let introspection = Introspection {
        sub: Some(format!("{:019}", 1_830_000_000_000_000_000 + n)),
        scope: Some("user".into()),
        ..Default::default()
    };
    let profile = UserProfile {
        name: Some("演示用户".into()),
        username: Some(format!("user{n}")),
        email: Some(format!("user{n}@example.com")),
        ..Default::default()
    };
    let fields = HeaderFields::new(
        &config.identity.headers,
        config.identity.max_header_bytes,
        None,
    );
    Arc::new(Identity::new(&introspection, &profile, None, &fields, 0))
}

/// Per-entry expiry as the production cache configures it.
struct TenMinutes;
impl<K, V> moka::Expiry<K, V> for TenMinutes {
    fn expire_after_create(&self, _: &K, _: &V, _: std::time::Instant) -> Option<Duration> {
        Some(Duration::from_secs(600))
    }
}

fn moka_builder<K, V>(n: u64) -> moka::sync::CacheBuilder<K, V, moka::sync::Cache<K, V>>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    moka::sync::Cache::builder()
        .max_capacity(n * 2)
        .expire_after(TenMinutes)
}

fn bench_key(c: &mut Criterion) {
    const N: u64 = 100_000;
    if !selected("key/100k/") {
        return;
    }
    let tokens: Vec<String> = (0..N).map(jwt_like_token).collect();
    let by_digest = moka_builder::<TokenKey, Arc<Identity>>(N).build();
    let by_token = moka_builder::<String, Arc<Identity>>(N).build();
    for (i, t) in tokens.iter().enumerate() {
        let id = identity(i as u64);
        by_digest.insert(token_key(t), id.clone());
        by_token.insert(t.clone(), id);
    }
    by_digest.run_pending_tasks();
    by_token.run_pending_tasks();

    let mut group = c.benchmark_group("key/100k");
    let slot = Cell::new(0usize);
    let next = || {
        let i = next_slot(slot.get(), tokens.len());
        slot.set(i);
        tokens[i].as_str()
    };
    group.bench_function("sha256_digest_key", |b| {
        b.iter(|| by_digest.get(&token_key(next())).expect("cached"))
    });
    group.bench_function("raw_token_string_key", |b| {
        b.iter(|| by_token.get(next()).expect("cached"))
    });
    group.finish();
}

fn bench_map(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    if !selected("map/1M/") {
        return;
    }
    let keys: Vec<TokenKey> = (0..N)
        .map(|i| sha2::Sha256::digest(i.to_le_bytes()).into())
        .collect();
    let moka_sip = moka_builder::<TokenKey, Arc<Identity>>(N).build();
    let moka_key_hasher =
        moka_builder::<TokenKey, Arc<Identity>>(N).build_with_hasher(KeyHasher::default());
    let store = Store::<Arc<Identity>>::new(N);
    let until = tokio::time::Instant::now() + Duration::from_secs(3600);
    for (i, k) in keys.iter().enumerate() {
        let id = identity(i as u64);
        store.insert(*k, id.clone(), until, Kind::Positive);
        moka_sip.insert(*k, id.clone());
        moka_key_hasher.insert(*k, id);
    }
    moka_sip.run_pending_tasks();
    moka_key_hasher.run_pending_tasks();
    let step = (N / POOL) as usize;
    let lookups: Vec<TokenKey> = keys.iter().step_by(step).copied().collect();

    let mut group = c.benchmark_group("map/1M");
    group.throughput(Throughput::Elements(1));
    let moka_get = |m: &moka::sync::Cache<TokenKey, Arc<Identity>>, k: &TokenKey| m.get(k);
    let moka_key_hasher_get =
        |m: &moka::sync::Cache<TokenKey, Arc<Identity>, KeyHasher>, k: &TokenKey| m.get(k);
    let store_get = |m: &Store<Arc<Identity>>, k: &TokenKey| m.get(k);
    map_pair(&mut group, "old_store", &store, &lookups, store_get);
    map_pair(&mut group, "moka_siphash", &moka_sip, &lookups, moka_get);
    map_pair(
        &mut group,
        "moka_key_hasher",
        &moka_key_hasher,
        &lookups,
        moka_key_hasher_get,
    );
    drop((store, moka_sip, moka_key_hasher));
    #[cfg(feature = "bench-compare")]
    moka_future(&mut group, &keys, &lookups);
    group.finish();
}

/// moka's async cache, as the gateway would configure it, looked up on the runtime.
#[cfg(feature = "bench-compare")]
fn moka_future(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    keys: &[TokenKey],
    lookups: &[TokenKey],
) {
    let rt = support::production_runtime();
    let cache = moka::future::Cache::<TokenKey, Arc<Identity>>::builder()
        .max_capacity(keys.len() as u64 * 2)
        .expire_after(TenMinutes)
        .build_with_hasher(KeyHasher::default());
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            cache.insert(*k, identity(i as u64)).await;
        }
        cache.run_pending_tasks().await;
    });
    group.bench_function(
        BenchmarkId::new("moka_future_key_hasher", "1_thread"),
        |b| {
            let cache = &cache;
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut i = 0;
                let start = Instant::now();
                for _ in 0..iters {
                    i = next_slot(i, lookups.len());
                    black_box(cache.get(&lookups[i]).await.expect("present"));
                }
                start.elapsed()
            })
        },
    );
}

/// One thread, then every core at once (wall time per lookup).
fn map_pair<M: Sync>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    map: &M,
    keys: &[TokenKey],
    get: impl Fn(&M, &TokenKey) -> Option<Arc<Identity>> + Sync,
) {
    let slot = Cell::new(0usize);
    group.bench_function(BenchmarkId::new(name, "1_thread"), |b| {
        b.iter(|| {
            let i = next_slot(slot.get(), keys.len());
            slot.set(i);
            get(map, &keys[i]).expect("present")
        })
    });
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    group.bench_function(BenchmarkId::new(name, "all_cores"), |b| {
        b.iter_custom(|iters| {
            let per = iters.div_ceil(threads as u64).max(1);
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..threads {
                    let get = &get;
                    s.spawn(move || {
                        let mut i = t * keys.len() / 2;
                        for _ in 0..per {
                            i = next_slot(i, keys.len());
                            std::hint::black_box(get(map, &keys[i]).expect("present"));
                        }
                    });
                }
            });
            start
                .elapsed()
                .mul_f64(iters as f64 / (per * threads as u64) as f64)
        })
    });
}

fn bench_validate(c: &mut Criterion) {
    if !selected("validate/") {
        return;
    }
    let rt = support::production_runtime();
    let config = support::config(10_000_000);

    // Once, untimed: 100 concurrent requests for one new token make one call of each.
    {
        let api = Arc::new(StandIn::default());
        let (cache, _) = support::cache(&config, api.clone());
        let token: Arc<str> = jwt_like_token(1 << 40).into();
        rt.block_on(concurrently(&cache, &token, 100));
        assert_eq!(
            api.calls(),
            (1, 1),
            "single flight: one introspect, one user/me"
        );
    }

    let api = Arc::new(StandIn::default());
    let (cache, _) = support::cache(&config, api.clone());
    const CACHED: u64 = 100_000;
    rt.block_on(support::fill(&cache, 0..CACHED));
    let fresh = AtomicU64::new(CACHED);
    let new_token = || -> Arc<str> { jwt_like_token(fresh.fetch_add(1, Ordering::Relaxed)).into() };
    let cached_token: Arc<str> = jwt_like_token(42).into();

    let mut group = c.benchmark_group("validate");
    group.bench_function("hit", |b| {
        b.to_async(&rt)
            .iter(|| async { cache.validate(&cached_token, None).await })
    });
    group.bench_function("miss_fresh_token", |b| {
        // On a runtime worker, as a request would be: the flight task is spawned from and
        // (usually) run on the same worker, with no wake-up of a parked thread in between.
        b.to_async(&rt).iter_custom(|iters| {
            let tokens: Vec<Arc<str>> = (0..iters).map(|_| new_token()).collect();
            let cache = cache.clone();
            async move {
                let worker = tokio::spawn(async move {
                    let mut busy = Duration::ZERO;
                    for token in tokens {
                        let start = Instant::now();
                        let v = cache.validate(&token, None).await;
                        busy += start.elapsed();
                        assert!(matches!(v, Validation::Valid(_)));
                    }
                    busy
                });
                worker.await.expect("bench task")
            }
        })
    });
    group.bench_function("100_concurrent_hits", |b| {
        b.to_async(&rt)
            .iter(|| concurrently(&cache, &cached_token, 100))
    });
    group.bench_function("100_concurrent_one_new_token", |b| {
        b.to_async(&rt).iter_batched(
            new_token,
            |t| {
                let cache = &cache;
                async move { concurrently(cache, &t, 100).await }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let distinct = fresh.load(Ordering::Relaxed);
    assert_eq!(
        api.calls(),
        (distinct, distinct),
        "exactly one introspect and one user/me per distinct token"
    );
}

/// `n` tasks validating `token` at once, as `n` connections would.
async fn concurrently(cache: &IdentityCache, token: &Arc<str>, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (cache, token) = (cache.clone(), token.clone());
            tokio::spawn(async move { cache.validate(&token, None).await })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.expect("task"), Validation::Valid(_)));
    }
}

/// A free port on 127.0.0.1 (for `redis_server`).
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A replica's cache over the shared tier at `url`, with its own CloudBase stand-in.
fn replica(config: &cloudbase_gateway::config::Config, url: &str) -> (IdentityCache, Arc<StandIn>) {
    let redis = RedisSettings {
        url: SecretUrl::new(url),
        hmac_key: Secret::new("bench-hmac-key-0123456789abcdef0123"),
        // Generous on a shared machine: a skipped read would be a CloudBase call, which
        // the bench refuses (below), not a slower hit.
        timeout: Duration::from_secs(1),
        ..RedisSettings::default()
    };
    let metrics = Arc::new(Metrics::new(Vec::<String>::new()));
    let tier = SharedTier::new(&redis, metrics.clone()).expect("the tier builds");
    let api = Arc::new(StandIn::default());
    let cache = IdentityCache::with_shared(
        &config.cache,
        &config.identity.headers,
        Limits {
            // The fill validates 512 tokens at once, each flight waiting on Redis before
            // the stand-in: with the default bound some would be shed, not validated.
            max_in_flight: 4096,
            ..Limits::from_config(config)
        },
        api.clone(),
        metrics,
        Some(tier),
    );
    (cache, api)
}

fn bench_redis(c: &mut Criterion) {
    const N: u64 = 1000;
    if !selected("redis/1k/") {
        return;
    }
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "redis/1k: skipped, no redis-server on PATH (Debian: apt-get install redis-server)"
        );
        return;
    }
    let server = redis_server::RedisServer::start();
    let rt = support::production_runtime();
    let config = support::config(N * 10);
    let names = config.identity.headers.clone();
    // The tier's connection manager starts its task on the runtime it is built in.
    let (writer, writer_api, reader, reader_api) = {
        let _runtime = rt.enter();
        let (writer, writer_api) = replica(&config, &server.url());
        let (reader, reader_api) = replica(&config, &server.url());
        (writer, writer_api, reader, reader_api)
    };

    // The writer validates every token (asking its CloudBase) and writes the answers to
    // Redis in the background; wait until the reader can see each.
    rt.block_on(async {
        support::fill(&writer, 0..N).await;
        let tier = reader.shared().expect("the reader has the tier");
        let started = Instant::now();
        for i in 0..N {
            let key = token_key(&jwt_like_token(i));
            while !matches!(tier.get(&key).await, Lookup::Hit(_)) {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "token {i} never reached Redis"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    assert_eq!(writer_api.calls(), (N, N));
    let pool = pool(N);
    let keys: Arc<[TokenKey]> = pool
        .iter()
        .map(|req| match bearer(req) {
            Credentials::Bearer(t) => token_key(t),
            _ => unreachable!("pool tokens are well-formed"),
        })
        .collect();

    let mut group = c.benchmark_group("redis/1k");
    group.throughput(Throughput::Elements(1));
    group.bench_function("local_miss_redis_hit", |b| {
        let (reader, names, pool, keys) = (&reader, &names, &pool, &keys);
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut out = HeaderMap::with_capacity(16);
            let mut busy = Duration::ZERO;
            let mut i = 0;
            for _ in 0..iters {
                i = next_slot(i, pool.len());
                // Untimed: only in Redis again (this replica's copy dropped, Redis's kept).
                reader.invalidate(Invalidation::Token(keys[i]));
                let req = &pool[i];
                receive(req);
                let start = Instant::now();
                hit(reader, names, req, &mut out).await;
                busy += start.elapsed();
            }
            busy
        })
    });
    group.bench_function("local_hit_tier_on", |b| {
        let (reader, names, pool) = (&reader, &names, &pool);
        rt.block_on(async {
            let mut out = HeaderMap::new();
            for req in pool.iter() {
                hit(reader, names, req, &mut out).await;
            }
        });
        b.to_async(&rt)
            .iter_custom(|iters| async move { timed_hits(reader, names, pool, 0, iters).await })
    });
    group.finish();
    assert_eq!(
        reader_api.calls(),
        (0, 0),
        "every validation on the reader came from Redis or its own cache"
    );
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_hit, bench_digest, bench_key, bench_map, bench_validate, bench_redis
}
criterion_main!(benches);
