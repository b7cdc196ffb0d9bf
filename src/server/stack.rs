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
use crate::admin::metrics::{Metrics, RequestKind};
use crate::auth::{AuthLayer, Authenticator};
use crate::cache::{IdentityCache, Limits};
use crate::cloudbase::Client;
use crate::config::Config;
use crate::forward_auth::{self, ForwardAuth, ForwardAuthLayer};
use crate::proxy::forward::{upstream_client, Forward};
use crate::proxy::headers::X_REQUEST_ID;
use crate::proxy::{ClientHeadersLayer, HopByHopLayer};
use crate::relay::{RelayLayer, RelayParts};
use crate::response::Body;
use crate::routing::{RouteLayer, Routes};
use crate::telemetry::trace::{TraceLayer, Tracing};
use crate::telemetry::BuiltinRoute;

/// The whole gateway service.
pub type GatewayService =
    BoxCloneSyncService<http::Request<Body>, http::Response<Body>, std::convert::Infallible>;

/// What [`build`] makes: the service and the shared pieces the admin listener reads.
pub struct Built {
    pub service: GatewayService,
    pub metrics: Arc<Metrics>,
    pub cache: IdentityCache,
    /// The span exporter while `[telemetry]` is on; flushed on shutdown.
    pub tracing: Option<Tracing>,
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
    // Labels in `requests_total`: the configured routes, forward-auth's default route (if
    // any; answered only as forward-auth), the relay's prefix (answered only as relayed).
    let fa_routes = forward_auth::routes(&config.forward_auth, &config.routes);
    let mut metrics = Metrics::new(config.routes.iter().map(|r| r.prefix.clone()));
    if config.forward_auth.enabled {
        metrics = metrics.with_forward_auth();
    }
    for route in &fa_routes[config.routes.len()..] {
        metrics.add_route(route.prefix.clone(), RequestKind::ForwardAuth);
    }
    let relay_enabled = config.relay.enabled;
    let relay_route = relay_enabled.then(|| BuiltinRoute {
        index: metrics.add_route(config.relay.prefix.clone(), RequestKind::Relay),
        prefix: config.relay.prefix.as_str().into(),
    });
    let metrics = Arc::new(metrics);
    let fields: Vec<_> = config.identity.headers.iter().map(|(_, f)| *f).collect();
    let names: Vec<HeaderName> = config
        .identity
        .headers
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let limits = Limits {
        max_in_flight: config.cloudbase.max_in_flight,
        max_header_bytes: config.identity.max_header_bytes,
    };
    let cache = IdentityCache::with_limits(&config.cache, &fields, limits, api, metrics.clone());
    let upstream = upstream_client(&config.upstream, config.cloudbase.ca_file.as_deref()).map_err(
        |source| StartError::Setup {
            what: "upstream client",
            source,
        },
    )?;
    let authenticator = Authenticator::new(cache.clone(), metrics.clone());
    // ── forward-auth integration point (issue 12) ──────────────────────────────────────
    // The endpoint an existing ingress asks, when enabled: decides through the same
    // routes and `Authenticator` as the proxy path, forwards nothing.
    let forward_auth = config.forward_auth.enabled.then(|| {
        ForwardAuthLayer::new(ForwardAuth::new(
            &config.forward_auth,
            &config.routes,
            config.server.escaped_slashes,
            authenticator.clone(),
            &names,
        ))
    });
    // ── relay integration point (issue 13) ─────────────────────────────────────────────
    // The CloudBase relay, when enabled: a self-contained layer (`crate::relay`) that
    // diverts its prefix before routing. It shares the upstream client, the cache (its
    // purges go through `IdentityCache::purge_*`) and the metrics.
    let relay = match relay_route {
        Some(route) => {
            let parts = RelayParts {
                base_url: config.cloudbase.base_url.clone(),
                escaped_slashes: config.server.escaped_slashes,
                trusted_proxies: config.server.trusted_proxies.clone(),
                request_timeout: config.server.request_timeout,
                client: upstream.clone(),
                cache: cache.clone(),
                metrics: metrics.clone(),
                route,
            };
            let layer = RelayLayer::new(&config.relay, parts).map_err(|e| StartError::Setup {
                what: "CloudBase relay",
                source: e.into(),
            })?;
            Some(layer)
        }
        None => None,
    };
    // ───────────────────────────────────────────────────────────────────────────────────

    // ── rate-limit integration point (issue 14) ────────────────────────────────────────
    // `routes[].rate_limit`: a self-contained layer (`crate::limit`), left out of the stack
    // when no route has a limit.
    let route_limits = crate::limit::RouteLimits::new(&config.routes);
    let route_limits = route_limits.any().then(|| {
        crate::limit::RouteLimitLayer::new(
            route_limits,
            &config.server.trusted_proxies,
            metrics.clone(),
        )
    });
    // ───────────────────────────────────────────────────────────────────────────────────

    // ── tracing integration point (issue 14) ───────────────────────────────────────────
    // `[telemetry]`: the request's span (`crate::telemetry::trace`); with it off, the layer
    // is not in the stack and no later layer finds a `RequestTrace` to make spans under.
    let ca_file = config.cloudbase.ca_file.as_deref();
    let tracing = Tracing::start(&config.telemetry, ca_file).map_err(|e| StartError::Setup {
        what: "span exporter",
        source: e.into(),
    })?;
    let trace_layer = tracing.clone().map(TraceLayer::new);
    // ───────────────────────────────────────────────────────────────────────────────────

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
        // Access log and metrics outside the timeout, so 504s are logged and counted.
        .layer(crate::telemetry::AccessLogLayer::new(metrics.clone()))
        // The request's span next: after the request id (which it records) and the
        // credential marking, around everything that may answer, the relay included.
        .option_layer(trace_layer)
        // Forged identity headers go, and an ambiguous Host is refused, before any route,
        // auth mode or upstream sees them; inside the access log, so a 400 is logged.
        .layer(ClientHeadersLayer::new(&config.identity.strip))
        // Forward-auth: requests for `forward_auth.path` are answered here and never
        // routed; after the access log (counted with kind="forward_auth") and identity
        // stripping, before routing. Not under `request_timeout`: it only waits for the
        // cache, whose CloudBase calls `cloudbase.timeout` bounds. Before the relay: the
        // configuration keeps their paths apart in normal form, but the endpoint also owns
        // every raw spelling under it (Envoy appends the client's path as sent), and
        // `/_gateway/auth/../../auth/v1/user/me` must be decided (400), not relayed to
        // CloudBase, whose 200 an ingress would take for "allowed".
        .option_layer(forward_auth)
        // The relay before routing: its prefix is CloudBase's, needs no gateway token and
        // is never cached; after stripping, so no forged identity header reaches CloudBase
        // either; inside the access log, so relayed calls are logged and counted.
        .option_layer(relay)
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
        // Per-user rate limits after authentication: they key on the `sub`, and a request
        // authentication refuses must spend nothing.
        .option_layer(route_limits)
        .service(Forward::new(upstream, &config.server.trusted_proxies));
    Ok(Built {
        service: BoxCloneSyncService::new(service),
        metrics,
        cache,
        tracing,
    })
}
