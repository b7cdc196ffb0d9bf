#![doc = include_str!("../README.md")]
//!
//! ## Design
//!
//! It speaks CloudBase's wire format under `/auth/v1` (plus the seed guide's path
//! variants), so a gateway, the typed client (`cloudbase-auth`), curl scripts from the
//! seed guide and the official JS SDK (CORS included) can all run against it without a
//! CloudBase account. Test hooks live outside `/auth/v1`: per-endpoint call counters
//! (`/__emulator/stats`) and fault injection (`/__emulator/fault`) for outage tests.
//!
//! Trade-off: everything is in memory behind one mutex (see `state`) and access tokens
//! are HS256 with a per-instance key instead of RS256. Nothing survives a restart, and
//! the emulator is not meant to be exposed to untrusted networks; in exchange it starts in
//! microseconds, needs no key material and is deterministic enough for tests.
//!
//! A program embeds it by building [`EmulatorOptions`] from its own configuration and
//! serving [`Emulator::router`] or [`Emulator::serve`] on a listener it binds (the gateway
//! does this when its `[emulator] enabled` is true), or with [`Emulator::spawn`].
#![forbid(unsafe_code)]

mod body;
mod cors;
mod error;
mod handlers;
mod hooks;
mod jwt;
mod limits;
mod options;
mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, MethodRouter};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tokio::sync::watch;
use tower::ServiceBuilder;

pub use body::MAX_BODY;
pub use error::{ApiError, ErrorKind};
pub use options::{AttemptLimits, EmulatorOptions, SeedUser};

use cloudbase_auth::Secret;

/// The `/auth/v1` endpoints, as named in the call statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Signin,
    Verification,
    Verify,
    Signup,
    SigninAnonymously,
    Token,
    Introspect,
    /// `/revoke` and the JS SDK's `/user/signout`.
    Revoke,
    /// `DELETE /user/revoke/all`.
    RevokeAll,
    /// `DELETE /user/authorized/devices/{device_id}`.
    RevokeDevice,
    UserMe,
    Sudo,
    Password,
    DeleteUser,
    Providers,
}

impl Endpoint {
    /// Every endpoint, in statistics order.
    pub const ALL: [Endpoint; 15] = [
        Endpoint::Signin,
        Endpoint::Verification,
        Endpoint::Verify,
        Endpoint::Signup,
        Endpoint::SigninAnonymously,
        Endpoint::Token,
        Endpoint::Introspect,
        Endpoint::Revoke,
        Endpoint::RevokeAll,
        Endpoint::RevokeDevice,
        Endpoint::UserMe,
        Endpoint::Sudo,
        Endpoint::Password,
        Endpoint::DeleteUser,
        Endpoint::Providers,
    ];

