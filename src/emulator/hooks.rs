//! The test hooks: per-endpoint call statistics (`/__emulator/stats`) and fault injection
//! (`/__emulator/fault`) for outage tests.
//!
//! They change how the emulator answers everyone, and in the shipped configuration the
//! emulator is the gateway's CloudBase, so they are off unless `[emulator] test_hooks =
//! true` (404 otherwise). Even then they are not for browsers: they carry no CORS headers
//! (a page on another origin gets no permission from a preflight and cannot read an
//! answer), and every POST must declare `Content-Type: application/json` (415 otherwise),
//! a type that a cross-site form or `no-cors` fetch cannot send without that preflight.
//! So a web page a developer happens to open cannot put the emulator, and with it the
//! gateway, into "hang". In-process tests need no hook: [`Emulator::set_fault`] and
//! [`Emulator::calls`] do the same from Rust.
//!
//! [`Emulator::set_fault`]: super::Emulator::set_fault
//! [`Emulator::calls`]: super::Emulator::calls

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{declares_json, JsonBody};
use super::error::{ApiError, ErrorKind};
use super::{Endpoint, Fault, Inner};

/// The hook routes, for the emulator to merge when they are enabled.
pub fn routes() -> Router<Arc<Inner>> {
    Router::new()
        .route("/__emulator/stats", get(stats))
        .route("/__emulator/stats/reset", post(reset_stats))
        .route("/__emulator/fault", post(set_fault))
        .route_layer(middleware::from_fn(json_only))
}

/// Refuses a POST that does not declare a JSON body, empty bodies included: the reset
/// takes none, and a bodiless cross-site POST sends no `Content-Type` at all.
async fn json_only(req: Request, next: Next) -> Response {
    if req.method() == Method::POST && !declares_json(req.headers()) {
        return ApiError::new(
            ErrorKind::UnsupportedMediaType,
            "test hooks take `Content-Type: application/json` only",
        )
        .into_response();
    }
    next.run(req).await
}

/// `GET /__emulator/stats`: `{"calls": {name: count, …}}` with every endpoint present.
async fn stats(State(inner): State<Arc<Inner>>) -> Json<Value> {
    let calls: serde_json::Map<String, Value> = Endpoint::ALL
        .iter()
        .map(|e| {
            (
                e.name().to_owned(),
                Value::from(inner.calls[e.index()].load(Ordering::Relaxed)),
            )
        })
        .collect();
    Json(json!({ "calls": calls }))
}

/// `POST /__emulator/stats/reset`.
async fn reset_stats(State(inner): State<Arc<Inner>>) -> Json<Value> {
    for c in &inner.calls {
        c.store(0, Ordering::Relaxed);
    }
    Json(json!({}))
}

#[derive(Deserialize)]
struct FaultReq {
    mode: String,
}

/// `POST /__emulator/fault` `{"mode": "ok" | "hang" | "error500" | "garbage"}`.
async fn set_fault(
    State(inner): State<Arc<Inner>>,
    JsonBody(req): JsonBody<FaultReq>,
) -> Result<Json<Value>, ApiError> {
    let fault = Fault::from_name(&req.mode).ok_or_else(|| {
        ApiError::invalid_argument("mode must be one of ok, hang, error500, garbage")
    })?;
    inner.fault.store(fault as u8, Ordering::Relaxed);
    Ok(Json(json!({ "mode": req.mode })))
}
