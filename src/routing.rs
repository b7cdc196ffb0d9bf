//! The route table: the longest configured prefix that the normalized path starts with
//! wins.
//!
//! The path is first put in the normal form of [`crate::path`] (or refused with 400), so
//! the route, the auth rules, `strip_prefix` and the upstream all see one path (the route
//! layer, `stack::route`, rewrites the request to it). A path whose route would change if
//! a server dropped its `;` parameters (Tomcat's `/admin;x/secret` is `/admin/secret`) is
//! refused too.
//!
//! Routes are sorted once at start (longest prefix first), so a match is a scan of a short
//! list with `starts_with`; for the handful of routes a gateway has this beats a trie.
//!
//! [`RequestContext`] lives here, beside the table that makes its route, rather than with
//! the middleware: the leaf service (`proxy`), the diverts' services (`relay`,
//! `forward_auth`) and the layers (`stack`) all take it, and from here none has to import
//! another.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response};

use crate::cache::SharedIdentity;
use crate::config::{RouteSettings, Upstream};
use crate::http::headers::is_cors_preflight;
use crate::http::Body;
use crate::metrics::{Metrics, RequestKind, NO_ROUTE};
use crate::path::{self, EscapedSlashes};
use crate::telemetry::trace::RequestTrace;

/// A configured route with what is derived from it once.
#[derive(Debug)]
pub struct Route {
    /// Position in the route table it belongs to (per-table state, as the rate limiters,
    /// is kept by it).
    pub index: usize,
    /// Its label slot in the metrics (`Metrics::label`), kept by its prefix across
    /// reloads; `index` until [`Routes::labelled`] says otherwise.
    pub label: usize,
    pub settings: RouteSettings,
    /// `Allow` for 405 answers.
    pub allow: HeaderValue,
    /// The `Host` the upstream is sent (its authority), made once here rather than per
    /// request; `None` for the built-in `whoami`.
    pub upstream_host: Option<HeaderValue>,
}

impl Route {
    /// The route of `settings`, labelled `index` in the metrics.
    pub fn new(index: usize, settings: RouteSettings) -> Route {
        Route::labelled(index, index, settings)
    }

    /// The route of `settings` at `index` of its table, with metrics label slot `label`.
    pub fn labelled(index: usize, label: usize, settings: RouteSettings) -> Route {
        let allow = settings
            .methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let upstream_host = match &settings.upstream {
            Upstream::Http { authority, .. } => HeaderValue::from_str(authority.as_str()).ok(),
            Upstream::Whoami => None,
        };
        Route {
            index,
            label,
            allow: HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("")),
            upstream_host,
            settings,
        }
    }

    /// What answers that no route decided are labelled with when something must carry a
    /// context all the same (forward-auth's refusal of a subrequest whose original request
    /// matches no route): the metrics' `none` label at `index`, no rules, never matched.
    pub fn unmatched(index: usize) -> Route {
        Route::new(
            index,
            RouteSettings {
                prefix: NO_ROUTE.to_owned(),
                ..RouteSettings::default()
            },
        )
    }

    /// Whether this is [`Route::unmatched`]: configured prefixes start with `/`.
    pub fn is_unmatched(&self) -> bool {
        !self.settings.prefix.starts_with('/')
    }

    /// Whether the route takes this request's method: one of `methods`, or a real CORS
    /// preflight where `allow_preflight` is on (an `OPTIONS` that is not one is an
    /// ordinary request and needs `OPTIONS` in `methods`).
    pub fn allows(&self, method: &Method, headers: &http::HeaderMap) -> bool {
        let s = &self.settings;
        s.methods.is_empty()
            || s.methods.contains(method)
            || (s.allow_preflight && is_cors_preflight(method, headers))
    }
}

/// What the stack knows about one request beyond the request itself: what the gateway
/// does with it (`kind`), the route that decides it, once authenticated who made it, and
/// its span when traced. One typed value instead of several optional extensions.
///
/// The route layer creates it and hands it down with the request ([`Routed`]), so no
/// service below can be called without one; the diverts before routing (forward-auth, the
/// relay) make their own. On the way back it rides on the response (an extension) or the
/// [`crate::rejection::Rejection`]: the auth layer attaches the context it finished
/// (identity included), and the route layer attaches its own when nothing below did (its
/// 405/413, the timeout's 504). The access log, the metrics and the request's span read it
/// from there.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub route: Arc<Route>,
    pub identity: Option<SharedIdentity>,
    /// The request's span, while `[telemetry]` is on.
    pub trace: Option<RequestTrace>,
    /// Proxied (the route layer's), decided for an ingress, or relayed to CloudBase.
    pub kind: RequestKind,
    /// The method the answer is about when it is not the request's own: forward-auth
    /// answers a GET from nginx about the client's POST.
    pub method: Option<Method>,
}

