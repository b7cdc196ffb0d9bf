//! Configuration: the TOML file and the validated settings every component is built from.
//!
//! Loading goes file -> `toml::Value` -> `${NAME}` interpolation -> one serde pass per
//! section -> validation. Each stage collects errors instead of stopping at the first, so
//! `cloudbase-gateway check` can list every mistake, each with its key
//! (`routes[1].upstream: …`). Durations, sizes, URLs, CIDRs and header names are parsed
//! here once; nothing downstream parses configuration again.
//!
//! One file per table (`server`, `admin`, `cloudbase`, `upstream`, `cache`, `identity`,
//! `routes`, `forward_auth`, `relay`, `telemetry`, `emulator`; `rate` holds the rates
//! `relay` and `routes` share), each holding everything about its keys: the raw serde type that
//! mirrors the file (`deny_unknown_fields`), the validated settings type whose `Default`
//! impl is the one place each default is written and whose `Serialize` impl is the
//! effective configuration `check` prints (secrets redacted, see `ser`), and its
//! `validate` function (helpers in `validate`). Enums are spelled once, with
//! `keyword_enum!`. A new table: a new file in that shape, a field of [`Config`], and
//! one line in [`Config::from_toml_str_with_env`].

mod admin;
mod cache;
mod cloudbase;
mod effective;
mod emulator;
mod forward_auth;
mod identity;
mod rate;
mod relay;
mod reload;
mod routes;
mod ser;
mod server;
mod telemetry;
mod upstream;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::identity_headers::{IdentityField, IdentityMapping};
pub use crate::path::EscapedSlashes;
pub use crate::secret::{Secret, SecretUrl};
pub use admin::AdminSettings;
pub use cache::{CacheSettings, RedisSettings, MIN_HMAC_KEY_BYTES, REDACTED_HMAC_KEY};
pub use cloudbase::{CloudbaseSettings, DEFAULT_MAX_IN_FLIGHT};
pub use cloudbase_auth::IntrospectAuth;
pub use cloudbase_emulator::{AttemptLimits, EmulatorOptions, SeedUser};
pub use emulator::EmulatorSettings;
pub use forward_auth::ForwardAuthSettings;
pub use identity::{
    normalize_header_name, IdentitySettings, DEFAULT_IDENTITY_HEADERS, DEFAULT_MAX_HEADER_BYTES,
};
pub use rate::{parse_rate, Rate, RateUnit};
pub use relay::{RelayLimit, RelayLimits, RelaySettings};
pub use reload::{Reload, NEEDS_RESTART};
pub use routes::{
    parse_upstream, AuthMode, RouteRateLimit, RouteSettings, Upstream, DEFAULT_RATE_LIMIT_MAX_KEYS,
};
pub use server::{ServerSettings, TlsFiles};
pub use telemetry::TelemetrySettings;
pub use upstream::UpstreamSettings;
pub use validate::{parse_duration, parse_size};

use validate::Errors;

