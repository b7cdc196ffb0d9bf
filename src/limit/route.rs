//! `routes[].rate_limit`: a token bucket per user on each route that has one.
//!
//! Keys: an authenticated user by `sub`; an anonymous CloudBase user, and a request
//! without identity on an `optional` or `none` route, by client address
//! ([`client_ip`] behind `server.trusted_proxies`, IPv6 by /64) — anonymous sign-ins cost
//! nothing, so a `sub` per anonymous user would be a fresh bucket per request for whoever
//! wants one. The layer sits after authentication (it needs the `sub`), so a request that
//! authentication refuses never reaches it and spends nothing.
//!
//! Every response of a limited route carries `RateLimit-Policy` and `RateLimit`
//! ([`super::headers`]); a refused request is answered 429 `RATE_LIMITED` with
//! `Retry-After`, and counted in `rate_limited_total{route}`.
//!
//! Per replica: each gateway process keeps its own buckets, with the limit as configured.
//! Behind N replicas that share traffic evenly, a user gets up to N times the rate (and N
//! bursts); with affinity by user or address at the load balancer, the limit is exact.
//! Sharing the buckets through the Redis tier would make the limit exact for any load
//! balancing, for a Redis round trip on every limited request (the GCRA arrival time as
//! one key per user, updated by a script) and a choice of failure mode when Redis is down;
//! it is left for when that tier is wired into the request path.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use ipnet::IpNet;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::headers::{after_pass, after_refusal, append, policy};
use super::{retry_after_secs, Bucket, KeyedLimiter, Outcome, TokioClock};
use crate::admin::metrics::Metrics;
use crate::auth::Authenticated;
use crate::config::RouteSettings;
use crate::proxy::forward::ConnInfo;
use crate::proxy::headers::{client_ip, X_REQUEST_ID};
use crate::response::{Body, Reject};
use crate::routing::MatchedRoute;

/// Whose bucket a request spends from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// An authenticated, non-anonymous user's `sub`.
    User(Arc<str>),
    /// A client address (see [`super::client_key`]).
    Client(IpAddr),
}

/// One limited route.
struct RouteLimit {
    limiter: KeyedLimiter<RateKey, TokioClock>,
    /// `RateLimit-Policy`, the same on every response.
    policy: HeaderValue,
}

/// The limiters of all routes, by route index; `None` where a route has no limit.
#[derive(Clone)]
pub struct RouteLimits {
    by_route: Arc<[Option<RouteLimit>]>,
}

impl RouteLimits {
    pub fn new(routes: &[RouteSettings]) -> RouteLimits {
        let clock = TokioClock::default();
        let by_route = routes
            .iter()
            .map(|r| {
                let limit = r.rate_limit.as_ref()?;
                let bucket = Bucket::new(limit.rate, limit.burst);
                Some(RouteLimit {
                    limiter: KeyedLimiter::new(bucket, limit.max_keys, clock),
                    policy: policy(&bucket),
                })
            })
            .collect();
        RouteLimits { by_route }
    }

    /// Whether any route is limited: without one the layer is left out of the stack.
    pub fn any(&self) -> bool {
        self.by_route.iter().any(Option::is_some)
    }
}

/// Builds [`RouteLimitService`]s.
#[derive(Clone)]
pub struct RouteLimitLayer {
    limits: RouteLimits,
    trusted_proxies: Arc<[IpNet]>,
    metrics: Arc<Metrics>,
}

impl RouteLimitLayer {
    pub fn new(limits: RouteLimits, trusted_proxies: &[IpNet], metrics: Arc<Metrics>) -> Self {
        RouteLimitLayer {
            limits,
            trusted_proxies: trusted_proxies.into(),
            metrics,
        }
    }
}

impl<S> Layer<S> for RouteLimitLayer {
    type Service = RouteLimitService<S>;
    fn layer(&self, inner: S) -> RouteLimitService<S> {
        RouteLimitService {
            inner,
            shared: self.clone(),
        }
    }
}

/// Spends a token of the request's bucket on its route, or answers 429.
#[derive(Clone)]
pub struct RouteLimitService<S> {
    inner: S,
    shared: RouteLimitLayer,
}

impl RouteLimitLayer {
    /// The bucket key of a request (see the module docs).
    fn key(&self, req: &Request<Body>) -> RateKey {
        let user = req
            .extensions()
            .get::<Authenticated>()
            .filter(|a| !a.0.anonymous);
        if let Some(Authenticated(identity)) = user {
            return RateKey::User(Arc::from(&*identity.sub));
        }
        // Without connection facts (an in-process caller) all share one bucket.
        let ip = req
            .extensions()
            .get::<ConnInfo>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| {
                client_ip(req.headers(), c.peer.ip(), &self.trusted_proxies)
            });
        RateKey::Client(super::client_key(ip))
    }
}

