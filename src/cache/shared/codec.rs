//! The value format of the shared tier: what CloudBase said about one token, versioned and
//! authenticated, so a replica can rebuild the identity with *its own* header mapping.
//!
//! Layout: `[version: 1 byte][HMAC-SHA256 tag: 32 bytes][body: JSON]`. The tag covers a
//! domain label, the version, the Redis key the value is stored under, and the body; it is
//! checked (in constant time) before the body is parsed, so bytes nobody with the key wrote
//! never reach the JSON parser, and a valid value copied under another token's key is
//! refused. A version this build does not know, a bad tag or a body that does not parse all
//! read as "no value": the caller counts it and asks CloudBase, as on a miss.
//!
//! The body stores CloudBase's answers (verdict, `sub`, scope, client id, profile fields,
//! groups with their RFC 3339 expiries as sent, the token's `exp`) rather than rendered
//! header values: replicas with different `[identity.headers]` stay correct, and a replica
//! still applies its own group-expiry rule when it reads. JSON rather than a hand-rolled
//! binary layout: the tag already guards integrity, `serde_json` never panics on input, the
//! value is readable with `redis-cli GET` when debugging, and the cost (a few hundred
//! bytes per identity, see README "Running several replicas") is small next to Redis's own
//! per-key overhead.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::cache::{HeaderFields, Identity};
use crate::cloudbase::types::{Group, Introspection, UserProfile};

/// The only format version this build writes and reads.
pub const VERSION: u8 = 1;
const TAG_LEN: usize = 32;
/// Separates these tags from any other use of the same key.
const DOMAIN: &[u8] = b"cloudbase-gateway shared entry\0";

/// What CloudBase said about a token, as every replica can use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEntry {
    pub verdict: SharedVerdict,
    /// Unix milliseconds after which no replica may use the entry (the writer's `cache.ttl`
    /// or `negative_ttl`, the token's `exp` and the next group expiry, whichever is first).
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedVerdict {
    /// Active token and its user's profile (boxed: a negative entry stays small).
    Positive(Box<Claims>),
    /// CloudBase called the token invalid (introspection `{}` or a 401 from `/user/me`).
    Negative,
}

/// The parts of CloudBase's `/token/introspect` and `/user/me` answers an [`Identity`] can
/// be built from: every [`IdentityField`](crate::config::IdentityField) has its source here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// From introspection.
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<SharedGroup>,
    /// The access token's `exp` (Unix seconds), if it is a JWT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
}

/// A group membership as CloudBase sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedGroup {
    pub id: String,
    /// RFC 3339, verbatim; each replica parses it with [`Group::expires_at_unix`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl Claims {
    /// What `Inner::fetch` had in hand when CloudBase accepted the token.
    pub fn from_answers(
        introspection: &Introspection,
        profile: &UserProfile,
        exp: Option<i64>,
    ) -> Claims {
        Claims {
            sub: introspection.sub.clone().unwrap_or_default(),
            scope: introspection.scope.clone(),
            client_id: introspection.client_id.clone(),
            name: profile.name.clone(),
            username: profile.username.clone(),
            email: profile.email.clone(),
            phone_number: profile.phone_number.clone(),
            picture: profile.picture.clone(),
            gender: profile.gender.clone(),
            status: profile.status.clone(),
            groups: profile
                .groups
                .iter()
                .map(|g| SharedGroup {
                    id: g.id().to_owned(),
                    expires_at: g.expires_at().map(str::to_owned),
                })
                .collect(),
            exp,
        }
    }

    /// The two answers back, holding exactly what [`Identity::new`] reads.
    pub fn to_answers(&self) -> (Introspection, UserProfile) {
        let introspection = Introspection {
            token_type: None,
            client_id: self.client_id.clone(),
            sub: Some(self.sub.clone()),
            scope: self.scope.clone(),
        };
        let profile = UserProfile {
            sub: self.sub.clone(),
            name: self.name.clone(),
            username: self.username.clone(),
            email: self.email.clone(),
            phone_number: self.phone_number.clone(),
            picture: self.picture.clone(),
            gender: self.gender.clone(),
            status: self.status.clone(),
            groups: self
                .groups
                .iter()
                .map(|g| match &g.expires_at {
                    None => Group::Id(g.id.clone()),
                    Some(at) => Group::Object {
                        id: g.id.clone(),
                        expires_at: Some(at.clone()),
                    },
                })
                .collect(),
            ..UserProfile::default()
        };
        (introspection, profile)
    }

    /// This replica's identity for the claims: its own header `fields`, groups expired at
    /// `now` (Unix seconds) left out, as when it asks CloudBase itself.
    pub fn identity(&self, fields: &HeaderFields, now: i64) -> Identity {
        let (introspection, profile) = self.to_answers();
        Identity::new(&introspection, &profile, self.exp, fields, now)
    }
}

