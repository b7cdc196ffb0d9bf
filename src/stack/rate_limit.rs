//! [`RateLimitLayer`]: `routes[].rate_limit`, a token from the request's bucket on its route
//! (the limiters are `crate::limit`'s [`RouteLimits`]), or 429 `RATE_LIMITED`.
//!
//! Keys: an authenticated, non-anonymous user by the `sub` the context carries; anyone
//! else (an anonymous CloudBase user, a request without identity on an `optional` or
//! `none` route) by client address ([`client_ip`] behind `server.trusted_proxies`, IPv6 by
//! /64). It sits below the auth layer (it needs the identity), so a request that
//! authentication refuses never reaches it and spends nothing. Left out of the stack when
//! no route has a limit.
//!
//! Every answer of a limited route carries `RateLimit-Policy` and `RateLimit`
//! (`crate::limit::headers`), refusals from below included; a refused request is a
//! [`Reject::RateLimited`] with `Retry-After` and those fields, counted in
//! `rate_limited_total{route}`.
//!
//! Per replica: each gateway process keeps its own buckets, with the limit as configured.
//! Behind N replicas that share traffic evenly, a user gets up to N times the rate (and N
//! bursts); with affinity by user or address at the load balancer, the limit is exact.
//! Sharing the buckets through the Redis tier would make the limit exact for any load
//! balancing, for a Redis round trip on every limited request (the GCRA arrival time as
//! one key per user, updated by a script) and a choice of failure mode when Redis is down;
//! it is left for when that tier is wired into the request path.
//!
//! Its future is hand-written: every request of a limited route passes through it.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{HeaderMap, HeaderValue, Request, Response};
use ipnet::IpNet;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::http::headers::client_ip;
use crate::http::{Body, ConnInfo};
use crate::limit::headers::{after_pass, after_refusal, append};
use crate::limit::{client_key, retry_after_secs, Outcome, RateKey, RouteLimits};
use crate::metrics::Metrics;
use crate::rejection::{Reject, Rejection};
use crate::routing::{RequestContext, Routed};

/// Builds [`RateLimit`] services over the routes' limiters.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limits: RouteLimits,
    trusted_proxies: Arc<[IpNet]>,
    metrics: Arc<Metrics>,
}

impl RateLimitLayer {
    pub fn new(limits: RouteLimits, trusted_proxies: &[IpNet], metrics: Arc<Metrics>) -> Self {
        RateLimitLayer {
            limits,
            trusted_proxies: trusted_proxies.into(),
            metrics,
        }
    }

    /// The bucket key of a request (see the module docs).
    fn key(&self, req: &Request<Body>, context: &RequestContext) -> RateKey {
        let user = context.identity.as_ref().filter(|i| !i.anonymous);
        if let Some(identity) = user {
            return RateKey::User(Arc::from(&*identity.sub));
        }
        // Without connection facts (an in-process caller) all share one bucket.
        let ip = req
            .extensions()
            .get::<ConnInfo>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| {
                client_ip(req.headers(), c.peer.ip(), &self.trusted_proxies)
            });
        RateKey::Client(client_key(ip))
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: self.clone(),
        }
    }
}

/// Spends a token of the request's bucket on its route, or refuses it; see the module docs.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    shared: RateLimitLayer,
}

impl<S> Service<Routed> for RateLimit<S>
where
    S: Service<Routed, Response = Response<Body>, Error = Rejection>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = RateLimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, (req, context): Routed) -> Self::Future {
        let shared = &self.shared;
        let index = context.route.index;
        let Some(limit) = shared.limits.of(index) else {
            return RateLimitFuture::Unlimited {
                inner: self.inner.call((req, context)),
            };
        };
        let checked = limit.limiter.check(shared.key(&req, &context));
        if checked.overflowed {
            shared.metrics.rate_limit_overflow(context.route.label);
        }
        let bucket = limit.limiter.bucket();
        match checked.outcome {
            Outcome::Allowed { remaining } => RateLimitFuture::Limited {
                inner: self.inner.call((req, context)),
                fields: Some((limit.policy.clone(), after_pass(&bucket, remaining))),
            },
            Outcome::Limited { wait } => {
                shared.metrics.rate_limited(context.route.label);
                let retry_after = retry_after_secs(wait);
                let mut fields = HeaderMap::new();
                append(&mut fields, &limit.policy, after_refusal(&bucket, wait));
                let rejection =
                    Rejection::with_context(Reject::RateLimited { retry_after }, context)
                        .with_headers(fields);
                RateLimitFuture::Refused {
                    rejection: Some(rejection),
                }
            }
        }
    }
}

