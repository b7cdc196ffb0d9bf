//! What the emulator accepts as a request body: JSON, declared as JSON, at most
//! [`MAX_BODY`] bytes, with every refusal in the error envelope.
//!
//! Bodies are read as bytes and parsed here rather than with axum's `Json`, whose
//! rejections are plain text. An empty body counts as `{}` and needs no `Content-Type`.
//! A non-empty one must say `application/json` (parameters such as `charset` allowed), or
//! 415: HTML forms (`application/x-www-form-urlencoded`, `multipart/form-data`) and
//! `text/plain` posts are what any web page can send cross-site without a preflight.
//! One exception keeps the official SDK working: `@cloudbase/oauth` hands `fetch` its
//! JSON as a string, which `fetch` labels `text/plain;charset=UTF-8`, so `text/plain` is
//! read as JSON when the request also carries `x-device-id` — a header CloudBase asks of
//! every client, the SDK always sends, and a cross-site "simple" request cannot carry.
//! The seed guide's curl lines (`--data-raw` without `-H 'Content-Type: application/json'`)
//! send a form type and are refused with a description that says what to add.
//!
//! Size: a declared `Content-Length` over the limit is refused before a byte of the body
//! is read ([`declared_too_large`], applied to every path); a chunked body is read up to
//! the limit and refused as soon as it passes it, without waiting for the rest. Unknown
//! fields are ignored, as the real service does with the SDK's extras (`client_id`,
//! `verification_code` at sign-up…).

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorKind};

/// The largest request body the emulator reads: 64 KiB. CloudBase's requests are a few
/// hundred bytes (tokens are at most 4 KiB); nothing legitimate comes near it.
pub const MAX_BODY: usize = 64 * 1024;

fn too_large() -> ApiError {
    ApiError::new(
        ErrorKind::PayloadTooLarge,
        format!("request body is larger than {MAX_BODY} bytes"),
    )
}

/// A `Content-Length` over [`MAX_BODY`]: refused before the body is read.
pub fn declared_too_large(headers: &HeaderMap) -> Option<ApiError> {
    let declared = headers.get(header::CONTENT_LENGTH)?.to_str().ok()?;
    let n: u64 = declared.trim().parse().ok()?;
    (n > MAX_BODY as u64).then(too_large)
}

/// The media type of the one `Content-Type` header, lower-cased, without parameters;
/// `None` when absent or sent more than once.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let value = value.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

/// `Content-Type: application/json`, with any parameters (RFC 8259 §11).
pub fn declares_json(headers: &HeaderMap) -> bool {
    media_type(headers).as_deref() == Some("application/json")
}

/// Whether a non-empty body with these headers may be read as JSON (see the module docs).
fn json_allowed(headers: &HeaderMap) -> bool {
    match media_type(headers).as_deref() {
        Some("application/json") => true,
        Some("text/plain") => headers.contains_key("x-device-id"),
        _ => false,
    }
}

/// A JSON body whose every failure is answered in the envelope: 413 when too large, 415
/// when not declared JSON, 400 `invalid_argument` when malformed.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        if let Some(e) = declared_too_large(&parts.headers) {
            return Err(e);
        }
        let bytes = read_limited(body).await?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else if json_allowed(&parts.headers) {
            &bytes
        } else {
            return Err(ApiError::new(
                ErrorKind::UnsupportedMediaType,
                "the body must be JSON sent with `Content-Type: application/json`",
            ));
        };
        let mut de = serde_json::Deserializer::from_slice(text);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                ApiError::invalid_argument(format!("invalid JSON body: {}", e.inner()))
            } else {
                ApiError::invalid_argument(format!("invalid JSON body at `{path}`: {}", e.inner()))
            }
        })?;
        de.end()
            .map_err(|e| ApiError::invalid_argument(format!("invalid JSON body: {e}")))?;
        Ok(JsonBody(value))
    }
}

/// The body, up to [`MAX_BODY`] bytes; stops reading as soon as it passes the limit.
async fn read_limited(body: Body) -> Result<bytes::Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::invalid_argument(format!(
            "cannot read the body: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn json_is_application_json_with_any_parameters_and_once() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
        ] {
            assert!(declares_json(&headers(&[("content-type", ok)])), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonp",
            "",
        ] {
            assert!(!declares_json(&headers(&[("content-type", bad)])), "{bad}");
        }
        assert!(!declares_json(&headers(&[])));
        assert!(!declares_json(&headers(&[
            ("content-type", "application/json"),
            ("content-type", "text/plain"),
        ])));
    }

    #[test]
    fn text_plain_is_json_only_from_a_client_sending_a_device_id() {
        let sdk = headers(&[
            ("content-type", "text/plain;charset=UTF-8"),
            ("x-device-id", "fedcba9876543210"),
        ]);
        assert!(json_allowed(&sdk));
        assert!(!json_allowed(&headers(&[("content-type", "text/plain")])));
        let form = headers(&[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-device-id", "backend-service-1"),
        ]);
        assert!(!json_allowed(&form));
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let at = |n: usize| headers(&[("content-length", &n.to_string())]);
        assert!(declared_too_large(&at(MAX_BODY)).is_none());
        let e = declared_too_large(&at(MAX_BODY + 1)).unwrap();
        assert_eq!(e.kind.status(), 413);
        assert!(declared_too_large(&at(50 << 20)).is_some());
        assert!(declared_too_large(&headers(&[])).is_none());
    }
}
