//! The CloudBase Auth v2 relay: the app's own sign-in traffic through the gateway, so a
//! sign-out cuts the signed-out token off at once instead of after `cache.ttl`.
//!
//! Every path under `relay.prefix` (default `/auth/v1/`, where the official web SDK
//! calls when the gateway is its `apiOrigin`) is diverted before routing (the divert is
//! the layer `stack::relay`; this module is the service it hands requests to) and
//! forwarded to the CloudBase URL the gateway's client uses, with the rest of its path,
//! unchanged in meaning (`headers`).
//! It needs no gateway token and nothing of it is cached. When CloudBase answers 2xx to a
//! call that ended a session or an identity (`/revoke`, `/user/signout`,
//! `/user/revoke/all`, device revocation, password change, account deletion), the cache
//! entries it made dead are purged before the answer goes back to the app (`purge`);
//! the app's next request with the old token is asked about afresh and refused. Beside
//! it: CORS for the app's origins (`cors`) and per-address limits on the calls that
//! guess secrets or create accounts (`limit`, `endpoint`). Its refusals (429, 413,
//! 502, 504) are rejections the rescue layer renders, with the CORS headers on them so a
//! page can read them; every answer carries the relay's own route (its prefix, labelled
//! `kind="relay"`) for the access log and the metrics.
//!
//! Trade-offs. The relay is a proxy whose upstream is CloudBase: it streams bodies both
//! ways with the upstream client of the routes (pooled HTTP/1.1 over hyper-util, the same
//! retry rule and TLS roots), not through the typed `reqwest` client, which would have to
//! parse and re-serialize the SDK's calls and could not stream them. Only `/revoke`'s
//! body, which names the token to purge, is read whole (within `relay.max_body_size`).
//! A purge happens after CloudBase answered and before the app hears, so a request racing
//! the sign-out may still pass in between — the same window CloudBase itself has — but
//! none after the app has been told it is signed out. With `[cache.redis]` the purge has
//! been published to every replica by then; each drops the token as the message arrives
//! (pub/sub, no acknowledgement: a request that overtakes it on another replica is the
//! one window left). Revocations that do not pass
//! through the relay (the CloudBase console, another backend) still need
//! `POST /cache/purge`.

mod cors;
mod endpoint;
mod headers;
mod limit;
mod purge;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;
use ipnet::IpNet;

pub use cors::Cors;
pub use limit::Limits;

use crate::cache::IdentityCache;
use crate::config::{
    parse_upstream, AuthMode, EscapedSlashes, RelaySettings, RouteSettings, Upstream,
};
use crate::http::headers::{client_ip, declared_length, remove_hop_by_hop, set_forwarded};
use crate::http::{empty, full, Body, BoxError, ConnInfo, X_REQUEST_ID};
use crate::jwt::jwt_sub;
use crate::metrics::{Metrics, RelayEndpoint, RelayPurge, RequestKind};
use crate::proxy::forward::{upstream_error, UpstreamClient};
use crate::proxy::framing::frame_response;
use crate::rejection::{Reject, Rejection};
use crate::routing::{RequestContext, Route};
use crate::telemetry::trace::{self, RequestTrace};
use purge::{Effect, Purge};

/// What the relay is built from, besides its settings.
#[derive(Debug)]
pub struct RelayParts {
    /// The CloudBase Auth v2 URL the gateway's client uses (`cloudbase.base_url`, or the
    /// embedded emulator's): where the rest of the path goes.
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
    /// This relay's label index in `requests_total` (from `Metrics::add_route`).
    pub label: usize,
}

/// The relay: answers requests under its prefix by relaying them to CloudBase. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Relay {
    shared: Arc<Shared>,
}

#[derive(Debug)]
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
    route: Arc<Route>,
}

/// Why the relay cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("the CloudBase URL cannot be relayed to: {0}")]
pub struct RelayError(String);

