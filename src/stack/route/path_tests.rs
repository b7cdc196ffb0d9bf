//! The path policy at the routing layer, tested as tower-http tests its layers: the real
//! [`RouteLayer`] (under the rescue layer, which renders its refusals) over a `service_fn`
//! that records what it was handed, called with `oneshot`. Then the property tests of issue 8: over generated nasty paths, the route
//! picked is the route an independent RFC 3986 normalizer gives, the forwarded path is
//! already normal, and no server reading the forwarded path lands under another route.

use futures_util::FutureExt as _;
use http::{Request, Response, StatusCode, Uri};
use proptest::prelude::*;
use tower::{service_fn, Layer as _, ServiceExt as _};

use std::borrow::Cow;

use super::*;
use crate::config::Config;
use crate::http::empty;
use crate::path::EscapedSlashes::{self, Keep, Reject as Refuse};
use crate::stack::rescue::RescueLayer;

/// The URI the inner service was handed.
#[derive(Clone)]
struct Seen(Uri);

/// Route prefixes of the test gateway, and whether each is protected (`auth = required`).
/// `/` is present or not per test.
const ROUTES: &[(&str, bool)] = &[
    ("/public/", false),
    ("/api/", true),
    ("/admin/", true),
    ("/api/admin/", true),
    ("/open/", false),
];

fn routes(catch_all: bool) -> Routes {
    let mut text = String::from("[emulator]\nenabled = true\n");
    let all = ROUTES
        .iter()
        .copied()
        .chain(catch_all.then_some(("/", false)));
    for (prefix, protected) in all {
        let auth = if protected { "required" } else { "none" };
        text.push_str(&format!(
            "[[routes]]\nprefix = {prefix:?}\nupstream = \"whoami\"\nauth = {auth:?}\n"
        ));
    }
    Routes::new(&Config::from_toml_str(&text).expect("test routes").routes)
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Refused,
    NoRoute,
    /// The route's prefix and the path-and-query the inner service received.
    Routed {
        prefix: String,
        target: String,
    },
}

/// Sends a GET for `target` through the real layer; the inner service answers at once, so
/// the future is ready on its first poll.
fn gateway(routes: &Routes, policy: EscapedSlashes, target: &str) -> (Outcome, Option<Uri>) {
    let layer = RouteLayer::new(routes.clone(), 1 << 20, policy);
    let inner = service_fn(|(req, _): Routed| async move {
        let mut response = Response::new(empty());
        response.extensions_mut().insert(Seen(req.uri().clone()));
        Ok::<_, Rejection>(response)
    });
    let uri: Uri = target
        .parse()
        .unwrap_or_else(|e| panic!("{target:?} is not a URI hyper would hand over: {e}"));
    let req = Request::get(uri).body(empty()).expect("request");
    let response = RescueLayer
        .layer(layer.layer(inner))
        .oneshot(req)
        .now_or_never()
        .expect("ready at once")
        .expect("infallible");
    match response.status() {
        StatusCode::BAD_REQUEST => (Outcome::Refused, None),
        StatusCode::NOT_FOUND => (Outcome::NoRoute, None),
        StatusCode::OK => {
            let context = response
                .extensions()
                .get::<RequestContext>()
                .expect("a routed response carries its route");
            let seen = response.extensions().get::<Seen>().expect("inner called");
            let target = seen.0.path_and_query().map_or("", |pq| pq.as_str());
            let outcome = Outcome::Routed {
                prefix: context.route.settings.prefix.clone(),
                target: target.to_owned(),
            };
            (outcome, Some(seen.0.clone()))
        }
        other => panic!("unexpected {other} for {target:?}"),
    }
}

fn routed(prefix: &str, target: &str) -> Outcome {
    Outcome::Routed {
        prefix: prefix.to_owned(),
        target: target.to_owned(),
    }
}

#[test]
fn a_dot_segment_path_is_routed_and_forwarded_as_its_normal_form_with_the_query_untouched() {
    let r = routes(false);
    let (outcome, _) = gateway(
        &r,
        Refuse,
        "/public/../api/hello?next=/public/../x&e=%2e%2E%zz",
    );
    assert_eq!(
        outcome,
        routed("/api/", "/api/hello?next=/public/../x&e=%2e%2E%zz")
    );
}

