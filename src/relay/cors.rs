//! CORS for the relay: which web pages may call CloudBase through the gateway.
//!
//! The official SDK runs in the app's pages, usually on another origin than the
//! gateway's, and sends non-simple requests (JSON, `Authorization`, `x-device-id`), so the
//! browser asks first. The relay answers those preflights itself — CloudBase never sees
//! them — and permits exactly the configured origins: the request's `Origin` echoed
//! when it is in `relay.allowed_origins`, never `*`. No `Access-Control-Allow-Credentials`
//! either: the SDK keeps its tokens in storage and sends them in headers, so there is no
//! cookie for a page to borrow (and the relay forwards no cookie). CloudBase's own CORS
//! headers are dropped from what it answers, so only this policy reaches the browser.
//! Every answer of the relay says `Vary: Origin`: it differs by origin, and a shared
//! cache must not hand one origin's permission to another.

use http::header::{
    HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, Method};

/// What CloudBase's endpoints use between them.
const METHODS: HeaderValue = HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE");
/// Headers a page may read beyond the safelisted ones: when to retry after a 429, and the
/// id to quote in a support request.
const EXPOSE: HeaderValue = HeaderValue::from_static("retry-after, x-request-id");
/// Preflights are cached by browsers for 10 minutes (Chromium's cap is 2 hours).
const MAX_AGE: HeaderValue = HeaderValue::from_static("600");
const VARY_PREFLIGHT: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// The allowed origins, exact strings as browsers send them.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Box<[HeaderValue]>,
}

impl Cors {
    /// `origins` were validated as browser-serialized origins; unrepresentable ones are
    /// skipped (validation refuses them first).
    pub fn new(origins: &[String]) -> Cors {
        Cors {
            origins: origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
        }
    }

    /// The request's `Origin` when it is allowed: byte for byte one of the list. One
    /// `Origin` header only; a request with two is answered as if its origin were not
    /// allowed.
    pub fn allowed(&self, request: &HeaderMap) -> Option<HeaderValue> {
        let mut values = request.get_all(ORIGIN).iter();
        let (Some(origin), None) = (values.next(), values.next()) else {
            return None;
        };
        self.origins
            .iter()
            .any(|o| o == origin)
            .then(|| origin.clone())
    }

    /// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`
    /// (Fetch standard §3.2.2). A plain `OPTIONS` is an ordinary request.
    pub fn is_preflight(method: &Method, request: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && request.contains_key(ORIGIN)
            && request.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The headers of the relay's answer to a preflight (204): the permission when the
    /// origin is allowed, nothing but `Vary` when it is not, so the browser refuses.
    pub fn preflight_headers(&self, request: &HeaderMap, out: &mut HeaderMap) {
        out.insert(VARY, HeaderValue::from_static(VARY_PREFLIGHT));
        let Some(origin) = self.allowed(request) else {
            return;
        };
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        out.insert(ACCESS_CONTROL_ALLOW_METHODS, METHODS);
        // The names the page asked for: the SDK's headers plus whatever the app added.
        // Echoing is safe here because what reaches CloudBase is decided by the relay's
        // header rules, not by this permission.
        if let Some(asked) = request.get(ACCESS_CONTROL_REQUEST_HEADERS) {
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        out.insert(ACCESS_CONTROL_MAX_AGE, MAX_AGE);
    }

    /// Puts the relay's policy on a response: CloudBase's own `Access-Control-*` go, the
    /// permission for `allowed` (from [`Cors::allowed`]) comes, and `Vary` gains `Origin`.
    pub fn apply(allowed: Option<HeaderValue>, response: &mut HeaderMap) {
        let foreign: Vec<HeaderName> = response
            .keys()
            .filter(|n| n.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in foreign {
            response.remove(name);
        }
        add_vary_origin(response);
        if let Some(origin) = allowed {
            response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            response.insert(ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE);
        }
    }
}

/// Adds `Origin` to `Vary` unless it is there (or `*` is), keeping what CloudBase listed.
fn add_vary_origin(headers: &mut HeaderMap) {
    let listed = headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("origin"))
        })
    });
    if !listed {
        headers.append(VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::headers::test_header_map as request;

    const APP: &str = "https://app.example.com";

    fn cors() -> Cors {
        Cors::new(&[APP.to_owned(), "http://localhost:5173".to_owned()])
    }

    #[test]
    fn only_an_exactly_listed_origin_is_allowed() {
        let c = cors();
        assert_eq!(c.allowed(&request(&[("origin", APP)])).unwrap(), APP);
        for other in [
            "https://app.example.com.evil.test",
            "https://evil.test",
            "http://app.example.com",
            "https://APP.example.com",
            "https://app.example.com:443",
            "null",
            "*",
        ] {
            assert!(
                c.allowed(&request(&[("origin", other)])).is_none(),
                "{other}"
            );
        }
        assert!(c.allowed(&request(&[])).is_none());
        assert!(
            c.allowed(&request(&[
                ("origin", APP),
                ("origin", "https://evil.test")
            ]))
            .is_none(),
            "two origins"
        );
    }

    #[test]
    fn an_allowed_preflight_gets_the_permission_and_others_get_only_vary() {
        let c = cors();
        let asked = "authorization,content-type,x-device-id,x-request-id";
        let pre = request(&[
            ("origin", APP),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", asked),
        ]);
        assert!(Cors::is_preflight(&Method::OPTIONS, &pre));
        assert!(!Cors::is_preflight(&Method::POST, &pre));
        assert!(!Cors::is_preflight(
            &Method::OPTIONS,
            &request(&[("origin", APP)])
        ));
        let mut out = HeaderMap::new();
        c.preflight_headers(&pre, &mut out);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_ORIGIN], APP);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_HEADERS], asked);
        assert!(out[ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .unwrap()
            .contains("DELETE"));
        assert!(out.get("access-control-allow-credentials").is_none());
        assert!(out[VARY].to_str().unwrap().starts_with("Origin"));

        let evil = request(&[
            ("origin", "https://evil.test"),
            ("access-control-request-method", "POST"),
        ]);
        let mut out = HeaderMap::new();
        c.preflight_headers(&evil, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out.contains_key(VARY));
    }

    #[test]
    fn responses_carry_this_policy_never_cloudbases() {
        let mut resp = request(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "true"),
            ("vary", "Accept-Encoding"),
            ("content-type", "application/json"),
        ]);
        Cors::apply(None, &mut resp);
        assert!(resp.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert!(resp.get("access-control-allow-credentials").is_none());
        let vary: Vec<_> = resp.get_all(VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);

        let mut resp = request(&[("vary", "origin")]);
        Cors::apply(Some(HeaderValue::from_static(APP)), &mut resp);
        assert_eq!(resp[ACCESS_CONTROL_ALLOW_ORIGIN], APP);
        assert_eq!(
            resp[ACCESS_CONTROL_EXPOSE_HEADERS],
            "retry-after, x-request-id"
        );
        assert_eq!(resp.get_all(VARY).iter().count(), 1, "Origin listed once");
    }
}
