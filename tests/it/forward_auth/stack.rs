//! The endpoint driven as tower-http tests its layers: the gateway's whole stack
//! (`app::Runtime::service`) called with `oneshot`, over the real cache, the real
//! CloudBase client and the real emulator on 127.0.0.1. The subrequests are the exact
//! shapes Traefik and Envoy send (neither ships in Debian, so they are not run for real;
//! nginx and Caddy are, in the parent module).

use std::sync::Arc;

use cloudbase_auth::{CallOptions, Client};
use cloudbase_emulator::{Emulator, Fault};
use cloudbase_gateway::app::Runtime;
use cloudbase_gateway::config::{Config, EmulatorConfig};
use cloudbase_gateway::forward_auth::X_GATEWAY_REJECTION;
use cloudbase_gateway::http::{empty, Body};
use cloudbase_gateway::metrics::Metrics;
use cloudbase_gateway::stack::GatewayService;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use crate::support::{emulator_client, sign_in};

const USERS: &str = r#"
[[emulator.users]]
username = "demo"
password = "demo-password"
name = "Demo User"
groups = ["user"]

[[emulator.users]]
username = "admin"
password = "admin-password"
name = "Admin"
email = "admin@example.com"
groups = ["user", "admin"]
"#;

/// Routes of every test: a protected API with an admin-only part and a read-only part,
/// an optional public route, and routes open to CORS preflights (one of them read-only).
const ROUTES: &str = r#"
[[routes]]
prefix = "/api/"
upstream = "whoami"
[[routes]]
prefix = "/api/admin/"
upstream = "whoami"
require_groups = ["admin"]
[[routes]]
prefix = "/api/reports/"
upstream = "whoami"
methods = ["GET", "HEAD"]
[[routes]]
prefix = "/public/"
upstream = "whoami"
auth = "optional"
[[routes]]
prefix = "/cors/"
upstream = "whoami"
allow_preflight = true
[[routes]]
prefix = "/cors/read/"
upstream = "whoami"
methods = ["GET"]
allow_preflight = true
"#;

/// The gateway's stack with forward-auth on, its emulator and a client of it.
struct Rig {
    service: GatewayService,
    metrics: Arc<Metrics>,
    emulator: Emulator,
    client: Client,
    _emulator_task: tokio::task::JoinHandle<()>,
}

impl Rig {
    /// `forward_auth` holds extra keys of `[forward_auth]`; `routes` replaces [`ROUTES`]
    /// when not empty.
    async fn start(forward_auth: &str, routes: &str) -> Rig {
        let emulator_config = EmulatorConfig::from_toml_str_with_env(
            &format!("[cloudbase]\nclient_id = \"test-client\"\n[emulator]\n{USERS}"),
            |_| None,
        )
        .expect("emulator config");
        let emulator = Emulator::new(&emulator_config.options);
        let (addr, task) = emulator
            .clone()
            .spawn("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("emulator binds");
        let routes = if routes.is_empty() { ROUTES } else { routes };
        let text = format!(
            "[cloudbase]\nbase_url = \"http://{addr}/auth/v1\"\nclient_id = \"test-client\"\n\
             timeout = \"1s\"\n[forward_auth]\nenabled = true\n{forward_auth}\n{routes}"
        );
        let config =
            Config::from_toml_str(&text).unwrap_or_else(|e| panic!("test config:\n{e}\n{text}"));
        let url = format!("http://{addr}/auth/v1");
        let runtime = Runtime::build(&config, &url).expect("runtime builds");
        Rig {
            service: runtime.service(&config),
            metrics: runtime.metrics.clone(),
            emulator,
            client: emulator_client(addr, ""),
            _emulator_task: task,
        }
    }

    async fn token(&self, username: &str) -> String {
        let password = format!("{username}-password");
        sign_in(&self.client, username, &password)
            .await
            .access_token
    }

    async fn call(&self, req: Request<Body>) -> Response<Body> {
        self.service.clone().oneshot(req).await.expect("infallible")
    }
}

/// What Traefik's ForwardAuth middleware (trustForwardHeader = false) sends for a client
/// request `method uri` to `app.example.com`: GET to the address, the client's headers
/// (`client`), then the X-Forwarded-* it sets itself.
fn traefik(method: &str, uri: &str, client: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::get("http://gateway:8080/_gateway/auth");
    for (k, v) in client {
        req = req.header(*k, *v);
    }
    req.header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-method", method)
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "app.example.com")
        .header("x-forwarded-port", "443")
        .header("x-forwarded-server", "traefik-7d9f")
        .header("x-forwarded-uri", uri)
        .header("x-real-ip", "203.0.113.7")
        .body(empty())
        .expect("request")
}

