//! The request path, assembled in one place, outermost layer first: [`build`] is the stack
//! in one function, with the reason each layer sits where it does. Each middleware is a
//! module here, in tower-http's shape (`FooLayer` holding validated settings, `Foo<S>`
//! wrapping the inner service, a `Debug` derive, a unit test driving it with `oneshot`).

pub mod access_log;
pub mod auth;
pub mod client_headers;
pub mod hop_by_hop;
pub mod rescue;
pub mod route;
pub mod timeout;

use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, SET_COOKIE};
use http::HeaderName;
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};

use crate::cache::{IdentityCache, Limits};
use crate::config::{CloudbaseSettings, Config};
use crate::http::{Body, X_REQUEST_ID};
use crate::metrics::Metrics;
use crate::proxy::forward::{upstream_client, Forward};
use crate::routing::Routes;
use crate::server::StartError;
use auth::AuthLayer;
use client_headers::ClientHeadersLayer;
use cloudbase_auth::{Client, RootCerts};
use hop_by_hop::HopByHopLayer;
use rescue::RescueLayer;
use route::RouteLayer;
use timeout::RequestTimeoutLayer;

/// The whole gateway service.
pub type GatewayService =
    BoxCloneSyncService<http::Request<Body>, http::Response<Body>, std::convert::Infallible>;

/// What [`build`] makes: the service and the shared pieces the admin listener reads.
pub struct Built {
    pub service: GatewayService,
    pub metrics: Arc<Metrics>,
    pub cache: IdentityCache,
}

/// Builds the stack from validated configuration, calling CloudBase at `cloudbase_url`.
pub fn build(config: &Config, cloudbase_url: &str) -> Result<Built, StartError> {
    let client =
        cloudbase_client(&config.cloudbase, cloudbase_url).map_err(|e| StartError::Setup {
            what: "CloudBase client",
            source: e.into(),
        })?;
    build_with_api(config, Arc::new(client))
}

/// The CloudBase client `[cloudbase]` describes, of the Auth v2 API at `base_url`.
fn cloudbase_client(
    c: &CloudbaseSettings,
    base_url: &str,
) -> Result<Client, cloudbase_auth::Error> {
    let mut builder = Client::builder(base_url)
        .client_id(&c.client_id)
        .client_secret(c.client_secret.clone())
        .device_id(&c.device_id)
        .introspect_auth(c.introspect_auth)
        .timeout(c.timeout)
        .user_agent(concat!("cloudbase-gateway/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &c.ca_file {
        builder = builder.extra_root_certs(RootCerts::PemFile(path.clone()));
    }
    builder.build()
}

/// Builds the stack over any [`crate::cache::AuthApi`] (benches use an in-process one).
pub fn build_with_api(
    config: &Config,
    api: Arc<dyn crate::cache::AuthApi>,
) -> Result<Built, StartError> {
    let metrics = Arc::new(Metrics::new(config.routes.iter().map(|r| r.prefix.clone())));
    let limits = Limits {
        max_in_flight: config.cloudbase.max_in_flight,
        max_header_bytes: config.identity.max_header_bytes,
    };
    let cache = IdentityCache::with_limits(
        &config.cache,
        &config.identity.headers,
        limits,
        api,
        metrics.clone(),
    );
    let upstream = upstream_client(&config.upstream, config.cloudbase.ca_file.as_deref()).map_err(
        |source| StartError::Setup {
            what: "upstream client",
            source,
        },
    )?;
    let sensitive: Arc<[HeaderName]> =
        Arc::new([AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE, SET_COOKIE]);

    let service = ServiceBuilder::new()
        // Hop-by-hop headers go before anything else: a name the client lists in
        // `Connection` may remove only what the client sent, never a header a later layer
        // sets (the request id, the identity, `X-Forwarded-*`).
        .layer(HopByHopLayer)
        // Request id next, so every later layer, log line and rejection carries it.
        .layer(SetRequestIdLayer::new(
            X_REQUEST_ID.clone(),
            MakeRequestUuid,
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
        // Every rejection below becomes the JSON envelope here, with the request id set
        // above; above this line nothing fails.
        .layer(RescueLayer)
        // Forged identity headers go, and an ambiguous Host is refused, before any route,
        // auth mode or upstream sees them; inside the access log, so a 400 is logged.
        .layer(ClientHeadersLayer::new(&config.identity.strip))
        // Routing before auth: the route decides whether and how to authenticate, on the
        // normalized path it also hands to every later layer. Outside the timeout, so a 504
        // is still tagged with its route for metrics and the log.
        .layer(RouteLayer::new(
            Routes::new(&config.routes),
            config.server.max_body_size,
            config.server.escaped_slashes,
        ))
        // The timeout covers CloudBase validation and the upstream alike.
        .layer(RequestTimeoutLayer::new(config.server.request_timeout))
        .layer(AuthLayer::new(
            cache.clone(),
            config.identity.headers.clone(),
            metrics.clone(),
        ))
        .service(Forward::new(upstream, &config.server.trusted_proxies));
    Ok(Built {
        service: BoxCloneSyncService::new(service),
        metrics,
        cache,
    })
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
