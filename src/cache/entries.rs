//! Where validation results are kept: two moka caches, one for tokens CloudBase vouched for
//! (positive entries), one for tokens it refused (negative entries).
//!
//! **Apart, so floods stay in their lane.** A flood of made-up tokens makes only negative
//! entries, which compete with each other for the negative cache's room; a signed-in
//! user's entry is in the other cache and cannot be evicted by them. Both caches use
//! moka's TinyLFU admission, so under pressure a token asked for often (a user at work, a
//! revoked token a client keeps retrying) outlives one-off tokens.
//!
//! **Bounds.** The positive cache is bounded in bytes by `max_memory` and in count by
//! `max_entries`, with moka's one weighted capacity: an entry weighs its estimated size
//! ([`estimated_entry_bytes`]) but never less than `max_memory / max_entries`, and the
//! capacity is `max_entries` times that floor (at most `max_memory`), so whichever bound is
//! tighter holds. The negative cache holds at most `max_entries`; its entries are all one size
//! ([`NEGATIVE_ENTRY_BYTES`]), which bounds its bytes too.
//!
//! **Two clocks.** moka drops an entry when its per-entry deadline ([`Expiry`]) passes: the
//! end of the `stale_if_error` window for a positive entry, of `negative_ttl` for a negative
//! one. moka measures that on its own clock (`std::time::Instant`), not tokio's, so its
//! expiry only frees memory: whether an entry may still be *served* is decided by the
//! caller on every hit, against `tokio::time` and the Unix clock. In production the two
//! clocks are the same clock; in a paused-time test moka keeps entries past their time and
//! the freshness rules still decide, which is what the tests pin.
//!
//! **What moka costs.** A moka read (hash, lock-free map probe, key and entry behind their
//! own pointers, expiry check, access recorded for the eviction policy) among a million
//! entries costs two to three times a read of the hand-written sharded store this
//! replaced, which never recorded accesses (`cargo bench --bench cache_hot_path --
//! map/1M`); in a whole hit that is 13–18% more, about 0.3 µs (`-- hit/1M` next to
//! `-- hit_old_store/1M`): the price of not owning a concurrent cache, in a request that
//! costs about 50 µs of CPU. `moka::sync`, not `moka::future`: nothing on a hit awaits, and
//! its read is the cheaper one.
//!
//! **Purge by user** looks the user's tokens up in an index ([`ByUser`]) kept beside the
//! positive cache: a purge costs the user's few entries, not a scan of all of them (a scan
//! of moka took 0.8–1 s per million entries, and purges by user run on sign-outs, not only
//! on an operator's call). The index costs every positive insert and removal a short lock,
//! and about 130 bytes per entry, counted in the entry's weight.
//!
//! Keys are SHA-256 digests; the caches hash their first eight bytes with a per-process
//! SipHash key, so nobody can aim tokens at one bucket.

use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use moka::sync::Cache;
use moka::Expiry;
use tokio::time::Instant;

use super::{Identity, SharedIdentity, TokenKey};
use crate::config::CacheSettings;

/// CloudBase vouched for the token.
#[derive(Debug, Clone)]
pub(super) struct Positive {
    pub identity: SharedIdentity,
    /// Served as a hit until then.
    pub fresh_until: Instant,
    /// Served under `stale_if_error` until then, and kept as long.
    pub stale_until: Instant,
    /// Tells this entry from a later one under the same key in [`ByUser`]; set when stored.
    pub stamp: u64,
}

/// CloudBase refused the token.
#[derive(Debug, Clone, Copy)]
pub(super) struct Negative {
    pub fresh_until: Instant,
}

/// What the cache holds for a token.
#[derive(Debug, Clone)]
pub(super) enum Entry {
    Positive(Positive),
    Negative(Negative),
}

impl Entry {
    pub fn fresh_until(&self) -> Instant {
        match self {
            Entry::Positive(p) => p.fresh_until,
            Entry::Negative(n) => n.fresh_until,
        }
    }
}

/// When an entry is of no more use, so moka may drop it.
trait Deadline {
    fn keep_until(&self) -> Instant;
}

impl Deadline for Positive {
    fn keep_until(&self) -> Instant {
        self.stale_until
    }
}

impl Deadline for Negative {
    fn keep_until(&self) -> Instant {
        self.fresh_until
    }
}

