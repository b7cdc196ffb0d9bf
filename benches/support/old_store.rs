//! The hand-written store the validation cache used before moka (until issue 10), kept
//! here only so `benches/cache_hot_path.rs` can compare it with moka: sharded, read under
//! a shard's read lock, entries leaving in expiry order.
//!
//! An entry never changed once stored and a hit never extended it, so it tracked no access
//! order and a read was one hash-map probe under a read lock. Each shard queued its keys in
//! insertion order, positive and negative entries apart; when full, an insert dropped the
//! oldest negative entry first, so a flood of made-up tokens displaced only its own kind.
//! Its purges and tests are not kept: what remains is what a hit and an insert ran.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::time::Instant;

use cloudbase_gateway::cache::{KeyHasher, TokenKey};

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
        let hasher = KeyHasher::default();
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

    /// Entries held and not yet expired.
    pub fn len(&self) -> u64 {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let dropped = write(shard).drop_expired(now);
            self.dropped(dropped);
        }
        self.len.load(Ordering::Relaxed)
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
