//! The typed client against the emulator over real sockets: every endpoint's success path
//! and its main error paths.

use cloudbase_gateway::cloudbase::types::{
    ChangePasswordRequest, SignupRequest, VerificationRequest, VerificationTarget,
};
use cloudbase_gateway::cloudbase::{CallOptions, Client, Error};
use cloudbase_gateway::config::{Config, IntrospectAuth};
use cloudbase_gateway::emulator::Emulator;
use http::StatusCode;

const USERS: &str = r#"
[cloudbase]
env_id = "test-env"
client_id = "test-client"
client_secret = "test-secret"
[emulator]
verification_code = "123456"
EMULATOR_EXTRA
[[emulator.users]]
username = "alice"
password = "alice-password"
name = "Alice"
email = "alice@example.com"
groups = ["user", { id = "beta", expires_at = "2001-01-01T00:00:00Z" }, { id = "admin", expires_at = "2099-01-01T00:00:00Z" }]
"#;

/// An emulator on 127.0.0.1:0 (with `extra` keys in `[emulator]`) and a client for it.
async fn setup(extra: &str) -> (Emulator, Client) {
    let config = Config::from_toml_str(&USERS.replace("EMULATOR_EXTRA", extra)).unwrap();
    let emulator = Emulator::new(&config.emulator, &config.cloudbase);
    let (addr, _task) = emulator
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client_config = Config::from_toml_str(&format!(
        "[cloudbase]\nbase_url = \"http://{addr}/auth/v1\"\nclient_id = \"test-client\"\nclient_secret = \"test-secret\"\n"
    ))
    .unwrap();
    (emulator, Client::new(&client_config.cloudbase).unwrap())
}

fn opts() -> CallOptions {
    CallOptions::default()
}

fn device(id: &str) -> CallOptions {
    CallOptions {
        device_id: Some(id.to_owned()),
        ..Default::default()
    }
}

#[track_caller]
fn assert_api(e: Error, status: StatusCode, error: &str) {
    match e {
        Error::Api {
            status: s,
            error: ref code,
            ..
        } => {
            assert_eq!((s, code.as_str()), (status, error), "{e}")
        }
        other => panic!("expected {status} {error}, got {other:?}"),
    }
}

