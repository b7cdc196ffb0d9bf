//! The composition root, in linkerd2-proxy's Config / Runtime / Stack split: the validated
//! [`Config`] (never changed after loading) -> the [`Runtime`] pieces built from it once
//! (the CloudBase client, the upstream client, the TLS acceptors, the validation cache,
//! the metrics with every route label, the span exporter, the forward-auth endpoint, the
//! relay, the routes' rate limiters, the shared Redis tier) -> the stack (`stack::build`)
//! -> the running listeners ([`start`]: the public one, admin, the embedded emulator), the
//! subscription to other replicas' purges, the signal, the drain and the last spans'
//! flush.
//!
//! Whatever can only be decided at start is decided here, and handed on as a value rather
//! than written back into the configuration: whether the emulator is embedded, and so the
//! CloudBase URL the client is built with (the emulator's bound address when
//! `cloudbase.base_url` is unset, see [`CloudbaseSettings::base_url_with`]).
//!
//! Started from a file ([`start_from_file`]), the gateway reloads it on `SIGHUP` and when it
//! changes (`app/reload.rs`): the stack is built again over the same runtime pieces and
//! swapped in for the next request.
//!
//! A new runtime piece (a client, a background task, the Redis tier) is built in
//! [`Runtime::build`] from the validated settings, handed to the layer or service that
//! needs it where `start` builds the stack, and, if it runs on its own, started and stopped
//! in [`start`] beside the admin listener and the emulator.

mod reload;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use cloudbase_auth::{Client, RootCerts};
use cloudbase_emulator::Emulator;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::auth::Authenticator;
use crate::cache::shared::{SharedTier, Subscription};
use crate::cache::{AuthApi, IdentityCache, Limits};
use crate::config::{CloudbaseSettings, Config};
use crate::forward_auth::ForwardAuth;
use crate::http::BoxError;
use crate::limit::RouteLimits;
use crate::metrics::{Metrics, RequestKind};
use crate::proxy::forward::{upstream_client, Forward, UpstreamClient};
use crate::relay::{Relay, RelayParts};
use crate::server::{self, Live, TlsAcceptors};
use crate::stack::{self, GatewayService, Pieces};
use crate::telemetry::trace::Tracing;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[source] BoxError),
    #[error("cannot build the {what}: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: BoxError,
    },
}

/// The pieces built once from the configuration, shared by every connection.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub metrics: Arc<Metrics>,
    /// The validation cache, over the CloudBase client (and the shared tier, if any).
    pub cache: IdentityCache,
    /// The pooled HTTP clients of the routes' upstreams.
    pub upstream: UpstreamClient,
    /// The public listener's acceptors when `[server]` has a certificate.
    pub tls: Option<TlsAcceptors>,
    /// The span exporter while `[telemetry]` is on; flushed on shutdown.
    pub tracing: Option<Tracing>,
    /// The forward-auth endpoint while `[forward_auth]` is on.
    pub forward_auth: Option<ForwardAuth>,
    /// The relay while `[relay]` is on.
    pub relay: Option<Relay>,
    /// The routes' rate limiters (their buckets live as long as the gateway).
    pub rate_limits: RouteLimits,
}

impl Runtime {
    /// The pieces, with a CloudBase client of the Auth v2 API at `cloudbase_url` (which the
    /// relay forwards to as well). Must run on the runtime that will serve: the span
    /// exporter spawns its exports there.
    pub fn build(config: &Config, cloudbase_url: &str) -> Result<Runtime, StartError> {
        let tls = tls(config)?;
        let client =
            cloudbase_client(&config.cloudbase, cloudbase_url).map_err(|e| StartError::Setup {
                what: "CloudBase client",
                source: e.into(),
            })?;
        Ok(Runtime {
            tls,
            ..Self::with_api(config, Arc::new(client), cloudbase_url)?
        })
    }

