//! OpenTelemetry traces (`[telemetry]`): a span per request, child spans for the CloudBase
//! calls and the upstream call, W3C trace context in and out, exported as OTLP/HTTP
//! protobuf in batches.
//!
//! This module is the spans and their export; the layer that starts and ends the request's
//! span is `stack::trace`. Off (no `otlp_endpoint`), nothing of this runs: the trace layer
//! is not in the stack, no request has a [`RequestTrace`], and every other layer's tracing
//! code is behind an `Option` that is `None` — no span is created, sampled or not. The
//! client's own `traceparent` then passes to the upstream untouched, like any header.
//!
//! The request's [`RequestTrace`] travels in the request's extensions from the trace layer
//! down to routing, the one hop where no typed per-request value exists yet (the diverts
//! before routing, forward-auth and the relay, read it there); the route layer moves it
//! into the request's `RequestContext`, where every service below finds it. It sits below
//! `cache` in the import order: a validation flight is a span of its own.
//!
//! On: the server span continues the client's `traceparent` / `tracestate` when they parse
//! (W3C Trace Context), else starts a trace; its context is injected into the upstream
//! request and into both CloudBase calls, replacing whatever the client sent, so each hop
//! names its real parent. Sampling is parent-based: a client's sampled flag is followed,
//! and new traces are kept at `sample_ratio` (trace-id based, so all replicas agree; a
//! configuration reload changes it for the next new trace).
//! Unsampled spans cost ids and a context, and are not exported. The request id stays as
//! it is; it is recorded on the server span (`cloudbase_gateway.request_id`) to join logs
//! and traces.
//!
//! What a span may say: the route prefix (`http.route`), never the path (ids, e-mail
//! addresses and tokens travel in paths) nor the query; the method, status and `enduser.id`
//! (the `sub` of an authenticated user); never a header value, so no token.
//!
//! Why the OpenTelemetry API directly rather than `tracing` spans bridged by
//! `tracing-opentelemetry`: the request path needs four spans with explicit parents (one
//! of them in a task shared by concurrent requests, see `cache`), which `Context` values
//! say plainly; a bridge would put every request through the subscriber's span registry
//! whether tracing is on or off, add span fields to every log line, and reach the OTel
//! SDK through a second layer of conversions. The exporter's HTTP client is the gateway's
//! own `reqwest` (rustls, `ExportClient`), run on the gateway's runtime: the SDK's batch
//! processor exports from its own thread, so each export is spawned onto the runtime and
//! awaited from there. The batch processor's queue is bounded (2048 spans by default,
//! `OTEL_BSP_*`); past it spans are dropped, never the request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Link, SpanContext, SpanKind, Status, TraceContextExt, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SamplingResult, SdkTracer, SdkTracerProvider, ShouldSample,
};
use opentelemetry_sdk::Resource;

use cloudbase_auth::error::SetupError;
use cloudbase_auth::{tls_client_config, RootCerts};

use crate::config::TelemetrySettings;
use crate::http::{ConnInfo, X_REQUEST_ID};

/// Bound on one export to the collector (each try, retries included).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceSetupError {
    #[error("the OTLP exporter: {0}")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error("the exporter's HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    #[error("the exporter's TLS roots: {0}")]
    Tls(#[source] SetupError),
}

/// The tracer and what exports its spans. Cheap to clone.
#[derive(Clone)]
pub struct Tracing {
    inner: Arc<Inner>,
}

struct Inner {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    ratio: SampleRatio,
}

/// The share of new traces kept (`telemetry.sample_ratio`), which a reload may change:
/// the SDK's sampler is fixed when the provider is built, so this one reads the ratio (one
/// relaxed load, for root spans only: a parent's decision is followed without it) and
/// hands the decision to the SDK's trace-id ratio sampler.
#[derive(Debug, Clone)]
struct SampleRatio(Arc<AtomicU64>);

impl SampleRatio {
    fn new(ratio: f64) -> SampleRatio {
        SampleRatio(Arc::new(AtomicU64::new(ratio.to_bits())))
    }

    fn set(&self, ratio: f64) {
        self.0.store(ratio.to_bits(), Relaxed);
    }
}

impl ShouldSample for SampleRatio {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let ratio = f64::from_bits(self.0.load(Relaxed));
        Sampler::TraceIdRatioBased(ratio).should_sample(
            parent_context,
            trace_id,
            name,
            span_kind,
            attributes,
            links,
        )
    }
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

