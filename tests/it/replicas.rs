//! A fleet of three replicas of the real binary on one real `redis-server` and one
//! emulator (`support::fleet`): they share what CloudBase said, a purge on one reaches the
//! others within a second, and Redis dying, restarting or holding forged values never
//! fails a request nor makes an identity.
//!
//! Every replica caches for an hour, so a refusal after a revocation can only come from a
//! purge. A purge answers once every replica confirmed it (or after a second, saying how
//! many did), so the tests check the very next request on the others; the time the purge
//! took is printed (`cargo test replicas -- --nocapture`).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::eventually;
use crate::support::fleet::{Fleet, FleetCfg, Replica};
use crate::support::ingress::{deploy_file, Ingress};

/// Waits until `replica` has written CloudBase's answers to Redis `n` times.
async fn stored(replica: &Replica, n: f64) {
    eventually(Duration::from_secs(10), "the write to Redis", || async {
        replica
            .metric("redis_writes_total{result=\"stored\"}")
            .await
            >= n
    })
    .await;
}

/// Checks that `token` is refused by the very next request on each of `others`: the purge
/// they answered for was confirmed by every replica (`"confirmed"` equal to `"replicas"`),
/// which each does only after dropping its entries.
async fn refused_at_once(others: &[&Replica], token: &str) {
    for replica in others {
        assert_eq!(
            replica.status(token).await,
            401,
            "{} served a token whose purge it had confirmed",
            replica.base
        );
    }
}

/// A purge's answer on a fleet of three: `purged` entries dropped on the purging replica,
/// published through Redis and confirmed by all three within the tier's second
/// (`CONFIRM_WITHIN`; the answer says fewer otherwise).
fn confirmed_by_three(purged: u64) -> serde_json::Value {
    json!({"purged": purged, "shared": true, "replicas": 3, "confirmed": 3})
}

#[tokio::test]
async fn a_new_token_costs_one_cloudbase_call_pair_across_three_replicas() {
    let fleet = Fleet::start(3, FleetCfg::default()).await;
    let [a, b, c] = &fleet.replicas[..] else {
        unreachable!()
    };
    let (token, sub) = fleet.sign_in("demo", "demo-password").await;

    assert_eq!(a.user_id(&token).await, sub);
    stored(a, 1.0).await;
    assert_eq!(b.user_id(&token).await, sub);
    assert_eq!(c.user_id(&token).await, sub);
    // Each again: from its own first tier now.
    for replica in [a, b, c] {
        assert_eq!(replica.user_id(&token).await, sub);
    }

    assert_eq!(
        fleet.cloudbase_calls().await,
        (1, 1),
        "one introspect and one /user/me for the whole fleet"
    );
    for replica in [b, c] {
        assert_eq!(
            replica.metric("redis_lookups_total{result=\"hit\"}").await,
            1.0
        );
        assert_eq!(
            replica.metric("cache_lookups_total{result=\"hit\"}").await,
            1.0
        );
    }
    assert_eq!(a.metric("redis_lookups_total{result=\"miss\"}").await, 1.0);
}

#[tokio::test]
async fn a_token_cloudbase_refused_on_one_replica_is_refused_on_the_others_without_asking() {
    let fleet = Fleet::start(
        3,
        FleetCfg {
            cache: "negative_ttl = \"5m\"",
            ..FleetCfg::default()
        },
    )
    .await;
    let [a, b, c] = &fleet.replicas[..] else {
        unreachable!()
    };
    let forged = "made-up-token-no-one-issued";

    assert_eq!(a.status(forged).await, 401);
    stored(a, 1.0).await;
    assert_eq!(b.status(forged).await, 401);
    assert_eq!(c.status(forged).await, 401);

    assert_eq!(fleet.cloudbase_calls().await, (1, 1), "asked once, by A");
    for replica in [b, c] {
        assert_eq!(
            replica
                .metric("redis_lookups_total{result=\"negative_hit\"}")
                .await,
            1.0
        );
    }
}

/// Signs `username` in and has every replica validate (and cache) the token.
async fn cached_everywhere(fleet: &Fleet, username: &str, password: &str) -> (String, String) {
    let (token, sub) = fleet.sign_in(username, password).await;
    for replica in &fleet.replicas {
        assert_eq!(replica.user_id(&token).await, sub);
    }
    (token, sub)
}

