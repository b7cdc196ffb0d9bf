//! `[forward_auth]`: the endpoint an existing ingress asks whether a request may pass
//! (nginx `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth`, Envoy `ext_authz`;
//! see `crate::forward_auth`).

use serde::{Deserialize, Serialize};

use super::relay::RelaySettings;
use super::routes::{check_prefix, AuthMode, RouteSettings};
use super::validate::{keyword, Errors};

/// `[forward_auth]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForwardAuth {
    enabled: Option<bool>,
    path: Option<String>,
    default_auth: Option<String>,
}

/// `[forward_auth]`, validated. `Default` holds the defaults; `Serialize` is the effective
/// configuration's `[forward_auth]` table.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardAuthSettings {
    /// Default false.
    pub enabled: bool,
    /// On the main listener: this path exactly, and every path under `path/` (Envoy appends
    /// the original path). Normal form, no trailing `/`. Default `/_gateway/auth`.
    pub path: String,
    /// The rules for original requests no route matches: a catch-all route with this
    /// `auth` and no other rule. `None` (default): such requests are answered 404.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_auth: Option<AuthMode>,
}

impl Default for ForwardAuthSettings {
    fn default() -> Self {
        ForwardAuthSettings {
            enabled: false,
            path: "/_gateway/auth".to_owned(),
            default_auth: None,
        }
    }
}

/// `routes`: the validated `[[routes]]`, which the endpoint's path must stay clear of.
pub(super) fn validate(
    raw: RawForwardAuth,
    routes: &[RouteSettings],
    errors: &mut Errors,
) -> ForwardAuthSettings {
    let d = ForwardAuthSettings::default();
    let enabled = raw.enabled.unwrap_or(d.enabled);
    let path = raw.path.unwrap_or(d.path);
    let default_auth = raw.default_auth.as_deref().map(|s| {
        keyword(
            Some(s),
            "forward_auth.default_auth",
            AuthMode::Required,
            errors,
        )
    });
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
pub(super) fn check_beside_relay(
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
                "{path:?} lies under relay.prefix {prefix:?}: the relay takes every path under \
                 its prefix; choose a path outside it"
            ),
        );
    } else if prefix.starts_with(&format!("{path}/")) {
        errors.push(
            "relay.prefix",
            format!(
                "{prefix:?} lies under forward_auth.path {path:?}: forward-auth answers every \
                 path at or under its own; choose a prefix outside it"
            ),
        );
    }
}