/// moka's per-entry expiry: each entry's own deadline, read as time left on the cache's
/// clock when stored. A hit never extends it (`expire_after_read` keeps moka's default).
struct UntilDeadline;

impl<V: Deadline> Expiry<TokenKey, V> for UntilDeadline {
    fn expire_after_create(
        &self,
        _: &TokenKey,
        value: &V,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.keep_until().saturating_duration_since(Instant::now()))
    }

    /// A replaced entry lives by its new deadline, not the old one's remainder.
    fn expire_after_update(
        &self,
        _: &TokenKey,
        value: &V,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep_until().saturating_duration_since(Instant::now()))
    }
}

/// What moka keeps per entry besides the key and value: the key again behind an `Arc`, its
/// map bucket, the entry's info, access-order and timer-wheel nodes, each an allocation.
/// Measured with refused tokens, whose entries hold nothing else: 394–400 bytes of resident
/// memory per entry (`cargo run --release --example cache_memory -- 1000000 --refused`),
/// less the 48 of key and deadline.
const MOKA_ENTRY_BYTES: usize = 352;

/// Estimated bytes a negative entry costs: key, deadline and moka's bookkeeping.
pub const NEGATIVE_ENTRY_BYTES: usize =
    MOKA_ENTRY_BYTES + size_of::<TokenKey>() + size_of::<Negative>();

/// What [`ByUser`] keeps per positive entry (for a user with one token): the user's slot
/// in the map (a third more for the map's spare room), the key and stamp in the user's
/// list, and the overhead of those two allocations (the list and the `sub`, whose bytes
/// are counted apart).
const BY_USER_ENTRY_BYTES: usize =
    size_of::<(Box<str>, Vec<(TokenKey, u64)>)>() * 4 / 3 + size_of::<(TokenKey, u64)>() + 2 * 16;

/// Estimated bytes a positive entry for `identity` costs: key, entry, the identity with
/// its header values, its record in the user index, and moka's bookkeeping. What
/// `max_memory` counts.
pub fn estimated_entry_bytes(identity: &Identity) -> usize {
    MOKA_ENTRY_BYTES
        + size_of::<TokenKey>()
        + size_of::<Positive>()
        + identity.approx_size()
        + BY_USER_ENTRY_BYTES
        + identity.sub.len()
}

/// The two caches, built from the `[cache]` settings.
pub(super) struct Entries {
    positive: Cache<TokenKey, Positive, KeyHasher>,
    negative: Cache<TokenKey, Negative, KeyHasher>,
    by_user: Arc<ByUser>,
    next_stamp: AtomicU64,
}

impl Entries {
    pub fn new(settings: &CacheSettings) -> Entries {
        let hasher = KeyHasher::default();
        let max_entries = settings.max_entries.max(1);
        // Every positive entry weighs at least `floor`, so at most `max_entries` of them fit
        // in `capacity`; and weighing at least its size, they hold at most `max_memory`.
        let floor = (settings.max_memory / max_entries).clamp(1, u64::from(u32::MAX));
        let capacity = settings
            .max_memory
            .min(max_entries.saturating_mul(floor))
            .max(1);
        let floor = floor as u32;
        let by_user = Arc::new(ByUser::default());
        let positive = Cache::builder()
            .max_capacity(capacity)
            .weigher(move |_, entry: &Positive| {
                u32::try_from(estimated_entry_bytes(&entry.identity))
                    .unwrap_or(u32::MAX)
                    .max(floor)
            })
            .expire_after(UntilDeadline)
            .eviction_listener({
                // Every way out of the cache (expiry, eviction, purge, replacement) ends here.
                let by_user = by_user.clone();
                move |key: Arc<TokenKey>, entry: Positive, _| {
                    by_user.forget(&entry.identity.sub, &key, entry.stamp)
                }
            })
            .build_with_hasher(hasher.clone());
        let negative = Cache::builder()
            .max_capacity(max_entries)
            .expire_after(UntilDeadline)
            .build_with_hasher(hasher);
        Entries {
            positive,
            negative,
            by_user,
            next_stamp: AtomicU64::new(0),
        }
    }

    /// The entry for `key`, fresh or not: whether it may be served is the caller's question.
    /// One probe for a signed-in user; a refused token's costs two.
    pub fn get(&self, key: &TokenKey) -> Option<Entry> {
        if let Some(positive) = self.positive.get(key) {
            return Some(Entry::Positive(positive));
        }
        self.negative.get(key).map(Entry::Negative)
    }

