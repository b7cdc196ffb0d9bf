//! Forward-auth end to end (issue 12): a real ingress — nginx with `auth_request`, Caddy
//! with `forward_auth` — in front of an echo upstream, asking the real gateway binary
//! (with its embedded emulator) through the exact configuration shipped in `deploy/`.
//! Every scenario runs against both ingresses; what reaches the client and what reaches
//! the upstream are checked on real sockets.
//!
//! Traefik's and Envoy's subrequest shapes (neither ships in Debian) go to the whole stack
//! in-process instead, in [`stack`].

mod stack;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::ingress::{deploy_file, Ingress};
use crate::support::raw::{raw_get, RawResponse};
use crate::support::*;
use cloudbase_auth::{CallOptions, Client};
use cloudbase_gateway::config::DEFAULT_IDENTITY_HEADERS;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nginx,
    Caddy,
}

impl Kind {
    /// What the client gets when the gateway cannot place the request (its 400 / 404):
    /// nginx's `auth_request` turns every status but 2xx / 401 / 403 into 500, and the
    /// shipped snippet restores only 503; Caddy passes the gateway's answer on.
    fn unplaceable(self) -> u16 {
        match self {
            Kind::Nginx => 500,
            Kind::Caddy => 400,
        }
    }
}

/// The gateway's routes: a protected API with an admin-only part, an optional public
/// route, a route that admits anonymous users and one open to CORS preflights.
fn routes(upstream: SocketAddr) -> String {
    let route = |prefix: &str, extra: &str| {
        format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"http://{upstream}\"\n{extra}\n")
    };
    [
        route("/api/", ""),
        route("/api/admin/", "require_groups = [\"admin\"]"),
        route("/public/", "auth = \"optional\""),
        route("/guest/", "allow_anonymous = true"),
        route("/cors/", "allow_preflight = true"),
    ]
    .concat()
}

/// The gateway binary with forward-auth on, its emulator embedded and `routes`, on free
/// ports (new ones if one was taken before it bound): the process and its main, admin and
/// emulator addresses.
fn start_gateway(routes: &str) -> (Process, SocketAddr, SocketAddr, SocketAddr) {
    let mut last = String::new();
    for _ in 0..3 {
        let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (addr, admin, emulator) = (port(), port(), port());
        let config = Cfg {
            server: &format!("listen = \"{addr}\""),
            admin: &format!("listen = \"{admin}\""),
            emulator: &format!("listen = \"{emulator}\""),
            routes: &format!("[forward_auth]\nenabled = true\n{routes}"),
            ..Cfg::default()
        }
        .text();
        match Process::try_spawn(&config, &[], &[], admin) {
            Ok(process) => return (process, addr, admin, emulator),
            Err(log) if address_in_use(&log) => last = log,
            Err(log) => panic!("the gateway did not start: {log}"),
        }
    }
    panic!("no free ports after three tries: {last}")
}

/// The gateway binary (forward-auth on, emulator embedded), an echo upstream and an
/// ingress in front of it, configured with the files in `deploy/`.
struct Rig {
    kind: Kind,
    ingress: Ingress,
    gateway: Process,
    admin: SocketAddr,
    emulator: SocketAddr,
    upstream_requests: Arc<AtomicUsize>,
    cloudbase: Client,
    http: reqwest::Client,
}

impl Rig {
    async fn start(kind: Kind) -> Rig {
        let (upstream, upstream_requests) = spawn_echo_upstream().await;
        let (gateway, gateway_addr, admin, emulator) = start_gateway(&routes(upstream));
        let ingress = match kind {
            Kind::Nginx => Ingress::nginx(&format!(
                "upstream cloudbase-gateway {{ server {gateway_addr}; keepalive 8; }}\n\
                 server {{\n\
                 listen {{LISTEN}};\n\
                 include {};\n\
                 location / {{\n\
                 include {};\n\
                 proxy_pass http://{upstream};\n\
                 }}\n\
                 }}",
                deploy_file("nginx/cloudbase-gateway-server.conf").display(),
                deploy_file("nginx/cloudbase-gateway-location.conf").display(),
            )),
            Kind::Caddy => Ingress::caddy(
                &format!(
                    "route {{\n\
                     import {}\n\
                     reverse_proxy {upstream}\n\
                     }}",
                    deploy_file("caddy/cloudbase-gateway.caddy").display()
                ),
                &[("CLOUDBASE_GATEWAY", &gateway_addr.to_string())],
            ),
        };
        let cloudbase = emulator_client(emulator, "");
        Rig {
            kind,
            ingress,
            gateway,
            admin,
            emulator,
            upstream_requests,
            cloudbase,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("reqwest"),
        }
    }

