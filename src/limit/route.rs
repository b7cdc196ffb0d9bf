//! `routes[].rate_limit`: a token bucket per user on each route that has one — the table
//! of limiters, by route index, and whose bucket a request spends from ([`RateKey`]). The
//! layer that spends them is `stack::rate_limit`.
//!
//! Keys: an authenticated user by `sub`; an anonymous CloudBase user, and a request
//! without identity on an `optional` or `none` route, by client address
//! (`http::headers::client_ip` behind `server.trusted_proxies`, IPv6 by /64) — anonymous
//! sign-ins cost nothing, so a `sub` per anonymous user would be a fresh bucket per
//! request for whoever wants one.
//!
//! Per replica: each gateway process keeps its own buckets, with the limit as configured.
//! Behind N replicas that share traffic evenly, a user gets up to N times the rate (and N
//! bursts); with affinity by user or address at the load balancer, the limit is exact.
//! Sharing the buckets through the Redis tier would make the limit exact for any load
//! balancing, for a Redis round trip on every limited request (the GCRA arrival time as
//! one key per user, updated by a script) and a choice of failure mode when Redis is down;
//! it is left for when that tier is wired into the request path.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderValue;

use super::headers::policy;
use super::{Bucket, KeyedLimiter, TokioClock};
use crate::config::RouteSettings;

/// Whose bucket a request spends from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// An authenticated, non-anonymous user's `sub`.
    User(Arc<str>),
    /// A client address (see [`super::client_key`]).
    Client(IpAddr),
}

/// One limited route.
pub struct RouteLimit {
    pub limiter: KeyedLimiter<RateKey, TokioClock>,
    /// `RateLimit-Policy`, the same on every response.
    pub policy: HeaderValue,
}

/// The limiters of all routes, by route index; `None` where a route has no limit. Cheap to
/// clone: clones share the buckets.
#[derive(Clone)]
pub struct RouteLimits {
    by_route: Arc<[Option<Arc<RouteLimit>>]>,
}

impl std::fmt::Debug for RouteLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limited: Vec<usize> = (0..self.by_route.len())
            .filter(|&i| self.by_route[i].is_some())
            .collect();
        f.debug_struct("RouteLimits")
            .field("limited_routes", &limited)
            .finish()
    }
}

impl RouteLimits {
    pub fn new(routes: &[RouteSettings]) -> RouteLimits {
        Self::carried_over(
            routes,
            &[],
            &RouteLimits {
                by_route: [].into(),
            },
        )
    }

    /// The limiters of `routes` after a reload from `previous` (whose limiters are
    /// `limits`): a route whose prefix and limit are unchanged keeps its buckets, so a
    /// reload neither hands every user a fresh burst nor forgets who is being limited;
    /// any other limited route starts with full buckets.
    pub fn carried_over(
        routes: &[RouteSettings],
        previous: &[RouteSettings],
        limits: &RouteLimits,
    ) -> RouteLimits {
        let clock = TokioClock::default();
        let by_route = routes
            .iter()
            .map(|r| {
                let limit = r.rate_limit.as_ref()?;
                let kept = previous.iter().enumerate().find_map(|(i, old)| {
                    let same = old.prefix == r.prefix && old.rate_limit.as_ref() == Some(limit);
                    same.then(|| limits.by_route.get(i)?.clone()).flatten()
                });
                if kept.is_some() {
                    return kept;
                }
                let bucket = Bucket::new(limit.rate, limit.burst);
                Some(Arc::new(RouteLimit {
                    limiter: KeyedLimiter::new(bucket, limit.max_keys, clock),
                    policy: policy(&bucket),
                }))
            })
            .collect();
        RouteLimits { by_route }
    }

    /// Whether any route is limited: without one the layer is left out of the stack.
    pub fn any(&self) -> bool {
        self.by_route.iter().any(Option::is_some)
    }

    /// The limit of route `index`, if it has one.
    pub fn of(&self, index: usize) -> Option<&RouteLimit> {
        self.by_route.get(index)?.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::limit::Outcome;

    fn routes(lines: &str) -> Vec<RouteSettings> {
        Config::from_toml_str(&format!("[emulator]\nenabled = true\n{lines}"))
            .expect("test routes")
            .routes
    }

    fn spend(limits: &RouteLimits, index: usize) -> Outcome {
        let key = RateKey::User("u".into());
        limits
            .of(index)
            .expect("limited")
            .limiter
            .check(key)
            .outcome
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_the_buckets_of_unchanged_limits_and_refills_changed_ones() {
        let route = |prefix: &str, rate: &str| {
            format!("[[routes]]\nprefix = {prefix:?}\nupstream = \"whoami\"\nrate_limit = {rate:?}\nrate_limit_burst = 1\n")
        };
        let old = routes(&(route("/a/", "1/m") + &route("/b/", "1/m")));
        let limits = RouteLimits::new(&old);
        for index in [0, 1] {
            assert!(matches!(spend(&limits, index), Outcome::Allowed { .. }));
            assert!(matches!(spend(&limits, index), Outcome::Limited { .. }));
        }
        // `/b/` moves to the front unchanged; `/a/`'s rate changes; `/c/` is new.
        let new = routes(&(route("/b/", "1/m") + &route("/a/", "2/m") + &route("/c/", "1/m")));
        let reloaded = RouteLimits::carried_over(&new, &old, &limits);
        assert!(
            matches!(spend(&reloaded, 0), Outcome::Limited { .. }),
            "an unchanged limit keeps its empty bucket"
        );
        assert!(matches!(spend(&reloaded, 1), Outcome::Allowed { .. }));
        assert!(matches!(spend(&reloaded, 2), Outcome::Allowed { .. }));
    }
}
