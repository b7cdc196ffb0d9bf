//! [`Live`]: the service in force, which a configuration reload replaces whole.
//!
//! The reload builds a new stack (routes, rules, limits, diverts) and stores it here; the
//! serve loop takes the service for each *request*, not each connection, from the one in
//! force. A request in flight finishes on the stack it started with (it holds its own
//! clone), the next one on the same keep-alive connection gets the new stack, and no
//! connection is closed. Per connection would have been simpler and free, but a keep-alive
//! or HTTP/2 client that never reconnects would then be served by the old configuration
//! for as long as it stays.
//!
//! The price per request is one relaxed atomic load: each connection reads through its own
//! [`Current`] (arc-swap's `Cache`), which compares the pointer in force with the one it
//! holds and goes to the shared `ArcSwap` only after a reload; the connection calls its own
//! copy of the stack, made again only when another is in force. The price per reload: an
//! idle connection keeps the old stack alive until its next request or its end, and each
//! connection copies the new stack once.

use std::cell::RefCell;
use std::sync::Arc;

use arc_swap::cache::Cache;
use arc_swap::ArcSwap;

/// The service in force, shared by the listener and whoever reloads. Cheap to clone.
pub struct Live<S> {
    current: Arc<ArcSwap<S>>,
}

impl<S> Clone for Live<S> {
    fn clone(&self) -> Self {
        Live {
            current: self.current.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Live<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

impl<S> Live<S> {
    pub fn new(service: S) -> Live<S> {
        Live {
            current: Arc::new(ArcSwap::from_pointee(service)),
        }
    }

    /// Puts `service` in force: the next request on every connection is served by it.
    pub fn store(&self, service: S) {
        self.current.store(Arc::new(service));
    }

    /// One connection's reader.
    pub fn connection(&self) -> Current<S>
    where
        S: Clone,
    {
        let source = self.current.load_full();
        Current {
            inner: RefCell::new(Reader {
                cache: Cache::new(self.current.clone()),
                copy: S::clone(&source),
                source,
            }),
        }
    }
}

/// One connection's view of a [`Live`] service (not shared between connections, so it
/// needs no lock).
pub struct Current<S> {
    inner: RefCell<Reader<S>>,
}

struct Reader<S> {
    cache: Cache<Arc<ArcSwap<S>>, Arc<S>>,
    /// The service in force when `copy` was made.
    source: Arc<S>,
    /// This connection's own copy of `source`, called for each request.
    copy: S,
}

impl<S: Clone> Current<S> {
    /// A clone of the service in force.
    #[cfg(test)]
    pub fn get(&self) -> S {
        S::clone(self.inner.borrow_mut().cache.load())
    }

    /// Calls `f` with this connection's copy of the service in force, copied again only
    /// when a reload has put another in force: a request costs the relaxed load, not a
    /// clone of the whole stack.
    pub fn with<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        let mut inner = self.inner.borrow_mut();
        let Reader {
            cache,
            source,
            copy,
        } = &mut *inner;
        let in_force = cache.load();
        if !Arc::ptr_eq(in_force, source) {
            *source = in_force.clone();
            *copy = S::clone(in_force);
        }
        f(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_sees_a_stored_service_from_its_next_request_on() {
        let live = Live::new("first");
        let connection = live.connection();
        let in_flight = connection.get();
        live.store("second");
        assert_eq!(in_flight, "first", "a request keeps what it started with");
        assert_eq!(connection.get(), "second");
        assert_eq!(live.connection().get(), "second");
    }

    #[test]
    fn a_connections_own_copy_is_kept_until_a_reload_and_then_replaced() {
        let live = Live::new(vec!["first"]);
        let connection = live.connection();
        connection.with(|copy| copy.push("touched by a request"));
        assert_eq!(
            connection.with(|copy| copy.clone()),
            ["first", "touched by a request"],
            "the same copy serves the next request"
        );
        live.store(vec!["second"]);
        assert_eq!(connection.with(|copy| copy.clone()), ["second"]);
    }
}
