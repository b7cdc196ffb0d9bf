//! Production readiness (issue 4): HTTPS with h2, h2c, WebSocket, CloudBase outages and the
//! stale cache, upstream failures and limits, graceful shutdown of the real binary, metrics
//! and cache purge, log hygiene of the real binary, connection limits, and the container
//! files. Everything runs over real sockets on 127.0.0.1.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::path::{Path, PathBuf};

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use cloudbase_auth::CallOptions;
use cloudbase_emulator::Fault;
use cloudbase_gateway::config::Config;
use cloudbase_gateway::http::Body;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::{sleep, timeout};

/// Generous bound for anything that should finish "at once"; never a performance claim.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A `[[routes]]` entry.
fn route(prefix: &str, upstream: &str, auth: &str) -> String {
    format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nauth = \"{auth}\"\n")
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest")
}

/// An upstream that reads the whole request body, then answers 200 with its length.
async fn spawn_draining_upstream() -> SocketAddr {
    let (addr, _) = spawn_upstream(|req: Request<Incoming>| async move {
        let n = match req.into_body().collect().await {
            Ok(b) => b.to_bytes().len(),
            Err(_) => 0,
        };
        Response::new(cloudbase_gateway::http::full(n.to_string()))
    })
    .await;
    addr
}

/// An upstream whose body is `chunks` chunks of `chunk` bytes, one every `every`.
async fn spawn_slow_upstream(chunks: usize, chunk: usize, every: Duration) -> SocketAddr {
    let (addr, _) = spawn_upstream(move |_req: Request<Incoming>| async move {
        let stream = futures_util::stream::unfold(0usize, move |i| async move {
            if i == chunks {
                return None;
            }
            sleep(every).await;
            let frame = hyper::body::Frame::data(Bytes::from(vec![b'z'; chunk]));
            Some((Ok::<_, cloudbase_gateway::http::BoxError>(frame), i + 1))
        });
        let body: Body = http_body_util::StreamBody::new(stream).boxed_unsync();
        Response::new(body)
    })
    .await;
    addr
}

/// The gateway binary on free ports: `{LISTEN}`, `{ADMIN}` and `{EMULATOR}` in its config
/// are replaced by them. Killed however the test ends (see [`Process`]).
struct Binary {
    process: Process,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Binary {
    /// Runs the binary with `config` and `args`, waiting until its admin listener accepts.
    /// Returns the emulator's address too.
    async fn start(config: &str, args: &[&str], env: &[(&str, &str)]) -> (Binary, SocketAddr) {
        let port = |_| SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (addr, admin, emulator) = (port(0), port(1), port(2));
        let config = config
            .replace("{LISTEN}", &addr.to_string())
            .replace("{ADMIN}", &admin.to_string())
            .replace("{EMULATOR}", &emulator.to_string());
        let process = Process::spawn(&config, args, env, admin);
        (
            Binary {
                process,
                addr,
                admin,
            },
            emulator,
        )
    }

    fn sigterm(&self) {
        self.process.terminate();
    }

    /// Waits for the process to exit (at most [`PATIENCE`]).
    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.process.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "binary did not exit:\n{}",
                self.logs()
            );
            sleep(Duration::from_millis(25)).await;
        }
    }

    fn logs(&self) -> String {
        self.process.log()
    }
}

// ---------------------------------------------------------------------------------------
// 1-2. HTTPS with h2 and http/1.1; h2c with prior knowledge
// ---------------------------------------------------------------------------------------

/// A self-signed certificate for `localhost`, written as PEM files.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let cert_pem = ck.cert.pem();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, &cert_pem).expect("write cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
    (cert, key, cert_pem)
}

#[tokio::test]
async fn https_negotiates_h2_and_serves_http1_through_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, cert_pem) = self_signed(dir.path());
    let (upstream, _) = spawn_echo_upstream().await;
    let server = format!("tls_cert = {:?}\ntls_key = {:?}\n", cert, key);
    let routes = route("/api/", &format!("http://{upstream}"), "required");
    let h = Cfg {
        server: &server,
        routes: &routes,
        ..Cfg::default()
    }
    .start()
    .await;
    let addr = h.running.as_ref().expect("running").addr;
    let token = h.demo_token().await;
    let root = reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("cert");
    let url = format!("https://localhost:{}/api/tls", addr.port());

    let h2 = reqwest::Client::builder()
        .no_proxy()
        .resolve("localhost", addr)
        .add_root_certificate(root.clone())
        .build()
        .expect("client");
    let r = h2
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), Version::HTTP_2, "ALPN should pick h2");
    let echo: Value = r.json().await.expect("echo");
    assert_eq!(echo["headers"]["x-user-username"], "demo");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");

    let h1 = reqwest::Client::builder()
        .no_proxy()
        .resolve("localhost", addr)
        .add_root_certificate(root)
        .http1_only()
        .build()
        .expect("client");
    let r = h1
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), Version::HTTP_11);
    let echo: Value = r.json().await.expect("echo");
    assert_eq!(echo["headers"]["x-user-username"], "demo");

    // And the missing token is still refused over TLS.
    let r = h2.get(&url).send().await.expect("https request");
    assert_eq!(r.status(), 401);
    h.shutdown().await;
}