    /// The pieces over any [`AuthApi`] (an in-process CloudBase stand-in), without TLS;
    /// the relay, when on, forwards to `cloudbase_url`.
    pub fn with_api(
        config: &Config,
        api: Arc<dyn AuthApi>,
        cloudbase_url: &str,
    ) -> Result<Runtime, StartError> {
        // Labels in `requests_total`: the configured routes (slots in route order), then
        // forward-auth's default route (answered only as forward-auth) and the relay's
        // prefix (answered only as relayed), as `diverts` labels them; `none` last.
        let metrics = Arc::new(Metrics::new(config.routes.iter().map(|r| r.prefix.clone())));
        // `[cache.redis]`: built without connecting, so the gateway starts and serves with
        // Redis down; the cache asks it on a miss and sends every purge through it.
        let shared = config
            .cache
            .redis
            .as_ref()
            .map(|redis| SharedTier::new(redis, metrics.clone()))
            .transpose()
            .map_err(|e| StartError::Setup {
                what: "Redis tier",
                source: e.into(),
            })?;
        let cache = IdentityCache::with_shared(
            &config.cache,
            &config.identity.headers,
            Limits::from_config(config),
            api,
            metrics.clone(),
            shared,
        );
        let upstream = upstream_client(&config.upstream, config.cloudbase.ca_file.as_deref())
            .map_err(|source| StartError::Setup {
                what: "upstream client",
                source,
            })?;
        // `[telemetry]`: the collector is trusted as CloudBase is (`cloudbase.ca_file`).
        let roots: Vec<RootCerts> = config
            .cloudbase
            .ca_file
            .iter()
            .map(|path| RootCerts::PemFile(path.clone()))
            .collect();
        let tracing = Tracing::start(&config.telemetry, &roots).map_err(|e| StartError::Setup {
            what: "span exporter",
            source: e.into(),
        })?;
        let runtime = Runtime {
            metrics,
            cache,
            upstream,
            tls: None,
            tracing,
            forward_auth: None,
            relay: None,
            rate_limits: RouteLimits::new(&config.routes),
        };
        Ok(Runtime {
            forward_auth: runtime.forward_auth(config),
            relay: runtime.relay(config, cloudbase_url)?,
            ..runtime
        })
    }

    /// The forward-auth endpoint while `[forward_auth]` is on: decides through the same
    /// routes and the same `Authenticator` as the proxy path, forwards nothing.
    fn forward_auth(&self, config: &Config) -> Option<ForwardAuth> {
        config.forward_auth.enabled.then(|| {
            ForwardAuth::new(
                &config.forward_auth,
                &config.routes,
                config.server.escaped_slashes,
                Authenticator::new(self.cache.clone(), self.metrics.clone()),
                config.identity.headers.clone(),
                &self.metrics,
            )
        })
    }

    /// The relay while `[relay]` is on, relaying to `cloudbase_url`. It shares the upstream
    /// client, the cache (its purges go through `IdentityCache::purge_*`) and the metrics.
    fn relay(&self, config: &Config, cloudbase_url: &str) -> Result<Option<Relay>, StartError> {
        if !config.relay.enabled {
            return Ok(None);
        }
        let parts = RelayParts {
            base_url: cloudbase_url.to_owned(),
            escaped_slashes: config.server.escaped_slashes,
            trusted_proxies: config.server.trusted_proxies.clone(),
            request_timeout: config.server.request_timeout,
            client: self.upstream.clone(),
            cache: self.cache.clone(),
            metrics: self.metrics.clone(),
            label: self.metrics.label(&config.relay.prefix, RequestKind::Relay),
        };
        let relay = Relay::new(&config.relay, parts).map_err(|e| StartError::Setup {
            what: "CloudBase relay",
            source: e.into(),
        })?;
        Ok(Some(relay))
    }

    /// The pieces the stack is built over.
    pub fn pieces(&self) -> Pieces {
        Pieces {
            cache: self.cache.clone(),
            metrics: self.metrics.clone(),
            tracing: self.tracing.clone(),
            forward_auth: self.forward_auth.clone(),
            relay: self.relay.clone(),
            rate_limits: self.rate_limits.clone(),
        }
    }

    /// The gateway service: the stack over the proxy.
    pub fn service(&self, config: &Config) -> GatewayService {
        let forward = Forward::new(self.upstream.clone(), &config.server.trusted_proxies);
        stack::build(config, &self.pieces(), forward)
    }
}

