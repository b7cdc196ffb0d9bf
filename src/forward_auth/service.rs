//! The endpoint: answers one subrequest with the decision the proxy path would make for
//! the original request, without forwarding anything.
//!
//! Original request ([`super::original`]) -> the path policy and route lookup
//! ([`Routes::decide`], as the routing layer does) -> the route's `methods` (405, with
//! [`Route::allows`]'s preflight rule) -> the auth decision ([`Authenticator::decide`],
//! the proxy path's) -> the answer: 200 with the identity headers, or the gateway's own
//! rejection.
//!
//! One difference, because forward-auth forwards nothing: a preflight the route lets
//! through without a token is forwarded by the ingress as the client sent it, so one
//! carrying a method-override header (which the proxy path drops) is refused with 400.
//! Its body cannot be seen at all (ingresses do not pass it); a browser's has none.

use std::sync::Arc;

use http::header::HeaderValue;
use http::request::Parts;
use http::{Method, Request, Response};

use super::original;
use crate::auth::{Authenticator, Decision};
use crate::cache::SharedIdentity;
use crate::config::{ForwardAuthSettings, RouteSettings};
use crate::http::headers::overrides_method;
use crate::http::{empty, Body};
use crate::identity_headers::IdentityMapping;
use crate::metrics::{Metrics, RequestKind, NO_ROUTE};
use crate::path::EscapedSlashes;
use crate::rejection::{Reject, Rejection};
use crate::routing::{RequestContext, Route, Routes, Undecided};
use crate::telemetry::trace::RequestTrace;

/// The route table forward-auth decides on: the configured routes, then, with
/// `default_auth`, a catch-all `/` with that `auth` and no other rule (sorted last, as the
/// shortest prefix), labelled in the metrics by its prefix as every route is.
pub fn routes(settings: &ForwardAuthSettings, configured: &[RouteSettings]) -> Vec<RouteSettings> {
    let mut all = configured.to_vec();
    if let (true, Some(auth)) = (settings.enabled, settings.default_auth) {
        all.push(RouteSettings {
            prefix: "/".to_owned(),
            auth,
            // Never forwarded: forward-auth forwards nothing (the upstream stays `whoami`).
            pass_token: false,
            ..RouteSettings::default()
        });
    }
    all
}

/// The forward-auth endpoint. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ForwardAuth {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: String,
    routes: Routes,
    /// The label of answers no route decided (the metrics' `none`).
    unmatched: Arc<Route>,
    escaped_slashes: EscapedSlashes,
    authenticator: Authenticator,
    identity_headers: IdentityMapping,
}

/// Where a request's path points, for the divert (`stack::forward_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `path` itself or under `path/`, as sent.
    Endpoint,
    /// At or under the endpoint only once normalized (`/_gateway/%61uth`).
    Disguised,
    /// Anything else: the proxy path's.
    Elsewhere,
}

impl ForwardAuth {
    /// `configured` are the `[[routes]]`; `identity_headers` the configured identity
    /// headers (the mapping the authenticator's cache was built with); `metrics` gives
    /// the routes (and answers no route decided) their label slots.
    pub fn new(
        settings: &ForwardAuthSettings,
        configured: &[RouteSettings],
        escaped_slashes: EscapedSlashes,
        authenticator: Authenticator,
        identity_headers: IdentityMapping,
        metrics: &Metrics,
    ) -> ForwardAuth {
        let kind = RequestKind::ForwardAuth;
        ForwardAuth {
            shared: Arc::new(Shared {
                path: settings.path.clone(),
                routes: Routes::new(&routes(settings, configured)).labelled(metrics, kind),
                unmatched: Arc::new(Route::unmatched(metrics.label(NO_ROUTE, kind))),
                escaped_slashes,
                authenticator,
                identity_headers,
            }),
        }
    }

