//! The request path, assembled in one place, outermost layer first.

use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, SET_COOKIE};
use http::HeaderName;
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};

use super::timeout::RequestTimeoutLayer;
use super::StartError;
use crate::admin::metrics::Metrics;
use crate::auth::{AuthLayer, Authenticator};
use crate::cache::IdentityCache;
use crate::cloudbase::Client;
use crate::config::Config;
use crate::forward_auth::{self, ForwardAuth, ForwardAuthLayer};
use crate::proxy::forward::{upstream_client, Forward};
use crate::proxy::headers::X_REQUEST_ID;
use crate::proxy::StripIdentityLayer;
use crate::response::Body;
use crate::routing::{RouteLayer, Routes};

/// The whole gateway service.
pub type GatewayService =
    BoxCloneSyncService<http::Request<Body>, http::Response<Body>, std::convert::Infallible>;

/// What [`build`] makes: the service and the shared pieces the admin listener reads.
pub struct Built {
    pub service: GatewayService,
    pub metrics: Arc<Metrics>,
    pub cache: IdentityCache,
}

/// Builds the stack from validated configuration.
pub fn build(config: &Config) -> Result<Built, StartError> {
    let client = Client::new(&config.cloudbase).map_err(|e| StartError::Setup {
        what: "CloudBase client",
        source: e.into(),
    })?;
    build_with_api(config, Arc::new(client))
}

/// Builds the stack over any [`crate::cache::AuthApi`] (benches use an in-process one).
pub fn build_with_api(
    config: &Config,
    api: Arc<dyn crate::cache::AuthApi>,
) -> Result<Built, StartError> {
    // Forward-auth's default route, if any, is labelled after the configured routes.
    let fa_routes = forward_auth::routes(&config.forward_auth, &config.routes);
    let mut metrics = Metrics::new(fa_routes.iter().map(|r| r.prefix.clone()));
    if config.forward_auth.enabled {
        metrics = metrics.with_forward_auth();
    }
    let metrics = Arc::new(metrics);
    let fields: Vec<_> = config.identity.headers.iter().map(|(_, f)| *f).collect();
    let names: Vec<HeaderName> = config
        .identity
        .headers
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let cache = IdentityCache::new(&config.cache, &fields, api, metrics.clone());
    let upstream = upstream_client(config.cloudbase.ca_file.as_deref()).map_err(|source| {
        StartError::Setup {
            what: "upstream client",
            source,
        }
    })?;
    let authenticator = Authenticator::new(cache.clone(), metrics.clone());
    // --- forward-auth (issue 12): the only coupling is this optional layer below.
    let forward_auth = config.forward_auth.enabled.then(|| {
        ForwardAuthLayer::new(ForwardAuth::new(
            &config.forward_auth,
            &config.routes,
            config.server.escaped_slashes,
            authenticator.clone(),
            &names,
        ))
    });
    let sensitive: Arc<[HeaderName]> =
        Arc::new([AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE, SET_COOKIE]);

    let service = ServiceBuilder::new()
        // Request id first, so every later layer, log line and rejection carries it.
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
        // Access log and metrics outside the timeout, so 504s are logged and counted.
        .layer(crate::telemetry::AccessLogLayer::new(metrics.clone()))
        // Forged identity headers go before any route, auth mode or upstream sees them.
        .layer(StripIdentityLayer::new(&config.identity.strip))
        // Forward-auth: requests for `forward_auth.path` are answered here and never
        // routed; after the access log (counted with kind="forward_auth") and identity
        // stripping, before routing. Not under `request_timeout`: it only waits for the
        // cache, whose CloudBase calls `cloudbase.timeout` bounds.
        .option_layer(forward_auth)
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
        .layer(AuthLayer::new(authenticator, &names))
        .service(Forward::new(upstream, &config.server.trusted_proxies));
    Ok(Built {
        service: BoxCloneSyncService::new(service),
        metrics,
        cache,
    })
}
