//! Attempt limits: how many wrong passwords and verification codes the emulator takes
//! before it answers 429 `resource_exhausted`, as CloudBase answers guessing floods.
//!
//! Failures are counted against a [`Subject`]: the account whose password was tried, the
//! phone number or email whose code was tried, and the client address that tried either.
//! A subject with `per_user` (accounts, contacts) or `per_client` (addresses) failures is
//! locked until `lockout` after its last counted failure; a subject's failures are
//! forgotten after `lockout` without one. While locked every attempt is refused, the right
//! secret included, so a flood learns nothing; refused attempts are not counted, so a lock
//! always ends `lockout` after the last guess that was actually checked. The per-account
//! limit stops guessing one password from many addresses, the per-client one stops one
//! address spraying guesses over many accounts.
//!
//! Trade-off: an attacker can keep an account locked by guessing `per_user` times per
//! `lockout` (every lockout scheme lets a guesser deny service); in exchange it gets at
//! most `per_user` guesses per `lockout` at a password, about 480 a day at the defaults,
//! instead of thousands a second. Behind a proxy every caller shares the proxy's address,
//! and so its per-client budget. Memory: one small entry per subject with recent
//! failures, forgotten after `lockout`; the map is swept when it doubles. Time is tokio's,
//! so tests pause and advance it instead of sleeping.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use tokio::time::Instant;

use super::error::ApiError;
use crate::config::AttemptLimits;

/// Who a failed attempt is held against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// An account, by `sub`: guesses at its password.
    User(String),
    /// A phone number or email, by its index key: guesses at the codes sent to it.
    Contact(String),
    /// A peer address: every guess it makes, whichever account it targets.
    Client(IpAddr),
}

impl Subject {
    /// The client subject of a peer, IPv4-mapped IPv6 addresses read as IPv4. A request
    /// without a known peer (the router served without connection info) counts as one
    /// shared client, so the limit still holds.
    pub fn client(peer: Option<IpAddr>) -> Subject {
        Subject::Client(peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ip| ip.to_canonical()))
    }
}

#[derive(Debug, Clone, Copy)]
struct Tally {
    failures: u32,
    last: Instant,
}

/// The failure counters; lives in the emulator's store, under its lock, so checking and
/// counting an attempt is one step and concurrent guesses cannot slip past the limit.
#[derive(Debug)]
pub struct Attempts {
    limits: AttemptLimits,
    tally: HashMap<Subject, Tally>,
    sweep_at: usize,
}

/// The map is swept of forgotten entries when it reaches this size, then at twice the
/// size that survived.
const MIN_SWEEP: usize = 1024;

impl Default for Attempts {
    fn default() -> Self {
        Attempts::new(AttemptLimits::default())
    }
}

impl Attempts {
    pub fn new(limits: AttemptLimits) -> Self {
        Attempts {
            limits,
            tally: HashMap::new(),
            sweep_at: MIN_SWEEP,
        }
    }

    fn max(&self, subject: &Subject) -> u32 {
        match subject {
            Subject::Client(_) => self.limits.per_client,
            Subject::User(_) | Subject::Contact(_) => self.limits.per_user,
        }
    }

    /// Until when `subject` is locked, if it is at `now`.
    fn locked_until(&self, subject: &Subject, now: Instant) -> Option<Instant> {
        let max = self.max(subject);
        let tally = self.tally.get(subject)?;
        let until = tally.last + self.limits.lockout;
        (max > 0 && tally.failures >= max && now < until).then_some(until)
    }

    /// Refuses with 429 `resource_exhausted` (and when to retry) if any of `subjects` is
    /// locked at `now`. Call before checking the secret.
    pub fn check(&self, subjects: &[&Subject], now: Instant) -> Result<(), ApiError> {
        let until = subjects
            .iter()
            .filter_map(|s| self.locked_until(s, now))
            .max();
        match until {
            None => Ok(()),
            Some(until) => Err(ApiError::exhausted(
                "too many failed attempts; try again later",
                until - now,
            )),
        }
    }

