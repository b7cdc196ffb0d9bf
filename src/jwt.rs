//! What a JWT says about itself, read without verifying it.
//!
//! CloudBase publishes no JWKS, so signatures cannot be checked here: validity comes from
//! `/token/introspect`. The payload is still worth decoding on a cache miss, because a token
//! past its `exp` is dead without asking anyone, and `exp` bounds how long a validation
//! may be cached. A leaf: the cache reads it; nothing here knows the gateway.

use base64::Engine;

/// The `exp` claim (Unix seconds) of a JWT, if `token` is one and has it. No signature
/// check: use only to refuse early or to bound cache lifetimes.
pub fn jwt_exp(token: &str) -> Option<i64> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Exp {
        exp: Option<serde_json::Number>,
    }
    let claims: Exp = serde_json::from_slice(&decoded).ok()?;
    let exp = claims.exp?;
    exp.as_i64().or_else(|| exp.as_f64().map(|f| f as i64))
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
}
