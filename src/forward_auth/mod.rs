//! Forward-auth: the gateway's validation, cache, route rules and identity headers for an
//! ingress that stays in the data path (nginx `auth_request`, ingress-nginx, Traefik
//! `ForwardAuth`, Caddy `forward_auth`, Envoy `ext_authz`). The ingress asks
//! `forward_auth.path` about each request; the gateway answers 200 with the identity
//! headers, or its own 401 / 403 / 503 (README "Behind an existing ingress").
//!
//! Three separable pieces: [`original`] recovers the original request from each ingress's
//! subrequest shape (pure); [`ForwardAuth`] decides it through the proxy path's own
//! pieces ([`crate::routing::Routes::decide`], [`crate::auth::Authenticator`]) and
//! answers; [`ForwardAuthLayer`] is the whole coupling to the stack: one branch before
//! routing that hands the endpoint's requests to [`ForwardAuth`].
//!
//! Trade-off: the endpoint shares the main listener (the ingress already reaches it, and
//! one port is one thing less to secure), so its path is taken from the proxy's path
//! space; the configuration refuses a path that collides with a route prefix or with the
//! relay's prefix, and the layer sits before the relay's, so a raw spelling under the
//! endpoint that normalizes into the relay is still decided here.

pub mod original;
mod service;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, Response};
use tower::{Layer, Service};

pub use service::{routes, ForwardAuth, Target, X_GATEWAY_REJECTION};

use crate::response::Body;

/// Diverts requests for the endpoint to [`ForwardAuth`]; every other request goes on to
/// the inner service (routing) untouched. A spelling of the endpoint that only
/// normalization reveals (`/_gateway/%61uth`) is refused with 400 rather than routed:
/// the endpoint's path is never routed to an upstream, in any spelling.
#[derive(Clone)]
pub struct ForwardAuthLayer {
    endpoint: ForwardAuth,
}

impl ForwardAuthLayer {
    pub fn new(endpoint: ForwardAuth) -> Self {
        ForwardAuthLayer { endpoint }
    }
}

impl<S> Layer<S> for ForwardAuthLayer {
    type Service = Divert<S>;
    fn layer(&self, inner: S) -> Divert<S> {
        Divert {
            inner,
            endpoint: self.endpoint.clone(),
        }
    }
}

/// See [`ForwardAuthLayer`].
#[derive(Clone)]
pub struct Divert<S> {
    inner: S,
    endpoint: ForwardAuth,
}

/// The endpoint's answer (boxed: it awaits validation).
type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S> Service<Request<Body>> for Divert<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<Answer, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The endpoint is always ready; the inner service's readiness is for the others.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self.endpoint.target(req.uri().path()) {
            Target::Endpoint => Either::Left(self.endpoint.call(req)),
            Target::Disguised => {
                let response = service::disguised(&req);
                Either::Left(Box::pin(std::future::ready(Ok(response))))
            }
            Target::Elsewhere => Either::Right(self.inner.call(req)),
        }
    }
}

#[cfg(test)]
mod tests;