#[test]
fn a_refused_path_is_answered_400_before_any_route_is_considered() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let inner = service_fn(move |_: Routed| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { Ok::<_, Rejection>(Response::new(empty())) }
    });
    let service = RescueLayer.layer(RouteLayer::new(routes(false), 1 << 20, Refuse).layer(inner));
    for target in [
        "/public/..%2fapi/x",
        "/open/..;/api/x",
        "/../api/x",
        "/nowhere/%zz",
        "/public/%252e%252e/api/x",
    ] {
        let req = Request::get(target).body(empty()).unwrap();
        let response = service
            .clone()
            .oneshot(req)
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{target}");
        assert!(
            response.extensions().get::<RequestContext>().is_none(),
            "{target}: refused before routing, so counted under no route"
        );
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn an_absolute_form_target_keeps_its_scheme_and_authority_and_gets_the_normal_path() {
    let (outcome, uri) = gateway(
        &routes(false),
        Refuse,
        "http://gw.example/public/../api/x?q",
    );
    assert_eq!(outcome, routed("/api/", "/api/x?q"));
    let uri = uri.unwrap();
    assert_eq!(uri.scheme_str(), Some("http"));
    assert_eq!(uri.authority().unwrap().as_str(), "gw.example");
}

#[test]
fn with_a_catch_all_doubled_slashes_and_encoded_letters_reach_the_protected_route() {
    let r = routes(true);
    assert_eq!(gateway(&r, Refuse, "//api/x").0, routed("/api/", "/api/x"));
    assert_eq!(gateway(&r, Refuse, "/%61pi/x").0, routed("/api/", "/api/x"));
    assert_eq!(
        gateway(&r, Refuse, "/api/../admin/x").0,
        routed("/admin/", "/admin/x")
    );
}

#[test]
fn path_parameters_that_would_move_the_request_to_another_route_are_refused() {
    let r = routes(true);
    assert_eq!(gateway(&r, Refuse, "/admin;x/secret").0, Outcome::Refused);
    assert_eq!(gateway(&r, Refuse, "/admin%3bx/secret").0, Outcome::Refused);
    assert_eq!(gateway(&r, Refuse, "/;/api/x").0, Outcome::Refused);
    assert_eq!(
        gateway(&r, Refuse, "/admin/x;v=1").0,
        routed("/admin/", "/admin/x;v=1"),
        "parameters inside the route change nothing"
    );
    assert_eq!(
        gateway(&r, Refuse, "/files;v=1/x").0,
        routed("/", "/files;v=1/x")
    );
}

#[test]
fn kept_escaped_slashes_stay_encoded_and_split_no_segment() {
    let r = routes(false);
    assert_eq!(
        gateway(&r, Refuse, "/public/..%2fapi/x").0,
        Outcome::Refused
    );
    assert_eq!(
        gateway(&r, Keep, "/public/..%2fapi/x").0,
        routed("/public/", "/public/..%2Fapi/x")
    );
}

#[test]
fn an_already_normal_request_reaches_the_inner_service_with_its_uri_as_sent() {
    let (outcome, uri) = gateway(&routes(false), Refuse, "/api/a%20b;c?x=1");
    assert_eq!(outcome, routed("/api/", "/api/a%20b;c?x=1"));
    assert_eq!(uri.unwrap(), "/api/a%20b;c?x=1");
}

// ---------------------------------------------------------------------------------------
// The independent model: tokens, then segments, then a stack. Written apart from
// `crate::path` on purpose; it shares no code with it.
// ---------------------------------------------------------------------------------------

mod model {
    use super::EscapedSlashes;

    const UNRESERVED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    /// RFC 3986 `pchar` minus `%`: kept raw.
    const PCHAR: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@";

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Tok {
        /// A byte as sent (after decoding an unreserved escape).
        Lit(u8),
        /// An octet that stays percent-encoded.
        Esc(u8),
    }

    fn tokenize(path: &str) -> Option<Vec<Tok>> {
        let bytes = path.as_bytes();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let pair = bytes.get(i + 1..i + 3)?;
                if !pair.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let octet = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
                toks.push(if UNRESERVED.contains(&octet) {
                    Tok::Lit(octet)
                } else {
                    Tok::Esc(octet)
                });
                i += 3;
            } else {
                toks.push(Tok::Lit(bytes[i]));
                i += 1;
            }
        }
        Some(toks)
    }

    fn acceptable(toks: &[Tok], policy: EscapedSlashes) -> bool {
        let control = |b: u8| b <= 0x1F || b == 0x7F;
        for (k, t) in toks.iter().enumerate() {
            let bad = match *t {
                Tok::Lit(b'\\') => true,
                Tok::Lit(b) | Tok::Esc(b) if control(b) => true,
                Tok::Esc(b'/') | Tok::Esc(b'\\') => policy == EscapedSlashes::Reject,
                Tok::Esc(b'%') => matches!(
                    (toks.get(k + 1), toks.get(k + 2)),
                    (Some(Tok::Lit(x)), Some(Tok::Lit(y)))
                        if x.is_ascii_hexdigit() && y.is_ascii_hexdigit()
                ),
                _ => false,
            };
            if bad {
                return false;
            }
        }
        true
    }

    fn render(t: Tok) -> String {
        match t {
            Tok::Lit(b) if PCHAR.contains(&b) => char::from(b).to_string(),
            Tok::Lit(b) | Tok::Esc(b) => format!("%{b:02X}"),
        }
    }

    fn disguised_dots(seg: &str) -> bool {
        let spaced = seg.replace("%20", " ");
        let param = [".;", "..;", ".%3B", "..%3B"]
            .iter()
            .any(|p| spaced.starts_with(p));
        let padded = spaced.starts_with('.')
            && spaced.chars().all(|c| c == '.' || c == ' ')
            && spaced != "."
            && spaced != "..";
        param || padded
    }

    /// RFC 3986 §6.2.2 + §5.2.4 + merged slashes + the refusals; `None` = refused.
    pub fn normalize(path: &str, policy: EscapedSlashes) -> Option<String> {
        if !path.starts_with('/') {
            return None;
        }
        let toks = tokenize(path)?;
        if !acceptable(&toks, policy) {
            return None;
        }
        let segments: Vec<String> = toks
            .split(|t| *t == Tok::Lit(b'/'))
            .map(|seg| seg.iter().map(|t| render(*t)).collect())
            .collect();
        let mut stack: Vec<&str> = Vec::new();
        for seg in &segments[1..] {
            match seg.as_str() {
                "" | "." => {}
                ".." => {
                    stack.pop()?;
                }
                s if disguised_dots(s) => return None,
                s => stack.push(s),
            }
        }
        let last = segments.last().map(String::as_str);
        let slash_end = matches!(last, Some("" | "." | ".."));
        let mut out = format!("/{}", stack.join("/"));
        if slash_end && !stack.is_empty() {
            out.push('/');
        }
        Some(out)
    }

    /// Every segment cut at `;` or `%3B`, normalized again.
    pub fn strip_parameters(path: &str) -> Option<String> {
        let cut: Vec<&str> = path
            .split('/')
            .map(|seg| {
                let semi = seg.find(';').unwrap_or(seg.len());
                let enc = seg.find("%3B").unwrap_or(seg.len());
                &seg[..semi.min(enc)]
            })
            .collect();
        normalize(&cut.join("/"), EscapedSlashes::Keep)
    }
}

