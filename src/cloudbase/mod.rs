//! Typed client of the CloudBase Auth v2 HTTP API.
//!
//! `types` holds the wire bodies (shared with the emulator), `client` the calls, `error`
//! the failures sorted by whose fault they are. The client is thin on purpose: no caching
//! and almost no retrying, which belong to the gateway that knows token lifetimes.

pub mod client;
pub mod error;
pub mod types;

pub use client::{CallOptions, Client};
pub use error::Error;
