//! Taking the bearer token from a request, and reading a JWT's `exp` without verifying it.
//!
//! CloudBase publishes no JWKS, so signatures cannot be checked here: validity comes from
//! `/token/introspect`. The payload is still worth decoding on a cache miss, because a token
//! past its `exp` is dead without asking anyone, and `exp` bounds how long a validation
//! may be cached.

use base64::Engine;
use http::header::AUTHORIZATION;
use http::HeaderMap;

/// CloudBase's own limit on access token length.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What the `Authorization` header held.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// No usable bearer token: header absent, another scheme, or malformed.
    Missing,
    /// A bearer token that can never be valid: too long or holding characters no token
    /// holds. Refused without calling CloudBase.
    Invalid,
    Bearer(&'a str),
}

/// RFC 6750 §2.1 `b64token` characters (plus `=` padding); JWTs and CloudBase's opaque
/// tokens use only these. Written without short-circuits so that [`all_token_chars`]
/// compiles to SIMD.
fn is_token_char(b: u8) -> bool {
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    let digit = b.wrapping_sub(b'0') < 10;
    letter
        | digit
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
        | (b == b'=')
}

/// Whether every byte is a token character. No early exit: on every request this checks
/// an 800-byte JWT, which the vectorised loop does 3-4x faster than `all` would.
fn all_token_chars(token: &[u8]) -> bool {
    token.iter().fold(true, |ok, &b| ok & is_token_char(b))
}

/// Reads `Authorization: Bearer <token>` (scheme case-insensitive). Several
/// `Authorization` headers, a non-UTF-8 value or an empty token count as no token.
pub fn bearer(headers: &HeaderMap) -> Credentials<'_> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Credentials::Missing;
    };
    let bytes = value.as_bytes();
    if bytes.len() < 7 || !bytes[..7].eq_ignore_ascii_case(b"bearer ") {
        return Credentials::Missing;
    }
    let token = trim_spaces(&bytes[7..]);
    if token.is_empty() {
        return Credentials::Missing;
    }
    if token.len() > MAX_TOKEN_LEN || !all_token_chars(token) {
        return Credentials::Invalid;
    }
    // Only ASCII token characters remain, so this cannot fail.
    match std::str::from_utf8(token) {
        Ok(t) => Credentials::Bearer(t),
        Err(_) => Credentials::Invalid,
    }
}

fn trim_spaces(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// The decoded payload of a JWT (`header.payload.signature`), unverified.
fn jwt_payload(token: &str) -> Option<Vec<u8>> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
}

/// The `exp` claim (Unix seconds) of a JWT, if `token` is one and has it. No signature
/// check: use only to refuse early or to bound cache lifetimes.
pub fn jwt_exp(token: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Exp {
        exp: Option<serde_json::Number>,
    }
    let claims: Exp = serde_json::from_slice(&jwt_payload(token)?).ok()?;
    let exp = claims.exp?;
    exp.as_i64().or_else(|| exp.as_f64().map(|f| f as i64))
}

