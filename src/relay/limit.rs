//! Per-client-address token buckets for the relay's sign-in, sign-up and verification
//! calls.
//!
//! One keyed GCRA limiter per limit (`governor`): a bucket per client address, refilled at
//! the configured rate and holding at most the burst, checked with one atomic
//! compare-and-swap on a sharded map — no lock shared by all clients, and no timer task.
//! Why `governor` rather than a hand-rolled map of buckets: it is the maintained keyed
//! limiter of the Rust ecosystem, its GCRA state is one `u64` per key, it answers *when*
//! the next request would pass (our `Retry-After`), and the per-route limits to come
//! (`routes[].rate_limit`) can share the same machinery.
//!
//! Keys: IPv4 addresses as they are; IPv6 addresses by their /64 prefix, since one
//! subscriber usually holds a whole /64 and could otherwise take a fresh bucket per
//! address. An address whose bucket is full is indistinguishable from an unseen one, so
//! such keys are swept every [`SWEEP_EVERY`] checks; the map holds only the clients seen
//! within one burst's refill time.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::admin::metrics::RelayLimitName;
use crate::config::{RelayLimit, RelayLimits};

/// Checks between sweeps of keys whose buckets are full again.
const SWEEP_EVERY: u64 = 4096;

type Bucket<C> =
    RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The relay's limits. `C` is the clock: governor's monotonic default, or a fake in tests.
pub struct Limits<C: Clock + Clone = DefaultClock> {
    signin: Option<Bucket<C>>,
    signup: Option<Bucket<C>>,
    verification: Option<Bucket<C>>,
    clock: C,
    checks: AtomicU64,
}

impl Limits {
    pub fn new(settings: &RelayLimits) -> Limits {
        Limits::with_clock(settings, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    pub fn with_clock(settings: &RelayLimits, clock: C) -> Limits<C> {
        let bucket = |limit: &RelayLimit| {
            let rate = limit.rate?;
            // `interval` is at least 1/u32::MAX of a second, never zero, so a quota exists.
            let quota = Quota::with_period(rate.interval())?.allow_burst(limit.burst);
            Some(RateLimiter::dashmap_with_clock(quota, clock.clone()))
        };
        Limits {
            signin: bucket(&settings.signin),
            signup: bucket(&settings.signup),
            verification: bucket(&settings.verification),
            clock: clock.clone(),
            checks: AtomicU64::new(0),
        }
    }

    /// Spends one token of `client`'s bucket for `limit`; `Err` holds how long until one
    /// is back.
    pub fn check(&self, limit: RelayLimitName, client: IpAddr) -> Result<(), Duration> {
        let bucket = match limit {
            RelayLimitName::Signin => &self.signin,
            RelayLimitName::Signup => &self.signup,
            RelayLimitName::Verification => &self.verification,
        };
        let Some(bucket) = bucket else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            for b in [&self.signin, &self.signup, &self.verification]
                .into_iter()
                .flatten()
            {
                b.retain_recent();
                b.shrink_to_fit();
            }
        }
        bucket
            .check_key(&key(client))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Client addresses tracked now, over all limits.
    pub fn tracked(&self) -> usize {
        [&self.signin, &self.signup, &self.verification]
            .into_iter()
            .flatten()
            .map(|b| b.len())
            .sum()
    }
}

/// The bucket key of a client address: IPv4 (also when mapped into IPv6) as is, IPv6 by
/// its /64.
pub fn key(ip: IpAddr) -> IpAddr {
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

/// Whole seconds to announce in `Retry-After` for a wait: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Rate, RateUnit};
    use governor::clock::FakeRelativeClock;
    use std::num::NonZeroU32;

    fn limit(count: u32, per: RateUnit, burst: u32) -> RelayLimit {
        RelayLimit {
            rate: Some(Rate {
                count: NonZeroU32::new(count).unwrap(),
                per,
            }),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn limits(clock: &FakeRelativeClock) -> Limits<FakeRelativeClock> {
        let settings = RelayLimits {
            signin: limit(10, RateUnit::Minute, 3),
            signup: RelayLimit {
                rate: None,
                burst: NonZeroU32::MIN,
            },
            verification: limit(1, RateUnit::Hour, 1),
        };
        Limits::with_clock(&settings, clock.clone())
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 7));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 9));

    #[test]
    fn a_burst_passes_then_one_request_per_interval() {
        let clock = FakeRelativeClock::default();
        let l = limits(&clock);
        for i in 0..3 {
            assert_eq!(l.check(RelayLimitName::Signin, A), Ok(()), "burst {i}");
        }
        let wait = l.check(RelayLimitName::Signin, A).unwrap_err();
        assert_eq!(wait, Duration::from_secs(6), "10/m: one token every 6 s");
        assert_eq!(retry_after_secs(wait), 6);
        clock.advance(Duration::from_millis(5_999));
        assert_eq!(
            retry_after_secs(l.check(RelayLimitName::Signin, A).unwrap_err()),
            1,
            "1 ms to go is announced as 1 s, never 0"
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(l.check(RelayLimitName::Signin, A), Ok(()));
        assert!(l.check(RelayLimitName::Signin, A).is_err());
    }

    #[test]
    fn each_address_and_each_limit_has_its_own_bucket() {
        let clock = FakeRelativeClock::default();
        let l = limits(&clock);
        for _ in 0..3 {
            l.check(RelayLimitName::Signin, A).unwrap();
        }
        assert!(l.check(RelayLimitName::Signin, A).is_err());
        assert_eq!(l.check(RelayLimitName::Signin, B), Ok(()), "another client");
        assert_eq!(
            l.check(RelayLimitName::Verification, A),
            Ok(()),
            "another limit"
        );
        let wait = l.check(RelayLimitName::Verification, A).unwrap_err();
        assert_eq!(wait, Duration::from_secs(3600));
        for _ in 0..100 {
            assert_eq!(l.check(RelayLimitName::Signup, A), Ok(()), "\"off\"");
        }
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64_and_mapped_ipv4_as_ipv4() {
        let clock = FakeRelativeClock::default();
        let l = limits(&clock);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
            l.check(RelayLimitName::Signin, ip(host)).unwrap();
        }
        assert!(
            l.check(RelayLimitName::Signin, ip("2001:db8:1:2:dead:beef::9"))
                .is_err(),
            "one /64, one bucket"
        );
        assert_eq!(
            l.check(RelayLimitName::Signin, ip("2001:db8:1:3::1")),
            Ok(()),
            "the next /64 is another subscriber"
        );
        assert_eq!(key(ip("::ffff:203.0.113.7")), A);
    }

    #[test]
    fn clients_whose_buckets_refilled_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let l = limits(&clock);
        for i in 0..100u8 {
            let client = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, i));
            l.check(RelayLimitName::Signin, client).unwrap();
        }
        assert_eq!(l.tracked(), 100);
        clock.advance(Duration::from_secs(60));
        for _ in 0..SWEEP_EVERY {
            l.check(RelayLimitName::Signin, A).unwrap_or(());
            clock.advance(Duration::from_secs(6));
        }
        assert!(l.tracked() <= 1, "{} still tracked", l.tracked());
    }
}
