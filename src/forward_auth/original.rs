//! The original request behind a forward-auth subrequest: its method and path, recovered
//! from the shape each ingress gives its subrequest. Pure functions, no I/O.
//!
//! | ingress | original method | original URI |
//! |---|---|---|
//! | nginx `auth_request`, ingress-nginx (with `auth-method`) | `X-Original-Method` | `X-Original-URI` |
//! | Traefik `ForwardAuth`, Caddy `forward_auth` | `X-Forwarded-Method` | `X-Forwarded-Uri` |
//! | Envoy `ext_authz` (HTTP service) | the subrequest's own method | the subrequest's path after the endpoint: `/_gateway/auth/api/x` asks about `/api/x` |
//!
//! An ingress copies the client's own headers into its subrequest (nginx all of them,
//! Traefik all unless `authRequestHeaders` is set, Caddy all), so a client can add the
//! headers of *another* ingress's shape: `X-Forwarded-Uri: /public/x` next to the
//! `X-Original-URI: /api/x` nginx set. Precedence alone would let the client choose which
//! request is decided whenever the forged shape ranks first. So there is no precedence
//! that matters: every source present must name the same request (paths compared in
//! normal form, methods exactly), and any disagreement is refused. The recovered path is
//! the first present of the Envoy suffix, `X-Original-URI`, `X-Forwarded-Uri`.
//!
//! Refused ([`OriginalError`], answered 400): no original URI at all; a header shape with
//! no method header; a header sent twice; a value that is not a request target or method;
//! sources that disagree. An absolute-form URI (`http://host/api/x`) is read as a request
//! line's would be: its path decides. The query never decides anything and is dropped,
//! as are `X-Forwarded-Host` and `X-Forwarded-Proto`: routes match paths, not hosts, so
//! reading them could only add ways to fail.
//!
//! `X-Original-URL`, which ingress-nginx always sends (`$scheme://$http_host$request_uri`),
//! is not read: `$http_host` is the client's own `Host`, and nginx accepts a `Host` holding
//! `?` or `#`, which moves the real path out of the URL's path (`Host: x#` gives
//! `http://x#/api/x`, whose path is `/`). ingress-nginx sends `X-Original-URI` once the
//! `auth-method` annotation is set, as `deploy/ingress-nginx/` does.
//!
//! The URI headers are parsed with `http::Uri`, the parser hyper applies to request
//! targets, so a proxied request and a forward-auth subrequest naming the same target
//! are decided on the same path.

use http::header::{HeaderMap, HeaderName};
use http::{Method, Uri};

use crate::path::{self, EscapedSlashes};

/// nginx `auth_request` (`proxy_set_header X-Original-URI $request_uri`), ingress-nginx.
pub static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
pub static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
/// Traefik `ForwardAuth`, Caddy `forward_auth`.
pub static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
pub static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");

/// What the ingress asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub method: Method,
    /// The path as the client sent it (not yet normalized), without query or fragment.
    pub path: String,
}

/// Why the original request cannot be told. The message names headers, never values
/// (they hold paths, which can carry secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OriginalError {
    #[error("no original URI (X-Original-URI, X-Forwarded-Uri, or a path after the endpoint's)")]
    MissingUri,
    #[error("no original method (X-Original-Method or X-Forwarded-Method)")]
    MissingMethod,
    #[error("{0} is sent more than once")]
    Repeated(&'static str),
    #[error("{0} is not a request target")]
    InvalidUri(&'static str),
    #[error("{0} is not an HTTP method")]
    InvalidMethod(&'static str),
    #[error("{0} and {1} name different requests")]
    Disagree(&'static str, &'static str),
}

/// Where a value came from, for error messages.
const ENVOY_PATH: &str = "the path after the endpoint";
const ENVOY_METHOD: &str = "the subrequest's method";

/// The original request of a subrequest with `method` and `path` (the path of its target,
/// without query) to the endpoint at `endpoint`, and `headers`. `path` must be `endpoint`
/// or start with `endpoint/`. `escaped_slashes` is the path policy the sources' paths are
/// compared under.
pub fn recover(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    endpoint: &str,
    escaped_slashes: EscapedSlashes,
) -> Result<Original, OriginalError> {
    // Envoy: the endpoint followed by the original path (which starts with `/`).
    let suffix = path
        .strip_prefix(endpoint)
        .filter(|rest| rest.starts_with('/'));
    let mut paths: Vec<(&'static str, String)> = Vec::with_capacity(3);
    if let Some(rest) = suffix {
        paths.push((ENVOY_PATH, rest.to_owned()));
    }
    for name in [&X_ORIGINAL_URI, &X_FORWARDED_URI] {
        if let Some(uri) = target_path(headers, name)? {
            paths.push((name.as_str(), uri));
        }
    }
    let Some((first_source, first)) = paths.first() else {
        return Err(OriginalError::MissingUri);
    };
    for (source, other) in &paths[1..] {
        if !same_path(first, other, escaped_slashes) {
            return Err(OriginalError::Disagree(first_source, source));
        }
    }

    let mut methods: Vec<(&'static str, Method)> = Vec::with_capacity(3);
    if suffix.is_some() {
        methods.push((ENVOY_METHOD, method.clone()));
    }
    for name in [&X_ORIGINAL_METHOD, &X_FORWARDED_METHOD] {
        if let Some(m) = header_method(headers, name)? {
            methods.push((name.as_str(), m));
        }
    }
    let Some((first_source, first_method)) = methods.first() else {
        return Err(OriginalError::MissingMethod);
    };
    if let Some((source, _)) = methods[1..].iter().find(|(_, m)| m != first_method) {
        return Err(OriginalError::Disagree(first_source, source));
    }
    Ok(Original {
        method: first_method.clone(),
        path: first.clone(),
    })
}

/// The one value of header `name`, if sent.
fn single<'a>(
    headers: &'a HeaderMap,
    name: &'static HeaderName,
) -> Result<Option<&'a http::HeaderValue>, OriginalError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(OriginalError::Repeated(name.as_str()));
    }
    Ok(first)
}

/// The path of the request target in header `name`, if sent. Origin-form and
/// absolute-form (`http://host/x`) are request targets; the path of anything else (`*`,
/// `host:443`) is not absolute and the path policy refuses it later.
fn target_path(
    headers: &HeaderMap,
    name: &'static HeaderName,
) -> Result<Option<String>, OriginalError> {
    let Some(value) = single(headers, name)? else {
        return Ok(None);
    };
    let uri =
        Uri::try_from(value.as_bytes()).map_err(|_| OriginalError::InvalidUri(name.as_str()))?;
    Ok(Some(uri.path().to_owned()))
}

fn header_method(
    headers: &HeaderMap,
    name: &'static HeaderName,
) -> Result<Option<Method>, OriginalError> {
    let Some(value) = single(headers, name)? else {
        return Ok(None);
    };
    Method::from_bytes(value.as_bytes())
        .map(Some)
        .map_err(|_| OriginalError::InvalidMethod(name.as_str()))
}

/// Whether two spellings name one path: equal as sent, or equal in normal form. A path
/// the policy refuses equals only itself.
fn same_path(a: &str, b: &str, escaped_slashes: EscapedSlashes) -> bool {
    if a == b {
        return true;
    }
    match (
        path::normalize(a, escaped_slashes),
        path::normalize(b, escaped_slashes),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
