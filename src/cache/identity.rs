//! A validated user, as cached: the few fields the rules need and the identity header
//! values, encoded once when CloudBase answers.
//!
//! Header values live in one shared buffer and are sliced out per request, so a hit costs
//! no allocation and a cached identity costs one small allocation for all its headers.
//!
//! Each value is bounded (`identity.max_header_bytes`, 8 KiB by default): CloudBase
//! profiles are user-editable, and a 600 KB `name` would otherwise sit in the cache and be
//! sent on every request to an upstream that refuses heads over 8-16 KiB. A value over the
//! bound is left out — the upstream sees the header absent, as for an empty field — and
//! the omission is logged and counted once, when the entry is built, not per request.

use std::mem::size_of;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use crate::identity_headers::{IdentityField, IdentityMapping};
use crate::metrics::Metrics;
use cloudbase_auth::types::{Introspection, UserProfile};

/// Control characters, `%` and (by `percent_encoding`'s rule) every non-ASCII byte: what is
/// left is visible ASCII and inner spaces, so CR, LF and NUL can never reach a header and
/// `手机用户` arrives as `%E6%89%8B%E6%9C%BA%E7%94%A8%E6%88%B7`.
const HEADER_UNSAFE: &AsciiSet = &CONTROLS.add(b'%');

/// [`HEADER_UNSAFE`] and `,`: for one element of a comma-separated list (the groups), so
/// a group id `user,admin` arrives as `user%2Cadmin`, one element, not two.
const LIST_ELEMENT_UNSAFE: &AsciiSet = &HEADER_UNSAFE.add(b',');

/// Percent-encodes a profile value for use in a header (see `HEADER_UNSAFE`). Leading and
/// trailing spaces are encoded too, since header parsing would strip them.
pub fn encode_header_value(value: &str, out: &mut BytesMut) {
    encode(value, HEADER_UNSAFE, out);
}

/// Percent-encodes one element of a comma-separated list value (see
/// `LIST_ELEMENT_UNSAFE`); the caller puts the `,` between elements.
pub fn encode_list_element(value: &str, out: &mut BytesMut) {
    encode(value, LIST_ELEMENT_UNSAFE, out);
}

fn encode(value: &str, unsafe_bytes: &'static AsciiSet, out: &mut BytesMut) {
    let trimmed_start = value.trim_start_matches(' ');
    let lead = value.len() - trimmed_start.len();
    let core = trimmed_start.trim_end_matches(' ');
    let trail = trimmed_start.len() - core.len();
    for _ in 0..lead {
        out.extend_from_slice(b"%20");
    }
    for chunk in utf8_percent_encode(core, unsafe_bytes) {
        out.extend_from_slice(chunk.as_bytes());
    }
    for _ in 0..trail {
        out.extend_from_slice(b"%20");
    }
}

/// What [`Identity::new`] makes header values from: the configured mapping (its fields,
/// in header order) and the most bytes one encoded value may take. Omissions are counted
/// in `metrics` when given.
#[derive(Clone)]
pub struct HeaderFields {
    mapping: IdentityMapping,
    max_value_bytes: usize,
    metrics: Option<Arc<Metrics>>,
}

impl HeaderFields {
    pub fn new(
        mapping: &IdentityMapping,
        max_value_bytes: usize,
        metrics: Option<Arc<Metrics>>,
    ) -> HeaderFields {
        HeaderFields {
            mapping: mapping.clone(),
            max_value_bytes,
            metrics,
        }
    }
}

/// A group membership as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: Box<str>,
    /// Unix seconds; `None` = does not expire.
    pub expires_at: Option<i64>,
}

/// A user CloudBase vouched for.
#[derive(Debug, Clone)]
pub struct Identity {
    pub sub: Box<str>,
    pub anonymous: bool,
    pub groups: Box<[Grant]>,
    /// The access token's `exp`, if it is a JWT; never serve this identity after it.
    pub exp: Option<i64>,
    /// Header values, concatenated; `ends[i]` is where configured header `i`'s value ends.
    values: Bytes,
    ends: Box<[u32]>,
}

