//! Header hygiene: small pure functions over `&mut HeaderMap`, each citing the rule it
//! follows. Names are pre-built constants; nothing here parses a header name per request.

use std::net::IpAddr;

use http::header::{
    HeaderName, HeaderValue, CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::HeaderMap;
use ipnet::IpNet;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes every client-supplied identity header: names equal to one in `strip` once
/// lower-cased (the `http` crate already does that) with `_` read as `-`. `strip` holds
/// normalized names. Runs on every route, so a client can never hand the upstream an
/// identity, whatever the route's `auth`.
pub fn strip_identity(headers: &mut HeaderMap, strip: &[HeaderName]) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let s = name.as_str();
        let hit = if s.contains('_') {
            let folded = s.replace('_', "-");
            strip.iter().any(|n| n.as_str() == folded)
        } else {
            strip.contains(name)
        };
        if hit {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(&name);
    }
}

/// Whether the request or response asks for a WebSocket upgrade (RFC 6455 §4.1).
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        });
    upgrade && connection_lists(headers, "upgrade")
}

fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
    })
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every name it lists,
/// `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, and
/// the proxy credentials of RFC 9110 §11.7. With `websocket`, `Connection: upgrade` and
/// `Upgrade` stay so the upgrade can go through end to end.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, websocket: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        if websocket && name == UPGRADE {
            continue;
        }
        headers.remove(&name);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    headers.remove(PROXY_AUTHORIZATION);
    headers.remove(PROXY_AUTHENTICATE);
    if websocket {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(CONNECTION);
        headers.remove(UPGRADE);
    }
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host` (the de-facto standard; RFC 7239 gives
/// their meaning). A client's own `X-Forwarded-*` are believed only when `peer` is a
/// trusted proxy: then the chain is extended; otherwise it is replaced.
/// `host` is the client's `Host` (or HTTP/2 `:authority`).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    tls: bool,
    host: Option<HeaderValue>,
    trusted: &[IpNet],
) {
    let trusted_peer = trusted.iter().any(|net| net.contains(&peer));
    let peer_text = peer.to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if trusted_peer && !prior.trim().is_empty() => {
            format!("{}, {peer_text}", prior.trim())
        }
        _ => peer_text,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    let keep_proto = trusted_peer && headers.contains_key(&X_FORWARDED_PROTO);
    if !keep_proto {
        let proto = if tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    let keep_host = trusted_peer && headers.contains_key(&X_FORWARDED_HOST);
    if !keep_host {
        match host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST.clone(), host);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// The client's address as far as the gateway can trust it: the peer's, unless the peer
/// is a trusted proxy; then the rightmost `X-Forwarded-For` entry that is not itself a
/// trusted proxy (entries left of it were written by whoever the client is and prove
/// nothing). A chain of trusted proxies only, or an unreadable entry, stops the walk at
/// the last address known to be real. For per-client limits: a client behind a trusted
/// load balancer is not the load balancer.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let entries = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Vec<_>>();
    for value in entries.iter().rev() {
        let Some(value) = value else { return client };
        for entry in value.rsplit(',') {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                return client;
            };
            client = ip;
            if !is_trusted(&ip) {
                return ip;
            }
        }
    }
    client
}

/// A header map of `pairs` (names and values valid), appended in order; for tests of
/// header rules here and in other modules.
#[cfg(test)]
pub(crate) fn test_header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("a header name"),
            HeaderValue::from_str(v).expect("a header value"),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_header_map as map;

    #[test]
    fn identity_headers_go_in_every_spelling() {
        let strip = vec![
            HeaderName::from_static("x-user-id"),
            HeaderName::from_static("x-user-groups"),
        ];
        let mut h = map(&[
            ("X-User-Id", "admin"),
            ("x_user_id", "admin"),
            ("X_User_Groups", "admin"),
            ("x-user-groups", "admin"),
            ("x-other", "keep"),
        ]);
        strip_identity(&mut h, &strip);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-other"], "keep");
    }

    #[test]
    fn connection_listed_headers_are_removed() {
        let mut h = map(&[
            ("connection", "close, X-Foo"),
            ("x-foo", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-bar", "2"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-bar"], "2");
    }

    #[test]
    fn websocket_upgrade_survives() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_websocket_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_the_rightmost_untrusted_address() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let h = map(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2")]);
        assert_eq!(
            client_ip(&h, ip("10.0.0.1"), &trusted),
            ip("1.2.3.4"),
            "the forged 6.6.6.6 left of the real client is ignored"
        );
        assert_eq!(
            client_ip(&h, ip("9.9.9.9"), &trusted),
            ip("9.9.9.9"),
            "an untrusted peer's X-Forwarded-For is not read"
        );
        let h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "10.0.0.3"),
        ]);
        assert_eq!(client_ip(&h, ip("10.0.0.1"), &trusted), ip("1.2.3.4"));
        let h = map(&[("x-forwarded-for", "1.2.3.4, junk, 10.0.0.3")]);
        assert_eq!(
            client_ip(&h, ip("10.0.0.1"), &trusted),
            ip("10.0.0.3"),
            "an unreadable entry stops the walk at the last real address"
        );
        assert_eq!(
            client_ip(&HeaderMap::new(), ip("10.0.0.1"), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarded_for_is_replaced_unless_peer_is_trusted() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("host", "example.com"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = h.get("host").cloned();
        set_forwarded(&mut h, "1.2.3.4".parse().unwrap(), false, host, &trusted);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");

        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(&mut h, "10.1.2.3".parse().unwrap(), false, None, &trusted);
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
