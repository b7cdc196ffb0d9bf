//! Hot reload of the binary (`SIGHUP`, a change of the file): a download in flight across
//! a reload that removes its route completes, the next request on a keep-alive HTTP/1.1
//! or HTTP/2 connection is routed by the new table, a broken file leaves the old
//! configuration serving (every mistake logged with its key, counted as an error), a key
//! that needs a restart is logged and not applied, a reload of routes keeps the
//! validation cache and one of the identity headers or of CloudBase drops it, a route's
//! spent rate-limit bucket survives a reload that keeps its limit, forward-auth and the
//! relay turn on without a restart, a new sample ratio takes the next trace, a
//! ConfigMap-style `..data` swap is seen, and a renewed certificate is served to the next
//! TLS handshake (a broken one is refused).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::raw::RawResponse;
use crate::support::*;
use bytes::Bytes;
use futures_util::StreamExt;
use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Where a test's gateway listens, and its `[server]` lines besides `listen` (TLS).
struct Setup {
    addr: SocketAddr,
    admin: SocketAddr,
    emulator: SocketAddr,
    server: String,
}

impl Setup {
    /// The configuration file with `tables` (routes, `[identity]` …) after the fixed ones.
    fn text(&self, tables: &str) -> String {
        format!(
            "[server]\nlisten = \"{}\"\n{}\n[admin]\nlisten = \"{}\"\n\
             [cloudbase]\nenv_id = \"test-env\"\nclient_id = \"test-client\"\ntimeout = \"1s\"\n\
             [emulator]\nenabled = true\nlisten = \"{}\"\n{EMULATOR_TEST_HOOKS}\n{USERS}\n{tables}\n",
            self.addr, self.server, self.admin, self.emulator,
        )
    }
}

/// The binary with its embedded emulator, on ports of its own.
struct Gateway {
    process: Process,
    setup: Setup,
    addr: SocketAddr,
    admin: String,
    emulator: SocketAddr,
    http: reqwest::Client,
}

impl Gateway {
    /// Starts the binary with `server` lines and `tables` (see [`Setup::text`]).
    fn spawn(server: &str, tables: &str) -> Gateway {
        let port = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
        let setup = Setup {
            addr: port(),
            admin: port(),
            emulator: port(),
            server: server.to_owned(),
        };
        let process = Process::spawn(&setup.text(tables), &[], &[], setup.addr);
        wait_for_port(setup.emulator);
        Gateway {
            process,
            addr: setup.addr,
            admin: format!("http://{}", setup.admin),
            emulator: setup.emulator,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            setup,
        }
    }

    fn text(&self, tables: &str) -> String {
        self.setup.text(tables)
    }

    /// Writes `text` over the configuration file (as an editor or `cp` would: truncated,
    /// then written).
    fn write(&self, text: &str) {
        std::fs::write(self.process.dir.path().join("config.toml"), text).unwrap();
    }

    /// Replaces the configuration file with `text` as an editor's atomic save or a
    /// ConfigMap update does: written next to it, then renamed over it.
    fn replace(&self, text: &str) {
        let dir = self.process.dir.path();
        std::fs::write(dir.join(".config.toml.swp"), text).unwrap();
        std::fs::rename(dir.join(".config.toml.swp"), dir.join("config.toml")).unwrap();
    }

    /// `requests_total` of `route` answered 200 (`GET`, proxied).
    async fn served(&self, route: &str) -> f64 {
        let text = metrics_at(&self.http, &self.admin).await;
        metric(
            &text,
            &format!(
                "cloudbase_gateway_requests_total{{route=\"{route}\",method=\"GET\",status=\"200\",kind=\"proxy\"}}"
            ),
        )
    }

    fn hangup(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &self.process.pid().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -HUP failed");
    }

    async fn reloads(&self, result: &str) -> f64 {
        let text = metrics_at(&self.http, &self.admin).await;
        metric(
            &text,
            &format!("cloudbase_gateway_config_reloads_total{{result=\"{result}\"}}"),
        )
    }

    /// Waits (up to 20 s) until `n` reloads ended with `result`.
    async fn wait_for_reloads(&self, result: &str, n: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.reloads(result).await < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {result} reload #{n}:\n{}",
                self.process.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Signs `demo` in with the embedded emulator.
    async fn demo_token(&self) -> String {
        sign_in(&emulator_client(self.emulator, ""), "demo", "demo-password")
            .await
            .access_token
    }

    /// Calls the emulator answered on `endpoint` so far.
    async fn calls(&self, endpoint: &str) -> u64 {
        emulator_stats(&self.http, self.emulator).await["calls"][endpoint]
            .as_u64()
            .unwrap_or(0)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("http://{}{path}", self.addr));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request reaches the gateway")
    }
}

