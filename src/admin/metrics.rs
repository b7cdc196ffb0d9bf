//! Prometheus metrics, hand-rolled on atomics.
//!
//! Every label value comes from a closed set (configured route prefixes, a fixed list of
//! methods, status codes, fixed outcome names), so no token, path or user datum can reach a
//! label and the series count stays bounded. The hot path costs an uncontended read lock
//! and a few atomic adds; a crate like `prometheus-client` would cost a label-set hash and
//! clone per request for the same output.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::RwLock;
use std::time::Duration;

use http::Method;

/// Histogram bucket upper bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            sample(out, &bucket, &format!("{labels},le=\"{le}\""), cumulative);
        }
        let count = self.count.load(Relaxed);
        sample(out, &bucket, &format!("{labels},le=\"+Inf\""), count);
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        sample(out, &format!("{name}_sum"), labels, sum);
        sample(out, &format!("{name}_count"), labels, count);
    }
}

/// `auth_decisions_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDecision {
    Allowed,
    Missing,
    Invalid,
    Forbidden,
    Unavailable,
}

impl AuthDecision {
    const ALL: [AuthDecision; 5] = [
        AuthDecision::Allowed,
        AuthDecision::Missing,
        AuthDecision::Invalid,
        AuthDecision::Forbidden,
        AuthDecision::Unavailable,
    ];
    fn as_str(self) -> &'static str {
        match self {
            AuthDecision::Allowed => "allowed",
            AuthDecision::Missing => "missing",
            AuthDecision::Invalid => "invalid",
            AuthDecision::Forbidden => "forbidden",
            AuthDecision::Unavailable => "unavailable",
        }
    }
}

/// `kind` of `requests_total` and `request_duration_seconds`: what the gateway did with
/// the request. Put in response extensions by whoever answers other than by proxying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum RequestKind {
    /// Routed and (unless refused) forwarded upstream.
    #[default]
    Proxy,
    /// A forward-auth decision for an ingress (`[forward_auth]`); never forwarded.
    ForwardAuth,
}

impl RequestKind {
    const ALL: [RequestKind; 2] = [RequestKind::Proxy, RequestKind::ForwardAuth];
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Proxy => "proxy",
            RequestKind::ForwardAuth => "forward_auth",
        }
    }
}

/// `cache_lookups_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLookup {
    Hit,
    Miss,
    NegativeHit,
    Stale,
}

impl CacheLookup {
    const ALL: [CacheLookup; 4] = [
        CacheLookup::Hit,
        CacheLookup::Miss,
        CacheLookup::NegativeHit,
        CacheLookup::Stale,
    ];
    fn as_str(self) -> &'static str {
        match self {
            CacheLookup::Hit => "hit",
            CacheLookup::Miss => "miss",
            CacheLookup::NegativeHit => "negative_hit",
            CacheLookup::Stale => "stale",
        }
    }
}

/// The CloudBase endpoints the gateway calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudbaseEndpoint {
    Introspect,
    UserMe,
}

impl CloudbaseEndpoint {
    const ALL: [CloudbaseEndpoint; 2] = [CloudbaseEndpoint::Introspect, CloudbaseEndpoint::UserMe];
    fn as_str(self) -> &'static str {
        match self {
            CloudbaseEndpoint::Introspect => "introspect",
            CloudbaseEndpoint::UserMe => "user_me",
        }
    }
}

/// `cloudbase_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudbaseOutcome {
    /// 2xx with a usable answer (an active token, a profile).
    Ok,
    /// CloudBase said the token is not valid (`{}` or 401).
    Rejected,
    /// 5xx, or an answer that is not the expected JSON.
    Error,
    Timeout,
    /// Connection refused or reset.
    Transport,
}

impl CloudbaseOutcome {
    const ALL: [CloudbaseOutcome; 5] = [
        CloudbaseOutcome::Ok,
        CloudbaseOutcome::Rejected,
        CloudbaseOutcome::Error,
        CloudbaseOutcome::Timeout,
        CloudbaseOutcome::Transport,
    ];
    fn as_str(self) -> &'static str {
        match self {
            CloudbaseOutcome::Ok => "ok",
            CloudbaseOutcome::Rejected => "rejected",
            CloudbaseOutcome::Error => "error",
            CloudbaseOutcome::Timeout => "timeout",
            CloudbaseOutcome::Transport => "transport",
        }
    }
}

