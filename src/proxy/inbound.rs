//! What the gateway does to a client's request head before any other layer reads it.
//!
//! Two layers, at two depths of the stack (see `server::stack`):
//!
//! - [`HopByHopLayer`], outermost: removes hop-by-hop headers, including every name the
//!   client lists in `Connection`. It must run before the gateway sets a header of its own
//!   (`X-Request-Id`, the identity headers, `X-Forwarded-*`): run later, as it once did in
//!   the forwarder, `Connection: X-User-Id, X-User-Anonymous` deleted the identity the
//!   auth layer had just set. Run first, a client can only remove headers it sent itself.
//! - [`ClientHeadersLayer`], inside the request id and access log (so its 400 carries an
//!   id and is logged): removes forged identity headers in every spelling, and refuses an
//!   ambiguous `Host` — then leaves exactly one `Host`, the request's real authority, for
//!   the forwarder to copy into `X-Forwarded-Host`.
//!
//! Neither layer allocates on a request that needs nothing done beyond a scan of its
//! header names.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready};
use http::header::HOST;
use http::{HeaderName, Request, Response};
use tower::{Layer, Service};

use super::headers::{self, X_REQUEST_ID};
use crate::response::{Body, Reject};

/// Builds [`HopByHop`] services.
#[derive(Clone, Copy, Default)]
pub struct HopByHopLayer;

impl<S> Layer<S> for HopByHopLayer {
    type Service = HopByHop<S>;
    fn layer(&self, inner: S) -> HopByHop<S> {
        HopByHop { inner }
    }
}

/// Removes the request's hop-by-hop headers (see [`headers::remove_hop_by_hop`]); a
/// WebSocket upgrade keeps `Upgrade` and `Connection: upgrade`.
#[derive(Clone)]
pub struct HopByHop<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for HopByHop<S>
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
        let websocket = headers::is_websocket_upgrade(req.headers());
        headers::remove_hop_by_hop(req.headers_mut(), websocket);
        self.inner.call(req)
    }
}

/// Builds [`ClientHeaders`] services.
#[derive(Clone)]
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
/// validates the request's authority (see [`headers::request_authority`]): 400
/// `BAD_REQUEST` when it is ambiguous, else a single `Host` holding it.
#[derive(Clone)]
pub struct ClientHeaders<S> {
    inner: S,
    identity: Arc<[HeaderName]>,
}

impl<S> Service<Request<Body>> for ClientHeaders<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
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
                let response = Reject::BadRequest.into_response(req.headers().get(&X_REQUEST_ID));
                Either::Left(futures_util::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::empty;
    use http::{HeaderValue, Method};
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    /// An inner service that answers 200 with the request's headers as its own, so a test
    /// can read what reached it.
    fn echo_headers() -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        service_fn(|req: Request<Body>| async move {
            let mut response = Response::new(empty());
            *response.headers_mut() = req.headers().clone();
            Ok(response)
        })
    }

    #[tokio::test]
    async fn connection_listed_names_go_before_later_layers_set_theirs() {
        // A later layer sets a gateway header; the client listed that name in Connection.
        let set_identity = tower::layer::layer_fn(|inner| {
            tower::util::MapRequest::new(inner, |mut req: Request<Body>| {
                req.headers_mut()
                    .insert("x-user-id", HeaderValue::from_static("42"));
                req
            })
        });
        let svc = ServiceBuilder::new()
            .layer(HopByHopLayer)
            .layer(set_identity)
            .service(echo_headers());
        let req = Request::builder()
            .header("connection", "x-user-id, keep-alive")
            .header("keep-alive", "timeout=5")
            .body(empty())
            .unwrap();
        let r = svc.oneshot(req).await.unwrap();
        assert_eq!(r.headers()["x-user-id"], "42");
        assert!(r.headers().get("keep-alive").is_none());
        assert!(r.headers().get("connection").is_none());
    }

    #[tokio::test]
    async fn two_hosts_or_a_host_with_a_path_are_400_and_absolute_form_wins() {
        let svc = ServiceBuilder::new()
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
