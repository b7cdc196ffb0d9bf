//! [`AccessLogLayer`]: one access-log line and the request metrics per request.
//!
//! The line holds the method, route prefix, kind (`proxy`, `forward_auth` or `relay`),
//! status, duration, request id and the user's `sub` when known, all read from the
//! answer's [`RequestContext`] (forward-auth's answers name the original request's method). Never the path or query (a `?token=` would leak), never a header
//! value. The same layer keeps the per-request metrics, since it already holds the start
//! time and sees the final status. It sits outside the timeout and the rescue, so a 504
//! and every rejection are logged and counted with their status.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::http::X_REQUEST_ID;
use crate::metrics::{Metrics, RequestKind, NO_ROUTE};
use crate::routing::RequestContext;

/// Builds [`AccessLog`] services.
#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
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
                let context = response.extensions().get::<RequestContext>();
                let route = context.map(|c| &c.route);
                let kind = context.map_or(RequestKind::Proxy, |c| c.kind);
                let method = context.and_then(|c| c.method.as_ref()).unwrap_or(&method);
                let status = response.status().as_u16();
                metrics.request(route.map(|r| r.label), kind, method, status, took);
                let sub = context
                    .and_then(|c| c.identity.as_ref())
                    .map(|identity| &*identity.sub);
                tracing::info!(
                    target: "cloudbase_gateway::access",
                    method = %method,
                    route = route.map_or(NO_ROUTE, |r| r.settings.prefix.as_str()),
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http::StatusCode;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    use super::*;
    use crate::http::{empty, Body};
    use crate::stack::testing::{context, request};

    /// The layer over a service that answers `status` after `delay`, tagged with the
    /// `/api/` route when `routed`.
    async fn logged(status: StatusCode, routed: bool, delay: Duration) -> Arc<Metrics> {
        let metrics = Arc::new(Metrics::new(["/api/".to_owned()]));
        let svc = ServiceBuilder::new()
            .layer(AccessLogLayer::new(metrics.clone()))
            .service(service_fn(move |_: Request<Body>| async move {
                tokio::time::sleep(delay).await;
                let mut response = Response::new(empty());
                *response.status_mut() = status;
                if routed {
                    context("/api/").attach(&mut response);
                }
                Ok::<_, Infallible>(response)
            }));
        svc.oneshot(request("/api/x")).await.unwrap();
        metrics
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_counted_under_its_route_status_and_duration() {
        let text = logged(StatusCode::GATEWAY_TIMEOUT, true, Duration::from_millis(30))
            .await
            .render(0);
        assert!(text.contains(
            "cloudbase_gateway_requests_total{route=\"/api/\",method=\"GET\",status=\"504\",kind=\"proxy\"} 1"
        ));
        assert!(text.contains(
            "cloudbase_gateway_request_duration_seconds_bucket{route=\"/api/\",kind=\"proxy\",le=\"0.025\"} 0"
        ));
        assert!(text.contains(
            "cloudbase_gateway_request_duration_seconds_bucket{route=\"/api/\",kind=\"proxy\",le=\"0.05\"} 1"
        ));
        assert!(text.contains("cloudbase_gateway_inflight_requests 0"));
    }

    #[tokio::test]
    async fn an_answer_without_a_route_is_counted_under_none() {
        let text = logged(StatusCode::NOT_FOUND, false, Duration::ZERO)
            .await
            .render(0);
        assert!(text.contains(
            "cloudbase_gateway_requests_total{route=\"none\",method=\"GET\",status=\"404\",kind=\"proxy\"} 1"
        ));
    }
}
