//! The bounded map behind the identity cache: sharded, read under a shard's read lock,
//! entries leaving in expiry order.
//!
//! Written for this cache instead of a general-purpose one (moka, before): an entry never
//! changes once stored and a hit never extends it, so there is no access order to track and
//! a read is one hash-map probe. Among a million entries a moka read cost five or more cache
//! misses (bucket array, bucket, entry, entry info, the access-order deque) and 1.5 µs; this
//! costs two and 0.4 µs, and a whole hit went from 3.4 to about 2 µs
//! (`cargo bench --features bench-compare --bench cache_hot_path -- map/1M` and `-- hit/1M`). What it gives up is
//! moka's frequency-based admission, which the eviction order below replaces for the one
//! pressure this cache must withstand: floods of made-up tokens.
//!
//! Each shard queues its keys in insertion order, positive and negative entries apart. Each
//! kind has one lifetime (`ttl`, `negative_ttl`, only ever shortened by a token's `exp`), so
//! a queue is in expiry order and every insert drops the expired entries at its fronts. When
//! the store is full, an insert makes room in its own shard (keys spread evenly, so that is
//! close to making room store-wide) by dropping the oldest negative entry; with none, a new
//! negative entry is not stored and a new positive one replaces the oldest positive one. So
//! a flood of made-up tokens displaces only its own kind, never a signed-in user.
//!
//! Keys are SHA-256 digests; the map hashes their first eight bytes with a per-process
//! SipHash key, so nobody can aim tokens at one bucket.

use std::collections::hash_map::{DefaultHasher, HashMap, RandomState};
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::time::Instant;

use super::TokenKey;

/// Which queue an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Positive,
    Negative,
}

/// Shards at most; fewer for small capacities, so that each holds many entries.
const MAX_SHARDS: usize = 64;
/// Expected entries per shard below which there are fewer shards.
const MIN_SHARD_ENTRIES: u64 = 1024;

/// A bounded map from token digests to `V`, in shards (see the module docs). Inserts racing
/// in different shards may overshoot the capacity by one each until the next insert.
pub struct Store<V> {
    shards: Box<[RwLock<Shard<V>>]>,
    capacity: u64,
    /// Entries in all shards; changed only under a shard's write lock.
    len: AtomicU64,
    hasher: KeyHasher,
}

struct Shard<V> {
    map: HashMap<TokenKey, Slot<V>, KeyHasher>,
    positive: VecDeque<Queued>,
    negative: VecDeque<Queued>,
    /// Tells a queued key from a later entry under the same key.
    next_stamp: u64,
}

struct Slot<V> {
    value: V,
    stamp: u64,
}

/// A key in a queue. Stale (its entry replaced or removed) when the map's stamp differs.
struct Queued {
    key: TokenKey,
    keep_until: Instant,
    stamp: u64,
}

impl<V: Clone> Store<V> {
    /// A store for `capacity` entries at most.
    pub fn new(capacity: u64) -> Self {
        let capacity = capacity.max(1);
        let shards = (capacity / MIN_SHARD_ENTRIES).clamp(1, MAX_SHARDS as u64) as usize;
        let shards = shards.next_power_of_two().min(MAX_SHARDS);
        let hasher = KeyHasher(RandomState::new());
        Store {
            shards: (0..shards)
                .map(|_| {
                    RwLock::new(Shard {
                        map: HashMap::with_hasher(hasher.clone()),
                        positive: VecDeque::new(),
                        negative: VecDeque::new(),
                        next_stamp: 0,
                    })
                })
                .collect(),
            capacity,
            len: AtomicU64::new(0),
            hasher,
        }
    }

    fn shard(&self, key: &TokenKey) -> &RwLock<Shard<V>> {
        // The keyed hash, not the key's bytes: which shard a token lands in is not the
        // caller's choice either. Bits 40 and up: the shard's map indexes its buckets with
        // the low bits of this same hash and tags them with the top seven.
        let h = self.hasher.hash_one(key);
        &self.shards[(h >> 40) as usize & (self.shards.len() - 1)]
    }

