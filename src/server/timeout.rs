//! `request_timeout`: the whole exchange up to the response head, upstream included, or
//! 504 `UPSTREAM_TIMEOUT` answered by the gateway. Uses `tokio::time`, so tests can pause.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::{Layer, Service};

use crate::proxy::headers::X_REQUEST_ID;
use crate::response::{Body, Reject};

#[derive(Clone)]
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

#[derive(Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    limit: Duration,
}

impl<S, B> Service<Request<B>> for RequestTimeout<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    // Boxed for brevity: `tokio::time::Timeout` plus the id. One allocation per request,
    // not measured on its own (no bench builds the tower stack; `benches/load.sh` measures
    // the whole proxy).
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let request_id = req.headers().get(&X_REQUEST_ID).cloned();
        let future = tokio::time::timeout(self.limit, self.inner.call(req));
        let limit = self.limit;
        Box::pin(async move {
            match future.await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(?limit, "request timed out");
                    Ok(Reject::UpstreamTimeout.into_response(request_id.as_ref()))
                }
            }
        })
    }
}
