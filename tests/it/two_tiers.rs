//! The validation cache over the shared tier, in process: two `IdentityCache`s standing for
//! two replicas, each over its own scripted CloudBase, on one real `redis-server`. What
//! the replica tests (`replicas.rs`) cannot steer: a CloudBase failure, an answer held in
//! the air across a purge, an entry outliving its writer's `ttl`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloudbase_auth::types::{Introspection, UserProfile};
use cloudbase_auth::{CallOptions, Error as ApiError};
use cloudbase_gateway::cache::shared::SharedTier;
use cloudbase_gateway::cache::{AuthApi, BoxFuture, IdentityCache, Limits, Validation};
use cloudbase_gateway::config::{
    CacheSettings, IdentityField, IdentityMapping, RedisSettings, Secret, SecretUrl,
};
use cloudbase_gateway::metrics::Metrics;
use tokio::sync::Notify;

use crate::support::redis_server::RedisServer;
use crate::support::{eventually, metric};

/// A CloudBase that vouches for every token as user `42`, or fails (5xx) while `down`;
/// counts its introspections, and while `held` answers only when released.
#[derive(Default)]
struct StandIn {
    introspects: AtomicU64,
    down: AtomicBool,
    held: AtomicBool,
    release: Notify,
    asked: Notify,
}

impl StandIn {
    fn asked(&self) -> u64 {
        self.introspects.load(Ordering::SeqCst)
    }
}

impl AuthApi for StandIn {
    fn introspect<'a>(
        &'a self,
        _token: &'a str,
        _opts: &'a CallOptions,
    ) -> BoxFuture<'a, Result<Introspection, ApiError>> {
        Box::pin(async move {
            self.introspects.fetch_add(1, Ordering::SeqCst);
            self.asked.notify_one();
            if self.held.load(Ordering::SeqCst) {
                self.release.notified().await;
            }
            if self.down.load(Ordering::SeqCst) {
                return Err(ApiError::Api {
                    status: http::StatusCode::SERVICE_UNAVAILABLE,
                    error: "unavailable".into(),
                    error_code: 14,
                    error_description: String::new(),
                });
            }
            Ok(Introspection {
                sub: Some("42".into()),
                scope: Some("user".into()),
                ..Introspection::default()
            })
        })
    }

    fn user_me<'a>(
        &'a self,
        _token: &'a str,
        _opts: &'a CallOptions,
    ) -> BoxFuture<'a, Result<UserProfile, ApiError>> {
        Box::pin(async move {
            Ok(UserProfile {
                sub: "42".into(),
                name: Some("Forty-Two".into()),
                ..UserProfile::default()
            })
        })
    }
}

/// One replica: its cache over its own CloudBase stand-in, on the shared Redis.
struct Node {
    cache: IdentityCache,
    api: Arc<StandIn>,
    metrics: Arc<Metrics>,
}

impl Node {
    fn new(redis: &RedisServer, ttl: Duration) -> Node {
        let settings = CacheSettings {
            ttl,
            ..CacheSettings::default()
        };
        let redis = RedisSettings {
            url: SecretUrl::new(redis.url()),
            timeout: Duration::from_millis(500),
            hmac_key: Secret::new("two-tiers-test-hmac-key-0123456789ab"),
            ..RedisSettings::default()
        };
        let metrics = Arc::new(Metrics::new(Vec::<String>::new()));
        let tier = SharedTier::new(&redis, metrics.clone()).expect("tier builds");
        let api = Arc::new(StandIn::default());
        let cache = IdentityCache::with_shared(
            &settings,
            &IdentityMapping::from_static(&[("x-user-id", IdentityField::Sub)]),
            Limits::default(),
            api.clone(),
            metrics.clone(),
            Some(tier),
        );
        Node {
            cache,
            api,
            metrics,
        }
    }

    fn count(&self, series: &str) -> f64 {
        metric(
            &self.metrics.render(0),
            &format!("cloudbase_gateway_{series}"),
        )
    }

    async fn stored(&self, n: f64) {
        eventually(Duration::from_secs(10), "the write to Redis", || async {
            self.count("redis_writes_total{result=\"stored\"}") >= n
        })
        .await;
    }
}

fn valid(v: &Validation) -> bool {
    matches!(v, Validation::Valid(i) if &*i.sub == "42")
}

#[tokio::test]
async fn a_cloudbase_failure_is_never_written_to_redis_so_the_next_replica_asks_again() {
    let redis = RedisServer::start();
    let (a, b) = (
        Node::new(&redis, Duration::from_secs(3600)),
        Node::new(&redis, Duration::from_secs(3600)),
    );
    a.api.down.store(true, Ordering::SeqCst);
    assert!(matches!(
        a.cache.validate("token", None).await,
        Validation::Unavailable
    ));
    assert!(valid(&b.cache.validate("token", None).await));
    assert_eq!(b.api.asked(), 1, "B found nothing in Redis");
    assert_eq!(a.count("redis_writes_total{result=\"stored\"}"), 0.0);
    b.stored(1.0).await;
    a.api.down.store(false, Ordering::SeqCst);
    assert!(valid(&a.cache.validate("token", None).await));
    assert_eq!(a.api.asked(), 1, "then A read B's answer");
}

#[tokio::test]
async fn an_answer_cloudbase_gave_before_a_purge_elsewhere_is_not_written_to_redis_after_it() {
    let redis = RedisServer::start();
    let (a, b) = (
        Node::new(&redis, Duration::from_secs(3600)),
        Node::new(&redis, Duration::from_secs(3600)),
    );
    a.api.held.store(true, Ordering::SeqCst);
    let in_the_air = tokio::spawn({
        let cache = a.cache.clone();
        async move { cache.validate("token", None).await }
    });
    a.api.asked.notified().await;

    let purged = b.cache.purge_token("token").await;
    assert!(
        matches!(purged.shared, Some(Ok(_))),
        "the purge reached Redis: {:?}",
        purged.shared
    );
    a.api.release.notify_one();
    assert!(
        valid(&in_the_air.await.unwrap()),
        "the request in the air gets its answer"
    );
    eventually(Duration::from_secs(10), "the write refused", || async {
        a.count("redis_writes_total{result=\"superseded\"}") == 1.0
    })
    .await;
    assert!(valid(&b.cache.validate("token", None).await));
    assert_eq!(
        b.api.asked(),
        1,
        "nothing in Redis: B asked CloudBase itself"
    );
}

#[tokio::test]
async fn an_entry_read_from_redis_ends_when_its_writer_said_whatever_the_readers_ttl() {
    let redis = RedisServer::start();
    let writer_ttl = Duration::from_millis(300);
    let (a, b) = (
        Node::new(&redis, writer_ttl),
        Node::new(&redis, Duration::from_secs(3600)),
    );
    assert!(valid(&a.cache.validate("token", None).await));
    a.stored(1.0).await;
    assert!(valid(&b.cache.validate("token", None).await));
    assert_eq!(b.api.asked(), 0, "read from Redis");

    tokio::time::sleep(writer_ttl + Duration::from_millis(100)).await;
    assert!(valid(&b.cache.validate("token", None).await));
    assert_eq!(
        b.api.asked(),
        1,
        "B's hour of ttl did not stretch A's entry"
    );
}
