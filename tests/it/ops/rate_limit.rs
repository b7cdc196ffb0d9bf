//! `routes[].rate_limit`: a bucket per user, a bucket per address for everyone without a
//! (non-anonymous) identity, the IETF fields on every response of a limited route, and
//! nothing spent by requests that authentication refuses.

use std::time::Duration;

use cloudbase_auth::CallOptions;

use crate::support::*;

/// `/api/`: signed-in users (anonymous ones admitted), 1 a minute with a burst of 2, so
/// nothing refills during a test. `/fast/`: anyone, 4 a second with a burst of 1, so a
/// refill takes a quarter second. `/open/`: token optional, 1 a minute, burst 2.
const ROUTES: &str = r#"
[[routes]]
prefix = "/api/"
upstream = "whoami"
allow_anonymous = true
rate_limit = "1/m"
rate_limit_burst = 2

[[routes]]
prefix = "/fast/"
upstream = "whoami"
auth = "none"
rate_limit = "4/s"
rate_limit_burst = 1

[[routes]]
prefix = "/open/"
upstream = "whoami"
auth = "optional"
allow_anonymous = true
rate_limit = "1/m"
rate_limit_burst = 2
"#;

async fn anonymous_token(h: &Harness, device: &str) -> String {
    let opts = CallOptions {
        device_id: Some(device.to_owned()),
        ..Default::default()
    };
    h.cloudbase
        .signin_anonymously(&opts)
        .await
        .expect("anonymous sign-in")
        .access_token
}

async fn rate_limited(h: &Harness, route: &str) -> f64 {
    let series = format!("cloudbase_gateway_rate_limited_total{{route=\"{route}\"}}");
    metric(&h.metrics().await, &series)
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn one_user_is_limited_while_another_on_the_same_route_is_not() {
    let h = Harness::start(ROUTES).await;
    let demo = h.demo_token().await;
    let zhang = h.sign_in("zhang", "zhang-password").await.access_token;

    let first = h.get("/api/x", Some(&demo)).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "ratelimit-policy"), "\"gateway\";q=2;w=120");
    assert_eq!(header(&first, "ratelimit"), "\"gateway\";r=1;t=60");
    let second = h.get("/api/x", Some(&demo)).await;
    assert_eq!(second.status(), 200);
    assert_eq!(header(&second, "ratelimit"), "\"gateway\";r=0;t=120");

    let refused = h.get("/api/x", Some(&demo)).await;
    let (status, code, headers) = rejection(refused).await;
    assert_eq!((status.as_u16(), code.as_str()), (429, "RATE_LIMITED"));
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(headers["ratelimit-policy"], "\"gateway\";q=2;w=120");
    let state = headers["ratelimit"].to_str().unwrap();
    assert!(state.starts_with("\"gateway\";r=0;t="), "{state}");

    let other = h.get("/api/x", Some(&zhang)).await;
    assert_eq!(other.status(), 200, "zhang's bucket is zhang's");
    assert_eq!(header(&other, "ratelimit"), "\"gateway\";r=1;t=60");

    assert_eq!(rate_limited(&h, "/api/").await, 1.0);
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "cloudbase_gateway_requests_total{route=\"/api/\",method=\"GET\",status=\"429\",kind=\"proxy\"}"
        ),
        1.0
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_spent_bucket_refills_after_its_interval() {
    let h = Harness::start(ROUTES).await;
    // 4/s with a burst of 1: requests sent back to back soon find the bucket empty (a
    // bounded loop, since a slow machine may space them past the interval).
    let mut refused = false;
    for _ in 0..50 {
        if h.get("/fast/", None).await.status() == 429 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the bucket never ran dry");
    // One token comes back every 250 ms; wait well past it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = h.get("/fast/", None).await;
    assert_eq!(again.status(), 200);
    h.shutdown().await;
}

#[tokio::test]
async fn anonymous_users_and_callers_without_a_token_share_one_bucket_per_address() {
    let h = Harness::start(ROUTES).await;
    let anon_1 = anonymous_token(&h, "device-1").await;
    let anon_2 = anonymous_token(&h, "device-2").await;
    assert_eq!(h.get("/open/", Some(&anon_1)).await.status(), 200);
    assert_eq!(h.get("/open/", Some(&anon_2)).await.status(), 200);
    let third = h.get("/open/", None).await;
    assert_eq!(
        third.status(),
        429,
        "two anonymous users and a caller without a token: one address, one bucket"
    );
    let demo = h.demo_token().await;
    assert_eq!(
        h.get("/open/", Some(&demo)).await.status(),
        200,
        "a signed-in user from the same address has a bucket of their own"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn requests_refused_by_authentication_spend_no_token() {
    let h = Harness::start(ROUTES).await;
    for token in [None, Some("not-a-token"), Some("eyJhbGciOiJub25lIn0.e30.")] {
        for _ in 0..3 {
            let r = h.get("/api/x", token).await;
            assert_eq!(r.status(), 401, "{token:?}");
            assert!(
                r.headers().get("ratelimit").is_none(),
                "a refused request never reaches the limit"
            );
        }
    }
    // The address's bucket (anonymous users spend from it) is still full: two pass.
    let anon = anonymous_token(&h, "device-9").await;
    assert_eq!(h.get("/api/x", Some(&anon)).await.status(), 200);
    assert_eq!(h.get("/api/x", Some(&anon)).await.status(), 200);
    assert_eq!(h.get("/api/x", Some(&anon)).await.status(), 429);
    assert_eq!(rate_limited(&h, "/api/").await, 1.0);
    h.shutdown().await;
}
