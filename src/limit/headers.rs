//! The rate-limit fields of draft-ietf-httpapi-ratelimit-headers-10 ("RateLimit header
//! fields for HTTP", September 2025): `RateLimit-Policy` names a quota policy and its
//! shape, `RateLimit` the state of the client's quota under it. Both are Structured Field
//! Lists (RFC 9651) of a String item (the policy's name) with Integer parameters:
//!
//! ```text
//! RateLimit-Policy: "gateway";q=50;w=30    q: quota units, w: window in seconds
//! RateLimit: "gateway";r=12;t=18           r: units remaining, t: seconds until reset
//! ```
//!
//! A token bucket is not a fixed window, so it is described by the guarantee a client
//! needs: `q` is the burst (the most that passes at once) and `w` the time an empty
//! bucket takes to fill again, rounded up to whole seconds. A client that spends at most
//! `q` per `w` is never refused; the real rate is the same or (when the refill time is not
//! a whole number of seconds) a little higher. `r` is what would pass right now; `t` is
//! when the bucket is full again — exact on a refusal, an upper bound otherwise (the
//! bucket's fractional token is not visible), never early. The partition key (`pk`) is
//! not sent: it would echo the user's id or address for nothing the client can use.
//!
//! The gateway's items are appended, so an upstream's own policies stay next to them.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{ceil_secs, Bucket};

pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The policy's name in both fields.
const POLICY: &str = "\"gateway\"";

/// `RateLimit-Policy` for `bucket`; made once per route.
pub fn policy(bucket: &Bucket) -> HeaderValue {
    let window = ceil_secs(bucket.refill()).max(1);
    let value = format!("{POLICY};q={};w={window}", bucket.burst);
    HeaderValue::from_str(&value).expect("digits and a quoted token are a header value")
}

/// `RateLimit` after a request passed with `remaining` tokens left.
pub fn after_pass(bucket: &Bucket, remaining: u32) -> HeaderValue {
    let missing = bucket.burst.get().saturating_sub(remaining);
    state(
        remaining,
        ceil_secs(bucket.interval.saturating_mul(missing)),
    )
}

/// `RateLimit` after a request was refused; the next passes after `wait`, and the rest of
/// the burst one interval apart after that.
pub fn after_refusal(bucket: &Bucket, wait: Duration) -> HeaderValue {
    let rest = bucket.interval.saturating_mul(bucket.burst.get() - 1);
    state(0, ceil_secs(wait.saturating_add(rest)))
}

fn state(remaining: u32, reset: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("{POLICY};r={remaining};t={reset}"))
        .expect("digits and a quoted token are a header value")
}

/// Appends the gateway's policy and state to `headers`.
pub fn append(headers: &mut HeaderMap, policy: &HeaderValue, state: HeaderValue) {
    headers.append(RATELIMIT_POLICY.clone(), policy.clone());
    headers.append(RATELIMIT.clone(), state);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn bucket(burst: u32, interval_ms: u64) -> Bucket {
        Bucket {
            burst: NonZeroU32::new(burst).unwrap(),
            interval: Duration::from_millis(interval_ms),
        }
    }

    #[test]
    fn the_policy_states_the_burst_and_the_time_to_refill_it() {
        // 10/m, burst 5: 5 at once, full again 30 s after it was emptied.
        assert_eq!(policy(&bucket(5, 6_000)), "\"gateway\";q=5;w=30");
        // 100/s, burst 50: 0.5 s is announced as 1 s, never less.
        assert_eq!(policy(&bucket(50, 10)), "\"gateway\";q=50;w=1");
    }

    #[test]
    fn the_state_counts_what_is_left_and_never_announces_the_reset_early() {
        let b = bucket(5, 6_000);
        assert_eq!(after_pass(&b, 4), "\"gateway\";r=4;t=6");
        assert_eq!(after_pass(&b, 0), "\"gateway\";r=0;t=30");
        // Refused 1.5 s before the next token: that, then 4 more intervals.
        assert_eq!(
            after_refusal(&b, Duration::from_millis(1_500)),
            "\"gateway\";r=0;t=26"
        );
    }

    #[test]
    fn items_are_appended_next_to_the_upstreams_own() {
        let mut h = HeaderMap::new();
        h.insert(&RATELIMIT, HeaderValue::from_static("\"upstream\";r=1"));
        let b = bucket(1, 1_000);
        append(&mut h, &policy(&b), after_pass(&b, 0));
        let all: Vec<_> = h.get_all(&RATELIMIT).iter().collect();
        assert_eq!(all, ["\"upstream\";r=1", "\"gateway\";r=0;t=1"]);
        assert_eq!(h[&RATELIMIT_POLICY], "\"gateway\";q=1;w=1");
    }
}