/// What nginx `auth_request` with `deploy/nginx/cloudbase-gateway-server.conf` sends for
/// a client request `method uri`: GET to the endpoint, every header of the client's
/// (`client`; `proxy_pass_request_headers` is on), then the lines the snippet sets.
fn nginx(method: &str, uri: &str, client: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::get("/_gateway/auth").header("host", "cloudbase-gateway");
    for (k, v) in client {
        req = req.header(*k, *v);
    }
    req.header("x-original-uri", uri)
        .header("x-original-method", method)
        .header("x-request-id", "5f0c2a9e8d7b6a5c4f3e2d1c0b9a8f7e")
        .body(empty())
        .expect("request")
}

/// What Envoy's ext_authz HTTP service (`path_prefix: /_gateway/auth`) sends for a client
/// request `method path`: the same method, the prefix joined to the original `:path`,
/// the headers its default matcher allows (`host`, `authorization`), `content-length: 0`,
/// and what Envoy's async client adds.
fn envoy(method: &str, path: &str, authorization: Option<&str>) -> Request<Body> {
    let authorization = authorization.map(|a| ("authorization", a));
    envoy_with(method, path, authorization.as_slice())
}

/// [`envoy`] with the client's headers that `allowed_headers` lets through (`allowed`).
fn envoy_with(method: &str, path: &str, allowed: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("/_gateway/auth{path}"))
        .header("host", "app.example.com")
        .header("content-length", "0")
        .header("x-envoy-internal", "true")
        .header("x-envoy-expected-rq-timeout-ms", "200");
    for (k, v) in allowed {
        req = req.header(*k, *v);
    }
    req.body(empty()).expect("request")
}

/// A header a test request carries: name, value.
type Header<'a> = (&'a str, &'a str);

/// A request straight to the gateway's listener (not a subrequest), with the `Host` an
/// HTTP/1.1 request must carry.
fn direct(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header("host", "gateway:8080")
        .body(empty())
        .expect("request")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Checks a rejection: status, the envelope in the body and in [`X_GATEWAY_REJECTION`],
/// `WWW-Authenticate` when given. Returns the code.
async fn refused(response: Response<Body>, status: StatusCode, www: Option<&str>) -> String {
    assert_eq!(response.status(), status);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        headers.get("www-authenticate").map(|v| v.to_str().unwrap()),
        www
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        headers[&X_GATEWAY_REJECTION].as_bytes(),
        &body[..],
        "the header repeats the body"
    );
    let v: serde_json::Value = serde_json::from_slice(&body).expect("envelope");
    assert_eq!(v["requestId"], headers["x-request-id"].to_str().unwrap());
    v["code"].as_str().unwrap().to_owned()
}

const REALM: &str = "Bearer realm=\"cloudbase-gateway\"";
const INVALID: &str = "Bearer realm=\"cloudbase-gateway\", error=\"invalid_token\"";
const SCOPE: &str = "Bearer realm=\"cloudbase-gateway\", error=\"insufficient_scope\"";

#[tokio::test]
async fn traefik_with_a_valid_token_gets_200_and_the_identity_for_auth_response_headers() {
    let rig = Rig::start("", "").await;
    let token = rig.token("admin").await;
    let auth = bearer(&token);
    let r = rig
        .call(traefik(
            "POST",
            "/api/admin/users?page=2",
            &[("authorization", &auth)],
        ))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers();
    assert_eq!(h["x-user-username"], "admin");
    assert_eq!(h["x-user-groups"], "user,admin");
    assert_eq!(h["x-user-email"], "admin@example.com");
    assert_eq!(h["x-user-anonymous"], "false");
    assert!(!h["x-user-id"].is_empty());
    // A field the user lacks is sent empty, so authResponseHeaders overwrites a forgery.
    assert_eq!(h["x-user-phone"], "");
    assert!(
        r.into_body().collect().await.unwrap().to_bytes().is_empty(),
        "nothing upstream was called"
    );
}