/// The CloudBase client `[cloudbase]` describes, of the Auth v2 API at `base_url`.
fn cloudbase_client(
    c: &CloudbaseSettings,
    base_url: &str,
) -> Result<Client, cloudbase_auth::Error> {
    let mut builder = Client::builder(base_url)
        .client_id(&c.client_id)
        .client_secret(c.client_secret.clone())
        .device_id(&c.device_id)
        .introspect_auth(c.introspect_auth)
        .timeout(c.timeout)
        .user_agent(concat!("cloudbase-gateway/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &c.ca_file {
        builder = builder.extra_root_certs(RootCerts::PemFile(path.clone()));
    }
    builder.build()
}

/// The public listener's TLS acceptors, when configured.
fn tls(config: &Config) -> Result<Option<TlsAcceptors>, StartError> {
    config
        .server
        .tls
        .as_ref()
        .map(|files| TlsAcceptors::load(files).map_err(StartError::Tls))
        .transpose()
}

/// A started gateway.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub emulator_addr: Option<SocketAddr>,
    pub emulator: Option<Emulator>,
    pub cache: IdentityCache,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Starts draining (as SIGTERM does) and waits until done.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Waits until the gateway has stopped (after a shutdown).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Triggers shutdown without waiting.
    pub fn trigger_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// Binds every listener, builds the runtime and the stack, then serves in the background
/// until [`Running::shutdown`] or `signal` completes.
pub async fn start(
    config: Config,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    start_with(config, None, signal).await
}

/// [`start`] for `config` loaded from the file at `path`, which is then reloaded on
/// `SIGHUP` and whenever it changes (see `app/reload.rs`).
pub async fn start_from_file(
    config: Config,
    path: PathBuf,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    start_with(config, Some(path), signal).await
}

async fn start_with(
    config: Config,
    reload_from: Option<PathBuf>,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let triggers = reload_from.as_deref().map(reload::Triggers::install);
    let emulator = embed_emulator(&config, shutdown_rx.clone()).await?;
    let (listener, addr) = bind("gateway", config.server.listen).await?;
    let (admin_listener, admin_addr) = bind("admin", config.admin.listen).await?;
    // The embedded emulator's address is known only now that it is bound.
    let cloudbase_url = config
        .cloudbase
        .base_url_with(emulator.as_ref().map(|e| e.addr))
        .ok_or_else(|| StartError::Setup {
            what: "CloudBase client",
            source: "no CloudBase URL: set cloudbase.base_url or cloudbase.env_id".into(),
        })?;
    let runtime = Runtime::build(&config, &cloudbase_url)?;
    let service = Live::new(runtime.service(&config));
    let purges = subscribe_purges(&runtime.cache);

    let ready = Arc::new(AtomicBool::new(true));
    let connections = Arc::new(Semaphore::new(config.server.max_connections));
    let admin = AdminState {
        metrics: runtime.metrics.clone(),
        cache: runtime.cache.clone(),
        ready: ready.clone(),
        connections: connections.clone(),
        token: config.admin.token.clone(),
    };
    let (drained, admin_task) = serve_admin(admin_listener, admin);
    forward_signal(signal, shutdown_tx.clone());
    if let (Some(path), Some(triggers)) = (reload_from, triggers) {
        let emulator_addr = emulator.as_ref().map(|e| e.addr);
        reload::Reloader::new(
            path,
            config.clone(),
            runtime.clone(),
            emulator_addr,
            service.clone(),
        )
        .spawn(triggers, shutdown_rx.clone());
    }

    let (emulator_addr, emulator_handle) = match &emulator {
        Some(e) => (Some(e.addr), Some(e.emulator.clone())),
        None => (None, None),
    };
    let cache = runtime.cache.clone();
    let tracing = runtime.tracing.clone();
    let task = tokio::spawn(async move {
        server::serve(
            listener,
            runtime.tls,
            service,
            &config.server,
            connections,
            ready,
            shutdown_rx,
        )
        .await;
        let _ = drained.send(true);
        drop(purges);
        // Spans of the drained requests go out before the process ends (SIGTERM included).
        if let Some(tracing) = tracing {
            tracing.shutdown().await;
        }
        let _ = admin_task.await;
        if let Some(e) = emulator {
            let _ = tokio::time::timeout(Duration::from_secs(1), e.task).await;
        }
    });
    Ok(Running {
        addr,
        admin_addr,
        emulator_addr,
        emulator: emulator_handle,
        cache,
        shutdown: shutdown_tx,
        task,
    })
}

/// The emulator serving inside the gateway process.
struct Embedded {
    addr: SocketAddr,
    emulator: Emulator,
    task: JoinHandle<std::io::Result<()>>,
}

/// Binds and starts the emulator when `[emulator] enabled`; it stops at shutdown.
async fn embed_emulator(
    config: &Config,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<Embedded>, StartError> {
    if !config.emulator.enabled {
        return Ok(None);
    }
    let (listener, addr) = bind("emulator", config.emulator.listen).await?;
    let emulator = Emulator::new(&config.emulator_options());
    let task = tokio::spawn(emulator.clone().serve(listener, async move {
        let _ = shutdown.wait_for(|v| *v).await;
    }));
    Ok(Some(Embedded {
        addr,
        emulator,
        task,
    }))
}

/// Binds `addr` and reads back the address bound (port 0 picks one).
async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}

/// Serves the admin routes until the returned sender says the drain is over: probes
/// opening a fresh connection then read `/readyz` 503 (not "connection refused") while
/// requests finish.
fn serve_admin(listener: TcpListener, state: AdminState) -> (watch::Sender<bool>, JoinHandle<()>) {
    let (drained_tx, mut drained_rx) = watch::channel(false);
    let task = tokio::spawn(admin::serve(listener, state, async move {
        let _ = drained_rx.wait_for(|v| *v).await;
    }));
    (drained_tx, task)
}

/// With the shared tier: listens for the purges every replica publishes (this one's too)
/// and carries them out on `cache`, until the returned subscription is dropped.
fn subscribe_purges(cache: &IdentityCache) -> Option<Subscription> {
    let tier = cache.shared()?;
    let cache = cache.clone();
    Some(tier.subscribe(move |invalidation| {
        cache.invalidate(invalidation);
    }))
}

/// Starts the shutdown when `signal` completes.
fn forward_signal(
    signal: impl Future<Output = ()> + Send + 'static,
    shutdown: watch::Sender<bool>,
) {
    tokio::spawn(async move {
        signal.await;
        let _ = shutdown.send(true);
    });
}
