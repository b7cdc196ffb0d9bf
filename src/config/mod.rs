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
pub use secret::{Secret, SecretUrl};

/// Every setting of the gateway, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub cloudbase: CloudbaseSettings,
    pub upstream: UpstreamSettings,
    pub cache: CacheSettings,
    pub identity: IdentitySettings,
    pub routes: Vec<RouteSettings>,
    pub forward_auth: ForwardAuthSettings,
    pub relay: RelaySettings,
    pub telemetry: TelemetrySettings,
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
    /// Time from accept (TLS handshake included) to a complete first request head, in
    /// every protocol; on HTTP/1.1 also from the end of one exchange to the next head.
    /// Default 10 s.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long (HTTP/2 with a
    /// GOAWAY). Default 60 s.
    pub idle_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    /// Default 100.
    pub max_concurrent_streams: u32,
    /// Largest request body accepted. Default 10 MiB.
    pub max_body_size: u64,
    /// Open client connections at most. Default 10 000.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown. Default 30 s.
    pub shutdown_grace_period: Duration,
    /// Peers whose `X-Forwarded-*`, `Forwarded` and `X-Real-IP` are believed. Default none.
    /// IPv4-mapped IPv6 networks are stored as IPv4, the form peers are matched in.
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
    /// Bearer token every admin POST must carry when set. Default unset.
    pub token: Option<Secret>,
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
    /// CloudBase calls open at once, at most; a validation needing more is answered as
    /// if CloudBase were unavailable. Default [`DEFAULT_MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    /// Extra PEM roots trusted for CloudBase and `https://` upstreams.
    pub ca_file: Option<PathBuf>,
}

/// `[upstream]`: the connection pool to the routes' upstreams.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// How long an idle pooled connection may be reused. Default 1 s: below the idle
    /// timeouts of common upstream servers (gunicorn 2 s, Node.js and uvicorn 5 s), so the
    /// gateway drops a connection before the upstream closes it under a request. Zero:
    /// no connection is reused.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per upstream host at most. Default 1024; zero: no pooling.
    pub pool_max_idle_per_host: usize,
}

/// `[cache]`: the validation cache.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Most entries of each kind: tokens CloudBase vouched for, and (apart) tokens it
    /// refused. Default 100 000.
    pub max_entries: u64,
    /// Most bytes the positive entries take, by the cache's estimate of each (identity,
    /// header values, key and bookkeeping). Default 256 MiB.
    pub max_memory: u64,
    /// Upper bound of a positive entry's life; never beyond the token's `exp`. Default 60 s.
    pub ttl: Duration,
    /// Life of a "CloudBase said invalid" entry. Default 5 s.
    pub negative_ttl: Duration,
    /// How long past its expiry a positive entry may be served while CloudBase fails.
    /// Default 0 (off).
    pub stale_if_error: Duration,
    /// `[cache.redis]`: the shared second tier. `None` (default): each replica alone.
    pub redis: Option<RedisSettings>,
}

/// `[cache.redis]`: what every replica shares through Redis (see `cache::shared`).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS), `user:password@` allowed; printed redacted.
    pub url: SecretUrl,
    /// Starts every key and the purge channel. Default `cloudbase-gateway:`.
    pub key_prefix: String,
    /// Bound on each Redis command; past it Redis is skipped for that request. Default 50 ms.
    pub timeout: Duration,
    /// Authenticates every stored value. Required; at least [`MIN_HMAC_KEY_BYTES`] bytes.
    pub hmac_key: Secret,
    /// Consecutive failures after which Redis is skipped for `breaker_cooldown`. Default 5.
    pub breaker_failures: u32,
    /// How long Redis is skipped once the breaker opens. Default 5 s.
    pub breaker_cooldown: Duration,
}

/// Shortest `cache.redis.hmac_key` accepted: 32 bytes, HMAC-SHA256's own output size.
pub const MIN_HMAC_KEY_BYTES: usize = 32;

/// What `check` prints for `cache.redis.hmac_key`: long enough that its output stays a
/// valid configuration, and refused when the shared tier starts, so a copied `check` output
/// can never run with a key everyone can read.
pub const REDACTED_HMAC_KEY: &str = "[redacted: the key in force is never printed]";

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
    /// The most bytes one encoded identity header value may take; a longer one is not
    /// sent. Default [`DEFAULT_MAX_HEADER_BYTES`].
    pub max_header_bytes: usize,
}