/// The longest prefix of `prefixes` that `path` starts with.
fn longest<'a>(prefixes: &[&'a str], path: &[u8]) -> Option<&'a str> {
    prefixes
        .iter()
        .filter(|p| path.starts_with(p.as_bytes()))
        .max_by_key(|p| p.len())
        .copied()
}

fn prefixes(catch_all: bool) -> Vec<&'static str> {
    let mut all: Vec<&str> = ROUTES.iter().map(|(p, _)| *p).collect();
    if catch_all {
        all.push("/");
    }
    all
}

/// What the model says a request for `target` comes to.
fn expected(catch_all: bool, policy: EscapedSlashes, target: &str) -> Outcome {
    let without_authority = match target.strip_prefix("http://gw.example") {
        Some(rest) => rest,
        None => target,
    };
    let (path, query) = match without_authority.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (without_authority, None),
    };
    let Some(normal) = model::normalize(path, policy) else {
        return Outcome::Refused;
    };
    let prefixes = prefixes(catch_all);
    let Some(prefix) = longest(&prefixes, normal.as_bytes()) else {
        return Outcome::NoRoute;
    };
    let bare = model::strip_parameters(&normal);
    if bare.and_then(|b| longest(&prefixes, b.as_bytes())) != Some(prefix) {
        return Outcome::Refused;
    }
    let target = match query {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    routed(prefix, &target)
}

