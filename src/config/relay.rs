//! `[relay]`: the CloudBase Auth v2 relay (see `crate::relay`): the app's own sign-in
//! calls through the gateway, so a sign-out purges the cache at once.

use std::num::NonZeroU32;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::rate::{parse_rate, Rate, RateUnit};
use super::routes::{check_prefix, RouteSettings};
use super::ser;
use super::validate::{size, Errors};

/// `[relay]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    enabled: Option<bool>,
    prefix: Option<String>,
    allowed_origins: Option<Vec<String>>,
    client_id: Option<String>,
    max_body_size: Option<String>,
    signin_rate: Option<String>,
    signin_burst: Option<u32>,
    signup_rate: Option<String>,
    signup_burst: Option<u32>,
    verification_rate: Option<String>,
    verification_burst: Option<u32>,
}

/// `[relay]`, validated. `Default` holds the defaults but `client_id`'s (which is
/// `cloudbase.client_id`); `Serialize` is the effective configuration's `[relay]` table.
#[derive(Debug, Clone, Serialize)]
pub struct RelaySettings {
    /// Default false.
    pub enabled: bool,
    /// Paths under it go to CloudBase. Starts and ends with `/`, in normal form.
    /// Default `/auth/v1/`, where the official web SDK calls by default.
    pub prefix: String,
    /// Origins (`https://app.example.com`) whose pages may call the relay; exact match.
    /// Default none: no CORS headers.
    pub allowed_origins: Vec<String>,
    /// `?client_id=` added to calls that carry none. Default `cloudbase.client_id`.
    pub client_id: String,
    /// Largest request body relayed. Default 64 KiB.
    #[serde(serialize_with = "ser::size")]
    pub max_body_size: u64,
    /// Per-client-address token buckets of the endpoints that guess or create accounts.
    #[serde(flatten)]
    pub limits: RelayLimits,
}

/// The relay's per-client-address limits, printed as `{name}_rate` and `{name}_burst`.
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
    pub burst: NonZeroU32,
}

impl RelayLimits {
    /// Each limit with its name in the configuration keys.
    fn named(&self) -> [(&'static str, RelayLimit); 3] {
        [
            ("signin", self.signin),
            ("signup", self.signup),
            ("verification", self.verification),
        ]
    }
}

impl Default for RelayLimits {
    fn default() -> Self {
        let per_minute = |n: u32| {
            let n = NonZeroU32::new(n).expect("a positive default");
            RelayLimit {
                rate: Some(Rate {
                    count: n,
                    per: RateUnit::Minute,
                }),
                burst: n,
            }
        };
        RelayLimits {
            signin: per_minute(10),
            signup: per_minute(5),
            verification: per_minute(5),
        }
    }
}

impl Serialize for RelayLimits {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(6))?;
        for (name, limit) in self.named() {
            let rate = limit.rate.map_or("off".to_owned(), |rate| rate.to_string());
            map.serialize_entry(&format!("{name}_rate"), &rate)?;
            map.serialize_entry(&format!("{name}_burst"), &limit.burst.get())?;
        }
        map.end()
    }
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            enabled: false,
            prefix: "/auth/v1/".to_owned(),
            allowed_origins: Vec::new(),
            client_id: String::new(),
            max_body_size: 64 << 10,
            limits: RelayLimits::default(),
        }
    }
}

/// `client_id`: `cloudbase.client_id`, the default of `relay.client_id`; `routes`: the
/// validated `[[routes]]`, which the relay's prefix must not hide.
pub(super) fn validate(
    raw: RawRelay,
    client_id: &str,
    routes: &[RouteSettings],
    errors: &mut Errors,
) -> RelaySettings {
    let d = RelaySettings::default();
    let prefix = raw.prefix.unwrap_or(d.prefix);
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        errors.push(
            "relay.prefix",
            format!("{prefix:?} must start and end with / (like \"/auth/v1/\")"),
        );
    } else if let Err(e) = check_prefix(&prefix) {
        errors.push("relay.prefix", e);
    }
    // The relay is consulted before the routes, so a route under its prefix could never
    // be reached. A shorter route (`/`, `/auth/`) keeps every path outside the prefix, as
    // with the longest-prefix rule between routes. While the relay is off it takes no
    // path, and `/auth/v1/…` is free for routes.
    let enabled = raw.enabled.unwrap_or(d.enabled);
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
    let max_body_size = size(
        raw.max_body_size.as_deref(),
        "relay.max_body_size",
        d.max_body_size,
        errors,
    );
    if max_body_size == 0 {
        errors.push("relay.max_body_size", "must be at least 1 byte");
    }
    let mut limit = |name: &str, default: RelayLimit, rate: Option<String>, burst| {
        relay_limit(name, default, rate.as_deref(), burst, errors)
    };
    let limits = RelayLimits {
        signin: limit("signin", d.limits.signin, raw.signin_rate, raw.signin_burst),
        signup: limit("signup", d.limits.signup, raw.signup_rate, raw.signup_burst),
        verification: limit(
            "verification",
            d.limits.verification,
            raw.verification_rate,
            raw.verification_burst,
        ),
    };
    RelaySettings {
        enabled,
        prefix,
        allowed_origins,
        client_id: raw.client_id.unwrap_or_else(|| client_id.to_owned()),
        max_body_size,
        limits,
    }
}

/// `relay.{name}_rate` and `relay.{name}_burst`, each `default`'s when absent or wrong.
fn relay_limit(
    name: &str,
    default: RelayLimit,
    rate: Option<&str>,
    burst: Option<u32>,
    errors: &mut Errors,
) -> RelayLimit {
    let rate = match rate {
        None => default.rate,
        Some("off") => None,
        Some(text) => match parse_rate(text) {
            Ok(rate) => Some(rate),
            Err(e) => {
                errors.push(format!("relay.{name}_rate"), e);
                default.rate
            }
        },
    };
    let burst = match burst {
        None => default.burst,
        Some(n) => NonZeroU32::new(n).unwrap_or_else(|| {
            errors.push(format!("relay.{name}_burst"), "must be at least 1");
            NonZeroU32::MIN
        }),
    };
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
