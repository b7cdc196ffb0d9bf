//! The public listener: accepts connections until shutdown, caps them at
//! `max_connections` (one quick 503 for those over it), serves each with HTTP/1.1 or
//! HTTP/2 (TLS when configured) under its deadlines, and drains on shutdown.
//!
//! The accept loop follows hyper-util's `server/graceful.rs` — shutdown stops accepting at
//! once, every connection is told to finish gracefully, then in-flight requests get the
//! grace period — but drives each connection itself instead of through its `Watcher`:
//! `GracefulConnection` is sealed, and a connection must also be closed for its own
//! deadlines (see `conn`). The drain waits for a channel every connection task holds.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::conn::{self, Activity, ConnService, Expired};
use super::live::{Current, Live};
use super::tls::TlsAcceptors;
use crate::config::ServerSettings;
use crate::http::{Body, ConnInfo};
use crate::rejection::{Reject, Rejection};
use crate::stack::rescue::RescueLayer;

/// Serves `listener` with the service in force in `service` (each request is served by the
/// one in force when it arrives) until `shutdown` turns true, then drains: stops
/// accepting, marks `ready` false (for `/readyz`), and gives in-flight requests
/// `shutdown_grace_period`. Resolves once every connection has ended or the grace period
/// is over. `connections` holds one permit per connection allowed
/// (`server.max_connections`); the admin listener reads it too.
pub async fn serve<S>(
    listener: TcpListener,
    tls: Option<TlsAcceptors>,
    service: Live<S>,
    settings: &ServerSettings,
    connections: Arc<Semaphore>,
    ready: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let (drained, mut all_drained) = mpsc::channel::<()>(1);
    let server = Listener {
        listener,
        tls,
        service,
        permits: connections.clone(),
        refusals: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
        header_read_timeout: settings.header_read_timeout,
        idle_timeout: settings.idle_timeout,
        max_concurrent_streams: settings.max_concurrent_streams,
    };
    server.accept_until(&mut shutdown, drained).await;
    ready.store(false, Ordering::SeqCst);
    tracing::info!(
        connections = settings.max_connections - connections.available_permits(),
        grace = ?settings.shutdown_grace_period,
        "shutting down: no longer accepting; draining in-flight requests"
    );
    // `recv` sees `None` once every connection task has dropped its sender.
    match tokio::time::timeout(settings.shutdown_grace_period, all_drained.recv()).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!("grace period over; closing remaining connections"),
    }
}

/// Over-limit connections being answered at once, at most; beyond it they are closed
/// without an answer, so a flood past `max_connections` costs a bounded amount.
const REFUSALS_AT_ONCE: usize = 64;
/// The most one refusal may take, TLS handshake included.
const REFUSAL_BUDGET: Duration = Duration::from_secs(2);

/// The public listener.
struct Listener<S> {
    listener: TcpListener,
    tls: Option<TlsAcceptors>,
    service: Live<S>,
    /// One per open connection (`max_connections`).
    permits: Arc<Semaphore>,
    /// One per refusal being answered ([`REFUSALS_AT_ONCE`]).
    refusals: Arc<Semaphore>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_concurrent_streams: u32,
}

