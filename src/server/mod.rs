//! The serve loop: the public listener ([`serve`]: accept, connection cap, overload
//! refusals, drain), one connection's life and deadlines (`conn`), and TLS ([`tls`]).
//! What is served is handed in (the stack, built by `app`); nothing here knows routes,
//! auth or upstreams.

mod conn;
mod listener;
pub mod tls;

pub use listener::serve;
pub use tls::TlsAcceptors;
