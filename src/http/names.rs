//! Header names the gateway sets or reads beyond the standard ones `http::header` has,
//! built once (`HeaderName::from_static`), never parsed per request. The identity header
//! names are configuration (`config::IdentitySettings`), not here.

use http::HeaderName;

/// Kept from the client or generated (`stack`), returned, sent upstream and to CloudBase.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The client chain (de-facto standard; RFC 7239 gives its meaning).
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `http` or `https`, as the client connected.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The authority the client asked for.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The client's address, as nginx sets it.
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
