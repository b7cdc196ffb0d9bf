//! The cache's rules with a scripted CloudBase and paused time.

use std::sync::atomic::AtomicUsize;
use std::sync::Mutex as StdMutex;

use super::*;
use crate::cloudbase::types::Group;

/// What the scripted CloudBase answers next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    Active,
    Inactive,
    Down,
    Unauthenticated,
}

struct FakeApi {
    script: StdMutex<Script>,
    introspects: AtomicUsize,
    user_mes: AtomicUsize,
    delay: Duration,
    groups: Vec<Group>,
}

impl FakeApi {
    fn new(script: Script) -> Arc<FakeApi> {
        Arc::new(FakeApi {
            script: StdMutex::new(script),
            introspects: AtomicUsize::new(0),
            user_mes: AtomicUsize::new(0),
            delay: Duration::from_millis(10),
            groups: vec![Group::Id("user".into())],
        })
    }

    fn set(&self, s: Script) {
        *self.script.lock().unwrap() = s;
    }

    fn calls(&self) -> (usize, usize) {
        (
            self.introspects.load(Ordering::SeqCst),
            self.user_mes.load(Ordering::SeqCst),
        )
    }
}

fn down() -> ApiError {
    ApiError::Api {
        status: StatusCode::BAD_GATEWAY,
        error: "unavailable".into(),
        error_code: 0,
        error_description: String::new(),
    }
}

impl AuthApi for FakeApi {
    fn introspect<'a>(
        &'a self,
        _token: &'a str,
        _opts: &'a CallOptions,
    ) -> BoxFuture<'a, Result<Introspection, ApiError>> {
        Box::pin(async move {
            self.introspects.fetch_add(1, Ordering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            match *self.script.lock().unwrap() {
                Script::Active | Script::Unauthenticated => Ok(Introspection {
                    sub: Some("42".into()),
                    scope: Some("user".into()),
                    ..Default::default()
                }),
                Script::Inactive => Ok(Introspection::default()),
                Script::Down => Err(down()),
            }
        })
    }

    fn user_me<'a>(
        &'a self,
        _token: &'a str,
        _opts: &'a CallOptions,
    ) -> BoxFuture<'a, Result<UserProfile, ApiError>> {
        Box::pin(async move {
            self.user_mes.fetch_add(1, Ordering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            match *self.script.lock().unwrap() {
                Script::Active | Script::Inactive => Ok(UserProfile {
                    sub: "42".into(),
                    name: Some("n".into()),
                    groups: self.groups.clone(),
                    ..Default::default()
                }),
                Script::Unauthenticated => Err(ApiError::Api {
                    status: StatusCode::UNAUTHORIZED,
                    error: "unauthenticated".into(),
                    error_code: 16,
                    error_description: String::new(),
                }),
                Script::Down => Err(ApiError::Timeout),
            }
        })
    }
}

fn cache(api: Arc<FakeApi>, ttl: u64, stale: u64) -> IdentityCache {
    let settings = CacheSettings {
        max_entries: 1000,
        ttl: Duration::from_secs(ttl),
        negative_ttl: Duration::from_secs(5),
        stale_if_error: Duration::from_secs(stale),
        redis: None,
    };
    let metrics = Arc::new(Metrics::new(Vec::<String>::new()));
    IdentityCache::new(
        &settings,
        &[IdentityField::Sub, IdentityField::Groups],
        api,
        metrics,
    )
}

fn is_valid(v: &Validation) -> bool {
    matches!(v, Validation::Valid(_))
}

#[tokio::test(start_paused = true)]
async fn a_hit_does_not_extend_the_entry() {
    let api = FakeApi::new(Script::Active);
    let c = cache(api.clone(), 60, 0);
    assert!(is_valid(&c.validate("tok", None).await));
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(is_valid(&c.validate("tok", None).await));
    }
    assert_eq!(api.calls(), (1, 1), "55 s of hits: one fetch");
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(is_valid(&c.validate("tok", None).await));
    assert_eq!(
        api.calls(),
        (2, 2),
        "61 s after the fetch the entry is gone, hits or not"
    );
}