impl Identity {
    /// Builds the identity from CloudBase's answers. Groups expired at `now` (Unix
    /// seconds) are left out of the groups header, which lists the others' ids, each
    /// percent-encoded with `,` escaped, separated by `,` (empty ids are skipped). A value
    /// over `fields`' bound is left out, logged at warn and counted.
    pub fn new(
        introspection: &Introspection,
        profile: &UserProfile,
        exp: Option<i64>,
        fields: &HeaderFields,
        now: i64,
    ) -> Identity {
        let sub = introspection.sub.clone().unwrap_or_default();
        let scope = introspection.scope.as_deref().unwrap_or("");
        let anonymous = scope.split_ascii_whitespace().any(|s| s == "anonymous");
        let groups: Box<[Grant]> = profile
            .groups
            .iter()
            .map(|g| Grant {
                id: g.id().into(),
                expires_at: g.expires_at_unix(),
            })
            .collect();
        let mut buf = BytesMut::with_capacity(128);
        let mut ends = Vec::with_capacity(fields.mapping.len());
        for field in fields.mapping.fields() {
            let start = buf.len();
            let text: Option<&str> = match field {
                IdentityField::Sub => Some(&sub),
                IdentityField::Name => profile.name.as_deref(),
                IdentityField::Username => profile.username.as_deref(),
                IdentityField::Email => profile.email.as_deref(),
                IdentityField::PhoneNumber => profile.phone_number.as_deref(),
                IdentityField::Picture => profile.picture.as_deref(),
                IdentityField::Gender => profile.gender.as_deref(),
                IdentityField::Status => profile.status.as_deref(),
                IdentityField::Scope => Some(scope),
                IdentityField::ClientId => introspection.client_id.as_deref(),
                IdentityField::Anonymous => Some(if anonymous { "true" } else { "false" }),
                IdentityField::Groups => None,
            };
            if field == IdentityField::Groups {
                let mut first = true;
                let active = groups
                    .iter()
                    .filter(|g| g.is_active_at(now) && !g.id.is_empty());
                for g in active {
                    if !first {
                        buf.extend_from_slice(b",");
                    }
                    first = false;
                    encode_list_element(&g.id, &mut buf);
                }
            } else if let Some(text) = text {
                encode_header_value(text, &mut buf);
            }
            let len = buf.len() - start;
            if len > fields.max_value_bytes {
                buf.truncate(start);
                tracing::warn!(
                    field = field.as_str(),
                    bytes = len,
                    limit = fields.max_value_bytes,
                    "identity header value over identity.max_header_bytes; the header is not sent for this user"
                );
                if let Some(metrics) = &fields.metrics {
                    metrics.identity_header_omitted(field);
                }
            }
            ends.push(buf.len() as u32);
        }
        Identity {
            sub: sub.into(),
            anonymous,
            groups,
            exp,
            // Copied out at its exact length: the cache holds it for a whole `ttl`, and the
            // cache's weigher counts its length.
            values: Bytes::copy_from_slice(&buf),
            ends: ends.into(),
        }
    }

    /// Estimated bytes this identity occupies: the struct behind its `Arc`, what it points
    /// to, and about 16 bytes of allocator overhead per allocation.
    pub fn approx_size(&self) -> usize {
        const PER_ALLOCATION: usize = 16;
        let groups: usize = self.groups.iter().map(|g| g.id.len()).sum();
        // The `Arc` (two counts and the struct), `sub`, the groups slice and each group id,
        // the header values with the small record `Bytes` makes once they are shared by a
        // hit, and `ends`.
        let allocations = 6 + self.groups.len();
        2 * size_of::<usize>()
            + size_of::<Identity>()
            + self.sub.len()
            + self.groups.len() * size_of::<Grant>()
            + groups
            + self.values.len()
            + 3 * size_of::<usize>()
            + self.ends.len() * size_of::<u32>()
            + allocations * PER_ALLOCATION
    }

    /// Whether the user is in any of `required` (unexpired at `now`).
    pub fn in_any_group(&self, required: &[String], now: i64) -> bool {
        self.groups
            .iter()
            .any(|g| g.is_active_at(now) && required.iter().any(|r| **r == *g.id))
    }

    /// The earliest future group expiry: the header values are exact until then.
    pub fn next_group_expiry(&self, now: i64) -> Option<i64> {
        self.groups
            .iter()
            .filter_map(|g| g.expires_at)
            .filter(|t| *t > now)
            .min()
    }

    /// Sets the identity headers under `mapping`'s names: the mapping the values were
    /// rendered with ([`HeaderFields`]), handed to the auth layer by the same
    /// configuration. Empty values are left out rather than sent empty.
    pub fn apply(&self, mapping: &IdentityMapping, headers: &mut HeaderMap) {
        debug_assert_eq!(mapping.len(), self.ends.len(), "the mapping rendered with");
        let mut start = 0usize;
        for ((name, _), end) in mapping.iter().zip(self.ends.iter()) {
            let end = *end as usize;
            if end > start {
                // The bytes were percent-encoded to visible ASCII, so this cannot fail.
                if let Ok(v) = HeaderValue::from_maybe_shared(self.values.slice(start..end)) {
                    headers.insert(name.clone(), v);
                }
            }
            start = end;
        }
    }
}