#[tokio::test]
async fn plain_listener_speaks_h2c_with_prior_knowledge() {
    let (upstream, _) = spawn_echo_upstream().await;
    let routes = route("/api/", &format!("http://{upstream}"), "required");
    let h = Cfg {
        routes: &routes,
        ..Cfg::default()
    }
    .start()
    .await;
    let token = h.demo_token().await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client
        .get(format!("{}/api/h2c", h.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("h2c request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), Version::HTTP_2);
    let echo: Value = r.json().await.expect("echo");
    assert_eq!(echo["headers"]["x-user-username"], "demo");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 3. WebSocket
// ---------------------------------------------------------------------------------------

/// A WebSocket server that echoes every text and binary message.
async fn spawn_ws_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_round_trips_through_auth_and_is_refused_without_a_token() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};

    let ws_upstream = spawn_ws_echo().await;
    let routes = route("/ws/", &format!("http://{ws_upstream}"), "required");
    let h = Cfg {
        routes: &routes,
        ..Cfg::default()
    }
    .start()
    .await;
    let token = h.demo_token().await;
    let url = format!("{}/ws/echo", h.base.replace("http://", "ws://"));

    let mut request = url.as_str().into_client_request().expect("ws request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (mut ws, response) = timeout(PATIENCE, tokio_tungstenite::connect_async(request))
        .await
        .expect("in time")
        .expect("handshake");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "你好, gateway"] {
        ws.send(Message::text(text)).await.expect("send");
        let echoed = timeout(PATIENCE, ws.next())
            .await
            .expect("in time")
            .expect("a message")
            .expect("ok");
        assert_eq!(echoed.into_text().expect("text"), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send");
    let echoed = timeout(PATIENCE, ws.next())
        .await
        .expect("in time")
        .expect("a message")
        .expect("ok");
    assert_eq!(echoed.into_data(), vec![0u8, 1, 2, 255]);
    let _ = ws.close(None).await;

    let request = url.as_str().into_client_request().expect("ws request");
    match tokio_tungstenite::connect_async(request).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        Err(e) => panic!("expected an HTTP 401 refusal, got {e}"),
        Ok(_) => panic!("a WebSocket without a token was accepted"),
    }
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 4. CloudBase outages and stale_if_error
// ---------------------------------------------------------------------------------------

/// `/api/` (auth required) and `/opt/` (optional) in front of `upstream`: how a CloudBase
/// outage reads on each kind of route.
fn api_and_opt(upstream: std::net::SocketAddr) -> String {
    format!(
        "{}{}",
        route("/api/", &format!("http://{upstream}"), "required"),
        route("/opt/", &format!("http://{upstream}"), "optional")
    )
}

#[tokio::test]
async fn cloudbase_faults_answer_503_auth_unavailable_never_401() {
    let (upstream, served) = spawn_echo_upstream().await;
    let routes = api_and_opt(upstream);
    let h = Cfg {
        // The breaker off: this test shows that failures are not cached, so the same token
        // passes the moment CloudBase is back (the breaker has its test below).
        cloudbase: "timeout = \"300ms\"\nbreaker_failures = 0",
        routes: &routes,
        ..Cfg::default()
    }
    .start()
    .await;
    // Signed in before the outage, never validated: nothing cached for it.
    let token = h.demo_token().await;
    for fault in [Fault::Hang, Fault::Error500, Fault::Garbage] {
        h.emulator.set_fault(fault);
        let r = timeout(PATIENCE, h.get("/api/x", Some(&token)))
            .await
            .expect("answered in time");
        let (status, code, headers) = rejection(r).await;
        assert_eq!(status, 503, "{fault:?}");
        assert_eq!(code, "AUTH_UNAVAILABLE", "{fault:?}");
        assert!(
            headers.contains_key("retry-after"),
            "{fault:?}: Retry-After"
        );

        // An optional route lets the request through, without identity.
        let r = timeout(PATIENCE, h.get("/opt/x", Some(&token)))
            .await
            .expect("answered in time");
        assert_eq!(r.status(), 200, "{fault:?}");
        let echo: Value = r.json().await.expect("echo");
        assert!(
            echo["headers"].get("x-user-id").is_none(),
            "{fault:?}: no identity"
        );
    }
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "only optional requests reached the upstream"
    );
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            "cloudbase_gateway_auth_decisions_total{result=\"unavailable\"}"
        ),
        6.0
    );
    assert_eq!(
        metric(
            &m,
            "cloudbase_gateway_auth_decisions_total{result=\"invalid\"}"
        ),
        0.0
    );

    // Failures were not cached: once CloudBase is back the same token passes.
    h.emulator.set_fault(Fault::Ok);
    assert_eq!(h.get("/api/x", Some(&token)).await.status(), 200);
    h.shutdown().await;
}

#[tokio::test]
async fn a_cloudbase_that_keeps_failing_is_not_asked_again_until_the_breakers_probe() {
    let (upstream, _) = spawn_echo_upstream().await;
    let routes = api_and_opt(upstream);
    let h = Cfg {
        cloudbase: "timeout = \"300ms\"\nbreaker_failures = 3\nbreaker_cooldown = \"1s\"",
        routes: &routes,
        ..Cfg::default()
    }
    .start()
    .await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(h.demo_token().await);
    }
    let before = h.calls("introspect");
    h.emulator.set_fault(Fault::Error500);
    // Three validations in a row fail: each asked CloudBase.
    for token in &tokens {
        assert_eq!(h.get("/api/x", Some(token)).await.status(), 503);
    }
    assert_eq!(h.calls("introspect") - before, 3);
    // Open: misses are answered as unavailable at once, CloudBase is not asked, and an
    // optional route still lets the request through without identity.
    let opened = std::time::Instant::now();
    for token in &tokens {
        let (status, code, headers) = rejection(h.get("/api/x", Some(token)).await).await;
        assert_eq!((status.as_u16(), code.as_str()), (503, "AUTH_UNAVAILABLE"));
        assert!(headers.contains_key("retry-after"));
        assert_eq!(h.get("/opt/x", Some(token)).await.status(), 200);
    }
    assert_eq!(h.calls("introspect") - before, 3, "not asked while open");
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            "cloudbase_gateway_cloudbase_requests_total{endpoint=\"introspect\",outcome=\"breaker_open\"}"
        ),
        6.0,
        "{m}"
    );
    // CloudBase is back; after the cool-down one validation probes it, and its answer
    // closes the breaker for everyone.
    h.emulator.set_fault(Fault::Ok);
    let deadline = opened + PATIENCE;
    loop {
        let status = h.get("/api/x", Some(&tokens[0])).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            std::time::Instant::now() < deadline,
            "the breaker never closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        opened.elapsed() >= std::time::Duration::from_millis(900),
        "closed before the cool-down: {:?}",
        opened.elapsed()
    );
    for token in &tokens[1..] {
        assert_eq!(h.get("/api/x", Some(token)).await.status(), 200);
    }
    h.shutdown().await;
}

