//! A validated user, as cached: the few fields the rules need and the identity header
//! values, encoded once when CloudBase answers.
//!
//! Header values live in one shared buffer and are sliced out per request, so a hit costs
//! no allocation and a cached identity costs one small allocation for all its headers.

use std::mem::size_of;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use crate::cloudbase::types::{Introspection, UserProfile};
use crate::config::IdentityField;

/// Control characters, `%` and (by `percent_encoding`'s rule) every non-ASCII byte: what is
/// left is visible ASCII and inner spaces, so CR, LF and NUL can never reach a header and
/// `手机用户` arrives as `%E6%89%8B%E6%9C%BA%E7%94%A8%E6%88%B7`.
const HEADER_UNSAFE: &AsciiSet = &CONTROLS.add(b'%');

/// Percent-encodes a profile value for use in a header (see [`HEADER_UNSAFE`]). Leading and
/// trailing spaces are encoded too, since header parsing would strip them.
pub fn encode_header_value(value: &str, out: &mut BytesMut) {
    let trimmed_start = value.trim_start_matches(' ');
    let lead = value.len() - trimmed_start.len();
    let core = trimmed_start.trim_end_matches(' ');
    let trail = trimmed_start.len() - core.len();
    for _ in 0..lead {
        out.extend_from_slice(b"%20");
    }
    for chunk in utf8_percent_encode(core, HEADER_UNSAFE) {
        out.extend_from_slice(chunk.as_bytes());
    }
    for _ in 0..trail {
        out.extend_from_slice(b"%20");
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
    /// seconds) are left out of the groups header.
    pub fn new(
        introspection: &Introspection,
        profile: &UserProfile,
        exp: Option<i64>,
        fields: &[IdentityField],
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
        let mut ends = Vec::with_capacity(fields.len());
        for field in fields {
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
            if *field == IdentityField::Groups {
                let mut first = true;
                for g in groups.iter().filter(|g| g.is_active_at(now)) {
                    if !first {
                        buf.extend_from_slice(b",");
                    }
                    first = false;
                    encode_header_value(&g.id, &mut buf);
                }
            } else if let Some(text) = text {
                encode_header_value(text, &mut buf);
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

    /// Sets the identity headers, `names[i]` for configured field `i`. Empty values are
    /// left out rather than sent empty.
    pub fn apply(&self, names: &[HeaderName], headers: &mut HeaderMap) {
        let mut start = 0usize;
        for (name, end) in names.iter().zip(self.ends.iter()) {
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
    use crate::cloudbase::types::Group;

    fn fields() -> Vec<IdentityField> {
        vec![
            IdentityField::Sub,
            IdentityField::Name,
            IdentityField::Email,
            IdentityField::Groups,
            IdentityField::Anonymous,
        ]
    }

    fn names() -> Vec<HeaderName> {
        [
            "x-user-id",
            "x-user-name",
            "x-user-email",
            "x-user-groups",
            "x-user-anonymous",
        ]
        .into_iter()
        .map(HeaderName::from_static)
        .collect()
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
}
