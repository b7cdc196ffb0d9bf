//! A circuit breaker, in front of Redis (the shared tier) and of CloudBase: after
//! `failures` consecutive failed calls, the service is not asked for `cool_down`; then one
//! call goes through as a probe, and its outcome closes the breaker or opens it for another
//! cool-down.
//!
//! Without it, a Redis that is down or frozen would add the whole `timeout` to every local
//! miss (each waits for its own timeout before going to CloudBase), and a CloudBase that
//! fails would be asked again by every request whose entry has expired — thousands of
//! calls a second against a service that is already failing, with each caller waiting for
//! its own error or timeout. Open, a lookup costs one uncontended mutex. One probe at a
//! time, so a service that comes back is not met by every waiting request at once. Time is
//! `tokio::time`, so the tests pause it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// Open, and the one probe is out.
    Probing,
}

/// A change worth a log line and a gauge update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cool_down: Duration,
}

/// Leave to make one call. Report its outcome with [`Permit::succeeded`] or
/// [`Permit::failed`]; a probe dropped without an outcome (its caller was cancelled) frees
/// the probe slot for the next call.
#[must_use]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Breaker {
    /// `threshold` consecutive failures open it (at least 1) for `cool_down`.
    pub fn new(threshold: u32, cool_down: Duration) -> Breaker {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cool_down,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit to call Redis, or `None` while the breaker is open (or its probe is out).
    pub fn admit(&self) -> Option<Permit<'_>> {
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() >= until => {
                *state = State::Probing;
                true
            }
            State::Open { .. } | State::Probing => return None,
        };
        Some(Permit {
            breaker: self,
            probe,
            settled: false,
        })
    }

    /// Whether calls go through (not open, no probe pending).
    pub fn is_closed(&self) -> bool {
        matches!(*self.lock(), State::Closed { .. })
    }

    fn success(&self) -> Option<Transition> {
        let mut state = self.lock();
        let was_closed = matches!(*state, State::Closed { .. });
        *state = State::Closed { failures: 0 };
        (!was_closed).then_some(Transition::Closed)
    }

    fn failure(&self, probe: bool) -> Option<Transition> {
        let mut state = self.lock();
        match *state {
            State::Closed { failures } if failures + 1 >= self.threshold => {
                *state = State::Open {
                    until: Instant::now() + self.cool_down,
                };
                Some(Transition::Opened)
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                None
            }
            State::Probing if probe => {
                *state = State::Open {
                    until: Instant::now() + self.cool_down,
                };
                None
            }
            // A call admitted before the breaker opened, failing late: already counted.
            State::Open { .. } | State::Probing => None,
        }
    }
}

impl Permit<'_> {
    pub fn succeeded(mut self) -> Option<Transition> {
        self.settled = true;
        self.breaker.success()
    }

    pub fn failed(mut self) -> Option<Transition> {
        self.settled = true;
        self.breaker.failure(self.probe)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut state = self.breaker.lock();
            if *state == State::Probing {
                *state = State::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL_DOWN: Duration = Duration::from_secs(5);

    fn fail_n(b: &Breaker, n: u32) -> Vec<Option<Transition>> {
        (0..n)
            .map(|_| b.admit().expect("closed").failed())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn n_consecutive_failures_open_it_and_calls_are_skipped_until_the_cool_down_ends() {
        let b = Breaker::new(3, COOL_DOWN);
        assert_eq!(fail_n(&b, 3), [None, None, Some(Transition::Opened)]);
        assert!(!b.is_closed());
        assert!(b.admit().is_none(), "open: Redis is not asked");
        tokio::time::advance(COOL_DOWN - Duration::from_millis(1)).await;
        assert!(b.admit().is_none(), "still cooling down");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.admit().is_some(), "the cool-down is over: a probe goes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_between_failures_resets_the_count() {
        let b = Breaker::new(3, COOL_DOWN);
        fail_n(&b, 2);
        assert_eq!(b.admit().unwrap().succeeded(), None, "was closed already");
        assert_eq!(fail_n(&b, 2), [None, None]);
        assert!(b.is_closed(), "two in a row is not three");
    }

    #[tokio::test(start_paused = true)]
    async fn only_one_probe_goes_out_and_its_success_closes_the_breaker() {
        let b = Breaker::new(1, COOL_DOWN);
        fail_n(&b, 1);
        tokio::time::advance(COOL_DOWN).await;
        let probe = b.admit().expect("probe");
        assert!(b.admit().is_none(), "a second caller waits for the probe");
        assert_eq!(probe.succeeded(), Some(Transition::Closed));
        assert!(b.is_closed());
        assert!(b.admit().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_for_another_whole_cool_down() {
        let b = Breaker::new(1, COOL_DOWN);
        fail_n(&b, 1);
        tokio::time::advance(COOL_DOWN).await;
        assert_eq!(b.admit().expect("probe").failed(), None, "it was open");
        tokio::time::advance(COOL_DOWN - Duration::from_millis(1)).await;
        assert!(b.admit().is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.admit().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_without_an_outcome_frees_the_slot_at_once() {
        let b = Breaker::new(1, COOL_DOWN);
        fail_n(&b, 1);
        tokio::time::advance(COOL_DOWN).await;
        drop(b.admit().expect("probe"));
        assert!(b.admit().is_some(), "the next caller probes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_failure_of_a_call_admitted_before_opening_does_not_extend_the_cool_down() {
        let b = Breaker::new(1, COOL_DOWN);
        let early = b.admit().unwrap();
        fail_n(&b, 1);
        tokio::time::advance(COOL_DOWN / 2).await;
        assert_eq!(early.failed(), None);
        tokio::time::advance(COOL_DOWN / 2).await;
        assert!(
            b.admit().is_some(),
            "cool-down counted from the opening failure"
        );
    }
}
