//! Configuration: the TOML file (`raw`) and the validated settings every component is
//! built from (this module).
//!
//! Loading goes file -> `toml::Value` -> `${NAME}` interpolation -> one serde pass per
//! section -> validation. Each stage collects errors instead of stopping at the first, so
//! `cloudbase-gateway check` can list every mistake, each with its key
//! (`routes[1].upstream: …`). Durations, sizes, URLs, CIDRs and header names are parsed
//! here once; nothing downstream parses configuration again.

mod effective;
mod raw;
mod secret;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use ipnet::IpNet;
use serde::de::DeserializeOwned;

pub use crate::path::EscapedSlashes;
pub use raw::RawGroup;
pub use secret::Secret;

/// Every setting of the gateway, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub cloudbase: CloudbaseSettings,
    pub cache: CacheSettings,
    pub identity: IdentitySettings,
    pub routes: Vec<RouteSettings>,
    pub forward_auth: ForwardAuthSettings,
    pub emulator: EmulatorSettings,
}

/// `[server]`: the public listener.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// PEM certificate chain and key; both or neither. With them the listener speaks TLS.
    pub tls: Option<TlsFiles>,
    /// Whole request, upstream included. Default 30 s.
    pub request_timeout: Duration,
    /// Time allowed for a client to send its request head. Default 10 s.
    pub header_read_timeout: Duration,
    /// Largest request body accepted. Default 10 MiB.
    pub max_body_size: u64,
    /// Open client connections at most. Default 10 000.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown. Default 30 s.
    pub shutdown_grace_period: Duration,
    /// Peers whose `X-Forwarded-For` is extended rather than replaced. Default none.
    pub trusted_proxies: Vec<IpNet>,
    /// `%2F` / `%5C` in a path: refused (default) or kept encoded. See [`crate::path`].
    pub escaped_slashes: EscapedSlashes,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[admin]`: health, readiness, metrics and cache purge.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Default `127.0.0.1:9090`.
    pub listen: SocketAddr,
}

/// How `/token/introspect` is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectAuth {
    /// `Authorization: Bearer <token>` (the documented form; default).
    Bearer,
    /// HTTP Basic client credentials and `?token=<token>` (the seed guide's form).
    Client,
}

/// `[cloudbase]`: where and how to reach CloudBase Auth v2.
#[derive(Debug, Clone)]
pub struct CloudbaseSettings {
    pub env_id: String,
    pub region: String,
    /// Ends in `/auth/v1`, no trailing slash. Derived from `env_id` + `region`, or the
    /// embedded emulator's address when it is enabled, unless set explicitly.
    pub base_url: String,
    /// `base_url` was derived from `[emulator] listen`; the gateway points it at the
    /// address the embedded emulator actually bound (which may differ for port 0).
    pub base_url_from_emulator: bool,
    pub client_id: String,
    /// Empty means: send no client credentials.
    pub client_secret: Secret,
    /// Sent as `x-device-id`. Default `cloudbase-gateway`.
    pub device_id: String,
    pub introspect_auth: IntrospectAuth,
    /// Per CloudBase call. Default 2 s.
    pub timeout: Duration,
    /// Extra PEM roots trusted for CloudBase and `https://` upstreams.
    pub ca_file: Option<PathBuf>,
}

/// `[cache]`: the validation cache.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Default 100 000.
    pub max_entries: u64,
    /// Upper bound of a positive entry's life; never beyond the token's `exp`. Default 60 s.
    pub ttl: Duration,
    /// Life of a "CloudBase said invalid" entry. Default 5 s.
    pub negative_ttl: Duration,
    /// How long past its expiry a positive entry may be served while CloudBase fails.
    /// Default 0 (off).
    pub stale_if_error: Duration,
}

/// A field of the user's identity that can become a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityField {
    Sub,
    Name,
    Username,
    Email,
    PhoneNumber,
    Picture,
    Gender,
    Status,
    /// Ids of unexpired groups, comma-separated.
    Groups,
    /// The scope from introspection.
    Scope,
    /// `true` / `false`.
    Anonymous,
    ClientId,
}