/// Every setting of the gateway, validated. Its `Serialize` impl is the effective
/// configuration ([`Config::effective_toml`]).
#[derive(Debug, Clone, Serialize)]
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
        Self::from_toml_str(&read(path)?)
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
        let mut value = parse(text)?;
        for (key, v) in value.iter_mut() {
            interpolate(v, key.clone(), &env, &mut errors);
        }

        let mut take = |name: &str| value.remove(name);
        let server: server::RawServer = section(take("server"), "server", &mut errors);
        let admin: admin::RawAdmin = section(take("admin"), "admin", &mut errors);
        let cloudbase: cloudbase::RawCloudbase =
            section(take("cloudbase"), "cloudbase", &mut errors);
        let upstream: upstream::RawUpstream = section(take("upstream"), "upstream", &mut errors);
        let cache: cache::RawCache = section(take("cache"), "cache", &mut errors);
        let identity: identity::RawIdentity = section(take("identity"), "identity", &mut errors);
        let emulator: emulator::RawEmulator = section(take("emulator"), "emulator", &mut errors);
        let forward_auth: forward_auth::RawForwardAuth =
            section(take("forward_auth"), "forward_auth", &mut errors);
        let relay: relay::RawRelay = section(take("relay"), "relay", &mut errors);
        let telemetry: telemetry::RawTelemetry =
            section(take("telemetry"), "telemetry", &mut errors);
        // A route whose table did not deserialize is `None`: reported once, not again as
        // "prefix missing", and the others keep their indices.
        let routes: Vec<Option<routes::RawRoute>> = match take("routes") {
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

        let emulator = emulator::validate(emulator, &mut errors);
        let cloudbase = cloudbase::validate(cloudbase, emulator.enabled, &mut errors);
        let routes = routes::validate(routes, &mut errors);
        // Both take their paths before routing: checked against the routes and each other.
        let relay = relay::validate(relay, &cloudbase.client_id, &routes, &mut errors);
        let forward_auth = forward_auth::validate(forward_auth, &routes, &mut errors);
        forward_auth::check_beside_relay(&forward_auth, &relay, &mut errors);
        let config = Config {
            server: server::validate(server, &mut errors),
            admin: admin::validate(admin, &mut errors),
            cloudbase,
            upstream: upstream::validate(upstream, &mut errors),
            cache: cache::validate(cache, &mut errors),
            identity: identity::validate(identity, &mut errors),
            routes,
            forward_auth,
            relay,
            telemetry: telemetry::validate(telemetry, &mut errors),
            emulator,
        };
        errors.into_result(config)
    }

    /// What the emulator is started with, embedded or alone: `[emulator]`, and from
    /// `[cloudbase]` the identity the emulator shares with the gateway (env id, region,
    /// client id and secret; empty ones take the emulator's defaults).
    pub fn emulator_options(&self) -> EmulatorOptions {
        emulator::options(&self.emulator, &self.cloudbase)
    }
}

/// What `cloudbase-gateway emulator` runs from: a gateway configuration file read for the
/// emulator alone. Only `[emulator]` and the `[cloudbase]` keys the emulator shares (env
/// id, region, client id and secret) are read and interpolated; none of the rules only the
/// gateway needs applies (a CloudBase URL, `introspect_auth`, …), and other tables are not
/// its business. An empty text is the emulator's defaults.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// `[emulator] listen`.
    pub listen: SocketAddr,
    pub options: EmulatorOptions,
}

impl EmulatorConfig {
    /// Reads the file at `path` for the emulator.
    pub fn load(path: &Path) -> Result<EmulatorConfig, ConfigErrors> {
        Self::from_toml_str_with_env(&read(path)?, |name| std::env::var(name).ok())
    }

    /// Parses TOML text for the emulator, looking `${NAME}` up with `env`.
    pub fn from_toml_str_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<EmulatorConfig, ConfigErrors> {
        let mut errors = Errors::default();
        let mut value = parse(text)?;
        let mut take = |name: &str, errors: &mut Errors| {
            let mut v = value.remove(name);
            if let Some(v) = &mut v {
                interpolate(v, name.to_owned(), &env, errors);
            }
            v
        };
        let cloudbase = take("cloudbase", &mut errors);
        let cloudbase: cloudbase::RawCloudbase = section(cloudbase, "cloudbase", &mut errors);
        let emulator = take("emulator", &mut errors);
        let emulator: emulator::RawEmulator = section(emulator, "emulator", &mut errors);
        let emulator = emulator::validate(emulator, &mut errors);
        let shared = cloudbase::identity(&cloudbase);
        let config = EmulatorConfig {
            listen: emulator.listen,
            options: emulator::options(&emulator, &shared),
        };
        errors.into_result(config)
    }
}

/// The file at `path`, or the one error saying why it cannot be read.
fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            key: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })
}

/// The TOML document, or the one error saying why it is not one.
fn parse(text: &str) -> Result<toml::Table, ConfigErrors> {
    text.parse().map_err(|e: toml::de::Error| {
        ConfigErrors(vec![ConfigError {
            key: String::new(),
            message: format!("not valid TOML: {}", e.message()),
        }])
    })
}

impl Errors {
    /// `value` when nothing was wrong, else every mistake.
    fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.0))
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
                interpolate(v, format!("{key}.{}", validate::quote_key(k)), env, errors);
            }
        }
        _ => {}
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

#[cfg(test)]
mod tests;
