//! Keyed token buckets: the machinery behind every rate limit of the gateway — the relay's
//! per-address sign-in limits (`relay`) and the routes' per-user `rate_limit` (the table
//! in [`RouteLimits`], spent by the layer `stack::rate_limit`).
//!
//! One [`KeyedLimiter`] per limit: governor's GCRA (a bucket refilled at a fixed interval,
//! holding at most `burst` tokens, checked with one compare-and-swap on an atomic `u64`)
//! over a sharded map of keys, so no lock is shared by all clients and no timer task runs.
//! Why `governor` rather than a hand-rolled map of buckets: it is the maintained keyed
//! limiter of the Rust ecosystem, its state is one `u64` per key, and it says *when* the
//! next request would pass (`Retry-After`) and how many would pass now (`RateLimit`).
//!
//! Memory is bounded twice. A key whose bucket is full again is indistinguishable from an
//! unseen one, so such keys are swept every [`SWEEP_EVERY`] checks: the map holds only the
//! keys seen within one burst's refill time. And the map never grows past `max_keys`
//! (`store`): once full, a key it does not hold is checked against one *overflow*
//! bucket that all such keys share, until a sweep makes room. The trade-off, chosen over
//! the alternatives: evicting a tracked key would hand it a full bucket (an attacker who
//! can mint keys could reset their own), and refusing untracked keys outright would lock
//! every new user out while the table is full; sharing one bucket keeps the route's load
//! bounded and still serves new users at the route's rate. Each use is counted
//! (`rate_limit_overflow_total`), so an operator sees a `max_keys` too small.
//!
//! Time comes from [`TokioClock`], so tests pause and advance it like every other timer
//! of the gateway.

pub mod headers;
mod route;
mod store;

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::{Quota, RateLimiter};

pub use headers::{RATELIMIT, RATELIMIT_POLICY};
pub use route::{RateKey, RouteLimit, RouteLimits};
use store::BoundedStore;

use crate::config::Rate;

/// Checks between sweeps of keys whose buckets are full again.
pub const SWEEP_EVERY: u64 = 4096;

/// governor's clock over `tokio::time`: the time since the clock was made. Paused and
/// advanced with the runtime's clock in tests; `Instant::now()` otherwise.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// One limit's shape: `burst` tokens at most, one more every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub burst: NonZeroU32,
    pub interval: Duration,
}

impl Bucket {
    /// `rate` with a bucket of `burst`. The interval is at least 1/u32::MAX of a second,
    /// never zero.
    pub fn new(rate: Rate, burst: NonZeroU32) -> Bucket {
        Bucket {
            burst,
            interval: rate.interval(),
        }
    }

    /// Time for an empty bucket to fill.
    pub fn refill(&self) -> Duration {
        self.interval.saturating_mul(self.burst.get())
    }
}

/// What one check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Passed; `remaining` more would pass right now.
    Allowed { remaining: u32 },
    /// Refused; the next request would pass after `wait`.
    Limited { wait: Duration },
}

/// A check's outcome, and whether the key had to use the shared overflow bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub outcome: Outcome,
    pub overflowed: bool,
}