    /// Stores `entry` under `key` until its deadline, in place of any entry of either kind.
    /// An entry whose deadline has passed is not stored.
    pub fn insert(&self, key: TokenKey, entry: Entry) {
        let now = Instant::now();
        match entry {
            Entry::Positive(mut positive) if positive.keep_until() > now => {
                positive.stamp = self.next_stamp.fetch_add(1, Ordering::Relaxed);
                // Indexed before it can be found, so a purge by user never misses it.
                self.by_user
                    .add(&positive.identity.sub, key, positive.stamp);
                self.positive.insert(key, positive);
                self.negative.invalidate(&key);
            }
            Entry::Negative(negative) if negative.keep_until() > now => {
                self.negative.insert(key, negative);
                self.positive.invalidate(&key);
            }
            _ => {}
        }
    }

    /// Removes the entry under `key`; how many went (0 or 1).
    pub fn remove(&self, key: &TokenKey) -> u64 {
        u64::from(self.positive.remove(key).is_some())
            + u64::from(self.negative.remove(key).is_some())
    }

    /// Removes every positive entry of user `sub`; how many went. Costs that user's
    /// entries, whatever the cache holds (`cargo bench --bench cache_hot_path -- purge/`).
    pub fn remove_sub(&self, sub: &str) -> u64 {
        let mut removed = 0;
        for key in self.by_user.take(sub) {
            // The token's entry, if its user is still `sub` (CloudBase naming another
            // user for the same token later would be a fault; its entry goes too).
            if let Some(entry) = self.positive.remove(&key) {
                removed += u64::from(*entry.identity.sub == *sub);
            }
        }
        removed
    }

    /// Removes everything; how many entries there were.
    pub fn clear(&self) -> u64 {
        let held = self.len();
        self.positive.invalidate_all();
        self.negative.invalidate_all();
        // Frees the memory now, so the next count is honest too.
        self.run_pending_tasks();
        held
    }

    /// Entries held. moka counts inserts and evictions in the background; this brings the
    /// count up to date first (and drops entries whose deadline moka's clock has passed).
    pub fn len(&self) -> u64 {
        self.run_pending_tasks();
        self.positive.entry_count() + self.negative.entry_count()
    }

    /// Estimated bytes held by positive entries (their weights), once up to date.
    #[cfg(test)]
    pub fn positive_weight_held(&self) -> (u64, u64) {
        self.positive.run_pending_tasks();
        (self.positive.entry_count(), self.positive.weighted_size())
    }

    fn run_pending_tasks(&self) {
        self.positive.run_pending_tasks();
        self.negative.run_pending_tasks();
    }
}

/// Which keys hold each user's positive entries, with each entry's stamp: an entry leaving
/// the cache takes its record with it only if the record is still its own, so a removal
/// reported late (moka reports evictions when it gets to them) never unindexes a newer entry
/// under the same key. Never locked while calling into moka, whose removals call back here.
#[derive(Default)]
struct ByUser {
    users: Mutex<Users>,
}

/// `sub` -> its entries' keys and stamps.
type Users = HashMap<Box<str>, Vec<(TokenKey, u64)>>;