/// `cloudbase.max_in_flight` when unset.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// `identity.max_header_bytes` when unset: 8 KiB, below every common server's limit for
/// one header line (nginx 8 KiB buffers, Node 16 KiB for the whole head).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8 << 10;

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
    /// `rate_limit` and its companions; `None` (default): not limited.
    pub rate_limit: Option<RouteRateLimit>,
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

/// A route's per-user token bucket (see [`crate::limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRateLimit {
    /// `rate_limit`: `"100/s"`, `"10/m"`, `"500/h"`.
    pub rate: Rate,
    /// `rate_limit_burst`: the most requests that pass at once. Default: the rate's count.
    pub burst: std::num::NonZeroU32,
    /// `rate_limit_max_keys`: users and addresses tracked at once, at most. Default
    /// [`DEFAULT_RATE_LIMIT_MAX_KEYS`].
    pub max_keys: usize,
}

/// `routes[].rate_limit_max_keys` when unset: about 12 MB of buckets at most per route
/// (a `sub` key with its map slot is ~120 bytes).
pub const DEFAULT_RATE_LIMIT_MAX_KEYS: usize = 100_000;

/// `[telemetry]`: OpenTelemetry traces (see [`crate::telemetry::trace`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans are posted to
    /// `{otlp_endpoint}/v1/traces`. `None` (default): tracing is off.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of every span. Default `cloudbase-gateway`.
    pub service_name: String,
    /// Share of new traces recorded, 0.0 to 1.0; a client's own sampling decision is
    /// followed. Default 1.0.
    pub sample_ratio: f64,
}

impl TelemetrySettings {
    /// Where spans are posted: the endpoint with `/v1/traces` appended, unless it already
    /// ends so (the OTLP exporter convention for base and signal URLs).
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        })
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp_endpoint: None,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            sample_ratio: 1.0,
        }
    }
}

/// `telemetry.service_name` when unset.
pub const DEFAULT_SERVICE_NAME: &str = "cloudbase-gateway";

/// `[relay]`: the CloudBase Auth v2 relay (see [`crate::relay`]).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Default false.
    pub enabled: bool,
    /// Paths under it go to `cloudbase.base_url`. Starts and ends with `/`, in normal form.
    /// Default `/auth/v1/`, where the official web SDK calls by default.
    pub prefix: String,
    /// Origins (`https://app.example.com`) whose pages may call the relay; exact match.
    /// Default none: no CORS headers.
    pub allowed_origins: Vec<String>,
    /// `?client_id=` added to calls that carry none. Default `cloudbase.client_id`.
    pub client_id: String,
    /// Largest request body relayed. Default 64 KiB.
    pub max_body_size: u64,
    /// Per-client-address token buckets of the endpoints that guess or create accounts.
    pub limits: RelayLimits,
}

/// The relay's per-client-address limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// `/signin` and `/signin/*`. Default 10 per minute, burst 10.
    pub signin: RelayLimit,
    /// `/signup`. Default 5 per minute, burst 5.
    pub signup: RelayLimit,
    /// `/verification` and `/verification/verify`. Default 5 per minute, burst 5.
    pub verification: RelayLimit,
}

/// One token bucket: refilled at `rate`, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimit {
    /// `None`: not limited (`"off"`).
    pub rate: Option<Rate>,
    pub burst: std::num::NonZeroU32,
}

/// `"10/m"`: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: std::num::NonZeroU32,
    pub per: RateUnit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
}

impl RateUnit {
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            RateUnit::Second => 1,
            RateUnit::Minute => 60,
            RateUnit::Hour => 3600,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            RateUnit::Second => "s",
            RateUnit::Minute => "m",
            RateUnit::Hour => "h",
        }
    }
}

impl Rate {
    /// Time between two tokens.
    pub fn interval(self) -> Duration {
        self.per.duration() / self.count.get()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.as_str())
    }
}

