//! Response framing: the header that says how long a forwarded body is must describe the
//! body the gateway sends, not the one the upstream sent.
//!
//! The HTTP client de-frames the upstream's message (decodes chunks, counts a declared
//! length) and the server frames it again for the client, in HTTP/1.1 or HTTP/2. A
//! `Content-Length` carried across unchanged is a lie whenever the two framings differ:
//! beside `Transfer-Encoding` it made clients cut a 59-byte body at 10 bytes, show an
//! empty 200, hang up mid-body or fail HTTP/2 streams with `PROTOCOL_ERROR`. So the length
//! is taken from the body the gateway holds, and the upstream's header is believed only
//! where no body is sent and the header describes the representation instead. The cost:
//! none; the body's length is already known to the client that decoded it.

use http::header::{HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode};

/// Makes `Content-Length` true for the response the gateway is about to send. Run it
/// before the hop-by-hop headers (`Transfer-Encoding` among them) are removed.
/// `body_len` is the exact length of the body as the client decoded it, when known.
///
/// - 1xx and 204: removed; a server must not send it (RFC 9110 §8.6).
/// - With `Transfer-Encoding`: removed. It overrides `Content-Length`, and an
///   intermediary must remove the latter before forwarding (RFC 9112 §6.3 ¶3).
/// - A response to HEAD, and 304: kept when it is one valid length, since it gives the
///   size of the representation a GET would get, not of this empty body (RFC 9110 §8.6).
/// - Any other response: `body_len`, or no `Content-Length` when the length is unknown
///   (the server then frames the body by chunks or, in HTTP/2, by the stream's end).
pub fn frame_response(
    headers: &mut HeaderMap,
    status: StatusCode,
    method: &Method,
    body_len: Option<u64>,
) {
    let no_body_allowed = status.is_informational() || status == StatusCode::NO_CONTENT;
    if no_body_allowed || headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
        return;
    }
    let declared_only = *method == Method::HEAD || status == StatusCode::NOT_MODIFIED;
    let length = if declared_only {
        content_length(headers)
    } else {
        body_len
    };
    match length {
        Some(n) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        None => {
            headers.remove(CONTENT_LENGTH);
        }
    }
}

/// The one length all `Content-Length` values agree on (`10`, `10, 10` and two `10` lines
/// are one length, RFC 9110 §8.6); `None` when absent, malformed or contradictory.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut agreed: Option<u64> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.to_str().ok()?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = part.parse().ok()?;
            if agreed.is_some_and(|a| a != n) {
                return None;
            }
            agreed = Some(n);
        }
    }
    agreed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn framed(pairs: &[(&str, &str)], status: u16, method: Method, len: Option<u64>) -> HeaderMap {
        let mut h = headers(pairs);
        frame_response(&mut h, StatusCode::from_u16(status).unwrap(), &method, len);
        h
    }

    #[test]
    fn transfer_encoding_beside_a_stale_length_drops_the_length() {
        let h = framed(
            &[("content-length", "10"), ("transfer-encoding", "chunked")],
            200,
            Method::GET,
            None,
        );
        assert!(h.get(CONTENT_LENGTH).is_none(), "{h:?}");
        let h = framed(
            &[("content-length", "0"), ("transfer-encoding", "chunked")],
            200,
            Method::HEAD,
            Some(0),
        );
        assert!(h.get(CONTENT_LENGTH).is_none(), "TE wins on HEAD too");
    }

    #[test]
    fn a_body_of_known_length_is_declared_with_that_length() {
        let h = framed(&[("content-length", "10, 10")], 200, Method::GET, Some(10));
        assert_eq!(h[CONTENT_LENGTH], "10");
        assert_eq!(h.get_all(CONTENT_LENGTH).iter().count(), 1);
        let h = framed(&[("content-length", "999")], 200, Method::GET, None);
        assert!(
            h.get(CONTENT_LENGTH).is_none(),
            "unknown length: no promise"
        );
    }

    #[test]
    fn head_and_304_keep_the_representations_length() {
        let h = framed(&[("content-length", "1234")], 200, Method::HEAD, Some(0));
        assert_eq!(h[CONTENT_LENGTH], "1234");
        let h = framed(&[("content-length", "1234")], 304, Method::GET, Some(0));
        assert_eq!(h[CONTENT_LENGTH], "1234");
        let h = framed(&[("content-length", "12, 13")], 200, Method::HEAD, Some(0));
        assert!(h.get(CONTENT_LENGTH).is_none(), "contradictory: dropped");
        let h = framed(&[("content-length", "+5")], 304, Method::GET, Some(0));
        assert!(h.get(CONTENT_LENGTH).is_none(), "malformed: dropped");
    }

    #[test]
    fn no_content_and_informational_answers_carry_no_length() {
        let h = framed(&[("content-length", "5")], 204, Method::GET, Some(0));
        assert!(h.get(CONTENT_LENGTH).is_none());
        let h = framed(&[("content-length", "5")], 101, Method::GET, Some(0));
        assert!(h.get(CONTENT_LENGTH).is_none());
    }
}
