//! The auth decision, in one place: token -> validation (cached) -> route rules.
//!
//! [`Authenticator::decide`] is what both paths that authenticate call: the proxy path's
//! auth layer (`stack::auth`, which then sets the identity headers and forwards) and
//! forward-auth (`crate::forward_auth`, which answers an ingress with them), so the two
//! cannot drift apart. Rules (anonymous users, groups) are checked on every request, hit
//! or miss, because one cached identity may serve routes with different rules and group
//! memberships expire on their own clock.

use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::cache::{IdentityCache, SharedIdentity, Validation};
use crate::clock::unix_now;
use crate::config::{AuthMode, RouteSettings};
use crate::http::bearer::{self, Credentials};
use crate::http::headers::is_cors_preflight;
use crate::http::X_REQUEST_ID;
use crate::metrics::{AuthDecision, Metrics};
use crate::rejection::Reject;
use crate::telemetry::trace::RequestTrace;

/// The auth decision for one request under one route's rules: token, validation (cached),
/// then the rules. Counts `auth_decisions_total`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Authenticator {
    cache: IdentityCache,
    metrics: Arc<Metrics>,
}

/// What [`Authenticator::decide`] concluded.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Let the request through, with the identity when one was established.
    Allow(Option<SharedIdentity>),
    /// A real CORS preflight ([`is_cors_preflight`]) on a route with `allow_preflight`:
    /// let it through without a token, as nothing more than a preflight (the proxy path
    /// drops its body and method-override headers; forward-auth, which cannot, refuses one
    /// that carries such a header).
    Preflight,
    /// Answer with this rejection.
    Refuse(Reject),
}

impl Authenticator {
    pub fn new(cache: IdentityCache, metrics: Arc<Metrics>) -> Self {
        Authenticator { cache, metrics }
    }

    /// Decides a request with `method` and `headers` (its `Authorization`, `x-request-id`,
    /// `Origin` and `Access-Control-Request-Method`) under `rules`; `trace` is the
    /// request's span when tracing is on (CloudBase calls become its children). Takes the
    /// request's parts, not the request: the body is not `Sync`, so a borrow of the whole
    /// request could not be held across the validation await.
    pub async fn decide(
        &self,
        rules: &RouteSettings,
        method: &Method,
        headers: &HeaderMap,
        trace: Option<&RequestTrace>,
    ) -> Decision {
        if rules.auth == AuthMode::None {
            return Decision::Allow(None);
        }
        if rules.allow_preflight && is_cors_preflight(method, headers) {
            return Decision::Preflight;
        }
        let required = rules.auth == AuthMode::Required;
        // On an optional route every failure passes without identity.
        let refuse = |decision: AuthDecision, reason: Reject| {
            self.metrics.auth_decision(decision);
            if required {
                Decision::Refuse(reason)
            } else {
                Decision::Allow(None)
            }
        };
        let validation = match bearer::bearer(headers) {
            Credentials::Missing => {
                return refuse(AuthDecision::Missing, Reject::MissingCredentials)
            }
            Credentials::Invalid => return refuse(AuthDecision::Invalid, Reject::InvalidToken),
            Credentials::Bearer(token) => {
                let request_id = headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok());
                self.cache.validate_traced(token, request_id, trace).await
            }
        };
        match validation {
            Validation::Invalid => refuse(AuthDecision::Invalid, Reject::InvalidToken),
            Validation::Unavailable => refuse(AuthDecision::Unavailable, Reject::AuthUnavailable),
            Validation::Valid(identity) => {
                let anonymous_refused = identity.anonymous && !rules.allow_anonymous;
                let groups_missing = !rules.require_groups.is_empty()
                    && !identity.in_any_group(&rules.require_groups, unix_now());
                if anonymous_refused || groups_missing {
                    return refuse(AuthDecision::Forbidden, Reject::Forbidden);
                }
                self.metrics.auth_decision(AuthDecision::Allowed);
                Decision::Allow(Some(identity))
            }
        }
    }
}
