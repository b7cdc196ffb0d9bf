//! [`RouteLayer`]: normalizes the path (400 when the policy refuses it), matches the route
//! (the table is [`crate::routing`]), answers 404 / 405 / 413 (declared length) itself, caps
//! the body at `max_body_size`, and hands the matched route to the layers below it.
//!
//! The request's URI is rewritten to the normal path, so auth, `strip_prefix` and the
//! upstream never see the raw one; the query is kept byte for byte.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::CONTENT_LENGTH;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::http::{Body, BoxError, X_REQUEST_ID};
use crate::path::EscapedSlashes;
use crate::response::Reject;
use crate::routing::{MatchedRoute, Route, Routes};

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

/// Normalizes the path (400 when the policy refuses it), matches the route, answers 404 /
/// 405 / 413 (declared length) itself, caps the body at `max_body_size` (a chunked body
/// that grows past it fails the upstream call with 413), and puts [`MatchedRoute`] in the
/// request and response extensions.
#[derive(Clone)]
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

#[derive(Clone)]
pub struct RouteService<S> {
    inner: S,
    routes: Routes,
    max_body_size: u64,
    escaped_slashes: EscapedSlashes,
}

pin_project! {
    /// Either an answer made here or the inner service's future, tagged with the route.
    /// Hand-written (not boxed): every request passes through it.
    #[project = RouteFutureProj]
    pub enum RouteFuture<F> {
        Ready { response: Option<Response<Body>> },
        Inner { #[pin] future: F, route: MatchedRoute },
    }
}

impl<F, E> Future for RouteFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            RouteFutureProj::Ready { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            RouteFutureProj::Inner { future, route } => {
                let mut response = ready!(future.poll(cx))?;
                response.extensions_mut().insert(route.clone());
                Poll::Ready(Ok(response))
            }
        }
    }
}

impl<F> RouteFuture<F> {
    fn reject(reason: Reject, req: &Request<Body>, route: Option<Arc<Route>>) -> Self {
        let mut response = reason.into_response(req.headers().get(&X_REQUEST_ID));
        if let Some(route) = route {
            response.extensions_mut().insert(MatchedRoute(route));
        }
        RouteFuture::Ready {
            response: Some(response),
        }
    }
}

impl<S> Service<Request<Body>> for RouteService<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RouteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let (route, normal) = match self.routes.decide(req.uri().path(), self.escaped_slashes) {
            Ok(decided) => decided,
            Err(reason) => return RouteFuture::reject(reason, &req, None),
        };
        // From here on the request is the normalized one: auth, `strip_prefix` and the
        // upstream never see the raw path.
        if let Some(path) = normal {
            match with_path(req.uri(), path) {
                Some(uri) => *req.uri_mut() = uri,
                None => return RouteFuture::reject(Reject::BadRequest, &req, None),
            }
        }
        if !route.allows(req.method(), req.headers()) {
            let allow = route.allow.clone();
            return RouteFuture::reject(Reject::MethodNotAllowed { allow }, &req, Some(route));
        }
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_size) {
            return RouteFuture::reject(Reject::PayloadTooLarge, &req, Some(route));
        }
        let limit = usize::try_from(self.max_body_size).unwrap_or(usize::MAX);
        let mut req = req.map(|b| {
            Limited::new(b, limit)
                .map_err(BoxError::from)
                .boxed_unsync()
        });
        let matched = MatchedRoute(route);
        req.extensions_mut().insert(matched.clone());
        RouteFuture::Inner {
            future: self.inner.call(req),
            route: matched,
        }
    }
}

#[cfg(test)]
mod path_tests;