/// How some real servers read a path, as byte transformations: percent-decoding (once or
/// twice), dropping `;` parameters before or after decoding, `\` read as `/`. Dot segments
/// above the root are clamped (the most permissive reading).
#[derive(Debug, Clone, Copy)]
struct Reading {
    decode_rounds: usize,
    strip_parameters_before_decoding: bool,
    strip_parameters_after_decoding: bool,
}

const READINGS: [Reading; 4] = [
    // nginx, most frameworks (and Windows for `\`).
    Reading {
        decode_rounds: 1,
        strip_parameters_before_decoding: false,
        strip_parameters_after_decoding: false,
    },
    // Tomcat / Spring: parameters off the raw path, then decoded.
    Reading {
        decode_rounds: 1,
        strip_parameters_before_decoding: true,
        strip_parameters_after_decoding: false,
    },
    // Decoded first, then parameters dropped.
    Reading {
        decode_rounds: 1,
        strip_parameters_before_decoding: false,
        strip_parameters_after_decoding: true,
    },
    // A stack that decodes twice.
    Reading {
        decode_rounds: 2,
        strip_parameters_before_decoding: false,
        strip_parameters_after_decoding: false,
    },
];

fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let pair = bytes.get(i + 1..i + 3);
        match pair {
            Some([h, l]) if bytes[i] == b'%' && h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                let hex = [*h, *l];
                let s = std::str::from_utf8(&hex).expect("hex digits");
                out.push(u8::from_str_radix(s, 16).expect("hex"));
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

fn drop_parameters(bytes: &[u8]) -> Vec<u8> {
    bytes
        .split(|b| *b == b'/')
        .map(|seg| match seg.iter().position(|b| *b == b';') {
            Some(i) => &seg[..i],
            None => seg,
        })
        .collect::<Vec<_>>()
        .join(&b'/')
}

impl Reading {
    fn read(self, path: &str) -> Vec<u8> {
        let mut bytes = path.as_bytes().to_vec();
        if self.strip_parameters_before_decoding {
            bytes = drop_parameters(&bytes);
        }
        for _ in 0..self.decode_rounds {
            bytes = percent_decode(&bytes);
        }
        if self.strip_parameters_after_decoding {
            bytes = drop_parameters(&bytes);
        }
        let bytes: Vec<u8> = bytes
            .into_iter()
            .map(|b| if b == b'\\' { b'/' } else { b })
            .collect();
        let segments: Vec<&[u8]> = bytes.split(|b| *b == b'/').skip(1).collect();
        let mut stack: Vec<&[u8]> = Vec::new();
        for seg in &segments {
            match *seg {
                b"" | b"." => {}
                b".." => {
                    stack.pop();
                }
                s => stack.push(s),
            }
        }
        let mut out = Vec::new();
        for s in &stack {
            out.push(b'/');
            out.extend_from_slice(s);
        }
        if out.is_empty() || matches!(segments.last(), Some(&(b"" | b"." | b".."))) {
            out.push(b'/');
        }
        out
    }
}

/// Whole segments that have fooled a proxy or a server somewhere.
const SEGMENTS: &[&str] = &[
    "api",
    "admin",
    "public",
    "open",
    "x",
    "",
    ".",
    "..",
    "%2e",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "..;",
    ".;",
    "..;x",
    "..%3b",
    "..%2f",
    "..%2Fapi",
    "%2f",
    "..%5c",
    "..\\",
    "..\\api",
    "%252e%252e",
    "%25%32%65%25%32%65",
    "%252f",
    "%61pi",
    "%41dmin",
    "%70ublic",
    "api;x",
    "admin%3bx",
    ";x",
    "...",
    "..%20",
    "%00",
    "%zz",
    "%4",
    "é",
    "文",
    "%c3%a9",
    "a%20b",
    "{x}",
    "a:b",
    "@me",
    "~u",
    "100%25",
];

/// Pieces of segments, concatenated freely.
const PIECES: &[&str] = &[
    "/",
    "//",
    "api",
    "admin",
    "public",
    "open",
    "x",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    ".%2e",
    "%2f",
    "%2F",
    "%5c",
    "\\",
    ";",
    "..;",
    ".;",
    "%3b",
    "%3B",
    ";x",
    "%61",
    "%61pi",
    "%41dmin",
    "%70ublic",
    "%7e",
    "%25",
    "%252e",
    "%25%32%65",
    "%zz",
    "%4",
    "%00",
    "%0a",
    "%20",
    "é",
    "文",
    "%c3%a9",
    "{",
    "|",
    ":",
    "@",
    "...",
    "~",
    "-",
    "a=b",
];

const QUERIES: &[&str] = &[
    "",
    "?",
    "?q=1",
    "?next=/public/../api/x&e=%2e%zz",
    "?a=%2F%5C;",
];

fn target() -> impl Strategy<Value = String> {
    let by_segment = prop::collection::vec(
        (prop::sample::select(SEGMENTS), prop::bool::weighted(0.15)),
        0..8,
    )
    .prop_map(|segments| {
        let mut path = String::new();
        for (segment, doubled) in segments {
            path.push_str(if doubled { "//" } else { "/" });
            path.push_str(segment);
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    });
    let by_piece = prop::collection::vec(prop::sample::select(PIECES), 0..10)
        .prop_map(|pieces| format!("/{}", pieces.concat()));
    (
        prop_oneof![3 => by_segment, 1 => by_piece],
        prop::sample::select(QUERIES),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(path, query, absolute)| {
            let origin = if absolute { "http://gw.example" } else { "" };
            format!("{origin}{path}{query}")
        })
}

fn policy() -> impl Strategy<Value = EscapedSlashes> {
    prop::sample::select(vec![Refuse, Keep])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// (a) The gateway decides exactly as the independent model: refused, no route, or the
    /// same route with the same forwarded path and the query as sent.
    #[test]
    fn the_route_picked_is_the_route_of_the_independently_normalized_path(
        target in target(),
        policy in policy(),
        catch_all in any::<bool>(),
    ) {
        let (got, _) = gateway(&routes(catch_all), policy, &target);
        prop_assert_eq!(got, expected(catch_all, policy, &target), "target {:?}", target);
    }

    /// (b) What reaches the upstream is already normal: normalizing it again is the
    /// identity, and it routes to the same place again.
    #[test]
    fn the_forwarded_path_is_already_normal(
        target in target(),
        policy in policy(),
        catch_all in any::<bool>(),
    ) {
        let r = routes(catch_all);
        if let (Outcome::Routed { prefix, .. }, Some(uri)) = gateway(&r, policy, &target) {
            let forwarded = uri.path();
            let again = crate::path::normalize(forwarded, policy);
            prop_assert!(
                matches!(&again, Ok(Cow::Borrowed(p)) if *p == forwarded),
                "{:?} forwarded as {:?}, normalized again to {:?}", target, forwarded, again
            );
            let (twice, _) = gateway(&r, policy, uri.path_and_query().unwrap().as_str());
            prop_assert!(
                matches!(&twice, Outcome::Routed { prefix: p, .. } if *p == prefix),
                "{:?}: the forwarded request routes to {:?}", target, twice
            );
        }
    }

    /// (c) However a server reads the forwarded path (decoding once or twice, dropping `;`
    /// parameters before or after, `\` as `/`), it lands under the route that decided the
    /// request: a path that starts under an unprotected prefix never reaches a protected
    /// route's resources without that route's auth, and the reverse.
    #[test]
    fn no_server_reading_of_the_forwarded_path_leaves_the_route_that_decided_it(
        target in target(),
        catch_all in any::<bool>(),
    ) {
        let (outcome, uri) = gateway(&routes(catch_all), Refuse, &target);
        let (Outcome::Routed { prefix, .. }, Some(uri)) = (outcome, uri) else {
            return Ok(());
        };
        let prefixes = prefixes(catch_all);
        let protected = |p: &str| ROUTES.iter().any(|(q, prot)| *q == p && *prot);
        for reading in READINGS {
            let seen = reading.read(uri.path());
            let theirs = longest(&prefixes, &seen);
            prop_assert_eq!(
                theirs,
                Some(prefix.as_str()),
                "{:?} forwarded as {:?} is {:?} to a server reading it as {:?}",
                target, uri.path(), String::from_utf8_lossy(&seen), reading
            );
            prop_assert!(protected(&prefix) || !theirs.is_some_and(protected));
        }
    }
}