/// Methods get their own label value; anything else is `OTHER`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// A `requests_total` series: route index, method label, status, kind.
type RequestKey = (usize, &'static str, u16, RequestKind);

/// Route label for requests that matched no route.
pub const NO_ROUTE: &str = "none";

/// All the gateway's metrics.
pub struct Metrics {
    /// Label per route index; the last one is [`NO_ROUTE`].
    routes: Vec<String>,
    requests: RwLock<HashMap<RequestKey, AtomicU64>>,
    /// Per route, per [`RequestKind`].
    durations: Vec<[Histogram; 2]>,
    /// Whether `kind="forward_auth"` histograms are rendered (all zero when it is off).
    forward_auth: bool,
    auth: [AtomicU64; 5],
    cache: [AtomicU64; 4],
    cloudbase: [[AtomicU64; 5]; 2],
    cloudbase_durations: [Histogram; 2],
    inflight: AtomicI64,
}

impl Metrics {
    /// `routes` are the configured prefixes, in route order.
    pub fn new(routes: impl IntoIterator<Item = String>) -> Metrics {
        let mut routes: Vec<String> = routes.into_iter().collect();
        routes.push(NO_ROUTE.to_owned());
        Metrics {
            durations: routes.iter().map(|_| Default::default()).collect(),
            routes,
            forward_auth: false,
            requests: RwLock::default(),
            auth: Default::default(),
            cache: Default::default(),
            cloudbase: Default::default(),
            cloudbase_durations: Default::default(),
            inflight: AtomicI64::new(0),
        }
    }

    /// Renders the `kind="forward_auth"` request histograms too.
    pub fn with_forward_auth(mut self) -> Metrics {
        self.forward_auth = true;
        self
    }

    /// Index used for requests that matched no route.
    pub fn no_route(&self) -> usize {
        self.routes.len() - 1
    }

    pub fn request(
        &self,
        route: Option<usize>,
        kind: RequestKind,
        method: &Method,
        status: u16,
        took: Duration,
    ) {
        let route = route.unwrap_or(self.no_route()).min(self.no_route());
        let key = (route, method_label(method), status, kind);
        let hit = {
            let map = self.requests.read().unwrap_or_else(|e| e.into_inner());
            map.get(&key).map(|c| c.fetch_add(1, Relaxed)).is_some()
        };
        if !hit {
            let mut map = self.requests.write().unwrap_or_else(|e| e.into_inner());
            map.entry(key).or_default().fetch_add(1, Relaxed);
        }
        self.durations[route][kind as usize].observe(took);
    }

    pub fn auth_decision(&self, d: AuthDecision) {
        self.auth[d as usize].fetch_add(1, Relaxed);
    }

    pub fn cache_lookup(&self, l: CacheLookup) {
        self.cache[l as usize].fetch_add(1, Relaxed);
    }

    pub fn cloudbase_call(&self, e: CloudbaseEndpoint, o: CloudbaseOutcome, took: Duration) {
        self.cloudbase[e as usize][o as usize].fetch_add(1, Relaxed);
        self.cloudbase_durations[e as usize].observe(took);
    }

    pub fn inflight_add(&self, delta: i64) {
        self.inflight.fetch_add(delta, Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, cache_entries: u64) -> String {
        let mut out = String::with_capacity(8192);
        let o = &mut out;

        family(
            o,
            "requests_total",
            "counter",
            "Requests answered, by route prefix, method, status and kind (proxy, forward_auth).",
        );
        {
            let map = self.requests.read().unwrap_or_else(|e| e.into_inner());
            let mut rows: Vec<_> = map.iter().map(|(k, v)| (*k, v.load(Relaxed))).collect();
            rows.sort();
            for ((route, method, status, kind), n) in rows {
                let route = escape(&self.routes[route]);
                let kind = kind.as_str();
                let labels = format!(
                    "route=\"{route}\",method=\"{method}\",status=\"{status}\",kind=\"{kind}\""
                );
                sample(o, "requests_total", &labels, n);
            }
        }
        family(
            o,
            "request_duration_seconds",
            "histogram",
            "Time from request head to response head, by route prefix and kind.",
        );
        for (route, by_kind) in self.routes.iter().zip(&self.durations) {
            for kind in RequestKind::ALL {
                if kind == RequestKind::ForwardAuth && !self.forward_auth {
                    continue;
                }
                let labels = format!("route=\"{}\",kind=\"{}\"", escape(route), kind.as_str());
                by_kind[kind as usize].render(o, "request_duration_seconds", &labels);
            }
        }
        family(
            o,
            "auth_decisions_total",
            "counter",
            "Authentication decisions.",
        );
        for d in AuthDecision::ALL {
            let labels = format!("result=\"{}\"", d.as_str());
            sample(
                o,
                "auth_decisions_total",
                &labels,
                self.auth[d as usize].load(Relaxed),
            );
        }
        family(
            o,
            "cache_lookups_total",
            "counter",
            "Validation cache lookups.",
        );
        for l in CacheLookup::ALL {
            let labels = format!("result=\"{}\"", l.as_str());
            sample(
                o,
                "cache_lookups_total",
                &labels,
                self.cache[l as usize].load(Relaxed),
            );
        }
        family(
            o,
            "cache_entries",
            "gauge",
            "Entries in the validation cache.",
        );
        sample(o, "cache_entries", "", cache_entries);
        family(
            o,
            "cloudbase_requests_total",
            "counter",
            "Calls to CloudBase, by endpoint and outcome.",
        );
        for e in CloudbaseEndpoint::ALL {
            for oc in CloudbaseOutcome::ALL {
                let labels = format!("endpoint=\"{}\",outcome=\"{}\"", e.as_str(), oc.as_str());
                let n = self.cloudbase[e as usize][oc as usize].load(Relaxed);
                sample(o, "cloudbase_requests_total", &labels, n);
            }
        }
        family(
            o,
            "cloudbase_request_duration_seconds",
            "histogram",
            "Duration of calls to CloudBase.",
        );
        for e in CloudbaseEndpoint::ALL {
            let labels = format!("endpoint=\"{}\"", e.as_str());
            self.cloudbase_durations[e as usize].render(
                o,
                "cloudbase_request_duration_seconds",
                &labels,
            );
        }
        family(
            o,
            "inflight_requests",
            "gauge",
            "Requests being handled now.",
        );
        sample(o, "inflight_requests", "", self.inflight.load(Relaxed));
        out
    }
}

const PREFIX: &str = "cloudbase_gateway";

/// `# HELP` and `# TYPE` of one metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}_{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}_{name} {kind}");
}

/// One sample line; `labels` already formatted (`a="1",b="2"`), or empty.
fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{PREFIX}_{name} {value}");
    } else {
        let _ = writeln!(out, "{PREFIX}_{name}{{{labels}}} {value}");
    }
}

