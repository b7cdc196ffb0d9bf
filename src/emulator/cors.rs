//! CORS for the Auth v2 endpoints, and for nothing else.
//!
//! Front-end developers point the official JS SDK at the emulator from whatever origin
//! their dev server has, so every path under `/auth/v1` answers preflights and lets any
//! origin read its answers — as permissive as the real service must be for the SDK, and
//! harmless there, since those endpoints only do what any client may do. The test hooks
//! (`/__emulator/*`) and `/healthz` get no CORS headers at all: a preflight to them is
//! routed like any request (405 or 404 in the envelope) without the permission a browser
//! needs, so a web page cannot drive them (see [`super::hooks`]).

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The paths that speak CORS: `/auth/v1` and everything under it.
fn is_auth_path(path: &str) -> bool {
    path.strip_prefix("/auth/v1")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Answers preflights to Auth v2 paths and lets browsers read their responses.
pub async fn cors(req: Request, next: Next) -> Response {
    if !is_auth_path(req.uri().path()) {
        return next.run(req).await;
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("*"));
    if req.method() == Method::OPTIONS {
        let allow_headers = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or_else(|| {
                HeaderValue::from_static(
                    "authorization, content-type, x-device-id, x-request-id, x-sdk-version",
                )
            });
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        return resp;
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    // A locked-out page can read when to try again (429 `resource_exhausted`).
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("retry-after"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

#[cfg(test)]
mod tests {
    use super::is_auth_path;

    #[test]
    fn only_auth_v1_paths_speak_cors() {
        for yes in ["/auth/v1", "/auth/v1/", "/auth/v1/signin", "/auth/v1/nope"] {
            assert!(is_auth_path(yes), "{yes}");
        }
        for no in [
            "/__emulator/fault",
            "/__emulator/stats",
            "/healthz",
            "/auth/v10/signin",
            "/auth/v1x",
            "/",
            "/nowhere",
        ] {
            assert!(!is_auth_path(no), "{no}");
        }
    }
}
