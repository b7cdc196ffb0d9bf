//! The authentication layer: the auth decision ([`crate::auth::Authenticator`]) under the
//! request's route, then the identity headers.
//!
//! Sits after routing (it needs the route's `auth` mode and rules, which come with the
//! request as its [`RequestContext`](crate::routing::RequestContext)) and before
//! forwarding. A refusal is a [`Rejection`] (rendered by the rescue layer); an accepted
//! identity is set on the context, which this layer hands down (the rate limit keys on it)
//! and back up with the answer (the access log and the request's span read it).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use tower::{Layer, Service};

use crate::auth::{Authenticator, Decision};
use crate::http::headers::strip_preflight;
use crate::http::{empty, Body};
use crate::identity_headers::IdentityMapping;
use crate::rejection::Rejection;
use crate::routing::Routed;

/// Builds [`Auth`] services.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Authenticator,
    /// The identity headers: the mapping the cache renders values with.
    headers: IdentityMapping,
}

impl AuthLayer {
    /// `headers`: `identity.headers`, the mapping the authenticator's cache was built with.
    pub fn new(authenticator: Authenticator, headers: IdentityMapping) -> Self {
        AuthLayer {
            authenticator,
            headers,
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
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    shared: AuthLayer,
}

impl<S> Service<Routed> for Auth<S>
where
    S: Service<Routed, Response = Response<Body>, Error = Rejection> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Rejection;
    // Boxed: the validation await makes this future large and its state machine is not
    // worth hand-writing. One allocation per request, small next to a cache hit's digest
    // and lookup; not measured on its own (no bench builds the tower stack, and
    // `benches/load.sh` measures the whole proxy).
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Rejection>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, (mut req, mut context): Routed) -> Self::Future {
        // tower's rule: the clone may not be ready, so keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let decision = shared
                .authenticator
                .decide(
                    &context.route.settings,
                    req.method(),
                    req.headers(),
                    context.trace.as_ref(),
                )
                .await;
            match decision {
                Decision::Refuse(reason) => return Err(Rejection::with_context(reason, context)),
                Decision::Preflight => {
                    strip_preflight(req.headers_mut());
                    *req.body_mut() = empty();
                }
                Decision::Allow(identity) => context.identity = identity,
            }
            if let Some(identity) = &context.identity {
                identity.apply(&shared.headers, req.headers_mut());
            }
            // Boxed at once: proving `S::Future: Send` inside this async block trips
            // rustc's higher-ranked lifetime check (rust-lang/rust#110338).
            let future: Pin<Box<dyn Future<Output = Result<Response<Body>, Rejection>> + Send>> =
                Box::pin(inner.call((req, context.clone())));
            // The context this layer finished (identity included) goes back up with
            // whatever answered below.
            match future.await {
                Ok(mut response) => {
                    context.attach(&mut response);
                    Ok(response)
                }
                Err(mut rejection) => {
                    rejection.context = Some(context);
                    Err(rejection)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    //! The layer driven as a tower service over an in-process CloudBase stand-in: what
    //! reaches the inner service, what comes back up, and what is refused before it.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use cloudbase_auth::types::{Introspection, UserProfile};
    use cloudbase_auth::{CallOptions, Error as ApiError};
    use http::header::{AUTHORIZATION, CONTENT_LENGTH, ORIGIN};
    use http::{HeaderValue, Request, StatusCode};
    use hyper::body::Body as _;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    use super::*;
    use crate::cache::{AuthApi, BoxFuture, IdentityCache};
    use crate::config::{CacheSettings, IdentityField};
    use crate::http::full;
    use crate::metrics::Metrics;
    use crate::rejection::Reject;
    use crate::routing::RequestContext;
    use crate::stack::testing::{context, context_with, request};

    /// CloudBase for one token, `good`, of user 42; every other token is inactive.
    #[derive(Default)]
    struct StandIn {
        calls: AtomicUsize,
    }

    impl AuthApi for StandIn {
        fn introspect<'a>(
            &'a self,
            token: &'a str,
            _: &'a CallOptions,
        ) -> BoxFuture<'a, Result<Introspection, ApiError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let active = token == "good";
            Box::pin(async move {
                Ok(Introspection {
                    sub: active.then(|| "42".to_owned()),
                    scope: active.then(|| "user".to_owned()),
                    ..Introspection::default()
                })
            })
        }

        fn user_me<'a>(
            &'a self,
            _: &'a str,
            _: &'a CallOptions,
        ) -> BoxFuture<'a, Result<UserProfile, ApiError>> {
            Box::pin(async move {
                Ok(UserProfile {
                    sub: "42".into(),
                    name: Some("Demo".into()),
                    ..UserProfile::default()
                })
            })
        }
    }

    /// The request the inner service received, and its context.
    type Seen = Arc<Mutex<Option<Routed>>>;

    /// The auth layer over an inner service that records what it is handed and answers
    /// 200, or refuses with `below` when given.
    fn auth(
        below: Option<Reject>,
    ) -> (
        impl Service<Routed, Response = Response<Body>, Error = Rejection>,
        Seen,
        Arc<StandIn>,
        Arc<Metrics>,
    ) {
        let api = Arc::new(StandIn::default());
        let metrics = Arc::new(Metrics::new(["/api/".to_owned()]));
        let settings = CacheSettings {
            max_entries: 100,
            ..CacheSettings::default()
        };
        let names = IdentityMapping::from_static(&[
            ("x-user-id", IdentityField::Sub),
            ("x-user-name", IdentityField::Name),
        ]);
        let cache = IdentityCache::new(&settings, &names, api.clone(), metrics.clone());
        let seen = Seen::default();
        let record = seen.clone();
        let inner = service_fn(move |routed: Routed| {
            *record.lock().unwrap() = Some(routed);
            let below = below.clone();
            async move {
                match below {
                    Some(reason) => Err(reason.into()),
                    None => Ok(Response::new(empty())),
                }
            }
        });
        let svc = ServiceBuilder::new()
            .layer(AuthLayer::new(
                Authenticator::new(cache, metrics.clone()),
                names,
            ))
            .service(inner);
        (svc, seen, api, metrics)
    }

    fn with_token(token: &str) -> Request<Body> {
        let mut req = request("/api/x");
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        req.headers_mut().insert(AUTHORIZATION, value);
        req
    }

    #[tokio::test]
    async fn no_token_on_a_required_route_is_refused_with_its_route_and_nothing_forwarded() {
        let (svc, seen, api, metrics) = auth(None);
        let rejection = svc
            .oneshot((request("/api/x"), context("/api/")))
            .await
            .expect_err("refused");
        assert_eq!(rejection.reason, Reject::MissingCredentials);
        let context = rejection
            .context
            .expect("the route goes up with the refusal");
        assert_eq!(context.route.settings.prefix, "/api/");
        assert!(context.identity.is_none());
        assert!(seen.lock().unwrap().is_none(), "nothing forwarded");
        assert_eq!(api.calls.load(Ordering::SeqCst), 0, "CloudBase not asked");
        assert!(metrics
            .render(0)
            .contains("cloudbase_gateway_auth_decisions_total{result=\"missing\"} 1"));
    }

    #[tokio::test]
    async fn a_valid_token_sets_the_identity_headers_and_the_identity_goes_back_up() {
        let (svc, seen, _, _) = auth(None);
        let response = svc
            .oneshot((with_token("good"), context("/api/")))
            .await
            .expect("forwarded");
        assert_eq!(response.status(), StatusCode::OK);
        let (req, below) = seen.lock().unwrap().take().expect("forwarded");
        assert_eq!(req.headers()["x-user-id"], "42");
        assert_eq!(req.headers()["x-user-name"], "Demo");
        assert_eq!(below.identity.as_ref().map(|i| &*i.sub), Some("42"));
        let up = response
            .extensions()
            .get::<RequestContext>()
            .expect("context on the answer");
        assert_eq!(up.identity.as_ref().map(|i| &*i.sub), Some("42"));
    }

    #[tokio::test]
    async fn an_invalid_token_on_an_optional_route_is_forwarded_without_identity() {
        let (svc, seen, _, _) = auth(None);
        let response = svc
            .oneshot((
                with_token("made-up"),
                context_with("/api/", "auth = \"optional\""),
            ))
            .await
            .expect("forwarded");
        let (req, below) = seen.lock().unwrap().take().expect("forwarded");
        assert!(req.headers().get("x-user-id").is_none());
        assert!(below.identity.is_none());
        let up = response.extensions().get::<RequestContext>().unwrap();
        assert!(up.identity.is_none());
    }

    #[tokio::test]
    async fn a_preflight_passes_without_body_or_cloudbase_where_the_route_allows_it() {
        let (svc, seen, api, _) = auth(None);
        let mut req = Request::options("/api/x")
            .header(ORIGIN, "https://app.example")
            .header("access-control-request-method", "POST")
            .header(CONTENT_LENGTH, "5")
            .body(full("hello"))
            .unwrap();
        req.headers_mut()
            .insert(AUTHORIZATION, HeaderValue::from_static("Bearer good"));
        svc.oneshot((req, context_with("/api/", "allow_preflight = true")))
            .await
            .expect("forwarded");
        let (req, below) = seen.lock().unwrap().take().expect("forwarded");
        assert!(req.headers().get(CONTENT_LENGTH).is_none());
        assert!(req.body().is_end_stream(), "body dropped");
        assert!(below.identity.is_none());
        assert_eq!(api.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_refusal_from_below_goes_up_with_the_identity_it_was_made_for() {
        let (svc, _, _, _) = auth(Some(Reject::UpstreamUnavailable));
        let rejection = svc
            .oneshot((with_token("good"), context("/api/")))
            .await
            .expect_err("refused below");
        assert_eq!(rejection.reason, Reject::UpstreamUnavailable);
        let context = rejection.context.expect("context");
        assert_eq!(context.identity.as_ref().map(|i| &*i.sub), Some("42"));
    }
}
