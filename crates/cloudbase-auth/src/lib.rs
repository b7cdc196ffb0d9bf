#![doc = include_str!("../README.md")]
//!
//! ## Modules
//!
//! [`types`] holds the wire bodies (shared with the emulator crate); with the `client`
//! feature (default), [`Client`] makes the calls and [`Error`] sorts their failures by
//! whose fault they are. The client is thin on purpose: no caching and almost no
//! retrying, which belong to the program that knows token lifetimes (the gateway).
//! [`Secret`] holds client secrets and passwords so that `Debug` and `Display` never show
//! them.
#![forbid(unsafe_code)]

mod secret;
pub mod types;

#[cfg(feature = "client")]
mod builder;
#[cfg(feature = "client")]
mod client;
#[cfg(feature = "client")]
pub mod error;

#[cfg(feature = "client")]
pub use builder::{ClientBuilder, RootCerts, DEFAULT_DEVICE_ID, DEFAULT_TIMEOUT};
#[cfg(feature = "client")]
pub use client::{tls_client_config, CallOptions, Client, MAX_BODY_BYTES};
#[cfg(feature = "client")]
pub use error::Error;
pub use secret::Secret;
pub use types::IntrospectAuth;