    /// The value under `key`, if any. Whether it is still fresh is the caller's question;
    /// an entry may outlive its `keep_until` until the next insert into its shard.
    pub fn get(&self, key: &TokenKey) -> Option<V> {
        read(self.shard(key))
            .map
            .get(key)
            .map(|slot| slot.value.clone())
    }

    /// Stores `value` under `key` until `keep_until`, replacing any entry under `key`.
    pub fn insert(&self, key: TokenKey, value: V, keep_until: Instant, kind: Kind) {
        let mut shard = write(self.shard(&key));
        let shard = &mut *shard;
        self.dropped(shard.drop_expired(Instant::now()));
        let replacing = shard.map.contains_key(&key);
        if !replacing && self.len.load(Ordering::Relaxed) >= self.capacity {
            let evicted = shard.evict_oldest(Kind::Negative)
                || (kind == Kind::Positive && shard.evict_oldest(Kind::Positive));
            if !evicted {
                return;
            }
            self.dropped(1);
        }
        let stamp = shard.next_stamp;
        shard.next_stamp += 1;
        shard.map.insert(key, Slot { value, stamp });
        if !replacing {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        let queue = shard.queue(kind);
        queue.push_back(Queued {
            key,
            keep_until,
            stamp,
        });
        // Replaced and removed entries leave stale keys behind until they expire; bound
        // them should they pile up faster than that.
        if queue.len() > 2 * shard.map.len() + 64 {
            let map = &shard.map;
            shard.positive.retain(|q| q.is_current(map));
            shard.negative.retain(|q| q.is_current(map));
        }
    }

    fn dropped(&self, n: usize) {
        if n > 0 {
            self.len.fetch_sub(n as u64, Ordering::Relaxed);
        }
    }

    /// Removes the entry under `key`; whether there was one.
    pub fn remove(&self, key: &TokenKey) -> bool {
        let removed = write(self.shard(key)).map.remove(key).is_some();
        self.dropped(usize::from(removed));
        removed
    }

    /// Removes every entry whose value matches; how many went.
    pub fn remove_matching(&self, mut matches: impl FnMut(&V) -> bool) -> u64 {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = write(shard);
            let before = shard.map.len();
            shard.map.retain(|_, slot| !matches(&slot.value));
            self.dropped(before - shard.map.len());
            removed += (before - shard.map.len()) as u64;
        }
        removed
    }