#[tokio::test(start_paused = true)]
async fn negative_entries_last_negative_ttl() {
    let api = FakeApi::new(Script::Inactive);
    let c = cache(api.clone(), 60, 0);
    assert!(matches!(c.validate("bad", None).await, Validation::Invalid));
    assert!(matches!(c.validate("bad", None).await, Validation::Invalid));
    assert_eq!(api.calls().0, 1);
    tokio::time::advance(Duration::from_secs(6)).await;
    api.set(Script::Active);
    assert!(is_valid(&c.validate("bad", None).await));
    assert_eq!(api.calls().0, 2);
}

#[tokio::test(start_paused = true)]
async fn a_401_from_user_me_is_a_negative_entry() {
    let api = FakeApi::new(Script::Unauthenticated);
    let c = cache(api.clone(), 60, 0);
    assert!(matches!(c.validate("t", None).await, Validation::Invalid));
    assert!(matches!(c.validate("t", None).await, Validation::Invalid));
    assert_eq!(api.calls(), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn failures_are_never_cached() {
    let api = FakeApi::new(Script::Down);
    let c = cache(api.clone(), 60, 0);
    assert!(matches!(
        c.validate("t", None).await,
        Validation::Unavailable
    ));
    assert!(matches!(
        c.validate("t", None).await,
        Validation::Unavailable
    ));
    assert_eq!(api.calls(), (2, 2), "each request asks again");
    api.set(Script::Active);
    assert!(is_valid(&c.validate("t", None).await));
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_a_recent_identity_only_within_its_window() {
    let api = FakeApi::new(Script::Active);
    let c = cache(api.clone(), 10, 30);
    assert!(is_valid(&c.validate("t", None).await));
    api.set(Script::Down);
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(
        is_valid(&c.validate("t", None).await),
        "expired 10 s ago, inside the 30 s window"
    );
    tokio::time::advance(Duration::from_secs(25)).await;
    assert!(
        matches!(c.validate("t", None).await, Validation::Unavailable),
        "expired 35 s ago, past the window"
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_share_one_flight() {
    let api = FakeApi::new(Script::Active);
    let c = cache(api.clone(), 60, 0);
    let all = futures_util::future::join_all((0..100).map(|_| c.validate("same", None))).await;
    assert!(all.iter().all(is_valid));
    assert_eq!(api.calls(), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_purge_during_a_flight_keeps_its_result_out_of_the_cache() {
    let api = FakeApi::new(Script::Active);
    let c = cache(api.clone(), 60, 0);
    let pending = tokio::spawn({
        let c = c.clone();
        async move { c.validate("t", None).await }
    });
    tokio::task::yield_now().await;
    c.purge_all();
    assert!(is_valid(&pending.await.unwrap()));
    assert!(is_valid(&c.validate("t", None).await));
    assert_eq!(api.calls(), (2, 2), "the pre-purge answer was not stored");
}

#[tokio::test(start_paused = true)]
async fn purge_by_sub_drops_that_users_entries() {
    let api = FakeApi::new(Script::Active);
    let c = cache(api.clone(), 60, 0);
    c.validate("a", None).await;
    c.validate("b", None).await;
    assert_eq!(c.purge_sub("someone-else"), 0);
    assert_eq!(c.purge_sub("42"), 2);
    c.validate("a", None).await;
    assert_eq!(api.calls().0, 3);
}

#[test]
fn keys_are_digests_not_tokens() {
    let key = token_key("secret-token");
    assert_ne!(&key[..], &b"secret-token"[..]);
    assert_eq!(key, token_key("secret-token"));
    assert_ne!(key, token_key("secret-tokeN"));
}

/// A flight can finish between a request's cache lookup and its look at the flights; that
/// request must find the stored entry, not start a second flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_racing_a_finishing_flight_makes_no_second_call() {
    let api = Arc::new(FakeApi {
        script: StdMutex::new(Script::Active),
        introspects: AtomicUsize::new(0),
        user_mes: AtomicUsize::new(0),
        delay: Duration::ZERO,
        groups: vec![],
    });
    let c = cache(api.clone(), 60, 0);
    const TOKENS: usize = 1000;
    for t in 0..TOKENS {
        let token: Arc<str> = format!("token-{t}").into();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (c, token) = (c.clone(), token.clone());
                tokio::spawn(async move { c.validate(&token, None).await })
            })
            .collect();
        for task in tasks {
            assert!(is_valid(&task.await.unwrap()));
        }
    }
    assert_eq!(api.calls(), (TOKENS, TOKENS));
}
