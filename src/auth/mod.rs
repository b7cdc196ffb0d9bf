//! Authentication: token -> validation (cached) -> route rules -> identity headers.
//!
//! [`Authenticator::decide`] is the decision, in one place: the proxy path's layer
//! ([`Auth`]) and forward-auth both call it. The layer sits after routing (it needs the
//! route's `auth` mode and rules) and before forwarding, and answers rejections itself.
//! Rules (anonymous users, groups) are checked on every request, hit or miss, because one
//! cached identity may serve routes with different rules and group memberships expire on
//! their own clock.

pub mod token;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::{HeaderMap, Method, Request, Response};
use tower::{Layer, Service};

use crate::admin::metrics::{AuthDecision, Metrics};
use crate::cache::{unix_now, IdentityCache, SharedIdentity, Validation};
use crate::config::{AuthMode, RouteSettings};
use crate::proxy::headers::{is_cors_preflight, strip_preflight, X_REQUEST_ID};
use crate::response::{empty, Body, Reject};
use crate::routing::MatchedRoute;
use crate::telemetry::trace::RequestTrace;
use token::Credentials;

/// Who a request was authenticated as; put in the request's extensions for the layers
/// after authentication, and in the response's for the access log.
#[derive(Debug, Clone)]
pub struct Authenticated(pub SharedIdentity);

/// The auth decision for one request under one route's rules: token, validation (cached),
/// then the rules. The proxy path ([`Auth`]) and forward-auth ([`crate::forward_auth`])
/// both decide through it, so they cannot drift apart. Counts `auth_decisions_total`.
#[derive(Clone)]
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
        let validation = match token::bearer(headers) {
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

/// Builds [`Auth`] services.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Authenticator,
    header_names: Arc<[HeaderName]>,
}

impl AuthLayer {
    /// `header_names[i]` carries configured identity field `i` (the cache's field order).
    pub fn new(authenticator: Authenticator, header_names: &[HeaderName]) -> Self {
        AuthLayer {
            authenticator,
            header_names: header_names.into(),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            shared: self.clone(),
        }
    }
}

/// Authenticates requests for the inner service: decides under the [`MatchedRoute`]'s
/// rules, answers a refusal itself, sets the identity headers on an allowed request.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    shared: AuthLayer,
}

impl<S> Service<Request<Body>> for Auth<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    // Boxed: the validation await makes this future large and its state machine is not
    // worth hand-writing. One allocation per request, small next to a cache hit's digest
    // and lookup; not measured on its own (no bench builds the tower stack, and
    // `benches/load.sh` measures the whole proxy).
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // tower's rule: the clone may not be ready, so keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let decision = match req.extensions().get::<MatchedRoute>() {
                Some(MatchedRoute(route)) => {
                    shared
                        .authenticator
                        .decide(
                            &route.settings,
                            req.method(),
                            req.headers(),
                            req.extensions().get::<RequestTrace>(),
                        )
                        .await
                }
                None => Decision::Refuse(Reject::NotFound),
            };
            let identity = match decision {
                Decision::Refuse(reason) => {
                    return Ok(reason.into_response(req.headers().get(&X_REQUEST_ID)));
                }
                Decision::Preflight => {
                    strip_preflight(req.headers_mut());
                    *req.body_mut() = empty();
                    None
                }
                Decision::Allow(identity) => identity,
            };
            if let Some(identity) = &identity {
                identity.apply(&shared.header_names, req.headers_mut());
                // For the layers after this one (the per-user rate limit).
                req.extensions_mut().insert(Authenticated(identity.clone()));
            }
            // Boxed at once: proving `S::Future: Send` inside this async block trips
            // rustc's higher-ranked lifetime check (rust-lang/rust#110338).
            let future: Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>> =
                Box::pin(inner.call(req));
            let mut response = future.await?;
            if let Some(identity) = identity {
                response.extensions_mut().insert(Authenticated(identity));
            }
            Ok(response)
        })
    }
}
