//! The request path, assembled in one place, outermost layer first: [`build`] is the stack
//! in one function, with the reason each layer sits where it does. Each middleware is a
//! module here, in tower-http's shape (`FooLayer` holding validated settings, `Foo<S>`
//! wrapping the inner service, a `Debug` derive, a unit test driving it with `oneshot`).
//!
//! Two contracts hold the layers together. Above [`rescue`], services cannot fail; below
//! it, a layer refuses a request by returning a [`Rejection`], which the rescue layer
//! renders. Below [`route`], services take [`Routed`] — the request with its
//! [`RequestContext`](crate::routing::RequestContext) — and a layer that answers itself
//! attaches the context to its answer (or leaves it to the route layer, which attaches the
//! route to anything that comes back without one).
//!
//! A new layer is a module here in the same shape, with its `oneshot` tests beside it, and
//! one line in [`build`] with the reason for its place: above the rescue if it cannot
//! refuse, between rescue and route if it needs no route (a divert that answers some
//! requests itself, as forward-auth and the relay do), below the route layer if it does
//! (then it is a `Service<Routed>`). What it needs built once at start (a client, a
//! limiter's state) comes in [`Pieces`], which the composition root fills.

pub mod access_log;
pub mod auth;
pub mod client_headers;
pub mod divert;
pub mod forward_auth;
pub mod hop_by_hop;
pub mod rate_limit;
pub mod relay;
pub mod rescue;
pub mod route;
pub mod timeout;
pub mod trace;

use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, SET_COOKIE};
use http::HeaderName;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};

use crate::auth::Authenticator;
use crate::cache::IdentityCache;
use crate::config::Config;
use crate::forward_auth::ForwardAuth;
use crate::http::request_id::MakeRequestUuidV4;
use crate::http::{Body, X_REQUEST_ID};
use crate::limit::RouteLimits;
use crate::metrics::{Metrics, RequestKind};
use crate::rejection::Rejection;
use crate::relay::Relay;
use crate::routing::{Routed, Routes};
use crate::telemetry::trace::Tracing;
use auth::AuthLayer;
use client_headers::ClientHeadersLayer;
use divert::DivertLayer;
use hop_by_hop::HopByHopLayer;
use rate_limit::RateLimitLayer;
use rescue::RescueLayer;
use route::RouteLayer;
use timeout::RequestTimeoutLayer;
use trace::TraceLayer;

/// The whole gateway service.
pub type GatewayService =
    BoxCloneSyncService<http::Request<Body>, http::Response<Body>, std::convert::Infallible>;

/// The runtime pieces the layers are built over, made once by the composition root
/// (`app::Runtime`) and shared by every connection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pieces {
    /// The validation cache.
    pub cache: IdentityCache,
    pub metrics: Arc<Metrics>,
    /// The span exporter while `[telemetry]` is on; `None` leaves the trace layer out.
    pub tracing: Option<Tracing>,
    /// The forward-auth endpoint while `[forward_auth]` is on.
    pub forward_auth: Option<ForwardAuth>,
    /// The relay while `[relay]` is on.
    pub relay: Option<Relay>,
    /// The routes' rate limiters; with no route limited the layer is left out.
    pub rate_limits: RouteLimits,
}

impl Pieces {
    /// The pieces of a gateway with neither tracing, forward-auth nor the relay: the cache,
    /// the metrics and the routes' limiters.
    pub fn new(config: &Config, cache: IdentityCache, metrics: Arc<Metrics>) -> Pieces {
        Pieces {
            cache,
            metrics,
            tracing: None,
            forward_auth: None,
            relay: None,
            rate_limits: RouteLimits::new(&config.routes),
        }
    }
}

