//! cloudbase-gateway: an authenticating reverse proxy for CloudBase Auth v2.
//!
//! Layout: `config` (the TOML file and validated settings), `cloudbase` (typed client of
//! the Auth v2 HTTP API), `emulator` (a faithful in-memory CloudBase Auth v2), `cache`
//! (the validation cache), `auth` (the tower layer that authenticates requests),
//! `proxy` (header hygiene and forwarding), `server` (listeners, TLS, shutdown),
//! `admin` (health, metrics, cache purge).
#![forbid(unsafe_code)]

pub mod cloudbase;
pub mod config;
pub mod emulator;