    /// The name used by [`Emulator::calls`] and `/__emulator/stats`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Signin => "signin",
            Endpoint::Verification => "verification",
            Endpoint::Verify => "verify",
            Endpoint::Signup => "signup",
            Endpoint::SigninAnonymously => "signin_anonymously",
            Endpoint::Token => "token",
            Endpoint::Introspect => "introspect",
            Endpoint::Revoke => "revoke",
            Endpoint::RevokeAll => "revoke_all",
            Endpoint::RevokeDevice => "revoke_device",
            Endpoint::UserMe => "user_me",
            Endpoint::Sudo => "sudo",
            Endpoint::Password => "password",
            Endpoint::DeleteUser => "delete_user",
            Endpoint::Providers => "providers",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How `/auth/v1` calls behave, set through `POST /__emulator/fault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Normal operation (default).
    Ok = 0,
    /// Never answer (until the emulator shuts down).
    Hang = 1,
    /// 500 with `{"error": "internal", …}`.
    Error500 = 2,
    /// 200 with the body `not json`.
    Garbage = 3,
}

impl Fault {
    /// Parses `ok`, `hang`, `error500`, `garbage`.
    pub fn from_name(name: &str) -> Option<Fault> {
        Some(match name {
            "ok" => Fault::Ok,
            "hang" => Fault::Hang,
            "error500" => Fault::Error500,
            "garbage" => Fault::Garbage,
            _ => return None,
        })
    }

    fn from_u8(v: u8) -> Fault {
        match v {
            1 => Fault::Hang,
            2 => Fault::Error500,
            3 => Fault::Garbage,
            _ => Fault::Ok,
        }
    }
}

/// The in-memory CloudBase Auth v2 service. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    verification_code: String,
    access_token_ttl: i64,
    allow_anonymous: bool,
    test_hooks: bool,
    issuer: String,
    project_id: String,
    client_id: String,
    client_secret: Secret,
    signer: jwt::Signer,
    store: Mutex<state::Store>,
    calls: [AtomicU64; 15],
    fault: AtomicU8,
    /// Flips to true at shutdown, releasing requests held by [`Fault::Hang`].
    shutdown: watch::Sender<bool>,
}

impl Inner {
    fn store(&self) -> MutexGuard<'_, state::Store> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters to tests, so a poisoned lock is still used.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The client ids of this environment: the configured one and the env id (CloudBase's
    /// default client, what `client_id` defaults to). Any other is another client's or
    /// another environment's.
    fn is_our_client(&self, client_id: &str) -> bool {
        client_id == self.client_id || client_id == self.project_id
    }
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("issuer", &self.inner.issuer)
            .field("client_id", &self.inner.client_id)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// An emulator with `options`' users and settings (see [`EmulatorOptions`]).
    pub fn new(options: &EmulatorOptions) -> Emulator {
        let defaults = EmulatorOptions::default();
        let or_default = |value: &str, default: &str| {
            if value.is_empty() {
                default.to_owned()
            } else {
                value.to_owned()
            }
        };
        let env_id = or_default(&options.env_id, &defaults.env_id);
        let region = or_default(&options.region, &defaults.region);
        let client_id = or_default(&options.client_id, &env_id);
        let now = state::Now::current();
        Emulator {
            inner: Arc::new(Inner {
                verification_code: options.verification_code.clone(),
                access_token_ttl: options.access_token_ttl.as_secs().max(1) as i64,
                allow_anonymous: options.allow_anonymous,
                test_hooks: options.test_hooks,
                issuer: format!("http://{env_id}.{region}.tcb-api.tencentcloudapi.com"),
                project_id: env_id,
                client_id,
                client_secret: options.client_secret.clone(),
                signer: jwt::Signer::new(),
                store: Mutex::new(state::Store::seeded(&options.users, options.limits, now)),
                calls: Default::default(),
                fault: AtomicU8::new(Fault::Ok as u8),
                shutdown: watch::channel(false).0,
            }),
        }
    }

    /// The full HTTP surface: `/auth/v1/*` with CORS, `/healthz`, and `/__emulator/*` when
    /// test hooks are enabled. Served with connection info (as [`Emulator::serve`] does),
    /// attempt limits count per client address; without it, all callers are one client.
    pub fn router(&self) -> Router {
        let inner = &self.inner;
        let counted = |e: Endpoint, r: MethodRouter<Arc<Inner>>| {
            r.route_layer(middleware::from_fn_with_state((inner.clone(), e), gate))
        };
        use handlers as h;
        let auth = Router::new()
            .route("/signin", counted(Endpoint::Signin, post(h::signin)))
            .route(
                "/verification",
                counted(Endpoint::Verification, post(h::verification)),
            )
            .route(
                "/verification/verify",
                counted(Endpoint::Verify, post(h::verify)),
            )
            .route("/signup", counted(Endpoint::Signup, post(h::signup)))
            .route(
                "/signin/anonymously",
                counted(Endpoint::SigninAnonymously, post(h::anonymous)),
            )
            .route(
                "/signin-anonymously",
                counted(Endpoint::SigninAnonymously, post(h::anonymous)),
            )
            .route("/token", counted(Endpoint::Token, post(h::token)))
            .route(
                "/token/introspect",
                counted(Endpoint::Introspect, get(h::introspect).post(h::introspect)),
            )
            .route("/revoke", counted(Endpoint::Revoke, post(h::revoke)))
            // The JS SDK's `signOut({redirect_uri})`; counted with the other revocations.
            .route("/user/signout", counted(Endpoint::Revoke, post(h::signout)))
            .route(
                "/user/revoke/all",
                counted(Endpoint::RevokeAll, delete(h::revoke_all)),
            )
            .route(
                "/user/authorized/devices/{device_id}",
                counted(Endpoint::RevokeDevice, delete(h::revoke_device)),
            )
            .route(
                "/user/me",
                counted(Endpoint::UserMe, get(h::user_me))
                    .merge(counted(Endpoint::DeleteUser, delete(h::delete_user))),
            )
            .route("/user/sudo", counted(Endpoint::Sudo, post(h::sudo)))
            .route(
                "/user/password",
                counted(Endpoint::Password, patch(h::password)),
            )
            .route(
                "/user/provider",
                counted(Endpoint::Providers, get(h::providers)),
            )
            .route(
                "/user/providers",
                counted(Endpoint::Providers, get(h::providers)),
            );
        let mut app = Router::new()
            .nest("/auth/v1", auth)
            .route("/healthz", get(h::healthz));
        if inner.test_hooks {
            app = app.merge(hooks::routes());
        }
        let app = app
            .fallback(h::not_found)
            .method_not_allowed_fallback(h::method_not_allowed)
            .with_state(inner.clone());
        let service = ServiceBuilder::new()
            // Before routing, so preflights to any Auth v2 path, known or not, are answered
            // (and never reach the call counters); outermost, so refusals below are
            // readable by the SDK in a browser.
            .layer(middleware::from_fn(cors::cors))
            // Before any handler: a declared oversized body is refused unread, on every
            // path, including those whose handlers never read a body.
            .layer(middleware::from_fn(refuse_declared_oversize))
            .service(app);
        Router::new().fallback_service(service)
    }

    /// Serves until `shutdown` completes, then stops accepting, releases hanging requests
    /// and waits for in-flight ones.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let inner = self.inner.clone();
        let shutdown = async move {
            shutdown.await;
            inner.shutdown.send_replace(true);
        };
        let app = self.router();
        // The peer address feeds the per-client attempt limits.
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }

    /// Binds `addr` (port 0 picks a free port) and serves in a background task until it
    /// is aborted. Returns the bound address.
    pub async fn spawn(
        self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let handle = tokio::spawn(async move {
            if let Err(e) = self.serve(listener, std::future::pending()).await {
                tracing::warn!(error = %e, "emulator stopped");
            }
        });
        Ok((bound, handle))
    }

    /// How many `/auth/v1` calls reached `endpoint` (a name from [`Endpoint::name`]);
    /// 0 for unknown names.
    pub fn calls(&self, endpoint: &str) -> u64 {
        Endpoint::ALL
            .iter()
            .find(|e| e.name() == endpoint)
            .map_or(0, |e| self.inner.calls[e.index()].load(Ordering::Relaxed))
    }

    /// Zeroes every call counter.
    pub fn reset_calls(&self) {
        for c in &self.inner.calls {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Sets how subsequent `/auth/v1` calls behave.
    pub fn set_fault(&self, fault: Fault) {
        self.inner.fault.store(fault as u8, Ordering::Relaxed);
    }
}

/// Runs before every `/auth/v1` endpoint: counts the call, applies the injected fault,
/// then checks Basic client credentials if any were sent.
async fn gate(
    State((inner, endpoint)): State<(Arc<Inner>, Endpoint)>,
    req: Request,
    next: Next,
) -> Response {
    inner.calls[endpoint.index()].fetch_add(1, Ordering::Relaxed);
    match Fault::from_u8(inner.fault.load(Ordering::Relaxed)) {
        Fault::Ok => {}
        Fault::Hang => {
            let mut rx = inner.shutdown.subscribe();
            let _ = rx.wait_for(|down| *down).await;
            return ApiError::new(ErrorKind::Internal, "emulator shutting down").into_response();
        }
        Fault::Error500 => {
            return ApiError::new(ErrorKind::Internal, "injected fault").into_response();
        }
        Fault::Garbage => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "not json",
            )
                .into_response();
        }
    }
    if let Err(e) = check_basic(&inner, req.headers()).and_then(|()| check_query(&inner, &req)) {
        return e.into_response();
    }
    next.run(req).await
}

/// `?client_id=` is optional; when given (non-empty) it must be this environment's.
fn check_query(inner: &Inner, req: &Request) -> Result<(), ApiError> {
    // A malformed query is the handler's to refuse, if it reads one.
    let Ok(Query(query)) =
        Query::<std::collections::HashMap<String, String>>::try_from_uri(req.uri())
    else {
        return Ok(());
    };
    match query.get("client_id").map(String::as_str) {
        Some(id) if !id.is_empty() && !inner.is_our_client(id) => Err(ApiError::invalid_client()),
        _ => Ok(()),
    }
}

/// 413 in the envelope for a declared `Content-Length` over [`MAX_BODY`], before the
/// body is read.
async fn refuse_declared_oversize(req: Request, next: Next) -> Response {
    match body::declared_too_large(req.headers()) {
        Some(e) => e.into_response(),
        None => next.run(req).await,
    }
}

/// Basic credentials are optional; when sent, the id must be this environment's and, when
/// a client secret is configured, the secret must match.
fn check_basic(inner: &Inner, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(());
    };
    let Some(encoded) = value.to_str().ok().and_then(|v| {
        v.strip_prefix("Basic ")
            .or_else(|| v.strip_prefix("basic "))
    }) else {
        return Ok(());
    };
    let decoded = STANDARD
        .decode(encoded.trim())
        .map_err(|_| ApiError::invalid_client())?;
    let decoded = String::from_utf8(decoded).map_err(|_| ApiError::invalid_client())?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(ApiError::invalid_client)?;
    let secret_ok = inner.client_secret.is_empty() || secret == inner.client_secret.expose();
    if inner.is_our_client(id) && secret_ok {
        Ok(())
    } else {
        Err(ApiError::invalid_client())
    }
}