impl<S> Service<Request<Body>> for RouteLimitService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let shared = &self.shared;
        let route = req.extensions().get::<MatchedRoute>().map(|m| m.0.index);
        let Some((index, limit)) =
            route.and_then(|i| Some((i, shared.limits.by_route.get(i)?.as_ref()?)))
        else {
            return ResponseFuture::Unlimited {
                inner: self.inner.call(req),
            };
        };
        let checked = limit.limiter.check(shared.key(&req));
        if checked.overflowed {
            shared.metrics.rate_limit_overflow(index);
        }
        let bucket = limit.limiter.bucket();
        match checked.outcome {
            Outcome::Allowed { remaining } => ResponseFuture::Limited {
                inner: self.inner.call(req),
                headers: Some((limit.policy.clone(), after_pass(&bucket, remaining))),
            },
            Outcome::Limited { wait } => {
                shared.metrics.rate_limited(index);
                let retry_after = retry_after_secs(wait);
                let mut response = Reject::RateLimited { retry_after }
                    .into_response(req.headers().get(&X_REQUEST_ID));
                append(
                    response.headers_mut(),
                    &limit.policy,
                    after_refusal(&bucket, wait),
                );
                ResponseFuture::Refused {
                    response: Some(response),
                }
            }
        }
    }
}

