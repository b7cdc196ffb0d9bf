//! The answers the gateway makes itself (SPEC "Responses the gateway makes itself"),
//! typed: a layer that refuses a request returns a [`Rejection`] as its service error, and
//! one layer near the top of the stack (`stack::rescue`) renders every one. So the JSON
//! envelope `{"code", "message", "requestId"}` and the extra headers of each case live in
//! one table ([`Reject`]), and no layer looks up the request id to answer.
//!
//! A rejection carries the [`RequestContext`] of its request once there is one (the route
//! layer or a divert made it), so a 405 or a 504 is logged and counted under its route like
//! any answer. What only the refusing layer knows travels with it as extra headers (the
//! rate-limit fields of a 429, the relay's CORS headers). A refusal of a forward-auth
//! subrequest also repeats its envelope in [`X_GATEWAY_REJECTION`]. A new case of the table
//! is a variant of [`Reject`] with its status, code and message below.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};

use crate::http::{full, Body, ClientBodyError};
use crate::metrics::RequestKind;
use crate::routing::RequestContext;

/// On every refusal of a forward-auth subrequest: the JSON envelope of the body, repeated.
/// nginx `auth_request` drops the auth response's body, so this is how the shipped nginx
/// snippet gives clients the envelope (`deploy/nginx/`); other ingresses pass the body.
pub static X_GATEWAY_REJECTION: HeaderName = HeaderName::from_static("x-gateway-rejection");

/// A request the gateway answers itself: why, and what the stack knew of the request.
/// The error type of every service below the rescue layer.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub reason: Reject,
    /// The route (and identity, if known) the request had when it was refused; `None`
    /// before routing (an ambiguous `Host`, a refused path, no route).
    pub context: Option<RequestContext>,
    /// Headers the refusing layer adds to the answer, beside the table's own (empty for
    /// most; a `HeaderMap` without entries does not allocate).
    pub headers: HeaderMap,
}

impl From<Reject> for Rejection {
    fn from(reason: Reject) -> Rejection {
        Rejection {
            reason,
            context: None,
            headers: HeaderMap::new(),
        }
    }
}

impl Rejection {
    /// `reason`, for a request whose context is `context`.
    pub fn with_context(reason: Reject, context: RequestContext) -> Rejection {
        Rejection {
            context: Some(context),
            ..Rejection::from(reason)
        }
    }

    /// The same, with `headers` added to the answer (appended after the table's own).
    pub fn with_headers(mut self, headers: HeaderMap) -> Rejection {
        append_all(&mut self.headers, headers);
        self
    }

    /// The response (see [`Reject::into_response`]), with the extra headers, the envelope
    /// repeated in [`X_GATEWAY_REJECTION`] for forward-auth, and the context in its
    /// extensions. Called by the rescue layer only.
    pub(crate) fn into_response(self, request_id: Option<&HeaderValue>) -> Response<Body> {
        let forward_auth = self
            .context
            .as_ref()
            .is_some_and(|c| c.kind == RequestKind::ForwardAuth);
        let envelope = forward_auth.then(|| self.reason.envelope(request_id));
        let mut response = self.reason.into_response(request_id);
        let headers = response.headers_mut();
        append_all(headers, self.headers);
        if let Some(value) = envelope.and_then(|e| HeaderValue::from_str(&e).ok()) {
            headers.insert(X_GATEWAY_REJECTION.clone(), value);
        }
        if let Some(context) = self.context {
            context.attach(&mut response);
        }
        response
    }
}

/// Appends every value of `from` to `into`, in order, keeping what `into` has.
fn append_all(into: &mut HeaderMap, from: HeaderMap) {
    let mut last = None;
    for (name, value) in from {
        // `None` repeats the last name: its further values, in order.
        if let Some(name) = name {
            last = Some(name);
        }
        if let Some(name) = &last {
            into.append(name, value);
        }
    }
}

/// What a request failing while its body was read means for the client: 413 when the
/// body outgrew `max_body_size` (`http_body_util::Limited` tripped), 400 when the client's
/// body itself was broken ([`ClientBodyError`]), `None` when neither is in `e`'s chain.
pub fn client_body_fault(e: &(dyn std::error::Error + 'static)) -> Option<Reject> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return Some(Reject::PayloadTooLarge);
        }
        if err.is::<ClientBodyError>() {
            return Some(Reject::BadRequest);
        }
        cur = err.source();
    }
    None
}