/// `"10/s"`, `"10/m"`, `"10/h"` (also `sec`, `min`, `hour` and plurals), at least 1.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("{s:?} is not a rate like \"10/s\", \"10/m\" or \"100/h\"");
    let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let count = std::num::NonZeroU32::new(count)
        .ok_or_else(|| format!("{s:?}: the rate must be at least 1 (\"off\" turns a limit off)"))?;
    let per = match unit.trim() {
        "s" | "sec" | "second" | "seconds" => RateUnit::Second,
        "m" | "min" | "minute" | "minutes" => RateUnit::Minute,
        "h" | "hour" | "hours" => RateUnit::Hour,
        _ => return Err(bad()),
    };
    Ok(Rate { count, per })
}

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
    /// Serve `/__emulator/stats` and `/__emulator/fault` (no CORS, JSON only). Default
    /// false: they answer 404, so no web page can inject faults.
    pub test_hooks: bool,
    /// How many wrong secrets the emulator takes before it answers 429.
    pub limits: AttemptLimits,
    pub users: Vec<EmulatorUser>,
}

/// Wrong passwords and verification codes the emulator takes before locking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimits {
    /// Failures per user (passwords) or per phone number / email (codes); 0 = no limit.
    /// Default 5.
    pub per_user: u32,
    /// Failures per client address, whatever the account; 0 = no limit. Default 20.
    pub per_client: u32,
    /// A locked user or client stays locked this long after its last counted failure,
    /// and failures are forgotten after this long without one. Default 15 min.
    pub lockout: Duration,
}

