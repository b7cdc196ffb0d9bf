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
//! The cost is a mutex and a notify per request on a per-connection struct no other
//! connection touches, and one boxed IO per connection so plain and TLS streams share
//! one code path.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;
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

struct State {
    /// Exchanges in flight: a request's head has arrived and its bodies are not both done.
    open: usize,
    /// Whether any request head has arrived.
    seen: bool,
    /// When `open` last went to zero.
    idle_since: Instant,
}

/// What one connection is doing, as far as its deadlines care.
pub struct Activity {
    state: Mutex<State>,
    changed: Notify,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new(State {
                open: 0,
                seen: false,
                idle_since: Instant::now(),
            }),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A complete request head has arrived: the connection is busy until the returned
    /// guard and all its clones are dropped.
    pub fn begin(self: &Arc<Self>) -> Arc<Busy> {
        {
            let mut s = self.state();
            s.open += 1;
            s.seen = true;
        }
        self.changed.notify_one();
        Arc::new(Busy(self.clone()))
    }

    /// Completes once the connection has outstayed a deadline: no first request head by
    /// `first_by`, or no request in flight for `idle`.
    pub async fn expired(&self, first_by: Instant, idle: Duration) -> Expired {
        loop {
            let deadline = {
                let s = self.state();
                if !s.seen {
                    Some((first_by, Expired::FirstRequest))
                } else if s.open == 0 {
                    Some((s.idle_since + idle, Expired::Idle))
                } else {
                    None
                }
            };
            match deadline {
                Some((at, why)) if Instant::now() >= at => return why,
                // `notify_one` keeps a permit when nobody waits, so a change between the
                // read above and this await is not missed.
                Some((at, _)) => {
                    tokio::select! {
                        _ = self.changed.notified() => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// Held by an exchange's request and response bodies; the last one dropped ends it.
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        {
            let mut s = self.0.state();
            s.open = s.open.saturating_sub(1);
            if s.open == 0 {
                s.idle_since = Instant::now();
            }
        }
        self.0.changed.notify_one();
    }
}

pin_project! {
    /// A body that keeps its exchange [`Busy`] until it is dropped.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        busy: Arc<Busy>,
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
/// is served by the stack in force when it arrives (see `live`).
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
    type Future = TrackedResponse<tower::util::Oneshot<S, Request<Body>>>;

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
        TrackedResponse {
            future: self.service.get().oneshot(req),
            busy: Some(busy),
        }
    }
}

pin_project! {
    /// The stack's answer, its body wrapped in [`Tracked`].
    pub struct TrackedResponse<F> {
        #[pin]
        future: F,
        busy: Option<Arc<Busy>>,
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
}
