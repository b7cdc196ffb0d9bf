//! The CloudBase Auth v2 relay: the app's own sign-in traffic through the gateway, so a
//! sign-out cuts the signed-out token off at once instead of after `cache.ttl`.
//!
//! Every path under `relay.prefix` (default `/auth/v1/`, where the official web SDK
//! calls when the gateway is its `apiOrigin`) is diverted before routing and forwarded to
//! `cloudbase.base_url` with the rest of its path, unchanged in meaning ([`headers`]).
//! It needs no gateway token and nothing of it is cached. When CloudBase answers 2xx to a
//! call that ended a session or an identity (`/revoke`, `/user/signout`,
//! `/user/revoke/all`, device revocation, password change, account deletion), the cache
//! entries it made dead are purged before the answer goes back to the app ([`purge`]);
//! the app's next request with the old token is asked about afresh and refused. Beside
//! it: CORS for the app's origins ([`cors`]) and per-address limits on the calls that
//! guess secrets or create accounts ([`limit`], [`endpoint`]).
//!
//! Trade-offs. The relay is a proxy whose upstream is CloudBase: it streams bodies both
//! ways with the upstream client of the routes (pooled HTTP/1.1 over hyper-util, the same
//! retry rule and TLS roots), not through the typed `reqwest` client, which would have to
//! parse and re-serialize the SDK's calls and could not stream them. Only `/revoke`'s
//! body, which names the token to purge, is read whole (within `relay.max_body_size`).
//! A purge happens after CloudBase answered and before the app hears, so a request racing
//! the sign-out may still pass in between — the same window CloudBase itself has — but
//! none after the app has been told it is signed out. Revocations that do not pass
//! through the relay (the CloudBase console, another backend) still need
//! `POST /cache/purge`.

mod cors;
mod endpoint;
mod headers;
mod limit;
mod purge;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;
use ipnet::IpNet;
use tower::{Layer, Service};

pub use cors::Cors;
pub use limit::Limits;

use crate::admin::metrics::{Metrics, RelayEndpoint, RelayPurge, RequestKind};
use crate::auth::token::jwt_sub;
use crate::cache::IdentityCache;
use crate::config::{parse_upstream, EscapedSlashes, RelaySettings, Upstream};
use crate::proxy::forward::{upstream_error, ConnInfo, UpstreamClient};
use crate::proxy::framing::frame_response;
use crate::proxy::headers::{client_ip, remove_hop_by_hop, set_forwarded, X_REQUEST_ID};
use crate::response::{empty, full, Body, BoxError, Reject};
use crate::telemetry::BuiltinRoute;
use purge::{Effect, Purge};

/// What the relay is built from, besides its settings.
pub struct RelayParts {
    /// `cloudbase.base_url`: where the rest of the path goes.
    pub base_url: String,
    /// `server.escaped_slashes`: the path policy the divert normalizes with, as routing does.
    pub escaped_slashes: EscapedSlashes,
    /// `server.trusted_proxies`: whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
    /// `server.request_timeout`: up to CloudBase's response head → 504.
    pub request_timeout: Duration,
    pub client: UpstreamClient,
    pub cache: IdentityCache,
    pub metrics: Arc<Metrics>,
    /// This relay's label in `requests_total` and the access log.
    pub route: BuiltinRoute,
}

/// Diverts requests under the relay's prefix to CloudBase; the rest go on to routing.
#[derive(Clone)]
pub struct RelayLayer {
    shared: Arc<Shared>,
}

struct Shared {
    prefix: String,
    escaped_slashes: EscapedSlashes,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    host: HeaderValue,
    client_id: String,
    max_body_size: u64,
    cors: Cors,
    limits: Limits,
    trusted_proxies: Box<[IpNet]>,
    request_timeout: Duration,
    client: UpstreamClient,
    cache: IdentityCache,
    metrics: Arc<Metrics>,
    route: BuiltinRoute,
}

/// Why the relay cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("cloudbase.base_url cannot be relayed to: {0}")]
pub struct RelayError(String);

impl RelayLayer {
    pub fn new(settings: &RelaySettings, parts: RelayParts) -> Result<RelayLayer, RelayError> {
        let Upstream::Http {
            scheme,
            authority,
            base_path,
        } = parse_upstream(&parts.base_url).map_err(RelayError)?
        else {
            return Err(RelayError("not an http(s) URL".into()));
        };
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| RelayError("the host is not a header value".into()))?;
        Ok(RelayLayer {
            shared: Arc::new(Shared {
                prefix: settings.prefix.clone(),
                escaped_slashes: parts.escaped_slashes,
                scheme,
                authority,
                base_path,
                host,
                client_id: settings.client_id.clone(),
                max_body_size: settings.max_body_size,
                cors: Cors::new(&settings.allowed_origins),
                limits: Limits::new(&settings.limits),
                trusted_proxies: parts.trusted_proxies.into(),
                request_timeout: parts.request_timeout,
                client: parts.client,
                cache: parts.cache,
                metrics: parts.metrics,
                route: parts.route,
            }),
        })
    }
}

