//! Access tokens: compact JWTs signed with HS256 under a random per-instance key.
//!
//! The real service signs with RS256 and publishes no JWKS, so nobody outside can check a
//! signature anyway; HMAC keeps the emulator free of key generation while still refusing
//! forged or altered tokens. The key lives only in memory: a restarted emulator rejects
//! every token it issued before, like a CloudBase environment whose keys were rotated.
//! Each token carries a `jti` so a single token can be revoked.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The payload of an emulator access token: CloudBase's claims plus `jti`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub scope: String,
    pub project_id: String,
    pub provider_type: String,
    pub user_type: String,
    pub jti: String,
}

/// Signs and checks tokens with one random key.
pub struct Signer {
    key: [u8; 32],
    /// `base64url(header)`, computed once: the header never changes.
    header: String,
}

impl Signer {
    /// A signer with a fresh random key and a `kid` derived from it.
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let kid: String = <Sha256 as sha2::Digest>::digest(key)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": kid});
        Signer {
            key,
            header: URL_SAFE_NO_PAD.encode(header.to_string()),
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    /// `header.payload.signature`.
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).expect("claims serialize");
        let mut token = format!("{}.{}", self.header, URL_SAFE_NO_PAD.encode(payload));
        let mut mac = self.mac();
        mac.update(token.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        token.push('.');
        token.push_str(&sig);
        token
    }

    /// The claims of a token this signer issued, signature checked in constant time.
    /// Expiry is not checked here: revocation by `jti` must work on expired tokens too.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let (signed, sig) = token.rsplit_once('.')?;
        let (header, payload) = signed.split_once('.')?;
        if header != self.header {
            return None;
        }
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        mac.verify_slice(&sig).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            iss: "http://env.ap-shanghai.tcb-api.tencentcloudapi.com".into(),
            sub: "1".into(),
            aud: "env".into(),
            exp: 20,
            iat: 10,
            scope: "user".into(),
            project_id: "env".into(),
            provider_type: "username".into(),
            user_type: "external".into(),
            jti: "j".into(),
        }
    }

    #[test]
    fn signed_tokens_verify_and_tampered_ones_do_not() {
        let s = Signer::new();
        let t = s.sign(&claims());
        assert_eq!(s.verify(&t), Some(claims()));
        let mut forged = claims();
        forged.sub = "2".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let parts: Vec<&str> = t.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(s.verify(&tampered), None);
        assert_eq!(Signer::new().verify(&t), None, "another instance's key");
        assert_eq!(s.verify("garbage"), None);
    }
}