#[tokio::test]
async fn a_purge_by_token_on_one_replica_refuses_the_token_on_the_others_within_a_second() {
    let fleet = Fleet::start(3, FleetCfg::default()).await;
    let [a, b, c] = &fleet.replicas[..] else {
        unreachable!()
    };
    let (token, _) = cached_everywhere(&fleet, "demo", "demo-password").await;
    let (other, other_sub) = cached_everywhere(&fleet, "zhang", "zhang-password").await;

    fleet.revoke_at_cloudbase(&token).await;
    assert_eq!(b.status(&token).await, 200, "cached: revoked, still served");

    let since = Instant::now();
    let answer = a.purge(json!({ "token": token })).await;
    eprintln!(
        "purge by token confirmed by every replica in {:?}",
        since.elapsed()
    );
    assert_eq!(answer, confirmed_by_three(1));
    refused_at_once(&[b, c], &token).await;
    assert_eq!(a.status(&token).await, 401);

    for replica in [a, b, c] {
        assert_eq!(
            replica.user_id(&other).await,
            other_sub,
            "another token kept"
        );
    }
}

#[tokio::test]
async fn a_purge_by_sub_on_one_replica_refuses_every_token_of_the_user_on_the_others_within_a_second(
) {
    let fleet = Fleet::start(3, FleetCfg::default()).await;
    let [a, b, c] = &fleet.replicas[..] else {
        unreachable!()
    };
    let (first, sub) = cached_everywhere(&fleet, "demo", "demo-password").await;
    let (second, same) = cached_everywhere(&fleet, "demo", "demo-password").await;
    assert_eq!(sub, same);
    let (other, other_sub) = cached_everywhere(&fleet, "zhang", "zhang-password").await;

    fleet.revoke_at_cloudbase(&first).await;
    fleet.revoke_at_cloudbase(&second).await;
    let since = Instant::now();
    let answer = a.purge(json!({ "sub": sub })).await;
    eprintln!(
        "purge by sub confirmed by every replica in {:?}",
        since.elapsed()
    );
    assert_eq!(answer, confirmed_by_three(2));
    refused_at_once(&[b, c], &first).await;
    refused_at_once(&[b, c], &second).await;

    for replica in [a, b, c] {
        assert_eq!(
            replica.user_id(&other).await,
            other_sub,
            "another user kept"
        );
    }
}

#[tokio::test]
async fn a_purge_of_everything_on_one_replica_empties_the_others_within_a_second() {
    let fleet = Fleet::start(3, FleetCfg::default()).await;
    let [a, b, c] = &fleet.replicas[..] else {
        unreachable!()
    };
    let (demo, _) = cached_everywhere(&fleet, "demo", "demo-password").await;
    let (admin, _) = cached_everywhere(&fleet, "admin", "admin-password").await;

    fleet.revoke_at_cloudbase(&demo).await;
    fleet.revoke_at_cloudbase(&admin).await;
    let since = Instant::now();
    let answer = a.purge(json!({ "all": true })).await;
    eprintln!(
        "purge of everything confirmed by every replica in {:?}",
        since.elapsed()
    );
    assert_eq!(answer, confirmed_by_three(2));
    refused_at_once(&[b, c], &demo).await;
    refused_at_once(&[b, c], &admin).await;
}

#[tokio::test]
async fn redis_killed_mid_test_fails_no_request_and_new_tokens_are_still_validated() {
    let mut fleet = Fleet::start(3, FleetCfg::default()).await;
    let (known, known_sub) = fleet.sign_in("demo", "demo-password").await;
    let [a, b, _] = &fleet.replicas[..] else {
        unreachable!()
    };
    assert_eq!(a.user_id(&known).await, known_sub);
    stored(a, 1.0).await;
    assert_eq!(b.user_id(&known).await, known_sub);

    fleet.redis.kill();
    let (fresh, fresh_sub) = fleet.sign_in("zhang", "zhang-password").await;
    let started = Instant::now();
    for round in 0..3 {
        for (i, replica) in fleet.replicas.iter().enumerate() {
            // Cached on A and B; C and the fresh token go to CloudBase.
            assert_eq!(
                replica.user_id(&known).await,
                known_sub,
                "replica {i}, round {round}"
            );
            assert_eq!(
                replica.user_id(&fresh).await,
                fresh_sub,
                "replica {i}, round {round}"
            );
        }
    }
    eprintln!("18 requests with Redis dead took {:?}", started.elapsed());
    assert_eq!(
        fleet.cloudbase_calls().await,
        (5, 5),
        "the known token by A (B read it from Redis) and by C (Redis gone), the fresh one \
         once per replica"
    );
    for replica in &fleet.replicas {
        let what = "/readyz saying it is degraded";
        eventually(Duration::from_secs(10), what, || async {
            replica.readyz().await == (200, "ready (redis degraded)\n".to_owned())
        })
        .await;
        assert_eq!(
            replica.purge(json!({ "token": fresh })).await,
            json!({"purged": 1, "shared": false}),
            "a purge with Redis down says it reached this replica only"
        );
        assert!(
            replica
                .metric("redis_lookups_total{result=\"error\"}")
                .await
                >= 1.0
        );
    }
}

