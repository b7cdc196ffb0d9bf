//! Proxying: header hygiene (`headers`), the upstream call (`forward`) with its retry rule
//! (`retry`) and response framing (`framing`), the built-in echo upstream (`whoami`), and
//! the layer that removes client-supplied identity headers.

pub mod forward;
pub mod framing;
pub mod headers;
pub mod retry;
pub mod whoami;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, Request};
use tower::{Layer, Service};

/// Removes client-supplied identity headers (see [`headers::strip_identity`]) before
/// anything else reads the request.
#[derive(Clone)]
pub struct StripIdentityLayer {
    names: Arc<[HeaderName]>,
}

impl StripIdentityLayer {
    /// `names`: normalized identity header names (`IdentitySettings::strip`).
    pub fn new(names: &[HeaderName]) -> Self {
        StripIdentityLayer {
            names: names.into(),
        }
    }
}

impl<S> Layer<S> for StripIdentityLayer {
    type Service = StripIdentity<S>;
    fn layer(&self, inner: S) -> StripIdentity<S> {
        StripIdentity {
            inner,
            names: self.names.clone(),
        }
    }
}

#[derive(Clone)]
pub struct StripIdentity<S> {
    inner: S,
    names: Arc<[HeaderName]>,
}

impl<S, B> Service<Request<B>> for StripIdentity<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        headers::strip_identity(req.headers_mut(), &self.names);
        self.inner.call(req)
    }
}
