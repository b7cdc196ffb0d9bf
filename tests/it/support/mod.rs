//! The one harness of the gateway's integration tests: a real gateway, the real emulator
//! and real upstreams, all on 127.0.0.1 with ports picked by the OS.

pub mod fleet;
pub mod ingress;
pub mod raw;
pub mod redis_server;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cloudbase_auth::types::TokenResponse;
use cloudbase_auth::{CallOptions, Client, Secret};
use cloudbase_emulator::Emulator;
use cloudbase_gateway::app::{self, Running};
use cloudbase_gateway::config::Config;
use cloudbase_gateway::http::{Body, BoxError};
use cloudbase_gateway::proxy::whoami;
use cloudbase_gateway::stack::rescue::RescueLayer;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{Layer as _, ServiceExt as _};

/// Seeded emulator users, as TOML. `demo` is an ordinary user; `zhang` has a non-ASCII
/// name; `admin` is in group admin; `lapsed` was in admin until 2001; `crlf` has a name
/// holding CR/LF.
pub const USERS: &str = r#"
[[emulator.users]]
username = "demo"
password = "demo-password"
name = "Demo User"
email = "demo@example.com"
groups = ["user"]

[[emulator.users]]
username = "zhang"
password = "zhang-password"
name = "手机用户"
groups = ["user"]

[[emulator.users]]
username = "admin"
password = "admin-password"
name = "Admin"
groups = ["user", { id = "admin", expires_at = "2099-01-01T00:00:00Z" }]

[[emulator.users]]
username = "lapsed"
password = "lapsed-password"
name = "Lapsed"
groups = ["user", { id = "admin", expires_at = "2001-01-01T00:00:00Z" }]

[[emulator.users]]
username = "crlf"
password = "crlf-password"
name = "evil\r\nX-Injected: yes"
"#;

/// The `[emulator]` line that turns on `/__emulator/stats` and `/__emulator/fault` (off by
/// default, so no web page can drive them). [`Cfg`] sets it; literal test configs that
/// call the hooks over HTTP include it; in-process tests can use `Emulator::set_fault` /
/// `calls` without it.
pub const EMULATOR_TEST_HOOKS: &str = "test_hooks = true";

/// A gateway with its embedded emulator.
pub struct Harness {
    pub running: Option<Running>,
    pub emulator: Emulator,
    /// `http://127.0.0.1:PORT` of the gateway.
    pub base: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin: String,
    /// A client for the emulator (sign-ins, revocations).
    pub cloudbase: Client,
    pub http: reqwest::Client,
}

/// The one builder of test configurations. Each field holds extra lines of its table;
/// a key set there replaces the default below, anything else is added. Defaults: the
/// listeners on `127.0.0.1:0`; `[cloudbase]` env `test-env`, client `test-client`, calls
/// bounded at 1 s; the emulator embedded on `127.0.0.1:0` with [`USERS`] and its HTTP test
/// hooks on ([`EMULATOR_TEST_HOOKS`]). `emulator: "enabled = false"` leaves the emulator
/// out (no users). `[cache]` appears only when `cache` is set; `routes` (the `[[routes]]`
/// tables, or any other tables) comes last, as given.
#[derive(Default, Clone, Copy)]
pub struct Cfg<'a> {
    pub server: &'a str,
    pub admin: &'a str,
    pub cloudbase: &'a str,
    pub cache: &'a str,
    pub emulator: &'a str,
    pub routes: &'a str,
}

/// Whether `lines` set `key` (a line `key = …`).
fn sets(lines: &str, key: &str) -> bool {
    lines.lines().any(|l| {
        l.split_once('=')
            .is_some_and(|(k, _)| k.trim() == key && !l.trim_start().starts_with('#'))
    })
}

/// `[name]`, then each default `key = value` that `lines` do not set, then `lines`.
fn table(name: &str, defaults: &[(&str, &str)], lines: &str) -> String {
    let mut out = format!("[{name}]\n");
    for (key, value) in defaults {
        if !sets(lines, key) {
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    out.push_str(lines);
    out.push('\n');
    out
}

impl Cfg<'_> {
    /// Only `[[routes]]` (or other trailing tables) differ from the defaults.
    pub fn routes(routes: &str) -> Cfg<'_> {
        Cfg {
            routes,
            ..Cfg::default()
        }
    }

    pub fn text(&self) -> String {
        let any = "\"127.0.0.1:0\"";
        let mut text = table("server", &[("listen", any)], self.server);
        text.push_str(&table("admin", &[("listen", any)], self.admin));
        text.push_str(&table(
            "cloudbase",
            &[
                ("env_id", "\"test-env\""),
                ("client_id", "\"test-client\""),
                ("timeout", "\"1s\""),
            ],
            self.cloudbase,
        ));
        if !self.cache.is_empty() {
            text.push_str(&table("cache", &[], self.cache));
        }
        if self.emulator.contains("enabled = false") {
            text.push_str(&table("emulator", &[], self.emulator));
        } else {
            text.push_str(&table(
                "emulator",
                &[("enabled", "true"), ("listen", any), ("test_hooks", "true")],
                self.emulator,
            ));
            text.push_str(USERS);
        }
        text.push_str(self.routes);
        text.push('\n');
        text
    }

    pub fn config(&self) -> Config {
        let text = self.text();
        Config::from_toml_str(&text).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{text}"))
    }

    /// The gateway in-process (see [`Harness`]).
    pub async fn start(&self) -> Harness {
        Harness::start_with(self.config()).await
    }
}

