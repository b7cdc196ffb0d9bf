//! The cache's rules with a scripted CloudBase and paused time.

use std::sync::atomic::AtomicUsize;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use super::*;
use crate::identity_headers::IdentityField;
use cloudbase_auth::types::Group;

/// What the scripted CloudBase answers next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    Active,
    Inactive,
    Down,
    Unauthenticated,
    /// Introspection fails (5xx) while `/user/me` answers 401 `unauthenticated`.
    IntrospectDownUserMeRefuses,
    /// Introspection answers `{}` while `/user/me` times out.
    IntrospectRefusesUserMeDown,
    /// Introspection vouches for user 42, `/user/me` describes user 43.
    TwoUsers,
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
                Script::Active | Script::Unauthenticated | Script::TwoUsers => Ok(Introspection {
                    sub: Some("42".into()),
                    scope: Some("user".into()),
                    ..Default::default()
                }),
                Script::Inactive | Script::IntrospectRefusesUserMeDown => {
                    Ok(Introspection::default())
                }
                Script::Down | Script::IntrospectDownUserMeRefuses => Err(down()),
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
            let profile = |sub: &str| UserProfile {
                sub: sub.into(),
                name: Some("n".into()),
                groups: self.groups.clone(),
                ..Default::default()
            };
            match *self.script.lock().unwrap() {
                Script::Active | Script::Inactive => Ok(profile("42")),
                Script::TwoUsers => Ok(profile("43")),
                Script::Unauthenticated | Script::IntrospectDownUserMeRefuses => {
                    Err(ApiError::Api {
                        status: StatusCode::UNAUTHORIZED,
                        error: "unauthenticated".into(),
                        error_code: 16,
                        error_description: String::new(),
                    })
                }
                Script::Down | Script::IntrospectRefusesUserMeDown => Err(ApiError::Timeout),
            }
        })
    }
}

/// The tests' cache settings: `negative_ttl` 5 s, no second tier.
fn settings(ttl: u64, stale: u64) -> CacheSettings {
    CacheSettings {
        max_entries: 1000,
        max_memory: 256 << 20,
        ttl: Duration::from_secs(ttl),
        negative_ttl: Duration::from_secs(5),
        stale_if_error: Duration::from_secs(stale),
        redis: None,
    }
}

/// The identity headers of the test caches.
fn headers() -> IdentityMapping {
    IdentityMapping::from_static(&[
        ("x-sub", IdentityField::Sub),
        ("x-groups", IdentityField::Groups),
    ])
}

fn cache(api: Arc<FakeApi>, ttl: u64, stale: u64) -> IdentityCache {
    cache_with_clock(api, ttl, stale, UnixClock::System).0
}

/// A cache reading Unix time from `clock`, and its metrics.
fn cache_with_clock(
    api: Arc<FakeApi>,
    ttl: u64,
    stale: u64,
    clock: UnixClock,
) -> (IdentityCache, Arc<Metrics>) {
    cache_with_settings(api, &settings(ttl, stale), clock)
}

fn cache_with_settings(
    api: Arc<FakeApi>,
    settings: &CacheSettings,
    clock: UnixClock,
) -> (IdentityCache, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new(Vec::<String>::new()));
    let cache = IdentityCache::with_clock(settings, &headers(), api, metrics.clone(), clock);
    (cache, metrics)
}

