//! The auth service's error envelope, `{"error", "error_code", "error_description"}`.
//!
//! Every failure the emulator reports, including malformed bodies, unknown paths and wrong
//! methods, goes through [`ApiError`] so clients see one shape, as with the real service.
//! The description is free text for humans; clients branch on `error` only.
//!
//! The `error` names stay within CloudBase's documented vocabulary even where HTTP has a
//! more precise status: an oversized body (413) or a body that is not declared JSON (415)
//! is `invalid_argument`, so a client that branches on `error` needs no new case, while
//! the status still tells HTTP tooling what went wrong.

use std::borrow::Cow;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::cloudbase::types::ErrorBody;

/// The `error` codes the emulator answers with, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400 `invalid_argument`: malformed body, missing or ill-formed field.
    InvalidArgument,
    /// 400 `invalid_password`: wrong password at sign-in, or a password of bad length.
    InvalidPassword,
    /// 400 `invalid_grant`: unknown, used or expired refresh token.
    InvalidGrant,
    /// 401 `invalid_client`: client credentials sent but wrong, or another client's id.
    InvalidClient,
    /// 401 `unauthenticated`: missing, invalid, expired or revoked access token.
    Unauthenticated,
    /// 403 `permission_denied`: wrong password at sudo, missing sudo token.
    PermissionDenied,
    /// 404 `not_found`.
    NotFound,
    /// 405 `method_not_allowed`.
    MethodNotAllowed,
    /// 409 `already_exists`.
    AlreadyExists,
    /// 413 `invalid_argument`: the body is larger than the emulator reads.
    PayloadTooLarge,
    /// 415 `invalid_argument`: a body that is not declared JSON.
    UnsupportedMediaType,
    /// 429 `resource_exhausted`: too many wrong passwords or codes; comes with
    /// `Retry-After`.
    ResourceExhausted,
    /// 500 `internal`.
    Internal,
    /// 501 `unimplemented`.
    Unimplemented,
}

impl ErrorKind {
    /// The `error` string on the wire.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType => "invalid_argument",
            ErrorKind::InvalidPassword => "invalid_password",
            ErrorKind::InvalidGrant => "invalid_grant",
            ErrorKind::InvalidClient => "invalid_client",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::Internal => "internal",
            ErrorKind::Unimplemented => "unimplemented",
        }
    }

    /// The HTTP status the service uses for this code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidArgument | ErrorKind::InvalidPassword | ErrorKind::InvalidGrant => {
                StatusCode::BAD_REQUEST
            }
            ErrorKind::InvalidClient | ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::AlreadyExists => StatusCode::CONFLICT,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The numeric `error_code` (gRPC-style numbering; `invalid_grant` is 4 as in the docs).
    fn number(self) -> i64 {
        match self {
            ErrorKind::InvalidArgument
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType => 3,
            ErrorKind::InvalidPassword | ErrorKind::InvalidGrant | ErrorKind::InvalidClient => 4,
            ErrorKind::NotFound => 5,
            ErrorKind::AlreadyExists => 6,
            ErrorKind::PermissionDenied => 7,
            ErrorKind::ResourceExhausted => 8,
            ErrorKind::MethodNotAllowed | ErrorKind::Unimplemented => 12,
            ErrorKind::Internal => 13,
            ErrorKind::Unauthenticated => 16,
        }
    }
}

/// A failed emulator call: answered as the error envelope with the kind's status.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {description}", kind.code())]
pub struct ApiError {
    pub kind: ErrorKind,
    pub description: Cow<'static, str>,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, description: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            kind,
            description: description.into(),
            retry_after: None,
        }
    }

    /// 429 `resource_exhausted`, to be retried after `wait`.
    pub fn exhausted(description: impl Into<Cow<'static, str>>, wait: Duration) -> Self {
        ApiError {
            retry_after: Some(wait),
            ..Self::new(ErrorKind::ResourceExhausted, description)
        }
    }

    pub fn invalid_argument(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidArgument, description)
    }

    /// A required field is absent from the request body.
    pub fn missing(field: &'static str) -> Self {
        Self::new(
            ErrorKind::InvalidArgument,
            format!("missing field `{field}`"),
        )
    }

    /// 401 `invalid_client`: wrong client credentials or another client's `client_id`.
    pub fn invalid_client() -> Self {
        Self::new(ErrorKind::InvalidClient, "client authentication failed")
    }

    pub fn unauthenticated() -> Self {
        Self::new(
            ErrorKind::Unauthenticated,
            "access token is missing, invalid, expired or revoked",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.kind.code().to_owned(),
            error_code: self.kind.number(),
            error_description: self.description.into_owned(),
            details: None,
        };
        let mut response = (self.kind.status(), Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}