#[tokio::test]
async fn sign_in_with_password_and_read_the_profile() {
    let (_, c) = setup("").await;
    let t = c
        .signin_password("alice", "alice-password", &opts())
        .await
        .unwrap();
    assert_eq!(t.token_type, "Bearer");
    assert_eq!(t.expires_in, 7200);
    assert!(t.refresh_token.is_some());
    let me = c.user_me(&t.access_token, &opts()).await.unwrap();
    assert_eq!(me.sub, t.sub);
    assert_eq!(me.sub.len(), 19, "registered users have 19-digit subs");
    assert_eq!(me.name.as_deref(), Some("Alice"));
    assert_eq!(me.email.as_deref(), Some("alice@example.com"));
    // Expired groups are reported as such, with their expiry.
    let beta = me.groups.iter().find(|g| g.id() == "beta").unwrap();
    assert_eq!(beta.expires_at(), Some("2001-01-01T00:00:00Z"));
    assert!(!beta.is_active_at(1_700_000_000));
    let admin = me.groups.iter().find(|g| g.id() == "admin").unwrap();
    assert!(admin.is_active_at(1_700_000_000));

    assert_api(
        c.signin_password("alice", "wrong-password", &opts())
            .await
            .unwrap_err(),
        StatusCode::BAD_REQUEST,
        "invalid_password",
    );
    assert_api(
        c.signin_password("nobody", "whatever-pass", &opts())
            .await
            .unwrap_err(),
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn introspect_in_both_modes() {
    let (_, c) = setup("").await;
    let t = c
        .signin_password("alice", "alice-password", &opts())
        .await
        .unwrap();
    for mode in [IntrospectAuth::Bearer, IntrospectAuth::Client] {
        let i = c
            .introspect_with(&t.access_token, mode, &opts())
            .await
            .unwrap();
        assert!(i.is_active(), "{mode:?}");
        assert_eq!(i.sub.as_deref(), Some(t.sub.as_str()));
        assert_eq!(i.client_id.as_deref(), Some("test-client"));
        let garbage = c
            .introspect_with("garbage.token.value", mode, &opts())
            .await
            .unwrap();
        assert!(!garbage.is_active(), "{mode:?}: {{}} for an invalid token");
    }
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_replayed_one_revokes_its_family() {
    let (_, c) = setup("").await;
    let t = c
        .signin_password("alice", "alice-password", &opts())
        .await
        .unwrap();
    let old = t.refresh_token.unwrap();
    let next = c.refresh(&old, &opts()).await.unwrap();
    let new = next.refresh_token.clone().unwrap();
    assert_ne!(old, new);
    assert!(c.user_me(&next.access_token, &opts()).await.is_ok());
    let newer = c.refresh(&new, &opts()).await.unwrap();
    assert!(c.user_me(&newer.access_token, &opts()).await.is_ok());

    // The first refresh token comes back: someone copied it. The whole session ends.
    assert_api(
        c.refresh(&old, &opts()).await.unwrap_err(),
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    assert_api(
        c.refresh(newer.refresh_token.as_deref().unwrap(), &opts())
            .await
            .unwrap_err(),
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    for access in [&t.access_token, &next.access_token, &newer.access_token] {
        assert!(!c.introspect(access, &opts()).await.unwrap().is_active());
    }
}

#[tokio::test]
async fn revoke_kills_the_token_at_once() {
    let (_, c) = setup("").await;
    let t = c
        .signin_password("alice", "alice-password", &opts())
        .await
        .unwrap();
    c.revoke(&t.access_token, &opts()).await.unwrap();
    assert!(!c
        .introspect(&t.access_token, &opts())
        .await
        .unwrap()
        .is_active());
    let e = c.user_me(&t.access_token, &opts()).await.unwrap_err();
    assert!(e.is_unauthenticated());
    assert_api(e, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn verification_sign_up_and_duplicates() {
    let (_, c) = setup("").await;
    let phone = "+86 13800000001";
    let req = VerificationRequest {
        phone_number: Some(phone.into()),
        target: Some(VerificationTarget::NotUser),
        ..Default::default()
    };
    let v = c.send_verification(&req, &opts()).await.unwrap();
    assert_eq!(v.expires_in, 600);
    assert!(!v.is_user);
    assert_api(
        c.verify(&v.verification_id, "000000", &opts())
            .await
            .unwrap_err(),
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    );
    let token = c
        .verify(&v.verification_id, "123456", &opts())
        .await
        .unwrap();
    let signup = SignupRequest {
        phone_number: Some(phone.into()),
        verification_token: token.verification_token.clone(),
        username: Some("newbie".into()),
        password: Some("newbie-password".into()),
        name: Some("手机用户".into()),
        ..Default::default()
    };
    let t = c.signup(&signup, &opts()).await.unwrap();
    let me = c.user_me(&t.access_token, &opts()).await.unwrap();
    assert_eq!(me.name.as_deref(), Some("手机用户"));
    assert_eq!(me.phone_number.as_deref(), Some(phone));
    assert!(c
        .signin_password("newbie", "newbie-password", &opts())
        .await
        .is_ok());

    // The same username again: 409 already_exists.
    let v = c
        .send_verification(
            &VerificationRequest {
                email: Some("other@example.com".into()),
                ..Default::default()
            },
            &opts(),
        )
        .await
        .unwrap();
    let token = c
        .verify(&v.verification_id, "123456", &opts())
        .await
        .unwrap();
    let dup = SignupRequest {
        email: Some("other@example.com".into()),
        verification_token: token.verification_token.clone(),
        username: Some("newbie".into()),
        password: Some("another-password".into()),
        ..Default::default()
    };
    assert_api(
        c.signup(&dup, &opts()).await.unwrap_err(),
        StatusCode::CONFLICT,
        "already_exists",
    );
    let short = SignupRequest {
        username: Some("fresh".into()),
        password: Some("short".into()),
        ..dup
    };
    assert_api(
        c.signup(&short, &opts()).await.unwrap_err(),
        StatusCode::BAD_REQUEST,
        "invalid_password",
    );
}

#[tokio::test]
async fn sign_in_with_a_verification_token() {
    let (_, c) = setup("").await;
    let req = VerificationRequest {
        email: Some("alice@example.com".into()),
        target: Some(VerificationTarget::User),
        ..Default::default()
    };
    let v = c.send_verification(&req, &opts()).await.unwrap();
    assert!(v.is_user);
    let token = c
        .verify(&v.verification_id, "123456", &opts())
        .await
        .unwrap();
    let t = c
        .signin_verification_token(&token.verification_token, &opts())
        .await
        .unwrap();
    assert_eq!(
        c.user_me(&t.access_token, &opts())
            .await
            .unwrap()
            .username
            .as_deref(),
        Some("alice")
    );
}

#[tokio::test]
async fn anonymous_users_are_reused_per_device_and_refusable() {
    let (_, c) = setup("").await;
    let a = c
        .signin_anonymously(&device("device-aaaaaaaaaaaaaaaa"))
        .await
        .unwrap();
    let again = c
        .signin_anonymously(&device("device-aaaaaaaaaaaaaaaa"))
        .await
        .unwrap();
    let other = c
        .signin_anonymously(&device("device-bbbbbbbbbbbbbbbb"))
        .await
        .unwrap();
    assert_eq!(a.scope, "anonymous");
    assert_eq!(a.sub, again.sub, "same device, same anonymous user");
    assert_ne!(a.sub, other.sub);
    assert_eq!(a.sub.len(), 22);
    let i = c.introspect(&a.access_token, &opts()).await.unwrap();
    assert_eq!(i.scope.as_deref(), Some("anonymous"));

    let (_, refusing) = setup("allow_anonymous = false\n").await;
    assert_api(
        refusing
            .signin_anonymously(&device("device-aaaaaaaaaaaaaaaa"))
            .await
            .unwrap_err(),
        StatusCode::NOT_IMPLEMENTED,
        "unimplemented",
    );
}

#[tokio::test]
async fn sudo_and_password_change_sign_out_the_other_sessions() {
    let (_, c) = setup("").await;
    let mine = c
        .signin_password("alice", "alice-password", &opts())
        .await
        .unwrap();
    let other = c
        .signin_password("alice", "alice-password", &opts())
        .await
        .unwrap();
    assert_api(
        c.sudo_password(&mine.access_token, "not-my-password", &opts())
            .await
            .unwrap_err(),
        StatusCode::FORBIDDEN,
        "permission_denied",
    );
    let sudo = c
        .sudo_password(&mine.access_token, "alice-password", &opts())
        .await
        .unwrap();
    assert_eq!(sudo.expires_in, 900);
    let change = ChangePasswordRequest {
        new_password: "alice-new-password".into(),
        sudo_token: Some(sudo.sudo_token),
        ..Default::default()
    };
    c.change_password(&mine.access_token, &change, &opts())
        .await
        .unwrap();
    assert!(
        c.user_me(&mine.access_token, &opts()).await.is_ok(),
        "the calling session stays"
    );
    assert!(c
        .user_me(&other.access_token, &opts())
        .await
        .unwrap_err()
        .is_unauthenticated());
    assert_api(
        c.refresh(other.refresh_token.as_deref().unwrap(), &opts())
            .await
            .unwrap_err(),
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    assert!(c
        .signin_password("alice", "alice-password", &opts())
        .await
        .is_err());
    assert!(c
        .signin_password("alice", "alice-new-password", &opts())
        .await
        .is_ok());

    // The seed guide's form: old_password instead of a sudo token.
    let by_old = ChangePasswordRequest {
        new_password: "alice-third-password".into(),
        old_password: Some("alice-new-password".into()),
        ..Default::default()
    };
    c.change_password(&mine.access_token, &by_old, &opts())
        .await
        .unwrap();
    let wrong = ChangePasswordRequest {
        old_password: Some("nope-nope-nope".into()),
        ..by_old
    };
    assert_api(
        c.change_password(&mine.access_token, &wrong, &opts())
            .await
            .unwrap_err(),
        StatusCode::FORBIDDEN,
        "permission_denied",
    );
}

#[tokio::test]
async fn deleting_the_user_kills_every_token() {
    let (_, c) = setup("").await;
    let a = c
        .signin_password("alice", "alice-password", &opts())
        .await
        .unwrap();
    let b = c
        .signin_password("alice", "alice-password", &opts())
        .await
        .unwrap();
    assert!(c
        .delete_user(&a.access_token, "not-a-sudo-token", &opts())
        .await
        .is_err());
    let sudo = c
        .sudo_password(&a.access_token, "alice-password", &opts())
        .await
        .unwrap();
    c.delete_user(&a.access_token, &sudo.sudo_token, &opts())
        .await
        .unwrap();
    for t in [&a, &b] {
        assert!(!c
            .introspect(&t.access_token, &opts())
            .await
            .unwrap()
            .is_active());
    }
    assert!(c
        .signin_password("alice", "alice-password", &opts())
        .await
        .is_err());
}

#[tokio::test]
async fn providers_are_listed() {
    let (_, c) = setup("").await;
    let t = c
        .signin_password("alice", "alice-password", &opts())
        .await
        .unwrap();
    let p = c.list_providers(&t.access_token, &opts()).await.unwrap();
    assert_eq!(p.total as usize, p.data.len());
    assert!(p.total >= 1);
    assert!(c
        .list_providers("bad-token", &opts())
        .await
        .unwrap_err()
        .is_unauthenticated());
}

#[tokio::test]
async fn the_emulator_counts_calls_per_endpoint() {
    let (emulator, c) = setup("").await;
    let t = c
        .signin_password("alice", "alice-password", &opts())
        .await
        .unwrap();
    c.introspect(&t.access_token, &opts()).await.unwrap();
    c.introspect(&t.access_token, &opts()).await.unwrap();
    c.user_me(&t.access_token, &opts()).await.unwrap();
    assert_eq!(emulator.calls("signin"), 1);
    assert_eq!(emulator.calls("introspect"), 2);
    assert_eq!(emulator.calls("user_me"), 1);
}
