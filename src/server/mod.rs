//! The serve loop: the public listener ([`serve`]: accept, connection cap, overload
//! refusals, drain), one connection's life and deadlines (`conn`), TLS ([`tls`]), and the
//! service in force that a reload swaps ([`live`]).
//! What is served is handed in (the stack, built by `app`); nothing here knows routes,
//! auth or upstreams.

mod conn;
mod listener;
pub mod live;
pub mod tls;

pub use listener::serve;
pub use live::Live;
pub use tls::TlsAcceptors;
