//! [`ForwardAuthLayer`]: the divert before routing that hands the forward-auth endpoint's
//! requests to [`ForwardAuth`] (`crate::forward_auth`); every other request goes on to the
//! inner service untouched.
//!
//! A spelling of the endpoint that only normalization reveals (`/_gateway/%61uth`) is
//! refused with 400 rather than routed: the endpoint's path is never routed to an
//! upstream, in any spelling. It sits between the rescue layer (which renders its
//! refusals) and the relay's divert: their paths may not overlap, but the endpoint owns
//! every raw spelling under it, so `/_gateway/auth/../../auth/v1/user/me` is decided here,
//! never relayed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, Response};
use tower::{Layer, Service};

use crate::forward_auth::{ForwardAuth, Target};
use crate::http::Body;
use crate::rejection::Rejection;

/// Builds [`Divert`] services over the endpoint.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
pub struct Divert<S> {
    inner: S,
    endpoint: ForwardAuth,
}

/// The endpoint's answer (boxed: it awaits validation).
type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Rejection>> + Send>>;

impl<S> Service<Request<Body>> for Divert<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Rejection>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Either<Answer, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        // The endpoint is always ready; the inner service's readiness is for the others.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self.endpoint.target(req.uri().path()) {
            Target::Endpoint => Either::Left(Box::pin(self.endpoint.clone().answer(req))),
            Target::Disguised => {
                let refused = self.endpoint.disguised();
                Either::Left(Box::pin(std::future::ready(Err(refused))))
            }
            Target::Elsewhere => Either::Right(self.inner.call(req)),
        }
    }
}