/// A request with its context: what the services below the route layer take.
pub type Routed = (Request<Body>, RequestContext);

impl RequestContext {
    /// The context of a request that matched `route`, nobody authenticated yet, to be
    /// proxied.
    pub fn new(route: Arc<Route>) -> RequestContext {
        RequestContext::of(RequestKind::Proxy, route)
    }

    /// The context of a request of `kind` decided by `route`.
    pub fn of(kind: RequestKind, route: Arc<Route>) -> RequestContext {
        RequestContext {
            route,
            identity: None,
            trace: None,
            kind,
            method: None,
        }
    }

    /// With the request's span (`None` while tracing is off).
    pub fn traced(mut self, trace: Option<RequestTrace>) -> RequestContext {
        self.trace = trace;
        self
    }

    /// Puts the context in `response`'s extensions, for the layers above.
    pub fn attach(self, response: &mut Response<Body>) {
        response.extensions_mut().insert(self);
    }
}

/// Why no route decides a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecided {
    /// The path policy refuses the path, or its `;` parameters would move it to another
    /// route for a server that drops them (answered 400).
    RefusedPath,
    /// No prefix matches (answered 404).
    NoRoute,
}

/// The route table.
#[derive(Debug, Clone)]
pub struct Routes {
    by_length: Arc<[Arc<Route>]>,
}

impl Routes {
    pub fn new(routes: &[RouteSettings]) -> Routes {
        let mut all: Vec<Arc<Route>> = routes
            .iter()
            .enumerate()
            .map(|(index, settings)| Arc::new(Route::new(index, settings.clone())))
            .collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.settings.prefix.len()));
        Routes {
            by_length: all.into(),
        }
    }

    /// The same table with each route labelled by the slot `metrics` keeps for its prefix,
    /// answered under `kind`: a table built again on reload keeps counting its prefixes'
    /// series on.
    pub fn labelled(self, metrics: &Metrics, kind: RequestKind) -> Routes {
        let by_length: Vec<Arc<Route>> = self
            .by_length
            .iter()
            .map(|r| {
                let label = metrics.label(&r.settings.prefix, kind);
                Arc::new(Route::labelled(r.index, label, r.settings.clone()))
            })
            .collect();
        Routes {
            by_length: by_length.into(),
        }
    }

    /// The route for `path` (already normal), longest prefix first.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.by_length
            .iter()
            .find(|r| path.starts_with(r.settings.prefix.as_str()))
    }

    /// The route that decides a request for the raw path `raw`, and the normal path when it
    /// differs from `raw`; or why none does: the path is refused (before any route is
    /// considered), or no route matches.
    pub fn decide(
        &self,
        raw: &str,
        escaped_slashes: EscapedSlashes,
    ) -> Result<(Arc<Route>, Option<String>), Undecided> {
        let normal = path::normalize(raw, escaped_slashes).map_err(|reason| {
            // The reason only: paths can carry secrets and are never logged.
            tracing::debug!(%reason, "request path refused");
            Undecided::RefusedPath
        })?;
        let route = self.find(&normal).ok_or(Undecided::NoRoute)?;
        // Borrowed: no parameters, the same path, the same route (the common case).
        let same_without_parameters =
            path::without_parameters(&normal).is_ok_and(|bare| match bare {
                Cow::Borrowed(_) => true,
                Cow::Owned(bare) => self.find(&bare).is_some_and(|r| r.index == route.index),
            });
        if !same_without_parameters {
            tracing::debug!("request path refused: its ; parameters decide the route");
            return Err(Undecided::RefusedPath);
        }
        let rewritten = match normal {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) => Some(p),
        };
        Ok((route.clone(), rewritten))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn longest_prefix_wins() {
        let c = Config::from_toml_str(
            "[emulator]\nenabled=true\n[[routes]]\nprefix='/'\nupstream='whoami'\n\
             [[routes]]\nprefix='/api/'\nupstream='whoami'\n\
             [[routes]]\nprefix='/api/admin/'\nupstream='whoami'\nmethods=['GET']\n",
        )
        .unwrap();
        let r = Routes::new(&c.routes);
        assert_eq!(r.find("/api/admin/x").unwrap().index, 2);
        assert_eq!(r.find("/api/x").unwrap().index, 1);
        assert_eq!(r.find("/other").unwrap().index, 0);
        let admin = r.find("/api/admin/").unwrap();
        let none = http::HeaderMap::new();
        assert!(admin.allows(&Method::GET, &none));
        assert!(!admin.allows(&Method::POST, &none));
        assert_eq!(admin.allow, "GET");
    }
}