    /// Counts one wrong secret against each of `subjects`.
    pub fn failed(&mut self, subjects: &[&Subject], now: Instant) {
        let lockout = self.limits.lockout;
        for subject in subjects {
            if self.max(subject) == 0 {
                continue;
            }
            let tally = self.tally.entry((*subject).clone()).or_insert(Tally {
                failures: 0,
                last: now,
            });
            if now >= tally.last + lockout {
                tally.failures = 0;
            }
            tally.failures = tally.failures.saturating_add(1);
            tally.last = now;
        }
        if self.tally.len() >= self.sweep_at {
            self.tally.retain(|_, t| now < t.last + lockout);
            self.sweep_at = MIN_SWEEP.max(2 * self.tally.len());
        }
    }

    /// Forgets the failures of a user or contact that just proved its secret. A client's
    /// failures stay: one valid account must not reset the budget for spraying others.
    pub fn succeeded(&mut self, subject: &Subject) {
        if !matches!(subject, Subject::Client(_)) {
            self.tally.remove(subject);
        }
    }

    /// How many subjects have recent failures (for tests of the memory bound).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.tally.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::emulator::ErrorKind;

    fn limits(per_user: u32, per_client: u32, secs: u64) -> AttemptLimits {
        AttemptLimits {
            per_user,
            per_client,
            lockout: Duration::from_secs(secs),
        }
    }

    fn user(s: &str) -> Subject {
        Subject::User(s.to_owned())
    }

    #[tokio::test(start_paused = true)]
    async fn a_guessed_out_user_is_locked_for_the_lockout_after_its_last_failure() {
        let mut a = Attempts::new(limits(3, 100, 60));
        let (alice, client) = (user("alice"), Subject::client(None));
        for _ in 0..3 {
            a.check(&[&alice, &client], Instant::now()).unwrap();
            a.failed(&[&alice, &client], Instant::now());
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        let e = a.check(&[&alice, &client], Instant::now()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ResourceExhausted);
        assert_eq!(e.retry_after, Some(Duration::from_secs(50)));
        tokio::time::advance(Duration::from_secs(49)).await;
        assert!(a.check(&[&alice], Instant::now()).is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        a.check(&[&alice], Instant::now()).unwrap();
        // The old failures are forgotten, not resumed: one more is not a lock.
        a.failed(&[&alice], Instant::now());
        a.check(&[&alice], Instant::now()).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn one_client_spraying_many_users_is_locked_by_its_own_budget() {
        let mut a = Attempts::new(limits(3, 5, 60));
        let client = Subject::client(Some("::ffff:10.0.0.7".parse().unwrap()));
        for i in 0..5 {
            let victim = user(&format!("user-{i}"));
            a.check(&[&victim, &client], Instant::now()).unwrap();
            a.failed(&[&victim, &client], Instant::now());
        }
        let fresh = user("never-guessed");
        assert!(a.check(&[&fresh, &client], Instant::now()).is_err());
        let same_client = Subject::client(Some("10.0.0.7".parse().unwrap()));
        assert!(
            a.check(&[&same_client], Instant::now()).is_err(),
            "a mapped address is the same client"
        );
        let other = Subject::client(Some("10.0.0.8".parse().unwrap()));
        a.check(&[&fresh, &other], Instant::now()).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn success_clears_the_user_but_not_the_client_and_zero_means_unlimited() {
        let mut a = Attempts::new(limits(2, 3, 60));
        let (alice, client) = (user("alice"), Subject::client(None));
        a.failed(&[&alice, &client], Instant::now());
        a.succeeded(&alice);
        a.succeeded(&client);
        a.failed(&[&alice, &client], Instant::now());
        a.check(&[&alice], Instant::now()).unwrap();
        a.failed(&[&user("bob"), &client], Instant::now());
        assert!(a.check(&[&client], Instant::now()).is_err());

        let mut off = Attempts::new(limits(0, 0, 60));
        for _ in 0..1000 {
            off.failed(&[&alice, &client], Instant::now());
        }
        off.check(&[&alice, &client], Instant::now()).unwrap();
        assert_eq!(off.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn forgotten_failures_are_swept_so_memory_stays_bounded() {
        let mut a = Attempts::new(limits(5, 0, 60));
        for i in 0..10 * MIN_SWEEP {
            a.failed(&[&user(&i.to_string())], Instant::now());
            if i % MIN_SWEEP == 0 {
                tokio::time::advance(Duration::from_secs(61)).await;
            }
        }
        assert!(a.tracked() <= 2 * MIN_SWEEP, "{}", a.tracked());
    }
}
