//! [`TraceLayer`]: the request's OpenTelemetry span, from the request head to the response
//! head (`[telemetry]`; the spans themselves are `crate::telemetry::trace`).
//!
//! Starts the server span (continuing the client's `traceparent`), puts its
//! [`RequestTrace`] in the request's extensions for the layers before routing, which make
//! no context of their own until they divert (the route layer moves it into the
//! `RequestContext`), and ends the span with what the answer's context says: the route,
//! the status and the user. It sits right after the access log, above the rescue, so every
//! answer, rejections included, ends a span; it cannot fail. Left out of the stack while
//! tracing is off. Its future is hand-written: every traced request passes through it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::routing::RequestContext;
use crate::telemetry::trace::{method_attribute, Answered, RequestTrace, Tracing};

/// Builds [`Trace`] services over the span exporter.
#[derive(Debug, Clone)]
pub struct TraceLayer {
    tracing: Tracing,
}

impl TraceLayer {
    pub fn new(tracing: Tracing) -> Self {
        TraceLayer { tracing }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            tracing: self.tracing.clone(),
        }
    }
}

/// See [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    tracing: Tracing,
}

impl<S, B, RB> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = Infallible>,
{
    type Response = Response<RB>;
    type Error = Infallible;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let trace = self.tracing.request(&req);
        let method = method_attribute(req.method());
        req.extensions_mut().insert(trace.clone());
        TraceFuture {
            inner: self.inner.call(req),
            trace: Some(trace),
            method,
        }
    }
}

pin_project! {
    /// [`Trace`]'s future: ends the request's span with what the response says.
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        trace: Option<RequestTrace>,
        method: &'static str,
    }
}

impl<F, RB> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<RB>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Some(trace), Ok(response)) = (this.trace.take(), &result) {
            let context = response.extensions().get::<RequestContext>();
            let route = context
                .map(|c| &c.route)
                .filter(|r| !r.is_unmatched())
                .map(|r| r.settings.prefix.as_str());
            let user = context
                .and_then(|c| c.identity.as_ref())
                .map(|identity| &*identity.sub);
            trace.end(Answered {
                method: this.method,
                route,
                status: response.status(),
                user,
            });
        }
        Poll::Ready(result)
    }
}