impl Default for AttemptLimits {
    fn default() -> Self {
        AttemptLimits {
            per_user: 5,
            per_client: 20,
            lockout: Duration::from_secs(15 * 60),
        }
    }
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

/// A setting that is valid but probably a mistake; `check` and start-up print each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl Config {
    /// Settings that are allowed but expose something an operator probably did not mean to.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut out = Vec::new();
        if !self.admin.listen.ip().to_canonical().is_loopback() && self.admin.token.is_none() {
            out.push(ConfigWarning {
                key: "admin.listen".into(),
                message: format!(
                    "{} is not a loopback address and admin.token is unset: anyone who can \
                     reach it can purge the cache and read the metrics",
                    self.admin.listen
                ),
            });
        }
        out
    }

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
        let upstream: raw::RawUpstream = section(take("upstream"), "upstream", &mut errors);
        let cache: raw::RawCache = section(take("cache"), "cache", &mut errors);
        let identity: raw::RawIdentity = section(take("identity"), "identity", &mut errors);
        let emulator: raw::RawEmulator = section(take("emulator"), "emulator", &mut errors);
        let forward_auth: raw::RawForwardAuth =
            section(take("forward_auth"), "forward_auth", &mut errors);
        let relay: raw::RawRelay = section(take("relay"), "relay", &mut errors);
        let telemetry: raw::RawTelemetry = section(take("telemetry"), "telemetry", &mut errors);
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
                "unknown key (expected server, admin, cloudbase, upstream, cache, identity, routes, forward_auth, relay, telemetry, emulator)",
            );
        }

        let emulator = validate_emulator(emulator, &mut errors);
        let cloudbase = validate_cloudbase(cloudbase, &emulator, &mut errors);
        let routes = validate_routes(routes, &mut errors);
        let relay = validate_relay(relay, &cloudbase, &routes, &mut errors);
        let forward_auth = validate_forward_auth(forward_auth, &routes, &mut errors);
        check_forward_auth_beside_relay(&forward_auth, &relay, &mut errors);
        let config = Config {
            server: validate_server(server, &mut errors),
            admin: validate_admin(admin, &mut errors),
            cloudbase,
            upstream: validate_upstream(upstream, &mut errors),
            cache: validate_cache(cache, &mut errors),
            identity: validate_identity(identity, &mut errors),
            routes,
            forward_auth,
            relay,
            telemetry: validate_telemetry(telemetry, &mut errors),
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
            Ok(net) => trusted_proxies.push(canonical_net(net)),
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
        idle_timeout: duration(raw.idle_timeout, "server.idle_timeout", "60s", errors),
        max_concurrent_streams: match raw.max_concurrent_streams.unwrap_or(100) {
            n @ 1..=0x7fff_ffff => n as u32,
            _ => {
                errors.push(
                    "server.max_concurrent_streams",
                    "must be between 1 and 2147483647",
                );
                100
            }
        },
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

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 network it maps
/// (`10.0.0.0/8`): peers are matched in their canonical form, so the mapped spelling of a
/// trusted range must still match.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

fn validate_admin(raw: raw::RawAdmin, errors: &mut Errors) -> AdminSettings {
    let token = raw.token.map(Secret::new);
    if let Some(token) = &token {
        let t = token.expose();
        if t.is_empty() {
            errors.push(
                "admin.token",
                "must not be empty (remove the key to turn the token off)",
            );
        } else if !t.bytes().all(|b| b.is_ascii_graphic()) {
            errors.push(
                "admin.token",
                "must be visible ASCII without spaces (it is sent as a bearer token)",
            );
        }
    }
    AdminSettings {
        listen: socket_addr(raw.listen, "admin.listen", "127.0.0.1:9090", errors),
        token,
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
        max_in_flight: match raw.max_in_flight {
            None => DEFAULT_MAX_IN_FLIGHT,
            Some(n @ 2..) => usize::try_from(n).unwrap_or(usize::MAX),
            Some(_) => {
                errors.push(
                    "cloudbase.max_in_flight",
                    "must be at least 2 (one validation makes two calls at once)",
                );
                DEFAULT_MAX_IN_FLIGHT
            }
        },
        ca_file,
    }
}

fn validate_upstream(raw: raw::RawUpstream, errors: &mut Errors) -> UpstreamSettings {
    UpstreamSettings {
        pool_idle_timeout: duration(
            raw.pool_idle_timeout,
            "upstream.pool_idle_timeout",
            "1s",
            errors,
        ),
        // Beyond usize (32-bit targets) is as good as unbounded.
        pool_max_idle_per_host: raw
            .pool_max_idle_per_host
            .map_or(1024, |n| usize::try_from(n).unwrap_or(usize::MAX)),
    }
}

/// The smallest `cache.max_memory`: below it a cache holds too few identities to be one.
const MIN_CACHE_MEMORY: u64 = 1 << 20;

fn validate_cache(raw: raw::RawCache, errors: &mut Errors) -> CacheSettings {
    let max_entries = raw.max_entries.unwrap_or(100_000);
    if max_entries == 0 {
        errors.push("cache.max_entries", "must be at least 1");
    }
    let max_memory = match parse_size(raw.max_memory.as_deref().unwrap_or("256MiB")) {
        Ok(n) if n < MIN_CACHE_MEMORY => {
            errors.push(
                "cache.max_memory",
                "must be at least 1MiB (about a thousand identities); bound the count with max_entries",
            );
            MIN_CACHE_MEMORY
        }
        Ok(n) => n,
        Err(e) => {
            errors.push("cache.max_memory", e);
            256 << 20
        }
    };
    CacheSettings {
        max_entries,
        max_memory,
        ttl: duration(raw.ttl, "cache.ttl", "60s", errors),
        negative_ttl: duration(raw.negative_ttl, "cache.negative_ttl", "5s", errors),
        stale_if_error: duration(raw.stale_if_error, "cache.stale_if_error", "0s", errors),
        redis: raw.redis.map(|r| validate_redis(r, errors)),
    }
}

fn validate_redis(raw: raw::RawRedis, errors: &mut Errors) -> RedisSettings {
    let url = SecretUrl::new(raw.url.unwrap_or_default());
    if url.expose().is_empty() {
        errors.push(
            "cache.redis.url",
            "missing: [cache.redis] turns the shared tier on and needs redis:// or rediss://",
        );
    } else if !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://")) {
        errors.push(
            "cache.redis.url",
            format!("{url:?} is not a redis:// or rediss:// URL"),
        );
    } else if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.expose()) {
        // The client's own parser: what it refuses here it would refuse at start.
        errors.push("cache.redis.url", format!("{url:?}: {e}"));
    }
    let key_prefix = raw
        .key_prefix
        .unwrap_or_else(|| "cloudbase-gateway:".to_owned());
    if key_prefix.is_empty() || key_prefix.len() > 128 || key_prefix.chars().any(char::is_control) {
        errors.push(
            "cache.redis.key_prefix",
            "must be 1 to 128 bytes without control characters",
        );
    }
    let timeout = duration(raw.timeout, "cache.redis.timeout", "50ms", errors);
    if timeout.is_zero() {
        errors.push("cache.redis.timeout", "must be more than 0");
    }
    let hmac_key = Secret::new(raw.hmac_key.unwrap_or_default());
    if hmac_key.is_empty() {
        errors.push(
            "cache.redis.hmac_key",
            "missing: required with [cache.redis], e.g. \"${CACHE_HMAC_KEY}\" set to `openssl rand -hex 32`",
        );
    } else if hmac_key.expose().len() < MIN_HMAC_KEY_BYTES {
        errors.push(
            "cache.redis.hmac_key",
            format!("must be at least {MIN_HMAC_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`)"),
        );
    }
    let breaker_failures = match raw.breaker_failures.unwrap_or(5) {
        n @ 1..=1000 => n as u32,
        _ => {
            errors.push("cache.redis.breaker_failures", "must be 1 to 1000");
            5
        }
    };
    let breaker_cooldown = duration(
        raw.breaker_cooldown,
        "cache.redis.breaker_cooldown",
        "5s",
        errors,
    );
    if breaker_cooldown.is_zero() {
        errors.push("cache.redis.breaker_cooldown", "must be more than 0");
    }
    RedisSettings {
        url,
        key_prefix,
        timeout,
        hmac_key,
        breaker_failures,
        breaker_cooldown,
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
        let plain =
            !norm.is_empty() && norm.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let header = plain
            .then(|| HeaderName::from_bytes(norm.as_bytes()).ok())
            .flatten();
        let Some(header) = header else {
            errors.push(
                key,
                format!(
                    "{name:?} is not a header name of letters, digits, - and _ (servers read \
                     other characters in different ways)"
                ),
            );
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
    let max_header_bytes = match raw.max_header_bytes.as_deref().map(parse_size) {
        None => DEFAULT_MAX_HEADER_BYTES,
        Some(Ok(n)) if n >= 64 => usize::try_from(n).unwrap_or(usize::MAX),
        Some(Ok(_)) => {
            errors.push("identity.max_header_bytes", "must be at least 64 bytes");
            DEFAULT_MAX_HEADER_BYTES
        }
        Some(Err(e)) => {
            errors.push("identity.max_header_bytes", e);
            DEFAULT_MAX_HEADER_BYTES
        }
    };
    IdentitySettings {
        headers,
        strip,
        max_header_bytes,
    }
}

fn validate_routes(raws: Vec<Option<raw::RawRoute>>, errors: &mut Errors) -> Vec<RouteSettings> {
    let mut routes: Vec<RouteSettings> = Vec::new();
    for (i, raw) in raws.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        let key = |k: &str| format!("routes[{i}].{k}");
        let rate_limit = route_rate_limit(&raw, &key, errors);
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
            rate_limit,
        });
    }
    routes
}

