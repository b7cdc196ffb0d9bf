//! The body type of every request and response inside the gateway, and its error.
//!
//! One boxed body type (`UnsyncBoxBody`) for everything: the client's streaming body, an
//! upstream's, and the gateway's own small answers. Boxing costs an allocation per body;
//! in exchange every layer and the leaf service share one concrete type instead of a
//! generic parameter threaded through the whole stack.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

/// Errors flowing through bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response inside the stack.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes` in full.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// Reading the client's request body failed: malformed chunked framing, a body cut short,
/// a broken HTTP/2 stream. Wraps every client body error where the server hands the body
/// to the stack, so wherever that body is read (the upstream call, `whoami`) the failure
/// is known to be the client's (400), not the upstream's (502).
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body failed")]
pub struct ClientBodyError(#[source] pub BoxError);