    async fn token(&self, username: &str) -> String {
        let password = format!("{username}-password");
        sign_in(&self.cloudbase, username, &password)
            .await
            .access_token
    }

    async fn anonymous_token(&self) -> String {
        self.cloudbase
            .signin_anonymously(&CallOptions::default())
            .await
            .expect("anonymous sign-in")
            .access_token
    }

    /// `GET {path}` through the ingress with an optional token and extra headers.
    async fn get(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, token, headers).await
    }

    /// `{method} {path}` through the ingress with an optional token and extra headers.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let url = format!("{}{path}", self.ingress.base());
        let mut req = self.http.request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap_or_else(|e| {
            panic!(
                "{:?} answers {path}: {e}\n{}",
                self.kind,
                self.ingress.log()
            )
        })
    }

    /// What the echo upstream received for an allowed request.
    async fn echoed(&self, path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Value {
        let r = self.get(path, token, headers).await;
        assert_eq!(r.status(), 200, "{:?} {path}", self.kind);
        r.json().await.expect("the echo upstream's JSON")
    }

    fn upstream_requests(&self) -> usize {
        self.upstream_requests.load(Ordering::SeqCst)
    }

    /// `POST` with a JSON body (`.json` sets `Content-Type: application/json`, which the
    /// emulator requires) or `GET`; the hooks are on by [`EMULATOR_TEST_HOOKS`].
    async fn emulator_hook(&self, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://{}/__emulator/{path}", self.emulator);
        let req = match body {
            Some(b) => self.http.post(url).json(&b),
            None => self.http.get(url),
        };
        let r = req.send().await.expect("emulator hook");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.expect("hook JSON")
    }

    async fn metrics(&self) -> String {
        metrics_at(&self.http, &format!("http://{}", self.admin)).await
    }
}

/// Checks a refusal that reached the client: the gateway's status, code and
/// `WWW-Authenticate` (once), in its JSON envelope (see [`rejection`]).
async fn assert_refused(r: reqwest::Response, status: u16, code: &str, www: Option<&str>) {
    let www_values: Vec<String> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let (got_status, got_code, _) = rejection(r).await;
    assert_eq!((got_status.as_u16(), got_code.as_str()), (status, code));
    assert_eq!(www_values, www.into_iter().collect::<Vec<_>>(), "{code}");
}

const REALM: &str = "Bearer realm=\"cloudbase-gateway\"";
const INVALID: &str = "Bearer realm=\"cloudbase-gateway\", error=\"invalid_token\"";
const SCOPE: &str = "Bearer realm=\"cloudbase-gateway\", error=\"insufficient_scope\"";

// ---------------------------------------------------------------------------------------
// Scenarios, each run through nginx and through Caddy
// ---------------------------------------------------------------------------------------

async fn a_valid_token_reaches_the_upstream_with_the_identity(kind: Kind) {
    let rig = Rig::start(kind).await;
    let demo = rig.token("demo").await;
    let echo = rig.echoed("/api/orders?id=7", Some(&demo), &[]).await;
    let h = &echo["headers"];
    assert_eq!(echo["path"], "/api/orders");
    assert_eq!(echo["query"], "id=7");
    assert_eq!(h["x-user-username"], "demo");
    assert_eq!(h["x-user-name"], "Demo User");
    assert_eq!(h["x-user-email"], "demo@example.com");
    assert_eq!(h["x-user-groups"], "user");
    assert_eq!(h["x-user-anonymous"], "false");
    assert!(
        h["x-user-id"].as_str().is_some_and(|s| !s.is_empty()),
        "{echo}"
    );
    // The admin-only route, for the admin.
    let admin = rig.token("admin").await;
    let echo = rig.echoed("/api/admin/users", Some(&admin), &[]).await;
    assert_eq!(echo["headers"]["x-user-groups"], "user,admin");

    // Decisions are counted and logged by route, as forward-auth decisions.
    let m = rig.metrics().await;
    let series = "cloudbase_gateway_requests_total{route=\"/api/\",method=\"GET\",status=\"200\",kind=\"forward_auth\"}";
    assert_eq!(metric(&m, series), 1.0, "{m}");
    let log = rig.gateway.log();
    assert!(
        log.lines().any(|l| l.contains("cloudbase_gateway::access")
            && l.contains("forward_auth")
            && l.contains("/api/admin/")),
        "no forward-auth access log line:\n{log}"
    );
}

