//! What every section's validation shares: mistakes collected with their keys, and the
//! parsers of durations, sizes, addresses and keywords. Each parser takes the section's
//! default (from its `Default` impl, the one place a default is written) for an absent key
//! and for a wrong one, so a mistake is reported once and validation goes on to find the
//! next.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::ConfigError;
use crate::keyword::Keyword;

/// Collects errors while validating.
#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<ConfigError>);

impl Errors {
    pub(super) fn push(&mut self, key: impl Into<String>, message: impl fmt::Display) {
        self.0.push(ConfigError {
            key: key.into(),
            message: message.to_string(),
        });
    }
}

/// `key`'s duration, or `default` when absent (or wrong, after reporting it).
pub(super) fn duration(
    value: Option<String>,
    key: &str,
    default: Duration,
    errors: &mut Errors,
) -> Duration {
    match value.as_deref().map(parse_duration) {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errors.push(key, e);
            default
        }
    }
}

/// `"250ms"`, `"2s"`, `"5m"`, `"1h 30m"`, `"0s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like \"250ms\", \"2s\" or \"5m\" ({e})"))
}

/// `key`'s size, or `default` when absent (or wrong, after reporting it).
pub(super) fn size(value: Option<&str>, key: &str, default: u64, errors: &mut Errors) -> u64 {
    match value.map(parse_size) {
        None => default,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            errors.push(key, e);
            default
        }
    }
}

/// `"10MiB"`, `"512KiB"`, `"1GiB"`, `"1000"`, `"10MB"` (decimal units are powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{s:?} is not a size like \"10MiB\", \"512KiB\" or \"1000\"");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// `key`'s socket address, or `default` when absent (or wrong, after reporting it).
pub(super) fn socket_addr(
    value: Option<String>,
    key: &str,
    default: SocketAddr,
    errors: &mut Errors,
) -> SocketAddr {
    match value {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|_| {
            errors.push(
                key,
                format!("{s:?} is not an address like \"127.0.0.1:8080\""),
            );
            default
        }),
    }
}

/// `key`'s keyword (see [`Keyword`]), or `default` when absent (or wrong, after reporting
/// it with the accepted spellings).
pub(super) fn keyword<K: Keyword>(
    value: Option<&str>,
    key: &str,
    default: K,
    errors: &mut Errors,
) -> K {
    match value {
        None => default,
        Some(s) => K::parse(s).unwrap_or_else(|| {
            errors.push(key, format!("{s:?} is not one of {}", K::expected()));
            default
        }),
    }
}

/// A table key as written in error keys: bare when it can be, quoted otherwise.
pub(super) fn quote_key(k: &str) -> String {
    if k.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_owned()
    } else {
        format!("{k:?}")
    }
}
