//! `[cloudbase]`: where and how to reach CloudBase Auth v2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cloudbase_auth::IntrospectAuth;
use http::Uri;
use serde::{Deserialize, Serialize};

use super::ser;
use super::validate::{duration, keyword, Errors};
use crate::keyword::Keyword;
use crate::secret::Secret;

/// `[cloudbase]` as written. No `Debug`: `client_secret` is a secret.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCloudbase {
    env_id: Option<String>,
    region: Option<String>,
    base_url: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    device_id: Option<String>,
    introspect_auth: Option<String>,
    timeout: Option<String>,
    max_in_flight: Option<u64>,
    breaker_failures: Option<u64>,
    breaker_cooldown: Option<String>,
    ca_file: Option<String>,
}

/// `cloudbase.max_in_flight` when unset.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// `[cloudbase]`, validated. `Default` holds the defaults; `Serialize` is the effective
/// configuration's `[cloudbase]` table (the secret redacted).
#[derive(Debug, Clone, Serialize)]
pub struct CloudbaseSettings {
    pub env_id: String,
    /// Default `ap-shanghai`.
    pub region: String,
    /// The Auth v2 URL, ending in `/auth/v1` without a trailing slash: as configured, or
    /// derived from `env_id` and `region`. `None` when neither is given and the emulator is
    /// embedded: then it is the embedded emulator's, known only once it has bound its
    /// listener (see [`CloudbaseSettings::base_url_with`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Default `env_id`.
    pub client_id: String,
    /// Empty means: send no client credentials.
    #[serde(serialize_with = "ser::secret")]
    pub client_secret: Secret,
    /// Sent as `x-device-id`. Default `cloudbase-gateway`.
    pub device_id: String,
    /// Default `bearer`.
    #[serde(serialize_with = "ser::keyword")]
    pub introspect_auth: IntrospectAuth,
    /// Per CloudBase call. Default 2 s.
    #[serde(serialize_with = "ser::duration")]
    pub timeout: Duration,
    /// CloudBase calls open at once, at most; a validation needing more is answered as
    /// if CloudBase were unavailable. Default [`DEFAULT_MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    /// Validations in a row that CloudBase failed (5xx, timeout, transport, garbage) after
    /// which it is not asked for `breaker_cooldown`: cache misses are answered as if it
    /// were unavailable, at once. Then one validation goes through as a probe. 0: never.
    /// Default 5.
    pub breaker_failures: u32,
    /// Default 1 s.
    #[serde(serialize_with = "ser::duration")]
    pub breaker_cooldown: Duration,
    /// Extra PEM roots trusted for CloudBase and `https://` upstreams.
    #[serde(
        serialize_with = "ser::some_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub ca_file: Option<PathBuf>,
}

impl Default for CloudbaseSettings {
    fn default() -> Self {
        CloudbaseSettings {
            env_id: String::new(),
            region: "ap-shanghai".to_owned(),
            base_url: None,
            client_id: String::new(),
            client_secret: Secret::default(),
            device_id: "cloudbase-gateway".to_owned(),
            introspect_auth: IntrospectAuth::default(),
            timeout: Duration::from_secs(2),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(1),
            ca_file: None,
        }
    }
}

impl CloudbaseSettings {
    /// The base URL in force when the embedded emulator, if any, listens at `emulator`:
    /// [`CloudbaseSettings::base_url`] when set, else the emulator's.
    pub fn base_url_with(&self, emulator: Option<SocketAddr>) -> Option<String> {
        self.base_url
            .clone()
            .or_else(|| emulator.map(|addr| format!("http://{addr}/auth/v1")))
    }
}

impl Keyword for IntrospectAuth {
    const ALL: &'static [IntrospectAuth] = &IntrospectAuth::ALL;
    fn as_str(self) -> &'static str {
        IntrospectAuth::as_str(self)
    }
}

