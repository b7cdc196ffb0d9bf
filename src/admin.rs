//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `POST /cache/purge`.
//!
//! With `[cache.redis]`, a purge here reaches every replica (the cache fans it out), and
//! `/readyz` says `ready (redis degraded)` while Redis is skipped or purges from other
//! replicas are not arriving: still 200, since Redis never decides whether a request is
//! served.
//!
//! Kept off the public listener (loopback by default) so operators' endpoints are never
//! reachable through the proxy. Served with axum: nothing here is on the hot path.
//!
//! Every POST needs `Content-Type: application/json`, so a web page open in an
//! operator's browser cannot post to it (a cross-site form can send only `text/plain`,
//! `multipart/form-data` or `application/x-www-form-urlencoded` without a CORS preflight,
//! which this listener never answers). With `admin.token` set, every POST also needs
//! `Authorization: Bearer <token>`, compared in constant time. Reads (`/healthz`,
//! `/readyz`, `/metrics`) stay open: probes and scrapers rarely carry credentials, and they
//! reveal no token or user datum.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::cache::{IdentityCache, Purged};
use crate::metrics::Metrics;
use crate::secret::Secret;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub cache: IdentityCache,
    /// False once shutdown has begun.
    pub ready: Arc<AtomicBool>,
    /// The public listener's connection slots (`server.max_connections`); none free means
    /// a new connection would only be refused, so `/readyz` says so.
    pub connections: Arc<Semaphore>,
    /// `admin.token`.
    pub token: Option<Secret>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    let posts = Router::new()
        .route("/cache/purge", post(purge))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard_post,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(posts)
        .with_state(state)
}

/// Whether `headers` carry `Content-Type: application/json` (parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Compares a presented secret with the expected one without a data-dependent early exit:
/// both are hashed first, so neither the length nor a matching prefix shows in the time.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    use sha2::Digest;
    let (a, b) = (sha2::Sha256::digest(given), sha2::Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The bearer token of `Authorization`, if it is one.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

/// Every admin POST: the token when `admin.token` is set (401), then a JSON content type
/// (415).
async fn guard_post(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> axum::response::Response {
    if let Some(expected) = &state.token {
        let given = bearer(request.headers());
        if !given.is_some_and(|g| same_secret(g, expected.expose().as_bytes())) {
            let mut response = json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({
                    "code": "UNAUTHENTICATED",
                    "message": "admin POSTs need Authorization: Bearer <admin.token>",
                }),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"cloudbase-gateway-admin\""),
            );
            return response;
        }
    }
    if !is_json(request.headers()) {
        return json(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            serde_json::json!({
                "code": "UNSUPPORTED_MEDIA_TYPE",
                "message": "admin POSTs need Content-Type: application/json",
            }),
        );
    }
    next.run(request).await
}

/// Serves the admin routes until `shutdown` completes. The server passes a future that
/// completes once the public listener has drained, so `/readyz` answers 503 throughout.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "admin listener failed");
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if !state.ready.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if state.connections.available_permits() == 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded: every server.max_connections slot is in use\n",
        )
    } else if state.cache.shared().is_some_and(|tier| tier.degraded()) {
        // Serving all the same: Redis only accelerates (see `cache::shared`).
        (StatusCode::OK, "ready (redis degraded)\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    let body = state.metrics.render(state.cache.entry_count());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    token: Option<String>,
    sub: Option<String>,
    all: Option<bool>,
}

fn json(status: StatusCode, value: serde_json::Value) -> axum::response::Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn purge(State(state): State<AdminState>, body: Bytes) -> axum::response::Response {
    let bad = |message: &str| {
        json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"code": "INVALID_ARGUMENT", "message": message}),
        )
    };
    let Ok(request) = serde_json::from_slice::<PurgeRequest>(&body) else {
        return bad("expected {\"token\": \"…\"}, {\"sub\": \"…\"} or {\"all\": true}");
    };
    let purged = match request {
        PurgeRequest {
            token: Some(token),
            sub: None,
            all: None,
        } => state.cache.purge_token(&token).await,
        PurgeRequest {
            token: None,
            sub: Some(sub),
            all: None,
        } => state.cache.purge_sub(&sub).await,
        PurgeRequest {
            token: None,
            sub: None,
            all: Some(true),
        } => state.cache.purge_all().await,
        _ => return bad("give exactly one of token, sub, or all: true"),
    };
    let answer = purge_answer(purged);
    tracing::info!(%answer, "cache purged");
    json(StatusCode::OK, answer)
}

/// `{"purged": N}`: the entries this replica dropped. With `[cache.redis]` also `"shared"`:
/// `true` with `"replicas"` (subscribed when it was published, this one included) and
/// `"confirmed"` (of those, how many had dropped their entries when this answered), or
/// `false` when it did not reach Redis (only this replica purged; repeat it once Redis is
/// back).
fn purge_answer(purged: Purged) -> serde_json::Value {
    match purged.shared {
        None => serde_json::json!({ "purged": purged.local }),
        Some(Ok(reach)) => serde_json::json!({
            "purged": purged.local,
            "shared": true,
            "replicas": reach.replicas,
            "confirmed": reach.confirmed,
        }),
        Some(Err(_)) => serde_json::json!({ "purged": purged.local, "shared": false }),
    }
}
