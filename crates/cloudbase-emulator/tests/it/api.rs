//! The emulator's HTTP surface over real sockets, driven with plain reqwest: every
//! endpoint's success path and its main error paths, CORS, stats and fault injection.

use std::time::Duration;

use cloudbase_emulator::{AttemptLimits, Emulator, EmulatorOptions};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{group, spawn, test_env, user};

/// Two users: `alice` (a name in two scripts, an email, a lapsed `admin` and a live
/// `beta` group) and `bob` (a phone number); one-hour tokens, test hooks on.
fn options() -> EmulatorOptions {
    let mut alice = user("alice", "alice-password");
    alice.name = Some("爱丽丝 Alice".into());
    alice.email = Some("alice@example.com".into());
    alice.groups = vec![
        group("staff", None),
        group("admin", Some("2020-01-01T00:00:00Z")),
        group("beta", Some("2999-01-01T00:00:00Z")),
    ];
    let mut bob = user("bob", "bob-password");
    bob.phone_number = Some("+86 13900000000".into());
    EmulatorOptions {
        access_token_ttl: Duration::from_secs(3600),
        test_hooks: true,
        ..test_env(vec![alice, bob])
    }
}

struct Env {
    emu: Emulator,
    base: String,
    http: Client,
}

async fn start_with(options: EmulatorOptions) -> Env {
    let (emu, addr) = spawn(&options).await;
    Env {
        emu,
        base: format!("http://{addr}"),
        http: Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    }
}

async fn start() -> Env {
    start_with(options()).await
}