#[tokio::test]
async fn cloudbase_unreachable_answers_503_and_optional_routes_pass() {
    let (upstream, _) = spawn_echo_upstream().await;
    let cloudbase = format!(
        "timeout = \"300ms\"\nbase_url = \"http://127.0.0.1:{}/auth/v1\"\n",
        free_port()
    );
    let routes = api_and_opt(upstream);
    let config = Cfg {
        cloudbase: &cloudbase,
        emulator: "enabled = false",
        routes: &routes,
        ..Cfg::default()
    }
    .config();
    let running = cloudbase_gateway::app::start(config, std::future::pending())
        .await
        .expect("starts");
    let base = format!("http://{}", running.addr);
    let http = http_client();
    for token in [
        "opaque-token-abc",
        "eyJhbGciOiJub25lIn0.eyJleHAiOjQxMDI0NDQ4MDB9.c2ln",
    ] {
        let r = timeout(
            PATIENCE,
            http.get(format!("{base}/api/x")).bearer_auth(token).send(),
        )
        .await
        .expect("in time")
        .expect("answered");
        let (status, code, headers) = rejection(r).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "AUTH_UNAVAILABLE")
        );
        assert!(headers.contains_key("retry-after"));
        let r = http
            .get(format!("{base}/opt/x"))
            .bearer_auth(token)
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), 200);
        let echo: Value = r.json().await.expect("echo");
        assert!(echo["headers"].get("x-user-id").is_none());
    }
    running.shutdown().await;
}

#[tokio::test]
async fn stale_identity_is_served_while_cloudbase_fails_until_the_stale_window_ends() {
    let (upstream, _) = spawn_echo_upstream().await;
    let routes = route("/api/", &format!("http://{upstream}"), "required");
    let h = Cfg {
        cloudbase: "timeout = \"300ms\"",
        cache: "ttl = \"1s\"\nstale_if_error = \"1500ms\"",
        routes: &routes,
        ..Cfg::default()
    }
    .start()
    .await;
    let token = h.demo_token().await;
    let stale = "cloudbase_gateway_cache_lookups_total{result=\"stale\"}";
    assert_eq!(h.get("/api/x", Some(&token)).await.status(), 200);
    h.emulator.set_fault(Fault::Error500);

    // Past ttl (1 s), inside ttl + stale_if_error (2.5 s): the known identity passes.
    sleep(Duration::from_millis(1300)).await;
    let r = h.get("/api/x", Some(&token)).await;
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.expect("echo");
    assert_eq!(echo["headers"]["x-user-username"], "demo");
    assert_eq!(metric(&h.metrics().await, stale), 1.0);

    // Past the stale window: nothing usable is left.
    sleep(Duration::from_millis(1700)).await;
    let (status, code, _) = rejection(h.get("/api/x", Some(&token)).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "AUTH_UNAVAILABLE")
    );
    assert_eq!(metric(&h.metrics().await, stale), 1.0);
    h.shutdown().await;
}

#[tokio::test]
async fn stale_identity_is_never_served_past_the_tokens_exp() {
    let (upstream, _) = spawn_echo_upstream().await;
    let routes = route("/api/", &format!("http://{upstream}"), "required");
    let h = Cfg {
        cloudbase: "timeout = \"300ms\"",
        cache: "ttl = \"1s\"\nstale_if_error = \"30s\"",
        emulator: "access_token_ttl = \"3s\"",
        routes: &routes,
        ..Cfg::default()
    }
    .start()
    .await;
    let signed_in = tokio::time::Instant::now();
    let token = h.demo_token().await;
    let stale = "cloudbase_gateway_cache_lookups_total{result=\"stale\"}";
    assert_eq!(h.get("/api/x", Some(&token)).await.status(), 200);
    h.emulator.set_fault(Fault::Error500);

    sleep(Duration::from_millis(1300)).await;
    assert_eq!(h.get("/api/x", Some(&token)).await.status(), 200);
    assert_eq!(metric(&h.metrics().await, stale), 1.0);

    // exp = iat + 3 s with iat at or before the sign-in: well past it now.
    tokio::time::sleep_until(signed_in + Duration::from_millis(3600)).await;
    let r = h.get("/api/x", Some(&token)).await;
    assert_ne!(
        r.status(),
        200,
        "an expired token must not pass on a stale entry"
    );
    let (status, code, _) = rejection(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "INVALID_ACCESS_TOKEN")
    );
    assert_eq!(metric(&h.metrics().await, stale), 1.0);
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 5. Upstream failures and the body limit
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn upstream_refused_is_502_and_hanging_upstream_is_504() {
    let (hanging, _) = spawn_upstream(|_req: Request<Incoming>| async move {
        std::future::pending::<()>().await;
        Response::new(cloudbase_gateway::http::empty())
    })
    .await;
    let routes = format!(
        "{}{}",
        route(
            "/refused/",
            &format!("http://127.0.0.1:{}", free_port()),
            "none"
        ),
        route("/hang/", &format!("http://{hanging}"), "none")
    );
    let h = Cfg {
        server: "request_timeout = \"500ms\"",
        routes: &routes,
        ..Cfg::default()
    }
    .start()
    .await;

    let r = timeout(PATIENCE, h.get("/refused/x", None))
        .await
        .expect("in time");
    let (status, code, _) = rejection(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE")
    );

    let r = timeout(PATIENCE, h.get("/hang/x", None))
        .await
        .expect("in time");
    let (status, code, _) = rejection(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_TIMEOUT")
    );
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            "cloudbase_gateway_requests_total{route=\"/hang/\",method=\"GET\",status=\"504\",kind=\"proxy\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "cloudbase_gateway_requests_total{route=\"/refused/\",method=\"GET\",status=\"502\",kind=\"proxy\"}"
        ),
        1.0
    );
    h.shutdown().await;
}

