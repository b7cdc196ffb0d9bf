//! cloudbase-gateway: an authenticating reverse proxy for CloudBase Auth v2.
//!
//! Layout, following a request: `server` (listeners, TLS, shutdown, the stack),
//! `routing` (which route, decided on the normal form `path` gives), `auth` (token and
//! rules) over `cache` (validation, cached) over `cloudbase` (typed client of the Auth v2
//! HTTP API), `proxy` (header hygiene and forwarding), `response` (the gateway's own
//! answers). `forward_auth` answers an ingress's auth subrequests with the same routing
//! and auth decision instead of forwarding. Beside it: `config` (the TOML file and
//! validated settings), `admin` (health, metrics, cache purge), `relay` (the app's
//! CloudBase calls through the gateway, purging what a sign-out ends), `limit` (token
//! buckets: the relay's and the routes' rate limits), `telemetry` (logs, traces),
//! `emulator` (a faithful in-memory CloudBase Auth v2). At the bottom, leaves any layer can
//! use: `path` (the path policy) and `clock` (Unix time that tests can control).
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cache;
pub mod clock;
pub mod cloudbase;
pub mod config;
pub mod emulator;
pub mod forward_auth;
pub mod limit;
pub mod path;
pub mod proxy;
pub mod relay;
pub mod response;
pub mod routing;
pub mod server;
pub mod telemetry;
