//! cloudbase-gateway: an authenticating reverse proxy for CloudBase Auth v2.
//!
//! Layout, following a request: `server` (listeners, TLS, shutdown, the stack),
//! `routing` (which route, decided on the normal form `path` gives), `auth` (token and
//! rules) over `cache` (validation, cached) over `cloudbase` (typed client of the Auth v2
//! HTTP API), `proxy` (header hygiene and forwarding), `response` (the gateway's own
//! answers). `forward_auth` answers an ingress's auth subrequests with the same routing
//! and auth decision instead of forwarding. Beside it: `config` (the TOML file and
//! validated settings), `admin` (health, metrics, cache purge), `telemetry` (logs),
//! `emulator` (a faithful in-memory CloudBase Auth v2), `path` (the path policy, a leaf
//! any layer can use).
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cache;
pub mod cloudbase;
pub mod config;
pub mod emulator;
pub mod forward_auth;
pub mod path;
pub mod proxy;
pub mod response;
pub mod routing;
pub mod server;
pub mod telemetry;
