//! Header hygiene: small pure functions over `&mut HeaderMap`, each citing the rule it
//! follows. Names are pre-built constants ([`super::names`] and private ones here); nothing
//! here parses a header name per request. Used by the layers that clean a client's
//! request (`stack::hop_by_hop`, `stack::client_headers`, `stack::auth` for preflights)
//! and by the forwarder (`proxy::forward`).

use std::net::IpAddr;

use http::header::{
    HeaderName, HeaderValue, ACCESS_CONTROL_REQUEST_METHOD, CONNECTION, CONTENT_LENGTH, FORWARDED,
    HOST, ORIGIN, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, Method, Uri, Version};
use ipnet::IpNet;

use super::names::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REAL_IP};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes every client-supplied identity header: names equal to one in `strip` once
/// lower-cased (the `http` crate already does that) with every character other than a
/// letter or digit read as `-`. `strip` holds normalized names (letters, digits and `-`
/// only; configuration refuses anything else). Runs on every route, so a client can never
/// hand the upstream an identity, whatever the route's `auth`.
///
/// Why every character and not only `_`: servers disagree about names that are not plain
/// `[a-z0-9-]`. CGI, PHP-FPM, WSGI and Rack read `-` as `_` (so `X_User_Id` and `X-User-Id`
/// collide), nginx with `underscores_in_headers` and Apache's `mod_cgi` pass `_` through,
/// and some gateways fold `.` or `~` too (`X.User.Id`). Removing every spelling that any of
/// them could read as an identity header costs nothing a real client sends.
pub fn strip_identity(headers: &mut HeaderMap, strip: &[HeaderName]) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let s = name.as_str();
        let plain = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let hit = if plain {
            strip.contains(name)
        } else {
            let folded: String = s
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            strip.iter().any(|n| n.as_str() == folded)
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
    // Most requests carry none of them, and most responses only `Connection: keep-alive`:
    // one look at each name present says which of the nine fixed names to remove, instead
    // of a hash and probe for each.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| *hop == name) {
            present[i] = true;
        }
    }
    if !websocket && !present.contains(&true) {
        return;
    }
    // The names `Connection` lists. Its lines are cheap copies (shared bytes), taken so the
    // map can be changed while they are read; `&str` names are looked up without copying.
    let lines: Vec<HeaderValue> = headers.get_all(CONNECTION).iter().cloned().collect();
    for token in lines
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        if websocket && token.eq_ignore_ascii_case("upgrade") {
            continue;
        }
        headers.remove(token);
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present && !(websocket && **name == UPGRADE) {
            headers.remove(*name);
        }
    }
    if websocket {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The names that are always hop-by-hop (RFC 9110 §7.6.1, and the proxy credentials of
/// §11.7); [`remove_hop_by_hop`] also removes those `Connection` lists.
static HOP_BY_HOP: [&HeaderName; 9] = [
    &CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &TE,
    &TRAILER,
    &TRANSFER_ENCODING,
    &UPGRADE,
    &PROXY_AUTHORIZATION,
    &PROXY_AUTHENTICATE,
];

/// Every line of `name` as one comma-separated list: RFC 9110 §5.3 lets a recipient combine
/// repeated field lines, in order, separated by commas, and a list field means the same
/// either way. A load balancer that appends its own `X-Forwarded-For` line instead of
/// extending the client's must not lose its entry. `None` when absent, empty, or a line is
/// not text (then nothing of it is believed).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out = String::new();
    for value in headers.get_all(name) {
        let value = value.to_str().ok()?.trim();
        if value.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(value);
    }
    (!out.is_empty()).then_some(out)
}

fn insert_text(headers: &mut HeaderMap, name: &HeaderName, text: &str) {
    match HeaderValue::from_str(text) {
        Ok(v) => {
            headers.insert(name.clone(), v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// This hop's `Forwarded` element (RFC 7239 §4, §6): `for` the peer, the `host` asked for,
/// the `proto` it came over. IPv6 nodes are bracketed and quoted, hosts always quoted
/// (they may hold `:`); a host reaching here has passed [`is_authority`], so it holds no
/// `"` or `\`.
fn forwarded_element(peer: IpAddr, tls: bool, host: Option<&HeaderValue>) -> String {
    let mut element = match peer {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    };
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        element.push_str(&format!(";host=\"{host}\""));
    }
    element.push_str(if tls { ";proto=https" } else { ";proto=http" });
    element
}

/// Sets what the upstream is told about the client's connection: `X-Forwarded-For`,
/// `-Proto` and `-Host` (the de-facto standard; RFC 7239 gives their meaning), `Forwarded`
/// (RFC 7239) and `X-Real-IP`.
///
/// A client's own values are believed only when `peer` is a trusted proxy. From a trusted
/// peer, repeated lines are read as one list (see `joined`), `X-Forwarded-For` and
/// `Forwarded` are extended with this hop, `-Proto`, `-Host` and a single `X-Real-IP` are
/// kept. From anyone else the `X-Forwarded-*` are replaced by what the gateway saw, and
/// `Forwarded` and `X-Real-IP` are removed. `peer` is compared and written in its
/// canonical form (an IPv4-mapped `::ffff:a.b.c.d` is `a.b.c.d`), as configuration stores
/// `trusted`. `host` is the request's validated authority (see [`request_authority`]).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    tls: bool,
    host: Option<HeaderValue>,
    trusted: &[IpNet],
) {
    let peer = peer.to_canonical();
    let trusted_peer = !trusted.is_empty() && trusted.iter().any(|net| net.contains(&peer));
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    if !trusted_peer {
        // The common case, on every request: what the gateway saw replaces whatever the
        // client said, without formatting anything but the address.
        headers.insert(X_FORWARDED_FOR.clone(), ip_value(peer));
        headers.insert(X_FORWARDED_PROTO.clone(), proto);
        match host {
            Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        headers.remove(FORWARDED);
        headers.remove(&X_REAL_IP);
        return;
    }

    match joined(headers, &X_FORWARDED_FOR) {
        Some(chain) => insert_text(headers, &X_FORWARDED_FOR, &format!("{chain}, {peer}")),
        None => {
            headers.insert(X_FORWARDED_FOR.clone(), ip_value(peer));
        }
    }
    match joined(headers, &X_FORWARDED_PROTO) {
        Some(kept) => insert_text(headers, &X_FORWARDED_PROTO, &kept),
        None => {
            headers.insert(X_FORWARDED_PROTO.clone(), proto);
        }
    }
    let element = forwarded_element(peer, tls, host.as_ref());
    match joined(headers, &X_FORWARDED_HOST) {
        Some(kept) => insert_text(headers, &X_FORWARDED_HOST, &kept),
        None => match host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST.clone(), host);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        },
    }
    match joined(headers, &FORWARDED) {
        Some(chain) => insert_text(headers, &FORWARDED, &format!("{chain}, {element}")),
        None => {
            headers.remove(FORWARDED);
        }
    }
    if headers.get_all(&X_REAL_IP).iter().count() != 1 {
        headers.remove(&X_REAL_IP);
    }
}

/// `ip` as a header value. IPv4 (nearly every request) is written digit by digit, without
/// the formatting machinery `Display` brings; IPv6 goes through `Display`.
fn ip_value(ip: IpAddr) -> HeaderValue {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => {
            return HeaderValue::from_str(&v6.to_string()).expect("an address is a header value")
        }
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        for d in &digits[skip..] {
            text[len] = b'0' + d;
            len += 1;
        }
    }
    HeaderValue::from_bytes(&text[..len]).expect("an address is a header value")
}

/// Why a request's authority was refused (each is a 400, RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHost {
    /// More than one `Host` line.
    Repeated,
    /// A `Host` or target authority that is not `host[:port]`.
    Invalid,
    /// An HTTP/1.1 request without `Host`.
    Missing,
}

