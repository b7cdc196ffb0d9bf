//! [`MakeRequestId`]: the `x-request-id` the gateway makes for a request that came without
//! one — a UUID v4, as tower-http's `MakeRequestUuid` makes, for less.
//!
//! `MakeRequestUuid` draws each id from the operating system (one `getrandom` system call
//! per request), formats it through `Display` into a new `String` and parses that back into
//! a header value. Here the 122 random bits come from uuid's `fast-rng` (a thread-local
//! ChaCha generator the operating system seeds), and the id is written as text straight
//! into the header value's buffer. A request id is a label for matching log lines, not a
//! secret, so a seeded generator is enough; it is still unpredictable to clients.

use bytes::Bytes;
use http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

/// Makes UUID v4 request ids; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeRequestUuidV4;

impl MakeRequestId for MakeRequestUuidV4 {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        Some(RequestId::new(new_request_id()))
    }
}

/// A fresh request id: a hyphenated lower-case UUID v4.
pub fn new_request_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    // Hex digits and hyphens only, so this cannot fail.
    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(&text))
        .expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_uuid_v4_text() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(a.len(), 36);
        assert_eq!(a.to_str().unwrap(), a.to_str().unwrap().to_lowercase());
    }
}
