//! `[[routes]]`: which prefix goes where, and with which rules.

use std::fmt;
use std::num::NonZeroU32;

use http::{Method, Uri};
use serde::{Deserialize, Serialize};

use super::rate::{parse_rate, Rate};
use super::ser;
use super::validate::{keyword, Errors};
use crate::keyword::keyword_enum;
use crate::path::EscapedSlashes;

/// One `[[routes]]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    prefix: Option<String>,
    upstream: Option<String>,
    auth: Option<String>,
    strip_prefix: Option<bool>,
    methods: Option<Vec<String>>,
    allow_anonymous: Option<bool>,
    require_groups: Option<Vec<String>>,
    pass_token: Option<bool>,
    allow_preflight: Option<bool>,
    rate_limit: Option<String>,
    rate_limit_burst: Option<u32>,
    rate_limit_max_keys: Option<u64>,
}

keyword_enum! {
    /// `auth` of a route (and `forward_auth.default_auth`).
    #[derive(Default)]
    pub enum AuthMode {
        /// A valid token, or 401 (default).
        #[default]
        Required = "required",
        /// The identity when the token is valid; forwarded without one otherwise.
        Optional = "optional",
        /// No token read, no identity.
        None = "none",
    }
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

/// As configured: `whoami`, or the URL.
impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Whoami => f.write_str("whoami"),
            Upstream::Http {
                scheme,
                authority,
                base_path,
            } => write!(f, "{scheme}://{authority}{base_path}"),
        }
    }
}

/// One `[[routes]]` entry, validated. `Default` holds the defaults of the optional keys;
/// `Serialize` is the effective configuration's table.
#[derive(Debug, Clone, Serialize)]
pub struct RouteSettings {
    /// Required.
    pub prefix: String,
    /// Required.
    #[serde(serialize_with = "ser::text")]
    pub upstream: Upstream,
    /// Default `required`.
    pub auth: AuthMode,
    /// Default false.
    pub strip_prefix: bool,
    /// Empty (default) = all methods.
    #[serde(serialize_with = "ser::texts")]
    pub methods: Vec<Method>,
    /// Default false.
    pub allow_anonymous: bool,
    /// Default none.
    pub require_groups: Vec<String>,
    /// Default true.
    pub pass_token: bool,
    /// Default false.
    pub allow_preflight: bool,
    /// `rate_limit` and its companions; `None` (default): not limited.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RouteRateLimit>,
}

/// A route's per-user token bucket (see `crate::limit`), printed as the three keys it is
/// written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RouteRateLimit {
    /// `rate_limit`: `"100/s"`, `"10/m"`, `"500/h"`.
    #[serde(rename = "rate_limit", serialize_with = "ser::text")]
    pub rate: Rate,
    /// `rate_limit_burst`: the most requests that pass at once. Default: the rate's count.
    #[serde(rename = "rate_limit_burst")]
    pub burst: NonZeroU32,
    /// `rate_limit_max_keys`: users and addresses tracked at once, at most. Default
    /// [`DEFAULT_RATE_LIMIT_MAX_KEYS`].
    #[serde(rename = "rate_limit_max_keys")]
    pub max_keys: usize,
}

/// `routes[].rate_limit_max_keys` when unset: about 12 MB of buckets at most per route
/// (a `sub` key with its map slot is ~120 bytes).
pub const DEFAULT_RATE_LIMIT_MAX_KEYS: usize = 100_000;

impl Default for RouteSettings {
    fn default() -> Self {
        RouteSettings {
            prefix: String::new(),
            upstream: Upstream::Whoami,
            auth: AuthMode::default(),
            strip_prefix: false,
            methods: Vec::new(),
            allow_anonymous: false,
            require_groups: Vec::new(),
            pass_token: true,
            allow_preflight: false,
            rate_limit: None,
        }
    }
}

/// `raws[i]` is `None` where the table did not deserialize (already reported).
pub(super) fn validate(raws: Vec<Option<RawRoute>>, errors: &mut Errors) -> Vec<RouteSettings> {
    let d = RouteSettings::default();
    let mut routes: Vec<RouteSettings> = Vec::new();
    for (i, raw) in raws.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        let key = |k: &str| format!("routes[{i}].{k}");
        let rate_limit = rate_limit(&raw, &key, errors);
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
        let auth = keyword(raw.auth.as_deref(), &key("auth"), d.auth, errors);
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
            strip_prefix: raw.strip_prefix.unwrap_or(d.strip_prefix),
            methods,
            allow_anonymous: raw.allow_anonymous.unwrap_or(d.allow_anonymous),
            require_groups: raw.require_groups.unwrap_or_default(),
            pass_token: raw.pass_token.unwrap_or(d.pass_token),
            allow_preflight: raw.allow_preflight.unwrap_or(d.allow_preflight),
            rate_limit,
        });
    }
    routes
}

/// `rate_limit`, `rate_limit_burst` and `rate_limit_max_keys` of one route.
fn rate_limit(
    raw: &RawRoute,
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
        Some(n) => NonZeroU32::new(n).or_else(|| {
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

/// Characters a client may send raw or percent-encoded with different meanings to
/// different servers (RFC 3986 reserved characters the normalizer leaves as sent).
const TWO_SPELLINGS: &str = ":@!$&'()*+,;=";

/// A route prefix must be a path the normalizer leaves unchanged, so requests and prefixes
/// are compared in one form, and must not hold a character with two spellings: with a
/// prefix `/a:b/`, `/a%3Ab/x` would miss the route here but be `/a:b/x` upstream.
pub(super) fn check_prefix(prefix: &str) -> Result<(), String> {
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