/// A client of the emulator at `addr` as `test-client` (sign-ins, revocations), with
/// `client_secret` (empty: none).
pub fn emulator_client(addr: SocketAddr, client_secret: &str) -> Client {
    Client::builder(format!("http://{addr}/auth/v1"))
        .client_id("test-client")
        .client_secret(Secret::new(client_secret))
        .build()
        .expect("client")
}

/// Signs `username` in with `password` through `client`; panics on failure.
pub async fn sign_in(client: &Client, username: &str, password: &str) -> TokenResponse {
    client
        .signin_password(username, password, &CallOptions::default())
        .await
        .unwrap_or_else(|e| panic!("sign-in of {username} failed: {e}"))
}

impl Harness {
    /// Starts a gateway from [`Cfg::routes`]`(routes)`.
    pub async fn start(routes: &str) -> Harness {
        Cfg::routes(routes).start().await
    }

    pub async fn start_with(config: Config) -> Harness {
        let running = app::start(config, std::future::pending())
            .await
            .expect("gateway starts");
        let emulator = running.emulator.clone().expect("emulator embedded");
        let emulator_addr = running.emulator_addr.expect("emulator address");
        Harness {
            base: format!("http://{}", running.addr),
            admin: format!("http://{}", running.admin_addr),
            running: Some(running),
            emulator,
            cloudbase: emulator_client(emulator_addr, ""),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("reqwest"),
        }
    }

    pub async fn sign_in(&self, username: &str, password: &str) -> TokenResponse {
        sign_in(&self.cloudbase, username, password).await
    }

    /// Signs `demo` in and returns the access token.
    pub async fn demo_token(&self) -> String {
        self.sign_in("demo", "demo-password").await.access_token
    }

    pub fn calls(&self, endpoint: &str) -> u64 {
        self.emulator.calls(endpoint)
    }