/// Token buckets by key `K` (see the module docs). `C` is the clock: [`TokioClock`], or
/// governor's fake in tests.
pub struct KeyedLimiter<K: Hash + Eq + Clone, C: Clock = TokioClock> {
    buckets: RateLimiter<Option<K>, BoundedStore<K>, C, StateInformationMiddleware>,
    store: BoundedStore<K>,
    bucket: Bucket,
    clock: C,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> KeyedLimiter<K, C> {
    /// At most `max_keys` keys tracked at once (at least 1).
    pub fn new(bucket: Bucket, max_keys: usize, clock: C) -> Self {
        let quota = Quota::with_period(bucket.interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(bucket.burst);
        let store = BoundedStore::new(max_keys.max(1));
        KeyedLimiter {
            buckets: RateLimiter::<_, _, _, NoOpMiddleware<C::Instant>>::new(
                quota,
                store.clone(),
                clock.clone(),
            )
            .with_middleware::<StateInformationMiddleware>(),
            store,
            bucket,
            clock,
            checks: AtomicU64::new(0),
        }
    }

    /// Spends one token of `key`'s bucket.
    pub fn check(&self, key: K) -> Checked {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        let slot = Some(key);
        let overflowed = !self.store.admits(&slot);
        let slot = if overflowed { None } else { slot };
        let outcome = match self.buckets.check_key(&slot) {
            Ok(state) => Outcome::Allowed {
                remaining: state.remaining_burst_capacity(),
            },
            Err(not_until) => Outcome::Limited {
                wait: not_until.wait_time_from(self.clock.now()),
            },
        };
        Checked {
            outcome,
            overflowed,
        }
    }

    /// Forgets every key whose bucket is full again.
    pub fn sweep(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }

    /// Keys tracked now (the overflow bucket included once used).
    pub fn tracked(&self) -> usize {
        self.store.len()
    }

    /// The limit's shape.
    pub fn bucket(&self) -> Bucket {
        self.bucket
    }
}

/// The key of a client address: IPv4 (also when mapped into IPv6) as is, IPv6 by its /64,
/// since one subscriber usually holds a whole /64 and could otherwise take a fresh bucket
/// per address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// Whole seconds, rounded up: never announce a wait shorter than the real one.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Whole seconds to announce in `Retry-After` for a wait: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    ceil_secs(wait).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateUnit;
    use governor::clock::FakeRelativeClock;

    fn bucket(count: u32, per: RateUnit, burst: u32) -> Bucket {
        let rate = Rate {
            count: NonZeroU32::new(count).unwrap(),
            per,
        };
        Bucket::new(rate, NonZeroU32::new(burst).unwrap())
    }

    #[test]
    fn remaining_counts_down_and_the_wait_is_one_interval() {
        let clock = FakeRelativeClock::default();
        let l = KeyedLimiter::new(bucket(10, RateUnit::Minute, 3), 100, clock.clone());
        let remaining = |c: Checked| match c.outcome {
            Outcome::Allowed { remaining } => remaining,
            Outcome::Limited { .. } => panic!("limited"),
        };
        assert_eq!(remaining(l.check("a")), 2);
        assert_eq!(remaining(l.check("a")), 1);
        assert_eq!(remaining(l.check("a")), 0);
        assert_eq!(
            l.check("a").outcome,
            Outcome::Limited {
                wait: Duration::from_secs(6)
            }
        );
        clock.advance(Duration::from_secs(6));
        assert_eq!(remaining(l.check("a")), 0, "one token back, spent");
    }

    #[test]
    fn a_full_table_sends_unseen_keys_to_one_shared_bucket_and_keeps_tracked_keys_exact() {
        let clock = FakeRelativeClock::default();
        let l = KeyedLimiter::new(bucket(1, RateUnit::Minute, 2), 2, clock.clone());
        assert!(!l.check("a").overflowed);
        assert!(!l.check("b").overflowed);
        // "c" and "d" find the table full: they share the overflow bucket of 2.
        let c = l.check("c");
        assert!(c.overflowed);
        assert!(matches!(c.outcome, Outcome::Allowed { remaining: 1 }));
        assert!(matches!(l.check("d").outcome, Outcome::Allowed { .. }));
        assert!(matches!(l.check("c").outcome, Outcome::Limited { .. }));
        // A tracked key keeps its own bucket: "a" has one token left.
        let a = l.check("a");
        assert!(!a.overflowed);
        assert!(matches!(a.outcome, Outcome::Allowed { remaining: 0 }));
        assert!(l.tracked() <= 3, "two keys and the overflow bucket");
        // Once the buckets refill (governor keeps a key one interval longer), a sweep
        // makes room and new keys are tracked again.
        clock.advance(Duration::from_secs(180));
        l.sweep();
        assert_eq!(l.tracked(), 0);
        assert!(!l.check("c").overflowed);
    }

    #[test]
    fn retry_after_is_rounded_up_and_never_zero() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(6001)), 7);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }
}
