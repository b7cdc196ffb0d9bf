//! [`RouteLayer`]: normalizes the path (400 when the policy refuses it), matches the route
//! (the table is [`crate::routing`]), refuses 404 / 405 / 413 (declared length) itself,
//! caps the body at `max_body_size` (a chunked body that grows past it fails the upstream
//! call with 413), and calls the inner service with the request and its
//! [`RequestContext`]: below this layer, services take [`Routed`], so none can be called
//! without a route.
//!
//! The request's URI is rewritten to the normal path, so auth, `strip_prefix` and the
//! upstream never see the raw one; the query is kept byte for byte. The request's span, when
//! traced, moves from the request's extensions into the context. Every answer that comes
//! back up carries the context (see [`RequestContext`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::http::headers::declared_length;
use crate::http::{Body, BoxError};
use crate::path::EscapedSlashes;
use crate::rejection::{Reject, Rejection};
use crate::routing::{RequestContext, Route, Routed, Routes, Undecided};
use crate::telemetry::trace::RequestTrace;

/// `uri` with its path replaced by `path` and its query kept byte for byte.
fn with_path(uri: &Uri, path: String) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

/// Builds [`RouteService`]s over the route table, with `server.max_body_size` and
/// `server.escaped_slashes`.
#[derive(Debug, Clone)]
pub struct RouteLayer {
    routes: Routes,
    max_body_size: u64,
    escaped_slashes: EscapedSlashes,
}

impl RouteLayer {
    pub fn new(routes: Routes, max_body_size: u64, escaped_slashes: EscapedSlashes) -> Self {
        RouteLayer {
            routes,
            max_body_size,
            escaped_slashes,
        }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;
    fn layer(&self, inner: S) -> RouteService<S> {
        RouteService {
            inner,
            routes: self.routes.clone(),
            max_body_size: self.max_body_size,
            escaped_slashes: self.escaped_slashes,
        }
    }
}

/// Routes requests for the inner service, which takes each with its [`RequestContext`]
/// ([`Routed`]); see the module docs. (Not `Route<S>`: that name is the table's route.)
#[derive(Debug, Clone)]
pub struct RouteService<S> {
    inner: S,
    routes: Routes,
    max_body_size: u64,
    escaped_slashes: EscapedSlashes,
}

pin_project! {
    /// A refusal made here, or the inner service's future. Hand-written (not boxed): every
    /// request passes through it.
    #[project = RouteFutureProj]
    pub enum RouteFuture<F> {
        Rejected { rejection: Option<Rejection> },
        Inner { #[pin] future: F, context: Option<RequestContext> },
    }
}

impl<F> Future for RouteFuture<F>
where
    F: Future<Output = Result<Response<Body>, Rejection>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            RouteFutureProj::Rejected { rejection } => {
                Poll::Ready(Err(rejection.take().expect("polled after completion")))
            }
            RouteFutureProj::Inner { future, context } => {
                let result = ready!(future.poll(cx));
                let context = context.take().expect("polled after completion");
                // Whatever answered below without a context (the timeout's 504) is still
                // this route's answer; the auth layer attaches its own, identity included.
                Poll::Ready(match result {
                    Ok(mut response) => {
                        if response.extensions().get::<RequestContext>().is_none() {
                            context.attach(&mut response);
                        }
                        Ok(response)
                    }
                    Err(mut rejection) => {
                        rejection.context.get_or_insert(context);
                        Err(rejection)
                    }
                })
            }
        }
    }
}

impl<F> RouteFuture<F> {
    fn reject(reason: Reject, route: Option<Arc<Route>>) -> Self {
        let rejection = match route {
            Some(route) => Rejection::with_context(reason, RequestContext::new(route)),
            None => Rejection::from(reason),
        };
        RouteFuture::Rejected {
            rejection: Some(rejection),
        }
    }
}

