//! The gateway end to end: real gateway, real emulator, real upstreams, on 127.0.0.1.
//! Covers the request path, the validation cache and the gateway's own responses.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use cloudbase_gateway::cloudbase::CallOptions;
use cloudbase_gateway::emulator::Fault;
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn route(prefix: &str, upstream: SocketAddr, rest: &str) -> String {
    format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"http://{upstream}\"\n{rest}\n")
}

/// Routes used by most tests: required, optional and none, plus rule-carrying ones.
async fn standard() -> (Harness, SocketAddr) {
    let (up, _) = spawn_echo_upstream().await;
    let routes = [
        route("/api/", up, ""),
        route("/opt/", up, "auth = \"optional\""),
        route("/open/", up, "auth = \"none\""),
        route("/anon/", up, "allow_anonymous = true"),
        route("/admin/", up, "require_groups = [\"admin\"]"),
        route("/get-only/", up, "methods = [\"GET\", \"HEAD\"]"),
        route("/strip/", up, "strip_prefix = true\npass_token = false"),
    ]
    .concat();
    (Harness::start(&routes).await, up)
}

async fn error_code(r: reqwest::Response) -> (u16, String, reqwest::header::HeaderMap) {
    let (status, code, headers) = rejection(r).await;
    (status.as_u16(), code, headers)
}

fn fake_jwt(claims: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64(claims)
    )
}

#[tokio::test]
async fn identity_headers_reach_the_upstream() {
    let (h, upstream) = standard().await;
    let token = h.demo_token().await;
    let r = h.get("/api/hello?x=1", Some(&token)).await;
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["path"], "/api/hello");
    assert_eq!(echo["query"], "x=1");
    let headers = &echo["headers"];
    assert_eq!(headers["x-user-username"], "demo");
    assert_eq!(
        headers["x-user-name"], "Demo User",
        "inner spaces stay readable"
    );
    assert_eq!(headers["x-user-email"], "demo@example.com");
    assert_eq!(headers["x-user-anonymous"], "false");
    assert_eq!(headers["x-user-groups"], "user");
    assert_eq!(headers["x-user-scope"], "user sso");
    assert!(
        headers["x-user-id"].as_str().unwrap().len() == 19,
        "19-digit sub"
    );
    assert_eq!(
        headers["authorization"],
        format!("Bearer {token}"),
        "pass_token default true"
    );
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(
        headers["host"],
        upstream.to_string(),
        "Host rewritten to the upstream's"
    );
    assert_eq!(
        headers["x-forwarded-host"],
        h.base.trim_start_matches("http://")
    );
    h.shutdown().await;
}

#[tokio::test]
async fn non_ascii_names_arrive_percent_encoded_and_crlf_cannot_inject() {
    let (h, _) = standard().await;
    let zhang = h.sign_in("zhang", "zhang-password").await.access_token;
    let echo: Value = h.get("/api/", Some(&zhang)).await.json().await.unwrap();
    assert_eq!(
        echo["headers"]["x-user-name"],
        "%E6%89%8B%E6%9C%BA%E7%94%A8%E6%88%B7"
    );

    let crlf = h.sign_in("crlf", "crlf-password").await.access_token;
    let r = h.get("/api/", Some(&crlf)).await;
    assert_eq!(r.status(), 200, "the request is not broken");
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["x-user-name"], "evil%0D%0AX-Injected: yes");
    assert!(
        echo["headers"].get("x-injected").is_none(),
        "no header injected"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn forged_identity_headers_never_reach_the_upstream_on_any_route() {
    let (h, _) = standard().await;
    let token = h.demo_token().await;
    for (path, token) in [
        ("/api/x", Some(&token)),
        ("/opt/x", None),
        ("/opt/x", Some(&token)),
        ("/open/x", None),
    ] {
        let mut req = h
            .http
            .get(format!("{}{path}", h.base))
            .header("X-User-Id", "admin")
            .header("x-user-id", "admin2")
            .header("X_User_Id", "admin3")
            .header("X-User-Groups", "admin")
            .header("x_user_groups", "admin")
            .header("X-User-Anonymous", "false");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let echo: Value = req.send().await.unwrap().json().await.unwrap();
        let headers = echo["headers"].as_object().unwrap();
        for (name, value) in headers {
            let folded = name.replace('_', "-");
            if folded.starts_with("x-user-") {
                assert_ne!(value, "admin", "{path}: forged {name} reached the upstream");
                assert_ne!(value, "admin2");
                assert_ne!(value, "admin3");
                assert!(!name.contains('_'), "{path}: {name} reached the upstream");
            }
        }
        if token.is_some() {
            assert_eq!(
                headers["x-user-username"], "demo",
                "{path}: real identity set"
            );
            assert_eq!(headers["x-user-groups"], "user");
        } else {
            assert!(
                !headers.contains_key("x-user-id"),
                "{path}: no identity without a token"
            );
        }
    }
    h.shutdown().await;
}

#[tokio::test]
async fn one_token_a_hundred_requests_one_introspect_one_user_me() {
    let (h, _) = standard().await;
    let token = h.demo_token().await;
    for _ in 0..100 {
        assert_eq!(h.get("/api/x", Some(&token)).await.status(), 200);
    }
    assert_eq!(h.calls("introspect"), 1);
    assert_eq!(h.calls("user_me"), 1);
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, "cloudbase_gateway_cache_lookups_total{result=\"hit\"}"),
        99.0
    );
    assert_eq!(
        metric(&m, "cloudbase_gateway_cache_lookups_total{result=\"miss\"}"),
        1.0
    );
    h.shutdown().await;
}

