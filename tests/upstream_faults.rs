//! The gateway in front of misbehaving upstreams and a half-broken CloudBase.
//!
//! Upstreams here are scripted raw sockets (a `TcpListener` writing exact bytes), so the
//! faults are the real ones: a stale `Content-Length` beside `Transfer-Encoding`, a `101`
//! nobody asked for, keep-alive connections closed just as the gateway reuses them, a
//! connection dropped after the request arrived. CloudBase is an in-test server whose
//! `/token/introspect` and `/user/me` fail independently.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------
// A scripted raw-socket upstream
// ---------------------------------------------------------------------------------------

/// A request as the scripted upstream read it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// The `x-seq` header the test put on the request, to tell requests apart.
    seq: Option<String>,
    body: Vec<u8>,
    /// Which accepted connection it arrived on (0, 1, …).
    connection: usize,
}

/// What the upstream does after answering a request.
#[derive(Debug, Clone, Copy)]
enum After {
    /// Waits this long for the next request on the connection, then closes it (an idle
    /// keep-alive timeout, like gunicorn's 2 s), without ever saying `Connection: close`.
    IdleClose(Duration),
    /// Keeps the connection open after the first answer, but reads a second request on
    /// it and drops the connection unanswered: a keep-alive close that always loses the
    /// race with the gateway reusing the connection.
    DropSecond,
}

type Answer = Arc<dyn Fn(&Seen) -> Vec<u8> + Send + Sync>;

struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    /// Accepts connections; answers each request with `answer(request)` then does `after`.
    /// With `swallow_first`, the first request of the first connection is read and the
    /// connection dropped without a byte of answer (an upstream crashing mid-request).
    async fn start(answer: Answer, after: After, swallow_first: bool) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let swallow = Arc::new(AtomicBool::new(swallow_first));
        let (seen2, connections2) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let connection = connections2.fetch_add(1, Ordering::SeqCst);
                let (answer, seen, swallow) = (answer.clone(), seen2.clone(), swallow.clone());
                tokio::spawn(serve(stream, connection, answer, after, seen, swallow));
            }
        });
        Scripted {
            addr,
            seen,
            connections,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut stream: TcpStream,
    connection: usize,
    answer: Answer,
    after: After,
    seen: Arc<Mutex<Vec<Seen>>>,
    swallow: Arc<AtomicBool>,
) {
    let mut buf = Vec::new();
    let mut first = true;
    loop {
        let next = read_request(&mut stream, &mut buf, connection);
        let request = match (first, after) {
            (false, After::IdleClose(idle)) => match tokio::time::timeout(idle, next).await {
                Ok(r) => r,
                Err(_) => return,
            },
            _ => next.await,
        };
        let Some(request) = request else { return };
        seen.lock().unwrap().push(request.clone());
        if swallow.swap(false, Ordering::SeqCst) || (!first && matches!(after, After::DropSecond)) {
            return;
        }
        first = false;
        if stream.write_all(&answer(&request)).await.is_err() {
            return;
        }
    }
}

/// Reads one HTTP/1.1 request (head, then a `Content-Length` or chunked body).
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    connection: usize,
) -> Option<Seen> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let mut lines = head.split("\r\n");
    let method = lines.next()?.split(' ').next()?.to_owned();
    let mut seq = None;
    let mut length = 0usize;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "x-seq" => seq = Some(value.to_owned()),
            "content-length" => length = value.parse().ok()?,
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                fill(stream, buf).await?;
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(stream, buf).await?;
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
    } else {
        while buf.len() < length {
            fill(stream, buf).await?;
        }
        body.extend_from_slice(&buf[..length]);
        buf.drain(..length);
    }
    Some(Seen {
        method,
        seq,
        body,
        connection,
    })
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A plain `200` with a `Content-Length` body, keep-alive implied (HTTP/1.1).
fn ok_answer() -> Answer {
    Arc::new(|seen: &Seen| {
        let body = format!("ok {}", seen.seq.as_deref().unwrap_or("-"));
        let body = if seen.method == "HEAD" { "" } else { &body };
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            if seen.method == "HEAD" { 2 } else { body.len() }
        )
        .into_bytes()
    })
}