/// Builds the stack from validated configuration, the runtime [`Pieces`] the composition
/// root made once (`app::Runtime`), and the leaf service (in the gateway, the proxy's
/// `Forward`; in a test, any `service_fn` over [`Routed`]).
pub fn build<L>(config: &Config, pieces: &Pieces, leaf: L) -> GatewayService
where
    L: Service<Routed, Response = http::Response<Body>, Error = Rejection>
        + Clone
        + Send
        + Sync
        + 'static,
    L::Future: Send + 'static,
{
    let sensitive: Arc<[HeaderName]> =
        Arc::new([AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE, SET_COOKIE]);
    let metrics = &pieces.metrics;
    let rate_limits = pieces.rate_limits.any().then(|| {
        RateLimitLayer::new(
            pieces.rate_limits.clone(),
            &config.server.trusted_proxies,
            metrics.clone(),
        )
    });

    let service = ServiceBuilder::new()
        // Hop-by-hop headers go before anything else: a name the client lists in
        // `Connection` may remove only what the client sent, never a header a later layer
        // sets (the request id, the identity, `X-Forwarded-*`).
        .layer(HopByHopLayer)
        // Request id next, so every later layer, log line and rejection carries it.
        .layer(SetRequestIdLayer::new(
            X_REQUEST_ID.clone(),
            MakeRequestUuidV4,
        ))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
        // Credentials are marked sensitive before anything could log or Debug them.
        .layer(SetSensitiveRequestHeadersLayer::from_shared(
            sensitive.clone(),
        ))
        .layer(SetSensitiveResponseHeadersLayer::from_shared(sensitive))
        // Access log and metrics outside the timeout and the rescue, so every answer, 504s
        // and rejections included, is logged and counted with its status.
        .layer(access_log::AccessLogLayer::new(metrics.clone()))
        // The request's span next (with `[telemetry]` on): after the request id (which it
        // records) and the credential marking, around everything that may answer,
        // rejections and the diverts included.
        .option_layer(pieces.tracing.clone().map(TraceLayer::new))
        // Every rejection below becomes the JSON envelope here, with the request id set
        // above; above this line nothing fails.
        .layer(RescueLayer)
        // Forged identity headers go, and an ambiguous Host is refused, before any route,
        // auth mode or upstream sees them; inside the access log, so a 400 is logged.
        .layer(ClientHeadersLayer::new(&config.identity.strip))
        // Forward-auth (when on): requests for `forward_auth.path` are answered here and
        // never routed; after identity stripping, before routing. Not under
        // `request_timeout`: it only waits for the cache, whose CloudBase calls
        // `cloudbase.timeout` bounds. Before the relay: the configuration keeps their
        // paths apart in normal form, but the endpoint also owns every raw spelling under
        // it (Envoy appends the client's path as sent), and
        // `/_gateway/auth/../../auth/v1/user/me` must be decided (400), not relayed to
        // CloudBase, whose 200 an ingress would take for "allowed".
        .option_layer(pieces.forward_auth.clone().map(DivertLayer::new))
        // The relay (when on) before routing: its prefix is CloudBase's, needs no gateway
        // token and is never cached; after stripping, so no forged identity header
        // reaches CloudBase either.
        .option_layer(pieces.relay.clone().map(DivertLayer::new))
        // Routing before auth: the route decides whether and how to authenticate, on the
        // normalized path it also hands to every later layer. Outside the timeout, so a 504
        // is still tagged with its route for metrics and the log.
        .layer(RouteLayer::new(
            Routes::new(&config.routes).labelled(metrics, RequestKind::Proxy),
            config.server.max_body_size,
            config.server.escaped_slashes,
        ))
        // The timeout covers CloudBase validation and the upstream alike.
        .layer(RequestTimeoutLayer::new(config.server.request_timeout))
        .layer(AuthLayer::new(
            Authenticator::new(pieces.cache.clone(), metrics.clone()),
            config.identity.headers.clone(),
        ))
        // Per-user rate limits after authentication: they key on the `sub` of the
        // context, and a request authentication refuses must spend nothing.
        .option_layer(rate_limits)
        .service(leaf);
    BoxCloneSyncService::new(service)
}

/// Helpers for the middleware unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use http::{Request, Response};
    use tower::{service_fn, Service};

    use crate::config::Config;
    use crate::http::{empty, Body};
    use crate::rejection::Rejection;
    use crate::routing::{RequestContext, Routes};

    /// An inner service that answers 200 with the request's headers as its own, so a test
    /// can read what reached it.
    pub fn echo_headers(
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = Rejection, Future = impl Send>
           + Clone {
        service_fn(|req: Request<Body>| async move {
            let mut response = Response::new(empty());
            *response.headers_mut() = req.headers().clone();
            Ok(response)
        })
    }

    /// A GET for `path` with an empty body.
    pub fn request(path: &str) -> Request<Body> {
        Request::get(path).body(empty()).expect("request")
    }

    /// The context of a request routed to a route of prefix `prefix` (`whoami`, auth
    /// required, every method).
    pub fn context(prefix: &str) -> RequestContext {
        context_with(prefix, "")
    }

    /// Like [`context`], the route's `[[routes]]` table holding `lines` too.
    pub fn context_with(prefix: &str, lines: &str) -> RequestContext {
        let config = Config::from_toml_str(&format!(
            "[emulator]\nenabled = true\n[[routes]]\nprefix = {prefix:?}\nupstream = \"whoami\"\n{lines}\n"
        ))
        .expect("test route");
        let route = Routes::new(&config.routes)
            .find(prefix)
            .expect("route")
            .clone();
        RequestContext::new(route)
    }
}