    /// Removes everything; how many entries went.
    pub fn clear(&self) -> u64 {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = write(shard);
            self.dropped(shard.map.len());
            removed += shard.map.len() as u64;
            shard.map.clear();
            shard.positive.clear();
            shard.negative.clear();
        }
        removed
    }

    /// Entries held and not yet expired.
    pub fn len(&self) -> u64 {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let dropped = write(shard).drop_expired(now);
            self.dropped(dropped);
        }
        self.len.load(Ordering::Relaxed)
    }

    /// Whether [`Store::len`] is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V> Shard<V> {
    fn queue(&mut self, kind: Kind) -> &mut VecDeque<Queued> {
        match kind {
            Kind::Positive => &mut self.positive,
            Kind::Negative => &mut self.negative,
        }
    }

    /// Drops the entries whose time has passed from the front of both queues; how many.
    fn drop_expired(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        for kind in [Kind::Positive, Kind::Negative] {
            while let Some(front) = self.queue(kind).front() {
                if front.keep_until > now {
                    break;
                }
                let front = self.queue(kind).pop_front().expect("front exists");
                if front.is_current(&self.map) {
                    self.map.remove(&front.key);
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// Drops the oldest current entry of `kind`; whether there was one.
    fn evict_oldest(&mut self, kind: Kind) -> bool {
        while let Some(front) = self.queue(kind).pop_front() {
            if front.is_current(&self.map) {
                self.map.remove(&front.key);
                return true;
            }
        }
        false
    }
}

impl Queued {
    fn is_current<V>(&self, map: &HashMap<TokenKey, Slot<V>, KeyHasher>) -> bool {
        map.get(&self.key)
            .is_some_and(|slot| slot.stamp == self.stamp)
    }
}

/// A poisoned lock only means a panic elsewhere while holding it; the map stays valid.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// SipHash (keyed per process) of a key's first eight bytes: the key is already a digest,
/// so hashing all 32 bytes again would buy nothing.
#[derive(Clone)]
struct KeyHasher(RandomState);

struct PrefixHasher(DefaultHasher);

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
    use std::time::Duration;

    use super::*;

    fn key(i: u32) -> TokenKey {
        super::super::token_key(&format!("token-{i}"))
    }

    fn later(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    #[tokio::test(start_paused = true)]
    async fn entries_leave_once_their_time_has_passed() {
        let store = Store::new(100);
        store.insert(key(1), 1, later(5), Kind::Negative);
        store.insert(key(2), 2, later(60), Kind::Positive);
        assert_eq!(store.len(), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(store.len(), 1);
        assert_eq!(store.get(&key(1)), None);
        assert_eq!(store.get(&key(2)), Some(2));
        tokio::time::advance(Duration::from_secs(55)).await;
        assert_eq!(store.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_drops_negative_entries_first() {
        let store = Store::new(4);
        store.insert(key(1), 1, later(60), Kind::Positive);
        store.insert(key(2), 2, later(60), Kind::Positive);
        store.insert(key(3), 3, later(5), Kind::Negative);
        store.insert(key(4), 4, later(5), Kind::Negative);
        store.insert(key(5), 5, later(60), Kind::Positive);
        assert_eq!(
            store.get(&key(3)),
            None,
            "the oldest negative entry made room"
        );
        store.insert(key(6), 6, later(5), Kind::Negative);
        assert_eq!(store.get(&key(4)), None);
        assert_eq!(store.get(&key(6)), Some(6));
        assert_eq!(store.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn negative_entries_never_displace_positive_ones() {
        let store = Store::new(2);
        store.insert(key(1), 1, later(60), Kind::Positive);
        store.insert(key(2), 2, later(60), Kind::Positive);
        for i in 10..100 {
            store.insert(key(i), i, later(5), Kind::Negative);
        }
        assert_eq!((store.get(&key(1)), store.get(&key(2))), (Some(1), Some(2)));
        store.insert(key(3), 3, later(60), Kind::Positive);
        assert_eq!(
            store.get(&key(1)),
            None,
            "the oldest positive entry made room"
        );
        assert_eq!(store.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_entry_keeps_its_new_lifetime() {
        let store = Store::new(10);
        store.insert(key(1), 1, later(5), Kind::Negative);
        store.insert(key(1), 2, later(60), Kind::Positive);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            store.get(&key(1)),
            Some(2),
            "the stale negative key did not remove it"
        );
        assert_eq!(store.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_queue_keys_stay_bounded() {
        let store = Store::new(4);
        for round in 0..1000 {
            store.insert(key(1), round, later(60), Kind::Positive);
            store.remove(&key(1));
        }
        let shard = read(store.shard(&key(1)));
        assert!(shard.positive.len() <= 2 * shard.map.len() + 64 + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn purges_remove_what_they_match() {
        let store = Store::new(100);
        for i in 0..10 {
            store.insert(key(i), i, later(60), Kind::Positive);
        }
        assert!(store.remove(&key(0)));
        assert!(!store.remove(&key(0)));
        assert_eq!(store.remove_matching(|v| v % 2 == 1), 5);
        assert_eq!(store.clear(), 4);
        assert_eq!(store.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sharded_store_holds_exactly_its_capacity() {
        let store = Store::new(100_000);
        assert_eq!(store.shards.len(), MAX_SHARDS);
        for i in 0..100_000 {
            store.insert(key(i), i, later(60), Kind::Positive);
        }
        assert_eq!(store.len(), 100_000, "uneven shards do not evict early");
        store.insert(key(100_000), 0, later(60), Kind::Positive);
        assert_eq!(store.len(), 100_000);
        assert_eq!(Store::<u32>::new(1000).shards.len(), 1);
    }
}