/// What the emulator shares with the gateway: the env id, region, client id and secret,
/// with their defaults, and none of the rules only the gateway needs.
pub(super) fn identity(raw: &RawCloudbase) -> CloudbaseSettings {
    let d = CloudbaseSettings::default();
    let env_id = raw.env_id.clone().unwrap_or(d.env_id);
    CloudbaseSettings {
        client_id: raw.client_id.clone().unwrap_or_else(|| env_id.clone()),
        region: raw.region.clone().unwrap_or(d.region),
        client_secret: Secret::new(raw.client_secret.clone().unwrap_or_default()),
        env_id,
        ..CloudbaseSettings::default()
    }
}

/// `emulator_embedded`: `[emulator] enabled`, which lets `base_url` and `env_id` be unset.
pub(super) fn validate(
    raw: RawCloudbase,
    emulator_embedded: bool,
    errors: &mut Errors,
) -> CloudbaseSettings {
    let d = CloudbaseSettings::default();
    let shared = identity(&raw);
    let (env_id, region) = (&shared.env_id, &shared.region);
    let base_url = match raw.base_url {
        Some(url) => {
            let trimmed = url.trim_end_matches('/').to_owned();
            match trimmed.parse::<Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some() =>
                {
                    Some(trimmed)
                }
                _ => {
                    errors.push(
                        "cloudbase.base_url",
                        format!("{url:?} is not an http:// or https:// URL"),
                    );
                    None
                }
            }
        }
        None if emulator_embedded => None,
        None => {
            if env_id.is_empty() {
                errors.push(
                    "cloudbase.env_id",
                    "missing: needed to derive the CloudBase URL (or set cloudbase.base_url, or enable [emulator])",
                );
            } else if !env_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                errors.push(
                    "cloudbase.env_id",
                    format!("{env_id:?} is not a CloudBase env id"),
                );
            }
            Some(format!(
                "https://{env_id}.{region}.tcb-api.tencentcloudapi.com/auth/v1"
            ))
        }
    };
    let introspect_auth = keyword(
        raw.introspect_auth.as_deref(),
        "cloudbase.introspect_auth",
        d.introspect_auth,
        errors,
    );
    if introspect_auth == IntrospectAuth::Client && shared.client_secret.is_empty() {
        errors.push(
            "cloudbase.client_secret",
            "missing: introspect_auth = \"client\" sends client credentials",
        );
    }
    let ca_file = raw.ca_file.map(PathBuf::from);
    if let Some(path) = &ca_file {
        if !path.is_file() {
            errors.push(
                "cloudbase.ca_file",
                format!("{} is not a readable file", path.display()),
            );
        }
    }
    CloudbaseSettings {
        base_url,
        device_id: raw.device_id.unwrap_or(d.device_id),
        introspect_auth,
        timeout: duration(raw.timeout, "cloudbase.timeout", d.timeout, errors),
        max_in_flight: match raw.max_in_flight {
            None => d.max_in_flight,
            Some(n @ 2..) => usize::try_from(n).unwrap_or(usize::MAX),
            Some(_) => {
                errors.push(
                    "cloudbase.max_in_flight",
                    "must be at least 2 (one validation makes two calls at once)",
                );
                d.max_in_flight
            }
        },
        breaker_failures: match raw.breaker_failures {
            None => d.breaker_failures,
            Some(n @ 0..=1000) => n as u32,
            Some(_) => {
                errors.push("cloudbase.breaker_failures", "must be 0 (never) to 1000");
                d.breaker_failures
            }
        },
        breaker_cooldown: {
            let cooldown = duration(
                raw.breaker_cooldown,
                "cloudbase.breaker_cooldown",
                d.breaker_cooldown,
                errors,
            );
            if cooldown.is_zero() {
                errors.push("cloudbase.breaker_cooldown", "must be more than 0");
            }
            cooldown
        },
        ca_file,
        ..shared
    }
}
