//! The official CloudBase JS SDK (`@cloudbase/oauth` 3.3.3, pinned in
//! `tests/js-sdk/package-lock.json`) against the emulator binary: `tests/js-sdk/drive.mjs`
//! signs in with a username and password, reads the user, forces a refresh (then replays
//! the rotated-out refresh token, which ends the session), verifies a phone number and
//! signs up, signs out with a redirect (`/user/signout`), signs in with
//! a verification code, signs in anonymously and signs out (`/revoke`). Here every step's
//! outcome is checked, and the server side of each sign-out through introspection and
//! the emulator's call statistics.
//!
//! Needs `node` (18+) and `npm` on PATH: without them the test fails rather than skips,
//! so CI cannot pass without running the SDK. `node_modules` is installed with `npm ci`
//! when missing.

use crate::support;
use crate::support::fleet::{Fleet, FleetCfg};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Client;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[cloudbase]
env_id = "js-sdk-env"
# A configured secret must not get in the way of the SDK, a public client that sends
# `client_secret: ""` at refresh and no Basic credentials.
client_secret = "js-sdk-secret"

[emulator]
enabled = true
test_hooks = true
verification_code = "000000"
access_token_ttl = "2h"
allow_anonymous = true

[[emulator.users]]
username = "sdk-user"
password = "sdk-password-1"
name = "SDK User"
"#;

const PHONE: &str = "+86 13800000000";

struct Emulator {
    _process: support::Process,
    addr: SocketAddr,
    http: Client,
}