#[cfg(test)]
mod tests {
    //! The whole stack over a `service_fn` leaf: what any layer added below the rescue can
    //! rely on from the layers around it.

    use std::sync::Mutex;

    use cloudbase_auth::types::{Introspection, UserProfile};
    use cloudbase_auth::{CallOptions, Error as ApiError};
    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use tower::{service_fn, ServiceExt};

    use super::*;
    use crate::cache::{AuthApi, BoxFuture};
    use crate::http::empty;
    use crate::rejection::Reject;

    /// A CloudBase that must not be asked: the routes here need no token.
    struct NotAsked;

    impl AuthApi for NotAsked {
        fn introspect<'a>(
            &'a self,
            _: &'a str,
            _: &'a CallOptions,
        ) -> BoxFuture<'a, Result<Introspection, ApiError>> {
            panic!("CloudBase asked on a route without auth")
        }
        fn user_me<'a>(
            &'a self,
            _: &'a str,
            _: &'a CallOptions,
        ) -> BoxFuture<'a, Result<UserProfile, ApiError>> {
            panic!("CloudBase asked on a route without auth")
        }
    }

    /// The stack of a gateway with one open route, `/open/`, over `leaf`.
    fn stack<L>(leaf: L) -> (GatewayService, Arc<Metrics>)
    where
        L: Service<Routed, Response = http::Response<Body>, Error = Rejection>
            + Clone
            + Send
            + Sync
            + 'static,
        L::Future: Send + 'static,
    {
        let config = Config::from_toml_str(
            "[emulator]\nenabled = true\n[[routes]]\nprefix = \"/open/\"\nupstream = \"whoami\"\nauth = \"none\"\n",
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new(config.routes.iter().map(|r| r.prefix.clone())));
        let cache = IdentityCache::new(
            &config.cache,
            &config.identity.headers,
            Arc::new(NotAsked),
            metrics.clone(),
        );
        let pieces = Pieces::new(&config, cache, metrics.clone());
        (build(&config, &pieces, leaf), metrics)
    }

    #[tokio::test]
    async fn a_leafs_refusal_is_rendered_with_the_request_id_and_counted_under_its_route() {
        let (svc, metrics) = stack(service_fn(|_: Routed| async {
            Err::<Response<Body>, _>(Rejection::from(Reject::UpstreamUnavailable))
        }));
        let req = Request::get("/open/x")
            .header("host", "gw.example")
            .body(empty())
            .unwrap();
        let r = svc.oneshot(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let id = r.headers()[&X_REQUEST_ID].to_str().unwrap().to_owned();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "UPSTREAM_UNAVAILABLE");
        assert_eq!(body["requestId"], id.as_str(), "the id the stack made");
        assert!(metrics.render(0).contains(
            "cloudbase_gateway_requests_total{route=\"/open/\",method=\"GET\",status=\"502\",kind=\"proxy\"} 1"
        ));
    }

    #[tokio::test]
    async fn a_forged_identity_never_reaches_the_leaf_even_on_an_open_route() {
        let seen = Arc::new(Mutex::new(None));
        let record = seen.clone();
        let (svc, _) = stack(service_fn(move |(req, _): Routed| {
            *record.lock().unwrap() = Some(req.headers().clone());
            async { Ok::<_, Rejection>(Response::new(empty())) }
        }));
        let req = Request::get("/open/x")
            .header("host", "gw.example")
            .header("x-user-id", "admin")
            .header("x_user_id", "admin")
            .header("connection", "x-request-id")
            .body(empty())
            .unwrap();
        let r = svc.oneshot(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let headers = seen.lock().unwrap().take().expect("the leaf was called");
        assert!(headers.get("x-user-id").is_none());
        assert!(headers.get("x_user_id").is_none());
        assert!(
            headers.get(&X_REQUEST_ID).is_some(),
            "a Connection-listed name cannot remove what the gateway sets"
        );
    }
}