impl Relay {
    pub fn new(settings: &RelaySettings, parts: RelayParts) -> Result<Relay, RelayError> {
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
        // The relay, as the access log, the metrics and traces name it: its prefix, a
        // route to CloudBase that needs no gateway token.
        let route = Route::new(
            parts.label,
            RouteSettings {
                prefix: settings.prefix.clone(),
                upstream: Upstream::Http {
                    scheme: scheme.clone(),
                    authority: authority.clone(),
                    base_path: base_path.clone(),
                },
                auth: AuthMode::None,
                ..RouteSettings::default()
            },
        );
        Ok(Relay {
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
                route: Arc::new(route),
            }),
        })
    }

    /// The CloudBase path (after the base URL) of a request for `raw`, if it is under the
    /// prefix once normalized — so `/auth/v1/../../admin` is `/admin`, not the relay's,
    /// and `/%61uth/v1/signin` is. A path the policy refuses is routing's to refuse (400).
    pub fn cloudbase_path(&self, raw: &str) -> Option<String> {
        let normal = crate::path::normalize(raw, self.shared.escaped_slashes).ok()?;
        let rest = normal.strip_prefix(self.shared.prefix.as_str())?;
        Some(format!("/{rest}"))
    }

    /// Answers a request whose CloudBase path is `path` (see [`Relay::cloudbase_path`]).
    pub async fn answer(
        &self,
        req: Request<Body>,
        path: String,
    ) -> Result<Response<Body>, Rejection> {
        self.shared.answer(req, path).await
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

impl Shared {
    async fn answer(&self, req: Request<Body>, path: String) -> Result<Response<Body>, Rejection> {
        let endpoint = endpoint::classify(req.method(), &path);
        let allowed = self.cors.allowed(req.headers());
        // The trace layer's span, if traced: before routing it is in the extensions.
        let trace = req.extensions().get::<RequestTrace>().cloned();
        let context = RequestContext::of(RequestKind::Relay, self.route.clone()).traced(trace);
        let (endpoint, answer) = if Cors::is_preflight(req.method(), req.headers()) {
            let mut response = Response::new(empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            self.cors
                .preflight_headers(req.headers(), response.headers_mut());
            (RelayEndpoint::Preflight, Ok(response))
        } else {
            let exchange = self.exchange(req, path, endpoint, context.trace.as_ref());
            let answer = match tokio::time::timeout(self.request_timeout, exchange).await {
                Ok(answer) => answer,
                Err(_) => {
                    tracing::warn!(limit = ?self.request_timeout, "relayed request timed out");
                    Err(Reject::UpstreamTimeout)
                }
            };
            (endpoint, answer)
        };
        match answer {
            Ok(mut response) => {
                if endpoint != RelayEndpoint::Preflight {
                    Cors::apply(allowed, response.headers_mut());
                }
                self.metrics
                    .relay_request(endpoint, response.status().as_u16());
                context.attach(&mut response);
                Ok(response)
            }
            Err(reason) => {
                self.metrics
                    .relay_request(endpoint, reason.status().as_u16());
                // On the relay's own refusals too, so a page can read its 429 or 413.
                let mut cors = HeaderMap::new();
                Cors::apply(allowed, &mut cors);
                Err(Rejection::with_context(reason, context).with_headers(cors))
            }
        }
    }

    /// Limits, forwards, purges: everything up to CloudBase's response head.
    async fn exchange(
        &self,
        req: Request<Body>,
        path: String,
        endpoint: RelayEndpoint,
        trace: Option<&RequestTrace>,
    ) -> Result<Response<Body>, Reject> {
        let request_id = req.headers().get(&X_REQUEST_ID).cloned();
        let conn = req.extensions().get::<ConnInfo>().copied();
        if let Some(limit) = endpoint::limit_of(endpoint) {
            // Without connection facts (an in-process caller) all share one bucket.
            let client = conn.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| {
                client_ip(req.headers(), c.peer.ip(), &self.trusted_proxies)
            });
            if let Err(wait) = self.limits.check(limit, client) {
                self.metrics.relay_rate_limited(limit);
                let retry_after = limit::retry_after_secs(wait);
                return Err(Reject::RateLimited { retry_after });
            }
        }
        let declared = declared_length(req.headers());
        if declared.is_some_and(|n| n > self.max_body_size) {
            return Err(Reject::PayloadTooLarge);
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
            Effect::RevokedToken => {
                let bytes = read_bounded(body, limit).await?;
                (full(bytes.clone()), bytes)
            }
            // `Limited`'s error is already a `BoxError`.
            _ => (Limited::new(body, limit).boxed_unsync(), Bytes::new()),
        };
        let plan = purge::plan(effect, caller, &parts.headers, &read);

        let uri = self
            .cloudbase_uri(&path, parts.uri.query())
            .ok_or(Reject::BadRequest)?;
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
        let span = trace::outbound(&mut request, trace, "cloudbase relay");
        let mut response = match self.client.send(request).await {
            Ok(response) => response,
            Err(e) => {
                if let Some(span) = span {
                    span.fail("upstream_unavailable");
                    span.end();
                }
                return Err(upstream_error(&e));
            }
        };
        if let Some(span) = span {
            span.end_with_status(response.status());
        }
        let status = response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            tracing::warn!("CloudBase answered 101 to a relayed request that did not upgrade");
            return Err(Reject::UpstreamUnavailable);
        }
        if status.is_success() {
            self.purge(plan, endpoint, request_id.as_ref()).await;
        }
        let body_len = response.body().size_hint().exact();
        frame_response(response.headers_mut(), status, &method, body_len);
        remove_hop_by_hop(response.headers_mut(), false);
        headers::response_headers(response.headers_mut());
        Ok(response.map(|b| b.map_err(BoxError::from).boxed_unsync()))
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

    /// Carries out a successful call's purge through the cache's own purge calls, which
    /// reach every replica when the shared tier is on (waiting for Redis to take it).
    async fn purge(&self, plan: Purge, endpoint: RelayEndpoint, request_id: Option<&HeaderValue>) {
        let request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
        let endpoint = endpoint.as_str();
        match plan {
            Purge::Nothing => {}
            Purge::Token(token) => {
                let purged = self.cache.purge_token(&token).await;
                self.metrics.relay_purge(RelayPurge::Token);
                tracing::info!(
                    endpoint,
                    request_id,
                    by = "token",
                    purged = purged.local,
                    shared = ?purged.shared,
                    "relay purged"
                );
            }
            Purge::UserOf(token) => {
                let sub = self
                    .cache
                    .cached_sub(&token)
                    .map(String::from)
                    .or_else(|| jwt_sub(&token));
                match sub {
                    Some(sub) => {
                        let purged = self.cache.purge_sub(&sub).await;
                        self.metrics.relay_purge(RelayPurge::Sub);
                        tracing::info!(
                            endpoint,
                            request_id,
                            by = "sub",
                            %sub,
                            purged = purged.local,
                            shared = ?purged.shared,
                            "relay purged"
                        );
                    }
                    None => {
                        let purged = self.cache.purge_token(&token).await;
                        self.metrics.relay_purge(RelayPurge::Unresolved);
                        tracing::warn!(
                            endpoint,
                            request_id,
                            purged = purged.local,
                            shared = ?purged.shared,
                            "relay: the call ended the caller's sessions but its token names no \
                             user (not cached, not a JWT); only that token was purged"
                        );
                    }
                }
            }
        }
    }
}