/// A stored value: the entry and the purge-all generation it was written under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub generation: u64,
    pub entry: SharedEntry,
}

/// The JSON body, as stored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    generation: u64,
    expires_at_ms: i64,
    /// `None`: a negative entry.
    claims: Option<Box<Claims>>,
}

/// [`Body`] for writing, without cloning the claims.
#[derive(Serialize)]
struct BodyRef<'a> {
    generation: u64,
    expires_at_ms: i64,
    claims: Option<&'a Claims>,
}

/// Why a stored value was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("format version {0} is not one this gateway reads")]
    Version(u8),
    #[error("too short to hold a version and a tag")]
    Truncated,
    #[error("HMAC does not match (tampered, written with another key, or moved from another key)")]
    Tag,
    #[error("authenticated body does not parse")]
    Body,
}

/// Encodes and checks values with the configured `hmac_key`. `Debug` never shows the key.
#[derive(Clone)]
pub struct Codec {
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Codec { key: [redacted] }")
    }
}

impl Codec {
    pub fn new(key: &[u8]) -> Codec {
        Codec {
            keyed: Hmac::new_from_slice(key).expect("HMAC takes a key of any length"),
        }
    }

    fn tag(&self, redis_key: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(DOMAIN);
        mac.update(&[VERSION]);
        mac.update(&(redis_key.len() as u64).to_be_bytes());
        mac.update(redis_key.as_bytes());
        mac.update(body);
        mac
    }

    /// The value to store under `redis_key`: `entry`, written under purge-all `generation`.
    pub fn encode(&self, redis_key: &str, generation: u64, entry: &SharedEntry) -> Vec<u8> {
        let body = BodyRef {
            generation,
            expires_at_ms: entry.expires_at_ms,
            claims: match &entry.verdict {
                SharedVerdict::Positive(claims) => Some(&**claims),
                SharedVerdict::Negative => None,
            },
        };
        let body = serde_json::to_vec(&body).expect("plain data serializes");
        let tag = self.tag(redis_key, &body).finalize().into_bytes();
        let mut out = Vec::with_capacity(1 + TAG_LEN + body.len());
        out.push(VERSION);
        out.extend_from_slice(&tag);
        out.extend_from_slice(&body);
        out
    }