impl<S> Layer<S> for RelayLayer {
    type Service = Relay<S>;
    fn layer(&self, inner: S) -> Relay<S> {
        Relay {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The whole body, or 413 past `limit` bytes, or 400 when the client broke it off.
/// Frame by frame rather than `Limited::collect`, whose error conversion trips rustc's
/// higher-ranked `Send` check inside an async block (rust-lang/rust#110338).
async fn read_bounded(mut body: Body, limit: usize) -> Result<Bytes, Reject> {
    let mut read = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Reject::BadRequest)?;
        if let Ok(data) = frame.into_data() {
            if read.len() + data.len() > limit {
                return Err(Reject::PayloadTooLarge);
            }
            read.extend_from_slice(&data);
        }
    }
    Ok(read.freeze())
}

/// See [`RelayLayer`].
#[derive(Clone)]
pub struct Relay<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The relay's own future. Boxed: it holds a whole CloudBase exchange, next to which one
/// allocation is nothing; requests that are not relayed keep the inner future unboxed.
type RelayFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S> Service<Request<Body>> for Relay<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, RelayFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self.shared.cloudbase_path(req.uri().path()) {
            Some(path) => {
                let shared = self.shared.clone();
                Either::Right(Box::pin(async move { Ok(shared.handle(req, path).await) }))
            }
            None => Either::Left(self.inner.call(req)),
        }
    }
}

impl Shared {
    /// The CloudBase path (after the base URL) of a request for `raw`, if it is under the
    /// prefix once normalized — so `/auth/v1/../../admin` is `/admin`, not the relay's,
    /// and `/%61uth/v1/signin` is. A path the policy refuses is routing's to refuse (400).
    fn cloudbase_path(&self, raw: &str) -> Option<String> {
        let normal = crate::path::normalize(raw, self.escaped_slashes).ok()?;
        let rest = normal.strip_prefix(self.prefix.as_str())?;
        Some(format!("/{rest}"))
    }

    async fn handle(&self, req: Request<Body>, path: String) -> Response<Body> {
        let endpoint = endpoint::classify(req.method(), &path);
        let allowed = self.cors.allowed(req.headers());
        let (endpoint, mut response) = if Cors::is_preflight(req.method(), req.headers()) {
            let mut response = Response::new(empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            self.cors
                .preflight_headers(req.headers(), response.headers_mut());
            (RelayEndpoint::Preflight, response)
        } else {
            let request_id = req.headers().get(&X_REQUEST_ID).cloned();
            let exchange = self.exchange(req, path, endpoint);
            let mut response = match tokio::time::timeout(self.request_timeout, exchange).await {
                Ok(response) => response,
                Err(_) => {
                    tracing::warn!(limit = ?self.request_timeout, "relayed request timed out");
                    Reject::UpstreamTimeout.into_response(request_id.as_ref())
                }
            };
            // On the relay's own refusals too, so a page can read its 429 or 413.
            Cors::apply(allowed, response.headers_mut());
            (endpoint, response)
        };
        self.metrics
            .relay_request(endpoint, response.status().as_u16());
        let extensions = response.extensions_mut();
        extensions.insert(self.route.clone());
        extensions.insert(RequestKind::Relay);
        response
    }

    /// Limits, forwards, purges: everything up to CloudBase's response head.
    async fn exchange(
        &self,
        req: Request<Body>,
        path: String,
        endpoint: RelayEndpoint,
    ) -> Response<Body> {
        let request_id = req.headers().get(&X_REQUEST_ID).cloned();
        let reject = |reason: Reject| reason.into_response(request_id.as_ref());
        let conn = req.extensions().get::<ConnInfo>().copied();
        if let Some(limit) = endpoint::limit_of(endpoint) {
            // Without connection facts (an in-process caller) all share one bucket.
            let client = conn.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| {
                client_ip(req.headers(), c.peer.ip(), &self.trusted_proxies)
            });
            if let Err(wait) = self.limits.check(limit, client) {
                self.metrics.relay_rate_limited(limit);
                let retry_after = limit::retry_after_secs(wait);
                return reject(Reject::RateLimited { retry_after });
            }
        }
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_size) {
            return reject(Reject::PayloadTooLarge);
        }

        let (mut parts, body) = req.into_parts();
        let effect = purge::effect(endpoint);
        let caller = match effect {
            Effect::Nothing => None,
            _ => purge::caller_token(&parts.headers, parts.uri.query()),
        };
        let limit = usize::try_from(self.max_body_size).unwrap_or(usize::MAX);
        let (body, read) = match effect {
            // The token to purge is in the body: read it whole, bounded.
            Effect::RevokedToken => match read_bounded(body, limit).await {
                Ok(bytes) => (full(bytes.clone()), bytes),
                Err(reason) => return reject(reason),
            },
            // `Limited`'s error is already a `BoxError`.
            _ => (Limited::new(body, limit).boxed_unsync(), Bytes::new()),
        };
        let plan = purge::plan(effect, caller, &parts.headers, &read);

