//! CloudBase Auth v2 request and response bodies, as on the wire.
//!
//! Responses tolerate unknown fields (CloudBase adds fields without notice) and missing
//! optional ones; requests skip `None` fields so the JSON matches what the official SDK
//! sends. Shared by the client and the emulator (`cloudbase-emulator`).

use serde::{Deserialize, Serialize};

/// How `/token/introspect` is called, spelled `"bearer"` / `"client"` where it is
/// configured ([`IntrospectAuth::as_str`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IntrospectAuth {
    /// `Authorization: Bearer <token>` (the documented form; default).
    #[default]
    Bearer,
    /// HTTP Basic client credentials and `?token=<token>` (the seed guide's form).
    Client,
}

impl IntrospectAuth {
    /// Every form, in documentation order.
    pub const ALL: [IntrospectAuth; 2] = [IntrospectAuth::Bearer, IntrospectAuth::Client];

    /// `"bearer"` or `"client"`.
    pub fn as_str(self) -> &'static str {
        match self {
            IntrospectAuth::Bearer => "bearer",
            IntrospectAuth::Client => "client",
        }
    }
}

/// Token response of sign-in, sign-up, anonymous sign-in and refresh.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenResponse {
    #[serde(default)]
    pub token_type: String,
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub expires_in: u64,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub groups: Vec<Group>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .field("sub", &self.sub)
            .field("groups", &self.groups)
            .finish()
    }
}

/// A group membership: CloudBase sends either `"admin"` or `{"id": "admin", "expires_at": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Group {
    Id(String),
    Object {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
}

impl Group {
    pub fn id(&self) -> &str {
        match self {
            Group::Id(id) | Group::Object { id, .. } => id,
        }
    }

    pub fn expires_at(&self) -> Option<&str> {
        match self {
            Group::Id(_) => None,
            Group::Object { expires_at, .. } => expires_at.as_deref(),
        }
    }

    /// Unix seconds at which the membership ends, if it ends. An unparsable timestamp is
    /// treated as already expired: a group we cannot date must not grant access.
    pub fn expires_at_unix(&self) -> Option<i64> {
        let s = self.expires_at()?;
        Some(
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .unwrap_or(i64::MIN),
        )
    }

    /// Whether the membership still applies at `now` (Unix seconds).
    pub fn is_active_at(&self, now: i64) -> bool {
        self.expires_at_unix().is_none_or(|exp| exp > now)
    }
}

/// `/token/introspect`. Active: `{token_type, client_id, sub, scope}`; otherwise `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Introspection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl Introspection {
    /// CloudBase marks an inactive token by an empty object: no `sub`.
    pub fn is_active(&self) -> bool {
        self.sub.as_deref().is_some_and(|s| !s.is_empty())
    }
}

/// `GET /user/me`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProfile {
    #[serde(default)]
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default)]
    pub groups: Vec<Group>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProfileProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_password: Option<bool>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub user_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_user_type: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileProvider {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /verification` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationResponse {
    pub verification_id: String,
    #[serde(default)]
    pub expires_in: u64,
    #[serde(default)]
    pub is_user: bool,
}

/// `POST /verification/verify` response.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResponse {
    pub verification_token: String,
    #[serde(default)]
    pub expires_in: u64,
}

impl std::fmt::Debug for VerifyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyResponse")
            .field("verification_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// `POST /user/sudo` response.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SudoResponse {
    pub sudo_token: String,
    #[serde(default)]
    pub expires_in: u64,
}

impl std::fmt::Debug for SudoResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SudoResponse")
            .field("sudo_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// `GET /user/provider` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvidersResponse {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub data: Vec<Provider>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub picture: String,
    #[serde(default)]
    pub provider_user_name: String,
    #[serde(default)]
    pub provider_type: String,
    #[serde(default)]
    pub bind: bool,
}

/// The auth service's error envelope: `{"error", "error_code", "error_description"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub error_code: i64,
    #[serde(default)]
    pub error_description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// Claims of a CloudBase access token (decoded, never verified, by a client: CloudBase
/// publishes no key to verify them with).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub aud: String,
    #[serde(default)]
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub project_id: String,
    #[serde(default)]
    pub provider_type: String,
    #[serde(default)]
    pub user_type: String,
}

/// Writes `[redacted]` for a secret field, or `None` when it is absent.
fn redacted(v: &Option<String>) -> Option<&'static str> {
    v.as_ref().map(|_| "[redacted]")
}

/// `POST /signin`: `{username, password}` or `{verification_token}`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigninRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_token: Option<String>,
}

impl std::fmt::Debug for SigninRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigninRequest")
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("verification_token", &redacted(&self.verification_token))
            .finish()
    }
}

/// Who a verification code may be sent to (`target` of `POST /verification`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerificationTarget {
    /// Anyone (the service's default).
    Any,
    /// Only an existing user (sign-in by code).
    User,
    /// Only an address no user has (sign-up).
    NotUser,
    /// The signed-in user; the request needs their access token.
    CurUser,
}

