//! The path policy: one normalized path per request, or the reason it is refused.
//!
//! An authenticating proxy decides on a path that some other server will interpret. If
//! the two read it differently, the decision is about a different resource than the one
//! served: `/public/../api/x` matched `/public/` here but was `/api/x` to nginx. So the
//! gateway routes on, and forwards, one normal form, and refuses the paths whose meaning
//! still depends on who reads them:
//!
//! - percent-encoded unreserved characters are decoded and the remaining hex is upper-cased
//!   (RFC 3986 §6.2.2.1, §6.2.2.2): `%61pi` is `api`, `%2e%2e` is `..`, `%c3%a9` is `%C3%A9`;
//! - characters a URI may not hold raw (non-ASCII, space, `"`, `<`, `>`, `{`, `}`, `|`, `^`,
//!   `` ` ``, `[`, `]`) are percent-encoded, as browsers do (RFC 3987 §3.1), so the
//!   forwarded path is always a valid RFC 3986 `path-absolute`;
//! - dot segments are removed after that decoding (RFC 3986 §5.2.4), and repeated slashes
//!   are merged (an empty segment means nothing to most servers and `//x` to some);
//! - refused ([`PathError`]): an encoded slash or backslash (`%2F`, `%5C`; see
//!   [`EscapedSlashes`]), a raw backslash (a separator on Windows and to WHATWG URL
//!   parsers), an encoded or raw control character, a disguised dot segment (`..;`, which
//!   Tomcat reads as `..`; `..%20` and `...`, which Windows may trim to `..`), a dot
//!   segment climbing above the root, invalid percent-encoding, a double-encoded octet
//!   (`%25` followed by two hex digits: `..` to a server that decodes twice), and anything
//!   not starting with `/` (`*`, authority-form).
//!
//! Reserved characters (`:@!$&'()*+,;=`) stay exactly as sent, raw or encoded: RFC 3986
//! §6.2.2.2 says decoding them may change the meaning. Route prefixes therefore may not
//! hold them (the configuration refuses such a prefix), so no spelling of them can move a
//! request between routes. Path parameters (`/admin;x/`) are legal here; the routing layer
//! refuses the ones that would change the route for a server that drops them
//! ([`without_parameters`]).
//!
//! Trade-off: this runs on every request, so an already-normal path (the common case) is
//! recognised by one scan and returned borrowed, without allocating. Only a path that needs
//! rewriting pays for a `String`.

use std::borrow::Cow;

use crate::keyword::keyword_enum;

keyword_enum! {
    /// What to do with `%2F` (encoded `/`) and `%5C` (encoded `\`) in a path
    /// (`server.escaped_slashes`).
    #[derive(Default)]
    pub enum EscapedSlashes {
        /// Refuse the request with 400 (default). Many servers decode `%2F` before routing,
        /// so `/public/..%2Fapi/x` would be `/api/x` to them but one `/public/` segment here.
        #[default]
        Reject = "reject",
        /// Keep them encoded (hex upper-cased); they separate no segments here. Safe only if
        /// every upstream behind the gateway treats `%2F` as data, never as a separator.
        Keep = "keep",
    }
}

/// Why a path is refused. The message names the rule, never the path (paths can carry
/// secrets and are not logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `*`, an authority-form target or anything else not starting with `/`.
    #[error("the request target is not an absolute path")]
    NotAbsolute,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    InvalidPercentEncoding,
    /// `%2F` or `%5C` with [`EscapedSlashes::Reject`].
    #[error("an encoded slash or backslash (%2F, %5C)")]
    EncodedSlash,
    /// A raw `\`.
    #[error("a backslash")]
    Backslash,
    /// `%00`–`%1F`, `%7F`, or such a byte raw.
    #[error("a control character")]
    ControlCharacter,
    /// `%25` followed by two hex digits (after decoding), e.g. `%252e`.
    #[error("a double-encoded octet (%25 followed by hex digits)")]
    DoubleEncoding,
    /// A dot segment with a parameter (`.;x`, `..;x`, `..%3Bx`), which Tomcat and Spring
    /// read as `.` / `..`, or padded with dots or spaces (`...`, `..%20`), which Windows
    /// servers may trim to `..`.
    #[error("a disguised dot segment (..;, ..%20, ...)")]
    DisguisedDotSegment,
    /// More `..` than there are segments to remove.
    #[error("a dot segment climbing above the root")]
    AboveRoot,
}

