//! The background listener for purges published by any replica.
//!
//! Redis pub/sub delivers at most once: a message published while a subscriber is
//! disconnected is gone. So every time the subscription is (re)established the callback
//! first gets [`Invalidation::All`]: the replica drops its local cache rather than keep
//! serving a token another replica purged meanwhile. That costs one CloudBase call pair per
//! active token after a Redis blip (fewer when the shared tier answers them), and it is the
//! price of not running a home-made delivery protocol; Redis streams would replay missed
//! purges but need a consumer position per replica and trimming. The first subscription at
//! start sends `All` too (the cache is all but empty then), which also tells a caller that
//! purges published from now on will arrive.
//!
//! A connection that dies silently (a network partition without a reset) is found by a
//! `PING` every [`PING_EVERY`]; reconnection backs off from [`RETRY_MIN`] to [`RETRY_MAX`].
//!
//! Each purge is confirmed once the callback has carried it out (the purging replica waits
//! for that, see the module above), from a task of its own so the next message is not held
//! up by the round trip.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};

use super::keys::{parse_message, Invalidation};
use super::{Inner, CONNECT_TIMEOUT};
use crate::metrics::RedisInvalidation;

/// How often an idle subscription is checked, and how long its `PING` may take.
pub const PING_EVERY: Duration = Duration::from_secs(1);
pub const RETRY_MIN: Duration = Duration::from_millis(50);
pub const RETRY_MAX: Duration = Duration::from_secs(2);

/// Called with every invalidation, on the subscriber's task: keep it short (a local purge).
pub type OnInvalidation = Arc<dyn Fn(Invalidation) + Send + Sync>;

/// The running listener; dropping it stops listening.
pub struct Subscription {
    task: tokio::task::JoinHandle<()>,
    inner: Arc<Inner>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
        self.inner.subscribing.store(false, Ordering::Release);
        self.inner.set_subscribed(false);
    }
}

pub(super) fn start(inner: Arc<Inner>, on: OnInvalidation) -> Subscription {
    inner.subscribing.store(true, Ordering::Release);
    let task = tokio::spawn(run(inner.clone(), on));
    Subscription { task, inner }
}

async fn run(inner: Arc<Inner>, on: OnInvalidation) {
    let channel = inner.keys.channel();
    let mut backoff = RETRY_MIN;
    let mut was_subscribed = false;
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, subscribe(&inner.client, &channel)).await {
            Ok(Ok((mut sink, mut stream))) => {
                backoff = RETRY_MIN;
                inner.set_subscribed(true);
                if was_subscribed {
                    tracing::info!("Redis subscription restored; dropping the local cache");
                }
                was_subscribed = true;
                deliver(&inner, &on, Invalidation::All);
                listen(&inner, &on, &mut sink, &mut stream).await;
                inner.set_subscribed(false);
                tracing::warn!(
                    "Redis subscription lost; purges from other replicas are missed until it is back"
                );
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to Redis"),
            Err(_) => tracing::debug!("subscribing to Redis timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> redis::RedisResult<(PubSubSink, PubSubStream)> {
    let (mut sink, stream) = client.get_async_pubsub().await?.split();
    sink.subscribe(channel).await?;
    Ok((sink, stream))
}

/// Delivers messages until the connection ends or stops answering `PING`.
async fn listen(
    inner: &Arc<Inner>,
    on: &OnInvalidation,
    sink: &mut PubSubSink,
    stream: &mut PubSubStream,
) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(m) => {
                    let (number, invalidation) = parse_message(m.get_payload_bytes());
                    deliver(inner, on, invalidation);
                    if let Some(number) = number {
                        let inner = inner.clone();
                        tokio::spawn(async move { inner.confirm(number).await });
                    }
                }
                None => return,
            },
            _ = ping.tick() => {
                let pong = tokio::time::timeout(PING_EVERY, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}

fn deliver(inner: &Inner, on: &OnInvalidation, invalidation: Invalidation) {
    inner.metrics.redis_invalidation(match invalidation {
        Invalidation::Token(_) => RedisInvalidation::Token,
        Invalidation::Sub(_) => RedisInvalidation::Sub,
        Invalidation::All => RedisInvalidation::All,
    });
    on(invalidation);
}