async fn refusals_reach_the_client_with_the_gateway_s_envelope(kind: Kind) {
    let rig = Rig::start(kind).await;
    let demo = rig.token("demo").await;
    let anonymous = rig.anonymous_token().await;
    let before = rig.upstream_requests();

    let r = rig.get("/api/x", None, &[]).await;
    assert_refused(r, 401, "MISSING_CREDENTIALS", Some(REALM)).await;
    let r = rig.get("/api/x", Some("not-a-real-token"), &[]).await;
    assert_refused(r, 401, "INVALID_ACCESS_TOKEN", Some(INVALID)).await;
    let r = rig.get("/api/admin/x", Some(&demo), &[]).await;
    assert_refused(r, 403, "PERMISSION_DENIED", Some(SCOPE)).await;
    let r = rig.get("/api/x", Some(&anonymous), &[]).await;
    assert_refused(r, 403, "PERMISSION_DENIED", Some(SCOPE)).await;
    assert_eq!(
        rig.upstream_requests(),
        before,
        "no refused request reached the upstream"
    );

    // Where the route admits anonymous users, they pass, marked as such.
    let echo = rig.echoed("/guest/x", Some(&anonymous), &[]).await;
    assert_eq!(echo["headers"]["x-user-anonymous"], "true");
}

async fn forged_identity_headers_never_reach_the_upstream(kind: Kind) {
    let rig = Rig::start(kind).await;
    let demo = rig.token("demo").await;
    let clean = rig.echoed("/api/x", Some(&demo), &[]).await;
    let forged = [
        ("X-User-Id", "forged-admin"),
        ("X-User-Groups", "forged,admin"),
        ("X-User-Phone", "forged-110"),
        ("x_user_id", "forged-underscore"),
        ("X-User_Groups", "forged-mixed"),
        ("X_USER_EMAIL", "forged@example.com"),
        ("x-user-anonymous", "forged-false"),
    ];
    let check = |echo: &Value, what: &str| {
        let headers = echo["headers"].as_object().expect("headers");
        for (name, value) in headers {
            let value = value.as_str().unwrap_or("");
            assert!(
                !value.contains("forged"),
                "{kind:?} {what}: {name}: {value} reached the upstream"
            );
            let folded = name.replace('_', "-");
            if folded.starts_with("x-user-") {
                assert_eq!(
                    &folded, name,
                    "{kind:?} {what}: {name} reached the upstream"
                );
            }
        }
    };
    // Signed in: the upstream sees the user's own identity, never the client's.
    let echo = rig.echoed("/api/x", Some(&demo), &forged).await;
    check(&echo, "signed in");
    assert_eq!(echo["headers"]["x-user-id"], clean["headers"]["x-user-id"]);
    assert_eq!(echo["headers"]["x-user-groups"], "user");
    // No token on an optional route: no identity at all.
    let echo = rig.echoed("/public/x", None, &forged).await;
    check(&echo, "no token");
    for name in ["x-user-id", "x-user-groups", "x-user-anonymous"] {
        let value = echo["headers"]
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("");
        assert_eq!(value, "", "{kind:?}: {name} without a token");
    }
}

