//! [`HopByHopLayer`]: the outermost layer, removing the request's hop-by-hop headers
//! (RFC 9110 §7.6.1), including every name the client lists in `Connection`.
//!
//! It must run before the gateway sets a header of its own (`X-Request-Id`, the identity
//! headers, `X-Forwarded-*`): run later, as it once did in the forwarder, `Connection:
//! X-User-Id, X-User-Anonymous` deleted the identity the auth layer had just set. Run
//! first, a client can only remove headers it sent itself. It allocates nothing on a
//! request that needs nothing done beyond a scan of its header names.

use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use crate::http::headers;

/// Builds [`HopByHop`] services.
#[derive(Debug, Clone, Copy, Default)]
pub struct HopByHopLayer;

impl<S> Layer<S> for HopByHopLayer {
    type Service = HopByHop<S>;
    fn layer(&self, inner: S) -> HopByHop<S> {
        HopByHop { inner }
    }
}

/// Removes the request's hop-by-hop headers (see [`headers::remove_hop_by_hop`]); a
/// WebSocket upgrade keeps `Upgrade` and `Connection: upgrade`.
#[derive(Debug, Clone)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{empty, Body};
    use crate::stack::testing::echo_headers;
    use http::HeaderValue;
    use tower::{ServiceBuilder, ServiceExt};

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
}