impl<S> Service<Request<Body>> for RouteService<S>
where
    S: Service<Routed, Response = Response<Body>, Error = Rejection>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = RouteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let (route, normal) = match self.routes.decide(req.uri().path(), self.escaped_slashes) {
            Ok(decided) => decided,
            Err(Undecided::RefusedPath) => return RouteFuture::reject(Reject::BadRequest, None),
            Err(Undecided::NoRoute) => return RouteFuture::reject(Reject::NotFound, None),
        };
        // From here on the request is the normalized one: auth, `strip_prefix` and the
        // upstream never see the raw path.
        if let Some(path) = normal {
            match with_path(req.uri(), path) {
                Some(uri) => *req.uri_mut() = uri,
                None => return RouteFuture::reject(Reject::BadRequest, None),
            }
        }
        if !route.allows(req.method(), req.headers()) {
            let allow = route.allow.clone();
            return RouteFuture::reject(Reject::MethodNotAllowed { allow }, Some(route));
        }
        let declared = declared_length(req.headers());
        if declared.is_some_and(|n| n > self.max_body_size) {
            return RouteFuture::reject(Reject::PayloadTooLarge, Some(route));
        }
        let limit = usize::try_from(self.max_body_size).unwrap_or(usize::MAX);
        let mut req = req.map(|b| {
            Limited::new(b, limit)
                .map_err(BoxError::from)
                .boxed_unsync()
        });
        // The request's span, if traced, leaves the extensions for the context: below
        // here it is found there, with the route.
        let trace = req.extensions_mut().remove::<RequestTrace>();
        let context = RequestContext::new(route).traced(trace);
        RouteFuture::Inner {
            future: self.inner.call((req, context.clone())),
            context: Some(context),
        }
    }
}

#[cfg(test)]
mod path_tests;

#[cfg(test)]
mod tests {
    //! What comes back up through the layer carries the route: its own refusals, and
    //! answers from below that came without a context (the timeout's 504).

    use http::header::CONTENT_LENGTH;
    use http::Method;
    use tower::{service_fn, ServiceExt};

    use super::*;
    use crate::config::Config;
    use crate::http::empty;

    fn layer() -> RouteLayer {
        let config = Config::from_toml_str(
            "[emulator]\nenabled = true\n[[routes]]\nprefix = \"/api/\"\nupstream = \"whoami\"\n\
             methods = [\"GET\", \"POST\"]\n",
        )
        .unwrap();
        RouteLayer::new(Routes::new(&config.routes), 1024, EscapedSlashes::Reject)
    }

    async fn through(
        layer: &RouteLayer,
        req: Request<Body>,
        below: Result<(), Reject>,
    ) -> Result<Response<Body>, Rejection> {
        let inner = service_fn(move |_: Routed| {
            let below = below.clone();
            async move {
                below
                    .map(|()| Response::new(empty()))
                    .map_err(Rejection::from)
            }
        });
        layer.layer(inner).oneshot(req).await
    }

    fn prefix(context: Option<&RequestContext>) -> Option<&str> {
        context.map(|c| c.route.settings.prefix.as_str())
    }

    #[tokio::test]
    async fn a_405_and_a_declared_413_are_refused_with_their_route() {
        let layer = layer();
        let put = Request::builder()
            .method(Method::PUT)
            .uri("/api/x")
            .body(empty())
            .unwrap();
        let r = through(&layer, put, Ok(())).await.expect_err("405");
        assert!(matches!(r.reason, Reject::MethodNotAllowed { .. }));
        assert_eq!(prefix(r.context.as_ref()), Some("/api/"));
        let big = Request::post("/api/x")
            .header(CONTENT_LENGTH, "1025")
            .body(empty())
            .unwrap();
        let r = through(&layer, big, Ok(())).await.expect_err("413");
        assert_eq!(r.reason, Reject::PayloadTooLarge);
        assert_eq!(prefix(r.context.as_ref()), Some("/api/"));
        let nowhere = Request::get("/other").body(empty()).unwrap();
        let r = through(&layer, nowhere, Ok(())).await.expect_err("404");
        assert_eq!(r.reason, Reject::NotFound);
        assert!(r.context.is_none(), "no route, no context");
    }

    #[tokio::test]
    async fn an_answer_from_below_without_a_context_gets_the_route() {
        let layer = layer();
        let req = || Request::get("/api/x").body(empty()).unwrap();
        let r = through(&layer, req(), Err(Reject::UpstreamTimeout))
            .await
            .expect_err("504");
        assert_eq!(prefix(r.context.as_ref()), Some("/api/"));
        let r = through(&layer, req(), Ok(())).await.expect("200");
        assert_eq!(
            prefix(r.extensions().get::<RequestContext>()),
            Some("/api/")
        );
    }
}