/// A case of SPEC's table of the gateway's own responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    MissingCredentials,
    InvalidToken,
    Forbidden,
    AuthUnavailable,
    NotFound,
    MethodNotAllowed {
        allow: HeaderValue,
    },
    PayloadTooLarge,
    UpstreamUnavailable,
    UpstreamTimeout,
    Overloaded,
    /// A per-client limit is spent; `retry_after` whole seconds until the next request
    /// would pass.
    RateLimited {
        retry_after: u64,
    },
    /// A bad request head the gateway cannot forward (e.g. an unroutable URI).
    BadRequest,
}

const REALM: &str = "Bearer realm=\"cloudbase-gateway\"";

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::MissingCredentials | Reject::InvalidToken => StatusCode::UNAUTHORIZED,
            Reject::Forbidden => StatusCode::FORBIDDEN,
            Reject::AuthUnavailable | Reject::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Reject::NotFound => StatusCode::NOT_FOUND,
            Reject::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Reject::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Reject::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reject::BadRequest => StatusCode::BAD_REQUEST,
            Reject::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Reject::MissingCredentials => "MISSING_CREDENTIALS",
            Reject::InvalidToken => "INVALID_ACCESS_TOKEN",
            Reject::Forbidden => "PERMISSION_DENIED",
            Reject::AuthUnavailable => "AUTH_UNAVAILABLE",
            Reject::NotFound => "NOT_FOUND",
            Reject::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            Reject::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Reject::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Reject::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Reject::Overloaded => "OVERLOADED",
            Reject::BadRequest => "BAD_REQUEST",
            Reject::RateLimited { .. } => "RATE_LIMITED",
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Reject::MissingCredentials => {
                "an access token is required: send Authorization: Bearer <token>"
            }
            Reject::InvalidToken => "the access token is invalid, expired or revoked",
            Reject::Forbidden => "the user is not allowed to use this route",
            Reject::AuthUnavailable => "the identity service is unavailable; try again shortly",
            Reject::NotFound => "no route matches this path",
            Reject::MethodNotAllowed { .. } => "this route does not accept this method",
            Reject::PayloadTooLarge => "the request body is larger than the gateway accepts",
            Reject::UpstreamUnavailable => "the upstream service could not be reached",
            Reject::UpstreamTimeout => "the request took longer than the gateway allows",
            Reject::Overloaded => "the gateway is overloaded; try again shortly",
            Reject::BadRequest => "the request could not be understood",
            Reject::RateLimited { .. } => "too many requests; try again later",
        }
    }

    /// The JSON envelope `{"code", "message", "requestId"}`: one line of ASCII (serde_json
    /// escapes control characters, and a request id is a header value), so it can travel
    /// in a header too.
    pub fn envelope(&self, request_id: Option<&HeaderValue>) -> String {
        let request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
        serde_json::json!({
            "code": self.code(),
            "message": self.message(),
            "requestId": request_id,
        })
        .to_string()
    }

    /// The response, with `request_id` in the body (the header is set by the request-id
    /// layer on the way out).
    pub(crate) fn into_response(self, request_id: Option<&HeaderValue>) -> Response<Body> {
        let mut response = Response::new(full(self.envelope(request_id)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            Reject::MissingCredentials => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
            }
            Reject::InvalidToken => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"cloudbase-gateway\", error=\"invalid_token\"",
                    ),
                );
            }
            Reject::Forbidden => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"cloudbase-gateway\", error=\"insufficient_scope\"",
                    ),
                );
            }
            Reject::AuthUnavailable | Reject::Overloaded => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Reject::MethodNotAllowed { allow } => {
                headers.insert(ALLOW, allow);
            }
            Reject::RateLimited { retry_after } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_carries_code_message_and_request_id() {
        let id = HeaderValue::from_static("req-1");
        let r = Reject::InvalidToken.into_response(Some(&id));
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"cloudbase-gateway\", error=\"invalid_token\""
        );
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn rate_limited_says_when_to_come_back_never_zero() {
        let r = Reject::RateLimited { retry_after: 7 }.into_response(None);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "7");
        let r = Reject::RateLimited { retry_after: 0 }.into_response(None);
        assert_eq!(
            r.headers()[RETRY_AFTER],
            "1",
            "0 would invite an immediate retry"
        );
    }
}