/// Escapes a label value (configured prefixes may hold `"` or `\`).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_route_method_status() {
        let m = Metrics::new(["/api/".to_owned()]);
        let proxy = RequestKind::Proxy;
        m.request(Some(0), proxy, &Method::GET, 200, Duration::from_millis(3));
        m.request(Some(0), proxy, &Method::GET, 200, Duration::from_millis(3));
        let brew = Method::from_bytes(b"BREW").unwrap();
        m.request(None, proxy, &brew, 404, Duration::ZERO);
        m.cache_lookup(CacheLookup::Stale);
        let text = m.render(7);
        assert!(text.contains(
            "cloudbase_gateway_requests_total{route=\"/api/\",method=\"GET\",status=\"200\",kind=\"proxy\"} 2"
        ));
        assert!(text.contains(
            "cloudbase_gateway_requests_total{route=\"none\",method=\"OTHER\",status=\"404\",kind=\"proxy\"} 1"
        ));
        assert!(text.contains("cloudbase_gateway_cache_lookups_total{result=\"stale\"} 1"));
        assert!(text.contains("cloudbase_gateway_cache_entries 7"));
        assert!(text.contains(
            "cloudbase_gateway_request_duration_seconds_bucket{route=\"/api/\",kind=\"proxy\",le=\"0.005\"} 2"
        ));
        assert!(
            !text.contains("kind=\"forward_auth\""),
            "no forward-auth series while it is off"
        );
    }

    #[test]
    fn forward_auth_decisions_are_counted_apart_from_proxied_requests() {
        let m = Metrics::new(["/api/".to_owned()]).with_forward_auth();
        m.request(
            Some(0),
            RequestKind::Proxy,
            &Method::GET,
            200,
            Duration::ZERO,
        );
        let fa = RequestKind::ForwardAuth;
        m.request(Some(0), fa, &Method::GET, 401, Duration::from_millis(3));
        let text = m.render(0);
        assert!(text.contains(
            "cloudbase_gateway_requests_total{route=\"/api/\",method=\"GET\",status=\"200\",kind=\"proxy\"} 1"
        ));
        assert!(text.contains(
            "cloudbase_gateway_requests_total{route=\"/api/\",method=\"GET\",status=\"401\",kind=\"forward_auth\"} 1"
        ));
        assert!(text.contains(
            "cloudbase_gateway_request_duration_seconds_count{route=\"/api/\",kind=\"forward_auth\"} 1"
        ));
        assert!(text.contains(
            "cloudbase_gateway_request_duration_seconds_count{route=\"/api/\",kind=\"proxy\"} 1"
        ));
    }
}