/// An open route to the built-in echo upstream.
fn open_route(prefix: &str) -> String {
    format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"whoami\"\nauth = \"none\"\n")
}

/// One keep-alive HTTP/1.1 connection, for requests before and after a reload.
struct KeepAlive(TcpStream);

impl KeepAlive {
    async fn get(&mut self, path: &str) -> RawResponse {
        let head = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n");
        self.0.write_all(head.as_bytes()).await.expect("write");
        let mut bytes = Vec::new();
        let read = async {
            while !http1_response_complete(&bytes) {
                let mut buf = [0u8; 4096];
                let n = self.0.read(&mut buf).await.expect("read");
                assert!(n > 0, "the gateway closed the keep-alive connection");
                bytes.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("an answer within 10 s");
        RawResponse::parse(&bytes).expect("an HTTP/1.1 answer")
    }
}

/// One HTTP/2 (h2c) connection, for streams before and after a reload: a request on a
/// connection the gateway closed fails.
struct H2(hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>);

impl H2 {
    async fn open(addr: SocketAddr) -> H2 {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("h2c handshake");
        tokio::spawn(conn);
        H2(sender)
    }

    async fn status(&mut self, path: &str) -> u16 {
        let req = http::Request::get(path)
            .body(http_body_util::Empty::new())
            .unwrap();
        let sent = self.0.send_request(req);
        let response = tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .expect("an answer within 10 s")
            .expect("the gateway kept the HTTP/2 connection");
        response.status().as_u16()
    }
}

const CHUNK: usize = 64 << 10;
const CHUNKS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_in_flight_across_a_reload_completes_and_the_next_request_takes_the_new_routes()
{
    // The upstream sends one chunk, then holds the rest until the test lets it go.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let release = gate.clone();
    let (upstream, _) = spawn_upstream(move |_req: http::Request<hyper::body::Incoming>| {
        let gate = gate.clone();
        async move {
            let chunk = Bytes::from(vec![b'z'; CHUNK]);
            let stream = futures_util::stream::unfold(0usize, move |sent| {
                let (gate, chunk) = (gate.clone(), chunk.clone());
                async move {
                    if sent == CHUNKS {
                        return None;
                    }
                    if sent == 1 {
                        gate.acquire().await.expect("gate").forget();
                    }
                    Some((Ok::<_, std::io::Error>(Frame::data(chunk)), sent + 1))
                }
            });
            Response::new(StreamBody::new(stream.map(|f| f.map_err(Into::into))).boxed_unsync())
        }
    })
    .await;
    let files = format!(
        "[[routes]]\nprefix = \"/files/\"\nupstream = \"http://{upstream}\"\nauth = \"none\"\n"
    );
    let gw = Gateway::spawn("", &(files + &open_route("/old/")));

    let mut conn = KeepAlive(TcpStream::connect(gw.addr).await.unwrap());
    assert_eq!(conn.get("/old/x").await.status, 200);
    let mut h2 = H2::open(gw.addr).await;
    assert_eq!(h2.status("/old/x").await, 200);
    let download = gw.get("/files/big", None).await;
    assert_eq!(download.status(), 200);
    let mut body = download.bytes_stream();
    let first = body.next().await.expect("a first chunk").expect("read");
    let mut received = first.len();

    // The new table has neither the old route nor the download's.
    gw.write(&gw.text(&open_route("/new/")));
    gw.wait_for_reloads("ok", 1.0).await;

    // The connections opened before the reload: their next requests use the new table.
    assert_eq!(conn.get("/new/x").await.status, 200);
    assert_eq!(conn.get("/old/x").await.status, 404);
    assert_eq!(h2.status("/new/x").await, 200);
    assert_eq!(h2.status("/old/x").await, 404);
    assert_eq!(gw.get("/files/big", None).await.status(), 404);
    // The download started before it finishes, whole, on the route it started on.
    release.add_permits(1);
    while let Some(chunk) = body.next().await {
        received += chunk.expect("the download continues").len();
    }
    assert_eq!(received, CHUNK * CHUNKS);
    assert_eq!(gw.reloads("error").await, 0.0);
    assert!(gw.process.log().contains("configuration reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_leaves_the_old_configuration_serving_and_logs_each_mistake_with_its_key() {
    let gw = Gateway::spawn("", &open_route("/api/"));
    assert_eq!(gw.get("/api/x", None).await.status(), 200);

    let broken = gw.text(
        "[[routes]]\nprefix = \"/api/\"\nupstream = \"ftp://x\"\n\
         [[routes]]\nprefix = \"/v2/\"\nupstream = \"whoami\"\nauth = \"maybe\"\n",
    );
    gw.write(&broken);
    gw.wait_for_reloads("error", 1.0).await;
    assert_eq!(
        gw.get("/api/x", None).await.status(),
        200,
        "the old routes serve"
    );
    assert_eq!(gw.get("/v2/x", None).await.status(), 404);
    // Each mistake as `check` words it, key first.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_cloudbase-gateway"))
        .arg("--config")
        .arg(gw.process.dir.path().join("config.toml"))
        .arg("check")
        .output()
        .expect("check runs");
    let check = String::from_utf8_lossy(&check.stderr).into_owned();
    let mistakes: Vec<&str> = check.lines().filter_map(|l| l.strip_prefix("  ")).collect();
    assert_eq!(mistakes.len(), 2, "{check}");
    let log = gw.process.log();
    for (mistake, key) in mistakes
        .iter()
        .zip(["routes[0].upstream", "routes[1].auth"])
    {
        assert!(mistake.starts_with(key), "{check}");
        assert!(log.contains(mistake), "{mistake} not logged:\n{log}");
    }
    assert_eq!(gw.reloads("ok").await, 0.0);

    // Not even TOML: refused the same way, on SIGHUP too.
    gw.write(&gw.text("[[routes]\nprefix = \"/v3/\"\n"));
    gw.hangup();
    gw.wait_for_reloads("error", 2.0).await;
    assert_eq!(gw.get("/api/x", None).await.status(), 200);
    assert_eq!(gw.get("/v3/x", None).await.status(), 404);

    // Fixed (saved as editors do: a new file renamed over the old), it loads; the route
    // kept keeps its series counting. (The write and the SIGHUP above may have counted
    // as one reload or two.)
    let errors = gw.reloads("error").await;
    gw.replace(&gw.text(&(open_route("/api/") + &open_route("/v2/"))));
    gw.wait_for_reloads("ok", 1.0).await;
    assert_eq!(gw.get("/v2/x", None).await.status(), 200);
    assert_eq!(gw.get("/api/x", None).await.status(), 200);
    assert_eq!(gw.served("/api/").await, 4.0, "one series across reloads");
    assert_eq!(gw.served("/v2/").await, 1.0);
    assert_eq!(gw.reloads("error").await, errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_key_that_needs_a_restart_is_logged_and_not_applied() {
    let gw = Gateway::spawn("", &open_route("/api/"));
    // Nothing written: only the signal can cause this one.
    gw.hangup();
    gw.wait_for_reloads("ok", 1.0).await;
    assert!(gw.process.log().contains("SIGHUP"));

    // A file change: a new admin address and connection bound (they need a restart) and
    // a new route (it does not).
    let moved = format!("127.0.0.1:{}", free_port());
    let text = gw
        .text(&(open_route("/api/") + &open_route("/v2/")))
        .replace(&gw.setup.admin.to_string(), &moved)
        .replacen("[server]\n", "[server]\nmax_connections = 7\n", 1);
    gw.write(&text);
    gw.wait_for_reloads("ok", 2.0).await;
    assert_eq!(gw.get("/v2/x", None).await.status(), 200);
    let log = gw.process.log();
    for key in ["admin.listen", "server.max_connections"] {
        assert!(
            log.lines()
                .any(|l| l.contains(key) && l.contains("needs a restart")),
            "{key}:\n{log}"
        );
    }
    assert!(
        !log.lines()
            .any(|l| l.contains("routes") && l.contains("needs a restart")),
        "routes reload:\n{log}"
    );
    assert!(
        TcpStream::connect(&moved).await.is_err(),
        "the admin listener stays where it is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_routes_keeps_the_cache_and_one_of_the_identity_headers_or_cloudbase_drops_it()
{
    let required = "[[routes]]\nprefix = \"/api/\"\nupstream = \"whoami\"\n";
    let gw = Gateway::spawn("", required);
    let token = gw.demo_token().await;
    let echo = |r: reqwest::Response| async move { r.json::<Value>().await.expect("echo") };
    let first = echo(gw.get("/api/x", Some(&token)).await).await;
    assert_eq!(first["headers"]["x-user-username"], "demo");
    assert_eq!(gw.calls("introspect").await, 1);

    gw.write(&gw.text(&(required.to_owned() + &open_route("/v2/"))));
    gw.wait_for_reloads("ok", 1.0).await;
    gw.get("/api/x", Some(&token)).await;
    assert_eq!(
        gw.calls("introspect").await,
        1,
        "routes alone keep the cache"
    );

    let tenant = "[identity.headers]\n\"X-Tenant\" = \"client_id\"\n";
    gw.write(&gw.text(&(required.to_owned() + tenant)));
    gw.wait_for_reloads("ok", 2.0).await;
    let after = echo(gw.get("/api/x", Some(&token)).await).await;
    assert_eq!(
        gw.calls("introspect").await,
        2,
        "a new mapping asks CloudBase again"
    );
    assert_eq!(after["headers"]["x-tenant"], "test-client");

    // CloudBase's call bounds keep it; another CloudBase client identity drops it.
    let with_tenant = required.to_owned() + tenant;
    let text = gw
        .text(&with_tenant)
        .replace("timeout = \"1s\"", "timeout = \"3s\"");
    gw.write(&text);
    gw.wait_for_reloads("ok", 3.0).await;
    gw.get("/api/x", Some(&token)).await;
    assert_eq!(
        gw.calls("introspect").await,
        2,
        "cloudbase.timeout keeps it"
    );
    gw.write(&text.replace(
        "client_id = \"test-client\"\n",
        "client_id = \"test-client\"\ndevice_id = \"gw-2\"\n",
    ));
    gw.wait_for_reloads("ok", 4.0).await;
    gw.get("/api/x", Some(&token)).await;
    assert_eq!(
        gw.calls("introspect").await,
        3,
        "cloudbase.device_id drops it"
    );
    assert!(gw.process.log().contains("validation cache dropped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_forward_auth_and_the_relay_on_for_the_next_request() {
    let app = "[[routes]]\nprefix = \"/app/\"\nupstream = \"whoami\"\n";
    let gw = Gateway::spawn("", app);
    let sign_in = || {
        gw.http
            .post(format!("http://{}/auth/v1/signin", gw.addr))
            .header("content-type", "application/json")
            .header("x-device-id", "device-1234567890abcdef")
            .body(r#"{"username":"demo","password":"demo-password"}"#)
            .send()
    };
    // Envoy's shape: the original path follows the endpoint's.
    let decide = || gw.get("/_gateway/auth/app/x", None);
    assert_eq!(decide().await.status(), 404, "a path no route matches");
    assert_eq!(sign_in().await.unwrap().status(), 404);

    gw.write(&gw.text(&format!(
        "{app}[forward_auth]\nenabled = true\n[relay]\nenabled = true\n"
    )));
    gw.wait_for_reloads("ok", 1.0).await;
    assert_eq!(decide().await.status(), 401, "forward-auth decides /app/x");
    let signed_in = sign_in().await.unwrap();
    assert_eq!(signed_in.status(), 200, "relayed to the emulator");
    let body: Value = signed_in.json().await.unwrap();
    let token = body["access_token"].as_str().expect("a token");
    assert_eq!(gw.get("/app/x", Some(token)).await.status(), 200);
}

/// A self-signed certificate for `localhost`, written over `dir/cert.pem` and `key.pem`;
/// returns it for a client to trust.
fn certificate(dir: &std::path::Path) -> reqwest::Certificate {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap()
}

fn trusting(root: reqwest::Certificate, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .resolve("localhost", addr)
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_to_the_next_tls_handshake_after_sighup_and_a_broken_one_is_refused(
) {
    let certs = tempfile::tempdir().unwrap();
    let old = certificate(certs.path());
    let server = format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        certs.path().join("cert.pem"),
        certs.path().join("key.pem")
    );
    let gw = Gateway::spawn(&server, &open_route("/api/"));
    let url = format!("https://localhost:{}/api/x", gw.addr.port());
    let before = trusting(old.clone(), gw.addr);
    assert_eq!(before.get(&url).send().await.unwrap().status(), 200);

    // Renewed in place (as cert-manager or certbot do), then SIGHUP.
    let new = certificate(certs.path());
    gw.hangup();
    gw.wait_for_reloads("ok", 1.0).await;

    let new_root = new.clone();
    let r = trusting(new, gw.addr).get(&url).send().await;
    assert_eq!(r.expect("the new certificate is served").status(), 200);
    assert!(
        trusting(old, gw.addr).get(&url).send().await.is_err(),
        "a new handshake no longer gets the old certificate"
    );
    // The connection made with the old one is kept.
    assert_eq!(before.get(&url).send().await.unwrap().status(), 200);

    // A key that is not PEM: refused, and the pair in force stays.
    std::fs::write(certs.path().join("key.pem"), "not a key").unwrap();
    gw.hangup();
    gw.wait_for_reloads("error", 1.0).await;
    let r = trusting(new_root, gw.addr).get(&url).send().await;
    assert_eq!(r.expect("the renewed pair stays").status(), 200);
    assert!(gw.process.log().contains("key.pem"), "the file is named");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_an_unchanged_rate_limit_spent_and_a_changed_one_starts_full() {
    let limited = |limit: &str| {
        format!(
            "[[routes]]\nprefix = \"/api/\"\nupstream = \"whoami\"\nauth = \"none\"\n\
             rate_limit = \"{limit}\"\nrate_limit_burst = 1\n"
        )
    };
    let gw = Gateway::spawn("", &limited("1/h"));
    assert_eq!(gw.get("/api/x", None).await.status(), 200);
    assert_eq!(gw.get("/api/x", None).await.status(), 429);

    // Another route added: this address's bucket on /api/ stays spent.
    gw.write(&gw.text(&(limited("1/h") + &open_route("/v2/"))));
    gw.wait_for_reloads("ok", 1.0).await;
    assert_eq!(gw.get("/v2/x", None).await.status(), 200);
    assert_eq!(
        gw.get("/api/x", None).await.status(),
        429,
        "a reload is no fresh burst"
    );

    // The limit changed: new buckets, full.
    gw.write(&gw.text(&(limited("2/h") + &open_route("/v2/"))));
    gw.wait_for_reloads("ok", 2.0).await;
    assert_eq!(gw.get("/api/x", None).await.status(), 200);
    assert_eq!(gw.get("/api/x", None).await.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_the_sample_ratio_applies_to_the_next_new_trace() {
    let (upstream, _) = spawn_echo_upstream().await;
    // No collector listens: nothing sampled is exported within the test anyway.
    let port = free_port();
    let telemetry = |host: &str, ratio: &str| {
        format!(
            "[[routes]]\nprefix = \"/api/\"\nupstream = \"http://{upstream}\"\nauth = \"none\"\n\
             [telemetry]\notlp_endpoint = \"http://{host}:{port}\"\nsample_ratio = {ratio}\n"
        )
    };
    let gw = Gateway::spawn("", &telemetry("127.0.0.1", "0.0"));
    // The upstream's `traceparent` carries the decision: flags `00` dropped, `01` sampled.
    let flags = || async {
        let echo: Value = gw.get("/api/x", None).await.json().await.expect("echo");
        let traceparent = echo["headers"]["traceparent"]
            .as_str()
            .expect("traceparent");
        traceparent.rsplit('-').next().expect("flags").to_owned()
    };
    assert_eq!(flags().await, "00");

    // Another collector too: that needs a restart.
    gw.write(&gw.text(&telemetry("127.0.0.2", "1.0")));
    gw.wait_for_reloads("ok", 1.0).await;
    assert_eq!(flags().await, "01");
    let log = gw.process.log();
    assert!(
        log.lines()
            .any(|l| l.contains("telemetry.otlp_endpoint") && l.contains("needs a restart")),
        "another collector is not taken on a reload:\n{log}"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_that_swaps_its_data_link_reloads_and_a_relink_to_the_same_configuration_does_not(
) {
    use std::os::unix::fs::symlink;
    let gw = Gateway::spawn("", &open_route("/api/"));
    let dir = gw.process.dir.path();
    let version = |name: &str, text: &str| {
        std::fs::create_dir(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("config.toml"), text).unwrap();
    };
    // The kubelet's layout for a mounted ConfigMap: `config.toml -> ..data/config.toml`,
    // `..data -> ..v1`; here holding the text in force.
    version("..v1", &gw.text(&open_route("/api/")));
    symlink("..v1", dir.join("..data")).unwrap();
    symlink("..data/config.toml", dir.join("config.toml.link")).unwrap();
    std::fs::rename(dir.join("config.toml.link"), dir.join("config.toml")).unwrap();
    // Past the debounce, so that this (no) change is read on its own.
    tokio::time::sleep(Duration::from_millis(600)).await;

    // An update: a new version directory, then `..data` swapped to it by rename.
    version(
        "..v2",
        &gw.text(&(open_route("/api/") + &open_route("/v2/"))),
    );
    symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    gw.wait_for_reloads("ok", 1.0).await;
    assert_eq!(gw.get("/v2/x", None).await.status(), 200);
    assert_eq!(
        gw.reloads("ok").await,
        1.0,
        "the relink to the same text reloaded nothing:\n{}",
        gw.process.log()
    );
}