impl IdentityField {
    pub const ALL: [(&'static str, IdentityField); 12] = [
        ("sub", IdentityField::Sub),
        ("name", IdentityField::Name),
        ("username", IdentityField::Username),
        ("email", IdentityField::Email),
        ("phone_number", IdentityField::PhoneNumber),
        ("picture", IdentityField::Picture),
        ("gender", IdentityField::Gender),
        ("status", IdentityField::Status),
        ("groups", IdentityField::Groups),
        ("scope", IdentityField::Scope),
        ("anonymous", IdentityField::Anonymous),
        ("client_id", IdentityField::ClientId),
    ];

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, f)| *f)
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or("")
    }
}

/// `[identity.headers]`, merged over the defaults.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// Headers set on authenticated requests, in a stable order.
    pub headers: Vec<(HeaderName, IdentityField)>,
    /// Every identity header name, set or turned off, lower-case. Client-supplied headers
    /// matching one of these (with `_` read as `-`) are removed on every route. Turned-off
    /// defaults stay here: an upstream that once trusted them must never see a forgery.
    pub strip: Vec<HeaderName>,
}

/// `auth` of a route (and `forward_auth.default_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    Optional,
    None,
}

impl AuthMode {
    /// The configuration spellings.
    pub const ALL: [(&'static str, AuthMode); 3] = [
        ("required", AuthMode::Required),
        ("optional", AuthMode::Optional),
        ("none", AuthMode::None),
    ];

    /// `"required"`, `"optional"` or `"none"`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, m)| *m)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Required => "required",
            AuthMode::Optional => "optional",
            AuthMode::None => "none",
        }
    }
}

/// An `auth` value, or the error naming `key` and the spellings.
fn auth_mode(value: &str, key: String, errors: &mut Errors) -> AuthMode {
    AuthMode::parse(value).unwrap_or_else(|| {
        errors.push(
            key,
            format!("{value:?} is not one of \"required\", \"optional\", \"none\""),
        );
        AuthMode::Required
    })
}

/// Where a route's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// The built-in echo service.
    Whoami,
    /// `http://` or `https://` origin with an optional base path (no trailing slash).
    Http {
        scheme: http::uri::Scheme,
        authority: http::uri::Authority,
        base_path: String,
    },
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub prefix: String,
    pub upstream: Upstream,
    pub auth: AuthMode,
    pub strip_prefix: bool,
    /// Empty = all methods.
    pub methods: Vec<Method>,
    pub allow_anonymous: bool,
    pub require_groups: Vec<String>,
    pub pass_token: bool,
    pub allow_preflight: bool,
}

/// `[forward_auth]`: the endpoint an existing ingress asks whether a request may pass
/// (nginx `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth`, Envoy `ext_authz`).
/// See [`crate::forward_auth`].
#[derive(Debug, Clone)]
pub struct ForwardAuthSettings {
    /// Default false.
    pub enabled: bool,
    /// On the main listener: this path exactly, and every path under `path/` (Envoy appends
    /// the original path). Normal form, no trailing `/`. Default `/_gateway/auth`.
    pub path: String,
    /// The rules for original requests no route matches: a catch-all route with this
    /// `auth` and no other rule. `None` (default): such requests are answered 404.
    pub default_auth: Option<AuthMode>,
}

/// `forward_auth.path` when unset.
pub const DEFAULT_FORWARD_AUTH_PATH: &str = "/_gateway/auth";

/// `[emulator]`.
#[derive(Debug, Clone)]
pub struct EmulatorSettings {
    /// Start the emulator inside the gateway process. Default false.
    pub enabled: bool,
    /// Default `127.0.0.1:8081`.
    pub listen: SocketAddr,
    /// The code every verification accepts. Default `000000`.
    pub verification_code: String,
    /// Default 2 h.
    pub access_token_ttl: Duration,
    /// Anonymous sign-in allowed. Default true.
    pub allow_anonymous: bool,
    pub users: Vec<EmulatorUser>,
}

/// A user seeded into the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorUser {
    pub username: String,
    pub password: Secret,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub groups: Vec<EmulatorGroup>,
}

#[derive(Debug, Clone)]
pub struct EmulatorGroup {
    pub id: String,
    /// RFC 3339.
    pub expires_at: Option<String>,
}

