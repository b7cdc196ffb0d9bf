//! governor's keyed state, in a map that knows its size: [`BoundedStore`] is a `DashMap`
//! of GCRA states (governor's own `InMemoryState`, one atomic `u64`) with a count of its
//! keys, so [`super::KeyedLimiter`] can tell a full table from one with room without
//! walking the shards on every check.
//!
//! The key is `Option<K>`: `Some` for a tracked key, `None` for the overflow bucket that
//! untracked keys share while the table is full. The count is exact after every sweep
//! and may run over `max_keys` between sweeps by the number of checks racing to insert at
//! that moment (at most the worker threads); nothing else grows the map.

use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};

/// See the module docs. Cheap to clone: clones share the map.
pub struct BoundedStore<K> {
    inner: Arc<Inner<K>>,
}

struct Inner<K> {
    map: DashMap<Option<K>, InMemoryState>,
    len: AtomicUsize,
    max: usize,
}

impl<K> Clone for BoundedStore<K> {
    fn clone(&self) -> Self {
        BoundedStore {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    pub fn new(max: usize) -> Self {
        BoundedStore {
            inner: Arc::new(Inner {
                map: DashMap::new(),
                len: AtomicUsize::new(0),
                max,
            }),
        }
    }

    /// Whether `key` gets a bucket of its own: it has one, or there is room for one. Looks
    /// in the map only when the table is full.
    pub fn admits(&self, key: &Option<K>) -> bool {
        let inner = &*self.inner;
        inner.len.load(Ordering::Relaxed) < inner.max || inner.map.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }
}

/// The GCRA state's theoretical arrival time, read without changing it: governor's
/// update closure is asked to refuse, handing the value out as its error.
fn arrival(state: &InMemoryState) -> Option<Nanos> {
    state
        .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
        .err()
        .flatten()
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = Option<K>;

    fn measure_and_replace<T, F, E>(&self, key: &Option<K>, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let inner = &*self.inner;
        if let Some(state) = inner.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let state = match inner.map.entry(key.clone()) {
            Entry::Occupied(e) => e.into_ref(),
            Entry::Vacant(e) => {
                inner.len.fetch_add(1, Ordering::Relaxed);
                e.insert(InMemoryState::default())
            }
        };
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<Option<K>> for BoundedStore<K> {
    /// Drops the keys whose buckets are full again (governor's rule: an arrival time at or
    /// before `drop_below`), the overflow bucket included.
    fn retain_recent(&self, drop_below: Nanos) {
        let inner = &*self.inner;
        inner
            .map
            .retain(|_, state| arrival(state).is_some_and(|tat| tat > drop_below));
        inner.len.store(inner.map.len(), Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        self.inner.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        BoundedStore::len(self)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
