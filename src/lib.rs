//! cloudbase-gateway: an authenticating reverse proxy for CloudBase Auth v2.
//!
//! Layout, following a request: `server` (listeners, TLS, shutdown, the stack),
//! `routing` (which route, decided on the normal form `path` gives), `auth` (token and
//! rules) over `cache` (validation, cached) over the `cloudbase_auth` crate (typed client
//! of the Auth v2 HTTP API), `proxy` (header hygiene and forwarding), `response` (the
//! gateway's own answers). Beside it: `config` (the TOML file and validated settings),
//! `admin` (health, metrics, cache purge), `telemetry` (logs); the `cloudbase_emulator`
//! crate is the embedded emulator. At the bottom, leaves any layer can use: `path` (the
//! path policy), `clock` (Unix time that tests can control) and `secret`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cache;
pub mod clock;
pub mod config;
pub mod path;
pub mod proxy;
pub mod response;
pub mod routing;
pub mod secret;
pub mod server;
pub mod telemetry;