/// One configuration mistake, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every mistake found in a configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects errors while validating.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, key: impl Into<String>, message: impl fmt::Display) {
        self.0.push(ConfigError {
            key: key.into(),
            message: message.to_string(),
        });
    }
}

impl Config {
    /// Reads, interpolates and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Self::from_toml_str(&text)
    }

    /// Parses TOML text with the process environment for `${NAME}`.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigErrors> {
        Self::from_toml_str_with_env(text, |name| std::env::var(name).ok())
    }

    /// Parses TOML text, looking `${NAME}` up with `env`.
    pub fn from_toml_str_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Errors::default();
        let mut value: toml::Table = match text.parse() {
            Ok(v) => v,
            Err(e) => {
                errors.push("", format!("not valid TOML: {}", e.message()));
                return Err(ConfigErrors(errors.0));
            }
        };
        for (key, v) in value.iter_mut() {
            interpolate(v, key.clone(), &env, &mut errors);
        }

        let mut take = |name: &str| value.remove(name);
        let server: raw::RawServer = section(take("server"), "server", &mut errors);
        let admin: raw::RawAdmin = section(take("admin"), "admin", &mut errors);
        let cloudbase: raw::RawCloudbase = section(take("cloudbase"), "cloudbase", &mut errors);
        let cache: raw::RawCache = section(take("cache"), "cache", &mut errors);
        let identity: raw::RawIdentity = section(take("identity"), "identity", &mut errors);
        let emulator: raw::RawEmulator = section(take("emulator"), "emulator", &mut errors);
        let forward_auth: raw::RawForwardAuth =
            section(take("forward_auth"), "forward_auth", &mut errors);
        // A route whose table did not deserialize is `None`: reported once, not again as
        // "prefix missing", and the others keep their indices.
        let routes: Vec<Option<raw::RawRoute>> = match take("routes") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| try_section(v, &format!("routes[{i}]"), &mut errors))
                .collect(),
            Some(_) => {
                errors.push("routes", "must be an array of tables ([[routes]])");
                Vec::new()
            }
        };
        for key in value.keys() {
            errors.push(
                key.clone(),
                "unknown key (expected server, admin, cloudbase, cache, identity, routes, forward_auth, emulator)",
            );
        }

        let emulator = validate_emulator(emulator, &mut errors);
        let routes = validate_routes(routes, &mut errors);
        let config = Config {
            server: validate_server(server, &mut errors),
            admin: AdminSettings {
                listen: socket_addr(admin.listen, "admin.listen", "127.0.0.1:9090", &mut errors),
            },
            cloudbase: validate_cloudbase(cloudbase, &emulator, &mut errors),
            cache: validate_cache(cache, &mut errors),
            identity: validate_identity(identity, &mut errors),
            forward_auth: validate_forward_auth(forward_auth, &routes, &mut errors),
            routes,
            emulator,
        };
        if errors.0.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors.0))
        }
    }
}

/// Replaces `${NAME}` in every string with the environment's value.
fn interpolate(
    value: &mut toml::Value,
    key: String,
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Errors,
) {
    match value {
        toml::Value::String(s) => {
            if !s.contains("${") {
                return;
            }
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let Some(end) = after.find('}') else {
                    errors.push(key.clone(), "unterminated ${ in value");
                    return;
                };
                let name = &after[..end];
                match env(name) {
                    Some(v) => out.push_str(&v),
                    None => errors.push(
                        key.clone(),
                        format!("environment variable {name} is not set"),
                    ),
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                interpolate(v, format!("{key}[{i}]"), env, errors);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                interpolate(v, format!("{key}.{}", quote_key(k)), env, errors);
            }
        }
        _ => {}
    }
}

fn quote_key(k: &str) -> String {
    if k.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_owned()
    } else {
        format!("{k:?}")
    }
}

/// Deserializes one section, reporting a serde error with the full key path; an absent or
/// broken section reads as all defaults.
fn section<T: DeserializeOwned + Default>(
    value: Option<toml::Value>,
    prefix: &str,
    errors: &mut Errors,
) -> T {
    value
        .and_then(|v| try_section(v, prefix, errors))
        .unwrap_or_default()
}

