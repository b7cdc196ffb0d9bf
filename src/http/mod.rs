//! What the gateway knows about HTTP itself, independent of any of its features: the body
//! type ([`body`]), header names ([`names`]), the connection a request came on ([`conn`]),
//! header hygiene as pure functions ([`headers`]), the bearer token ([`bearer`]) and the
//! request ids the gateway makes ([`request_id`]).
//!
//! A leaf: nothing here imports the rest of the crate, and every layer may import it.
//! (`crate::http` is this module; the `http` crate is `http::` as everywhere else.)

pub mod bearer;
pub mod body;
pub mod conn;
pub mod headers;
pub mod names;
pub mod request_id;

pub use body::{empty, full, Body, BoxError, ClientBodyError};
pub use conn::ConnInfo;
pub use names::X_REQUEST_ID;
