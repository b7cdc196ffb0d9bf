//! `[identity]`: which identity headers are set ([`IdentityMapping`]), which are stripped
//! from clients, and how long a value may be.

use std::collections::BTreeMap;

use http::HeaderName;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::ser;
use super::validate::{quote_key, size, Errors};
use crate::identity_headers::{IdentityField, IdentityMapping};

/// `[identity]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    headers: Option<BTreeMap<String, String>>,
    max_header_bytes: Option<String>,
}

/// `[identity.headers]`, merged over the defaults.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// Headers set on authenticated requests and the field each carries, in a stable
    /// order.
    pub headers: IdentityMapping,
    /// Every identity header name, set or turned off, lower-case. Client-supplied headers
    /// matching one of these (with `_` read as `-`) are removed on every route. Turned-off
    /// defaults stay here: an upstream that once trusted them must never see a forgery.
    pub strip: Vec<HeaderName>,
    /// The most bytes one encoded identity header value may take; a longer one is not
    /// sent. Default [`DEFAULT_MAX_HEADER_BYTES`].
    pub max_header_bytes: usize,
}

/// The identity headers set when `[identity.headers]` does not say otherwise.
pub const DEFAULT_IDENTITY_HEADERS: [(&str, IdentityField); 8] = [
    ("X-User-Id", IdentityField::Sub),
    ("X-User-Name", IdentityField::Name),
    ("X-User-Username", IdentityField::Username),
    ("X-User-Email", IdentityField::Email),
    ("X-User-Phone", IdentityField::PhoneNumber),
    ("X-User-Groups", IdentityField::Groups),
    ("X-User-Scope", IdentityField::Scope),
    ("X-User-Anonymous", IdentityField::Anonymous),
];

/// `identity.max_header_bytes` when unset: 8 KiB, below every common server's limit for
/// one header line (nginx 8 KiB buffers, Node 16 KiB for the whole head).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8 << 10;

impl Default for IdentitySettings {
    fn default() -> Self {
        let defaults = DEFAULT_IDENTITY_HEADERS.map(|(name, field)| {
            let name = normalize_header_name(name);
            (
                HeaderName::from_bytes(name.as_bytes()).expect("a valid name"),
                field,
            )
        });
        IdentitySettings {
            strip: defaults.iter().map(|(name, _)| name.clone()).collect(),
            headers: IdentityMapping::new(defaults),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// The effective configuration's `[identity]` table: every header in `strip` order with
/// its field, `""` for one turned off.
impl Serialize for IdentitySettings {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Headers<'a>(&'a IdentitySettings);
        impl Serialize for Headers<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(self.0.strip.len()))?;
                for name in &self.0.strip {
                    let field = self.0.headers.field_of(name);
                    map.serialize_entry(name.as_str(), field.map_or("", IdentityField::as_str))?;
                }
                map.end()
            }
        }
        let mut table = s.serialize_map(Some(2))?;
        table.serialize_entry("headers", &Headers(self))?;
        table.serialize_entry("max_header_bytes", &ser::Size(self.max_header_bytes as u64))?;
        table.end()
    }
}

/// Lower-cases a header name and reads `_` as `-`, the way some servers (CGI, nginx with
/// `underscores_in_headers`) fold names; identity headers are compared in this form.
pub fn normalize_header_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

pub(super) fn validate(raw: RawIdentity, errors: &mut Errors) -> IdentitySettings {
    let mut merged: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (name, field) in DEFAULT_IDENTITY_HEADERS {
        let norm = normalize_header_name(name);
        order.push(norm.clone());
        merged.insert(norm, (name.to_owned(), field.as_str().to_owned()));
    }
    for (name, field) in raw.headers.unwrap_or_default() {
        let norm = normalize_header_name(&name);
        if !merged.contains_key(&norm) {
            order.push(norm.clone());
        }
        merged.insert(norm, (name, field));
    }
    let mut headers = Vec::new();
    let mut strip = Vec::new();
    for norm in order {
        let (name, field) = &merged[&norm];
        let key = format!("identity.headers.{}", quote_key(name));
        let plain =
            !norm.is_empty() && norm.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let header = plain
            .then(|| HeaderName::from_bytes(norm.as_bytes()).ok())
            .flatten();
        let Some(header) = header else {
            errors.push(
                key,
                format!(
                    "{name:?} is not a header name of letters, digits, - and _ (servers read \
                     other characters in different ways)"
                ),
            );
            continue;
        };
        if !strip.contains(&header) {
            strip.push(header.clone());
        }
        if field.is_empty() {
            continue;
        }
        match IdentityField::parse(field) {
            Some(f) => headers.push((header, f)),
            None => errors.push(
                key,
                format!(
                    "{field:?} is not a profile field (one of {})",
                    IdentityField::ALL
                        .iter()
                        .map(|f| f.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    let max_header_bytes = match raw.max_header_bytes.as_deref() {
        None => DEFAULT_MAX_HEADER_BYTES,
        Some(text) => {
            let default = DEFAULT_MAX_HEADER_BYTES as u64;
            match size(Some(text), "identity.max_header_bytes", default, errors) {
                n if n >= 64 => usize::try_from(n).unwrap_or(usize::MAX),
                _ => {
                    errors.push("identity.max_header_bytes", "must be at least 64 bytes");
                    DEFAULT_MAX_HEADER_BYTES
                }
            }
        }
    };
    IdentitySettings {
        headers: IdentityMapping::new(headers),
        strip,
        max_header_bytes,
    }
}