pin_project! {
    /// [`RateLimit`]'s future: the inner one, with the rate-limit fields added to whatever
    /// it answers on a limited route, or the refusal.
    #[project = Projected]
    pub enum RateLimitFuture<F> {
        Unlimited { #[pin] inner: F },
        Limited { #[pin] inner: F, fields: Option<(HeaderValue, HeaderValue)> },
        Refused { rejection: Option<Rejection> },
    }
}

impl<F> Future for RateLimitFuture<F>
where
    F: Future<Output = Result<Response<Body>, Rejection>>,
{
    type Output = Result<Response<Body>, Rejection>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Unlimited { inner } => inner.poll(cx),
            Projected::Limited { inner, fields } => {
                let result = ready!(inner.poll(cx));
                let (policy, state) = fields.take().expect("polled after completion");
                Poll::Ready(match result {
                    Ok(mut response) => {
                        append(response.headers_mut(), &policy, state);
                        Ok(response)
                    }
                    Err(rejection) => {
                        let mut fields = HeaderMap::new();
                        append(&mut fields, &policy, state);
                        Err(rejection.with_headers(fields))
                    }
                })
            }
            Projected::Refused { rejection } => {
                Poll::Ready(Err(rejection.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{HeaderFields, Identity, SharedIdentity};
    use crate::config::{Config, IdentityMapping};
    use crate::http::empty;
    use crate::limit::{RATELIMIT, RATELIMIT_POLICY};
    use crate::routing::{RequestContext, Routes};
    use crate::stack::rescue::RescueLayer;
    use cloudbase_auth::types::{Introspection, UserProfile};
    use http::header::RETRY_AFTER;
    use std::convert::Infallible;
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

    fn identity(sub: &str, anonymous: bool) -> SharedIdentity {
        let introspection = Introspection {
            sub: Some(sub.into()),
            scope: Some(if anonymous { "anonymous" } else { "user" }.into()),
            ..Default::default()
        };
        let profile = UserProfile {
            sub: sub.into(),
            ..Default::default()
        };
        let fields = HeaderFields::new(&IdentityMapping::new([]), 64, None);
        Arc::new(Identity::new(&introspection, &profile, None, &fields, 0))
    }

    /// A request as the layers before this one leave it: routed, maybe authenticated,
    /// with the connection's peer. It reaches the layer with its context, as the route
    /// layer hands it down (the rescue layer over it renders a refusal, as in the stack).
    fn request(path: &str, who: Option<SharedIdentity>, peer: &str) -> Request<Body> {
        let routes = Routes::new(&config().routes);
        let route = routes.find(path).expect("a route").clone();
        let mut context = RequestContext::new(route);
        context.identity = who;
        let mut req = Request::get(path).body(empty()).unwrap();
        req.extensions_mut().insert(context);
        req.extensions_mut().insert(ConnInfo {
            peer: SocketAddr::new(peer.parse().unwrap(), 40000),
            tls: false,
        });
        req
    }

    fn service(
        metrics: Arc<Metrics>,
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone {
        let config = config();
        let limited = ServiceBuilder::new()
            .layer(RateLimitLayer::new(
                RouteLimits::new(&config.routes),
                &config.server.trusted_proxies,
                metrics,
            ))
            .service_fn(|_: Routed| async { Ok::<_, Rejection>(Response::new(empty())) });
        ServiceBuilder::new()
            .layer(RescueLayer)
            .map_request(|mut req: Request<Body>| {
                let context = req.extensions_mut().remove::<RequestContext>().unwrap();
                (req, context)
            })
            .service(limited)
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
