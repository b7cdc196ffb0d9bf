//! The CloudBase relay (issue 13) over real sockets: the real gateway with its embedded
//! emulator, or with a CloudBase stand-in that records every request it receives, so
//! each test can say what crossed the gateway and what did not.
//!
//! What the official JS SDK does through the relay (sign-out, password change, revoke-all
//! with two devices) is in `tests/it/js_sdk.rs`; here are the rules underneath: what purges
//! and what does not, the per-address limits, CORS, and the attacks on the relay itself.
//! The two-replica case (sign out on A, refused on B) needs the Redis tier and is not
//! here yet.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Generous bound for anything that should finish "at once"; never a performance claim.
const PATIENCE: Duration = Duration::from_secs(10);

/// An hour of cache: a token that stops working within a test was purged, not expired.
const RELAY: &str = r#"
[cache]
ttl = "1h"

[[routes]]
prefix = "/api/"
upstream = "whoami"

[relay]
enabled = true
allowed_origins = ["https://app.example.com"]
"#;

/// The gateway with the relay on and the embedded emulator behind it.
async fn gateway(extra: &str) -> Harness {
    Harness::start(&format!("{RELAY}{extra}")).await
}

fn relay_url(h: &Harness, path: &str) -> String {
    format!("{}/auth/v1{path}", h.base)
}

/// `POST /auth/v1{path}` through the gateway with a JSON body and an optional bearer.
async fn relay_post(h: &Harness, path: &str, bearer: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = h
        .http
        .post(relay_url(h, path))
        .header("x-device-id", "relay-test-device-0001")
        .json(&body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("relay answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON"))
}

