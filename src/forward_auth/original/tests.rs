//! Recovering the original request from each ingress's subrequest shape: the exact header
//! sets, the refusals, forged headers of another shape, and property tests that the path
//! decided on is the one the proxy path would route on.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use proptest::prelude::*;

use super::*;
use crate::config::Config;
use crate::path::EscapedSlashes::{Keep, Reject as Refuse};
use crate::routing::{Routes, Undecided};

const ENDPOINT: &str = "/_gateway/auth";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// `recover` for a subrequest `GET {path}` (nginx, Traefik and Caddy send GET).
fn get(path: &str, pairs: &[(&str, &str)]) -> Result<Original, OriginalError> {
    recover(&Method::GET, path, &headers(pairs), ENDPOINT, Refuse)
}

fn original(method: Method, path: &str) -> Result<Original, OriginalError> {
    Ok(Original {
        method,
        path: path.to_owned(),
    })
}

#[test]
fn nginx_auth_request_names_the_original_in_x_original_headers() {
    // What the shipped deploy/nginx snippet sets, next to the client's own headers.
    let got = get(
        ENDPOINT,
        &[
            ("x-original-uri", "/api/orders/7?expand=items&token=abc"),
            ("x-original-method", "POST"),
            ("x-request-id", "0f3c9a"),
            ("authorization", "Bearer t"),
            ("content-type", "application/json"),
        ],
    );
    assert_eq!(got, original(Method::POST, "/api/orders/7"));
}