fn try_section<T: DeserializeOwned>(
    value: toml::Value,
    prefix: &str,
    errors: &mut Errors,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let key = if path == "." || path.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}.{path}")
            };
            errors.push(key, e.into_inner().message().trim_end());
            None
        }
    }
}

fn duration(value: Option<String>, key: &str, default: &str, errors: &mut Errors) -> Duration {
    let s = value.unwrap_or_else(|| default.to_owned());
    match parse_duration(&s) {
        Ok(d) => d,
        Err(e) => {
            errors.push(key, e);
            humantime::parse_duration(default).unwrap_or_default()
        }
    }
}

/// `"250ms"`, `"2s"`, `"5m"`, `"1h 30m"`, `"0s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like \"250ms\", \"2s\" or \"5m\" ({e})"))
}

/// `"10MiB"`, `"512KiB"`, `"1GiB"`, `"1000"`, `"10MB"` (decimal units are powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{s:?} is not a size like \"10MiB\", \"512KiB\" or \"1000\"");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

fn socket_addr(value: Option<String>, key: &str, default: &str, errors: &mut Errors) -> SocketAddr {
    let s = value.unwrap_or_else(|| default.to_owned());
    match s.parse() {
        Ok(a) => a,
        Err(_) => {
            errors.push(
                key,
                format!("{s:?} is not an address like \"127.0.0.1:8080\""),
            );
            default.parse().expect("default address parses")
        }
    }
}

fn validate_server(raw: raw::RawServer, errors: &mut Errors) -> ServerSettings {
    let tls = match (raw.tls_cert, raw.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.into(),
            key: key.into(),
        }),
        (None, None) => None,
        (Some(_), None) => {
            errors.push(
                "server.tls_key",
                "missing: tls_cert is set, so tls_key must be too",
            );
            None
        }
        (None, Some(_)) => {
            errors.push(
                "server.tls_cert",
                "missing: tls_key is set, so tls_cert must be too",
            );
            None
        }
    };
    let max_body_size = match parse_size(raw.max_body_size.as_deref().unwrap_or("10MiB")) {
        Ok(n) => n,
        Err(e) => {
            errors.push("server.max_body_size", e);
            10 << 20
        }
    };
    let max_connections = match raw.max_connections.unwrap_or(10_000) {
        0 => {
            errors.push("server.max_connections", "must be at least 1");
            1
        }
        n => n as usize,
    };
    let mut trusted_proxies = Vec::new();
    for (i, s) in raw
        .trusted_proxies
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let parsed = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => errors.push(
                format!("server.trusted_proxies[{i}]"),
                format!("{s:?} is not a CIDR like \"10.0.0.0/8\" or an IP address"),
            ),
        }
    }
    let escaped_slashes = match raw.escaped_slashes.as_deref() {
        None => EscapedSlashes::default(),
        Some(s) => EscapedSlashes::parse(s).unwrap_or_else(|| {
            errors.push(
                "server.escaped_slashes",
                format!("{s:?} is not one of \"reject\", \"keep\""),
            );
            EscapedSlashes::default()
        }),
    };
    ServerSettings {
        listen: socket_addr(raw.listen, "server.listen", "127.0.0.1:8080", errors),
        tls,
        request_timeout: duration(raw.request_timeout, "server.request_timeout", "30s", errors),
        header_read_timeout: duration(
            raw.header_read_timeout,
            "server.header_read_timeout",
            "10s",
            errors,
        ),
        max_body_size,
        max_connections,
        shutdown_grace_period: duration(
            raw.shutdown_grace_period,
            "server.shutdown_grace_period",
            "30s",
            errors,
        ),
        trusted_proxies,
        escaped_slashes,
    }
}

