//! [`DivertLayer`]: the shape every divert before routing shares — a [`Diverter`] looks at
//! each request and either answers it itself (forward-auth's endpoint, the relay's
//! prefix) or hands it back to go on to the inner service (routing) untouched.
//!
//! A divert sits between the rescue layer (which renders its refusals) and the route
//! layer; each one's rule for what it takes, and why it sits where it does, is in its own
//! module (`stack::forward_auth`, `stack::relay`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, Response};
use tower::{Layer, Service};

use crate::http::Body;
use crate::rejection::Rejection;

/// A diverted request's answer. Boxed: it holds a validation or a whole CloudBase
/// exchange, next to which one allocation is nothing; requests that go on keep the inner
/// future unboxed.
pub type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Rejection>> + Send>>;

/// What a divert answers itself.
pub trait Diverter: Clone {
    /// What [`Diverter::takes`] learnt of a request that [`Diverter::divert`] needs.
    type Taken;

    /// `Some` for a request this divert answers; `None` leaves it to the inner service.
    fn takes(&self, req: &Request<Body>) -> Option<Self::Taken>;

    /// The answer to a request [`Diverter::takes`] took.
    fn divert(&self, req: Request<Body>, taken: Self::Taken) -> Answer;
}

/// Builds [`Divert`] services over a [`Diverter`].
#[derive(Debug, Clone)]
pub struct DivertLayer<D> {
    diverter: D,
}

impl<D> DivertLayer<D> {
    pub fn new(diverter: D) -> Self {
        DivertLayer { diverter }
    }
}

impl<S, D: Clone> Layer<S> for DivertLayer<D> {
    type Service = Divert<S, D>;
    fn layer(&self, inner: S) -> Divert<S, D> {
        Divert {
            inner,
            diverter: self.diverter.clone(),
        }
    }
}

/// See [`DivertLayer`].
#[derive(Debug, Clone)]
pub struct Divert<S, D> {
    inner: S,
    diverter: D,
}

impl<S, D> Service<Request<Body>> for Divert<S, D>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Rejection>,
    D: Diverter,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Either<Answer, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        // A diverter is always ready; the inner service's readiness is for the others.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self.diverter.takes(&req) {
            Some(taken) => Either::Left(self.diverter.divert(req, taken)),
            None => Either::Right(self.inner.call(req)),
        }
    }
}
