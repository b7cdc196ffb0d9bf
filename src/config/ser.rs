//! How settings print in the effective configuration (`cloudbase-gateway check`, which
//! serializes [`super::Config`]): `serialize_with` helpers for the values whose TOML
//! form is not their Rust form. Secrets never print: [`secret`] writes `[redacted]`, or
//! `""` for an unset one, so the output stays a valid configuration.

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use serde::ser::SerializeSeq;
use serde::Serializer;

use crate::keyword::Keyword;
use crate::secret::{Secret, SecretUrl};

/// What a set secret prints as.
pub(super) const REDACTED: &str = "[redacted]";

/// `"1m 30s"`, as humantime writes it (and the parser reads it back).
pub(super) fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// A value as the string it displays as (an upstream URL, a rate).
pub(super) fn text<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// A size in bytes, in the largest binary unit that divides it exactly (`"256MiB"`), else
/// in bytes (`"1000"`); the size parser reads either back.
pub(super) fn size<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
    let unit = [(30, "GiB"), (20, "MiB"), (10, "KiB")]
        .into_iter()
        .find(|(shift, _)| *bytes != 0 && bytes % (1u64 << shift) == 0);
    match unit {
        Some((shift, name)) => s.collect_str(&format_args!("{}{name}", bytes >> shift)),
        None => s.collect_str(bytes),
    }
}

/// A size that prints as [`size`] does, for hand-written `Serialize` impls.
pub(super) struct Size(pub u64);

impl serde::Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        size(&self.0, s)
    }
}

/// Each item as a string (`trusted_proxies`, `methods`).
pub(super) fn texts<T: Display, S: Serializer>(items: &[T], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(items.len()))?;
    for item in items {
        seq.serialize_element(&item.to_string())?;
    }
    seq.end()
}

/// A path, as it displays.
pub(super) fn path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&p.display())
}

/// [`path`] of a present value (skip absent ones with `skip_serializing_if`).
pub(super) fn some_path<P: AsRef<Path>, S: Serializer>(
    p: &Option<P>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => path(p.as_ref(), s),
        None => s.serialize_none(),
    }
}

/// `[redacted]`, or `""` when unset.
pub(super) fn secret<S: Serializer>(secret: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.is_empty() { "" } else { REDACTED })
}

/// [`secret`] of a present value (skip absent ones with `skip_serializing_if`).
pub(super) fn some_secret<S: Serializer>(value: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => secret(v, s),
        None => s.serialize_none(),
    }
}

/// A keyword's spelling (for keyword types declared outside this crate).
pub(super) fn keyword<K: Keyword, S: Serializer>(k: &K, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

/// A URL with its credentials redacted (see [`SecretUrl::redacted`]).
pub(super) fn secret_url<S: Serializer>(url: &SecretUrl, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&url.redacted())
}