async fn relay_sign_in(h: &Harness, username: &str, password: &str) -> Value {
    let (status, v) = relay_post(
        h,
        "/signin",
        None,
        json!({"username": username, "password": password}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// `relay_purges_total{by}` in a metrics text.
fn purges(metrics: &str, by: &str) -> f64 {
    metric(
        metrics,
        &format!("cloudbase_gateway_relay_purges_total{{by=\"{by}\"}}"),
    )
}

/// `relay_requests_total{endpoint,status}` in a metrics text.
fn relayed(metrics: &str, endpoint: &str, class: &str) -> f64 {
    metric(
        metrics,
        &format!(
            "cloudbase_gateway_relay_requests_total{{endpoint=\"{endpoint}\",status=\"{class}\"}}"
        ),
    )
}

async fn whoami_status(h: &Harness, token: &str) -> u16 {
    h.get("/api/whoami", Some(token)).await.status().as_u16()
}

#[tokio::test]
async fn a_token_revoked_through_the_relay_is_refused_at_once_despite_an_hour_of_cache() {
    let h = gateway("").await;
    let session = relay_sign_in(&h, "demo", "demo-password").await;
    let token = s(&session, "access_token");
    assert_eq!(whoami_status(&h, token).await, 200);
    assert_eq!(whoami_status(&h, token).await, 200);
    assert_eq!(
        h.calls("introspect"),
        1,
        "the second request was a cache hit"
    );

    // The SDK's signOut(): the token in the body, no Authorization header.
    let (status, v) = relay_post(&h, "/revoke", None, json!({ "token": token })).await;
    assert_eq!((status, &v), (200, &json!({})));
    let (status, code, _) = rejection(h.get("/api/whoami", Some(token)).await).await;
    assert_eq!(
        (status.as_u16(), code.as_str()),
        (401, "INVALID_ACCESS_TOKEN")
    );
    let m = h.metrics().await;
    assert_eq!(purges(&m, "token"), 1.0);
    assert_eq!(relayed(&m, "revoke", "2xx"), 1.0);
    assert_eq!(
        metric(
            &m,
            "cloudbase_gateway_requests_total{route=\"/auth/v1/\",method=\"POST\",status=\"200\",kind=\"relay\"}"
        ),
        2.0,
        "relayed calls are labelled with the relay's prefix and kind"
    );
}

#[tokio::test]
async fn signing_out_one_session_purges_every_cached_token_of_the_user_and_only_that_user() {
    let h = gateway("").await;
    let phone = relay_sign_in(&h, "demo", "demo-password").await;
    let laptop = relay_sign_in(&h, "demo", "demo-password").await;
    let other = relay_sign_in(&h, "zhang", "zhang-password").await;
    for t in [&phone, &laptop, &other] {
        assert_eq!(whoami_status(&h, s(t, "access_token")).await, 200);
    }
    let introspections = h.calls("introspect");

    // signOut({redirect_uri}): POST /user/signout as the caller ends the caller's session.
    let (status, _) = relay_post(
        &h,
        "/user/signout",
        Some(s(&phone, "access_token")),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(whoami_status(&h, s(&phone, "access_token")).await, 401);
    assert_eq!(
        whoami_status(&h, s(&laptop, "access_token")).await,
        200,
        "the user's other session lives on at CloudBase"
    );
    assert_eq!(whoami_status(&h, s(&other, "access_token")).await, 200);
    assert_eq!(
        h.calls("introspect"),
        introspections + 2,
        "the user's two tokens were asked about afresh; the other user's stayed cached"
    );
    let m = h.metrics().await;
    assert_eq!(purges(&m, "sub"), 1.0);
}

#[tokio::test]
async fn a_token_the_cache_never_saw_is_resolved_to_its_user_by_its_claims() {
    let h = gateway("").await;
    let cached = relay_sign_in(&h, "demo", "demo-password").await;
    let unseen = relay_sign_in(&h, "demo", "demo-password").await;
    assert_eq!(whoami_status(&h, s(&cached, "access_token")).await, 200);

    // Revoke-all made with a token the gateway never validated: its sub comes from the
    // token CloudBase has just accepted, and the cached session goes too.
    let resp = h
        .http
        .delete(relay_url(&h, "/user/revoke/all"))
        .bearer_auth(s(&unseen, "access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(whoami_status(&h, s(&cached, "access_token")).await, 401);
    let m = h.metrics().await;
    assert_eq!(purges(&m, "sub"), 1.0);
    assert_eq!(purges(&m, "unresolved"), 0.0);
}

#[tokio::test]
async fn calls_cloudbase_refuses_purge_nothing() {
    let h = gateway("").await;
    let session = relay_sign_in(&h, "demo", "demo-password").await;
    let token = s(&session, "access_token");
    assert_eq!(whoami_status(&h, token).await, 200);
    let introspections = h.calls("introspect");

    // A wrong password.
    let (status, v) = relay_post(
        &h,
        "/signin",
        None,
        json!({"username": "demo", "password": "not-the-password"}),
    )
    .await;
    assert_eq!((status, s(&v, "error")), (400, "invalid_password"));
    // Session-ending calls made with a bad token.
    let (status, v) = relay_post(&h, "/user/signout", Some("not-a-token"), json!({})).await;
    assert_eq!((status, s(&v, "error")), (401, "unauthenticated"));
    let resp = h
        .http
        .delete(relay_url(&h, "/user/revoke/all"))
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "a tampered token");
    // A password change CloudBase refuses (wrong old password) with the real token.
    let resp = h
        .http
        .patch(relay_url(&h, "/user/password"))
        .bearer_auth(token)
        .json(&json!({"old_password": "wrong-old-password", "new_password": "whatever-new-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // Account deletion without a sudo token.
    let resp = h
        .http
        .delete(relay_url(&h, "/user/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    assert_eq!(whoami_status(&h, token).await, 200);
    assert_eq!(
        h.calls("introspect"),
        introspections,
        "the token's entry still serves from the cache"
    );
    let m = h.metrics().await;
    for by in ["token", "sub", "unresolved"] {
        assert_eq!(purges(&m, by), 0.0, "purges by {by}");
    }
    assert_eq!(relayed(&m, "signin", "4xx"), 1.0);
}

#[tokio::test]
async fn relayed_calls_need_no_gateway_token_and_are_never_cached() {
    // A catch-all route that requires a token does not reach the relay's prefix.
    let h = gateway("[[routes]]\nprefix = \"/\"\nupstream = \"whoami\"\n").await;
    let session = relay_sign_in(&h, "demo", "demo-password").await;
    for _ in 0..2 {
        let resp = h
            .http
            .get(relay_url(&h, "/user/me"))
            .bearer_auth(s(&session, "access_token"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], "no-store");
    }
    assert_eq!(h.calls("user_me"), 2, "both went to CloudBase");
    assert_eq!(
        h.calls("introspect"),
        0,
        "the relay validates nothing itself"
    );
    let m = h.metrics().await;
    assert_eq!(metric(&m, "cloudbase_gateway_cache_entries"), 0.0);
    let resp = h.get("/other", None).await;
    assert_eq!(
        resp.status(),
        401,
        "the catch-all route still requires a token"
    );
}

#[tokio::test]
async fn the_sign_in_limit_answers_429_with_retry_after_per_client_address() {
    let routes = format!("{RELAY}signin_rate = \"1/h\"\nsignin_burst = 2\n");
    let h = Cfg {
        server: "trusted_proxies = [\"127.0.0.1/32\"]",
        routes: &routes,
        ..Cfg::default()
    }
    .start()
    .await;
    let sign_in = |client: &'static str| {
        let req = h
            .http
            .post(relay_url(&h, "/signin"))
            .header("x-forwarded-for", client)
            .header("origin", "https://app.example.com")
            .json(&json!({"username": "demo", "password": "demo-password"}));
        async move { req.send().await.unwrap() }
    };
    for _ in 0..2 {
        assert_eq!(sign_in("198.51.100.1").await.status(), 200);
    }
    let refused = sign_in("198.51.100.1").await;
    assert_eq!(
        refused.headers()["access-control-allow-origin"],
        "https://app.example.com",
        "the page can read its 429"
    );
    let (status, code, headers) = rejection(refused).await;
    assert_eq!((status.as_u16(), code.as_str()), (429, "RATE_LIMITED"));
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (3590..=3600).contains(&retry_after),
        "1/h: the burst of 2 is spent and the next token comes an hour after, got {retry_after}"
    );
    assert_eq!(
        h.calls("signin"),
        2,
        "the refused sign-in never reached CloudBase"
    );
    assert_eq!(
        sign_in("198.51.100.2").await.status(),
        200,
        "another client behind the trusted proxy has its own bucket"
    );
    let (status, _) = relay_post(&h, "/token", None, json!({})).await;
    assert_eq!(
        status, 400,
        "other endpoints are not limited (CloudBase answered)"
    );
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            "cloudbase_gateway_relay_rate_limited_total{limit=\"signin\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn with_the_relay_off_its_prefix_is_an_ordinary_path() {
    let h = Harness::start("[[routes]]\nprefix = \"/api/\"\nupstream = \"whoami\"\n").await;
    let (status, code, _) =
        rejection(h.http.post(relay_url(&h, "/signin")).send().await.unwrap()).await;
    assert_eq!((status.as_u16(), code.as_str()), (404, "NOT_FOUND"));
}

// ── A CloudBase stand-in: what crosses the gateway toward CloudBase and back ──────────

/// What the stand-in received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: http::HeaderMap,
    body: Bytes,
}

#[derive(Clone)]
struct StandIn {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl StandIn {
    /// Reads each request whole, records it, and answers 400 with an error body and a set
    /// of headers that are about CloudBase's origin or its connection only.
    async fn spawn() -> StandIn {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let (addr, _) = spawn_upstream(move |req: Request<Incoming>| {
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = match body.collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => Bytes::from_static(b"<broken off>"),
                };
                log.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    target: parts.uri.to_string(),
                    headers: parts.headers,
                    body,
                });
                Response::builder()
                    .status(400)
                    .header("content-type", "application/json")
                    .header("set-cookie", "cb_session=1; Path=/")
                    .header("access-control-allow-origin", "*")
                    .header("access-control-allow-credentials", "true")
                    .header("alt-svc", "h3=\":443\"")
                    .header("cache-control", "public, max-age=3600")
                    .header("connection", "x-cb-hop")
                    .header("x-cb-hop", "1")
                    .header("www-authenticate", "Bearer error=\"invalid_request\"")
                    .body(cloudbase_gateway::http::full(
                        r#"{"error":"invalid_argument","error_code":3,"error_description":"stand-in"}"#,
                    ))
                    .unwrap()
            }
        })
        .await;
        StandIn { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

const SECRET: &str = "relay-test-client-secret-value";

/// The gateway relaying to `cb`, with a client secret configured.
async fn gateway_to(cb: &StandIn, relay_extra: &str) -> Harness {
    Cfg {
        cloudbase: &format!(
            "base_url = \"http://{}/auth/v1\"\nclient_secret = \"{SECRET}\"",
            cb.addr
        ),
        routes: &format!("{RELAY}max_body_size = \"1KiB\"\n{relay_extra}"),
        ..Cfg::default()
    }
    .start()
    .await
}

#[tokio::test]
async fn the_relay_never_adds_the_client_secret_and_adds_only_a_missing_client_id() {
    let cb = StandIn::spawn().await;
    let h = gateway_to(&cb, "").await;
    let body = r#"{"username":"demo","password":"demo-password"}"#;
    let resp = h
        .http
        .post(format!("{}/auth/v1/signin?lang=zh", h.base))
        .header("content-type", "text/plain;charset=UTF-8")
        .header("x-device-id", "device-1234567890abcdef")
        .header("x-request-id", "req-relay-1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "CloudBase's status, as it sent it");
    let refresh = r#"{"grant_type":"refresh_token","refresh_token":"r","client_secret":""}"#;
    h.http
        .post(format!("{}/auth/v1/token?client_id=the-apps-own", h.base))
        .body(refresh)
        .send()
        .await
        .unwrap();

    let seen = cb.seen();
    assert_eq!(seen.len(), 2);
    let signin = &seen[0];
    assert_eq!(signin.method, "POST");
    assert_eq!(
        signin.target,
        "/auth/v1/signin?lang=zh&client_id=test-client"
    );
    assert_eq!(signin.body, body.as_bytes(), "the body as the app sent it");
    assert_eq!(signin.headers["content-type"], "text/plain;charset=UTF-8");
    assert_eq!(signin.headers["x-device-id"], "device-1234567890abcdef");
    assert_eq!(signin.headers["x-request-id"], "req-relay-1");
    assert_eq!(seen[1].target, "/auth/v1/token?client_id=the-apps-own");
    assert_eq!(seen[1].body, refresh.as_bytes());
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("test-client:{SECRET}"),
    );
    for s in &seen {
        assert!(s.headers.get("authorization").is_none(), "{:?}", s.headers);
        let everything = format!("{} {:?} {:?}", s.target, s.headers, s.body);
        assert!(!everything.contains(SECRET), "{everything}");
        assert!(!everything.contains(&basic), "{everything}");
    }
}

#[tokio::test]
async fn hop_by_hop_identity_and_cookie_headers_do_not_cross_the_relay_either_way() {
    let cb = StandIn::spawn().await;
    let h = gateway_to(&cb, "").await;
    let resp = h
        .http
        .post(format!("{}/auth/v1/user/signout", h.base))
        .bearer_auth("caller-token")
        .header("x-user-id", "admin")
        .header("x_user_groups", "admin")
        .header("cookie", "app_session=secret-session")
        .header("connection", "x-client-hop")
        .header("x-client-hop", "1")
        .header("proxy-authorization", "Basic eDp5")
        .header("origin", "https://app.example.com")
        .json(&json!({}))
        .send()
        .await
        .unwrap();

    let seen = cb.seen();
    let got = &seen[0].headers;
    for name in [
        "x-user-id",
        "x_user_groups",
        "cookie",
        "x-client-hop",
        "proxy-authorization",
    ] {
        assert!(got.get(name).is_none(), "{name} reached CloudBase: {got:?}");
    }
    assert_eq!(got["authorization"], "Bearer caller-token");
    assert_eq!(got["origin"], "https://app.example.com");
    assert_eq!(got["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got["host"], cb.addr.to_string());

    let back = resp.headers();
    for name in [
        "set-cookie",
        "alt-svc",
        "x-cb-hop",
        "access-control-allow-credentials",
    ] {
        assert!(back.get(name).is_none(), "{name} reached the app: {back:?}");
    }
    assert_eq!(
        back["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(back["cache-control"], "no-store");
    assert_eq!(back["content-type"], "application/json");
    assert_eq!(back["www-authenticate"], "Bearer error=\"invalid_request\"");
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error_description"], "stand-in",
        "CloudBase's body as it sent it"
    );
    assert_eq!(purges(&h.metrics().await, "sub"), 0.0, "a 400 ends nothing");
}

/// A request line and headers written byte for byte, so no client normalizes the path.
async fn raw(addr: &str, request_line: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!("{request_line}\r\nHost: gateway\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer[9..12].parse().unwrap();
    (status, answer)
}

#[tokio::test]
async fn paths_under_the_prefix_cannot_climb_out_of_cloudbases_base_path() {
    let cb = StandIn::spawn().await;
    let h = gateway_to(&cb, "").await;
    for (line, status) in [
        // Normalized to /admin: not the relay's, and no route → 404 from routing.
        ("GET /auth/v1/../../admin HTTP/1.1", 404),
        ("GET /auth/v1/%2e%2e/%2E%2E/admin HTTP/1.1", 404),
        ("GET /auth/v1/user/../../../admin HTTP/1.1", 404),
        // Refused by the path policy before anything is decided.
        ("GET /auth/v1/../../../admin HTTP/1.1", 400),
        ("GET /auth/v1/..%2f..%2fadmin HTTP/1.1", 400),
        ("GET /auth/v1/..;/..;/admin HTTP/1.1", 400),
        ("GET /auth/v1/%252e%252e/admin HTTP/1.1", 400),
        ("GET /auth/v1/..\\..\\admin HTTP/1.1", 400),
    ] {
        let (got, answer) = raw(&h.base, line).await;
        assert_eq!(got, status, "{line}:\n{answer}");
    }
    assert!(cb.seen().is_empty(), "CloudBase saw {:?}", cb.seen());

    // Inside the prefix, the normal form is what CloudBase gets.
    let (got, _) = raw(&h.base, "GET /auth/v1/user/./x/../me HTTP/1.1").await;
    assert_eq!(got, 400, "the stand-in's answer");
    let (got, _) = raw(&h.base, "GET /%61uth/v1//user/me HTTP/1.1").await;
    assert_eq!(got, 400);
    let targets: Vec<String> = cb.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        [
            "/auth/v1/user/me?client_id=test-client",
            "/auth/v1/user/me?client_id=test-client"
        ]
    );
}

#[tokio::test]
async fn bodies_over_the_relays_bound_get_413_declared_or_streamed() {
    let cb = StandIn::spawn().await;
    let h = gateway_to(&cb, "").await;
    let too_large = |path: &'static str, body: reqwest::Body| {
        let req = h.http.post(format!("{}/auth/v1{path}", h.base)).body(body);
        async move {
            let (status, code, _) = rejection(req.send().await.unwrap()).await;
            assert_eq!(
                (status.as_u16(), code.as_str()),
                (413, "PAYLOAD_TOO_LARGE"),
                "{path}"
            );
        }
    };
    // 2 KiB in four chunks, without a declared length.
    let chunks = || {
        let chunks = (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 512])));
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    };

    // Declared: refused before anything is read or sent.
    too_large("/signup", vec![b'x'; 2048].into()).await;
    assert!(cb.seen().is_empty());
    // Streamed: `/revoke`'s body is read here, so it is cut here.
    too_large("/revoke", chunks()).await;
    assert!(cb.seen().is_empty());
    // Streamed to CloudBase: the stream is cut at the bound and the app gets 413.
    too_large("/signup", chunks()).await;
    for s in cb.seen() {
        assert!(s.body.len() <= 1024, "CloudBase got {} bytes", s.body.len());
    }
}

#[tokio::test]
async fn cors_permits_exactly_the_listed_origins_and_preflights_never_reach_cloudbase() {
    let cb = StandIn::spawn().await;
    let h = gateway_to(&cb, "").await;
    let preflight = |origin: &'static str| {
        h.http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/auth/v1/signin", h.base),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-device-id,x-request-id",
            )
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(ok.status(), 204);
    let hd = ok.headers();
    assert_eq!(hd["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(
        hd["access-control-allow-headers"],
        "content-type,x-device-id,x-request-id"
    );
    assert!(hd.get("access-control-allow-credentials").is_none());
    assert!(hd["vary"].to_str().unwrap().contains("Origin"));

    for origin in [
        "https://evil.test",
        "https://app.example.com.evil.test",
        "null",
    ] {
        let refused = preflight(origin).await.unwrap();
        assert_eq!(refused.status(), 204, "{origin}");
        assert!(
            !refused
                .headers()
                .keys()
                .any(|n| n.as_str().starts_with("access-control-")),
            "{origin}: {:?}",
            refused.headers()
        );
        let actual = h
            .http
            .post(format!("{}/auth/v1/signin", h.base))
            .header("origin", origin)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert!(
            actual
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{origin}: CloudBase's `*` must not get through"
        );
        assert!(actual.headers()["vary"]
            .to_str()
            .unwrap()
            .contains("Origin"));
    }
    assert!(
        cb.seen().iter().all(|s| s.method != "OPTIONS"),
        "preflights are the relay's to answer"
    );
    let m = h.metrics().await;
    assert_eq!(relayed(&m, "preflight", "2xx"), 4.0);
}

#[tokio::test]
async fn an_unreachable_cloudbase_is_a_502_and_nothing_is_purged() {
    let port = free_port();
    let h = Cfg {
        cloudbase: &format!("base_url = \"http://127.0.0.1:{port}/auth/v1\""),
        routes: RELAY,
        ..Cfg::default()
    }
    .start()
    .await;
    let resp = h
        .http
        .post(relay_url(&h, "/revoke"))
        .json(&json!({"token": "t"}))
        .send()
        .await
        .unwrap();
    let (status, code, _) = rejection(resp).await;
    assert_eq!(
        (status.as_u16(), code.as_str()),
        (502, "UPSTREAM_UNAVAILABLE")
    );
    assert_eq!(purges(&h.metrics().await, "token"), 0.0);
}
