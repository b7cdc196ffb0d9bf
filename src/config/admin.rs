//! `[admin]`: health, readiness, metrics and cache purge.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::ser;
use super::validate::{socket_addr, Errors};
use crate::secret::Secret;

/// `[admin]` as written. No `Debug`: `token` is a secret.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
}

/// `[admin]`, validated. `Default` holds the defaults; `Serialize` is the effective
/// configuration's `[admin]` table (the token redacted).
#[derive(Debug, Clone, Serialize)]
pub struct AdminSettings {
    /// Default `127.0.0.1:9090`.
    pub listen: SocketAddr,
    /// Bearer token every admin POST must carry when set. Default unset.
    #[serde(
        serialize_with = "ser::some_secret",
        skip_serializing_if = "Option::is_none"
    )]
    pub token: Option<Secret>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
        }
    }
}

pub(super) fn validate(raw: RawAdmin, errors: &mut Errors) -> AdminSettings {
    let d = AdminSettings::default();
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
        listen: socket_addr(raw.listen, "admin.listen", d.listen, errors),
        token,
    }
}
