//! `[upstream]`: the connection pool to the routes' upstreams.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ser;
use super::validate::{duration, Errors};

/// `[upstream]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pool_idle_timeout: Option<String>,
    pool_max_idle_per_host: Option<u64>,
}

/// `[upstream]`, validated. `Default` holds the defaults; `Serialize` is the effective
/// configuration's `[upstream]` table.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamSettings {
    /// How long an idle pooled connection may be reused. Default 1 s: below the idle
    /// timeouts of common upstream servers (gunicorn 2 s, Node.js and uvicorn 5 s), so the
    /// gateway drops a connection before the upstream closes it under a request. Zero:
    /// no connection is reused.
    #[serde(serialize_with = "ser::duration")]
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per upstream host at most. Default 1024; zero: no pooling.
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            pool_idle_timeout: Duration::from_secs(1),
            pool_max_idle_per_host: 1024,
        }
    }
}

pub(super) fn validate(raw: RawUpstream, errors: &mut Errors) -> UpstreamSettings {
    let d = UpstreamSettings::default();
    UpstreamSettings {
        pool_idle_timeout: duration(
            raw.pool_idle_timeout,
            "upstream.pool_idle_timeout",
            d.pool_idle_timeout,
            errors,
        ),
        // Beyond usize (32-bit targets) is as good as unbounded.
        pool_max_idle_per_host: raw
            .pool_max_idle_per_host
            .map_or(d.pool_max_idle_per_host, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
    }
}