/// The normal form of `raw` (the path of a request target, without query), or why it is
/// refused. Borrowed exactly when `raw` is already normal. The result starts with `/`, is
/// ASCII, and normalizing it again returns it unchanged.
pub fn normalize(raw: &str, escaped_slashes: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    if is_normal(raw.as_bytes(), escaped_slashes) {
        return Ok(Cow::Borrowed(raw));
    }
    let normal = rewrite(raw.as_bytes(), escaped_slashes)?;
    if normal == raw {
        Ok(Cow::Borrowed(raw))
    } else {
        Ok(Cow::Owned(normal))
    }
}

/// `path` with every segment's parameters (from the first `;` or `%3B` to the end of the
/// segment) removed, normalized again: the path a server that drops path parameters
/// (Tomcat, Jetty, Spring) would serve. `path` must be normal.
pub fn without_parameters(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.contains(';') && !path.contains("%3B") {
        return Ok(Cow::Borrowed(path));
    }
    let mut bare = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            bare.push('/');
        }
        let end = [segment.find(';'), segment.find("%3B")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(segment.len());
        bare.push_str(&segment[..end]);
    }
    // Dropping a parameter can leave an empty segment (`/;x/api`); normalizing again
    // merges it as such a server would. (A dot segment with a parameter never gets here:
    // `normalize` refused it.)
    normalize(&bare, EscapedSlashes::Keep).map(|n| Cow::Owned(n.into_owned()))
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes kept raw in a normal path: unreserved, sub-delims, `:`, `@` (RFC 3986 §3.3 `pchar`).
fn is_plain(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7F
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The one scan of the fast path: true only if `path` is certainly normal. Conservative:
/// a `false` just means [`rewrite`] decides.
fn is_normal(path: &[u8], escaped_slashes: EscapedSlashes) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'/' => {
                // `//`, and segments that are or may be dot segments (`.`, `..`, `.;`,
                // `..;`, `.%3B`): let the full pass decide.
                let next = path.get(i + 1..);
                if let Some([b'/', ..] | [b'.'] | [b'.', b'/' | b'.' | b';' | b'%', ..]) = next {
                    return false;
                }
                i += 1;
            }
            b'%' => {
                let (Some(hi), Some(lo)) = (path.get(i + 1), path.get(i + 2)) else {
                    return false;
                };
                if !hi.is_ascii_hexdigit() || hi.is_ascii_lowercase() {
                    return false;
                }
                if !lo.is_ascii_hexdigit() || lo.is_ascii_lowercase() {
                    return false;
                }
                let octet = (hex_value(*hi).unwrap_or(0) << 4) | hex_value(*lo).unwrap_or(0);
                let stays = !is_unreserved(octet)
                    && !is_control(octet)
                    && octet != b'%'
                    && (escaped_slashes == EscapedSlashes::Keep || !matches!(octet, b'/' | b'\\'));
                if !stays {
                    return false;
                }
                i += 3;
            }
            b if is_plain(b) => i += 1,
            _ => return false,
        }
    }
    true
}

/// One unit of a path after percent-decoding: a byte as sent, or an octet that was
/// percent-encoded.
#[derive(Clone, Copy)]
enum Unit {
    Raw(u8),
    Encoded(u8),
}

/// The unit at `path[i..]` and its length in bytes.
fn unit_at(path: &[u8], i: usize) -> Result<(Unit, usize), PathError> {
    if path[i] != b'%' {
        return Ok((Unit::Raw(path[i]), 1));
    }
    let hi = path.get(i + 1).copied().and_then(hex_value);
    let lo = path.get(i + 2).copied().and_then(hex_value);
    match (hi, lo) {
        (Some(hi), Some(lo)) => Ok((Unit::Encoded((hi << 4) | lo), 3)),
        _ => Err(PathError::InvalidPercentEncoding),
    }
}