/// A JWT-shaped token carrying only `exp` (the cache reads no other claim).
fn jwt_with_exp(exp: i64) -> String {
    use base64::Engine;
    let claims = format!(r#"{{"exp":{exp}}}"#);
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
    format!("eyJhbGciOiJub25lIn0.{payload}.c2ln")
}

/// Unix second 1 000 000 000 and 900 ms: the fraction that let entries outlive `exp`.
const X_9: Duration = Duration::from_millis(1_000_000_000_900);
const X: i64 = 1_000_000_000;

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
    assert_eq!(
        c.entry_count(),
        1,
        "moka, on its own clock, still holds the entry: the cache's clock decides"
    );
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
    c.purge_all().await;
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
    assert_eq!(c.purge_sub("someone-else").await.local, 0);
    assert_eq!(c.purge_sub("42").await.local, 2);
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

#[tokio::test(start_paused = true)]
async fn an_entry_stored_at_x_9_is_refused_at_exp_plus_one_millisecond() {
    let api = FakeApi::new(Script::Active);
    let clock = UnixClock::following_tokio(X_9);
    let (c, _) = cache_with_clock(api.clone(), 60, 0, UnixClock::Tokio(clock));
    let token = jwt_with_exp(X + 2);
    assert!(is_valid(&c.validate(&token, None).await));
    // The fetch took the stand-in's 10 ms; stop 1 ms before exp.
    tokio::time::advance(Duration::from_millis(1_089)).await;
    assert!(
        is_valid(&c.validate(&token, None).await),
        "exp - 1 ms: still valid"
    );
    assert_eq!(api.calls(), (1, 1), "served from the cache");
    tokio::time::advance(Duration::from_millis(2)).await;
    assert!(
        matches!(c.validate(&token, None).await, Validation::Invalid),
        "exp + 1 ms: refused, although whole seconds would have kept it until exp + 0.9 s"
    );
    assert_eq!(
        api.calls(),
        (1, 1),
        "refused by its own exp, without asking CloudBase"
    );
}

#[tokio::test(start_paused = true)]
async fn a_wall_clock_step_past_exp_refuses_an_entry_tokio_time_still_calls_fresh() {
    let api = FakeApi::new(Script::Active);
    let clock = UnixClock::following_tokio(X_9);
    let (c, _) = cache_with_clock(api.clone(), 60, 0, UnixClock::Tokio(clock.clone()));
    let token = jwt_with_exp(X + 30);
    assert!(is_valid(&c.validate(&token, None).await));
    // The system clock is corrected forward past exp; the entry's tokio deadline is not.
    clock.step(Duration::from_secs(60));
    assert!(
        matches!(c.validate(&token, None).await, Validation::Invalid),
        "a hit never serves a token past its exp"
    );
    assert_eq!(api.calls(), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_until_exp_and_never_after() {
    let api = FakeApi::new(Script::Active);
    let clock = UnixClock::following_tokio(X_9);
    let (c, _) = cache_with_clock(api.clone(), 1, 60, UnixClock::Tokio(clock));
    let token = jwt_with_exp(X + 3);
    assert!(is_valid(&c.validate(&token, None).await));
    api.set(Script::Down);
    // Stored at x.91 (the stand-in answers in 10 ms), fresh for 1 s, exp at x + 3. Each
    // failing call takes 10 ms too: this one ends at exp - 10 ms.
    tokio::time::advance(Duration::from_millis(2_070)).await;
    assert!(
        is_valid(&c.validate(&token, None).await),
        "expired, CloudBase down, before exp: served stale"
    );
    tokio::time::advance(Duration::from_millis(11)).await;
    assert!(
        matches!(c.validate(&token, None).await, Validation::Invalid),
        "exp + 1 ms: never stale"
    );
}

#[tokio::test(start_paused = true)]
async fn a_group_expiry_bounds_the_entry_to_the_millisecond() {
    let expires_at = time::OffsetDateTime::from_unix_timestamp(X + 2)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let api = Arc::new(FakeApi {
        script: StdMutex::new(Script::Active),
        introspects: AtomicUsize::new(0),
        user_mes: AtomicUsize::new(0),
        delay: Duration::ZERO,
        groups: vec![
            Group::Id("user".into()),
            Group::Object {
                id: "admin".into(),
                expires_at: Some(expires_at),
            },
        ],
    });
    let clock = UnixClock::following_tokio(X_9);
    let (c, _) = cache_with_clock(api.clone(), 60, 0, UnixClock::Tokio(clock));
    let groups = |v: Validation| match v {
        Validation::Valid(identity) => {
            let mut h = http::HeaderMap::new();
            identity.apply(&headers(), &mut h);
            h["x-groups"].to_str().unwrap().to_owned()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(groups(c.validate("opaque", None).await), "user,admin");
    tokio::time::advance(Duration::from_millis(1_099)).await;
    assert_eq!(groups(c.validate("opaque", None).await), "user,admin");
    assert_eq!(
        api.calls(),
        (1, 1),
        "a hit until 1 ms before the group expires"
    );
    tokio::time::advance(Duration::from_millis(2)).await;
    assert_eq!(
        groups(c.validate("opaque", None).await),
        "user",
        "1 ms after: asked again, and the group is gone"
    );
    assert_eq!(api.calls(), (2, 2));
}

/// A cache allowing one flight (two calls) at a time, and its metrics.
fn one_flight_cache(api: Arc<FakeApi>, ttl: u64, stale: u64) -> (IdentityCache, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new(Vec::<String>::new()));
    let limits = Limits {
        max_in_flight: 2,
        ..Limits::default()
    };
    let c = IdentityCache::with_limits(
        &settings(ttl, stale),
        &IdentityMapping::from_static(&[("x-sub", IdentityField::Sub)]),
        limits,
        api,
        metrics.clone(),
    );
    (c, metrics)
}

#[tokio::test(start_paused = true)]
async fn a_miss_beyond_max_in_flight_is_refused_at_once_and_joining_a_flight_is_free() {
    let api = FakeApi::new(Script::Active);
    let (c, metrics) = one_flight_cache(api.clone(), 60, 0);
    let spawn = |token: &'static str| {
        let c = c.clone();
        tokio::spawn(async move { c.validate(token, None).await })
    };
    let first = spawn("a");
    tokio::task::yield_now().await; // "a" takes the only slot
    let joined = spawn("a");
    let start = Instant::now();
    assert!(matches!(
        c.validate("b", None).await,
        Validation::Unavailable
    ));
    assert_eq!(Instant::now(), start, "shed without waiting for the slot");
    assert!(is_valid(&first.await.unwrap()));
    assert!(is_valid(&joined.await.unwrap()), "joining needs no slot");
    assert_eq!(api.calls(), (1, 1), "the shed miss called nothing");
    let text = metrics.render(0);
    for endpoint in ["introspect", "user_me"] {
        let line = format!(
            "cloudbase_gateway_cloudbase_requests_total{{endpoint=\"{endpoint}\",outcome=\"shed\"}} 1"
        );
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }
    // The slot is free again once the flight has ended.
    assert!(is_valid(&c.validate("b", None).await));
    assert_eq!(api.calls(), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_401_from_user_me_beats_an_introspect_failure_and_is_stored() {
    let api = FakeApi::new(Script::IntrospectDownUserMeRefuses);
    let c = cache(api.clone(), 10, 60);
    assert!(matches!(
        c.validate("cold", None).await,
        Validation::Invalid
    ));
    assert!(matches!(
        c.validate("cold", None).await,
        Validation::Invalid
    ));
    assert_eq!(
        api.calls(),
        (1, 1),
        "the negative entry answered the second time"
    );

    // A warm token inside its stale window: the "no" wins over stale serving too.
    api.set(Script::Active);
    assert!(is_valid(&c.validate("warm", None).await));
    tokio::time::advance(Duration::from_secs(11)).await;
    api.set(Script::IntrospectDownUserMeRefuses);
    assert!(matches!(
        c.validate("warm", None).await,
        Validation::Invalid
    ));
    api.set(Script::Active);
    assert!(
        matches!(c.validate("warm", None).await, Validation::Invalid),
        "the negative entry replaced the positive one"
    );
}

#[tokio::test(start_paused = true)]
async fn an_inactive_introspection_beats_a_user_me_failure_and_is_stored() {
    let api = FakeApi::new(Script::IntrospectRefusesUserMeDown);
    let c = cache(api.clone(), 10, 60);
    assert!(matches!(c.validate("t", None).await, Validation::Invalid));
    assert!(matches!(c.validate("t", None).await, Validation::Invalid));
    assert_eq!(api.calls(), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn introspection_and_profile_of_different_users_validate_nobody_and_store_nothing() {
    let api = FakeApi::new(Script::TwoUsers);
    let (c, metrics) = cache_with_clock(api.clone(), 10, 60, UnixClock::System);
    let mismatches = |m: &Metrics| {
        let text = m.render(0);
        text.lines()
            .find_map(|l| l.strip_prefix("cloudbase_gateway_cloudbase_sub_mismatches_total "))
            .map(|v| v.parse::<u64>().unwrap())
    };
    assert!(matches!(
        c.validate("t", None).await,
        Validation::Unavailable
    ));
    assert!(matches!(
        c.validate("t", None).await,
        Validation::Unavailable
    ));
    assert_eq!(
        api.calls(),
        (2, 2),
        "nothing was cached: each request asks again"
    );
    assert_eq!(mismatches(&metrics), Some(2));
    assert_eq!(c.entry_count(), 0);

    // Like any CloudBase fault, it does not erase what CloudBase said consistently before:
    // inside its stale window a known identity is still served.
    api.set(Script::Active);
    assert!(is_valid(&c.validate("warm", None).await));
    tokio::time::advance(Duration::from_secs(11)).await;
    api.set(Script::TwoUsers);
    match c.validate("warm", None).await {
        Validation::Valid(identity) => assert_eq!(&*identity.sub, "42"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_whose_exp_comes_while_cloudbase_answers_is_refused() {
    let api = Arc::new(FakeApi {
        script: StdMutex::new(Script::Active),
        introspects: AtomicUsize::new(0),
        user_mes: AtomicUsize::new(0),
        delay: Duration::from_millis(500),
        groups: vec![],
    });
    let clock = UnixClock::following_tokio(X_9);
    let (c, _) = cache_with_clock(api.clone(), 60, 0, UnixClock::Tokio(clock));
    // exp is 100 ms away when asked; CloudBase takes 500 ms to vouch for it.
    let token = jwt_with_exp(X + 1);
    assert!(matches!(
        c.validate(&token, None).await,
        Validation::Invalid
    ));
    assert_eq!(api.calls(), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_made_up_tokens_never_evicts_a_signed_in_user() {
    let api = FakeApi::new(Script::Active);
    let settings = CacheSettings {
        max_entries: 50,
        ..settings(60, 0)
    };
    let (c, _) = cache_with_settings(api.clone(), &settings, UnixClock::System);
    let users: Vec<String> = (0..50).map(|i| format!("user-{i}")).collect();
    for user in &users {
        assert!(is_valid(&c.validate(user, None).await));
    }
    // Each made-up token three times: more often than any user was seen, so in one shared
    // cache frequency-based eviction would pick the users.
    api.set(Script::Inactive);
    for i in 0..2_000 {
        let fake = format!("made-up-{i}");
        for _ in 0..3 {
            assert!(matches!(c.validate(&fake, None).await, Validation::Invalid));
        }
    }
    assert!(
        c.entry_count() <= 100,
        "each kind holds at most max_entries: {}",
        c.entry_count()
    );
    let calls = api.calls();
    api.set(Script::Down);
    for user in &users {
        assert!(
            is_valid(&c.validate(user, None).await),
            "{user} served from the cache"
        );
    }
    assert_eq!(api.calls(), calls, "no user was asked about again");
}

#[tokio::test(start_paused = true)]
async fn the_entry_count_is_up_to_date_after_every_insert_and_purge() {
    let api = FakeApi::new(Script::Active);
    let c = cache(api.clone(), 60, 0);
    c.validate("a", None).await;
    c.validate("b", None).await;
    api.set(Script::Inactive);
    c.validate("bad", None).await;
    assert_eq!(c.entry_count(), 3, "two positive, one negative");
    assert_eq!(c.purge_token("bad").await.local, 1);
    assert_eq!(c.entry_count(), 2);
    assert_eq!(c.purge_sub("42").await.local, 2);
    assert_eq!(c.entry_count(), 0);
    api.set(Script::Active);
    c.validate("a", None).await;
    c.validate("b", None).await;
    assert_eq!(c.purge_all().await.local, 2);
    assert_eq!(c.entry_count(), 0, "counted as gone at once");
    assert!(is_valid(&c.validate("a", None).await));
    assert_eq!(api.calls().0, 6, "and really gone");
}

#[tokio::test(start_paused = true)]
async fn a_token_is_held_once_whichever_answer_came_last() {
    let api = FakeApi::new(Script::Inactive);
    let c = cache(api.clone(), 60, 0);
    assert!(matches!(c.validate("t", None).await, Validation::Invalid));
    tokio::time::advance(Duration::from_secs(6)).await;
    api.set(Script::Active);
    assert!(is_valid(&c.validate("t", None).await));
    assert_eq!(
        c.entry_count(),
        1,
        "the positive entry replaced the negative one"
    );
    tokio::time::advance(Duration::from_secs(61)).await;
    api.set(Script::Inactive);
    assert!(matches!(c.validate("t", None).await, Validation::Invalid));
    assert_eq!(c.entry_count(), 1, "and the other way round");
}

/// Polls until the cache holds nothing, for at most 10 s; how long it took.
async fn until_empty(c: &IdentityCache) -> Duration {
    let start = Instant::now();
    while c.entry_count() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "entry still held after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    start.elapsed()
}

/// Real time: moka drops entries on its own clock.
#[tokio::test]
async fn moka_drops_an_entry_at_its_tokens_exp_not_at_ttl() {
    let api = FakeApi::new(Script::Active);
    let c = cache(api.clone(), 60, 0);
    // Two to three seconds away (whole seconds truncate), so a busy machine still
    // validates it before `exp`; `ttl` is a minute, so going within 8 s is `exp`'s doing.
    let token = jwt_with_exp(UnixClock::System.now_secs() + 3);
    assert!(is_valid(&c.validate(&token, None).await));
    assert_eq!(c.entry_count(), 1);
    let gone = until_empty(&c).await;
    assert!(gone < Duration::from_secs(8), "gone after {gone:?}, by exp");
    assert!(matches!(
        c.validate(&token, None).await,
        Validation::Invalid
    ));
}

/// Real time: moka keeps an entry through its `stale_if_error` window, then drops it.
#[tokio::test]
async fn moka_keeps_an_entry_through_its_stale_window_then_drops_it() {
    let api = FakeApi::new(Script::Active);
    let settings = CacheSettings {
        ttl: Duration::from_millis(100),
        stale_if_error: Duration::from_secs(2),
        ..settings(60, 0)
    };
    let (c, _) = cache_with_settings(api.clone(), &settings, UnixClock::System);
    let stored = Instant::now();
    assert!(is_valid(&c.validate("t", None).await));
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.set(Script::Down);
    assert!(
        is_valid(&c.validate("t", None).await),
        "past its fresh life, CloudBase down: served stale, so still held"
    );
    until_empty(&c).await;
    assert!(
        stored.elapsed() >= Duration::from_secs(2),
        "held until the end of the stale window"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shed_miss_serves_a_stale_identity_when_stale_if_error_has_one() {
    let api = FakeApi::new(Script::Active);
    let (c, _) = one_flight_cache(api.clone(), 60, 30);
    assert!(is_valid(&c.validate("b", None).await));
    tokio::time::advance(Duration::from_secs(61)).await;
    let c2 = c.clone();
    let busy = tokio::spawn(async move { c2.validate("a", None).await });
    tokio::task::yield_now().await;
    assert!(
        is_valid(&c.validate("b", None).await),
        "expired but within stale_if_error: served while no slot is free"
    );
    assert!(is_valid(&busy.await.unwrap()));
    assert_eq!(api.calls(), (2, 2), "b was not asked about again");
}

#[tokio::test(start_paused = true)]
async fn cached_sub_names_the_user_of_a_known_token_without_asking_or_counting() {
    let api = FakeApi::new(Script::Active);
    let c = cache(api.clone(), 60, 0);
    assert_eq!(c.cached_sub("tok"), None, "unknown token");
    assert!(is_valid(&c.validate("tok", None).await));
    let metrics_before = c.inner.metrics.render(0);
    assert_eq!(c.cached_sub("tok").as_deref(), Some("42"));
    assert_eq!(api.calls(), (1, 1), "no CloudBase call");
    assert_eq!(
        c.inner.metrics.render(0),
        metrics_before,
        "no lookup counted"
    );

    api.set(Script::Inactive);
    assert!(matches!(
        c.validate("dead", None).await,
        Validation::Invalid
    ));
    assert_eq!(c.cached_sub("dead"), None, "a negative entry names no one");
    c.purge_sub("42").await;
    assert_eq!(c.cached_sub("tok"), None, "gone with its entry");
}

// ---------------------------------------------------------------------------------------
// What the shared tier holds, made a local entry (`tiers`): the reader's own rules, never
// past the writer's deadline.
// ---------------------------------------------------------------------------------------

/// Unix time of the shared-entry tests: 1 700 000 000 s.
const UNIX_NOW: Duration = Duration::from_secs(1_700_000_000);

fn shared_entry(verdict: SharedVerdict, life: Duration) -> SharedEntry {
    SharedEntry {
        verdict,
        expires_at_ms: expires_at_ms(UNIX_NOW, life),
    }
}

fn claims(exp: Option<i64>) -> Box<Claims> {
    Box::new(Claims {
        sub: "42".into(),
        scope: Some("user".into()),
        exp,
        ..Claims::default()
    })
}

/// How long `entry` is fresh from now, for a cache with `ttl` (seconds) and negative_ttl
/// 5 s on the tests' Unix clock; `None` if it is not used at all.
fn fresh_for(ttl: u64, entry: &SharedEntry) -> Option<Duration> {
    let clock = UnixClock::following_tokio(UNIX_NOW);
    let (c, _) = cache_with_clock(FakeApi::new(Script::Down), ttl, 0, UnixClock::Tokio(clock));
    let now = Instant::now();
    c.inner
        .entry_for_shared(&c.inner.tuning.load(), entry)
        .map(|e| e.fresh_until().duration_since(now))
}

#[tokio::test(start_paused = true)]
async fn a_shared_identity_is_fresh_until_the_first_of_its_writers_deadline_the_local_ttl_and_exp()
{
    let exp = UNIX_NOW.as_secs() as i64 + 30;
    let positive = |exp| SharedVerdict::Positive(claims(exp));
    let writer_first = shared_entry(positive(None), Duration::from_millis(1500));
    assert_eq!(
        fresh_for(60, &writer_first),
        Some(Duration::from_millis(1500))
    );
    let ttl_first = shared_entry(positive(None), Duration::from_secs(3600));
    assert_eq!(fresh_for(60, &ttl_first), Some(Duration::from_secs(60)));
    let exp_first = shared_entry(positive(Some(exp)), Duration::from_secs(3600));
    assert_eq!(fresh_for(60, &exp_first), Some(Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn a_shared_refusal_is_fresh_until_the_first_of_its_writers_deadline_and_the_local_negative_ttl(
) {
    let short = shared_entry(SharedVerdict::Negative, Duration::from_millis(700));
    assert_eq!(fresh_for(60, &short), Some(Duration::from_millis(700)));
    let long = shared_entry(SharedVerdict::Negative, Duration::from_secs(600));
    assert_eq!(fresh_for(60, &long), Some(Duration::from_secs(5)));
}

#[tokio::test(start_paused = true)]
async fn a_shared_entry_whose_deadline_or_exp_has_come_is_not_used() {
    let ended = SharedEntry {
        verdict: SharedVerdict::Positive(claims(None)),
        expires_at_ms: expires_at_ms(UNIX_NOW, Duration::ZERO),
    };
    assert_eq!(fresh_for(60, &ended), None);
    let expired = shared_entry(
        SharedVerdict::Positive(claims(Some(UNIX_NOW.as_secs() as i64))),
        Duration::from_secs(60),
    );
    assert_eq!(fresh_for(60, &expired), None, "the token's exp has come");
    let refused = SharedEntry {
        verdict: SharedVerdict::Negative,
        expires_at_ms: expires_at_ms(UNIX_NOW, Duration::ZERO) - 1,
    };
    assert_eq!(fresh_for(60, &refused), None);
}