/// A fixed answer whatever the request.
fn fixed(bytes: &'static [u8]) -> Answer {
    Arc::new(move |_: &Seen| bytes.to_vec())
}

fn route(prefix: &str, upstream: SocketAddr) -> String {
    format!(
        "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"http://{upstream}\"\nauth = \"none\"\n"
    )
}

/// A gateway routing `/up/` to `upstream`, with extra `[upstream]` lines.
async fn gateway(upstream: SocketAddr, pool: &str) -> Harness {
    let extra = format!("[upstream]\n{pool}\n{}", route("/up/", upstream));
    Harness::start(&extra).await
}

fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// 1. Framing: Content-Length beside Transfer-Encoding
// ---------------------------------------------------------------------------------------

/// 59 bytes, sent chunked.
const BODY_59: &str = "fifty-nine bytes of body that a stale length would truncate";

fn chunked_with_length(length: &str) -> Answer {
    let half = BODY_59.len() / 2;
    let (a, b) = BODY_59.split_at(half);
    let bytes = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    Arc::new(move |_: &Seen| bytes.clone().into_bytes())
}

#[tokio::test]
async fn a_stale_content_length_beside_transfer_encoding_neither_truncates_nor_breaks_the_body() {
    assert_eq!(BODY_59.len(), 59);
    for stale in ["10", "0", "1000"] {
        let up = Scripted::start(
            chunked_with_length(stale),
            After::IdleClose(Duration::from_secs(10)),
            false,
        )
        .await;
        let h = gateway(up.addr, "").await;
        for (client, name) in [(h.http.clone(), "HTTP/1.1"), (h2_client(), "HTTP/2")] {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                client.get(format!("{}/up/x", h.base)).send(),
            )
            .await
            .expect("answered")
            .unwrap_or_else(|e| panic!("{name}, Content-Length {stale}: {e}"));
            assert_eq!(r.status(), 200, "{name}, Content-Length {stale}");
            let length = r.headers().get("content-length").cloned();
            assert!(
                length.is_none() || length.as_ref().unwrap() == "59",
                "{name}: the upstream's Content-Length {stale} was forwarded: {length:?}"
            );
            let body = r
                .text()
                .await
                .unwrap_or_else(|e| panic!("{name}, Content-Length {stale}: body cut: {e}"));
            assert_eq!(body, BODY_59, "{name}, Content-Length {stale}");
        }
        h.shutdown().await;
    }
}

/// Sends `request` on a fresh connection to `addr` and reads the answer's head (up to the
/// blank line) and whatever body arrives before the gateway goes quiet.
async fn raw_exchange(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).to_ascii_lowercase()
}