#[tokio::test]
async fn bodies_over_max_body_size_are_413_with_content_length_and_chunked() {
    let upstream = spawn_draining_upstream().await;
    let routes = route("/up/", &format!("http://{upstream}"), "none");
    let h = Cfg {
        server: "max_body_size = \"1MiB\"",
        routes: &routes,
        ..Cfg::default()
    }
    .start()
    .await;
    let five_mib = 5 * 1024 * 1024;

    // Within the limit, streamed: passes whole.
    let chunks = (0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'a'; 64 * 1024])));
    let r = h
        .http
        .post(format!("{}/up/ok", h.base))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), (512 * 1024).to_string());

    // Declared length over the limit: refused from the head alone.
    let r = h
        .http
        .post(format!("{}/up/declared", h.base))
        .body(vec![b'x'; five_mib])
        .send()
        .await
        .expect("answered");
    let (status, code, _) = rejection(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
    );

    // Chunked, growing past the limit while streaming.
    let chunks = (0..80).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 64 * 1024])));
    let r = h
        .http
        .post(format!("{}/up/chunked", h.base))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("answered");
    let (status, code, _) = rejection(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
    );
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 6. SIGTERM drains the real binary
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_finishes_inflight_downloads_reports_draining_and_exits_zero() {
    let (chunks, chunk) = (10usize, 16 * 1024usize);
    let upstream = spawn_slow_upstream(chunks, chunk, Duration::from_millis(200)).await;
    let config = format!(
        "[server]\nlisten = \"{{LISTEN}}\"\nshutdown_grace_period = \"10s\"\n\
         [admin]\nlisten = \"{{ADMIN}}\"\n\
         [cloudbase]\nenv_id = \"test-env\"\nclient_id = \"test-client\"\n\
         [emulator]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\
         {}",
        route("/slow/", &format!("http://{upstream}"), "none")
    );
    let (mut bin, _) = Binary::start(&config, &[], &[]).await;
    let http = http_client();
    // A client that opens a fresh connection every time, as a load balancer's probe does.
    let probe = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    let response = http
        .get(format!("http://{}/slow/file", bin.addr))
        .send()
        .await
        .expect("download starts");
    assert_eq!(response.status(), 200);
    let download = tokio::spawn(async move { response.bytes().await });
    sleep(Duration::from_millis(300)).await;
    bin.sigterm();

    // While the download drains: /readyz says 503 and the public port is closed.
    let mut saw_draining = false;
    let mut saw_refused = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut still_downloading = false;
    while !(saw_draining && saw_refused) && tokio::time::Instant::now() < deadline {
        if !saw_draining {
            if let Ok(r) = probe
                .get(format!("http://{}/readyz", bin.admin))
                .send()
                .await
            {
                saw_draining = r.status() == 503;
            }
        }
        if !saw_refused {
            saw_refused = tokio::net::TcpStream::connect(bin.addr).await.is_err();
        }
        still_downloading = !download.is_finished();
        sleep(Duration::from_millis(20)).await;
    }
    assert!(
        saw_draining,
        "/readyz should answer 503 while draining:\n{}",
        bin.logs()
    );
    assert!(
        saw_refused,
        "new connections should be refused after SIGTERM"
    );
    assert!(
        still_downloading,
        "both were seen while the download was still running"
    );
    // And it keeps saying so for the whole drain, to probes on fresh connections.
    sleep(Duration::from_millis(500)).await;
    let r = probe
        .get(format!("http://{}/readyz", bin.admin))
        .send()
        .await;
    assert_eq!(r.expect("admin still answers while draining").status(), 503);
    assert!(
        !download.is_finished(),
        "still draining at the second probe"
    );

    let body = timeout(PATIENCE, download)
        .await
        .expect("download ends")
        .expect("task")
        .expect("full body");
    assert_eq!(
        body.len(),
        chunks * chunk,
        "the in-flight download completes"
    );
    let status = bin.wait_exit().await;
    assert_eq!(status.code(), Some(0), "exit status; logs:\n{}", bin.logs());
}

