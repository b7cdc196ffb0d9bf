//! [`ClientHeadersLayer`]: what is done to a client's request head before any route, auth
//! mode or upstream sees it. It removes forged identity headers in every spelling, and
//! refuses an ambiguous `Host` — then leaves exactly one `Host`, the request's real
//! authority, for the forwarder to copy into `X-Forwarded-Host`.
//!
//! It sits inside the request id and access log (so its 400 carries an id and is logged),
//! and allocates nothing on a request that needs nothing done beyond a scan of its header
//! names.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready};
use http::header::HOST;
use http::{HeaderName, Request, Response};
use tower::{Layer, Service};

use crate::http::headers;
use crate::http::Body;
use crate::rejection::{Reject, Rejection};

/// Builds [`ClientHeaders`] services.
#[derive(Debug, Clone)]
pub struct ClientHeadersLayer {
    identity: Arc<[HeaderName]>,
}

impl ClientHeadersLayer {
    /// `identity`: normalized identity header names (`IdentitySettings::strip`).
    pub fn new(identity: &[HeaderName]) -> Self {
        ClientHeadersLayer {
            identity: identity.into(),
        }
    }
}

impl<S> Layer<S> for ClientHeadersLayer {
    type Service = ClientHeaders<S>;
    fn layer(&self, inner: S) -> ClientHeaders<S> {
        ClientHeaders {
            inner,
            identity: self.identity.clone(),
        }
    }
}

/// Removes client-supplied identity headers (see [`headers::strip_identity`]) and
/// validates the request's authority (see [`headers::request_authority`]): a 400
/// `BAD_REQUEST` rejection when it is ambiguous, else a single `Host` holding it.
#[derive(Debug, Clone)]
pub struct ClientHeaders<S> {
    inner: S,
    identity: Arc<[HeaderName]>,
}

impl<S> Service<Request<Body>> for ClientHeaders<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Rejection>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Either<Ready<Result<Response<Body>, Rejection>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        headers::strip_identity(req.headers_mut(), &self.identity);
        match headers::request_authority(req.version(), req.uri(), req.headers()) {
            Ok(authority) => {
                let has_host_line = req.headers().contains_key(HOST);
                match authority {
                    Some(a) => {
                        req.headers_mut().insert(HOST, a);
                    }
                    None if has_host_line => {
                        req.headers_mut().remove(HOST);
                    }
                    None => {}
                }
                Either::Right(self.inner.call(req))
            }
            Err(why) => {
                tracing::debug!(?why, "request refused: ambiguous authority");
                Either::Left(futures_util::future::ready(Err(Reject::BadRequest.into())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::empty;
    use crate::stack::rescue::RescueLayer;
    use crate::stack::testing::echo_headers;
    use http::Method;
    use tower::{ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn two_hosts_or_a_host_with_a_path_are_400_and_absolute_form_wins() {
        let svc = ServiceBuilder::new()
            .layer(RescueLayer)
            .layer(ClientHeadersLayer::new(&[HeaderName::from_static(
                "x-user-id",
            )]))
            .service(echo_headers());
        let two = Request::builder()
            .header("host", "a.example")
            .header("host", "b.example")
            .body(empty())
            .unwrap();
        assert_eq!(svc.clone().oneshot(two).await.unwrap().status(), 400);
        let path = Request::builder()
            .header("host", "a.example/evil")
            .body(empty())
            .unwrap();
        assert_eq!(svc.clone().oneshot(path).await.unwrap().status(), 400);
        let absolute = Request::builder()
            .method(Method::GET)
            .uri("http://real.example:8080/x")
            .header("host", "other.example")
            .header("x_user_id", "forged")
            .body(empty())
            .unwrap();
        let r = svc.clone().oneshot(absolute).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["host"], "real.example:8080");
        assert!(r.headers().get("x_user_id").is_none());
    }
}