async fn cloudbase_down_gives_the_client_503_auth_unavailable(kind: Kind) {
    let rig = Rig::start(kind).await;
    let demo = rig.token("demo").await;
    let before = rig.upstream_requests();
    rig.emulator_hook("fault", Some(serde_json::json!({"mode": "error500"})))
        .await;
    let r = rig.get("/api/x", Some(&demo), &[]).await;
    assert_eq!(r.headers()["retry-after"], "1", "{kind:?}");
    assert_refused(r, 503, "AUTH_UNAVAILABLE", None).await;
    assert_eq!(rig.upstream_requests(), before);
    // Failures are not cached: CloudBase back, the same token passes.
    rig.emulator_hook("fault", Some(serde_json::json!({"mode": "ok"})))
        .await;
    rig.echoed("/api/x", Some(&demo), &[]).await;
}

async fn many_requests_with_one_token_cost_one_cloudbase_call_pair(kind: Kind) {
    let rig = Rig::start(kind).await;
    let demo = rig.token("demo").await;
    rig.emulator_hook("stats/reset", Some(serde_json::json!({})))
        .await;
    for i in 0..30 {
        rig.echoed(&format!("/api/items/{i}"), Some(&demo), &[])
            .await;
    }
    let stats = rig.emulator_hook("stats", None).await;
    assert_eq!(stats["calls"]["introspect"], 1, "{stats}");
    assert_eq!(stats["calls"]["user_me"], 1, "{stats}");
    let m = rig.metrics().await;
    assert_eq!(
        metric(&m, "cloudbase_gateway_cache_lookups_total{result=\"hit\"}"),
        29.0,
        "{m}"
    );
}

async fn path_confusion_through_the_ingress_is_decided_on_the_normalized_path(kind: Kind) {
    let rig = Rig::start(kind).await;
    let demo = rig.token("demo").await;
    let auth = format!("Bearer {demo}");
    let before = rig.upstream_requests();
    let decided_by_api = [
        "/public/%2e%2e/api/x",
        "/public/.%2E/api/x",
        "/%61pi/x",
        "/public//..//api/x",
        "http://app.test/public/%2e%2e/api/x",
    ];
    for target in decided_by_api {
        let r = raw_get(rig.ingress.addr, target, &[]).await;
        assert_eq!(r.status, 401, "{kind:?} {target}: {r:?}");
        assert_eq!(r.json()["code"], "MISSING_CREDENTIALS", "{kind:?} {target}");
    }
    let ambiguous = [
        "/public/..%2Fapi/x",
        "/public/%2e%2e%5Capi/x",
        "/public/..;/api/x",
        "/public/%252e%252e/api/x",
    ];
    for target in ambiguous {
        let r = raw_get(rig.ingress.addr, target, &[]).await;
        assert_eq!(r.status, kind.unplaceable(), "{kind:?} {target}: {r:?}");
    }
    assert_eq!(
        rig.upstream_requests(),
        before,
        "no confused request reached the upstream"
    );
    // A user's token: the admin route's group rule decides the disguised admin path.
    let r: RawResponse = raw_get(
        rig.ingress.addr,
        "/public/%2e%2e/api/admin/x",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 403, "{kind:?}: {r:?}");
    // The control: the open route itself passes without a token.
    let r = raw_get(rig.ingress.addr, "/public/x", &[]).await;
    assert_eq!(r.status, 200, "{kind:?}: {r:?}");
}

/// A preflight is told apart on the headers the ingress passes in its subrequest (the
/// client's `Origin` and `Access-Control-Request-Method`) and the original method it
/// reports, exactly as the proxy path tells one apart.
async fn only_a_real_cors_preflight_passes_without_a_token(kind: Kind) {
    let rig = Rig::start(kind).await;
    let options = || reqwest::Method::OPTIONS;
    let origin = ("Origin", "https://app.example.com");
    let put = ("Access-Control-Request-Method", "PUT");
    let r = rig.send(options(), "/cors/x", None, &[origin, put]).await;
    assert_eq!(r.status(), 200, "{kind:?}: a real preflight passes");
    let echo: Value = r.json().await.expect("the echo upstream's JSON");
    assert_eq!(echo["method"], "OPTIONS");
    let user_id = echo["headers"].get("x-user-id").and_then(Value::as_str);
    assert_eq!(
        user_id.unwrap_or(""),
        "",
        "{kind:?}: no identity on a preflight"
    );

    let before = rig.upstream_requests();
    // No Origin: an ordinary OPTIONS, which needs a token.
    let r = rig.send(options(), "/cors/x", None, &[put]).await;
    assert_refused(r, 401, "MISSING_CREDENTIALS", Some(REALM)).await;
    // No allow_preflight on /api/: the same preflight is an ordinary request there.
    let r = rig.send(options(), "/api/x", None, &[origin, put]).await;
    assert_refused(r, 401, "MISSING_CREDENTIALS", Some(REALM)).await;
    // A method override the ingress would forward as sent: refused.
    let overriding = [origin, put, ("X-HTTP-Method-Override", "DELETE")];
    let r = rig.send(options(), "/cors/x", None, &overriding).await;
    assert_eq!(r.status(), kind.unplaceable(), "{kind:?}");
    assert_eq!(
        rig.upstream_requests(),
        before,
        "{kind:?}: none of these got through"
    );
}