    /// The record stored under `redis_key`, if this build wrote it with this key.
    pub fn decode(&self, redis_key: &str, value: &[u8]) -> Result<Record, Invalid> {
        let (&version, rest) = value.split_first().ok_or(Invalid::Truncated)?;
        if version != VERSION {
            return Err(Invalid::Version(version));
        }
        if rest.len() < TAG_LEN {
            return Err(Invalid::Truncated);
        }
        let (tag, body) = rest.split_at(TAG_LEN);
        self.tag(redis_key, body)
            .verify_slice(tag)
            .map_err(|_| Invalid::Tag)?;
        let body: Body = serde_json::from_slice(body).map_err(|_| Invalid::Body)?;
        Ok(Record {
            generation: body.generation,
            entry: SharedEntry {
                expires_at_ms: body.expires_at_ms,
                verdict: match body.claims {
                    Some(claims) => SharedVerdict::Positive(claims),
                    None => SharedVerdict::Negative,
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IdentityField, DEFAULT_MAX_HEADER_BYTES};
    use http::{HeaderMap, HeaderName};
    use proptest::prelude::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const REDIS_KEY: &str = "cloudbase-gateway:00ff";

    fn claims() -> Claims {
        Claims {
            sub: "user-42".into(),
            scope: Some("user sso".into()),
            client_id: Some("app".into()),
            name: Some("手机用户".into()),
            email: Some("a@example.com".into()),
            groups: vec![
                SharedGroup {
                    id: "user".into(),
                    expires_at: None,
                },
                SharedGroup {
                    id: "admin".into(),
                    expires_at: Some("2099-01-01T00:00:00Z".into()),
                },
                SharedGroup {
                    id: "old".into(),
                    expires_at: Some("2001-01-01T00:00:00Z".into()),
                },
            ],
            exp: Some(4_000_000_000),
            ..Claims::default()
        }
    }

    fn record(verdict: SharedVerdict) -> Record {
        Record {
            generation: 7,
            entry: SharedEntry {
                verdict,
                expires_at_ms: 1_700_000_000_123,
            },
        }
    }

    fn headers(identity: &Identity, names: &[&'static str]) -> HeaderMap {
        let names: Vec<HeaderName> = names.iter().map(|n| HeaderName::from_static(n)).collect();
        let mut h = HeaderMap::new();
        identity.apply(&names, &mut h);
        h
    }

    #[test]
    fn positive_and_negative_records_round_trip() {
        let codec = Codec::new(KEY);
        for verdict in [
            SharedVerdict::Positive(Box::new(claims())),
            SharedVerdict::Negative,
        ] {
            let r = record(verdict);
            let bytes = codec.encode(REDIS_KEY, r.generation, &r.entry);
            assert_eq!(bytes[0], VERSION);
            assert_eq!(codec.decode(REDIS_KEY, &bytes), Ok(r));
        }
    }

    #[test]
    fn identities_rebuilt_from_claims_match_those_built_from_cloudbases_answers() {
        let introspection = Introspection {
            sub: Some("user-42".into()),
            scope: Some("user anonymous".into()),
            client_id: Some("app".into()),
            token_type: Some("Bearer".into()),
        };
        let profile = UserProfile {
            sub: "user-42".into(),
            name: Some("手机用户".into()),
            username: Some("zhang".into()),
            phone_number: Some("+86 13800000000".into()),
            picture: Some("https://x/p.png".into()),
            gender: Some("MALE".into()),
            status: Some("ACTIVE".into()),
            groups: vec![
                Group::Id("user".into()),
                Group::Object {
                    id: "admin".into(),
                    expires_at: Some("2099-01-01T00:00:00Z".into()),
                },
                Group::Object {
                    id: "bad-date".into(),
                    expires_at: Some("not a date".into()),
                },
            ],
            ..UserProfile::default()
        };
        let fields: Vec<IdentityField> = IdentityField::ALL.iter().map(|(_, f)| *f).collect();
        let fields = HeaderFields::new(&fields, DEFAULT_MAX_HEADER_BYTES, None);
        let names: Vec<&'static str> = IdentityField::ALL.iter().map(|(n, _)| *n).collect();
        let now = 1_700_000_000;
        let direct = Identity::new(&introspection, &profile, Some(1_800_000_000), &fields, now);
        let claims = Claims::from_answers(&introspection, &profile, Some(1_800_000_000));
        let codec = Codec::new(KEY);
        let r = record(SharedVerdict::Positive(Box::new(claims)));
        let stored = codec.encode(REDIS_KEY, r.generation, &r.entry);
        let Ok(Record {
            entry:
                SharedEntry {
                    verdict: SharedVerdict::Positive(read),
                    ..
                },
            ..
        }) = codec.decode(REDIS_KEY, &stored)
        else {
            panic!("round trip")
        };
        let rebuilt = read.identity(&fields, now);
        assert_eq!(headers(&rebuilt, &names), headers(&direct, &names));
        assert_eq!(rebuilt.sub, direct.sub);
        assert_eq!(rebuilt.anonymous, direct.anonymous);
        assert_eq!(rebuilt.groups, direct.groups);
        assert_eq!(rebuilt.exp, direct.exp);
        assert!(
            !rebuilt.in_any_group(&["bad-date".into()], now),
            "an undatable group still grants nothing"
        );
    }

    #[test]
    fn replicas_with_different_header_mappings_read_the_same_claims_their_own_way() {
        let c = claims();
        let fields = |f: &[IdentityField]| HeaderFields::new(f, DEFAULT_MAX_HEADER_BYTES, None);
        let a = c.identity(
            &fields(&[IdentityField::Sub, IdentityField::Groups]),
            1_700_000_000,
        );
        let b = c.identity(
            &fields(&[IdentityField::Email, IdentityField::Name]),
            1_700_000_000,
        );
        let ha = headers(&a, &["x-id", "x-groups"]);
        let hb = headers(&b, &["x-mail", "x-name"]);
        assert_eq!(ha["x-id"], "user-42");
        assert_eq!(
            ha["x-groups"], "user,admin",
            "the expired group is left out"
        );
        assert_eq!(hb["x-mail"], "a@example.com");
        assert_eq!(hb["x-name"], "%E6%89%8B%E6%9C%BA%E7%94%A8%E6%88%B7");
    }

    #[test]
    fn each_kind_of_bad_value_is_refused_with_its_reason() {
        let codec = Codec::new(KEY);
        let r = record(SharedVerdict::Positive(Box::new(claims())));
        let good = codec.encode(REDIS_KEY, r.generation, &r.entry);
        assert_eq!(codec.decode(REDIS_KEY, b""), Err(Invalid::Truncated));
        assert_eq!(
            codec.decode(REDIS_KEY, &good[..20]),
            Err(Invalid::Truncated)
        );
        let mut v2 = good.clone();
        v2[0] = 2;
        assert_eq!(codec.decode(REDIS_KEY, &v2), Err(Invalid::Version(2)));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(codec.decode(REDIS_KEY, &flipped), Err(Invalid::Tag));
        let other_key = Codec::new(b"another key, also 32 bytes long!");
        assert_eq!(other_key.decode(REDIS_KEY, &good), Err(Invalid::Tag));
        assert_eq!(
            codec.decode("cloudbase-gateway:11ee", &good),
            Err(Invalid::Tag),
            "a valid value copied under another token's key"
        );
        assert!(!format!("{codec:?}").contains("0123456789"));
    }

    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof![".{0,12}", "[a-z0-9@. ]{0,24}", "\\PC{0,8}"]
    }

    prop_compose! {
        fn arb_claims()(
            sub in arb_text(),
            scope in proptest::option::of(arb_text()),
            name in proptest::option::of(arb_text()),
            email in proptest::option::of(arb_text()),
            groups in proptest::collection::vec(
                (arb_text(), proptest::option::of(arb_text())), 0..4),
            exp in proptest::option::of(any::<i64>()),
        ) -> Claims {
            Claims {
                sub, scope, name, email, exp,
                groups: groups.into_iter().map(|(id, expires_at)| SharedGroup { id, expires_at }).collect(),
                ..Claims::default()
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic_and_never_decode(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let codec = Codec::new(KEY);
            prop_assert!(codec.decode(REDIS_KEY, &bytes).is_err());
            // Even with the right version byte in front.
            let mut versioned = vec![VERSION];
            versioned.extend_from_slice(&bytes);
            prop_assert!(codec.decode(REDIS_KEY, &versioned).is_err());
        }

        #[test]
        fn any_record_round_trips_and_any_flipped_bit_is_refused(
            claims in arb_claims(),
            positive in any::<bool>(),
            generation in any::<u64>(),
            expires_at_ms in any::<i64>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let codec = Codec::new(KEY);
            let r = Record {
                generation,
                entry: SharedEntry {
                    expires_at_ms,
                    verdict: if positive { SharedVerdict::Positive(Box::new(claims)) } else { SharedVerdict::Negative },
                },
            };
            let mut bytes = codec.encode(REDIS_KEY, r.generation, &r.entry);
            prop_assert_eq!(codec.decode(REDIS_KEY, &bytes), Ok(r));
            let i = flip.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(codec.decode(REDIS_KEY, &bytes).is_err());
        }
    }
}