fn validate_cloudbase(
    raw: raw::RawCloudbase,
    emulator: &EmulatorSettings,
    errors: &mut Errors,
) -> CloudbaseSettings {
    let env_id = raw.env_id.unwrap_or_default();
    let region = raw.region.unwrap_or_else(|| "ap-shanghai".to_owned());
    let raw_base_url_unset = raw.base_url.is_none();
    let base_url = match raw.base_url {
        Some(url) => {
            let trimmed = url.trim_end_matches('/').to_owned();
            match trimmed.parse::<Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some() =>
                {
                    trimmed
                }
                _ => {
                    errors.push(
                        "cloudbase.base_url",
                        format!("{url:?} is not an http:// or https:// URL"),
                    );
                    String::new()
                }
            }
        }
        None if emulator.enabled => format!("http://{}/auth/v1", emulator.listen),
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
            format!("https://{env_id}.{region}.tcb-api.tencentcloudapi.com/auth/v1")
        }
    };
    let introspect_auth = match raw.introspect_auth.as_deref().unwrap_or("bearer") {
        "bearer" => IntrospectAuth::Bearer,
        "client" => IntrospectAuth::Client,
        other => {
            errors.push(
                "cloudbase.introspect_auth",
                format!("{other:?} is not one of \"bearer\", \"client\""),
            );
            IntrospectAuth::Bearer
        }
    };
    let client_secret = Secret::new(raw.client_secret.unwrap_or_default());
    if introspect_auth == IntrospectAuth::Client && client_secret.is_empty() {
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
        base_url_from_emulator: raw_base_url_unset && emulator.enabled,
        client_id: raw.client_id.unwrap_or_else(|| env_id.clone()),
        env_id,
        region,
        base_url,
        client_secret,
        device_id: raw
            .device_id
            .unwrap_or_else(|| "cloudbase-gateway".to_owned()),
        introspect_auth,
        timeout: duration(raw.timeout, "cloudbase.timeout", "2s", errors),
        ca_file,
    }
}

fn validate_cache(raw: raw::RawCache, errors: &mut Errors) -> CacheSettings {
    let max_entries = raw.max_entries.unwrap_or(100_000);
    if max_entries == 0 {
        errors.push("cache.max_entries", "must be at least 1");
    }
    CacheSettings {
        max_entries,
        ttl: duration(raw.ttl, "cache.ttl", "60s", errors),
        negative_ttl: duration(raw.negative_ttl, "cache.negative_ttl", "5s", errors),
        stale_if_error: duration(raw.stale_if_error, "cache.stale_if_error", "0s", errors),
    }
}

/// The identity headers set when `[identity.headers]` does not say otherwise.
pub const DEFAULT_IDENTITY_HEADERS: [(&str, &str); 8] = [
    ("X-User-Id", "sub"),
    ("X-User-Name", "name"),
    ("X-User-Username", "username"),
    ("X-User-Email", "email"),
    ("X-User-Phone", "phone_number"),
    ("X-User-Groups", "groups"),
    ("X-User-Scope", "scope"),
    ("X-User-Anonymous", "anonymous"),
];

/// Lower-cases a header name and reads `_` as `-`, the way some servers (CGI, nginx with
/// `underscores_in_headers`) fold names; identity headers are compared in this form.
pub fn normalize_header_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