#[tokio::test]
async fn after_a_redis_restart_replicas_drop_their_local_caches_and_sharing_resumes() {
    let mut fleet = Fleet::start(3, FleetCfg::default()).await;
    let (before, sub) = cached_everywhere(&fleet, "demo", "demo-password").await;
    for replica in &fleet.replicas {
        assert_eq!(replica.metric("cache_entries").await, 1.0);
        assert_eq!(
            replica
                .metric("redis_invalidations_total{kind=\"all\"}")
                .await,
            1.0,
            "the first subscription's"
        );
    }

    fleet.redis.restart();
    for replica in &fleet.replicas {
        // Purges published while it was away are lost: it starts over.
        let what = "resubscribed, local cache dropped";
        eventually(Duration::from_secs(20), what, || async {
            replica
                .metric("redis_invalidations_total{kind=\"all\"}")
                .await
                == 2.0
                && replica.metric("redis_subscribed").await == 1.0
        })
        .await;
        assert_eq!(replica.metric("cache_entries").await, 0.0);
    }
    let calls = fleet.cloudbase_calls().await;

    let [a, b, c] = &fleet.replicas[..] else {
        unreachable!()
    };
    let stored_before = a.metric("redis_writes_total{result=\"stored\"}").await;
    assert_eq!(a.user_id(&before).await, sub);
    stored(a, stored_before + 1.0).await;
    assert_eq!(b.user_id(&before).await, sub);
    assert_eq!(c.user_id(&before).await, sub);
    assert_eq!(
        fleet.cloudbase_calls().await,
        (calls.0 + 1, calls.1 + 1),
        "asked again once, then shared through the new Redis"
    );
    for replica in [a, b, c] {
        assert_eq!(replica.readyz().await, (200, "ready\n".to_owned()));
    }
}

/// The Redis key of `token`'s entry under the default prefix.
fn entry_key(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("cloudbase-gateway:{hex}")
}

#[tokio::test]
async fn a_tampered_or_forged_redis_value_never_becomes_an_identity() {
    let fleet = Fleet::start(2, FleetCfg::default()).await;
    let [a, b] = &fleet.replicas[..] else {
        unreachable!()
    };
    let (admin_token, admin_sub) = fleet.sign_in("admin", "admin-password").await;
    let (demo_token, demo_sub) = fleet.sign_in("demo", "demo-password").await;
    assert_eq!(a.user_id(&admin_token).await, admin_sub);
    assert_eq!(a.user_id(&demo_token).await, demo_sub);
    stored(a, 2.0).await;

    let mut redis = fleet.redis.connection().await;
    let admin_value: Vec<u8> = redis::cmd("GET")
        .arg(entry_key(&admin_token))
        .query_async(&mut redis)
        .await
        .unwrap();
    let demo_value: Vec<u8> = redis::cmd("GET")
        .arg(entry_key(&demo_token))
        .query_async(&mut redis)
        .await
        .unwrap();
    // Someone with write access to Redis but not the HMAC key: demo's entry made to name
    // the admin (body edited, tag kept), and the admin's genuine value copied under a
    // made-up token's key.
    // A value is a version byte, a 32-byte tag, then the JSON body.
    let body_at = 1 + 32;
    let tampered = [
        &demo_value[..body_at],
        String::from_utf8_lossy(&demo_value[body_at..])
            .replace(&demo_sub, &admin_sub)
            .as_bytes(),
    ]
    .concat();
    assert_ne!(tampered, demo_value);
    let forged = "made-up-token-carrying-the-admins-value";
    for (key, value) in [
        (entry_key(&demo_token), &tampered),
        (entry_key(forged), &admin_value),
    ] {
        let () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(600)
            .query_async(&mut redis)
            .await
            .unwrap();
    }

    assert_eq!(b.user_id(&demo_token).await, demo_sub, "CloudBase decided");
    assert_eq!(b.status(forged).await, 401);
    assert_eq!(
        b.metric("redis_lookups_total{result=\"invalid\"}").await,
        2.0
    );
    assert_eq!(
        fleet.cloudbase_calls().await,
        (4, 4),
        "A's two, then B asked about both"
    );
    // And B wrote CloudBase's own answer over the tampered value.
    eventually(
        Duration::from_secs(10),
        "the tampered value replaced",
        || {
            let mut redis = redis.clone();
            let key = entry_key(&demo_token);
            let tampered = tampered.clone();
            async move {
                let now: Vec<u8> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                now != tampered && now.len() > body_at
            }
        },
    )
    .await;
    assert_eq!(b.metric("redis_writes_total{result=\"stored\"}").await, 2.0);
}

