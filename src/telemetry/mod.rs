//! Logging setup, the access log, and OpenTelemetry traces ([`trace`]).
//!
//! One access-log line per request: method, route prefix, kind (`proxy`, `forward_auth` or
//! `relay`), status, duration, request id and the user's `sub` when known. Never the path
//! or query (a `?token=` would leak), never a header value. The same layer keeps the
//! per-request metrics, since it already holds the start time and sees the final status.

pub mod trace;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Method, Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing_subscriber::EnvFilter;

use crate::admin::metrics::{Metrics, RequestKind, NO_ROUTE};
use crate::auth::Authenticated;
use crate::proxy::headers::X_REQUEST_ID;
use crate::routing::MatchedRoute;

/// The method a response is about when it is not the request's own: forward-auth answers a
/// GET from nginx about the client's POST. Put in response extensions by such a service;
/// the access log and `requests_total` use it instead of the request's method.
#[derive(Debug, Clone)]
pub struct OriginalMethod(pub Method);

/// Put in a response's extensions by a built-in service that answers outside the
/// configured routes (the relay): its label index in `requests_total` and the prefix the
/// access log names it by.
#[derive(Debug, Clone)]
pub struct BuiltinRoute {
    pub index: usize,
    pub prefix: Arc<str>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr; level from `RUST_LOG`, default `info`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: escape codes in a log file or collector are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Builds [`AccessLog`] services.
#[derive(Clone)]
pub struct AccessLogLayer {
    metrics: Arc<Metrics>,
}

impl AccessLogLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        AccessLogLayer { metrics }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Decrements the in-flight gauge however the request ends (a dropped future included).
struct InflightGuard(Arc<Metrics>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight_add(-1);
    }
}

impl<S, B, RB> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    // Boxed: holds the inner future across an await. One allocation per request, not
    // measured on its own (no bench builds the tower stack; `benches/load.sh` measures the
    // whole proxy).
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let method = req.method().clone();
        let request_id: Option<HeaderValue> = req.headers().get(&X_REQUEST_ID).cloned();
        let metrics = self.metrics.clone();
        metrics.inflight_add(1);
        let guard = InflightGuard(metrics.clone());
        let future = self.inner.call(req);
        Box::pin(async move {
            let result = future.await;
            let took = start.elapsed();
            drop(guard);
            if let Ok(response) = &result {
                let extensions = response.extensions();
                let method = extensions.get::<OriginalMethod>().map_or(&method, |m| &m.0);
                let route = extensions
                    .get::<MatchedRoute>()
                    .map(|m| (m.0.index, m.0.settings.prefix.as_str()))
                    .or_else(|| {
                        extensions
                            .get::<BuiltinRoute>()
                            .map(|b| (b.index, &*b.prefix))
                    });
                let status = response.status().as_u16();
                let kind = extensions.get::<RequestKind>().copied().unwrap_or_default();
                metrics.request(route.map(|(index, _)| index), kind, method, status, took);
                let sub = response
                    .extensions()
                    .get::<Authenticated>()
                    .map(|a| &*a.0.sub);
                tracing::info!(
                    target: "cloudbase_gateway::access",
                    method = %method,
                    route = route.map_or(NO_ROUTE, |(_, prefix)| prefix),
                    kind = kind.as_str(),
                    status,
                    duration_ms = took.as_secs_f64() * 1000.0,
                    request_id = request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
                    sub = sub.unwrap_or(""),
                );
            }
            result
        })
    }
}