fn validate_identity(raw: raw::RawIdentity, errors: &mut Errors) -> IdentitySettings {
    let mut merged: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (name, field) in DEFAULT_IDENTITY_HEADERS {
        let norm = normalize_header_name(name);
        order.push(norm.clone());
        merged.insert(norm, (name.to_owned(), field.to_owned()));
    }
    for (name, field) in raw.headers.unwrap_or_default() {
        let norm = normalize_header_name(&name);
        if !merged.contains_key(&norm) {
            order.push(norm.clone());
        }
        merged.insert(norm, (name, field));
    }
    let mut headers = Vec::new();
    let mut strip = Vec::new();
    for norm in order {
        let (name, field) = &merged[&norm];
        let key = format!("identity.headers.{}", quote_key(name));
        let Ok(header) = HeaderName::from_bytes(norm.as_bytes()) else {
            errors.push(key, format!("{name:?} is not a valid header name"));
            continue;
        };
        if !strip.contains(&header) {
            strip.push(header.clone());
        }
        if field.is_empty() {
            continue;
        }
        match IdentityField::parse(field) {
            Some(f) => headers.push((header, f)),
            None => errors.push(
                key,
                format!(
                    "{field:?} is not a profile field (one of {})",
                    IdentityField::ALL
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    IdentitySettings { headers, strip }
}

fn validate_routes(raws: Vec<Option<raw::RawRoute>>, errors: &mut Errors) -> Vec<RouteSettings> {
    let mut routes: Vec<RouteSettings> = Vec::new();
    for (i, raw) in raws.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        let key = |k: &str| format!("routes[{i}].{k}");
        let prefix = match raw.prefix {
            Some(p) if p.starts_with('/') => {
                if let Err(e) = check_prefix(&p) {
                    errors.push(key("prefix"), e);
                }
                p
            }
            Some(p) => {
                errors.push(key("prefix"), format!("{p:?} must start with /"));
                continue;
            }
            None => {
                errors.push(key("prefix"), "missing");
                continue;
            }
        };
        if routes.iter().any(|r| r.prefix == prefix) {
            errors.push(
                key("prefix"),
                format!("{prefix:?} is used by an earlier route"),
            );
        }
        let upstream = match raw.upstream.as_deref() {
            None => {
                errors.push(key("upstream"), "missing");
                Upstream::Whoami
            }
            Some(s) => match parse_upstream(s) {
                Ok(u) => u,
                Err(e) => {
                    errors.push(key("upstream"), e);
                    Upstream::Whoami
                }
            },
        };
        let auth = auth_mode(
            raw.auth.as_deref().unwrap_or("required"),
            key("auth"),
            errors,
        );
        let mut methods = Vec::new();
        for (j, m) in raw.methods.unwrap_or_default().into_iter().enumerate() {
            match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => errors.push(
                    format!("routes[{i}].methods[{j}]"),
                    format!("{m:?} is not an HTTP method"),
                ),
            }
        }
        routes.push(RouteSettings {
            prefix,
            upstream,
            auth,
            strip_prefix: raw.strip_prefix.unwrap_or(false),
            methods,
            allow_anonymous: raw.allow_anonymous.unwrap_or(false),
            require_groups: raw.require_groups.unwrap_or_default(),
            pass_token: raw.pass_token.unwrap_or(true),
            allow_preflight: raw.allow_preflight.unwrap_or(false),
        });
    }
    routes
}

/// Characters a client may send raw or percent-encoded with different meanings to
/// different servers (RFC 3986 reserved characters the normalizer leaves as sent).
const TWO_SPELLINGS: &str = ":@!$&'()*+,;=";

/// A route prefix must be a path the normalizer leaves unchanged, so requests and prefixes
/// are compared in one form, and must not hold a character with two spellings: with a
/// prefix `/a:b/`, `/a%3Ab/x` would miss the route here but be `/a:b/x` upstream.
fn check_prefix(prefix: &str) -> Result<(), String> {
    match crate::path::normalize(prefix, EscapedSlashes::Reject) {
        Err(e) => return Err(format!("{prefix:?} is refused by the path policy: {e}")),
        Ok(normal) if normal != prefix => {
            return Err(format!(
                "{prefix:?} is not in normal form; write {normal:?} (see README \"Path policy\")"
            ))
        }
        Ok(_) => {}
    }
    let encoded = |c: char| format!("%{:02X}", u32::from(c));
    match TWO_SPELLINGS
        .chars()
        .find(|&c| prefix.contains(c) || prefix.contains(&encoded(c)))
    {
        Some(c) => Err(format!(
            "{prefix:?} holds {c:?}, which clients may send raw or as {}; a prefix may hold \
             letters, digits, \"-._~\", \"/\" and percent-encoded octets other than {TWO_SPELLINGS}",
            encoded(c)
        )),
        None => Ok(()),
    }
}

fn validate_forward_auth(
    raw: raw::RawForwardAuth,
    routes: &[RouteSettings],
    errors: &mut Errors,
) -> ForwardAuthSettings {
    let enabled = raw.enabled.unwrap_or(false);
    let path = raw
        .path
        .unwrap_or_else(|| DEFAULT_FORWARD_AUTH_PATH.to_owned());
    let default_auth = raw
        .default_auth
        .map(|s| auth_mode(&s, "forward_auth.default_auth".into(), errors));
    let key = "forward_auth.path";
    if !path.starts_with('/') {
        errors.push(key, format!("{path:?} must start with /"));
    } else if path.ends_with('/') {
        errors.push(
            key,
            format!(
                "{path:?} must not end with / (Envoy joins it to the original path, which \
                 starts with one)"
            ),
        );
    } else if let Err(e) = check_prefix(&path) {
        errors.push(key, e);
    }
    if enabled {
        let under = format!("{path}/");
        for (i, route) in routes.iter().enumerate() {
            let prefix = &route.prefix;
            if *prefix == path || prefix.starts_with(&under) {
                errors.push(
                    key,
                    format!(
                        "{path:?} answers every request at or under it, so routes[{i}].prefix \
                         {prefix:?} would never be reached"
                    ),
                );
            } else if prefix != "/" && path.starts_with(prefix.as_str()) {
                errors.push(
                    key,
                    format!(
                        "{path:?} lies under routes[{i}].prefix {prefix:?}: requests for it \
                         would never reach that route's upstream; choose a path outside every \
                         route prefix but \"/\""
                    ),
                );
            }
        }
        if default_auth.is_some() {
            if let Some(i) = routes.iter().position(|r| r.prefix == "/") {
                errors.push(
                    "forward_auth.default_auth",
                    format!("never used: routes[{i}].prefix \"/\" matches every path"),
                );
            }
        }
    }
    ForwardAuthSettings {
        enabled,
        path,
        default_auth,
    }
}

/// `"whoami"`, or an `http://` / `https://` URL with an optional base path.
pub fn parse_upstream(s: &str) -> Result<Upstream, String> {
    if s == "whoami" {
        return Ok(Upstream::Whoami);
    }
    let bad = || format!("{s:?} is not \"whoami\" or an http:// or https:// URL");
    let uri: Uri = s.parse().map_err(|_| bad())?;
    let scheme = uri.scheme().cloned().ok_or_else(bad)?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(bad());
    }
    let authority = uri.authority().cloned().ok_or_else(bad)?;
    if uri.query().is_some() {
        return Err(format!("{s:?} must not have a query"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok(Upstream::Http {
        scheme,
        authority,
        base_path,
    })
}

fn validate_emulator(raw: raw::RawEmulator, errors: &mut Errors) -> EmulatorSettings {
    let mut users = Vec::new();
    for (i, u) in raw.users.unwrap_or_default().into_iter().enumerate() {
        let key = |k: &str| format!("emulator.users[{i}].{k}");
        let Some(username) = u.username else {
            errors.push(key("username"), "missing");
            continue;
        };
        let password = u.password.unwrap_or_default();
        if !(8..=64).contains(&password.chars().count()) {
            errors.push(
                key("password"),
                "must be 8 to 64 characters (CloudBase's rule)",
            );
        }
        let groups = u
            .groups
            .unwrap_or_default()
            .into_iter()
            .map(|g| match g {
                RawGroup::Id(id) => EmulatorGroup {
                    id,
                    expires_at: None,
                },
                RawGroup::Table { id, expires_at } => EmulatorGroup { id, expires_at },
            })
            .collect();
        users.push(EmulatorUser {
            username,
            password: Secret::new(password),
            name: u.name,
            email: u.email,
            phone_number: u.phone_number,
            groups,
        });
    }
    let verification_code = raw.verification_code.unwrap_or_else(|| "000000".to_owned());
    if verification_code.is_empty() {
        errors.push("emulator.verification_code", "must not be empty");
    }
    EmulatorSettings {
        enabled: raw.enabled.unwrap_or(false),
        listen: socket_addr(raw.listen, "emulator.listen", "127.0.0.1:8081", errors),
        verification_code,
        access_token_ttl: duration(
            raw.access_token_ttl,
            "emulator.access_token_ttl",
            "2h",
            errors,
        ),
        allow_anonymous: raw.allow_anonymous.unwrap_or(true),
        users,
    }
}

impl Default for EmulatorSettings {
    fn default() -> Self {
        EmulatorSettings {
            enabled: false,
            listen: "127.0.0.1:8081".parse().expect("literal address"),
            verification_code: "000000".to_owned(),
            access_token_ttl: Duration::from_secs(7200),
            allow_anonymous: true,
            users: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