    /// `GET {base}{path}` with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request reaches the gateway")
    }

    pub async fn metrics(&self) -> String {
        metrics_at(&self.http, &self.admin).await
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// `GET {admin}/metrics` (`admin` is `http://HOST:PORT` of an admin listener).
pub async fn metrics_at(http: &reqwest::Client, admin: &str) -> String {
    http.get(format!("{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

/// `GET http://{emulator}/__emulator/stats` (the test hooks must be on: see
/// [`EMULATOR_TEST_HOOKS`]).
pub async fn emulator_stats(http: &reqwest::Client, emulator: SocketAddr) -> serde_json::Value {
    http.get(format!("http://{emulator}/__emulator/stats"))
        .send()
        .await
        .expect("emulator stats")
        .json()
        .await
        .expect("emulator stats body")
}

/// The value of one metric line (`name{labels}`) in Prometheus text, 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().expect("metric value"))
}

/// A real upstream on 127.0.0.1: every request goes to `handler`. Returns its address
/// and a counter of requests served.
pub async fn spawn_upstream<F, Fut>(handler: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let count = Arc::new(AtomicUsize::new(0));
    let served = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            let served = served.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    served.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, count)
}

/// An upstream that echoes what it received as JSON: the gateway's own `whoami`, its
/// refusals (a body it cannot read) rendered by the gateway's rescue layer.
pub async fn spawn_echo_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    spawn_upstream(echo).await
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
    let whoami = RescueLayer.layer(tower::service_fn(whoami::respond));
    // Boxed at once: proving the unboxed future `Send` trips rustc's higher-ranked
    // lifetime check (rust-lang/rust#110338).
    let answer: Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>> =
        Box::pin(whoami.oneshot(req));
    match answer.await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Whether a process's log says a port it was given was taken in the meantime (between
/// [`free_port`] and its bind, another socket can get the port): then retry on new ports.
pub fn address_in_use(log: &str) -> bool {
    log.to_ascii_lowercase().contains("address already in use")
}

/// A free port on 127.0.0.1 that no other test of this binary gets, for a process that
/// must be told its port before it binds (the binary, `redis-server`).
///
/// Not `bind(0)`-and-release: the kernel hands such ports out again to any socket, and
/// with every test in one binary another test's `bind(0)` took one between its release
/// and the child's bind. These come in turn from 20000-29999, below the kernel's ephemeral
/// range (32768 and up, where `bind(0)` and outgoing connections take theirs), starting at
/// an offset of the process id so that two test binaries running at once rarely meet;
/// each is checked free by binding it.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let start = std::process::id() as usize * 97;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((start + n) % 10_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The `cloudbase-gateway` binary running as a child process; killed on drop.
pub struct Process {
    pub child: std::process::Child,
    pub dir: tempfile::TempDir,
}

impl Process {
    /// Writes `config` to a temp dir and runs `cloudbase-gateway --config <file> args…`,
    /// with stderr sent to `stderr.log` in that dir. Waits until `wait_for` accepts.
    pub fn spawn(
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
        wait_for: SocketAddr,
    ) -> Process {
        Self::try_spawn(config, args, env, wait_for)
            .unwrap_or_else(|log| panic!("the binary exited early:\n{log}"))
    }

    /// Like [`Process::spawn`], but a binary that exits before `wait_for` accepts is an
    /// `Err` with its log (see [`address_in_use`] for retrying a port taken meanwhile).
    pub fn try_spawn(
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
        wait_for: SocketAddr,
    ) -> Result<Process, String> {
        let command = std::process::Command::new(env!("CARGO_BIN_EXE_cloudbase-gateway"));
        Self::try_spawn_command(command, config, args, env, wait_for)
    }

    /// Like [`Process::spawn`], with the binary confined to one CPU (`taskset -c 0`).
    pub fn spawn_on_one_cpu(config: &str, env: &[(&str, &str)], wait_for: SocketAddr) -> Process {
        let mut command = std::process::Command::new("taskset");
        command
            .args(["-c", "0"])
            .arg(env!("CARGO_BIN_EXE_cloudbase-gateway"));
        Self::try_spawn_command(command, config, &[], env, wait_for)
            .unwrap_or_else(|log| panic!("the binary exited early:\n{log}"))
    }

    /// `command` (the binary, or a wrapper with the binary as its last argument so far)
    /// with `--config <file> args…` added; see [`Process::try_spawn`].
    fn try_spawn_command(
        mut command: std::process::Command,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
        wait_for: SocketAddr,
    ) -> Result<Process, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = command
            .arg("--config")
            .arg(&path)
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("binary runs");
        let mut process = Process { child, dir };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(wait_for).is_err() {
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(format!("exit {status}:\n{}", process.log()));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{wait_for} never opened:\n{}",
                process.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(process)
    }

    /// Runs `cloudbase-gateway emulator --listen ADDR` with `config` on a free port.
    pub fn emulator(config: &str) -> (Process, SocketAddr) {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let process = Process::spawn(
            config,
            &["emulator", "--listen", &addr.to_string()],
            &[],
            addr,
        );
        (process, addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM");
        kb * 1024
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -TERM failed");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 20 s) until something accepts connections at `addr`.
fn try_wait_for_port(addr: SocketAddr) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// Waits until something accepts connections at `addr`; panics after 20 s.
pub fn wait_for_port(addr: SocketAddr) {
    assert!(try_wait_for_port(addr), "{addr} never opened");
}

/// Reads one of the gateway's own rejections: checks the JSON envelope (`code`, a
/// `message`, `requestId` equal to the `x-request-id` header, `Content-Type`) and returns
/// the status, the code and the headers.
pub async fn rejection(
    r: reqwest::Response,
) -> (http::StatusCode, String, reqwest::header::HeaderMap) {
    let status = r.status();
    let headers = r.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    let body: serde_json::Value = r.json().await.expect("JSON envelope");
    assert_eq!(
        body["requestId"].as_str().unwrap(),
        headers["x-request-id"].to_str().unwrap(),
        "requestId in the body is the x-request-id header"
    );
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    (status, body["code"].as_str().unwrap().to_owned(), headers)
}

/// Whether `buf` holds a whole HTTP/1.1 response with a `Content-Length` body (none
/// counts as 0): for raw-socket tests that keep the connection open after one answer.
pub fn http1_response_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return false;
    };
    let len = text[..head_end]
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().expect("a Content-Length"))
        })
        .unwrap_or(0);
    buf.len() >= head_end + 4 + len
}

/// Polls `check` every 10 ms until it holds; panics after `within`. Returns how long it
/// took.
pub async fn eventually<F, Fut>(
    within: std::time::Duration,
    what: &str,
    mut check: F,
) -> std::time::Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "{what} not within {within:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    start.elapsed()
}