#[tokio::test]
async fn fifty_concurrent_first_requests_make_one_call_each() {
    let (h, _) = standard().await;
    let token = h.demo_token().await;
    let requests = (0..50).map(|_| h.get("/api/x", Some(&token)));
    let responses = futures_util::future::join_all(requests).await;
    assert!(responses.iter().all(|r| r.status() == 200));
    assert_eq!(h.calls("introspect"), 1);
    assert_eq!(h.calls("user_me"), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn a_revoked_token_stops_passing_once_its_entry_expires() {
    let (up, _) = spawn_echo_upstream().await;
    let h = Harness::start(&format!(
        "[cache]\nttl = \"1s\"\n{}",
        route("/api/", up, "")
    ))
    .await;
    let token = h.demo_token().await;
    assert_eq!(h.get("/api/x", Some(&token)).await.status(), 200);
    h.cloudbase
        .revoke(&token, &CallOptions::default())
        .await
        .unwrap();
    // Within the TTL the cached answer stands (that is the documented trade-off)...
    assert_eq!(h.get("/api/x", Some(&token)).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // ...and once it expires, CloudBase is asked again and the token is refused.
    let (status, code, _) = error_code(h.get("/api/x", Some(&token)).await).await;
    assert_eq!((status, code.as_str()), (401, "INVALID_ACCESS_TOKEN"));
    assert_eq!(h.calls("introspect"), 2);
    h.shutdown().await;
}

#[tokio::test]
async fn purging_a_token_refuses_it_at_once() {
    let (h, _) = standard().await;
    let token = h.demo_token().await;
    assert_eq!(h.get("/api/x", Some(&token)).await.status(), 200);
    h.cloudbase
        .revoke(&token, &CallOptions::default())
        .await
        .unwrap();
    let purge = h
        .http
        .post(format!("{}/cache/purge", h.admin))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "token": token }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200);
    assert_eq!(purge.json::<Value>().await.unwrap()["purged"], 1);
    assert_eq!(h.get("/api/x", Some(&token)).await.status(), 401);
    h.shutdown().await;
}

#[tokio::test]
async fn an_expired_jwt_is_refused_without_calling_cloudbase() {
    let (h, _) = standard().await;
    let token = fake_jwt(r#"{"sub":"1","exp":1000000000}"#);
    let (status, code, _) = error_code(h.get("/api/x", Some(&token)).await).await;
    assert_eq!((status, code.as_str()), (401, "INVALID_ACCESS_TOKEN"));
    assert_eq!(h.calls("introspect") + h.calls("user_me"), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn an_invalid_tokens_second_request_is_a_negative_hit() {
    let (h, _) = standard().await;
    let token = fake_jwt(r#"{"sub":"1","exp":4102444800}"#);
    assert_eq!(h.get("/api/x", Some(&token)).await.status(), 401);
    assert_eq!(h.calls("introspect"), 1);
    assert_eq!(h.get("/api/x", Some(&token)).await.status(), 401);
    assert_eq!(
        h.calls("introspect"),
        1,
        "second request answered from the negative entry"
    );
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            "cloudbase_gateway_cache_lookups_total{result=\"negative_hit\"}"
        ),
        1.0
    );
    h.shutdown().await;
}

#[tokio::test]
async fn malformed_overlong_and_odd_tokens_are_refused_without_a_call() {
    let (h, _) = standard().await;
    let long = "a".repeat(5000);
    for (header, expect) in [
        ("Basic dXNlcjpwYXNz", "MISSING_CREDENTIALS"),
        ("Bearer", "MISSING_CREDENTIALS"),
        ("bearer a\"b", "INVALID_ACCESS_TOKEN"),
        (&*format!("Bearer {long}"), "INVALID_ACCESS_TOKEN"),
    ] {
        let r = h
            .http
            .get(format!("{}/api/x", h.base))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        let (status, code, _) = error_code(r).await;
        assert_eq!((status, code.as_str()), (401, expect), "{header:.20}");
    }
    assert_eq!(h.calls("introspect"), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn every_rejection_has_its_status_code_and_headers() {
    let (h, _) = standard().await;
    let realm = "Bearer realm=\"cloudbase-gateway\"";

    let (s, c, hd) = error_code(h.get("/api/x", None).await).await;
    assert_eq!((s, c.as_str()), (401, "MISSING_CREDENTIALS"));
    assert_eq!(hd["www-authenticate"], realm);

    let (s, c, hd) = error_code(h.get("/api/x", Some("not.a.token")).await).await;
    assert_eq!((s, c.as_str()), (401, "INVALID_ACCESS_TOKEN"));
    assert_eq!(
        hd["www-authenticate"],
        format!("{realm}, error=\"invalid_token\"")
    );

    // Anonymous users on a route that does not admit them, then on one that does.
    let anon = reqwest::Client::new()
        .post(format!(
            "http://{}/auth/v1/signin/anonymously",
            h.running.as_ref().unwrap().emulator_addr.unwrap()
        ))
        .header("x-device-id", "device-for-anonymous-test")
        .body("{}")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, c, hd) = error_code(h.get("/api/x", Some(&anon)).await).await;
    assert_eq!((s, c.as_str()), (403, "PERMISSION_DENIED"));
    assert_eq!(
        hd["www-authenticate"],
        format!("{realm}, error=\"insufficient_scope\"")
    );
    let echo: Value = h.get("/anon/x", Some(&anon)).await.json().await.unwrap();
    assert_eq!(echo["headers"]["x-user-anonymous"], "true");

    // Groups: a current member passes, an expired membership does not.
    let admin = h.sign_in("admin", "admin-password").await.access_token;
    assert_eq!(h.get("/admin/x", Some(&admin)).await.status(), 200);
    let lapsed = h.sign_in("lapsed", "lapsed-password").await.access_token;
    let (s, c, _) = error_code(h.get("/admin/x", Some(&lapsed)).await).await;
    assert_eq!((s, c.as_str()), (403, "PERMISSION_DENIED"));
    let echo: Value = h.get("/api/x", Some(&lapsed)).await.json().await.unwrap();
    assert_eq!(
        echo["headers"]["x-user-groups"], "user",
        "expired group left out"
    );

    let (s, c, _) = error_code(h.get("/nowhere", None).await).await;
    assert_eq!((s, c.as_str()), (404, "NOT_FOUND"));

    let r = h
        .http
        .post(format!("{}/get-only/x", h.base))
        .send()
        .await
        .unwrap();
    let (s, c, hd) = error_code(r).await;
    assert_eq!((s, c.as_str()), (405, "METHOD_NOT_ALLOWED"));
    assert_eq!(hd["allow"], "GET, HEAD");

    // CloudBase failing with nothing cached: 503 with Retry-After, never 401.
    h.emulator.set_fault(Fault::Error500);
    let fresh = fake_jwt(r#"{"sub":"9","exp":4102444800}"#);
    let (s, c, hd) = error_code(h.get("/api/x", Some(&fresh)).await).await;
    assert_eq!((s, c.as_str()), (503, "AUTH_UNAVAILABLE"));
    assert!(hd.contains_key("retry-after"));
    // ...while an optional route passes without identity.
    let r = h.get("/opt/x", Some(&fresh)).await;
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert!(echo["headers"].get("x-user-id").is_none());
    h.emulator.set_fault(Fault::Ok);
    h.shutdown().await;
}

#[tokio::test]
async fn limits_and_upstream_failures_have_their_own_answers() {
    let (up, _) = spawn_echo_upstream().await;
    let (hang, _) = spawn_upstream(|_| async {
        std::future::pending::<()>().await;
        unreachable!()
    })
    .await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let text = config_text_with(
        "max_body_size = \"1KiB\"\nrequest_timeout = \"300ms\"",
        "",
        "",
        &[
            route("/up/", up, "auth = \"none\""),
            route("/hang/", hang, "auth = \"none\""),
            route("/dead/", closed, "auth = \"none\""),
        ]
        .concat(),
    );
    let h = Harness::start_text(&text).await;

    let r = h
        .http
        .post(format!("{}/up/x", h.base))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    let (s, c, _) = error_code(r).await;
    assert_eq!((s, c.as_str()), (413, "PAYLOAD_TOO_LARGE"));
    let r = h
        .http
        .post(format!("{}/up/x", h.base))
        .body(vec![b'x'; 512])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a body under the limit passes");

    let (s, c, _) = error_code(h.get("/dead/x", None).await).await;
    assert_eq!((s, c.as_str()), (502, "UPSTREAM_UNAVAILABLE"));

    let (s, c, _) = error_code(h.get("/hang/x", None).await).await;
    assert_eq!((s, c.as_str()), (504, "UPSTREAM_TIMEOUT"));
    h.shutdown().await;
}

#[tokio::test]
async fn over_max_connections_is_answered_overloaded() {
    let (up, _) = spawn_echo_upstream().await;
    let text = config_text_with(
        "max_connections = 1",
        "",
        "",
        &route("/up/", up, "auth = \"none\""),
    );
    let h = Harness::start_text(&text).await;
    let addr = h.running.as_ref().unwrap().addr;
    // The first connection holds the only slot.
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    first
        .write_all(b"GET /up/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET /up/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    second.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("OVERLOADED"));
    assert!(answer.to_ascii_lowercase().contains("retry-after"));
    drop(first);
    h.shutdown().await;
}

#[tokio::test]
async fn connection_listed_headers_are_not_forwarded() {
    let (h, _) = standard().await;
    let addr = h.running.as_ref().unwrap().addr;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /open/x HTTP/1.1\r\nHost: example.test\r\nConnection: close, X-Foo\r\nX-Foo: secret-hop\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Bar: end-to-end\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let echo: Value = serde_json::from_str(body).unwrap();
    let headers = echo["headers"].as_object().unwrap();
    assert!(!headers.contains_key("x-foo"), "{headers:?}");
    assert!(!headers.contains_key("keep-alive"));
    assert!(!headers.contains_key("te"));
    assert_eq!(headers["x-bar"], "end-to-end");
    assert_eq!(headers["x-forwarded-host"], "example.test");
    h.shutdown().await;
}

#[tokio::test]
async fn strip_prefix_and_pass_token_false_shape_the_upstream_request() {
    let (h, _) = standard().await;
    let token = h.demo_token().await;
    let echo: Value = h
        .get("/strip/v1/items?q=2", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/v1/items");
    assert_eq!(echo["query"], "q=2");
    assert!(
        echo["headers"].get("authorization").is_none(),
        "pass_token = false"
    );
    assert_eq!(echo["headers"]["x-user-username"], "demo");
    h.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_sent_everywhere() {
    let (h, _) = standard().await;
    let token = h.demo_token().await;
    let r = h
        .http
        .get(format!("{}/api/x", h.base))
        .bearer_auth(&token)
        .header("x-request-id", "client-chosen-id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-chosen-id");
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["x-request-id"], "client-chosen-id");
    let r = h.get("/api/x", Some(&token)).await;
    let made = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 36, "a UUID is made when the client sends none");
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["x-request-id"], made);
    h.shutdown().await;
}

#[tokio::test]
async fn preflight_passes_without_a_token_only_where_allowed() {
    let (up, _) = spawn_echo_upstream().await;
    let h = Harness::start(
        &[
            route("/cors/", up, "allow_preflight = true"),
            route("/api/", up, ""),
        ]
        .concat(),
    )
    .await;
    let preflight = |path: &str| {
        h.http
            .request(reqwest::Method::OPTIONS, format!("{}{path}", h.base))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .send()
    };
    assert_eq!(preflight("/cors/x").await.unwrap().status(), 200);
    assert_eq!(preflight("/api/x").await.unwrap().status(), 401);
    h.shutdown().await;
}
