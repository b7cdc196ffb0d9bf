//! The normalizer, case by case, and its algebra (idempotent, borrowed when normal).

use super::*;
use proptest::prelude::*;

const R: EscapedSlashes = EscapedSlashes::Reject;
const K: EscapedSlashes = EscapedSlashes::Keep;

fn ok(raw: &str) -> String {
    normalize(raw, R)
        .unwrap_or_else(|e| panic!("{raw:?} refused: {e}"))
        .into_owned()
}

fn refused(raw: &str) -> PathError {
    match normalize(raw, R) {
        Ok(n) => panic!("{raw:?} accepted as {n:?}"),
        Err(e) => e,
    }
}

#[test]
fn an_already_normal_path_is_borrowed_not_copied() {
    for raw in [
        "/",
        "/api/hello",
        "/api/",
        "/a/b.c/~d_e-f",
        "/v1/items:batch",
        "/users/@me",
        "/a;b=c/d",
        "/%C3%A9t%C3%A9",
        "/name%20with%20spaces",
        "/.well-known/openid-configuration",
        "/100%25off",
        "/x/..y/...z",
    ] {
        assert!(
            matches!(normalize(raw, R), Ok(Cow::Borrowed(p)) if p == raw),
            "{raw:?} was not borrowed unchanged: {:?}",
            normalize(raw, R)
        );
    }
}

#[test]
fn dot_segments_are_removed_and_climbing_to_another_prefix_is_resolved() {
    assert_eq!(ok("/public/../api/hello"), "/api/hello");
    assert_eq!(ok("/a/./b/../c"), "/a/c");
    assert_eq!(ok("/a/b/.."), "/a/");
    assert_eq!(ok("/a/b/."), "/a/b/");
    assert_eq!(ok("/a/.."), "/");
    assert_eq!(ok("/."), "/");
    assert_eq!(ok("/api/../admin/x"), "/admin/x");
}

#[test]
fn encoded_dots_are_dots_before_dot_segments_are_removed() {
    assert_eq!(ok("/public/%2e%2e/api/x"), "/api/x");
    assert_eq!(ok("/public/%2E%2e/api/x"), "/api/x");
    assert_eq!(ok("/public/.%2e/api/x"), "/api/x");
    assert_eq!(ok("/public/%2e/api"), "/public/api");
}

#[test]
fn unreserved_characters_are_decoded_and_other_hex_is_upper_cased() {
    assert_eq!(ok("/%61pi/x"), "/api/x");
    assert_eq!(ok("/%41%5a%30%2D%5F%7e"), "/AZ0-_~");
    assert_eq!(ok("/caf%c3%a9"), "/caf%C3%A9");
    assert_eq!(ok("/a%3ab"), "/a%3Ab", "reserved stays encoded");
    assert_eq!(ok("/a%20b"), "/a%20b");
}

#[test]
fn repeated_slashes_are_merged() {
    assert_eq!(ok("//api/x"), "/api/x");
    assert_eq!(ok("/api//x///y"), "/api/x/y");
    assert_eq!(ok("/api//"), "/api/");
    assert_eq!(ok("//"), "/");
}

#[test]
fn characters_a_uri_cannot_hold_raw_are_percent_encoded() {
    assert_eq!(ok("/文档"), "/%E6%96%87%E6%A1%A3");
    assert_eq!(ok("/é"), ok("/%C3%A9"), "raw and encoded are one path");
    assert_eq!(
        ok("/{\"a\"}|^`[]<> "),
        "/%7B%22a%22%7D%7C%5E%60%5B%5D%3C%3E%20"
    );
}

#[test]
fn encoded_slashes_are_refused_unless_kept() {
    assert_eq!(refused("/public/..%2fapi/x"), PathError::EncodedSlash);
    assert_eq!(refused("/public/..%2Fapi/x"), PathError::EncodedSlash);
    assert_eq!(refused("/public/..%5capi/x"), PathError::EncodedSlash);
    assert_eq!(
        normalize("/public/..%2fapi/x", K).unwrap(),
        "/public/..%2Fapi/x",
        "kept encoded, one segment"
    );
    assert_eq!(normalize("/a%5cb", K).unwrap(), "/a%5Cb");
    assert_eq!(
        normalize("/a/..%2F../b", K).unwrap(),
        "/a/..%2F../b",
        "not a dot segment when kept"
    );
}

#[test]
fn a_raw_backslash_is_refused() {
    assert_eq!(refused("/public/..\\api/x"), PathError::Backslash);
    assert_eq!(
        normalize("/a\\b", K),
        Err(PathError::Backslash),
        "keep is about encoded ones only"
    );
}

#[test]
fn encoded_and_raw_control_characters_are_refused() {
    for raw in [
        "/a%00b",
        "/a%0d%0aX:1",
        "/a%1F",
        "/a%7f",
        "/a\u{7f}",
        "/a\tb",
        "/a\0",
    ] {
        assert_eq!(refused(raw), PathError::ControlCharacter, "{raw:?}");
    }
}