// ---------------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn nginx_valid_token_reaches_the_upstream_with_the_identity() {
    a_valid_token_reaches_the_upstream_with_the_identity(Kind::Nginx).await;
}

#[tokio::test]
async fn nginx_no_bad_or_unprivileged_tokens_get_the_gateway_s_401_403_envelope() {
    refusals_reach_the_client_with_the_gateway_s_envelope(Kind::Nginx).await;
}

#[tokio::test]
async fn nginx_forged_identity_headers_never_reach_the_upstream() {
    forged_identity_headers_never_reach_the_upstream(Kind::Nginx).await;
}

#[tokio::test]
async fn nginx_cloudbase_down_gives_the_client_503_not_500() {
    cloudbase_down_gives_the_client_503_auth_unavailable(Kind::Nginx).await;
}

#[tokio::test]
async fn nginx_many_requests_with_one_token_cost_one_cloudbase_call_pair() {
    many_requests_with_one_token_cost_one_cloudbase_call_pair(Kind::Nginx).await;
}

#[tokio::test]
async fn nginx_path_confusion_is_decided_on_the_normalized_path() {
    path_confusion_through_the_ingress_is_decided_on_the_normalized_path(Kind::Nginx).await;
}

#[tokio::test]
async fn nginx_only_a_real_cors_preflight_passes_without_a_token() {
    only_a_real_cors_preflight_passes_without_a_token(Kind::Nginx).await;
}

// ---------------------------------------------------------------------------------------
// Caddy
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn caddy_valid_token_reaches_the_upstream_with_the_identity() {
    a_valid_token_reaches_the_upstream_with_the_identity(Kind::Caddy).await;
}

#[tokio::test]
async fn caddy_no_bad_or_unprivileged_tokens_get_the_gateway_s_401_403_envelope() {
    refusals_reach_the_client_with_the_gateway_s_envelope(Kind::Caddy).await;
}

#[tokio::test]
async fn caddy_forged_identity_headers_never_reach_the_upstream() {
    forged_identity_headers_never_reach_the_upstream(Kind::Caddy).await;
}

#[tokio::test]
async fn caddy_cloudbase_down_gives_the_client_503() {
    cloudbase_down_gives_the_client_503_auth_unavailable(Kind::Caddy).await;
}

#[tokio::test]
async fn caddy_many_requests_with_one_token_cost_one_cloudbase_call_pair() {
    many_requests_with_one_token_cost_one_cloudbase_call_pair(Kind::Caddy).await;
}

#[tokio::test]
async fn caddy_path_confusion_is_decided_on_the_normalized_path() {
    path_confusion_through_the_ingress_is_decided_on_the_normalized_path(Kind::Caddy).await;
}

#[tokio::test]
async fn caddy_only_a_real_cors_preflight_passes_without_a_token() {
    only_a_real_cors_preflight_passes_without_a_token(Kind::Caddy).await;
}

// ---------------------------------------------------------------------------------------
// The shipped files
// ---------------------------------------------------------------------------------------