#[test]
fn traefik_and_caddy_name_the_original_in_x_forwarded_headers() {
    // Traefik ForwardAuth (trustForwardHeader = false) and Caddy forward_auth.
    let got = get(
        ENDPOINT,
        &[
            ("x-forwarded-method", "PATCH"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.example.com"),
            ("x-forwarded-uri", "/api/x?y=1"),
            ("x-forwarded-for", "203.0.113.7"),
        ],
    );
    assert_eq!(got, original(Method::PATCH, "/api/x"));
}

#[test]
fn envoy_appends_the_original_path_to_the_endpoint_and_keeps_the_method() {
    let h = headers(&[("host", "app.example.com"), ("content-length", "0")]);
    let at = |method: Method, path: &str| recover(&method, path, &h, ENDPOINT, Refuse);
    assert_eq!(
        at(Method::DELETE, "/_gateway/auth/api/x"),
        original(Method::DELETE, "/api/x")
    );
    assert_eq!(
        at(Method::GET, "/_gateway/auth/"),
        original(Method::GET, "/")
    );
    // Left for the path policy to refuse, as it would the same request line.
    assert_eq!(
        at(Method::GET, "/_gateway/auth/../admin/x"),
        original(Method::GET, "/../admin/x")
    );
}

#[test]
fn ingress_nginx_s_x_original_url_is_never_read_its_host_is_the_client_s() {
    // ingress-nginx without `auth-method`: only X-Original-URL, built from the client's
    // Host. `Host: x#` would make its path `/`.
    let url_only = [
        ("x-original-url", "http://x#/api/secret"),
        ("x-original-method", "GET"),
    ];
    assert_eq!(get(ENDPOINT, &url_only), Err(OriginalError::MissingUri));
    // With `auth-method` set, X-Original-URI decides, whatever X-Original-URL says.
    let with_uri = [
        ("x-original-url", "http://x#/api/secret"),
        ("x-original-uri", "/api/secret"),
        ("x-original-method", "GET"),
    ];
    assert_eq!(
        get(ENDPOINT, &with_uri),
        original(Method::GET, "/api/secret")
    );
}

#[test]
fn a_subrequest_without_an_original_uri_is_refused() {
    assert_eq!(get(ENDPOINT, &[]), Err(OriginalError::MissingUri));
    assert_eq!(
        get(ENDPOINT, &[("x-original-method", "GET")]),
        Err(OriginalError::MissingUri)
    );
}

#[test]
fn a_header_shape_without_a_method_is_refused_not_guessed() {
    assert_eq!(
        get(ENDPOINT, &[("x-original-uri", "/api/x")]),
        Err(OriginalError::MissingMethod)
    );
}

#[test]
fn a_repeated_original_header_is_refused() {
    let twice = [
        ("x-original-uri", "/public/x"),
        ("x-original-uri", "/api/x"),
        ("x-original-method", "GET"),
    ];
    assert_eq!(
        get(ENDPOINT, &twice),
        Err(OriginalError::Repeated("x-original-uri"))
    );
    let twice = [
        ("x-forwarded-uri", "/api/x"),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-method", "POST"),
    ];
    assert_eq!(
        get(ENDPOINT, &twice),
        Err(OriginalError::Repeated("x-forwarded-method"))
    );
}

#[test]
fn values_that_are_no_request_target_or_method_are_refused() {
    let bad_uri = |uri: &str| {
        get(
            ENDPOINT,
            &[("x-original-uri", uri), ("x-original-method", "GET")],
        )
    };
    for uri in ["", "/api/x y", "/api/x\ty", "http://"] {
        assert_eq!(
            bad_uri(uri),
            Err(OriginalError::InvalidUri("x-original-uri")),
            "{uri:?}"
        );
    }
    // Raw UTF-8 is a request target to hyper too; the path policy encodes it.
    let mut h = headers(&[("x-forwarded-method", "GET")]);
    h.insert(
        "x-forwarded-uri",
        HeaderValue::from_bytes("/api/é".as_bytes()).unwrap(),
    );
    let path = recover(&Method::GET, ENDPOINT, &h, ENDPOINT, Refuse)
        .expect("a request target")
        .path;
    assert_eq!(
        crate::path::normalize(&path, Refuse).unwrap(),
        "/api/%C3%A9"
    );
    assert_eq!(
        get(
            ENDPOINT,
            &[("x-original-uri", "/api/x"), ("x-original-method", "G E T")]
        ),
        Err(OriginalError::InvalidMethod("x-original-method"))
    );
}

#[test]
fn a_client_forging_another_ingress_s_headers_cannot_choose_the_decided_request() {
    // nginx set X-Original-*; the client added Traefik's shape for an open route.
    let through_nginx = [
        ("x-original-uri", "/api/secret"),
        ("x-original-method", "GET"),
        ("x-forwarded-uri", "/public/x"),
    ];
    assert_eq!(
        get(ENDPOINT, &through_nginx),
        Err(OriginalError::Disagree("x-original-uri", "x-forwarded-uri"))
    );
    // Traefik set X-Forwarded-*; the client added nginx's shape.
    let through_traefik = [
        ("x-forwarded-uri", "/api/secret"),
        ("x-forwarded-method", "DELETE"),
        ("x-original-uri", "/public/x"),
        ("x-original-method", "GET"),
    ];
    assert_eq!(
        get(ENDPOINT, &through_traefik),
        Err(OriginalError::Disagree("x-original-uri", "x-forwarded-uri"))
    );
    // The same path but another method: a GET-only rule must not decide a DELETE.
    let method_only = [
        ("x-forwarded-uri", "/api/secret"),
        ("x-forwarded-method", "DELETE"),
        ("x-original-method", "GET"),
    ];
    assert_eq!(
        get(ENDPOINT, &method_only),
        Err(OriginalError::Disagree(
            "x-original-method",
            "x-forwarded-method"
        ))
    );
    // Envoy's path is the original; a header that names another is refused too.
    let h = headers(&[("x-original-uri", "/public/x")]);
    assert_eq!(
        recover(
            &Method::GET,
            "/_gateway/auth/api/secret",
            &h,
            ENDPOINT,
            Refuse
        ),
        Err(OriginalError::Disagree(
            "the path after the endpoint",
            "x-original-uri"
        ))
    );
}

#[test]
fn sources_that_name_one_path_in_two_spellings_agree() {
    let two_spellings = [
        ("x-original-uri", "/%61pi/./x?a=1"),
        ("x-original-method", "GET"),
        ("x-forwarded-uri", "/api/x?b=2"),
        ("x-forwarded-method", "GET"),
    ];
    assert_eq!(
        get(ENDPOINT, &two_spellings),
        original(Method::GET, "/%61pi/./x")
    );
    // Refused spellings agree only with themselves.
    let refused = [
        ("x-original-uri", "/public/..%2Fapi/x"),
        ("x-original-method", "GET"),
        ("x-forwarded-uri", "/api/x"),
    ];
    assert!(matches!(
        get(ENDPOINT, &refused),
        Err(OriginalError::Disagree(..))
    ));
    // Under "keep", %2F is data: the two spellings are two paths.
    let h = headers(&refused);
    assert!(matches!(
        recover(&Method::GET, ENDPOINT, &h, ENDPOINT, Keep),
        Err(OriginalError::Disagree(..))
    ));
}

#[test]
fn the_query_and_the_fragment_never_decide() {
    let at = |uri: &str| {
        get(
            ENDPOINT,
            &[("x-original-uri", uri), ("x-original-method", "GET")],
        )
    };
    assert_eq!(
        at("/public/x?/../api/y"),
        original(Method::GET, "/public/x")
    );
    assert_eq!(
        at("/public/x?next=/api/y#/api/z"),
        original(Method::GET, "/public/x")
    );
}

#[test]
fn an_absolute_form_uri_is_decided_on_its_path_as_a_request_line_is() {
    let at = |uri: &str| {
        get(
            ENDPOINT,
            &[("x-forwarded-uri", uri), ("x-forwarded-method", "GET")],
        )
    };
    assert_eq!(
        at("http://app.example.com/api/x?q=1"),
        original(Method::GET, "/api/x")
    );
    assert_eq!(
        at("https://app.example.com:8443/%61pi/x"),
        original(Method::GET, "/%61pi/x")
    );
    // No path: `/`, as hyper reads `GET http://app.example.com HTTP/1.1`.
    assert_eq!(at("http://app.example.com"), original(Method::GET, "/"));
    // `*`, authority-form: not absolute paths; the path policy answers 400.
    for target in ["*", "app.example.com:443"] {
        let path = at(target).expect("a request target").path;
        assert!(
            crate::path::normalize(&path, Refuse).is_err(),
            "{target:?} -> {path:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

fn routes() -> Routes {
    let text = "[emulator]\nenabled = true\n\
        [[routes]]\nprefix = \"/public/\"\nupstream = \"whoami\"\nauth = \"optional\"\n\
        [[routes]]\nprefix = \"/api/\"\nupstream = \"whoami\"\n\
        [[routes]]\nprefix = \"/api/admin/\"\nupstream = \"whoami\"\n\
        [[routes]]\nprefix = \"/admin/\"\nupstream = \"whoami\"\n";
    Routes::new(&Config::from_toml_str(text).expect("routes").routes)
}

/// What routing makes of a path: the route's index and the normal path, or why none.
fn routed(
    routes: &Routes,
    path: &str,
    policy: EscapedSlashes,
) -> Result<(usize, String), Undecided> {
    routes
        .decide(path, policy)
        .map(|(route, normal)| (route.index, normal.unwrap_or_else(|| path.to_owned())))
}

/// Pieces of request targets chosen to confuse: dot segments in every spelling, encoded
/// slashes, parameters, queries and fragments that look like paths, route names.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/",
        "//",
        "api",
        "public",
        "admin",
        "x",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        ".%2e",
        "%2F",
        "%2f",
        "%5C",
        "%61pi",
        "%70ublic",
        ";",
        ";x",
        "..;",
        "%3B",
        "%25",
        "%252e",
        "%zz",
        "?",
        "?q=/../api/",
        "#",
        "#/api/",
        "&",
        "=",
        "~",
        "%C3%A9",
        "%00",
        ":",
        "@",
        "*",
    ])
}

fn target() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..10).prop_map(|pieces| format!("/{}", pieces.concat()))
}