impl Tracing {
    /// Starts the exporter when `settings` name a collector; `None` when tracing is off.
    /// An `https://` collector is verified against the platform's roots and `extra_roots`
    /// (`cloudbase.ca_file`, the extra roots of every client the gateway makes, through the
    /// CloudBase client's own root builder). Must be called on the runtime that will carry
    /// the exports.
    pub fn start(
        settings: &TelemetrySettings,
        extra_roots: &[RootCerts],
    ) -> Result<Option<Tracing>, TraceSetupError> {
        let Some(url) = settings.traces_url() else {
            return Ok(None);
        };
        let tls = tls_client_config(extra_roots).map_err(TraceSetupError::Tls)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(EXPORT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cloudbase-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(TraceSetupError::Http)?;
        let client = ExportClient {
            http,
            runtime: tokio::runtime::Handle::current(),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(TraceSetupError::Exporter)?;
        let ratio = SampleRatio::new(settings.sample_ratio);
        let sampler = Sampler::ParentBased(Box::new(ratio.clone()));
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("cloudbase-gateway");
        Ok(Some(Tracing {
            inner: Arc::new(Inner {
                provider,
                tracer,
                propagator: TraceContextPropagator::new(),
                ratio,
            }),
        }))
    }

    /// Keeps new traces at `ratio` from the next root span on (a configuration reload of
    /// `telemetry.sample_ratio`).
    pub fn set_sample_ratio(&self, ratio: f64) {
        self.inner.ratio.set(ratio);
    }

    /// Exports every finished span now. On the blocking pool: the SDK waits on its export
    /// thread, whose HTTP calls run on this runtime.
    pub async fn flush(&self) {
        let provider = self.inner.provider.clone();
        let done = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "flushing spans to the collector failed");
        }
    }

    /// Exports what is left and stops the exporter (on shutdown, after the drain).
    pub async fn shutdown(&self) {
        let provider = self.inner.provider.clone();
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "shutting the span exporter down failed");
        }
    }

    fn start_span(&self, name: &'static str, kind: SpanKind, parent: &Context) -> Context {
        let span = self
            .inner
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(&self.inner.tracer, parent);
        parent.with_span(span)
    }
}

/// The request's span while tracing is on: later layers start their spans under it (see
/// the module docs for where it travels).
#[derive(Clone)]
pub struct RequestTrace {
    cx: Context,
    tracing: Tracing,
}

impl std::fmt::Debug for RequestTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let span = self.cx.span();
        let ids = span.span_context();
        f.debug_struct("RequestTrace")
            .field("trace_id", &ids.trace_id())
            .field("span_id", &ids.span_id())
            .finish()
    }
}

impl RequestTrace {
    /// A span under the request's.
    pub fn child(&self, name: &'static str, kind: Kind) -> Span {
        Span {
            cx: self.tracing.start_span(name, kind.into(), &self.cx),
            tracing: self.tracing.clone(),
        }
    }

    /// Links the request's span to `other` (a span it waited on but did not start).
    pub fn link(&self, other: &SpanLink) {
        self.cx.span().add_link(other.0.clone(), Vec::new());
    }
}

/// What a child span is, for the trace view.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A call to another service (CloudBase, the upstream).
    Client,
    /// Work inside the gateway.
    Internal,
}

impl From<Kind> for SpanKind {
    fn from(k: Kind) -> SpanKind {
        match k {
            Kind::Client => SpanKind::Client,
            Kind::Internal => SpanKind::Internal,
        }
    }
}

/// A started span below the request's. Ended by [`Span::end`], or when dropped.
#[derive(Clone)]
pub struct Span {
    cx: Context,
    tracing: Tracing,
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Span")
            .field("span_id", &self.cx.span().span_context().span_id())
            .finish()
    }
}

/// Another span's identity, to link to.
#[derive(Clone, Debug)]
pub struct SpanLink(SpanContext);

/// W3C trace context headers naming a span as the parent of the next hop.
#[derive(Debug, Clone, Default)]
pub struct TraceHeaders {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Span {
    pub fn child(&self, name: &'static str, kind: Kind) -> Span {
        Span {
            cx: self.tracing.start_span(name, kind.into(), &self.cx),
            tracing: self.tracing.clone(),
        }
    }

    /// Sets `traceparent` (and `tracestate` when there is one) to this span, replacing
    /// what the client sent.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.remove(&TRACEPARENT);
        headers.remove(&TRACESTATE);
        self.tracing
            .inner
            .propagator
            .inject_context(&self.cx, &mut HeaderInjector(headers));
    }

    /// The same, as values, for a client that takes headers as strings.
    pub fn headers(&self) -> TraceHeaders {
        let mut map = HeaderMap::new();
        self.inject(&mut map);
        let text = |name: &http::HeaderName| {
            map.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        TraceHeaders {
            traceparent: text(&TRACEPARENT),
            tracestate: text(&TRACESTATE),
        }
    }

    pub fn link_target(&self) -> SpanLink {
        SpanLink(self.cx.span().span_context().clone())
    }

    pub fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }

