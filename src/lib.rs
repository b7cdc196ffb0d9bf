//! cloudbase-gateway: an authenticating reverse proxy for CloudBase Auth v2.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cache;
pub mod clock;
pub mod config;
pub mod http;
pub mod identity_headers;
pub mod jwt;
pub mod keyword;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod rejection;
pub mod routing;
pub mod secret;
pub mod server;
pub mod stack;
pub mod telemetry;