impl<S> Listener<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    /// Accepts until `shutdown`; each connection task holds a clone of `drained`, so its
    /// receiver sees the channel close once every connection has ended.
    async fn accept_until(self, shutdown: &mut watch::Receiver<bool>, drained: mpsc::Sender<()>) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper's own head timer covers HTTP/1.1 heads after the first (counted from the
        // end of the previous exchange); `conn::Activity` covers the first, in both
        // protocols, from accept.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(64 * 1024);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(64 * 1024)
            .max_concurrent_streams(self.max_concurrent_streams);
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
                match self.refusals.clone().try_acquire_owned() {
                    Ok(refusal) => {
                        let tls = self.tls.as_ref().map(|t| t.refuse.clone());
                        tokio::spawn(async move {
                            let _refusal = refusal;
                            let _ = tokio::time::timeout(
                                REFUSAL_BUDGET,
                                refuse_overloaded(stream, tls),
                            )
                            .await;
                        });
                    }
                    Err(_) => drop(stream),
                }
                continue;
            };
            let info = ConnInfo {
                // An IPv4 client of a dual-stack listener arrives as `::ffff:a.b.c.d`;
                // everything downstream (trusted_proxies, X-Forwarded-For) wants `a.b.c.d`.
                peer: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
                tls: self.tls.is_some(),
            };
            let connection = Connection {
                service: self.service.connection(),
                info,
                first_by: Instant::now() + self.header_read_timeout,
                idle_timeout: self.idle_timeout,
            };
            let builder = builder.clone();
            let tls = self.tls.as_ref().map(|t| t.serve.clone());
            let shutdown = shutdown.clone();
            let drained = drained.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _drained = drained;
                connection.serve(stream, tls, &builder, shutdown).await;
            });
        }
    }
}

/// One accepted connection and its deadlines.
struct Connection<S> {
    service: Current<S>,
    info: ConnInfo,
    /// Accept plus `header_read_timeout`: the TLS handshake and the first request head
    /// must both be done by then.
    first_by: Instant,
    idle_timeout: Duration,
}

impl<S> Connection<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    /// Serves the connection until the client leaves, a deadline passes (see
    /// [`conn::Activity`]), or shutdown has drained it.
    async fn serve(
        self,
        stream: tokio::net::TcpStream,
        tls: Option<tokio_rustls::TlsAcceptor>,
        builder: &auto::Builder<TokioExecutor>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let io: Box<dyn conn::Io> = match tls {
            None => Box::new(stream),
            Some(acceptor) => {
                match tokio::time::timeout_at(self.first_by, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake not done within header_read_timeout");
                        return;
                    }
                }
            }
        };
        let activity = Activity::new();
        let service = ConnService {
            service: self.service,
            info: self.info,
            activity: activity.clone(),
        };
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let mut draining = false;
        let mut drop_at: Option<Instant> = None;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.wait_for(|v| *v), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                why = activity.expired(self.first_by, self.idle_timeout),
                    if !draining && drop_at.is_none() =>
                {
                    match why {
                        Expired::FirstRequest => {
                            tracing::debug!("no complete request head within header_read_timeout; closing");
                            return;
                        }
                        Expired::Idle => {
                            tracing::debug!("idle for idle_timeout; closing");
                            conn.as_mut().graceful_shutdown();
                            drop_at = Some(Instant::now() + conn::CLOSE_GRACE);
                        }
                    }
                }
                _ = tokio::time::sleep_until(drop_at.unwrap_or_else(Instant::now)),
                    if drop_at.is_some() =>
                {
                    return;
                }
            }
        }
    }
}

/// Over `max_connections`: answer one 503 `OVERLOADED` and close, costing no more than a
/// small HTTP/1.1 exchange. On the TLS listener the handshake is finished first (with
/// ALPN offering only `http/1.1`, so an HTTP/2 client falls back to it or fails the
/// handshake cleanly) — a plaintext answer written into a handshake reads to the client
/// as "wrong version number". The caller bounds the whole refusal by [`REFUSAL_BUDGET`].
async fn refuse_overloaded(stream: tokio::net::TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
    let io: Box<dyn conn::Io> = match tls {
        None => Box::new(stream),
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(s) => Box::new(s),
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake of a refused connection failed");
                return;
            }
        },
    };
    // The 503 is rendered by the rescue layer, as every other refusal.
    let refuse = RescueLayer
        .layer(tower::service_fn(overloaded))
        .map_response(closing);
    let service =
        hyper::service::service_fn(move |req: Request<Incoming>| refuse.clone().oneshot(req));
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_BUDGET)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Every request on a refused connection: 503 `OVERLOADED`.
async fn overloaded(_: Request<Incoming>) -> Result<Response<Body>, Rejection> {
    Err(Reject::Overloaded.into())
}

/// `response` with `Connection: close`.
fn closing(mut response: Response<Body>) -> Response<Body> {
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}
