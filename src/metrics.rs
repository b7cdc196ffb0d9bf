//! Prometheus metrics, hand-rolled on atomics.
//!
//! Every label value comes from a closed set (configured route prefixes, a fixed list of
//! methods, status codes, fixed outcome names), so no token, path or user datum can reach a
//! label and the series count stays bounded. The hot path costs an uncontended read lock
//! and a few atomic adds. Why not `prometheus-client`: its `Family` would cost the same
//! read lock and label-set hash (it clones a label set only on first insert), but its
//! `Histogram` keeps count, sum and buckets behind one `Mutex`, so every request's
//! duration would take a lock that all worker threads contend for; here a histogram is
//! atomics. The fixed-label counters (decisions, lookups, CloudBase outcomes) are plain
//! arrays indexed by enum, with no hashing at all. The price: the exposition format is
//! written by hand (`render`, pinned by a test).
//!
//! Route labels can change while the gateway runs (a configuration reload): each route
//! prefix gets a *label slot* the first time a route table names it ([`Metrics::label`]),
//! and keeps it for the life of the process, so a reload that keeps a prefix keeps its
//! series counting on, and one that adds a prefix adds series. Slots are allocated lazily
//! in a table of [`MAX_ROUTE_LABELS`] set once, so the request path reads a slot with one
//! uncontended load (`OnceLock::get`) and never a lock; a prefix that was configured once
//! keeps rendering its last values after a reload removes it (Prometheus series do not go
//! back). The bound keeps the series count bounded whatever an operator reloads: past it,
//! a new prefix is counted under `none` (with a warning).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Duration;

use http::Method;

use crate::identity_headers::IdentityField;

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
/// the request. The answer's `RequestContext` carries it (`routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum RequestKind {
    /// Routed and (unless refused) forwarded upstream.
    #[default]
    Proxy,
    /// A forward-auth decision for an ingress (`[forward_auth]`); never forwarded.
    ForwardAuth,
    /// Relayed to CloudBase (`[relay]`), under the relay's prefix as its route.
    Relay,
}

