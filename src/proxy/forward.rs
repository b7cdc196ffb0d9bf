//! The leaf service: sends the request to the route's upstream and streams the answer back.
//!
//! Bodies are never collected: the client's body flows into the upstream request and the
//! upstream's body flows back frame by frame, so memory per request stays at a few buffers
//! whatever the size. WebSocket upgrades are proxied by joining the two upgraded
//! connections once the upstream has answered 101; a 101 to any other request is a broken
//! upstream (502). Connections are pooled per upstream (`[upstream]` settings); a failed
//! exchange is retried once where that is safe (see [`super::retry`]), and the response's
//! framing is made true for what the gateway sends (see [`super::framing`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderValue, AUTHORIZATION, HOST};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use tower::Service;

use super::framing::frame_response;
use super::retry::{may_retry, never_sent, Replay};
use super::whoami;
use crate::config::{Upstream, UpstreamSettings};
use crate::http::headers::{is_websocket_upgrade, remove_hop_by_hop, set_forwarded};
use crate::http::ConnInfo;
use crate::http::{Body, BoxError};
use crate::rejection::{client_body_fault, Reject, Rejection};
use crate::routing::{RequestContext, Routed};
use crate::telemetry::trace;

type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// The upstream HTTP clients: HTTP/1.1 over plain TCP or rustls. Cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    /// Pooled per `[upstream]`; every first try goes here.
    pooled: HttpClient,
    /// Never pools: a retry must not meet another connection the upstream has closed.
    fresh: HttpClient,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient").finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// Sends `req` on a pooled connection, and once more on a new one when the retry rule
    /// allows it (see [`super::retry`]).
    pub async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        let replay = Replay::capture(&req);
        match (self.pooled.request(req).await, replay) {
            (Err(e), Some(replay)) if may_retry(replay.method(), never_sent(&e)) => {
                tracing::debug!(error = %e, "upstream exchange failed; retrying on a new connection");
                self.fresh.request(replay.into_request()).await
            }
            (result, _) => result,
        }
    }
}

/// Builds the upstream clients. TLS trusts the platform roots plus `extra_roots` (PEM).
pub fn upstream_client(
    pool: &UpstreamSettings,
    extra_roots: Option<&std::path::Path>,
) -> Result<UpstreamClient, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_roots {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let pem = std::fs::read(path)?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert?)?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    // A zero idle timeout means no reuse: say so to the pool rather than rely on how it
    // compares an instant with itself.
    let max_idle = if pool.pool_idle_timeout.is_zero() {
        0
    } else {
        pool.pool_max_idle_per_host
    };
    let pooled = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(pool.pool_idle_timeout)
        // Closes expired idle connections in the background too, not only when a checkout
        // happens to find them.
        .pool_timer(TokioTimer::new())
        .build(https.clone());
    let fresh = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(https);
    Ok(UpstreamClient { pooled, fresh })
}

/// Sends requests to their route's upstream. Cheap to clone (one shared part).
#[derive(Clone)]
pub struct Forward {
    shared: Arc<Shared>,
}

struct Shared {
    client: UpstreamClient,
    trusted_proxies: Arc<[IpNet]>,
}

impl Forward {
    pub fn new(client: UpstreamClient, trusted_proxies: &[IpNet]) -> Forward {
        Forward {
            shared: Arc::new(Shared {
                client,
                trusted_proxies: trusted_proxies.into(),
            }),
        }
    }
}

impl Service<Routed> for Forward {
    type Response = Response<Body>;
    type Error = Rejection;
    // Boxed: the leaf future is large (a whole upstream exchange) and one allocation per
    // request is noise next to a network round trip.
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Rejection>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (req, context): Routed) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move { shared.forward(req, &context).await })
    }
}

