//! [`RequestTimeoutLayer`]: `request_timeout` on the whole exchange up to the response head,
//! CloudBase validation and the upstream included, or a 504 `UPSTREAM_TIMEOUT` rejection.
//! Uses `tokio::time`, so tests pause and advance time instead of waiting.
//!
//! It sits below the route layer (so the 504 is tagged with its route: the route layer
//! attaches the context the dropped inner future never returned) and above auth. Its
//! future is hand-written, as tower-http's: every request passes through it.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::Response;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::http::Body;
use crate::rejection::{Reject, Rejection};
use crate::routing::Routed;

/// Builds [`RequestTimeout`] services with `server.request_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct RequestTimeoutLayer {
    limit: Duration,
}

impl RequestTimeoutLayer {
    pub fn new(limit: Duration) -> Self {
        RequestTimeoutLayer { limit }
    }
}

impl<S> Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;
    fn layer(&self, inner: S) -> RequestTimeout<S> {
        RequestTimeout {
            inner,
            limit: self.limit,
        }
    }
}

/// Bounds the inner service's answer by the limit.
#[derive(Debug, Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    limit: Duration,
}

impl<S> Service<Routed> for RequestTimeout<S>
where
    S: Service<Routed, Response = Response<Body>, Error = Rejection>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, routed: Routed) -> Self::Future {
        TimeoutFuture {
            inner: tokio::time::timeout(self.limit, self.inner.call(routed)),
            limit: self.limit,
        }
    }
}

pin_project! {
    /// The inner future, or a 504 once the limit has passed.
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        limit: Duration,
    }
}

impl<F> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response<Body>, Rejection>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match ready!(this.inner.poll(cx)) {
            Ok(result) => Poll::Ready(result),
            Err(_) => {
                tracing::warn!(limit = ?this.limit, "request timed out");
                Poll::Ready(Err(Reject::UpstreamTimeout.into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::empty;
    use crate::stack::testing::{context, request};
    use http::StatusCode;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    /// An inner service that answers after `delay` of tokio time.
    fn answering_after(
        delay: Duration,
    ) -> impl Service<Routed, Response = Response<Body>, Error = Rejection, Future = impl Send>
    {
        service_fn(move |_: Routed| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Rejection>(Response::new(empty()))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_past_the_limit_is_a_504_at_exactly_the_limit() {
        let svc = ServiceBuilder::new()
            .layer(RequestTimeoutLayer::new(Duration::from_secs(30)))
            .service(answering_after(Duration::from_secs(31)));
        let start = tokio::time::Instant::now();
        let rejection = svc
            .oneshot((request("/api/x"), context("/api/")))
            .await
            .expect_err("timed out");
        assert_eq!(rejection.reason, Reject::UpstreamTimeout);
        assert_eq!(rejection.reason.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_within_the_limit_passes() {
        let svc = ServiceBuilder::new()
            .layer(RequestTimeoutLayer::new(Duration::from_secs(30)))
            .service(answering_after(Duration::from_secs(29)));
        let r = svc
            .oneshot((request("/api/x"), context("/api/")))
            .await
            .expect("answered in time");
        assert_eq!(r.status(), StatusCode::OK);
    }
}
