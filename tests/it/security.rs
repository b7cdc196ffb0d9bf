//! The gateway attacked as a client would attack it (issues 8 and 16): the real binary,
//! raw sockets, HTTP/1.1, h2c and HTTP/2 over TLS, a recording upstream that shows
//! exactly what got through, and a CloudBase stand-in where CloudBase's answers are the
//! weapon. Each test is named after the attack it stops.

use crate::support;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{free_port, metric, Cfg, Process};
use bytes::Bytes;
use cloudbase_auth::{CallOptions, Client};
use cloudbase_gateway::config::Config;
use cloudbase_gateway::http::{full, Body, BoxError};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::time::{sleep, timeout, Instant};

/// Generous bound for anything that should happen "at once"; never a performance claim.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The recording upstream
// ---------------------------------------------------------------------------------------

/// One request as the upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// Every header line, lower-case names, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The header's only value; fails the test if it came more than once.
    fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} arrived {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }
}

/// An upstream that records every request and answers with what it saw as JSON. Paths
/// under `/slow/` stream their answer over a few seconds; WebSocket upgrades get a 101.
#[derive(Clone)]
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

impl Recorder {
    async fn start() -> Recorder {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let (addr, _) = support::spawn_upstream(move |req: Request<Incoming>| {
            let log = log.clone();
            async move { record(req, log).await }
        })
        .await;
        Recorder { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The one recorded request whose path is `path`.
    fn request(&self, path: &str) -> Seen {
        let all: Vec<Seen> = self.seen().into_iter().filter(|s| s.path == path).collect();
        assert_eq!(all.len(), 1, "requests to {path}: {all:?}");
        all.into_iter().next().unwrap()
    }

    fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.path).collect()
    }
}

