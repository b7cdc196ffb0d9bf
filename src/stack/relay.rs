//! The relay's divert before routing (a [`Diverter`] for [`super::divert::DivertLayer`]):
//! requests under `relay.prefix` (in normal form) go to the [`Relay`] (`crate::relay`);
//! every other request goes on to the inner service untouched.
//!
//! It sits between the rescue layer (which renders the relay's refusals) and routing,
//! after forward-auth's divert and after client-header stripping, so no forged identity
//! header reaches CloudBase either; inside the access log, so relayed calls are logged
//! and counted (`kind="relay"`). The relay's prefix needs no gateway token and is never
//! cached.

use http::Request;

use super::divert::{Answer, Diverter};
use crate::http::Body;
use crate::relay::Relay;

/// The relay's divert: `DivertLayer::new(relay)` in the stack.
impl Diverter for Relay {
    /// The CloudBase path the request is for.
    type Taken = String;

    fn takes(&self, req: &Request<Body>) -> Option<String> {
        self.cloudbase_path(req.uri().path())
    }

    fn divert(&self, req: Request<Body>, path: String) -> Answer {
        let relay = self.clone();
        Box::pin(async move { relay.answer(req, path).await })
    }
}

#[cfg(test)]
mod tests {
    //! The divert with `oneshot`, no socket: what goes to the inner service, and what the
    //! relay answers without calling CloudBase (here a closed port, so a call would be a 502).

    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::Duration;

    use cloudbase_auth::types::{Introspection, UserProfile};
    use cloudbase_auth::{CallOptions, Error as ApiError};
    use http::{Response, StatusCode};
    use tower::{Service, ServiceBuilder, ServiceExt};

    use super::*;
    use crate::cache::{AuthApi, BoxFuture, IdentityCache};
    use crate::config::{Config, EscapedSlashes, IdentityMapping};
    use crate::http::empty;
    use crate::metrics::{Metrics, RequestKind};
    use crate::rejection::Rejection;
    use crate::relay::RelayParts;
    use crate::routing::RequestContext;
    use crate::stack::divert::DivertLayer;
    use crate::stack::rescue::RescueLayer;

    /// A CloudBase the cache must never ask: the relay validates nothing.
    struct Unasked;

    impl AuthApi for Unasked {
        fn introspect<'a>(
            &'a self,
            _: &'a str,
            _: &'a CallOptions,
        ) -> BoxFuture<'a, Result<Introspection, ApiError>> {
            panic!("the relay asked CloudBase to introspect")
        }
        fn user_me<'a>(
            &'a self,
            _: &'a str,
            _: &'a CallOptions,
        ) -> BoxFuture<'a, Result<UserProfile, ApiError>> {
            panic!("the relay asked CloudBase for a profile")
        }
    }

    fn relay_layer(extra: &str) -> (DivertLayer<Relay>, Arc<Metrics>) {
        let config = Config::from_toml_str(&format!(
            "[cloudbase]\nbase_url = \"http://127.0.0.1:1/auth/v1\"\n\
             [relay]\nenabled = true\nallowed_origins = [\"https://app.example.com\"]\n{extra}"
        ))
        .unwrap();
        let metrics = Arc::new(Metrics::new(vec![config.relay.prefix.clone()]));
        let cache = IdentityCache::new(
            &config.cache,
            &IdentityMapping::new([]),
            Arc::new(Unasked),
            metrics.clone(),
        );
        let parts = RelayParts {
            base_url: config.cloudbase.base_url.clone().unwrap(),
            escaped_slashes: EscapedSlashes::Reject,
            trusted_proxies: Vec::new(),
            request_timeout: Duration::from_secs(5),
            client: crate::proxy::forward::upstream_client(&config.upstream, None).unwrap(),
            cache,
            metrics: metrics.clone(),
            label: 0,
        };
        let relay = Relay::new(&config.relay, parts).unwrap();
        (DivertLayer::new(relay), metrics)
    }

    /// The relay over an inner service that answers 299 to say "routing got it", under the
    /// rescue layer that renders its refusals, as in the stack.
    fn stack(
        layer: DivertLayer<Relay>,
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> {
        ServiceBuilder::new()
            .layer(RescueLayer)
            .layer(layer)
            .service_fn(|_req: Request<Body>| async {
                let mut r = Response::new(empty());
                *r.status_mut() = StatusCode::from_u16(299).unwrap();
                Ok::<_, Rejection>(r)
            })
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(empty()).unwrap()
    }

    #[tokio::test]
    async fn only_paths_under_the_prefix_in_normal_form_are_diverted() {
        let (layer, _) = relay_layer("");
        for uri in [
            "/api/x",
            "/auth/v1",
            "/auth/v10/signin",
            "/auth/v1/../../admin",
            "/",
        ] {
            let resp = stack(layer.clone())
                .oneshot(request("GET", uri, &[]))
                .await
                .unwrap();
            assert_eq!(resp.status(), 299, "{uri} goes on to routing");
        }
        for uri in [
            "/auth/v1/user/me",
            "/%61uth/v1/user/me",
            "/auth//v1/./user/me",
        ] {
            let resp = stack(layer.clone())
                .oneshot(request("GET", uri, &[]))
                .await
                .unwrap();
            assert_eq!(resp.status(), 502, "{uri}: relayed (to a closed port)");
            let context = resp.extensions().get::<RequestContext>();
            assert_eq!(
                context.map(|c| c.route.settings.prefix.as_str()),
                Some("/auth/v1/"),
                "{uri}: labelled with the relay's prefix"
            );
            let kind = context.map(|c| c.kind);
            assert_eq!(kind, Some(RequestKind::Relay), "{uri}: counted as relayed");
        }
    }

    #[tokio::test]
    async fn preflights_are_answered_without_calling_cloudbase() {
        let (layer, metrics) = relay_layer("");
        let resp = stack(layer)
            .oneshot(request(
                "OPTIONS",
                "/auth/v1/signin",
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "POST"),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        assert_eq!(
            resp.headers()["access-control-allow-origin"],
            "https://app.example.com"
        );
        assert!(metrics
            .render(0)
            .contains("relay_requests_total{endpoint=\"preflight\",status=\"2xx\"} 1"));
    }

    #[tokio::test]
    async fn a_spent_limit_is_429_before_cloudbase_and_declared_oversize_413() {
        let (layer, _) =
            relay_layer("signin_rate = \"1/h\"\nsignin_burst = 1\nmax_body_size = \"10\"\n");
        let signin = || {
            request(
                "POST",
                "/auth/v1/signin",
                &[("origin", "https://app.example.com")],
            )
        };
        let first = stack(layer.clone()).oneshot(signin()).await.unwrap();
        assert_eq!(first.status(), 502, "the first one went to CloudBase");
        let second = stack(layer.clone()).oneshot(signin()).await.unwrap();
        assert_eq!(second.status(), 429);
        let retry_after: u64 = second.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((3590..=3600).contains(&retry_after), "{retry_after}");
        assert_eq!(
            second.headers()["access-control-allow-origin"],
            "https://app.example.com"
        );
        let big = request("POST", "/auth/v1/user/sudo", &[("content-length", "11")]);
        let resp = stack(layer).oneshot(big).await.unwrap();
        assert_eq!(resp.status(), 413);
    }
}