#[test]
fn disguised_dot_segments_are_refused() {
    for raw in [
        "/open/..;/api/x",
        "/open/.;/api/x",
        "/open/..;jsessionid=1/api/x",
        "/open/%2e%2e;/api/x",
        "/open/..%3b/api/x",
        "/open/..%3B/api/x",
        "/open/.../api/x",
        "/open/..%20/api/x",
        "/open/.%20/x",
        "/open/..;",
    ] {
        assert_eq!(refused(raw), PathError::DisguisedDotSegment, "{raw:?}");
    }
    assert_eq!(
        ok("/a/..b;c/...d"),
        "/a/..b;c/...d",
        "names that start with dots"
    );
}

#[test]
fn climbing_above_the_root_is_refused() {
    for raw in ["/..", "/../api/x", "/a/../../api", "/%2e%2e/x", "/./.."] {
        assert_eq!(refused(raw), PathError::AboveRoot, "{raw:?}");
    }
}

#[test]
fn invalid_percent_encoding_is_refused() {
    for raw in ["/%zz", "/a%4", "/a%", "/a%g0", "/a%0g"] {
        assert_eq!(refused(raw), PathError::InvalidPercentEncoding, "{raw:?}");
    }
}

#[test]
fn double_encoding_is_refused() {
    for raw in [
        "/public/%252e%252e/api/x",
        "/a%252F",
        "/a%2541",
        "/a%25%32%65",
        "/a%25%32e",
    ] {
        assert_eq!(refused(raw), PathError::DoubleEncoding, "{raw:?}");
    }
    assert_eq!(ok("/100%25"), "/100%25", "a literal percent sign");
    assert_eq!(ok("/100%25off"), "/100%25off");
    assert_eq!(ok("/a%25%C3%A9"), "/a%25%C3%A9");
}

#[test]
fn targets_that_are_not_absolute_paths_are_refused() {
    for raw in ["*", "", "api/x", "example.com:443"] {
        assert_eq!(refused(raw), PathError::NotAbsolute, "{raw:?}");
    }
}

#[test]
fn path_parameters_are_dropped_for_the_second_opinion() {
    assert_eq!(
        without_parameters("/admin;x/secret").unwrap(),
        "/admin/secret"
    );
    assert_eq!(
        without_parameters("/admin%3Bx/secret").unwrap(),
        "/admin/secret"
    );
    assert_eq!(without_parameters("/;x/api/y").unwrap(), "/api/y");
    assert_eq!(without_parameters("/a/b;c").unwrap(), "/a/b");
    assert!(matches!(
        without_parameters("/no/params"),
        Ok(Cow::Borrowed("/no/params"))
    ));
}

#[test]
fn escaped_slashes_spellings_round_trip() {
    for &value in EscapedSlashes::ALL {
        let name = value.as_str();
        assert_eq!(EscapedSlashes::parse(name), Some(value));
        assert_eq!(value.to_string(), name);
    }
    assert_eq!(EscapedSlashes::parse("decode"), None);
    assert_eq!(EscapedSlashes::default(), EscapedSlashes::Reject);
}

/// Path pieces that have caused trouble somewhere.
const PIECES: &[&str] = &[
    "/", "//", "api", "admin", "public", "x", ".", "..", "%2e", "%2E%2e", ".%2e", "%2f", "%2F",
    "%5c", "\\", ";", "..;", ".;", "%3b", "%61", "%61pi", "%41", "%7e", "%25", "%252e", "%zz",
    "%4", "%00", "%0a", "%20", "é", "文", "%c3%a9", "{", "|", ":", "@", "...", "~", "-",
];

fn nasty_path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..12)
        .prop_map(|v| format!("/{}", v.concat()))
}

fn policy() -> impl Strategy<Value = EscapedSlashes> {
    prop::sample::select(vec![R, K])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn normalizing_twice_changes_nothing(raw in nasty_path(), p in policy()) {
        if let Ok(once) = normalize(&raw, p) {
            let twice = normalize(&once, p);
            prop_assert!(
                matches!(&twice, Ok(Cow::Borrowed(t)) if *t == once.as_ref()),
                "{raw:?} -> {once:?} -> {twice:?}"
            );
            prop_assert!(once.starts_with('/') && once.is_ascii());
            prop_assert!(http::uri::PathAndQuery::try_from(once.as_ref()).is_ok());
        }
    }

    #[test]
    fn the_fast_path_only_accepts_what_the_full_pass_leaves_unchanged(
        raw in nasty_path(),
        p in policy(),
    ) {
        if is_normal(raw.as_bytes(), p) {
            prop_assert_eq!(rewrite(raw.as_bytes(), p), Ok(raw.clone()));
        }
    }

    #[test]
    fn any_string_gets_an_answer_without_panicking(raw in "\\PC{0,40}", p in policy()) {
        let _ = normalize(&raw, p);
        let _ = normalize(&format!("/{raw}"), p);
    }
}