/// Every ingress configuration in `deploy/` copies (and so overwrites) every default
/// identity header: one left out would let a client's forgery of it through.
#[test]
fn every_shipped_ingress_configuration_overwrites_every_identity_header() {
    let read = |f: &str| std::fs::read_to_string(deploy_file(f)).expect("shipped file");
    let nginx = read("nginx/cloudbase-gateway-location.conf");
    let caddy = read("caddy/cloudbase-gateway.caddy");
    let yaml = |f: &str| -> Vec<serde_yaml::Value> {
        serde_yaml::Deserializer::from_str(&read(f))
            .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
            .collect()
    };
    let traefik_file = yaml("traefik/dynamic.yml");
    let traefik_names = |v: &serde_yaml::Value| -> Vec<String> {
        v["authResponseHeaders"]
            .as_sequence()
            .expect("authResponseHeaders")
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    };
    let from_file =
        traefik_names(&traefik_file[0]["http"]["middlewares"]["cloudbase-gateway"]["forwardAuth"]);
    let crd = yaml("traefik/middleware.yaml");
    let from_crd = traefik_names(&crd[1]["spec"]["forwardAuth"]);
    let ingress = yaml("ingress-nginx/ingress.yaml");
    let annotations = &ingress[0]["metadata"]["annotations"];
    let from_ingress: Vec<&str> = annotations["nginx.ingress.kubernetes.io/auth-response-headers"]
        .as_str()
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/auth-method"].as_str(),
        Some("GET"),
        "without auth-method ingress-nginx sends no X-Original-URI"
    );
    let envoy = yaml("envoy/envoy.yaml");
    let ext_authz = &envoy[0]["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"][0]["typed_config"]["http_service"];
    assert_eq!(ext_authz["path_prefix"].as_str(), Some("/_gateway/auth"));
    let from_envoy: Vec<&str> = ext_authz["authorization_response"]["allowed_upstream_headers"]
        ["patterns"]
        .as_sequence()
        .expect("allowed_upstream_headers")
        .iter()
        .map(|p| p["exact"].as_str().unwrap())
        .collect();
    for (name, _) in DEFAULT_IDENTITY_HEADERS {
        let var = format!(
            "$upstream_http_{}",
            name.to_ascii_lowercase().replace('-', "_")
        );
        assert!(
            nginx.contains(&format!("proxy_set_header {name} $")) && nginx.contains(&var),
            "nginx: {name}"
        );
        assert!(
            caddy.contains(&format!("request_header -{name}\n")),
            "caddy strip: {name}"
        );
        let copy = caddy
            .lines()
            .find(|l| l.trim_start().starts_with("copy_headers"))
            .expect("copy_headers");
        assert!(
            copy.split_whitespace().any(|n| n == name),
            "caddy copy: {name}"
        );
        assert!(from_file.iter().any(|n| n == name), "traefik file: {name}");
        assert!(from_crd.iter().any(|n| n == name), "traefik CRD: {name}");
        assert!(from_ingress.contains(&name), "ingress-nginx: {name}");
        assert!(
            from_envoy.contains(&name.to_ascii_lowercase().as_str()),
            "envoy: {name}"
        );
    }
}

/// The shipped examples are accepted by the real nginx and Caddy as written.
#[test]
fn the_shipped_nginx_and_caddy_examples_are_valid_configurations() {
    // nginx: example.conf includes snippets/…, as from /etc/nginx.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("snippets")).unwrap();
    for f in [
        "cloudbase-gateway-server.conf",
        "cloudbase-gateway-location.conf",
    ] {
        std::fs::copy(
            deploy_file(&format!("nginx/{f}")),
            dir.path().join("snippets").join(f),
        )
        .unwrap();
    }
    let d = dir.path().display();
    std::fs::write(
        dir.path().join("nginx.conf"),
        format!(
            "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n\
             client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;\n\
             uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\ninclude {};\n}}\n",
            deploy_file("nginx/example.conf").display()
        ),
    )
    .unwrap();
    let nginx = if std::path::Path::new("/usr/sbin/nginx").is_file() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let out = std::process::Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .output()
        .expect("nginx runs");
    assert!(
        out.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Caddy: the example Caddyfile imports the snippet next to it.
    let out = std::process::Command::new("caddy")
        .args(["adapt", "--adapter", "caddyfile", "--config"])
        .arg(deploy_file("caddy/Caddyfile"))
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .output()
        .expect("caddy runs");
    assert!(
        out.status.success(),
        "caddy adapt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains("/_gateway/auth"), "{json}");
}