impl Grant {
    pub fn is_active_at(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

/// A shared identity.
pub type SharedIdentity = Arc<Identity>;

#[cfg(test)]
mod tests {
    use super::*;
    use cloudbase_auth::types::Group;
    use std::sync::Arc;

    fn fields() -> HeaderFields {
        HeaderFields::new(&names(), crate::config::DEFAULT_MAX_HEADER_BYTES, None)
    }

    /// The headers and their fields.
    fn names() -> IdentityMapping {
        IdentityMapping::from_static(&[
            ("x-user-id", IdentityField::Sub),
            ("x-user-name", IdentityField::Name),
            ("x-user-email", IdentityField::Email),
            ("x-user-groups", IdentityField::Groups),
            ("x-user-anonymous", IdentityField::Anonymous),
        ])
    }

    fn build(name: &str, groups: Vec<Group>) -> Identity {
        let i = Introspection {
            sub: Some("42".into()),
            scope: Some("user".into()),
            ..Default::default()
        };
        let p = UserProfile {
            name: Some(name.into()),
            groups,
            ..Default::default()
        };
        Identity::new(&i, &p, None, &fields(), 1_700_000_000)
    }

    #[test]
    fn non_ascii_names_are_percent_encoded() {
        let id = build("手机用户", vec![]);
        let mut h = HeaderMap::new();
        id.apply(&names(), &mut h);
        assert_eq!(h["x-user-name"], "%E6%89%8B%E6%9C%BA%E7%94%A8%E6%88%B7");
        assert_eq!(h["x-user-id"], "42");
        assert_eq!(h["x-user-anonymous"], "false");
        assert!(
            h.get("x-user-email").is_none(),
            "absent fields are not sent"
        );
    }

    #[test]
    fn cr_lf_nul_and_percent_cannot_reach_a_header() {
        let id = build("a\r\nX-Injected: 1\0%", vec![]);
        let mut h = HeaderMap::new();
        id.apply(&names(), &mut h);
        assert_eq!(h["x-user-name"], "a%0D%0AX-Injected: 1%00%25");
        assert!(h.get("x-injected").is_none());
    }

    #[test]
    fn expired_groups_are_left_out() {
        let id = build(
            "n",
            vec![
                Group::Id("user".into()),
                Group::Object {
                    id: "old".into(),
                    expires_at: Some("2001-01-01T00:00:00Z".into()),
                },
                Group::Object {
                    id: "admin".into(),
                    expires_at: Some("2099-01-01T00:00:00Z".into()),
                },
            ],
        );
        let mut h = HeaderMap::new();
        id.apply(&names(), &mut h);
        assert_eq!(h["x-user-groups"], "user,admin");
        assert!(id.in_any_group(&["admin".into()], 1_700_000_000));
        assert!(!id.in_any_group(&["old".into()], 1_700_000_000));
        assert_eq!(id.next_group_expiry(1_700_000_000), Some(4_070_908_800));
    }

    #[test]
    fn a_comma_inside_a_group_id_cannot_split_it_in_two() {
        let id = build(
            "n",
            vec![Group::Id("user,admin".into()), Group::Id("50%".into())],
        );
        let mut h = HeaderMap::new();
        id.apply(&names(), &mut h);
        assert_eq!(h["x-user-groups"], "user%2Cadmin,50%25");
        assert!(!id.in_any_group(&["admin".into()], 1_700_000_000));
    }

    #[test]
    fn a_value_over_the_bound_is_left_out_and_counted_once_per_entry() {
        let metrics = Arc::new(Metrics::new(Vec::<String>::new()));
        let names = IdentityMapping::from_static(&[
            ("x-user-id", IdentityField::Sub),
            ("x-user-name", IdentityField::Name),
        ]);
        let fields = HeaderFields::new(&names, 8 << 10, Some(metrics.clone()));
        let i = Introspection {
            sub: Some("42".into()),
            ..Default::default()
        };
        let p = UserProfile {
            name: Some("名".repeat(200_000)),
            ..Default::default()
        };
        let id = Identity::new(&i, &p, None, &fields, 0);
        for _ in 0..3 {
            let mut h = HeaderMap::new();
            id.apply(&names, &mut h);
            assert_eq!(h["x-user-id"], "42");
            assert!(h.get("x-user-name").is_none());
        }
        assert!(id.values.len() < 100, "the oversized value is not cached");
        let text = metrics.render(0);
        assert!(
            text.contains("cloudbase_gateway_identity_headers_omitted_total{field=\"name\"} 1"),
            "{text}"
        );
        // Exactly at the bound is still sent.
        let p = UserProfile {
            name: Some("a".repeat(8 << 10)),
            ..Default::default()
        };
        let id = Identity::new(&i, &p, None, &fields, 0);
        let mut h = HeaderMap::new();
        id.apply(&names, &mut h);
        assert_eq!(h["x-user-name"].len(), 8 << 10);
    }

    mod properties {
        //! Property tests: whatever CloudBase puts in a profile, the header is a valid
        //! value that percent-decodes back to it, a group list splits back into its ids,
        //! and an identity built from any answer at all sets only visible-ASCII values.
        use super::*;
        use http::HeaderName;
        use percent_encoding::percent_decode_str;
        use proptest::prelude::*;

        fn decode(v: &str) -> String {
            percent_decode_str(v).decode_utf8().unwrap().into_owned()
        }

        proptest! {
            #[test]
            fn every_string_becomes_a_valid_header_value_that_decodes_back(
                value in any::<String>()
            ) {
                let mut buf = BytesMut::new();
                encode_header_value(&value, &mut buf);
                let header = HeaderValue::from_maybe_shared(buf.freeze());
                prop_assert!(header.is_ok());
                let header = header.unwrap();
                let text = header.to_str().unwrap();
                prop_assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)));
                prop_assert_eq!(text.trim(), text, "no edge whitespace to be stripped");
                prop_assert_eq!(decode(text), value);
            }

            #[test]
            fn every_byte_sequence_read_as_text_round_trips(
                bytes in proptest::collection::vec(any::<u8>(), 0..256)
            ) {
                let value = String::from_utf8_lossy(&bytes).into_owned();
                let mut buf = BytesMut::new();
                encode_header_value(&value, &mut buf);
                let header = HeaderValue::from_maybe_shared(buf.freeze()).unwrap();
                prop_assert_eq!(decode(header.to_str().unwrap()), value);
            }

            #[test]
            fn a_group_list_splits_back_into_exactly_its_ids(
                ids in proptest::collection::vec(".{1,12}", 1..8)
            ) {
                let groups = ids.iter().map(|id| Group::Id(id.clone())).collect();
                let id = build("n", groups);
                let mut h = HeaderMap::new();
                id.apply(&names(), &mut h);
                let value = h["x-user-groups"].to_str().unwrap();
                let back: Vec<String> = value.split(',').map(decode).collect();
                prop_assert_eq!(back, ids);
            }

            #[test]
            fn an_identity_from_any_cloudbase_answer_has_only_visible_ascii_headers(
                texts in proptest::collection::vec(proptest::option::of(any::<String>()), 11),
                groups in proptest::collection::vec(
                    (any::<String>(), proptest::option::of(prop_oneof![
                        Just("2099-01-01T00:00:00Z".to_owned()),
                        Just("9999-99-99T99:99:99Z".to_owned()),
                        any::<String>(),
                    ])),
                    0..6,
                ),
                now in any::<i64>(),
            ) {
                let text = |i: usize| texts[i].clone();
                let introspection = Introspection {
                    token_type: text(0),
                    client_id: text(1),
                    sub: text(2),
                    scope: text(3),
                };
                let profile = UserProfile {
                    sub: text(2).unwrap_or_default(),
                    name: text(4),
                    username: text(5),
                    email: text(6),
                    phone_number: text(7),
                    picture: text(8),
                    gender: text(9),
                    status: text(10),
                    groups: groups
                        .into_iter()
                        .map(|(id, expires_at)| Group::Object { id, expires_at })
                        .collect(),
                    ..UserProfile::default()
                };
                let names = IdentityMapping::new(IdentityField::ALL.iter().map(|&f| {
                    let name = f.as_str().replace('_', "-");
                    (HeaderName::from_bytes(name.as_bytes()).unwrap(), f)
                }));
                let fields = HeaderFields::new(&names, 8 << 10, None);
                let identity = Identity::new(&introspection, &profile, None, &fields, now);
                let _ = identity.in_any_group(&["admin".to_owned()], now);
                let mut headers = HeaderMap::new();
                identity.apply(&names, &mut headers);
                for value in headers.values() {
                    prop_assert!(value.as_bytes().iter().all(|b| (0x20..0x7f).contains(b)));
                }
            }
        }
    }
}
