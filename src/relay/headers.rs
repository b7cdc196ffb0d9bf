//! What of a relayed exchange crosses the gateway, each way. Pure functions over
//! `HeaderMap` and strings.
//!
//! Toward CloudBase the request keeps its meaning: method, path, query, body and every
//! end-to-end header the app sent (`Authorization`, `Content-Type`, `x-device-id`,
//! `x-request-id`, the SDK's language and captcha headers…), with `?client_id=` added
//! when absent. Gone are the hop-by-hop headers (RFC 9110 §7.6.1), the gateway origin's
//! cookies (RFC 6265 §5.4: they belong to the apps on this origin, not to CloudBase) and,
//! earlier in the stack, every identity header. The gateway adds no credential of its
//! own: the app is a public client, so `cloudbase.client_secret` never goes with its calls.
//!
//! Back to the app, CloudBase's answer keeps its status and body and the headers that
//! describe them ([`RESPONSE_HEADERS`]); the rest — cookies, CORS, `Alt-Svc`, HSTS and
//! the like — are about CloudBase's origin and would be wrongly read as the gateway's.
//! Every answer is `Cache-Control: no-store` (RFC 6749 §5.1 for token responses; none
//! of these answers is reusable).

use std::borrow::Cow;

use http::header::{
    HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LANGUAGE, CONTENT_LENGTH,
    CONTENT_TYPE, COOKIE, HOST, LOCATION, RETRY_AFTER, VARY, WWW_AUTHENTICATE,
};
use http::HeaderMap;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::purge::form_decode;
use crate::http::headers::remove_hop_by_hop;

/// The response headers that describe CloudBase's answer itself.
pub const RESPONSE_HEADERS: [HeaderName; 9] = [
    CONTENT_TYPE,
    CONTENT_LENGTH,
    CONTENT_ENCODING,
    CONTENT_LANGUAGE,
    WWW_AUTHENTICATE,
    RETRY_AFTER,
    LOCATION,
    VARY,
    HeaderName::from_static("x-request-id"),
];

/// Cleans the app's request headers for CloudBase. `Host` goes too: the client sets
/// CloudBase's.
pub fn request_headers(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers, false);
    headers.remove(COOKIE);
    headers.remove(HOST);
}

/// Keeps [`RESPONSE_HEADERS`] of CloudBase's answer, and says `Cache-Control: no-store`.
/// Run after the framing and hop-by-hop rules.
pub fn response_headers(headers: &mut HeaderMap) {
    let foreign: Vec<HeaderName> = headers
        .keys()
        .filter(|n| !RESPONSE_HEADERS.contains(n))
        .cloned()
        .collect();
    for name in foreign {
        headers.remove(name);
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Characters of a query value sent as they are: RFC 3986 unreserved.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `query` with `client_id=<client_id>` appended when it holds no `client_id` (in any
/// spelling a form decoder reads as that name). An empty `client_id` adds nothing.
pub fn with_client_id<'a>(query: Option<&'a str>, client_id: &str) -> Option<Cow<'a, str>> {
    let present = query.is_some_and(|q| {
        q.split('&')
            .any(|pair| form_decode(pair.split_once('=').map_or(pair, |(k, _)| k)) == "client_id")
    });
    if present || client_id.is_empty() {
        return query.map(Cow::Borrowed);
    }
    let added = format!("client_id={}", utf8_percent_encode(client_id, QUERY_VALUE));
    Some(Cow::Owned(match query {
        Some(q) if !q.is_empty() => format!("{q}&{added}"),
        _ => added,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::headers::test_header_map as map;

    #[test]
    fn the_apps_end_to_end_headers_go_and_hop_by_hop_cookies_and_host_do_not() {
        let mut h = map(&[
            ("authorization", "Bearer t"),
            ("content-type", "text/plain;charset=UTF-8"),
            ("x-device-id", "device-1"),
            ("x-request-id", "req-1"),
            ("undefined", "undefined"),
            ("cookie", "app_session=secret"),
            ("host", "gateway.example.com"),
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic eDp5"),
        ]);
        request_headers(&mut h);
        let mut names: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "authorization",
                "content-type",
                "undefined",
                "x-device-id",
                "x-request-id"
            ]
        );
    }

    #[test]
    fn cloudbases_answer_keeps_what_describes_it_and_is_never_stored() {
        let mut h = map(&[
            ("content-type", "application/json"),
            ("content-length", "2"),
            ("www-authenticate", "Bearer"),
            ("x-request-id", "req-1"),
            ("set-cookie", "cb=1; Domain=example.com"),
            ("alt-svc", "h3=\":443\""),
            (
                "strict-transport-security",
                "max-age=63072000; includeSubDomains",
            ),
            ("cache-control", "public, max-age=600"),
            ("server", "cloudbase"),
        ]);
        response_headers(&mut h);
        let mut names: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "cache-control",
                "content-length",
                "content-type",
                "www-authenticate",
                "x-request-id"
            ]
        );
        assert_eq!(h[CACHE_CONTROL], "no-store");
    }

    #[test]
    fn client_id_is_added_only_when_the_app_sent_none() {
        assert_eq!(
            with_client_id(None, "web").as_deref(),
            Some("client_id=web")
        );
        assert_eq!(
            with_client_id(Some(""), "web").as_deref(),
            Some("client_id=web")
        );
        assert_eq!(
            with_client_id(Some("sudo_token=s"), "web app/1").as_deref(),
            Some("sudo_token=s&client_id=web%20app%2F1")
        );
        for kept in [
            "client_id=mine",
            "a=1&client_id=",
            "client%5Fid=mine",
            "client_id",
        ] {
            assert_eq!(
                with_client_id(Some(kept), "web").as_deref(),
                Some(kept),
                "{kept}"
            );
        }
        assert_eq!(with_client_id(Some("a=1"), "").as_deref(), Some("a=1"));
    }
}
