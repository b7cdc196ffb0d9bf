//! CloudBase Auth v2 request and response bodies, as on the wire.
//!
//! Responses tolerate unknown fields (CloudBase adds fields without notice) and missing
//! optional ones; requests skip `None` fields so the JSON matches what the official SDK
//! sends. Shared by the client, the emulator and the gateway.

use serde::{Deserialize, Serialize};

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

/// Claims of a CloudBase access token (decoded, not verified, by the gateway).
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
}