async fn record(req: Request<Incoming>, log: Arc<Mutex<Vec<Seen>>>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: pairs(&parts.headers),
        body: Vec::new(),
        trailers: Vec::new(),
    };
    if parts.headers.contains_key(http::header::UPGRADE) {
        log.lock().unwrap().push(seen);
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(full(""))
            .unwrap();
    }
    if let Ok(collected) = body.collect().await {
        if let Some(t) = collected.trailers() {
            seen.trailers = pairs(t);
        }
        seen.body = collected.to_bytes().to_vec();
    }
    let echo = serde_json::json!({
        "path": seen.path,
        "headers": seen
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), Value::String(v.clone())))
            .collect::<serde_json::Map<_, _>>(),
    });
    let slow = seen.path.starts_with("/open/slow");
    log.lock().unwrap().push(seen);
    if slow {
        // Four chunks, 0.6 s apart: longer than the idle timeout of the tests using it.
        let stream = futures_util::stream::unfold(0, |i| async move {
            if i == 4 {
                return None;
            }
            sleep(Duration::from_millis(600)).await;
            let frame = hyper::body::Frame::data(Bytes::from_static(b"chunk;"));
            Some((Ok::<_, BoxError>(frame), i + 1))
        });
        return Response::new(http_body_util::StreamBody::new(stream).boxed_unsync());
    }
    let mut response = Response::new(full(echo.to_string()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

// ---------------------------------------------------------------------------------------
// A CloudBase stand-in
// ---------------------------------------------------------------------------------------

/// CloudBase as the tests need it: each token maps to a profile (`/user/me` JSON); a token
/// starting with `held-` has its introspection held until [`StandIn::release`].
#[derive(Clone)]
struct StandIn {
    addr: SocketAddr,
    held_arrived: Arc<Notify>,
    release: Arc<Notify>,
}

impl StandIn {
    async fn start(profiles: HashMap<&'static str, Value>) -> StandIn {
        let held_arrived = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let profiles = Arc::new(profiles);
        let (arrived, gate) = (held_arrived.clone(), release.clone());
        let (addr, _) = support::spawn_upstream(move |req: Request<Incoming>| {
            let (profiles, arrived, gate) = (profiles.clone(), arrived.clone(), gate.clone());
            async move {
                let token = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("")
                    .to_owned();
                let Some(profile) = profiles.get(token.as_str()) else {
                    return json_response(StatusCode::OK, serde_json::json!({}));
                };
                if req.uri().path().ends_with("/token/introspect") {
                    if token.starts_with("held-") {
                        arrived.notify_one();
                        gate.notified().await;
                    }
                    let sub = profile["sub"].clone();
                    let active = serde_json::json!({
                        "token_type": "Bearer", "client_id": "test-client",
                        "sub": sub, "scope": "user",
                    });
                    json_response(StatusCode::OK, active)
                } else {
                    json_response(StatusCode::OK, profile.clone())
                }
            }
        })
        .await;
        StandIn {
            addr,
            held_arrived,
            release,
        }
    }
}

fn json_response(status: StatusCode, value: Value) -> Response<Body> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

// ---------------------------------------------------------------------------------------
// The gateway binary
// ---------------------------------------------------------------------------------------

/// Twenty more emulator users, `user00` … `user19`.
fn twenty_users() -> String {
    (0..20)
        .map(|i| {
            format!(
                "[[emulator.users]]\nusername = \"user{i:02}\"\npassword = \"password-{i:02}\"\n\
                 name = \"User {i}\"\ngroups = [\"user\"]\n"
            )
        })
        .collect()
}

/// How to start the binary. Strings are extra lines of each table.
#[derive(Default)]
struct Setup<'a> {
    server: &'a str,
    admin: &'a str,
    cloudbase: &'a str,
    /// Use this CloudBase instead of the embedded emulator.
    stand_in: Option<SocketAddr>,
    /// `listen` of the public listener, when not 127.0.0.1 on a free port.
    listen: Option<SocketAddr>,
}

/// The gateway binary, its emulator (unless a stand-in replaces it) and the upstream.
struct Gateway {
    process: Process,
    addr: SocketAddr,
    admin: SocketAddr,
    emulator: SocketAddr,
    upstream: Recorder,
    http: reqwest::Client,
}

impl Gateway {
    async fn start(setup: Setup<'_>) -> Gateway {
        let upstream = Recorder::start().await;
        let up = format!("http://{}", upstream.addr);
        let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        let addr = setup.listen.unwrap_or_else(port);
        let (admin, emulator) = (port(), port());
        let users = twenty_users();
        let (cloudbase, emulator_lines) = match setup.stand_in {
            Some(s) => (
                format!("base_url = \"http://{s}/auth/v1\"\n"),
                "enabled = false\n".to_owned(),
            ),
            None => (
                String::new(),
                format!("listen = \"{emulator}\"\ntest_hooks = false\n{users}"),
            ),
        };
        let route = |prefix: &str, rest: &str| {
            format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{up}\"\n{rest}\n")
        };
        let routes = [
            route("/api/", ""),
            route("/anon/", "allow_anonymous = true"),
            route("/opt/", "auth = \"optional\""),
            route("/open/", "auth = \"none\""),
            route("/admin/", "require_groups = [\"admin\"]"),
            route("/cors/", "allow_preflight = true"),
            route("/cors-get/", "allow_preflight = true\nmethods = [\"GET\"]"),
            "[[routes]]\nprefix = \"/who/\"\nupstream = \"whoami\"\n".to_owned(),
        ]
        .concat();
        let timeout = if setup.cloudbase.contains("timeout") {
            ""
        } else {
            "timeout = \"2s\"\n"
        };
        let config = Cfg {
            server: &format!(
                "listen = \"{addr}\"\nmax_body_size = \"4KiB\"\n{}",
                setup.server
            ),
            admin: &format!("listen = \"{admin}\"\n{}", setup.admin),
            cloudbase: &format!("{cloudbase}{timeout}{}", setup.cloudbase),
            emulator: &emulator_lines,
            routes: &routes,
            ..Cfg::default()
        }
        .text();
        if let Err(e) = Config::from_toml_str(&config) {
            panic!("test config invalid:\n{e}\n{config}");
        }
        let process = Process::spawn(&config, &[], &[("RUST_LOG", "info")], admin);
        support::wait_for_port(SocketAddr::from(([127, 0, 0, 1], addr.port())));
        Gateway {
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], addr.port())),
            admin,
            emulator,
            upstream,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// [`Gateway::start`] with extra `[server]` lines and nothing else changed.
    async fn with_server(server: &str) -> Gateway {
        Gateway::start(Setup {
            server,
            ..Setup::default()
        })
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn emulator_client(&self) -> Client {
        support::emulator_client(self.emulator, "")
    }

    /// Signs a seeded user in; returns the access token and the user's `sub`.
    async fn sign_in(&self, username: &str, password: &str) -> (String, String) {
        let t = self
            .emulator_client()
            .signin_password(username, password, &CallOptions::default())
            .await
            .unwrap_or_else(|e| panic!("sign-in of {username}: {e}"));
        (t.access_token, t.sub)
    }

    async fn demo(&self) -> (String, String) {
        self.sign_in("demo", "demo-password").await
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Writes `bytes` on a fresh connection and returns everything the gateway answers
    /// until it closes or falls quiet (see [`read_answers`]).
    async fn raw(&self, bytes: &[u8]) -> String {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        read_answers(&mut s).await
    }
}

/// Reads until the peer closes, errors, or sends nothing for a second; at most
/// [`PATIENCE`].
async fn read_answers<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    let mut chunk = [0u8; 16 * 1024];
    while Instant::now() < deadline {
        match timeout(Duration::from_secs(1), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The status codes of every HTTP/1.1 response in `text`.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter(|(i, _)| *i == 0 || text[..*i].ends_with('\n'))
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// Waits until the peer closes the connection (EOF or reset); fails the test if it is
/// still open after [`PATIENCE`]. Returns what was read.
async fn closed_by_gateway<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut buf = Vec::new();
    let read = timeout(PATIENCE, s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the gateway kept the connection open");
    buf
}

/// A connection to `addr` from `local` (e.g. 127.0.0.2, a trusted proxy).
async fn connect_from(local: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((local, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// The JSON body of an HTTP/1.1 answer in `text` (after the first blank line).
fn json_body(text: &str) -> Value {
    let start = text.find("\r\n\r\n").expect("a response head") + 4;
    let body = &text[start..];
    // Chunked or not, the JSON is the one {...} in the body.
    let (a, b) = (
        body.find('{').expect("JSON"),
        body.rfind('}').expect("JSON"),
    );
    serde_json::from_str(&body[a..=b]).expect("JSON body")
}

// ---------------------------------------------------------------------------------------
// HTTP/2 and TLS clients
// ---------------------------------------------------------------------------------------

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A self-signed certificate for `localhost`: (cert path, key path, rustls client config
/// trusting it with ALPN `alpn`).
fn tls_files(dir: &std::path::Path) -> (String, rustls::pki_types::CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    let server = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        dir.join("cert.pem"),
        dir.join("key.pem")
    );
    (server, ck.cert.der().clone())
}

fn tls_client(
    cert: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// An HTTP/2 client over `io`: the sender, the connection task (it ends when the gateway
/// closes the connection) and the server's `SETTINGS_MAX_CONCURRENT_STREAMS`.
async fn h2_over(io: Box<dyn Io>) -> H2 {
    let (send, mut conn) = h2::client::handshake(io).await.expect("h2 handshake");
    // One PING round trip: the server's SETTINGS come before its PING ack.
    let mut ping_pong = conn.ping_pong().expect("ping_pong");
    tokio::select! {
        pong = ping_pong.ping(h2::Ping::opaque()) => { pong.expect("pong"); }
        ended = &mut conn => panic!("connection ended during the handshake: {ended:?}"),
    }
    let max_streams = conn.max_concurrent_send_streams();
    (send, tokio::spawn(conn), max_streams)
}

/// Sends one HTTP/2 request and collects the answer (status, body, trailers ignored).
async fn h2_send(
    send: &mut h2::client::SendRequest<Bytes>,
    req: Request<()>,
    body: &[u8],
    trailers: Option<HeaderMap>,
) -> (StatusCode, Bytes) {
    let mut send = send.clone().ready().await.expect("ready");
    let end = body.is_empty() && trailers.is_none();
    let (response, mut stream) = send.send_request(req, end).expect("send");
    if !body.is_empty() {
        stream
            .send_data(Bytes::copy_from_slice(body), trailers.is_none())
            .expect("data");
    }
    if let Some(t) = trailers {
        stream.send_trailers(t).expect("trailers");
    }
    let response = timeout(PATIENCE, response)
        .await
        .expect("answered in time")
        .expect("response");
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (status, bytes.into())
}

type H2 = (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
    usize,
);

async fn h2c(addr: SocketAddr) -> H2 {
    h2_over(Box::new(TcpStream::connect(addr).await.unwrap())).await
}

/// Identity header names as configured (the defaults), lower-case.
const IDENTITY: [&str; 8] = [
    "x-user-id",
    "x-user-name",
    "x-user-username",
    "x-user-email",
    "x-user-phone",
    "x-user-groups",
    "x-user-scope",
    "x-user-anonymous",
];

/// `name` read the way some server could read it: lower-case, every non-alphanumeric
/// character as `-`.
fn folded(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Header lines (and trailers) of `seen` that any server could read as an identity header.
fn identity_lines(seen: &Seen) -> Vec<(String, String)> {
    seen.headers
        .iter()
        .chain(&seen.trailers)
        .filter(|(n, _)| IDENTITY.contains(&folded(n).as_str()))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------
// 8.1 Headers the gateway sets survive whatever `Connection` lists
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn connection_listing_identity_and_gateway_headers_cannot_delete_them() {
    let g = Gateway::start(Setup::default()).await;
    let (token, sub) = g.demo().await;
    let answer = g
        .raw(
            format!(
                "GET /api/conn HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {token}\r\n\
                 Connection: X-User-Id, X-User-Groups, X-User-Anonymous, X-User-Scope, \
                 X-Request-Id, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = g.upstream.request("/api/conn");
    assert_eq!(seen.one("x-user-id"), Some(sub.as_str()));
    assert_eq!(seen.one("x-user-groups"), Some("user"));
    assert_eq!(seen.one("x-user-anonymous"), Some("false"));
    assert!(seen.one("x-user-scope").is_some());
    assert_eq!(seen.one("x-request-id").map(str::len), Some(36));
    assert_eq!(seen.one("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.one("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.one("x-forwarded-host"), Some("gw.example"));
    assert!(seen.one("connection").is_none());
}

#[tokio::test]
async fn an_anonymous_user_cannot_pass_as_a_full_user_by_listing_x_user_anonymous() {
    let g = Gateway::start(Setup::default()).await;
    let opts = CallOptions {
        device_id: Some("security-test-device-0001".into()),
        ..CallOptions::default()
    };
    let anon = g
        .emulator_client()
        .signin_anonymously(&opts)
        .await
        .expect("anonymous sign-in");
    let answer = g
        .raw(
            format!(
                "GET /anon/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n\
                 Connection: close, X-User-Anonymous\r\n\r\n",
                anon.access_token
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = g.upstream.request("/anon/x");
    assert_eq!(seen.one("x-user-anonymous"), Some("true"));
    assert!(seen.one("x-user-id").is_some());
}

#[tokio::test]
async fn a_websocket_upgrade_cannot_delete_identity_headers_with_connection() {
    let g = Gateway::start(Setup::default()).await;
    let (token, sub) = g.demo().await;
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(
        format!(
            "GET /api/ws HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\
             Connection: Upgrade, X-User-Id, X-User-Anonymous, X-Request-Id\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 12];
    timeout(PATIENCE, s.read_exact(&mut head))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    let seen = g.upstream.request("/api/ws");
    assert_eq!(seen.one("x-user-id"), Some(sub.as_str()));
    assert_eq!(seen.one("x-user-anonymous"), Some("false"));
    assert!(seen.one("x-request-id").is_some());
    assert_eq!(seen.one("upgrade"), Some("websocket"));
}

// ---------------------------------------------------------------------------------------
// Identity-header spoofing in every spelling and position
// ---------------------------------------------------------------------------------------

/// Forged identity lines in every spelling a server might fold into `X-User-Id` & co.
const FORGED: &str = "X-User-Id: forged-1\r\nx_user_id: forged-2\r\nX_USER_ID: forged-3\r\n\
    X.User.Id: forged-4\r\nX~User~Id: forged-5\r\nx-user-id: forged-6\r\n\
    X-User-Groups: admin\r\nX_User_Groups: admin\r\nx.user.groups: admin\r\n\
    X-User-Anonymous: false\r\nX-USER-SCOPE: admin\r\nX-User-Name: forged\r\n";

#[tokio::test]
async fn forged_identity_headers_in_every_spelling_never_reach_the_upstream_over_http1() {
    let g = Gateway::start(Setup::default()).await;
    let (token, sub) = g.demo().await;
    for (path, auth) in [
        ("/open/f", String::new()),
        ("/opt/f", String::new()),
        (
            "/opt/g",
            "Authorization: Bearer not-a-valid-token\r\n".to_owned(),
        ),
        ("/api/f", format!("Authorization: Bearer {token}\r\n")),
    ] {
        let answer = g
            .raw(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: a\r\n{auth}{FORGED}Connection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
        assert_eq!(statuses(&answer), [200], "{path}: {answer}");
        let seen = g.upstream.request(path);
        let lines = identity_lines(&seen);
        if path == "/api/f" {
            // Only the gateway's own lines, each once.
            let mut names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), lines.len(), "{lines:?}");
            assert_eq!(seen.one("x-user-id"), Some(sub.as_str()));
            assert_eq!(seen.one("x-user-groups"), Some("user"));
            assert!(lines.iter().all(|(n, _)| IDENTITY.contains(&n.as_str())));
            assert!(!lines.iter().any(|(_, v)| v.starts_with("forged")));
        } else {
            assert!(lines.is_empty(), "{path}: {lines:?}");
        }
    }
}

/// Sends forged identity headers over HTTP/2 (`send`), on an open and an authenticated
/// route, and checks what the upstream got. `scheme_host` is `http://a` or
/// `https://localhost`.
async fn forge_over_h2(
    g: &Gateway,
    send: &mut h2::client::SendRequest<Bytes>,
    scheme_host: &str,
    tag: &str,
) {
    let (token, sub) = g.demo().await;
    for (route, bearer) in [("open", None), ("api", Some(token.as_str()))] {
        let path = format!("/{route}/{tag}");
        let mut req = Request::builder()
            .method("GET")
            .uri(format!("{scheme_host}{path}"))
            .header("x_user_id", "forged-1")
            .header("x-user-id", "forged-2")
            .header("x-user-id", "forged-3")
            .header("x.user.id", "forged-4")
            .header("x-user-groups", "admin")
            .header("x-user-anonymous", "false");
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let (status, _) = h2_send(send, req.body(()).unwrap(), b"", None).await;
        assert_eq!(status, 200, "{path}");
        let seen = g.upstream.request(&path);
        let lines = identity_lines(&seen);
        if bearer.is_some() {
            assert_eq!(seen.one("x-user-id"), Some(sub.as_str()));
            assert_eq!(seen.one("x-user-groups"), Some("user"));
            assert!(
                !lines.iter().any(|(_, v)| v.starts_with("forged")),
                "{lines:?}"
            );
        } else {
            assert!(lines.is_empty(), "{path}: {lines:?}");
        }
    }
}

#[tokio::test]
async fn forged_identity_headers_never_reach_the_upstream_over_h2c_or_h2_over_tls() {
    let g = Gateway::start(Setup::default()).await;
    let (mut send, _conn, _) = h2c(g.addr).await;
    forge_over_h2(&g, &mut send, "http://a", "h2c").await;
    drop(g);

    let dir = tempfile::tempdir().unwrap();
    let (tls, cert) = tls_files(dir.path());
    let g = Gateway::with_server(&tls).await;
    let stream = tls_connect(g.addr, tls_client(&cert, &[b"h2"]))
        .await
        .expect("TLS");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, _conn, _) = h2_over(Box::new(stream)).await;
    forge_over_h2(&g, &mut send, "https://localhost", "tls").await;
}

#[tokio::test]
async fn identity_headers_sent_as_request_trailers_never_reach_the_upstream() {
    let g = Gateway::start(Setup::default()).await;
    let (token, sub) = g.demo().await;
    // HTTP/1.1 chunked trailers, declared in `Trailer` as a careful client would.
    for (path, auth) in [
        ("/open/t1", String::new()),
        ("/api/t1", format!("Authorization: Bearer {token}\r\n")),
    ] {
        let answer = g
            .raw(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: a\r\n{auth}Transfer-Encoding: chunked\r\n\
                     Trailer: X-User-Id, X-User-Groups\r\nTE: trailers\r\nConnection: close\r\n\r\n\
                     5\r\nhello\r\n0\r\nX-User-Id: forged\r\nX-User-Groups: admin\r\nx_user_id: forged\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
        assert_eq!(statuses(&answer), [200], "{path}: {answer}");
        let seen = g.upstream.request(path);
        assert_eq!(seen.body, b"hello");
        assert!(seen.trailers.is_empty(), "{path}: {:?}", seen.trailers);
        let lines = identity_lines(&seen);
        assert!(
            !lines.iter().any(|(_, v)| v == "forged" || v == "admin"),
            "{lines:?}"
        );
        if path.starts_with("/api/") {
            assert_eq!(seen.one("x-user-id"), Some(sub.as_str()));
        }
    }
    // HTTP/2 trailers.
    let (mut send, _conn, _) = h2c(g.addr).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-user-id", HeaderValue::from_static("forged"));
    trailers.insert("x-user-groups", HeaderValue::from_static("admin"));
    let req = Request::builder()
        .method("POST")
        .uri("http://a/open/t2")
        .body(())
        .unwrap();
    let (status, _) = h2_send(&mut send, req, b"hello", Some(trailers)).await;
    assert_eq!(status, 200);
    let seen = g.upstream.request("/open/t2");
    assert_eq!(seen.body, b"hello");
    assert!(identity_lines(&seen).is_empty(), "{seen:?}");
}

#[tokio::test]
async fn two_hundred_concurrent_requests_of_twenty_users_never_get_each_others_identity() {
    let g = Gateway::start(Setup::default()).await;
    let mut users = Vec::new();
    for i in 0..20 {
        let (token, sub) = g
            .sign_in(&format!("user{i:02}"), &format!("password-{i:02}"))
            .await;
        users.push((token, sub, format!("user{i:02}")));
    }
    let users = Arc::new(users);
    let h1 = reqwest::Client::builder().no_proxy().build().unwrap();
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let client = if i % 2 == 0 { h1.clone() } else { h2.clone() };
            let users = users.clone();
            let url = g.url(&format!("/api/concurrent/{i}"));
            tokio::spawn(async move {
                let (token, sub, username) = &users[i % 20];
                let r = client.get(url).bearer_auth(token).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let echo: Value = r.json().await.unwrap();
                assert_eq!(echo["headers"]["x-user-id"], sub.as_str(), "request {i}");
                assert_eq!(
                    echo["headers"]["x-user-username"],
                    username.as_str(),
                    "request {i}"
                );
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("every request saw its own user");
    }
    // And the upstream's own record agrees, request by request.
    for i in 0..200 {
        let seen = g.upstream.request(&format!("/api/concurrent/{i}"));
        assert_eq!(seen.one("x-user-id"), Some(users[i % 20].1.as_str()));
    }
    let m = g.metrics().await;
    assert_eq!(
        metric(
            &m,
            "cloudbase_gateway_cloudbase_requests_total{endpoint=\"introspect\",outcome=\"ok\"}"
        ),
        20.0,
        "one validation per user"
    );
}

// ---------------------------------------------------------------------------------------
// Request smuggling
// ---------------------------------------------------------------------------------------

/// A request line the attacks hide in bodies and framing; the upstream must never see it.
fn smuggled(tag: &str) -> String {
    format!("GET /open/smuggled-{tag} HTTP/1.1\r\nHost: a\r\n\r\n")
}

/// Sends every attack on its own connection, all at once, then checks that no hidden
/// request reached the upstream. Returns each attack's statuses.
async fn attack(
    g: &Gateway,
    attacks: Vec<(&'static str, String)>,
) -> HashMap<&'static str, Vec<u16>> {
    let runs: Vec<_> = attacks
        .into_iter()
        .map(|(name, bytes)| {
            let addr = g.addr;
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let _ = s.write_all(bytes.as_bytes()).await;
                (name, statuses(&read_answers(&mut s).await))
            })
        })
        .collect();
    let mut out = HashMap::new();
    for run in runs {
        let (name, statuses) = run.await.unwrap();
        out.insert(name, statuses);
    }
    let smuggled: Vec<String> = g
        .upstream
        .paths()
        .into_iter()
        .filter(|p| p.contains("smuggled"))
        .collect();
    assert!(
        smuggled.is_empty(),
        "reached the upstream: {smuggled:?}; answers: {out:?}"
    );
    out
}

#[tokio::test]
async fn request_smuggling_shapes_never_deliver_a_hidden_request_upstream() {
    let g = Gateway::with_server("request_timeout = \"3s\"").await;
    let head = |framing: &str| format!("POST /open/s HTTP/1.1\r\nHost: a\r\n{framing}\r\n");
    let after = "GET /open/after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let hidden = smuggled("x");
    let n = hidden.len();
    let chunked_empty = format!("0\r\n\r\n{hidden}");
    let attacks: Vec<(&'static str, String)> = vec![
        (
            "CL then TE",
            format!(
                "{}{chunked_empty}",
                head(&format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", chunked_empty.len()))
            ),
        ),
        (
            "TE then CL",
            format!(
                "{}{chunked_empty}",
                head(&format!("Transfer-Encoding: chunked\r\nContent-Length: {}\r\n", chunked_empty.len()))
            ),
        ),
        (
            "CL 0 then TE, body in a chunk",
            format!(
                "{}{:x}\r\n{hidden}\r\n0\r\n\r\n{after}",
                head("Content-Length: 0\r\nTransfer-Encoding: chunked\r\n"),
                n
            ),
        ),
        (
            "two different Content-Length",
            format!("{}{hidden}", head(&format!("Content-Length: 0\r\nContent-Length: {n}\r\n"))),
        ),
        ("Content-Length +n", format!("{}{hidden}", head(&format!("Content-Length: +{n}\r\n")))),
        ("Content-Length hex", format!("{}{hidden}", head(&format!("Content-Length: 0x{n:x}\r\n")))),
        ("Content-Length -1", format!("{}{hidden}", head("Content-Length: -1\r\n"))),
        ("Content-Length 1 2", format!("{}{hidden}", head("Content-Length: 1 2\r\n"))),
        (
            "space before colon",
            format!("{}{hidden}", head(&format!("Content-Length : {n}\r\n"))),
        ),
        (
            "TE chunked, identity",
            format!("{}{chunked_empty}", head("Transfer-Encoding: chunked, identity\r\n")),
        ),
        (
            "TE xchunked",
            format!("{}{chunked_empty}", head("Transfer-Encoding: xchunked\r\n")),
        ),
        (
            "TE chunked then identity lines",
            format!(
                "{}{chunked_empty}",
                head("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n")
            ),
        ),
        (
            "TE with leading space and CL",
            format!(
                "{}{chunked_empty}",
                head(&format!("Transfer-Encoding:  chunked\r\nContent-Length: {}\r\n", chunked_empty.len()))
            ),
        ),
        (
            "obs-fold TE",
            format!("{}{chunked_empty}", head("X-Pad: a\r\n Transfer-Encoding: chunked\r\n")),
        ),
        (
            "bare LF head with CL",
            format!(
                "POST /open/s HTTP/1.1\nHost: a\nContent-Length: {n}\n\n{hidden}{after}"
            ),
        ),
        (
            "bare LF inside a header line",
            format!(
                "POST /open/s HTTP/1.1\r\nHost: a\r\nX-A: b\nContent-Length: {n}\r\n\r\n{hidden}{after}"
            ),
        ),
        (
            "chunk size with extension and LF",
            format!(
                "{}{:x};ext=\"q\"\n{hidden}\r\n0\r\n\r\n{after}",
                head("Transfer-Encoding: chunked\r\n"),
                n
            ),
        ),
    ];
    let answers = attack(&g, attacks).await;
    for refused in [
        "two different Content-Length",
        "Content-Length +n",
        "Content-Length hex",
        "Content-Length -1",
        "Content-Length 1 2",
        "space before colon",
        "TE chunked, identity",
        "TE xchunked",
        "TE chunked then identity lines",
    ] {
        assert_eq!(
            answers[refused].first(),
            Some(&400),
            "{refused}: {answers:?}"
        );
    }
    // Where the gateway did forward, every forwarded request was one the gateway framed
    // itself: its body is exactly what the gateway read, never a request of its own.
    for seen in g.upstream.seen() {
        assert!(
            seen.path == "/open/s" || seen.path == "/open/after",
            "{seen:?}"
        );
        let lengths = seen.all("content-length");
        let chunked = seen.all("transfer-encoding");
        assert!(
            lengths.len() + chunked.len() <= 1,
            "ambiguous framing upstream: {seen:?}"
        );
    }
}

#[tokio::test]
async fn requests_pipelined_behind_a_401_413_or_431_are_never_smuggled_upstream() {
    let g = Gateway::with_server("request_timeout = \"3s\"").await;
    let after = "GET /open/after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let h401 = smuggled("401");
    let h401c = smuggled("401-chunked");
    let h413 = smuggled("413");
    let h413c = smuggled("413-chunked");
    let h431 = smuggled("431");
    let big = "b".repeat(70 * 1024);
    let attacks: Vec<(&'static str, String)> = vec![
        (
            "401 with a Content-Length body",
            format!(
                "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{h401}{after}",
                h401.len()
            ),
        ),
        (
            "401 with a chunked body",
            format!(
                "POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                 {:x}\r\n{h401c}\r\n0\r\n\r\n{after}",
                h401c.len()
            ),
        ),
        (
            "413 by declared length",
            format!(
                "POST /open/x HTTP/1.1\r\nHost: a\r\nContent-Length: 999999\r\n\r\n{h413}{after}"
            ),
        ),
        (
            "413 by a chunked body that grows past the limit",
            format!(
                "POST /open/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                 1400\r\n{}\r\n{:x}\r\n{h413c}\r\n0\r\n\r\n{after}",
                "z".repeat(0x1400),
                h413c.len()
            ),
        ),
        (
            "431",
            format!("GET /open/x HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n{h431}{after}"),
        ),
    ];
    let answers = attack(&g, attacks).await;
    assert_eq!(
        answers["401 with a Content-Length body"].first(),
        Some(&401),
        "{answers:?}"
    );
    assert_eq!(
        answers["401 with a chunked body"].first(),
        Some(&401),
        "{answers:?}"
    );
    assert_eq!(
        answers["413 by declared length"].first(),
        Some(&413),
        "{answers:?}"
    );
    assert_eq!(
        answers["413 by a chunked body that grows past the limit"].first(),
        Some(&413),
        "{answers:?}"
    );
    assert_eq!(answers["431"].first(), Some(&431), "{answers:?}");
}

// ---------------------------------------------------------------------------------------
// 8.3 Silent connections; idle connections; stream limits
// ---------------------------------------------------------------------------------------

/// Reads one HTTP/1.1 response with a `Content-Length` body, leaving the connection open.
async fn read_one_response<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = timeout(PATIENCE, s.read(&mut chunk))
            .await
            .expect("answered in time")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        if support::http1_response_complete(&buf) {
            return String::from_utf8_lossy(&buf).into_owned();
        }
    }
}

/// The empty SETTINGS frame a client sends after the preface.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Opens a connection, writes `bytes`, and returns how long the gateway took to close it.
async fn time_to_close(addr: SocketAddr, bytes: &'static [u8]) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    if !bytes.is_empty() {
        s.write_all(bytes).await.unwrap();
    }
    closed_by_gateway(&mut s).await;
    start.elapsed()
}

#[tokio::test]
async fn silent_connections_in_every_protocol_are_closed_after_header_read_timeout() {
    let g = Gateway::with_server("header_read_timeout = \"500ms\"").await;
    let addr = g.addr;
    let shapes: [(&str, &'static [u8]); 5] = [
        ("nothing at all", b""),
        ("part of the HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        (
            "the HTTP/2 preface and SETTINGS, then nothing",
            H2_PREFACE_AND_SETTINGS,
        ),
        (
            "part of an HTTP/1.1 head",
            b"GET /open/x HTTP/1.1\r\nHost: a\r\n",
        ),
        ("one byte", b"G"),
    ];
    let runs: Vec<_> = shapes
        .into_iter()
        .map(|(name, bytes)| tokio::spawn(async move { (name, time_to_close(addr, bytes).await) }))
        .collect();
    for run in runs {
        let (name, took) = run.await.expect("closed in time");
        // Not before the timeout: the deadline, not some early refusal, closed it.
        assert!(
            took >= Duration::from_millis(450),
            "{name}: closed after {took:?}"
        );
    }
    // A real HTTP/2 client that completes the handshake and never sends a request.
    let start = Instant::now();
    let (_send, conn, _) = h2c(addr).await;
    timeout(PATIENCE, conn)
        .await
        .expect("an h2 connection without a request is closed")
        .unwrap()
        .ok();
    assert!(start.elapsed() >= Duration::from_millis(450));
    // Prompt clients are unaffected.
    assert_eq!(
        g.http.get(g.url("/open/ok")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn silent_connections_up_to_max_connections_cannot_lock_clients_out() {
    let g = Gateway::with_server("header_read_timeout = \"700ms\"\nmax_connections = 3").await;
    let readyz = || async {
        g.http
            .get(format!("http://{}/readyz", g.admin))
            .send()
            .await
            .unwrap()
            .status()
    };
    // Silent connections until every slot is taken (the start-up probe's connection may
    // still hold one for a moment); readiness then says a new connection would be refused.
    let mut silent = Vec::new();
    while readyz().await != StatusCode::SERVICE_UNAVAILABLE {
        assert!(
            silent.len() < 10,
            "/readyz never reported the full listener"
        );
        silent.push(TcpStream::connect(g.addr).await.unwrap());
        sleep(Duration::from_millis(20)).await;
    }
    // The silent connections are dropped, the slots come back, clients get in.
    for s in &mut silent {
        closed_by_gateway(s).await;
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = g.http.get(g.url("/open/in")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "clients stayed locked out");
        sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(readyz().await, StatusCode::OK);
}

#[tokio::test]
async fn silent_tls_connections_are_closed_after_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert) = tls_files(dir.path());
    let server = format!("{tls}header_read_timeout = \"500ms\"\n");
    let g = Gateway::with_server(&server).await;
    // No ClientHello at all.
    let took = time_to_close(g.addr, b"").await;
    assert!(took >= Duration::from_millis(450), "{took:?}");
    // A finished handshake, then silence, with either ALPN.
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let start = Instant::now();
        let mut s = tls_connect(g.addr, tls_client(&cert, &[alpn]))
            .await
            .expect("handshake");
        closed_by_gateway(&mut s).await;
        assert!(start.elapsed() >= Duration::from_millis(450));
    }
}

#[tokio::test]
async fn idle_http1_and_http2_connections_are_closed_after_idle_timeout() {
    let g = Gateway::with_server("idle_timeout = \"1s\"\nheader_read_timeout = \"10s\"").await;
    // HTTP/2: a request, then nothing; the connection ends (GOAWAY) once idle.
    let (mut send, conn, _) = h2c(g.addr).await;
    let req = Request::get("http://a/open/h2").body(()).unwrap();
    assert_eq!(h2_send(&mut send, req, b"", None).await.0, 200);
    let idle_from = Instant::now();
    timeout(PATIENCE, conn)
        .await
        .expect("an idle h2 connection is closed")
        .unwrap()
        .ok();
    assert!(idle_from.elapsed() >= Duration::from_millis(900));
    // HTTP/1.1 keep-alive: likewise, though header_read_timeout is longer.
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"GET /open/h1 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(read_one_response(&mut s).await.starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();
    closed_by_gateway(&mut s).await;
    assert!(idle_from.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_download_longer_than_idle_timeout_is_not_cut_off() {
    let g = Gateway::with_server("idle_timeout = \"1s\"").await;
    let (mut send, _conn, _) = h2c(g.addr).await;
    let req = Request::get("http://a/open/slow-h2").body(()).unwrap();
    let (status, body) = h2_send(&mut send, req, b"", None).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"chunk;chunk;chunk;chunk;");
    let answer = g
        .raw(b"GET /open/slow-h1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.matches("chunk;").count(), 4, "{answer}");
}

#[tokio::test]
async fn http2_clients_are_told_the_configured_stream_limit() {
    let g = Gateway::with_server("max_concurrent_streams = 7").await;
    let (_send, _conn, max_streams) = h2c(g.addr).await;
    assert_eq!(max_streams, 7);
    drop(g);
    let g = Gateway::start(Setup::default()).await;
    let (_send, _conn, max_streams) = h2c(g.addr).await;
    assert_eq!(max_streams, 100, "the default");
}

#[tokio::test]
async fn over_limit_tls_connections_get_a_503_after_the_handshake_not_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert) = tls_files(dir.path());
    let server = format!("{tls}max_connections = 1\n");
    let g = Gateway::with_server(&server).await;
    // Hold the only slot with a kept-alive HTTPS connection (once the start-up probe's
    // connection has let go of it).
    let deadline = Instant::now() + PATIENCE;
    let mut held = loop {
        let mut s = tls_connect(g.addr, tls_client(&cert, &[b"http/1.1"]))
            .await
            .expect("handshake");
        s.write_all(b"GET /open/hold HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let answer = read_one_response(&mut s).await;
        if answer.starts_with("HTTP/1.1 200") {
            break s;
        }
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(Instant::now() < deadline, "the slot never came free");
        sleep(Duration::from_millis(50)).await;
    };

    // A browser-like client (offering h2 and http/1.1) reads a proper 503.
    let client = reqwest::Client::builder()
        .no_proxy()
        .resolve("localhost", g.addr)
        .add_root_certificate(reqwest::Certificate::from_der(&cert).unwrap())
        .build()
        .unwrap();
    let r = timeout(
        PATIENCE,
        client
            .get(format!("https://localhost:{}/open/x", g.addr.port()))
            .send(),
    )
    .await
    .expect("answered in time")
    .expect("a readable answer, not a TLS error");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "OVERLOADED");
    // An HTTP/2-only client fails the handshake cleanly instead of hanging.
    let h2_only = timeout(PATIENCE, tls_connect(g.addr, tls_client(&cert, &[b"h2"])))
        .await
        .expect("no hang");
    assert!(h2_only.is_err(), "no common protocol, so no connection");
    // The held connection is still served.
    held.write_all(b"GET /open/again HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(read_one_response(&mut held)
        .await
        .starts_with("HTTP/1.1 200"));
}

// ---------------------------------------------------------------------------------------
// 8.4 Fan-out to CloudBase is bounded
// ---------------------------------------------------------------------------------------

fn profile(sub: &str) -> Value {
    serde_json::json!({"sub": sub, "name": format!("name of {sub}"), "groups": ["user"]})
}

#[tokio::test]
async fn new_tokens_beyond_max_in_flight_are_shed_with_503_at_once_not_queued() {
    let stand_in = StandIn::start(HashMap::from([
        ("held-1", profile("1")),
        ("tok-a", profile("2")),
        ("tok-b", profile("3")),
    ]))
    .await;
    let g = Gateway::start(Setup {
        cloudbase: "max_in_flight = 2\ntimeout = \"20s\"",
        stand_in: Some(stand_in.addr),
        ..Setup::default()
    })
    .await;
    // One validation holds both call slots while CloudBase sits on it.
    let held = {
        let (http, url) = (g.http.clone(), g.url("/api/held"));
        tokio::spawn(async move { http.get(url).bearer_auth("held-1").send().await })
    };
    timeout(PATIENCE, stand_in.held_arrived.notified())
        .await
        .expect("the held introspection reached CloudBase");
    // A new token on a required route: refused at once, not queued behind CloudBase.
    let r = timeout(
        PATIENCE,
        g.http.get(g.url("/api/a")).bearer_auth("tok-a").send(),
    )
    .await
    .expect("answered without waiting for CloudBase")
    .unwrap();
    let (status, code, headers) = support::rejection(r).await;
    assert_eq!((status.as_u16(), code.as_str()), (503, "AUTH_UNAVAILABLE"));
    assert!(headers.contains_key("retry-after"));
    // On an optional route it passes, without identity.
    let r = g
        .http
        .get(g.url("/opt/b"))
        .bearer_auth("tok-b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(g.upstream.request("/opt/b").one("x-user-id").is_none());
    let m = g.metrics().await;
    let shed =
        "cloudbase_gateway_cloudbase_requests_total{endpoint=\"introspect\",outcome=\"shed\"}";
    assert_eq!(metric(&m, shed), 2.0, "{m}");
    // Once CloudBase answers, the slot is free again and the held request goes through.
    stand_in.release.notify_one();
    let held = held.await.unwrap().unwrap();
    assert_eq!(held.status(), 200);
    let r = g
        .http
        .get(g.url("/api/a2"))
        .bearer_auth("tok-a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(g.upstream.request("/api/a2").one("x-user-id"), Some("2"));
}

// ---------------------------------------------------------------------------------------
// 8.5 Only a real CORS preflight passes without a token
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn only_a_real_cors_preflight_skips_auth_and_it_carries_no_body_or_method_override() {
    let g = Gateway::start(Setup::default()).await;
    let (token, _) = g.demo().await;
    for (what, headers) in [
        ("no Origin", "Access-Control-Request-Method: DELETE\r\n"),
        (
            "empty method",
            "Origin: https://app.example\r\nAccess-Control-Request-Method: \r\n",
        ),
        (
            "not a method token",
            "Origin: https://app.example\r\nAccess-Control-Request-Method: DE LETE\r\n",
        ),
        (
            "two methods",
            "Origin: https://app.example\r\nAccess-Control-Request-Method: GET\r\n\
             Access-Control-Request-Method: DELETE\r\n",
        ),
    ] {
        let answer = g
            .raw(
                format!(
                    "OPTIONS /cors/x HTTP/1.1\r\nHost: a\r\n{headers}Connection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
        assert_eq!(statuses(&answer), [401], "{what}: {answer}");
    }
    // A real preflight smuggling a body and a method override: forwarded without either
    // (on a route whose `methods` lack OPTIONS, too: a preflight passes those).
    let body = "{\"delete\":\"everything\"}";
    let answer = g
        .raw(
            format!(
                "OPTIONS /cors-get/pre HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example\r\n\
                 Access-Control-Request-Method: DELETE\r\nX-HTTP-Method-Override: DELETE\r\n\
                 X-HTTP-Method: DELETE\r\nX-Method-Override: DELETE\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = g.upstream.request("/cors-get/pre");
    assert_eq!(seen.method, "OPTIONS");
    assert!(seen.body.is_empty(), "{seen:?}");
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        assert!(seen.one(name).is_none(), "{name} forwarded");
    }
    assert!(
        seen.all("content-length").iter().all(|v| *v == "0"),
        "{seen:?}"
    );
    // An OPTIONS that is not a preflight is an ordinary request: `methods` applies.
    let r = g
        .http
        .request(reqwest::Method::OPTIONS, g.url("/cors-get/x"))
        .bearer_auth(&token)
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

// ---------------------------------------------------------------------------------------
// 8.6, 16.4, 16.5 Forwarding headers and who is trusted
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn forwarded_and_x_real_ip_from_an_untrusted_client_never_reach_the_upstream() {
    let g = Gateway::start(Setup::default()).await;
    let answer = g
        .raw(
            b"GET /open/fwd HTTP/1.1\r\nHost: a\r\nForwarded: for=1.2.3.4;host=admin.internal\r\n\
              X-Real-IP: 1.2.3.4\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Host: admin.internal\r\n\
              X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = g.upstream.request("/open/fwd");
    assert!(seen.one("forwarded").is_none());
    assert!(seen.one("x-real-ip").is_none());
    assert_eq!(seen.one("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.one("x-forwarded-host"), Some("a"));
    assert_eq!(seen.one("x-forwarded-proto"), Some("http"));
}

const FROM_A_BALANCER: &[u8] = b"GET /open/PATH HTTP/1.1\r\nHost: a\r\n\
    X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 203.0.113.7\r\n\
    Forwarded: for=6.6.6.6\r\nForwarded: for=203.0.113.7\r\nX-Real-IP: 203.0.113.7\r\n\
    X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n";

async fn send_from(local: [u8; 4], addr: SocketAddr, path: &str) -> String {
    let mut s = connect_from(local, addr).await;
    let text = String::from_utf8_lossy(FROM_A_BALANCER).replace("PATH", path);
    s.write_all(text.as_bytes()).await.unwrap();
    read_answers(&mut s).await
}

#[tokio::test]
async fn a_trusted_proxys_repeated_forwarding_lines_are_read_as_one_list() {
    let g = Gateway::with_server("trusted_proxies = [\"127.0.0.2\"]").await;
    let answer = send_from([127, 0, 0, 2], g.addr, "lb").await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = g.upstream.request("/open/lb");
    assert_eq!(
        seen.one("x-forwarded-for"),
        Some("6.6.6.6, 203.0.113.7, 127.0.0.2"),
        "the balancer's own line keeps the real client"
    );
    assert_eq!(
        seen.one("forwarded"),
        Some("for=6.6.6.6, for=203.0.113.7, for=127.0.0.2;host=\"a\";proto=http")
    );
    assert_eq!(seen.one("x-real-ip"), Some("203.0.113.7"));
    assert_eq!(seen.one("x-forwarded-proto"), Some("https"));
    // The same lines from a peer that is not trusted are all replaced or removed.
    let answer = send_from([127, 0, 0, 3], g.addr, "direct").await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = g.upstream.request("/open/direct");
    assert_eq!(seen.one("x-forwarded-for"), Some("127.0.0.3"));
    assert!(seen.one("forwarded").is_none());
    assert!(seen.one("x-real-ip").is_none());
    assert_eq!(seen.one("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn an_ipv4_client_of_a_dual_stack_listener_is_matched_and_written_as_ipv4() {
    let port = free_port();
    let listen: SocketAddr = format!("[::]:{port}").parse().unwrap();
    let g = Gateway::start(Setup {
        server: "trusted_proxies = [\"127.0.0.2\"]",
        listen: Some(listen),
        ..Setup::default()
    })
    .await;
    let answer = send_from([127, 0, 0, 2], g.addr, "v4-trusted").await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = g.upstream.request("/open/v4-trusted");
    assert_eq!(
        seen.one("x-forwarded-for"),
        Some("6.6.6.6, 203.0.113.7, 127.0.0.2"),
        "::ffff:127.0.0.2 is 127.0.0.2, a trusted proxy"
    );
    let answer = send_from([127, 0, 0, 3], g.addr, "v4-client").await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    assert_eq!(
        g.upstream.request("/open/v4-client").one("x-forwarded-for"),
        Some("127.0.0.3")
    );
}

// ---------------------------------------------------------------------------------------
// 8.7 Host
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn two_hosts_or_a_host_that_is_not_an_authority_are_refused_and_never_forwarded() {
    let g = Gateway::start(Setup::default()).await;
    for (what, head) in [
        ("two Host lines", "Host: a.example\r\nHost: b.example\r\n"),
        ("a path in Host", "Host: a.example/evil\r\n"),
        ("user info in Host", "Host: admin@a.example\r\n"),
        ("a space in Host", "Host: a.example b\r\n"),
        ("a comma in Host", "Host: a.example,b.example\r\n"),
        ("no Host on HTTP/1.1", ""),
    ] {
        let answer = g
            .raw(format!("GET /open/host HTTP/1.1\r\n{head}Connection: close\r\n\r\n").as_bytes())
            .await;
        assert_eq!(statuses(&answer), [400], "{what}: {answer}");
        assert_eq!(json_body(&answer)["code"], "BAD_REQUEST", "{what}");
    }
    assert!(g.upstream.seen().is_empty(), "{:?}", g.upstream.seen());
    // Absolute-form: the target's authority wins over Host (RFC 9112 §3.2.2).
    let answer = g
        .raw(b"GET http://real.example:8080/open/abs HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    assert_eq!(
        g.upstream.request("/open/abs").one("x-forwarded-host"),
        Some("real.example:8080")
    );
}

#[tokio::test]
async fn on_http2_the_authority_beats_a_disagreeing_host_header() {
    let g = Gateway::start(Setup::default()).await;
    let (mut send, _conn, _) = h2c(g.addr).await;
    let req = Request::get("http://real.example:8443/open/h2host")
        .header("host", "evil.example")
        .body(())
        .unwrap();
    assert_eq!(h2_send(&mut send, req, b"", None).await.0, 200);
    let seen = g.upstream.request("/open/h2host");
    assert_eq!(seen.one("x-forwarded-host"), Some("real.example:8443"));
    assert_eq!(seen.one("host"), Some(g.upstream.addr.to_string().as_str()));
    // A :authority that is not host[:port] is refused like a bad Host.
    let req = Request::get("http://user@real.example/open/h2bad")
        .body(())
        .unwrap();
    assert_eq!(h2_send(&mut send, req, b"", None).await.0, 400);
}

// ---------------------------------------------------------------------------------------
// 8.8, 8.9 What CloudBase says cannot be turned against the upstream
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_group_id_holding_a_comma_cannot_pass_as_two_groups() {
    let stand_in = StandIn::start(HashMap::from([(
        "tok-comma",
        serde_json::json!({"sub": "7", "groups": ["user,admin", {"id": "50%"}]}),
    )]))
    .await;
    let g = Gateway::start(Setup {
        stand_in: Some(stand_in.addr),
        ..Setup::default()
    })
    .await;
    let r = g
        .http
        .get(g.url("/admin/x"))
        .bearer_auth("tok-comma")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "the gateway's own rule refuses the user");
    let r = g
        .http
        .get(g.url("/api/groups"))
        .bearer_auth("tok-comma")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = g.upstream.request("/api/groups");
    let groups = seen.one("x-user-groups").unwrap();
    assert_eq!(groups, "user%2Cadmin,50%25");
    assert!(!groups.split(',').any(|g| g.trim() == "admin"));
}

#[tokio::test]
async fn an_oversized_profile_field_is_not_sent_and_is_logged_once() {
    let stand_in = StandIn::start(HashMap::from([(
        "tok-big",
        serde_json::json!({"sub": "8", "name": "n".repeat(600_000), "email": "e@example.com"}),
    )]))
    .await;
    let g = Gateway::start(Setup {
        stand_in: Some(stand_in.addr),
        ..Setup::default()
    })
    .await;
    for i in 0..3 {
        let r = g
            .http
            .get(g.url(&format!("/api/big{i}")))
            .bearer_auth("tok-big")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen = g.upstream.request(&format!("/api/big{i}"));
        assert_eq!(seen.one("x-user-id"), Some("8"));
        assert_eq!(seen.one("x-user-email"), Some("e@example.com"));
        assert!(
            seen.one("x-user-name").is_none(),
            "the oversized name is not sent"
        );
    }
    let m = g.metrics().await;
    assert_eq!(
        metric(
            &m,
            "cloudbase_gateway_identity_headers_omitted_total{field=\"name\"}"
        ),
        1.0,
        "counted once per entry, not per request"
    );
    let log = g.process.log();
    assert_eq!(log.matches("identity.max_header_bytes").count(), 1, "{log}");
    assert!(
        !log.contains("nnnnnnnnnn"),
        "the value itself is never logged"
    );
}

// ---------------------------------------------------------------------------------------
// 8.10, 16.7 The admin listener
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_posts_a_browser_form_could_send_are_refused() {
    let g = Gateway::start(Setup::default()).await;
    let url = format!("http://{}/cache/purge", g.admin);
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut req = g.http.post(&url).body("{\"all\": true}");
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 415, "{content_type:?}");
    }
    let r = g
        .http
        .post(&url)
        .header("content-type", "application/json; charset=utf-8")
        .body("{\"all\": true}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn with_admin_token_set_every_admin_post_needs_it() {
    let secret = "s3cret-admin-token-0123456789";
    let admin = format!("token = \"{secret}\"");
    let g = Gateway::start(Setup {
        admin: &admin,
        ..Setup::default()
    })
    .await;
    let url = format!("http://{}/cache/purge", g.admin);
    let post = |auth: Option<&str>| {
        let mut req = g
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body("{\"all\": true}");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for auth in [
        None,
        Some("Bearer wrong-token"),
        Some("Bearer s3cret-admin-token-012345678"),
        Some("Basic czNjcmV0"),
    ] {
        let r = post(auth).await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert!(r.headers().contains_key("www-authenticate"));
    }
    let good = format!("Bearer {secret}");
    assert_eq!(post(Some(&good)).await.unwrap().status(), 200);
    // Reads stay open for probes and scrapers.
    let r = g
        .http
        .get(format!("http://{}/metrics", g.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!g.process.log().contains(secret));
}

#[tokio::test]
async fn an_admin_listener_beyond_loopback_without_a_token_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let check = |admin: &str| {
        let path = dir.path().join("check.toml");
        std::fs::write(
            &path,
            format!("[admin]\n{admin}\n[cloudbase]\nenv_id = \"e\"\n"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudbase-gateway"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (_, stderr) = check("listen = \"0.0.0.0:9090\"");
    assert!(stderr.contains("warning: admin.listen"), "{stderr}");
    let (stdout, stderr) = check("listen = \"0.0.0.0:9090\"\ntoken = \"long-enough-admin-token\"");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(
        !stdout.contains("long-enough-admin-token"),
        "the token is redacted"
    );
    let (_, stderr) = check("listen = \"127.0.0.1:9090\"");
    assert!(!stderr.contains("warning"), "{stderr}");
    // The running gateway warns too.
    let port = free_port();
    let admin = format!("listen = \"0.0.0.0:{port}\"");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n[admin]\n{admin}\n[cloudbase]\nenv_id = \"e\"\n",
        free_port()
    );
    let process = Process::spawn(&config, &[], &[], SocketAddr::from(([127, 0, 0, 1], port)));
    let log = process.log();
    assert!(
        log.contains("admin.listen") && log.contains("WARN"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------
// 8.11 Bodies: whoami's limit, broken chunked framing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn whoami_refuses_a_chunked_body_over_max_body_size() {
    let g = Gateway::start(Setup::default()).await;
    let (token, _) = g.demo().await;
    let answer = g
        .raw(
            format!(
                "POST /who/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\
                 Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n1400\r\n{}\r\n0\r\n\r\n",
                "z".repeat(0x1400)
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(statuses(&answer), [413], "{answer}");
    assert_eq!(json_body(&answer)["code"], "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn malformed_chunked_framing_from_a_client_is_a_400_not_an_upstream_failure() {
    let g = Gateway::start(Setup::default()).await;
    let (token, _) = g.demo().await;
    for path in ["/open/chunk", "/who/chunk"] {
        let answer = g
            .raw(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\
                     Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nnot a chunk\r\n0\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
        assert_eq!(statuses(&answer), [400], "{path}: {answer}");
    }
    let m = g.metrics().await;
    assert_eq!(
        metric(
            &m,
            "cloudbase_gateway_requests_total{route=\"/open/\",method=\"POST\",status=\"400\",kind=\"proxy\"}"
        ),
        1.0,
        "{m}"
    );
    assert!(!m.contains("status=\"502\""), "{m}");
    assert!(!g.process.log().contains("upstream request failed"));
}