        let Some(uri) = self.cloudbase_uri(&path, parts.uri.query()) else {
            return reject(Reject::BadRequest);
        };
        let host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::request_headers(&mut parts.headers);
        if let Some(conn) = conn {
            set_forwarded(
                &mut parts.headers,
                conn.peer.ip(),
                conn.tls,
                host,
                &self.trusted_proxies,
            );
        }
        parts.headers.insert(HOST, self.host.clone());
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let method = parts.method.clone();

        let mut request = Request::from_parts(parts, body);
        let span = crate::telemetry::trace::outbound(&mut request, "cloudbase relay");
        let mut response = match self.client.send(request).await {
            Ok(response) => response,
            Err(e) => {
                if let Some(span) = span {
                    span.fail("upstream_unavailable");
                    span.end();
                }
                return reject(upstream_error(&e));
            }
        };
        if let Some(span) = span {
            span.end_with_status(response.status());
        }
        let status = response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            tracing::warn!("CloudBase answered 101 to a relayed request that did not upgrade");
            return reject(Reject::UpstreamUnavailable);
        }
        if status.is_success() {
            self.purge(plan, endpoint, request_id.as_ref());
        }
        let body_len = response.body().size_hint().exact();
        frame_response(response.headers_mut(), status, &method, body_len);
        remove_hop_by_hop(response.headers_mut(), false);
        headers::response_headers(response.headers_mut());
        response.map(|b| b.map_err(BoxError::from).boxed_unsync())
    }

    /// `base_url` + `path`, with the app's query and `client_id` when it sent none.
    fn cloudbase_uri(&self, path: &str, query: Option<&str>) -> Option<Uri> {
        let path = format!("{}{path}", self.base_path);
        let path_and_query = match headers::with_client_id(query, &self.client_id) {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::try_from(path_and_query).ok()?)
            .build()
            .ok()
    }

    /// Carries out a successful call's purge through the cache's own purge calls.
    fn purge(&self, plan: Purge, endpoint: RelayEndpoint, request_id: Option<&HeaderValue>) {
        let request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
        let endpoint = endpoint.as_str();
        match plan {
            Purge::Nothing => {}
            Purge::Token(token) => {
                let purged = self.cache.purge_token(&token);
                self.metrics.relay_purge(RelayPurge::Token);
                tracing::info!(endpoint, request_id, by = "token", purged, "relay purged");
            }
            Purge::UserOf(token) => {
                let sub = self
                    .cache
                    .cached_sub(&token)
                    .map(String::from)
                    .or_else(|| jwt_sub(&token));
                match sub {
                    Some(sub) => {
                        let purged = self.cache.purge_sub(&sub);
                        self.metrics.relay_purge(RelayPurge::Sub);
                        tracing::info!(endpoint, request_id, by = "sub", %sub, purged, "relay purged");
                    }
                    None => {
                        let purged = self.cache.purge_token(&token);
                        self.metrics.relay_purge(RelayPurge::Unresolved);
                        tracing::warn!(
                            endpoint,
                            request_id,
                            purged,
                            "relay: the call ended the caller's sessions but its token names no \
                             user (not cached, not a JWT); only that token was purged"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The divert with `oneshot`, no socket: what goes to the inner service, and what the
    //! relay answers without calling CloudBase (here a closed port, so a call would be a 502).

    use super::*;
    use crate::cache::{AuthApi, BoxFuture};
    use crate::cloudbase::types::{Introspection, UserProfile};
    use crate::cloudbase::{CallOptions, Error as ApiError};
    use crate::config::Config;
    use tower::{ServiceBuilder, ServiceExt};

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

    fn relay_layer(extra: &str) -> (RelayLayer, Arc<Metrics>) {
        let config = Config::from_toml_str(&format!(
            "[cloudbase]\nbase_url = \"http://127.0.0.1:1/auth/v1\"\n\
             [relay]\nenabled = true\nallowed_origins = [\"https://app.example.com\"]\n{extra}"
        ))
        .unwrap();
        let metrics = Arc::new(Metrics::new(vec![config.relay.prefix.clone()]));
        let cache = IdentityCache::new(&config.cache, &[], Arc::new(Unasked), metrics.clone());
        let parts = RelayParts {
            base_url: config.cloudbase.base_url.clone(),
            escaped_slashes: EscapedSlashes::Reject,
            trusted_proxies: Vec::new(),
            request_timeout: Duration::from_secs(5),
            client: crate::proxy::forward::upstream_client(&config.upstream, None).unwrap(),
            cache,
            metrics: metrics.clone(),
            route: BuiltinRoute {
                index: 0,
                prefix: "/auth/v1/".into(),
            },
        };
        (RelayLayer::new(&config.relay, parts).unwrap(), metrics)
    }

    /// The relay over an inner service that answers 299 to say "routing got it".
    fn stack(
        layer: RelayLayer,
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> {
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_req: Request<Body>| async {
                let mut r = Response::new(empty());
                *r.status_mut() = StatusCode::from_u16(299).unwrap();
                Ok::<_, Infallible>(r)
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
            assert!(resp.extensions().get::<BuiltinRoute>().is_some());
            let kind = resp.extensions().get::<RequestKind>();
            assert_eq!(kind, Some(&RequestKind::Relay), "{uri}: counted as relayed");
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