fn policy() -> impl Strategy<Value = EscapedSlashes> {
    prop::sample::select(vec![Refuse, Keep])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever an ingress (or a client behind it) sends, recovery and the routing that
    /// follows answer; they never panic.
    #[test]
    fn recovery_never_panics(
        method in prop::collection::vec(any::<u8>(), 0..8),
        path in ".{0,40}",
        values in prop::collection::vec((0usize..4, prop::collection::vec(any::<u8>(), 0..40)), 0..6),
        policy in policy(),
    ) {
        let names = ["x-original-uri", "x-original-method", "x-forwarded-uri", "x-forwarded-method"];
        let mut h = HeaderMap::new();
        for (i, bytes) in values {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                h.append(HeaderName::from_static(names[i]), v);
            }
        }
        let method = Method::from_bytes(&method).unwrap_or(Method::GET);
        let r = routes();
        if let Ok(original) = recover(&method, &path, &h, ENDPOINT, policy) {
            let _ = r.decide(&original.path, policy);
        }
    }

    /// For every request target a client can send, the path forward-auth decides on, in
    /// each ingress's shape, is routed exactly as the proxy path routes that request.
    #[test]
    fn the_decided_path_is_the_one_the_proxy_would_route_on(
        target in target(),
        policy in policy(),
    ) {
        // Only targets hyper would accept in a request line reach either path.
        let Ok(uri) = target.parse::<Uri>() else { return Ok(()); };
        let r = routes();
        let proxied = routed(&r, uri.path(), policy);
        let method = [("x-original-method", "GET"), ("x-forwarded-method", "GET")];
        for name in ["x-original-uri", "x-forwarded-uri"] {
            let h = headers(&[(name, &target), method[0], method[1]]);
            let original = recover(&Method::GET, ENDPOINT, &h, ENDPOINT, policy)
                .unwrap_or_else(|e| panic!("{name}: {target:?}: {e}"));
            prop_assert_eq!(&routed(&r, &original.path, policy), &proxied, "{}: {:?}", name, target);
        }
        // Envoy: the subrequest's target is the endpoint followed by the original one.
        let sub: Uri = format!("{ENDPOINT}{target}").parse().expect("prefix keeps it a URI");
        let original = recover(&Method::GET, sub.path(), &HeaderMap::new(), ENDPOINT, policy)
            .unwrap_or_else(|e| panic!("envoy: {target:?}: {e}"));
        prop_assert_eq!(&routed(&r, &original.path, policy), &proxied, "envoy: {:?}", target);
    }
}
