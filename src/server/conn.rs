//! One client connection's life: the deadlines hyper does not keep for us, and the
//! adapter between a hyper connection and the tower stack.
//!
//! hyper keeps `header_read_timeout` for HTTP/1.1 request heads, but only once it knows the
//! connection is HTTP/1.1: `auto::Builder` first reads until it can tell HTTP/1.1 from the
//! HTTP/2 preface, with no timer, and HTTP/2 has no head timeout and no idle timeout at all.
//! So a connection that sends nothing, part of the preface, or the preface and then
//! nothing was held forever, and `max_connections` of them locked every other client out.
//! [`Activity`] closes that gap from outside the protocol: it sees each request when the
//! stack is called (a complete head, in either protocol) and each exchange's end (both
//! bodies dropped), and reports when the connection has outstayed
//!
//! - `header_read_timeout` from accept (TLS handshake included) without a complete first
//!   request head: the connection is dropped;
//! - `idle_timeout` with no request in flight: the connection is closed gracefully (HTTP/2
//!   sends GOAWAY), then dropped if the client has not let go within [`CLOSE_GRACE`].
//!
//! The cost is a few atomic operations per request on a per-connection struct no other
//! connection touches (the watcher task sleeps until the next deadline that could apply;
//! a request never wakes it), and one boxed IO per connection so plain and TLS streams
//! share one code path.
//!
//! [`ConnService`] also keeps one copy of the stack per connection (made again only after a
//! configuration reload, see `live`) instead of cloning the whole stack for every request,
//! which hyper's `&self` call otherwise asks for: the copy is borrowed only while `call`
//! builds the request's future.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use super::live::Current;
use crate::http::ConnInfo;
use crate::http::{Body, BoxError, ClientBodyError};

/// How long a connection closed for being idle may take to let go before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A client stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Which deadline a connection outstayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No complete request head within `header_read_timeout` of accept.
    FirstRequest,
    /// No request in flight for `idle_timeout`.
    Idle,
}

/// What one connection is doing, as far as its deadlines care. Lock-free: a request costs
/// a few atomic operations, and only the first one wakes the connection's watcher, which
/// otherwise sleeps until the next deadline that could apply and looks again then.
pub struct Activity {
    /// The zero of `idle_since`.
    base: Instant,
    /// Holders of open exchanges ([`Busy`] handles): an exchange is open until its request
    /// and response bodies are both dropped.
    open: AtomicUsize,
    /// Whether any request head has arrived.
    seen: AtomicBool,
    /// Told once, when the first request head arrives.
    first_seen: Notify,
    /// When an exchange last ended, in nanoseconds after `base`: when `open` is zero, the
    /// time the connection went idle.
    idle_since: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            base: Instant::now(),
            open: AtomicUsize::new(0),
            seen: AtomicBool::new(false),
            first_seen: Notify::new(),
            idle_since: AtomicU64::new(0),
        })
    }

    /// A complete request head has arrived: the connection is busy until the returned
    /// handle and all its clones are dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        let busy = Busy::new(self.clone());
        if !self.seen.swap(true, Ordering::AcqRel) {
            // The first head moves the watcher from the first-request deadline to the idle
            // one; later requests never wake it.
            self.first_seen.notify_one();
        }
        busy
    }

    /// Completes once the connection has outstayed a deadline: no first request head by
    /// `first_by`, or no request in flight for `idle`.
    pub async fn expired(&self, first_by: Instant, idle: Duration) -> Expired {
        loop {
            if !self.seen.load(Ordering::Acquire) {
                if Instant::now() >= first_by {
                    return Expired::FirstRequest;
                }
                // `notify_one` keeps a permit when nobody waits, so a first head between
                // the load above and this await is not missed.
                tokio::select! {
                    _ = self.first_seen.notified() => {}
                    _ = tokio::time::sleep_until(first_by) => {}
                }
                continue;
            }
            if self.open.load(Ordering::Acquire) > 0 {
                // Busy now: no idle deadline can come sooner than `idle` from here.
                tokio::time::sleep(idle).await;
                continue;
            }
            let since = Duration::from_nanos(self.idle_since.load(Ordering::Acquire));
            let at = self.base + since + idle;
            if Instant::now() < at {
                tokio::time::sleep_until(at).await;
            } else if self.open.load(Ordering::Acquire) == 0 {
                return Expired::Idle;
            }
        }
    }
}

