//! `[telemetry]`: the spans the gateway exports, as a collector receives them (an OTLP/HTTP
//! receiver on 127.0.0.1 decoding `ExportTraceServiceRequest`), and the `traceparent`
//! each next hop receives (a CloudBase stand-in and an upstream that record it).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

use crate::support::*;

/// The client's trace: its id and the client's own span.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";
const TOKEN: &str = "opaque-access-token-3f9a7c";
const SUB: &str = "user-7";

/// Generous bound for what should come at once; never a performance claim.
const PATIENCE: Duration = Duration::from_secs(15);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a collector received: every export request, decoded.
#[derive(Clone, Default)]
struct Collector {
    exports: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

impl Collector {
    /// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body.
    async fn start() -> (Collector, SocketAddr) {
        let collector = Collector::default();
        let exports = collector.exports.clone();
        let (addr, _) = spawn_upstream(move |req: Request<Incoming>| {
            let exports = exports.clone();
            async move {
                assert_eq!(req.uri().path(), "/v1/traces");
                assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let export = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                exports.lock().unwrap().push(export);
                let mut response = Response::new(cloudbase_gateway::http::empty());
                response.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/x-protobuf"),
                );
                response
            }
        })
        .await;
        (collector, addr)
    }

    fn spans(&self) -> Vec<Span> {
        let exports = self.exports.lock().unwrap();
        exports
            .iter()
            .flat_map(|e| &e.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }

    fn service_names(&self) -> Vec<String> {
        let exports = self.exports.lock().unwrap();
        exports
            .iter()
            .flat_map(|e| &e.resource_spans)
            .filter_map(|r| r.resource.as_ref())
            .flat_map(|r| &r.attributes)
            .filter(|kv| kv.key == "service.name")
            .filter_map(|kv| text(kv.value.as_ref()?.value.as_ref()?))
            .collect()
    }
}

fn text(v: &AnyValue) -> Option<String> {
    match v {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        AnyValue::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found = named(spans, name);
    assert_eq!(
        found.len(),
        1,
        "one {name:?} span in {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

/// One request a next hop received: its path and trace context headers.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// What a next hop received, in order.
#[derive(Clone, Default)]
struct Hop {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Hop {
    fn record(&self, req: &Request<Incoming>) {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        self.seen.lock().unwrap().push(Seen {
            path: req.uri().path().to_owned(),
            traceparent: header("traceparent"),
            tracestate: header("tracestate"),
        });
    }

    fn request(&self, path: &str) -> Seen {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .find(|s| s.path == path)
            .cloned()
            .unwrap_or_else(|| panic!("no request for {path} in {seen:?}"))
    }

    fn traceparent(&self, path: &str) -> Option<String> {
        self.request(path).traceparent
    }

    fn tracestate(&self, path: &str) -> Option<String> {
        self.request(path).tracestate
    }
}

/// A CloudBase that vouches for [`TOKEN`] as [`SUB`] after `delay`, recording each call.
async fn cloudbase(delay: Duration) -> (Hop, SocketAddr) {
    let hop = Hop::default();
    let recorder = hop.clone();
    let (addr, _) = spawn_upstream(move |req: Request<Incoming>| {
        let recorder = recorder.clone();
        async move {
            recorder.record(&req);
            tokio::time::sleep(delay).await;
            let body = match req.uri().path() {
                "/auth/v1/token/introspect" => {
                    format!(r#"{{"sub":"{SUB}","client_id":"test-client","scope":"user"}}"#)
                }
                "/auth/v1/user/me" => format!(r#"{{"sub":"{SUB}","name":"Seven"}}"#),
                other => panic!("unexpected CloudBase call {other}"),
            };
            let mut response = Response::new(cloudbase_gateway::http::full(body));
            response.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
    })
    .await;
    (hop, addr)
}

/// An upstream that answers 200, recording each request.
async fn upstream() -> (Hop, SocketAddr) {
    let hop = Hop::default();
    let recorder = hop.clone();
    let (addr, _) = spawn_upstream(move |req: Request<Incoming>| {
        recorder.record(&req);
        async { Response::new(cloudbase_gateway::http::full(Bytes::from_static(b"ok"))) }
    })
    .await;
    (hop, addr)
}

/// A gateway with one route (`/api/` to [`upstream`]) in front of [`cloudbase`], and a
/// collector when `sample_ratio` is given (else `[telemetry]` is off).
struct Setup {
    h: Harness,
    collector: Collector,
    cloudbase: Hop,
    upstream: Hop,
}

impl Setup {
    async fn start(cloudbase_delay: Duration, sample_ratio: Option<&str>) -> Setup {
        Self::start_with(cloudbase_delay, sample_ratio, "").await
    }

    /// With `extra` TOML (a `[relay]` table) appended.
    async fn start_with(
        cloudbase_delay: Duration,
        sample_ratio: Option<&str>,
        extra: &str,
    ) -> Setup {
        let (collector, collector_addr) = Collector::start().await;
        let (cloudbase_hop, cloudbase_addr) = cloudbase(cloudbase_delay).await;
        let (upstream_hop, upstream_addr) = upstream().await;
        let telemetry = sample_ratio.map_or(String::new(), |ratio| {
            format!(
                "[telemetry]\notlp_endpoint = \"http://{collector_addr}\"\n\
                 service_name = \"test-gateway\"\nsample_ratio = {ratio}\n"
            )
        });
        let config = Cfg {
            cloudbase: &format!("base_url = \"http://{cloudbase_addr}/auth/v1\""),
            routes: &format!(
                "[[routes]]\nprefix = \"/api/\"\nupstream = \"http://{upstream_addr}\"\n{telemetry}{extra}"
            ),
            ..Cfg::default()
        };
        Setup {
            h: config.start().await,
            collector,
            cloudbase: cloudbase_hop,
            upstream: upstream_hop,
        }
    }
}

/// Shuts the gateway down (which flushes the exporter) and waits for the spans.
async fn spans_after_shutdown(h: Harness, collector: &Collector, at_least: usize) -> Vec<Span> {
    tokio::time::timeout(PATIENCE, h.shutdown())
        .await
        .expect("shutdown");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let spans = collector.spans();
        if spans.len() >= at_least || tokio::time::Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_request_continues_the_clients_trace_through_cloudbase_and_the_upstream() {
    let Setup {
        h,
        collector,
        cloudbase: cloudbase_hop,
        upstream: upstream_hop,
    } = Setup::start(Duration::ZERO, Some("1.0")).await;

    let r = h
        .http
        .get(format!("{}/api/things/42?token=secret-in-query", h.base))
        .bearer_auth(TOKEN)
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=opaque")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let spans = spans_after_shutdown(h, &collector, 5).await;
    let names = collector.service_names();
    assert!(
        !names.is_empty() && names.iter().all(|n| n == "test-gateway"),
        "{names:?}"
    );

    let server = one(&spans, "GET /api/");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(
        hex(&server.trace_id),
        TRACE_ID,
        "the client's trace continues"
    );
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN);
    assert_eq!(attribute(server, "http.route").as_deref(), Some("/api/"));
    assert_eq!(
        attribute(server, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        attribute(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attribute(server, "enduser.id").as_deref(), Some(SUB));
    assert_eq!(
        attribute(server, "cloudbase_gateway.request_id").as_deref(),
        Some(request_id.as_str()),
        "the request id stays as it is, recorded on the span"
    );

    let validate = one(&spans, "cloudbase validate");
    assert_eq!(validate.parent_span_id, server.span_id);
    for (name, path) in [
        ("cloudbase introspect", "/auth/v1/token/introspect"),
        ("cloudbase user_me", "/auth/v1/user/me"),
    ] {
        let call = one(&spans, name);
        assert_eq!(call.kind, SpanKind::Client as i32);
        assert_eq!(call.parent_span_id, validate.span_id, "{name}");
        assert_eq!(
            attribute(call, "cloudbase_gateway.outcome").as_deref(),
            Some("ok")
        );
        assert_eq!(
            cloudbase_hop.traceparent(path),
            Some(format!("00-{TRACE_ID}-{}-01", hex(&call.span_id))),
            "CloudBase is told its call's span as parent"
        );
    }

    let upstream_span = one(&spans, "upstream");
    assert_eq!(upstream_span.kind, SpanKind::Client as i32);
    assert_eq!(upstream_span.parent_span_id, server.span_id);
    assert_eq!(
        attribute(upstream_span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        upstream_hop.traceparent("/api/things/42"),
        Some(format!("00-{TRACE_ID}-{}-01", hex(&upstream_span.span_id))),
        "the upstream gets the trace id of the client and its call's span as parent"
    );
    assert_eq!(
        upstream_hop.tracestate("/api/things/42").as_deref(),
        Some("vendor=opaque")
    );

    for span in &spans {
        assert_eq!(hex(&span.trace_id), TRACE_ID, "{}: one trace", span.name);
        for kv in &span.attributes {
            let value = kv
                .value
                .as_ref()
                .and_then(|v| v.value.as_ref())
                .and_then(text)
                .unwrap_or_default();
            for secret in [TOKEN, "secret-in-query", "/things/42"] {
                assert!(
                    !value.contains(secret),
                    "{}: {} = {value} holds {secret}",
                    span.name,
                    kv.key
                );
            }
        }
    }
}

#[tokio::test]
async fn a_request_that_joins_another_ones_cloudbase_flight_links_to_its_span() {
    // CloudBase takes 400 ms (under the harness's 1 s timeout): both requests are in
    // flight together.
    let Setup {
        h,
        collector,
        cloudbase: cloudbase_hop,
        ..
    } = Setup::start(Duration::from_millis(400), Some("1")).await;
    let get = || {
        h.http
            .get(format!("{}/api/x", h.base))
            .bearer_auth(TOKEN)
            .send()
    };
    let (a, b) = tokio::join!(get(), get());
    assert_eq!(
        (a.unwrap().status().as_u16(), b.unwrap().status().as_u16()),
        (200, 200)
    );
    assert_eq!(
        cloudbase_hop.seen.lock().unwrap().len(),
        2,
        "one flight: one introspect and one /user/me"
    );
    let spans = spans_after_shutdown(h, &collector, 7).await;
    let servers = named(&spans, "GET /api/");
    assert_eq!(servers.len(), 2);
    assert_eq!(named(&spans, "upstream").len(), 2);
    let validate = one(&spans, "cloudbase validate");
    let (leader, joiner): (Vec<&&Span>, Vec<&&Span>) = servers
        .iter()
        .partition(|s| s.span_id == validate.parent_span_id);
    assert_eq!(
        (leader.len(), joiner.len()),
        (1, 1),
        "one started the flight"
    );
    let joiner = joiner[0];
    assert_eq!(joiner.links.len(), 1, "the other links to the flight");
    assert_eq!(joiner.links[0].span_id, validate.span_id);
    assert_eq!(joiner.links[0].trace_id, validate.trace_id);
    assert_ne!(joiner.trace_id, validate.trace_id, "two traces, one flight");
}

#[tokio::test]
async fn a_relayed_call_is_a_span_of_its_own_named_as_cloudbases_parent() {
    let Setup {
        h,
        collector,
        cloudbase: cloudbase_hop,
        ..
    } = Setup::start_with(Duration::ZERO, Some("1"), "[relay]\nenabled = true\n").await;
    let r = h
        .http
        .get(format!("{}/auth/v1/user/me", h.base))
        .bearer_auth(TOKEN)
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spans = spans_after_shutdown(h, &collector, 2).await;
    let server = one(&spans, "GET /auth/v1/");
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN);
    let relay = one(&spans, "cloudbase relay");
    assert_eq!(relay.parent_span_id, server.span_id);
    assert_eq!(
        cloudbase_hop.traceparent("/auth/v1/user/me"),
        Some(format!("00-{TRACE_ID}-{}-01", hex(&relay.span_id)))
    );
    assert!(
        named(&spans, "cloudbase validate").is_empty(),
        "the relay validates nothing"
    );
}

#[tokio::test]
async fn unsampled_requests_export_nothing_yet_still_propagate_a_context() {
    let Setup {
        h,
        collector,
        upstream: upstream_hop,
        ..
    } = Setup::start(Duration::ZERO, Some("0.0")).await;
    let r = h.get("/api/u", Some(TOKEN)).await;
    assert_eq!(r.status(), 200);
    tokio::time::timeout(PATIENCE, h.shutdown())
        .await
        .expect("shutdown");
    assert!(
        collector.spans().is_empty(),
        "sample_ratio = 0 exports nothing"
    );
    let parent = upstream_hop.traceparent("/api/u").expect("a traceparent");
    assert!(
        parent.starts_with("00-") && parent.ends_with("-00"),
        "a context marked not sampled, so the upstream does not sample either: {parent}"
    );
}

#[tokio::test]
async fn with_telemetry_off_the_gateway_adds_no_trace_context_and_passes_the_clients_on() {
    let Setup {
        h,
        cloudbase: cloudbase_hop,
        upstream: upstream_hop,
        ..
    } = Setup::start(Duration::ZERO, None).await;
    assert_eq!(h.get("/api/plain", Some(TOKEN)).await.status(), 200);
    let client = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let r = h
        .http
        .get(format!("{}/api/theirs", h.base))
        .bearer_auth(TOKEN)
        .header("traceparent", &client)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream_hop.traceparent("/api/plain"), None);
    assert_eq!(
        upstream_hop.traceparent("/api/theirs"),
        Some(client),
        "untouched, like any header"
    );
    assert_eq!(
        cloudbase_hop.traceparent("/auth/v1/token/introspect"),
        None,
        "CloudBase gets no trace context from a gateway that does not trace"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn sigterm_flushes_the_spans_of_finished_requests_before_the_binary_exits() {
    let (collector, collector_addr) = Collector::start().await;
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = format!(
        r#"
[server]
listen = "{addr}"
[admin]
listen = "127.0.0.1:{admin}"
[emulator]
enabled = true
listen = "127.0.0.1:0"
[[routes]]
prefix = "/"
upstream = "whoami"
auth = "none"
[telemetry]
otlp_endpoint = "http://{collector_addr}"
"#,
        admin = free_port()
    );
    // The batch exporter waits 5 s between exports by default: only the shutdown flush
    // can deliver the span before the process is gone.
    let mut process = Process::spawn(&config, &[], &[], addr);
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    process.terminate();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}\n{}", process.log());
    let spans = collector.spans();
    let server = one(&spans, "GET /");
    assert_eq!(
        attribute(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    let names = collector.service_names();
    assert!(
        !names.is_empty() && names.iter().all(|n| n == "cloudbase-gateway"),
        "the default service.name: {names:?}"
    );
}