/// Whether `b` is `host [":" port]` (RFC 9110 §7.2) in the strict form the gateway passes
/// on: a bracketed IPv6 literal, or a name / IPv4 address of letters, digits, `-`, `.`,
/// `_` and `~`; no user info, path, query, spaces, commas or quotes. Stricter than RFC
/// 3986's reg-name (which allows sub-delims and percent-encoding): `X-Forwarded-Host` and
/// `Forwarded` are read by parsers that split on those.
pub fn is_authority(b: &[u8]) -> bool {
    let (host, port) = if b.first() == Some(&b'[') {
        let Some(close) = b.iter().position(|&c| c == b']') else {
            return false;
        };
        let inner = &b[1..close];
        let literal = inner
            .iter()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.'));
        if inner.is_empty() || !literal {
            return false;
        }
        (&b[..=close], &b[close + 1..])
    } else {
        let split = b.iter().position(|&c| c == b':').unwrap_or(b.len());
        (&b[..split], &b[split..])
    };
    let name_ok = host.first() == Some(&b'[')
        || (!host.is_empty()
            && host
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')));
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    name_ok && port_ok
}

/// The authority a request is for, validated (RFC 9112 §3.2, §3.2.2; RFC 9113 §8.3.1):
/// the target's own authority when it has one (HTTP/2 `:authority`, HTTP/1.1
/// absolute-form), which wins over any `Host`; else the single `Host` line. An empty
/// `Host` (allowed by RFC 9112 §3.2 for targets without authority) gives `None`.
///
/// Refused: two `Host` lines, a `Host` or target authority that is not [`is_authority`],
/// and an HTTP/1.1 request without `Host`.
pub fn request_authority(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, BadHost> {
    let mut lines = headers.get_all(HOST).iter();
    let (host, second) = (lines.next(), lines.next());
    if second.is_some() {
        return Err(BadHost::Repeated);
    }
    if let Some(authority) = uri.authority() {
        if !is_authority(authority.as_str().as_bytes()) {
            return Err(BadHost::Invalid);
        }
        return HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| BadHost::Invalid);
    }
    match host {
        Some(h) if h.is_empty() => Ok(None),
        Some(h) if is_authority(h.as_bytes()) => Ok(Some(h.clone())),
        Some(_) => Err(BadHost::Invalid),
        None if version == Version::HTTP_11 => Err(BadHost::Missing),
        None => Ok(None),
    }
}

/// RFC 9110 §5.6.2 `token`: what a method name is made of.
pub fn is_token(b: &[u8]) -> bool {
    !b.is_empty()
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut lines = headers.get_all(name).iter();
    match (lines.next(), lines.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

/// Whether a request is a CORS preflight (Fetch standard, "CORS-preflight request"):
/// `OPTIONS` with one non-empty `Origin` and one `Access-Control-Request-Method` holding a
/// method token. Anything else — an empty or repeated header, no `Origin` — is an ordinary
/// request.
pub fn is_cors_preflight(method: &Method, headers: &HeaderMap) -> bool {
    *method == Method::OPTIONS
        && single(headers, &ORIGIN).is_some_and(|o| !o.is_empty())
        && single(headers, &ACCESS_CONTROL_REQUEST_METHOD).is_some_and(|m| is_token(m.as_bytes()))
}

static X_HTTP_METHOD_OVERRIDE: HeaderName = HeaderName::from_static("x-http-method-override");
static X_HTTP_METHOD: HeaderName = HeaderName::from_static("x-http-method");
static X_METHOD_OVERRIDE: HeaderName = HeaderName::from_static("x-method-override");

/// The method-override headers frameworks honour (Express `method-override`, Rails, ASP.NET,
/// Spring's filter via a parameter): each would turn an `OPTIONS` into a `DELETE`.
const METHOD_OVERRIDES: [&HeaderName; 3] =
    [&X_HTTP_METHOD_OVERRIDE, &X_HTTP_METHOD, &X_METHOD_OVERRIDE];

/// What a preflight passed without a token may not carry: a body's framing (its body is
/// dropped) and the method-override headers, which would turn an unauthenticated
/// `OPTIONS` into a `DELETE`.
pub fn strip_preflight(headers: &mut HeaderMap) {
    for name in [&CONTENT_LENGTH, &TRANSFER_ENCODING]
        .into_iter()
        .chain(METHOD_OVERRIDES)
    {
        headers.remove(name);
    }
}

/// The body length a request declares in `Content-Length`, when it is one number; for
/// refusing an oversized body (413) before reading any of it. A malformed or repeated
/// value declares nothing here (hyper has already refused a request whose framing it
/// cannot trust).
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Whether a request carries a method-override header. Forward-auth asks this of a
/// preflight it would pass without a token: the ingress forwards the request as sent, so
/// the header cannot be dropped as [`strip_preflight`] drops it, and a browser's preflight
/// never carries one.
pub fn overrides_method(headers: &HeaderMap) -> bool {
    METHOD_OVERRIDES
        .into_iter()
        .any(|name| headers.contains_key(name))
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
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn an_ipv4_address_is_written_as_display_writes_it(bits in any::<u32>()) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(bits));
            let value = ip_value(ip);
            prop_assert_eq!(value.to_str().unwrap(), ip.to_string());
        }

        /// Whatever a client writes in `Connection` (empty items, spaces, invalid names,
        /// upper case, bytes over 0x7f): no panic, `Connection` goes, and of the other
        /// headers exactly those it names (as valid names, in any case) go with it.
        #[test]
        fn any_connection_value_removes_exactly_the_names_it_lists(
            value in proptest::collection::vec(
                prop_oneof![
                    Just(b'x'), Just(b'-'), Just(b'a'), Just(b'B'), Just(b','), Just(b' '),
                    Just(b'\t'), Just(b'"'), Just(b'/'), Just(0x80u8), Just(0xffu8),
                ],
                0..24,
            ),
        ) {
            let mut h = HeaderMap::new();
            h.insert(CONNECTION, HeaderValue::from_bytes(&value).unwrap());
            for name in ["x", "a", "x-a", "ab", "keep"] {
                h.insert(HeaderName::from_static(name), HeaderValue::from_static("v"));
            }
            let listed: Vec<String> = std::str::from_utf8(&value)
                .map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect())
                .unwrap_or_default();
            remove_hop_by_hop(&mut h, false);
            prop_assert!(!h.contains_key(CONNECTION));
            for name in ["x", "a", "x-a", "ab", "keep"] {
                let named = listed.iter().any(|t| t == name);
                prop_assert_eq!(h.contains_key(name), !named, "{}", name);
            }
        }
    }

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
    fn each_hop_by_hop_header_alone_is_removed() {
        // Alone, so the look for "any hop-by-hop name present" must find each of them.
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
        ] {
            let mut h = map(&[(name, "x"), ("x-keep", "1")]);
            remove_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
            assert_eq!(h["x-keep"], "1");
        }
    }

    #[test]
    fn a_websocket_upgrade_keeps_upgrade_and_loses_what_else_connection_lists() {
        let mut h = map(&[
            ("connection", "Upgrade, X-Foo"),
            ("connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("x-foo", "1"),
            ("keep-alive", "timeout=5"),
            ("x-bar", "2"),
        ]);
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h.len(), 3, "{h:?}");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
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

    #[test]
    fn identity_headers_go_when_dots_or_other_punctuation_stand_for_dashes() {
        let strip = vec![HeaderName::from_static("x-user-id")];
        let mut h = map(&[
            ("X.User.Id", "admin"),
            ("x~user~id", "admin"),
            ("x-user.id", "admin"),
            ("x-user-idx", "keep"),
        ]);
        strip_identity(&mut h, &strip);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-user-idx"], "keep");
    }

    #[test]
    fn repeated_forwarded_lines_from_a_trusted_proxy_are_one_list() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=6.6.6.6"),
            ("forwarded", "for=203.0.113.7"),
        ]);
        set_forwarded(&mut h, "10.0.0.1".parse().unwrap(), true, None, &trusted);
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 203.0.113.7, 10.0.0.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h["forwarded"],
            "for=6.6.6.6, for=203.0.113.7, for=10.0.0.1;proto=https"
        );
    }

    #[test]
    fn forwarded_and_x_real_ip_from_an_untrusted_peer_are_removed() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = map(&[
            ("forwarded", "for=1.1.1.1;host=evil"),
            ("x-real-ip", "1.1.1.1"),
        ]);
        set_forwarded(&mut h, "192.0.2.1".parse().unwrap(), false, None, &trusted);
        assert!(h.get("forwarded").is_none());
        assert!(h.get("x-real-ip").is_none());
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");

        let mut h = map(&[("x-real-ip", "198.51.100.4")]);
        let host = Some(HeaderValue::from_static("api.example:8443"));
        set_forwarded(&mut h, "10.0.0.1".parse().unwrap(), false, host, &trusted);
        assert_eq!(
            h["x-real-ip"], "198.51.100.4",
            "one X-Real-IP from a trusted proxy"
        );
    }

    #[test]
    fn an_ipv4_mapped_peer_matches_ipv4_trusted_proxies_and_is_written_as_ipv4() {
        let trusted: Vec<IpNet> = vec!["127.0.0.2/32".parse().unwrap()];
        let mut h = map(&[("x-forwarded-for", "203.0.113.7")]);
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        set_forwarded(&mut h, mapped, false, None, &trusted);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.2");
        let mut h = map(&[("forwarded", "for=x")]);
        set_forwarded(&mut h, "2001:db8::1".parse().unwrap(), false, None, &[]);
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        let trusted: Vec<IpNet> = vec!["2001:db8::/32".parse().unwrap()];
        let mut h = map(&[("forwarded", "for=x")]);
        let host = Some(HeaderValue::from_static("a.example"));
        set_forwarded(
            &mut h,
            "2001:db8::1".parse().unwrap(),
            false,
            host,
            &trusted,
        );
        assert_eq!(
            h["forwarded"],
            "for=x, for=\"[2001:db8::1]\";host=\"a.example\";proto=http"
        );
    }

    #[test]
    fn authorities_are_host_and_port_only() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1",
            "[::1]:443",
            "a_b.internal",
            "host:",
        ] {
            assert!(is_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "example.com/path",
            "user@example.com",
            "a b",
            "a,b",
            "example.com:80:80",
            "example.com:123456",
            "[::1",
            "[]",
            "[::1]x",
            "\"q\"",
            ":80",
        ] {
            assert!(!is_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn the_targets_authority_wins_and_ambiguous_hosts_are_refused() {
        let uri: Uri = "/x".parse().unwrap();
        let h = map(&[("host", "a.example")]);
        assert_eq!(
            request_authority(Version::HTTP_11, &uri, &h)
                .unwrap()
                .unwrap(),
            "a.example"
        );
        let h = map(&[("host", "a.example"), ("host", "a.example")]);
        assert_eq!(
            request_authority(Version::HTTP_11, &uri, &h),
            Err(BadHost::Repeated)
        );
        assert_eq!(
            request_authority(Version::HTTP_11, &uri, &HeaderMap::new()),
            Err(BadHost::Missing)
        );
        assert_eq!(
            request_authority(Version::HTTP_10, &uri, &HeaderMap::new()),
            Ok(None)
        );
        let h = map(&[("host", "")]);
        assert_eq!(request_authority(Version::HTTP_11, &uri, &h), Ok(None));
        // HTTP/2 :authority (and HTTP/1.1 absolute-form) beat a disagreeing Host.
        let absolute: Uri = "https://real.example/x".parse().unwrap();
        let h = map(&[("host", "evil.example")]);
        assert_eq!(
            request_authority(Version::HTTP_2, &absolute, &h)
                .unwrap()
                .unwrap(),
            "real.example"
        );
        let userinfo: Uri = "http://user@real.example/x".parse().unwrap();
        assert_eq!(
            request_authority(Version::HTTP_11, &userinfo, &HeaderMap::new()),
            Err(BadHost::Invalid)
        );
    }

    #[test]
    fn a_preflight_needs_origin_and_one_method_token() {
        let opt = Method::OPTIONS;
        let h = map(&[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
        ]);
        assert!(is_cors_preflight(&opt, &h));
        assert!(!is_cors_preflight(&Method::POST, &h));
        for bad in [
            map(&[("access-control-request-method", "POST")]),
            map(&[
                ("origin", "https://a"),
                ("access-control-request-method", ""),
            ]),
            map(&[
                ("origin", "https://a"),
                ("access-control-request-method", "PO ST"),
            ]),
            map(&[
                ("origin", "https://a"),
                ("access-control-request-method", "GET"),
                ("access-control-request-method", "POST"),
            ]),
            map(&[("origin", ""), ("access-control-request-method", "GET")]),
        ] {
            assert!(!is_cors_preflight(&opt, &bad), "{bad:?}");
        }
    }

    #[test]
    fn a_method_override_is_dropped_from_a_proxied_preflight_and_seen_by_forward_auth() {
        for name in [
            "x-http-method-override",
            "X-HTTP-Method",
            "x-method-override",
        ] {
            let mut h = map(&[
                ("origin", "https://app.example"),
                ("access-control-request-method", "GET"),
                (name, "DELETE"),
                ("content-length", "5"),
            ]);
            assert!(overrides_method(&h), "{name}");
            strip_preflight(&mut h);
            assert!(!overrides_method(&h), "{name} dropped");
            assert!(!h.contains_key(CONTENT_LENGTH));
            assert!(is_cors_preflight(&Method::OPTIONS, &h), "still a preflight");
        }
        assert!(!overrides_method(&map(&[(
            "x-http-method-overrides",
            "DELETE"
        )])));
    }
}