impl Shared {
    async fn forward(
        &self,
        mut req: Request<Body>,
        context: &RequestContext,
    ) -> Result<Response<Body>, Rejection> {
        let route = &context.route;
        let settings = &route.settings;
        let websocket = is_websocket_upgrade(req.headers());
        let host = req.headers().get(HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // The request's hop-by-hop headers went at the edge (`stack::hop_by_hop`), before
        // the gateway set its own; removing them here would let `Connection` name those.
        if let Some(conn) = req.extensions().get::<ConnInfo>().copied() {
            set_forwarded(
                req.headers_mut(),
                conn.peer.ip(),
                conn.tls,
                host,
                &self.trusted_proxies,
            );
        }
        if !settings.pass_token {
            req.headers_mut().remove(AUTHORIZATION);
        }
        let path = req.uri().path();
        // What stays of the path: all of it, or what follows the prefix (always from a
        // `/`: the prefix's own trailing `/` is put back when it ends the prefix).
        let (lead, rest) = if settings.strip_prefix {
            let rest = &path[settings.prefix.len().min(path.len())..];
            (if rest.starts_with('/') { "" } else { "/" }, rest)
        } else {
            ("", path)
        };
        let (scheme, authority, base_path) = match &settings.upstream {
            Upstream::Whoami => {
                let pq = path_and_query("", lead, rest, req.uri().query());
                *req.uri_mut() = PathAndQuery::from_maybe_shared(pq)
                    .map(Uri::from)
                    .unwrap_or_else(|_| Uri::from_static("/"));
                return whoami::respond(req).await;
            }
            Upstream::Http {
                scheme,
                authority,
                base_path,
            } => (scheme, authority, base_path),
        };
        let pq = path_and_query(base_path, lead, rest, req.uri().query());
        let Ok(pq) = PathAndQuery::from_maybe_shared(pq) else {
            return Err(Reject::BadRequest.into());
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(pq);
        let Ok(uri) = Uri::from_parts(parts) else {
            return Err(Reject::BadRequest.into());
        };
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        if let Some(h) = &route.upstream_host {
            req.headers_mut().insert(HOST, h.clone());
        }
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let method = req.method().clone();
        // Traced requests: a client span for the exchange, named in `traceparent`.
        let span = trace::outbound(&mut req, context.trace.as_ref(), "upstream");
        let mut response = match self.client.send(req).await {
            Ok(r) => r,
            Err(e) => {
                if let Some(span) = span {
                    span.fail("upstream_unavailable");
                    span.end();
                }
                return Err(upstream_error(&e).into());
            }
        };
        if let Some(span) = span {
            span.end_with_status(response.status());
        }
        let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switched && client_upgrade.is_none() {
            // Only a WebSocket upgrade is ever forwarded; a 101 to anything else would
            // leave the client on a connection neither side can speak.
            tracing::warn!("upstream answered 101 to a request that did not ask to upgrade");
            return Err(Reject::UpstreamUnavailable.into());
        }
        let body_len = response.body().size_hint().exact();
        let status = response.status();
        frame_response(response.headers_mut(), status, &method, body_len);
        remove_hop_by_hop(response.headers_mut(), switched);
        if let (Some(client_upgrade), true) = (client_upgrade, switched) {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await)
                else {
                    tracing::debug!("websocket upgrade did not complete");
                    return;
                };
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
        Ok(response.map(|b| b.map_err(BoxError::from).boxed_unsync()))
    }
}

/// `{base}{lead}{rest}[?{query}]` in one buffer, the path and query the upstream is sent.
fn path_and_query(base: &str, lead: &str, rest: &str, query: Option<&str>) -> bytes::Bytes {
    let query_len = query.map_or(0, |q| q.len() + 1);
    let mut pq = Vec::with_capacity(base.len() + lead.len() + rest.len() + query_len);
    pq.extend_from_slice(base.as_bytes());
    pq.extend_from_slice(lead.as_bytes());
    pq.extend_from_slice(rest.as_bytes());
    if let Some(q) = query {
        pq.push(b'?');
        pq.extend_from_slice(q.as_bytes());
    }
    bytes::Bytes::from(pq)
}

/// Maps an upstream client error to the gateway's answer. A failure to read the client's
/// own body is the client's (413 or 400), never the upstream's.
pub fn upstream_error(e: &hyper_util::client::legacy::Error) -> Reject {
    if let Some(reject) = client_body_fault(e) {
        return reject;
    }
    tracing::warn!(error = %e, connect = e.is_connect(), "upstream request failed");
    Reject::UpstreamUnavailable
}
