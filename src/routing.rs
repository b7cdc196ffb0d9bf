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
//! the middleware: the leaf service (`proxy`) and the layers (`stack`) both take it, and
//! from here neither has to import the other.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response};

use crate::cache::SharedIdentity;
use crate::config::RouteSettings;
use crate::http::headers::is_cors_preflight;
use crate::http::Body;
use crate::path::{self, EscapedSlashes};

/// A configured route with what is derived from it once.
#[derive(Debug)]
pub struct Route {
    /// Position in the configuration; also the metrics label index.
    pub index: usize,
    pub settings: RouteSettings,
    /// `Allow` for 405 answers.
    pub allow: HeaderValue,
}

impl Route {
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

/// What the stack knows about one request beyond the request itself: the route it
/// matched and, once authenticated, who made it. One typed value instead of several
/// optional extensions.
///
/// The route layer creates it and hands it down with the request ([`Routed`]), so no
/// service below can be called without one. On the way back it rides on the response (an
/// extension) or the [`crate::rejection::Rejection`]: the auth layer attaches the context it
/// finished (identity included), and the route layer attaches its own when nothing below
/// did (its 405/413, the timeout's 504). The access log reads it from there.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub route: Arc<Route>,
    pub identity: Option<SharedIdentity>,
}

/// A request with its context: what the services below the route layer take.
pub type Routed = (Request<Body>, RequestContext);

impl RequestContext {
    /// The context of a request that matched `route`, nobody authenticated yet.
    pub fn new(route: Arc<Route>) -> RequestContext {
        RequestContext {
            route,
            identity: None,
        }
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
            .map(|(index, settings)| {
                let allow = settings
                    .methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                Arc::new(Route {
                    index,
                    settings: settings.clone(),
                    allow: HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("")),
                })
            })
            .collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.settings.prefix.len()));
        Routes {
            by_length: all.into(),
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
