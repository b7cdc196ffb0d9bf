//! The shared (Redis) tier against a real `redis-server`: what one replica stores another
//! reads, purges reach every replica's subscription, tampered values never become an
//! identity, and a Redis that dies, freezes or restarts costs at most the timeout.
//!
//! Each test runs its own server and two `SharedTier`s standing for two replicas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis_server::RedisServer;
use crate::support::{eventually, metric};
use cloudbase_gateway::cache::shared::{
    unix_now_ms, Claims, Invalidation, Lookup, Put, Reach, SharedEntry, SharedGroup, SharedTier,
    SharedVerdict, Skip, Subscription, CONFIRM_WITHIN,
};
use cloudbase_gateway::cache::{token_key, HeaderFields, TokenKey};
use cloudbase_gateway::config::{IdentityField, IdentityMapping, RedisSettings, Secret, SecretUrl};
use cloudbase_gateway::metrics::Metrics;
use redis::AsyncCommands;
use tokio::sync::mpsc;

const KEY: &str = "test-hmac-key-of-at-least-32-bytes!!";
const PREFIX: &str = "t:";
/// Purges must reach the other replicas within this (the promise).
const PURGE_DELIVERY: Duration = Duration::from_secs(1);

fn settings(redis: &RedisServer) -> RedisSettings {
    RedisSettings {
        url: SecretUrl::new(redis.url()),
        key_prefix: PREFIX.into(),
        // Generous: the machine is shared; the fault tests set their own.
        timeout: Duration::from_millis(500),
        hmac_key: Secret::new(KEY),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_millis(300),
    }
}

/// A fresh server and two replicas on it.
fn two_replicas() -> (RedisServer, Replica, Replica) {
    let redis = RedisServer::start();
    let (a, b) = (
        Replica::new(&settings(&redis)),
        Replica::new(&settings(&redis)),
    );
    (redis, a, b)
}

/// One replica's view of the tier, with its own metrics.
struct Replica {
    tier: SharedTier,
    metrics: Arc<Metrics>,
}

impl Replica {
    fn new(settings: &RedisSettings) -> Replica {
        let metrics = Arc::new(Metrics::new(Vec::<String>::new()));
        let tier = SharedTier::new(settings, metrics.clone()).expect("tier builds");
        Replica { tier, metrics }
    }

    fn count(&self, series: &str) -> f64 {
        metric(
            &self.metrics.render(0),
            &format!("cloudbase_gateway_{series}"),
        )
    }

    /// Subscribes and waits for the first `All`, which says purges published from now on
    /// will arrive.
    async fn subscribe(&self) -> (Subscription, mpsc::UnboundedReceiver<Invalidation>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let subscription = self.tier.subscribe(move |i| {
            let _ = tx.send(i);
        });
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(
            first.expect("subscribed within 10 s"),
            Some(Invalidation::All)
        );
        (subscription, rx)
    }

    /// A miss's ticket (panics on anything else).
    async fn miss(&self, key: &TokenKey) -> cloudbase_gateway::cache::shared::Ticket {
        match self.tier.get(key).await {
            Lookup::Miss(ticket) => ticket,
            other => panic!("expected a miss, got {other:?}"),
        }
    }

    /// Looks `key` up and stores `entry` with the ticket, as a replica does after asking
    /// CloudBase.
    async fn store(&self, key: &TokenKey, entry: &SharedEntry) {
        let ticket = self.miss(key).await;
        assert_eq!(self.tier.put(key, entry, ticket).await, Put::Stored);
    }
}

fn claims(sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        scope: Some("user sso".into()),
        client_id: Some("test-client".into()),
        name: Some("演示用户".into()),
        email: Some("demo@example.com".into()),
        groups: vec![
            SharedGroup {
                id: "user".into(),
                expires_at: None,
            },
            SharedGroup {
                id: "admin".into(),
                expires_at: Some("2099-01-01T00:00:00Z".into()),
            },
        ],
        exp: Some(unix_now_ms() / 1000 + 7200),
        ..Claims::default()
    }
}

