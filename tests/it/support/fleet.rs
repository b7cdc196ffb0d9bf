//! Several gateway replicas as a fleet runs them: the real binary, one process per replica,
//! sharing a real `redis-server` (`[cache.redis]`) and one standalone emulator (with its
//! test hooks, so its call counters tell how often "CloudBase" was asked, whichever
//! replica asked).

use std::net::SocketAddr;
use std::time::Duration;

use cloudbase_auth::{CallOptions, Client};
use serde_json::Value;

use super::redis_server::RedisServer;
use super::{
    address_in_use, emulator_client, eventually, free_port, metric, wait_for_port, Process, USERS,
};

/// The `hmac_key` every replica of a fleet shares.
pub const HMAC_KEY: &str = "fleet-test-hmac-key-0123456789abcdef";

/// What differs between fleets. `env_id`: CloudBase's (default `test-env`); `cache`:
/// extra `[cache]` lines; `redis`: extra `[cache.redis]` lines (a key set there replaces
/// the default); `tables`: tables after the defaults (`[[routes]]` replace the default
/// route, `/api/` on `whoami`); `users`: the emulator's `[[emulator.users]]` (default
/// [`USERS`]).
#[derive(Default, Clone, Copy)]
pub struct FleetCfg<'a> {
    pub env_id: &'a str,
    pub cache: &'a str,
    pub redis: &'a str,
    pub tables: &'a str,
    pub users: &'a str,
}

/// One standalone emulator, one `redis-server`, and `n` gateway processes on them.
pub struct Fleet {
    pub redis: RedisServer,
    /// The emulator's address (the replicas' `cloudbase.base_url`).
    pub emulator: SocketAddr,
    _emulator: Process,
    pub replicas: Vec<Replica>,
    /// A client of the emulator (sign-ins, revocations).
    pub cloudbase: Client,
    pub http: reqwest::Client,
}

/// One gateway process of a fleet.
pub struct Replica {
    pub process: Process,
    /// `http://127.0.0.1:PORT` of its public listener.
    pub base: String,
    /// `http://127.0.0.1:PORT` of its admin listener.
    pub admin: String,
    http: reqwest::Client,
}

/// Whether `lines` set `key` (a line `key = …`).
fn sets(lines: &str, key: &str) -> bool {
    lines
        .lines()
        .any(|l| l.split_once('=').is_some_and(|(k, _)| k.trim() == key))
}

impl FleetCfg<'_> {
    fn env_id(&self) -> &str {
        if self.env_id.is_empty() {
            "test-env"
        } else {
            self.env_id
        }
    }
}

impl Fleet {
    /// Starts the emulator, Redis and `n` replicas, and waits until every replica is
    /// subscribed to the others' purges.
    pub async fn start(n: usize, cfg: FleetCfg<'_>) -> Fleet {
        let users = if cfg.users.is_empty() {
            USERS
        } else {
            cfg.users
        };
        let (emulator_process, emulator) = Process::emulator(&format!(
            "[cloudbase]\nenv_id = \"{}\"\nclient_id = \"test-client\"\n\
             [emulator]\ntest_hooks = true\naccess_token_ttl = \"2h\"\n{users}",
            cfg.env_id()
        ));
        let redis = RedisServer::start();
        let replicas = (0..n)
            .map(|_| Replica::spawn(&cfg, emulator, &redis.url()))
            .collect();
        let fleet = Fleet {
            redis,
            emulator,
            _emulator: emulator_process,
            replicas,
            cloudbase: emulator_client(emulator, ""),
            http: http(),
        };
        for replica in &fleet.replicas {
            replica.subscribed().await;
        }
        fleet
    }

    /// Signs `username` in at the emulator; the access token and the user's `sub`.
    pub async fn sign_in(&self, username: &str, password: &str) -> (String, String) {
        let t = super::sign_in(&self.cloudbase, username, password).await;
        (t.access_token, t.sub)
    }

    /// Revokes `token` at CloudBase (the emulator), as a console or another backend would:
    /// no gateway sees it.
    pub async fn revoke_at_cloudbase(&self, token: &str) {
        self.cloudbase
            .revoke(token, &CallOptions::default())
            .await
            .expect("the emulator revokes");
    }

    /// `(introspect, user/me)` calls the emulator has answered, from every replica.
    pub async fn cloudbase_calls(&self) -> (u64, u64) {
        let stats: Value = self
            .http
            .get(format!("http://{}/__emulator/stats", self.emulator))
            .send()
            .await
            .expect("emulator stats")
            .json()
            .await
            .expect("stats JSON");
        let n = |name: &str| stats["calls"][name].as_u64().expect("a count");
        (n("introspect"), n("user_me"))
    }
}

