//! [`RescueLayer`]: the one place a [`Rejection`] becomes a response (linkerd's
//! error-to-response "rescue").
//!
//! Every layer below it refuses a request by returning a [`Rejection`] as its error; this
//! layer renders it into the `{code, message, requestId}` envelope of the rejection table
//! (`crate::rejection`), taking the request id from the request as the request-id layer
//! above set it, and moves the rejection's context (route, identity) into the response's
//! extensions for the access log. Above it, services cannot fail (`Infallible`). It also
//! answers the connections refused for being over `max_connections` (`server::listener`),
//! so those 503s are rendered here too.
//!
//! Its future is hand-written: every request passes through it, and an answer that is not
//! a rejection costs one match.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::http::{Body, X_REQUEST_ID};
use crate::rejection::Rejection;

/// Builds [`Rescue`] services.
#[derive(Debug, Clone, Copy, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue {
            inner,
            not_ready: None,
        }
    }
}

/// Renders the inner service's rejections; see the module docs.
#[derive(Debug, Clone)]
pub struct Rescue<S> {
    inner: S,
    /// A rejection the inner service gave instead of becoming ready: the next request is
    /// answered with it.
    not_ready: Option<Rejection>,
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Rejection>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.not_ready.is_none() {
            if let Err(rejection) = ready!(self.inner.poll_ready(cx)) {
                self.not_ready = Some(rejection);
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let request_id = req.headers().get(&X_REQUEST_ID).cloned();
        let state = match self.not_ready.take() {
            Some(rejection) => State::Rejected {
                rejection: Some(rejection),
            },
            None => State::Inner {
                future: self.inner.call(req),
            },
        };
        RescueFuture { state, request_id }
    }
}

pin_project! {
    /// The inner service's answer, or its rejection rendered.
    pub struct RescueFuture<F> {
        #[pin]
        state: State<F>,
        request_id: Option<HeaderValue>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Inner { #[pin] future: F },
        Rejected { rejection: Option<Rejection> },
    }
}

impl<F> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<Body>, Rejection>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rejection = match this.state.project() {
            StateProj::Inner { future } => match ready!(future.poll(cx)) {
                Ok(response) => return Poll::Ready(Ok(response)),
                Err(rejection) => rejection,
            },
            StateProj::Rejected { rejection } => rejection.take().expect("polled after completion"),
        };
        Poll::Ready(Ok(rejection.into_response(this.request_id.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use http::header::{ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
    use http::StatusCode;
    use http_body_util::BodyExt;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    use super::*;
    use crate::config::Config;
    use crate::http::empty;
    use crate::metrics::RequestKind;
    use crate::rejection::{Reject, X_GATEWAY_REJECTION};
    use crate::routing::{RequestContext, Routes};

    fn request(id: Option<&'static str>) -> Request<Body> {
        let mut req = Request::get("/x").body(empty()).unwrap();
        if let Some(id) = id {
            req.headers_mut()
                .insert(&X_REQUEST_ID, HeaderValue::from_static(id));
        }
        req
    }

    async fn json(response: Response<Body>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_rejection_becomes_the_envelope_with_the_requests_id_and_its_headers() {
        let svc = ServiceBuilder::new().layer(RescueLayer).service(service_fn(
            |_: Request<Body>| async {
                Err::<Response<Body>, _>(Rejection::from(Reject::InvalidToken))
            },
        ));
        let r = svc.oneshot(request(Some("req-7"))).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"cloudbase-gateway\", error=\"invalid_token\""
        );
        let body = json(r).await;
        assert_eq!(body["code"], "INVALID_ACCESS_TOKEN");
        assert_eq!(body["requestId"], "req-7");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    #[tokio::test]
    async fn a_rejected_request_keeps_its_route_for_the_access_log() {
        let config = Config::from_toml_str(
            "[emulator]\nenabled = true\n[[routes]]\nprefix = \"/api/\"\nupstream = \"whoami\"\nmethods = [\"GET\"]\n",
        )
        .unwrap();
        let route = Routes::new(&config.routes).find("/api/x").unwrap().clone();
        let allow = route.allow.clone();
        let svc = ServiceBuilder::new().layer(RescueLayer).service(service_fn(
            move |_: Request<Body>| {
                let context = RequestContext::new(route.clone());
                let allow = allow.clone();
                async move {
                    Err::<Response<Body>, _>(Rejection::with_context(
                        Reject::MethodNotAllowed { allow },
                        context,
                    ))
                }
            },
        ));
        let r = svc.oneshot(request(None)).await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET");
        let context = r
            .extensions()
            .get::<RequestContext>()
            .expect("context kept");
        assert_eq!(context.route.settings.prefix, "/api/");
        assert_eq!(
            json(r).await["requestId"],
            "",
            "no id: an empty one, not a panic"
        );
    }

    #[tokio::test]
    async fn a_refusals_own_headers_are_kept_and_forward_auth_repeats_its_envelope_in_one() {
        let config = Config::from_toml_str(
            "[emulator]\nenabled = true\n[[routes]]\nprefix = \"/api/\"\nupstream = \"whoami\"\n",
        )
        .unwrap();
        let route = Routes::new(&config.routes).find("/api/x").unwrap().clone();
        let refuse = move |kind: RequestKind| {
            let context = RequestContext::of(kind, route.clone());
            let mut extra = http::HeaderMap::new();
            extra.append("ratelimit", HeaderValue::from_static("\"gateway\";r=0;t=2"));
            let rejection =
                Rejection::with_context(Reject::RateLimited { retry_after: 2 }, context)
                    .with_headers(extra);
            ServiceBuilder::new()
                .layer(RescueLayer)
                .service(service_fn(move |_: Request<Body>| {
                    let rejection = rejection.clone();
                    async move { Err::<Response<Body>, _>(rejection) }
                }))
        };

        let proxied = refuse(RequestKind::Proxy)
            .oneshot(request(Some("req-9")))
            .await
            .unwrap();
        assert_eq!(proxied.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(proxied.headers()["retry-after"], "2");
        assert_eq!(proxied.headers()["ratelimit"], "\"gateway\";r=0;t=2");
        assert!(proxied.headers().get(&X_GATEWAY_REJECTION).is_none());

        let decided = refuse(RequestKind::ForwardAuth)
            .oneshot(request(Some("req-9")))
            .await
            .unwrap();
        let envelope = decided.headers()[&X_GATEWAY_REJECTION].clone();
        let body = decided.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            envelope.as_bytes(),
            &body[..],
            "the header repeats the body"
        );
    }

    #[tokio::test]
    async fn an_answer_that_is_not_a_rejection_passes_untouched() {
        let svc = ServiceBuilder::new().layer(RescueLayer).service(service_fn(
            |_: Request<Body>| async {
                let mut r = Response::new(empty());
                *r.status_mut() = StatusCode::IM_A_TEAPOT;
                Ok::<_, Rejection>(r)
            },
        ));
        let r = svc.oneshot(request(Some("req-8"))).await.unwrap();
        assert_eq!(r.status(), StatusCode::IM_A_TEAPOT);
        assert!(r.headers().get(CONTENT_TYPE).is_none());
    }
}