impl RequestKind {
    const ALL: [RequestKind; 3] = [
        RequestKind::Proxy,
        RequestKind::ForwardAuth,
        RequestKind::Relay,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Proxy => "proxy",
            RequestKind::ForwardAuth => "forward_auth",
            RequestKind::Relay => "relay",
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

/// Declares a closed label set: the enum, `ALL` in declaration order, and `as_str`.
macro_rules! label_set {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl LabelSet for $name {
            const ALL: &'static [$name] = &[$($name::$variant),+];
            fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

/// A closed set of label values, rendered in `ALL` order; `index` picks its counter.
trait LabelSet: Copy + 'static {
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    fn index(self) -> usize;
}

/// One counter family with one label over a closed set.
fn counters<L: LabelSet>(
    o: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: &[AtomicU64],
) {
    family(o, name, "counter", help);
    for &l in L::ALL {
        let labels = format!("{label}=\"{}\"", l.as_str());
        sample(o, name, &labels, values[l.index()].load(Relaxed));
    }
}

label_set! {
    /// `redis_lookups_total{result}`: what a read of the shared tier gave.
    RedisLookup {
        Hit => "hit",
        NegativeHit => "negative_hit",
        Miss => "miss",
        /// A value with an unknown version, a bad HMAC or an unreadable body: treated as a miss.
        Invalid => "invalid",
        /// Redis failed or did not answer within `timeout`.
        Error => "error",
        /// Not asked: the circuit breaker is open.
        Skipped => "skipped",
    }
}

label_set! {
    /// `redis_writes_total{result}`: what a write of CloudBase's answer to the shared tier did.
    RedisWrite {
        Stored => "stored",
        /// Dropped: a purge happened after the lookup that preceded the CloudBase call.
        Superseded => "superseded",
        Error => "error",
        Skipped => "skipped",
    }
}

label_set! {
    /// `redis_purges_total{result}`: purges sent to the shared tier (and published).
    RedisPurge {
        /// Published, and confirmed by every replica that received it.
        Ok => "ok",
        /// Published, but not every replica confirmed within a second.
        Unconfirmed => "unconfirmed",
        Error => "error",
    }
}

label_set! {
    /// `redis_invalidations_total{kind}`: purge messages received from any replica.
    RedisInvalidation {
        Token => "token",
        Sub => "sub",
        /// A purge of everything, or a (re)subscription after which everything is dropped.
        All => "all",
    }
}

label_set! {
    /// `config_reloads_total{result}`: what a reload (SIGHUP or a change of the file) did.
    ConfigReload {
        /// The file was valid; its settings are in force (those that need a restart aside).
        Ok => "ok",
        /// The file was unreadable or invalid; the configuration in force stayed.
        Error => "error",
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
    pub fn as_str(self) -> &'static str {
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
    /// Not made: `cloudbase.max_in_flight` calls were already open.
    Shed,
    /// Not made: CloudBase failed `cloudbase.breaker_failures` validations in a row and
    /// the breaker's cool-down is not over.
    BreakerOpen,
}

impl CloudbaseOutcome {
    const ALL: [CloudbaseOutcome; 7] = [
        CloudbaseOutcome::Ok,
        CloudbaseOutcome::Rejected,
        CloudbaseOutcome::Error,
        CloudbaseOutcome::Timeout,
        CloudbaseOutcome::Transport,
        CloudbaseOutcome::Shed,
        CloudbaseOutcome::BreakerOpen,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            CloudbaseOutcome::Ok => "ok",
            CloudbaseOutcome::Rejected => "rejected",
            CloudbaseOutcome::Error => "error",
            CloudbaseOutcome::Timeout => "timeout",
            CloudbaseOutcome::Transport => "transport",
            CloudbaseOutcome::Shed => "shed",
            CloudbaseOutcome::BreakerOpen => "breaker_open",
        }
    }
}

/// The CloudBase calls the relay tells apart: `relay_requests_total{endpoint}`. Every
/// other path under the relay's prefix is `Other`, so a client cannot mint label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEndpoint {
    Signin,
    SigninAnonymously,
    Signup,
    Verification,
    Verify,
    Token,
    Introspect,
    Revoke,
    Signout,
    RevokeAll,
    RevokeDevice,
    UserMe,
    DeleteUser,
    Sudo,
    Password,
    /// A CORS preflight the relay answered itself.
    Preflight,
    Other,
}

impl RelayEndpoint {
    pub const ALL: [RelayEndpoint; 17] = [
        RelayEndpoint::Signin,
        RelayEndpoint::SigninAnonymously,
        RelayEndpoint::Signup,
        RelayEndpoint::Verification,
        RelayEndpoint::Verify,
        RelayEndpoint::Token,
        RelayEndpoint::Introspect,
        RelayEndpoint::Revoke,
        RelayEndpoint::Signout,
        RelayEndpoint::RevokeAll,
        RelayEndpoint::RevokeDevice,
        RelayEndpoint::UserMe,
        RelayEndpoint::DeleteUser,
        RelayEndpoint::Sudo,
        RelayEndpoint::Password,
        RelayEndpoint::Preflight,
        RelayEndpoint::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RelayEndpoint::Signin => "signin",
            RelayEndpoint::SigninAnonymously => "signin_anonymously",
            RelayEndpoint::Signup => "signup",
            RelayEndpoint::Verification => "verification",
            RelayEndpoint::Verify => "verify",
            RelayEndpoint::Token => "token",
            RelayEndpoint::Introspect => "introspect",
            RelayEndpoint::Revoke => "revoke",
            RelayEndpoint::Signout => "signout",
            RelayEndpoint::RevokeAll => "revoke_all",
            RelayEndpoint::RevokeDevice => "revoke_device",
            RelayEndpoint::UserMe => "user_me",
            RelayEndpoint::DeleteUser => "delete_user",
            RelayEndpoint::Sudo => "sudo",
            RelayEndpoint::Password => "password",
            RelayEndpoint::Preflight => "preflight",
            RelayEndpoint::Other => "other",
        }
    }
}

/// How a relay purge found what to drop: `relay_purges_total{by}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayPurge {
    /// The one token the call revoked.
    Token,
    /// Every cached token of the caller's `sub`.
    Sub,
    /// The call ended the caller's sessions but no `sub` could be found for its token:
    /// only that token was dropped.
    Unresolved,
}

impl RelayPurge {
    const ALL: [RelayPurge; 3] = [RelayPurge::Token, RelayPurge::Sub, RelayPurge::Unresolved];
    fn as_str(self) -> &'static str {
        match self {
            RelayPurge::Token => "token",
            RelayPurge::Sub => "sub",
            RelayPurge::Unresolved => "unresolved",
        }
    }
}

