//! Black-box test of the binary: `cloudbase-gateway emulator --listen … --config …`,
//! driven through the seed guide's curl flows (`seed/auth-http-api-skill.txt`) with
//! plain HTTP: the guide's paths, Basic client credentials, `--data-raw` bodies and
//! `?token=` introspection. The guide's lines omit the `Content-Type: application/json`
//! that CloudBase's documentation lists, so curl labels their bodies as a form; the
//! emulator refuses form bodies (415, saying what to add), so the flows here add the
//! header, and one test holds the guide's verbatim line to that clear refusal.

use crate::support;
use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

const CONFIG: &str = r#"
[cloudbase]
env_id = "cli-env"
client_id = "cli-client"
client_secret = "cli-secret"

[emulator]
enabled = true
test_hooks = true

[[emulator.users]]
username = "test@example.com"
password = "your password"
name = "Test User"
"#;

struct Curl {
    http: Client,
    base: String,
}

impl Curl {
    /// One curl line of the seed guide, `-H x-device-id -H x-request-id -u id:secret
    /// --data-raw …`, plus `-H 'Content-Type: application/json'`.
    async fn run(
        &self,
        method: Method,
        path: &str,
        basic: bool,
        bearer: Option<&str>,
        data_raw: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-device-id", "backend-service-1")
            .header("x-request-id", "manual-request-id");
        if basic {
            req = req.basic_auth("cli-client", Some("cli-secret"));
        }
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        if let Some(body) = data_raw {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
        (status, value)
    }
}

fn s(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .to_owned()
}

#[tokio::test]
async fn the_binary_serves_the_seed_guides_curl_flows() {
    let (_emulator, addr) = support::Process::emulator(CONFIG);
    let curl = Curl {
        http: Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        base: format!("http://{addr}/auth/v1"),
    };
    let data = |v: Value| Some(v.to_string());

    // Sign in.
    let (st, t) = curl
        .run(
            Method::POST,
            "/signin",
            true,
            None,
            data(json!({"username": "test@example.com", "password": "your password"})),
        )
        .await;
    assert_eq!(st, 200, "{t}");
    let access = s(&t, "access_token");
    let sub = s(&t, "sub");

    // Send a code, verify it (the default code is 000000), sign up.
    let (st, v) = curl
        .run(
            Method::POST,
            "/verification",
            true,
            None,
            data(json!({"phone_number": "+86 13800000000"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = curl
        .run(
            Method::POST,
            "/verification/verify",
            true,
            None,
            data(
                json!({"verification_code": "000000", "verification_id": s(&v, "verification_id")}),
            ),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, signed_up) = curl
        .run(
            Method::POST,
            "/signup",
            true,
            None,
            data(json!({
                "phone_number": "+86 13800000000",
                "verification_code": "000000",
                "verification_token": s(&v, "verification_token"),
                "name": "手机用户",
                "password": "password",
                "username": "username"
            })),
        )
        .await;
    assert_eq!(st, 200, "{signed_up}");
    let new_access = s(&signed_up, "access_token");

    // Anonymous sign-in, the guide's path.
    let (st, anon) = curl
        .run(
            Method::POST,
            "/signin-anonymously",
            true,
            None,
            Some("{}".into()),
        )
        .await;
    assert_eq!(st, 200, "{anon}");
    assert_eq!(anon["scope"], "anonymous");

    // Refresh.
    let (st, refreshed) = curl
        .run(
            Method::POST,
            "/token",
            true,
            None,
            data(json!({"grant_type": "refresh_token", "refresh_token": s(&t, "refresh_token")})),
        )
        .await;
    assert_eq!(st, 200, "{refreshed}");
    let access2 = s(&refreshed, "access_token");

    // Introspect with ?token= and client credentials.
    let (st, i) = curl
        .run(
            Method::GET,
            &format!("/token/introspect?token={access}"),
            true,
            None,
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(i["sub"], sub.as_str());
    assert_eq!(i["client_id"], "cli-client");

    // Revoke, then the token is dead.
    let (st, v) = curl
        .run(
            Method::POST,
            "/revoke",
            true,
            None,
            data(json!({ "token": access })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, i) = curl
        .run(
            Method::GET,
            &format!("/token/introspect?token={access}"),
            true,
            None,
            None,
        )
        .await;
    assert_eq!(i, json!({}));

    // Current user.
    let (st, me) = curl
        .run(Method::GET, "/user/me", false, Some(&access2), None)
        .await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["name"], "Test User");
    let (st, me) = curl
        .run(Method::GET, "/user/me", false, Some(&new_access), None)
        .await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["name"], "手机用户");

    // Providers, the guide's path.
    let (st, p) = curl
        .run(
            Method::GET,
            "/user/providers",
            false,
            Some(&new_access),
            None,
        )
        .await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["total"], 2);

    // Change password, the guide's way (old_password), then the official way (sudo).
    let (st, v) = curl
        .run(
            Method::PATCH,
            "/user/password",
            false,
            Some(&new_access),
            data(json!({"old_password": "password", "new_password": "new-password"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, sudo) = curl
        .run(
            Method::POST,
            "/user/sudo",
            false,
            Some(&new_access),
            data(json!({"password": "new-password"})),
        )
        .await;
    assert_eq!(st, 200, "{sudo}");
    let sudo_token = s(&sudo, "sudo_token");
    let (st, v) = curl
        .run(
            Method::PATCH,
            "/user/password",
            false,
            Some(&new_access),
            data(json!({"sudo_token": sudo_token, "new_password": "newer-password"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = curl
        .run(
            Method::POST,
            "/signin",
            true,
            None,
            data(json!({"username": "username", "password": "newer-password"})),
        )
        .await;
    assert_eq!(st, 200);

    // Delete the account: the sudo token was spent by the password change, so a new one.
    let (st, v) = curl
        .run(
            Method::DELETE,
            &format!("/user/me?sudo_token={sudo_token}"),
            false,
            Some(&new_access),
            None,
        )
        .await;
    assert_eq!(
        (st.as_u16(), &v["error"]),
        (403, &json!("permission_denied")),
        "{v}"
    );
    let (st, sudo) = curl
        .run(
            Method::POST,
            "/user/sudo",
            false,
            Some(&new_access),
            data(json!({"password": "newer-password"})),
        )
        .await;
    assert_eq!(st, 200, "{sudo}");
    let (st, v) = curl
        .run(
            Method::DELETE,
            &format!("/user/me?sudo_token={}", s(&sudo, "sudo_token")),
            false,
            Some(&new_access),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = curl
        .run(Method::GET, "/user/me", false, Some(&new_access), None)
        .await;
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"], "unauthenticated");

    // The test hooks are served by the binary too.
    let stats = support::emulator_stats(&curl.http, addr).await;
    assert_eq!(stats["calls"]["signin"], 2);
    assert_eq!(
        stats["calls"]["delete_user"], 2,
        "the spent sudo token, then the new one"
    );
}

#[tokio::test]
async fn the_seed_guides_verbatim_form_body_gets_a_clear_415() {
    let (_emulator, addr) = support::Process::emulator(CONFIG);
    // `curl --data-raw '{…}'` without `-H 'Content-Type: application/json'`.
    let resp = Client::new()
        .post(format!("http://{addr}/auth/v1/signin"))
        .header("x-device-id", "backend-service-1")
        .header("x-request-id", "manual-request-id")
        .basic_auth("cli-client", Some("cli-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"username":"test@example.com","password":"your password"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "invalid_argument");
    assert!(
        s(&v, "error_description").contains("Content-Type: application/json"),
        "{v}"
    );
}

/// Test hooks are off unless configured, in the binary too, and without CORS when on.
#[tokio::test]
async fn the_binarys_test_hooks_are_off_by_default_and_never_cors() {
    let (_off, off) = support::Process::emulator(&CONFIG.replace("test_hooks = true\n", ""));
    let (_on, on) = support::Process::emulator(CONFIG);
    let http = Client::new();
    let fault = |addr: std::net::SocketAddr| {
        http.post(format!("http://{addr}/__emulator/fault"))
            .header("origin", "https://evil.example")
            .json(&json!({"mode": "hang"}))
            .send()
    };
    assert_eq!(fault(off).await.unwrap().status(), 404);
    let resp = fault(on).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    // The hang took hold (only a same-origin or non-browser client could do this).
    let hung = http
        .get(format!("http://{on}/auth/v1/token/introspect"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());
}