/// The shipped load balancer (`deploy/nginx/replicas.conf`, docker-compose.yml's `lb`) as
/// it is, with its replicas' service names pointed at `replicas` and its port at the test's.
fn shipped_lb(replicas: &[&Replica]) -> Ingress {
    let path = deploy_file("nginx/replicas.conf");
    let mut conf = std::fs::read_to_string(&path).expect("read replicas.conf");
    for (name, replica) in ["gateway-a:8080", "gateway-b:8080"].iter().zip(replicas) {
        let server = format!("server {name};");
        assert!(conf.contains(&server), "{} lacks {server}", path.display());
        let addr = replica.base.trim_start_matches("http://");
        conf = conf.replace(&server, &format!("server {addr};"));
    }
    assert!(
        conf.contains("listen 8080;"),
        "{} lacks listen 8080",
        path.display()
    );
    Ingress::nginx(&conf.replace("listen 8080;", "listen {LISTEN};"))
}

/// `GET /api/whoami` through `lb` with `token`: the status and the `x-user-id` the
/// upstream saw.
async fn through(fleet: &Fleet, lb: &Ingress, token: &str) -> (u16, Option<String>) {
    let r = fleet
        .http
        .get(format!("{}/api/whoami", lb.base()))
        .bearer_auth(token)
        .send()
        .await
        .expect("the lb answers");
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    let user = body["headers"]["x-user-id"].as_str().map(str::to_owned);
    (status, user)
}

/// What README "Running several replicas" shows with docker compose: requests through the
/// one port alternate between the replicas, which ask CloudBase once between them, and
/// after a revocation one purge on replica A refuses the token on both.
#[tokio::test]
async fn behind_the_shipped_round_robin_lb_one_purge_refuses_a_revoked_token_on_both_replicas() {
    let fleet = Fleet::start(2, FleetCfg::default()).await;
    let [a, b] = &fleet.replicas[..] else {
        unreachable!()
    };
    let lb = shipped_lb(&[a, b]);
    let (token, sub) = fleet.sign_in("demo", "demo-password").await;

    assert_eq!(through(&fleet, &lb, &token).await, (200, Some(sub.clone())));
    // Whichever replica took it wrote CloudBase's answer to Redis for the other.
    eventually(Duration::from_secs(10), "the write to Redis", || async {
        let mut n = 0.0;
        for replica in [a, b] {
            n += replica
                .metric("redis_writes_total{result=\"stored\"}")
                .await;
        }
        n == 1.0
    })
    .await;
    assert_eq!(through(&fleet, &lb, &token).await, (200, Some(sub.clone())));
    for replica in [a, b] {
        assert_eq!(
            replica
                .metric("auth_decisions_total{result=\"allowed\"}")
                .await,
            1.0,
            "round robin: one request each ({})",
            lb.log()
        );
    }
    assert_eq!(fleet.cloudbase_calls().await, (1, 1), "asked once for both");

    fleet.revoke_at_cloudbase(&token).await;
    for _ in 0..2 {
        assert_eq!(
            through(&fleet, &lb, &token).await.0,
            200,
            "cached on both: still served"
        );
    }
    let answer = a.purge(json!({ "token": token })).await;
    assert_eq!(
        answer,
        json!({"purged": 1, "shared": true, "replicas": 2, "confirmed": 2})
    );
    for _ in 0..2 {
        assert_eq!(through(&fleet, &lb, &token).await, (401, None));
    }
    for replica in [a, b] {
        assert_eq!(
            replica
                .metric("auth_decisions_total{result=\"invalid\"}")
                .await,
            1.0,
            "each replica refused it once"
        );
    }
}

/// A replica stopped (SIGTERM, as a rolling deploy does) behind the shipped lb: it stops
/// accepting, and the lb sends every request to the other, which still knows the token.
#[tokio::test]
async fn a_replica_stopped_behind_the_shipped_lb_fails_no_request() {
    let fleet = Fleet::start(2, FleetCfg::default()).await;
    let [a, b] = &fleet.replicas[..] else {
        unreachable!()
    };
    let lb = shipped_lb(&[a, b]);
    let (token, sub) = fleet.sign_in("demo", "demo-password").await;
    for _ in 0..2 {
        assert_eq!(through(&fleet, &lb, &token).await, (200, Some(sub.clone())));
    }

    let calls = fleet.cloudbase_calls().await;

    b.process.terminate();
    let b_addr: std::net::SocketAddr = b.base.trim_start_matches("http://").parse().unwrap();
    eventually(Duration::from_secs(20), "replica B closed", || async {
        tokio::net::TcpStream::connect(b_addr).await.is_err()
    })
    .await;
    for i in 0..6 {
        assert_eq!(
            through(&fleet, &lb, &token).await,
            (200, Some(sub.clone())),
            "request {i} after B stopped ({})",
            lb.log()
        );
    }
    assert_eq!(
        fleet.cloudbase_calls().await,
        calls,
        "A still had it cached"
    );
}