/// The character a unit stands for once unreserved octets are decoded, for the
/// double-encoding check (`%25%32%65` is `%252e`).
fn decoded_char(unit: Unit) -> u8 {
    match unit {
        Unit::Raw(b) => b,
        Unit::Encoded(b) if is_unreserved(b) => b,
        // Not a hex digit: stands for "something else".
        Unit::Encoded(_) => 0,
    }
}

fn push_encoded(out: &mut String, octet: u8) {
    out.push('%');
    out.push(char::from(HEX_UPPER[usize::from(octet >> 4)]));
    out.push(char::from(HEX_UPPER[usize::from(octet & 0x0F)]));
}

/// The full pass: decode, check, encode, then remove dot segments and merge slashes.
fn rewrite(path: &[u8], escaped_slashes: EscapedSlashes) -> Result<String, PathError> {
    if path.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Segments of the output so far (the RFC 3986 §5.2.4 output buffer as a stack), and the
    // segment being read.
    let mut segments: Vec<String> = Vec::new();
    let mut segment = String::new();
    // Whether the path ends in a slash: set by a final empty or dot segment.
    let mut trailing_slash;
    let mut i = 1;
    loop {
        let at_end = i >= path.len();
        if at_end || path[i] == b'/' {
            trailing_slash = true;
            match segment.as_str() {
                "" | "." => {}
                ".." => {
                    if segments.pop().is_none() {
                        return Err(PathError::AboveRoot);
                    }
                }
                s if is_disguised_dot_segment(s) => return Err(PathError::DisguisedDotSegment),
                _ => {
                    segments.push(std::mem::take(&mut segment));
                    trailing_slash = false;
                }
            }
            segment.clear();
            if at_end {
                break;
            }
            i += 1;
            continue;
        }
        let (unit, len) = unit_at(path, i)?;
        match unit {
            Unit::Raw(b'\\') => return Err(PathError::Backslash),
            Unit::Raw(b) | Unit::Encoded(b) if is_control(b) => {
                return Err(PathError::ControlCharacter)
            }
            Unit::Raw(b) if is_plain(b) => segment.push(char::from(b)),
            // Non-ASCII and the ASCII a URI may not hold raw.
            Unit::Raw(b) => push_encoded(&mut segment, b),
            Unit::Encoded(b) if is_unreserved(b) => segment.push(char::from(b)),
            Unit::Encoded(b'/' | b'\\') if escaped_slashes == EscapedSlashes::Reject => {
                return Err(PathError::EncodedSlash)
            }
            Unit::Encoded(b'%') => {
                let next = |at: usize| -> Result<Option<(u8, usize)>, PathError> {
                    if at >= path.len() {
                        return Ok(None);
                    }
                    let (u, l) = unit_at(path, at)?;
                    Ok(Some((decoded_char(u), l)))
                };
                if let Some((first, l)) = next(i + len)? {
                    if let Some((second, _)) = next(i + len + l)? {
                        if first.is_ascii_hexdigit() && second.is_ascii_hexdigit() {
                            return Err(PathError::DoubleEncoding);
                        }
                    }
                }
                push_encoded(&mut segment, b'%');
            }
            Unit::Encoded(b) => push_encoded(&mut segment, b),
        }
        i += len;
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// `.;…`, `..;…`, `.%3B…`, `..%3B…`, and segments of dots and spaces other than `.` and
/// `..` (`...`, `..%20`, `. .`). `segment` is decoded already and is not `.` or `..`.
fn is_disguised_dot_segment(segment: &str) -> bool {
    let Some(rest) = segment
        .strip_prefix("..")
        .or_else(|| segment.strip_prefix('.'))
    else {
        return false;
    };
    if rest.starts_with(';') || rest.starts_with("%3B") {
        return true;
    }
    let mut padding = rest;
    loop {
        if let Some(r) = padding.strip_prefix('.') {
            padding = r;
        } else if let Some(r) = padding.strip_prefix("%20") {
            padding = r;
        } else {
            return padding.is_empty();
        }
    }
}

#[cfg(test)]
mod tests;
