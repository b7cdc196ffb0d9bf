//! Per-client-address token buckets for the relay's sign-in, sign-up and verification
//! calls: one [`KeyedLimiter`] per limit, keyed by client address ([`key`]: IPv4 as is,
//! IPv6 by /64). The limiter, its sweep and its bound on keys are shared with the routes'
//! `rate_limit` (see [`crate::limit`]).

use std::net::IpAddr;
use std::time::Duration;

use governor::clock::Clock;

use crate::config::{RelayLimit, RelayLimits, DEFAULT_RATE_LIMIT_MAX_KEYS};
#[cfg(test)]
use crate::limit::SWEEP_EVERY;
pub use crate::limit::{client_key as key, retry_after_secs};
use crate::limit::{Bucket, KeyedLimiter, Outcome, TokioClock};
use crate::metrics::RelayLimitName;

/// The relay's limits. `C` is the clock: tokio's, or governor's fake in tests.
pub struct Limits<C: Clock + Clone = TokioClock> {
    signin: Option<KeyedLimiter<IpAddr, C>>,
    signup: Option<KeyedLimiter<IpAddr, C>>,
    verification: Option<KeyedLimiter<IpAddr, C>>,
}

impl<C: Clock + Clone> std::fmt::Debug for Limits<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("signin", &self.signin.is_some())
            .field("signup", &self.signup.is_some())
            .field("verification", &self.verification.is_some())
            .finish()
    }
}

impl Limits {
    pub fn new(settings: &RelayLimits) -> Limits {
        Limits::with_clock(settings, TokioClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    pub fn with_clock(settings: &RelayLimits, clock: C) -> Limits<C> {
        let bucket = |limit: &RelayLimit| {
            let bucket = Bucket::new(limit.rate?, limit.burst);
            Some(KeyedLimiter::new(
                bucket,
                DEFAULT_RATE_LIMIT_MAX_KEYS,
                clock.clone(),
            ))
        };
        Limits {
            signin: bucket(&settings.signin),
            signup: bucket(&settings.signup),
            verification: bucket(&settings.verification),
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
        match bucket.check(key(client)).outcome {
            Outcome::Allowed { .. } => Ok(()),
            Outcome::Limited { wait } => Err(wait),
        }
    }

    /// Client addresses tracked now, over all limits.
    pub fn tracked(&self) -> usize {
        [&self.signin, &self.signup, &self.verification]
            .into_iter()
            .flatten()
            .map(|b| b.tracked())
            .sum()
    }
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
