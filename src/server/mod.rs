//! Listeners and lifecycle: binds the public, admin and (optional) emulator listeners,
//! serves connections (HTTP/1.1 and HTTP/2, TLS when configured), caps connections, and
//! drains gracefully on shutdown.
//!
//! The accept loop follows hyper-util's `server/graceful.rs`: every connection is watched,
//! shutdown stops accepting at once, then in-flight requests get the grace period.

mod stack;
mod timeout;
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};

pub use stack::{build, build_with_api, Built, GatewayService};
pub use timeout::{RequestTimeout, RequestTimeoutLayer};

use crate::admin;
use crate::config::Config;
use crate::emulator::Emulator;
use crate::proxy::forward::ConnInfo;
use crate::response::{Body, BoxError, Reject};

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

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// A started gateway.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub emulator_addr: Option<SocketAddr>,
    pub emulator: Option<Emulator>,
    pub cache: crate::cache::IdentityCache,
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

/// Binds every listener, then serves in the background until [`Running::shutdown`] or
/// `signal` completes.
pub async fn start(
    mut config: Config,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut emulator_task = None;
    let mut emulator_info = None;
    if config.emulator.enabled {
        let listener = bind("emulator", config.emulator.listen).await?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            what: "emulator",
            addr: config.emulator.listen,
            source,
        })?;
        if config.cloudbase.base_url_from_emulator {
            config.cloudbase.base_url = format!("http://{addr}/auth/v1");
        }
        let emulator = Emulator::new(&config.emulator, &config.cloudbase);
        let mut rx = shutdown_rx.clone();
        emulator_task = Some(tokio::spawn(emulator.clone().serve(listener, async move {
            let _ = rx.wait_for(|v| *v).await;
        })));
        emulator_info = Some((addr, emulator));
    }

    let listener = bind("gateway", config.server.listen).await?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        what: "gateway",
        addr: config.server.listen,
        source,
    })?;
    let admin_listener = bind("admin", config.admin.listen).await?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "admin",
            addr: config.admin.listen,
            source,
        })?;
    let tls = match &config.server.tls {
        Some(files) => Some(tls::acceptor(files).map_err(StartError::Tls)?),
        None => None,
    };

    let built = stack::build(&config)?;
    if config.cache.redis.is_some() {
        // The tier (crate::cache::shared) exists and is tested; the request path and the
        // admin purge do not call it yet (issue 11's integration step).
        tracing::warn!(
            "[cache.redis] is validated but not used yet: each replica still caches alone"
        );
    }
    let ready = Arc::new(AtomicBool::new(true));
    let admin_state = admin::AdminState {
        metrics: built.metrics.clone(),
        cache: built.cache.clone(),
        ready: ready.clone(),
    };
    let cache = built.cache.clone();

    // The admin listener stays up until the drain is over, so probes opening a fresh
    // connection read `/readyz` 503 (not "connection refused") while requests finish.
    let (drained_tx, mut drained_rx) = watch::channel(false);
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin_state, async move {
        let _ = drained_rx.wait_for(|v| *v).await;
    }));

    let settings = config.server.clone();
    let signal_tx = shutdown_tx.clone();
    tokio::spawn(async move {
        signal.await;
        let _ = signal_tx.send(true);
    });
    let mut rx = shutdown_rx.clone();
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let server = Listener {
            listener,
            tls,
            service: built.service,
            permits: Arc::new(Semaphore::new(settings.max_connections)),
            header_read_timeout: settings.header_read_timeout,
        };
        server.accept_until(&mut rx, &graceful).await;
        ready.store(false, Ordering::SeqCst);
        tracing::info!(
            connections = graceful.count(),
            grace = ?settings.shutdown_grace_period,
            "shutting down: no longer accepting; draining in-flight requests"
        );
        match tokio::time::timeout(settings.shutdown_grace_period, graceful.shutdown()).await {
            Ok(()) => tracing::info!("drained"),
            Err(_) => tracing::warn!("grace period over; closing remaining connections"),
        }
        let _ = drained_tx.send(true);
        let _ = admin_task.await;
        if let Some(t) = emulator_task {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
    });
    Ok(Running {
        addr,
        admin_addr,
        emulator_addr: emulator_info.as_ref().map(|(a, _)| *a),
        emulator: emulator_info.map(|(_, e)| e),
        cache,
        shutdown: shutdown_tx,
        task,
    })
}

/// The public listener.
struct Listener<S> {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    permits: Arc<Semaphore>,
    header_read_timeout: Duration,
}

impl<S> Listener<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    async fn accept_until(self, shutdown: &mut watch::Receiver<bool>, graceful: &GracefulShutdown) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(64 * 1024);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(64 * 1024);
        let builder = Arc::new(builder);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = async { let _ = shutdown.wait_for(|v| *v).await; } => break,
            };
            let _ = stream.set_nodelay(true);
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                tokio::spawn(refuse_overloaded(stream));
                continue;
            };
            let service = self.service.clone();
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let tls = self.tls.clone();
            let handshake_timeout = self.header_read_timeout;
            tokio::spawn(async move {
                let _permit = permit;
                let info = ConnInfo {
                    peer,
                    tls: tls.is_some(),
                };
                let hyper_service = ConnService { service, info };
                let result = match tls {
                    None => {
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), hyper_service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!("TLS handshake timed out");
                                    return;
                                }
                            };
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), hyper_service);
                        watcher.watch(conn.into_owned()).await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
    }
}

/// Adapts the tower stack to one hyper connection: converts the body and tags each
/// request with the connection's [`ConnInfo`].
#[derive(Clone)]
struct ConnService<S> {
    service: S,
    info: ConnInfo,
}

impl<S> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = tower::util::Oneshot<S, Request<Body>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
        req.extensions_mut().insert(self.info);
        self.service.clone().oneshot(req)
    }
}

/// Over `max_connections`: answer one 503 `OVERLOADED` and close, costing no more than a
/// small HTTP/1.1 exchange.
async fn refuse_overloaded(stream: tokio::net::TcpStream) {
    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
        let mut response = Reject::Overloaded
            .into_response(req.headers().get(&crate::proxy::headers::X_REQUEST_ID));
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        Ok::<_, Infallible>(response)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(2))
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}
