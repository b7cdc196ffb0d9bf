//! Unix time, from a clock tests can control.
//!
//! Cache freshness runs on `tokio::time::Instant`, which tests pause and advance; a
//! token's `exp` and a group's `expires_at` are Unix times. [`UnixClock`] reads Unix time
//! from the system clock in production, or, in tests, as a fixed Unix time plus the tokio
//! time elapsed since, so a paused test can store an entry at x.9 s and step to `exp` +
//! 1 ms. Unix time is kept to the nanosecond: lifetimes computed in whole seconds let an
//! entry outlive its token's `exp` by up to a second. The trade-off: production reads the
//! system clock on every check against `exp` (a vDSO call, tens of nanoseconds) instead of
//! deriving it from the monotonic clock once, so a stepped wall clock moves those checks
//! with it — as it must, since `exp` is wall-clock time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Where Unix time comes from. Cheap to clone.
#[derive(Debug, Clone)]
pub enum UnixClock {
    /// The system clock.
    System,
    /// Unix time following tokio time (see [`TokioUnixClock`]).
    Tokio(Arc<TokioUnixClock>),
}

/// Unix time that advances with tokio time, so paused tests move it with
/// `tokio::time::advance`, and can step it like a corrected wall clock.
#[derive(Debug)]
pub struct TokioUnixClock {
    start: Instant,
    unix_at_start: Duration,
    stepped_nanos: AtomicU64,
}

impl TokioUnixClock {
    /// Moves Unix time forward by `by` without moving tokio time, as an NTP step or a
    /// resumed VM moves the system clock.
    pub fn step(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.stepped_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl UnixClock {
    /// A clock that reads `unix_now` now and follows tokio time from here on.
    pub fn following_tokio(unix_now: Duration) -> Arc<TokioUnixClock> {
        Arc::new(TokioUnixClock {
            start: Instant::now(),
            unix_at_start: unix_now,
            stepped_nanos: AtomicU64::new(0),
        })
    }

    /// Time since the Unix epoch.
    pub fn now(&self) -> Duration {
        match self {
            UnixClock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            UnixClock::Tokio(t) => {
                t.unix_at_start
                    + t.start.elapsed()
                    + Duration::from_nanos(t.stepped_nanos.load(Ordering::Relaxed))
            }
        }
    }

    /// Whole Unix seconds now (rounded down).
    pub fn now_secs(&self) -> i64 {
        unix_secs(self.now())
    }

    /// Whether Unix second `at` (an `exp`, an `expires_at`) has come: a token is valid
    /// strictly before its `exp` (RFC 7519 §4.1.4).
    pub fn has_reached(&self, at: i64) -> bool {
        remaining(at, self.now()).is_zero()
    }
}

/// Time left from `now` until Unix second `at`; zero once it has come.
pub fn remaining(at: i64, now: Duration) -> Duration {
    u64::try_from(at).map_or(Duration::ZERO, |at| {
        Duration::from_secs(at).saturating_sub(now)
    })
}

/// Whole seconds of `d` since the epoch, rounded down.
pub fn unix_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_time_is_exact_to_the_nanosecond() {
        let now = Duration::from_millis(100_900);
        assert_eq!(remaining(102, now), Duration::from_millis(1_100));
        assert_eq!(remaining(100, now), Duration::ZERO);
        assert_eq!(remaining(-5, now), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_follows_paused_time() {
        let tokio_clock = UnixClock::following_tokio(Duration::from_millis(1_000_900));
        let clock = UnixClock::Tokio(tokio_clock.clone());
        assert_eq!(clock.now_secs(), 1_000);
        assert!(!clock.has_reached(1_001));
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(!clock.has_reached(1_001), "1000.999 is before 1001");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(clock.has_reached(1_001), "exp itself is too late");
        tokio_clock.step(Duration::from_secs(10));
        assert_eq!(clock.now_secs(), 1_011);
    }
}
