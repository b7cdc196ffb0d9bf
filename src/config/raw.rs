//! The configuration file exactly as written: serde types mirroring the TOML, every key
//! optional, unknown keys rejected. Nothing here is validated; see `super` (the `validate_*` functions).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub request_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_concurrent_streams: Option<u64>,
    pub max_body_size: Option<String>,
    pub max_connections: Option<u64>,
    pub shutdown_grace_period: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub escaped_slashes: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloudbase {
    pub env_id: Option<String>,
    pub region: Option<String>,
    pub base_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub device_id: Option<String>,
    pub introspect_auth: Option<String>,
    pub timeout: Option<String>,
    pub max_in_flight: Option<u64>,
    pub ca_file: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_host: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub max_entries: Option<u64>,
    pub max_memory: Option<String>,
    pub ttl: Option<String>,
    pub negative_ttl: Option<String>,
    pub stale_if_error: Option<String>,
    /// `[cache.redis]`; absent = no shared tier.
    pub redis: Option<RawRedis>,
}

/// No `Debug`: `url` and `hmac_key` hold secrets.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: Option<String>,
    pub key_prefix: Option<String>,
    pub timeout: Option<String>,
    pub hmac_key: Option<String>,
    pub breaker_failures: Option<u64>,
    pub breaker_cooldown: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub headers: Option<BTreeMap<String, String>>,
    pub max_header_bytes: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub prefix: Option<String>,
    pub upstream: Option<String>,
    pub auth: Option<String>,
    pub strip_prefix: Option<bool>,
    pub methods: Option<Vec<String>>,
    pub allow_anonymous: Option<bool>,
    pub require_groups: Option<Vec<String>>,
    pub pass_token: Option<bool>,
    pub allow_preflight: Option<bool>,
    pub rate_limit: Option<String>,
    pub rate_limit_burst: Option<u32>,
    pub rate_limit_max_keys: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwardAuth {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub default_auth: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    pub enabled: Option<bool>,
    pub prefix: Option<String>,
    pub allowed_origins: Option<Vec<String>>,
    pub client_id: Option<String>,
    pub max_body_size: Option<String>,
    pub signin_rate: Option<String>,
    pub signin_burst: Option<u32>,
    pub signup_rate: Option<String>,
    pub signup_burst: Option<u32>,
    pub verification_rate: Option<String>,
    pub verification_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<f64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmulator {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub verification_code: Option<String>,
    pub access_token_ttl: Option<String>,
    pub allow_anonymous: Option<bool>,
    pub test_hooks: Option<bool>,
    pub failed_attempts_per_user: Option<u32>,
    pub failed_attempts_per_client: Option<u32>,
    pub lockout: Option<String>,
    pub users: Option<Vec<RawEmulatorUser>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmulatorUser {
    pub username: Option<String>,
    pub password: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub groups: Option<Vec<RawGroup>>,
}

/// A group is either `"admin"` or `{ id = "admin", expires_at = "2026-12-31T00:00:00Z" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawGroup {
    Id(String),
    Table {
        id: String,
        expires_at: Option<String>,
    },
}
