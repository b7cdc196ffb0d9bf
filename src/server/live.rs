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
//! holds and goes to the shared `ArcSwap` only after a reload. The service is then cloned
//! for the request, as it was before reloads existed. The price per reload: an idle
//! connection keeps the old stack alive until its next request or its end.

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
    pub fn connection(&self) -> Current<S> {
        Current {
            cache: RefCell::new(Cache::new(self.current.clone())),
        }
    }
}

/// One connection's view of a [`Live`] service (not shared between connections, so its
/// cache needs no lock).
pub struct Current<S> {
    cache: RefCell<Cache<Arc<ArcSwap<S>>, Arc<S>>>,
}

impl<S: Clone> Current<S> {
    /// A clone of the service in force, for one request.
    pub fn get(&self) -> S {
        S::clone(self.cache.borrow_mut().load())
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
}