pin_project! {
    /// [`RouteLimitService`]'s future: the inner one, with the rate-limit fields added to
    /// its response on a limited route, or the gateway's own 429.
    #[project = Projected]
    pub enum ResponseFuture<F> {
        Unlimited { #[pin] inner: F },
        Limited { #[pin] inner: F, headers: Option<(HeaderValue, HeaderValue)> },
        Refused { response: Option<Response<Body>> },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Unlimited { inner } => inner.poll(cx),
            Projected::Limited { inner, headers } => {
                let mut response = std::task::ready!(inner.poll(cx))?;
                if let Some((policy, state)) = headers.take() {
                    append(response.headers_mut(), &policy, state);
                }
                Poll::Ready(Ok(response))
            }
            Projected::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("a refused request's future is polled to completion once"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{HeaderFields, Identity};
    use crate::cloudbase::types::{Introspection, UserProfile};
    use crate::config::Config;
    use crate::limit::{RATELIMIT, RATELIMIT_POLICY};
    use crate::routing::Routes;
    use http::header::RETRY_AFTER;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tower::{ServiceBuilder, ServiceExt};

    /// `/limited/` at 1/s with a burst of 2, `/free/` without a limit.
    fn config() -> Config {
        Config::from_toml_str(
            r#"
            [cloudbase]
            env_id = "e"
            [server]
            trusted_proxies = ["10.0.0.1"]
            [[routes]]
            prefix = "/limited/"
            upstream = "whoami"
            auth = "optional"
            allow_anonymous = true
            rate_limit = "1/s"
            rate_limit_burst = 2
            [[routes]]
            prefix = "/free/"
            upstream = "whoami"
            "#,
        )
        .unwrap()
    }

    fn identity(sub: &str, anonymous: bool) -> Authenticated {
        let introspection = Introspection {
            sub: Some(sub.into()),
            scope: Some(if anonymous { "anonymous" } else { "user" }.into()),
            ..Default::default()
        };
        let profile = UserProfile {
            sub: sub.into(),
            ..Default::default()
        };
        let fields = HeaderFields::new(&[], 64, None);
        let identity = Identity::new(&introspection, &profile, None, &fields, 0);
        Authenticated(Arc::new(identity))
    }

    /// A request as the layers before this one leave it: routed, maybe authenticated,
    /// with the connection's peer.
    fn request(path: &str, who: Option<Authenticated>, peer: &str) -> Request<Body> {
        let routes = Routes::new(&config().routes);
        let route = routes.find(path).expect("a route").clone();
        let mut req = Request::get(path).body(crate::response::empty()).unwrap();
        req.extensions_mut().insert(MatchedRoute(route));
        req.extensions_mut().insert(ConnInfo {
            peer: SocketAddr::new(peer.parse().unwrap(), 40000),
            tls: false,
        });
        if let Some(who) = who {
            req.extensions_mut().insert(who);
        }
        req
    }

    fn service(
        metrics: Arc<Metrics>,
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone {
        let config = config();
        let layer = RouteLimitLayer::new(
            RouteLimits::new(&config.routes),
            &config.server.trusted_proxies,
            metrics,
        );
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_req: Request<Body>| async {
                Ok::<_, Infallible>(Response::new(crate::response::empty()))
            })
    }

    async fn status(
        svc: &mut (impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone),
        req: Request<Body>,
    ) -> Response<Body> {
        svc.clone().oneshot(req).await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn one_user_spends_their_own_bucket_and_it_refills_with_time() {
        let metrics = Arc::new(Metrics::new(["/limited/".into(), "/free/".into()]));
        let mut svc = service(metrics.clone());
        let alice = || Some(identity("alice", false));
        let first = status(&mut svc, request("/limited/x", alice(), "192.0.2.1")).await;
        assert_eq!(first.status(), 200);
        assert_eq!(first.headers()[&RATELIMIT_POLICY], "\"gateway\";q=2;w=2");
        assert_eq!(first.headers()[&RATELIMIT], "\"gateway\";r=1;t=1");
        let second = status(&mut svc, request("/limited/x", alice(), "192.0.2.1")).await;
        assert_eq!(second.headers()[&RATELIMIT], "\"gateway\";r=0;t=2");
        let refused = status(&mut svc, request("/limited/x", alice(), "192.0.2.1")).await;
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()[RETRY_AFTER], "1");
        assert_eq!(refused.headers()[&RATELIMIT], "\"gateway\";r=0;t=2");
        assert_eq!(refused.headers()[&RATELIMIT_POLICY], "\"gateway\";q=2;w=2");

        // Another user from the same address has a bucket of their own.
        let bob = status(
            &mut svc,
            request("/limited/x", Some(identity("bob", false)), "192.0.2.1"),
        )
        .await;
        assert_eq!(bob.status(), 200);

        tokio::time::advance(Duration::from_millis(999)).await;
        let early = status(&mut svc, request("/limited/x", alice(), "192.0.2.1")).await;
        assert_eq!(early.status(), 429, "not a token back before the interval");
        tokio::time::advance(Duration::from_millis(1)).await;
        let refilled = status(&mut svc, request("/limited/x", alice(), "192.0.2.1")).await;
        assert_eq!(refilled.status(), 200);

        let text = metrics.render(0);
        assert!(
            text.contains("cloudbase_gateway_rate_limited_total{route=\"/limited/\"} 2"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn anonymous_users_and_requests_without_identity_share_their_address_bucket() {
        let mut svc = service(Arc::new(Metrics::new(Vec::new())));
        let anon = |sub: &str| Some(identity(sub, true));
        let a = status(&mut svc, request("/limited/", anon("anon-1"), "192.0.2.7")).await;
        let b = status(&mut svc, request("/limited/", anon("anon-2"), "192.0.2.7")).await;
        assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
        let none = status(&mut svc, request("/limited/", None, "192.0.2.7")).await;
        assert_eq!(none.status(), 429, "a third caller from the same address");
        let elsewhere = status(&mut svc, request("/limited/", anon("anon-3"), "192.0.2.8")).await;
        assert_eq!(elsewhere.status(), 200, "another address");
    }

    #[tokio::test(start_paused = true)]
    async fn behind_a_trusted_proxy_the_forwarded_client_is_the_key() {
        let mut svc = service(Arc::new(Metrics::new(Vec::new())));
        let via_proxy = |client: &str| {
            let mut req = request("/limited/", None, "10.0.0.1");
            req.headers_mut()
                .insert("x-forwarded-for", client.parse().unwrap());
            req
        };
        for _ in 0..2 {
            assert_eq!(
                status(&mut svc, via_proxy("198.51.100.1")).await.status(),
                200
            );
        }
        assert_eq!(
            status(&mut svc, via_proxy("198.51.100.1")).await.status(),
            429
        );
        assert_eq!(
            status(&mut svc, via_proxy("198.51.100.2")).await.status(),
            200,
            "another client behind the same proxy"
        );
        // From an untrusted peer the header proves nothing: the peer is the key.
        let mut forged = request("/limited/", None, "192.0.2.50");
        forged
            .headers_mut()
            .insert("x-forwarded-for", "198.51.100.3".parse().unwrap());
        assert_eq!(status(&mut svc, forged).await.status(), 200);
        let mut forged = request("/limited/", None, "192.0.2.50");
        forged
            .headers_mut()
            .insert("x-forwarded-for", "198.51.100.4".parse().unwrap());
        assert_eq!(status(&mut svc, forged).await.status(), 200);
        let mut forged = request("/limited/", None, "192.0.2.50");
        forged
            .headers_mut()
            .insert("x-forwarded-for", "198.51.100.5".parse().unwrap());
        assert_eq!(
            status(&mut svc, forged).await.status(),
            429,
            "a new X-Forwarded-For per request does not buy a new bucket"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_without_a_limit_passes_everything_untouched() {
        let mut svc = service(Arc::new(Metrics::new(Vec::new())));
        for _ in 0..10 {
            let r = status(&mut svc, request("/free/", None, "192.0.2.9")).await;
            assert_eq!(r.status(), 200);
            assert!(r.headers().get(&RATELIMIT).is_none());
        }
    }
}
