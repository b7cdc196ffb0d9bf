//! When a request whose upstream exchange failed is sent once more.
//!
//! Pooled keep-alive connections race the upstream's idle timeout: the upstream closes a
//! connection just as the gateway sends a request on it (gunicorn closes after 2 s idle,
//! Node.js after 5 s; some servers after every response). Without a retry the user gets a
//! 502 for a request the upstream never saw or could safely see twice. The rule:
//!
//! - A request that provably never reached the upstream is retried, whatever its method:
//!   the connection could not be opened, or the connection was found closed before a
//!   byte of the request was written. (The HTTP client itself already resends such a
//!   request when it was queued on a reused pooled connection, body and all.)
//! - An idempotent request (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) is
//!   retried when the exchange failed before a complete response head came back.
//! - Never a non-idempotent request (POST, PATCH, …) that may have reached the upstream:
//!   a proxy must not repeat it on its own (RFC 9110 §9.2.2).
//! - Never a request with a body: bodies stream through and no copy is kept, so there is
//!   nothing to send again. An empty body (no body, `Content-Length: 0`) is replayable.
//!
//! One retry at most, over a new connection, so it cannot meet a second stale one; within
//! `request_timeout` like the first try. The price: for each request with an empty body
//! the head (method, URI, headers) is cloned before sending, since the client consumes it.

use std::error::Error as StdError;

use http::{HeaderMap, Method, Request, Uri, Version};
use hyper::body::Body as _;

use crate::response::{empty, Body};

/// Whether `method` is idempotent (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether a failed exchange provably never sent a byte of the request: the connection
/// could not be opened, or it closed before the request was started (the HTTP client
/// reports that as canceled and hands the request back).
pub fn never_sent(error: &hyper_util::client::legacy::Error) -> bool {
    if error.is_connect() {
        return true;
    }
    let mut source: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(e) = source {
        if let Some(hyper_error) = e.downcast_ref::<hyper::Error>() {
            return hyper_error.is_canceled();
        }
        source = e.source();
    }
    false
}

/// The decision, given what is known about the failure.
pub fn may_retry(method: &Method, never_sent: bool) -> bool {
    never_sent || is_idempotent(method)
}

/// A copy of a request with an empty body, to send it again.
pub struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    /// A copy of `req`, or `None` when its body is not known to be empty.
    pub fn capture(req: &Request<Body>) -> Option<Replay> {
        let body = req.body();
        let empty = body.is_end_stream() || body.size_hint().exact() == Some(0);
        empty.then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request again, with an empty body.
    pub fn into_request(self) -> Request<Body> {
        let mut req = Request::new(empty());
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::full;

    #[test]
    fn only_rfc_9110_idempotent_methods_are_retried_after_sending() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(may_retry(&m, false), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "LOCK"] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(!may_retry(&m, false), "{m} may have reached the upstream");
            assert!(may_retry(&m, true), "{m} never left the gateway");
        }
    }

    #[test]
    fn a_request_with_a_body_is_never_captured_for_replay() {
        let with_body = Request::post("http://u/x").body(full("data")).unwrap();
        assert!(Replay::capture(&with_body).is_none());
        let empty_put = Request::put("http://u/x")
            .header("x-a", "1")
            .body(empty())
            .unwrap();
        let again = Replay::capture(&empty_put).unwrap().into_request();
        assert_eq!(again.method(), Method::PUT);
        assert_eq!(again.uri(), "http://u/x");
        assert_eq!(again.headers()["x-a"], "1");
        assert!(again.body().is_end_stream());
    }
}