fn positive(sub: &str, life: Duration) -> SharedEntry {
    SharedEntry {
        verdict: SharedVerdict::Positive(Box::new(claims(sub))),
        expires_at_ms: unix_now_ms() + life.as_millis() as i64,
    }
}

/// A positive entry with a minute to live.
fn valid(sub: &str) -> SharedEntry {
    positive(sub, Duration::from_secs(60))
}

fn negative(life: Duration) -> SharedEntry {
    SharedEntry {
        verdict: SharedVerdict::Negative,
        expires_at_ms: unix_now_ms() + life.as_millis() as i64,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Redis key of a token's entry (README "Running several replicas" lists the names).
fn entry_key_in(prefix: &str, key: &TokenKey) -> String {
    format!("{prefix}{}", hex(key))
}

fn entry_key(key: &TokenKey) -> String {
    entry_key_in(PREFIX, key)
}

/// The Redis key of a user's index of tokens.
fn sub_index_in(prefix: &str, sub: &str) -> String {
    use sha2::Digest;
    format!("{prefix}sub:{}", hex(&sha2::Sha256::digest(sub.as_bytes())))
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Invalidation>, within: Duration) -> Invalidation {
    tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no invalidation within {within:?}"))
        .expect("subscriber running")
}

/// Fails (rather than hangs) a call that a missing timeout would leave waiting forever.
async fn bounded<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call returned at all")
}

#[tokio::test]
async fn an_entry_stored_by_one_replica_is_a_hit_on_another_rendered_with_its_own_headers() {
    let (_redis, a, b) = two_replicas();
    let key = token_key("token-1");
    let entry = valid("user-1");
    a.store(&key, &entry).await;

    let Lookup::Hit(read) = b.tier.get(&key).await else {
        panic!("replica B misses what A stored")
    };
    assert_eq!(read, entry);
    let SharedVerdict::Positive(claims) = &read.verdict else {
        panic!("positive")
    };
    let names = IdentityMapping::from_static(&[
        ("x-mail", IdentityField::Email),
        ("x-groups", IdentityField::Groups),
    ]);
    let fields = HeaderFields::new(&names, 8 << 10, None);
    let identity = claims.identity(&fields, 0);
    let mut headers = http::HeaderMap::new();
    identity.apply(&names, &mut headers);
    assert_eq!(headers["x-mail"], "demo@example.com");
    assert_eq!(headers["x-groups"], "user,admin");
    assert_eq!(a.count("redis_writes_total{result=\"stored\"}"), 1.0);
    assert_eq!(a.count("redis_lookups_total{result=\"miss\"}"), 1.0);
    assert_eq!(b.count("redis_lookups_total{result=\"hit\"}"), 1.0);
}

#[tokio::test]
async fn a_negative_entry_is_shared_and_counted_as_a_negative_hit() {
    let (_redis, a, b) = two_replicas();
    let key = token_key("revoked-token");
    a.store(&key, &negative(Duration::from_secs(5))).await;
    let Lookup::Hit(read) = b.tier.get(&key).await else {
        panic!("negative entry not shared")
    };
    assert_eq!(read.verdict, SharedVerdict::Negative);
    assert_eq!(b.count("redis_lookups_total{result=\"negative_hit\"}"), 1.0);
}

#[tokio::test]
async fn the_redis_ttl_is_the_entrys_remaining_life_and_a_sub_index_outlives_its_members() {
    let redis = RedisServer::start();
    let a = Replica::new(&settings(&redis));
    let mut raw = redis.connection().await;
    let near = |pttl: i64, life_ms: i64| pttl <= life_ms && pttl > life_ms - 5_000;

    let key = token_key("ttl-token");
    a.store(&key, &positive("ttl-user", Duration::from_secs(30)))
        .await;
    let pttl: i64 = raw.pttl(entry_key(&key)).await.unwrap();
    assert!(near(pttl, 30_000), "entry PTTL {pttl} ms for a 30 s life");

    let index = sub_index_in(PREFIX, "ttl-user");
    let longer = token_key("ttl-token-2");
    a.store(&longer, &positive("ttl-user", Duration::from_secs(90)))
        .await;
    let shorter = token_key("ttl-token-3");
    a.store(&shorter, &positive("ttl-user", Duration::from_secs(10)))
        .await;
    let index_pttl: i64 = raw.pttl(&index).await.unwrap();
    assert!(
        near(index_pttl, 90_000),
        "index PTTL {index_pttl} ms: must cover its longest member (90 s)"
    );
    let members: usize = raw.scard(&index).await.unwrap();
    assert_eq!(members, 3);

    let dead = token_key("dead-token");
    let ticket = a.miss(&dead).await;
    let past = SharedEntry {
        verdict: SharedVerdict::Negative,
        expires_at_ms: unix_now_ms() - 1,
    };
    assert_eq!(a.tier.put(&dead, &past, ticket).await, Put::Expired);
    let exists: bool = raw.exists(entry_key(&dead)).await.unwrap();
    assert!(!exists, "an entry whose life is over is not stored");
}

#[tokio::test]
async fn an_answer_fetched_before_a_purge_on_another_replica_is_not_stored_after_it() {
    let (_redis, a, b) = two_replicas();
    let key = token_key("racing-token");
    for purge in ["token", "sub", "all"] {
        // A misses and asks CloudBase; meanwhile B purges; then A's answer arrives.
        let ticket = a.miss(&key).await;
        match purge {
            "token" => assert_eq!(b.tier.purge_token(&key).await, Ok(unheard(0))),
            "sub" => assert_eq!(b.tier.purge_sub("racing-user").await, Ok(unheard(0))),
            _ => assert_eq!(b.tier.purge_all().await, Ok(unheard(0))),
        }
        let put = a.tier.put(&key, &valid("racing-user"), ticket).await;
        assert_eq!(put, Put::Superseded, "after a purge by {purge}");
        a.miss(&key).await;
    }
    assert_eq!(a.count("redis_writes_total{result=\"superseded\"}"), 3.0);
}

/// A purge that removed `removed` Redis entries and that no replica was subscribed to.
fn unheard(removed: u64) -> Reach {
    Reach {
        removed,
        replicas: 0,
        confirmed: 0,
    }
}

/// A purge that removed `removed` Redis entries, carried out and confirmed by replica B,
/// the only one subscribed.
fn reached_b(removed: u64) -> Reach {
    Reach {
        removed,
        replicas: 1,
        confirmed: 1,
    }
}

#[tokio::test]
async fn a_purge_by_token_deletes_the_entry_and_reaches_another_replica_within_a_second() {
    let (_redis, a, b) = two_replicas();
    let (_subscription, mut rx) = b.subscribe().await;
    let key = token_key("purged-token");
    let kept = token_key("kept-token");
    a.store(&key, &valid("user-1")).await;
    a.store(&kept, &valid("user-1")).await;

    assert_eq!(a.tier.purge_token(&key).await, Ok(reached_b(1)));
    assert_eq!(
        rx.try_recv(),
        Ok(Invalidation::Token(key)),
        "B carried it out before the purge returned"
    );
    b.miss(&key).await;
    assert!(matches!(b.tier.get(&kept).await, Lookup::Hit(_)));
    assert_eq!(a.count("redis_purges_total{result=\"ok\"}"), 1.0);
    assert_eq!(b.count("redis_invalidations_total{kind=\"token\"}"), 1.0);
}

#[tokio::test]
async fn a_purge_by_sub_deletes_every_token_of_the_user_and_reaches_another_replica_within_a_second(
) {
    let (_redis, a, b) = two_replicas();
    let (_subscription, mut rx) = b.subscribe().await;
    let phone = token_key("phone-token");
    let laptop = token_key("laptop-token");
    let other = token_key("other-users-token");
    a.store(&phone, &valid("用户 42")).await;
    a.store(&laptop, &valid("用户 42")).await;
    a.store(&other, &valid("user-43")).await;

    assert_eq!(a.tier.purge_sub("用户 42").await, Ok(reached_b(2)));
    assert_eq!(
        next(&mut rx, PURGE_DELIVERY).await,
        Invalidation::Sub("用户 42".into())
    );
    b.miss(&phone).await;
    b.miss(&laptop).await;
    assert!(
        matches!(b.tier.get(&other).await, Lookup::Hit(_)),
        "another user's token stays"
    );
}

#[tokio::test]
async fn a_purge_of_everything_makes_every_entry_a_miss_and_reaches_another_replica_within_a_second(
) {
    let (_redis, a, b) = two_replicas();
    let (_subscription, mut rx) = b.subscribe().await;
    let keys: Vec<TokenKey> = (0..3).map(|i| token_key(&format!("t{i}"))).collect();
    for k in &keys {
        a.store(k, &valid("user-1")).await;
    }
    assert_eq!(a.tier.purge_all().await, Ok(reached_b(0)));
    assert_eq!(next(&mut rx, PURGE_DELIVERY).await, Invalidation::All);
    for k in &keys {
        b.miss(k).await;
    }
    // The new generation is usable at once.
    a.store(&keys[0], &valid("user-1")).await;
    assert!(matches!(b.tier.get(&keys[0]).await, Lookup::Hit(_)));
}

#[tokio::test]
async fn a_purge_a_subscribed_replica_never_confirms_waits_a_second_then_says_so() {
    let (redis, a, b) = two_replicas();
    let (_subscription, mut rx) = b.subscribe().await;
    // Subscribed, but never confirming: a replica stuck after reading, as far as A can tell.
    let mut silent = redis::Client::open(redis.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    silent
        .subscribe(format!("{PREFIX}invalidations"))
        .await
        .unwrap();
    let key = token_key("half-heard");
    a.store(&key, &valid("user-1")).await;

    let started = Instant::now();
    let reach = bounded(a.tier.purge_token(&key)).await;
    assert!(
        started.elapsed() >= CONFIRM_WITHIN,
        "it waited for the silent one"
    );
    assert_eq!(
        reach,
        Ok(Reach {
            removed: 1,
            replicas: 2,
            confirmed: 1
        })
    );
    assert_eq!(rx.try_recv(), Ok(Invalidation::Token(key)));
    assert_eq!(a.count("redis_purges_total{result=\"unconfirmed\"}"), 1.0);
    assert_eq!(a.count("redis_purges_total{result=\"ok\"}"), 0.0);
}

/// Stores an entry for `token` through `writer`, lets `tamper` turn the raw value into a
/// forged one under some token's key, and checks that `reader` neither uses it nor fails:
/// a counted miss, after which its own answer replaces the forgery.
async fn tampered_is_a_counted_miss(
    writer: &Replica,
    reader: &Replica,
    redis: &RedisServer,
    token: &str,
    tamper: impl FnOnce(TokenKey, Vec<u8>) -> (TokenKey, Vec<u8>),
) {
    let key = token_key(token);
    writer.store(&key, &valid("victim")).await;
    let mut raw = redis.connection().await;
    let value: Vec<u8> = raw.get(entry_key(&key)).await.unwrap();
    let (target, forged) = tamper(key, value);
    let () = raw.set(entry_key(&target), forged).await.unwrap();

    let invalid = "redis_lookups_total{result=\"invalid\"}";
    let before = reader.count(invalid);
    let ticket = reader.miss(&target).await;
    assert_eq!(reader.count(invalid), before + 1.0, "counted as invalid");
    let entry = valid("victim");
    assert_eq!(reader.tier.put(&target, &entry, ticket).await, Put::Stored);
    assert!(matches!(reader.tier.get(&target).await, Lookup::Hit(e) if e == entry));
}

#[tokio::test]
async fn a_value_with_one_flipped_byte_is_a_counted_miss() {
    let redis = RedisServer::start();
    let a = Replica::new(&settings(&redis));
    tampered_is_a_counted_miss(&a, &a, &redis, "flip", |key, mut v| {
        let last = v.len() - 1;
        v[last] ^= 0x01;
        (key, v)
    })
    .await;
}

#[tokio::test]
async fn a_value_written_with_another_hmac_key_is_a_counted_miss() {
    let redis = RedisServer::start();
    let mut foreign = settings(&redis);
    foreign.hmac_key = Secret::new("an-attacker-or-a-misconfigured-replica-key");
    let (a, b) = (Replica::new(&settings(&redis)), Replica::new(&foreign));
    tampered_is_a_counted_miss(&b, &a, &redis, "foreign", |key, v| (key, v)).await;
}

#[tokio::test]
async fn a_value_of_an_unknown_format_version_is_a_counted_miss() {
    let redis = RedisServer::start();
    let a = Replica::new(&settings(&redis));
    tampered_is_a_counted_miss(&a, &a, &redis, "v2", |key, mut v| {
        v[0] = 2;
        (key, v)
    })
    .await;
}

#[tokio::test]
async fn a_valid_value_copied_under_another_tokens_key_is_a_counted_miss() {
    let redis = RedisServer::start();
    let a = Replica::new(&settings(&redis));
    tampered_is_a_counted_miss(&a, &a, &redis, "copy-source", |_, v| {
        (token_key("copy-target"), v)
    })
    .await;
}

#[tokio::test]
async fn a_frozen_redis_costs_each_call_at_most_the_timeout_then_the_breaker_skips_it() {
    let redis = RedisServer::start();
    let mut s = settings(&redis);
    s.timeout = Duration::from_millis(100);
    s.breaker_cooldown = Duration::from_secs(600);
    let a = Replica::new(&s);
    let key = token_key("frozen");
    a.store(&key, &valid("user-1")).await;
    let ticket = a.miss(&token_key("fetched before the freeze")).await;

    redis.freeze();
    for _ in 0..3 {
        let started = Instant::now();
        let lookup = bounded(a.tier.get(&key)).await;
        assert!(
            matches!(lookup, Lookup::Skipped(Skip::Timeout)),
            "{lookup:?}"
        );
        // Bounded by the timeout, not by TCP: generous slack for a busy machine.
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let started = Instant::now();
    assert!(matches!(
        a.tier.get(&key).await,
        Lookup::Skipped(Skip::BreakerOpen)
    ));
    assert!(matches!(
        a.tier
            .put(&key, &negative(Duration::from_secs(5)), ticket)
            .await,
        Put::Skipped(Skip::BreakerOpen)
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(a.tier.degraded());
    assert_eq!(a.count("redis_lookups_total{result=\"error\"}"), 3.0);
    assert_eq!(a.count("redis_breaker_open"), 1.0);

    // Purges do not wait for the breaker: an operator's purge still tries, and lands once
    // Redis answers.
    redis.thaw();
    assert_eq!(a.tier.purge_token(&key).await, Ok(unheard(1)));
}

#[tokio::test]
async fn a_subscription_to_a_frozen_redis_is_found_dead_by_ping_and_renewed_with_all() {
    let redis = RedisServer::start();
    let b = Replica::new(&settings(&redis));
    let (_subscription, mut rx) = b.subscribe().await;
    // Nothing closes the connection: only the subscriber's PING can tell.
    redis.freeze();
    eventually(
        Duration::from_secs(10),
        "frozen subscription noticed",
        || async { b.count("redis_subscribed") == 0.0 },
    )
    .await;
    assert!(b.tier.degraded());
    redis.thaw();
    assert_eq!(
        next(&mut rx, Duration::from_secs(10)).await,
        Invalidation::All
    );
    assert_eq!(b.count("redis_subscribed"), 1.0);
    assert!(!b.tier.degraded());
}

#[tokio::test]
async fn a_killed_redis_is_skipped_and_once_restarted_is_used_again_and_resubscribed() {
    let mut redis = RedisServer::start();
    let mut s = settings(&redis);
    s.timeout = Duration::from_millis(200);
    s.breaker_failures = 2;
    s.breaker_cooldown = Duration::from_millis(200);
    let (a, b) = (Replica::new(&s), Replica::new(&s));
    let (_subscription, mut rx) = b.subscribe().await;
    let key = token_key("survivor");
    a.store(&key, &valid("user-1")).await;
    assert!(!b.tier.degraded());

    redis.kill();
    for _ in 0..2 {
        let started = Instant::now();
        assert!(matches!(
            bounded(b.tier.get(&key)).await,
            Lookup::Skipped(_)
        ));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert!(matches!(
        b.tier.get(&key).await,
        Lookup::Skipped(Skip::BreakerOpen)
    ));
    assert!(b.tier.purge_token(&key).await.is_err(), "nowhere to purge");
    assert_eq!(a.count("redis_purges_total{result=\"error\"}"), 0.0);
    assert_eq!(b.count("redis_purges_total{result=\"error\"}"), 1.0);
    eventually(
        Duration::from_secs(5),
        "subscription loss noticed",
        || async { b.count("redis_subscribed") == 0.0 },
    )
    .await;
    assert!(b.tier.degraded());

    redis.restart();
    // The subscriber is back, and says so with `All`: purges published meanwhile are lost.
    assert_eq!(
        next(&mut rx, Duration::from_secs(10)).await,
        Invalidation::All
    );
    // The breaker probes after its cool-down; the restarted Redis is empty.
    eventually(Duration::from_secs(10), "lookups resume", || async {
        matches!(b.tier.get(&key).await, Lookup::Miss(_))
    })
    .await;
    a.store(&key, &valid("user-1")).await;
    assert!(matches!(b.tier.get(&key).await, Lookup::Hit(_)));
    assert!(!b.tier.degraded());
    assert_eq!(b.count("redis_breaker_open"), 0.0);
    // And purges flow again.
    assert_eq!(a.tier.purge_token(&key).await, Ok(reached_b(1)));
    assert_eq!(
        next(&mut rx, PURGE_DELIVERY).await,
        Invalidation::Token(key)
    );
}

/// What README "Running several replicas" states for sizing: Redis memory per cached
/// identity (entry key and value, plus its user's index set), by `MEMORY USAGE`.
#[tokio::test]
async fn a_cached_identity_costs_redis_no_more_memory_than_the_readme_states() {
    const README_BYTES_PER_IDENTITY: i64 = 1024;
    const PREFIX: &str = "cloudbase-gateway:";
    let redis = RedisServer::start();
    let mut s = settings(&redis);
    s.key_prefix = PREFIX.into();
    let a = Replica::new(&s);
    let mut raw = redis.connection().await;
    let usage = |key: String| redis::cmd("MEMORY").arg("USAGE").arg(key).clone();
    let n = 100;
    let (mut entries, mut indexes) = (0i64, 0i64);
    for i in 0..n {
        let key = token_key(&format!("token-{i}"));
        // A realistic profile: UUID-like sub, name, username, email, phone, two groups.
        let sub = format!("9f3c1a2e-7b4d-4e8a-b1c6-{i:012}");
        let mut entry = valid(&sub);
        if let SharedVerdict::Positive(c) = &mut entry.verdict {
            c.phone_number = Some("+86 138 0000 0000".into());
            c.username = Some(format!("user{i}"));
        }
        a.store(&key, &entry).await;
        let used: i64 = usage(entry_key_in(PREFIX, &key))
            .query_async(&mut raw)
            .await
            .unwrap();
        entries += used;
        let used: i64 = usage(sub_index_in(PREFIX, &sub))
            .query_async(&mut raw)
            .await
            .unwrap();
        indexes += used;
    }
    let (entry, index) = (entries / n, indexes / n);
    println!("Redis memory per cached identity: entry {entry} B + sub index {index} B");
    assert!(
        entry + index <= README_BYTES_PER_IDENTITY,
        "{entry} + {index} bytes per identity: update README \"Running several replicas\""
    );
}