#[tokio::test]
async fn traefik_without_a_token_or_with_a_bad_one_gets_401_with_the_envelope() {
    let rig = Rig::start("", "").await;
    let r = rig.call(traefik("GET", "/api/x", &[])).await;
    assert_eq!(
        refused(r, StatusCode::UNAUTHORIZED, Some(REALM)).await,
        "MISSING_CREDENTIALS"
    );
    let r = rig
        .call(traefik(
            "GET",
            "/api/x",
            &[("authorization", "Bearer not-a-token")],
        ))
        .await;
    assert_eq!(
        refused(r, StatusCode::UNAUTHORIZED, Some(INVALID)).await,
        "INVALID_ACCESS_TOKEN"
    );
}

#[tokio::test]
async fn traefik_for_a_user_outside_the_route_s_group_gets_403() {
    let rig = Rig::start("", "").await;
    let auth = bearer(&rig.token("demo").await);
    let r = rig
        .call(traefik("GET", "/api/admin/x", &[("authorization", &auth)]))
        .await;
    assert_eq!(
        refused(r, StatusCode::FORBIDDEN, Some(SCOPE)).await,
        "PERMISSION_DENIED"
    );
    // The same token is fine one route over: the rules are the route's, checked per request.
    let r = rig
        .call(traefik("GET", "/api/x", &[("authorization", &auth)]))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_anonymous_user_is_refused_where_the_route_does_not_admit_them() {
    let rig = Rig::start("", "").await;
    let anonymous = rig
        .client
        .signin_anonymously(&CallOptions::default())
        .await
        .expect("anonymous sign-in")
        .access_token;
    let auth = bearer(&anonymous);
    let r = rig
        .call(traefik("GET", "/api/x", &[("authorization", &auth)]))
        .await;
    assert_eq!(
        refused(r, StatusCode::FORBIDDEN, Some(SCOPE)).await,
        "PERMISSION_DENIED"
    );
}

#[tokio::test]
async fn a_client_forging_the_nginx_shape_through_traefik_cannot_pick_an_open_route() {
    let rig = Rig::start("", "").await;
    // Traefik copies the client's headers into the subrequest, X-Original-* included.
    let forged = [
        ("x-original-uri", "/public/x"),
        ("x-original-method", "GET"),
    ];
    let r = rig.call(traefik("GET", "/api/secret", &forged)).await;
    assert_eq!(
        refused(r, StatusCode::BAD_REQUEST, None).await,
        "BAD_REQUEST"
    );
}

#[tokio::test]
async fn an_optional_route_passes_without_identity_and_every_identity_header_empty() {
    let rig = Rig::start("", "").await;
    let forged = [("x-user-id", "admin"), ("x_user_groups", "admin")];
    let r = rig.call(traefik("GET", "/public/x", &forged)).await;
    assert_eq!(r.status(), StatusCode::OK);
    for name in [
        "x-user-id",
        "x-user-groups",
        "x-user-name",
        "x-user-anonymous",
    ] {
        assert_eq!(r.headers()[name], "", "{name}");
    }
}

#[tokio::test]
async fn a_cors_preflight_passes_where_the_route_allows_preflights() {
    let rig = Rig::start("", "").await;
    let preflight = [
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "PUT"),
    ];
    let r = rig.call(traefik("OPTIONS", "/cors/x", &preflight)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["x-user-id"],
        "",
        "a preflight carries no identity"
    );
    let r = rig.call(traefik("OPTIONS", "/api/x", &preflight)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// Only a real preflight skips the token, and forward-auth tells one apart exactly as
/// the proxy path does: for each request, the status the gateway's own routing and auth
/// give a client equals the status forward-auth gives an ingress asking about it, in
/// nginx's, Traefik's and Envoy's shapes.
#[tokio::test]
async fn forward_auth_decides_a_preflight_as_the_proxy_path_does() {
    let rig = Rig::start("", "").await;
    let origin = ("origin", "https://app.example.com");
    let put = ("access-control-request-method", "PUT");
    let (ok, unauthorized, not_allowed) = (
        StatusCode::OK,
        StatusCode::UNAUTHORIZED,
        StatusCode::METHOD_NOT_ALLOWED,
    );
    let cases: [(&str, Vec<Header>, StatusCode); 9] = [
        ("/cors/x", vec![origin, put], ok),
        // Without an Origin, or without one method token, it is an ordinary OPTIONS.
        ("/cors/x", vec![put], unauthorized),
        ("/cors/x", vec![("origin", ""), put], unauthorized),
        (
            "/cors/x",
            vec![origin, ("access-control-request-method", "")],
            unauthorized,
        ),
        (
            "/cors/x",
            vec![origin, ("access-control-request-method", "P(T")],
            unauthorized,
        ),
        // A preflight passes whatever `methods` says; an ordinary OPTIONS does not.
        ("/cors/read/x", vec![origin, put], ok),
        ("/cors/read/x", vec![put], not_allowed),
        // No `allow_preflight`: a preflight is an ordinary request.
        ("/api/x", vec![origin, put], unauthorized),
        ("/api/reports/x", vec![origin, put], not_allowed),
    ];
    for (path, headers, status) in cases {
        let mut direct = Request::options(path).header("host", "gateway:8080");
        for (k, v) in &headers {
            direct = direct.header(*k, *v);
        }
        let proxied = rig.call(direct.body(empty()).unwrap()).await.status();
        let by_nginx = rig.call(nginx("OPTIONS", path, &headers)).await.status();
        let by_traefik = rig.call(traefik("OPTIONS", path, &headers)).await.status();
        let by_envoy = rig
            .call(envoy_with("OPTIONS", path, &headers))
            .await
            .status();
        assert_eq!(
            [proxied, by_nginx, by_traefik, by_envoy],
            [status; 4],
            "OPTIONS {path} {headers:?}: proxy, nginx, Traefik, Envoy"
        );
    }
}

/// The proxy path drops a preflight's method-override headers before forwarding it; an
/// ingress forwards the request as the client sent it, so forward-auth refuses to let
/// such a preflight through without a token (a browser's preflight never carries one).
#[tokio::test]
async fn a_preflight_carrying_a_method_override_is_refused_because_the_ingress_would_forward_it() {
    let rig = Rig::start("", "").await;
    let origin = ("origin", "https://app.example.com");
    let get = ("access-control-request-method", "GET");
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        let headers = [origin, get, (name, "DELETE")];
        for shape in [
            nginx("OPTIONS", "/cors/x", &headers),
            traefik("OPTIONS", "/cors/x", &headers),
        ] {
            let r = rig.call(shape).await;
            assert_eq!(
                refused(r, StatusCode::BAD_REQUEST, None).await,
                "BAD_REQUEST",
                "{name}"
            );
        }
    }
    // A token changes nothing: a preflight is never authenticated. Where preflights do not
    // skip the token, the same request is an ordinary one, decided as the proxy path does.
    let auth = bearer(&rig.token("demo").await);
    let override_ = ("x-http-method-override", "DELETE");
    let headers = [origin, get, override_, ("authorization", &auth)];
    let r = rig.call(traefik("OPTIONS", "/cors/x", &headers)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = rig.call(traefik("OPTIONS", "/api/x", &headers)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-user-username"], "demo");
}

#[tokio::test]
async fn envoy_s_path_prefix_form_is_decided_on_the_original_path() {
    let rig = Rig::start("", "").await;
    let demo = bearer(&rig.token("demo").await);
    let admin = bearer(&rig.token("admin").await);
    let r = rig.call(envoy("GET", "/api/x?q=1", Some(&demo))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-user-username"], "demo");
    let r = rig.call(envoy("PUT", "/api/admin/x", Some(&demo))).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = rig.call(envoy("PUT", "/api/admin/x", Some(&admin))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = rig.call(envoy("GET", "/api/x", None)).await;
    assert_eq!(
        refused(r, StatusCode::UNAUTHORIZED, Some(REALM)).await,
        "MISSING_CREDENTIALS"
    );
}

#[tokio::test]
async fn envoy_path_confusion_is_decided_on_the_normalized_path() {
    let rig = Rig::start("", "").await;
    // `/public/%2e%2e/api/x` is `/api/x`: decided by /api/, which wants a token.
    let r = rig.call(envoy("GET", "/public/%2e%2e/api/x", None)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // `..%2F` would be `..` to a server that decodes it: refused, as the proxy does.
    let r = rig.call(envoy("GET", "/public/..%2Fapi/x", None)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Climbing out of the original path cannot reach the endpoint's siblings either.
    let r = rig.call(envoy("GET", "/../public/x", None)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_method_the_route_does_not_take_gets_405_with_allow() {
    let rig = Rig::start("", "").await;
    let auth = bearer(&rig.token("demo").await);
    let r = rig
        .call(envoy("DELETE", "/api/reports/1", Some(&auth)))
        .await;
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    assert_eq!(
        refused(r, StatusCode::METHOD_NOT_ALLOWED, None).await,
        "METHOD_NOT_ALLOWED"
    );
}

#[tokio::test]
async fn no_route_is_404_and_default_auth_makes_a_catch_all_for_forward_auth_only() {
    let rig = Rig::start("", "").await;
    let r = rig.call(traefik("GET", "/elsewhere", &[])).await;
    assert_eq!(refused(r, StatusCode::NOT_FOUND, None).await, "NOT_FOUND");

    let rig = Rig::start("default_auth = \"required\"", "").await;
    let r = rig.call(traefik("GET", "/elsewhere", &[])).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let auth = bearer(&rig.token("demo").await);
    let r = rig
        .call(traefik("GET", "/elsewhere", &[("authorization", &auth)]))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-user-username"], "demo");
    // The proxy path has no such route.
    let proxied = direct("/elsewhere");
    assert_eq!(rig.call(proxied).await.status(), StatusCode::NOT_FOUND);

    let rig = Rig::start("default_auth = \"none\"", "").await;
    let r = rig.call(traefik("GET", "/elsewhere", &[])).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Answers no route decided carry forward-auth's kind all the same, under `none`, with the
/// original request's method: an operator can tell refused subrequests from proxy 404s.
#[tokio::test]
async fn a_subrequest_no_route_decides_is_counted_under_none_as_forward_auth() {
    let rig = Rig::start("", "").await;
    let r = rig.call(traefik("POST", "/elsewhere", &[])).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = rig.call(direct("/_gateway/auth")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "no original request");
    let text = rig.metrics.render(0);
    for series in [
        "requests_total{route=\"none\",method=\"POST\",status=\"404\",kind=\"forward_auth\"} 1",
        "requests_total{route=\"none\",method=\"GET\",status=\"400\",kind=\"forward_auth\"} 1",
    ] {
        assert!(
            text.contains(&format!("cloudbase_gateway_{series}")),
            "{series}\n{text}"
        );
    }
}

#[tokio::test]
async fn cloudbase_failing_is_503_auth_unavailable_never_401() {
    let rig = Rig::start("", "").await;
    let auth = bearer(&rig.token("demo").await);
    rig.emulator.set_fault(Fault::Error500);
    let r = rig
        .call(traefik("GET", "/api/x", &[("authorization", &auth)]))
        .await;
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        refused(r, StatusCode::SERVICE_UNAVAILABLE, None).await,
        "AUTH_UNAVAILABLE"
    );
}

#[tokio::test]
async fn the_endpoint_is_never_routed_even_under_a_catch_all_route() {
    let catch_all = "[[routes]]\nprefix = \"/\"\nupstream = \"whoami\"\nauth = \"none\"\n";
    let rig = Rig::start("", catch_all).await;
    // A bare GET to the endpoint names no original request: 400, not whoami's echo.
    let bare = direct("/_gateway/auth");
    assert_eq!(rig.call(bare).await.status(), StatusCode::BAD_REQUEST);
    // Other spellings of it are refused rather than routed to the catch-all.
    for disguised in [
        "/_gateway/%61uth",
        "/_gateway//auth",
        "/x/../_gateway/auth/api/x",
    ] {
        let req = direct(disguised);
        assert_eq!(
            rig.call(req).await.status(),
            StatusCode::BAD_REQUEST,
            "{disguised}"
        );
    }
    // A neighbour of the endpoint is an ordinary path.
    let req = direct("/_gateway/authz");
    assert_eq!(rig.call(req).await.status(), StatusCode::OK);
    // With no identity, the catch-all's decision is 200 with empty identity headers.
    let r = rig.call(traefik("GET", "/anything", &[])).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-user-id"], "");
}

#[tokio::test]
async fn decisions_are_counted_by_route_with_kind_forward_auth() {
    let rig = Rig::start("", "").await;
    let auth = bearer(&rig.token("demo").await);
    rig.call(traefik("GET", "/api/x", &[("authorization", &auth)]))
        .await;
    rig.call(traefik("GET", "/api/x", &[])).await;
    rig.call(direct("/api/x")).await;
    // Counted under the original method (nginx, Traefik and Caddy ask with GET).
    let auth = bearer(&rig.token("demo").await);
    rig.call(traefik("POST", "/api/x", &[("authorization", &auth)]))
        .await;
    let text = rig.metrics.render(0);
    for series in [
        "requests_total{route=\"/api/\",method=\"GET\",status=\"200\",kind=\"forward_auth\"} 1",
        "requests_total{route=\"/api/\",method=\"GET\",status=\"401\",kind=\"forward_auth\"} 1",
        "requests_total{route=\"/api/\",method=\"GET\",status=\"401\",kind=\"proxy\"} 1",
        "requests_total{route=\"/api/\",method=\"POST\",status=\"200\",kind=\"forward_auth\"} 1",
        "request_duration_seconds_count{route=\"/api/\",kind=\"forward_auth\"} 3",
        "auth_decisions_total{result=\"allowed\"} 2",
        "auth_decisions_total{result=\"missing\"} 2",
    ] {
        assert!(
            text.contains(&format!("cloudbase_gateway_{series}")),
            "{series}\n{text}"
        );
    }
}

/// With the relay on too. The endpoint owns every path under it as sent (Envoy appends
/// the client's path unnormalized), so a subrequest whose normal form lies under the
/// relay's prefix is forward-auth's to decide. Were it relayed, CloudBase's 200 for a
/// valid token would tell the ingress "allowed" with no route's rules applied.
#[tokio::test]
async fn a_subrequest_that_normalizes_into_the_relay_is_decided_never_relayed() {
    let routes = format!("{ROUTES}[relay]\nenabled = true\n");
    let rig = Rig::start("", &routes).await;
    let demo = bearer(&rig.token("demo").await);
    // The control: the relay's own path reaches CloudBase's /user/me.
    let relayed = Request::get("/auth/v1/user/me")
        .header("host", "gateway:8080")
        .header("authorization", &demo)
        .body(empty())
        .unwrap();
    assert_eq!(rig.call(relayed).await.status(), StatusCode::OK);
    let once = "cloudbase_gateway_relay_requests_total{endpoint=\"user_me\",status=\"2xx\"} 1";
    assert!(rig.metrics.render(0).contains(once));
    for path in [
        "/../../auth/v1/user/me",
        "/%2e%2e/%2E%2E/auth/v1/user/me",
        "/x/../../../auth/v1/user/me",
    ] {
        let r = rig.call(envoy("GET", path, Some(&demo))).await;
        assert_eq!(
            refused(r, StatusCode::BAD_REQUEST, None).await,
            "BAD_REQUEST",
            "{path}"
        );
    }
    let text = rig.metrics.render(0);
    assert!(text.contains(once), "nothing more was relayed\n{text}");
}
