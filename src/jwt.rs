//! What a JWT says about itself, read without verifying it.
//!
//! CloudBase publishes no JWKS, so signatures cannot be checked here: validity comes from
//! `/token/introspect`. The payload is still worth decoding on a cache miss, because a token
//! past its `exp` is dead without asking anyone, and `exp` bounds how long a validation
//! may be cached, and after CloudBase has accepted a token its `sub` says whose it was
//! (the relay's purges). A leaf: the cache and the relay read it; nothing here knows the
//! gateway.

use base64::Engine;

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
}