    /// Marks the span failed, `why` being a fixed word (never an error's text, which
    /// could carry a URL).
    pub fn fail(&self, why: &'static str) {
        self.set("error.type", why);
        self.cx.span().set_status(Status::error(why));
    }

    pub fn end(&self) {
        self.cx.span().end();
    }
}

/// Starts a client span named `name` under `trace` for a call the gateway makes on the
/// request's behalf (`req` is that call, its URI already the target's), and names the span
/// as the parent in the call's headers. `None` when the request is not traced.
pub fn outbound<B>(
    req: &mut Request<B>,
    trace: Option<&RequestTrace>,
    name: &'static str,
) -> Option<Span> {
    let span = trace?.child(name, Kind::Client);
    span.set("http.request.method", method_attribute(req.method()));
    if let Some(host) = req.uri().host() {
        span.set("server.address", host.to_owned());
    }
    if let Some(port) = req.uri().port_u16() {
        span.set("server.port", i64::from(port));
    }
    span.inject(req.headers_mut());
    Some(span)
}

impl Span {
    /// Ends a client span with the status of the answer it got.
    pub fn end_with_status(&self, status: http::StatusCode) {
        self.set("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            self.cx.span().set_status(Status::error(""));
        }
        self.end();
    }
}

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Semantic-convention method value: the known methods, else `_OTHER` (a client cannot
/// mint attribute values).
pub fn method_attribute(m: &Method) -> &'static str {
    crate::metrics::known_method(m).unwrap_or("_OTHER")
}

impl Tracing {
    /// The server span of a request arriving with `req`'s head: it continues the client's
    /// `traceparent` / `tracestate` when they parse, else starts a trace. Records the
    /// method, protocol version, scheme and request id, never the path or a header value.
    pub fn request<B>(&self, req: &Request<B>) -> RequestTrace {
        let inner = &self.inner;
        let parent = inner
            .propagator
            .extract_with_context(&Context::new(), &HeaderExtractor(req.headers()));
        let method = method_attribute(req.method());
        let mut attributes = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new(
                "network.protocol.version",
                match req.version() {
                    http::Version::HTTP_2 => "2",
                    http::Version::HTTP_10 => "1.0",
                    _ => "1.1",
                },
            ),
        ];
        if let Some(conn) = req.extensions().get::<ConnInfo>() {
            let scheme = if conn.tls { "https" } else { "http" };
            attributes.push(KeyValue::new("url.scheme", scheme));
        }
        if let Some(id) = req.headers().get(&X_REQUEST_ID).and_then(header_text) {
            attributes.push(KeyValue::new("cloudbase_gateway.request_id", id));
        }
        let span = inner
            .tracer
            .span_builder(method)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&inner.tracer, &parent);
        RequestTrace {
            cx: parent.with_span(span),
            tracing: self.clone(),
        }
    }
}

fn header_text(v: &HeaderValue) -> Option<String> {
    v.to_str().ok().map(str::to_owned)
}

/// What the answer says about a request, for the end of its span.
#[derive(Debug, Clone, Copy)]
pub struct Answered<'a> {
    /// The request's method, as [`method_attribute`] spells it.
    pub method: &'static str,
    /// The prefix of the route that decided it, if one did.
    pub route: Option<&'a str>,
    pub status: http::StatusCode,
    /// The authenticated user's `sub`.
    pub user: Option<&'a str>,
}

impl RequestTrace {
    /// Ends the request's span once the response head is there: route, status and user
    /// go on it (its duration is the one `request_duration_seconds` measures).
    pub fn end(&self, answered: Answered<'_>) {
        let span = self.cx.span();
        let status = answered.status;
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if let Some(user) = answered.user {
            span.set_attribute(KeyValue::new("enduser.id", user.to_owned()));
        }
        if let Some(route) = answered.route {
            span.update_name(format!("{} {route}", answered.method));
            span.set_attribute(KeyValue::new("http.route", route.to_owned()));
        }
        if status.is_server_error() {
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

/// The OTLP exporter's HTTP client: the gateway's `reqwest`, each call run on the
/// gateway's runtime (the batch processor calls from a thread of its own, where `reqwest`
/// has no reactor).
#[derive(Debug)]
struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl ExportClient {
    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let (parts, body) = request.into_parts();
        let task = self.runtime.spawn(async move {
            let url = parts.uri.to_string();
            let response = http
                .request(parts.method, url)
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            let mut out = Response::new(body);
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok::<_, reqwest::Error>(out)
        });
        match task.await {
            Ok(result) => result.map_err(|e| Box::new(e.without_url()) as HttpError),
            Err(e) => Err(Box::new(e)),
        }
    }
}

// By hand rather than through `async-trait` (the trait's own macro): one method.
impl HttpClient for ExportClient {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(self.send(request))
    }
}