// ---------------------------------------------------------------------------------------
// 7. Metrics and cache purge
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_a_scripted_mix_exactly_and_hold_no_tokens_or_paths() {
    let (upstream, _) = spawn_echo_upstream().await;
    let routes = format!(
        "{}{}require_groups = [\"admin\"]\n",
        route("/api/", &format!("http://{upstream}"), "required"),
        route("/admin-only/", &format!("http://{upstream}"), "required")
    );
    let h = Cfg {
        routes: &routes,
        ..Cfg::default()
    }
    .start()
    .await;
    let token = h.demo_token().await;
    let bogus = "bogus-token-value-9f8e7d";
    for _ in 0..3 {
        assert_eq!(
            h.get("/api/secret-path-1?q=hidden-query", Some(&token))
                .await
                .status(),
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(h.get("/api/secret-path-2", None).await.status(), 401);
    }
    assert_eq!(h.get("/api/secret-path-3", Some(bogus)).await.status(), 401);
    assert_eq!(
        h.get("/nowhere-secret-path", Some(&token)).await.status(),
        404
    );
    assert_eq!(h.get("/admin-only/x", Some(&token)).await.status(), 403);

    let m = h.metrics().await;
    let requests = |route: &str, status: u16| {
        metric(
            &m,
            &format!(
                "cloudbase_gateway_requests_total{{route=\"{route}\",method=\"GET\",status=\"{status}\",kind=\"proxy\"}}"
            ),
        )
    };
    assert_eq!(requests("/api/", 200), 3.0);
    assert_eq!(requests("/api/", 401), 3.0);
    assert_eq!(requests("none", 404), 1.0);
    assert_eq!(requests("/admin-only/", 403), 1.0);
    let total: f64 = m
        .lines()
        .filter(|l| l.starts_with("cloudbase_gateway_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 8.0);
    let auth = |result: &str| {
        metric(
            &m,
            &format!("cloudbase_gateway_auth_decisions_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(
        [
            auth("allowed"),
            auth("missing"),
            auth("invalid"),
            auth("forbidden"),
            auth("unavailable")
        ],
        [3.0, 2.0, 1.0, 1.0, 0.0]
    );
    let cache = |result: &str| {
        metric(
            &m,
            &format!("cloudbase_gateway_cache_lookups_total{{result=\"{result}\"}}"),
        )
    };
    // Misses: demo's first request and the bogus token; hits: demo twice more and the 403.
    assert_eq!(
        [
            cache("miss"),
            cache("hit"),
            cache("negative_hit"),
            cache("stale")
        ],
        [2.0, 3.0, 0.0, 0.0]
    );
    assert_eq!(metric(&m, "cloudbase_gateway_cache_entries"), 2.0);
    assert_eq!(metric(&m, "cloudbase_gateway_inflight_requests"), 0.0);

    for secret in [
        token.as_str(),
        bogus,
        "secret-path",
        "hidden-query",
        "nowhere",
    ] {
        assert!(!m.contains(secret), "metrics hold {secret:?}");
    }
    for value in label_values(&m, "route") {
        assert!(
            ["/api/", "/admin-only/", "none"].contains(&value.as_str()),
            "route label {value:?}"
        );
    }
    h.shutdown().await;
}

/// Every value of label `name` in Prometheus text.
fn label_values(text: &str, name: &str) -> Vec<String> {
    let needle = format!("{name}=\"");
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut rest = line;
        while let Some(i) = rest.find(&needle) {
            rest = &rest[i + needle.len()..];
            let end = rest.find('"').expect("closing quote");
            out.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    out
}

#[tokio::test]
async fn cache_purge_by_sub_token_and_all_forces_a_new_cloudbase_call() {
    let (upstream, _) = spawn_echo_upstream().await;
    let routes = route("/api/", &format!("http://{upstream}"), "required");
    let h = Cfg {
        routes: &routes,
        ..Cfg::default()
    }
    .start()
    .await;
    let token = h.demo_token().await;
    let r = h.get("/api/x", Some(&token)).await;
    let echo: Value = r.json().await.expect("echo");
    let sub = echo["headers"]["x-user-id"]
        .as_str()
        .expect("sub")
        .to_owned();
    assert_eq!(h.get("/api/x", Some(&token)).await.status(), 200);
    assert_eq!(h.calls("introspect"), 1, "second request is a hit");

    let purge = |body: String| {
        let http = h.http.clone();
        let url = format!("{}/cache/purge", h.admin);
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("purge answered");
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let mut expected_calls = 1;
    for body in [
        serde_json::json!({ "sub": sub }),
        serde_json::json!({ "token": token }),
        serde_json::json!({ "all": true }),
    ] {
        let (status, answer) = purge(body.to_string()).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            answer["purged"].as_u64().expect("purged count") >= 1,
            "{body}: {answer}"
        );
        assert_eq!(h.get("/api/x", Some(&token)).await.status(), 200);
        expected_calls += 1;
        assert_eq!(
            h.calls("introspect"),
            expected_calls,
            "{body}: CloudBase asked again"
        );
        assert_eq!(h.get("/api/x", Some(&token)).await.status(), 200);
        assert_eq!(
            h.calls("introspect"),
            expected_calls,
            "{body}: cached again"
        );
    }
    let (status, answer) = purge(serde_json::json!({ "sub": "nobody" }).to_string()).await;
    assert_eq!((status.as_u16(), answer["purged"].as_u64()), (200, Some(0)));

    for bad in [
        "not json",
        "{}",
        r#"{"sub": "a", "token": "b"}"#,
        r#"{"all": false}"#,
        r#"{"user": "a"}"#,
    ] {
        let (status, _) = purge(bad.to_owned()).await;
        assert_eq!(status, 400, "{bad}");
    }
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 8. Log hygiene of the real binary
// ---------------------------------------------------------------------------------------

const CLIENT_SECRET: &str = "super-secret-value";
const COOKIE_VALUE: &str = "cookie-secret-value-4242";

/// Drives a realistic mix through a binary run with `args` and `RUST_LOG=level`, stops it,
/// and returns its logs with every secret it handled.
async fn logged_mix(args: &[&str], level: &str) -> (String, Vec<String>) {
    let (echo, _) = spawn_echo_upstream().await;
    let config = format!(
        "[server]\nlisten = \"{{LISTEN}}\"\n\
         [admin]\nlisten = \"{{ADMIN}}\"\n\
         [cloudbase]\nenv_id = \"test-env\"\nclient_id = \"test-client\"\n\
         client_secret = \"{CLIENT_SECRET}\"\nintrospect_auth = \"client\"\ntimeout = \"300ms\"\n\
         [emulator]\nenabled = true\nlisten = \"{{EMULATOR}}\"\n{EMULATOR_TEST_HOOKS}\n{USERS}\n\
         {}{}{}",
        route("/api/", "whoami", "required"),
        route("/opt/", &format!("http://{echo}"), "optional"),
        route(
            "/refused/",
            &format!("http://127.0.0.1:{}", free_port()),
            "none"
        ),
    );
    let (mut bin, emulator) = Binary::start(&config, args, &[("RUST_LOG", level)]).await;
    let cloudbase = emulator_client(emulator, CLIENT_SECRET);
    let opts = CallOptions::default();
    let mut secrets: Vec<String> = vec![CLIENT_SECRET.to_owned(), COOKIE_VALUE.to_owned()];
    {
        use base64::Engine as _;
        secrets.push(
            base64::engine::general_purpose::STANDARD
                .encode(format!("test-client:{CLIENT_SECRET}")),
        );
    }
    let sign_in = || {
        let cloudbase = cloudbase.clone();
        async move {
            cloudbase
                .signin_password("demo", "demo-password", &CallOptions::default())
                .await
                .expect("sign-in")
        }
    };
    let valid = sign_in().await;
    let revoked = sign_in().await;
    let during_outage = sign_in().await;
    for t in [&valid, &revoked, &during_outage] {
        secrets.push(t.access_token.clone());
        secrets.extend(t.refresh_token.clone());
    }
    let forged = "forged-token-value-abcdef123456".to_owned();
    secrets.push(forged.clone());
    cloudbase
        .revoke(&revoked.access_token, &opts)
        .await
        .expect("revoke");

    let http = http_client();
    let base = format!("http://{}", bin.addr);
    let get = |path: &str, token: Option<&str>| {
        let mut req = http
            .get(format!("{base}{path}"))
            .header("cookie", format!("session={COOKIE_VALUE}; theme=dark"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let status = |r: reqwest::Result<reqwest::Response>| r.expect("answered").status().as_u16();
    assert_eq!(status(get("/api/a", Some(&valid.access_token)).await), 200);
    assert_eq!(status(get("/api/a", Some(&valid.access_token)).await), 200);
    assert_eq!(status(get("/api/a", Some(&forged)).await), 401);
    assert_eq!(
        status(get("/api/a", Some(&revoked.access_token)).await),
        401
    );
    assert_eq!(status(get("/api/a", None).await), 401);
    let query = format!(
        "/opt/q?token={}&access_token={}",
        valid.access_token, valid.access_token
    );
    assert_eq!(status(get(&query, None).await), 200);
    assert_eq!(status(get(&query, Some(&forged)).await), 200);
    let refused = format!("/refused/q?token={}", valid.access_token);
    assert_eq!(status(get(&refused, Some(&valid.access_token)).await), 502);
    // Outages make the CloudBase client fail with the token in its (client-mode) URL.
    for mode in ["error500", "garbage", "hang"] {
        let r = http
            .post(format!("http://{emulator}/__emulator/fault"))
            .json(&serde_json::json!({ "mode": mode }))
            .send()
            .await
            .expect("fault set");
        assert!(r.status().is_success(), "fault {mode}");
        assert_eq!(
            status(get("/api/b", Some(&during_outage.access_token)).await),
            503,
            "{mode}"
        );
    }
    bin.sigterm();
    let exit = bin.wait_exit().await;
    assert_eq!(exit.code(), Some(0));
    (bin.logs(), secrets)
}

fn assert_no_secrets(logs: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "logs leak {secret:?}:\n{logs}"
        );
        // A truncated token still leaks: check a JWT's signature segment on its own.
        if let Some(signature) = secret
            .rsplit('.')
            .next()
            .filter(|s| s.len() >= 16 && *s != secret)
        {
            assert!(!logs.contains(signature), "logs leak part of {secret:?}");
        }
    }
}

#[tokio::test]
async fn debug_text_logs_hold_no_tokens_cookies_or_client_secret() {
    let (logs, secrets) = logged_mix(&[], "debug").await;
    assert!(logs.contains("DEBUG"), "debug logging was on:\n{logs}");
    assert!(
        logs.contains("cloudbase_gateway::access"),
        "access log present"
    );
    assert!(
        logs.contains("status=401") && logs.contains("status=503"),
        "access lines:\n{logs}"
    );
    assert_no_secrets(&logs, &secrets);
}

#[tokio::test]
async fn trace_json_logs_hold_no_tokens_cookies_or_client_secret() {
    let (logs, secrets) = logged_mix(&["--log-format", "json"], "trace").await;
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "debug logging was on"
    );
    assert!(
        lines.iter().any(|l| l["status"] == 503),
        "access lines:\n{logs}"
    );
    assert_no_secrets(&logs, &secrets);
}

// ---------------------------------------------------------------------------------------
// 9. Connection limits
// ---------------------------------------------------------------------------------------

/// Sends one keep-alive request on `stream` and reads the response head and its
/// (Content-Length) body.
fn http1_exchange(stream: &mut StdStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n").expect("write");
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    loop {
        let n = stream.read(&mut byte).expect("read");
        assert!(
            n > 0,
            "connection closed early: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&byte[..n]);
        if http1_response_complete(&buf) {
            return String::from_utf8_lossy(&buf).into_owned();
        }
    }
}

#[tokio::test]
async fn connections_over_max_connections_get_503_overloaded() {
    let routes = route("/open/", "whoami", "none");
    let h = Cfg {
        server: "max_connections = 2",
        routes: &routes,
        ..Cfg::default()
    }
    .start()
    .await;
    let addr = h.running.as_ref().expect("running").addr;
    tokio::task::spawn_blocking(move || {
        let timeout = Some(Duration::from_secs(10));
        let mut open = Vec::new();
        for _ in 0..2 {
            let mut s = StdStream::connect(addr).expect("connect");
            s.set_read_timeout(timeout).unwrap();
            let answer = http1_exchange(&mut s, "/open/x");
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            open.push(s); // idle, kept alive
        }
        let mut third = StdStream::connect(addr).expect("the 3rd connect is accepted at TCP level");
        third.set_read_timeout(timeout).unwrap();
        let _ = write!(third, "GET /open/x HTTP/1.1\r\nHost: gateway\r\n\r\n");
        let mut answer = String::new();
        match third.read_to_string(&mut answer) {
            Ok(_) => {
                assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
                assert!(answer.contains("OVERLOADED"), "{answer}");
                assert!(
                    answer.to_ascii_lowercase().contains("retry-after"),
                    "{answer}"
                );
            }
            // A reset instead of an answer is a refusal too.
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        // The two kept-alive connections still work; closing one frees a slot.
        let answer = http1_exchange(&mut open[0], "/open/y");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        drop(open.pop());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = StdStream::connect(addr).expect("connect");
            s.set_read_timeout(timeout).unwrap();
            let _ = write!(
                s,
                "GET /open/z HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"
            );
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "slot never freed: {answer}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("no panic");
    h.shutdown().await;
}

#[tokio::test]
async fn a_client_stalling_mid_head_is_disconnected_after_header_read_timeout() {
    let routes = route("/open/", "whoami", "none");
    let h = Cfg {
        server: "header_read_timeout = \"300ms\"",
        routes: &routes,
        ..Cfg::default()
    }
    .start()
    .await;
    let addr = h.running.as_ref().expect("running").addr;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /open/x HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        .await
        .expect("write");
    let mut buf = Vec::new();
    // The gateway closes the connection (possibly after a 408); it never waits forever.
    let read = timeout(PATIENCE, stream.read_to_end(&mut buf))
        .await
        .expect("connection closed in time");
    if let Ok(n) = read {
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            n == 0 || text.starts_with("HTTP/1.1 408"),
            "unexpected answer: {text}"
        );
    }
    // A prompt client on a fresh connection is unaffected.
    assert_eq!(h.get("/open/x", None).await.status(), 200);
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 10. Container files
// ---------------------------------------------------------------------------------------

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The environment docker-compose.yml requires, with stand-in values.
const COMPOSE_ENV: [(&str, &str); 3] = [
    ("CLOUDBASE_CLIENT_SECRET", "fake-secret"),
    ("CACHE_HMAC_KEY", "fake-hmac-key-0123456789abcdef0123456789"),
    ("REDIS_PASSWORD", "fake-redis-password"),
];

#[test]
fn compose_runs_two_replicas_behind_one_port_on_redis_and_its_configs_are_valid() {
    let mut compose: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("docker-compose.yml")).expect("YAML");
    // The replicas share one definition through a YAML anchor and `<<:` merge.
    compose.apply_merge().expect("merge keys");
    let services = compose["services"].as_mapping().expect("services");
    let names: Vec<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    let service = |name: &str| {
        let s = &compose["services"][name];
        assert!(s.is_mapping(), "service {name}");
        s
    };
    let strings = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .map(|s| {
                s.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Every reference resolves: services depended on, files mounted.
    for name in &names {
        for dependency in strings(&service(name)["depends_on"]) {
            assert!(
                names.contains(&dependency.as_str()),
                "{name} depends on {dependency}, not a service"
            );
        }
        for volume in strings(&service(name)["volumes"]) {
            let source = volume.split(':').next().unwrap();
            if let Some(path) = source.strip_prefix("./") {
                let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
                assert!(full.is_file(), "{name} mounts {source}, not shipped");
            }
        }
    }
    let required_from_env = |s: &serde_yaml::Value, var: &str| {
        s["environment"][var]
            .as_str()
            .is_some_and(|v| v.starts_with(&format!("${{{var}:?")))
    };

    let replicas = ["gateway-a", "gateway-b"];
    let mut admin_ports = Vec::new();
    for name in replicas {
        let gateway = service(name);
        assert!(
            !gateway["build"].is_null(),
            "{name} is built from the Dockerfile"
        );
        for (var, _) in COMPOSE_ENV {
            assert!(
                required_from_env(gateway, var),
                "{name}'s {var} from the environment"
            );
        }
        assert!(strings(&gateway["volumes"])
            .contains(&"./deploy/gateway.toml:/etc/cloudbase-gateway/config.toml:ro".to_owned()));
        let depends = strings(&gateway["depends_on"]);
        for needed in ["emulator", "upstream", "redis"] {
            assert!(
                depends.contains(&needed.to_owned()),
                "{name} depends on {needed}"
            );
        }
        let ports = strings(&gateway["ports"]);
        assert_eq!(ports.len(), 1, "{name}: only its admin port, on loopback");
        assert!(
            ports[0].starts_with("127.0.0.1:") && ports[0].ends_with(":9090"),
            "{name}: {ports:?}"
        );
        admin_ports.push(ports[0].clone());
    }
    assert_ne!(
        admin_ports[0], admin_ports[1],
        "each replica's admin on its own port"
    );

    // One port for both: nginx round robin over the replicas' service names.
    let lb = service("lb");
    assert!(lb["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("nginx:")));
    assert_eq!(strings(&lb["ports"]), ["8080:8080"]);
    assert!(strings(&lb["volumes"])
        .contains(&"./deploy/nginx/replicas.conf:/etc/nginx/conf.d/default.conf:ro".to_owned()));
    let lb_conf = repo_file("deploy/nginx/replicas.conf");
    for name in replicas {
        assert!(strings(&lb["depends_on"]).contains(&name.to_owned()));
        assert!(
            lb_conf.contains(&format!("server {name}:8080;")),
            "replicas.conf sends to {name}"
        );
    }

    let redis = service("redis");
    assert!(redis["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("redis:7")));
    let command = strings(&redis["command"]);
    let after = |flag: &str| {
        let i = command.iter().position(|c| c == flag);
        i.and_then(|i| command.get(i + 1))
            .cloned()
            .unwrap_or_default()
    };
    assert!(after("--requirepass").starts_with("${REDIS_PASSWORD:?"));
    // The counters have no TTL and must not be evicted (README "Running several replicas").
    let policy = after("--maxmemory-policy");
    assert!(
        policy.starts_with("volatile-") || policy == "noeviction",
        "{policy}"
    );

    let emulator = service("emulator");
    for name in replicas {
        assert_eq!(
            emulator["image"],
            service(name)["image"],
            "the emulator runs the same image"
        );
    }
    assert_eq!(
        strings(&emulator["command"]),
        [
            "emulator",
            "--listen",
            "0.0.0.0:8081",
            "--config",
            "/etc/cloudbase-gateway/emulator.toml"
        ]
    );
    assert!(strings(&emulator["volumes"])
        .contains(&"./deploy/emulator.toml:/etc/cloudbase-gateway/emulator.toml:ro".to_owned()));
    assert!(
        required_from_env(emulator, "CLOUDBASE_CLIENT_SECRET"),
        "emulator checks the same client secret"
    );

    let upstream = service("upstream");
    assert!(upstream["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("traefik/whoami")));
    assert_eq!(strings(&upstream["command"]), ["--port", "9000"]);

    let fake_env = |name: &str| {
        COMPOSE_ENV
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    };
    let text = repo_file("deploy/gateway.toml");
    let gateway = Config::from_toml_str_with_env(&text, fake_env)
        .unwrap_or_else(|e| panic!("deploy/gateway.toml:\n{e}"));
    assert_eq!(gateway.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(gateway.admin.listen.to_string(), "0.0.0.0:9090");
    assert_eq!(
        gateway.cloudbase.base_url.as_deref(),
        Some("http://emulator:8081/auth/v1")
    );
    assert_eq!(gateway.cloudbase.client_secret.expose(), "fake-secret");
    let shared = gateway.cache.redis.as_ref().expect("[cache.redis] on");
    assert_eq!(
        shared.url.expose(),
        "redis://default:fake-redis-password@redis:6379/0",
        "the redis service, with its password"
    );
    assert_eq!(shared.hmac_key.expose(), COMPOSE_ENV[1].1);
    assert!(
        !gateway.emulator.enabled,
        "the emulator runs as its own service"
    );
    assert!(gateway.routes.iter().any(|r| matches!(
        &r.upstream,
        cloudbase_gateway::config::Upstream::Http { authority, .. } if authority == "upstream:9000"
    )));
    let emulator = Config::from_toml_str_with_env(&repo_file("deploy/emulator.toml"), fake_env)
        .unwrap_or_else(|e| panic!("deploy/emulator.toml:\n{e}"));
    assert!(
        emulator.emulator.users.iter().any(|u| u.username == "demo"),
        "a demo user"
    );
    assert_eq!(emulator.cloudbase.client_id, gateway.cloudbase.client_id);

    let dockerfile = repo_file("Dockerfile");
    for needle in [
        "FROM rust:1-bookworm",
        // Every member of the workspace: the binary embeds the emulator crate.
        "COPY crates ./crates",
        "cargo build --release --locked",
        "FROM debian:bookworm-slim",
        "ca-certificates",
        "USER 10001",
        "EXPOSE 8080 9090",
        r#"ENTRYPOINT ["/usr/local/bin/cloudbase-gateway", "--config", "/etc/cloudbase-gateway/config.toml"]"#,
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle:?}");
    }
    assert!(repo_file(".dockerignore")
        .lines()
        .any(|l| l.trim() == "target/"));
}

/// `cloudbase-gateway check --config deploy/{file}` with exactly `env` of
/// [`COMPOSE_ENV`] set.
fn check_shipped(file: &str, env: &[(&str, &str)]) -> std::process::Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cloudbase-gateway"));
    cmd.arg("check").arg("--config").arg(&path);
    for (var, _) in COMPOSE_ENV {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("the binary runs")
}

/// `cloudbase-gateway check` on the configs docker-compose.yml mounts (the replicas' and
/// the emulator's): accepted with the environment it passes, secrets printed redacted;
/// refused, naming each missing variable, without it.
#[test]
fn the_shipped_compose_configs_pass_check_only_with_their_secrets_in_the_environment() {
    for (file, needs) in [
        ("gateway.toml", &COMPOSE_ENV[..]),
        ("emulator.toml", &COMPOSE_ENV[..1]),
    ] {
        let out = check_shipped(file, &COMPOSE_ENV);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (var, value) in COMPOSE_ENV {
            assert!(!stdout.contains(value), "{file}: {var} printed:\n{stdout}");
        }
        if file == "gateway.toml" {
            assert!(stdout.contains("[cache.redis]"), "{stdout}");
            assert!(
                stdout.contains("url = \"redis://default:[redacted]@redis:6379/0\""),
                "{stdout}"
            );
        }

        let out = check_shipped(file, &[]);
        assert_eq!(out.status.code(), Some(1), "{file} without its secrets");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for (var, _) in needs {
            assert!(
                stderr.contains(&format!("environment variable {var} is not set")),
                "{file}, {var}:\n{stderr}"
            );
        }
    }
}
