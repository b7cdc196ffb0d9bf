//! What can go wrong calling CloudBase, sorted by whose fault it is.
//!
//! The gateway needs one distinction above all: "CloudBase said no" ([`Error::Api`] with a
//! 4xx) versus "CloudBase could not be asked" ([`Error::is_server_side`]), because the
//! first rejects the user (401, remembered for `negative_ttl`) and the second never does:
//! the gateway serves a stale identity where `stale_if_error` allows, and otherwise answers
//! 503 `AUTH_UNAVAILABLE` with `Retry-After`. The trade-off: messages stay generic. Nothing here keeps a URL, a request or a
//! response body, so no token, password or secret can reach a log through an error; the
//! price is that a malformed-body error tells you where parsing failed, not what was there.

use std::path::PathBuf;

use http::StatusCode;

/// An error of a CloudBase call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// CloudBase answered 4xx/5xx with its error envelope
    /// (`{"error", "error_code", "error_description"}`, or the API gateway's
    /// `{"code", "message"}`, whose `code` becomes `error`).
    #[error("CloudBase answered {status}: {error} (code {error_code}): {error_description}")]
    Api {
        status: StatusCode,
        error: String,
        error_code: i64,
        error_description: String,
    },
    /// No complete answer within the configured per-call timeout.
    #[error("CloudBase did not answer in time")]
    Timeout,
    /// Connecting, TLS, or reading/writing the connection failed. The inner error has had
    /// its URL removed (the introspect URL may hold the token).
    #[error("cannot reach CloudBase")]
    Transport(#[source] reqwest::Error),
    /// CloudBase answered, but not with the JSON this call expects.
    #[error("CloudBase answered {status} with an unexpected body")]
    InvalidResponse {
        status: StatusCode,
        #[source]
        source: InvalidBody,
    },
    /// An argument cannot be sent at all (e.g. a token with characters forbidden in a
    /// header). The request was not made; this is the caller's fault, not CloudBase's.
    #[error("cannot send {what} to CloudBase: not a valid header value")]
    InvalidInput { what: &'static str },
    /// [`Client::new`](super::Client::new) could not be built.
    #[error("cannot set up the CloudBase client")]
    Setup(#[source] SetupError),
}

/// Why a response body was rejected. Deliberately holds no part of the body.
#[derive(Debug, thiserror::Error)]
pub enum InvalidBody {
    /// Not JSON at all (an HTML error page, plain text, a truncated body).
    #[error("not JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    /// JSON, but not the expected shape (missing field, wrong type).
    #[error("JSON of an unexpected shape (line {line}, column {column})")]
    UnexpectedShape { line: usize, column: usize },
    /// An error status whose JSON body has no `error` (or `code`) field.
    #[error("error status without CloudBase's error envelope")]
    NoErrorEnvelope,
    /// Longer than the client accepts.
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
}

impl InvalidBody {
    /// Classifies a serde_json error without keeping it: its message may quote the body.
    pub(crate) fn from_json(e: &serde_json::Error) -> Self {
        let (line, column) = (e.line(), e.column());
        match e.classify() {
            serde_json::error::Category::Data => InvalidBody::UnexpectedShape { line, column },
            _ => InvalidBody::NotJson { line, column },
        }
    }
}

/// Why [`Client::new`](super::Client::new) failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read cloudbase.ca_file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cloudbase.ca_file {path} holds no PEM certificate")]
    NoCertificates { path: PathBuf },
    #[error("cloudbase.ca_file {path}: certificate rejected")]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
    #[error("cloudbase.base_url is not a usable URL")]
    BaseUrl,
    #[error("cloudbase.device_id is not a valid header value")]
    DeviceId,
    #[error("HTTP client")]
    Http(#[source] reqwest::Error),
}

impl Error {
    /// Sorts a reqwest error: timeouts apart, everything else is transport. The URL is
    /// stripped first.
    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            Error::Timeout
        } else {
            Error::Transport(e.without_url())
        }
    }

    /// The HTTP status CloudBase answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api { status, .. } | Error::InvalidResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// CloudBase answered 401: the token (or client credentials) were not accepted.
    pub fn is_unauthenticated(&self) -> bool {
        self.status() == Some(StatusCode::UNAUTHORIZED)
    }

    /// CloudBase is unavailable rather than saying no: a timeout, a transport failure, a
    /// body that is not CloudBase's, or a 5xx envelope.
    pub fn is_server_side(&self) -> bool {
        match self {
            Error::Timeout | Error::Transport(_) | Error::InvalidResponse { .. } => true,
            Error::Api { status, .. } => status.is_server_error(),
            Error::InvalidInput { .. } | Error::Setup(_) => false,
        }
    }

    /// The envelope's `error` (`"invalid_grant"`, `"permission_denied"`…), if CloudBase
    /// sent one.
    pub fn api_error(&self) -> Option<&str> {
        match self {
            Error::Api { error, .. } => Some(error),
            _ => None,
        }
    }
}