impl Replica {
    /// Runs one replica on fresh ports (others if a port was taken before it bound).
    fn spawn(cfg: &FleetCfg<'_>, emulator: SocketAddr, redis_url: &str) -> Replica {
        let mut last = String::new();
        for _ in 0..3 {
            let (gateway, admin) = (local(free_port()), local(free_port()));
            let config = replica_config(cfg, gateway, admin, emulator, redis_url);
            match Process::try_spawn(&config, &[], &[], gateway) {
                Ok(process) => {
                    wait_for_port(admin);
                    return Replica {
                        process,
                        base: format!("http://{gateway}"),
                        admin: format!("http://{admin}"),
                        http: http(),
                    };
                }
                Err(log) if address_in_use(&log) => last = log,
                Err(log) => panic!("a replica did not start:\n{log}\n{config}"),
            }
        }
        panic!("no free ports after three tries: {last}")
    }

    /// `GET {base}{path}` with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request reaches the replica")
    }

    /// The status `GET /api/whoami` gets with `token`.
    pub async fn status(&self, token: &str) -> u16 {
        self.get("/api/whoami", Some(token)).await.status().as_u16()
    }

    /// The `x-user-id` the upstream saw for `token` (panics unless 200).
    pub async fn user_id(&self, token: &str) -> String {
        let r = self.get("/api/whoami", Some(token)).await;
        assert_eq!(r.status(), 200, "{}", self.process.log());
        let body: Value = r.json().await.expect("whoami JSON");
        body["headers"]["x-user-id"]
            .as_str()
            .unwrap_or_else(|| panic!("no x-user-id in {body}"))
            .to_owned()
    }

    /// `POST /cache/purge` with `body`; the JSON answer (panics unless 200).
    pub async fn purge(&self, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/cache/purge", self.admin))
            .json(&body)
            .send()
            .await
            .expect("admin answers");
        assert_eq!(r.status(), 200);
        r.json().await.expect("purge answer JSON")
    }

    /// `GET /readyz`: status and body.
    pub async fn readyz(&self) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}/readyz", self.admin))
            .send()
            .await
            .expect("admin answers");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// One series of its metrics (`name{labels}` without the `cloudbase_gateway_` prefix).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = super::metrics_at(&self.http, &self.admin).await;
        metric(&text, &format!("cloudbase_gateway_{series}"))
    }

    /// Waits (up to 20 s) until its subscription to purges is up.
    pub async fn subscribed(&self) {
        let what = format!("replica {} subscribed", self.base);
        eventually(Duration::from_secs(20), &what, || async {
            self.metric("redis_subscribed").await == 1.0
        })
        .await;
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest")
}

/// A replica's configuration: its listeners, the shared emulator as CloudBase, an hour of
/// `ttl` (so only a purge explains a refusal), and Redis with a generous `timeout` (the
/// machine is shared) and a short breaker cooldown.
fn replica_config(
    cfg: &FleetCfg<'_>,
    gateway: SocketAddr,
    admin: SocketAddr,
    emulator: SocketAddr,
    redis_url: &str,
) -> String {
    let mut redis = format!("url = \"{redis_url}\"\nhmac_key = \"{HMAC_KEY}\"\n");
    for (key, value) in [
        ("timeout", "\"500ms\""),
        ("breaker_failures", "3"),
        ("breaker_cooldown", "\"200ms\""),
    ] {
        if !sets(cfg.redis, key) {
            redis.push_str(&format!("{key} = {value}\n"));
        }
    }
    redis.push_str(cfg.redis);
    let mut cache = String::new();
    if !sets(cfg.cache, "ttl") {
        cache.push_str("ttl = \"1h\"\n");
    }
    cache.push_str(cfg.cache);
    let routes = if cfg.tables.contains("[[routes]]") {
        ""
    } else {
        "[[routes]]\nprefix = \"/api/\"\nupstream = \"whoami\"\n"
    };
    format!(
        "[server]\nlisten = \"{gateway}\"\n\
         [admin]\nlisten = \"{admin}\"\n\
         [cloudbase]\nenv_id = \"{env_id}\"\nclient_id = \"test-client\"\n\
         base_url = \"http://{emulator}/auth/v1\"\ntimeout = \"2s\"\n\
         [cache]\n{cache}\n\
         [cache.redis]\n{redis}\n\
         {routes}{tables}\n",
        env_id = cfg.env_id(),
        tables = cfg.tables,
    )
}