/// The `sub` claim of a JWT, if `token` is one and has a non-empty one. No signature
/// check: anyone can write a JWT naming any `sub`, so use it only where CloudBase has just
/// accepted this very token (the relay, after a successful call made with it).
pub fn jwt_sub(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Sub {
        sub: Option<String>,
    }
    let claims: Sub = serde_json::from_slice(&jwt_payload(token)?).ok()?;
    claims.sub.filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(v: &'static [u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        h
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(
            bearer(&headers(b"bEaReR abc.def")),
            Credentials::Bearer("abc.def")
        );
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_missing() {
        assert_eq!(
            bearer(&headers(b"Basic dXNlcjpwYXNz")),
            Credentials::Missing
        );
        assert_eq!(bearer(&headers(b"Bearer ")), Credentials::Missing);
        assert_eq!(bearer(&headers(b"Bearer")), Credentials::Missing);
        assert_eq!(bearer(&HeaderMap::new()), Credentials::Missing);
    }

    #[test]
    fn two_authorization_headers_are_missing() {
        let mut h = headers(b"Bearer a");
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(bearer(&h), Credentials::Missing);
    }

    #[test]
    fn overlong_or_odd_tokens_are_invalid() {
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(&long).unwrap());
        assert_eq!(bearer(&h), Credentials::Invalid);
        assert_eq!(bearer(&headers(b"Bearer a b")), Credentials::Invalid);
        assert_eq!(bearer(&headers(b"Bearer a\"b")), Credentials::Invalid);
        assert_eq!(
            bearer(&headers(b"Bearer \xe6\x89\x8b")),
            Credentials::Invalid
        );
    }

    #[test]
    fn token_characters_are_exactly_rfc_6750_b64token_and_padding() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=');
            assert_eq!(is_token_char(b), expected, "byte {b:#04x}");
        }
    }

    #[test]
    fn jwt_exp_reads_the_payload() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"1","exp":1700000000}"#);
        assert_eq!(jwt_exp(&format!("x.{payload}.y")), Some(1_700_000_000));
        assert_eq!(jwt_exp("opaque-token"), None);
        assert_eq!(jwt_exp("a.!!!.c"), None);
    }

    #[test]
    fn jwt_sub_reads_the_payload_and_nothing_else() {
        let enc = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let payload = enc(br#"{"sub":"9876543210123456789","exp":1700000000}"#);
        assert_eq!(
            jwt_sub(&format!("x.{payload}.y")).as_deref(),
            Some("9876543210123456789")
        );
        assert_eq!(jwt_sub(&format!("x.{}.y", enc(br#"{"sub":""}"#))), None);
        assert_eq!(jwt_sub(&format!("x.{}.y", enc(br#"{"sub":42}"#))), None);
        assert_eq!(jwt_sub(&format!("x.{payload}.y.z")), None);
        assert_eq!(jwt_sub("opaque-refresh-token"), None);
    }

    mod properties {
        //! Property tests: `Authorization` faces every client, so no value may panic it,
        //! and every well-formed bearer token must come back exactly.
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn no_header_value_panics_and_a_bearer_token_is_only_token_characters(
                bytes in proptest::collection::vec(any::<u8>(), 0..600)
            ) {
                let Ok(value) = HeaderValue::from_bytes(&bytes) else {
                    return Ok(()); // not a value hyper would hand us
                };
                let mut h = HeaderMap::new();
                h.insert(AUTHORIZATION, value);
                if let Credentials::Bearer(token) = bearer(&h) {
                    prop_assert!(!token.is_empty() && token.len() <= MAX_TOKEN_LEN);
                    prop_assert!(all_token_chars(token.as_bytes()));
                }
                let _ = jwt_exp(&String::from_utf8_lossy(&bytes));
            }

            #[test]
            fn a_bearer_token_round_trips_whatever_the_scheme_case_and_spacing(
                token in "[A-Za-z0-9._~+/=-]{1,4096}",
                upper in proptest::collection::vec(any::<bool>(), 6),
                before in "[ \t]{0,3}",
                after in "[ \t]{0,3}",
            ) {
                let scheme: String = "bearer"
                    .chars()
                    .zip(&upper)
                    .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
                    .collect();
                let text = format!("{scheme} {before}{token}{after}");
                let mut h = HeaderMap::new();
                h.insert(AUTHORIZATION, HeaderValue::from_str(&text).unwrap());
                prop_assert_eq!(bearer(&h), Credentials::Bearer(&token));
            }

            #[test]
            fn a_token_holding_any_other_character_is_never_passed_on(
                head in "[A-Za-z0-9]{0,20}",
                odd in "[^A-Za-z0-9._~+/= \t-]",
                tail in "[A-Za-z0-9]{0,20}",
            ) {
                let text = format!("Bearer {head}{odd}{tail}");
                let Ok(value) = HeaderValue::from_str(&text) else { return Ok(()) };
                let mut h = HeaderMap::new();
                h.insert(AUTHORIZATION, value);
                prop_assert!(!matches!(bearer(&h), Credentials::Bearer(_)));
            }
        }
    }
}
