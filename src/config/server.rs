//! `[server]`: the public listener.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::ser;
use super::validate::{duration, keyword, size, socket_addr, Errors};
use crate::path::EscapedSlashes;

/// `[server]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    request_timeout: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_concurrent_streams: Option<u64>,
    max_body_size: Option<String>,
    max_connections: Option<u64>,
    shutdown_grace_period: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    escaped_slashes: Option<String>,
}

/// `[server]`, validated. `Default` holds the defaults; `Serialize` is the effective
/// configuration's `[server]` table.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSettings {
    /// Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// PEM certificate chain and key; both or neither. With them the listener speaks TLS.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// Whole request, upstream included. Default 30 s.
    #[serde(serialize_with = "ser::duration")]
    pub request_timeout: Duration,
    /// Time from accept (TLS handshake included) to a complete first request head, in
    /// every protocol; on HTTP/1.1 also from the end of one exchange to the next head.
    /// Default 10 s.
    #[serde(serialize_with = "ser::duration")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long (HTTP/2 with a
    /// GOAWAY). Default 60 s.
    #[serde(serialize_with = "ser::duration")]
    pub idle_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    /// Default 100.
    pub max_concurrent_streams: u32,
    /// Largest request body accepted. Default 10 MiB.
    #[serde(serialize_with = "ser::size")]
    pub max_body_size: u64,
    /// Open client connections at most. Default 10 000.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown. Default 30 s.
    #[serde(serialize_with = "ser::duration")]
    pub shutdown_grace_period: Duration,
    /// Peers whose `X-Forwarded-*`, `Forwarded` and `X-Real-IP` are believed. Default none.
    /// IPv4-mapped IPv6 networks are stored as IPv4, the form peers are matched in.
    #[serde(serialize_with = "ser::texts")]
    pub trusted_proxies: Vec<IpNet>,
    /// `%2F` / `%5C` in a path: refused (default) or kept encoded. See [`crate::path`].
    pub escaped_slashes: EscapedSlashes,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_concurrent_streams: 100,
            max_body_size: 10 << 20,
            max_connections: 10_000,
            shutdown_grace_period: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            escaped_slashes: EscapedSlashes::default(),
        }
    }
}

/// The listener's certificate chain and key, PEM.
#[derive(Debug, Clone, Serialize)]
pub struct TlsFiles {
    #[serde(rename = "tls_cert", serialize_with = "ser::path")]
    pub cert: PathBuf,
    #[serde(rename = "tls_key", serialize_with = "ser::path")]
    pub key: PathBuf,
}

pub(super) fn validate(raw: RawServer, errors: &mut Errors) -> ServerSettings {
    let d = ServerSettings::default();
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
    let max_body_size = size(
        raw.max_body_size.as_deref(),
        "server.max_body_size",
        d.max_body_size,
        errors,
    );
    let max_connections = match raw.max_connections {
        None => d.max_connections,
        Some(0) => {
            errors.push("server.max_connections", "must be at least 1");
            1
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
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
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(canonical_net(net)),
            Err(_) => errors.push(
                format!("server.trusted_proxies[{i}]"),
                format!("{s:?} is not a CIDR like \"10.0.0.0/8\" or an IP address"),
            ),
        }
    }
    let escaped_slashes = keyword(
        raw.escaped_slashes.as_deref(),
        "server.escaped_slashes",
        d.escaped_slashes,
        errors,
    );
    ServerSettings {
        listen: socket_addr(raw.listen, "server.listen", d.listen, errors),
        tls,
        request_timeout: duration(
            raw.request_timeout,
            "server.request_timeout",
            d.request_timeout,
            errors,
        ),
        header_read_timeout: duration(
            raw.header_read_timeout,
            "server.header_read_timeout",
            d.header_read_timeout,
            errors,
        ),
        idle_timeout: {
            let idle = duration(
                raw.idle_timeout,
                "server.idle_timeout",
                d.idle_timeout,
                errors,
            );
            // Zero would read as "no limit" to some and "no keep-alive" to others: say it.
            if idle.is_zero() {
                errors.push(
                    "server.idle_timeout",
                    "must be more than 0 (a connection with no request in flight this long is closed)",
                );
            }
            idle
        },
        max_concurrent_streams: match raw.max_concurrent_streams {
            None => d.max_concurrent_streams,
            Some(n @ 1..=0x7fff_ffff) => n as u32,
            Some(_) => {
                errors.push(
                    "server.max_concurrent_streams",
                    "must be between 1 and 2147483647",
                );
                d.max_concurrent_streams
            }
        },
        max_body_size,
        max_connections,
        shutdown_grace_period: duration(
            raw.shutdown_grace_period,
            "server.shutdown_grace_period",
            d.shutdown_grace_period,
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
