//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `POST /cache/purge`.
//!
//! Kept off the public listener (loopback by default) so operators' endpoints are never
//! reachable through the proxy. Served with axum: nothing here is on the hot path.

pub mod metrics;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde::Deserialize;

use crate::cache::IdentityCache;
use metrics::Metrics;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub cache: IdentityCache,
    /// False once shutdown has begun.
    pub ready: Arc<AtomicBool>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/cache/purge", post(purge))
        .with_state(state)
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
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
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
        } => state.cache.purge_token(&token),
        PurgeRequest {
            token: None,
            sub: Some(sub),
            all: None,
        } => state.cache.purge_sub(&sub),
        PurgeRequest {
            token: None,
            sub: None,
            all: Some(true),
        } => state.cache.purge_all(),
        _ => return bad("give exactly one of token, sub, or all: true"),
    };
    tracing::info!(purged, "cache purged");
    json(StatusCode::OK, serde_json::json!({ "purged": purged }))
}