impl ByUser {
    fn lock(&self) -> MutexGuard<'_, Users> {
        // A poisoned lock only means a panic elsewhere while holding it; the map stays valid.
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, sub: &str, key: TokenKey, stamp: u64) {
        let mut users = self.lock();
        let keys = match users.get_mut(sub) {
            Some(keys) => keys,
            None => users.entry(sub.into()).or_default(),
        };
        match keys.iter_mut().find(|(k, _)| *k == key) {
            Some(record) => record.1 = stamp,
            None => {
                // Most users have one token in the cache; `push` alone would make room
                // for four.
                keys.reserve_exact(1);
                keys.push((key, stamp));
            }
        }
    }

    fn forget(&self, sub: &str, key: &TokenKey, stamp: u64) {
        let mut users = self.lock();
        let Some(keys) = users.get_mut(sub) else {
            return;
        };
        keys.retain(|record| *record != (*key, stamp));
        if keys.is_empty() {
            users.remove(sub);
        }
    }

    /// The keys of `sub`'s entries, unindexed.
    fn take(&self, sub: &str) -> Vec<TokenKey> {
        let keys = self.lock().remove(sub).unwrap_or_default();
        keys.into_iter().map(|(key, _)| key).collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

/// SipHash (keyed per process) of a key's first eight bytes: the key is already a digest,
/// so hashing all 32 bytes again would buy nothing, and the per-process key keeps which
/// bucket a token lands in out of the sender's hands (a digest's bits can be ground for,
/// SipHash's output cannot without the key). Public for the benches.
#[derive(Clone, Default)]
pub struct KeyHasher(RandomState);

/// See [`KeyHasher`].
pub struct PrefixHasher(DefaultHasher);

impl BuildHasher for KeyHasher {
    type Hasher = PrefixHasher;
    fn build_hasher(&self) -> PrefixHasher {
        PrefixHasher(self.0.build_hasher())
    }
}

impl Hasher for PrefixHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(&bytes[..bytes.len().min(8)]);
    }
    /// The length prefix of `[u8; 32]`: always 32.
    fn write_usize(&mut self, _: usize) {}
    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::HeaderFields;
    use crate::config::{IdentityField, IdentityMapping, DEFAULT_MAX_HEADER_BYTES};
    use cloudbase_auth::types::{Introspection, UserProfile};

    fn key(i: u32) -> TokenKey {
        super::super::token_key(&format!("token-{i}"))
    }

    fn settings(max_entries: u64, max_memory: u64) -> CacheSettings {
        CacheSettings {
            max_entries,
            max_memory,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            stale_if_error: Duration::ZERO,
            redis: None,
        }
    }

    fn identity(i: u32) -> SharedIdentity {
        let introspection = Introspection {
            sub: Some(format!(
                "{:019}",
                1_830_000_000_000_000_000u64 + u64::from(i)
            )),
            scope: Some("user".into()),
            ..Default::default()
        };
        let profile = UserProfile {
            name: Some("演示用户".into()),
            email: Some(format!("user{i}@example.com")),
            ..Default::default()
        };
        let fields = IdentityMapping::from_static(&[
            ("x-user-id", IdentityField::Sub),
            ("x-user-name", IdentityField::Name),
            ("x-user-email", IdentityField::Email),
        ]);
        let fields = HeaderFields::new(&fields, DEFAULT_MAX_HEADER_BYTES, None);
        Arc::new(Identity::new(&introspection, &profile, None, &fields, 0))
    }

    fn positive(i: u32, life: Duration) -> Entry {
        let until = Instant::now() + life;
        Entry::Positive(Positive {
            identity: identity(i),
            fresh_until: until,
            stale_until: until,
            stamp: 0,
        })
    }

    fn negative(life: Duration) -> Entry {
        Entry::Negative(Negative {
            fresh_until: Instant::now() + life,
        })
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn max_memory_bounds_the_estimated_bytes_of_positive_entries() {
        let max_memory = 1 << 20;
        let entries = Entries::new(&settings(1_000_000, max_memory));
        for i in 0..20_000 {
            entries.insert(key(i), positive(i, MINUTE));
        }
        let (count, weight) = entries.positive_weight_held();
        let each = estimated_entry_bytes(&identity(0)) as u64;
        assert!(weight <= max_memory, "{weight} bytes held");
        assert!(
            weight > max_memory / 2 && count >= max_memory / each / 2,
            "the room is used: {count} entries of {each} bytes"
        );
    }

    #[test]
    fn max_entries_bounds_the_count_of_each_kind() {
        let entries = Entries::new(&settings(100, 256 << 20));
        for i in 0..5_000 {
            entries.insert(key(i), positive(i, MINUTE));
            entries.insert(key(i + 1_000_000), negative(MINUTE));
        }
        let (positive, _) = entries.positive_weight_held();
        assert!(
            (50..=100).contains(&positive),
            "{positive} positive entries"
        );
        let all = entries.len();
        assert!(all - positive <= 100, "{} negative entries", all - positive);
    }

    /// moka keeps time on its own clock, so this one runs in real time, briefly.
    #[tokio::test]
    async fn entries_leave_by_their_own_deadline_and_a_replaced_one_by_its_new_one() {
        let entries = Entries::new(&settings(1000, 256 << 20));
        let short = Duration::from_millis(50);
        entries.insert(key(1), positive(1, short));
        entries.insert(key(2), negative(short));
        entries.insert(key(3), positive(3, MINUTE));
        entries.insert(key(4), positive(4, short));
        entries.insert(key(4), positive(4, MINUTE));
        assert_eq!(entries.len(), 4);
        let waited = Instant::now();
        while entries.len() > 2 {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "short-lived entries still held"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            waited.elapsed() >= Duration::from_millis(30),
            "not before their time"
        );
        assert!(entries.get(&key(1)).is_none() && entries.get(&key(2)).is_none());
        assert!(entries.get(&key(3)).is_some());
        assert!(
            entries.get(&key(4)).is_some(),
            "the replacement's deadline, not the first entry's"
        );
        assert_eq!(held_and_indexed(&entries), (2, 2), "expiry unindexes");
    }

    #[test]
    fn an_entry_past_its_deadline_is_not_stored() {
        let entries = Entries::new(&settings(1000, 256 << 20));
        entries.insert(key(1), positive(1, Duration::ZERO));
        entries.insert(key(2), negative(Duration::ZERO));
        assert_eq!(entries.len(), 0);
    }

    fn sub(i: u32) -> String {
        identity(i).sub.to_string()
    }

    /// Positive entries held, and records in the user index: always the same number.
    fn held_and_indexed(entries: &Entries) -> (u64, usize) {
        entries.run_pending_tasks();
        (entries.positive.entry_count(), entries.by_user.len())
    }

    #[test]
    fn a_purge_by_user_removes_exactly_that_users_entries() {
        let entries = Entries::new(&settings(1000, 256 << 20));
        for i in 0..10 {
            entries.insert(key(i), positive(i, MINUTE));
        }
        // A second token of user 3.
        entries.insert(key(100), positive(3, MINUTE));
        assert_eq!(entries.remove_sub(&sub(3)), 2);
        assert_eq!(entries.remove_sub(&sub(3)), 0);
        assert_eq!(entries.remove_sub("nobody"), 0);
        assert!(entries.get(&key(3)).is_none() && entries.get(&key(100)).is_none());
        assert!(entries.get(&key(4)).is_some());
        assert_eq!(held_and_indexed(&entries), (9, 9));
    }

    #[test]
    fn the_user_index_follows_every_way_out_of_the_cache() {
        let entries = Entries::new(&settings(100, 256 << 20));
        for i in 0..1_000 {
            entries.insert(key(i), positive(i, MINUTE));
        }
        let (held, indexed) = held_and_indexed(&entries);
        assert!(held <= 100, "evicted for room: {held}");
        assert_eq!(indexed as u64, held, "evictions unindex");
        let kept = (0..1_000)
            .find(|i| entries.get(&key(*i)).is_some())
            .unwrap();
        entries.insert(key(kept), negative(MINUTE));
        assert_eq!(
            held_and_indexed(&entries),
            (held - 1, held as usize - 1),
            "replaced by a refusal"
        );
        entries.clear();
        assert_eq!(held_and_indexed(&entries), (0, 0), "purge of everything");
    }

    /// moka reports an expired entry when it gets to it, possibly after a new entry took
    /// its key: the report must not unindex the new one, or a sign-out would miss it.
    #[tokio::test]
    async fn a_removal_reported_late_never_unindexes_a_newer_entry() {
        let entries = Entries::new(&settings(1000, 256 << 20));
        entries.insert(key(1), positive(1, Duration::from_millis(30)));
        tokio::time::sleep(Duration::from_millis(60)).await;
        entries.insert(key(1), positive(1, MINUTE));
        entries.insert(key(2), positive(2, MINUTE));
        entries.insert(key(2), positive(2, MINUTE));
        assert_eq!(held_and_indexed(&entries), (2, 2));
        assert_eq!(entries.remove_sub(&sub(1)), 1, "the newer entry was found");
        assert_eq!(entries.remove_sub(&sub(2)), 1, "and the replacing one");
        assert_eq!(held_and_indexed(&entries), (0, 0));
    }

    #[test]
    fn bucket_hashes_are_keyed_per_cache() {
        let (a, b) = (KeyHasher::default(), KeyHasher::default());
        let k = key(1);
        assert_ne!(a.hash_one(k), b.hash_one(k), "another key, other buckets");
        assert_eq!(a.hash_one(k), a.hash_one(k));
        assert_ne!(a.hash_one(k), a.hash_one(key(2)));
    }
}