impl Env {
    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/auth/v1{path}", self.base))
            .header("x-device-id", "device-0123456789abcdef")
            .header("x-request-id", "req-1");
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text:?}"));
        (status, value)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, None, Some(body)).await
    }

    async fn get(&self, path: &str, bearer: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(bearer), None).await
    }

    async fn signin(&self, username: &str, password: &str) -> Value {
        let (s, v) = self
            .post(
                "/signin",
                json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    async fn introspect(&self, token: &str) -> Value {
        self.get("/token/introspect", token).await.1
    }

    async fn register(&self, email: &str, username: &str, password: &str) -> Value {
        let token = self.verified("email", email).await;
        let (s, v) = self
            .post(
                "/signup",
                json!({"email": email, "verification_token": token,
                       "username": username, "password": password}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// A sudo token for the holder of `access`, by password.
    async fn sudo(&self, access: &str, password: &str) -> String {
        let (s, v) = self
            .call(
                Method::POST,
                "/user/sudo",
                Some(access),
                Some(json!({ "password": password })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["expires_in"], 900);
        at(&v, "sudo_token")
    }

    async fn verified(&self, kind: &str, contact: &str) -> String {
        let (s, v) = self.post("/verification", json!({ kind: contact })).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = self
            .post(
                "/verification/verify",
                json!({"verification_id": v["verification_id"], "verification_code": "123456"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["verification_token"].as_str().unwrap().to_owned()
    }
}

fn at(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .to_owned()
}

fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_error: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["error"], want_error, "{body}");
    assert!(body["error_code"].is_i64(), "{body}");
    assert!(body["error_description"].is_string(), "{body}");
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn signin_issues_a_jwt_with_cloudbase_claims() {
    let env = start().await;
    let t = env.signin("alice", "alice-password").await;
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3600);
    assert_eq!(t["scope"], "user sso");
    let sub = at(&t, "sub");
    assert_eq!(sub.len(), 19);
    assert!(sub.bytes().all(|b| b.is_ascii_digit()));
    assert!(at(&t, "refresh_token").len() <= 128);
    // Expired groups are not reported in the token response.
    assert_eq!(t["groups"], json!(["staff", "beta"]));

    let access = at(&t, "access_token");
    let header: Value = {
        use base64::Engine;
        let h = access.split('.').next().unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(header["alg"], "HS256");
    assert!(header["kid"].is_string());
    let c = claims(&access);
    assert_eq!(
        c["iss"],
        "http://test-env.ap-shanghai.tcb-api.tencentcloudapi.com"
    );
    assert_eq!(c["sub"], sub);
    assert_eq!(c["aud"], "test-client");
    assert_eq!(c["project_id"], "test-env");
    assert_eq!(c["scope"], "user sso");
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        3600
    );
    assert!(c["jti"].is_string());

    // The login name may also be the email; subs of seeded users are stable.
    let again = env.signin("alice@example.com", "alice-password").await;
    assert_eq!(again["sub"], sub);
}

#[tokio::test]
async fn signin_errors_wrong_password_unknown_user_and_bad_client() {
    let env = start().await;
    let (s, v) = env
        .post(
            "/signin",
            json!({"username": "alice", "password": "nope-nope"}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_password");
    let (s, v) = env
        .post(
            "/signin",
            json!({"username": "carol", "password": "whatever1"}),
        )
        .await;
    assert_error(s, &v, 404, "not_found");

    // Basic credentials are optional, but must be right when sent.
    let url = format!("{}/auth/v1/signin", env.base);
    let body = json!({"username": "alice", "password": "alice-password"});
    let ok = env
        .http
        .post(&url)
        .basic_auth("test-client", Some("test-secret"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let bad = env
        .http
        .post(&url)
        .basic_auth("test-client", Some("wrong"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let v: Value = bad.json().await.unwrap();
    assert_eq!(v["error"], "invalid_client");
}

#[tokio::test]
async fn verification_then_signup_creates_a_user_and_duplicates_conflict() {
    let env = start().await;
    let (s, v) = env
        .post(
            "/verification",
            json!({"phone_number": "+86 13800000000", "target": "ANY"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["expires_in"], 600);
    assert_eq!(v["is_user"], false);
    let id = at(&v, "verification_id");

    let (s, v) = env
        .post(
            "/verification/verify",
            json!({"verification_id": id, "verification_code": "000000"}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v) = env
        .post(
            "/verification/verify",
            json!({"verification_id": id, "verification_code": "123456"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let vt = at(&v, "verification_token");

    let (s, v) = env
        .post(
            "/signup",
            json!({"phone_number": "+86 13800000000", "verification_token": vt,
                   "username": "newbie", "password": "short"}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_password");
    let (s, v) = env
        .post(
            "/signup",
            json!({"phone_number": "+86 13800000000", "verification_token": vt,
                   "username": "x", "password": "long-enough"}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");

    // The seed guide also sends verification_code; it is accepted and ignored.
    let (s, t) = env
        .post(
            "/signup",
            json!({"phone_number": "+86 13800000000", "verification_code": "123456",
                   "verification_token": vt, "name": "手机用户",
                   "username": "newbie", "password": "long-enough"}),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let sub = at(&t, "sub");
    assert_eq!(sub.len(), 19);
    assert!(sub.bytes().all(|b| b.is_ascii_digit()));
    let (_, me) = env.get("/user/me", &at(&t, "access_token")).await;
    assert_eq!(me["name"], "手机用户");
    assert_eq!(me["username"], "newbie");
    assert_eq!(me["phone_number"], "+86 13800000000");

    // The verification token is single-use.
    let (s, v) = env
        .post(
            "/signup",
            json!({"phone_number": "+86 13800000000", "verification_token": vt}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");

    // Now the number is a user; signing up again with it, or with a taken username, is 409.
    let (s, v) = env
        .post("/verification", json!({"phone_number": "+86 13800000000"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["is_user"], true);
    let vt = env.verified("phone_number", "+86 13800000000").await;
    let (s, v) = env
        .post(
            "/signup",
            json!({"phone_number": "+86 13800000000", "verification_token": vt}),
        )
        .await;
    assert_error(s, &v, 409, "already_exists");
    let vt = env.verified("email", "fresh@example.com").await;
    let (s, v) = env
        .post(
            "/signup",
            json!({"email": "fresh@example.com", "verification_token": vt,
                   "username": "alice", "password": "long-enough"}),
        )
        .await;
    assert_error(s, &v, 409, "already_exists");

    // Sign-in by verification token.
    let vt = env.verified("phone_number", "+86 13800000000").await;
    let (s, v) = env.post("/signin", json!({"verification_token": vt})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["sub"], sub);
}

#[tokio::test]
async fn verification_targets_are_enforced() {
    let env = start().await;
    let (s, v) = env
        .post(
            "/verification",
            json!({"email": "nobody@example.com", "target": "USER"}),
        )
        .await;
    assert_error(s, &v, 404, "not_found");
    let (s, v) = env
        .post(
            "/verification",
            json!({"email": "alice@example.com", "target": "NOT_USER"}),
        )
        .await;
    assert_error(s, &v, 409, "already_exists");
    let (s, v) = env
        .post(
            "/verification",
            json!({"email": "alice@example.com", "target": "CUR_USER"}),
        )
        .await;
    assert_error(s, &v, 401, "unauthenticated");
    let t = env.signin("alice", "alice-password").await;
    let (s, v) = env
        .call(
            Method::POST,
            "/verification",
            Some(&at(&t, "access_token")),
            Some(json!({"email": "alice@example.com", "target": "CUR_USER"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["is_user"], true);
}

#[tokio::test]
async fn anonymous_signin_needs_a_device_and_is_stable_per_device() {
    let env = start().await;
    let (s, a) = env.post("/signin/anonymously", json!({})).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["scope"], "anonymous");
    let sub = at(&a, "sub");
    assert_eq!(sub.len(), 22);
    assert_eq!(claims(&at(&a, "access_token"))["scope"], "anonymous");
    // The seed guide's path variant, same device: same user.
    let (s, b) = env.post("/signin-anonymously", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(b["sub"], sub);
    assert_ne!(b["access_token"], a["access_token"]);
    let i = env.introspect(&at(&a, "access_token")).await;
    assert_eq!(i["scope"], "anonymous");

    let resp = env
        .http
        .post(format!("{}/auth/v1/signin/anonymously", env.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "invalid_argument");

    let other = env
        .http
        .post(format!("{}/auth/v1/signin/anonymously", env.base))
        .header("x-device-id", "another-device-0123456789")
        .send()
        .await
        .unwrap();
    let v: Value = other.json().await.unwrap();
    assert_ne!(v["sub"], sub);
}

#[tokio::test]
async fn anonymous_signin_disabled_is_unimplemented() {
    let env = start_with(EmulatorOptions {
        allow_anonymous: false,
        ..options()
    })
    .await;
    let (s, v) = env.post("/signin/anonymously", json!({})).await;
    assert_error(s, &v, 501, "unimplemented");
}

#[tokio::test]
async fn refresh_tokens_rotate_and_the_old_one_is_invalid_grant() {
    let env = start().await;
    let t = env.signin("alice", "alice-password").await;
    let old = at(&t, "refresh_token");
    // What the JS SDK sends.
    let (s, n) = env
        .post(
            "/token",
            json!({"client_id": "test-client", "client_secret": "",
                   "grant_type": "refresh_token", "refresh_token": old}),
        )
        .await;
    assert_eq!(s, 200, "{n}");
    assert_ne!(n["refresh_token"], old);
    assert_eq!(n["sub"], t["sub"]);
    assert_eq!(
        env.introspect(&at(&n, "access_token")).await["sub"],
        t["sub"]
    );
    let (s, v) = env
        .post(
            "/token",
            json!({"grant_type": "refresh_token", "refresh_token": old}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_grant");
    let (s, v) = env
        .post(
            "/token",
            json!({"grant_type": "refresh_token", "refresh_token": n["refresh_token"],
                   "client_secret": "wrong"}),
        )
        .await;
    assert_error(s, &v, 401, "invalid_client");
    let (s, v) = env.post("/token", json!({"grant_type": "password"})).await;
    assert_error(s, &v, 400, "invalid_argument");
}

#[tokio::test]
async fn introspect_accepts_bearer_and_query_forms_and_answers_empty_for_garbage() {
    let env = start().await;
    let t = env.signin("alice", "alice-password").await;
    let access = at(&t, "access_token");
    let i = env.introspect(&access).await;
    assert_eq!(
        i,
        json!({"token_type": "Bearer", "client_id": "test-client", "sub": t["sub"], "scope": "user sso"})
    );
    let resp = env
        .http
        .get(format!(
            "{}/auth/v1/token/introspect?token={access}",
            env.base
        ))
        .basic_auth("test-client", Some("test-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), i);

    for garbage in ["garbage", "a.b.c", &at(&t, "refresh_token")] {
        let (s, v) = env.get("/token/introspect", garbage).await;
        assert_eq!(s, 200);
        assert_eq!(v, json!({}), "{garbage}");
    }
    // A token signed by another emulator instance is not ours.
    let other = start().await;
    let foreign = at(
        &other.signin("alice", "alice-password").await,
        "access_token",
    );
    assert_eq!(env.introspect(&foreign).await, json!({}));
    // No token at all.
    let resp = env
        .http
        .get(format!("{}/auth/v1/token/introspect", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({}));
}

#[tokio::test]
async fn revoke_kills_the_token_with_or_without_authorization() {
    let env = start().await;
    let a = at(&env.signin("alice", "alice-password").await, "access_token");
    let b = env.signin("alice", "alice-password").await;
    let b_access = at(&b, "access_token");

    let (s, v) = env
        .call(Method::POST, "/revoke", Some(&a), Some(json!({"token": a})))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v, json!({}));
    assert_eq!(env.introspect(&a).await, json!({}));
    let (s, v) = env.get("/user/me", &a).await;
    assert_error(s, &v, 401, "unauthenticated");
    // The other session is untouched.
    assert_eq!(env.get("/user/me", &b_access).await.0, 200);

    // The JS SDK's sign-out: body only, no Authorization header.
    let (s, _) = env.post("/revoke", json!({"token": b_access})).await;
    assert_eq!(s, 200);
    assert_eq!(env.introspect(&b_access).await, json!({}));

    // Bearer only, empty body.
    let c = at(&env.signin("alice", "alice-password").await, "access_token");
    let (s, _) = env.call(Method::POST, "/revoke", Some(&c), None).await;
    assert_eq!(s, 200);
    assert_eq!(env.introspect(&c).await, json!({}));

    // Revoking a refresh token ends its session.
    let d = env.signin("alice", "alice-password").await;
    let (s, _) = env
        .post("/revoke", json!({"token": d["refresh_token"]}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(env.introspect(&at(&d, "access_token")).await, json!({}));
    let (s, v) = env
        .post(
            "/token",
            json!({"grant_type": "refresh_token", "refresh_token": d["refresh_token"]}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_grant");
}

#[tokio::test]
async fn user_me_reports_the_profile_with_expired_groups_dated() {
    let env = start().await;
    let t = env.signin("alice", "alice-password").await;
    let (s, me) = env.get("/user/me", &at(&t, "access_token")).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["sub"], t["sub"]);
    assert_eq!(me["user_id"], t["sub"]);
    assert_eq!(me["name"], "爱丽丝 Alice");
    assert_eq!(me["username"], "alice");
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["status"], "ACTIVE");
    assert_eq!(me["has_password"], true);
    assert!(me["created_at"].is_string());
    assert_eq!(
        me["groups"],
        json!([{"id": "staff"}, {"id": "admin", "expires_at": "2020-01-01T00:00:00Z"},
               {"id": "beta", "expires_at": "2999-01-01T00:00:00Z"}])
    );
    let (s, v) = env.get("/user/me", "not-a-token").await;
    assert_error(s, &v, 401, "unauthenticated");
    let (s, v) = env.call(Method::GET, "/user/me", None, None).await;
    assert_error(s, &v, 401, "unauthenticated");
}

#[tokio::test]
async fn password_change_signs_out_other_sessions_but_not_the_caller() {
    let env = start().await;
    let me = env.signin("bob", "bob-password").await;
    let other = env.signin("bob", "bob-password").await;
    let access = at(&me, "access_token");

    let (s, v) = env
        .call(
            Method::POST,
            "/user/sudo",
            Some(&access),
            Some(json!({"password": "wrong-password"})),
        )
        .await;
    assert_error(s, &v, 403, "permission_denied");
    let (s, v) = env
        .call(
            Method::PATCH,
            "/user/password",
            Some(&access),
            Some(json!({"new_password": "bob-new-password"})),
        )
        .await;
    assert_error(s, &v, 403, "permission_denied");

    let sudo_token = env.sudo(&access, "bob-password").await;

    let (s, v) = env
        .call(
            Method::PATCH,
            "/user/password",
            Some(&access),
            Some(json!({"new_password": "short", "sudo_token": sudo_token})),
        )
        .await;
    assert_error(s, &v, 400, "invalid_password");
    let (s, v) = env
        .call(
            Method::PATCH,
            "/user/password",
            Some(&access),
            Some(json!({"new_password": "bob-new-password", "sudo_token": sudo_token})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({}));

    assert_eq!(env.introspect(&access).await["sub"], me["sub"]);
    assert_eq!(env.get("/user/me", &access).await.0, 200);
    assert_eq!(env.introspect(&at(&other, "access_token")).await, json!({}));
    let (s, v) = env
        .post(
            "/token",
            json!({"grant_type": "refresh_token", "refresh_token": other["refresh_token"]}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_grant");
    let (s, _) = env
        .post(
            "/token",
            json!({"grant_type": "refresh_token", "refresh_token": me["refresh_token"]}),
        )
        .await;
    assert_eq!(s, 200, "the caller's session survives");

    let (s, v) = env
        .post(
            "/signin",
            json!({"username": "bob", "password": "bob-password"}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_password");
    env.signin("bob", "bob-new-password").await;

    // The seed guide's form: old_password only; sudo_token as a query parameter also works.
    let (s, v) = env
        .call(
            Method::PATCH,
            "/user/password",
            Some(&access),
            Some(json!({"old_password": "bob-new-password", "new_password": "bob-third-password"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let sudo = env.sudo(&access, "bob-third-password").await;
    let (s, v) = env
        .call(
            Method::PATCH,
            &format!("/user/password?sudo_token={sudo}"),
            Some(&access),
            Some(json!({"new_password": "bob-fourth-password"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    env.signin("bob", "bob-fourth-password").await;
}

#[tokio::test]
async fn sudo_by_verification_and_delete_kills_every_token() {
    let env = start().await;
    let t = env
        .register("del@example.com", "deleteme", "delete-password")
        .await;
    let second = env.signin("deleteme", "delete-password").await;
    let access = at(&t, "access_token");

    let vt = env.verified("email", "del@example.com").await;
    let (s, sudo) = env
        .call(
            Method::POST,
            "/user/sudo",
            Some(&access),
            Some(json!({"verification_token": vt})),
        )
        .await;
    assert_eq!(s, 200, "{sudo}");

    let (s, v) = env
        .call(
            Method::DELETE,
            "/user/me?sudo_token=wrong",
            Some(&access),
            None,
        )
        .await;
    assert_error(s, &v, 403, "permission_denied");
    let (s, v) = env
        .call(
            Method::DELETE,
            &format!("/user/me?sudo_token={}", at(&sudo, "sudo_token")),
            Some(&access),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for token in [&access, &at(&second, "access_token")] {
        assert_eq!(env.introspect(token).await, json!({}));
        assert_eq!(env.get("/user/me", token).await.0, 401);
    }
    let (s, v) = env
        .post(
            "/token",
            json!({"grant_type": "refresh_token", "refresh_token": second["refresh_token"]}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_grant");
    let (s, v) = env
        .post(
            "/signin",
            json!({"username": "deleteme", "password": "delete-password"}),
        )
        .await;
    assert_error(s, &v, 404, "not_found");
    // The email is free again.
    env.register("del@example.com", "deleteme", "delete-password")
        .await;
}

#[tokio::test]
async fn providers_list_the_users_sign_in_methods() {
    let env = start().await;
    let t = env.signin("bob", "bob-password").await;
    let access = at(&t, "access_token");
    for path in ["/user/provider", "/user/providers"] {
        let (s, v) = env.get(path, &access).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["total"], 2);
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["username", "phone"]);
        assert_eq!(v["data"][1]["provider_user_name"], "+86 13900000000");
        assert_eq!(v["data"][1]["bind"], true);
    }
    let (s, v) = env.get("/user/provider", "nope").await;
    assert_error(s, &v, 401, "unauthenticated");
}

#[tokio::test]
async fn malformed_bodies_are_invalid_argument_in_the_envelope() {
    let env = start().await;
    let url = format!("{}/auth/v1/signin", env.base);
    for body in [
        "{not json",
        r#"{"username": 5, "password": "x"}"#,
        r#"{"password": "alice-password"}"#,
        r#"{"username": "alice"}"#,
        r#"["array"]"#,
        r#"{"username": "alice", "password": "alice-password"} trailing"#,
    ] {
        let resp = env
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert_error(status, &v, 400, "invalid_argument");
    }
    let (s, v) = env.post("/verification", json!({})).await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v) = env
        .post("/token", json!({"grant_type": "refresh_token"}))
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v) = env
        .post("/verification/verify", json!({"verification_id": ["x"]}))
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    assert!(
        at(&v, "error_description").contains("verification_id"),
        "{v}"
    );
    let (s, v) = env.post("/signup", json!({"email": "a@b.c"})).await;
    assert_error(s, &v, 400, "invalid_argument");
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_answer_in_the_envelope() {
    let env = start().await;
    for path in ["/auth/v1/nope", "/whatever", "/auth/v2/signin"] {
        let resp = env
            .http
            .post(format!("{}{path}", env.base))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert_error(status, &v, 404, "not_found");
    }
    let (s, v) = env.call(Method::GET, "/signin", None, None).await;
    assert_eq!(s, 405, "{v}");
    assert!(v["error"].is_string());
    let resp = env
        .http
        .get(format!("{}/healthz", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn cors_preflights_are_answered_on_every_auth_path() {
    let env = start().await;
    for path in ["/auth/v1/signin", "/auth/v1/user/me", "/auth/v1/nowhere"] {
        let resp = env
            .http
            .request(Method::OPTIONS, format!("{}{path}", env.base))
            .header("origin", "http://localhost:3000")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "x-device-id, content-type",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204, "{path}");
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
        assert_eq!(
            h["access-control-allow-headers"],
            "x-device-id, content-type"
        );
        assert!(h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("PATCH"));
    }
    let resp = env
        .http
        .post(format!("{}/auth/v1/signin", env.base))
        .header("origin", "http://localhost:3000")
        .json(&json!({"username": "alice", "password": "alice-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert_eq!(env.emu.calls("signin"), 1, "preflights are not counted");
}

#[tokio::test]
async fn stats_count_calls_per_endpoint_and_reset() {
    let env = start().await;
    let t = env.signin("alice", "alice-password").await;
    let access = at(&t, "access_token");
    for _ in 0..3 {
        env.introspect(&access).await;
    }
    env.get("/user/me", &access).await;
    env.get("/user/providers", &access).await;
    env.post("/signin-anonymously", json!({})).await;
    assert_eq!(env.emu.calls("introspect"), 3);
    assert_eq!(env.emu.calls("signin"), 1);
    assert_eq!(env.emu.calls("user_me"), 1);
    assert_eq!(env.emu.calls("providers"), 1);
    assert_eq!(env.emu.calls("signin_anonymously"), 1);
    assert_eq!(env.emu.calls("no_such_endpoint"), 0);

    let stats: Value = env
        .http
        .get(format!("{}/__emulator/stats", env.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let calls = stats["calls"].as_object().unwrap();
    let names = [
        "signin",
        "verification",
        "verify",
        "signup",
        "signin_anonymously",
        "token",
        "introspect",
        "revoke",
        "revoke_all",
        "revoke_device",
        "user_me",
        "sudo",
        "password",
        "delete_user",
        "providers",
    ];
    assert_eq!(calls.len(), names.len());
    for n in names {
        assert!(calls[n].is_u64(), "{n}");
    }
    assert_eq!(calls["introspect"], 3);
    assert_eq!(calls["delete_user"], 0);

    let resp = env
        .http
        .post(format!("{}/__emulator/stats/reset", env.base))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(env.emu.calls("introspect"), 0);
}

async fn set_fault(env: &Env, mode: &str) {
    let resp = env
        .http
        .post(format!("{}/__emulator/fault", env.base))
        .json(&json!({ "mode": mode }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{mode}");
}

#[tokio::test]
async fn fault_modes_break_every_auth_call_after_counting_it() {
    let env = start().await;
    let access = at(&env.signin("alice", "alice-password").await, "access_token");
    let introspect_url = format!("{}/auth/v1/token/introspect", env.base);

    set_fault(&env, "error500").await;
    let (s, v) = env.get("/token/introspect", &access).await;
    assert_error(s, &v, 500, "internal");
    let (s, v) = env.post("/signin", json!({})).await;
    assert_error(s, &v, 500, "internal");

    set_fault(&env, "garbage").await;
    let resp = env
        .http
        .get(&introspect_url)
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "not json");

    set_fault(&env, "hang").await;
    let hung = env
        .http
        .get(&introspect_url)
        .bearer_auth(&access)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());
    // Test hooks keep working while /auth/v1 hangs.
    let health = env
        .http
        .get(format!("{}/healthz", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    set_fault(&env, "ok").await;
    assert_eq!(
        env.introspect(&access).await["sub"].as_str().unwrap().len(),
        19
    );
    assert_eq!(
        env.emu.calls("introspect"),
        4,
        "faulty calls are counted too"
    );

    let resp = env
        .http
        .post(format!("{}/__emulator/fault", env.base))
        .json(&json!({"mode": "explode"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn hanging_requests_are_released_at_shutdown() {
    let emu = Emulator::new(&options());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(emu.clone().serve(listener, async {
        let _ = stop_rx.await;
    }));
    emu.set_fault(cloudbase_emulator::Fault::Hang);
    let http = Client::new();
    let pending = tokio::spawn(
        http.get(format!("http://{addr}/auth/v1/token/introspect"))
            .send(),
    );
    while emu.calls("introspect") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_tx.send(()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("released at shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 500);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn many_concurrent_calls_are_served() {
    let env = start().await;
    let access = at(&env.signin("alice", "alice-password").await, "access_token");
    let mut tasks = Vec::new();
    for i in 0..500 {
        let (http, base, access) = (env.http.clone(), env.base.clone(), access.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let v: Value = http
                    .get(format!("{base}/auth/v1/token/introspect"))
                    .bearer_auth(&access)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert!(v["sub"].is_string());
            } else {
                let resp = http
                    .post(format!("{base}/auth/v1/signin"))
                    .json(&json!({"username": "alice", "password": "alice-password"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(env.emu.calls("introspect"), 250);
    assert_eq!(env.emu.calls("signin"), 251);
}

// ---------------------------------------------------------------------------------------
// As strict as a real auth server: test hooks, attempt limits, token families, bodies
// ---------------------------------------------------------------------------------------

/// [`options`] with the test hooks off (the default) instead of on.
fn without_hooks() -> EmulatorOptions {
    EmulatorOptions {
        test_hooks: false,
        ..options()
    }
}

/// [`options`] with the attempt limits changed by `change`.
fn with_limits(change: impl FnOnce(&mut AttemptLimits)) -> EmulatorOptions {
    let mut options = options();
    change(&mut options.limits);
    options
}

/// An emulator whose clients set no timers, so a test can pause tokio's clock: with time
/// paused, any pending timer (a request timeout, the connection pool's idle sweep) would
/// be fired early by auto-advance while a request is on the wire.
async fn start_timerless(options: EmulatorOptions) -> Env {
    let mut env = start_with(options).await;
    env.http = Client::builder().pool_idle_timeout(None).build().unwrap();
    env
}

fn no_cors_permission(h: &reqwest::header::HeaderMap, what: &str) {
    for name in [
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-allow-credentials",
    ] {
        assert!(h.get(name).is_none(), "{what}: {name} = {:?}", h.get(name));
    }
}

#[tokio::test]
async fn a_web_pages_preflight_to_the_test_hooks_gets_no_cors_permission() {
    let env = start().await;
    for path in [
        "/__emulator/fault",
        "/__emulator/stats/reset",
        "/__emulator/stats",
    ] {
        let resp = env
            .http
            .request(Method::OPTIONS, format!("{}{path}", env.base))
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        assert!(!resp.status().is_success(), "{path}: {}", resp.status());
        no_cors_permission(resp.headers(), path);
    }
    // Not readable cross-origin either.
    let resp = env
        .http
        .get(format!("{}/__emulator/stats", env.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    no_cors_permission(resp.headers(), "GET stats");
    // The Auth v2 endpoints keep theirs: the JS SDK runs in browsers.
    let resp = env
        .http
        .request(Method::OPTIONS, format!("{}/auth/v1/signin", env.base))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn a_cross_site_text_or_form_post_cannot_inject_a_fault() {
    let env = start().await;
    let access = at(&env.signin("alice", "alice-password").await, "access_token");
    let fault_url = format!("{}/__emulator/fault", env.base);
    // What a page can send cross-site without a preflight: an HTML form (urlencoded,
    // multipart, text/plain) or a no-cors fetch, whose body may have no type at all.
    for content_type in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut req = env
            .http
            .post(&fault_url)
            .header("origin", "https://evil.example")
            .header("x-device-id", "even-with-a-device-id")
            .body(r#"{"mode":"hang"}"#);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        no_cors_permission(resp.headers(), "fault post");
        let v: Value = resp.json().await.unwrap();
        assert_error(status, &v, 415, "invalid_argument");
    }
    let resp = env
        .http
        .post(format!("{}/__emulator/stats/reset", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        415,
        "a bodiless reset needs the JSON type too"
    );
    // No fault took hold: the emulator still answers.
    let i = tokio::time::timeout(Duration::from_secs(5), env.introspect(&access))
        .await
        .expect("the emulator does not hang");
    assert!(i["sub"].is_string(), "{i}");
    assert_eq!(env.emu.calls("signin"), 1, "the reset did not happen");
    // A test that means it still can.
    set_fault(&env, "error500").await;
    let (s, v) = env.get("/token/introspect", &access).await;
    assert_error(s, &v, 500, "internal");
}

#[tokio::test]
async fn the_test_hooks_are_not_served_unless_enabled() {
    let env = start_with(without_hooks()).await;
    let access = at(&env.signin("alice", "alice-password").await, "access_token");
    for (method, path) in [
        (Method::GET, "/__emulator/stats"),
        (Method::POST, "/__emulator/stats/reset"),
        (Method::POST, "/__emulator/fault"),
    ] {
        let resp = env
            .http
            .request(method, format!("{}{path}", env.base))
            .json(&json!({"mode": "hang"}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert_error(status, &v, 404, "not_found");
    }
    assert!(env.introspect(&access).await["sub"].is_string());
    assert_eq!(env.emu.calls("signin"), 1, "counting goes on, in process");
}

/// Signs in `n` times with wrong passwords, 16 at a time; the statuses in order of answer.
async fn wrong_passwords(env: &Env, username: &str, n: usize) -> Vec<(StatusCode, Value)> {
    use futures_util::StreamExt as _;
    futures_util::stream::iter(0..n)
        .map(|i| {
            env.post(
                "/signin",
                json!({"username": username, "password": format!("guess-{i:06}")}),
            )
        })
        .buffer_unordered(16)
        .collect()
        .await
}

#[tokio::test]
async fn a_password_guessing_flood_is_locked_out_and_the_right_password_refused_meanwhile() {
    let env = start().await;
    let answers = wrong_passwords(&env, "alice", 2000).await;
    let wrong = answers.iter().filter(|(s, _)| *s == 400).count();
    let locked = answers.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(
        (wrong, locked),
        (5, 1995),
        "5 guesses (the default), then 429"
    );
    for (s, v) in answers.iter().filter(|(s, _)| *s == 429) {
        assert_error(*s, v, 429, "resource_exhausted");
    }
    let resp = env
        .http
        .post(format!("{}/auth/v1/signin", env.base))
        .header("origin", "http://localhost:5173")
        .json(&json!({"username": "alice", "password": "alice-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        429,
        "the right password is refused while locked"
    );
    assert_eq!(
        resp.headers()["access-control-expose-headers"],
        "retry-after",
        "a page using the SDK can read when to retry"
    );
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry), "Retry-After {retry}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "resource_exhausted");
    assert_eq!(v["error_code"], 8);
    // The login name's other spellings are the same account.
    let (s, _) = env
        .post(
            "/signin",
            json!({"username": "alice@example.com", "password": "alice-password"}),
        )
        .await;
    assert_eq!(s, 429);
    // Only alice is locked: refused guesses did not count against this client.
    env.signin("bob", "bob-password").await;
}

#[tokio::test(start_paused = true)]
async fn a_locked_out_user_signs_in_again_once_the_lockout_has_passed() {
    let env = start_timerless(with_limits(|l| {
        l.per_user = 3;
        l.lockout = Duration::from_secs(10 * 60);
    }))
    .await;
    let answers = wrong_passwords(&env, "alice", 10).await;
    assert_eq!(answers.iter().filter(|(s, _)| *s == 400).count(), 3);
    tokio::time::advance(Duration::from_secs(599)).await;
    let (s, v) = env
        .post(
            "/signin",
            json!({"username": "alice", "password": "alice-password"}),
        )
        .await;
    assert_error(s, &v, 429, "resource_exhausted");
    tokio::time::advance(Duration::from_secs(1)).await;
    env.signin("alice", "alice-password").await;
    // The success forgot the failures: three more guesses before the next lock.
    let answers = wrong_passwords(&env, "alice", 4).await;
    assert_eq!(answers.iter().filter(|(s, _)| *s == 400).count(), 3);
}

#[tokio::test(start_paused = true)]
async fn verification_code_guessing_is_locked_out_per_phone_number() {
    // Shorter than the 600 s a verification id lives, so the same id verifies after it.
    let env = start_timerless(with_limits(|l| l.lockout = Duration::from_secs(5 * 60))).await;
    let phone = "+86 13800000001";
    let start_verification = || async {
        let (s, v) = env
            .post("/verification", json!({ "phone_number": phone }))
            .await;
        assert_eq!(s, 200, "{v}");
        at(&v, "verification_id")
    };
    let id = start_verification().await;
    let mut statuses = Vec::new();
    for code in 0..50 {
        let (s, _) = env
            .post(
                "/verification/verify",
                json!({"verification_id": id, "verification_code": format!("{code:06}")}),
            )
            .await;
        statuses.push(s.as_u16());
    }
    assert_eq!(&statuses[..5], [400; 5]);
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    let env = &env;
    let verify = |id: String| async move {
        env.post(
            "/verification/verify",
            json!({"verification_id": id, "verification_code": "123456"}),
        )
        .await
    };
    let (s, v) = verify(id.clone()).await;
    assert_error(s, &v, 429, "resource_exhausted");
    // A fresh verification for the same number does not reset the count.
    let (s, _) = verify(start_verification().await).await;
    assert_eq!(s, 429);
    // Another number is not locked.
    let (s, other) = env
        .post("/verification", json!({"phone_number": "+86 13800000002"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(verify(at(&other, "verification_id")).await.0, 200);

    tokio::time::advance(Duration::from_secs(299)).await;
    assert_eq!(verify(id.clone()).await.0, 429);
    tokio::time::advance(Duration::from_secs(1)).await;
    let (s, v) = verify(id).await;
    assert_eq!(
        s, 200,
        "the first verification is still alive and now verifies: {v}"
    );
}

#[tokio::test]
async fn one_client_spraying_guesses_over_many_accounts_is_locked_out() {
    let env = start_with(with_limits(|l| {
        l.per_user = 5;
        l.per_client = 8;
    }))
    .await;
    // Two guesses at each of two accounts and four unknown names: 8, none locked alone.
    for (name, n) in [
        ("alice", 2),
        ("bob", 2),
        ("carol", 1),
        ("dave", 1),
        ("erin", 1),
        ("frank", 1),
    ] {
        for (s, _) in wrong_passwords(&env, name, n).await {
            assert!(s == 400 || s == 404, "{s}");
        }
    }
    let (s, v) = env
        .post(
            "/signin",
            json!({"username": "alice", "password": "alice-password"}),
        )
        .await;
    assert_error(s, &v, 429, "resource_exhausted");
    // Codes come out of the same budget.
    let (_, ver) = env
        .post("/verification", json!({"email": "new@example.com"}))
        .await;
    let (s, _) = env
        .post(
            "/verification/verify",
            json!({"verification_id": ver["verification_id"], "verification_code": "123456"}),
        )
        .await;
    assert_eq!(s, 429);
    // Another client (another loopback address) is not affected.
    let other = Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let resp = other
        .post(format!("{}/auth/v1/signin", env.base))
        .json(&json!({"username": "alice", "password": "alice-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn sign_ups_refreshes_and_many_good_sign_ins_are_not_limited() {
    let env = start().await;
    for i in 0..30 {
        env.register(
            &format!("user{i}@example.com"),
            &format!("user-{i}"),
            "long-enough",
        )
        .await;
    }
    let mut t = env.signin("alice", "alice-password").await;
    for _ in 0..30 {
        let (s, next) = env
            .post(
                "/token",
                json!({"grant_type": "refresh_token", "refresh_token": t["refresh_token"]}),
            )
            .await;
        assert_eq!(s, 200, "{next}");
        t = next;
    }
    for _ in 0..30 {
        env.signin("alice", "alice-password").await;
    }
    // A user's failures below the limit are forgotten by a success.
    for _ in 0..3 {
        for (s, _) in wrong_passwords(&env, "bob", 4).await {
            assert_eq!(s, 400);
        }
        env.signin("bob", "bob-password").await;
    }
}

#[tokio::test]
async fn a_replayed_refresh_token_revokes_its_whole_family() {
    let env = start().await;
    let refresh = |token: Value| {
        let env = &env;
        async move {
            env.post(
                "/token",
                json!({"grant_type": "refresh_token", "refresh_token": token}),
            )
            .await
        }
    };
    let first = env.signin("alice", "alice-password").await;
    let bystander = env.signin("alice", "alice-password").await;
    let (s, second) = refresh(first["refresh_token"].clone()).await;
    assert_eq!(s, 200);
    let (s, third) = refresh(second["refresh_token"].clone()).await;
    assert_eq!(s, 200);
    assert_eq!(
        env.get("/user/me", &at(&third, "access_token")).await.0,
        200
    );

    // A thief replays the rotated-out token (or the user does, after the thief rotated).
    let (s, v) = refresh(first["refresh_token"].clone()).await;
    assert_error(s, &v, 400, "invalid_grant");
    // Every member of the family is dead: the current refresh token and the access tokens.
    let (s, v) = refresh(third["refresh_token"].clone()).await;
    assert_error(s, &v, 400, "invalid_grant");
    for t in [&first, &second, &third] {
        let access = at(t, "access_token");
        assert_eq!(env.introspect(&access).await, json!({}));
        let (s, v) = env.get("/user/me", &access).await;
        assert_error(s, &v, 401, "unauthenticated");
    }
    // The user's other session is another family.
    assert_eq!(
        env.get("/user/me", &at(&bystander, "access_token")).await.0,
        200
    );
    let (s, _) = refresh(bystander["refresh_token"].clone()).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_sudo_token_works_only_once() {
    let env = start().await;
    let t = env.signin("bob", "bob-password").await;
    let access = at(&t, "access_token");
    let sudo_token = env.sudo(&access, "bob-password").await;
    let change = |new: &'static str| {
        let (env, access, sudo_token) = (&env, access.clone(), sudo_token.clone());
        async move {
            env.call(
                Method::PATCH,
                "/user/password",
                Some(&access),
                Some(json!({"new_password": new, "sudo_token": sudo_token})),
            )
            .await
        }
    };
    assert_eq!(change("bob-second-password").await.0, 200);
    let (s, v) = change("bob-third-password").await;
    assert_error(s, &v, 403, "permission_denied");
    let (s, v) = env
        .call(
            Method::DELETE,
            &format!("/user/me?sudo_token={sudo_token}"),
            Some(&access),
            None,
        )
        .await;
    assert_error(s, &v, 403, "permission_denied");
    env.signin("bob", "bob-second-password").await;
}

#[tokio::test]
async fn another_environments_client_id_is_refused() {
    let env = start().await;
    let t = env.signin("alice", "alice-password").await;
    let token_url = format!("{}/auth/v1/token", env.base);
    let grant = |refresh: &Value, client_id: Option<&str>| {
        let mut body = json!({"grant_type": "refresh_token", "refresh_token": refresh});
        if let Some(id) = client_id {
            body["client_id"] = json!(id);
        }
        body
    };
    let answer = |resp: reqwest::Response| async move {
        let status = resp.status();
        (status, resp.json::<Value>().await.unwrap())
    };
    // In the body (what the JS SDK sends), in the query, in Basic credentials.
    let (s, v) = env
        .post("/token", grant(&t["refresh_token"], Some("other-env")))
        .await;
    assert_error(s, &v, 401, "invalid_client");
    let resp = env
        .http
        .post(format!("{token_url}?client_id=other-env"))
        .json(&grant(&t["refresh_token"], None))
        .send()
        .await
        .unwrap();
    let (s, v) = answer(resp).await;
    assert_error(s, &v, 401, "invalid_client");
    let resp = env
        .http
        .post(&token_url)
        .basic_auth("other-env", Some("test-secret"))
        .json(&grant(&t["refresh_token"], None))
        .send()
        .await
        .unwrap();
    let (s, v) = answer(resp).await;
    assert_error(s, &v, 401, "invalid_client");
    // Refused before the grant: the refresh token was not spent (nor its family revoked).
    let (s, next) = env
        .post("/token", grant(&t["refresh_token"], Some("test-client")))
        .await;
    assert_eq!(s, 200, "{next}");
    // The env id is this environment's default client.
    let (s, _) = env
        .post("/token", grant(&next["refresh_token"], Some("test-env")))
        .await;
    assert_eq!(s, 200);
    // Sign-in with a foreign `?client_id=` too.
    let resp = env
        .http
        .post(format!("{}/auth/v1/signin?client_id=other-env", env.base))
        .json(&json!({"username": "alice", "password": "alice-password"}))
        .send()
        .await
        .unwrap();
    let (s, v) = answer(resp).await;
    assert_error(s, &v, 401, "invalid_client");
}

#[tokio::test]
async fn a_text_plain_or_form_sign_in_is_refused() {
    let env = start().await;
    let url = format!("{}/auth/v1/signin", env.base);
    let creds = r#"{"username":"alice","password":"alice-password"}"#;
    let post = |content_type: Option<&str>, device: bool| {
        let mut req = env.http.post(&url).body(creds);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        if device {
            req = req.header("x-device-id", "fedcba9876543210fedcba9876543210");
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    for (content_type, device) in [
        (Some("text/plain"), false),
        (Some("text/plain;charset=UTF-8"), false),
        (Some("application/x-www-form-urlencoded"), false),
        // The seed guide's curl lines: a device id, but a form type.
        (Some("application/x-www-form-urlencoded"), true),
        (Some("multipart/form-data; boundary=x"), true),
        (Some("application/jsonp"), true),
        (None, false),
    ] {
        let (s, v) = post(content_type, device).await;
        assert_error(s, &v, 415, "invalid_argument");
        assert!(
            at(&v, "error_description").contains("application/json"),
            "the answer says what to send: {v}"
        );
    }
    assert_eq!(env.emu.calls("signin"), 7);
    for (content_type, device) in [
        (Some("application/json"), false),
        (Some("application/json; charset=utf-8"), false),
        // The official SDK's fetch: its JSON string as text/plain, with its device id.
        (Some("text/plain;charset=UTF-8"), true),
    ] {
        let (s, v) = post(content_type, device).await;
        assert_eq!(s, 200, "{content_type:?}: {v}");
    }
}

/// Sends `head` over a raw socket and reads until the server closes or `deadline`;
/// returns what came back.
async fn raw_exchange(addr: &str, head: &[u8], body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    stream.write_all(body).await.unwrap();
    // The rest of the body is never sent: an answer proves it was not waited for.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if let Some(end) = find_end_of_answer(&got) {
                        got.truncate(end);
                        break;
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the emulator answered without waiting for the rest of the body");
    String::from_utf8_lossy(&got).into_owned()
}

/// The end of a complete `Content-Length` response in `bytes`, if there is one.
fn find_end_of_answer(bytes: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(bytes).ok()?;
    let head_end = text.find("\r\n\r\n")? + 4;
    let length: usize = text[..head_end]
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })?
        .parse()
        .ok()?;
    (bytes.len() >= head_end + length).then_some(head_end + length)
}

fn assert_413(answer: &str, what: &str) {
    assert!(answer.starts_with("HTTP/1.1 413"), "{what}: {answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: {answer}"));
    assert_eq!(v["error"], "invalid_argument", "{what}: {v}");
    assert!(
        v["error_description"].as_str().unwrap().contains("65536"),
        "{v}"
    );
}

#[tokio::test]
async fn a_50_mib_body_is_refused_with_413_before_it_is_read() {
    let env = start().await;
    let addr = env.base.trim_start_matches("http://").to_owned();
    let fifty_mib = 50 << 20;
    // Declared: refused on the head alone, on every path, whether its handler reads a body.
    for path in [
        "/auth/v1/signin",
        "/auth/v1/signin/anonymously",
        "/auth/v1/nowhere",
        "/__emulator/fault",
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             x-device-id: fedcba9876543210\r\ncontent-length: {fifty_mib}\r\n\r\n"
        );
        let answer = raw_exchange(&addr, head.as_bytes(), b"{\"username\":").await;
        assert_413(&answer, path);
    }
    // Chunked: read up to the limit, refused as soon as it is passed.
    let head = format!(
        "POST /auth/v1/signin HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    let chunk = format!("4000\r\n{}\r\n", " ".repeat(0x4000));
    let body = chunk.repeat(cloudbase_emulator::MAX_BODY / 0x4000 + 1);
    let answer = raw_exchange(&addr, head.as_bytes(), body.as_bytes()).await;
    assert_413(&answer, "chunked");
    assert_eq!(
        env.emu.calls("signin"),
        1,
        "the chunked one reached the handler"
    );
    // A body at the limit is read (and here, being blank, is `{}`).
    let resp = env
        .http
        .post(format!("{}/auth/v1/signin", env.base))
        .header("content-type", "application/json")
        .body(" ".repeat(cloudbase_emulator::MAX_BODY))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "missing username, not too large");
}

/// Signs `username` in from `device` (its `x-device-id`); returns the token response.
async fn signin_on(env: &Env, device: &str, username: &str, password: &str) -> Value {
    let resp = env
        .http
        .post(format!("{}/auth/v1/signin", env.base))
        .header("x-device-id", device)
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

fn access(v: &Value) -> &str {
    v["access_token"].as_str().unwrap()
}

#[tokio::test]
async fn revoke_all_ends_every_session_of_the_user_the_callers_too() {
    let env = start().await;
    let phone = signin_on(&env, "phone-device-000001", "alice", "alice-password").await;
    let laptop = signin_on(&env, "laptop-device-00001", "alice", "alice-password").await;
    let bob = env.signin("bob", "bob-password").await;

    let (s, v) = env
        .call(Method::DELETE, "/user/revoke/all", None, None)
        .await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::UNAUTHORIZED, &json!("unauthenticated"))
    );
    let (s, v) = env
        .call(
            Method::DELETE,
            "/user/revoke/all",
            Some(access(&phone)),
            None,
        )
        .await;
    assert_eq!((s, &v), (StatusCode::OK, &json!({})));

    for (name, t) in [("phone", &phone), ("laptop", &laptop)] {
        assert_eq!(env.introspect(access(t)).await, json!({}), "{name}");
        let (s, v) = env
            .post(
                "/token",
                json!({"grant_type": "refresh_token", "refresh_token": t["refresh_token"]}),
            )
            .await;
        assert_eq!(
            (s, &v["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_grant"))
        );
    }
    assert_eq!(
        env.introspect(access(&bob)).await["sub"],
        bob["sub"],
        "another user's session is untouched"
    );
    assert_eq!(env.emu.calls("revoke_all"), 2);
}

#[tokio::test]
async fn revoking_a_device_ends_only_the_sessions_opened_from_it() {
    let env = start().await;
    let phone = signin_on(&env, "phone-device-000001", "alice", "alice-password").await;
    let phone_again = signin_on(&env, "phone-device-000001", "alice", "alice-password").await;
    let laptop = signin_on(&env, "laptop-device-00001", "alice", "alice-password").await;
    let bobs_phone = signin_on(&env, "phone-device-000001", "bob", "bob-password").await;

    let (s, v) = env
        .call(
            Method::DELETE,
            "/user/authorized/devices/phone-device-000001",
            Some(access(&laptop)),
            None,
        )
        .await;
    assert_eq!((s, &v), (StatusCode::OK, &json!({})));
    assert_eq!(env.introspect(access(&phone)).await, json!({}));
    assert_eq!(env.introspect(access(&phone_again)).await, json!({}));
    assert_eq!(env.introspect(access(&laptop)).await["sub"], laptop["sub"]);
    assert_eq!(
        env.introspect(access(&bobs_phone)).await["sub"],
        bobs_phone["sub"],
        "only the caller's sessions on that device end"
    );
    let (s, v) = env
        .call(
            Method::DELETE,
            "/user/authorized/devices/no-such-device",
            Some(access(&laptop)),
            None,
        )
        .await;
    assert_eq!(
        (s, &v),
        (StatusCode::OK, &json!({})),
        "nothing to end is no error"
    );
    assert_eq!(env.emu.calls("revoke_device"), 2);
}
