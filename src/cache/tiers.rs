//! The two tiers together: what the in-process cache asks the shared (Redis) tier on a
//! local miss, what it writes there, and the purges that reach every replica through it.
//!
//! **Lookup.** Inside the flight, before CloudBase, so the requests for one token on one
//! replica cost one Redis read. A hit becomes a local entry under this replica's own rules
//! (its `ttl`, `negative_ttl` and `stale_if_error`, its identity headers, its group-expiry
//! check) and never outlives the deadline its writer gave it: no CloudBase call. A miss
//! asks CloudBase and writes the answer back with the miss's ticket, in a task of its own,
//! so no request waits for the write: a request for the same token on another replica in
//! the moment between the answer and the write (well under a millisecond next to Redis)
//! asks CloudBase too. Redis failing, slow or skipped by the breaker: CloudBase as without
//! Redis, nothing written. CloudBase's failures are never written. The flight holds its
//! CloudBase slots (`cloudbase.max_in_flight`) while it reads Redis too: at most `timeout`
//! longer, and one bound for both instead of two.
//!
//! **Purges.** [`IdentityCache::purge_token`], [`purge_sub`](IdentityCache::purge_sub)
//! and [`purge_all`](IdentityCache::purge_all) are the one purge API (`POST /cache/purge`
//! and the relay's sign-outs both call them): the local entries go at once, then Redis
//! deletes its own and publishes the purge, which every replica's subscription (this one's
//! too) hands to [`IdentityCache::invalidate`] — local only, so a purge is published once.
//! The caller waits for Redis and for the other replicas' confirmations (purges are rare;
//! the tier bounds this at about a second), so that when it answers, every replica has
//! dropped the entries, or it says which did not ([`Purged::shared`]). A flight on this
//! replica that read Redis between the two steps is undone by this replica's own copy of
//! the message.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::entries::{Entry, Negative};
use super::shared::{Invalidation, Lookup, Reach, SharedEntry, SharedTier, SharedVerdict, Skip};
use super::{token_key, IdentityCache, Inner, Span, TokenKey, Tuning};
use crate::clock::unix_secs;
use cloudbase_auth::CallOptions;

/// What a purge reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Entries this replica dropped.
    pub local: u64,
    /// With `[cache.redis]`: the replicas it reached, or why it did not reach Redis (then
    /// only this replica dropped anything). `None`: no shared tier.
    pub shared: Option<Result<Reach, Skip>>,
}

impl IdentityCache {
    /// Drops the entry of one token, here and (with the shared tier) on every replica.
    pub async fn purge_token(&self, token: &str) -> Purged {
        let key = token_key(token);
        let local = self.inner.drop_key(&key);
        let shared = self.fan_out(|tier| tier.purge_token(&key)).await;
        Purged { local, shared }
    }

    /// Drops every positive entry of user `sub`, here and on every replica.
    pub async fn purge_sub(&self, sub: &str) -> Purged {
        let local = self.inner.drop_sub(sub);
        let shared = self.fan_out(|tier| tier.purge_sub(sub)).await;
        Purged { local, shared }
    }

    /// Drops everything, here and on every replica.
    pub async fn purge_all(&self) -> Purged {
        let local = self.inner.drop_all();
        let shared = self.fan_out(SharedTier::purge_all).await;
        Purged { local, shared }
    }

    /// Carries out a purge published by any replica (the shared tier's subscription
    /// calls this), on this replica only. Returns how many entries went.
    pub fn invalidate(&self, invalidation: Invalidation) -> u64 {
        match invalidation {
            Invalidation::Token(key) => self.inner.drop_key(&key),
            Invalidation::Sub(sub) => self.inner.drop_sub(&sub),
            Invalidation::All => self.inner.drop_all(),
        }
    }

    /// The shared tier, when `[cache.redis]` is on.
    pub fn shared(&self) -> Option<&SharedTier> {
        self.inner.shared.as_ref()
    }

    /// Runs the shared half of a purge, if there is a shared tier.
    async fn fan_out<'a, F>(
        &'a self,
        purge: impl FnOnce(&'a SharedTier) -> F,
    ) -> Option<Result<Reach, Skip>>
    where
        F: std::future::Future<Output = Result<Reach, Skip>>,
    {
        match &self.inner.shared {
            Some(tier) => Some(purge(tier).await),
            None => None,
        }
    }
}

impl Inner {
    /// Every purge bumps the generation first: a flight that began before it does not
    /// store its result.
    fn drop_key(&self, key: &TokenKey) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.remove(key)
    }

    fn drop_sub(&self, sub: &str) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.remove_sub(sub)
    }

    fn drop_all(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.clear()
    }

    /// What a flight concludes for `token` (digest `key`): the shared tier's entry if it
    /// has one, else CloudBase's answer, written back to the tier. `generation`: the local
    /// purge generation when the flight began. `None`: CloudBase failed.
    #[allow(clippy::too_many_arguments)] // one flight's inputs, passed on as they came
    pub(super) async fn resolve(
        &self,
        tuning: &Tuning,
        key: TokenKey,
        token: &str,
        exp: Option<i64>,
        opts: &CallOptions,
        span: Option<&Span>,
        generation: u64,
    ) -> Option<Entry> {
        let Some(tier) = &self.shared else {
            return self
                .fetch(tuning, token, exp, opts, span, false)
                .await
                .map(|a| a.entry);
        };
        let (ticket, seen) = match tier.get(&key).await {
            Lookup::Hit(shared) => match self.entry_for_shared(tuning, &shared) {
                Some(entry) => {
                    if let Some(span) = span {
                        span.set("cloudbase_gateway.shared", "hit");
                    }
                    return Some(entry);
                }
                // Ended between Redis's clock and ours: ask CloudBase, write nothing.
                None => (None, "miss"),
            },
            Lookup::Miss(ticket) => (Some(ticket), "miss"),
            Lookup::Skipped(_) => (None, "skipped"),
        };
        if let Some(span) = span {
            span.set("cloudbase_gateway.shared", seen);
        }
        let answer = self
            .fetch(tuning, token, exp, opts, span, ticket.is_some())
            .await?;
        // A purge on this replica since the flight began may postdate CloudBase's answer.
        // (Redis's ticket catches the purges that reached Redis, from any replica.)
        if let (Some(ticket), Some(shared)) = (ticket, answer.shared) {
            if self.generation.load(Ordering::Acquire) == generation {
                let tier = tier.clone();
                tokio::spawn(async move { tier.put(&key, &shared, ticket).await });
            }
        }
        Some(answer.entry)
    }

    /// The local entry for what the shared tier holds, under this replica's rules and
    /// never past the writer's deadline. `None` if that deadline has come.
    pub(super) fn entry_for_shared(&self, tuning: &Tuning, shared: &SharedEntry) -> Option<Entry> {
        let now = Instant::now();
        let unix_now = self.clock.now();
        let deadline = Duration::from_millis(u64::try_from(shared.expires_at_ms).unwrap_or(0));
        let left = deadline.saturating_sub(unix_now);
        match &shared.verdict {
            SharedVerdict::Negative => {
                let fresh = tuning.settings.negative_ttl.min(left);
                (!fresh.is_zero()).then(|| {
                    Entry::Negative(Negative {
                        fresh_until: now + fresh,
                    })
                })
            }
            SharedVerdict::Positive(claims) => {
                let identity = claims.identity(&tuning.fields, unix_secs(unix_now));
                let (positive, fresh) = self.positive(tuning, identity, left, now, unix_now);
                (!fresh.is_zero()).then_some(Entry::Positive(positive))
            }
        }
    }
}