/// The relay's per-client-address limits: `relay_rate_limited_total{limit}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayLimitName {
    Signin,
    Signup,
    Verification,
}

impl RelayLimitName {
    pub const ALL: [RelayLimitName; 3] = [
        RelayLimitName::Signin,
        RelayLimitName::Signup,
        RelayLimitName::Verification,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RelayLimitName::Signin => "signin",
            RelayLimitName::Signup => "signup",
            RelayLimitName::Verification => "verification",
        }
    }
}

/// `1xx` … `5xx`; anything outside 100–599 (hyper never lets one through) counts as `5xx`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class(status: u16) -> usize {
    usize::from(status / 100).saturating_sub(1).min(4)
}

/// The name of a method RFC 9110 defines; `None` for any other, whose name a client
/// chose and which must not become a label or attribute value.
pub fn known_method(m: &Method) -> Option<&'static str> {
    Some(match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return None,
    })
}

/// Methods get their own label value; anything else is `OTHER`.
fn method_label(m: &Method) -> &'static str {
    known_method(m).unwrap_or("OTHER")
}

/// A `requests_total` series: route label slot, method label, status, kind.
type RequestKey = (usize, &'static str, u16, RequestKind);

/// Route label for requests that matched no route.
pub const NO_ROUTE: &str = "none";

/// The label slot of [`NO_ROUTE`]: past every other, so `none` renders last.
pub const NO_ROUTE_SLOT: usize = usize::MAX;

/// Distinct route labels (prefixes) at most over the process's life, reloads included.
pub const MAX_ROUTE_LABELS: usize = 256;

/// The series of one route label.
#[derive(Default)]
struct RouteSeries {
    label: String,
    /// Per [`RequestKind`].
    durations: [Histogram; RequestKind::ALL.len()],
    /// Per [`RequestKind`]: whether that histogram is rendered. Only the kinds a route can
    /// be answered under are, so a relay or forward-auth that is off (and the relay's label
    /// under `proxy`) adds no series that stay zero forever.
    rendered: [AtomicBool; RequestKind::ALL.len()],
    rate_limited: AtomicU64,
    rate_limit_overflows: AtomicU64,
}

impl RouteSeries {
    fn new(label: String) -> RouteSeries {
        RouteSeries {
            label,
            ..RouteSeries::default()
        }
    }
}

/// All the gateway's metrics.
pub struct Metrics {
    /// Route label slots, filled in order ([`Metrics::label`]); a route's `label` indexes it.
    routes: Box<[OnceLock<Box<RouteSeries>>]>,
    /// Taken to add a label (at start and on reload), never on the request path.
    adding: Mutex<()>,
    /// [`NO_ROUTE`]'s series ([`NO_ROUTE_SLOT`]).
    none: RouteSeries,
    requests: RwLock<HashMap<RequestKey, AtomicU64>>,
    auth: [AtomicU64; 5],
    cache: [AtomicU64; 4],
    cloudbase: [[AtomicU64; CloudbaseOutcome::ALL.len()]; 2],
    cloudbase_durations: [Histogram; 2],
    sub_mismatches: AtomicU64,
    inflight: AtomicI64,
    /// By [`IdentityField`] (declaration order, that of `IdentityField::ALL`).
    omitted_headers: [AtomicU64; IdentityField::ALL.len()],
    redis_lookups: [AtomicU64; 6],
    redis_writes: [AtomicU64; 4],
    redis_purges: [AtomicU64; 3],
    redis_invalidations: [AtomicU64; 3],
    redis_breaker_open: AtomicI64,
    redis_subscribed: AtomicI64,
    relay_requests: [[AtomicU64; 5]; 17],
    relay_purges: [AtomicU64; 3],
    relay_rate_limited: [AtomicU64; 3],
    config_reloads: [AtomicU64; 2],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = self.series().map(|s| s.label.as_str()).collect();
        f.debug_struct("Metrics")
            .field("routes", &labels)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// `routes` are the configured prefixes, in route order: their label slots are
    /// `0..routes.len()`, each rendered under `kind="proxy"`.
    pub fn new(routes: impl IntoIterator<Item = String>) -> Metrics {
        let metrics = Metrics {
            routes: (0..MAX_ROUTE_LABELS).map(|_| OnceLock::new()).collect(),
            adding: Mutex::new(()),
            none: RouteSeries::new(NO_ROUTE.to_owned()),
            requests: RwLock::default(),
            auth: Default::default(),
            cache: Default::default(),
            cloudbase: Default::default(),
            cloudbase_durations: Default::default(),
            sub_mismatches: AtomicU64::new(0),
            inflight: AtomicI64::new(0),
            omitted_headers: Default::default(),
            redis_lookups: Default::default(),
            redis_writes: Default::default(),
            redis_purges: Default::default(),
            redis_invalidations: Default::default(),
            redis_breaker_open: AtomicI64::new(0),
            redis_subscribed: AtomicI64::new(0),
            relay_requests: Default::default(),
            relay_purges: Default::default(),
            relay_rate_limited: Default::default(),
            config_reloads: Default::default(),
        };
        metrics.none.rendered[RequestKind::Proxy as usize].store(true, Relaxed);
        for route in routes {
            metrics.label(&route, RequestKind::Proxy);
        }
        metrics
    }

    /// Renders the `kind="forward_auth"` request histograms of every route labelled so far
    /// (and of [`NO_ROUTE`]) too: forward-auth decides on the configured routes.
    pub fn with_forward_auth(self) -> Metrics {
        for series in self.series().chain([&self.none]) {
            series.rendered[RequestKind::ForwardAuth as usize].store(true, Relaxed);
        }
        self
    }

    /// The label slot of route prefix `label`, answered under `kind` (whose histogram is
    /// rendered from now on): the slot it already has, or the next free one. [`NO_ROUTE`]
    /// is [`NO_ROUTE_SLOT`]; so is any new label once [`MAX_ROUTE_LABELS`] are taken.
    pub fn label(&self, label: &str, kind: RequestKind) -> usize {
        let (slot, series) = if label == NO_ROUTE {
            (NO_ROUTE_SLOT, &self.none)
        } else {
            let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
            match self.series().position(|s| s.label == label) {
                Some(slot) => (slot, self.slot(slot).expect("a filled slot")),
                None => match self.routes.iter().position(|s| s.get().is_none()) {
                    Some(slot) => {
                        let series = self.routes[slot]
                            .get_or_init(|| Box::new(RouteSeries::new(label.to_owned())));
                        (slot, &**series)
                    }
                    None => {
                        tracing::warn!(
                            route = label,
                            "more than {MAX_ROUTE_LABELS} route prefixes since start: counted as {NO_ROUTE}"
                        );
                        (NO_ROUTE_SLOT, &self.none)
                    }
                },
            }
        };
        series.rendered[kind as usize].store(true, Relaxed);
        slot
    }

    /// Label slot used for requests that matched no route.
    pub fn no_route(&self) -> usize {
        NO_ROUTE_SLOT
    }

    /// The series of label slot `slot`, if it is filled.
    fn slot(&self, slot: usize) -> Option<&RouteSeries> {
        self.routes.get(slot)?.get().map(|s| &**s)
    }

    /// Every labelled route's series, in slot order ([`NO_ROUTE`]'s aside).
    fn series(&self) -> impl Iterator<Item = &RouteSeries> {
        self.routes.iter().map_while(|s| s.get().map(|s| &**s))
    }

    /// The slot and series a request of route `route` counts under: [`NO_ROUTE`]'s when it
    /// has none (or one no slot holds).
    fn route_series(&self, route: Option<usize>) -> (usize, &RouteSeries) {
        route
            .and_then(|slot| Some((slot, self.slot(slot)?)))
            .unwrap_or((NO_ROUTE_SLOT, &self.none))
    }

    pub fn request(
        &self,
        route: Option<usize>,
        kind: RequestKind,
        method: &Method,
        status: u16,
        took: Duration,
    ) {
        let (route, series) = self.route_series(route);
        let key = (route, method_label(method), status, kind);
        let hit = {
            let map = self.requests.read().unwrap_or_else(|e| e.into_inner());
            map.get(&key).map(|c| c.fetch_add(1, Relaxed)).is_some()
        };
        if !hit {
            let mut map = self.requests.write().unwrap_or_else(|e| e.into_inner());
            map.entry(key).or_default().fetch_add(1, Relaxed);
        }
        series.durations[kind as usize].observe(took);
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

    /// `/token/introspect` and `/user/me` named different users for one token.
    pub fn cloudbase_sub_mismatch(&self) {
        self.sub_mismatches.fetch_add(1, Relaxed);
    }

    /// A validation that would have called CloudBase but was refused a slot: counted as
    /// a `shed` call of each endpoint it would have made.
    pub fn cloudbase_shed(&self) {
        self.cloudbase_not_asked(CloudbaseOutcome::Shed);
    }

    /// A validation that would have called CloudBase while the breaker was open: counted
    /// as a `breaker_open` call of each endpoint it would have made.
    pub fn cloudbase_breaker_open(&self) {
        self.cloudbase_not_asked(CloudbaseOutcome::BreakerOpen);
    }

    fn cloudbase_not_asked(&self, why: CloudbaseOutcome) {
        for e in CloudbaseEndpoint::ALL {
            self.cloudbase[e as usize][why as usize].fetch_add(1, Relaxed);
        }
    }

    /// An identity header value left out for being over `identity.max_header_bytes`.
    pub fn identity_header_omitted(&self, field: IdentityField) {
        self.omitted_headers[field as usize].fetch_add(1, Relaxed);
    }

    pub fn inflight_add(&self, delta: i64) {
        self.inflight.fetch_add(delta, Relaxed);
    }

    pub fn redis_lookup(&self, r: RedisLookup) {
        self.redis_lookups[r as usize].fetch_add(1, Relaxed);
    }

    pub fn redis_write(&self, r: RedisWrite) {
        self.redis_writes[r as usize].fetch_add(1, Relaxed);
    }

    pub fn redis_purge(&self, r: RedisPurge) {
        self.redis_purges[r as usize].fetch_add(1, Relaxed);
    }

    pub fn redis_invalidation(&self, k: RedisInvalidation) {
        self.redis_invalidations[k as usize].fetch_add(1, Relaxed);
    }

    pub fn set_redis_breaker_open(&self, open: bool) {
        self.redis_breaker_open.store(i64::from(open), Relaxed);
    }

    pub fn set_redis_subscribed(&self, subscribed: bool) {
        self.redis_subscribed.store(i64::from(subscribed), Relaxed);
    }

    /// A relayed request answered with `status` (CloudBase's or the relay's own).
    pub fn relay_request(&self, endpoint: RelayEndpoint, status: u16) {
        self.relay_requests[endpoint as usize][status_class(status)].fetch_add(1, Relaxed);
    }

    /// A purge made because a relayed call ended a session or an identity.
    pub fn relay_purge(&self, by: RelayPurge) {
        self.relay_purges[by as usize].fetch_add(1, Relaxed);
    }

    /// A relayed request refused by a per-client-address limit.
    pub fn relay_rate_limited(&self, limit: RelayLimitName) {
        self.relay_rate_limited[limit as usize].fetch_add(1, Relaxed);
    }

    /// A request refused by its route's `rate_limit` (`route`: its label slot).
    pub fn rate_limited(&self, route: usize) {
        if let Some(s) = self.slot(route) {
            s.rate_limited.fetch_add(1, Relaxed);
        }
    }

    /// A request of a key the full rate-limit table could not track, checked against the
    /// route's shared overflow bucket.
    pub fn rate_limit_overflow(&self, route: usize) {
        if let Some(s) = self.slot(route) {
            s.rate_limit_overflows.fetch_add(1, Relaxed);
        }
    }

    /// A configuration reload, done or refused.
    pub fn config_reload(&self, result: ConfigReload) {
        self.config_reloads[result.index()].fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, cache_entries: u64) -> String {
        let mut out = String::with_capacity(8192);
        let o = &mut out;

        family(
            o,
            "requests_total",
            "counter",
            "Requests answered, by route prefix, method, status and kind (proxy, forward_auth, relay).",
        );
        {
            let map = self.requests.read().unwrap_or_else(|e| e.into_inner());
            let mut rows: Vec<_> = map.iter().map(|(k, v)| (*k, v.load(Relaxed))).collect();
            rows.sort();
            for ((route, method, status, kind), n) in rows {
                let route = escape(&self.route_series(Some(route)).1.label);
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
        for series in self.series().chain([&self.none]) {
            for kind in RequestKind::ALL {
                if !series.rendered[kind as usize].load(Relaxed) {
                    continue;
                }
                let route = escape(&series.label);
                let labels = format!("route=\"{route}\",kind=\"{}\"", kind.as_str());
                series.durations[kind as usize].render(o, "request_duration_seconds", &labels);
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
            "cloudbase_sub_mismatches_total",
            "counter",
            "Validations refused because /token/introspect and /user/me named different users.",
        );
        sample(
            o,
            "cloudbase_sub_mismatches_total",
            "",
            self.sub_mismatches.load(Relaxed),
        );
        family(
            o,
            "relay_requests_total",
            "counter",
            "Requests through the CloudBase relay, by endpoint and status class (series appear once seen).",
        );
        for e in RelayEndpoint::ALL {
            for (class, label) in STATUS_CLASSES.iter().enumerate() {
                let n = self.relay_requests[e as usize][class].load(Relaxed);
                if n > 0 {
                    let labels = format!("endpoint=\"{}\",status=\"{label}\"", e.as_str());
                    sample(o, "relay_requests_total", &labels, n);
                }
            }
        }
        family(
            o,
            "relay_purges_total",
            "counter",
            "Cache purges made because a call through the relay ended a session or identity.",
        );
        for by in RelayPurge::ALL {
            let labels = format!("by=\"{}\"", by.as_str());
            let n = self.relay_purges[by as usize].load(Relaxed);
            sample(o, "relay_purges_total", &labels, n);
        }
        family(
            o,
            "relay_rate_limited_total",
            "counter",
            "Relayed requests refused by a per-client-address limit.",
        );
        for limit in RelayLimitName::ALL {
            let labels = format!("limit=\"{}\"", limit.as_str());
            let n = self.relay_rate_limited[limit as usize].load(Relaxed);
            sample(o, "relay_rate_limited_total", &labels, n);
        }
        self.render_rate_limits(o);
        family(
            o,
            "inflight_requests",
            "gauge",
            "Requests being handled now.",
        );
        sample(o, "inflight_requests", "", self.inflight.load(Relaxed));
        family(
            o,
            "identity_headers_omitted_total",
            "counter",
            "Identity header values left out for being over identity.max_header_bytes, by profile field (once per cache entry).",
        );
        for &field in IdentityField::ALL {
            let labels = format!("field=\"{field}\"");
            let n = self.omitted_headers[field as usize].load(Relaxed);
            sample(o, "identity_headers_omitted_total", &labels, n);
        }
        self.render_redis(o);
        counters::<ConfigReload>(
            o,
            "config_reloads_total",
            "Configuration reloads (SIGHUP or a change of the file), by result.",
            "result",
            &self.config_reloads,
        );
        out
    }

    /// `routes[].rate_limit`'s series, one per route (zero where a route has no limit).
    fn render_rate_limits(&self, o: &mut String) {
        family(
            o,
            "rate_limited_total",
            "counter",
            "Requests refused with 429 by their route's rate_limit, by route prefix.",
        );
        for series in self.series() {
            let labels = format!("route=\"{}\"", escape(&series.label));
            sample(
                o,
                "rate_limited_total",
                &labels,
                series.rate_limited.load(Relaxed),
            );
        }
        family(
            o,
            "rate_limit_overflow_total",
            "counter",
            "Requests checked against a route's shared overflow bucket because its rate-limit table held rate_limit_max_keys keys.",
        );
        for series in self.series() {
            let labels = format!("route=\"{}\"", escape(&series.label));
            let n = series.rate_limit_overflows.load(Relaxed);
            sample(o, "rate_limit_overflow_total", &labels, n);
        }
    }

    /// The shared tier's series; all zero while `[cache.redis]` is off.
    fn render_redis(&self, o: &mut String) {
        counters::<RedisLookup>(
            o,
            "redis_lookups_total",
            "Reads of the shared (Redis) tier after a local miss.",
            "result",
            &self.redis_lookups,
        );
        counters::<RedisWrite>(
            o,
            "redis_writes_total",
            "Writes of CloudBase's answers to the shared (Redis) tier.",
            "result",
            &self.redis_writes,
        );
        counters::<RedisPurge>(
            o,
            "redis_purges_total",
            "Purges sent to the shared (Redis) tier and published to the other replicas.",
            "result",
            &self.redis_purges,
        );
        counters::<RedisInvalidation>(
            o,
            "redis_invalidations_total",
            "Purge messages received from the replicas (this one included).",
            "kind",
            &self.redis_invalidations,
        );
        family(
            o,
            "redis_breaker_open",
            "gauge",
            "1 while the shared tier is skipped after repeated Redis failures.",
        );
        sample(
            o,
            "redis_breaker_open",
            "",
            self.redis_breaker_open.load(Relaxed),
        );
        family(
            o,
            "redis_subscribed",
            "gauge",
            "1 while this replica receives the other replicas' purges.",
        );
        sample(
            o,
            "redis_subscribed",
            "",
            self.redis_subscribed.load(Relaxed),
        );
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

    #[test]
    fn builtin_routes_are_labelled_before_none_and_render_only_their_own_kind() {
        let m = Metrics::new(["/api/".to_owned()]).with_forward_auth();
        let default = m.label("/", RequestKind::ForwardAuth);
        let relay = m.label("/auth/v1/", RequestKind::Relay);
        assert_eq!((default, relay, m.no_route()), (1, 2, NO_ROUTE_SLOT));
        m.request(
            Some(relay),
            RequestKind::Relay,
            &Method::POST,
            200,
            Duration::ZERO,
        );
        let fa = RequestKind::ForwardAuth;
        m.request(Some(default), fa, &Method::GET, 401, Duration::ZERO);
        m.request(None, RequestKind::Proxy, &Method::GET, 404, Duration::ZERO);
        let text = m.render(0);
        for series in [
            "requests_total{route=\"/auth/v1/\",method=\"POST\",status=\"200\",kind=\"relay\"} 1",
            "requests_total{route=\"/\",method=\"GET\",status=\"401\",kind=\"forward_auth\"} 1",
            "requests_total{route=\"none\",method=\"GET\",status=\"404\",kind=\"proxy\"} 1",
            "request_duration_seconds_count{route=\"/auth/v1/\",kind=\"relay\"} 1",
            "request_duration_seconds_count{route=\"/\",kind=\"forward_auth\"} 1",
            "request_duration_seconds_count{route=\"/api/\",kind=\"forward_auth\"} 0",
            "request_duration_seconds_count{route=\"none\",kind=\"forward_auth\"} 0",
        ] {
            assert!(
                text.contains(&format!("cloudbase_gateway_{series}")),
                "{series}\n{text}"
            );
        }
        for absent in [
            "route=\"/auth/v1/\",kind=\"proxy\"",
            "route=\"/auth/v1/\",kind=\"forward_auth\"",
            "route=\"/\",kind=\"proxy\"",
            "route=\"/api/\",kind=\"relay\"",
            "route=\"none\",kind=\"relay\"",
        ] {
            assert!(
                !text.contains(absent),
                "{absent} can never be observed\n{text}"
            );
        }
    }

    #[test]
    fn a_reloaded_route_table_keeps_the_series_of_its_prefixes_and_adds_new_ones() {
        let m = Metrics::new(["/api/".to_owned(), "/old/".to_owned()]);
        let get = Method::GET;
        m.request(Some(0), RequestKind::Proxy, &get, 200, Duration::ZERO);
        m.rate_limited(0);
        // The new table: `/new/` first, then `/api/` (now at position 1), `/old/` gone.
        let new = m.label("/new/", RequestKind::Proxy);
        let api = m.label("/api/", RequestKind::Proxy);
        assert_eq!((api, new), (0, 2), "a kept prefix keeps its slot");
        m.request(Some(api), RequestKind::Proxy, &get, 200, Duration::ZERO);
        m.request(Some(new), RequestKind::Proxy, &get, 200, Duration::ZERO);
        m.rate_limited(api);
        let text = m.render(0);
        for series in [
            "requests_total{route=\"/api/\",method=\"GET\",status=\"200\",kind=\"proxy\"} 2",
            "requests_total{route=\"/new/\",method=\"GET\",status=\"200\",kind=\"proxy\"} 1",
            "request_duration_seconds_count{route=\"/api/\",kind=\"proxy\"} 2",
            "request_duration_seconds_count{route=\"/old/\",kind=\"proxy\"} 0",
            "rate_limited_total{route=\"/api/\"} 2",
            "rate_limited_total{route=\"/new/\"} 0",
        ] {
            assert!(
                text.contains(&format!("cloudbase_gateway_{series}")),
                "{series}\n{text}"
            );
        }
    }

    #[test]
    fn route_labels_are_bounded_and_the_overflow_is_counted_as_none() {
        let m = Metrics::new((0..MAX_ROUTE_LABELS).map(|i| format!("/r{i}/")));
        let over = m.label("/one-too-many/", RequestKind::Proxy);
        assert_eq!(over, NO_ROUTE_SLOT);
        m.request(
            Some(over),
            RequestKind::Proxy,
            &Method::GET,
            200,
            Duration::ZERO,
        );
        let text = m.render(0);
        assert!(!text.contains("one-too-many"));
        assert!(text.contains(
            "cloudbase_gateway_requests_total{route=\"none\",method=\"GET\",status=\"200\",kind=\"proxy\"} 1"
        ));
        assert_eq!(
            m.label("/r7/", RequestKind::Proxy),
            7,
            "labels held keep their slot"
        );
    }

    #[test]
    fn config_reloads_are_counted_by_result() {
        let m = Metrics::new(Vec::<String>::new());
        m.config_reload(ConfigReload::Error);
        m.config_reload(ConfigReload::Ok);
        m.config_reload(ConfigReload::Error);
        let text = m.render(0);
        assert!(text.contains("cloudbase_gateway_config_reloads_total{result=\"ok\"} 1"));
        assert!(text.contains("cloudbase_gateway_config_reloads_total{result=\"error\"} 2"));
    }

    #[test]
    fn redis_series_are_rendered_for_every_label_and_count_what_they_are_told() {
        let m = Metrics::new(Vec::<String>::new());
        m.redis_lookup(RedisLookup::Invalid);
        m.redis_lookup(RedisLookup::Invalid);
        m.redis_write(RedisWrite::Superseded);
        m.redis_purge(RedisPurge::Error);
        m.redis_invalidation(RedisInvalidation::Sub);
        m.set_redis_breaker_open(true);
        let text = m.render(0);
        assert!(text.contains("cloudbase_gateway_redis_lookups_total{result=\"invalid\"} 2"));
        assert!(text.contains("cloudbase_gateway_redis_lookups_total{result=\"skipped\"} 0"));
        assert!(text.contains("cloudbase_gateway_redis_writes_total{result=\"superseded\"} 1"));
        assert!(text.contains("cloudbase_gateway_redis_purges_total{result=\"error\"} 1"));
        assert!(text.contains("cloudbase_gateway_redis_invalidations_total{kind=\"sub\"} 1"));
        assert!(text.contains("cloudbase_gateway_redis_breaker_open 1"));
        assert!(text.contains("cloudbase_gateway_redis_subscribed 0"));
        assert!(text.contains("# TYPE cloudbase_gateway_redis_lookups_total counter"));
    }

    #[test]
    fn relay_counters_use_closed_labels() {
        let m = Metrics::new(Vec::new());
        m.relay_request(RelayEndpoint::Signout, 200);
        m.relay_request(RelayEndpoint::Signout, 204);
        m.relay_request(RelayEndpoint::Other, 999);
        m.relay_purge(RelayPurge::Sub);
        m.relay_rate_limited(RelayLimitName::Signin);
        let text = m.render(0);
        assert!(text.contains(
            "cloudbase_gateway_relay_requests_total{endpoint=\"signout\",status=\"2xx\"} 2"
        ));
        assert!(text.contains(
            "cloudbase_gateway_relay_requests_total{endpoint=\"other\",status=\"5xx\"} 1"
        ));
        assert!(
            !text.contains("endpoint=\"signin\""),
            "unseen series stay out"
        );
        assert!(text.contains("cloudbase_gateway_relay_purges_total{by=\"sub\"} 1"));
        assert!(text.contains("cloudbase_gateway_relay_purges_total{by=\"token\"} 0"));
        assert!(text.contains("cloudbase_gateway_relay_rate_limited_total{limit=\"signin\"} 1"));
    }

    #[test]
    fn rate_limit_counters_are_kept_per_route() {
        let m = Metrics::new(["/api/".to_owned(), "/open/".to_owned()]);
        m.rate_limited(1);
        m.rate_limited(1);
        m.rate_limit_overflow(0);
        m.rate_limited(99); // out of range: ignored, never a panic
        let text = m.render(0);
        assert!(text.contains("cloudbase_gateway_rate_limited_total{route=\"/open/\"} 2"));
        assert!(text.contains("cloudbase_gateway_rate_limited_total{route=\"/api/\"} 0"));
        assert!(text.contains("cloudbase_gateway_rate_limit_overflow_total{route=\"/api/\"} 1"));
        assert!(!text.contains("rate_limited_total{route=\"none\"}"));
    }
}