/// Keeps its connection's exchange open; held by the exchange's request and response
/// bodies, the last one dropped ends it.
pub struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Busy {
        activity.open.fetch_add(1, Ordering::AcqRel);
        Busy(activity)
    }
}

impl Clone for Busy {
    fn clone(&self) -> Busy {
        Busy::new(self.0.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // The time is written before the count drops, so a watcher that reads `open == 0`
        // also reads a time at least this late: it cannot see a connection that has just
        // gone idle as idle since some earlier exchange ended.
        let since = Instant::now().saturating_duration_since(self.0.base);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        self.0.idle_since.fetch_max(nanos, Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// A body that keeps its exchange [`Busy`] until it is dropped.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        busy: Busy,
    }
}

impl<B: HttpBody> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Adapts the tower stack to one hyper connection: converts the body (marking its errors
/// as the client's, see [`ClientBodyError`]), tags each request with the connection's
/// [`ConnInfo`], and tells [`Activity`] when each exchange begins and ends. Each request
/// is served by the stack in force when it arrives (see `live`), through this connection's
/// own copy of it (see the module docs).
pub struct ConnService<S> {
    pub service: Current<S>,
    pub info: ConnInfo,
    pub activity: Arc<Activity>,
}

impl<S> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Tracked<Body>>;
    type Error = Infallible;
    type Future = TrackedResponse<Either<S::Future, Oneshot<S, Request<Body>>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = self.activity.begin();
        let mut req = req.map(|b| {
            let body = b.map_err(|e| BoxError::from(ClientBodyError(e.into())));
            Tracked {
                inner: body,
                busy: busy.clone(),
            }
            .boxed_unsync()
        });
        req.extensions_mut().insert(self.info);
        let future = self.service.with(|service| {
            // The gateway's layers are always ready (none holds back a request), so this
            // copy answers at once; a layer that ever says "not yet" gets a fresh copy
            // driven to readiness, as tower's contract asks, instead of a broken call.
            let waker = std::task::Waker::noop();
            match service.poll_ready(&mut Context::from_waker(waker)) {
                Poll::Ready(Ok(())) => Either::Left(service.call(req)),
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => Either::Right(service.clone().oneshot(req)),
            }
        });
        TrackedResponse {
            future,
            busy: Some(busy),
        }
    }
}

pin_project! {
    /// The stack's answer, its body wrapped in [`Tracked`].
    pub struct TrackedResponse<F> {
        #[pin]
        future: F,
        busy: Option<Busy>,
    }
}

impl<F> Future for TrackedResponse<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Tracked<Body>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.future.poll(cx))?;
        let busy = this.busy.take().expect("polled after completion");
        Poll::Ready(Ok(response.map(|inner| Tracked { inner, busy })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_sends_a_head_expires_at_the_first_deadline() {
        let activity = Activity::new();
        let first_by = Instant::now() + Duration::from_secs(10);
        let why = activity.expired(first_by, Duration::from_secs(60)).await;
        assert_eq!(why, Expired::FirstRequest);
        assert_eq!(Instant::now(), first_by);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_exchange_never_expires_and_idleness_counts_from_its_end() {
        let activity = Activity::new();
        let start = Instant::now();
        let busy = activity.begin();
        let watcher = {
            let activity = activity.clone();
            tokio::spawn(async move {
                activity
                    .expired(start + Duration::from_secs(10), Duration::from_secs(60))
                    .await
            })
        };
        // A long download: five minutes with the exchange open, no expiry.
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(!watcher.is_finished());
        let second = busy.clone();
        drop(busy);
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!watcher.is_finished(), "a clone still holds the exchange");
        drop(second);
        let ended = Instant::now();
        assert_eq!(watcher.await.unwrap(), Expired::Idle);
        assert_eq!(Instant::now(), ended + Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_first_exchange_leaves_idle_at_its_end_not_at_the_first_deadline() {
        // The watcher is already waiting on the first-request deadline (an hour away) when
        // the first head arrives; the idle deadline must still count from the exchange's
        // end, not from when the watcher would next have looked.
        let activity = Activity::new();
        let start = Instant::now();
        let watcher = {
            let activity = activity.clone();
            tokio::spawn(async move {
                activity
                    .expired(start + Duration::from_secs(3600), Duration::from_secs(1))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(activity.begin());
        let ended = Instant::now();
        assert_eq!(watcher.await.unwrap(), Expired::Idle);
        assert_eq!(Instant::now(), ended + Duration::from_secs(1));
    }
}