#[tokio::test]
async fn head_204_and_304_answers_keep_the_length_semantics_of_their_kind() {
    let answer: Answer = Arc::new(|seen: &Seen| {
        match seen.seq.as_deref() {
            Some("204") => "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n".into(),
            Some("304") => {
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"a\"\r\n\r\n".into()
            }
            _ => "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_owned(),
        }
        .into_bytes()
    });
    let up = Scripted::start(answer, After::IdleClose(Duration::from_secs(10)), false).await;
    let h = gateway(up.addr, "").await;
    let addr = h.running.as_ref().unwrap().addr;

    let head = raw_exchange(addr, "HEAD /up/x HTTP/1.1\r\nHost: g\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-length: 1234\r\n"),
        "HEAD keeps the representation's length: {head}"
    );
    assert!(head.ends_with("\r\n\r\n"), "and sends no body: {head:?}");

    let not_modified =
        raw_exchange(addr, "GET /up/x HTTP/1.1\r\nHost: g\r\nX-Seq: 304\r\n\r\n").await;
    assert!(not_modified.starts_with("http/1.1 304"), "{not_modified}");
    assert!(
        not_modified.ends_with("\r\n\r\n"),
        "a 304 has no body: {not_modified:?}"
    );

    let no_content =
        raw_exchange(addr, "GET /up/x HTTP/1.1\r\nHost: g\r\nX-Seq: 204\r\n\r\n").await;
    assert!(no_content.starts_with("http/1.1 204"), "{no_content}");
    assert!(
        !no_content.contains("content-length: 5"),
        "a 204 never carries a length: {no_content}"
    );

    // The same over HTTP/2, where a wrong length is a stream error.
    let client = h2_client();
    let r = client
        .head(format!("{}/up/x", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "1234");
    let r = client
        .get(format!("{}/up/x", h.base))
        .header("x-seq", "204")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 3. A 101 nobody asked for
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_101_to_a_request_that_did_not_ask_to_upgrade_is_a_502_on_h1_and_h2() {
    let up = Scripted::start(
        fixed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"),
        After::IdleClose(Duration::from_secs(10)),
        false,
    )
    .await;
    let h = gateway(up.addr, "").await;
    for (client, name) in [(h.http.clone(), "HTTP/1.1"), (h2_client(), "HTTP/2")] {
        let r = client
            .get(format!("{}/up/x", h.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (status, code, _) = rejection(r).await;
        assert_eq!(
            (status.as_u16(), code.as_str()),
            (502, "UPSTREAM_UNAVAILABLE"),
            "{name}"
        );
    }
    // The client connection is still usable afterwards.
    let r = h.http.get(format!("{}/up/y", h.base)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 2. Stale pooled connections and the retry rule
// ---------------------------------------------------------------------------------------

/// Sends `GET`, `HEAD`, `PUT`, `DELETE` and `POST` (all without a body) in turn, `n` in
/// all, each with its own `x-seq`, pausing `pause(i)` before request `i`. Returns the
/// statuses per method.
async fn mixed_requests(
    h: &Harness,
    n: usize,
    pause: impl Fn(usize) -> Duration,
) -> Vec<(String, u16, String)> {
    let methods = ["GET", "HEAD", "PUT", "DELETE", "POST"];
    let mut out = Vec::new();
    for i in 0..n {
        tokio::time::sleep(pause(i)).await;
        let method = methods[i % methods.len()];
        let seq = format!("{method}-{i}");
        let r = h
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}/up/x", h.base),
            )
            .header("x-seq", &seq)
            .send()
            .await
            .expect("the gateway answers");
        out.push((method.to_owned(), r.status().as_u16(), seq));
    }
    out
}

/// Every idempotent request got a 200, and no POST reached the upstream twice.
fn assert_no_idempotent_502_and_no_post_replayed(results: &[(String, u16, String)], up: &Scripted) {
    let failed: Vec<_> = results
        .iter()
        .filter(|(m, status, _)| m != "POST" && *status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} idempotent requests failed: {failed:?}",
        failed.len(),
        results.iter().filter(|(m, ..)| m != "POST").count()
    );
    let seen = up.seen();
    for (method, status, seq) in results.iter().filter(|(m, ..)| m == "POST") {
        let arrivals = seen
            .iter()
            .filter(|s| s.seq.as_deref() == Some(seq))
            .count();
        assert!(arrivals <= 1, "{seq} reached the upstream {arrivals} times");
        if *status == 200 {
            assert_eq!(arrivals, 1, "{method} {seq}");
        }
    }
}

#[tokio::test]
async fn an_upstream_closing_every_reused_connection_costs_no_idempotent_request_a_502() {
    let up = Scripted::start(ok_answer(), After::DropSecond, false).await;
    // A long pool timeout: the gateway keeps every connection, so only the retry rule
    // stands between the race and the user.
    let h = gateway(up.addr, "pool_idle_timeout = \"60s\"").await;
    let results = mixed_requests(&h, 150, |_| Duration::ZERO).await;
    assert_no_idempotent_502_and_no_post_replayed(&results, &up);
    let dropped_posts = results
        .iter()
        .filter(|(m, status, _)| m == "POST" && *status == 502)
        .count();
    assert!(
        dropped_posts > 0,
        "some POSTs met a dropped connection and were answered 502, not replayed"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_as_the_pool_reuses_them_costs_no_idempotent_request_a_502(
) {
    let idle = Duration::from_millis(40);
    let up = Scripted::start(ok_answer(), After::IdleClose(idle), false).await;
    let h = gateway(up.addr, "pool_idle_timeout = \"60s\"").await;
    // Pauses sweep across the upstream's idle timeout, so requests land just before,
    // at and just after the moment it closes the connection.
    let results = mixed_requests(&h, 100, |i| Duration::from_millis(30 + (i as u64 % 21))).await;
    assert_no_idempotent_502_and_no_post_replayed(&results, &up);
    assert!(
        up.connections() > 10,
        "the upstream's idle closes were exercised ({} connections)",
        up.connections()
    );
    h.shutdown().await;
}

/// Sends one request through a gateway whose upstream reads the first request it gets,
/// then drops the connection without a byte of answer (as if it crashed mid-request).
/// Returns the status the client got and the requests the upstream read.
async fn through_an_upstream_that_drops_the_first_request(
    method: reqwest::Method,
    body: &'static str,
) -> (u16, Vec<Seen>) {
    let up = Scripted::start(ok_answer(), After::IdleClose(Duration::from_secs(10)), true).await;
    let h = gateway(up.addr, "").await;
    let r = h
        .http
        .request(method, format!("{}/up/x", h.base))
        .header("x-seq", "only")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        assert_eq!(r.text().await.unwrap(), "ok only");
    } else {
        let (_, code, _) = rejection(r).await;
        assert_eq!((status, code.as_str()), (502, "UPSTREAM_UNAVAILABLE"));
    }
    h.shutdown().await;
    (status, up.seen())
}

#[tokio::test]
async fn a_post_the_upstream_may_have_received_is_never_replayed_but_a_get_is() {
    let (status, seen) =
        through_an_upstream_that_drops_the_first_request(reqwest::Method::POST, "").await;
    assert_eq!(status, 502);
    assert_eq!(seen.len(), 1, "the empty POST was not sent again: {seen:?}");

    let (status, seen) =
        through_an_upstream_that_drops_the_first_request(reqwest::Method::POST, "payload").await;
    assert_eq!(status, 502);
    assert_eq!(seen.len(), 1, "the POST was not sent again: {seen:?}");
    assert_eq!(seen[0].body, b"payload");

    // A PUT is idempotent, but its body streamed through and cannot be sent again.
    let (status, seen) =
        through_an_upstream_that_drops_the_first_request(reqwest::Method::PUT, "streamed").await;
    assert_eq!(status, 502);
    assert_eq!(seen.len(), 1, "{seen:?}");

    // A GET meeting the same fault is sent again, on a new connection, and succeeds.
    let (status, seen) =
        through_an_upstream_that_drops_the_first_request(reqwest::Method::GET, "").await;
    assert_eq!(status, 200);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|s| s.method == "GET"));
    assert_ne!(
        seen[0].connection, seen[1].connection,
        "the retry used a new connection"
    );
}

#[tokio::test]
async fn idle_upstream_connections_are_not_reused_past_pool_idle_timeout() {
    let up = Scripted::start(
        ok_answer(),
        After::IdleClose(Duration::from_secs(30)),
        false,
    )
    .await;
    let h = gateway(up.addr, "pool_idle_timeout = \"200ms\"").await;
    assert_eq!(h.get("/up/a", None).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.get("/up/b", None).await.status(), 200);
    assert_eq!(
        up.connections(),
        2,
        "the connection idle past pool_idle_timeout was not reused"
    );
    h.shutdown().await;

    let up = Scripted::start(
        ok_answer(),
        After::IdleClose(Duration::from_secs(30)),
        false,
    )
    .await;
    let h = gateway(up.addr, "pool_max_idle_per_host = 0").await;
    for _ in 0..3 {
        assert_eq!(h.get("/up/a", None).await.status(), 200);
    }
    assert_eq!(
        up.connections(),
        3,
        "no pooling: one connection per request"
    );
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 8, 9. A CloudBase whose two endpoints disagree
// ---------------------------------------------------------------------------------------

/// What one stand-in CloudBase endpoint answers.
#[derive(Debug, Clone, Copy)]
enum Says {
    /// 200 for this user (`sub`).
    User(&'static str),
    /// 200 `{}`: introspection's "not active".
    Empty,
    /// 401 `unauthenticated`: CloudBase refuses the token.
    Unauthenticated,
    /// 500 `internal`: CloudBase failing.
    Fails,
}

/// A stand-in CloudBase serving `/auth/v1/token/introspect` and `/auth/v1/user/me`, each
/// answering as scripted, independently of the other.
struct StandIn {
    addr: SocketAddr,
    script: Arc<Mutex<(Says, Says)>>,
    calls: Arc<[AtomicUsize; 2]>,
}

impl StandIn {
    async fn start(introspect: Says, user_me: Says) -> StandIn {
        let script = Arc::new(Mutex::new((introspect, user_me)));
        let calls: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let (s, c) = (script.clone(), calls.clone());
        let (addr, _) = spawn_upstream(move |req: http::Request<hyper::body::Incoming>| {
            let (script, calls) = (s.clone(), c.clone());
            async move {
                let path = req.uri().path();
                let (which, says) = if path.ends_with("/token/introspect") {
                    (0, script.lock().unwrap().0)
                } else if path.ends_with("/user/me") {
                    (1, script.lock().unwrap().1)
                } else {
                    return json(404, r#"{"error":"not_found","error_code":5}"#.into());
                };
                calls[which].fetch_add(1, Ordering::SeqCst);
                match (which, says) {
                    (0, Says::User(sub)) => json(
                        200,
                        format!(r#"{{"token_type":"Bearer","client_id":"c","sub":"{sub}","scope":"user"}}"#),
                    ),
                    (_, Says::User(sub)) => json(
                        200,
                        format!(r#"{{"sub":"{sub}","name":"Someone","groups":["user"]}}"#),
                    ),
                    (_, Says::Empty) => json(200, "{}".into()),
                    (_, Says::Unauthenticated) => json(
                        401,
                        r#"{"error":"unauthenticated","error_code":16,"error_description":"invalid token"}"#.into(),
                    ),
                    (_, Says::Fails) => json(
                        500,
                        r#"{"error":"internal","error_code":13,"error_description":"boom"}"#.into(),
                    ),
                }
            }
        })
        .await;
        StandIn {
            addr,
            script,
            calls,
        }
    }

    fn says(&self, introspect: Says, user_me: Says) {
        *self.script.lock().unwrap() = (introspect, user_me);
    }

    fn calls(&self) -> (usize, usize) {
        (
            self.calls[0].load(Ordering::SeqCst),
            self.calls[1].load(Ordering::SeqCst),
        )
    }
}

fn json(status: u16, body: String) -> http::Response<cloudbase_gateway::response::Body> {
    let mut r = http::Response::new(cloudbase_gateway::response::full(body));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A gateway whose CloudBase is `cloudbase`, with `/api/` (auth required) routed to an
/// echo upstream and `[cache]` set by `cache`.
async fn gateway_over(cloudbase: &StandIn, cache: &str) -> Harness {
    let (echo, _) = spawn_echo_upstream().await;
    let text = config_text_with(
        "",
        &format!("base_url = \"http://{}/auth/v1\"", cloudbase.addr),
        "",
        &format!(
            "[cache]\n{cache}\n[[routes]]\nprefix = \"/api/\"\nupstream = \"http://{echo}\"\n"
        ),
    );
    Harness::start_text(&text).await
}

async fn status_and_code(r: reqwest::Response) -> (u16, String) {
    if r.status() == 200 {
        return (200, String::new());
    }
    let (status, code, _) = rejection(r).await;
    (status.as_u16(), code)
}

#[tokio::test]
async fn introspect_failing_while_user_me_says_unauthenticated_is_a_401_and_is_remembered() {
    let cloudbase = StandIn::start(Says::Fails, Says::Unauthenticated).await;
    let h = gateway_over(
        &cloudbase,
        "ttl = \"300ms\"\nnegative_ttl = \"1m\"\nstale_if_error = \"1m\"",
    )
    .await;
    let invalid = (401, "INVALID_ACCESS_TOKEN".to_owned());

    // Cold: CloudBase said no; that beats the failing introspection.
    assert_eq!(
        status_and_code(h.get("/api/x", Some("cold-token")).await).await,
        invalid
    );
    assert_eq!(
        status_and_code(h.get("/api/x", Some("cold-token")).await).await,
        invalid
    );
    assert_eq!(
        cloudbase.calls(),
        (1, 1),
        "the negative entry answered the second time"
    );

    // Warm, inside its stale window: still 401, not the stale identity.
    cloudbase.says(Says::User("u1"), Says::User("u1"));
    assert_eq!(h.get("/api/x", Some("warm-token")).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    cloudbase.says(Says::Fails, Says::Unauthenticated);
    assert_eq!(
        status_and_code(h.get("/api/x", Some("warm-token")).await).await,
        invalid
    );
    cloudbase.says(Says::User("u1"), Says::User("u1"));
    assert_eq!(
        status_and_code(h.get("/api/x", Some("warm-token")).await).await,
        invalid,
        "the negative entry was stored over the positive one"
    );

    // The reverse mix: introspection says "not active" while /user/me fails.
    cloudbase.says(Says::Empty, Says::Fails);
    let before = cloudbase.calls();
    assert_eq!(
        status_and_code(h.get("/api/x", Some("other-token")).await).await,
        invalid
    );
    assert_eq!(
        status_and_code(h.get("/api/x", Some("other-token")).await).await,
        invalid
    );
    assert_eq!(cloudbase.calls(), (before.0 + 1, before.1 + 1));
    h.shutdown().await;
}

#[tokio::test]
async fn introspection_and_profile_naming_different_users_is_a_503_counted_and_never_cached() {
    let cloudbase = StandIn::start(Says::User("u1"), Says::User("u2")).await;
    let h = gateway_over(&cloudbase, "").await;
    for round in 1..=2 {
        let r = h.get("/api/x", Some("mixed-up-token")).await;
        let (status, code, headers) = rejection(r).await;
        assert_eq!((status.as_u16(), code.as_str()), (503, "AUTH_UNAVAILABLE"));
        assert!(headers.contains_key("retry-after"));
        assert_eq!(cloudbase.calls(), (round, round), "nothing cached");
        let m = h.metrics().await;
        assert_eq!(
            metric(&m, "cloudbase_gateway_cloudbase_sub_mismatches_total"),
            round as f64
        );
    }
    // Once CloudBase agrees with itself the token works.
    cloudbase.says(Says::User("u1"), Says::User("u1"));
    assert_eq!(h.get("/api/x", Some("mixed-up-token")).await.status(), 200);
    h.shutdown().await;
}

#[test]
fn a_sub_mismatch_is_logged_with_both_users_and_never_the_token() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cloudbase = rt.block_on(StandIn::start(Says::User("u1"), Says::User("u2")));
    let (listen, admin) = (free_port(), free_port());
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{listen}"
[admin]
listen = "127.0.0.1:{admin}"
[cloudbase]
base_url = "http://{}/auth/v1"
client_id = "test-client"
[[routes]]
prefix = "/api/"
upstream = "whoami"
"#,
        cloudbase.addr
    );
    let gateway = Process::spawn(
        &config,
        &[],
        &[("RUST_LOG", "debug")],
        format!("127.0.0.1:{listen}").parse().unwrap(),
    );
    let token = "tok-4f1c9e-never-in-a-log";
    let status = rt.block_on(async {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{listen}/api/x"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 503);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = gateway.log();
        if log.contains("named different users") || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let line = log
        .lines()
        .find(|l| l.contains("named different users"))
        .unwrap_or_else(|| panic!("no warning logged:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("u1") && line.contains("u2"), "{line}");
    assert!(!log.contains(token), "the token reached the log:\n{log}");
    assert!(
        !log.contains("4f1c9e"),
        "part of the token reached the log:\n{log}"
    );
}