/// `POST /verification`: `{phone_number}` or `{email}`, optional `target`.
///
/// `access_token` is not part of the body: when set, the call carries it as
/// `Authorization: Bearer`, which `target = CUR_USER` requires.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRequest {
    /// `"+86 13800000000"`: country code, a space, the number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<VerificationTarget>,
    #[serde(skip)]
    pub access_token: Option<String>,
}

impl std::fmt::Debug for VerificationRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationRequest")
            .field("phone_number", &self.phone_number)
            .field("email", &self.email)
            .field("target", &self.target)
            .field("access_token", &redacted(&self.access_token))
            .finish()
    }
}

/// `POST /verification/verify`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequest {
    pub verification_id: String,
    pub verification_code: String,
}

impl std::fmt::Debug for VerifyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyRequest")
            .field("verification_id", &self.verification_id)
            .field("verification_code", &"[redacted]")
            .finish()
    }
}

/// `POST /signup`: `phone_number` or `email`, the `verification_token` proving it, and
/// optional profile fields.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignupRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub verification_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture: Option<String>,
}

impl std::fmt::Debug for SignupRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignupRequest")
            .field("phone_number", &self.phone_number)
            .field("email", &self.email)
            .field("verification_token", &"[redacted]")
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("name", &self.name)
            .field("gender", &self.gender)
            .field("picture", &self.picture)
            .finish()
    }
}

/// `POST /token` with `grant_type = "refresh_token"`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRequest {
    pub grant_type: String,
    pub refresh_token: String,
}

impl std::fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshRequest")
            .field("grant_type", &self.grant_type)
            .field("refresh_token", &"[redacted]")
            .finish()
    }
}

/// `POST /revoke`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeRequest {
    pub token: String,
}

impl std::fmt::Debug for RevokeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevokeRequest")
            .field("token", &"[redacted]")
            .finish()
    }
}

/// `POST /user/sudo`: `{password}` or `{verification_token}`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SudoRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_token: Option<String>,
}

impl std::fmt::Debug for SudoRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SudoRequest")
            .field("password", &redacted(&self.password))
            .field("verification_token", &redacted(&self.verification_token))
            .finish()
    }
}

/// `PATCH /user/password`: the new password and either the old one or a sudo token.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangePasswordRequest {
    pub new_password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo_token: Option<String>,
}

impl std::fmt::Debug for ChangePasswordRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangePasswordRequest")
            .field("new_password", &"[redacted]")
            .field("old_password", &redacted(&self.old_password))
            .field("sudo_token", &redacted(&self.sudo_token))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_parse_as_strings_or_objects() {
        let p: UserProfile = serde_json::from_str(
            r#"{"sub":"1","groups":["user",{"id":"admin","expires_at":"2020-01-01T00:00:00Z"}],"extra":1}"#,
        )
        .unwrap();
        assert_eq!(p.groups[0].id(), "user");
        assert_eq!(p.groups[1].id(), "admin");
        let now = 1_700_000_000;
        assert!(p.groups[0].is_active_at(now));
        assert!(!p.groups[1].is_active_at(now));
    }

    #[test]
    fn unparsable_group_expiry_counts_as_expired() {
        let g = Group::Object {
            id: "a".into(),
            expires_at: Some("soon".into()),
        };
        assert!(!g.is_active_at(0));
    }

    #[test]
    fn empty_introspection_is_inactive() {
        let i: Introspection = serde_json::from_str("{}").unwrap();
        assert!(!i.is_active());
    }
    #[test]
    fn requests_skip_absent_fields_and_name_targets_like_the_sdk() {
        let req = VerificationRequest {
            email: Some("a@example.com".into()),
            target: Some(VerificationTarget::CurUser),
            access_token: Some("tok".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"email":"a@example.com","target":"CUR_USER"}"#
        );
        let req = ChangePasswordRequest {
            new_password: "n".into(),
            sudo_token: Some("s".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"new_password":"n","sudo_token":"s"}"#
        );
    }

    #[test]
    fn request_debug_redacts_passwords_and_tokens() {
        let shown = format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            SigninRequest {
                username: Some("alice".into()),
                password: Some("pw-secret".into()),
                verification_token: Some("vt-secret".into()),
            },
            VerificationRequest {
                access_token: Some("at-secret".into()),
                ..Default::default()
            },
            VerifyRequest {
                verification_id: "id".into(),
                verification_code: "code-secret".into(),
            },
            SignupRequest {
                verification_token: "vt-secret".into(),
                password: Some("pw-secret".into()),
                ..Default::default()
            },
            RefreshRequest {
                grant_type: "refresh_token".into(),
                refresh_token: "rt-secret".into(),
            },
            RevokeRequest {
                token: "at-secret".into(),
            },
            SudoRequest {
                password: Some("pw-secret".into()),
                verification_token: None,
            },
            ChangePasswordRequest {
                new_password: "pw-secret".into(),
                old_password: Some("pw-secret".into()),
                sudo_token: Some("st-secret".into()),
            },
        );
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("alice"));
    }
}
