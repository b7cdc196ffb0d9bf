//! Route matching: the longest configured prefix that the normalized path starts with
//! wins.
//!
//! The path is first put in the normal form of [`crate::path`] (or refused with 400), and
//! the request's URI is rewritten to it, so the route, the auth rules, `strip_prefix` and
//! the upstream all see one path; the query is kept byte for byte. A path whose route
//! would change if a server dropped its `;` parameters (Tomcat's `/admin;x/secret` is
//! `/admin/secret`) is refused too.
//!
//! Routes are sorted once at start (longest prefix first), so a match is a scan of a short
//! list with `starts_with`; for the handful of routes a gateway has this beats a trie.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::CONTENT_LENGTH;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::config::RouteSettings;
use crate::path::{self, EscapedSlashes};
use crate::proxy::headers::{is_cors_preflight, X_REQUEST_ID};
use crate::response::{Body, BoxError, Reject};

/// A configured route with what is derived from it once.
#[derive(Debug)]
pub struct Route {
    /// Position in the configuration; also the metrics label index.
    pub index: usize,
    pub settings: RouteSettings,
    /// `Allow` for 405 answers.
    pub allow: HeaderValue,
}

impl Route {
    /// Whether the route takes this request's method: one of `methods`, or a real CORS
    /// preflight where `allow_preflight` is on (an `OPTIONS` that is not one is an
    /// ordinary request and needs `OPTIONS` in `methods`).
    pub fn allows(&self, method: &Method, headers: &http::HeaderMap) -> bool {
        let s = &self.settings;
        s.methods.is_empty()
            || s.methods.contains(method)
            || (s.allow_preflight && is_cors_preflight(method, headers))
    }
}

/// Which route a request matched; put in request and response extensions.
#[derive(Debug, Clone)]
pub struct MatchedRoute(pub Arc<Route>);

/// The route table.
#[derive(Debug, Clone)]
pub struct Routes {
    by_length: Arc<[Arc<Route>]>,
}

impl Routes {
    pub fn new(routes: &[RouteSettings]) -> Routes {
        let mut all: Vec<Arc<Route>> = routes
            .iter()
            .enumerate()
            .map(|(index, settings)| {
                let allow = settings
                    .methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                Arc::new(Route {
                    index,
                    settings: settings.clone(),
                    allow: HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("")),
                })
            })
            .collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.settings.prefix.len()));
        Routes {
            by_length: all.into(),
        }
    }

    /// The route for `path` (already normal), longest prefix first.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.by_length
            .iter()
            .find(|r| path.starts_with(r.settings.prefix.as_str()))
    }

    /// The route that decides a request for the raw path `raw`, and the normal path when it
    /// differs from `raw`; or the answer when none does: 400 for a path the policy refuses
    /// (before any route is considered), 404 for no route.
    pub fn decide(
        &self,
        raw: &str,
        escaped_slashes: EscapedSlashes,
    ) -> Result<(Arc<Route>, Option<String>), Reject> {
        let normal = path::normalize(raw, escaped_slashes).map_err(|reason| {
            // The reason only: paths can carry secrets and are never logged.
            tracing::debug!(%reason, "request path refused");
            Reject::BadRequest
        })?;
        let route = self.find(&normal).ok_or(Reject::NotFound)?;
        // Borrowed: no parameters, the same path, the same route (the common case).
        let same_without_parameters =
            path::without_parameters(&normal).is_ok_and(|bare| match bare {
                Cow::Borrowed(_) => true,
                Cow::Owned(bare) => self.find(&bare).is_some_and(|r| r.index == route.index),
            });
        if !same_without_parameters {
            tracing::debug!("request path refused: its ; parameters decide the route");
            return Err(Reject::BadRequest);
        }
        let rewritten = match normal {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) => Some(p),
        };
        Ok((route.clone(), rewritten))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn longest_prefix_wins() {
        let c = Config::from_toml_str(
            "[emulator]\nenabled=true\n[[routes]]\nprefix='/'\nupstream='whoami'\n\
             [[routes]]\nprefix='/api/'\nupstream='whoami'\n\
             [[routes]]\nprefix='/api/admin/'\nupstream='whoami'\nmethods=['GET']\n",
        )
        .unwrap();
        let r = Routes::new(&c.routes);
        assert_eq!(r.find("/api/admin/x").unwrap().index, 2);
        assert_eq!(r.find("/api/x").unwrap().index, 1);
        assert_eq!(r.find("/other").unwrap().index, 0);
        let admin = r.find("/api/admin/").unwrap();
        let none = http::HeaderMap::new();
        assert!(admin.allows(&Method::GET, &none));
        assert!(!admin.allows(&Method::POST, &none));
        assert_eq!(admin.allow, "GET");
    }
}