    /// Where `raw` (a request's path as received) points. Costs every proxied request one
    /// more scan of its path while forward-auth is on (an already-normal path is
    /// recognised without allocating).
    pub fn target(&self, raw: &str) -> Target {
        let endpoint = self.shared.path.as_str();
        let at_or_under = |p: &str| {
            p.strip_prefix(endpoint)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if at_or_under(raw) {
            return Target::Endpoint;
        }
        match crate::path::normalize(raw, self.shared.escaped_slashes) {
            Ok(normal) if at_or_under(&normal) => Target::Disguised,
            _ => Target::Elsewhere,
        }
    }

    /// The answer to a forward-auth subrequest: 200 with the identity headers, or the
    /// refusal; either with its context (kind `forward_auth`, the original method, the
    /// deciding route, the identity).
    pub async fn answer(self, req: Request<Body>) -> Result<Response<Body>, Rejection> {
        // The body is never read: the decision is on the head, as for a proxied request.
        let (parts, _) = req.into_parts();
        let trace = parts.extensions.get::<RequestTrace>().cloned();
        let decided = self.decide(&parts, trace.as_ref()).await;
        let mut context = RequestContext::of(
            RequestKind::ForwardAuth,
            decided
                .route
                .unwrap_or_else(|| self.shared.unmatched.clone()),
        )
        .traced(trace);
        context.method = decided.method;
        let mut response = match decided.decision {
            Decision::Allow(identity) => {
                let response = self.allowed(identity.as_ref());
                context.identity = identity;
                response
            }
            Decision::Preflight => self.allowed(None),
            Decision::Refuse(reason) => return Err(Rejection::with_context(reason, context)),
        };
        context.attach(&mut response);
        Ok(response)
    }

    /// The refusal of a request for a disguised spelling of the endpoint: 400, as for any
    /// path whose meaning depends on who reads it.
    pub fn disguised(&self) -> Rejection {
        let context = RequestContext::of(RequestKind::ForwardAuth, self.shared.unmatched.clone());
        Rejection::with_context(Reject::BadRequest, context)
    }

    async fn decide(&self, parts: &Parts, trace: Option<&RequestTrace>) -> Decided {
        let s = &self.shared;
        let original = match original::recover(
            &parts.method,
            parts.uri.path(),
            &parts.headers,
            &s.path,
            s.escaped_slashes,
        ) {
            Ok(original) => original,
            Err(reason) => {
                tracing::debug!(%reason, "forward-auth subrequest refused");
                return Decided::refused(None, None, Reject::BadRequest);
            }
        };
        let method = original.method;
        // Exactly the routing layer's decision on the path; the normal form it returns
        // is for forwarding, which the ingress does.
        let route = match s.routes.decide(&original.path, s.escaped_slashes) {
            Ok((route, _)) => route,
            Err(Undecided::RefusedPath) => {
                return Decided::refused(Some(method), None, Reject::BadRequest)
            }
            Err(Undecided::NoRoute) => {
                return Decided::refused(Some(method), None, Reject::NotFound)
            }
        };
        if !route.allows(&method, &parts.headers) {
            let allow = route.allow.clone();
            let reason = Reject::MethodNotAllowed { allow };
            return Decided::refused(Some(method), Some(route), reason);
        }
        // A preflight is the original method with the subrequest's `Origin` and
        // `Access-Control-Request-Method`, which every ingress copies from the client's
        // request (README "Behind an existing ingress" lists what each passes).
        let decision = match s
            .authenticator
            .decide(&route.settings, &method, &parts.headers, trace)
            .await
        {
            // The proxy path would drop these before forwarding; the ingress cannot.
            Decision::Preflight if overrides_method(&parts.headers) => {
                tracing::debug!("forward-auth preflight refused: it carries a method override");
                Decision::Refuse(Reject::BadRequest)
            }
            decision => decision,
        };
        Decided {
            method: Some(method),
            route: Some(route),
            decision,
        }
    }

    /// 200 with every configured identity header: the identity's value, or empty when it
    /// has none (or there is no identity). Empty rather than absent, because ingresses
    /// copy a fixed list and differ on a missing one: Envoy then keeps the client's own
    /// header, Caddy 2.6 sends its placeholder text `{http.reverse_proxy.header.X-User-Id}`;
    /// an empty one overwrites either (and nginx sends no empty header at all).
    fn allowed(&self, identity: Option<&SharedIdentity>) -> Response<Body> {
        let mut response = Response::new(empty());
        let headers = response.headers_mut();
        if let Some(identity) = identity {
            identity.apply(&self.shared.identity_headers, headers);
        }
        for (name, _) in self.shared.identity_headers.iter() {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), HeaderValue::from_static(""));
            }
        }
        response
    }
}

/// A subrequest's decision, with the original method and the deciding route when they
/// are known (for the access log and metrics).
struct Decided {
    method: Option<Method>,
    route: Option<Arc<Route>>,
    decision: Decision,
}

impl Decided {
    fn refused(method: Option<Method>, route: Option<Arc<Route>>, reason: Reject) -> Decided {
        Decided {
            method,
            route,
            decision: Decision::Refuse(reason),
        }
    }
}