/// `rate_limit`, `rate_limit_burst` and `rate_limit_max_keys` of one route.
fn route_rate_limit(
    raw: &raw::RawRoute,
    key: &dyn Fn(&str) -> String,
    errors: &mut Errors,
) -> Option<RouteRateLimit> {
    let rate = match raw.rate_limit.as_deref() {
        None | Some("off") => None,
        Some(text) => match parse_rate(text) {
            Ok(rate) => Some(rate),
            Err(e) => {
                errors.push(key("rate_limit"), e);
                None
            }
        },
    };
    let limited = raw.rate_limit.as_deref().is_some_and(|t| t != "off");
    for (name, set) in [
        ("rate_limit_burst", raw.rate_limit_burst.is_some()),
        ("rate_limit_max_keys", raw.rate_limit_max_keys.is_some()),
    ] {
        if set && !limited {
            errors.push(key(name), "is set but rate_limit is not");
        }
    }
    let burst = match raw.rate_limit_burst {
        None => rate.map(|r| r.count),
        Some(n) => std::num::NonZeroU32::new(n).or_else(|| {
            errors.push(key("rate_limit_burst"), "must be at least 1");
            None
        }),
    };
    let max_keys = match raw.rate_limit_max_keys {
        None => DEFAULT_RATE_LIMIT_MAX_KEYS,
        Some(0) => {
            errors.push(key("rate_limit_max_keys"), "must be at least 1");
            DEFAULT_RATE_LIMIT_MAX_KEYS
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    Some(RouteRateLimit {
        rate: rate?,
        burst: burst?,
        max_keys,
    })
}

fn validate_telemetry(raw: raw::RawTelemetry, errors: &mut Errors) -> TelemetrySettings {
    let defaults = TelemetrySettings::default();
    let otlp_endpoint = raw
        .otlp_endpoint
        .and_then(|url| match check_otlp_endpoint(&url) {
            Ok(()) => Some(url),
            Err(e) => {
                errors.push("telemetry.otlp_endpoint", e);
                None
            }
        });
    let service_name = raw.service_name.unwrap_or(defaults.service_name);
    if service_name.trim().is_empty() {
        errors.push("telemetry.service_name", "must not be empty");
    }
    let sample_ratio = match raw.sample_ratio {
        None => defaults.sample_ratio,
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            errors.push(
                "telemetry.sample_ratio",
                format!("{r} is not a share between 0.0 and 1.0"),
            );
            defaults.sample_ratio
        }
    };
    TelemetrySettings {
        otlp_endpoint,
        service_name,
        sample_ratio,
    }
}

/// An `http://` or `https://` URL with a host, and no credentials (they would be printed
/// by `check`; a collector's token goes in `OTEL_EXPORTER_OTLP_HEADERS`), query or
/// fragment.
fn check_otlp_endpoint(url: &str) -> Result<(), String> {
    let bad = |why: &str| {
        format!("{url:?} is not a collector URL like \"http://collector:4318\" ({why})")
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("the scheme must be http or https"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        // Not echoed: the value holds a credential.
        return Err(
            "credentials do not belong in the URL (it would be printed): send them with \
             OTEL_EXPORTER_OTLP_HEADERS"
                .to_owned(),
        );
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(bad("no query or fragment"));
    }
    Ok(())
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

/// Forward-auth and the relay both take their paths before routing: a path both claim
/// would be answered by whichever layer comes first, so their paths must not overlap.
/// Reported under the key whose path lies under the other's.
fn check_forward_auth_beside_relay(
    forward_auth: &ForwardAuthSettings,
    relay: &RelaySettings,
    errors: &mut Errors,
) {
    if !(forward_auth.enabled && relay.enabled) {
        return;
    }
    let (path, prefix) = (&forward_auth.path, &relay.prefix);
    // `path` has no trailing `/` and `prefix` has one, so these two cases are every
    // overlap of {path, path/…} with {prefix…}.
    if path.starts_with(prefix.as_str()) {
        errors.push(
            "forward_auth.path",
            format!(
                "{path:?} lies under relay.prefix {prefix:?}: the relay takes every path under                  its prefix; choose a path outside it"
            ),
        );
    } else if prefix.starts_with(&format!("{path}/")) {
        errors.push(
            "relay.prefix",
            format!(
                "{prefix:?} lies under forward_auth.path {path:?}: forward-auth answers every                  path at or under its own; choose a prefix outside it"
            ),
        );
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

/// The relay's defaults, one place for the validator and the docs' numbers.
const RELAY_PREFIX: &str = "/auth/v1/";
const RELAY_MAX_BODY: &str = "64KiB";
const RELAY_LIMITS: [(&str, &str, u32); 3] = [
    ("signin", "10/m", 10),
    ("signup", "5/m", 5),
    ("verification", "5/m", 5),
];

fn validate_relay(
    raw: raw::RawRelay,
    cloudbase: &CloudbaseSettings,
    routes: &[RouteSettings],
    errors: &mut Errors,
) -> RelaySettings {
    let prefix = raw.prefix.unwrap_or_else(|| RELAY_PREFIX.to_owned());
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        errors.push(
            "relay.prefix",
            format!("{prefix:?} must start and end with / (like \"{RELAY_PREFIX}\")"),
        );
    } else if let Err(e) = check_prefix(&prefix) {
        errors.push("relay.prefix", e);
    }
    // The relay is consulted before the routes, so a route under its prefix could never
    // be reached. A shorter route (`/`, `/auth/`) keeps every path outside the prefix, as
    // with the longest-prefix rule between routes. While the relay is off it takes no
    // path, and `/auth/v1/…` is free for routes.
    let enabled = raw.enabled.unwrap_or(false);
    for (i, route) in routes.iter().enumerate() {
        if enabled && route.prefix.starts_with(&prefix) {
            errors.push(
                "relay.prefix",
                format!(
                    "{prefix:?} would hide routes[{i}] ({:?}): the relay takes every path under its prefix",
                    route.prefix
                ),
            );
        }
    }
    let mut allowed_origins = Vec::new();
    for (i, origin) in raw
        .allowed_origins
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        match check_origin(&origin) {
            Ok(()) => allowed_origins.push(origin),
            Err(e) => errors.push(format!("relay.allowed_origins[{i}]"), e),
        }
    }
    let max_body_size = match parse_size(raw.max_body_size.as_deref().unwrap_or(RELAY_MAX_BODY)) {
        Ok(0) => {
            errors.push("relay.max_body_size", "must be at least 1 byte");
            0
        }
        Ok(n) => n,
        Err(e) => {
            errors.push("relay.max_body_size", e);
            64 << 10
        }
    };
    let mut limit = |name: &str, rate: &Option<String>, burst: Option<u32>| {
        relay_limit(name, rate.as_deref(), burst, errors)
    };
    let limits = RelayLimits {
        signin: limit("signin", &raw.signin_rate, raw.signin_burst),
        signup: limit("signup", &raw.signup_rate, raw.signup_burst),
        verification: limit(
            "verification",
            &raw.verification_rate,
            raw.verification_burst,
        ),
    };
    RelaySettings {
        enabled,
        prefix,
        allowed_origins,
        client_id: raw.client_id.unwrap_or_else(|| cloudbase.client_id.clone()),
        max_body_size,
        limits,
    }
}

/// `relay.{name}_rate` and `relay.{name}_burst`, defaults from [`RELAY_LIMITS`].
fn relay_limit(
    name: &str,
    rate: Option<&str>,
    burst: Option<u32>,
    errors: &mut Errors,
) -> RelayLimit {
    let (_, default_rate, default_burst) = RELAY_LIMITS
        .into_iter()
        .find(|(n, _, _)| *n == name)
        .expect("a relay limit with defaults");
    let rate = match rate.unwrap_or(default_rate) {
        "off" => None,
        text => Some(parse_rate(text).unwrap_or_else(|e| {
            errors.push(format!("relay.{name}_rate"), e);
            parse_rate(default_rate).expect("default rate parses")
        })),
    };
    let burst = std::num::NonZeroU32::new(burst.unwrap_or(default_burst)).unwrap_or_else(|| {
        errors.push(format!("relay.{name}_burst"), "must be at least 1");
        std::num::NonZeroU32::MIN
    });
    RelayLimit { rate, burst }
}

/// An origin as browsers send it: `http` or `https`, a lower-case host, the port only when
/// it is not the scheme's default, nothing else. Anything else could never match.
fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" || origin == "null" {
        return Err(format!(
            "{origin:?} is not accepted: list each origin, like \"https://app.example.com\""
        ));
    }
    let bad =
        |why: &str| format!("{origin:?} is not an origin like \"https://app.example.com\" ({why})");
    let (scheme, authority) = origin.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let default_port = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => return Err(bad("the scheme must be http or https")),
    };
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(bad("an origin has no path, query or user"));
    }
    if authority.parse::<http::uri::Authority>().is_err() {
        return Err(bad("not a valid host"));
    }
    if authority.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(bad("browsers send the host in lower case"));
    }
    if authority.ends_with(default_port) {
        return Err(bad("browsers leave out the scheme's default port"));
    }
    Ok(())
}

fn validate_emulator(raw: raw::RawEmulator, errors: &mut Errors) -> EmulatorSettings {
    let limits = validate_limits(&raw, errors);
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
        test_hooks: raw.test_hooks.unwrap_or(false),
        limits,
        users,
    }
}

fn validate_limits(raw: &raw::RawEmulator, errors: &mut Errors) -> AttemptLimits {
    let default = AttemptLimits::default();
    let lockout = duration(
        raw.lockout.clone(),
        "emulator.lockout",
        &humantime::format_duration(default.lockout).to_string(),
        errors,
    );
    if lockout.is_zero() {
        errors.push(
            "emulator.lockout",
            "must be longer than 0 (set failed_attempts_per_user/per_client = 0 to turn a limit off)",
        );
    }
    AttemptLimits {
        per_user: raw.failed_attempts_per_user.unwrap_or(default.per_user),
        per_client: raw.failed_attempts_per_client.unwrap_or(default.per_client),
        lockout,
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
            test_hooks: false,
            limits: AttemptLimits::default(),
            users: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
