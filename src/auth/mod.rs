//! The authentication layer: token -> validation (cached) -> route rules -> identity headers.
//!
//! Sits after routing (it needs the route's `auth` mode and rules) and before forwarding.
//! It answers rejections itself. Rules (anonymous users, groups) are checked on every
//! request, hit or miss, because one cached identity may serve routes with different rules
//! and group memberships expire on their own clock.

pub mod token;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::{Method, Request, Response};
use tower::{Layer, Service};

use crate::admin::metrics::{AuthDecision, Metrics};
use crate::cache::{unix_now, IdentityCache, SharedIdentity, Validation};
use crate::config::AuthMode;
use crate::proxy::headers::{is_cors_preflight, strip_preflight, X_REQUEST_ID};
use crate::response::{empty, Body, Reject};
use crate::routing::MatchedRoute;
use crate::telemetry::trace::RequestTrace;
use token::Credentials;

/// Who a request was authenticated as; put in the request's extensions for the layers
/// after authentication, and in the response's for the access log.
#[derive(Debug, Clone)]
pub struct Authenticated(pub SharedIdentity);

/// Builds [`Auth`] services.
#[derive(Clone)]
pub struct AuthLayer {
    cache: IdentityCache,
    header_names: Arc<[HeaderName]>,
    metrics: Arc<Metrics>,
}

impl AuthLayer {
    /// `header_names[i]` carries configured identity field `i` (the cache's field order).
    pub fn new(cache: IdentityCache, header_names: &[HeaderName], metrics: Arc<Metrics>) -> Self {
        AuthLayer {
            cache,
            header_names: header_names.into(),
            metrics,
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

/// Authenticates requests for the inner service.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    shared: AuthLayer,
}

/// What to do with a request after authentication.
enum Outcome {
    Forward(Option<SharedIdentity>),
    /// A CORS preflight on a route that lets them through: forwarded without a token,
    /// a body, or anything that could make it more than a preflight.
    Preflight,
    Reject(Reject),
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
            let outcome = shared
                .authenticate(req.method(), req.headers(), req.extensions())
                .await;
            let identity = match outcome {
                Outcome::Reject(reason) => {
                    return Ok(reason.into_response(req.headers().get(&X_REQUEST_ID)));
                }
                Outcome::Preflight => {
                    strip_preflight(req.headers_mut());
                    *req.body_mut() = empty();
                    None
                }
                Outcome::Forward(identity) => identity,
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

impl AuthLayer {
    /// Takes the request's parts, not the request: the body is not `Sync`, so a borrow of
    /// the whole request could not be held across the validation await.
    async fn authenticate(
        &self,
        method: &Method,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Outcome {
        let Some(MatchedRoute(route)) = extensions.get::<MatchedRoute>() else {
            return Outcome::Reject(Reject::NotFound);
        };
        let rules = &route.settings;
        if rules.auth == AuthMode::None {
            return Outcome::Forward(None);
        }
        if rules.allow_preflight && is_cors_preflight(method, headers) {
            return Outcome::Preflight;
        }
        let required = rules.auth == AuthMode::Required;
        // On an optional route every failure passes without identity.
        let refuse = |decision: AuthDecision, reason: Reject| {
            self.metrics.auth_decision(decision);
            if required {
                Outcome::Reject(reason)
            } else {
                Outcome::Forward(None)
            }
        };
        let validation = match token::bearer(headers) {
            Credentials::Missing => {
                return refuse(AuthDecision::Missing, Reject::MissingCredentials)
            }
            Credentials::Invalid => return refuse(AuthDecision::Invalid, Reject::InvalidToken),
            Credentials::Bearer(token) => {
                let request_id = headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok());
                let trace = extensions.get::<RequestTrace>();
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
                Outcome::Forward(Some(identity))
            }
        }
    }
}
