//! Path confusion (issue 8, finding 2), attacked the way the review did: the real binary,
//! a real upstream per route that records the path it received, and request lines written
//! byte for byte on a TCP socket (HTTP/1.1) or an HTTP/2 connection with prior knowledge,
//! so no client library normalizes anything first.
//!
//! Every test ends in one of two verdicts: 400 `BAD_REQUEST` in the JSON envelope with no
//! upstream reached, or the request decided by the route of the normalized path (401
//! without a token on the protected route) and that route's upstream receiving the
//! normalized path.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::raw::{exchange, RawResponse as Answer};
use crate::support::*;
use cloudbase_auth::{CallOptions, Client};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Generous bound for anything that should finish "at once"; never a performance claim.
const PATIENCE: Duration = Duration::from_secs(10);

/// An upstream that answers 200 and records the path and query of every request.
#[derive(Clone)]
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn spawn() -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let (addr, _) = spawn_upstream(move |req: Request<Incoming>| {
            let target = req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
            log.lock().unwrap().push(target);
            async { Response::new(cloudbase_gateway::http::full("recorded")) }
        })
        .await;
        Recorder { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn upstream(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A route of the gateway under test: prefix, `auth`, extra keys. Each gets its own
/// [`Recorder`].
struct RouteSpec {
    prefix: &'static str,
    auth: &'static str,
    extra: &'static str,
}

const fn route(prefix: &'static str, auth: &'static str) -> RouteSpec {
    RouteSpec {
        prefix,
        auth,
        extra: "",
    }
}

/// The shipped demo's shape: a protected API, an admin-only API, an optional public route
/// and an open one.
const SHIPPED: &[RouteSpec] = &[
    route("/api/", "required"),
    RouteSpec {
        prefix: "/admin/",
        auth: "required",
        extra: "require_groups = [\"admin\"]",
    },
    route("/public/", "optional"),
    route("/open/", "none"),
];

/// The same protected API behind an open catch-all.
const CATCH_ALL: &[RouteSpec] = &[
    route("/api/", "required"),
    RouteSpec {
        prefix: "/admin/",
        auth: "required",
        extra: "require_groups = [\"admin\"]",
    },
    route("/", "none"),
];

/// The gateway binary, its upstreams and a client for its embedded emulator.
struct Gateway {
    process: Process,
    addr: SocketAddr,
    admin: SocketAddr,
    upstreams: Vec<(&'static str, Recorder)>,
    cloudbase: Client,
}

impl Gateway {
    async fn start(routes: &[RouteSpec], server: &str) -> Gateway {
        Self::start_logging(routes, server, "info").await
    }

    /// Like [`Gateway::start`], with `RUST_LOG` set to `level`.
    async fn start_logging(routes: &[RouteSpec], server: &str, level: &str) -> Gateway {
        let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (addr, admin, emulator) = (port(), port(), port());
        let mut upstreams = Vec::new();
        let mut route_text = String::new();
        for r in routes {
            let recorder = Recorder::spawn().await;
            route_text.push_str(&format!(
                "[[routes]]\nprefix = {:?}\nupstream = {:?}\nauth = {:?}\n{}\n",
                r.prefix,
                recorder.upstream(),
                r.auth,
                r.extra
            ));
            upstreams.push((r.prefix, recorder));
        }
        let config = Cfg {
            server: &format!("listen = \"{addr}\"\n{server}"),
            admin: &format!("listen = \"{admin}\""),
            cloudbase: "timeout = \"2s\"",
            emulator: &format!("listen = \"{emulator}\"\ntest_hooks = false"),
            routes: &route_text,
            ..Cfg::default()
        }
        .text();
        let process = Process::spawn(&config, &[], &[("RUST_LOG", level)], admin);
        let cloudbase = emulator_client(emulator, "");
        Gateway {
            process,
            addr,
            admin,
            upstreams,
            cloudbase,
        }
    }

    async fn token(&self, username: &str, password: &str) -> String {
        self.cloudbase
            .signin_password(username, password, &CallOptions::default())
            .await
            .unwrap_or_else(|e| panic!("sign-in of {username} failed: {e}"))
            .access_token
    }

    /// Asserts no upstream has received anything.
    fn assert_no_upstream_reached(&self, attack: &str) {
        for (prefix, recorder) in &self.upstreams {
            assert!(
                recorder.seen().is_empty(),
                "{attack}: the {prefix} upstream received {:?}",
                recorder.seen()
            );
        }
    }

    /// Asserts only the upstream of `prefix` was reached, with exactly `targets`.
    fn assert_only(&self, prefix: &str, targets: &[&str], attack: &str) {
        for (p, recorder) in &self.upstreams {
            let seen = recorder.seen();
            if *p == prefix {
                assert_eq!(seen, targets, "{attack}: what the {p} upstream received");
            } else {
                assert!(
                    seen.is_empty(),
                    "{attack}: the {p} upstream received {seen:?}"
                );
            }
        }
    }

    /// Sends `request_line` (e.g. `GET /x HTTP/1.1`) with `Host`, `Connection: close` and
    /// an optional bearer token, written verbatim on a new TCP connection.
    async fn raw(&self, request_line: &str, token: Option<&str>) -> Answer {
        let mut head = format!("{request_line}\r\nHost: gateway.test\r\nConnection: close\r\n");
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        exchange(self.addr, &head).await
    }

    /// Sends each of `attacks` without a token and asserts each is refused with 400 and
    /// that no upstream was reached.
    async fn assert_all_refused(&self, attacks: &[&str]) {
        for attack in attacks {
            self.get(attack, None).await.assert_refused(attack);
        }
        self.assert_no_upstream_reached(&format!("{attacks:?}"));
    }

    /// Sends each of `attacks` without a token and asserts the protected route decided
    /// each (401) and no upstream was reached.
    async fn assert_all_need_a_token(&self, attacks: &[&str]) {
        for attack in attacks {
            self.get(attack, None).await.assert_needs_a_token(attack);
        }
        self.assert_no_upstream_reached(&format!("{attacks:?}"));
    }

    /// `GET {path}` over HTTP/1.1, the path written as given.
    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.raw(&format!("GET {path} HTTP/1.1"), token).await
    }

    async fn metrics(&self) -> String {
        let head = "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
        String::from_utf8_lossy(&exchange(self.admin, head).await.body).into_owned()
    }
}

// ---------------------------------------------------------------------------------------
// The review's cases
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn dot_segments_cannot_carry_a_request_from_public_to_the_protected_api() {
    let gw = Gateway::start(SHIPPED, "").await;
    let attack = "/public/../api/hello";
    gw.get(attack, None).await.assert_needs_a_token(attack);
    gw.assert_no_upstream_reached(attack);

    let token = gw.token("demo", "demo-password").await;
    let answer = gw.get(attack, Some(&token)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    gw.assert_only("/api/", &["/api/hello"], attack);
}

#[tokio::test]
async fn encoded_dot_segments_are_dots_and_cannot_skip_auth() {
    let gw = Gateway::start(SHIPPED, "").await;
    gw.assert_all_need_a_token(&[
        "/public/%2e%2e/api/x",
        "/public/%2E%2e/api/x",
        "/public/.%2e/api/x",
        "/public/%2e/../api/x",
    ])
    .await;

    let token = gw.token("demo", "demo-password").await;
    assert_eq!(
        gw.get("/public/%2e%2e/api/x", Some(&token)).await.status,
        200
    );
    gw.assert_only("/api/", &["/api/x"], "encoded dots with a token");
}

#[tokio::test]
async fn an_encoded_slash_or_backslash_cannot_hide_a_traversal_from_routing() {
    let gw = Gateway::start(SHIPPED, "").await;
    gw.assert_all_refused(&[
        "/public/..%2fapi/x",
        "/public/..%2Fapi/x",
        "/public/..%5capi/x",
        "/public/..%5Capi/x",
        "/public/..\\api/x",
    ])
    .await;
}

#[tokio::test]
async fn tomcat_style_parameters_on_dot_segments_are_refused() {
    let gw = Gateway::start(SHIPPED, "").await;
    gw.assert_all_refused(&[
        "/open/..;/api/x",
        "/open/..;jsessionid=1/api/x",
        "/open/.;/../api/x",
        "/open/%2e%2e;/api/x",
        "/open/..%3b/api/x",
    ])
    .await;
}

#[tokio::test]
async fn behind_a_catch_all_doubled_slashes_and_encoded_letters_still_need_the_api_token() {
    let gw = Gateway::start(CATCH_ALL, "").await;
    gw.assert_all_need_a_token(&["//api/x", "/%61pi/x", "/%61%70%69/x", "///api//x"])
        .await;

    let token = gw.token("demo", "demo-password").await;
    for attack in ["//api/x", "/%61pi/x"] {
        assert_eq!(gw.get(attack, Some(&token)).await.status, 200, "{attack}");
    }
    gw.assert_only(
        "/api/",
        &["/api/x", "/api/x"],
        "catch-all tricks with a token",
    );
}

#[tokio::test]
async fn a_plain_user_cannot_climb_from_the_api_into_the_admin_only_route() {
    let gw = Gateway::start(SHIPPED, "").await;
    let attack = "/api/../admin/x";
    let plain = gw.token("demo", "demo-password").await;
    let answer = gw.get(attack, Some(&plain)).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(answer.code(), "PERMISSION_DENIED");
    gw.assert_no_upstream_reached(attack);

    // The admin route decided it: its own group does get through, to /admin/x.
    let admin = gw.token("admin", "admin-password").await;
    assert_eq!(gw.get(attack, Some(&admin)).await.status, 200);
    gw.assert_only("/admin/", &["/admin/x"], attack);
}

#[tokio::test]
async fn path_parameters_cannot_move_a_request_off_the_protected_route() {
    let gw = Gateway::start(CATCH_ALL, "").await;
    gw.assert_all_refused(&[
        "/api;x/secret",
        "/api%3bx/secret",
        "/;/api/secret",
        "/admin;/x",
    ])
    .await;
    // Parameters inside one route are data, passed on as sent.
    assert_eq!(gw.get("/files;v=2/x", None).await.status, 200);
    gw.assert_only("/", &["/files;v=2/x"], "a parameter that changes nothing");
}

#[tokio::test]
async fn ambiguous_paths_are_refused_before_any_upstream_sees_them() {
    let gw = Gateway::start(CATCH_ALL, "").await;
    gw.assert_all_refused(&[
        "/public/%252e%252e/api/x",
        "/%252e%252e/api/x",
        "/x/%25%32%65%25%32%65/api/x",
        "/../api/x",
        "/x/../../api/x",
        "/x%00/../api/x",
        "/x%0d%0aX-Injected:%201",
        "/x%7f",
        "/x/%zz",
        "/x/%4",
        "/x/.../api/x",
        "/x/..%20/api/x",
    ])
    .await;
    gw.raw("OPTIONS * HTTP/1.1", None)
        .await
        .assert_refused("OPTIONS *");
    gw.assert_no_upstream_reached("OPTIONS *");
}

#[tokio::test]
async fn absolute_form_targets_are_normalized_like_origin_form_ones() {
    let gw = Gateway::start(SHIPPED, "").await;
    let line = format!("GET http://{}/public/../api/x HTTP/1.1", gw.addr);
    gw.raw(&line, None).await.assert_needs_a_token(&line);
    let encoded = format!("GET http://{}/public/..%2fapi/x HTTP/1.1", gw.addr);
    gw.raw(&encoded, None).await.assert_refused(&encoded);
    gw.assert_no_upstream_reached("absolute form without a token");

    let token = gw.token("demo", "demo-password").await;
    assert_eq!(gw.raw(&line, Some(&token)).await.status, 200);
    gw.assert_only("/api/", &["/api/x"], &line);
}

#[tokio::test]
async fn h2c_dot_segments_in_the_path_pseudo_header_cannot_skip_auth() {
    let gw = Gateway::start(SHIPPED, "").await;
    let token = gw.token("demo", "demo-password").await;
    let stream = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let mut send = |uri: String, token: Option<&str>| {
        let mut req = Request::get(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Empty::<bytes::Bytes>::new()).expect("request");
        let sent = sender.send_request(req);
        async move {
            let response = timeout(PATIENCE, sent)
                .await
                .expect("h2 answer in time")
                .expect("h2 answer");
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (status, body)
        }
    };
    // `:path` is sent as written: the http crate does not resolve dot segments.
    let uri = format!("http://{}/public/../api/x", gw.addr);
    let (status, body) = send(uri.clone(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let envelope: Value = serde_json::from_slice(&body).expect("envelope");
    assert_eq!(envelope["code"], "MISSING_CREDENTIALS");
    let (status, body) = send(format!("http://{}/public/%2e%2e%2fapi/x", gw.addr), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let envelope: Value = serde_json::from_slice(&body).expect("envelope");
    assert_eq!(envelope["code"], "BAD_REQUEST");
    gw.assert_no_upstream_reached("h2c without a token");

    let (status, _) = send(uri, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    gw.assert_only("/api/", &["/api/x"], "h2c with a token");
}

// ---------------------------------------------------------------------------------------
// What the policy keeps, and where the path never goes
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_query_string_reaches_the_upstream_byte_for_byte_while_the_path_is_normalized() {
    let gw = Gateway::start(SHIPPED, "").await;
    let token = gw.token("demo", "demo-password").await;
    let query = "next=/public/../x&e=%2e%2E%zz&s=%2F%5c&u=%c3%a9;x";
    let answer = gw
        .get(&format!("/public/../api/%61%62/é?{query}"), Some(&token))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    gw.assert_only(
        "/api/",
        &[&format!("/api/ab/%C3%A9?{query}")],
        "query after a rewritten path",
    );
}

#[tokio::test]
async fn kept_escaped_slashes_reach_the_upstream_encoded_and_split_no_segment() {
    let gw = Gateway::start(SHIPPED, "escaped_slashes = \"keep\"").await;
    let attack = "/public/..%2fapi/x";
    let answer = gw.get(attack, None).await;
    assert_eq!(
        answer.status, 200,
        "decided by /public/ (optional): {answer:?}"
    );
    gw.assert_only("/public/", &["/public/..%2Fapi/x"], attack);
    // Everything else of the policy still holds.
    gw.get("/public/../api/x", None)
        .await
        .assert_needs_a_token("dot segments with keep");
    gw.get("/public/..\\api/x", None)
        .await
        .assert_refused("raw backslash with keep");
}

#[tokio::test]
async fn refused_and_rewritten_paths_are_counted_by_route_and_never_logged() {
    let gw = Gateway::start_logging(SHIPPED, "", "debug").await;
    let marker = "zq9marker";
    let refused = format!("/public/..%2f{marker}/x");
    gw.get(&refused, None).await.assert_refused(&refused);
    let rewritten = format!("/public/../api/{marker}");
    gw.get(&rewritten, None)
        .await
        .assert_needs_a_token(&rewritten);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "cloudbase_gateway_requests_total{route=\"none\",method=\"GET\",status=\"400\",kind=\"proxy\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "cloudbase_gateway_requests_total{route=\"/api/\",method=\"GET\",status=\"401\",kind=\"proxy\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains(marker),
        "a path in the metrics:\n{metrics}"
    );
    let logs = gw.process.log();
    assert!(
        logs.contains("request path refused"),
        "the refusal is logged, with its reason:\n{logs}"
    );
    assert!(!logs.contains(marker), "a path in the logs:\n{logs}");
}