impl Emulator {
    fn start(config: &str) -> Emulator {
        let (process, addr) = support::Process::emulator(config);
        Emulator {
            _process: process,
            addr,
            http: Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn introspect(&self, token: &str) -> Value {
        self.http
            .get(format!("{}/auth/v1/token/introspect", self.origin()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, bearer: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/auth/v1{path}", self.origin()))
            .json(&body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/__emulator/stats", self.origin()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js-sdk")
}

/// `tool --version`, or a failure that says what to install.
fn require_tool(tool: &str) -> String {
    match Command::new(tool).arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => panic!(
            "`{tool} --version` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "`{tool}` is not on PATH ({e}). The JS SDK test needs Node.js 18+ and npm \
             (Debian: apt-get install -y nodejs npm); it fails rather than skips so CI \
             cannot pass without running the official SDK."
        ),
    }
}

/// Installs the locked SDK unless `node_modules` already holds it. Every SDK test calls
/// this and they run at once in one test binary; `npm ci` starts by deleting
/// `node_modules`, so two at a time break each other: the lock makes the others wait for
/// the first.
fn npm_ci_if_needed(dir: &Path) {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if dir
        .join("node_modules/@cloudbase/oauth/package.json")
        .is_file()
    {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--prefer-offline", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("npm runs");
    assert!(
        out.status.success(),
        "npm ci in {} failed ({}):\n{}\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `script` (in `tests/js-sdk`) against `origins`; returns its exit status, its step
/// lines by name, and stdout and stderr for failure messages.
async fn run_script(
    script: &str,
    origins: &[&str],
) -> (std::process::ExitStatus, HashMap<String, Value>, String) {
    let dir = sdk_dir();
    let child = tokio::process::Command::new("node")
        .arg(script)
        .args(origins)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} finished within 120 s"))
        .unwrap_or_else(|e| panic!("{script} output: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let transcript = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    let mut steps = HashMap::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON step line ({e}): {line}\n{transcript}"));
        let name = v["step"].as_str().expect("step name").to_owned();
        assert!(
            steps.insert(name.clone(), v).is_none(),
            "step {name} twice\n{transcript}"
        );
    }
    (out.status, steps, transcript)
}

/// Every expected step ran and passed, no other step ran, and the script exited 0.
fn all_passed(
    steps: &HashMap<String, Value>,
    expected: &[&str],
    status: std::process::ExitStatus,
    transcript: &str,
    node: &str,
) {
    for name in expected {
        let step = steps
            .get(*name)
            .unwrap_or_else(|| panic!("step {name} missing (node {node})\n{transcript}"));
        assert_eq!(step["ok"], true, "step {name} failed: {step}\n{transcript}");
    }
    assert_eq!(steps.len(), expected.len(), "{transcript}");
    assert!(status.success(), "the script exited {status}\n{transcript}");
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
}

#[tokio::test]
async fn the_official_js_sdk_drives_the_emulator() {
    let node = require_tool("node");
    require_tool("npm");
    npm_ci_if_needed(&sdk_dir());
    let emu = Emulator::start(CONFIG);

    let (status, steps, transcript) = run_script("drive.mjs", &[&emu.origin()]).await;
    let expected = [
        "signin",
        "signin_wrong_password",
        "user_info",
        "refresh",
        "user_info_after_refresh",
        "refresh_replay_rejected",
        "refresh_after_replay_rejected",
        "verification",
        "verify",
        "signup",
        "signup_user_info",
        "signout_redirect",
        "otp_verification",
        "otp_verify",
        "otp_signin",
        "otp_user_info",
        "anonymous",
        "anonymous_user_info",
        "signout",
        "done",
    ];
    all_passed(&steps, &expected, status, &transcript, &node);
    let step = |name: &str| &steps[name];

    // What the SDK called, before this test makes calls of its own.
    let calls = &emu.stats().await["calls"];
    for (name, n) in [
        ("signin", 3),
        ("token", 3),
        ("verification", 2),
        ("verify", 2),
        ("signup", 1),
        ("signin_anonymously", 1),
        ("revoke", 2),
        ("user_me", 5),
    ] {
        assert_eq!(calls[name], n, "{name} calls: {calls}");
    }

    // Username + password.
    let signin = step("signin");
    let user_sub = s(signin, "sub");
    assert_eq!(user_sub.len(), 19, "registered users have 19-digit subs");
    assert_eq!(signin["scope"], "user sso");
    assert_eq!(signin["token_type"], "Bearer");
    assert_eq!(signin["expires_in"], 7200);
    assert_eq!(
        step("signin_wrong_password")["expected_error"],
        "invalid_password"
    );
    for name in ["user_info", "user_info_after_refresh"] {
        let u = step(name);
        assert_eq!(u["sub"], user_sub, "{name}");
        assert_eq!(u["username"], "sdk-user", "{name}");
        assert_eq!(u["name"], "SDK User", "{name}");
        assert_eq!(u["status"], "ACTIVE", "{name}");
    }

    // The refresh rotated both tokens and the session lives on.
    let refresh = step("refresh");
    assert_eq!(refresh["sub"], user_sub);
    assert_ne!(refresh["access_token"], signin["access_token"]);
    assert_ne!(refresh["refresh_token"], signin["refresh_token"]);
    assert_eq!(refresh["previous_refresh_token"], signin["refresh_token"]);
    // The replayed refresh token ended the session: its current tokens are dead too.
    for name in ["refresh_replay_rejected", "refresh_after_replay_rejected"] {
        assert_eq!(step(name)["expected_error"], "invalid_grant", "{name}");
    }
    assert_eq!(
        emu.introspect(s(refresh, "access_token")).await,
        json!({}),
        "the family's access token is revoked"
    );

    // Verification of a bare number (the SDK adds "+86 "), then sign-up.
    assert_eq!(step("verification")["is_user"], false);
    assert_eq!(step("verification")["expires_in"], 600);
    let signup = step("signup");
    let new_sub = s(signup, "sub");
    assert_ne!(new_sub, user_sub);
    assert_eq!(signup["scope"], "user sso");
    let profile = step("signup_user_info");
    assert_eq!(profile["sub"], new_sub);
    assert_eq!(profile["phone_number"], PHONE);
    assert_eq!(profile["username"], "sdk-signup-user");
    assert_eq!(profile["name"], "SDK 新用户");

    // signOut({redirect_uri}) -> POST /user/signout: the whole session ends.
    let out = step("signout_redirect");
    assert_eq!(
        out["response"],
        json!({"redirect_uri": "http://localhost:3000/signed-out"})
    );
    assert_eq!(out["signed_out_access_token"], signup["access_token"]);
    assert_eq!(
        emu.introspect(s(out, "signed_out_access_token")).await,
        json!({})
    );
    let (st, v) = emu
        .post(
            "/token",
            None,
            json!({"grant_type": "refresh_token", "refresh_token": s(signup, "refresh_token")}),
        )
        .await;
    assert_eq!((st, &v["error"]), (400, &json!("invalid_grant")), "{v}");

    // Sign-in with a verification code: the number is now a user's.
    assert_eq!(step("otp_verification")["is_user"], true);
    assert_eq!(step("otp_signin")["sub"], new_sub);
    assert_eq!(step("otp_user_info")["phone_number"], PHONE);

    // Anonymous.
    let anon = step("anonymous");
    assert_eq!(anon["scope"], "anonymous");
    assert_eq!(anon["login_scope"], "anonymous");
    let anon_sub = s(anon, "sub");
    assert_eq!(anon_sub.len(), 22, "anonymous subs are 22-char base64url");
    assert_eq!(step("anonymous_user_info")["sub"], anon_sub);

    // signOut() -> POST /revoke {token}, no Authorization header.
    let out = step("signout");
    assert_eq!(out["revoked_access_token"], anon["access_token"]);
    assert_eq!(out["response"], json!({}));
    assert_eq!(
        emu.introspect(s(out, "revoked_access_token")).await,
        json!({})
    );
}

/// What a browser sends before the SDK's calls: its fetch adds a non-simple header set
/// (`x-request-id`, `x-device-id`, `Authorization`, and a literal `undefined` header from
/// an unset language option) and posts JSON as `text/plain`.
#[tokio::test]
async fn browsers_may_send_what_the_sdk_sends() {
    let emu = Emulator::start(CONFIG);
    let requested = "authorization,undefined,x-device-id,x-request-id";
    let resp = emu
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/auth/v1/user/signout", emu.origin()),
        )
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", requested)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:5173");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    for name in requested.split(',') {
        assert!(allowed.contains(name), "{name} not in {allowed}");
    }

    let resp = emu
        .http
        .post(format!(
            "{}/auth/v1/signin?client_id=js-sdk-env",
            emu.origin()
        ))
        .header("origin", "http://localhost:5173")
        .header("content-type", "text/plain;charset=UTF-8")
        .header("undefined", "undefined")
        .header("x-request-id", "0123456789abcdef0123456789abcdef")
        .header("x-device-id", "fedcba9876543210fedcba9876543210")
        .body(r#"{"username":"sdk-user","password":"sdk-password-1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let t: Value = resp.json().await.unwrap();
    assert_eq!(t["scope"], "user sso");
}

/// `POST /user/signout`, the SDK's `signOut(params)`, needs a live access token, ends the
/// caller's session only, and counts as a revocation.
#[tokio::test]
async fn user_signout_ends_the_callers_session() {
    let emu = Emulator::start(CONFIG);
    let creds = json!({"username": "sdk-user", "password": "sdk-password-1"});
    let (_, a) = emu.post("/signin", None, creds.clone()).await;
    let (_, b) = emu.post("/signin", None, creds).await;

    let (st, v) = emu.post("/user/signout", None, json!({})).await;
    assert_eq!((st, &v["error"]), (401, &json!("unauthenticated")), "{v}");

    let (st, v) = emu
        .post("/user/signout", Some(s(&a, "access_token")), json!({}))
        .await;
    assert_eq!((st, &v), (200, &json!({})));
    assert_eq!(emu.introspect(s(&a, "access_token")).await, json!({}));
    let (st, v) = emu
        .post(
            "/token",
            None,
            json!({"grant_type": "refresh_token", "refresh_token": s(&a, "refresh_token")}),
        )
        .await;
    assert_eq!((st, &v["error"]), (400, &json!("invalid_grant")), "{v}");
    // Signing out twice is an unauthenticated call, which the SDK shrugs off.
    let (st, _) = emu
        .post("/user/signout", Some(s(&a, "access_token")), json!({}))
        .await;
    assert_eq!(st, 401);

    assert_eq!(
        emu.introspect(s(&b, "access_token")).await["sub"],
        a["sub"],
        "another session of the same user is untouched"
    );
    assert_eq!(emu.stats().await["calls"]["revoke"], 3);
}

/// With anonymous sign-in off, the description is one the SDK recognises, so its
/// `AuthError` says "enable the provider in the console" (PROVIDER_NOT_ENABLED).
#[tokio::test]
async fn disabled_anonymous_sign_in_reads_as_provider_not_enabled() {
    let emu = Emulator::start(&CONFIG.replace("allow_anonymous = true", "allow_anonymous = false"));
    let resp = emu
        .http
        .post(format!("{}/auth/v1/signin/anonymously", emu.origin()))
        .header("x-device-id", "fedcba9876543210fedcba9876543210")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 501);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "unimplemented");
    assert!(
        s(&v, "error_description").contains("anonymous login is not enabled"),
        "{v}"
    );
}

/// The steps of `relay.mjs`, in order.
const RELAY_STEPS: &[&str] = &[
    "signout_signed_in",
    "signout",
    "signout_old_token_refused",
    "password_signed_in",
    "password_changed",
    "password_other_device_refused",
    "password_this_device_still_served",
    "password_new_one_signs_in",
    "revoke_all_signed_in",
    "revoke_all",
    "revoke_all_second_device_refused",
    "revoke_all_first_device_refused",
    "revoke_device_signed_in",
    "revoke_device",
    "revoke_device_lost_device_refused",
    "revoke_device_keeper_still_served",
    "outside_signed_in",
    "done",
];

/// Each old token `relay.mjs` saw refused was refused as CloudBase's invalid token (the
/// purged cache asked again), not for some other reason.
fn refused_as_invalid_tokens(steps: &HashMap<String, Value>) {
    for name in [
        "signout_old_token_refused",
        "password_other_device_refused",
        "revoke_all_second_device_refused",
        "revoke_device_lost_device_refused",
    ] {
        assert_eq!(steps[name]["code"], "INVALID_ACCESS_TOKEN", "{name}");
    }
}

/// The gateway binary with its embedded emulator, the relay on and an hour of cache: a
/// token refused right after a sign-out can only have been purged by the relay.
fn relay_config(gateway: SocketAddr, admin: SocketAddr, emulator: SocketAddr) -> String {
    let users = relay_users();
    format!(
        r#"
[server]
listen = "{gateway}"
[admin]
listen = "{admin}"
[cloudbase]
env_id = "js-sdk-env"
client_secret = "js-sdk-secret"
[cache]
ttl = "1h"
[[routes]]
prefix = "/api/"
upstream = "whoami"
[relay]
enabled = true
[emulator]
enabled = true
listen = "{emulator}"
test_hooks = true
{users}"#
    )
}

/// The users `relay.mjs` signs in, as `[[emulator.users]]`.
fn relay_users() -> String {
    [
        "relay-signout",
        "relay-password",
        "relay-all",
        "relay-device",
        "relay-outside",
    ]
    .iter()
    .map(|u| format!("[[emulator.users]]\nusername = \"{u}\"\npassword = \"relay-password-1\"\n"))
    .collect()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test]
async fn the_official_js_sdk_through_the_relay_is_cut_off_at_once_on_sign_out() {
    let node = require_tool("node");
    require_tool("npm");
    npm_ci_if_needed(&sdk_dir());
    let (gateway, admin, emulator) = (
        local(support::free_port()),
        local(support::free_port()),
        local(support::free_port()),
    );
    let _process =
        support::Process::spawn(&relay_config(gateway, admin, emulator), &[], &[], gateway);
    support::wait_for_port(admin);

    let (status, steps, transcript) =
        run_script("relay.mjs", &[&format!("http://{gateway}")]).await;
    all_passed(&steps, RELAY_STEPS, status, &transcript, &node);
    refused_as_invalid_tokens(&steps);

    let http = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let text = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    // The SDK's calls reached CloudBase through the relay, and each purged.
    let stats: Value =
        serde_json::from_str(&text(format!("http://{emulator}/__emulator/stats")).await).unwrap();
    let calls = &stats["calls"];
    for (name, n) in [
        ("revoke", 1),
        ("password", 1),
        ("sudo", 1),
        ("revoke_all", 1),
        ("revoke_device", 1),
    ] {
        assert_eq!(calls[name], n, "{name} calls: {calls}");
    }
    let metrics = text(format!("http://{admin}/metrics")).await;
    for (by, n) in [("token", 1.0), ("sub", 3.0), ("unresolved", 0.0)] {
        let series = format!("cloudbase_gateway_relay_purges_total{{by=\"{by}\"}}");
        assert_eq!(support::metric(&metrics, &series), n, "{series}");
    }

    // A revocation outside the relay (here: straight at CloudBase) is not seen: the
    // cached token keeps working until `POST /cache/purge`.
    let outside = &steps["outside_signed_in"];
    let token = s(outside, "access_token");
    let revoked = http
        .post(format!("http://{emulator}/auth/v1/revoke"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let whoami = |token: String| {
        let http = http.clone();
        async move {
            http.get(format!("http://{gateway}/api/whoami"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(whoami(token.to_owned()).await, 200, "still cached");
    let purged = http
        .post(format!("http://{admin}/cache/purge"))
        .json(&json!({ "sub": s(outside, "sub") }))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    assert_eq!(
        whoami(token.to_owned()).await,
        401,
        "purged by the operator"
    );
}

/// Issue 13's last item: two replicas on one Redis, the SDK signed in through replica A's
/// relay, every protected call made on A and B (so both cache each token for an hour).
/// Each session-ending call through A is refused on B by the very next request: only the
/// purge A published can explain it.
#[tokio::test]
async fn the_official_js_sdk_signing_out_through_one_replica_is_refused_on_the_other_at_once() {
    let node = require_tool("node");
    require_tool("npm");
    npm_ci_if_needed(&sdk_dir());
    let users = relay_users();
    let fleet = Fleet::start(
        2,
        FleetCfg {
            env_id: "js-sdk-env",
            tables: "[relay]\nenabled = true\n",
            users: &users,
            ..FleetCfg::default()
        },
    )
    .await;
    let [a, b] = &fleet.replicas[..] else {
        unreachable!()
    };

    let (status, steps, transcript) = run_script("relay.mjs", &[&a.base, &b.base]).await;
    all_passed(&steps, RELAY_STEPS, status, &transcript, &node);
    refused_as_invalid_tokens(&steps);
    // A's relay purged (one token, three users), each published through Redis; B carried
    // them out.
    for (by, n) in [("token", 1.0), ("sub", 3.0), ("unresolved", 0.0)] {
        let series = format!("relay_purges_total{{by=\"{by}\"}}");
        assert_eq!(a.metric(&series).await, n, "{series}");
        assert_eq!(b.metric(&series).await, 0.0, "B relayed nothing");
    }
    assert_eq!(a.metric("redis_purges_total{result=\"ok\"}").await, 4.0);
    assert_eq!(a.metric("redis_purges_total{result=\"error\"}").await, 0.0);
    assert_eq!(
        b.metric("redis_invalidations_total{kind=\"token\"}").await,
        1.0
    );
    assert_eq!(
        b.metric("redis_invalidations_total{kind=\"sub\"}").await,
        3.0
    );

    // Revoked outside the relay: an operator's purge on A cuts it off on B too.
    let outside = &steps["outside_signed_in"];
    let token = s(outside, "access_token");
    fleet.revoke_at_cloudbase(token).await;
    assert_eq!(b.status(token).await, 200, "still cached on B");
    let answer = a.purge(json!({ "sub": s(outside, "sub") })).await;
    assert_eq!(
        answer,
        json!({"purged": 1, "shared": true, "replicas": 2, "confirmed": 2})
    );
    assert_eq!(b.status(token).await, 401, "B confirmed the purge");
}
